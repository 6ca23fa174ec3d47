"""wwjax: WeightWatcher's spectral diagnostics of trained weights, native to JAX and Flax."""

from typing import TYPE_CHECKING

# The core: the stages of an analysis and their data types.
from wwjax.core import (
    CompilationCount, LayerMetrics, MatrixView, SkippedLeaf, analyze, count_compilations, details,
    enable_compilation_cache, fit_power_law, path_matches, summary,
)

# Optional analyses; importing them registers analyze()'s options (mp_fit, randomize, fix_fingers, fit, detX …).
from wwjax.diagnostics import (
    HillFit, MarchenkoPasturFit, fit_marchenko_pastur, hill_fit, jensen_shannon_distance, smoothing_ranks, svd_sharpness, svd_smoothing,
    # aspect-ratio-free spectra (FARMS) and LoRA adapters, also analyze(farms=True) / analyze(lora=True)
    LoraPair, farms_alpha, farms_spectra, find_lora_pairs, lora_spectra,
)

# Training with spectra: the spectral norm penalty, power iteration, the monitor, the conv operator norm.
from wwjax.training import (
    PowerIteration, SpectralMetrics, SpectralMonitorState, SpectralPenalty, SpectralPenaltyState, add_spectral_penalty,
    conv_operator_norm, monitor_spectra, power_iteration, spectral_metrics, spectral_penalty, top_singular,
    # the α-driven methods: TempBalance learning rates, AlphaPruning sparsity
    Pruned, TemperatureBalanceState, alpha_sparsity, keep_pruned, prune, sparsity_from_alpha, temperature_balance,
    temperature_factors, uniform_sparsity, wanda_scores,
)

# Weights on disk and runs: checkpoints, file formats and distances need pandas (and orbax): wwjax.io loads them when
# first used, so that `import wwjax` stays quick for an analysis in a notebook or a one-shot command.
from wwjax.io import _LAZY, load_safetensors

if TYPE_CHECKING:
    from wwjax.io._checkpoints import CheckpointScan, analyze_checkpoint, scan_checkpoints
    from wwjax.io._describe import describe
    from wwjax.io._distances import distances
    from wwjax.io._formats import load_params


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'wwjax' has no attribute {name!r}")
    import wwjax.io

    value = getattr(wwjax.io, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = (
    "CompilationCount",
    "LayerMetrics",
    "MatrixView",
    "SkippedLeaf",
    "analyze",
    "count_compilations",
    "details",
    "enable_compilation_cache",
    "fit_power_law",
    "path_matches",
    "summary",
)
# Each area's public names (the subpackages are bound here by the imports above).
__all__ += diagnostics.__all__
__all__ += training.__all__
__all__ += io.__all__
