"""The vectorised power-law fit: block-size invariance, recovery of a known exponent, bounded memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wwjax import fit_power_law
from wwjax.core._powerlaw import candidate_fits


def _pareto(n, alpha, seed=0):
    u = np.random.default_rng(seed).uniform(size=n)
    return np.sort((1.0 - u) ** (-1.0 / (alpha - 1.0)))


def _reference_fit(x):
    """A direct, loop-based transcription of WWFit's standard path (n >= 20), for cross-checking."""
    x = np.sort(x)
    n = len(x)
    logs = np.log(x)
    alphas, ds = np.zeros(n - 1), np.ones(n - 1)
    for i in range(n - 1):
        m = n - i
        alphas[i] = 1 + m / (logs[i:].sum() - m * logs[i])
        if alphas[i] > 1:
            ds[i] = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alphas[i]) - np.arange(m) / m))
    best = np.argmin(ds)
    return alphas[best], ds[best], x[best]


@pytest.mark.parametrize("block", [1, 7, 64, 500])
def test_block_size_does_not_change_the_fit(block, x64):
    x = jnp.asarray(_pareto(300, 2.5))
    fits, _, _ = candidate_fits(x, block=block)
    reference, _, _ = candidate_fits(x, block=300)
    np.testing.assert_array_equal(np.asarray(fits.Ds), np.asarray(reference.Ds))


def test_matches_a_loop_transcription_of_wwfit(x64):
    for seed, alpha in enumerate([1.8, 2.5, 4.0]):
        x = _pareto(200, alpha, seed) * 0.01
        fit = fit_power_law(jnp.asarray(x))
        np.testing.assert_allclose([fit.alpha, fit.D, fit.xmin], _reference_fit(x), rtol=1e-9)


def test_recovers_a_known_exponent():
    fit = fit_power_law(jnp.asarray(_pareto(4000, 3.0), jnp.float32))
    assert abs(float(fit.alpha) - 3.0) < 0.15


def test_values_at_or_below_the_threshold_and_clipped_values_are_not_fitted(x64):
    x = _pareto(100, 2.5)
    padded = np.concatenate([np.zeros(50), np.full(10, 1e-6), x])
    a, b = fit_power_law(jnp.asarray(x)), fit_power_law(jnp.asarray(padded))
    np.testing.assert_allclose([a.alpha, a.D, a.xmin], [b.alpha, b.D, b.xmin], rtol=1e-12)
    clipped = fit_power_law(jnp.asarray(x), num_clipped=3)
    np.testing.assert_allclose(clipped.xmax, x[-4])
    np.testing.assert_allclose(clipped.alpha, fit_power_law(jnp.asarray(x[:-3])).alpha, rtol=1e-12)


def test_a_16k_spectrum_is_fitted_in_blocks():
    x = jnp.asarray(_pareto(16384, 2.2), jnp.float32)
    lowered = jax.jit(lambda v: fit_power_law(v, block=64)).lower(x)
    # The largest buffer is one block of candidates against all eigenvalues, not 16384 x 16384.
    memory = lowered.compile().memory_analysis()
    if memory is not None:
        assert memory.temp_size_in_bytes < 64 * 16384 * 4 * 8
    fit = jax.jit(lambda v: fit_power_law(v, block=64))(x)
    assert bool(fit.ok) and abs(float(fit.alpha) - 2.2) < 0.15
