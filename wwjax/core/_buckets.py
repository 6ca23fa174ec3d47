"""Stages 3–4: the matrices of all leaves grouped into shape buckets, one vmapped eigen-solve per width.

A bucket is every matrix of one ``(N, M)`` shape, taken from all the leaves that have it, converted to the compute
dtype and stacked. **One compiled program per width** (:func:`solve_buckets`, grouped by :func:`merge_buckets`):
the buckets of one width ``M`` share it, and their ``M × M`` Gram matrices one vmapped eigen-solve. The conversion,
the reshape to ``(N, M)`` and the stacking happen inside the program, so XLA makes a single copy of the weights.

``max_bucket_bytes`` caps what a bucket materialises: a bucket is cut into chunks of whole matrices, and a matrix that
alone exceeds the budget (a 128k-token embedding) has its Gram matrix accumulated over blocks of rows instead.

With a ``mesh`` every batch is padded with zero matrices to a multiple of the device count and solved under
``shard_map``, each device solving its own slice of the batch; the small results come back replicated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from wwjax.core._layout import MatrixShape, MatrixView, as_matrices
from wwjax.core._programs import program
from wwjax.core._spectra import SliceSpectra, eigenvalues, rank_tolerance, slice_spectra, spectra_of


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """What the engine needs to know of one analysed leaf, statically (it keys the compilation caches)."""

    view: MatrixView
    shape: MatrixShape
    pool: bool = True
    scale: float = 1.0  # conv2d_norm's factor on the eigenvalues
    rank_tol: float = 0.0  # relative rank tolerance of the solver for this shape
    # A contribution's own solve of this leaf (a hashable callable, see wwjax.core.MatrixSolver), run instead of a
    # bucket: conv2d_fft solves the convolution operator. None: the leaf's matrices go to the shape buckets.
    solver: Any = None
    # A contribution's static map of the leaf's (L, S, N, M) matrices to the ones solved (see
    # wwjax.core.MatricesTransform), applied inside the bucket's program; ``shape`` is then the transformed shape.
    transform: Any = None

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
      >>> from wwjax.core._layout import MatrixShape, MatrixView
      >>> dense = LeafPlan(MatrixView((0,), (1,)), MatrixShape(1, 1, 64, 32))
      >>> [len(b.pieces) for b in plan_buckets([dense, dense], "gram", 4)]
      [2]
      >>> [b.block_rows for b in plan_buckets([dense], "gram", 4, max_bucket_bytes=12288)]  # 64x32 needs 16 KiB
      [32]
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, leaf in enumerate(leaves):
        if leaf.solver is None:
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
    Every other batched solve guards itself the same way (:func:`wwjax.core._spectra.per_matrix`); here the Gram matrices
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


def _leaf_matrices(value, view: MatrixView, transform):
    mats = as_matrices(value, view)
    return mats if transform is None else transform(mats)


def _bucket_stack(values: tuple, views: tuple, transforms: tuple | None, bucket: Bucket, dtype):
    """One bucket's matrices, converted and stacked ``(count, N, M)``, and which of them are finite. Non-finite
    matrices are zeroed for the solver (LAPACK misbehaves on NaN); their rows are marked failed."""
    n, m = bucket.N, bucket.M
    transforms = transforms or (None,) * len(values)
    mats = [_leaf_matrices(v, view, t).reshape(-1, n, m)[p.start : p.stop]
            for v, view, t, p in zip(values, views, transforms, bucket.pieces)]
    stack = jnp.concatenate(mats).astype(dtype) if len(mats) > 1 else mats[0].astype(dtype)
    finite = jnp.all(jnp.isfinite(stack), axis=(-2, -1))
    return jnp.where(finite[:, None, None], stack, 0.0), finite


@program(static_argnames=("views", "buckets", "method", "dtype", "mesh", "transforms"))
def solve_buckets(values: tuple, *, views: tuple, buckets: tuple[Bucket, ...], method: str, dtype, mesh=None,
                  transforms: tuple | None = None) -> tuple:
    """The spectra of some buckets' matrices, one ``(evals (count, M) ascending, rank (count,), finite (count,))``
    per bucket.

    ``values[b][j]`` is the leaf of ``buckets[b].pieces[j]``, ``views[b][j]`` its matrix view and
    ``transforms[b][j]`` the contribution's map of its matrices (``None``: the matrices themselves; see
    ``LeafPlan.transform``). Buckets of one width share one eigen-solve (:func:`merge_buckets` says which go
    together); a blockwise bucket or one over a mesh comes alone.
    """
    transforms = transforms or (None,) * len(buckets)
    if len(buckets) == 1 and buckets[0].block_rows:
        bucket = buckets[0]
        mats = [_leaf_matrices(v, view, t).reshape(-1, bucket.N, bucket.M)[p.start : p.stop]
                for v, view, t, p in zip(values[0], views[0], transforms[0] or (None,) * len(values[0]),
                                         bucket.pieces)]
        spectra, finite = _blockwise_gram_spectrum(mats[0][0], bucket.block_rows, method, dtype)
        return (_replicated((spectra.evals, spectra.rank, finite), mesh),)
    stacked = [_bucket_stack(v, vw, t, b, dtype) for v, vw, t, b in zip(values, views, transforms, buckets)]
    if mesh is None:
        solved = spectra_of([stack for stack, _ in stacked], method=method)
    else:
        solved = [_solve(stack, method, mesh) for stack, _ in stacked]
    return tuple((spectra.evals, spectra.rank, finite) for spectra, (_, finite) in zip(solved, stacked))


_MERGE_BYTES = 1 << 28  # buckets are merged into one program while what they materialise stays under 256 MiB


def merge_buckets(buckets: Sequence[Bucket], method: str, itemsize: int, max_bucket_bytes: int | None = None,
                  mesh: Mesh | None = None) -> list[list[int]]:
    """Which buckets one :func:`solve_buckets` program solves together: Gram-route buckets of one width ``M`` while
    the matrices they materialise stay within ``max_bucket_bytes`` (256 MiB when unset). Their Gram matrices are
    all ``M × M``: one eigen-solve serves them (:func:`wwjax.core._spectra.spectra_of`), so a model with many
    shapes of few widths compiles one eigen-solver per width instead of one per shape. Blockwise buckets, the SVD's
    and a mesh's go alone.

    Buckets of different widths are never merged: their eigen-solves would be independent LAPACK calls in one
    program, which XLA's CPU runtime may run at once on its pool threads, and jaxlib's batched LAPACK kernels
    block a pool thread while they wait for their own parts on that pool (``docs/scaling.md``).

    Example:
      >>> attention, mlp = Bucket(384, 384, (Piece(0, 0, 4),)), Bucket(1536, 384, (Piece(1, 0, 2),))
      >>> merge_buckets([attention, mlp, Bucket(64, 32, (Piece(2, 0, 1),))], "gram", 4)
      [[0, 1], [2]]
      >>> merge_buckets([attention, mlp], "gram", 4, max_bucket_bytes=5_000_000)
      [[0], [1]]
    """
    budget = _MERGE_BYTES if max_bucket_bytes is None else max_bucket_bytes
    groups: list[list[int]] = []
    open_groups: dict[int, tuple[int, int]] = {}  # width M -> (its group still taking buckets, bytes used)
    for b, bucket in enumerate(buckets):
        size = sum(p.stop - p.start for p in bucket.pieces) * bytes_per_matrix(bucket.N, bucket.M, method, itemsize)
        if method != "gram" or mesh is not None or bucket.block_rows or size > budget:
            groups.append([b])
            continue
        g, used = open_groups.get(bucket.M, (None, 0))
        if g is None or used + size > budget:
            groups.append([])
            g, used = len(groups) - 1, 0
        groups[g].append(b)
        open_groups[bucket.M] = (g, used + size)
    return groups


__all__ = ["Bucket", "LeafPlan", "Piece", "bytes_per_matrix", "merge_buckets", "plan_buckets", "solve_buckets"]
