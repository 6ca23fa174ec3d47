"""Reading a safetensors file with numpy alone, and turning PyTorch layouts into Flax ones.

The format is an 8-byte little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}`` and
the raw tensor bytes; no torch or safetensors package is needed.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from wwjax._layout import ConvertedArray, MatrixView, conv_view

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as numpy arrays (bf16 becomes float32), memory-mapped."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        raw = data[start:end]
        if entry["dtype"] == "BF16":
            array = _bfloat16_to_float32(raw.view(np.uint16))
        elif entry["dtype"] in _DTYPES:
            array = raw.view(_DTYPES[entry["dtype"]])
        else:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
        tensors[name] = array.reshape(entry["shape"])
    return tensors


def torch_to_flax(name: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """A PyTorch state-dict entry → a Flax key path and layout.

    ``Linear.weight (out, in)`` → ``kernel (in, out)``; ``Conv weight (out, in, *k)`` → ``kernel (*k, in, out)``;
    an embedding table (a name with ``embed``) → ``embedding (vocab, features)``; 1-D ``weight`` → ``scale``.

    Example:
      >>> import numpy as np

from wwjax._layout import ConvertedArray, MatrixView, conv_view
      >>> keys, kernel = torch_to_flax("encoder.layer.0.dense.weight", np.zeros((8, 4)))
      >>> keys, kernel.shape
      (('encoder', 'layer', '0', 'dense', 'kernel'), (4, 8))
    """
    *prefix, leaf = name.split(".")
    if leaf != "weight":
        return (*prefix, leaf), array
    if array.ndim == 1:
        return (*prefix, "scale"), array
    if array.ndim == 2 and any("embed" in p.lower() for p in prefix):
        table = MatrixView((0,), (1,), layer_type="embedding")
        return (*prefix, "embedding"), ConvertedArray.of(array, "Embedding", table)
    if array.ndim == 2:
        return (*prefix, "kernel"), ConvertedArray.of(array.T, "Linear", MatrixView((0,), (1,)))
    # (out, in, *kernel) → (*kernel, in, out)
    order = tuple(range(2, array.ndim)) + (1, 0)
    view = conv_view(array.ndim) if array.ndim <= 5 else None
    return (*prefix, "kernel"), ConvertedArray.of(array.transpose(order), "Conv", view)


def load_safetensors(path: str | os.PathLike, layout: str = "flax") -> dict:
    """Loads a safetensors checkpoint as a nested params dict that :func:`wwjax.analyze` reads directly.

    Args:
      path: the ``.safetensors`` file (e.g. a Hugging Face ``model.safetensors``).
      layout: ``flax`` converts PyTorch layouts (``(out, in)`` → ``(in, out)``, OIHW → HWIO) and names
        (``weight`` → ``kernel``/``embedding``/``scale``); ``raw`` keeps the file's flat names and layouts.

    Example:
      A one-layer file written by hand (PyTorch's ``Linear(3, 2)`` stores its weight as ``(out, in)``):

      >>> import json, os, struct, tempfile
      >>> import numpy as np

from wwjax._layout import ConvertedArray, MatrixView, conv_view
      >>> weight = np.arange(6, dtype=np.float32).reshape(2, 3)
      >>> header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}).encode()
      >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
      >>> with open(path, "wb") as f:
      ...     _ = f.write(struct.pack("<Q", len(header)) + header + weight.tobytes())
      >>> load_safetensors(path)["fc"]["kernel"].shape  # Flax's (in, out)
      (3, 2)
    """
    tensors = read_safetensors(path)
    if layout == "raw":
        return tensors
    if layout != "flax":
        raise ValueError(f"layout must be 'flax' or 'raw', got {layout!r}")
    tree: dict = {}
    for name, array in tensors.items():
        keys, value = torch_to_flax(name, array)
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return tree
