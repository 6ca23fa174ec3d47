"""Flax layers with Mean Spectral Normalization (Subramanian & Chong 2019), for linen and nnx.

``wwjax.nn.linen``: ``MSNDense``, ``MSNConv``; ``wwjax.nn.nnx``: ``MSNLinear``, ``MSNConv``. The pure pieces they
share (:func:`spectral_normalize`, :func:`mean_center`) are here for other frameworks.
"""

from wwjax.nn import linen as linen
from wwjax.nn import nnx as nnx
from wwjax.nn._msn import mean_center as mean_center
from wwjax.nn._msn import spectral_normalize as spectral_normalize

__all__ = ("linen", "mean_center", "nnx", "spectral_normalize")
