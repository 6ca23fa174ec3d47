"""Batched eigen-solves: the singular values of many matrices, grouped by shape, in one vmapped call per group.

Two solvers:

* ``svd``: ``jnp.linalg.svd(..., compute_uv=False)`` of the ``(N, M)`` matrix, the accurate reference (LAPACK
  ``gesdd`` on CPU, like WeightWatcher's ``scipy.linalg.svd``).
* ``gram``: the ``(M, M)`` Gram matrix ``WᵀW`` by a HIGHEST-precision matmul, then ``eigvalsh``. Eigenvalues of
  WᵀW *are* the ESD, so nothing is lost for the power-law tail; the smallest eigenvalues carry an absolute error of
  about ``eps·λmax`` (see ``docs/engine.md``), which is why its rank tolerance is ``λ > λmax·N·eps``.

``svd_method='fast'`` picks the faster of the two for the backend (see ``docs/engine.md`` for the measurements).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

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


def rank_tolerance(method: str, N: int, M: int, dtype) -> float:
    """The relative tolerance on λ/λmax under which an eigenvalue counts as zero (numerical rank).

    For the SVD this is WeightWatcher's ``s > s_max·N·eps`` squared. The Gram route resolves no eigenvalue below
    its rounding floor, measured at 2-4·eps·λmax for matrices up to 4096×1024, so it counts ``λ > λmax·8·√M·eps``.
    """
    eps = float(jnp.finfo(dtype).eps)
    return (N * eps) ** 2 if method == "svd" else 8.0 * math.sqrt(M) * eps


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
    if method == "svd":
        sv = jnp.linalg.svd(stack, compute_uv=False)[..., ::-1]
        evals = sv * sv
    else:
        gram = jnp.einsum("bnm,bnk->bmk", stack, stack, precision=jax.lax.Precision.HIGHEST)
        evals = jnp.clip(jnp.linalg.eigvalsh(gram), 0.0, None)
    tol = rank_tolerance(method, *stack.shape[-2:], stack.dtype)
    rank = jnp.sum(evals > evals[..., -1:] * tol, axis=-1)
    return SliceSpectra(evals, rank)
