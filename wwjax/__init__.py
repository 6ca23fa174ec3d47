"""wwjax: WeightWatcher's spectral diagnostics of trained weights, native to JAX and Flax."""

from typing import TYPE_CHECKING

# The core: the stages of an analysis and their data types.
from wwjax.core import CompilationCount as CompilationCount
from wwjax.core import LayerMetrics as LayerMetrics
from wwjax.core import MatrixView as MatrixView
from wwjax.core import SkippedLeaf as SkippedLeaf
from wwjax.core import analyze as analyze
from wwjax.core import count_compilations as count_compilations
from wwjax.core import details as details
from wwjax.core import enable_compilation_cache as enable_compilation_cache
from wwjax.core import fit_power_law as fit_power_law
from wwjax.core import path_matches as path_matches
from wwjax.core import summary as summary

# Optional analyses; importing them registers analyze()'s options (mp_fit, randomize, fix_fingers, fit, detX …).
from wwjax.diagnostics import MarchenkoPasturFit as MarchenkoPasturFit
from wwjax.diagnostics import fit_marchenko_pastur as fit_marchenko_pastur
from wwjax.diagnostics import jensen_shannon_distance as jensen_shannon_distance
from wwjax.diagnostics import smoothing_ranks as smoothing_ranks
from wwjax.diagnostics import svd_sharpness as svd_sharpness
from wwjax.diagnostics import svd_smoothing as svd_smoothing

# Training with spectra: the spectral norm penalty, power iteration, the monitor, the conv operator norm.
from wwjax.training import PowerIteration as PowerIteration
from wwjax.training import SpectralMetrics as SpectralMetrics
from wwjax.training import SpectralMonitorState as SpectralMonitorState
from wwjax.training import SpectralPenalty as SpectralPenalty
from wwjax.training import SpectralPenaltyState as SpectralPenaltyState
from wwjax.training import add_spectral_penalty as add_spectral_penalty
from wwjax.training import conv_operator_norm as conv_operator_norm
from wwjax.training import monitor_spectra as monitor_spectra
from wwjax.training import power_iteration as power_iteration
from wwjax.training import spectral_metrics as spectral_metrics
from wwjax.training import spectral_penalty as spectral_penalty
from wwjax.training import top_singular as top_singular

# Weights on disk and runs: checkpoints, file formats and distances need pandas (and orbax): loaded when first used,
# so that `import wwjax` stays quick for an analysis in a notebook or a one-shot command.
from wwjax.io import load_safetensors as load_safetensors

_LAZY = {
    "CheckpointScan": "wwjax.io._checkpoints",
    "analyze_checkpoint": "wwjax.io._checkpoints",
    "scan_checkpoints": "wwjax.io._checkpoints",
    "describe": "wwjax.io._describe",
    "distances": "wwjax.io._distances",
    "load_params": "wwjax.io._formats",
}
if TYPE_CHECKING:
    from wwjax.io._checkpoints import CheckpointScan as CheckpointScan
    from wwjax.io._checkpoints import analyze_checkpoint as analyze_checkpoint
    from wwjax.io._checkpoints import scan_checkpoints as scan_checkpoints
    from wwjax.io._describe import describe as describe
    from wwjax.io._distances import distances as distances
    from wwjax.io._formats import load_params as load_params


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
