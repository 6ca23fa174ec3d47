"""``wwjax.describe``: how every leaf will be read, from shapes alone, before anything is solved.

WeightWatcher's ``describe``: the plan of :func:`wwjax.analyze` as a table — each leaf's layer type, its matrix view
in words, ``N``, ``M``, ``rf``, ``num_evals``, whether it will be analysed (and if not, why) and any guess its reading
rests on. It reads no array: it works on ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``, ``nnx.eval_shape``),
on the metadata of an Orbax checkpoint, and on paths of weights on disk.
"""

from __future__ import annotations

import os
import pathlib

import pandas as pd

from wwjax.core import _results
from wwjax.core._analyze import _PlannedLeaf, plan
from wwjax.core._layout import view_in_words
from wwjax.core._options import make_options
from wwjax.core._tree import flatten_params

COLUMNS = ("path", "shape", "layer_type", "view", "num_layers", "N", "M", "rf", "num_evals", "status", "reason",
           "warning")
_INT_COLUMNS = ("num_layers", "N", "M", "rf", "num_evals")


def _row(node: _PlannedLeaf | _results.SkippedLeaf) -> dict:
    if isinstance(node, _results.SkippedLeaf):
        return dict(path=node.path, shape=node.shape, layer_type=node.layer_type or "", view="", status="skipped",
                    reason=node.reason, warning=node.warning)
    return dict(path=node.info.path, shape=tuple(node.info.shape), layer_type=node.view.layer_type,
                view=view_in_words(node.info.shape, node.view), num_layers=node.shape.num_layers, N=node.shape.N,
                M=node.shape.M, rf=node.shape.num_slices, num_evals=node.num_evals, status="planned", reason="",
                warning=node.warning)


def _table(nodes: list[_PlannedLeaf | _results.SkippedLeaf]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records([_row(n) for n in nodes], columns=list(COLUMNS))
    for name in _INT_COLUMNS:
        frame[name] = frame[name].astype("Int64")
    return frame


def _orbax_plan(path: pathlib.Path, opts, step, item, subtree) -> list:
    from wwjax.io import _checkpoints

    _, item_dir = _checkpoints._locate(path, step, item)
    leaves = _checkpoints._checkpoint_leaves(_checkpoints._metadata_tree(item_dir), subtree)
    read = [leaf for leaf in leaves if leaf.ignored is None]
    ignored: dict[tuple, str] = {}
    for leaf in leaves:
        if leaf.ignored is not None:  # one row per ignored subtree (e.g. opt_state), as analyze_checkpoint gives
            ignored.setdefault(_checkpoints._ignored_root(leaf.info.keys), leaf.ignored)
    skipped = [_results.SkippedLeaf("/".join(keys), reason) for keys, reason in ignored.items()]
    return plan([(leaf.info, None, None) for leaf in read], opts) + skipped


def describe(params, *, step: int | None = None, item: str | None = None, subtree: str | None = None,
             **options) -> pd.DataFrame:
    """How :func:`wwjax.analyze` will read every leaf, as a table, from shapes alone (no eigen-solve, no array read).

    One row per leaf: ``path``, ``shape``, ``layer_type``, ``view`` (the matrix view in words: layers, kernel
    positions, which axes are rows and columns), ``num_layers``, ``N``, ``M``, ``rf``, ``num_evals``, ``status``
    (``planned`` or ``skipped``), ``reason`` (why skipped, and which option would include it) and ``warning`` (the
    reading rests on a guess, e.g. a 3-D kernel read by its name, and the ``views=``/``stacked=`` that changes it).

    Args:
      params: a parameter pytree of arrays or of shapes (``jax.ShapeDtypeStruct`` from ``jax.eval_shape``, an Orbax
        metadata tree), or a path that :func:`wwjax.load_params` reads; of an Orbax checkpoint only the metadata
        is read.
      step, item, subtree: for an Orbax checkpoint path, as in :func:`wwjax.analyze_checkpoint`.
      **options: :func:`wwjax.analyze`'s options (``views``, ``stacked``, ``layers``, ``min_evals``, ``pool`` …).

    Returns:
      A pandas DataFrame, one row per leaf, in pytree order.

    Example:
      >>> import jax, wwjax
      >>> shapes = {"Conv_0": {"kernel": jax.ShapeDtypeStruct((3, 3, 8, 16), "float32")},
      ...           "scan": {"mlp": {"kernel": jax.ShapeDtypeStruct((4, 64, 32), "float32")}}}
      >>> table = wwjax.describe(shapes)
      >>> table[["layer_type", "num_layers", "N", "M", "rf", "num_evals"]].values.tolist()
      [['conv2d', 1, 16, 8, 9, 72], ['dense', 4, 64, 32, 1, 32]]
      >>> table.view[0]
      '9 positions (axes 0,1) of 8x16 (rows: axis 2, cols: axis 3)'
      >>> table.warning[1].split(";")[0]
      "3-D kernel read as a stack of dense layers (layers, in, out) because of the name 'mlp'"
    """
    opts = make_options(**options)
    if isinstance(params, (str, os.PathLike)):
        from wwjax.io._formats import detect_format, load_params

        path = pathlib.Path(params).absolute()
        if detect_format(path) == "orbax":
            return _table(_orbax_plan(path, opts, step, item, subtree))
        params = load_params(path, step=step, item=item, subtree=subtree)
    elif step is not None or item is not None or subtree is not None:
        raise ValueError("step, item and subtree apply to a checkpoint path, not to a params pytree")
    leaves = flatten_params(params)
    return _table(plan(leaves, opts))
