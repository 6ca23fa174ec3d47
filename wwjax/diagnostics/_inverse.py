"""``inverse=True``: the ESD of the inverse, ``1/λ`` (WeightWatcher's option for its double-descent experiments)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def invert_esd(evals: Float[Array, "rows n"], rank_tolerance: Float[Array, " rows"] | float) -> Float[Array, "rows n"]:
    """``1/λ`` of every nonzero eigenvalue, sorted ascending; numerically zero eigenvalues stay 0.

    An eigenvalue counts as zero when ``λ <= λmax·rank_tolerance`` (the solver's numerical rank, see
    ``docs/engine.md``): its inverse would be rounding noise blown up to the largest value of the ESD.

    Example:
      >>> import jax.numpy as jnp
      >>> invert_esd(jnp.array([[0.0, 0.5, 4.0]]), 1e-12).tolist()
      [[0.0, 0.25, 2.0]]
    """
    tol = jnp.asarray(rank_tolerance, evals.dtype)
    tol = jnp.broadcast_to(tol, evals.shape[:-1])[..., None]
    nonzero = evals > jnp.max(evals, axis=-1, keepdims=True) * tol
    inverted = jnp.where(nonzero, 1.0 / jnp.where(nonzero, evals, 1.0), 0.0)
    return jnp.sort(inverted, axis=-1)


invert_esd_jit = jax.jit(invert_esd)
