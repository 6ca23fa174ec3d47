"""wwjax: WeightWatcher's spectral diagnostics of trained weights, native to JAX and Flax."""

from wwjax._analyze import analyze as analyze
from wwjax._details import details as details
from wwjax._details import summary as summary
from wwjax._layout import MatrixView as MatrixView
from wwjax._layout import path_matches as path_matches
from wwjax._powerlaw import fit_power_law as fit_power_law
from wwjax._results import LayerMetrics as LayerMetrics
from wwjax._results import SkippedLeaf as SkippedLeaf
from wwjax._safetensors import load_safetensors as load_safetensors
# --- optional diagnostics (mp_fit, randomize) ---
from wwjax._mpfit import MarchenkoPasturFit as MarchenkoPasturFit
from wwjax._mpfit import fit_marchenko_pastur as fit_marchenko_pastur
from wwjax._randomize import jensen_shannon_distance as jensen_shannon_distance
# --- end optional diagnostics ---

__version__ = "0.1.0"

__all__ = (
    "LayerMetrics",
    "MarchenkoPasturFit",
    "MatrixView",
    "SkippedLeaf",
    "analyze",
    "details",
    "fit_marchenko_pastur",
    "fit_power_law",
    "jensen_shannon_distance",
    "load_safetensors",
    "path_matches",
    "summary",
)
