"""Power-law fits that resist "fingers": a few outlying eigenvalues at the top of the ESD that inflate α.

Two remedies, both on top of the vectorised WWFit of :mod:`wwjax.core._powerlaw`:

* ``clip_xmax``: fit with the ``f`` largest eigenvalues left out, for every ``f = 0 … max_fingers`` at once (one
  vmapped fit per ``f``); the first ``f`` whose α drops by more than ``finger_thresh`` below the unclipped α wins,
  unless an earlier ``f`` already brought α to 2 or below (then the unclipped fit stands).
* ``xmin_peak``: the xmin search is restricted to ``[0.95·peak, xmin_max]``, where ``peak`` is the left edge of the
  most populated of 100 equal bins of ``log10 λ`` (the ESD's mode on a log scale) and ``xmin_max`` defaults to
  ``1.5·peak``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from wwjax.core._powerlaw import EVALS_THRESH, PowerLawFit, candidate_fits, fit_power_law

MIN_ALPHA = 2.0  # clip_xmax stops clipping once α falls to this (WeightWatcher's min_alpha)
PEAK_BINS = 100  # bins of the log10 histogram whose mode locates the ESD peak


class ClippedFit(NamedTuple):
    """A ``clip_xmax`` fit: the chosen fit, how many eigenvalues it left out, and the unclipped α."""

    fit: PowerLawFit
    num_fingers: Int[Array, ""]
    raw_alpha: Float[Array, ""]


def fit_clipped_power_law(
    evals: Float[Array, " n"],
    noise_floor: float | Float[Array, ""] = 0.0,
    *,
    max_fingers: int = 10,
    finger_thresh: float = 1.0,
    block: int = 256,
) -> ClippedFit:
    """WeightWatcher's ``fix_fingers='clip_xmax'``, done as its docs describe (it never tries one finger).

    Every clipped fit (``f = 0 … max_fingers`` largest eigenvalues left out, never half the fitted data or more)
    is computed at once; the first ``f >= 1`` with ``α_f + finger_thresh < α_0`` is chosen and
    ``num_fingers = f``. Scanning stops without a choice at the first ``f`` with ``α_f <= 2``.

    Args:
      evals: the ESD, ascending (zero padding in front is ignored).
      noise_floor: eigenvalues at or below this are not fitted (see :func:`wwjax.fit_power_law`).
      max_fingers: the most eigenvalues that may be left out.
      finger_thresh: how far α must drop for the clipped fit to be taken.
      block: candidates per block of the KS reduction.

    Returns:
      A :class:`ClippedFit`. Its ``fit.num_pl_spikes`` counts every eigenvalue ≥ xmin, the fingers included.

    Example:
      A heavy-tailed random matrix whose single largest eigenvalue inflates α from 4.5 to 6.3:

      >>> import numpy as np, jax.numpy as jnp
      >>> w = np.random.default_rng(2).standard_t(4, size=(200, 100))
      >>> out = fit_clipped_power_law(jnp.asarray(np.sort(np.linalg.svd(w, compute_uv=False) ** 2)))
      >>> int(out.num_fingers), round(float(out.raw_alpha), 1), round(float(out.fit.alpha), 1)
      (1, 6.3, 4.5)
    """
    fingers = jnp.arange(max_fingers + 1)
    fits = jax.vmap(lambda f: fit_power_law(evals, f, noise_floor, block=block))(fingers)
    raw = jax.tree.map(lambda v: v[0], fits)
    allowed = (fingers >= 1) & (2 * fingers < raw.num_fit) & fits.ok
    better = allowed & (fits.alpha + finger_thresh < raw.alpha)
    stop = allowed & (fits.alpha <= MIN_ALPHA)
    decided = better | stop
    first = jnp.argmax(decided)
    chosen = jnp.where(decided[first] & better[first], first, 0)
    fit = jax.tree.map(lambda v: v[chosen], fits)
    valid = evals > jnp.maximum(EVALS_THRESH, noise_floor)
    fit = fit._replace(num_pl_spikes=jnp.sum(valid & (evals >= fit.xmin)).astype(fit.num_pl_spikes.dtype))
    return ClippedFit(fit=fit, num_fingers=chosen, raw_alpha=raw.alpha)


def esd_peak(evals: Float[Array, " n"], fitted: jax.Array) -> Float[Array, ""]:
    """The left edge of the most populated of 100 equal bins of ``log10 λ`` over the ``fitted`` eigenvalues.

    Bins follow ``numpy.histogram`` (the last bin is closed; the first of equal counts wins).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([1.0, 10.0, 10.0, 10.5, 100.0])
      >>> round(float(esd_peak(x, x > 0)), 3)
      10.0
    """
    log_x = jnp.log10(jnp.where(fitted, evals, 1.0))
    lo = jnp.min(jnp.where(fitted, log_x, jnp.inf))
    hi = jnp.max(jnp.where(fitted, log_x, -jnp.inf))
    # numpy widens an empty range to ±0.5
    lo, hi = jnp.where(hi > lo, lo, lo - 0.5), jnp.where(hi > lo, hi, hi + 0.5)
    edges = jnp.linspace(lo, hi, PEAK_BINS + 1)
    index = jnp.clip(((log_x - lo) * (PEAK_BINS / (hi - lo))).astype(jnp.int32), 0, PEAK_BINS - 1)
    # numpy's corrections for values that rounding puts in the neighbouring bin
    index = jnp.where(log_x < edges[index], index - 1, index)
    index = jnp.where((log_x >= edges[index + 1]) & (index != PEAK_BINS - 1), index + 1, index)
    counts = jnp.zeros(PEAK_BINS, jnp.int32).at[index].add(fitted.astype(jnp.int32))
    return 10.0 ** edges[jnp.argmax(counts)]


def peak_range(
    evals: Float[Array, " n"], fitted: jax.Array, xmin_max: float | None = None
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """``xmin_peak``'s xmin range ``[0.95·peak, xmin_max]`` (``xmin_max`` defaults to ``1.5·peak``), shared by the
    power-law and the truncated-power-law fits (``fit='E_TPL'``).

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([1.0, 10.0, 10.0, 10.5, 100.0])
      >>> [round(float(v), 3) for v in peak_range(x, x > 0)]
      [9.5, 15.0]
    """
    peak = esd_peak(evals, fitted)
    return 0.95 * peak, 1.5 * peak if xmin_max is None else jnp.asarray(xmin_max, evals.dtype)


def fit_peak_power_law(
    evals: Float[Array, " n"],
    noise_floor: float | Float[Array, ""] = 0.0,
    *,
    xmin_max: float | None = None,
    block: int = 256,
) -> PowerLawFit:
    """WeightWatcher's ``fix_fingers='xmin_peak'`` with the default fitter: xmin searched in ``[0.95·peak, xmin_max]``.

    ``peak`` is :func:`esd_peak`; ``xmin_max`` defaults to ``1.5·peak``. When no eigenvalue lies in the range the
    fit is not ``ok``.

    Example:
      >>> import jax.numpy as jnp
      >>> x = (1.0 - jnp.linspace(0.0, 0.99, 400)) ** (-1 / 1.5)
      >>> fit = fit_peak_power_law(jnp.sort(x))
      >>> bool(fit.ok), bool(fit.xmin <= 1.5 * x.min())
      (True, True)
    """
    fits, start, end = candidate_fits(evals, 0, noise_floor, block=block)
    idx = jnp.arange(evals.shape[0])
    fitted = (idx >= start) & (idx < end)
    lower, upper = peak_range(evals, fitted, xmin_max)
    in_range = (evals >= lower) & (evals <= upper)
    # powerlaw (which WeightWatcher runs for xmin_peak) never tries the largest value of the range as xmin
    in_range = in_range & (evals < jnp.max(jnp.where(in_range, evals, -jnp.inf)))
    Ds = jnp.where(in_range, fits.Ds, jnp.inf)
    best = jnp.argmin(Ds)
    xmin = evals[best]
    alpha = fits.alphas[best]
    return PowerLawFit(
        alpha=alpha,
        D=Ds[best],
        sigma=fits.sigmas[best],
        xmin=xmin,
        xmax=evals[jnp.maximum(end - 1, 0)],
        num_pl_spikes=jnp.sum(fitted & (evals >= xmin)),
        num_fit=end - start,
        ok=(end - start >= 2) & jnp.isfinite(alpha) & jnp.isfinite(Ds[best]),
    )
