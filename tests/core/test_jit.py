"""``analyze`` is a pure function: it runs under ``jax.jit`` and inside a training step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import wwjax
from conftest import heavy_tailed


def _params():
    rng = np.random.default_rng(0)
    return {
        "Dense_0": {"kernel": jnp.asarray(heavy_tailed(rng, (64, 48))), "bias": jnp.zeros(48)},
        "Conv_0": {"kernel": jnp.asarray(heavy_tailed(rng, (3, 3, 8, 16)))},
    }


def test_jit_gives_the_same_result():
    params = _params()
    eager = wwjax.details(wwjax.analyze(params))
    jitted = wwjax.details(jax.jit(wwjax.analyze)(params))
    pd_cols = ["alpha", "D", "xmin", "lambda_max", "entropy", "stable_rank"]
    np.testing.assert_allclose(jitted[pd_cols].to_numpy(float), eager[pd_cols].to_numpy(float), rtol=1e-6)
    assert list(jitted.status) == list(eager.status)
    with_options = jax.jit(functools.partial(wwjax.analyze, pool=False, min_evals=4))(params)
    assert len(wwjax.details(with_options)) == 1 + 9 + 1


def test_metrics_inside_a_jitted_train_step():
    params = _params()
    tx = optax.sgd(1e-2)

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: jnp.sum(p["Dense_0"]["kernel"] ** 2))(params)
        updates, opt_state = tx.update(grads, opt_state)
        result = wwjax.analyze(params)
        monitor = {"mean_alpha": wwjax.summary(result)["alpha"],
                   "dense_alpha": result["Dense_0"]["kernel"].alpha[0]}
        return optax.apply_updates(params, updates), opt_state, monitor

    _, _, monitor = step(params, tx.init(params))
    expected = wwjax.analyze(params)
    np.testing.assert_allclose(monitor["dense_alpha"], expected["Dense_0"]["kernel"].alpha[0], rtol=1e-6)
    np.testing.assert_allclose(monitor["mean_alpha"], wwjax.summary(expected)["alpha"], rtol=1e-6)
