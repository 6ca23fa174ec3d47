"""The tail options of an analysis (``fix_fingers='clip_xmax'/'xmin_peak'``, ``fit='TPL'/'E_TPL'``) as a row fit.

:class:`TailFit` is the strategy the vmapped row program of :func:`wwjax.analyze` calls in place of the plain
power-law fit when these options are on; it returns the fit and the extra columns (``LayerMetrics.extra``).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from wwjax.diagnostics._fingers import fit_clipped_power_law, fit_peak_power_law, peak_range
from wwjax.core._powerlaw import PowerLawFit, fit_power_law, fitted_block
from wwjax.diagnostics._tpl import fit_truncated_power_law

FIX_FINGERS = ("clip_xmax", "xmin_peak")
FITS = ("PL", "power_law", "TPL", "truncated_power_law", "E_TPL")
TPL_FITS = ("TPL", "truncated_power_law", "E_TPL")


@dataclasses.dataclass(frozen=True)
class TailFit:
    """The row fit of ``fix_fingers`` / ``fit='TPL'``: a static, hashable strategy the core's row program calls in
    place of the plain power-law fit (:class:`wwjax.core.RowFit`).

    Example:
      >>> import jax.numpy as jnp
      >>> fit, extra = TailFit(fix_fingers="clip_xmax")(jnp.linspace(0.1, 4.0, 64) ** 3, 64, 0, 1e-6, block=8)
      >>> sorted(extra)
      ['num_fingers', 'raw_alpha']
    """

    fix_fingers: str | None = None
    max_fingers: int = 10
    finger_thresh: float = 1.0
    xmin_max: float | None = None
    truncated: bool = False  # fit the truncated power law (fit='TPL'/'E_TPL') instead of the power law

    def __call__(self, evals: Float[Array, " n"], num_valid: Int[Array, ""], num_clipped: int,
                 noise_floor: Float[Array, ""], *, block: int) -> tuple[PowerLawFit, dict]:
        """The tail fit of one padded row and its extra columns (``Lambda``, ``num_fingers``, ``raw_alpha``)."""
        extra = {}
        if self.truncated:
            xmin_range = None
            if self.fix_fingers == "xmin_peak":  # E_TPL: the xmin_peak range, as for the power law
                fitted, _, _ = fitted_block(evals, noise_floor, num_clipped)
                xmin_range = peak_range(evals, fitted, self.xmin_max)
            # a KS element of the TPL keeps ~4× the live temporaries of the power law's (Γ's series and fraction)
            tpl = fit_truncated_power_law(evals, num_clipped, noise_floor, xmin_range=xmin_range,
                                          block=max(1, block // 4))
            fit = tpl.fit
            extra.update(Lambda=jnp.where(fit.ok, tpl.Lambda, jnp.nan).astype(evals.dtype))
        elif self.fix_fingers == "clip_xmax":
            clipped = fit_clipped_power_law(
                evals, noise_floor, max_fingers=self.max_fingers, finger_thresh=self.finger_thresh, block=block
            )
            fit = clipped.fit
            extra.update(num_fingers=clipped.num_fingers, raw_alpha=clipped.raw_alpha)
        elif self.fix_fingers == "xmin_peak":
            fit = fit_peak_power_law(evals, noise_floor, xmin_max=self.xmin_max, block=block)
        else:
            fit = fit_power_law(evals, num_clipped, noise_floor, block=block)
        return fit, extra


def tail_fit(opts) -> TailFit | None:
    """The row fit the options ask for, or None for the plain power law (the core's own fit)."""
    fix = "xmin_peak" if opts.fit == "E_TPL" else opts.fix_fingers
    if not fix and opts.fit not in TPL_FITS:
        return None
    return TailFit(fix or None, opts.max_fingers, float(opts.finger_thresh),
                   None if opts.xmin_max is None else float(opts.xmin_max), opts.fit in TPL_FITS)


def check_tail_options(opts) -> None:
    """Raises TypeError/ValueError, saying what to change, for a bad combination of the tail options."""
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


def check_flag(opts, name: str) -> None:
    """A TypeError unless option ``name`` is True or False."""
    if not isinstance(getattr(opts, name), bool):
        raise TypeError(f"{name} must be True or False, got {getattr(opts, name)!r}")
