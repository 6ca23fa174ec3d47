"""The largest singular value of a stack of matrices by power iteration, differentiable the way spectral methods need.

For each matrix ``W (n, m)`` and a left vector ``u (n)``, one iteration is ``v ← Wᵀu/‖Wᵀu‖``, ``u ← Wv/‖Wv‖``
(Miyato et al. 2018; Yoshida & Miyato 2017). The estimate is ``σ = uᵀWv`` with ``u`` and ``v`` held constant, so
its gradient is exactly ``∂σ/∂W = u vᵀ``: the gradient of the true ``σ_max`` once the vectors have converged. The
vectors are an ordinary array, so a caller can carry ``u`` from one training step to the next (one iteration per
step, warm-started) or start from :func:`initial_vectors` and run a fixed number of iterations (stateless).

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
