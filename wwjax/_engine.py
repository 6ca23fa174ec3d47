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

import dataclasses
import functools
import math
from collections import defaultdict
from collections.abc import Sequence

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
from wwjax._spectra import SliceSpectra, rank_tolerance, slice_spectra

# Elements of the (rows × candidates × eigenvalues) KS reduction materialised at once (per device).
_KS_BLOCK_ELEMENTS = 1 << 23


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


def _solve(stack, method: str, mesh: Mesh | None) -> SliceSpectra:
    """One vmapped eigen-solve of ``stack (batch, N, M)``; over a mesh, each device solves its slice of the batch."""
    if mesh is None:
        return slice_spectra(stack, method=method)
    count = stack.shape[0]
    solve = jax.shard_map(
        lambda s: slice_spectra(s, method=method), mesh=mesh, in_specs=_batch_spec(mesh), out_specs=_batch_spec(mesh)
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
    evals = jnp.clip(jnp.linalg.eigvalsh(jnp.where(finite, gram, 0.0)), 0.0, None)
    tol = rank_tolerance(method, n, m, dtype)
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


def _leaf_rows(evals, rank, finite, leaf: LeafPlan):
    """One leaf's per-matrix spectra → its rows: pooled over kernel positions, or one row per position."""
    L, K, m = leaf.shape.num_layers, leaf.shape.num_slices, leaf.shape.M  # noqa: N806
    evals = evals.reshape(L, K, m) * leaf.scale
    rank_loss = (m - rank).reshape(L, K)
    if leaf.pool:
        return jnp.sort(evals.reshape(L, K * m), axis=-1), rank_loss.sum(-1), finite.reshape(L, K).all(-1)
    return evals.reshape(L * K, m), rank_loss.reshape(-1), finite.reshape(-1)


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


@functools.partial(
    jax.jit,
    static_argnames=("leaves", "part_slices", "num_clipped", "tolerance", "dtype", "mesh", "ks_elements", "tail",
                     "inverse"),
)
def fit_group(
    parts: tuple, *, leaves: tuple[LeafPlan, ...], part_slices: tuple, num_clipped: int, tolerance: float, dtype,
    mesh=None, ks_elements: int = _KS_BLOCK_ELEMENTS, tail: TailOptions = TailOptions(), inverse: bool = False,
) -> tuple[dict, list]:
    """Fits every row of a group of leaves whose ESDs pad to the same length, in one vmapped call.

    ``parts[j]`` holds the bucket outputs ``(evals, rank, finite)`` in which leaf ``leaves[j]``'s matrices lie, in
    order, and ``part_slices[j]`` the static ``(offset, count)`` of its matrices in each. Slicing here, inside the
    program, rather than on the host keeps the glue out of the compilation count. Returns the group's per-row
    metrics (rows of all leaves in order, then padding) and per leaf its ``(rank_loss, esd)``.
    """
    spectra = []
    for leaf_parts, slices in zip(parts, part_slices):
        cut = [tuple(a[o : o + c] for a in part) for part, (o, c) in zip(leaf_parts, slices)]
        spectra.append(cut[0] if len(cut) == 1 else tuple(jnp.concatenate(a) for a in zip(*cut)))
    rows = [_leaf_rows(*s, leaf) for s, leaf in zip(spectra, leaves)]
    if inverse:  # the ESD of 1/λ (numerically zero eigenvalues stay 0)
        rows = [(invert_esd(ev, leaf.rank_tol), loss, ok) for (ev, loss, ok), leaf in zip(rows, leaves)]
    n_pad = padded_size(max(leaf.row_length for leaf in leaves))
    counts = [leaf.num_rows for leaf in leaves]
    total = padded_size(sum(counts), minimum=1)
    if mesh is not None:
        total = -(-total // mesh.size) * mesh.size
    r_pad = total - sum(counts)
    evals = jnp.concatenate(
        [jnp.pad(ev, ((0, 0), (n_pad - ev.shape[1], 0))) for ev, _, _ in rows] + [jnp.zeros((r_pad, n_pad), dtype)]
    )
    num_valid = jnp.concatenate([jnp.full(c, leaf.row_length) for c, leaf in zip(counts, leaves)]
                                + [jnp.full(r_pad, n_pad)])
    finite = jnp.concatenate([ok for _, _, ok in rows] + [jnp.ones(r_pad, bool)])
    tol = jnp.concatenate([jnp.full(c, leaf.rank_tol, dtype) for c, leaf in zip(counts, leaves)]
                          + [jnp.ones(r_pad, dtype)])
    per_device = total // (mesh.size if mesh is not None else 1)
    block = max(1, min(n_pad, ks_elements // (per_device * n_pad)))
    fit = lambda *a: _fit_rows(*a, num_clipped=num_clipped, tolerance=tolerance, block=block, tail=tail)  # noqa: E731
    if mesh is not None:
        fit = jax.shard_map(fit, mesh=mesh, in_specs=_batch_spec(mesh), out_specs=_batch_spec(mesh))
        evals, num_valid, tol, finite = _split_batch((evals, num_valid, tol, finite), mesh)
    metrics = _replicated(fit(evals, num_valid, tol, finite), mesh)

    # The group's metrics are returned whole and split per leaf by the caller: slicing ~25 columns for every leaf
    # here would multiply the program's size (and its compilation time) by the number of leaves.
    return metrics, [(rank_loss, ev) for ev, rank_loss, _ in rows]


def _split_group(metrics: dict, per_leaf: list, leaves: Sequence[LeafPlan], num_clipped: int) -> list[dict]:
    """Per-leaf metrics from a group's. Outside ``jit`` the columns are split on the host (one transfer each, no
    compilation); under ``jit`` the slices are part of the traced program."""
    traced = any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(metrics))
    if not traced:
        metrics = jax.tree.map(np.asarray, metrics)
    out, offset = [], 0
    for (rank_loss, ev), leaf in zip(per_leaf, leaves):
        count = leaf.num_rows
        cut = (lambda v, o=offset: v[o : o + count]) if traced else (lambda v, o=offset: jax.device_put(v[o : o + count]))
        mine = jax.tree.map(cut, metrics)
        if num_clipped > leaf.row_length / 2:  # WeightWatcher still fits here; we refuse and say why
            mine = _mark_failed(mine, _results.STATUS_XMAX_TOO_LARGE)
        mine["rank_loss"] = rank_loss
        mine["esd"] = ev
        out.append(mine)
        offset += count
    return out


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
    pieces: list[list] = [[] for _ in leaves]
    for bucket in plan_buckets(leaves, method, itemsize, max_bucket_bytes):
        evals, rank, finite = solve_bucket(
            tuple(values[p.leaf] for p in bucket.pieces),
            views=tuple(leaves[p.leaf].view for p in bucket.pieces),
            bucket=bucket, method=method, dtype=dtype, mesh=mesh,
        )
        offset = 0
        for p in bucket.pieces:
            count = p.stop - p.start
            pieces[p.leaf].append((p.start, evals, rank, finite, offset, count))
            offset += count
    for i, leaf in enumerate(leaves):
        if leaf.fft_size:  # conv2d_fft: the complex per-frequency matrices of one conv, solved together
            evals, rank, finite = operator_spectra(values[i], leaf.view, leaf.fft_size, method, dtype)
            pieces[i].append((0, evals, rank, finite.reshape(-1), 0, leaf.num_matrices))

    groups: dict[int, list[int]] = defaultdict(list)
    for i, leaf in enumerate(leaves):
        groups[padded_size(leaf.row_length)].append(i)
    out: list = [None] * len(leaves)
    for members in groups.values():
        ordered = [sorted(pieces[i], key=lambda part: part[0]) for i in members]
        metrics, per_leaf = fit_group(
            tuple(tuple((ev, rk, ok) for _, ev, rk, ok, _, _ in parts) for parts in ordered),
            leaves=tuple(leaves[i] for i in members),
            part_slices=tuple(tuple((o, c) for *_, o, c in parts) for parts in ordered),
            num_clipped=num_clipped, tolerance=tolerance, dtype=dtype, mesh=mesh, ks_elements=ks_elements,
            tail=tail, inverse=inverse,
        )
        group_leaves = [leaves[i] for i in members]
        for i, m in zip(members, _split_group(metrics, per_leaf, group_leaves, num_clipped)):
            out[i] = m
    return out


__all__ = ["Bucket", "LeafPlan", "Piece", "compute", "fit_group", "plan_buckets", "solve_bucket"]
