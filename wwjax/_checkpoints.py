"""Orbax checkpoints: analyse one step, or scan a whole run, reading only the weights that are analysed.

For each step: read the tree metadata (shapes and dtypes, no array data) → plan every leaf with the same rules as
:func:`wwjax.analyze` → restore the analysed leaves a bucket at a time (at most ``bucket_bytes`` of weights, every
other leaf an Orbax placeholder, so the optimizer state is never read) → analyse the bucket → drop it. Peak memory
is about one bucket, whatever the size of the run.

Layouts read: ``CheckpointManager`` step directories (the ``default`` item or named items), ``StandardCheckpointer``
/ ``PyTreeCheckpointer`` output, linen ``TrainState``-style trees (``params`` beside ``opt_state``), ``nnx.State``
(whose paths end in ``value``) and Orbax's v1 layout (``ocp.v1.save`` / ``ocp.v1.training.Checkpointer``), which
keeps the same PyTree format in a checkpointable subdirectory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import pathlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import pandas as pd

from wwjax import _results
from wwjax._analyze import _PlannedLeaf, analyze, plan
from wwjax._details import details, summary
from wwjax._distances import distances
from wwjax._layout import LeafInfo
from wwjax._options import make_options
from wwjax._compilation import use_default_cache
from wwjax._progress import ProgressBar
from wwjax._tree import flatten_params

DEFAULT_BUCKET_BYTES = 1 << 28  # 256 MiB of weights restored at once
PROGRESS_DELAY = 0.5  # seconds a scan runs before its progress bar appears
# Item names tried, in order, when a step holds several PyTree items and none is named.
_PREFERRED_ITEMS = ("default", "state", "train_state", "params", "model", "pytree")
_OPTIMIZER_KEYS = frozenset({"opt_state", "optimizer", "opt", "optim", "optimizer_state", "tx_state"})
_TMP_STEP = re.compile(r"^(?:.*?_)?(\d+)\.orbax-checkpoint-tmp")
_STEP = re.compile(r"^(?:.+_)?(\d+)$")


class CheckpointScan(NamedTuple):
    """What :func:`analyze_checkpoint` and :func:`scan_checkpoints` return.

    Attributes:
      details: one row per analysed matrix (and per skipped leaf) per step: ``step``, then the columns of
        :func:`wwjax.details`; with ``init_step``/``init_params`` also ``distance_from_init`` (and
        ``relative_distance_from_init`` for ``raw``/``euclidean``).
      summary: one row per step: ``step``, ``status`` (``success``, ``failed`` or ``unfinished``), ``reason``,
        ``num_layers`` (analysed rows), the means of :func:`wwjax.summary`, ``distance_from_init`` (mean) and any
        metrics the step stored (a JSON ``metrics`` item, or the manager's metrics), as ``metrics/<name>``.
    """

    details: pd.DataFrame
    summary: pd.DataFrame


@dataclasses.dataclass(frozen=True)
class _Step:
    step: int | None
    path: pathlib.Path
    finalized: bool = True


# ---------------------------------------------------------------------------------------------------------------------
# Finding steps and items


def list_steps(directory) -> list[_Step]:
    """The steps of a ``CheckpointManager`` directory, finalised or not, in step order (no array is read).

    A step directory is named by its step (``100``, or ``<prefix>_100``); a save that has not finished is a
    ``100.orbax-checkpoint-tmp-<timestamp>`` directory, listed with ``finalized=False`` unless the step also exists
    finalised.
    """
    directory = pathlib.Path(directory).absolute()  # Orbax reads relative paths wrongly
    found: dict[int, _Step] = {}
    for entry in sorted(directory.iterdir()):
        if not entry.is_dir():
            continue
        if match := _TMP_STEP.match(entry.name):
            step = int(match.group(1))
            found.setdefault(step, _Step(step, entry, finalized=False))
        elif (match := _STEP.match(entry.name)) and _looks_like_step(entry):
            step = int(match.group(1))
            found[step] = _Step(step, entry)
    return [found[s] for s in sorted(found)]


def _looks_like_step(path: pathlib.Path) -> bool:
    """Orbax wrote it: step metadata, a PyTree, or an item directory holding one (not e.g. a ``logs_2`` folder)."""
    markers = ("_CHECKPOINT_METADATA", "_METADATA", "commit_success.txt")
    return any((path / m).exists() for m in markers) or any(
        (p / "_METADATA").exists() for p in path.iterdir() if p.is_dir())


def _is_pytree_dir(path: pathlib.Path) -> bool:
    return (path / "_METADATA").is_file()


def _resolve_item(step_dir: pathlib.Path, item: str | None) -> pathlib.Path:
    """The PyTree item directory of a step directory (or ``step_dir`` itself when it is one)."""
    if _is_pytree_dir(step_dir) and item is None:
        return step_dir
    items = sorted(p.name for p in step_dir.iterdir() if p.is_dir() and _is_pytree_dir(p))
    if item is not None:
        if item not in items:
            raise ValueError(f"{step_dir}: no PyTree item {item!r} (items: {', '.join(items) or 'none'})")
        return step_dir / item
    if len(items) == 1:
        return step_dir / items[0]
    for name in _PREFERRED_ITEMS:
        if name in items:
            return step_dir / name
    if not items:
        raise ValueError(f"{step_dir} holds no Orbax PyTree checkpoint (no _METADATA in it or in its subdirectories)")
    raise ValueError(f"{step_dir} holds several PyTree items ({', '.join(items)}); pass item= to pick one")


def _locate(path, step: int | None, item: str | None) -> tuple[int | None, pathlib.Path]:
    """Resolves a run directory (+ step), a step directory or an item directory to ``(step, item directory)``."""
    path = pathlib.Path(path).absolute()  # Orbax reads relative paths wrongly
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not an Orbax checkpoint directory")
    own_step = int(m.group(1)) if (m := _STEP.match(path.name)) else None
    if _is_pytree_dir(path) or any(_is_pytree_dir(p) for p in path.iterdir() if p.is_dir()):
        if step is not None and step != own_step:
            raise ValueError(f"{path} is a single checkpoint (step {own_step}); step={step} asks for another")
        return own_step, _resolve_item(path, item)
    steps = [s for s in list_steps(path) if s.finalized]
    if not steps:
        raise ValueError(f"{path} is neither an Orbax checkpoint nor a directory of finalised checkpoint steps")
    if step is None:
        chosen = steps[-1]
    else:
        chosen = next((s for s in steps if s.step == step), None)
        if chosen is None:
            raise ValueError(f"{path} has no finalised step {step} (steps: {[s.step for s in steps]})")
    return chosen.step, _resolve_item(chosen.path, item)


def _step_metrics(step_dir: pathlib.Path) -> dict:
    """Scalar metrics a step stored: a JSON ``metrics`` item, or the manager's ``metrics`` in its metadata."""
    found = {}
    try:
        meta = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
        found.update(meta.get("metrics") or {})
    except (OSError, ValueError):
        pass
    item = step_dir / "metrics" / "metrics"
    if item.is_file():
        try:
            found.update(json.loads(item.read_text()))
        except ValueError:
            pass
    return {f"metrics/{k}": v for k, v in found.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------------------------------------------------------------
# Metadata, selection and bucketed restore


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
    from wwjax._tree import key_name

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


def _nest(pairs) -> dict:
    return _results.nest([(keys, value) for keys, value in pairs])


def _init_lookup(init_params) -> dict:
    return {info.path: value for info, value, _ in flatten_params(init_params)}


# ---------------------------------------------------------------------------------------------------------------------
# One step


_DISTANCE_OPTIONS = ("layers", "views", "stacked", "pool")


def _analyze_item(item_dir: pathlib.Path, options: dict, *, bucket_bytes: int, subtree: str | None,
                  init=None, distance_method: str = "euclidean"):
    """Analyses one PyTree item bucket by bucket; returns ``(details frame, summary dict)``.

    ``init`` is ``None``, ``("dir", item_dir)`` for an initial checkpoint, or ``("tree", {path: array})``.
    """
    opts = make_options(**options)
    tree = _metadata_tree(item_dir)
    leaves = _checkpoint_leaves(tree, subtree)
    read = [leaf for leaf in leaves if leaf.ignored is None]
    planned = plan([(leaf.info, None, None) for leaf in read], opts)
    by_path = {leaf.info.path: leaf for leaf in read}
    analysed = [p for p in planned if isinstance(p, _PlannedLeaf)]

    init_tree = _metadata_tree(init[1]) if init and init[0] == "dir" else None
    init_keys = ({leaf.info.path: leaf.key for leaf in _checkpoint_leaves(init_tree, subtree)}
                 if init_tree is not None else {})
    nodes, distance_frames = {}, []
    for bucket in buckets_of(analysed, bucket_bytes):
        arrays = _restore(item_dir, tree, {by_path[p.info.path].key for p in bucket}, mesh=opts.mesh)
        values = [(p.info.keys, arrays[by_path[p.info.path].key]) for p in bucket]
        result = analyze(_nest(values), **options)
        nodes.update({n.path: n for n in _results.iter_nodes(result)})
        if init is not None:
            initial = _initial_values(init, init_tree, init_keys, bucket)
            kwargs = {k: options[k] for k in _DISTANCE_OPTIONS if k in options}
            distance_frames.append(distances(_nest(initial), _nest(values), method=distance_method, **kwargs))
        del arrays, values  # the bucket's weights go before the next bucket is read

    items = [(leaf.info.keys, nodes.get(p.info.path, p) if isinstance(p, _PlannedLeaf) else p)
             for leaf, p in zip(read, planned)]
    ignored: dict[tuple, str] = {}
    for leaf in leaves:
        if leaf.ignored is not None:  # one row per ignored subtree (e.g. opt_state), not one per optimizer leaf
            ignored.setdefault(_ignored_root(leaf.info.keys), leaf.ignored)
    items += [(keys, _results.SkippedLeaf("/".join(keys), reason)) for keys, reason in ignored.items()]
    result = _nest(items)
    table = details(result)
    means = summary(result) if analysed else {}
    row = dict(num_layers=int((table.status != "skipped").sum()), **means)
    if init is not None:
        table = _merge_distances(table, distance_frames, distance_method)
        row["distance_from_init"] = float(np.nanmean(table["distance_from_init"])) if analysed else float("nan")
    return table, row


def _ignored_root(keys: tuple[str, ...]) -> tuple[str, ...]:
    for i, key in enumerate(keys[:-1]):
        if key in _OPTIMIZER_KEYS:
            return keys[: i + 1]
    return keys[:1]


def _initial_values(init, init_tree, init_keys: dict, bucket: list[_PlannedLeaf]) -> list:
    paths = [p.info.path for p in bucket]
    if init[0] == "tree":
        found = [(p.info.keys, init[1][p.info.path]) for p in bucket if p.info.path in init[1]]
        if not found and init[1]:
            raise CheckpointUsageError(
                f"init_params has none of the checkpoint's paths ({', '.join(paths[:3])} …; init_params has "
                f"{', '.join(list(init[1])[:3])} …): pass the tree the checkpoint holds (e.g. {{'params': params}})"
            )
        return found
    keys = {init_keys[p] for p in paths if p in init_keys}
    arrays = _restore(init[1], init_tree, keys) if keys else {}
    return [(p.info.keys, arrays[init_keys[p.info.path]]) for p in bucket if p.info.path in init_keys]


def _merge_distances(table: pd.DataFrame, frames: list[pd.DataFrame], method: str) -> pd.DataFrame:
    if not frames:
        table["distance_from_init"] = np.nan
        return table
    dist = pd.concat(frames, ignore_index=True)
    dist = dist[dist.status == "success"]
    keys = ["path"] + [k for k in ("layer_index", "slice_id") if k in dist and k in table]
    columns = {"delta_W": "distance_from_init", "delta_W_rel": "relative_distance_from_init"}
    dist = dist[keys + [c for c in columns if c in dist]].rename(columns=columns)
    return table.merge(dist, on=keys, how="left")


# ---------------------------------------------------------------------------------------------------------------------
# Public functions


def _frames(rows: list[pd.DataFrame], summaries: list[dict]) -> CheckpointScan:
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["step"])
    table["step"] = table["step"].astype("Int64")
    front = ["step", "status", "reason", "num_layers"]
    summary_frame = pd.DataFrame.from_records(summaries)
    summary_frame = summary_frame[[c for c in front if c in summary_frame]
                                  + [c for c in summary_frame if c not in front]]
    summary_frame["step"] = summary_frame["step"].astype("Int64")
    return CheckpointScan(table, summary_frame)


def analyze_checkpoint(path, step: int | None = None, item: str | None = None, *, subtree: str | None = None,
                       bucket_bytes: int = DEFAULT_BUCKET_BYTES, **analyze_options) -> CheckpointScan:
    """Analyses the weights of one Orbax checkpoint, restoring only them, a bucket at a time.

    Args:
      path: a ``CheckpointManager`` directory (its latest finalised step unless ``step`` is given), one step
        directory, or a ``StandardCheckpointer``/``PyTreeCheckpointer`` directory.
      step: the step to read from a manager directory.
      item: the PyTree item of a step with several (``state`` beside ``metrics``); found alone otherwise.
      subtree: analyse only the leaves under this ``/``-path (default: ``params`` when the tree has it, else
        ``model``, else everything but the optimizer state).
      bucket_bytes: the most bytes of weights restored at once (a larger single leaf is read alone).
      **analyze_options: options of :func:`wwjax.analyze`; with ``mesh``, each analysed leaf is restored as a global
        array sharded over it (each process of a multi-host run reads only its shards).

    Returns:
      A :class:`CheckpointScan`: ``details`` (a ``step`` column, then the columns of :func:`wwjax.details`) and
      ``summary`` (one row).

    Example:
      >>> import numpy as np, orbax.checkpoint as ocp, tempfile, wwjax
      >>> path = tempfile.mkdtemp() + "/ckpt"
      >>> w = np.random.default_rng(0).standard_t(3, (128, 64)).astype("float32")
      >>> with ocp.StandardCheckpointer() as ckptr:
      ...     ckptr.save(path, {"params": {"Dense_0": {"kernel": w}}, "opt_state": {"mu": w}})
      >>> scan = wwjax.analyze_checkpoint(path)
      >>> scan.details[["path", "status", "N", "M"]].to_string(index=False)
      '                 path  status    N    M\\n            opt_state skipped <NA> <NA>\\nparams/Dense_0/kernel success  128   64'
    """
    found_step, item_dir = _locate(path, step, item)
    table, row = _analyze_item(item_dir, analyze_options, bucket_bytes=bucket_bytes, subtree=subtree)
    table.insert(0, "step", found_step)
    step_dir = item_dir if item_dir == pathlib.Path(path).absolute() else item_dir.parent  # where the step's metrics live
    summary_row = dict(step=found_step, status="success", reason="", **row, **_step_metrics(step_dir))
    return _frames([table], [summary_row])


def scan_checkpoints(directory, steps: Sequence[int] | None = None, *, item: str | None = None,
                     init_step: int | None = None, init_params: Any = None, distance_method: str = "euclidean",
                     subtree: str | None = None, bucket_bytes: int = DEFAULT_BUCKET_BYTES, progress: bool = True,
                     cache: bool = True, **analyze_options) -> CheckpointScan:
    """Analyses every step of a ``CheckpointManager`` run: how each layer's metrics evolve.

    Only finalised steps are analysed. A save that never finished, or a step that cannot be read, becomes a row
    of ``summary`` (and of ``details``) whose ``status`` and ``reason`` say why, and the scan goes on.

    Args:
      directory: the manager's directory (integer-named step subdirectories).
      steps: the steps to analyse (default: all).
      item: the PyTree item to read in each step (found alone when there is one, or ``default``/``state``).
      init_step: a step (usually 0) whose weights are the initialisation: adds ``distance_from_init`` per row.
      init_params: the initial params as a tree with the checkpoint's paths, instead of ``init_step``.
      distance_method: the :func:`wwjax.distances` method of ``distance_from_init`` (``euclidean``).
      subtree, bucket_bytes: as in :func:`analyze_checkpoint`.
      progress: draw a progress bar on stderr when the scan takes more than half a second; False for silence.
      cache: keep compiled programs in the persistent cache (``$XDG_CACHE_HOME/wwjax``, see
        :func:`wwjax.enable_compilation_cache`) so that the next scan of this model compiles nothing; ``False``, or
        the environment variable ``WWJAX_NO_CACHE=1``, leaves JAX's configuration alone.
      **analyze_options: options of :func:`wwjax.analyze`; with ``mesh``, each analysed leaf is restored as a global
        array sharded over it (each process of a multi-host run reads only its shards).

    Returns:
      A :class:`CheckpointScan`: ``details`` (every row of every step) and ``summary`` (one row per step).

    Example:
      >>> import numpy as np, orbax.checkpoint as ocp, tempfile, wwjax
      >>> run = tempfile.mkdtemp()
      >>> rng = np.random.default_rng(0)
      >>> w = rng.normal(size=(64, 32)).astype("float32")
      >>> with ocp.CheckpointManager(run) as manager:
      ...     for step in (0, 10):
      ...         _ = manager.save(step, args=ocp.args.StandardSave({"params": {"kernel": w + step}}))
      >>> scan = wwjax.scan_checkpoints(run, init_step=0, progress=False)
      >>> scan.summary[["step", "status", "num_layers", "distance_from_init"]].round(1).to_string(index=False)
      ' step  status  num_layers  distance_from_init\\n    0 success           1                 0.0\\n   10 success           1               452.5'
    """
    if init_step is not None and init_params is not None:
        raise ValueError("pass init_step or init_params, not both")
    make_options(**analyze_options)  # a wrong option fails now, not at every step
    directory = pathlib.Path(directory).absolute()  # Orbax reads relative paths wrongly
    if not directory.is_dir():
        raise FileNotFoundError(f"no such checkpoint directory: {directory}")
    all_steps = list_steps(directory)
    if not all_steps:
        kind = "a single checkpoint; use wwjax.analyze_checkpoint" if _is_pytree_dir(directory) else "empty"
        raise ValueError(f"{directory} has no checkpoint steps ({kind})")
    chosen = [s for s in all_steps if steps is None or s.step in set(steps)]
    missing = sorted(set(steps or ()) - {s.step for s in all_steps})
    if missing:
        raise ValueError(f"steps {missing} are not in {directory} (steps: {[s.step for s in all_steps]})")
    init = None
    if init_params is not None:
        init = ("tree", _init_lookup(init_params))
    elif init_step is not None:
        start = next((s for s in all_steps if s.step == init_step and s.finalized), None)
        if start is None:
            raise ValueError(f"init_step={init_step} is not a finalised step of {directory} "
                             f"(steps: {[s.step for s in all_steps if s.finalized]})")
        init = ("dir", _resolve_item(start.path, item))

    if cache:
        use_default_cache()
    tables, rows = [], []
    bar = ProgressBar(len(chosen), enabled=progress, delay=PROGRESS_DELAY, label="wwjax scan")
    for done, entry in enumerate(chosen):
        bar.update(done, f"step {entry.step}")
        if not entry.finalized:
            reason = f"unfinished save ({entry.path.name}): the step was never finalised"
            rows.append(dict(step=entry.step, status="unfinished", reason=reason))
            tables.append(pd.DataFrame([dict(step=entry.step, path=entry.path.name, status="unfinished",
                                             reason=reason)]))
            continue
        try:
            item_dir = _resolve_item(entry.path, item)
            table, row = _analyze_item(item_dir, analyze_options, bucket_bytes=bucket_bytes, subtree=subtree,
                                       init=init, distance_method=distance_method)
        except CheckpointUsageError:
            raise
        except Exception as error:  # noqa: BLE001 - a corrupt step is a row, and the scan goes on
            reason = f"cannot read the step: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            rows.append(dict(step=entry.step, status="failed", reason=reason, **_step_metrics(entry.path)))
            tables.append(pd.DataFrame([dict(step=entry.step, path=entry.path.name, status="failed",
                                             reason=reason)]))
            continue
        table.insert(0, "step", entry.step)
        tables.append(table)
        rows.append(dict(step=entry.step, status="success", reason="", **row, **_step_metrics(entry.path)))
    bar.update(len(chosen), "done")
    bar.close()
    return _frames(tables, rows)
