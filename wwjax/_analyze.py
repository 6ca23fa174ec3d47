"""``wwjax.analyze``: plan on shapes, solve every shape bucket in one batched call, fit every row at once.

1. plan (host, shapes only): each leaf → a :class:`~wwjax.MatrixView` or a reason it is skipped;
2. matrices: each leaf → ``(layers, slices, N, M)``;
3. buckets: matrices of equal ``(N, M)`` across all leaves are stacked;
4. spectra: one vmapped eigen-solve per bucket;
5. metrics: rows of equal ESD length across all leaves are fitted together (every xmin at once);
6. results: a pytree keyed like the params.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp

from wwjax import _results
from wwjax._layout import LeafInfo, MatrixShape, MatrixView, as_matrices, classify_leaf, matrix_shape
from wwjax._layout import skip_reason_for_dtype
from wwjax._diagnostics import add_diagnostics
from wwjax._metrics import norm_metrics
from wwjax._options import AnalyzeOptions, layer_selected, make_options
from wwjax._powerlaw import fit_power_law
from wwjax._spectra import compute_dtype, rank_tolerance, resolve_method, slice_spectra
from wwjax._tree import flatten_params

_CONV_TYPES = ("conv1d", "conv2d", "conv3d")
# Elements of the (rows × candidates × eigenvalues) KS reduction materialised at once.
_KS_BLOCK_ELEMENTS = 1 << 23


@dataclasses.dataclass(frozen=True)
class _PlannedLeaf:
    info: LeafInfo
    view: MatrixView
    shape: MatrixShape
    pooled: bool = True

    @property
    def num_evals(self) -> int:
        return self.shape.M * (self.shape.num_slices if self.pooled else 1)


def _size_skip(planned: _PlannedLeaf, opts: AnalyzeOptions) -> str | None:
    n = planned.num_evals
    if n < opts.min_evals:
        return f"{n} eigenvalues < min_evals={opts.min_evals} (lower min_evals to analyse it)"
    if n > opts.max_evals:
        return f"{n} eigenvalues > max_evals={opts.max_evals} (raise max_evals to analyse it)"
    if planned.shape.N > opts.max_N:
        return f"N={planned.shape.N} > max_N={opts.max_N} (raise max_N to analyse it)"
    return None


def plan(leaves: list[tuple[LeafInfo, Any, str | None]], opts: AnalyzeOptions) -> list[_PlannedLeaf | _results.SkippedLeaf]:
    """Host-side plan from shapes only: a view for every analysed leaf, a reason for every other one."""
    planned = []
    for info, _, collection_skip in leaves:
        skipped = functools.partial(_results.SkippedLeaf, info.path, shape=info.shape)
        if collection_skip:
            planned.append(skipped(collection_skip))
            continue
        view = classify_leaf(info, opts.views, opts.stacked)
        if isinstance(view, str):
            planned.append(skipped(view))
            continue
        dtype_reason = skip_reason_for_dtype(info.dtype)
        if dtype_reason:
            planned.append(skipped(dtype_reason, layer_type=view.layer_type))
            continue
        if 0 in info.shape:
            planned.append(skipped(f"zero-size dimension in shape {info.shape}", layer_type=view.layer_type))
            continue
        if not layer_selected(info.path, view.layer_type, opts.layers):
            planned.append(skipped(f"not selected by layers={list(opts.layers)}", layer_type=view.layer_type))
            continue
        leaf = _PlannedLeaf(info, view, matrix_shape(info.shape, view), pooled=opts.pool)
        reason = _size_skip(leaf, opts)
        planned.append(skipped(reason, layer_type=view.layer_type) if reason else leaf)
    return planned


@dataclasses.dataclass(frozen=True)
class _ComputeSpec:
    """Everything the jitted computation needs to know statically (hashable: it keys the compilation cache)."""

    leaves: tuple[_PlannedLeaf, ...]
    method: str
    pool: bool
    conv2d_norm: bool
    num_clipped: int
    tolerance: float


def _conv_scale(leaf: _PlannedLeaf, opts: _ComputeSpec) -> float:
    """WeightWatcher's ``conv2d_norm``: conv eigenvalues × 1/2 when pooled, × rf/2 per kernel position."""
    if not opts.conv2d_norm or leaf.view.layer_type not in _CONV_TYPES:
        return 1.0
    return 0.5 if opts.pool else leaf.shape.num_slices / 2.0


@functools.partial(jax.jit, static_argnames=("view", "dtype"))
def _leaf_matrices(value, view: MatrixView, dtype):
    """A leaf as ``(L·K, N, M)`` matrices in the compute dtype, and which of its ``(L, K)`` matrices are finite."""
    mats = as_matrices(value.astype(dtype), view)
    ok = jnp.all(jnp.isfinite(mats), axis=(-2, -1))
    # Non-finite matrices are zeroed for the solver (LAPACK misbehaves on NaN); their rows are marked failed.
    mats = jnp.where(ok[..., None, None], mats, 0.0)
    return mats.reshape(-1, *mats.shape[-2:]), ok


@functools.partial(jax.jit, static_argnames=("shape", "scale", "pool"))
def _leaf_rows(evals, rank, ok, *, shape: MatrixShape, scale: float, pool: bool):
    """Per-matrix spectra of one leaf → its rows: pooled over kernel positions, or one row per position."""
    L, K, m = shape.num_layers, shape.num_slices, shape.M
    evals = evals.reshape(L, K, m) * scale
    rank_loss = (m - rank).reshape(L, K)
    if pool:
        return jnp.sort(evals.reshape(L, K * m), axis=-1), rank_loss.sum(-1), ok.all(-1)
    return evals.reshape(L * K, m), rank_loss.reshape(-1), ok.reshape(-1)


def _row_spectra(leaves, values, method: str, dtype, opts: _ComputeSpec):
    """Eigen-solves bucketed by matrix shape; returns per leaf ``(evals (rows, n), rank_loss, finite)``."""
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    stacks, finite = [], []
    for i, (leaf, value) in enumerate(zip(leaves, values)):
        mats, ok = _leaf_matrices(value, leaf.view, dtype)
        stacks.append(mats)
        finite.append(ok)
        buckets[mats.shape[-2:]].append(i)

    per_leaf = [None] * len(leaves)
    for (n, m), members in buckets.items():
        batch = jnp.concatenate([stacks[i] for i in members]) if len(members) > 1 else stacks[members[0]]
        spectra = slice_spectra(batch, method=method)
        offset = 0
        for i in members:
            count = stacks[i].shape[0]
            per_leaf[i] = (spectra.evals[offset : offset + count], spectra.rank[offset : offset + count])
            offset += count

    return [
        _leaf_rows(evals, rank, ok, shape=leaf.shape, scale=_conv_scale(leaf, opts), pool=opts.pool)
        for leaf, (evals, rank), ok in zip(leaves, per_leaf, finite)
    ]


@functools.partial(jax.jit, static_argnames=("num_clipped", "tolerance", "block"))
def _fit_rows(evals, num_valid, rank_tol, finite, *, num_clipped: int, tolerance: float, block: int) -> dict:
    """Power-law fit and norm metrics of every row of ``evals (rows, n)`` (zero-padded in front), vmapped."""

    def one_row(ev, valid, tol, ok):
        fit = fit_power_law(ev, num_clipped, ev[-1] * tol, block=block)
        nan = jnp.array(jnp.nan, ev.dtype)
        fitted = fit.ok & ok
        alpha = jnp.where(fitted, fit.alpha, nan)
        norms = norm_metrics(ev, alpha, rank_tolerance=tol, tolerance=tolerance, num_valid=valid)
        status = jnp.where(
            ~ok,
            _results.STATUS_NON_FINITE,
            jnp.where(fit.ok, _results.STATUS_SUCCESS, _results.STATUS_FIT_FAILED),
        )
        out = dict(norms._asdict())
        out.update(
            alpha=alpha,
            D=jnp.where(fitted, fit.D, nan),
            sigma=jnp.where(fitted, fit.sigma, nan),
            xmin=jnp.where(fitted, fit.xmin, nan),
            xmax=jnp.where(fitted, fit.xmax, nan),
            num_pl_spikes=jnp.where(fitted, fit.num_pl_spikes, -1),
        )
        # A non-finite matrix was solved as zeros: none of its numbers mean anything.
        out = {k: jnp.where(ok, v, _missing(v)) for k, v in out.items()}
        out["status_code"] = status
        return out

    return jax.vmap(one_row)(evals, num_valid, rank_tol, finite)


def _missing(value):
    return jnp.nan if jnp.issubdtype(value.dtype, jnp.floating) else -1


def _padded_size(n: int, minimum: int = 8) -> int:
    """Rounds up to a power of two so that few ESD lengths (and few compilations) occur."""
    return max(minimum, 1 << (n - 1).bit_length())


def _row_metrics(leaves, rows, method: str, dtype, opts: _ComputeSpec) -> list[dict]:
    """Fits every row. Rows are zero-padded in front to a power-of-two length and grouped across leaves, so that
    one vmapped call (one compilation) serves all rows of similar length."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, (evals, _, _) in enumerate(rows):
        groups[_padded_size(evals.shape[-1])].append(i)
    out = [None] * len(leaves)
    for n_pad, members in groups.items():
        counts = [rows[i][0].shape[0] for i in members]
        r_pad = _padded_size(sum(counts), minimum=1) - sum(counts)
        evals = jnp.concatenate(
            [jnp.pad(rows[i][0], ((0, 0), (n_pad - rows[i][0].shape[1], 0))) for i in members]
            + [jnp.zeros((r_pad, n_pad), dtype)]
        )
        num_valid = jnp.concatenate(
            [jnp.full(c, rows[i][0].shape[1]) for i, c in zip(members, counts)] + [jnp.full(r_pad, n_pad)]
        )
        finite = jnp.concatenate([rows[i][2] for i in members] + [jnp.ones(r_pad, bool)])
        tol = jnp.concatenate(
            [jnp.full(c, rank_tolerance(method, leaves[i].shape.N, leaves[i].shape.M, dtype), dtype)
             for i, c in zip(members, counts)]
            + [jnp.ones(r_pad, dtype)]
        )
        block = max(1, min(n_pad, _KS_BLOCK_ELEMENTS // (evals.shape[0] * n_pad)))
        metrics = _fit_rows(
            evals, num_valid, tol, finite, num_clipped=opts.num_clipped, tolerance=float(opts.tolerance), block=block
        )
        offset = 0
        for i, count in zip(members, counts):
            out[i] = {k: v[offset : offset + count] for k, v in metrics.items()}
            if opts.num_clipped > rows[i][0].shape[1] / 2:  # WeightWatcher still fits here; we refuse and say why
                out[i] = _mark_failed(out[i], _results.STATUS_XMAX_TOO_LARGE)
            out[i]["rank_loss"] = rows[i][1]
            out[i]["esd"] = rows[i][0]
            offset += count
    return out


def _mark_failed(metrics: dict, code: int) -> dict:
    fit_columns = ("alpha", "alpha_weighted", "D", "xmin", "xmax", "sigma", "log_alpha_norm")
    metrics = {k: (jnp.full_like(v, jnp.nan) if k in fit_columns else v) for k, v in metrics.items()}
    metrics["num_pl_spikes"] = jnp.full_like(metrics["num_pl_spikes"], -1)
    metrics["status_code"] = jnp.full_like(metrics["status_code"], code)
    return metrics


def _compute(values: tuple, spec: _ComputeSpec) -> list[dict]:
    """Steps 2-5 for all analysed leaves: jitted per leaf shape, per bucket and per padded ESD length."""
    dtype = compute_dtype(None)
    rows = _row_spectra(spec.leaves, values, spec.method, dtype, spec)
    return _row_metrics(spec.leaves, rows, spec.method, dtype, spec)


def _row_labels(leaf: _PlannedLeaf) -> tuple[tuple, tuple]:
    L, K = leaf.shape.num_layers, leaf.shape.num_slices
    stacked = bool(leaf.view.layer_axes)
    if leaf.pooled:
        return tuple(l if stacked else None for l in range(L)), (None,) * L
    layer_index = tuple(l if stacked else None for l in range(L) for _ in range(K))
    slice_id = tuple(k for _ in range(L) for k in range(K))
    return layer_index, slice_id


def analyze(params, **options):
    """Analyses every weight matrix of a parameter pytree: WeightWatcher's default metrics, natively in JAX.

    ``params`` is any pytree of arrays: linen ``variables`` or ``params``, an ``nnx.State`` (or nnx module),
    params boxed by ``nn.with_partitioning``, a dict of numpy arrays. Dense kernels, embeddings, attention
    projections, 1-D/2-D/3-D convolutions (one matrix per kernel position, pooled) and stacked layers are found
    from the Flax layouts; anything else is reported as skipped, with the reason.

    The function is pure and jittable (``jax.jit(wwjax.analyze)(params)``; option values are static).

    Args:
      params: the parameter pytree.
      min_evals: skip matrices with fewer eigenvalues than this (per ESD: M·rf pooled, M per position). 8.
      max_evals: skip matrices with more eigenvalues than this. 15000.
      max_N: skip matrices whose long side N exceeds this. 50000.
      pool: pool the eigenvalues of a convolution's kernel positions into one ESD (True), or one row per
        position (False).
      conv2d_norm: WeightWatcher's conv scaling (eigenvalues × 1/2 pooled, × rf/2 per position). True.
      xmax: None, or an int k: leave out the k largest eigenvalues before the power-law fit.
      layers: a layer type (``dense``, ``embedding``, ``attention``, ``conv1d``, ``conv2d``, ``conv3d``) or a path
        pattern (glob, or whole ``/`` segments), or a list of them; ``-`` in front excludes.
      svd_method: ``fast`` (Gram + eigvalsh) or ``accurate`` (SVD); also ``gram`` / ``svd``.
      tolerance: ``weak_rank_loss`` counts eigenvalues below this. 1e-6.
      views: ``{path pattern: MatrixView}`` or a callable ``(path, shape) -> MatrixView | None`` for leaves the
        Flax rules cannot read (an Einsum kernel, a fused QKV).
      stacked: path patterns of leaves whose leading axis is a stack of layers (``nn.scan``, ``nnx.vmap``).
      mp_fit: add the Marchenko–Pastur fit columns (``num_spikes``, ``sigma_mp``, ``mp_softrank``, ``W_scale``,
        ``bulk_max``, ``bulk_min``). See ``docs/diagnostics.md``.
      randomize: add the randomized-ESD and correlation-trap columns (``rand_distance``, ``ww_softrank``,
        ``ww_maxdist``, ``max_rand_eval``, ``num_traps`` and the ``rand_*`` MP fit); needs ``key``.
      key: an int seed or a ``jax.random`` key for ``randomize``: the same key gives the same numbers.
      trap_elements: with ``randomize``, locate up to this many large elements per row (``trap_index``,
        ``trap_value`` in ``extra``; ``num_trap_elements`` counts them all).

    Returns:
      A nested dict keyed like ``params`` whose nodes are :class:`LayerMetrics` (analysed) or :class:`SkippedLeaf`.
      ``wwjax.details(result)`` makes the table, ``wwjax.summary(result)`` the means.

    Example:
      >>> import numpy as np, wwjax
      >>> rng = np.random.default_rng(0)
      >>> params = {"dense": {"kernel": rng.standard_t(3, (200, 100)).astype("float32"), "bias": np.zeros(100)}}
      >>> result = wwjax.analyze(params)
      >>> sorted(result["dense"])
      ['bias', 'kernel']
      >>> result["dense"]["kernel"].alpha.shape, result["dense"]["bias"].reason
      ((1,), 'bias')
    """
    opts = make_options(**options)
    leaves = flatten_params(params)
    planned = plan(leaves, opts)
    analysed = [(p, value) for p, (_, value, _) in zip(planned, leaves) if isinstance(p, _PlannedLeaf)]
    nodes: dict[str, Any] = {}
    if analysed:
        spec = _ComputeSpec(
            leaves=tuple(p for p, _ in analysed),
            method=resolve_method(opts.svd_method),
            pool=opts.pool,
            conv2d_norm=opts.conv2d_norm,
            num_clipped=opts.num_clipped,
            tolerance=float(opts.tolerance),
        )
        values = tuple(jnp.asarray(v) for _, v in analysed)
        metrics = _compute(values, spec)
        # --- optional diagnostics: mp_fit, randomize (wwjax/_diagnostics.py) ---
        metrics = add_diagnostics(spec.leaves, values, metrics, opts, method=spec.method,
                                  scales=[_conv_scale(leaf, spec) for leaf in spec.leaves])
        # --- end optional diagnostics ---
        for leaf, m in zip(spec.leaves, metrics):
            layer_index, slice_id = _row_labels(leaf)
            nodes[leaf.info.path] = _results.LayerMetrics(
                **m,
                path=leaf.info.path,
                layer_type=leaf.view.layer_type,
                shape=tuple(leaf.info.shape),
                N=leaf.shape.N,
                M=leaf.shape.M,
                rf=leaf.shape.num_slices,
                num_evals=leaf.num_evals,
                layer_index=layer_index,
                slice_id=slice_id,
            )
    items = []
    for p, (info, _, _) in zip(planned, leaves):
        node = p if isinstance(p, _results.SkippedLeaf) else nodes[info.path]
        items.append((info.keys, node))
    return _results.nest(items)

