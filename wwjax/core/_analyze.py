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
from typing import Any

import jax
import jax.numpy as jnp

from wwjax.core import _engine
from wwjax.core import _results
from wwjax.core._layout import LeafInfo, MatrixShape, MatrixView, matrix_shape
from wwjax.core._reading import read_leaf
from wwjax.core._layout import skip_reason_for_dtype
from wwjax.core._options import AnalyzeOptions, layer_selected, make_options
from wwjax.core._spectra import compute_dtype, rank_tolerance, resolve_method
from wwjax.core._tree import flatten_params
from wwjax.core._contributions import ColumnsInput, contributions, row_columns, single_strategy
from wwjax.core._fit import POWER_LAW

_CONV_TYPES = ("conv1d", "conv2d", "conv3d")


@dataclasses.dataclass(frozen=True)
class _PlannedLeaf:
    info: LeafInfo
    view: MatrixView
    shape: MatrixShape
    pooled: bool = True
    solver: Any = None  # a contribution's own solve of the leaf (conv2d_fft), instead of a shape bucket
    warning: str = ""  # the reading rests on a guess (a 3-D kernel read by its name …): which, and how to change it
    # A contribution's map of the leaf's matrices to the ones solved (FARMS windows; see MatricesTransform): the
    # shape buckets solve the transformed matrices; ``shape`` (the reported N, M, rf) stays the leaf's own.
    transform: Any = None

    @property
    def solved(self) -> tuple[MatrixShape, bool]:
        """The shape of the matrices the engine solves, and whether a row pools all of a layer's: a transformed
        leaf's ``k`` matrices per original one are pooled per layer, or per kernel position with ``pool=False``
        (then each position is one engine "layer")."""
        if self.transform is None:
            return self.shape, self.pooled
        out = self.transform.shape(self.shape)
        if self.pooled:
            return out, True
        per = out.num_slices // self.shape.num_slices
        return MatrixShape(out.num_layers * self.shape.num_slices, per, out.rows, out.cols), True

    @property
    def num_evals(self) -> int:
        shape, pooled = self.solved
        return shape.M * (shape.num_slices if pooled else 1)


def _size_skip(planned: _PlannedLeaf, opts: AnalyzeOptions) -> str | None:
    n = planned.num_evals
    if n < opts.min_evals:
        return f"{n} eigenvalues < min_evals={opts.min_evals} (lower min_evals to analyse it)"
    if n > opts.max_evals:
        return f"{n} eigenvalues > max_evals={opts.max_evals} (raise max_evals to analyse it)"
    if planned.shape.N > opts.max_N:
        return f"N={planned.shape.N} > max_N={opts.max_N} (raise max_N to analyse it)"
    solved = planned.solved[0]
    if opts.max_bucket_bytes is not None and resolve_method(opts.svd_method) == "svd":
        itemsize = jnp.dtype(compute_dtype(None)).itemsize
        needed = _engine.bytes_per_matrix(solved.N, solved.M, "svd", itemsize)
        if needed > opts.max_bucket_bytes:
            return (f"one {solved.N}x{solved.M} matrix needs {needed} bytes > max_bucket_bytes="
                    f"{opts.max_bucket_bytes} with svd_method={opts.svd_method!r} (use svd_method='fast', whose "
                    f"Gram is accumulated blockwise, or raise max_bucket_bytes)")
    return None


def reading_or_skip(
    info: LeafInfo, collection_skip: str | None, views, stacked: tuple[str, ...], layers: tuple[str, ...]
) -> tuple[MatrixView | _results.SkippedLeaf, str]:
    """How a leaf becomes matrices, or why it is left out, and the guess the reading rests on (``''`` if none): the
    rules every consumer of leaves shares (analysis, distances, the spectral penalty, ``describe``), so that a leaf
    means the same thing everywhere."""
    skipped = functools.partial(_results.SkippedLeaf, info.path, shape=info.shape)
    if collection_skip:
        return skipped(collection_skip), ""
    reading = read_leaf(info, views, stacked)
    if reading.view is None:
        return skipped(reading.reason, warning=reading.warning), reading.warning
    view = reading.view
    reason = skip_reason_for_dtype(info.dtype)
    if reason is None and 0 in info.shape:
        reason = f"zero-size dimension in shape {info.shape}"
    if reason is None and not layer_selected(info.path, view.layer_type, layers):
        reason = f"not selected by layers={list(layers)}"
    if reason:
        return skipped(reason, layer_type=view.layer_type, warning=reading.warning), reading.warning
    return view, reading.warning


def view_or_skip(
    info: LeafInfo, collection_skip: str | None, views, stacked: tuple[str, ...], layers: tuple[str, ...]
) -> MatrixView | _results.SkippedLeaf:
    """:func:`reading_or_skip` without the warning."""
    return reading_or_skip(info, collection_skip, views, stacked, layers)[0]


def plan(leaves: list[tuple[LeafInfo, Any, str | None]], opts: AnalyzeOptions) -> list[_PlannedLeaf | _results.SkippedLeaf]:
    """Host-side plan from shapes only: a view for every analysed leaf, a reason for every other one."""
    planned = []
    for info, _, collection_skip in leaves:
        view, warning = reading_or_skip(info, collection_skip, opts.views, opts.stacked, opts.layers)
        skipped = functools.partial(_results.SkippedLeaf, info.path, shape=info.shape, warning=warning)
        if isinstance(view, _results.SkippedLeaf):
            planned.append(view)
            continue
        leaf = _PlannedLeaf(info, view, matrix_shape(info.shape, view), pooled=opts.pool, warning=warning)
        reason = None
        for contribution in contributions():  # a different plan of the leaf (conv2d_fft), or a reason to skip it
            if contribution.plan is not None:
                leaf = contribution.plan(leaf, opts)
                if isinstance(leaf, str):
                    reason = leaf
                    break
        reason = reason or _size_skip(leaf, opts)
        planned.append(skipped(reason, layer_type=view.layer_type) if reason else leaf)
    return planned


def _conv_scale(leaf: _PlannedLeaf, opts: AnalyzeOptions) -> float:
    """WeightWatcher's ``conv2d_norm``: conv eigenvalues × 1/2 when pooled, × rf/2 per kernel position."""
    if not opts.conv2d_norm or leaf.view.layer_type not in _CONV_TYPES or leaf.solver is not None:
        return 1.0
    return 0.5 if opts.pool else leaf.shape.num_slices / 2.0


def _engine_plan(leaf: _PlannedLeaf, opts: AnalyzeOptions, method: str, dtype) -> _engine.LeafPlan:
    shape, pool = leaf.solved
    return _engine.LeafPlan(
        view=leaf.view,
        shape=shape,
        pool=pool,
        scale=_conv_scale(leaf, opts),
        rank_tol=rank_tolerance(method, shape.N, shape.M, dtype, refined=leaf.solver is None),
        solver=leaf.solver,
        transform=leaf.transform,
    )


def _row_labels(leaf: _PlannedLeaf) -> tuple[tuple, tuple]:
    L, K = leaf.shape.num_layers, leaf.shape.num_slices
    stacked = bool(leaf.view.layer_axes)
    if leaf.pooled:
        return tuple(l if stacked else None for l in range(L)), (None,) * L
    layer_index = tuple(l if stacked else None for l in range(L) for _ in range(K))
    slice_id = tuple(k for _ in range(L) for k in range(K))
    return layer_index, slice_id


def _add_columns(leaves: list[_PlannedLeaf], values: list, metrics: list[dict], opts: AnalyzeOptions,
                 method: str) -> list[dict]:
    """The contributions' columns after the fit (mp_fit, randomize, vectors …), each merged into ``extra``."""
    scales = [_conv_scale(leaf, opts) for leaf in leaves]
    for contribution in contributions():
        if contribution.columns is None:
            continue
        extras = contribution.columns(ColumnsInput(leaves, values, metrics, opts, method, scales))
        if extras is not None:
            metrics = [dict(m, extra={**m.get("extra", {}), **extra}) for m, extra in zip(metrics, extras)]
    return metrics


def analyze(params, **options):
    """Analyses every weight matrix of a parameter pytree: WeightWatcher's default metrics, natively in JAX.

    ``params`` is any pytree of arrays: linen ``variables`` or ``params``, an ``nnx.State`` (or nnx module),
    params boxed by ``nn.with_partitioning``, a dict of numpy arrays. Dense kernels, embeddings, attention
    projections, 1-D/2-D/3-D convolutions (one matrix per kernel position, pooled) and stacked layers are found
    from the Flax layouts; anything else is reported as skipped, with the reason. The shape and the metadata decide
    how a leaf is read; a reading that rests on a name (a 3-D kernel) says so in the row's ``warning``, and
    :func:`wwjax.describe` shows every leaf's reading from shapes alone, before anything is solved.

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
      max_bucket_bytes: at most this many bytes materialised per batched solve (converted matrices + their Grams);
        a matrix over it alone has its Gram accumulated over blocks of rows. None: no limit.
      mesh: a ``jax.sharding.Mesh``: every batch of matrices (and of rows to fit) is split over all its devices;
        the metrics come back replicated. Works on params that are already sharded global arrays, multi-host too.
      mp_fit: add the Marchenko–Pastur fit columns (``num_spikes``, ``sigma_mp``, ``mp_softrank``, ``W_scale``,
        ``bulk_max``, ``bulk_min``). See ``docs/diagnostics.md``.
      randomize: add the randomized-ESD and correlation-trap columns (``rand_distance``, ``ww_softrank``,
        ``ww_maxdist``, ``max_rand_eval``, ``num_traps`` and the ``rand_*`` MP fit); needs ``key``.
      key: an int seed or a ``jax.random`` key for ``randomize`` and ``bootstrap``: the same key gives the same
        numbers.
      fresh_r2: with ``randomize``, compare the ESD with one more shuffle of each matrix (``rand_distance``,
        ``ww_softrank``, ``ww_maxdist``) as WeightWatcher does, at the cost of one more eigen-solve per matrix.
        False (default): they use the shuffle whose spectrum the ``rand_*`` MP fit and ``max_rand_eval`` see.
      trap_elements: with ``randomize``, locate up to this many large elements per row (``trap_index``,
        ``trap_value`` in ``extra``; ``num_trap_elements`` counts them all).
      fix_fingers: ``'clip_xmax'`` (with ``max_fingers=10``, ``finger_thresh=1.0``; adds ``num_fingers``,
        ``raw_alpha``) or ``'xmin_peak'`` (with ``xmin_max``); see ``docs/diagnostics-advanced.md``.
      fit: ``'PL'`` (the power law, default), ``'TPL'`` (the truncated power law x^−α·e^−λx, powerlaw 1.5's fit;
        adds ``Lambda``, ``sigma`` is NaN) or ``'E_TPL'`` (the TPL with xmin searched as ``'xmin_peak'`` does).
      xmin: None (WeightWatcher's KS scan over every xmin), or a fixed xmin rule of TempBalance / AlphaPruning with
        Hill's estimator: ``'median'`` (xmin at the ``1/xmin_pos`` quantile of the kept eigenvalues, ``xmin_pos=2``),
        ``'peak'`` (the KS scan restricted to a window around the peak of a ``xmin_bins``-bin histogram of
        ``log10 λ``; ``xmin_peak_lower='published'`` or ``'linear'``) or ``'scan'``. Every α-based column then
        comes from that fit (``num_pl_spikes``: the eigenvalues at or above xmin; ``xmax``: λmax;
        ``sigma = (α − 1)/√num_pl_spikes``, Hill's asymptotic standard error at that xmin). Not with ``fit='TPL'``,
        ``fix_fingers`` or ``xmax``. See ``docs/estimators.md``.
      bootstrap: 0, or B: add ``alpha_std``, ``alpha_ci_low``, ``alpha_ci_high`` (at ``bootstrap_level=0.95``) from
        B resamples of each ESD refitted with the rows' own fit (the KS power law or the ``xmin`` rule); needs
        ``key``. ``bootstrap_resample='esd'|'tail'``, ``bootstrap_interval='basic_log'|'percentile'``;
        ``summary`` then reports ``alpha_sem``. See ``docs/bootstrap.md``.
      detX: add ``detX_num``, ``detX_val``, ``detX_val_rescaled``, ``num_ERG_spikes``, ``ERG_gap``.
      vectors: add the 12 eigenvector localisation columns ``{bulk,tail}_{mean,var}_{vec_entropy,…}``.
      inverse: analyse the ESD of 1/λ.
      conv2d_fft: analyse each convolution as the linear operator it is on an ``fft_size``-wide input grid
        (circular padding; default 32).
      farms: every column on the FARMS ESD (the pooled spectra of fixed-aspect-ratio windows of each matrix), with
        ``farms_window=100``, ``farms_aspect_ratio=1.0``, ``farms_windows_per_dim=9``; ``N``, ``M``, ``rf`` stay the
        leaf's, ``num_evals`` counts the pooled ESD. See ``docs/farms.md``.
      lora: analyse each LoRA adapter (``lora_a``/``lora_b``, ``lora_A``/``lora_B``, ``lora_down``/``lora_up``, and
        ``lora_pairs={A: B}`` segments) as ``ΔW`` from the ``r×r`` core of its factors, at the A factor's path with
        that segment renamed ``lora_delta``; ``lora_merged`` adds ``W + lora_scale·ΔW`` at ``…lora_merged…``. The
        factor leaves are skipped with a reason; ``min_evals`` applies to ``r``. See ``docs/lora.md``.

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
    for contribution in contributions():  # stage 0: leaves replaced or joined by derived ones (LoRA pairs)
        if contribution.leaves is not None:
            leaves = contribution.leaves(leaves, opts) or leaves
    planned = plan(leaves, opts)
    analysed = [(p, value) for p, (_, value, _) in zip(planned, leaves) if isinstance(p, _PlannedLeaf)]
    nodes: dict[str, Any] = {}
    if analysed:
        method, dtype = resolve_method(opts.svd_method), compute_dtype(None)
        # device_put, not jnp.asarray: the latter compiles a small program per (shape, dtype) of numpy input.
        values = [v if isinstance(v, jax.Array) else jax.device_put(v) for _, v in analysed]
        metrics = _engine.compute(
            values,
            [_engine_plan(p, opts, method, dtype) for p, _ in analysed],
            method=method,
            dtype=dtype,
            num_clipped=opts.num_clipped,
            tolerance=float(opts.tolerance),
            max_bucket_bytes=opts.max_bucket_bytes,
            mesh=opts.mesh,
            row_fit=single_strategy("row_fit", opts) or POWER_LAW,
            row_columns=row_columns(opts),
            esd_transform=single_strategy("esd_transform", opts),
        )
        metrics = _add_columns([p for p, _ in analysed], values, metrics, opts, method)
        for leaf, m in zip((p for p, _ in analysed), metrics):
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
                layout_warning=leaf.warning,
            )
    items = []
    for p, (info, _, _) in zip(planned, leaves):
        node = p if isinstance(p, _results.SkippedLeaf) else nodes[info.path]
        items.append((info.keys, node))
    return _results.nest(items)

