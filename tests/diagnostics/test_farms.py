"""FARMS: the window plan against a transcription of the reference code, the windows and their pooled spectra
against NumPy, and the removal of the aspect-ratio bias on i.i.d. matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wwjax.core._layout import MatrixView
from wwjax.core._powerlaw import fit_power_law
from wwjax.core._spectra import rank_tolerance
from wwjax.diagnostics._farms import (
    FarmsPlan,
    check_farms_options,
    farms_alpha,
    farms_matrices,
    farms_spectra,
    farms_windows,
)

DENSE = MatrixView((0,), (1,))


def reference_starts(length: int, window: int, per_dim: int) -> list[int]:
    """The window starts of the authors' ``fixed_sampling`` along one dimension, transcribed loop for loop."""
    step = max(1, (length - window) // (per_dim - 1)) if per_dim > 1 else 1
    count = min(per_dim, max(1, (length - window) // step + 1))
    return [min(i * step, length - window) for i in range(count)]


@pytest.mark.parametrize(
    "N, M, window, per_dim", [(1024, 256, 100, 9), (300, 120, 100, 3), (100, 100, 100, 9), (4096, 4096, 2000, 15),
                              (150, 101, 100, 9), (512, 512, 64, 1)]
)
def test_window_starts_follow_the_reference(N, M, window, per_dim):  # noqa: N803
    plan = farms_windows(N, M, window_size=window, windows_per_dim=per_dim)
    assert (plan.rows, plan.cols) == (window, window)
    assert list(plan.row_starts) == reference_starts(N, window, per_dim)
    assert list(plan.col_starts) == reference_starts(M, window, per_dim)
    assert plan.row_starts[-1] + plan.rows <= N and plan.col_starts[-1] + plan.cols <= M


def test_small_matrix_keeps_the_aspect_ratio():
    plan = farms_windows(64, 40, window_size=100, aspect_ratio=1.0)
    assert (plan.rows, plan.cols) == (40, 40)
    plan = farms_windows(64, 40, window_size=100, aspect_ratio=2.0)
    assert (plan.rows, plan.cols) == (64, 32)  # the window shrinks to fit: 32 = 64 // 2
    plan = farms_windows(1000, 400, window_size=100, aspect_ratio=2.5)
    assert (plan.rows, plan.cols) == (250, 100)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"window_size": 0}, ValueError, "window_size must be a positive int"),
        ({"window_size": 10.5}, TypeError, "window_size must be an int"),
        ({"aspect_ratio": 0.5}, ValueError, "pass 1/aspect_ratio"),
        ({"windows_per_dim": 0}, ValueError, "windows_per_dim must be >= 1"),
    ],
)
def test_bad_options_say_what_to_change(options, error, message):
    with pytest.raises(error, match=message):
        check_farms_options(**options)


def test_windows_are_the_numpy_slices():
    rng = np.random.default_rng(0)
    mats = rng.normal(size=(2, 3, 50, 30)).astype(np.float32)
    plan = farms_windows(50, 30, window_size=20, windows_per_dim=4)
    windows = np.asarray(jax.jit(farms_matrices, static_argnums=1)(jnp.asarray(mats), plan))
    assert windows.shape == (2, 3 * plan.num_windows, 20, 20)
    expected = [
        [mats[layer, s, r : r + 20, c : c + 20] for s in range(3) for r in plan.row_starts for c in plan.col_starts]
        for layer in range(2)
    ]
    np.testing.assert_array_equal(windows, np.asarray(expected))


def test_windows_are_one_gather():
    plan = FarmsPlan(16, 16, tuple(range(0, 49, 6)), tuple(range(0, 17, 2)))
    jaxpr = jax.make_jaxpr(lambda m: farms_matrices(m, plan))(jnp.zeros((2, 1, 64, 32)))
    primitives = [eqn.primitive.name for eqn in jaxpr.jaxpr.eqns]
    assert primitives.count("gather") == 1 and "while" not in primitives and "scan" not in primitives


def test_pooled_spectra_match_numpy_svd_of_each_window(x64):
    rng = np.random.default_rng(1)
    conv = rng.standard_t(3.0, size=(3, 3, 24, 70))  # Flax HWIO: 9 kernel positions of (70, 24) after orientation
    view = MatrixView((2,), (3,), slice_axes=(0, 1), layer_type="conv2d")
    esd = np.asarray(farms_spectra(conv, view, window_size=16, windows_per_dim=3))
    plan = farms_windows(70, 24, window_size=16, windows_per_dim=3)
    expected = []
    for i in range(3):
        for j in range(3):
            w = conv[i, j].T  # (70, 24): long side first
            for r in plan.row_starts:
                for c in plan.col_starts:
                    expected.append(np.linalg.svd(w[r : r + 16, c : c + 16], compute_uv=False) ** 2)
    expected = np.sort(np.concatenate(expected))
    assert esd.shape == (1, 9 * plan.num_windows * 16)
    np.testing.assert_allclose(esd[0], expected, rtol=1e-10, atol=1e-12)


def test_stacked_leaf_gives_one_row_per_layer(x64):
    rng = np.random.default_rng(2)
    stacked = rng.normal(size=(3, 60, 200))
    view = MatrixView((1,), (2,), layer_axes=(0,))
    esd = np.asarray(farms_spectra(stacked, view, window_size=40, windows_per_dim=2))
    for layer in range(3):
        alone = np.asarray(farms_spectra(stacked[layer], DENSE, window_size=40, windows_per_dim=2))[0]
        np.testing.assert_allclose(esd[layer], alone, rtol=1e-12)


@pytest.mark.slow  # two compilations of the KS scan
def test_fit_is_the_engine_fit_on_the_pooled_row(x64):
    w = np.random.default_rng(3).standard_t(3.0, size=(256, 128))
    fit = farms_alpha(w, DENSE, window_size=64, windows_per_dim=3)
    esd = farms_spectra(w, DENSE, window_size=64, windows_per_dim=3)[0]
    direct = jax.jit(fit_power_law)(esd, 0, esd[-1] * rank_tolerance("svd", 64, 64, esd.dtype))
    assert float(fit.alpha[0]) == pytest.approx(float(direct.alpha), rel=1e-12)
    assert float(fit.xmin[0]) == pytest.approx(float(direct.xmin), rel=1e-12)


def median_hill_alpha(esd) -> float:
    """Hill's α with xmin at the median eigenvalue, as the FARMS reference code fits its image-classification runs
    (TempBalance's ``xmin_mid`` with ``xmin_pos=2``), transcribed to NumPy."""
    esd = np.sort(np.asarray(esd, np.float64))
    i = len(esd) // 2
    n = len(esd) - i
    return 1.0 + n / (np.sum(np.log(esd[i:])) - n * np.log(esd[i]))


def test_farms_removes_the_aspect_ratio_bias_of_gaussian_matrices():
    """Median-Hill α of i.i.d. Gaussian matrices grows with Q (about 2.2 at Q=1, 5.9 at Q=16 for M=64); on the
    FARMS ESD (square 32×32 windows, each an i.i.d. square matrix whatever Q is) it stays at 2.1 for both."""
    m, plain, farms = 64, {}, {}
    for q in (1, 16):
        plain[q], farms[q] = [], []
        for seed in range(3):
            w = np.random.default_rng(seed).normal(size=(q * m, m)) / np.sqrt(q * m)
            plain[q].append(median_hill_alpha(np.linalg.svd(w, compute_uv=False) ** 2))
            farms[q].append(median_hill_alpha(farms_spectra(w.astype(np.float32), DENSE, window_size=32)[0]))
    assert np.mean(plain[16]) - np.mean(plain[1]) > 3.0
    assert abs(np.mean(farms[16]) - np.mean(farms[1])) < 0.1
