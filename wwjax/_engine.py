"""Stages 2–5 of an analysis: leaves → shape buckets → batched eigen-solves → every row fitted at once.

Two kinds of compiled program do all the work, so a model costs a handful of compilations however many leaves it has:

* **one per bucket** (:func:`solve_bucket`): every matrix of one ``(N, M)`` shape, taken from all the leaves that
  have it, converted to the compute dtype, stacked and solved by one vmapped eigen-solve. The conversion, the
  reshape to ``(N, M)`` and the stacking happen inside the program, so XLA makes a single copy of the weights;
* **one per fit group** (:func:`fit_group`): every row whose ESD pads to the same power-of-two length, pooled over
  kernel positions, zero-padded in front and fitted by one vmapped power-law fit.

``max_bucket_bytes`` caps what a bucket materialises: a bucket is cut into chunks of whole matrices, and a matrix that
alone exceeds the budget (a 128k-token embedding) has its Gram matrix accumulated over blocks of rows instead.

With a ``mesh`` every batch is padded with zero matrices to a multiple of the device count and solved under
``shard_map``, each device solving its own slice of the batch; the small metric arrays come back replicated, so every
process of a multi-host run can build the table.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wwjax import _results
from wwjax._layout import MatrixShape, MatrixView, as_matrices
from wwjax._metrics import norm_metrics
from wwjax._conv_fft import operator_spectra
from wwjax._inverse import invert_esd
from wwjax._tail import TailOptions, row_tail_fit
from wwjax._spectra import SliceSpectra, eigenvalues, rank_tolerance, slice_spectra

# Elements of the (rows × candidates × eigenvalues) KS reduction materialised at once (per device).
_KS_BLOCK_ELEMENTS = 1 << 23
# Extra (rows × n × n) fit work worth spending to save a fit program's compilation (see fit_groups).
_MERGE_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """What the engine needs to know of one analysed leaf, statically (it keys the compilation caches)."""

    view: MatrixView
    shape: MatrixShape
    pool: bool = True
    scale: float = 1.0  # conv2d_norm's factor on the eigenvalues
    rank_tol: float = 0.0  # relative rank tolerance of the solver for this shape
    fft_size: int = 0  # conv2d_fft: solved as the convolution operator on this input grid, not in a bucket

    @property
    def num_matrices(self) -> int:
        return self.shape.num_layers * self.shape.num_slices

    @property
    def num_rows(self) -> int:
        return self.shape.num_layers * (1 if self.pool else self.shape.num_slices)

    @property
    def row_length(self) -> int:
        return self.shape.M * (self.shape.num_slices if self.pool else 1)


@dataclasses.dataclass(frozen=True)
class Piece:
    """Matrices ``[start, stop)`` of leaf ``leaf`` (in ``as_matrices`` order, flattened over layers and slices)."""

    leaf: int
    start: int
    stop: int


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Matrices of one ``(N, M)`` shape solved together; ``block_rows > 0``: one matrix, Gram accumulated blockwise."""

    N: int  # noqa: N815
    M: int  # noqa: N815
    pieces: tuple[Piece, ...]
    block_rows: int = 0


def bytes_per_matrix(N: int, M: int, method: str, itemsize: int) -> int:  # noqa: N803
    """What solving one ``(N, M)`` matrix materialises: its converted copy plus its Gram and the eigen-solver's
    workspace (about one more ``M × M``), or the SVD's workspace (about one more ``N × M``)."""
    return (N * M + (2 * M * M if method == "gram" else N * M)) * itemsize


def plan_buckets(
    leaves: Sequence[LeafPlan], method: str, itemsize: int, max_bucket_bytes: int | None = None
) -> list[Bucket]:
    """Groups every matrix of ``leaves`` by shape and cuts each group into chunks within ``max_bucket_bytes``.

    Example:
      >>> from wwjax._layout import MatrixShape, MatrixView
      >>> dense = LeafPlan(MatrixView((0,), (1,)), MatrixShape(1, 1, 64, 32))
      >>> [len(b.pieces) for b in plan_buckets([dense, dense], "gram", 4)]
      [2]
      >>> [b.block_rows for b in plan_buckets([dense], "gram", 4, max_bucket_bytes=12288)]  # 64x32 needs 16 KiB
      [32]
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, leaf in enumerate(leaves):
        if not leaf.fft_size:
            groups[(leaf.shape.N, leaf.shape.M)].append(i)
    buckets = []
    for (n, m), members in groups.items():
        per_matrix = bytes_per_matrix(n, m, method, itemsize)
        if max_bucket_bytes is not None and per_matrix > max_bucket_bytes:
            # Too big even alone: one bucket per matrix, its Gram accumulated over row blocks that fit the budget.
            rows = max(1, (max_bucket_bytes // itemsize - 2 * m * m) // m)
            block_rows = min(n, max(8, rows))
            buckets += [Bucket(n, m, (Piece(i, k, k + 1),), block_rows) for i in members
                        for k in range(leaves[i].num_matrices)]
            continue
        capacity = math.inf if max_bucket_bytes is None else max(1, max_bucket_bytes // per_matrix)
        chunk: list[Piece] = []
        used = 0
        for i in members:
            start, total = 0, leaves[i].num_matrices
            while start < total:
                take = int(min(total - start, capacity - used))
                chunk.append(Piece(i, start, start + take))
                used += take
                start += take
                if used >= capacity:
                    buckets.append(Bucket(n, m, tuple(chunk)))
                    chunk, used = [], 0
        if chunk:
            buckets.append(Bucket(n, m, tuple(chunk)))
    return buckets


def _batch_spec(mesh: Mesh) -> P:
    return P(tuple(mesh.axis_names))


def _split_batch(tree, mesh: Mesh):
    """Lays out the leading (batch) axis over every device of ``mesh`` (a reshard, never a gather to one device)."""
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, _batch_spec(mesh)))


def _pad_batch(x, multiple: int):
    extra = -x.shape[0] % multiple
    return jnp.pad(x, ((0, extra),) + ((0, 0),) * (x.ndim - 1)) if extra else x


def _replicated(tree, mesh: Mesh | None):
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P()))


def _one_at_a_time(stack, method: str) -> SliceSpectra:
    """:func:`slice_spectra` of each matrix of ``stack`` in turn: every LAPACK call gets a batch of one.

    jaxlib's CPU LAPACK kernels (``sytrd``, ``gesdd``) split a batch over XLA's intra-op thread pool and block the
    calling pool thread until the parts are done. Over a mesh every device's program reaches the solve at once, each
    on a pool thread: when they fill the pool, the parts wait behind the threads that wait for them, and the process
    deadlocks (docs/scaling.md). A batch of one runs on the calling thread; the devices are the parallelism.
    Every other batched solve guards itself the same way (:func:`wwjax._spectra.per_matrix`); here the Gram matrices
    are formed one at a time too.
    """
    spectra = jax.lax.map(lambda matrix: slice_spectra(matrix[None], method=method), stack)
    return SliceSpectra(spectra.evals[:, 0], spectra.rank[:, 0])


def _solve(stack, method: str, mesh: Mesh | None) -> SliceSpectra:
    """One vmapped eigen-solve of ``stack (batch, N, M)``; over a mesh, each device solves its slice of the batch,
    one matrix after another (see :func:`_one_at_a_time`)."""
    if mesh is None:
        return slice_spectra(stack, method=method)
    count = stack.shape[0]
    solve = jax.shard_map(
        functools.partial(_one_at_a_time, method=method), mesh=mesh, in_specs=_batch_spec(mesh),
        out_specs=_batch_spec(mesh),
    )
    # The barrier materialises the stacked matrices before their re-layout: XLA's CPU all-to-all rejects a
    # transposed operand fed to it directly (a kernel sharded on its rows, read as its transpose).
    stack = jax.lax.optimization_barrier(_pad_batch(stack, mesh.size))
    # The eigenvalues (M per matrix, small) come back replicated so that any leaf's slice can be taken from them.
    spectra = _replicated(solve(_split_batch(stack, mesh)), mesh)
    return SliceSpectra(spectra.evals[:count], spectra.rank[:count])


def _blockwise_gram_spectrum(mat, block_rows: int, method: str, dtype):
    """Eigenvalues of ``matᵀmat`` for one ``(N, M)`` matrix, accumulating the Gram over blocks of ``block_rows``
    rows so that only one converted block exists at a time."""
    n, m = mat.shape
    num_blocks = -(-n // block_rows)

    def add_block(b, carry):
        gram, finite = carry
        start = jnp.minimum(b * block_rows, n - block_rows)  # the last block is shifted back, its overlap masked
        rows = jax.lax.dynamic_slice_in_dim(mat, start, block_rows).astype(dtype)
        fresh = (start + jnp.arange(block_rows)) >= b * block_rows
        rows = jnp.where(fresh[:, None], rows, 0.0)
        finite = finite & jnp.all(jnp.isfinite(rows))
        gram = gram + jnp.einsum("nm,nk->mk", rows, rows, precision=jax.lax.Precision.HIGHEST)
        return gram, finite

    gram, finite = jax.lax.fori_loop(0, num_blocks, add_block, (jnp.zeros((m, m), dtype), jnp.array(True)))
    evals = jnp.clip(eigenvalues(jnp.where(finite, gram, 0.0)), 0.0, None)
    tol = rank_tolerance(method, n, m, dtype, refined=False)  # too big to re-solve by the SVD
    rank = jnp.sum(evals > evals[-1] * tol)
    return SliceSpectra(evals[None], rank[None]), finite[None]


@functools.partial(jax.jit, static_argnames=("views", "bucket", "method", "dtype", "mesh"))
def solve_bucket(values: tuple, *, views: tuple[MatrixView, ...], bucket: Bucket, method: str, dtype, mesh=None):
    """The spectra of one bucket's matrices: ``(evals (count, M) ascending, rank (count,), finite (count,))``.

    ``values[j]`` is the leaf of ``bucket.pieces[j]`` and ``views[j]`` its matrix view.
    """
    n, m = bucket.N, bucket.M
    mats = [as_matrices(v, view).reshape(-1, n, m)[p.start : p.stop] for v, view, p in zip(values, views, bucket.pieces)]
    if bucket.block_rows:
        spectra, finite = _blockwise_gram_spectrum(mats[0][0], bucket.block_rows, method, dtype)
        return _replicated((spectra.evals, spectra.rank, finite), mesh)
    stack = jnp.concatenate(mats).astype(dtype) if len(mats) > 1 else mats[0].astype(dtype)
    finite = jnp.all(jnp.isfinite(stack), axis=(-2, -1))
    # Non-finite matrices are zeroed for the solver (LAPACK misbehaves on NaN); their rows are marked failed.
    stack = jnp.where(finite[:, None, None], stack, 0.0)
    spectra = _solve(stack, method, mesh)
    return spectra.evals, spectra.rank, finite


def _fit_rows(
    evals, num_valid, rank_tol, finite, *, num_clipped: int, tolerance: float, block: int, tail: TailOptions
) -> dict:
    """Power-law fit and norm metrics of every row of ``evals (rows, n)`` (zero-padded in front), vmapped."""

    def one_row(ev, valid, tol, ok):
        fit, extra = row_tail_fit(ev, valid, num_clipped, ev[-1] * tol, tail, block=block)
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
        out["extra"] = {k: jnp.where(ok, v, _missing(v)) for k, v in extra.items()}
        out["status_code"] = status
        return out

    return jax.vmap(one_row)(evals, num_valid, rank_tol, finite)


def _missing(value):
    return jnp.nan if jnp.issubdtype(value.dtype, jnp.floating) else -1


def padded_size(n: int, minimum: int = 8) -> int:
    """Rounds up to a power of two so that few ESD lengths (and few compilations) occur."""
    return max(minimum, 1 << (n - 1).bit_length())


def _mark_failed(metrics: dict, code: int) -> dict:
    fit_columns = ("alpha", "alpha_weighted", "D", "xmin", "xmax", "sigma", "log_alpha_norm")
    metrics = {k: (jnp.full_like(v, jnp.nan) if k in fit_columns else v) for k, v in metrics.items()}
    metrics["num_pl_spikes"] = jnp.full_like(metrics["num_pl_spikes"], -1)
    metrics["status_code"] = jnp.full_like(metrics["status_code"], code)
    return metrics


class RowIndex(NamedTuple):
    """Where each row of a fit group comes from, as indices into the group's flattened spectra.

    ``evals[r]`` indexes the concatenated, flattened eigenvalues of the group's sources (bucket outputs) with one
    extra slot at the end for padding; ``matrices[r]`` indexes their matrices (again with a padding slot last).
    Indices are data, not static arguments: the program depends only on the group's shapes, so groups and models
    that share them share one compilation.
    """

    evals: np.ndarray  # (rows, n_pad) int32, padding in front
    matrices: np.ndarray  # (rows, max matrices per row) int32
    scale: np.ndarray  # (rows,) conv2d_norm's factor
    num_valid: np.ndarray  # (rows,) the ESD's length
    rank_tol: np.ndarray  # (rows,)


def row_index(
    leaves: Sequence[LeafPlan], sources: Sequence[tuple[int, int]], locations: Sequence[Sequence[tuple[int, int, int]]],
    n_pad: int, total: int,
) -> RowIndex:
    """The gather indices of a group's rows (host-side planning, numpy).

    ``sources[s] = (count, M)`` are the shapes of the group's spectra; ``locations[j]`` lists, for leaf ``leaves[j]``
    in matrix order, ``(source, first matrix in it, number of matrices)``.
    """
    eval_base = np.cumsum([0] + [c * m for c, m in sources])
    mat_base = np.cumsum([0] + [c for c, _ in sources])
    pad_eval, pad_mat = int(eval_base[-1]), int(mat_base[-1])
    per_row = max(leaf.shape.num_slices if leaf.pool else 1 for leaf in leaves)
    evals = np.full((total, n_pad), pad_eval, np.int32)
    matrices = np.full((total, per_row), pad_mat, np.int32)
    scale = np.ones(total)
    num_valid = np.full(total, n_pad, np.int32)
    rank_tol = np.ones(total)
    row = 0
    for leaf, where in zip(leaves, locations):
        m = leaf.shape.M
        # every matrix of the leaf: its index among all sources' matrices, and its first eigenvalue's flat index
        mats = np.concatenate([mat_base[s] + o + np.arange(c) for s, o, c in where])
        firsts = np.concatenate([eval_base[s] + (o + np.arange(c)) * sources[s][1] for s, o, c in where])
        per = leaf.shape.num_slices if leaf.pool else 1
        rows = leaf.num_rows
        flat = (firsts[:, None] + np.arange(m)).reshape(rows, per * m)
        evals[row : row + rows, n_pad - per * m :] = flat
        matrices[row : row + rows, :per] = mats.reshape(rows, per)
        scale[row : row + rows] = leaf.scale
        num_valid[row : row + rows] = leaf.row_length
        rank_tol[row : row + rows] = leaf.rank_tol
        row += rows
    return RowIndex(evals, matrices, scale, num_valid, rank_tol)


@functools.partial(jax.jit, static_argnames=("num_clipped", "tolerance", "dtype", "mesh", "ks_elements", "tail",
                                             "inverse"))
def fit_group(
    sources: tuple, index: RowIndex, *, num_clipped: int, tolerance: float, dtype, mesh=None,
    ks_elements: int = _KS_BLOCK_ELEMENTS, tail: TailOptions = TailOptions(), inverse: bool = False,
) -> dict:
    """Fits every row of a group of leaves whose ESDs pad to the same length, in one vmapped call.

    ``sources`` are the spectra ``(evals (count, M), rank (count,), finite (count,))`` the group's rows are made of
    and ``index`` (:func:`row_index`) says which of their eigenvalues and matrices form each row. A pooled row (the
    kernel positions of one conv) is gathered and sorted like any other: one gather and one sort serve every leaf,
    where per-leaf slicing would make the program (and its compilation time) grow with the number of leaves.
    Returns the per-row metrics, with ``esd`` (rows, n_pad; zero-padded in front) and ``rank_loss``.
    """
    flat = jnp.concatenate([ev.astype(dtype).reshape(-1) for ev, _, _ in sources] + [jnp.full(1, -jnp.inf, dtype)])
    loss = jnp.concatenate([(ev.shape[1] - rank).astype(jnp.int32) for ev, rank, _ in sources]
                           + [jnp.zeros(1, jnp.int32)])
    finite = jnp.concatenate([ok for _, _, ok in sources] + [jnp.ones(1, bool)])
    # Padding gathers -inf, which the sort keeps in front; it then becomes the zeros every fit expects there.
    evals = jnp.sort(flat[index.evals] * index.scale.astype(dtype)[:, None], axis=-1)
    evals = jnp.where(jnp.isneginf(evals), 0.0, evals)
    tol = index.rank_tol.astype(dtype)
    if inverse:  # the ESD of 1/λ (numerically zero eigenvalues stay 0)
        evals = invert_esd(evals, tol)
    rank_loss = loss[index.matrices].sum(-1)
    finite = finite[index.matrices].all(-1)
    num_valid = index.num_valid
    total, n_pad = evals.shape
    per_device = total // (mesh.size if mesh is not None else 1)
    block = max(1, min(n_pad, ks_elements // (per_device * n_pad)))
    fit = lambda *a: _fit_rows(*a, num_clipped=num_clipped, tolerance=tolerance, block=block, tail=tail)  # noqa: E731
    if mesh is not None:
        # check_vma=False: the row fit holds no collective, and the loops of its fits (TPL's Nelder-Mead) start from
        # constants that the per-device rows make device-varying, which the check would reject.
        fit = jax.shard_map(fit, mesh=mesh, in_specs=_batch_spec(mesh), out_specs=_batch_spec(mesh), check_vma=False)
        evals, num_valid, tol, finite = _split_batch((evals, num_valid, tol, finite), mesh)
    metrics = fit(evals, num_valid, tol, finite)
    metrics["esd"] = evals
    return _replicated(metrics, mesh) | {"rank_loss": rank_loss}


def _split_group(metrics: dict, leaves: Sequence[LeafPlan], num_clipped: int) -> list[dict]:
    """Per-leaf metrics from a group's. Outside ``jit`` the columns are split on the host (one transfer each, no
    compilation); under ``jit`` the slices are part of the traced program."""
    traced = any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(metrics))
    if not traced:
        metrics = jax.tree.map(np.asarray, metrics)
    put = (lambda v: v) if traced else jax.device_put
    out, offset = [], 0
    for leaf in leaves:
        count = leaf.num_rows
        mine = jax.tree.map(lambda v, o=offset: put(v[o : o + count]), metrics)
        mine["esd"] = put(metrics["esd"][offset : offset + count, metrics["esd"].shape[1] - leaf.row_length :])
        if num_clipped > leaf.row_length / 2:  # WeightWatcher still fits here; we refuse and say why
            mine = _mark_failed(mine, _results.STATUS_XMAX_TOO_LARGE)
        out.append(mine)
        offset += count
    return out


def fit_groups(leaves: Sequence[LeafPlan], merge_elements: int = _MERGE_ELEMENTS) -> list[list[int]]:
    """The leaves fitted together: rows whose ESDs pad to the same power-of-two length, and then every shorter group
    whose rows, padded to the longest length, add at most ``merge_elements`` to the fit's ``rows × n × n`` work.

    Each fit group is one compiled program (about a second of compilation on CPU); fitting a few short rows at a
    longer length costs milliseconds. The fit masks the padding, so a row's metrics do not depend on its group.

    Example:
      >>> from wwjax._layout import MatrixShape, MatrixView
      >>> def leaf(m, slices=1):
      ...     return LeafPlan(MatrixView((0,), (1,)), MatrixShape(1, slices, 4 * m, m))
      >>> fit_groups([leaf(32), leaf(10), leaf(128)])  # a 4-layer CNN's three ESD lengths: one program
      [[2, 0, 1]]
      >>> fit_groups([leaf(16), leaf(4096)], merge_elements=1 << 20)  # a long ESD: each keeps its own
      [[1], [0]]
    """
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, leaf in enumerate(leaves):
        by_length[padded_size(leaf.row_length)].append(i)
    lengths = sorted(by_length, reverse=True)
    groups = [list(by_length[n]) for n in lengths]
    if lengths:
        longest, budget = lengths[0], merge_elements
        for n, members in zip(lengths[1:], groups[1:]):
            extra = sum(leaves[i].num_rows for i in members) * (longest * longest - n * n)
            if extra <= budget:
                budget -= extra
                groups[0] += members
                members.clear()
    return [g for g in groups if g]


def compute(
    values: Sequence, leaves: Sequence[LeafPlan], *, method: str, dtype, num_clipped: int, tolerance: float,
    max_bucket_bytes: int | None = None, mesh: Mesh | None = None, tail: TailOptions = TailOptions(),
    inverse: bool = False,
) -> list[dict]:
    """Stages 2–5 for all analysed leaves: per-row metrics of each leaf (see :func:`fit_group`)."""
    itemsize = jnp.dtype(dtype).itemsize
    # The KS reduction of the fits materialises (rows × block × n) at once: a quarter of the budget at most.
    ks_elements = _KS_BLOCK_ELEMENTS if max_bucket_bytes is None else max(1, min(
        _KS_BLOCK_ELEMENTS, max_bucket_bytes // (4 * itemsize)))
    if mesh is not None:
        # Auto axes: the partitioner places the reshuffles between a weight's own sharding and the batch layout.
        mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    buckets = plan_buckets(leaves, method, itemsize, max_bucket_bytes)
    solve_calls = [((tuple(values[p.leaf] for p in bucket.pieces),),
                    dict(views=tuple(leaves[p.leaf].view for p in bucket.pieces), bucket=bucket, method=method,
                         dtype=dtype, mesh=mesh)) for bucket in buckets]
    pieces: list[list] = [[] for _ in leaves]  # per leaf: (first matrix, source, offset in source, count)
    # A matrix whose Gram is accumulated blockwise is not re-solved by the SVD: its rank counts at the Gram's floor.
    blockwise = {p.leaf for b in buckets if b.block_rows for p in b.pieces}
    leaves = [dataclasses.replace(leaf, rank_tol=rank_tolerance(method, leaf.shape.N, leaf.shape.M, dtype,
                                                                refined=False)) if i in blockwise else leaf
              for i, leaf in enumerate(leaves)]
    for b, bucket in enumerate(buckets):
        offset = 0
        for p in bucket.pieces:
            pieces[p.leaf].append((p.start, b, offset, p.stop - p.start))
            offset += p.stop - p.start
    fit_options = dict(num_clipped=num_clipped, tolerance=tolerance, dtype=dtype, mesh=mesh, ks_elements=ks_elements,
                       tail=tail, inverse=inverse)
    groups = fit_groups(leaves)
    if _compile_ahead_worthwhile(values, leaves, mesh):
        # What the programs depend on: a second analysis of the same shapes goes straight to the calls.
        signature = (tuple((tuple(v.shape), str(v.dtype)) for v in values), tuple(leaves), tuple(map(tuple, groups)),
                     method, str(jnp.dtype(dtype)), num_clipped, tolerance, ks_elements, tail, inverse)
        if signature not in _COMPILED_AHEAD:
            _compile_ahead(solve_calls, leaves, pieces, groups, fit_options)
            _COMPILED_AHEAD[signature] = None
            while len(_COMPILED_AHEAD) > 64:
                _COMPILED_AHEAD.pop(next(iter(_COMPILED_AHEAD)))

    sources: list[tuple] = [solve_bucket(*args, **kwargs) for args, kwargs in solve_calls]  # (evals, rank, finite)
    for i, leaf in enumerate(leaves):
        if leaf.fft_size:  # conv2d_fft: the complex per-frequency matrices of one conv, solved together
            evals, rank, finite = operator_spectra(values[i], leaf.view, leaf.fft_size, method, dtype)
            sources.append((evals, rank, finite.reshape(-1)))
            pieces[i].append((0, len(sources) - 1, 0, leaf.num_matrices))

    out: list = [None] * len(leaves)
    for members in groups:
        used, index = _group_plan(members, leaves, pieces, sources, mesh)
        metrics = fit_group(tuple(sources[s] for s in used), index, **fit_options)
        for i, m in zip(members, _split_group(metrics, [leaves[i] for i in members], num_clipped)):
            out[i] = m
    return out


_COMPILED_AHEAD: dict[tuple, None] = {}  # analyses whose programs this process compiled ahead (oldest first)


def _compile_ahead_worthwhile(values, leaves, mesh) -> bool:
    """Whether to compile every program of an eager analysis at once, before running any: with more than one
    program, on a machine with more than one core, outside a trace and a mesh (whose programs depend on shardings)."""
    if mesh is not None or (os.cpu_count() or 1) < 2 or any(leaf.fft_size for leaf in leaves):
        return False
    return not any(isinstance(v, jax.core.Tracer) for v in values)


def _compile_ahead(solve_calls, leaves, pieces, groups, fit_options) -> None:
    """Compiles the analysis' programs side by side, one thread each (XLA compiles without holding the GIL), into
    the caches the calls that follow read: the same programs, so the same numbers, in a fraction of the wall time
    on a multi-core CPU. Programs already compiled (warm, or from the persistent cache) cost a lookup."""
    lowered = [solve_bucket.lower(*args, **kwargs) for args, kwargs in solve_calls]
    shapes = [tuple(out.out_info) for out in lowered]  # each bucket's (evals, rank, finite) without solving it
    for members in groups:
        used, index = _group_plan(members, leaves, pieces, shapes, fit_options["mesh"])
        lowered.append(fit_group.lower(tuple(shapes[s] for s in used), index, **fit_options))
    if len(lowered) < 2:
        return
    with concurrent.futures.ThreadPoolExecutor(min(len(lowered), os.cpu_count() or 1)) as pool:
        list(pool.map(lambda program: program.compile(), lowered))


def _group_plan(members, leaves, pieces, sources, mesh) -> tuple[list[int], RowIndex]:
    """The sources a fit group reads and its :class:`RowIndex`."""
    used = sorted({s for i in members for _, s, _, _ in pieces[i]})
    local = {s: k for k, s in enumerate(used)}
    group_leaves = [leaves[i] for i in members]
    total = padded_size(sum(leaf.num_rows for leaf in group_leaves), minimum=1)
    if mesh is not None:
        total = -(-total // mesh.size) * mesh.size
    locations = [[(local[s], o, c) for _, s, o, c in sorted(pieces[i])] for i in members]
    n_pad = padded_size(max(leaf.row_length for leaf in group_leaves))
    return used, row_index(group_leaves, [tuple(sources[s][0].shape) for s in used], locations, n_pad, total)


__all__ = ["Bucket", "LeafPlan", "Piece", "RowIndex", "compute", "fit_group", "fit_groups", "plan_buckets", "row_index",
           "solve_bucket"]
