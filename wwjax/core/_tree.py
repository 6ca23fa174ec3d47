"""Walking a parameter pytree: key paths, Flax boxes and nnx variables, unboxed into plain arrays.

Linen ``params``, linen ``variables`` (the ``params`` collection is analysed, others are reported as skipped),
``nn.with_partitioning`` boxes, ``nnx.State``, nnx modules and plain dicts of numpy arrays all come out as the same
``(LeafInfo, array)`` pairs, with paths that read the same: ``params/Dense_0/kernel``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import jax

from wwjax.core._layout import ConvertedArray, LeafInfo, MatrixView
from wwjax.core._reading import module_kernel_view


def key_name(key) -> str:
    """One key-path entry as text (``DictKey``, ``GetAttrKey``, ``SequenceKey``, ``FlattenedIndexKey``)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def normalize_keys(path) -> tuple[str, ...]:
    """Key path → names, dropping the trailing ``value`` that boxed and nnx leaves add.

    Example:
      >>> from jax.tree_util import DictKey, GetAttrKey
      >>> normalize_keys((DictKey("params"), DictKey("Dense_0"), DictKey("kernel"), GetAttrKey("value")))
      ('params', 'Dense_0', 'kernel')
    """
    names = tuple(key_name(k) for k in path)
    if names and names[-1] == "value" and type(path[-1]).__name__ == "GetAttrKey":
        names = names[:-1]
    return names


def _loaded(module: str):
    """A Flax module if the caller has imported it, else None. A tree can only hold linen boxes or nnx variables
    once their module is loaded, so this spares a plain-dict analysis importing ``flax.nnx`` (seconds, cold)."""
    return sys.modules.get(module)


def _box_types() -> tuple[type, ...]:
    meta, nnx = _loaded("flax.core.meta"), _loaded("flax.nnx")
    return (() if meta is None else (meta.AxisMetadata,)) + (() if nnx is None else (nnx.Variable,))


def _is_box(node, types: tuple[type, ...] | None = None) -> bool:
    types = _box_types() if types is None else types
    return bool(types) and isinstance(node, types)


def _unbox(node) -> tuple[Any, tuple | None]:
    """The array inside a Flax box or nnx variable, and its axis names if the metadata has them."""
    meta, nnx = _loaded("flax.core.meta"), _loaded("flax.nnx")

    if meta is not None and isinstance(node, meta.AxisMetadata):
        names = getattr(node, "names", None)
        return node.unbox(), tuple(names) if names is not None else None
    if nnx is not None and isinstance(node, nnx.Variable):
        metadata = node.get_metadata() if hasattr(node, "get_metadata") else {}
        names = metadata.get("out_sharding") or metadata.get("sharding_names") or metadata.get("sharding")
        value = node.get_value() if hasattr(node, "get_value") else node.value
        if names is not None and not isinstance(names, (tuple, list)):
            names = tuple(names) if hasattr(names, "__iter__") else None
        return value, tuple(names) if names else None
    return node, None


def _nnx_modules(tree) -> dict[tuple[str, ...], tuple[str, MatrixView | None]]:
    """For an nnx module: the class name of the module that owns each path (so a kernel knows it is a Conv's), and
    the kernel's view by that module's own attributes (a LinearGeneral's ``in_features``, an Einsum's equation)."""
    nnx = _loaded("flax.nnx")
    if nnx is None or not isinstance(tree, nnx.Module):
        return {}
    modules = {tuple(str(p) for p in path): node for path, node in nnx.iter_graph(tree) if isinstance(node, nnx.Module)}
    info = {}
    for path, module in modules.items():
        parent = type(modules[path[:-1]]).__name__ if path and path[:-1] in modules else ""
        info[path] = (type(module).__name__, module_kernel_view(type(module).__name__, vars(module), parent))
    return info


def _collection_skip(keys: tuple[str, ...], tree) -> str | None:
    if isinstance(tree, Mapping) and "params" in tree and len(tree) > 1 and keys and keys[0] != "params":
        return f"in the '{keys[0]}' collection, not 'params'"
    return None


def flatten_params(tree) -> list[tuple[LeafInfo, Any, str | None]]:
    """Every leaf of ``tree`` as ``(info, array_or_object, collection_skip_reason)``, in pytree order."""
    modules = _nnx_modules(tree)
    types = _box_types()
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda node: _is_box(node, types))
    leaves = []
    for path, node in flat:
        value, axis_names = _unbox(node) if _is_box(node, types) else (node, None)
        keys = normalize_keys(path)
        shape = tuple(value.shape) if hasattr(value, "shape") and hasattr(value, "dtype") else None
        dtype = value.dtype if shape is not None else None
        module_type, module_view = modules.get(keys[:-1], (None, None))
        if module_view is not None and keys[-1] != "kernel":
            module_view = None  # the module's view is its kernel's (an Embed's table is read by its name)
        # A tensor converted from PyTorch knows the layer it came from (Conv, Linear), whatever it is called.
        if isinstance(value, ConvertedArray) and value.module_type is not None:
            module_type, module_view = value.module_type, value.module_view
        info = LeafInfo(
            path="/".join(keys),
            keys=keys,
            shape=shape,
            dtype=dtype,
            axis_names=axis_names,
            module_type=module_type,
            module_view=module_view,
        )
        leaves.append((info, value, _collection_skip(keys, tree)))
    return leaves
