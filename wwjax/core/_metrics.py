"""Norm metrics of one ESD: WeightWatcher's ``apply_norm_metrics`` and ``apply_esd`` columns, as pure jnp.

``λ`` is the whole ESD (zeros included, conv positions pooled, scaled), ``α`` the fitted power-law exponent.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

ENTROPY_EPSILON = 1e-10  # WeightWatcher's EPSILON, added to p and to the rank in the matrix entropy
WEAK_RANK_LOSS_TOLERANCE = 1e-6


class NormMetrics(NamedTuple):
    lambda_max: Float[Array, ""]
    log_spectral_norm: Float[Array, ""]
    norm: Float[Array, ""]
    log_norm: Float[Array, ""]
    alpha_weighted: Float[Array, ""]
    log_alpha_norm: Float[Array, ""]
    stable_rank: Float[Array, ""]
    matrix_rank: Int[Array, ""]
    entropy: Float[Array, ""]
    weak_rank_loss: Int[Array, ""]
    sv_max: Float[Array, ""]
    sv_min: Float[Array, ""]


def log_alpha_norm(evals: Float[Array, " n"], alpha: Float[Array, ""]) -> Float[Array, ""]:
    """``log10 Σ λ^α``, in log space so that large α does not overflow float32."""
    log_terms = jnp.where(evals > 0, alpha * jnp.log(jnp.where(evals > 0, evals, 1.0)), -jnp.inf)
    return jax.nn.logsumexp(log_terms) / jnp.log(10.0)


def matrix_entropy(evals: Float[Array, " n"], rank: Int[Array, ""], valid: Bool[Array, " n"]) -> Float[Array, ""]:
    """WeightWatcher's matrix entropy: ``-Σ p ln p / ln r`` with ``p = λ/Σλ + ε`` and ``r = rank + ε``."""
    p = evals / jnp.sum(evals) + ENTROPY_EPSILON
    return -jnp.sum(jnp.where(valid, p * jnp.log(p), 0.0)) / jnp.log(rank + ENTROPY_EPSILON)


def norm_metrics(
    evals: Float[Array, " n"],
    alpha: Float[Array, ""],
    *,
    rank_tolerance: float | Float[Array, ""],
    tolerance: float = WEAK_RANK_LOSS_TOLERANCE,
    num_valid: int | Int[Array, ""] | None = None,
) -> NormMetrics:
    """The norm columns of one ascending ESD.

    Args:
      evals: the ESD, ascending.
      alpha: the fitted α (NaN when the fit failed: the α-based columns are then NaN too).
      rank_tolerance: an eigenvalue counts towards ``matrix_rank`` when ``λ > λmax·rank_tolerance``.
      tolerance: ``weak_rank_loss`` counts eigenvalues below this.
      num_valid: how many of the largest entries are eigenvalues; the rest in front are padding (zeros).

    Example:
      >>> import jax.numpy as jnp
      >>> m = norm_metrics(jnp.array([0.0, 1.0, 4.0]), jnp.array(2.0), rank_tolerance=1e-12)
      >>> float(m.norm), float(m.stable_rank), int(m.matrix_rank), int(m.weak_rank_loss)
      (5.0, 1.25, 2, 1)
    """
    n = evals.shape[0]
    num_valid = n if num_valid is None else num_valid
    valid = jnp.arange(n) >= n - num_valid
    lambda_max = evals[-1]
    total = jnp.sum(evals)
    log_spectral_norm = jnp.log10(lambda_max)
    rank = jnp.sum(evals > lambda_max * rank_tolerance)
    return NormMetrics(
        lambda_max=lambda_max,
        log_spectral_norm=log_spectral_norm,
        norm=total,
        log_norm=jnp.log10(total),
        alpha_weighted=alpha * log_spectral_norm,
        log_alpha_norm=log_alpha_norm(evals, alpha),
        stable_rank=total / lambda_max,
        matrix_rank=rank,
        entropy=matrix_entropy(evals, rank, valid),
        weak_rank_loss=jnp.sum(valid & (evals < tolerance)),
        sv_max=jnp.sqrt(lambda_max),
        sv_min=jnp.sqrt(evals[n - num_valid]),
    )
