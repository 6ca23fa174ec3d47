"""Mean Spectral Normalization layers (linen and nnx): σ(W_eff) ≈ 1 after training, running mean → data mean,
deterministic evaluation, and the two front ends computing the same thing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

import wwjax
import wwjax.nn


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = wwjax.nn.linen.MSNConv(6, (3, 3), momentum=0.9)(x, use_running_average=not train)
        x = nn.relu(x).reshape(x.shape[0], -1)
        return wwjax.nn.linen.MSNDense(3, momentum=0.9)(x, use_running_average=not train)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5, 5, 2)).astype(np.float32) + 0.5  # a nonzero mean to centre away
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype(np.int32) + (x[:, 0, 0, 0] > 0.5)
    return jnp.asarray(x), jnp.asarray(y)


def _sigma_max(matrix) -> float:
    return float(np.linalg.svd(np.asarray(matrix, np.float64), compute_uv=False)[0])


def _train_linen(steps: int):
    x, y = _data()
    model = LinenNet()
    variables = model.init(jax.random.key(0), x[:8], train=True)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(3e-2)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, xb, yb):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": stats}, xb, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    losses = []
    for i in range(steps):
        sl = slice((i * 16) % 64, (i * 16) % 64 + 16)
        params, stats, opt_state, loss = step(params, stats, opt_state, x[sl], y[sl])
        losses.append(float(loss))
    return model, params, stats, losses


@pytest.mark.slow
def test_linen_after_training_effective_weights_have_unit_spectral_norm_and_eval_is_deterministic():
    model, params, stats, losses = _train_linen(steps=60)
    assert np.mean(losses[-8:]) < np.mean(losses[:8])  # it learns
    # One warm-started power iteration per step estimates σ_max from below, so the effective weight W/σ has norm
    # >= 1; the excess is power-iteration error, which shrinks like (σ2/σ1)^(2k): tiny for the dense layer
    # (σ2/σ1 ≈ 0.93 here), a few percent for the conv layer whose top two singular values are 5% apart.
    for name, rows, tolerance in (("MSNConv_0", 18, 0.06), ("MSNDense_0", 150, 0.01)):
        kernel = params[name]["kernel"]
        normalized, _ = wwjax.nn.spectral_normalize(kernel, stats[name]["u"])  # what evaluation uses
        effective = _sigma_max(np.asarray(normalized).reshape(rows, -1))
        assert 1.0 - 1e-5 <= effective <= 1.0 + tolerance, (name, effective)
        converged, _ = wwjax.nn.spectral_normalize(kernel, stats[name]["u"], num_iters=500)
        np.testing.assert_allclose(_sigma_max(np.asarray(converged).reshape(rows, -1)), 1.0, rtol=1e-4)
    x, _ = _data(seed=1)
    variables = {"params": params, "batch_stats": stats}
    first, unchanged = model.apply(variables, x, train=False, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, unchanged["batch_stats"], stats)  # eval changes no state
    np.testing.assert_array_equal(model.apply(variables, x, train=False), first)
    # Evaluation treats every example alone (running mean); training centres on the batch's own mean.
    np.testing.assert_allclose(model.apply(variables, x[:5], train=False), first[:5], rtol=1e-5, atol=1e-6)
    train_out, _ = model.apply(variables, x[:5], train=True, mutable=["batch_stats"])
    assert not np.allclose(train_out, first[:5], atol=1e-3)


def test_running_mean_converges_to_the_data_mean():
    layer = wwjax.nn.linen.MSNDense(4, momentum=0.9)
    rng = np.random.default_rng(2)
    data = jnp.asarray(rng.standard_normal((512, 6)).astype(np.float32) * 2.0 + rng.standard_normal(6).astype(np.float32) * 3)
    variables = layer.init(jax.random.key(1), data[:32], use_running_average=False)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)  # init leaves the statistics alone
    apply = jax.jit(lambda v, xb: layer.apply(v, xb, use_running_average=False, mutable=["batch_stats"])[1])
    for epoch in range(8):
        for i in range(16):
            variables = {"params": variables["params"], **apply(variables, data[i * 32 : (i + 1) * 32])}
    kernel = variables["params"]["kernel"] / variables["batch_stats"]["sigma"]
    data_mean = np.asarray(data.mean(0) @ kernel)  # the mean pre-activation over the whole data set
    np.testing.assert_allclose(variables["batch_stats"]["mean"], data_mean, atol=0.15 * np.abs(data_mean).max())
    assert np.abs(data_mean).max() > 1.0  # a mean far from the zero it started at


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = wwjax.nn.nnx.MSNConv(2, 6, (3, 3), momentum=0.9, rngs=rngs)
        self.dense = wwjax.nn.nnx.MSNLinear(150, 3, momentum=0.9, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv(x)).reshape(x.shape[0], -1)
        return self.dense(x)


@pytest.mark.slow
def test_nnx_trains_switches_modes_and_matches_linen():
    x, y = _data()
    model = NnxNet(nnx.Rngs(0))
    # The same math as the linen layers: copy the linen initial variables in and compare a training-mode call.
    linen_vars = LinenNet().init(jax.random.key(0), x[:8], train=True)
    for mine, theirs in ((model.conv, "MSNConv_0"), (model.dense, "MSNDense_0")):
        for name in ("kernel", "scale", "bias"):
            getattr(mine, name)[...] = linen_vars["params"][theirs][name]
        for name in ("u", "sigma", "mean"):
            getattr(mine, name)[...] = linen_vars["batch_stats"][theirs][name]
    linen_out, linen_stats = LinenNet().apply(linen_vars, x[:16], train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(model(x[:16]), linen_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.dense.mean[...], linen_stats["batch_stats"]["MSNDense_0"]["mean"], rtol=1e-5, atol=1e-6)

    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, xb, yb):
        loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()  # noqa: E731
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    for i in range(40):
        sl = slice((i * 16) % 64, (i * 16) % 64 + 16)
        step(model, optimizer, x[sl], y[sl])
    normalized, _ = wwjax.nn.spectral_normalize(model.dense.kernel[...], model.dense.u[...])
    assert 1.0 - 1e-5 <= _sigma_max(normalized) <= 1.02

    model.eval()
    assert model.dense.use_running_average and model.conv.use_running_average
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    out = model(x)
    np.testing.assert_array_equal(model(x), out)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.BatchStat), before)
    model.train()
    model(x)
    assert not np.array_equal(model.dense.mean[...], before["dense"]["mean"])


def test_analyze_reads_msn_models_and_reports_the_statistics_as_skipped():
    model = NnxNet(nnx.Rngs(0))
    table = wwjax.details(wwjax.analyze(model, min_evals=1)).set_index("path")
    assert table.loc["conv/kernel", "layer_type"] == "conv2d" and table.loc["dense/kernel", "layer_type"] == "dense"
    assert table.loc["conv/u", "reason"] == "power-iteration vector"
    assert table.loc["dense/mean", "reason"] == "batch statistic"


def test_convolve_rejects_a_missing_batch_axis():
    layer = wwjax.nn.nnx.MSNConv(2, 4, (3, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="batch"):
        layer(jnp.ones((5, 5, 2)))
