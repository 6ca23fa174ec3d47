"""The exact operator norm of a convolution by FFT (Sedghi, Gupta & Long, "The Singular Values of Convolutional
Layers", ICLR 2019).

A stride-1 convolution with circular padding on an ``n × n`` input is block-circulant: the 2-D DFT diagonalises it
into ``n²`` small ``(in, out)`` matrices ``K̂[p, q] = Σ_{a,b} K[a, b] e^{-2πi(ap + bq)/n}``, one per frequency. The
singular values of the whole ``(n²·in) × (n²·out)`` operator are the union of theirs, so its spectral norm is the
largest ``σ_max(K̂[p, q])``. The same holds in 1-D and 3-D with ``fftn`` over the kernel axes.

For zero ("SAME"/"VALID") padding the circular norm is the standard surrogate (exact up to boundary effects,
which shrink as ``n`` grows); strides and dilation are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jaxtyping import Array, Complex, Float


def conv_frequency_matrices(
    kernel: Float[Array, "*spatial cin cout"], input_size: int | Sequence[int]
) -> Complex[Array, "frequencies cin cout"]:
    """The ``(in, out)`` matrix of every DFT frequency of a convolution kernel on a circular ``input_size`` grid.

    Args:
      kernel: a Flax convolution kernel, spatial axes first (HWIO in 2-D).
      input_size: the spatial size of the layer's input, one int per spatial axis or one for all.

    Example:
      >>> conv_frequency_matrices(jnp.ones((3, 3, 4, 8)), 16).shape
      (256, 4, 8)
    """
    spatial = kernel.shape[:-2]
    sizes = (input_size,) * len(spatial) if isinstance(input_size, int) else tuple(input_size)
    if len(sizes) != len(spatial) or any(n < k for n, k in zip(sizes, spatial)):
        raise ValueError(
            f"input_size {tuple(sizes)} must give one size >= the kernel size per spatial axis of a kernel of "
            f"shape {kernel.shape} (spatial {spatial})"
        )
    axes = tuple(range(len(spatial)))
    transformed = jnp.fft.fftn(kernel, s=sizes, axes=axes)
    return transformed.reshape(-1, *kernel.shape[-2:])


def conv_operator_norm(kernel: Float[Array, "*spatial cin cout"], input_size: int | Sequence[int]) -> Float[Array, ""]:
    """The spectral norm of the stride-1 circular convolution by ``kernel`` on an ``input_size`` input (exact).

    Example:
      A 1×1 convolution is the same matrix at every pixel, so its operator norm is that matrix's:

      >>> w = jnp.array([[3.0, 0.0], [0.0, 1.0]])
      >>> round(float(conv_operator_norm(w[None, None], 8)), 4)
      3.0
    """
    return jnp.max(jnp.linalg.svd(conv_frequency_matrices(kernel, input_size), compute_uv=False))
