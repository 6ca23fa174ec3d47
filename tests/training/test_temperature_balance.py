"""TempBalance as an optax transform: the α → factor maps, the per-layer scaling, re-measuring, checkpointing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wwjax.training._temperature_balance import TemperatureBalanceState, temperature_balance, temperature_factors


def test_factor_maps_against_hand_computed_values():
    alpha = jnp.array([2.0, 5.0, 3.0, jnp.nan])
    np.testing.assert_allclose(temperature_factors(alpha, "linear"), [0.5, 1.5, 0.5 + 1 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(temperature_factors(alpha, "linear", 0.2, 1.0), [0.2, 1.0, 0.2 + 0.8 / 3, 1.0],
                               rtol=1e-6)
    s = np.sqrt([2.0, 5.0, 3.0])
    np.testing.assert_allclose(temperature_factors(alpha, "sqrt"), list(s / s.sum() * 3) + [1.0], rtol=1e-6)
    l2 = np.log2([2.0, 5.0, 3.0])
    np.testing.assert_allclose(temperature_factors(alpha, "log2"), list(l2 / l2.sum() * 3) + [1.0], rtol=1e-6)
    np.testing.assert_allclose(temperature_factors(alpha, "step"), [0.5, 0.5 + 2 / 3, 0.5 + 1 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(temperature_factors(jnp.array([3.0, 3.0]), "linear"), [1.0, 1.0])
    with pytest.raises(ValueError, match="assign must be one of"):
        temperature_factors(alpha, "tanh")


def _cnn_like_params():
    rng = np.random.default_rng(0)
    params = {f"Dense_{i}": {"kernel": rng.standard_t(2.0 + i, (96, 48)).astype("float32"),
                             "bias": np.zeros(48, "float32")} for i in range(5)}
    params["BatchNorm_2"] = {"scale": np.ones(48, "float32"), "bias": np.zeros(48, "float32")}
    params["LayerNorm_9"] = {"scale": np.ones(48, "float32")}  # no Dense_9: not balanced
    return params


@pytest.mark.slow
def test_transform_equals_hand_written_per_layer_scaling():
    params = _cnn_like_params()
    tx = temperature_balance(every=1000)
    state = tx.init(params)
    assert isinstance(state, TemperatureBalanceState)
    assert sorted(state.factor) == ["Dense_1/kernel", "Dense_2/kernel", "Dense_3/kernel"]  # first, last excluded
    # By hand: np.interp of the three balanced layers' α onto [0.5, 1.5], as the published get_layer_temps.
    alpha = np.array([float(state.alpha[f"Dense_{i}/kernel"]) for i in (1, 2, 3)])
    want = np.interp(alpha, [alpha.min(), alpha.max()], [0.5, 1.5])
    grads = jax.tree.map(lambda x: np.full_like(x, 2.0), params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    for k, i in enumerate((1, 2, 3)):
        np.testing.assert_allclose(updates[f"Dense_{i}"]["kernel"], 2.0 * want[k], rtol=1e-6)
        np.testing.assert_allclose(updates[f"Dense_{i}"]["bias"], 2.0 * want[k], rtol=1e-6)  # the bias follows
    np.testing.assert_allclose(updates["BatchNorm_2"]["scale"], 2.0 * want[1], rtol=1e-6)  # BatchNorm_2 → Dense_2
    for untouched in (updates["Dense_0"]["kernel"], updates["Dense_4"]["bias"], updates["LayerNorm_9"]["scale"]):
        np.testing.assert_array_equal(untouched, 2.0)
    # follow= overrides the default: nothing follows.
    updates, _ = jax.jit(temperature_balance(every=1000, follow={}).update)(grads, state, params)
    np.testing.assert_array_equal(updates["Dense_1"]["bias"], 2.0)


@pytest.mark.slow
def test_remeasures_every_k_steps_inside_jit_and_checkpoints(tmp_path):
    params = _cnn_like_params()
    tx = optax.chain(optax.sgd(0.05), temperature_balance(every=2, xmin="peak", exclude_first=False))
    state = tx.init(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    rng = np.random.default_rng(1)
    alphas = []
    for _ in range(4):
        grads = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), params)
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        alphas.append(float(state[1].alpha["Dense_1/kernel"]))
    assert int(state[1].measured_at) == 4 and int(state[1].count) == 4
    assert alphas[0] != alphas[1] and alphas[1] == alphas[2]  # measured at steps 2 and 4 only
    assert "Dense_0/kernel" in state[1].factor

    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "state", state)
    restored = ocp.StandardCheckpointer().restore(tmp_path / "state", state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(got, want)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="every must be"):
        temperature_balance(every=0)
    with pytest.raises(ValueError, match="assign must be one of"):
        temperature_balance(every=1, assign="cosine")
    state = TemperatureBalanceState(count=jnp.zeros((), jnp.int32), measured_at=jnp.zeros((), jnp.int32), alpha={},
                                    factor={})
    with pytest.raises(ValueError, match="measures the params"):
        temperature_balance(every=1).update(_cnn_like_params(), state)
