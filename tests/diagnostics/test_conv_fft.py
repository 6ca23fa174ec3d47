"""conv2d_fft: the conv's spectrum as a linear operator, against the explicit operator matrix of a small conv."""

from __future__ import annotations

import numpy as np
import pytest

import wwjax
from conftest import heavy_tailed


def _dense_operator(kernel: np.ndarray, grid: int) -> np.ndarray:
    """The (grid²·in, grid²·out) matrix of a circularly padded Flax-layout (kh, kw, in, out) cross-correlation."""
    kh, kw, c_in, c_out = kernel.shape
    op = np.zeros((grid, grid, c_in, grid, grid, c_out))
    for p in range(grid):
        for q in range(grid):
            for a in range(kh):
                for b in range(kw):
                    op[(p + a) % grid, (q + b) % grid, :, p, q, :] += kernel[a, b]
    return op.reshape(grid * grid * c_in, grid * grid * c_out)


@pytest.mark.parametrize("svd_method", ["accurate", "fast"])
def test_operator_spectrum_matches_the_dense_operator(svd_method, x64):
    kernel = heavy_tailed(np.random.default_rng(0), (3, 3, 4, 6)).astype(np.float64)
    grid = 5
    expected = np.sort(np.linalg.svd(_dense_operator(kernel, grid), compute_uv=False) ** 2)
    node = wwjax.analyze({"conv": {"kernel": kernel}}, conv2d_fft=True, fft_size=grid, svd_method=svd_method)
    node = node["conv"]["kernel"]
    assert node.num_evals == grid * grid * 4 == expected.size
    np.testing.assert_allclose(np.asarray(node.esd[0]), expected, rtol=1e-9, atol=1e-12 * expected.max())
    # The real part alone (WeightWatcher's FFT mode) is a different spectrum.
    real = np.fft.fft2(kernel, s=(grid, grid), axes=(0, 1)).real.reshape(grid * grid, 4, 6)
    dropped = np.sort(np.concatenate([np.linalg.svd(m, compute_uv=False) ** 2 for m in real]))
    assert not np.allclose(dropped, expected, rtol=1e-3)


def test_operator_rows_per_frequency_and_fit(x64):
    kernel = heavy_tailed(np.random.default_rng(1), (3, 3, 8, 16)).astype(np.float64)
    params = {"conv": {"kernel": kernel}}
    pooled = wwjax.details(wwjax.analyze(params, conv2d_fft=True, fft_size=8))
    per_freq = wwjax.details(wwjax.analyze(params, conv2d_fft=True, fft_size=8, pool=False, min_evals=4))
    assert pooled.num_evals.iloc[0] == 64 * 8 and pooled.status.iloc[0] == "success"
    assert len(per_freq) == 64 and per_freq.slice_id.tolist() == list(range(64))
    # The pooled norm is the sum over frequencies: Parseval, Σ|P(u)|² = grid² · Σ|K|².
    np.testing.assert_allclose(pooled.norm.iloc[0], per_freq.norm.sum(), rtol=1e-10)
    np.testing.assert_allclose(pooled.norm.iloc[0], 64 * np.sum(kernel**2), rtol=1e-10)


def test_grid_smaller_than_kernel_is_skipped_with_the_fix():
    result = wwjax.analyze({"conv": {"kernel": np.ones((5, 5, 8, 8), np.float32)}}, conv2d_fft=True, fft_size=4)
    assert "raise fft_size" in result["conv"]["kernel"].reason
