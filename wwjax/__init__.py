"""wwjax: WeightWatcher's spectral diagnostics of trained weights, native to JAX and Flax."""

from typing import TYPE_CHECKING

from wwjax._analyze import analyze as analyze
from wwjax._compilation import CompilationCount as CompilationCount
from wwjax._compilation import count_compilations as count_compilations
from wwjax._compilation import enable_compilation_cache as enable_compilation_cache
from wwjax._details import details as details
from wwjax._details import summary as summary
from wwjax._layout import MatrixView as MatrixView
from wwjax._layout import path_matches as path_matches
from wwjax._powerlaw import fit_power_law as fit_power_law
from wwjax._results import LayerMetrics as LayerMetrics
from wwjax._results import SkippedLeaf as SkippedLeaf
from wwjax._safetensors import load_safetensors as load_safetensors
from wwjax._smoothing import smoothing_ranks as smoothing_ranks  # advanced diagnostics
from wwjax._smoothing import svd_sharpness as svd_sharpness
from wwjax._smoothing import svd_smoothing as svd_smoothing

# Training with spectra: the spectral norm penalty, power iteration, the conv operator norm.
from wwjax._conv_operator import conv_operator_norm as conv_operator_norm
from wwjax._monitor import SpectralMetrics as SpectralMetrics
from wwjax._monitor import SpectralMonitorState as SpectralMonitorState
from wwjax._monitor import monitor_spectra as monitor_spectra
from wwjax._monitor import spectral_metrics as spectral_metrics
from wwjax._penalty import SpectralPenalty as SpectralPenalty
from wwjax._penalty import SpectralPenaltyState as SpectralPenaltyState
from wwjax._penalty import add_spectral_penalty as add_spectral_penalty
from wwjax._penalty import spectral_penalty as spectral_penalty
from wwjax._power_iteration import PowerIteration as PowerIteration
from wwjax._power_iteration import power_iteration as power_iteration
from wwjax._power_iteration import top_singular as top_singular
# --- optional diagnostics (mp_fit, randomize) ---
from wwjax._mpfit import MarchenkoPasturFit as MarchenkoPasturFit
from wwjax._mpfit import fit_marchenko_pastur as fit_marchenko_pastur
from wwjax._randomize import jensen_shannon_distance as jensen_shannon_distance
# --- end optional diagnostics ---

# Checkpoints, file formats and distances need pandas (and orbax): loaded when first used, so that `import wwjax`
# stays quick for an analysis in a notebook or a one-shot command.
_LAZY = {
    "CheckpointScan": "wwjax._checkpoints",
    "analyze_checkpoint": "wwjax._checkpoints",
    "scan_checkpoints": "wwjax._checkpoints",
    "describe": "wwjax._describe",
    "distances": "wwjax._distances",
    "load_params": "wwjax._formats",
}
if TYPE_CHECKING:
    from wwjax._checkpoints import CheckpointScan as CheckpointScan
    from wwjax._checkpoints import analyze_checkpoint as analyze_checkpoint
    from wwjax._checkpoints import scan_checkpoints as scan_checkpoints
    from wwjax._describe import describe as describe
    from wwjax._distances import distances as distances
    from wwjax._formats import load_params as load_params


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'wwjax' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = (
    "CompilationCount",
    "CheckpointScan",
    "LayerMetrics",
    "MarchenkoPasturFit",
    "MatrixView",
    "SkippedLeaf",
    "analyze",
    "count_compilations",
    "describe",
    "details",
    "enable_compilation_cache",
    "analyze_checkpoint",
    "distances",
    "fit_power_law",
    "load_params",
    "fit_marchenko_pastur",
    "jensen_shannon_distance",
    "load_safetensors",
    "path_matches",
    "scan_checkpoints",
    "summary",
    # Training with spectra
    "PowerIteration",
    "SpectralMetrics",
    "SpectralMonitorState",
    "SpectralPenalty",
    "SpectralPenaltyState",
    "add_spectral_penalty",
    "conv_operator_norm",
    "monitor_spectra",
    "power_iteration",
    "top_singular",
    "spectral_metrics",
    "spectral_penalty",
    "smoothing_ranks",
    "svd_sharpness",
    "svd_smoothing",
)
