"""The spectrum of a convolution as the linear operator it is (``conv2d_fft=True``).

A convolution with circular padding on an ``n × n`` input grid (``n^d`` for a d-D conv) is a linear map from
``n^d·in`` to ``n^d·out`` numbers. The 2-D DFT block-diagonalises it (Sedghi, Gupta & Long, "The Singular Values
of Convolutional Layers", ICLR 2019): its singular values are those of the ``n^d`` complex ``(in, out)`` matrices

    P(u) = Σ_a K[a] · exp(-2πi ⟨a, u⟩ / n),   u ∈ {0 … n-1}^d,

the kernel's DFT over its spatial axes, zero-padded to the grid. The ESD of the layer is the squared singular
values of all of them pooled: ``n^d·min(in, out)`` eigenvalues. (WeightWatcher's FFT mode keeps only the real part
of P, which is not the operator's spectrum.)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Complex, Float

from wwjax.core._layout import MatrixView, matrix_shape
from wwjax.core._spectra import SliceSpectra, per_matrix, rank_tolerance


def frequency_matrices(leaf: Float[Array, "..."], view: MatrixView, grid: int) -> Complex[Array, "layers freqs n m"]:
    """The per-frequency ``(rows, cols)`` matrices of a conv kernel on a ``grid^d`` input, long side first.

    Example:
      A 1×1 conv is the same matrix at every frequency:

      >>> import jax.numpy as jnp
      >>> view = MatrixView((2,), (3,), slice_axes=(0, 1), layer_type="conv2d")
      >>> frequency_matrices(jnp.ones((1, 1, 2, 3)), view, 4).shape
      (1, 16, 3, 2)
    """
    ms = matrix_shape(leaf.shape, view)
    spatial = tuple(leaf.shape[a] for a in view.slice_axes)
    if any(k > grid for k in spatial):
        raise ValueError(f"fft_size={grid} is smaller than the kernel {spatial}; raise fft_size")
    order = view.layer_axes + view.slice_axes + view.row_axes + view.col_axes
    kernel = leaf.transpose(order).reshape(ms.num_layers, *spatial, ms.rows, ms.cols)
    axes = tuple(range(1, 1 + len(spatial)))
    freq = jnp.fft.fftn(kernel, s=(grid,) * len(spatial), axes=axes)
    freq = freq.reshape(ms.num_layers, grid ** len(spatial), ms.rows, ms.cols)
    if ms.rows < ms.cols:
        freq = freq.swapaxes(-1, -2)
    return freq


@functools.partial(jax.jit, static_argnames=("method",))
def complex_spectra(stack: Complex[Array, "batch n m"], *, method: str) -> SliceSpectra:
    """Squared singular values (ascending) and numerical ranks of complex ``(n, m)`` matrices, ``n >= m``.

    ``svd``: the complex SVD; ``gram``: ``eigvalsh`` of the Hermitian Gram matrix ``PᴴP`` at HIGHEST precision.

    Example:
      >>> import jax.numpy as jnp
      >>> p = jnp.array([[[1j, 0.0], [0.0, 2.0]]])
      >>> [round(float(x), 6) for x in complex_spectra(p, method="svd").evals[0]]
      [1.0, 4.0]
    """
    if method == "svd":
        sv = per_matrix(functools.partial(jnp.linalg.svd, compute_uv=False), stack)[..., ::-1]
        evals = sv * sv
    else:
        gram = jnp.einsum("bnm,bnk->bmk", stack.conj(), stack, precision=jax.lax.Precision.HIGHEST)
        evals = jnp.clip(per_matrix(jnp.linalg.eigvalsh, gram), 0.0, None)
    real = jnp.finfo(stack.dtype).dtype
    tol = rank_tolerance(method, *stack.shape[-2:], real, refined=False)  # never re-solved by the SVD
    rank = jnp.sum(evals > evals[..., -1:] * tol, axis=-1)
    return SliceSpectra(evals.astype(real), rank)


@functools.partial(jax.jit, static_argnames=("view", "grid", "method", "dtype"))
def operator_spectra(leaf, view: MatrixView, grid: int, method: str, dtype):
    """Per-frequency spectra of one conv leaf: ``(evals (L·freqs, m), rank (L·freqs,), finite (L, freqs))``.

    Example:
      >>> import jax.numpy as jnp
      >>> view = MatrixView((2,), (3,), slice_axes=(0, 1), layer_type="conv2d")
      >>> evals, rank, ok = operator_spectra(jnp.ones((1, 1, 2, 3)), view, 2, "svd", jnp.float32)
      >>> evals.shape, bool(ok.all())
      ((4, 2), True)
    """
    leaf = leaf.astype(dtype)
    finite = jnp.all(jnp.isfinite(leaf))
    leaf = jnp.where(finite, leaf, 0.0)
    freq = frequency_matrices(leaf, view, grid)
    spectra = complex_spectra(freq.reshape(-1, *freq.shape[-2:]), method=method)
    ok = jnp.broadcast_to(finite, freq.shape[:2])
    return spectra.evals, spectra.rank, ok


def num_frequencies(view: MatrixView, grid: int) -> int:
    """How many per-frequency matrices a conv leaf has on a ``grid^d`` input."""
    return int(math.prod([grid] * len(view.slice_axes)))


_CONV_TYPES = ("conv1d", "conv2d", "conv3d")


@dataclasses.dataclass(frozen=True)
class OperatorSolver:
    """``conv2d_fft``'s solve of a conv leaf (a :class:`wwjax.core.MatrixSolver`): the operator's per-frequency
    matrices on a ``fft_size``-wide grid, solved together instead of in a shape bucket."""

    fft_size: int

    def __call__(self, value, view: MatrixView, method: str, dtype) -> tuple:
        evals, rank, finite = operator_spectra(value, view, self.fft_size, method, dtype)
        return evals, rank, finite.reshape(-1)


def plan_operator(leaf, opts):
    """The plan hook of ``conv2d_fft``: a conv leaf's "slices" become the operator's frequencies, or it is skipped
    when its kernel does not fit the grid; any other leaf (or the option off) is left as it is."""
    view = leaf.view
    if not opts.conv2d_fft or view.layer_type not in _CONV_TYPES:
        return leaf
    kernel_size = tuple(leaf.info.shape[a] for a in view.slice_axes)
    if max(kernel_size, default=0) > opts.fft_size:
        return f"kernel {kernel_size} larger than the input grid fft_size={opts.fft_size} (raise fft_size)"
    shape = dataclasses.replace(leaf.shape, num_slices=num_frequencies(view, opts.fft_size))
    return dataclasses.replace(leaf, shape=shape, solver=OperatorSolver(opts.fft_size))
