"""Training with spectra: the spectral norm penalty, power iteration and Lanczos, the spectral monitor and the
conv operator norm (the mean-spectral-normalised layers are :mod:`wwjax.nn`)."""

from wwjax.training._conv_operator import conv_operator_norm as conv_operator_norm
from wwjax.training._monitor import SpectralMetrics as SpectralMetrics
from wwjax.training._monitor import SpectralMonitorState as SpectralMonitorState
from wwjax.training._monitor import monitor_spectra as monitor_spectra
from wwjax.training._monitor import spectral_metrics as spectral_metrics
from wwjax.training._penalty import SpectralPenalty as SpectralPenalty
from wwjax.training._penalty import SpectralPenaltyState as SpectralPenaltyState
from wwjax.training._penalty import add_spectral_penalty as add_spectral_penalty
from wwjax.training._penalty import spectral_penalty as spectral_penalty
from wwjax.training._power_iteration import PowerIteration as PowerIteration
from wwjax.training._power_iteration import power_iteration as power_iteration
from wwjax.training._power_iteration import top_singular as top_singular

__all__ = (
    "PowerIteration",
    "SpectralMetrics",
    "SpectralMonitorState",
    "SpectralPenalty",
    "SpectralPenaltyState",
    "add_spectral_penalty",
    "conv_operator_norm",
    "monitor_spectra",
    "power_iteration",
    "spectral_metrics",
    "spectral_penalty",
    "top_singular",
)
