"""Orbax checkpoints: analyse one step, or scan a whole run, reading only the weights that are analysed.

For each step: read the tree metadata (shapes and dtypes, no array data) → plan every leaf with the same rules as
:func:`wwjax.analyze` → restore the analysed leaves a bucket at a time (at most ``bucket_bytes`` of weights, every
other leaf an Orbax placeholder, so the optimizer state is never read) → analyse the bucket → drop it. Peak memory
is about one bucket, whatever the size of the run.

Steps and items are found by :mod:`wwjax.io._steps`, metadata read and leaves restored by :mod:`wwjax.io._restore`;
linen ``TrainState``-style trees (``params`` beside ``opt_state``) and ``nnx.State`` (whose paths end in ``value``)
are read as their params.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from wwjax.core import _results
from wwjax.core._analyze import _PlannedLeaf, analyze, plan
from wwjax.core._details import details, summary
from wwjax.io._distances import distances
from wwjax.core._options import make_options
from wwjax.core._compilation import use_default_cache
from wwjax.io._progress import ProgressBar
from wwjax.core._tree import flatten_params
from wwjax.io._restore import (  # noqa: F401  (describe reads the metadata through this module)
    _OPTIMIZER_KEYS, CheckpointUsageError, _checkpoint_leaves, _metadata_tree, _restore, buckets_of,
)
from wwjax.io._steps import _is_pytree_dir, _locate, _resolve_item, _Step, _step_metrics, list_steps  # noqa: F401

if TYPE_CHECKING:  # pandas is imported where a table is made: reading a file does not wait for it
    import pandas as pd

DEFAULT_BUCKET_BYTES = 1 << 28  # 256 MiB of weights restored at once
PROGRESS_DELAY = 0.5  # seconds a scan runs before its progress bar appears
# Item names tried, in order, when a step holds several PyTree items and none is named.


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
    import pandas as pd

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
    import pandas as pd

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
    import pandas as pd

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
