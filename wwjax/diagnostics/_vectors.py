"""Eigenvector localisation (``vectors=True``): how spread out the eigenvectors of WᵀW are, bulk against tail.

For each matrix, ``eigh`` of its ``M × M`` Gram matrix gives M unit eigenvectors v (WeightWatcher runs a general,
non-symmetric ``eig``). Per eigenvector:

* ``vec_entropy``: the discrete entropy of a 100-bin density histogram of ``|v| - mean|v|``
  (``p = (h + 1e-10)/√(2π)``, normalised, ``-Σ p ln p``);
* ``loc_ratio``: ``‖v‖₁ / ‖v‖∞``;
* ``part_ratio``: ``‖v‖₂ / ‖v‖₄``.

The eigenvectors of the ``num_tail`` largest eigenvalues (those ≥ the power-law ``xmin`` in the ESD) are the
*tail*, the others the *bulk* (split by rank, so that an eigenvalue equal to ``xmin`` cannot change sides with the
rounding of a second eigen-solve); the
columns are ``{bulk,tail}_{mean,var}_{vec_entropy,loc_ratio,part_ratio}`` (variance with ddof 0). A conv layer's
kernel positions are pooled (or one row each with ``pool=False``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from wwjax.diagnostics._conv_fft import frequency_matrices
from wwjax.core._layout import MatrixView, as_matrices

ENTROPY_BINS = 100
ENTROPY_EPSILON = 1e-10
VECTOR_METRICS = ("vec_entropy", "loc_ratio", "part_ratio")


def discrete_entropy(vector: Float[Array, " m"], bins: int = ENTROPY_BINS) -> Float[Array, ""]:
    """WeightWatcher's ``discrete_entropy`` of one vector (histogram bins as ``numpy.histogram``).

    Example:
      >>> import jax.numpy as jnp
      >>> round(float(discrete_entropy(jnp.array([1.0, 0.0, 0.0, 0.0]))), 4)
      0.5623
    """
    x = jnp.abs(vector)
    x = x - jnp.mean(x)
    lo, hi = jnp.min(x), jnp.max(x)
    lo, hi = jnp.where(hi > lo, lo, lo - 0.5), jnp.where(hi > lo, hi, hi + 0.5)
    edges = jnp.linspace(lo, hi, bins + 1)
    index = jnp.clip(((x - lo) * (bins / (hi - lo))).astype(jnp.int32), 0, bins - 1)
    index = jnp.where(x < edges[index], index - 1, index)
    index = jnp.where((x >= edges[index + 1]) & (index != bins - 1), index + 1, index)
    counts = jnp.zeros(bins, x.dtype).at[index].add(1.0)
    density = counts / (x.shape[0] * jnp.diff(edges))
    p = (density + ENTROPY_EPSILON) / jnp.sqrt(2.0 * jnp.pi)
    p = p / jnp.sum(p)
    return -jnp.sum(p * jnp.log(p))


def vector_metrics(vectors: Float[Array, "m k"]) -> dict[str, Float[Array, " k"]]:
    """``vec_entropy``, ``loc_ratio`` and ``part_ratio`` of every column of ``vectors``.

    Example:
      >>> import jax.numpy as jnp
      >>> out = vector_metrics(jnp.eye(4))
      >>> out["loc_ratio"].tolist(), out["part_ratio"].tolist()
      ([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0])
    """
    a = jnp.abs(vectors)
    l2 = jnp.sqrt(jnp.sum(a * a, axis=0))
    return dict(
        vec_entropy=jax.vmap(discrete_entropy, in_axes=1)(vectors),
        loc_ratio=jnp.sum(a, axis=0) / jnp.max(a, axis=0),
        part_ratio=l2 / jnp.sum(a**4, axis=0) ** 0.25,
    )


def _matrix_vector_metrics(matrix):
    gram = jnp.einsum("nm,nk->mk", matrix.conj(), matrix, precision=jax.lax.Precision.HIGHEST)
    evals, vecs = jnp.linalg.eigh(gram)
    return evals.real, vector_metrics(vecs)


@functools.partial(jax.jit, static_argnames=("view", "scale", "pool", "fft_size", "dtype"))
def _leaf_vectors(value, num_tail, *, view: MatrixView, scale: float, pool: bool, fft_size: int, dtype):
    leaf = value.astype(dtype)
    mats = frequency_matrices(leaf, view, fft_size) if fft_size else as_matrices(leaf, view)
    L, K = mats.shape[:2]
    evals, metrics = jax.lax.map(_matrix_vector_metrics, mats.reshape(-1, *mats.shape[-2:]))
    rows = L if pool else L * K
    evals = evals.reshape(rows, -1) * scale
    rank = jnp.argsort(jnp.argsort(evals, axis=1), axis=1)  # 0 = smallest
    tail = rank >= evals.shape[1] - num_tail[:, None]
    bulk = ~tail & (num_tail[:, None] >= 0)
    out = {}
    for name in VECTOR_METRICS:
        values = metrics[name].reshape(rows, -1)
        for part, mask in (("bulk", bulk), ("tail", tail)):
            count = jnp.sum(mask, axis=1)
            mean = jnp.sum(jnp.where(mask, values, 0.0), axis=1) / count
            var = jnp.sum(jnp.where(mask, (values - mean[:, None]) ** 2, 0.0), axis=1) / count
            out[f"{part}_mean_{name}"] = mean
            out[f"{part}_var_{name}"] = var
    return out


def leaf_vector_metrics(
    value, view: MatrixView, *, scale: float, num_tail: Int[Array, " rows"], pool: bool, fft_size: int = 0,
    method: str = "gram",
) -> dict[str, Float[Array, " rows"]]:
    """The 12 bulk/tail eigenvector columns of one leaf's rows (NaN where a part is empty; ``num_tail < 0``: no fit).

    Args:
      value: the leaf (any float dtype).
      view: its matrix view.
      scale: the factor its eigenvalues were scaled by (``conv2d_norm``), so they compare with ``xmin``.
      num_tail: per row, how many of the largest eigenvalues are the tail (``-1``: the fit failed).
      pool: one row per layer (kernel positions pooled) or per kernel position.
      fft_size: the input grid of ``conv2d_fft`` (0: the kernel positions themselves).
      method: unused; the eigenvectors always come from ``eigh`` of the Gram matrix.

    Example:
      >>> import numpy as np, jax.numpy as jnp
      >>> w = np.random.default_rng(0).normal(size=(40, 20))
      >>> out = leaf_vector_metrics(w, MatrixView((0,), (1,)), scale=1.0, num_tail=jnp.array([0]), pool=True)
      >>> bool(out["bulk_mean_loc_ratio"][0] > 1.0), bool(jnp.isnan(out["tail_mean_loc_ratio"][0]))
      (True, True)
    """
    del method
    from wwjax.core._spectra import compute_dtype

    dtype = compute_dtype(None)
    return _leaf_vectors(
        jnp.asarray(value), jnp.asarray(num_tail), view=view, scale=float(scale), pool=pool, fft_size=fft_size,
        dtype=dtype,
    )
