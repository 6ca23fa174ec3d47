"""The largest singular value of a stack of matrices by power iteration, differentiable the way spectral methods need.

For each matrix ``W (n, m)`` and a left vector ``u (n)``, one iteration is ``v ← Wᵀu/‖Wᵀu‖``, ``u ← Wv/‖Wv‖``
(Miyato et al. 2018; Yoshida & Miyato 2017). The estimate is ``σ = uᵀWv`` with ``u`` and ``v`` held constant, so
its gradient is exactly ``∂σ/∂W = u vᵀ``: the gradient of the true ``σ_max`` once the vectors have converged. The
vectors are an ordinary array, so a caller can carry ``u`` from one training step to the next (one iteration per
step, warm-started) or start from :func:`initial_vectors` and run a fixed number of iterations.

:func:`top_singular` is the converged counterpart (what the stateless penalty uses): restarted Lanczos
bidiagonalisation run to a residual tolerance, with the same ``σ = uᵀWv`` and the same gradient. Power iteration
converges like ``(σ2/σ1)^2k``, hopeless when the top two singular values are a few percent apart; a Krylov space
converges like ``exp(-2k·sqrt(1 - σ2²/σ1²))``.

Every function works on any leading batch shape, so all matrices of a leaf (stacked layers, kernel positions,
FFT frequencies) are iterated at once.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Inexact

_EPSILON = 1e-12  # guards the normalisation of a zero vector (a zero matrix keeps u and reports σ = 0)
_SEED = 0  # the deterministic start: the same params always give the same stateless estimate


class PowerIteration(NamedTuple):
    """The estimate of ``σ_max`` per matrix, and the singular vectors it was read from (gradient-free)."""

    sigma: Float[Array, "*batch"]
    u: Inexact[Array, "*batch n"]
    v: Inexact[Array, "*batch m"]


def initial_vectors(shape: tuple[int, ...], dtype=jnp.float32) -> Float[Array, "*batch n"]:
    """Deterministic unit start vectors of ``shape`` (last axis normalised): a fixed-seed Gaussian draw.

    A Gaussian start is almost surely not orthogonal to the top singular vector (a vector of ones would be, for a
    matrix whose columns sum to zero).

    Example:
      >>> u = initial_vectors((2, 3))
      >>> u.shape, bool(jnp.allclose(jnp.linalg.norm(u, axis=-1), 1.0))
      ((2, 3), True)
    """
    # Drawn on the host from the static shape: a constant in the traced program, with nothing to compile.
    u = np.random.default_rng(_SEED).standard_normal(shape)
    return jnp.asarray(u / np.linalg.norm(u, axis=-1, keepdims=True), dtype=dtype)


def _normalize(x):
    norm = jnp.sqrt(jnp.sum(jnp.real(x * jnp.conj(x)), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, _EPSILON)


def _matvec(matrices, v):
    return jnp.einsum("...nm,...m->...n", matrices, v, precision=jax.lax.Precision.HIGHEST)


def _rmatvec(matrices, u):
    return jnp.einsum("...nm,...n->...m", jnp.conj(matrices), u, precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnames=("num_iters",))
def power_iteration(
    matrices: Inexact[Array, "*batch n m"],
    u: Inexact[Array, "*batch n"] | None = None,
    *,
    num_iters: int = 1,
) -> PowerIteration:
    """``σ_max`` of every matrix of a stack by ``num_iters`` power iterations from ``u``.

    Args:
      matrices: ``(*batch, n, m)`` real (or complex) matrices.
      u: ``(*batch, n)`` start vectors (the previous step's, to warm-start); :func:`initial_vectors` if None.
      num_iters: iterations to run (static). One per training step suffices when ``u`` is carried over.

    Returns:
      :class:`PowerIteration`: ``sigma = Re(uᴴWv)`` differentiable in ``matrices`` with ``∂σ/∂W = conj(u) vᵀ``
      (``u vᵀ`` for real matrices); ``u`` and ``v`` carry no gradient.

    Example:
      >>> w = jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
      >>> round(float(power_iteration(w, num_iters=20).sigma), 4)
      3.0
      >>> g = jax.grad(lambda w: power_iteration(w, num_iters=20).sigma)(w)
      >>> round(float(g[0, 0]), 4), round(float(jnp.abs(g).sum()), 4)  # u vᵀ with u = e0, v = e0
      (1.0, 1.0)
    """
    frozen = jax.lax.stop_gradient(matrices)
    if u is None:
        u = initial_vectors(frozen.shape[:-1], jnp.real(frozen).dtype)
    u = jax.lax.stop_gradient(u).astype(frozen.dtype)

    def step(_, carry):
        u, _ = carry
        v = _normalize(_rmatvec(frozen, u))
        return _normalize(_matvec(frozen, v)), v

    v0 = jnp.zeros(frozen.shape[:-2] + frozen.shape[-1:], frozen.dtype)
    u, v = jax.lax.fori_loop(0, num_iters, step, (u, v0)) if num_iters > 0 else (u, _normalize(_rmatvec(frozen, u)))
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    sigma = jnp.real(jnp.einsum("...n,...nm,...m->...", jnp.conj(u), matrices, v, precision=jax.lax.Precision.HIGHEST))
    return PowerIteration(sigma, u, v)


def default_rtol(dtype) -> float:
    """The residual tolerance :func:`top_singular` converges to by default: ``1e-6`` in float32, ``1e-12`` in float64.

    A relative residual ``r`` bounds the angle of the singular vectors by ``r / (1 - σ2/σ1)``: 1e-6 keeps the
    gradient ``σ u vᵀ`` within 1e-4 of the exact one down to a 1% gap, above float32's own rounding of ``W``.
    """
    return 1e-12 if jnp.finfo(jnp.real(jnp.zeros((), dtype)).dtype).bits >= 64 else 1e-6


def _orthogonalize(x, basis):
    """``x`` minus its projection on the rows of ``basis`` (``(..., k, d)``, unfilled rows zero), twice ("twice is
    enough": one classical Gram-Schmidt pass loses orthogonality in float32, two keep it to rounding)."""
    for _ in range(2):
        coefficients = jnp.einsum("...kd,...d->...k", jnp.conj(basis), x, precision=jax.lax.Precision.HIGHEST)
        x = x - jnp.einsum("...kd,...k->...d", basis, coefficients, precision=jax.lax.Precision.HIGHEST)
    return x


def _norm(x):
    return jnp.sqrt(jnp.sum(jnp.real(x * jnp.conj(x)), axis=-1))


def _bidiagonalize(frozen, v0, krylov_dim: int, floor):
    """``krylov_dim`` Golub-Kahan-Lanczos steps from ``v0`` with full reorthogonalisation.

    Returns the left and right bases ``U (..., k, n)``, ``V (..., k, m)``, the diagonal ``α`` and the
    super-diagonal ``β`` of ``B = Uᴴ W V``; the last ``β`` couples to the next, unused, right vector (the residual's
    scale). A step whose new vector is below ``floor`` (the Krylov space is exhausted: a rank-deficient
    matrix) leaves zero vectors, so every later step adds nothing and the Ritz values stay exact.
    """
    batch, (n, m) = frozen.shape[:-2], frozen.shape[-2:]
    real = jnp.real(frozen).dtype
    axis = len(batch)

    def step(j, carry):
        us, vs, alphas, betas, v = carry
        vs = jax.lax.dynamic_update_index_in_dim(vs, v, j, axis)
        p = _orthogonalize(_matvec(frozen, v), us)
        alpha = _norm(p)
        alpha = jnp.where(alpha > floor, alpha, 0.0)
        u = p / jnp.where(alpha > 0, alpha, 1.0)[..., None] * (alpha > 0)[..., None]
        us = jax.lax.dynamic_update_index_in_dim(us, u, j, axis)
        q = _orthogonalize(_rmatvec(frozen, u), vs)
        beta = _norm(q)
        beta = jnp.where(beta > floor, beta, 0.0)
        v = q / jnp.where(beta > 0, beta, 1.0)[..., None] * (beta > 0)[..., None]
        alphas = jax.lax.dynamic_update_index_in_dim(alphas, alpha, j, axis)
        betas = jax.lax.dynamic_update_index_in_dim(betas, beta, j, axis)
        return us, vs, alphas, betas, v

    carry = (
        jnp.zeros((*batch, krylov_dim, n), frozen.dtype),
        jnp.zeros((*batch, krylov_dim, m), frozen.dtype),
        jnp.zeros((*batch, krylov_dim), real),
        jnp.zeros((*batch, krylov_dim), real),
        v0,
    )
    us, vs, alphas, betas, _ = jax.lax.fori_loop(0, krylov_dim, step, carry)
    return us, vs, alphas, betas


def _ritz(us, vs, alphas, betas):
    """The top singular triplet of the bidiagonal ``B``, lifted to the Ritz vectors, and its residual ``|β_k x_k|``."""
    k = alphas.shape[-1]
    # B[j, j] = α_j, B[j, j+1] = β_j: W v_{j+1} = β_j u_j + α_{j+1} u_{j+1} (the last β couples to v_{k+1}).
    bidiagonal = jnp.einsum("...j,jk->...jk", alphas, jnp.eye(k, dtype=alphas.dtype))
    bidiagonal = bidiagonal + jnp.einsum("...j,jk->...jk", betas, jnp.eye(k, k, 1, dtype=alphas.dtype))  # row k: 0
    # The top right singular vector of B as the top eigenvector of the k×k BᵀB: eigh compiles and runs faster than
    # an SVD, and squaring only B (not W) costs nothing here: the pair's accuracy is set by W's products above.
    _, vectors = jnp.linalg.eigh(jnp.einsum("...ji,...jk->...ik", bidiagonal, bidiagonal,
                                            precision=jax.lax.Precision.HIGHEST))
    y = vectors[..., :, -1]
    by = jnp.einsum("...jk,...k->...j", bidiagonal, y, precision=jax.lax.Precision.HIGHEST)
    theta = _norm(by)
    x = by / jnp.where(theta > 0, theta, 1.0)[..., None]
    residual = jnp.abs(betas[..., -1] * x[..., -1])
    u = jnp.einsum("...kn,...k->...n", us, x.astype(us.dtype), precision=jax.lax.Precision.HIGHEST)
    v = jnp.einsum("...km,...k->...m", vs, y.astype(vs.dtype), precision=jax.lax.Precision.HIGHEST)
    return _normalize(u), _normalize(v), theta, residual


@functools.partial(jax.jit, static_argnames=("krylov_dim", "max_iters"))
def top_singular(
    matrices: Inexact[Array, "*batch n m"],
    v: Inexact[Array, "*batch m"] | None = None,
    *,
    rtol: float | None = None,
    krylov_dim: int = 32,
    max_iters: int = 512,
) -> PowerIteration:
    """``σ_max`` and its singular vectors for every matrix of a stack, converged to a tolerance (Lanczos).

    Golub-Kahan-Lanczos bidiagonalisation with full reorthogonalisation, restarted from the top Ritz vector every
    ``krylov_dim`` steps in a ``lax.while_loop`` until the relative residual ``‖Wᴴu − σv‖/σ`` of every matrix is
    below ``rtol``, or ``max_iters`` steps (one product with ``W`` and one with ``Wᴴ`` each, the cost of a power
    iteration) were run. Where power iteration's error shrinks like ``(σ2/σ1)^2k``, a Krylov space's shrinks like
    ``exp(-2k·sqrt(1 - σ2²/σ1²))``: a 5% gap converges in one cycle of 32 steps where power iteration needs hundreds.
    A matrix whose short side is at most ``krylov_dim`` is solved exactly in one cycle (the whole space).

    The loop is not differentiated: the result is ``σ = Re(uᴴWv)`` with ``u``, ``v`` held constant, so
    ``∂σ/∂W = conj(u) vᵀ``, the gradient of the true ``σ_max`` once the vectors have converged (``jax.grad`` works
    under ``jax.jit``). The trip count depends on the data: under ``pmap`` each device loops on its own copy (there
    are no collectives inside the loop, so devices never wait on each other; replicated params give the same
    result everywhere); under ``jit`` with sharded weights XLA partitions the products and the loop condition, and
    every device runs the same number of steps.

    Args:
      matrices: ``(*batch, n, m)`` real or complex matrices.
      v: ``(*batch, m)`` start vectors; :func:`initial_vectors` (a fixed-seed Gaussian draw) if None.
      rtol: the relative residual to reach; :func:`default_rtol` of the dtype if None.
      krylov_dim: Lanczos steps between restarts (static; capped at the short side of the matrices).
      max_iters: the cap on Lanczos steps in all (static); a matrix not converged by then keeps its best estimate
        (a lower bound of ``σ_max``).

    Returns:
      :class:`PowerIteration`: ``sigma`` differentiable in ``matrices``, ``u`` and ``v`` without gradient.

    Example:
      >>> w = jnp.array([[3.0, 0.0], [0.0, 2.9], [0.0, 0.0]])  # σ2/σ1 = 0.97: power iteration would crawl
      >>> round(float(top_singular(w).sigma), 4)
      3.0
      >>> g = jax.grad(lambda w: top_singular(w).sigma)(w)  # u vᵀ with u = ±e0, v = ±e0
      >>> round(float(g[0, 0]), 4), round(float(jnp.abs(g).sum()), 4)
      (1.0, 1.0)
    """
    frozen = jax.lax.stop_gradient(matrices)
    n, m = frozen.shape[-2:]
    k = max(1, min(krylov_dim, n, m))
    cycles = max(1, -(-max_iters // k))
    if rtol is None:
        rtol = default_rtol(frozen.dtype)
    if v is None:
        v = initial_vectors(frozen.shape[:-2] + (m,), jnp.real(frozen).dtype)
    # Start in the row space of W (v ← WᴴWv): the Krylov space then never carries a null-space component, and a
    # matrix with short side <= krylov_dim is spanned, so solved exactly, by the first cycle.
    v = jax.lax.stop_gradient(v).astype(frozen.dtype)
    v = _normalize(_rmatvec(frozen, _matvec(frozen, v)))
    scale = jnp.sqrt(jnp.sum(jnp.real(frozen * jnp.conj(frozen)), axis=(-2, -1)))
    # Below this a new Lanczos vector is rounding noise of the vectors already in the basis, not a new direction.
    floor = 8 * jnp.finfo(jnp.real(frozen).dtype).eps * scale

    def cycle(carry):
        _, v, _, _, count = carry
        u, v, theta, residual = _ritz(*_bidiagonalize(frozen, v, k, floor))
        return u, v, theta, residual, count + 1

    def unconverged(carry):
        _, _, theta, residual, count = carry
        return (count < cycles) & jnp.any(residual > rtol * theta)

    real = jnp.real(frozen).dtype
    # One loop, entered unconditionally (residual 1 > rtol · 0): the cycle is traced and compiled once.
    start = (jnp.zeros(frozen.shape[:-1], frozen.dtype), v, jnp.zeros(frozen.shape[:-2], real),
             jnp.ones(frozen.shape[:-2], real), 0)
    u, v, _, _, _ = jax.lax.while_loop(unconverged, cycle, start)
    u, v = jax.lax.stop_gradient(u), jax.lax.stop_gradient(v)
    # u = Ux, v = Vy with By = θx, so uᴴWv = θ >= 0: no sign or phase to fix.
    sigma = jnp.real(jnp.einsum("...n,...nm,...m->...", jnp.conj(u), matrices, v, precision=jax.lax.Precision.HIGHEST))
    return PowerIteration(sigma, u, v)
