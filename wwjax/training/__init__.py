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

from wwjax.training._pruning import Pruned as Pruned
from wwjax.training._pruning import alpha_sparsity as alpha_sparsity
from wwjax.training._pruning import keep_pruned as keep_pruned
from wwjax.training._pruning import prune as prune
from wwjax.training._pruning import sparsity_from_alpha as sparsity_from_alpha
from wwjax.training._pruning import uniform_sparsity as uniform_sparsity
from wwjax.training._pruning import wanda_scores as wanda_scores
from wwjax.training._temperature_balance import TemperatureBalanceState as TemperatureBalanceState
from wwjax.training._temperature_balance import temperature_balance as temperature_balance
from wwjax.training._temperature_balance import temperature_factors as temperature_factors

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
    "Pruned",
    "alpha_sparsity",
    "keep_pruned",
    "prune",
    "sparsity_from_alpha",
    "uniform_sparsity",
    "wanda_scores",
    "TemperatureBalanceState",
    "temperature_balance",
    "temperature_factors",
)
