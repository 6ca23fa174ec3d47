"""Reading a safetensors file with the ``safetensors`` package, and turning PyTorch layouts into Flax ones.

``safe_open`` validates the header (its length, every tensor's offsets against its dtype and shape, the file's size)
before anything is read, and reads one tensor at a time.
"""

from __future__ import annotations

import os

import numpy as np

from wwjax.core._layout import ConvertedArray, MatrixView, conv_view


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as numpy arrays (bf16 becomes float32), read one at a time.

    A file that is not valid safetensors raises one ``ValueError`` naming the file and what is wrong with it.

    Example:
      >>> import os, tempfile
      >>> import numpy as np
      >>> from safetensors.numpy import save_file
      >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
      >>> save_file({"fc.weight": np.ones((2, 3), np.float32)}, path)
      >>> {name: a.shape for name, a in read_safetensors(path).items()}
      {'fc.weight': (2, 3)}
      >>> _ = open(path, "wb").write(b"not a safetensors file")
      >>> read_safetensors(path)
      Traceback (most recent call last):
      ...
      ValueError: ...model.safetensors: not a valid safetensors file (Error while deserializing header: ...)
    """
    from safetensors import SafetensorError, safe_open

    tensors = {}
    try:
        with safe_open(os.fspath(path), framework="numpy") as f:
            for name in f.keys():
                array = f.get_tensor(name)
                if array.dtype.name == "bfloat16":  # exact: bf16 is float32's upper half
                    array = array.astype(np.float32)
                tensors[name] = array
    except SafetensorError as error:
        raise ValueError(f"{path}: not a valid safetensors file ({error})") from None
    except TypeError as error:  # a dtype numpy has no type for (e.g. F8_E4M3 without ml_dtypes' support)
        raise ValueError(f"{path}: unsupported tensor dtype ({error})") from None
    return tensors


def torch_to_flax(name: str, array: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """A PyTorch state-dict entry → a Flax key path and layout.

    ``Linear.weight (out, in)`` → ``kernel (in, out)``; ``Conv weight (out, in, *k)`` → ``kernel (*k, in, out)``;
    an embedding table (a name with ``embed``) → ``embedding (vocab, features)``; 1-D ``weight`` → ``scale``.

    Example:
      >>> import numpy as np

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
