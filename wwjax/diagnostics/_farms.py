"""FARMS: the ESD of a matrix read through windows of one fixed aspect ratio (Hu, Goel, Killiakov, Yang, ICML 2025).

The ESD of an ``N×M`` matrix depends on its aspect ratio ``Q = N/M`` as much as on training: i.i.d. matrices of
different ``Q`` get very different power-law α. FARMS (Fixed-Aspect-Ratio Matrix Subsampling) replaces the ESD of
``W`` by the pooled eigenvalues of many overlapping ``n×m`` windows of ``W`` that all have the same aspect ratio
``n/m``, and fits α on that.

The parameters (those of the authors' reference code, ``fixed_sampling``):

* ``window_size`` (``m``, default 100): the short side of a window, so each window gives ``m`` eigenvalues.
* ``aspect_ratio`` (``n/m``, default 1.0, square windows as in the paper's main experiments); must be >= 1 (the
  long side of a window lies along the long side of the matrix, as ``as_matrices`` orients it).
* ``windows_per_dim`` (``k``, default 9, the image-classification setting; the LLM pruning runs use 15): along each
  dimension of length ``L`` the window of length ``w`` starts at ``min(i·s, L - w)`` with stride
  ``s = max(1, (L - w) // (k - 1))`` for ``i < min(k, (L - w) // s + 1)``, so the windows overlap and the first and
  last touch the two edges. ``k × k`` windows (fewer where the matrix leaves no room) per matrix.
* The windows' eigenvalues are pooled (concatenated and sorted): all windows have the same size, so this is the
  average of their ESDs as measures. Conv kernels: every kernel position is cut into windows, and all of them pooled.
* A matrix smaller than the window: the window shrinks to ``m = min(window_size, M, ⌊N/Q⌋)``, ``n = round(Q·m)``, so
  the aspect ratio stays exact (the reference code analyses such a matrix whole, at its own aspect ratio).

Example:
  >>> import jax.numpy as jnp
  >>> plan = farms_windows(300, 120, window_size=100, windows_per_dim=3)
  >>> (plan.rows, plan.cols), plan.row_starts, plan.col_starts
  ((100, 100), (0, 100, 200), (0, 10, 20))
  >>> farms_matrices(jnp.zeros((2, 1, 300, 120)), plan).shape
  (2, 9, 100, 100)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from wwjax.core._layout import MatrixShape, MatrixView, as_matrices, matrix_shape
from wwjax.core._powerlaw import PowerLawFit, fit_power_law
from wwjax.core._spectra import compute_dtype, rank_tolerance, resolve_method, slice_spectra

FARMS_DEFAULTS = {"window_size": 100, "aspect_ratio": 1.0, "windows_per_dim": 9}


def check_farms_options(window_size: int = 100, aspect_ratio: float = 1.0, windows_per_dim: int = 9) -> None:
    """Raises TypeError/ValueError saying what to change when a FARMS option is not usable.

    Example:
      >>> check_farms_options(window_size=0)
      Traceback (most recent call last):
      ...
      ValueError: farms window_size must be a positive int (eigenvalues per window), got 0
    """
    if isinstance(window_size, bool) or not isinstance(window_size, (int, np.integer)):
        raise TypeError(f"farms window_size must be an int (eigenvalues per window), got {window_size!r}")
    if window_size < 1:
        raise ValueError(f"farms window_size must be a positive int (eigenvalues per window), got {window_size}")
    if isinstance(aspect_ratio, bool) or not isinstance(aspect_ratio, (int, float, np.floating, np.integer)):
        raise TypeError(f"farms aspect_ratio must be a number >= 1, got {aspect_ratio!r}")
    if not (np.isfinite(aspect_ratio) and aspect_ratio >= 1.0):
        raise ValueError(
            f"farms aspect_ratio must be >= 1 (rows/cols of a window, long side first), got {aspect_ratio}; "
            "for windows wider than tall pass 1/aspect_ratio: singular values do not depend on the orientation"
        )
    if isinstance(windows_per_dim, bool) or not isinstance(windows_per_dim, (int, np.integer)):
        raise TypeError(f"farms windows_per_dim must be an int, got {windows_per_dim!r}")
    if windows_per_dim < 1:
        raise ValueError(f"farms windows_per_dim must be >= 1, got {windows_per_dim}")


@dataclasses.dataclass(frozen=True)
class FarmsPlan:
    """Where the windows of one ``(N, M)`` matrix lie: static shapes only (hashable, a jit static argument).

    ``rows × cols`` is the window shape (``rows >= cols``); every pair of a row start and a column start is one
    window, ``len(row_starts) * len(col_starts)`` of them.
    """

    rows: int
    cols: int
    row_starts: tuple[int, ...]
    col_starts: tuple[int, ...]

    @property
    def num_windows(self) -> int:
        return len(self.row_starts) * len(self.col_starts)

    @property
    def num_evals(self) -> int:
        """Eigenvalues per matrix in the pooled FARMS ESD."""
        return self.num_windows * self.cols


def _window_starts(length: int, window: int, count: int) -> tuple[int, ...]:
    """The reference code's sliding starts along one dimension (see the module docstring)."""
    room = length - window
    if count == 1 or room == 0:
        return (0,)
    stride = max(1, room // (count - 1))
    num = min(count, room // stride + 1)
    return tuple(min(i * stride, room) for i in range(num))


def farms_windows(
    N: int,  # noqa: N803 (WeightWatcher's names)
    M: int,  # noqa: N803
    *,
    window_size: int = 100,
    aspect_ratio: float = 1.0,
    windows_per_dim: int = 9,
) -> FarmsPlan:
    """Plans the FARMS windows of an ``(N, M)`` matrix (``N >= M``, as ``as_matrices`` returns it), on the host.

    Example:
      >>> farms_windows(64, 32, window_size=100)  # smaller than the window: one 32×32 window per start
      FarmsPlan(rows=32, cols=32, row_starts=(0, 4, 8, 12, 16, 20, 24, 28, 32), col_starts=(0,))
    """
    check_farms_options(window_size, aspect_ratio, windows_per_dim)
    if N < M:
        raise ValueError(f"farms_windows expects N >= M (long side first), got N={N}, M={M}")
    cols = min(window_size, M, int(N // aspect_ratio))
    if cols < 1:
        raise ValueError(f"a {N}×{M} matrix holds no window of aspect ratio {aspect_ratio}; lower farms aspect_ratio")
    rows = min(N, max(cols, int(round(aspect_ratio * cols))))
    return FarmsPlan(
        rows=rows,
        cols=cols,
        row_starts=_window_starts(N, rows, windows_per_dim),
        col_starts=_window_starts(M, cols, windows_per_dim),
    )


def farms_matrices(mats: Float[Array, "L S N M"], plan: FarmsPlan) -> Float[Array, "L SW n m"]:
    """Cuts every window of ``plan`` out of every matrix of ``mats`` with one gather: ``(L, S, N, M)`` to
    ``(L, S·W, n, m)``, the windows of slice ``s`` at ``s·W ... s·W + W - 1`` (row starts outer, column starts inner).

    Pure and jittable; the plan is static.

    Example:
      >>> import jax.numpy as jnp
      >>> w = jnp.arange(12.0).reshape(1, 1, 4, 3)
      >>> farms_matrices(w, FarmsPlan(2, 2, (0, 2), (1,)))[0].tolist()
      [[[1.0, 2.0], [4.0, 5.0]], [[7.0, 8.0], [10.0, 11.0]]]
    """
    num_layers, num_slices = mats.shape[:2]
    row_starts = np.repeat(np.asarray(plan.row_starts), len(plan.col_starts))
    col_starts = np.tile(np.asarray(plan.col_starts), len(plan.row_starts))
    row_index = row_starts[:, None] + np.arange(plan.rows)[None, :]  # (W, n)
    col_index = col_starts[:, None] + np.arange(plan.cols)[None, :]  # (W, m)
    windows = mats[:, :, row_index[:, :, None], col_index[:, None, :]]  # (L, S, W, n, m)
    return windows.reshape(num_layers, num_slices * plan.num_windows, plan.rows, plan.cols)


@functools.partial(jax.jit, static_argnames=("plan", "method"))
def _pooled_spectra(mats: Float[Array, "L S N M"], plan: FarmsPlan, method: str) -> Float[Array, "L k"]:
    windows = farms_matrices(mats, plan)
    num_layers = windows.shape[0]
    evals = slice_spectra(windows.reshape(-1, plan.rows, plan.cols), method=method).evals
    return jnp.sort(evals.reshape(num_layers, -1), axis=-1)


def farms_spectra(
    value,
    view: MatrixView,
    *,
    svd_method: str = "accurate",
    window_size: int = 100,
    aspect_ratio: float = 1.0,
    windows_per_dim: int = 9,
) -> Float[Array, "L k"]:
    """The FARMS ESD of one leaf: per layer row, the pooled eigenvalues (squared singular values) of all windows of
    all its matrices (conv kernel positions included), ascending. ``k = slices · windows · m``.

    Example:
      >>> import numpy as np
      >>> w = np.random.default_rng(0).normal(size=(400, 100)).astype(np.float32)
      >>> farms_spectra(w, MatrixView((0,), (1,)), window_size=50, windows_per_dim=3).shape
      (1, 450)
    """
    ms = matrix_shape(np.shape(value), view)
    plan = farms_windows(
        ms.N, ms.M, window_size=window_size, aspect_ratio=aspect_ratio, windows_per_dim=windows_per_dim
    )
    mats = as_matrices(jnp.asarray(value, compute_dtype(jnp.asarray(value).dtype)), view)
    return _pooled_spectra(mats, plan, resolve_method(svd_method))


def fit_farms_rows(
    esd: Float[Array, "rows k"], window_cols: int, *, svd_method: str = "accurate", window_rows: int | None = None
) -> PowerLawFit:
    """Fits the engine's power law (:func:`wwjax.core._powerlaw.fit_power_law`, the KS scan over xmin) to each pooled,
    ascending FARMS ESD row; eigenvalues under the window solver's rank tolerance times λmax are not fitted.

    Example:
      >>> import jax.numpy as jnp
      >>> x = (1.0 - jnp.linspace(0.0, 0.999, 500)) ** (-1 / 1.5)  # a Pareto tail with α = 2.5
      >>> round(float(fit_farms_rows(jnp.sort(x)[None], 100).alpha[0]), 1)
      2.5
    """
    method = resolve_method(svd_method)
    tol = rank_tolerance(method, window_rows or window_cols, window_cols, esd.dtype)
    return _fit_rows(esd, jnp.asarray(tol, esd.dtype))


@jax.jit
def _fit_rows(esd: Float[Array, "rows k"], tol: Float[Array, ""]) -> PowerLawFit:
    return jax.vmap(lambda row: fit_power_law(row, 0, row[-1] * tol))(esd)


def farms_alpha(
    value,
    view: MatrixView,
    *,
    svd_method: str = "accurate",
    window_size: int = 100,
    aspect_ratio: float = 1.0,
    windows_per_dim: int = 9,
) -> PowerLawFit:
    """The power-law fit of the FARMS ESD of one leaf, one entry per layer row.

    Example:
      >>> import numpy as np
      >>> w = np.random.default_rng(0).standard_t(3, size=(256, 64)).astype(np.float32)
      >>> fit = farms_alpha(w, MatrixView((0,), (1,)), window_size=32, windows_per_dim=3)  # 9 windows of 32×32
      >>> fit.alpha.shape, bool(fit.ok[0])
      ((1,), True)
    """
    options = dict(window_size=window_size, aspect_ratio=aspect_ratio, windows_per_dim=windows_per_dim)
    ms = matrix_shape(np.shape(value), view)
    plan = farms_windows(ms.N, ms.M, **options)
    esd = farms_spectra(value, view, svd_method=svd_method, **options)
    return fit_farms_rows(esd, plan.cols, svd_method=svd_method, window_rows=plan.rows)


# ---------------------------------------------------------------------------------------------------------------------
# analyze(farms=True): the windows as a transform of a leaf's matrices, solved in the core's shape buckets


@dataclasses.dataclass(frozen=True)
class FarmsTransform:
    """The windows of a planned leaf (a :class:`wwjax.core.MatricesTransform`): ``(L, S, N, M)`` matrices to their
    ``(L, S·W, n, m)`` windows, cut inside the bucket's program; the windows of every leaf join the buckets of their
    shape, so all windows of one shape across the model are one batched eigen-solve.

    Example:
      >>> from wwjax.core._layout import MatrixShape
      >>> FarmsTransform(farms_windows(300, 120, windows_per_dim=3)).shape(MatrixShape(1, 9, 300, 120))
      MatrixShape(num_layers=1, num_slices=81, rows=100, cols=100)
    """

    plan: FarmsPlan

    def __call__(self, mats: Float[Array, "L S N M"]) -> Float[Array, "L SW n m"]:
        return farms_matrices(mats, self.plan)

    def shape(self, shape: MatrixShape) -> MatrixShape:
        return MatrixShape(shape.num_layers, shape.num_slices * self.plan.num_windows, self.plan.rows, self.plan.cols)


def farms_options(opts) -> dict:
    """The FARMS parameters of an analysis' options, by :func:`farms_windows`' names."""
    return dict(window_size=opts.farms_window, aspect_ratio=opts.farms_aspect_ratio,
                windows_per_dim=opts.farms_windows_per_dim)


def check_analyze_farms(opts) -> None:
    """The checks of ``analyze(farms=...)``: the flag, the parameters, and the options it cannot be combined with."""
    if not isinstance(opts.farms, bool):
        raise TypeError(f"farms must be True or False, got {opts.farms!r}")
    check_farms_options(**farms_options(opts))
    if opts.farms:
        # These re-solve the whole matrices after the fit: their columns would not be those of the FARMS ESD.
        clash = [name for name in ("conv2d_fft", "mp_fit", "randomize", "vectors") if getattr(opts, name)]
        if clash:
            raise ValueError(f"farms=True cannot be combined with {', '.join(f'{c}=True' for c in clash)} (they "
                             "analyse the whole matrices, not the FARMS windows); run them in a separate analysis")


def plan_farms(leaf, opts):
    """The plan hook of ``analyze(farms=True)``: the leaf read through its FARMS windows, or why it cannot be."""
    if not opts.farms:
        return leaf
    try:
        plan = farms_windows(leaf.shape.N, leaf.shape.M, **farms_options(opts))
    except ValueError as error:
        return str(error)
    return dataclasses.replace(leaf, transform=FarmsTransform(plan))
