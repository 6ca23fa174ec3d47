"""``wwjax.distances``: how far each weight matrix of one params tree is from the same matrix of another.

Layers are matched by key path (never by position, as WeightWatcher does) and read through the same matrix views
as :func:`wwjax.analyze`. The per-matrix measures are computed bucket by bucket: all matrices of one shape, from
every leaf, in one vmapped call.

Methods (``delta_W`` column):

* ``raw``: ‖A − B‖_F over the whole tensor (one row per leaf); ``delta_b`` is the same for the sibling ``bias``.
* ``euclidean``: ‖A_s − B_s‖_F per matrix (per conv kernel position ``s``), averaged over the positions of a row.
* ``cosine``: ⟨A_s, B_s⟩ / (‖A_s‖ ‖B_s‖), a similarity (1 for identical weights), averaged like ``euclidean``.
* ``cka``: linear centred kernel alignment (Kornblith et al. 2019), a similarity in [0, 1]. Each matrix is read as
  *units × features*: the output units of a dense, attention or conv layer (their incoming weight vectors), the
  tokens of an embedding. The columns are centred over the units (the mean weight vector is removed), then
  ``CKA = ‖AᵀB‖²_F / (‖AᵀA‖_F ‖BᵀB‖_F)``. Invariant to orthogonal transforms and isotropic scaling of either side.
* ``ww_cka``: WeightWatcher 0.7.7's form, for parity: uncentred, ``‖AᵀB‖_F / √(‖AᵀA‖_F ‖BBᵀ‖_F)`` (the square
  root of uncentred linear CKA), with PyTorch's orientation (dense ``(out, in)``; conv slices made tall).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from wwjax.core import _results
from wwjax.core._analyze import _PlannedLeaf, _row_labels, plan
from wwjax.core._details import _natural_key
from wwjax.core._layout import MatrixView, matrix_shape
from wwjax.core._options import make_options
from wwjax.core._spectra import compute_dtype
from wwjax.core._tree import flatten_params

if TYPE_CHECKING:  # imported where the table is made: `import wwjax` does without pandas
    import pandas as pd

METHODS = ("raw", "euclidean", "cosine", "cka", "ww_cka")
_SIMILARITIES = ("cosine", "cka", "ww_cka")


def _units_first(leaf, view: MatrixView, method: str):
    """``(layers·slices, units, features)``: dense/attention/conv read as (out, in), embeddings as (tokens, dim)."""
    ms = matrix_shape(leaf.shape, view)
    units, features = (view.row_axes, view.col_axes) if view.layer_type == "embedding" else (view.col_axes,
                                                                                              view.row_axes)
    order = view.layer_axes + view.slice_axes + units + features
    n_units, n_features = math.prod(leaf.shape[a] for a in units), math.prod(leaf.shape[a] for a in features)
    mats = leaf.transpose(order).reshape(ms.num_layers * ms.num_slices, n_units, n_features)
    # WeightWatcher turns each conv slice tall (its W.T when out < in); its dense weights stay (out, in).
    if method == "ww_cka" and view.layer_type.startswith("conv") and n_units < n_features:
        mats = mats.swapaxes(-1, -2)
    return mats


def _frobenius_of_product(a, b):
    """‖aᵀb‖_F through the smaller Gram matrix: ⟨a aᵀ, b bᵀ⟩ when there are fewer rows than columns."""
    hi = jax.lax.Precision.HIGHEST
    if a.shape[0] < a.shape[1]:
        return jnp.sqrt(jnp.maximum(jnp.sum(jnp.matmul(a, a.T, precision=hi) * jnp.matmul(b, b.T, precision=hi)), 0))
    return jnp.linalg.norm(jnp.matmul(a.T, b, precision=hi))


def _pair_measure(a: Float[Array, "n m"], b: Float[Array, "n m"], method: str) -> tuple:
    """One matrix pair → (measure, reference) where reference is ‖a‖_F for the distances, NaN otherwise."""
    nan = jnp.array(jnp.nan, a.dtype)
    if method == "euclidean":
        return jnp.linalg.norm(a - b), jnp.linalg.norm(a)
    if method == "cosine":
        denom = jnp.linalg.norm(a) * jnp.linalg.norm(b)
        return jnp.where(denom > 0, jnp.vdot(a, b) / jnp.where(denom > 0, denom, 1), nan), nan
    if method == "ww_cka":
        numerator = _frobenius_of_product(a, b)
        norm = jnp.sqrt(_frobenius_of_product(a, a) * _frobenius_of_product(b.T, b.T))
        return numerator / jnp.where(norm < 1e-6, norm + 1e-6, norm), nan
    # cka: centre the features over the units (rows), then linear CKA.
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    cross = _frobenius_of_product(a, b) ** 2
    denom = _frobenius_of_product(a, a) * _frobenius_of_product(b, b)
    return jnp.where(denom > 0, cross / jnp.where(denom > 0, denom, 1), nan), nan


@functools.partial(jax.jit, static_argnames="method")
def pair_measures(a: Float[Array, "batch n m"], b: Float[Array, "batch n m"], *, method: str) -> tuple:
    """The measure of every pair ``(a[i], b[i])`` of a bucket, vmapped.

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.eye(3)[None]
      >>> d, ref = pair_measures(a, 2 * a, method="euclidean")
      >>> round(float(d[0]), 4), round(float(ref[0]), 4)
      (1.7321, 1.7321)
    """
    return jax.vmap(functools.partial(_pair_measure, method=method))(a, b)


@jax.jit
def _raw_norms(a, b):
    return jnp.linalg.norm(a - b, axis=-1), jnp.linalg.norm(a, axis=-1)


def _matrix_rows(leaves: list[_PlannedLeaf], pairs: list[tuple], method: str, dtype) -> list[tuple]:
    """Per planned leaf: (measure per row, reference per row), from one vmapped call per matrix shape."""
    stacks_a, stacks_b = [], []
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, (leaf, (a, b)) in enumerate(zip(leaves, pairs)):
        stacks_a.append(_units_first(jnp.asarray(a, dtype), leaf.view, method))
        stacks_b.append(_units_first(jnp.asarray(b, dtype), leaf.view, method))
        buckets[stacks_a[-1].shape[1:]].append(i)
    per_matrix = [None] * len(leaves)
    for members in buckets.values():
        measure, reference = pair_measures(
            jnp.concatenate([stacks_a[i] for i in members]), jnp.concatenate([stacks_b[i] for i in members]),
            method=method,
        )
        offset = 0
        for i in members:
            count = stacks_a[i].shape[0]
            per_matrix[i] = (measure[offset : offset + count], reference[offset : offset + count])
            offset += count
    rows = []
    for leaf, (measure, reference) in zip(leaves, per_matrix):
        L, K = leaf.shape.num_layers, leaf.shape.num_slices
        if leaf.pooled:  # WeightWatcher averages a conv layer's per-position measures
            measure, reference = measure.reshape(L, K).mean(-1), reference.reshape(L, K).mean(-1)
        rows.append((np.asarray(measure), np.asarray(reference)))
    return rows


def _raw_rows(pairs: list[tuple], dtype) -> list[tuple]:
    """‖A − B‖_F and ‖A‖_F of whole tensors, one vmapped call per tensor size."""
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, (a, _) in enumerate(pairs):
        buckets[int(np.size(a))].append(i)
    out = [None] * len(pairs)
    for members in buckets.values():
        flat = lambda k: jnp.stack([jnp.ravel(jnp.asarray(pairs[i][k], dtype)) for i in members])  # noqa: E731
        delta, reference = _raw_norms(flat(0), flat(1))
        for j, i in enumerate(members):
            out[i] = (float(delta[j]), float(reference[j]))
    return out


def _leaf_map(tree) -> dict:
    return {info.path: (info, value, skip) for info, value, skip in flatten_params(tree)}


def _mismatch(path: str, a, b) -> str | None:
    if a is None:
        return "only in params_b (missing from params_a)"
    if b is None:
        return "only in params_a (missing from params_b)"
    if a[0].shape != b[0].shape:
        return f"shape {a[0].shape} in params_a but {b[0].shape} in params_b"
    return None


def distances(params_a, params_b, method: str = "raw", *, layers=(), views=None, stacked=(), pool: bool = True,
              strict: bool = False) -> pd.DataFrame:
    """Per-layer distance (or similarity) between two params trees, matched by path.

    Args:
      params_a: the reference tree (e.g. the initial params); ``delta_W_rel`` is relative to its norm.
      params_b: the other tree, with the same paths and shapes.
      method: ``raw``, ``euclidean``, ``cosine``, ``cka`` (centred linear CKA) or ``ww_cka`` (WeightWatcher's
        uncentred form); see the module docs for the formulas.
      layers, views, stacked, pool: as in :func:`wwjax.analyze` (which leaves, read how; ``pool=False`` gives
        one row per conv kernel position).
      strict: raise a ValueError on a path or shape mismatch instead of a ``failed`` row that says so.

    Returns:
      A DataFrame: ``path`` (``layer_index``/``slice_id`` when present), ``layer_type``, ``method``, ``delta_W``,
      ``delta_W_rel`` (raw/euclidean: ``delta_W`` over the same norm of ``params_a``), ``delta_b`` (raw only),
      ``N``, ``M``, ``rf``, ``status`` (``success``/``failed``/``skipped``) and ``reason``.

    Example:
      >>> import numpy as np, wwjax
      >>> a = {"dense": {"kernel": np.eye(4, dtype="float32"), "bias": np.zeros(4, "float32")}}
      >>> b = {"dense": {"kernel": 2 * np.eye(4, dtype="float32"), "bias": np.ones(4, "float32")}}
      >>> df = wwjax.distances(a, b, method="raw")
      >>> df.loc[df.status == "success", ["path", "delta_W", "delta_b"]].to_string(index=False)
      '        path  delta_W  delta_b\\ndense/kernel      2.0      2.0'
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    opts = make_options(layers=layers, views=views, stacked=stacked, pool=pool, min_evals=0, max_evals=1 << 62,
                        max_N=1 << 62)
    leaves_a, leaves_b = _leaf_map(params_a), _leaf_map(params_b)
    paths = list(leaves_a) + [p for p in leaves_b if p not in leaves_a]
    problems = {p: r for p in paths if (r := _mismatch(p, leaves_a.get(p), leaves_b.get(p)))}
    if strict and problems:
        listed = "; ".join(f"{p}: {r}" for p, r in list(problems.items())[:5])
        raise ValueError(f"params_a and params_b do not match ({len(problems)} leaves): {listed}")
    matched = [p for p in paths if p not in problems]
    planned = dict(zip(matched, plan([leaves_a[p] for p in matched], opts)))
    if paths and not any(isinstance(x, _PlannedLeaf) for x in planned.values()):
        example = ", ".join(list(leaves_a)[:3]) or "(none)"
        other = ", ".join(list(leaves_b)[:3]) or "(none)"
        raise ValueError(
            f"params_a and params_b share no weight matrix of equal shape (params_a has {example} …; params_b has "
            f"{other} …): are they the same model, unwrapped the same way?"
        )

    dtype = compute_dtype(None)
    analysed = [p for p in matched if isinstance(planned[p], _PlannedLeaf)]
    pairs = [(leaves_a[p][1], leaves_b[p][1]) for p in analysed]
    records = []
    if method == "raw":
        raw = _raw_rows(pairs, dtype)
        for p, (delta, reference) in zip(analysed, raw):
            leaf = planned[p]
            records.append(_row(leaf, delta, reference, None, None, method) | {"delta_b": _bias_delta(p, leaves_a,
                                                                                                      leaves_b, dtype)})
    else:
        for p, (measure, reference) in zip(analysed, _matrix_rows([planned[p] for p in analysed], pairs, method,
                                                                  dtype)):
            leaf = planned[p]
            layer_index, slice_id = _row_labels(leaf)
            for r in range(len(measure)):
                records.append(_row(leaf, measure[r], reference[r], layer_index[r], slice_id[r], method))
    for p in paths:
        if p in problems:
            records.append(dict(path=p, method=method, status="failed", reason=problems[p]))
        elif isinstance(planned[p], _results.SkippedLeaf):
            node = planned[p]
            records.append(dict(path=p, layer_type=node.layer_type or "", method=method, status="skipped",
                                reason=node.reason))
    return _table(records, method)


def _row(leaf: _PlannedLeaf, measure, reference, layer_index, slice_id, method: str) -> dict:
    measure, reference = float(measure), float(reference)
    row = dict(path=leaf.info.path, layer_index=layer_index, slice_id=slice_id, layer_type=leaf.view.layer_type,
               method=method, delta_W=measure, N=leaf.shape.N, M=leaf.shape.M, rf=leaf.shape.num_slices,
               status="success", reason="")
    if method not in _SIMILARITIES:
        row["delta_W_rel"] = measure / reference if reference > 0 else float("nan")
    if not np.isfinite(measure):
        row.update(status="failed", reason="undefined for a zero matrix (a norm is 0)")
    return row


def _bias_delta(path: str, leaves_a: dict, leaves_b: dict, dtype) -> float:
    """‖b_a − b_b‖ of the ``bias`` beside a kernel (WeightWatcher's ``delta_b``); NaN when there is none."""
    bias = path.rsplit("/", 1)[0] + "/bias" if "/" in path else "bias"
    a, b = leaves_a.get(bias), leaves_b.get(bias)
    if a is None or b is None or a[0].shape != b[0].shape:
        return float("nan")
    return float(jnp.linalg.norm(jnp.ravel(jnp.asarray(a[1], dtype) - jnp.asarray(b[1], dtype))))


def _table(records: list[dict], method: str) -> pd.DataFrame:
    import pandas as pd

    records.sort(key=lambda r: (_natural_key(r["path"]), r.get("layer_index") or 0, r.get("slice_id") or 0))
    columns = ["path", "layer_type", "method", "delta_W"]
    if method not in _SIMILARITIES:
        columns.append("delta_W_rel")
    if method == "raw":
        columns.append("delta_b")
    columns += ["N", "M", "rf", "status", "reason"]
    if any(r.get("slice_id") is not None for r in records):
        columns.insert(1, "slice_id")
    if any(r.get("layer_index") is not None for r in records):
        columns.insert(1, "layer_index")
    frame = pd.DataFrame.from_records(records, columns=columns)
    for name in ("layer_index", "slice_id", "N", "M", "rf"):
        if name in frame:
            frame[name] = frame[name].astype("Int64")
    frame["layer_type"] = frame["layer_type"].fillna("")
    frame.attrs["method"] = method
    return frame
