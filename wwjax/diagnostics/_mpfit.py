"""The Marchenko–Pastur fit of an ESD (WeightWatcher's ``mp_fit``), every row at once.

For one ESD λ of an ``N × M`` matrix (``Q = N/M``):

1. rescale to mean 1: ``W_scale = √n / √Σλ``, ``x = W_scale²·λ``;
2. estimate the density of ``x`` (of ``√x`` when ``Q = 1``: the quarter-circle law of the singular values) with a
   triangular kernel of bandwidth 0.1 on 1000 points of ``[0, max + 0.5]``, keeping the points where it exceeds
   0.01. The density does not depend on σ, so it is computed once per row, not once per objective call;
3. the objective of σ is ``Σ (ρ_σ(g) − f(g))²`` over the kept points, with ρ_σ the Marchenko–Pastur density of
   bulk ``[σ²(1 − 1/√Q)², σ²(1 + 1/√Q)²]``, and a flat penalty of 1000 per point when that bulk misses the
   density's peak or reaches past its support;
4. σ is searched on WeightWatcher's grid ``arange(0.05·s0, 2·s0, 0.01·s0)`` (``s0`` puts the bulk edge at the
   largest eigenvalue), then polished from the best grid point by the 1-D Nelder–Mead steps of ``scipy.optimize.fmin``
   (what ``scipy.optimize.brute`` finishes with), written as a ``lax.while_loop``;
5. ``bulk_max``/``bulk_min`` follow from σ; ``num_spikes`` counts eigenvalues above ``bulk_max + √TW`` (a
   Tracy–Widom margin) and ``mp_softrank = bulk_max / max x``.

``sigma_mp`` is in the rescaled units (as WeightWatcher reports it); ``bulk_max`` and ``bulk_min`` are in the ESD's
own units.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

BANDWIDTH = 0.1  # the triangular kernel's half-width (WeightWatcher's bw)
DENSITY_POINTS = 1000  # points of the density grid
DENSITY_FLOOR = 0.01  # density grid points at or below this are ignored
PENALTY = 1000.0  # residual per kept point when the MP bulk is implausible
SIGMA_POINTS = 196  # arange(0.05, 2.0, 0.01) has 195 points; one spare for rounding of the scaled grid
_MAX_CALLS = 200  # scipy's fmin defaults for one parameter: 200 iterations and 200 calls
_XTOL = _FTOL = 1e-4


class MarchenkoPasturFit(NamedTuple):
    """The MP fit of one ESD (WeightWatcher's column names). ``ok`` is False for an all-zero ESD."""

    num_spikes: Int[Array, ""]
    sigma_mp: Float[Array, ""]
    mp_softrank: Float[Array, ""]
    W_scale: Float[Array, ""]  # noqa: N815 (WeightWatcher's name)
    bulk_max: Float[Array, ""]
    bulk_min: Float[Array, ""]
    ok: Bool[Array, ""]


def triangular_density(
    y: Float[Array, " n"], num_valid: Int[Array, ""], grid: Float[Array, " g"], bandwidth: float = BANDWIDTH
) -> Float[Array, " g"]:
    """Kernel density of the last ``num_valid`` values of ascending ``y`` on ``grid``, triangular kernel.

    ``f(g) = Σ_i max(0, 1 − |g − y_i|/h) / (n·h)``, summed exactly with prefix sums over the sorted values
    (``O((n + g) log n)``, no ``n × g`` array).

    Example:
      >>> import jax.numpy as jnp
      >>> f = triangular_density(jnp.array([0.0, 1.0, 1.0]), 2, jnp.array([0.95, 1.0, 2.0]))
      >>> [round(float(v), 3) for v in f]
      [5.0, 10.0, 0.0]
    """
    n = y.shape[0]
    first = n - num_valid  # padding sits in front
    prefix = jnp.concatenate([jnp.zeros(1, y.dtype), jnp.cumsum(y)])
    h = jnp.asarray(bandwidth, y.dtype)

    def position(value, side):
        return jnp.maximum(jnp.searchsorted(y, value, side=side), first)

    lo, mid, hi = position(grid - h, "right"), position(grid, "right"), position(grid + h, "left")
    count_left, count_right = (mid - lo).astype(y.dtype), (hi - mid).astype(y.dtype)
    sum_left, sum_right = prefix[mid] - prefix[lo], prefix[hi] - prefix[mid]
    # y in (g − h, g]: 1 − (g − y)/h;  y in (g, g + h): 1 − (y − g)/h.
    total = count_left * (h - grid) + sum_left + count_right * (h + grid) - sum_right
    return jnp.maximum(total, 0.0) / (h * h * num_valid)


def _linspace(stop, num: int, dtype):
    """``np.linspace(0, stop, num)`` to the last bit: ``i·step`` with the end point set exactly."""
    grid = jnp.arange(num, dtype=dtype) * (stop / (num - 1))
    return grid.at[-1].set(stop)


def _mp_density(g, sigma, Q):
    """The MP density of WᵀW/N-style eigenvalues with element variance σ² and aspect ratio Q (0 off the bulk)."""
    a = (sigma * (1.0 - 1.0 / jnp.sqrt(Q))) ** 2
    b = (sigma * (1.0 + 1.0 / jnp.sqrt(Q))) ** 2
    inside = ((b - g) * (g - a) > 0) & (g > 0)
    root = jnp.sqrt(jnp.where(inside, (b - g) * (g - a), 1.0))
    safe_g = jnp.where(inside, g, 1.0)
    return jnp.where(inside, root / (2.0 * jnp.pi * sigma * sigma * safe_g * (1.0 / Q)), 0.0), a, b


def _quarter_circle_density(g, sigma):
    inside = g * g < 4.0
    return jnp.where(inside, jnp.sqrt(jnp.where(inside, 4.0 - g * g, 0.0)) / (jnp.pi * sigma * sigma), 0.0)


def _objective(sigma, grid, density, kept, peak, top, Q, square):
    """WeightWatcher's ``resid_mp`` summed: Σ residual² over the kept density points."""
    mp, a, b = _mp_density(grid, sigma, Q)
    implausible = (b < peak) | (b > top) | (a > peak)
    residual = jnp.where(implausible & ~square, PENALTY, jnp.where(square, _quarter_circle_density(grid, sigma), mp) - density)
    return jnp.sum(jnp.where(kept, residual * residual, 0.0))


def _nelder_mead(objective, x0):
    """``scipy.optimize.fmin(objective, x0)`` for one parameter: the same simplex steps, tests and tie-breaks."""
    x1 = jnp.where(x0 != 0, 1.05 * x0, 0.00025)
    f0, f1 = objective(x0), objective(x1)

    def ordered(x0, x1, f0, f1):
        swap = f1 < f0  # numpy's argsort keeps the order of ties
        return jnp.where(swap, x1, x0), jnp.where(swap, x0, x1), jnp.where(swap, f1, f0), jnp.where(swap, f0, f1)

    def running(state):
        x0, x1, f0, f1, iterations, calls = state
        converged = (jnp.abs(x1 - x0) <= _XTOL) & (jnp.abs(f0 - f1) <= _FTOL)
        return ~converged & (iterations < _MAX_CALLS) & (calls < _MAX_CALLS)

    def step(state):
        x0, x1, f0, f1, iterations, calls = state
        xr = 2.0 * x0 - 1.0 * x1  # reflection
        fr = objective(xr)
        expand = fr < f0
        outside = ~expand & (fr < f1)
        xe, xc, xcc = 3.0 * x0 - 2.0 * x1, 1.5 * x0 - 0.5 * x1, 0.5 * x0 + 0.5 * x1
        x2 = jnp.where(expand, xe, jnp.where(outside, xc, xcc))
        f2 = objective(x2)
        accept = jnp.where(expand, True, jnp.where(outside, f2 <= fr, f2 < f1))
        shrink = ~accept
        xs = x0 + 0.5 * (x1 - x0)
        fs = objective(xs)
        new_x1 = jnp.where(expand, jnp.where(f2 < fr, xe, xr), jnp.where(shrink, xs, x2))
        new_f1 = jnp.where(expand, jnp.where(f2 < fr, f2, fr), jnp.where(shrink, fs, f2))
        return (*ordered(x0, new_x1, f0, new_f1), iterations + 1, calls + 2 + shrink)

    state = (*ordered(x0, x1, f0, f1), jnp.array(1), jnp.array(2))
    x0, *_ = jax.lax.while_loop(running, step, state)
    return x0


def fit_marchenko_pastur(
    evals: Float[Array, " n"],
    Q: float | Float[Array, ""],
    M: int | Int[Array, ""],
    num_valid: int | Int[Array, ""] | None = None,
) -> MarchenkoPasturFit:
    """Fits the Marchenko–Pastur law to one ascending ESD, as WeightWatcher's ``mp_fit`` does.

    Args:
      evals: the ESD, ascending (zeros included).
      Q: the aspect ratio ``N/M`` of the matrix (≥ 1).
      M: its short side (sets the Tracy–Widom margin of the spike count).
      num_valid: how many of the largest entries are eigenvalues; the rest in front are padding.

    Returns:
      A :class:`MarchenkoPasturFit`.

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> w = np.random.default_rng(0).normal(size=(400, 100))
      >>> fit = fit_marchenko_pastur(jnp.asarray(np.linalg.svd(w, compute_uv=False)[::-1] ** 2), 4.0, 100)
      >>> int(fit.num_spikes), round(float(fit.sigma_mp), 1)
      (0, 1.0)
    """
    evals = jnp.asarray(evals)
    dtype = evals.dtype
    n = evals.shape[0]
    num_valid = jnp.asarray(n if num_valid is None else num_valid)
    Q = jnp.asarray(Q, dtype)
    total = jnp.sum(evals)
    ok = total > 0
    W_scale = jnp.sqrt(num_valid.astype(dtype)) / jnp.sqrt(jnp.where(ok, total, 1.0))
    x = (W_scale * W_scale) * evals
    lambda_max = x[-1]
    square = Q == 1.0
    y = jnp.where(square, jnp.sqrt(x), x)

    grid = _linspace(y[-1] + 0.5, DENSITY_POINTS, dtype)
    density = triangular_density(y, num_valid, grid)
    kept = density > DENSITY_FLOOR
    peak = grid[jnp.argmax(jnp.where(kept, density, -jnp.inf))]
    top = jnp.max(jnp.where(kept, grid, -jnp.inf))
    objective = functools.partial(_objective, grid=grid, density=density, kept=kept, peak=peak, top=top, Q=Q,
                                  square=square)

    # scipy.optimize.brute's grid: np.arange(0.05·s0, 2·s0, 0.01·s0), computed as numpy does.
    s0 = jnp.sqrt(lambda_max / jnp.square(1.0 + 1.0 / jnp.sqrt(Q)))
    lo, hi, step = 0.05 * s0, 2.0 * s0, 0.01 * s0
    count = jnp.ceil((hi - lo) / step)
    sigmas = lo + jnp.arange(SIGMA_POINTS, dtype=dtype) * ((lo + step) - lo)
    values = jnp.where(jnp.arange(SIGMA_POINTS) < count, jax.vmap(objective)(sigmas), jnp.inf)
    sigma = _nelder_mead(objective, sigmas[jnp.argmin(values)])

    bulk_max = (sigma * (1.0 + 1.0 / jnp.sqrt(Q))) ** 2
    bulk_min = (sigma * (1.0 - 1.0 / jnp.sqrt(Q))) ** 2
    tracy_widom = 1.0 / jnp.sqrt(Q) * jnp.power(bulk_max, 2.0 / 3.0) * jnp.power(jnp.asarray(M, dtype), -2.0 / 3.0)
    num_spikes = jnp.sum(x > bulk_max + jnp.sqrt(tracy_widom))
    ok = ok & jnp.isfinite(sigma)
    nan = jnp.array(jnp.nan, dtype)
    return MarchenkoPasturFit(
        num_spikes=jnp.where(ok, num_spikes, -1),
        sigma_mp=jnp.where(ok, sigma, nan),
        mp_softrank=jnp.where(ok, bulk_max / lambda_max, nan),
        W_scale=jnp.where(ok, W_scale, nan),
        bulk_max=jnp.where(ok, bulk_max / (W_scale * W_scale), nan),
        bulk_min=jnp.where(ok, bulk_min / (W_scale * W_scale), nan),
        ok=ok,
    )


@jax.jit
def fit_marchenko_pastur_rows(
    evals: Float[Array, "rows n"], Q: Float[Array, " rows"], M: Int[Array, " rows"], num_valid: Int[Array, " rows"]
) -> MarchenkoPasturFit:
    """:func:`fit_marchenko_pastur` of every row of ``evals`` (zero-padded in front), in one vmapped call."""
    return jax.vmap(fit_marchenko_pastur)(evals, Q, M, num_valid)
