"""Mean Spectral Normalization layers for Flax nnx: :class:`MSNLinear` and :class:`MSNConv`.

Each layer holds ``nnx.Param`` ``kernel`` (raw, as trained), ``scale`` and ``bias``, and ``nnx.BatchStat`` ``u``
(the persistent power-iteration vector), ``sigma`` (the last σ_max estimate) and ``mean`` (the running mean).
``model.train()`` / ``model.eval()`` switch them like ``nnx.BatchNorm`` (the ``use_running_average`` attribute);
in evaluation nothing changes and the output is deterministic. Optimise ``nnx.Param`` only
(``nnx.Optimizer(model, tx, wrt=nnx.Param)``): the batch statistics are updated by the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from wwjax.nn._msn import convolve, init_vector, mean_center, spectral_normalize

_default_kernel_init = nnx.initializers.lecun_normal()


class _MeanSpectralNorm(nnx.Module):
    """What MSNLinear and MSNConv share: the state, the normalised kernel, the centering and the affine."""

    def _init_state(self, kernel_shape, features, *, kernel_init, param_dtype, momentum, num_iters, init_iters,
                    use_running_average, axis_name, rngs):
        self.kernel = nnx.Param(kernel_init(rngs.params(), kernel_shape, param_dtype))
        self.scale = nnx.Param(jnp.ones((features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
        start = init_vector(self.kernel[...], init_iters)
        self.u = nnx.BatchStat(start.u)
        self.sigma = nnx.BatchStat(start.sigma)
        self.mean = nnx.BatchStat(jnp.zeros((features,), param_dtype))
        self.momentum = momentum
        self.num_iters = num_iters
        self.use_running_average = use_running_average
        self.axis_name = axis_name

    def _use_running_average(self, value: bool | None) -> bool:
        return self.use_running_average if value is None else value

    def _normalized_kernel(self, use_running_average: bool):
        normalized, fit = spectral_normalize(self.kernel[...], self.u[...], num_iters=self.num_iters)
        if not use_running_average:
            self.u[...] = fit.u
            self.sigma[...] = fit.sigma
        return normalized

    def _center_and_scale(self, y, use_running_average: bool):
        centred, new_mean = mean_center(
            y, self.mean[...], use_running_average=use_running_average, momentum=self.momentum,
            axis_name=self.axis_name,
        )
        if not use_running_average:
            self.mean[...] = new_mean
        return centred * self.scale[...].astype(y.dtype) + self.bias[...].astype(y.dtype)


class MSNLinear(_MeanSpectralNorm):
    """A Linear layer with Mean Spectral Normalization: ``γ·(x·W/σ(W) − μ) + β``.

    Args:
      in_features, out_features: the kernel is ``(in_features, out_features)``.
      use_running_average: start in evaluation mode (``.train()`` / ``.eval()`` switch it; a call may override).
      momentum: of the running mean's EMA.
      num_iters: power iterations per training call (1: the vector carries over between steps).
      init_iters: warm-up iterations at construction.
      axis_name: average the batch mean over this mapped axis.
      rngs: ``nnx.Rngs`` for the kernel initialiser.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> layer = MSNLinear(3, 4, rngs=nnx.Rngs(0))
      >>> y = layer(jnp.ones((8, 3)))  # training mode: the mean and u are updated
      >>> layer.eval()
      >>> bool(jnp.array_equal(layer(jnp.ones((8, 3))), layer(jnp.ones((8, 3)))))
      True
    """

    def __init__(self, in_features: int, out_features: int, *, use_running_average: bool = False,
                 momentum: float = 0.99, num_iters: int = 1, init_iters: int = 15, axis_name: str | None = None,
                 kernel_init: Callable = _default_kernel_init, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self._init_state((in_features, out_features), out_features, kernel_init=kernel_init,
                         param_dtype=param_dtype, momentum=momentum, num_iters=num_iters, init_iters=init_iters,
                         use_running_average=use_running_average, axis_name=axis_name, rngs=rngs)

    def __call__(self, x, use_running_average: bool | None = None):
        use_running_average = self._use_running_average(use_running_average)
        y = jnp.dot(x, self._normalized_kernel(use_running_average).astype(x.dtype))
        return self._center_and_scale(y, use_running_average)


class MSNConv(_MeanSpectralNorm):
    """A convolution (1-D/2-D/3-D, channels last) with Mean Spectral Normalization.

    The kernel is ``(*kernel_size, in_features, out_features)`` as in ``nnx.Conv``, normalised as the
    ``(kernel_size·in, out)`` matrix. Other arguments as in :class:`MSNLinear`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> layer = MSNConv(1, 8, (3, 3), rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 6, 6, 1))).shape
      (2, 6, 6, 8)
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: Sequence[int], *,
                 strides: Sequence[int] | int = 1, padding: str | Sequence[tuple[int, int]] = "SAME",
                 use_running_average: bool = False, momentum: float = 0.99, num_iters: int = 1,
                 init_iters: int = 15, axis_name: str | None = None, kernel_init: Callable = _default_kernel_init,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.strides = strides
        self.padding = padding
        self._init_state((*kernel_size, in_features, out_features), out_features, kernel_init=kernel_init,
                         param_dtype=param_dtype, momentum=momentum, num_iters=num_iters, init_iters=init_iters,
                         use_running_average=use_running_average, axis_name=axis_name, rngs=rngs)

    def __call__(self, x, use_running_average: bool | None = None):
        use_running_average = self._use_running_average(use_running_average)
        y = convolve(x, self._normalized_kernel(use_running_average), self.strides, self.padding)
        return self._center_and_scale(y, use_running_average)
