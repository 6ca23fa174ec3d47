"""The truncated power law (TPL) fit of an ESD tail, as WeightWatcher 0.7.7 gets it from ``powerlaw`` 1.5.

WeightWatcher's ``fit='TPL'`` calls ``powerlaw.Fit(evals, xmin_distribution='truncated_power_law')``. For every
xmin candidate (the unique fitted eigenvalues but the largest) powerlaw fits the density

    p(x) = C·x^{−α}·e^{−λx},  x ≥ xmin,   C = λ^{1−α} / Γ(1−α, λ·xmin)

by minimising the negative log-likelihood with ``scipy.optimize.fmin`` (Nelder–Mead) from
``(α₀, λ₀) = (1 + m/Σ ln(x/xmin), 1/mean(x))``, measures the Kolmogorov–Smirnov distance ``D`` of the fitted TPL,
and keeps the candidate of least ``D`` among those whose fit lies in the parameter range ``α > 1, λ > 0``.

Here all of that runs for every candidate at once:

* the likelihood of a tail needs only ``m``, ``Σ ln x`` and ``Σ x`` over the tail (suffix sums), so one objective
  call costs one incomplete gamma function per candidate;
* Nelder–Mead is SciPy's ``fmin`` replayed step by step (same simplex, same tests, same tie rules, same limit of
  400 calls) as one ``lax.while_loop`` vmapped over the candidates;
* the KS distances are a masked ``(candidates, n)`` reduction in blocks of candidates (bounded memory).

Outside the parameter range powerlaw's pdf is ``1e-307`` everywhere, so the objective is the flat value
``m·707`` there. Where the likelihood keeps improving as α decreases to 1 (ESDs whose tail is not heavy enough),
Nelder–Mead walks into that plateau and stops at the last simplex inside: α ≈ 1.00000x.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from wwjax.core._powerlaw import PowerLawFit, fitted_block
from wwjax.diagnostics._gamma import log_upper_gamma
from wwjax.diagnostics._nelder_mead import nelder_mead



OUT_OF_RANGE_LOG_PDF = float(np.log(1e-307))  # powerlaw's pdf outside α > 1, λ > 0: 10**float_info.min_10_exp


class TruncatedPowerLawFit(NamedTuple):
    """A TPL fit: the columns of a power-law fit (``sigma`` is NaN, as in WeightWatcher) and the fitted λ."""

    fit: PowerLawFit
    Lambda: Float[Array, ""]  # noqa: N815 (WeightWatcher's name)


class TailStatistics(NamedTuple):
    """Per candidate xmin ``x_i``: the tail size and sums the likelihood needs."""

    xmin: Float[Array, " n"]
    size: Float[Array, " n"]
    sum_log: Float[Array, " n"]  # Σ_{k>=i} ln x_k
    sum_x: Float[Array, " n"]  # Σ_{k>=i} x_k


def negative_log_likelihood(params: Float[Array, " 2"], tail: TailStatistics) -> Float[Array, ""]:
    """powerlaw's ``−Σ log pdf`` of one tail at ``params = (α, λ)`` (the flat ``m·707`` outside α > 1, λ > 0).

    ``−Σ_k log(C·x_k^{−α}·e^{−λx_k}) = α·Σ ln x + λ·Σ x − m·((1−α)·ln λ − ln Γ(1−α, λ·xmin))``.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([1.0, 2.0, 4.0])
      >>> t = TailStatistics(x[0], jnp.array(3.0), jnp.sum(jnp.log(x)), jnp.sum(x))
      >>> round(float(negative_log_likelihood(jnp.array([0.9, 0.5]), t)), 2)  # α <= 1: powerlaw's flat penalty
      2120.68
    """
    alpha, lam = params[0], params[1]
    in_range = (alpha > 1.0) & (lam > 0.0)
    s = jnp.where(in_range, 1.0 - alpha, -0.5)
    safe_lam = jnp.where(in_range, lam, 1.0)
    log_norm = s * jnp.log(safe_lam) - log_upper_gamma(s, safe_lam * tail.xmin)
    nll = alpha * tail.sum_log + lam * tail.sum_x - tail.size * log_norm
    return jnp.where(in_range, nll, -OUT_OF_RANGE_LOG_PDF * tail.size)


def _ks_distances(evals, first, alphas, lambdas, end, block: int):
    """powerlaw's KS distance ``D`` of every candidate's fitted TPL (``(block, n)`` at a time).

    The empirical CDF at the unique tail values is ``(j − i)/(end − i)`` (j the first index of a value); the
    theoretical one is powerlaw's ``(F(x) − F(xmin)) / (1 − F(xmin))`` with ``F(x) = 1 − Γ(1−α, λx)/λ^{1−α}``,
    all ones when ``F(xmin)`` rounds to 1, and ``1e-307`` everywhere outside the parameter range.
    """
    n = evals.shape[0]
    dtype = evals.dtype
    num_blocks = -(-n // block)
    padded = num_blocks * block
    pad = lambda v, fill: jnp.pad(v, (0, padded - n), constant_values=fill)  # noqa: E731
    alphas_p, lambdas_p, xmins_p = pad(alphas, 2.0), pad(lambdas, 1.0), pad(evals, 1.0)
    j = jnp.arange(n)
    positive = jnp.where(evals > 0, evals, 1.0)

    def one_block(start):
        i = start + jnp.arange(block)
        alpha = jax.lax.dynamic_slice(alphas_p, (start,), (block,))[:, None]
        lam = jax.lax.dynamic_slice(lambdas_p, (start,), (block,))[:, None]
        xmin = jax.lax.dynamic_slice(xmins_p, (start,), (block,))[:, None]
        in_range = (alpha > 1.0) & (lam > 0.0)
        s = jnp.where(in_range, 1.0 - alpha, -0.5)
        lam = jnp.where(in_range, lam, 1.0)
        x_xmin = jnp.where(xmin > 0, xmin, 1.0)
        log_lam_s = s * jnp.log(lam)
        cdf_base = lambda x: 1.0 - jnp.exp(log_upper_gamma(s, lam * x) - log_lam_s)  # noqa: E731
        base_xmin = cdf_base(x_xmin)
        theoretical = (cdf_base(positive[None, :]) - base_xmin) / (1.0 - base_xmin)
        theoretical = jnp.where(base_xmin == 1.0, 1.0, theoretical)
        theoretical = jnp.where(in_range, theoretical, jnp.asarray(1e-307, dtype))
        empirical = (j[None, :] - i[:, None]).astype(dtype) / (end - i[:, None]).astype(dtype)
        mask = first[None, :] & (j[None, :] >= i[:, None]) & (j[None, :] < end)
        diff = theoretical - empirical
        d_plus = jnp.max(jnp.where(mask, diff, -jnp.inf), axis=1)
        d_minus = -jnp.min(jnp.where(mask, diff, jnp.inf), axis=1)
        return jnp.maximum(d_plus, d_minus)

    return jax.lax.map(one_block, jnp.arange(num_blocks) * block).reshape(-1)[:n]


def candidate_tpl_fits(
    evals: Float[Array, " n"],
    candidate: Bool[Array, " n"],
    first: Bool[Array, " n"],
    end: Int[Array, ""],
    *,
    block: int = 256,
) -> tuple[Float[Array, " n"], Float[Array, " n"], Float[Array, " n"]]:
    """(α, λ, D) of the TPL fitted at every ``candidate`` xmin of an ascending ESD whose fitted values end at ``end``.

    ``first`` marks the first of each run of equal values (where the KS distance is evaluated).
    """
    n = evals.shape[0]
    dtype = evals.dtype
    idx = jnp.arange(n)
    fitted_top = idx < end
    x = jnp.where(fitted_top & (evals > 0), evals, 1.0)
    size = (end - idx).astype(dtype)
    suffix = lambda v: jnp.cumsum(jnp.where(fitted_top, v, 0.0)[::-1])[::-1]  # noqa: E731
    log_x = jnp.log(x)
    sum_log = suffix(log_x)
    sum_x = suffix(jnp.where(fitted_top, evals, 0.0))
    # powerlaw's start: α₀ = 1 + m/Σ ln(x/xmin) (logs centred on the largest value: small tails stay exact)
    centred = jnp.where(fitted_top, log_x - log_x[jnp.maximum(end - 1, 0)], 0.0)
    log_sum = suffix(centred) - size * centred
    alpha0 = 1.0 + size / log_sum
    lambda0 = 1.0 / (sum_x / size)
    stats = TailStatistics(xmin=x, size=size, sum_log=sum_log, sum_x=sum_x)
    x0 = jnp.stack([jnp.where(candidate, alpha0, 2.0), jnp.where(candidate, lambda0, 1.0)], axis=-1)

    def fit_one(x0, tail, active):
        return nelder_mead(lambda p: negative_log_likelihood(p, tail), x0, active)

    params = jax.vmap(fit_one)(x0, stats, candidate)
    alphas, lambdas = params[:, 0], params[:, 1]
    Ds = _ks_distances(evals, first, alphas, lambdas, end, block)
    return alphas, lambdas, jnp.where(candidate, Ds, jnp.inf)


def fit_truncated_power_law(
    evals: Float[Array, " n"],
    num_clipped: int | Int[Array, ""] = 0,
    noise_floor: float | Float[Array, ""] = 0.0,
    *,
    xmin_range: tuple | None = None,
    block: int = 256,
) -> TruncatedPowerLawFit:
    """Fits a truncated power law to the tail of one ascending ESD, as WeightWatcher's ``fit='TPL'`` does.

    Args:
      evals: the ESD, ascending (zeros and padding in front; only values above 1e-5 are fitted).
      num_clipped: drop this many of the largest eigenvalues first (WeightWatcher's ``xmax=-k``).
      noise_floor: eigenvalues at or below this are not fitted (see :func:`wwjax.fit_power_law`).
      xmin_range: ``(lo, hi)``: only xmin in ``[lo, hi]`` are tried, the largest such value excepted (powerlaw's
        rule for a given xmin range; ``fit='E_TPL'`` passes the ``xmin_peak`` range).
      block: candidates per block of the KS reduction.

    Returns:
      A :class:`TruncatedPowerLawFit`; ``fit.ok`` is False when there is no candidate (fewer than two distinct
      fitted values) or the chosen fit is not finite.

    Example:
      A sample of ``x^{-2.5}·e^{-x/5}`` above 1:

      >>> import jax, numpy as np, jax.numpy as jnp
      >>> rng = np.random.default_rng(0)
      >>> x = (1 - rng.uniform(size=400)) ** (-1 / 1.5)
      >>> x = np.sort(x[rng.uniform(size=x.size) < np.exp(-(x - 1) / 5)])
      >>> out = jax.jit(fit_truncated_power_law)(jnp.asarray(x))
      >>> bool(out.fit.ok), bool(np.isnan(out.fit.sigma)), bool(out.Lambda > 0)
      (True, True, True)
    """
    n = evals.shape[0]
    idx = jnp.arange(n)
    fitted, start, end = fitted_block(evals, noise_floor, num_clipped)
    previous = jnp.concatenate([evals[:1], evals[:-1]])
    first = fitted & ((idx == start) | (evals != previous))
    top = evals[jnp.maximum(end - 1, 0)]
    if xmin_range is None:
        candidate = first & (evals < top)  # the unique values but the largest
    else:
        lo, hi = xmin_range
        allowed = first & (evals >= lo) & (evals <= hi)
        largest = jnp.max(jnp.where(allowed, idx, -1))
        candidate = allowed & (idx != largest)
    alphas, lambdas, Ds = candidate_tpl_fits(evals, candidate, first, end, block=block)
    # powerlaw's find_xmin: the least D among the fits inside α > 1, λ > 0 (among all when none is)
    good = candidate & (alphas > 1.0) & (lambdas > 0.0)
    pool = jnp.where(jnp.any(good), good, candidate)
    best = jnp.argmin(jnp.where(pool, Ds, jnp.inf))
    xmin = evals[best]
    alpha = alphas[best]
    kept = idx < end
    nan = jnp.array(jnp.nan, evals.dtype)
    fit = PowerLawFit(
        alpha=alpha,
        D=Ds[best],
        sigma=nan,
        xmin=xmin,
        xmax=top,
        num_pl_spikes=jnp.sum(kept & (evals >= xmin)),
        num_fit=end - start,
        ok=jnp.any(candidate) & jnp.isfinite(alpha) & jnp.isfinite(Ds[best]),
    )
    return TruncatedPowerLawFit(fit=fit, Lambda=lambdas[best])
