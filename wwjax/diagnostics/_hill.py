"""The Hill estimator with a fixed xmin rule: the α of TempBalance and AlphaPruning (their ``net_esd_estimator``).

Both methods fit α to each layer's ESD with a lean rule instead of WeightWatcher's full KS scan:

* ``xmin='median'`` (their ``xmin_mid`` / ``pl_fitting='median'``): over the ``N`` kept eigenvalues
  ``λ_0 <= … <= λ_{N-1}``, ``i = int(N / xmin_pos)`` (``xmin_pos=2``: the median), ``n = N - i`` and
  ``α = 1 + n / (Σ_{j>=i} ln λ_j − n ln λ_i)``; ``D = max_k |1 − (λ_{i+k}/λ_i)^{1-α} − k/n|`` (the KS distance);
* ``xmin='peak'`` (their ``xmin_peak`` / ``fix-finger``): the KS scan (least ``D`` over xmin candidates), restricted
  to a window around the peak of the histogram of ``log10 λ`` (``bins`` bins). With ``p = 10**`` the left edge of
  the fullest bin, the published code keeps candidates ``λ_i`` with ``log10(0.95 p) <= λ_i <= 1.5 p``: the lower
  bound is a log10 compared with a linear eigenvalue. We reproduce that rule as published (``peak_lower='published'``,
  the default, so that α matches theirs) and offer ``peak_lower='linear'`` (``0.95 p <= λ_i``), what the rule
  evidently meant. Where the window holds no candidate with ``D < 1`` the published code returns its placeholder
  ``α = 0`` (the first index of all-ones ``D``); so do we, with ``ok=False``.
* ``xmin='scan'``: the unrestricted KS scan (their ``fix_fingers=None``); the same α as WeightWatcher's fit for
  ``N >= 20`` (WeightWatcher's small-sample path is not part of theirs).

Kept eigenvalues are those above ``max(1e-5, noise_floor)`` (their ``filter_zeros=True``); if none is, all are kept,
as theirs does. Their default ``filter_zeros=False`` keeps zeros too, which only differs for rank-deficient
matrices, where ``ln 0`` makes their α meaningless; ``filter_zeros=False`` here reproduces it for full-rank ESDs.

Rows follow the engine's convention: ascending, zero-padded in front, ``num_valid`` real eigenvalues at the end.
Everything is masked arithmetic on the fixed row length: :func:`hill_fit` is vmappable and jittable.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from wwjax.core._powerlaw import EVALS_THRESH, PowerLawFit, _ks_distances

XminRule = Literal["median", "peak", "scan"]
XMIN_RULES = ("median", "peak", "scan")


class HillFit(NamedTuple):
    """One Hill fit (scalars per row), with the columns ``net_esd_estimator`` reports.

    ``alpha_hat`` is their ``alphahat = α · log10 λmax``; ``num_tail`` the eigenvalues at or above ``xmin``.
    """

    alpha: Float[Array, ""]
    D: Float[Array, ""]
    xmin: Float[Array, ""]
    num_tail: Int[Array, ""]
    lambda_max: Float[Array, ""]
    alpha_hat: Float[Array, ""]
    ok: Bool[Array, ""]


def check_hill_options(xmin: str, xmin_pos: float = 2.0, bins: int = 100, peak_lower: str = "published") -> None:
    """Raises ValueError naming the option to change (the options stage of a registry contribution)."""
    if xmin not in XMIN_RULES:
        raise ValueError(f"xmin must be one of {XMIN_RULES}, got {xmin!r}")
    if not xmin_pos >= 1:
        raise ValueError(f"xmin_pos must be >= 1 (2: xmin at the median), got {xmin_pos!r}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    if peak_lower not in ("published", "linear"):
        raise ValueError(f"peak_lower must be 'published' or 'linear', got {peak_lower!r}")


def _peak_window(evals, kept, bins: int, peak_lower: str):
    """``(low, high)``: the xmin window around the peak of the log10-ESD histogram (``np.histogram``'s binning)."""
    log10 = jnp.log10(jnp.where(kept, evals, 1.0))
    lo = jnp.min(jnp.where(kept, log10, jnp.inf))
    hi = jnp.max(jnp.where(kept, log10, -jnp.inf))
    edges = jnp.linspace(lo, hi, bins + 1)
    # Bin i holds edges[i] <= x < edges[i+1]; the last bin is closed, as in np.histogram and torch.histc.
    which = jnp.clip(jnp.searchsorted(edges, log10, side="right") - 1, 0, bins - 1)
    counts = jnp.zeros(bins, jnp.int32).at[which].add(kept.astype(jnp.int32))
    peak = 10.0 ** edges[jnp.argmax(counts)]
    # The published lower bound is log10(0.95 p), compared with linear eigenvalues (see the module docstring).
    low = jnp.log10(0.95 * peak) if peak_lower == "published" else 0.95 * peak
    return low, 1.5 * peak


def hill_fit(
    evals: Float[Array, " n"],
    num_valid: int | Int[Array, ""] | None = None,
    noise_floor: float | Float[Array, ""] = 0.0,
    *,
    xmin: XminRule = "median",
    xmin_pos: float = 2.0,
    bins: int = 100,
    peak_lower: Literal["published", "linear"] = "published",
    filter_zeros: bool = True,
    block: int = 256,
) -> HillFit:
    """Fits α to one ascending ESD row with TempBalance's / AlphaPruning's fixed xmin rules.

    Args:
      evals: ``(n,)`` eigenvalues, ascending; padding zeros in front.
      num_valid: how many of the last entries are real eigenvalues (None: all ``n``).
      noise_floor: eigenvalues at or below ``max(1e-5, noise_floor)`` are not kept.
      xmin: ``'median'`` (Hill at the ``1/xmin_pos`` quantile), ``'peak'`` (KS scan in the histogram-peak
        window) or ``'scan'`` (KS scan over every candidate).
      xmin_pos: ``'median'``'s position: xmin is the kept eigenvalue of index ``int(N / xmin_pos)``.
      bins: ``'peak'``'s histogram bins.
      peak_lower: ``'published'`` (``log10(0.95 p)``, as their code) or ``'linear'`` (``0.95 p``).
      filter_zeros: drop eigenvalues at or below the threshold first (their ``filter_zeros``).
      block: candidates per block of the KS reduction (memory ``~ block * n``).

    Returns:
      A :class:`HillFit`; ``ok`` is False when fewer than two eigenvalues are kept or α is not a finite value > 1.

    Example:
      >>> import jax.numpy as jnp
      >>> x = (1.0 - jnp.linspace(0.0, 0.999, 500)) ** (-1 / 1.5)  # a Pareto sample with α = 2.5
      >>> fit = hill_fit(jnp.sort(x))
      >>> bool(fit.ok), round(float(fit.alpha), 1), int(fit.num_tail)
      (True, 2.5, 250)
    """
    check_hill_options(xmin, xmin_pos, bins, peak_lower)
    n = evals.shape[0]
    idx = jnp.arange(n)
    valid = idx >= n - (n if num_valid is None else num_valid)
    above = valid & (evals > jnp.maximum(EVALS_THRESH, noise_floor))
    kept = jnp.where(jnp.any(above), above, valid) if filter_zeros else valid
    num_kept = jnp.sum(kept)
    start = n - num_kept  # the kept eigenvalues are the contiguous block [start, n)
    log_x = jnp.log(jnp.where(kept, evals, 1.0))
    # Centre the logs on λmax: suffix sums of short tails then stay small and exact.
    log_x = jnp.where(kept, log_x - log_x[-1], 0.0)
    tail = (n - idx).astype(evals.dtype)
    log_sum = jnp.cumsum(log_x[::-1])[::-1] - tail * log_x  # Σ_{j>=i} ln(λ_j / λ_i)
    alphas = 1.0 + tail / log_sum

    if xmin == "median":
        best = start + (num_kept / xmin_pos).astype(jnp.int32)
        best = jnp.minimum(best, n - 1)
        alpha = alphas[best]
        theoretical = 1.0 - jnp.exp(jnp.where(idx == best, 0.0, (1.0 - alpha) * (log_x - log_x[best])))
        empirical = (idx - best) / tail[best]
        D = jnp.max(jnp.where(idx >= best, jnp.abs(theoretical - empirical), 0.0))
    else:
        scanned = kept & (idx <= n - 2)  # their arrays: one slot per kept eigenvalue but the largest
        candidate = scanned
        if xmin == "peak":
            low, high = _peak_window(evals, kept, bins, peak_lower)
            candidate &= (evals >= low) & (evals <= high)
        has_d = candidate & (alphas > 1.0)
        ks = _ks_distances(log_x, jnp.where(has_d, alphas, 2.0), n, block)
        # Their arrays start at the first kept eigenvalue with α = 0, D = 1; argmin takes the first least D.
        Ds = jnp.where(has_d, ks, jnp.where(scanned, 1.0, jnp.inf))
        best = jnp.argmin(Ds)
        alpha = jnp.where(candidate[best], alphas[best], 0.0)
        D = Ds[best]
    lambda_max = evals[-1]
    ok = (num_kept >= 2) & jnp.isfinite(alpha) & (alpha > 1.0)
    return HillFit(
        alpha=alpha,
        D=D,
        xmin=evals[best],
        num_tail=(n - best).astype(jnp.int32),
        lambda_max=lambda_max,
        alpha_hat=alpha * jnp.log10(lambda_max),
        ok=ok,
    )


def hill_fit_rows(
    esd: Float[Array, "rows n"], num_valid: Int[Array, " rows"] | None = None, **options
) -> HillFit:
    """:func:`hill_fit` of every row of ``esd`` (vmapped, compiled once per shape and options).

    Args:
      esd: ``(rows, n)`` ascending rows, zero-padded in front.
      num_valid: ``(rows,)`` real eigenvalues per row (None: whole rows).
      **options: :func:`hill_fit`'s keyword options.

    Example:
      >>> import numpy as np
      >>> esd = np.sort(np.random.default_rng(0).pareto(2.0, (3, 64)) + 1.0, axis=1)
      >>> hill_fit_rows(esd, xmin="peak").alpha.shape
      (3,)
    """
    esd = jnp.asarray(esd)
    if num_valid is None:
        num_valid = jnp.full(esd.shape[:1], esd.shape[1], jnp.int32)
    return _hill_fit_rows(esd, jnp.asarray(num_valid), tuple(sorted(options.items())))


@dataclasses.dataclass(frozen=True)
class HillRowFit:
    """``analyze(xmin=rule)``'s row fit: :func:`hill_fit` in place of WeightWatcher's KS power law, a static,
    hashable strategy of the core's row program (:class:`wwjax.core.RowFit`).

    The core columns then come from the Hill fit: ``alpha``, ``D`` (the KS distance at the chosen xmin), ``xmin``,
    ``xmax`` (λmax: nothing is clipped), ``num_pl_spikes`` (the eigenvalues at or above xmin, xmin included) and
    ``sigma = (α − 1)/√num_pl_spikes``, the asymptotic standard error of Hill's estimator (WeightWatcher's σ, at this
    xmin). A failed fit (``HillFit.ok`` False, the peak rule's placeholder α = 0 included) is a failed row.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.sort((1.0 - jnp.linspace(0.0, 0.999, 500)) ** (-1 / 1.5))  # Pareto, α = 2.5
      >>> fit, extra = HillRowFit("median")(x, 500, 0, 0.0, block=64)
      >>> round(float(fit.alpha), 1), int(fit.num_pl_spikes), extra
      (2.5, 250, {})
    """

    rule: XminRule = "median"
    xmin_pos: float = 2.0
    bins: int = 100
    peak_lower: str = "published"

    def __call__(self, evals: Float[Array, " n"], num_valid: Int[Array, ""], num_clipped: int,
                 noise_floor: Float[Array, ""], *, block: int) -> tuple[PowerLawFit, dict]:
        del num_clipped  # refused with a rule (check_xmin_options): the rules fit every kept eigenvalue
        fit = hill_fit(evals, num_valid, noise_floor, xmin=self.rule, xmin_pos=self.xmin_pos, bins=self.bins,
                       peak_lower=self.peak_lower, block=block)
        n = evals.shape[0]
        kept = (jnp.arange(n) >= n - num_valid) & (evals > jnp.maximum(EVALS_THRESH, noise_floor))
        tail = fit.num_tail.astype(evals.dtype)
        return PowerLawFit(alpha=fit.alpha, D=fit.D, sigma=(fit.alpha - 1.0) / jnp.sqrt(tail), xmin=fit.xmin,
                           xmax=fit.lambda_max, num_pl_spikes=fit.num_tail, num_fit=jnp.sum(kept), ok=fit.ok), {}


# analyze()'s options of the Hill rules (names beside WeightWatcher's xmin_max and fix_fingers='xmin_peak').
XMIN_OPTIONS = dict(xmin=None, xmin_pos=2.0, xmin_bins=100, xmin_peak_lower="published")


def hill_row_fit(opts) -> HillRowFit | None:
    """The row fit ``analyze(xmin=...)`` asks for, or None (``xmin=None``: WeightWatcher's KS scan)."""
    if opts.xmin is None:
        return None
    return HillRowFit(opts.xmin, float(opts.xmin_pos), int(opts.xmin_bins), opts.xmin_peak_lower)


def check_xmin_options(opts) -> None:
    """Raises ValueError, saying what to change, for bad ``xmin=`` options or a combination the rules cannot honour."""
    if opts.xmin is None:
        return
    if opts.xmin not in XMIN_RULES:
        raise ValueError(f"xmin must be None (WeightWatcher's KS scan) or one of {XMIN_RULES}, got {opts.xmin!r}")
    try:
        check_hill_options(opts.xmin, opts.xmin_pos, opts.xmin_bins, opts.xmin_peak_lower)
    except ValueError as err:  # name analyze()'s options, not hill_fit's arguments
        message = str(err).replace("bins must", "xmin_bins must").replace("peak_lower must", "xmin_peak_lower must")
        raise ValueError(message) from None
    other = [f"fix_fingers={opts.fix_fingers!r}"] if opts.fix_fingers else []
    other += [f"fit={opts.fit!r}"] if opts.fit not in ("PL", "power_law") else []
    if other:
        raise ValueError(f"xmin={opts.xmin!r} fits Hill's power law at a fixed xmin rule; it cannot be combined with "
                         f"{' and '.join(other)}, which choose their own fit (drop one of them)")
    if opts.xmax is not None:
        raise ValueError(f"xmin={opts.xmin!r} fits every kept eigenvalue, as TempBalance/AlphaPruning do; it cannot be "
                         f"combined with xmax={opts.xmax!r} (drop xmax)")


@functools.partial(jax.jit, static_argnums=2)
def _hill_fit_rows(esd, num_valid, options: tuple) -> HillFit:
    return jax.vmap(lambda e, v: hill_fit(e, v, **dict(options)))(esd, num_valid)
