"""``analyze(lora=True)``: adapters analysed as ΔW from their r×r core, reported at paths of their own."""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

import wwjax


def _dense_row(matrix, **options):
    return wwjax.analyze({"d": {"kernel": matrix}}, min_evals=0, **options)["d"]["kernel"]


def _nnx_state(rank: int):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.first = nnx.LoRALinear(16, 48, lora_rank=rank, rngs=rngs)
            self.second = nnx.LoRA(48, rank, 24, rngs=rngs)

    model = Net(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for layer in (model.first.lora, model.second):  # b starts at zero: give it values, as training would
        layer.lora_b[...] = rng.standard_t(3, layer.lora_b[...].shape).astype(np.float32)
    return nnx.state(model)


@pytest.mark.slow
def test_nnx_adapters_equal_the_dense_delta(x64):
    state = _nnx_state(rank=10)
    result = wwjax.analyze(state, lora=True)
    first = result["first"]["lora"]
    assert first["lora_a"].reason.startswith("LoRA factor (rank 10): analysed as first/lora/lora_delta")
    assert first["lora_b"].reason == first["lora_a"].reason
    assert hasattr(result["first"]["kernel"], "alpha")  # the frozen base is analysed as it is
    for path, lora in (("first/lora", state["first"]["lora"]), ("second", state["second"])):
        a, b = (np.asarray(lora[k][...], np.float64) for k in ("lora_a", "lora_b"))
        m = functools.reduce(lambda node, key: node[key], path.split("/"), result)["lora_delta"]
        dense = _dense_row(a @ b)
        assert (m.N, m.M, m.num_evals) == (10, 10, 10)
        np.testing.assert_allclose(m.esd[0], dense.esd[0, -10:], rtol=0, atol=1e-10 * dense.esd.max())
        np.testing.assert_allclose(m.alpha, dense.alpha, rtol=1e-10)  # the fit sees the same nonzero eigenvalues
    # the two adapters' 10×10 cores are one bucket
    assert result["first"]["lora"]["lora_delta"].path == "first/lora/lora_delta"


@pytest.mark.slow
def test_rank_under_min_evals_is_skipped_with_the_fix():
    result = wwjax.analyze(_nnx_state(rank=4), lora=True)
    assert "min_evals" in result["second"]["lora_delta"].reason
    assert "lower min_evals" in result["second"]["lora_delta"].reason


@pytest.mark.slow
def test_peft_names_merged_and_named_pairs(x64):
    rng = np.random.default_rng(1)
    base, a, b = rng.normal(size=(40, 30)), rng.normal(size=(9, 30)), rng.normal(size=(40, 9))  # PyTorch (out, in)
    prefix = "model.layers.0.q_proj"
    params = {f"{prefix}.base_layer.weight": base, f"{prefix}.lora_A.default.weight": a,
              f"{prefix}.lora_B.default.weight": b}
    result = wwjax.analyze(params, lora=True, lora_merged=True, lora_scale=0.5)
    delta, merged = result[f"{prefix}.lora_delta.default.weight"], result[f"{prefix}.lora_merged.default.weight"]
    dense = _dense_row(b @ a)
    np.testing.assert_allclose(delta.esd[0], dense.esd[0, -9:], rtol=0, atol=1e-10 * dense.esd.max())
    np.testing.assert_allclose(merged.alpha, _dense_row(base + 0.5 * b @ a).alpha, rtol=1e-10)
    named = wwjax.analyze({"p": {"left": a.T, "right": b.T}}, lora=True, lora_pairs={"left": "right"})
    np.testing.assert_allclose(named["p"]["lora_delta"].alpha, delta.alpha, rtol=1e-10)


@pytest.mark.slow
def test_jit_equals_eager(x64):
    state = _nnx_state(rank=10)
    run = functools.partial(wwjax.analyze, lora=True)
    eager, jitted = run(state), jax.jit(run)(state)
    np.testing.assert_allclose(jitted["second"]["lora_delta"].alpha, eager["second"]["lora_delta"].alpha, rtol=1e-12)


@pytest.mark.slow
def test_flax_pair_equals_the_dense_delta(x64):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 8)), rng.normal(size=(8, 20))
    m = wwjax.analyze({"q": {"lora_a": a, "lora_b": b}}, lora=True)["q"]["lora_delta"]
    dense = _dense_row(a @ b)
    np.testing.assert_allclose(m.esd[0], dense.esd[0, -8:], rtol=0, atol=1e-10 * dense.esd.max())
    np.testing.assert_allclose(m.alpha, dense.alpha, rtol=1e-10)


def test_bad_options_say_what_to_change():
    with pytest.raises(ValueError, match="turn one of them on"):
        wwjax.analyze({}, lora_pairs={"a": "b"})
    with pytest.raises(TypeError, match="lora must be True or False"):
        wwjax.analyze({}, lora="yes")
    with pytest.raises(ValueError, match="no base weight"):
        wwjax.analyze({"lora_a": np.ones((16, 8)), "lora_b": np.ones((8, 16))}, lora_merged=True)
