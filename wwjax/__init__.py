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
from wwjax._smoothing import smoothing_ranks as smoothing_ranks  # advanced diagnostics
from wwjax._smoothing import svd_sharpness as svd_sharpness
from wwjax._smoothing import svd_smoothing as svd_smoothing

__version__ = "0.1.0"

__all__ = (
    "LayerMetrics",
    "MatrixView",
    "SkippedLeaf",
    "analyze",
    "details",
    "fit_power_law",
    "load_safetensors",
    "path_matches",
    "smoothing_ranks",
    "summary",
    "svd_sharpness",
    "svd_smoothing",
)
