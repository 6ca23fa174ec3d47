"""Batched eigen-solves: the singular values of many matrices, grouped by shape, in one vmapped call per group.

Two solvers:

* ``svd``: ``jnp.linalg.svd(..., compute_uv=False)`` of the ``(N, M)`` matrix, the accurate reference (LAPACK
  ``gesdd`` on CPU, like WeightWatcher's ``scipy.linalg.svd``).
* ``gram``: the ``(M, M)`` Gram matrix ``WᵀW`` by a HIGHEST-precision matmul, then ``eigvalsh``. Eigenvalues of
  WᵀW *are* the ESD, so nothing is lost for the power-law tail; the smallest eigenvalues carry an absolute error of
  about ``eps·λmax`` (see ``docs/engine.md``). In float64 the matrices whose smallest Gram eigenvalue lies near that
  rounding floor (:func:`doubtful`) are solved again by the SVD, so that their small singular values, numerical
  rank, entropy and detX are the SVD's; in float32 no such matrix can be settled (the SVD itself resolves nothing
  below ``eps·σmax``, far above WeightWatcher's float64 rank threshold), and the table says so (``docs/engine.md``).

``svd_method='fast'`` picks the faster of the two for the backend (see ``docs/engine.md`` for the measurements).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

SVD_METHODS = ("fast", "accurate", "svd", "gram")


def resolve_method(svd_method: str, backend: str | None = None) -> str:
    """Maps WeightWatcher's ``fast``/``accurate`` (and our ``svd``/``gram``) to a solver.

    ``accurate`` is always the SVD. ``fast`` is the Gram + ``eigvalsh`` route on every backend: on CPU it is
    1.3-3.5x faster than the SVD for the shapes of real networks (docs/engine.md, benchmarks/), and on GPU/TPU
    the symmetric eigensolver is the better-optimised batched kernel.
    """
    if svd_method not in SVD_METHODS:
        raise ValueError(f"svd_method must be one of {SVD_METHODS}, got {svd_method!r}")
    if svd_method in ("accurate", "svd"):
        return "svd"
    return "gram"


def compute_dtype(dtype) -> jnp.dtype:
    """float64 under ``jax_enable_x64``, else float32; bf16/fp16 weights are upcast."""
    return jnp.float64 if jax.config.read("jax_enable_x64") else jnp.float32


class SliceSpectra(NamedTuple):
    """Per matrix: its squared singular values (ascending) and its numerical rank."""

    evals: Float[Array, "batch m"]
    rank: Float[Array, "batch"]


# A Gram eigenvalue this many rounding floors above zero is resolved to better than 1e-3 relative; below it, the
# matrix is solved again by the SVD (float64 only). Square random matrices of size 1024 land below it about 0.5%
# of the time (their smallest singular value fluctuates down to zero); a rank-deficient matrix always does.
DOUBT_FACTOR = 1e3


# The width from which the CPU's bisection route replaces eigvalsh. Measured on a 2-core CPU, float32, per matrix:
# m=64 0.11 vs 0.29 ms (eigvalsh), m=128 0.56 vs 1.05 ms, m=256 2.0 vs 7.6 ms, against about 0.4 s more to
# compile: at m=256 some 70 matrices repay it, at m=128 some 800. 192 sits between the two.
# The choice depends on the width alone, never on how many matrices share a solve: a matrix's eigenvalues are the
# same whichever leaves it is solved with, on one device or over a mesh, eagerly or under jit.
BISECTION_WIDTH = 192


def gram_floor(M: int, dtype) -> float:  # noqa: N803
    """The Gram route's rounding floor on ``λ/λmax``: no eigenvalue below it is resolved.

    Measured at 2-4·eps·λmax for matrices up to 4096×1024; ``8·√M·eps`` leaves a margin.
    """
    return 8.0 * math.sqrt(M) * float(jnp.finfo(dtype).eps)


def refines_small_values(method: str, dtype) -> bool:
    """Whether ``slice_spectra`` re-solves the Gram route's doubtful matrices by the SVD (float64 only)."""
    return method == "gram" and jnp.dtype(dtype) == jnp.float64


def rank_tolerance(method: str, N: int, M: int, dtype, *, refined: bool = True) -> float:  # noqa: N803
    """The relative tolerance on λ/λmax under which an eigenvalue counts as zero (numerical rank).

    For the SVD this is WeightWatcher's ``s > s_max·N·eps`` squared, and so it is for the Gram route in float64,
    whose doubtful matrices are re-solved by the SVD (``refined``). A Gram route that is not refined (float32, the
    blockwise Gram of an oversized matrix, the conv operator's spectra) resolves no eigenvalue below
    :func:`gram_floor`, so it counts ``λ > λmax·8·√M·eps``.

    Example:
      >>> import jax.numpy as jnp
      >>> rank_tolerance("gram", 100, 10, jnp.float32) == gram_floor(10, jnp.float32)
      True
    """
    eps = float(jnp.finfo(dtype).eps)
    if method == "svd" or (refined and refines_small_values(method, dtype)):
        return (N * eps) ** 2
    return gram_floor(M, dtype)


def doubtful(evals: Float[Array, "batch m"], dtype) -> Bool[Array, " batch"]:
    """The matrices whose smallest Gram eigenvalue is within :data:`DOUBT_FACTOR` of the Gram's rounding floor:
    their small eigenvalues (and so rank, entropy, detX) are not the SVD's. All-zero matrices are not doubtful."""
    lambda_max = evals[..., -1]
    return (evals[..., 0] <= lambda_max * (DOUBT_FACTOR * gram_floor(evals.shape[-1], dtype))) & (lambda_max > 0)


def _resolve_doubtful(stack: Float[Array, "batch n m"], evals: Float[Array, "batch m"]) -> Float[Array, "batch m"]:
    """Replaces the Gram eigenvalues of the doubtful matrices of ``stack`` by their squared singular values.

    Only those are solved: a loop whose trip count is the number of doubtful matrices (none on ordinary layers),
    each one SVD of one matrix picked by a dynamic index. It runs under ``jit``, and under ``shard_map`` each device
    loops over its own doubtful matrices (the loop holds no collective).
    """
    is_doubtful = doubtful(evals, stack.dtype)
    order = jnp.argsort(~is_doubtful, stable=True)  # the doubtful matrices first

    def solve_one(i, ev):
        j = order[i]
        sv = jnp.linalg.svd(jax.lax.dynamic_index_in_dim(stack, j, keepdims=False), compute_uv=False)[::-1]
        return jax.lax.dynamic_update_index_in_dim(ev, (sv * sv)[None], j, axis=0)

    return jax.lax.fori_loop(0, jnp.sum(is_doubtful), solve_one, evals)



def shares_lapack_pool() -> bool:
    """Whether several CPU devices of this process may run LAPACK at once (then batched calls can deadlock).

    jaxlib's CPU LAPACK kernels (``sytrd``, ``gesdd``, ``syevd``) split a batch over XLA's intra-op thread pool and
    block the calling pool thread until the parts are done. A program sharded over several CPU devices runs each
    device's part on a pool thread; when they all reach such a call at once and fill the pool, the parts wait behind
    the threads that wait for them, and the process hangs (``docs/scaling.md``). A batch of one never splits.
    """
    return jax.default_backend() == "cpu" and jax.local_device_count() > 1


def per_matrix(solve, *stacks):
    """``solve(*stacks)`` for batched ``stacks`` (leading axis), one matrix at a time where
    :func:`shares_lapack_pool`: every LAPACK call then gets a batch of one and runs on the calling thread (the
    devices are the parallelism). Elsewhere the single batched call, jaxlib's fastest.

    Example:
      >>> import jax.numpy as jnp
      >>> per_matrix(lambda a: jnp.linalg.eigvalsh(a), jnp.eye(2)[None] * 3.0).tolist()
      [[3.0, 3.0]]
    """
    if not shares_lapack_pool() or stacks[0].shape[0] <= 1:
        return solve(*stacks)
    one = lambda *mats: jax.tree.map(lambda out: out[0], solve(*(m[None] for m in mats)))  # noqa: E731
    return jax.lax.map(lambda mats: one(*mats), stacks)


def tridiagonal_eigenvalues(d: Float[Array, " m"], e: Float[Array, " m-1"]) -> Float[Array, " m"]:
    """Every eigenvalue, ascending, of the symmetric tridiagonal matrix with diagonal ``d`` and off-diagonal ``e``.

    Bisection on Sturm counts (LAPACK's ``dlaebz``, all eigenvalues at once): the number of negative pivots of
    ``T - x·I`` is the number of eigenvalues below x. Each eigenvalue is bracketed in the Gershgorin interval and
    halved ``nmant + 2`` times, to an absolute ``eps·‖T‖`` as ``eigvalsh``. A loop of fixed length over a scan
    (about 0.5 s to compile; ``jax.scipy.linalg.eigh_tridiagonal`` took 1.7-2 s).

    Example:
      >>> import jax.numpy as jnp
      >>> [round(float(x), 5) for x in tridiagonal_eigenvalues(jnp.array([2.0, 2.0]), jnp.array([1.0]))]
      [1.0, 3.0]
    """
    m = d.shape[0]
    finfo = jnp.finfo(d.dtype)
    e2 = e * e
    radius = jnp.concatenate([jnp.abs(e[:1]), jnp.abs(e[:-1]) + jnp.abs(e[1:]), jnp.abs(e[-1:])])
    low, high = jnp.min(d - radius), jnp.max(d + radius)
    norm = jnp.maximum(jnp.abs(low), jnp.abs(high))
    # Guards a pivot that underflows to zero (LAPACK's pivmin); also keeps an all-zero T (norm 0) well defined.
    pivmin = jnp.maximum(finfo.tiny * jnp.maximum(1.0, jnp.max(e2)), finfo.tiny)
    slack = m * 2.1 * finfo.eps * norm + 4.2 * pivmin
    target = jnp.arange(m)

    def count_below(x):
        def pivot(carry, de):
            q, count = carry
            d_i, e2_i = de
            q = d_i - x - e2_i / q
            q = jnp.where(q <= pivmin, jnp.minimum(q, -pivmin), q)
            return (q, count + (q < 0)), None

        q0 = d[0] - x
        q0 = jnp.where(q0 <= pivmin, jnp.minimum(q0, -pivmin), q0)
        (_, count), _ = jax.lax.scan(pivot, (q0, (q0 < 0).astype(jnp.int32)), (d[1:], e2))
        return count

    def halve(_, bounds):
        lower, upper = bounds
        mid = 0.5 * (lower + upper)
        above = count_below(mid) > target  # eigenvalue number `target` lies below mid
        return jnp.where(above, lower, mid), jnp.where(above, mid, upper)

    lower = jnp.full(m, low - slack)
    upper = jnp.full(m, high + slack)
    lower, upper = jax.lax.fori_loop(0, finfo.nmant + 2, halve, (lower, upper))
    return 0.5 * (lower + upper)


def eigenvalues(a: Float[Array, "... m m"]) -> Float[Array, "... m"]:
    """The eigenvalues, ascending, of each real symmetric ``(m, m)`` matrix of ``a`` (its lower triangle is read).

    On CPU: LAPACK's ``sytrd`` reduces each matrix to tridiagonal form, then :func:`tridiagonal_eigenvalues`.
    ``jnp.linalg.eigvalsh`` runs LAPACK's ``syevd`` with its eigenvectors, which it then drops: this route is
    about 2x faster for the Gram matrices of real layers (``docs/engine.md``). But the bisection costs about 0.4 s
    more to compile, which narrow matrices never earn back: below :data:`BISECTION_WIDTH` the CPU runs
    ``eigvalsh`` too. On other backends: ``jnp.linalg.eigvalsh``, whose batched kernels are
    the better optimised there. The route is chosen when tracing, from the backend and the static shape.

    Example:
      >>> import jax.numpy as jnp
      >>> [round(float(x), 6) for x in eigenvalues(jnp.array([[2.0, 1.0], [1.0, 2.0]]))]
      [1.0, 3.0]
    """
    batch, m = a.shape[:-2], a.shape[-1]
    if not bisects(m):
        if jax.default_backend() != "cpu":
            return jnp.linalg.eigvalsh(a)
        return per_matrix(jnp.linalg.eigvalsh, a.reshape(-1, m, m)).reshape(*batch, m)
    diagonal, off_diagonal = tridiagonal_form(a.reshape(-1, m, m))
    return jax.vmap(tridiagonal_eigenvalues)(diagonal, off_diagonal).reshape(*batch, m)


def bisects(m: int) -> bool:
    """Whether :func:`eigenvalues` of ``m × m`` matrices takes the CPU's ``sytrd`` + bisection route (decided when
    tracing, from the backend and the width; see :data:`BISECTION_WIDTH`)."""
    return jax.default_backend() == "cpu" and m >= BISECTION_WIDTH


def tridiagonal_form(a: Float[Array, "batch m m"]) -> tuple[Float[Array, "batch m"], Float[Array, "batch m-1"]]:
    """The diagonal and off-diagonal of each symmetric matrix's tridiagonal form (LAPACK ``sytrd``, lower
    triangle read): the same eigenvalues, for :func:`tridiagonal_eigenvalues`.

    Example:
      >>> import jax.numpy as jnp
      >>> d, e = tridiagonal_form(jnp.array([[[2.0, 1.0], [1.0, 2.0]]]))
      >>> d.tolist(), [abs(x) for x in e.tolist()[0]]
      ([[2.0, 2.0]], [1.0])
    """
    reduce = lambda x: jax.lax.linalg.tridiagonal(x, lower=True)[1:3]  # noqa: E731
    return per_matrix(reduce, a)


def spectra_of(stacks: Sequence[Float[Array, "batch n m"]], *, method: str) -> list[SliceSpectra]:
    """:func:`slice_spectra` of several stacks, traced together. With the Gram route the stacks must share their
    width ``M`` (any ``N``): one eigen-solve of their stacked Gram matrices serves them all, so a program that
    solves many shapes holds one eigen-solver (the larger part of its compilation) instead of one per shape. Each
    matrix is solved exactly as alone: the batched solvers treat every matrix of a batch independently.

    Example:
      >>> import jax.numpy as jnp
      >>> tall, square = jnp.ones((1, 3, 2)), jnp.eye(2)[None]  # widths 2 and 2
      >>> [s.evals.round(4).tolist() for s in spectra_of([tall, square], method="gram")]
      [[[0.0, 6.0]], [[1.0, 1.0]]]
    """
    if method == "svd":
        evals = [(sv * sv) for sv in (per_matrix(functools.partial(jnp.linalg.svd, compute_uv=False), s)[..., ::-1]
                                      for s in stacks)]
    else:
        if len({s.shape[-1] for s in stacks}) > 1:
            # Two eigen-solves in one program could run at once and deadlock XLA's CPU pool (docs/scaling.md).
            raise ValueError(f"one Gram solve needs one width M, got {sorted({s.shape[-1] for s in stacks})}")
        grams = [jnp.einsum("bnm,bnk->bmk", s, s, precision=jax.lax.Precision.HIGHEST) for s in stacks]
        solved = jnp.clip(eigenvalues(jnp.concatenate(grams) if len(grams) > 1 else grams[0]), 0.0, None)
        splits = list(itertools.accumulate(s.shape[0] for s in stacks[:-1]))
        evals = [_resolve_doubtful(s, ev) if refines_small_values(method, ev.dtype) else ev
                 for s, ev in zip(stacks, jnp.split(solved, splits) if splits else [solved])]
    out = []
    for stack, ev in zip(stacks, evals):
        tol = rank_tolerance(method, *stack.shape[-2:], stack.dtype)
        out.append(SliceSpectra(ev, jnp.sum(ev > ev[..., -1:] * tol, axis=-1)))
    return out


@functools.partial(jax.jit, static_argnames=("method",))
def slice_spectra(stack: Float[Array, "batch n m"], *, method: str) -> SliceSpectra:
    """Squared singular values of every ``(n, m)`` matrix (``n >= m``) of ``stack``, ascending, and their ranks.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.diag(jnp.array([3.0, 2.0, 0.0]))
      >>> spectra = slice_spectra(w[None], method="svd")
      >>> [round(float(x), 4) for x in spectra.evals[0]], int(spectra.rank[0])
      ([0.0, 4.0, 9.0], 2)
    """
    return spectra_of([stack], method=method)[0]
