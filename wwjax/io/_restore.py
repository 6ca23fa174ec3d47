"""Reading part of an Orbax checkpoint: its tree metadata (shapes, no data), which leaves are analysed (not the
optimizer state), and a restore of only those leaves, a bucket of bytes at a time."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pathlib
from typing import Any

import jax
import numpy as np

from wwjax.core._analyze import _PlannedLeaf
from wwjax.core._layout import LeafInfo

_OPTIMIZER_KEYS = frozenset({"opt_state", "optimizer", "opt", "optim", "optimizer_state", "tx_state"})


@dataclasses.dataclass(frozen=True)
class _CheckpointLeaf:
    key: str  # jax.tree_util.keystr of the leaf in the checkpoint tree: identifies it in a restore target
    info: LeafInfo
    ignored: str | None  # why the leaf is not read (optimizer state, outside params), else None


class CheckpointUsageError(ValueError):
    """A mistake in the call (not in one step's files): raised at once rather than turned into a ``failed`` row."""


@contextlib.contextmanager
def _checkpointer():
    """Orbax's PyTree checkpointer, with its warning about reading an item directory (no step metadata) hushed."""
    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with ocp.PyTreeCheckpointer() as checkpointer:
            yield checkpointer
    finally:
        absl.setLevel(level)


def _metadata_tree(item_dir: pathlib.Path):
    with _checkpointer() as checkpointer:
        metadata = checkpointer.metadata(item_dir)
    metadata = getattr(metadata, "item_metadata", metadata)
    tree = getattr(metadata, "tree", metadata)
    if tree is None:
        raise ValueError(f"{item_dir}: Orbax found no tree metadata")
    return tree


def _ignored_reason(keys: tuple[str, ...], top: set[str], subtree: tuple[str, ...] | None) -> str | None:
    if subtree is not None:
        return None if keys[: len(subtree)] == subtree else f"outside subtree={'/'.join(subtree)!r} (not read)"
    if "params" in top:
        return None if keys[0] == "params" else (
            "optimizer state (not read)" if keys[0] in _OPTIMIZER_KEYS else "not under 'params' (not read)")
    if "model" in top:
        return None if keys[0] == "model" else (
            "optimizer state (not read)" if keys[0] in _OPTIMIZER_KEYS else "not under 'model' (not read)")
    if any(k in _OPTIMIZER_KEYS for k in keys[:-1]):
        return "optimizer state (not read)"
    return None


def _checkpoint_leaves(tree, subtree: str | None) -> list[_CheckpointLeaf]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    from wwjax.core._tree import key_name

    names = [tuple(key_name(k) for k in path) for path, _ in flat]
    # nnx.State keeps each Variable's ``value`` level in the saved paths: drop it, as wwjax.analyze does.
    if names and all(n and n[-1] == "value" and len(n) > 1 for n in names):
        names = [n[:-1] for n in names]
    top = {n[0] for n in names if n}
    wanted = tuple(subtree.strip("/").split("/")) if subtree else None
    if wanted is not None and not any(n[: len(wanted)] == wanted for n in names):
        raise ValueError(f"subtree={subtree!r} is not in the checkpoint (top-level keys: {sorted(top)})")
    leaves = []
    for (path, meta), keys in zip(flat, names):
        shape = tuple(meta.shape) if hasattr(meta, "shape") and getattr(meta, "dtype", None) is not None else None
        dtype = meta.dtype if shape is not None else None
        info = LeafInfo(path="/".join(keys), keys=keys, shape=shape, dtype=dtype)
        leaves.append(_CheckpointLeaf(jax.tree_util.keystr(path), info, _ignored_reason(keys, top, wanted)))
    return leaves


def _mesh_sharding(shape: tuple[int, ...], mesh):
    """Where a restored leaf lives on ``mesh``: its first axis split over every device when it divides (each
    process then reads only its own rows), else replicated."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    split = len(shape) >= 2 and shape[0] % mesh.size == 0
    return NamedSharding(mesh, P(tuple(mesh.axis_names)) if split else P())


def _restore(item_dir: pathlib.Path, tree, keys: set[str], mesh=None) -> dict[str, Any]:
    """Restores only the leaves whose keystr is in ``keys``, as numpy arrays (or, with a ``mesh``, as global arrays
    sharded over it, each process reading its shards); every other leaf stays on disk."""
    import orbax.checkpoint as ocp

    if not hasattr(ocp, "PLACEHOLDER"):  # pragma: no cover - old Orbax
        raise RuntimeError("restoring part of a checkpoint needs orbax-checkpoint >= 0.11.11 (ocp.PLACEHOLDER)")
    target = jax.tree_util.tree_map_with_path(
        lambda p, m: m if jax.tree_util.keystr(p) in keys else ocp.PLACEHOLDER, tree)
    if mesh is None:
        restore_args = jax.tree_util.tree_map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    else:
        restore_args = jax.tree_util.tree_map_with_path(
            lambda p, m: ocp.ArrayRestoreArgs(sharding=_mesh_sharding(tuple(m.shape), mesh))
            if jax.tree_util.keystr(p) in keys else ocp.RestoreArgs(restore_type=np.ndarray), tree)
    with _checkpointer() as checkpointer:
        restored = checkpointer.restore(item_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(restored)[0]
            if jax.tree_util.keystr(p) in keys}


def _nbytes(info: LeafInfo) -> int:
    return math.prod(info.shape) * np.dtype(info.dtype).itemsize


def buckets_of(planned: list[_PlannedLeaf], bucket_bytes: int) -> list[list[_PlannedLeaf]]:
    """Analysed leaves in matrix-shape order, cut into runs of at most ``bucket_bytes`` (a bigger leaf goes alone)."""
    ordered = sorted(planned, key=lambda p: (p.shape.N, p.shape.M, p.info.path))
    out, current, size = [], [], 0
    for leaf in ordered:
        nbytes = _nbytes(leaf.info)
        if current and size + nbytes > bucket_bytes:
            out.append(current)
            current, size = [], 0
        current.append(leaf)
        size += nbytes
    return out + ([current] if current else [])
