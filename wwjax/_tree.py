"""Walking a parameter pytree: key paths, Flax boxes and nnx variables, unboxed into plain arrays.

Linen ``params``, linen ``variables`` (the ``params`` collection is analysed, others are reported as skipped),
``nn.with_partitioning`` boxes, ``nnx.State``, nnx modules and plain dicts of numpy arrays all come out as the same
``(LeafInfo, array)`` pairs, with paths that read the same: ``params/Dense_0/kernel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from wwjax._layout import LeafInfo


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


def _is_box(node) -> bool:
    try:
        from flax.core import meta
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(node, (meta.AxisMetadata, nnx.Variable))


def _unbox(node) -> tuple[Any, tuple | None]:
    """The array inside a Flax box or nnx variable, and its axis names if the metadata has them."""
    from flax.core import meta
    from flax import nnx

    if isinstance(node, meta.AxisMetadata):
        names = getattr(node, "names", None)
        return node.unbox(), tuple(names) if names is not None else None
    if isinstance(node, nnx.Variable):
        metadata = node.get_metadata() if hasattr(node, "get_metadata") else {}
        names = metadata.get("out_sharding") or metadata.get("sharding_names") or metadata.get("sharding")
        value = node.get_value() if hasattr(node, "get_value") else node.value
        if names is not None and not isinstance(names, (tuple, list)):
            names = tuple(names) if hasattr(names, "__iter__") else None
        return value, tuple(names) if names else None
    return node, None


def _nnx_module_types(tree) -> dict[tuple[str, ...], str]:
    """For an nnx module: the class name of the module that owns each path (so a kernel knows it is a Conv's)."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return {}
    if not isinstance(tree, nnx.Module):
        return {}
    return {
        tuple(str(p) for p in path): type(node).__name__
        for path, node in nnx.iter_graph(tree)
        if isinstance(node, nnx.Module)
    }


def _collection_skip(keys: tuple[str, ...], tree) -> str | None:
    if isinstance(tree, Mapping) and "params" in tree and len(tree) > 1 and keys and keys[0] != "params":
        return f"in the '{keys[0]}' collection, not 'params'"
    return None


def flatten_params(tree) -> list[tuple[LeafInfo, Any, str | None]]:
    """Every leaf of ``tree`` as ``(info, array_or_object, collection_skip_reason)``, in pytree order."""
    module_types = _nnx_module_types(tree)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)
    leaves = []
    for path, node in flat:
        value, axis_names = _unbox(node) if _is_box(node) else (node, None)
        keys = normalize_keys(path)
        shape = tuple(value.shape) if hasattr(value, "shape") and hasattr(value, "dtype") else None
        dtype = value.dtype if shape is not None else None
        info = LeafInfo(
            path="/".join(keys),
            keys=keys,
            shape=shape,
            dtype=dtype,
            axis_names=axis_names,
            module_type=module_types.get(keys[:-1]),
        )
        leaves.append((info, value, _collection_skip(keys, tree)))
    return leaves
