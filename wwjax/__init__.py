"""wwjax: WeightWatcher's spectral diagnostics of trained weights, native to JAX and Flax."""

from wwjax._analyze import analyze as analyze
from wwjax._compilation import CompilationCount as CompilationCount
from wwjax._compilation import count_compilations as count_compilations
from wwjax._compilation import enable_compilation_cache as enable_compilation_cache
from wwjax._checkpoints import CheckpointScan as CheckpointScan
from wwjax._checkpoints import analyze_checkpoint as analyze_checkpoint
from wwjax._checkpoints import scan_checkpoints as scan_checkpoints
from wwjax._details import details as details
from wwjax._details import summary as summary
from wwjax._distances import distances as distances
from wwjax._formats import load_params as load_params
from wwjax._layout import MatrixView as MatrixView
from wwjax._layout import path_matches as path_matches
from wwjax._powerlaw import fit_power_law as fit_power_law
from wwjax._results import LayerMetrics as LayerMetrics
from wwjax._results import SkippedLeaf as SkippedLeaf
from wwjax._safetensors import load_safetensors as load_safetensors

__version__ = "0.1.0"

__all__ = (
    "CompilationCount",
    "CheckpointScan",
    "LayerMetrics",
    "MatrixView",
    "SkippedLeaf",
    "analyze",
    "count_compilations",
    "details",
    "enable_compilation_cache",
    "analyze_checkpoint",
    "distances",
    "fit_power_law",
    "load_params",
    "load_safetensors",
    "path_matches",
    "scan_checkpoints",
    "summary",
)
