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

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from wwjax._powerlaw import EVALS_THRESH, PowerLawFit

# Taylor coefficients of 1/Γ(1+s) at s = 0 (entire; 29 terms reach 1e-17 for |s| <= 1).
_RGAMMA1P = (
    1.0, 0.57721566490153286061, -0.65587807152025388108, -0.042002635034095235529, 0.1665386113822914895,
    -0.042197734555544336748, -0.0096219715278769735621, 0.0072189432466630995424, -0.0011651675918590651121,
    -0.00021524167411495097282, 0.00012805028238811618615, -0.000020134854780788238656, -1.2504934821426706573e-6,
    1.1330272319816958824e-6, -2.0563384169776071035e-7, 6.1160951044814158179e-9, 5.0020076444692229301e-9,
    -1.1812745704870201446e-9, 1.0434267116911005105e-10, 7.782263439905071254e-12, -3.6968056186422057082e-12,
    5.100370287454475979e-13, -2.0583260535665067832e-14, -5.3481225394230179824e-15, 1.2267786282382607902e-15,
    -1.1812593016974587695e-16, 1.1866922547516003326e-18, 1.4123806553180317816e-18, -2.2987456844353702066e-19,
)
SERIES_BELOW = 2.0  # x below this: power series (+ recurrence in s); at or above: continued fraction
SERIES_TERMS = 32  # Σ_k (−x)^k / (k!(s+k)) for x < 2: 2^32/32! ≈ 2e-26
RECURRENCE_STEPS = 24  # the series serves s > −24.5; more negative s converge fast in the continued fraction
CF_TERMS = 48  # modified Lentz terms of the continued fraction (x >= 2: relative error < 1e-15)


def _log_upper_gamma_series(s, x):
    """log Γ(s, x) for ``x < 2``, ``−24.5 < s < 1``: a series at ``s₀ = s + K ∈ [−0.5, 1)``, then K steps down.

    At ``s₀`` (no cancellation between Γ(s₀) and x^{s₀}/s₀ as s₀ → 0, where both blow up):
    ``Γ(s₀, x) = (Γ(1+s₀) − 1)/s₀ − (x^{s₀} − 1)/s₀ − x^{s₀}·Σ_{k≥1} (−x)^k / (k!(s₀+k))``.
    Downwards, ``r_a = Γ(a, x)·eˣ·x^{−a}`` obeys ``r_{a−1} = (1 − x·r_a)/(1 − a)``: no overflow for very negative
    a; ``x·r_a ≈ x/(x + 1 − a)`` is at most 0.57 for x < 2, a ≤ 0.5, so a step amplifies relative errors by at most
    1.3, and by less than 1 once a < −1.
    """
    steps = jnp.clip(jnp.ceil(-0.5 - s), 0, RECURRENCE_STEPS)
    s0 = s + steps
    log_x = jnp.log(x)
    # (Γ(1+s₀) − 1)/s₀ = −(Σ_{k≥1} c_k s₀^{k−1}) / (Σ_k c_k s₀^k) with 1/Γ(1+s) = Σ c_k s^k
    tail = functools.reduce(lambda acc, c: acc * s0 + c, _RGAMMA1P[:0:-1], jnp.zeros_like(s0))
    rgamma = 1.0 + s0 * tail
    gamma_term = -tail / rgamma
    safe_s0 = jnp.where(s0 == 0.0, 1.0, s0)
    power_term = jnp.where(s0 == 0.0, log_x, jnp.expm1(s0 * log_x) / safe_s0)
    def add_term(k, acc):  # (−x)^k/k! as a running product: no overflow, exact signs, no (…, terms) array
        term, total = acc
        term = term * (-x / k)
        return term, total + term / (s0 + k)

    _, series = jax.lax.fori_loop(1, SERIES_TERMS + 1, add_term, (jnp.ones_like(x), jnp.zeros_like(x)), unroll=4)
    g0 = gamma_term - power_term - jnp.exp(s0 * log_x) * series
    r = g0 * jnp.exp(x - s0 * log_x)

    def down(j, r):
        a = s + (steps - j)  # the current order; step to a − 1 while j < steps
        return jnp.where(j < steps, (1.0 - x * r) / (1.0 - a), r)

    r = jax.lax.fori_loop(0, RECURRENCE_STEPS, down, r, unroll=4)
    return jnp.log(r) - x + s * log_x


def _log_upper_gamma_cf(s, x):
    """log Γ(s, x) by Legendre's continued fraction (modified Lentz, fixed length): for x >= 2 or s <= −24.5.

    ``Γ(s, x) = e^{−x}·x^s / (x+1−s − 1·(1−s)/(x+3−s − 2·(2−s)/(x+5−s − …)))``.
    """
    tiny = jnp.finfo(x.dtype).tiny / jnp.finfo(x.dtype).eps  # Lentz's floor for vanishing denominators
    b = x + 1.0 - s
    c = jnp.full_like(x, 1.0 / tiny)
    d = 1.0 / b
    h = d

    def term(i, state):
        b, c, d, h = state
        i = jnp.asarray(i, x.dtype)
        an = -i * (i - s)
        b = b + 2.0
        d = an * d + b
        d = jnp.where(jnp.abs(d) < tiny, tiny, d)
        c = b + an / c
        c = jnp.where(jnp.abs(c) < tiny, tiny, c)
        d = 1.0 / d
        return b, c, d, h * (d * c)

    *_, h = jax.lax.fori_loop(1, CF_TERMS + 1, term, (b, c, d, h), unroll=4)
    return jnp.log(h) - x + s * jnp.log(x)


def log_upper_gamma(s: Float[Array, "..."], x: Float[Array, "..."]) -> Float[Array, "..."]:
    """``log Γ(s, x)``, the upper incomplete gamma function, for real ``s < 1`` (negative included) and ``x > 0``.

    In float64 ``|Δ log Γ| <= 1e-14·max(1, |log Γ|)`` against mpmath (what powerlaw uses), i.e. Γ to ~1e-13
    relative; elementwise and jit/vmap-friendly (both branches run, the right one is selected).

    Example:
      >>> import jax.numpy as jnp
      >>> from jax.scipy.special import exp1
      >>> round(float(jnp.exp(log_upper_gamma(jnp.array(0.0), jnp.array(2.0)))), 5), round(float(exp1(2.0)), 5)
      (0.0489, 0.0489)
    """
    s, x = jnp.broadcast_arrays(jnp.asarray(s), jnp.asarray(x))
    use_series = (x < SERIES_BELOW) & (s > -RECURRENCE_STEPS - 0.5)
    series = _log_upper_gamma_series(jnp.where(use_series, s, 0.5), jnp.where(use_series, x, 0.5))
    cf = _log_upper_gamma_cf(jnp.where(use_series, -30.0, s), jnp.where(use_series, 1.0, x))
    return jnp.where(use_series, series, cf)


# ---------------------------------------------------------------------------------------------------------------
# scipy.optimize.fmin, replayed

_NONZDELT, _ZDELT = 0.05, 0.00025  # the initial simplex: each coordinate in turn × 1.05 (0 → 0.00025)
_XATOL = _FATOL = 1e-4


def _sorted(sim, fsim):
    # numpy's argsort of 3 values is an insertion sort here: stable (ties keep their order), NaN last.
    order = jnp.argsort(fsim, stable=True)
    return sim[order], fsim[order]


def nelder_mead(objective, x0: Float[Array, " d"], active: Bool[Array, ""] | bool = True) -> Float[Array, " d"]:
    """``scipy.optimize.fmin(objective, x0)`` with its defaults, step for step, as a ``lax.while_loop``.

    The same initial simplex, reflection/expansion/contraction/shrink tests and tie rules, the same convergence
    test (``xatol = fatol = 1e-4``) and the same budget of ``200·d`` iterations and ``200·d`` objective calls,
    including what happens when the budget runs out in the middle of a step (SciPy abandons the step; in a shrink
    the point being moved has already moved). ``active=False`` returns ``x0`` without iterating (so that padding
    rows of a vmapped call do not keep the loop running).

    Example:
      >>> import jax.numpy as jnp
      >>> x = nelder_mead(lambda p: (p[0] - 1.0) ** 2 + (p[1] + 2.0) ** 2, jnp.array([0.5, 0.5]))
      >>> [round(float(v), 3) for v in x]
      [1.0, -2.0]
    """
    d = x0.shape[0]
    max_calls = max_iterations = 200 * d
    sim = jnp.stack([x0] + [x0.at[k].set(jnp.where(x0[k] != 0, (1 + _NONZDELT) * x0[k], _ZDELT)) for k in range(d)])
    fsim = jax.vmap(objective)(sim)
    sim, fsim = _sorted(sim, fsim)

    def running(state):
        sim, fsim, iterations, calls = state
        converged = (jnp.max(jnp.abs(sim[1:] - sim[0])) <= _XATOL) & (jnp.max(jnp.abs(fsim[0] - fsim[1:])) <= _FATOL)
        return active & (calls < max_calls) & (iterations < max_iterations) & ~converged

    def step(state):
        sim, fsim, iterations, calls = state
        xbar = functools.reduce(jnp.add, [sim[k] for k in range(d)]) / d
        worst = sim[-1]
        xr = 2.0 * xbar - 1.0 * worst  # (1 + ρ)·x̄ − ρ·worst, ρ = 1
        fxr = objective(xr)
        calls = calls + 1
        expand = fxr < fsim[0]
        accept_reflection = ~expand & (fxr < fsim[-2])
        outside = ~expand & ~accept_reflection & (fxr < fsim[-1])
        xe = 3.0 * xbar - 2.0 * worst  # (1 + ρχ)·x̄ − ρχ·worst, χ = 2
        xc = 1.5 * xbar - 0.5 * worst  # (1 + ψρ)·x̄ − ψρ·worst, ψ = 0.5
        xcc = 0.5 * xbar + 0.5 * worst  # (1 − ψ)·x̄ + ψ·worst
        x2 = jnp.where(expand, xe, jnp.where(outside, xc, xcc))
        # shrink towards the best point (σ = 0.5): evaluated together with x2, one batched call instead of three
        shrunk = sim[0] + 0.5 * (sim[1:] - sim[0])
        f_later = jax.vmap(objective)(jnp.concatenate([x2[None], shrunk]))
        f2, fshrunk = f_later[0], f_later[1:]
        second = ~accept_reflection  # a second call is made
        abandoned = second & (calls >= max_calls)
        calls = calls + second
        accepted = jnp.where(
            expand | accept_reflection, True, jnp.where(outside, f2 <= fxr, f2 < fsim[-1])
        )
        take_e = expand & (f2 < fxr)
        new_x = jnp.where(take_e | (~expand & ~accept_reflection), x2, xr)
        new_f = jnp.where(take_e | (~expand & ~accept_reflection), f2, fxr)
        moved = sim.at[-1].set(new_x)
        fmoved = fsim.at[-1].set(new_f)
        # in a shrink, point j is evaluated while calls remain, and the point whose call would exceed the budget
        # has moved without being evaluated (SciPy assigns it before the call raises)
        j = jnp.arange(1, d + 1)
        evaluated = calls + (j - 1) < max_calls
        moved_s = calls + (j - 1) <= max_calls
        shrink_sim = sim.at[1:].set(jnp.where(moved_s[:, None], shrunk, sim[1:]))
        shrink_f = fsim.at[1:].set(jnp.where(evaluated, fshrunk, fsim[1:]))
        shrink = ~abandoned & ~accepted
        sim = jnp.where(abandoned, sim, jnp.where(shrink, shrink_sim, moved))
        fsim = jnp.where(abandoned, fsim, jnp.where(shrink, shrink_f, fmoved))
        calls = calls + jnp.where(shrink, jnp.sum(evaluated), 0)
        iterations = iterations + ~(abandoned | (shrink & ~evaluated[-1]))
        sim, fsim = _sorted(sim, fsim)
        return sim, fsim, iterations, calls

    state = (sim, fsim, jnp.array(1), jnp.array(d + 1))
    sim, *_ = jax.lax.while_loop(running, step, state)
    return sim[0]


# ---------------------------------------------------------------------------------------------------------------
# the fit

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
    end = n - num_clipped
    fitted = (idx < end) & (evals > jnp.maximum(EVALS_THRESH, noise_floor))
    start = end - jnp.sum(fitted)
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
