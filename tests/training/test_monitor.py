"""``spectral_metrics`` (α, log spectral norm per layer) and the ``monitor_spectra`` optax transform."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wwjax
from conftest import heavy_tailed


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "Conv_0": {"kernel": jnp.asarray(heavy_tailed(rng, (3, 3, 8, 16))), "bias": jnp.zeros(16)},
        "Dense_0": {"kernel": jnp.asarray(heavy_tailed(rng, (64, 48)))},
    }


def test_spectral_metrics_are_analyzes_columns_jitted_or_not():
    params = _params()
    table = wwjax.details(wwjax.analyze(params)).set_index("path")
    for metrics in (wwjax.spectral_metrics(params), jax.jit(wwjax.spectral_metrics)(params)):
        assert sorted(metrics.alpha) == ["Conv_0/kernel", "Dense_0/kernel"]
        for path in metrics.alpha:
            np.testing.assert_allclose(metrics.alpha[path][0], table.loc[path, "alpha"], rtol=1e-5)
            np.testing.assert_allclose(metrics.log_spectral_norm[path][0], table.loc[path, "log_spectral_norm"], rtol=1e-6)
        np.testing.assert_allclose(metrics.mean_alpha, table.alpha.dropna().mean(), rtol=1e-5)
    only_dense = wwjax.spectral_metrics(params, layers="dense")
    assert list(only_dense.alpha) == ["Dense_0/kernel"]


def test_monitor_keeps_the_metrics_of_every_kth_step_and_leaves_updates_alone():
    params = _params(1)
    every = 3
    tx = optax.chain(optax.sgd(0.05), wwjax.monitor_spectra(every))
    plain = optax.sgd(0.05)
    state, plain_state = tx.init(params), plain.init(params)

    @functools.partial(jax.jit, donate_argnums=(1,))  # donating the optimizer state, as training loops do
    def step(params, state, plain_state):
        grads = jax.grad(lambda p: sum(jnp.sum(jnp.tanh(x) ** 2) for x in jax.tree.leaves(p)))(params)
        updates, state = tx.update(grads, state, params)
        plain_updates, plain_state = plain.update(grads, plain_state, params)
        return optax.apply_updates(params, updates), state, updates, plain_updates

    history = [params]
    for _ in range(7):
        params, state, updates, plain_updates = step(params, state, plain_state)
        jax.tree.map(np.testing.assert_array_equal, updates, plain_updates)
        history.append(params)
    measured_at = int(optax.tree.get(state, "measured_at"))
    assert measured_at == 6 and int(optax.tree.get(state, "count")) == 7
    # update number 6 saw the params after 5 updates
    expected = wwjax.spectral_metrics(history[measured_at - 1])
    metrics = optax.tree.get(state, "metrics")
    for path in expected.alpha:
        np.testing.assert_allclose(metrics.alpha[path], expected.alpha[path], rtol=1e-5)
        np.testing.assert_allclose(metrics.log_spectral_norm[path], expected.log_spectral_norm[path], rtol=1e-6)
    stale = wwjax.spectral_metrics(history[-2])  # the last step was not due: its params are not what is kept
    assert not np.allclose(metrics.log_spectral_norm["Dense_0/kernel"], stale.log_spectral_norm["Dense_0/kernel"], rtol=1e-7, atol=0)


def test_monitor_checks_its_arguments():
    with pytest.raises(ValueError, match="every"):
        wwjax.monitor_spectra(0)
    tx = wwjax.monitor_spectra(2)
    with pytest.raises(ValueError, match="params"):
        tx.update({}, tx.init(_params()))


def test_spectral_metrics_with_a_hill_rule_is_the_analysis_with_that_row_fit():
    """``spectral_metrics(xmin=r)`` is ``analyze(xmin=r)``'s α (one fit of each row), equal to the published
    fixed-xmin Hill estimator on the row's ESD."""
    from conftest import reference_hill_fit

    rng = np.random.default_rng(3)
    params = {"Dense_0": {"kernel": rng.standard_t(3, (120, 60)).astype(np.float32)},
              "Dense_1": {"kernel": rng.standard_t(3, (60, 40)).astype(np.float32)}}
    metrics = wwjax.spectral_metrics(params, xmin="median")
    result = wwjax.analyze(params, xmin="median")
    for name in params:
        node = result[name]["kernel"]
        np.testing.assert_array_equal(metrics.alpha[f"{name}/kernel"], node.alpha)
        expected, _ = reference_hill_fit(np.asarray(node.esd[0], np.float64), "median")
        np.testing.assert_allclose(float(node.alpha[0]), expected, rtol=1e-4)  # float32 ESD, float64 reference
    assert float(metrics.mean_alpha) == pytest.approx(np.mean([float(metrics.alpha[p][0]) for p in metrics.alpha]))
    assert float(metrics.mean_alpha) < float(wwjax.spectral_metrics(params).mean_alpha)  # median-Hill α is the lower
