"""Mean Spectral Normalization (Subramanian & Chong 2019) as pure functions shared by the linen and nnx layers.

MSN = spectral normalisation of the weight for scale, then mean-only batch centering for location:

1. ``W ← W / σ_max(W)``, σ by power iteration with a persistent ``u`` (Miyato et al. 2018), the kernel read as the
   ``(kernel_size·in, out)`` matrix: rows are every axis but the last. Gradients flow through σ (``u``, ``v``
   constant), as in Miyato's spectral normalisation.
2. ``y ← γ·(y − μ) + β`` per output channel, ``μ`` the batch mean in training (a running mean kept by EMA) and the
   running mean in evaluation. No division by the variance: the scale is already fixed by step 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from wwjax.core._layout import MatrixView, as_matrices
from wwjax.training._power_iteration import PowerIteration, initial_vectors, power_iteration


def kernel_view(ndim: int) -> MatrixView:
    """The matrix a layer kernel is normalised as: every axis but the last are the rows (Miyato's reshape)."""
    return MatrixView(row_axes=tuple(range(ndim - 1)), col_axes=(ndim - 1,))


def init_vector(kernel: Float[Array, "*kernel"], num_iters: int) -> PowerIteration:
    """The deterministic start vector of ``kernel``'s power iteration, warmed up by ``num_iters`` iterations."""
    matrix = as_matrices(kernel, kernel_view(kernel.ndim))[0, 0]
    return power_iteration(matrix, initial_vectors(matrix.shape[:1], matrix.dtype), num_iters=num_iters)


def spectral_normalize(
    kernel: Float[Array, "*kernel"], u: Float[Array, " n"], *, num_iters: int = 1
) -> tuple[Float[Array, "*kernel"], PowerIteration]:
    """``kernel / σ_max`` with σ from ``num_iters`` iterations warm-started at ``u``, and the new ``(σ, u, v)``.

    ``u`` has the length of the long side of the ``(prod(kernel.shape[:-1]), kernel.shape[-1])`` matrix.

    Example:
      >>> import jax.numpy as jnp
      >>> kernel = jnp.array([[2.0, 0.0], [0.0, 1.0]])
      >>> normalized, fit = spectral_normalize(kernel, init_vector(kernel, 10).u)
      >>> round(float(fit.sigma), 4), normalized.tolist()
      (2.0, [[1.0, 0.0], [0.0, 0.5]])
    """
    matrix = as_matrices(kernel, kernel_view(kernel.ndim))[0, 0]
    fit = power_iteration(matrix, u.astype(matrix.dtype), num_iters=num_iters)
    return kernel / fit.sigma.astype(kernel.dtype), fit


def mean_center(
    y: Float[Array, "*batch features"],
    running_mean: Float[Array, " features"],
    *,
    use_running_average: bool,
    momentum: float,
    axis_name: str | None = None,
) -> tuple[Float[Array, "*batch features"], Float[Array, " features"]]:
    """Subtracts the per-channel mean over every axis but the last: the batch's (training) or the running one.

    Returns the centred ``y`` and the running mean to store (``momentum·old + (1 − momentum)·batch mean``; the old
    one unchanged in evaluation). ``axis_name`` averages the batch mean over a mapped axis (data parallelism).

    Example:
      >>> import jax.numpy as jnp
      >>> y = jnp.array([[1.0, 10.0], [3.0, 20.0]])
      >>> centred, mean = mean_center(y, jnp.zeros(2), use_running_average=False, momentum=0.9)
      >>> centred.tolist(), [round(float(m), 4) for m in mean]
      ([[-1.0, -5.0], [1.0, 5.0]], [0.2, 1.5])
    """
    if use_running_average:
        return y - running_mean.astype(y.dtype), running_mean
    mean = jnp.mean(y, axis=tuple(range(y.ndim - 1)))
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    new_mean = momentum * running_mean + (1.0 - momentum) * jax.lax.stop_gradient(mean).astype(running_mean.dtype)
    return y - mean, new_mean


def convolve(
    x: Float[Array, "batch *spatial cin"],
    kernel: Float[Array, "*kernel cin cout"],
    strides: Sequence[int] | int = 1,
    padding: str | Sequence[tuple[int, int]] = "SAME",
) -> Float[Array, "batch *spatial_out cout"]:
    """A channels-last convolution with a Flax (``*kernel_size, in, out``) kernel, in 1-D, 2-D or 3-D."""
    d = kernel.ndim - 2
    if not 1 <= d <= 3 or x.ndim != d + 2:
        raise ValueError(
            f"MSN convolution takes a (batch, *spatial, channels) input with {d} spatial axes for a kernel of shape "
            f"{kernel.shape}; got an input of shape {x.shape}"
        )
    spatial = "DHW"[3 - d :]
    strides = (strides,) * d if isinstance(strides, int) else tuple(strides)
    return jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=strides,
        padding=padding,
        dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
    )
