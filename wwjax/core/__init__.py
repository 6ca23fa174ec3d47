"""The core of an analysis: the six stages (plan → matrices → buckets → spectra → metrics → results), their data types,
and the extension point (:class:`Contribution`) through which optional analyses plug into them.

Nothing here imports :mod:`wwjax.diagnostics`, :mod:`wwjax.training` or :mod:`wwjax.io`: they build on the core.
"""

from wwjax.core._analyze import analyze as analyze
from wwjax.core._compilation import CompilationCount as CompilationCount
from wwjax.core._compilation import count_compilations as count_compilations
from wwjax.core._compilation import enable_compilation_cache as enable_compilation_cache
from wwjax.core._contributions import ColumnsInput as ColumnsInput
from wwjax.core._contributions import Contribution as Contribution
from wwjax.core._contributions import MatricesTransform as MatricesTransform
from wwjax.core._contributions import MatrixSolver as MatrixSolver
from wwjax.core._contributions import contributions as contributions
from wwjax.core._contributions import register as register
from wwjax.core._contributions import unregister as unregister
from wwjax.core._details import details as details
from wwjax.core._details import summary as summary
from wwjax.core._fit import PowerLawRowFit as PowerLawRowFit
from wwjax.core._fit import RowColumns as RowColumns
from wwjax.core._fit import RowFit as RowFit
from wwjax.core._layout import MatrixView as MatrixView
from wwjax.core._layout import path_matches as path_matches
from wwjax.core._options import AnalyzeOptions as AnalyzeOptions
from wwjax.core._powerlaw import PowerLawFit as PowerLawFit
from wwjax.core._powerlaw import fit_power_law as fit_power_law
from wwjax.core._results import LayerMetrics as LayerMetrics
from wwjax.core._results import SkippedLeaf as SkippedLeaf

__all__ = (
    "AnalyzeOptions",
    "ColumnsInput",
    "CompilationCount",
    "Contribution",
    "LayerMetrics",
    "MatricesTransform",
    "MatrixSolver",
    "MatrixView",
    "PowerLawFit",
    "PowerLawRowFit",
    "RowColumns",
    "RowFit",
    "SkippedLeaf",
    "analyze",
    "contributions",
    "count_compilations",
    "details",
    "enable_compilation_cache",
    "fit_power_law",
    "path_matches",
    "register",
    "summary",
    "unregister",
)
