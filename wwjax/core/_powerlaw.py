"""The power-law fit of an ESD tail, every xmin candidate at once (WeightWatcher's WWFit, vectorised).

For sorted fit data ``x_0 <= ... <= x_{n-1}`` (eigenvalues above ``1e-5``) and each candidate ``i`` with tail
size ``m = n - i``:

* ``α_i = 1 + m / Σ_{k>=i} ln(x_k/x_i)`` (Hill / maximum likelihood), or ``1 + (m-1)/Σ…`` (bias-corrected) when
  ``n < 20``, WeightWatcher 0.7.7's small-sample path, which only tries tails of ``m >= 8``;
* ``D_i = max_k |1 - (x_{i+k}/x_i)^{1-α_i} - k/m|``, the Kolmogorov–Smirnov distance of the fitted power law;
* the fit is the candidate of least ``D`` (the first on ties), with ``σ = (α-1)/√m``.

The ``D`` of all candidates is an ``(n, n)`` masked reduction, computed in blocks of candidates so that memory
stays bounded (a 16k-eigenvalue layer never materialises 16k×16k at once).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

EVALS_THRESH = 1e-5  # eigenvalues at or below this are not fitted (WeightWatcher's EVALS_THRESH)
SMALL_N_CUTOFF = 20  # fewer fit eigenvalues than this take the small-sample path (WeightWatcher 0.7.7)
SMALL_N_MIN_TAIL = 8  # the smallest tail the small-sample path tries
_DEGENERATE_LOG_SUM = 1e-12


class PowerLawFit(NamedTuple):
    """One fitted power law (scalars per row)."""

    alpha: Float[Array, ""]
    D: Float[Array, ""]
    sigma: Float[Array, ""]
    xmin: Float[Array, ""]
    xmax: Float[Array, ""]
    num_pl_spikes: Int[Array, ""]
    num_fit: Int[Array, ""]  # how many eigenvalues were fitted (above 1e-5, after xmax clipping)
    ok: Bool[Array, ""]


class CandidateFits(NamedTuple):
    """α, D and σ for every xmin candidate (``D`` is +inf where ``i`` is not a candidate)."""

    alphas: Float[Array, " n"]
    Ds: Float[Array, " n"]
    sigmas: Float[Array, " n"]


def _ks_distances(
    log_x: Float[Array, " n"], alphas: Float[Array, " n"], end: Int[Array, ""], block: int
) -> Float[Array, " n"]:
    """``D_i`` for every candidate ``i``: max over ``j in [i, end)`` of |theoretical − empirical CDF|."""
    n = log_x.shape[0]
    num_blocks = -(-n // block)
    padded = num_blocks * block
    log_x_p = jnp.pad(log_x, (0, padded - n))
    alphas_p = jnp.pad(alphas, (0, padded - n), constant_values=2.0)
    j = jnp.arange(n)

    def one_block(first):
        i = first + jnp.arange(block)
        log_xi = jax.lax.dynamic_slice(log_x_p, (first,), (block,))
        alpha_i = jax.lax.dynamic_slice(alphas_p, (first,), (block,))
        tail = (end - i).astype(log_x.dtype)
        delta = log_x[None, :] - log_xi[:, None]
        # (x/xmin)^(1-α) is 1 at x = xmin even when a tail of equal values gives α = inf (numpy: 1**-inf = 1)
        theoretical = 1.0 - jnp.exp(jnp.where(delta == 0.0, 0.0, (1.0 - alpha_i)[:, None] * delta))
        empirical = (j[None, :] - i[:, None]) / tail[:, None]
        in_tail = (j[None, :] >= i[:, None]) & (j[None, :] < end)
        return jnp.max(jnp.where(in_tail, jnp.abs(theoretical - empirical), 0.0), axis=1)

    firsts = jnp.arange(num_blocks) * block
    return jax.lax.map(one_block, firsts).reshape(-1)[:n]


def fitted_block(
    evals: Float[Array, " n"], noise_floor: float | Float[Array, ""] = 0.0, num_clipped: int | Int[Array, ""] = 0
) -> tuple[Bool[Array, " n"], Int[Array, ""], Int[Array, ""]]:
    """Which eigenvalues of an ascending, zero-padded row every fit sees: the contiguous block ``[start, end)`` left
    when the ``num_clipped`` largest are set aside and those at or below ``max(1e-5, noise_floor)`` dropped.

    Example:
      >>> import jax.numpy as jnp
      >>> mask, start, end = fitted_block(jnp.array([0.0, 1e-6, 0.5, 2.0, 9.0]), num_clipped=1)
      >>> mask.tolist(), int(start), int(end)
      ([False, False, True, True, False], 2, 4)
    """
    n = evals.shape[0]
    end = n - num_clipped
    fitted = (jnp.arange(n) < end) & (evals > jnp.maximum(EVALS_THRESH, noise_floor))
    return fitted, end - jnp.sum(fitted), end


def candidate_fits(
    evals: Float[Array, " n"],
    num_clipped: int | Int[Array, ""] = 0,
    noise_floor: float | Float[Array, ""] = 0.0,
    *,
    block: int = 256,
) -> tuple[
    CandidateFits, Int[Array, ""], Int[Array, ""]
]:
    """α, D, σ of every xmin candidate of an ascending ESD, with the fit range ``[start, end)``.

    ``num_clipped`` top eigenvalues are left out first (WeightWatcher's integer ``xmax``); eigenvalues at or below
    ``max(1e-5, noise_floor)`` are not fitted.
    """
    n = evals.shape[0]
    idx = jnp.arange(n)
    fitted, start, end = fitted_block(evals, noise_floor, num_clipped)
    num_fit = end - start
    log_x = jnp.log(jnp.where(fitted, evals, 1.0))
    # Centre the logs on the largest fitted value: suffix sums of small tails then stay small and exact.
    log_x = jnp.where(fitted, log_x - log_x[jnp.maximum(end - 1, 0)], 0.0)
    suffix = jnp.cumsum(log_x[::-1])[::-1]
    tail = (end - idx).astype(evals.dtype)
    log_sum = suffix - tail * log_x  # Σ_{k>=i} ln(x_k / x_i)
    candidate = (idx >= start) & (idx <= end - 2)

    small = num_fit < SMALL_N_CUTOFF
    alpha_standard = 1.0 + tail / log_sum
    alpha_small = 1.0 + (tail - 1.0) / log_sum
    # WeightWatcher 0.7.7's small-sample path: tails of >= 8 with a non-degenerate log sum; with fewer than 8
    # eigenvalues it falls back to the whole data as the only tail.
    small_ok = candidate & (log_sum > _DEGENERATE_LOG_SUM) & ((tail >= SMALL_N_MIN_TAIL) | ((num_fit < SMALL_N_MIN_TAIL) & (idx == start)))
    alphas = jnp.where(small, jnp.where(small_ok, alpha_small, 0.0), alpha_standard)
    has_d = jnp.where(small, small_ok, True) & (alphas > 1.0) & candidate
    ks = _ks_distances(log_x, jnp.where(has_d, alphas, 2.0), end, block)
    Ds = jnp.where(candidate, jnp.where(has_d, ks, 1.0), jnp.inf)
    sigmas = (alphas - 1.0) / jnp.sqrt(tail)
    return CandidateFits(alphas, Ds, sigmas), start, end


def fit_power_law(
    evals: Float[Array, " n"],
    num_clipped: int | Int[Array, ""] = 0,
    noise_floor: float | Float[Array, ""] = 0.0,
    *,
    block: int = 256,
) -> PowerLawFit:
    """Fits a power law to the tail of one ascending ESD, as WeightWatcher's default ``WWFit`` does.

    Args:
      evals: the ESD, sorted ascending (zeros included; only values above 1e-5 are fitted).
      num_clipped: drop this many of the largest eigenvalues before fitting (WeightWatcher's ``xmax=-k``).
      noise_floor: eigenvalues at or below this are numerically zero for the solver that produced them and are not
        fitted either (``wwjax.analyze`` passes ``λmax`` times its rank tolerance; negligible in float64).
      block: candidates per block of the KS-distance reduction (memory ~ ``block * n``).

    Returns:
      A :class:`PowerLawFit`; ``ok`` is False when fewer than two eigenvalues could be fitted or α is not finite.

    Example:
      >>> import jax.numpy as jnp
      >>> x = (1.0 - jnp.linspace(0.0, 0.999, 500)) ** (-1 / 1.5)  # a Pareto tail with α = 2.5
      >>> fit = fit_power_law(jnp.sort(x))
      >>> bool(fit.ok), round(float(fit.alpha), 1)
      (True, 2.5)
    """
    fits, start, end = candidate_fits(evals, num_clipped, noise_floor, block=block)
    best = jnp.argmin(fits.Ds)
    num_fit = end - start
    alpha = fits.alphas[best]
    ok = (num_fit >= 2) & jnp.isfinite(alpha) & jnp.isfinite(fits.Ds[best])
    xmin = evals[best]
    kept = jnp.arange(evals.shape[0]) < end
    return PowerLawFit(
        alpha=alpha,
        D=fits.Ds[best],
        sigma=fits.sigmas[best],
        xmin=xmin,
        xmax=evals[jnp.maximum(end - 1, 0)],
        num_pl_spikes=jnp.sum(kept & (evals >= xmin)),
        num_fit=num_fit,
        ok=ok,
    )
