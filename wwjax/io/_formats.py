"""Loading weights from the files people have: Orbax checkpoints, Flax msgpack files and safetensors files."""

from __future__ import annotations

import pathlib

from wwjax.io import _checkpoints
from wwjax.core import _results
from wwjax.io._safetensors import load_safetensors

FORMATS = ("orbax", "msgpack", "safetensors")


def detect_format(path) -> str:
    """``orbax``, ``msgpack`` or ``safetensors``, from what is on disk; a ValueError saying what was found otherwise.

    Example:
      >>> detect_format("flax_model.msgpack")  # doctest: +SKIP
      'msgpack'
    """
    path = pathlib.Path(path).absolute()  # Orbax reads relative paths wrongly
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.is_dir():
        if any(path.glob("*.safetensors")) and not (path / "_METADATA").exists():
            return "safetensors"
        return "orbax"
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{"):
        return "safetensors"
    if path.suffix in (".msgpack", ".flax") or (head and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))):  # a map
        return "msgpack"
    raise ValueError(f"{path}: not an Orbax checkpoint directory, a Flax .msgpack file or a .safetensors file")


def _load_msgpack(path: pathlib.Path) -> dict:
    from flax import serialization

    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # noqa: BLE001 - msgpack raises several unrelated types
        raise ValueError(f"{path}: not a readable Flax msgpack file ({type(error).__name__}: {error})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: the msgpack file holds a {type(tree).__name__}, not a params tree")
    return tree


def _load_safetensors(path: pathlib.Path, layout: str) -> dict:
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    tree: dict = {}
    for file in files:  # sharded Hugging Face checkpoints: model-00001-of-0000N.safetensors …
        try:
            shard = load_safetensors(file, layout=layout)
        except ValueError as error:  # already names the file
            raise ValueError(str(error) if str(file) in str(error) else f"{file}: {error}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{file}: not a readable safetensors file ({error})") from None
        _merge(tree, shard)
    return tree


def _merge(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _load_orbax(path, step, item, subtree) -> dict:
    _, item_dir = _checkpoints._locate(path, step, item)
    tree = _checkpoints._metadata_tree(item_dir)
    leaves = [leaf for leaf in _checkpoints._checkpoint_leaves(tree, subtree)
              if leaf.ignored is None and leaf.info.shape is not None]
    arrays = _checkpoints._restore(item_dir, tree, {leaf.key for leaf in leaves})
    return _results.nest([(leaf.info.keys, arrays[leaf.key]) for leaf in leaves])


def load_params(path, *, step: int | None = None, item: str | None = None, subtree: str | None = None,
                layout: str = "flax") -> dict:
    """The weights in ``path`` as a nested dict of numpy arrays, ready for :func:`wwjax.analyze`.

    Args:
      path: an Orbax checkpoint (a ``CheckpointManager`` directory, a step, or a ``StandardCheckpointer``
        directory), a Flax ``.msgpack`` file (``flax.serialization``, Hugging Face ``flax_model.msgpack``), or a
        ``.safetensors`` file or a directory of safetensors shards.
      step, item, subtree: which Orbax step, item and subtree (see :func:`wwjax.analyze_checkpoint`); the
        optimizer state is not read.
      layout: for safetensors: ``flax`` converts PyTorch layouts, ``raw`` keeps the file's names and layouts.

    Example:
      >>> import numpy as np, tempfile, wwjax
      >>> from flax import serialization
      >>> path = tempfile.mkdtemp() + "/model.msgpack"
      >>> _ = open(path, "wb").write(serialization.msgpack_serialize({"Dense_0": {"kernel": np.ones((3, 2))}}))
      >>> wwjax.load_params(path)["Dense_0"]["kernel"].shape
      (3, 2)
    """
    kind = detect_format(path)
    path = pathlib.Path(path).absolute()  # Orbax reads relative paths wrongly
    if kind != "orbax" and (step is not None or item is not None or subtree is not None):
        raise ValueError(f"{path} is a {kind} file: step, item and subtree apply to Orbax checkpoints only")
    if kind == "msgpack":
        return _load_msgpack(path)
    if kind == "safetensors":
        return _load_safetensors(path, layout)
    return _load_orbax(path, step, item, subtree)
