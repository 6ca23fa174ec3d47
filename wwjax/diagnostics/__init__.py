"""Optional analyses beside the core: the Marchenko–Pastur fit, randomized ESDs and correlation traps, the tail fits
(fingers, truncated power law), detX, eigenvector localisation, the inverse ESD, the conv operator spectrum, and SVD
smoothing. Importing this package registers the options of :func:`wwjax.analyze` with the core (``_builtin``).
"""

from wwjax.diagnostics import _builtin  # noqa: F401  (registers the built-in contributions)
from wwjax.diagnostics._farms import farms_alpha as farms_alpha
from wwjax.diagnostics._farms import farms_spectra as farms_spectra
from wwjax.diagnostics._hill import HillFit as HillFit
from wwjax.diagnostics._hill import hill_fit as hill_fit
from wwjax.diagnostics._lora import LoraPair as LoraPair
from wwjax.diagnostics._lora import find_lora_pairs as find_lora_pairs
from wwjax.diagnostics._lora import lora_spectra as lora_spectra
from wwjax.diagnostics._mpfit import MarchenkoPasturFit as MarchenkoPasturFit
from wwjax.diagnostics._mpfit import fit_marchenko_pastur as fit_marchenko_pastur
from wwjax.diagnostics._randomize import jensen_shannon_distance as jensen_shannon_distance
from wwjax.diagnostics._smoothing import smoothing_ranks as smoothing_ranks
from wwjax.diagnostics._smoothing import svd_sharpness as svd_sharpness
from wwjax.diagnostics._smoothing import svd_smoothing as svd_smoothing

__all__ = (
    "HillFit",
    "LoraPair",
    "MarchenkoPasturFit",
    "farms_alpha",
    "farms_spectra",
    "find_lora_pairs",
    "fit_marchenko_pastur",
    "hill_fit",
    "jensen_shannon_distance",
    "lora_spectra",
    "smoothing_ranks",
    "svd_sharpness",
    "svd_smoothing",
)
