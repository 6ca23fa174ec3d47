"""Mean Spectral Normalization layers for Flax linen: :class:`MSNDense` and :class:`MSNConv`.

Each layer holds ``params`` ``kernel`` (raw, as trained), ``scale`` and ``bias`` (per output channel), and
``batch_stats`` ``u`` (the persistent power-iteration vector), ``sigma`` (the last σ_max estimate) and ``mean``
(the running mean). As with ``nn.BatchNorm``: pass ``use_running_average=False`` and ``mutable=['batch_stats']``
in training, ``use_running_average=True`` in evaluation (nothing changes then, and the output is deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from wwjax.nn._msn import convolve, init_vector, mean_center, spectral_normalize


class _MeanSpectralNorm(nn.Module):
    """What MSNDense and MSNConv share: the normalised kernel, the centering and the per-channel affine."""

    def _normalized_kernel(self, kernel, use_running_average: bool):
        start = None if self.has_variable("batch_stats", "u") else init_vector(kernel, self.init_iters)
        u = self.variable("batch_stats", "u", lambda: start.u)
        sigma = self.variable("batch_stats", "sigma", lambda: start.sigma)
        normalized, fit = spectral_normalize(kernel, u.value, num_iters=self.num_iters)
        if not use_running_average and not self.is_initializing():
            u.value, sigma.value = fit.u, fit.sigma
        return normalized

    def _center_and_scale(self, y, use_running_average: bool):
        features = y.shape[-1]
        running = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), self.param_dtype))
        centred, new_mean = mean_center(
            y, running.value, use_running_average=use_running_average, momentum=self.momentum,
            axis_name=self.axis_name,
        )
        if not use_running_average and not self.is_initializing():
            running.value = new_mean
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
        return centred * scale.astype(y.dtype) + bias.astype(y.dtype)


class MSNDense(_MeanSpectralNorm):
    """A Dense layer with Mean Spectral Normalization: ``γ·(x·W/σ(W) − μ) + β``.

    Attributes:
      features: output features.
      use_running_average: evaluation mode (running mean, no state change); may be given at call time instead.
      momentum: of the running mean's EMA.
      num_iters: power iterations per training call (1: the vector carries over between steps).
      init_iters: warm-up iterations at initialisation.
      axis_name: average the batch mean over this mapped axis (data parallelism).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = MSNDense(4)
      >>> variables = layer.init(jax.random.key(0), jnp.ones((8, 3)), use_running_average=False)
      >>> y, updates = layer.apply(variables, jnp.ones((8, 3)), use_running_average=False, mutable=["batch_stats"])
      >>> y.shape, sorted(updates["batch_stats"])
      ((8, 4), ['mean', 'sigma', 'u'])
    """

    features: int
    use_running_average: bool | None = None
    momentum: float = 0.99
    num_iters: int = 1
    init_iters: int = 15
    axis_name: str | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        y = jnp.dot(x, self._normalized_kernel(kernel, use_running_average).astype(x.dtype))
        return self._center_and_scale(y, use_running_average)


class MSNConv(_MeanSpectralNorm):
    """A convolution (1-D/2-D/3-D, channels last) with Mean Spectral Normalization.

    The kernel is ``(*kernel_size, in, out)`` as in ``nn.Conv`` and is normalised as the ``(kernel_size·in, out)``
    matrix (Miyato's reshape). Other attributes as in :class:`MSNDense`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> layer = MSNConv(8, (3, 3))
      >>> x = jnp.ones((2, 6, 6, 1))
      >>> variables = layer.init(jax.random.key(0), x, use_running_average=False)
      >>> layer.apply(variables, x, use_running_average=True).shape
      (2, 6, 6, 8)
    """

    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] | int = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_running_average: bool | None = None
    momentum: float = 0.99
    num_iters: int = 1
    init_iters: int = 15
    axis_name: str | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_running_average = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        y = convolve(x, self._normalized_kernel(kernel, use_running_average), self.strides, self.padding)
        return self._center_and_scale(y, use_running_average)
