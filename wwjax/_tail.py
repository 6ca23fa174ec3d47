"""The optional per-row columns of an analysis: which tail fit (plain, ``clip_xmax``, ``xmin_peak``, TPL) and ``detX``.

:func:`row_tail_fit` is what the vmapped row fit of :func:`wwjax.analyze` calls in place of the plain power-law
fit; it returns the fit and the extra columns (``LayerMetrics.extra``) the options ask for.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from wwjax._detx import detx
from wwjax._fingers import fit_clipped_power_law, fit_peak_power_law, peak_range
from wwjax._powerlaw import EVALS_THRESH, PowerLawFit, fit_power_law
from wwjax._tpl import fit_truncated_power_law

FIX_FINGERS = ("clip_xmax", "xmin_peak")
FITS = ("PL", "power_law", "TPL", "truncated_power_law", "E_TPL")
TPL_FITS = ("TPL", "truncated_power_law", "E_TPL")


@dataclasses.dataclass(frozen=True)
class TailOptions:
    """The static options of the row fit (hashable: part of the jit cache key)."""

    fix_fingers: str | None = None
    max_fingers: int = 10
    finger_thresh: float = 1.0
    xmin_max: float | None = None
    detX: bool = False  # noqa: N815 (WeightWatcher's name)
    truncated: bool = False  # fit the truncated power law (fit='TPL'/'E_TPL') instead of the power law

    @classmethod
    def from_options(cls, opts) -> "TailOptions":
        fix = "xmin_peak" if opts.fit == "E_TPL" else opts.fix_fingers
        return cls(fix or None, opts.max_fingers, float(opts.finger_thresh),
                   None if opts.xmin_max is None else float(opts.xmin_max), opts.detX, opts.fit in TPL_FITS)


def check_advanced_options(opts) -> None:
    """Raises TypeError/ValueError, saying what to change, for a bad combination of the advanced options."""
    if opts.fix_fingers not in (None, False) + FIX_FINGERS:
        raise ValueError(f"fix_fingers must be one of {FIX_FINGERS} (or None), got {opts.fix_fingers!r}")
    if opts.fix_fingers and opts.xmax is not None:
        raise ValueError("fix_fingers cannot be combined with an int xmax: both decide which top eigenvalues to fit")
    if isinstance(opts.max_fingers, bool) or not isinstance(opts.max_fingers, int) or opts.max_fingers < 1:
        raise ValueError(f"max_fingers must be an int >= 1, got {opts.max_fingers!r}")
    if not isinstance(opts.finger_thresh, (int, float)) or opts.finger_thresh < 0:
        raise ValueError(f"finger_thresh must be a number >= 0, got {opts.finger_thresh!r}")
    if opts.xmin_max is not None and (not isinstance(opts.xmin_max, (int, float)) or opts.xmin_max <= 0):
        raise ValueError(f"xmin_max must be None or a positive number, got {opts.xmin_max!r}")
    if opts.fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {opts.fit!r}")
    if opts.fit == "E_TPL" and opts.fix_fingers == "clip_xmax":
        raise ValueError("fit='E_TPL' already sets fix_fingers='xmin_peak'; it cannot be combined with "
                         "fix_fingers='clip_xmax' (use fit='TPL' alone, or fix_fingers='clip_xmax' with fit='PL')")
    if opts.fit in TPL_FITS and opts.fix_fingers == "clip_xmax":
        raise ValueError(f"fit={opts.fit!r} cannot be combined with fix_fingers='clip_xmax' (WeightWatcher would choose "
                         "the fingers with power-law fits and then fit a TPL at their xmin); use fit='TPL' alone, "
                         "fit='E_TPL' (xmin at the ESD peak), or fix_fingers='clip_xmax' with fit='PL'")
    for flag in ("detX", "vectors", "inverse", "conv2d_fft"):
        if not isinstance(getattr(opts, flag), bool):
            raise TypeError(f"{flag} must be True or False, got {getattr(opts, flag)!r}")
    if opts.inverse and opts.vectors:
        raise ValueError("inverse=True cannot be combined with vectors=True (the eigenvectors of 1/λ are those of λ; "
                         "run them separately)")
    if isinstance(opts.fft_size, bool) or not isinstance(opts.fft_size, int) or opts.fft_size < 1:
        raise ValueError(f"fft_size must be a positive int (the input grid of conv2d_fft), got {opts.fft_size!r}")


def row_tail_fit(
    evals: Float[Array, " n"],
    num_valid: Int[Array, ""],
    num_clipped: int,
    noise_floor: Float[Array, ""],
    tail: TailOptions,
    *,
    block: int,
) -> tuple[PowerLawFit, dict]:
    """The tail fit of one padded row and its extra columns (``Lambda``, ``num_fingers``, ``raw_alpha``, ``detX_*``)."""
    extra = {}
    if tail.truncated:
        xmin_range = None
        if tail.fix_fingers == "xmin_peak":  # E_TPL: the xmin_peak range, as for the power law
            n = evals.shape[0]
            fitted = (jnp.arange(n) < n - num_clipped) & (evals > jnp.maximum(EVALS_THRESH, noise_floor))
            xmin_range = peak_range(evals, fitted, tail.xmin_max)
        # a KS element of the TPL keeps ~4× the live temporaries of the power law's (Γ's series and fraction)
        tpl = fit_truncated_power_law(evals, num_clipped, noise_floor, xmin_range=xmin_range,
                                      block=max(1, block // 4))
        fit = tpl.fit
        extra.update(Lambda=jnp.where(fit.ok, tpl.Lambda, jnp.nan).astype(evals.dtype))
    elif tail.fix_fingers == "clip_xmax":
        clipped = fit_clipped_power_law(
            evals, noise_floor, max_fingers=tail.max_fingers, finger_thresh=tail.finger_thresh, block=block
        )
        fit = clipped.fit
        extra.update(num_fingers=clipped.num_fingers, raw_alpha=clipped.raw_alpha)
    elif tail.fix_fingers == "xmin_peak":
        fit = fit_peak_power_law(evals, noise_floor, xmin_max=tail.xmin_max, block=block)
    else:
        fit = fit_power_law(evals, num_clipped, noise_floor, block=block)
    if tail.detX:
        d = detx(evals, num_valid)
        extra.update(
            detX_num=d.detX_num,
            detX_val=d.detX_val,
            detX_val_rescaled=d.detX_val_rescaled,
            num_ERG_spikes=d.detX_num,
            ERG_gap=jnp.where(fit.ok, d.detX_num - fit.num_pl_spikes, jnp.nan).astype(evals.dtype),
        )
    return fit, extra
