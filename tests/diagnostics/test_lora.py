"""LoRA adapters: the spectrum of ΔW from its factors against the dense ΔW, pairing by path, the merged W + ΔW."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from wwjax.diagnostics._lora import (
    find_lora_pairs,
    infer_layout,
    lora_core,
    lora_spectra,
    lora_tree_spectra,
    merged_matrices,
)


def dense_evals(delta: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` squared singular values of a dense matrix (NumPy/LAPACK), ascending."""
    return np.sort(np.linalg.svd(np.asarray(delta, np.float64), compute_uv=False) ** 2)[-k:]


@pytest.mark.parametrize("shape_in, shape_out, rank", [(64, 48, 4), (30, 100, 8), (12, 9, 16), (256, 256, 1)])
def test_spectrum_from_factors_matches_dense_delta(x64, shape_in, shape_out, rank):
    rng = np.random.default_rng(rank)
    a = rng.standard_t(3.0, size=(shape_in, rank))
    b = rng.normal(size=(rank, shape_out))
    k = min(shape_in, shape_out, rank)
    evals = np.asarray(lora_spectra(a, b, "flax")[0])
    assert evals.shape == (k,)
    np.testing.assert_allclose(evals, dense_evals(a @ b, k), rtol=1e-6, atol=1e-9 * evals.max())
    # PyTorch's orientation of the same adapter: A (r, in), B (out, r), ΔW = B·A = (A·B)ᵀ
    torch_evals = np.asarray(lora_spectra(a.T, b.T, "torch")[0])
    np.testing.assert_allclose(torch_evals, evals, rtol=1e-10)


def test_stacked_adapters_give_one_row_per_layer(x64):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 40, 4)), rng.normal(size=(3, 4, 24))
    evals = np.asarray(lora_spectra(a, b, "flax"))
    assert lora_core(a, b, "flax").shape == (3, 1, 4, 4)
    for layer in range(3):
        np.testing.assert_allclose(evals[layer], dense_evals(a[layer] @ b[layer], 4), rtol=1e-6)


def test_rank_deficient_update_has_zero_eigenvalues(x64):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(50, 4))
    a[:, 3] = a[:, 0]  # rank 3
    evals = np.asarray(lora_spectra(a, rng.normal(size=(4, 30)), "flax")[0])
    assert evals[0] < 1e-20 * evals[-1] and np.all(evals[1:] > 1e-3 * evals[-1])


def test_layout_is_read_from_the_shapes():
    assert infer_layout((768, 8), (8, 1024), "torch") == ("flax", 8)
    assert infer_layout((8, 768), (1024, 8), "flax") == ("torch", 8)
    assert infer_layout((8, 8), (8, 8), "torch") == ("torch", 8)  # a tie: the names' convention
    with pytest.raises(ValueError, match="'x/lora_A' do not multiply"):
        infer_layout((8, 768), (7, 1024), "torch", "x/lora_A")


def test_pairs_found_by_path_in_every_layout():
    z = np.zeros
    tree = {
        "nnx_linear": {"kernel": z((16, 8)), "bias": z(8), "lora": {"lora_a": z((16, 2)), "lora_b": z((2, 8))}},
        "nnx_lora": {"base_module": {"kernel": z((16, 8))}, "lora_a": z((16, 3)), "lora_b": z((3, 8))},
        "model.layers.0.q_proj.base_layer.weight": z((8, 16)),
        "model.layers.0.q_proj.lora_A.default.weight": z((4, 16)),
        "model.layers.0.q_proj.lora_B.default.weight": z((8, 4)),
        "unet": {"lora_down": {"weight": z((2, 10))}, "lora_up": {"weight": z((6, 2))}},
        "custom": {"kernel": z((10, 6)), "left": z((10, 5)), "right": z((5, 6))},
    }
    found = {p.name: (p.layout, p.rank, p.base_path) for p in find_lora_pairs(tree, pairs={"left": "right"})}
    assert found == {
        "nnx_linear/lora/lora_delta": ("flax", 2, "nnx_linear/kernel"),
        "nnx_lora/lora_delta": ("flax", 3, "nnx_lora/base_module/kernel"),
        "model/layers/0/q_proj/lora_delta/default/weight": (
            "torch", 4, "model.layers.0.q_proj.base_layer.weight"),
        "unet/lora_delta/weight": ("torch", 2, None),
        "custom/lora_delta": ("flax", 5, "custom/kernel"),
    }


def test_unpaired_factor_names_the_path_and_the_fix():
    with pytest.raises(ValueError, match=r"'block/lora_A' has no 'lora_B' partner; pass pairs="):
        find_lora_pairs({"block": {"lora_A": np.zeros((2, 8))}})


def test_merged_without_base_says_what_to_do():
    tree = {"lora_a": np.ones((6, 2)), "lora_b": np.ones((2, 4))}
    with pytest.raises(ValueError, match="merged=False"):
        lora_tree_spectra(tree, merged=True)


def test_merged_matches_dense_sum(x64):
    rng = np.random.default_rng(3)
    base, a, b = rng.normal(size=(8, 20)), rng.normal(size=(4, 20)), rng.normal(size=(8, 4))  # PyTorch (out, in)
    stack = np.asarray(merged_matrices(base, a, b, "torch", scale=0.5))
    assert stack.shape == (1, 1, 20, 8)
    np.testing.assert_allclose(stack[0, 0], (base + 0.5 * b @ a).T)


def _lora_mlp(rngs: nnx.Rngs) -> nnx.Module:
    class Net(nnx.Module):
        def __init__(self):
            self.first = nnx.LoRALinear(16, 48, lora_rank=4, rngs=rngs)
            self.second = nnx.LoRALinear(48, 10, lora_rank=4, rngs=rngs)

        def __call__(self, x):
            return self.second(jax.nn.relu(self.first(x)))

    return Net()


@pytest.mark.slow
def test_trained_nnx_adapters_match_dense(x64):
    """A few optax steps of a LoRA fine-tune (only the LoRA factors train), then ΔW and W + ΔW against dense."""
    model = _lora_mlp(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.LoRAParam)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(64, 16)))
    y = jnp.asarray(rng.integers(0, 10, size=64))
    base_before = np.asarray(model.first.kernel[...])

    @nnx.jit
    def step(model, optimizer):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        grads = nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(model)
        optimizer.update(model, grads)

    for _ in range(5):
        step(model, optimizer)
    state = nnx.state(model)
    np.testing.assert_array_equal(np.asarray(model.first.kernel[...]), base_before)  # the base is frozen
    spectra = lora_tree_spectra(state, merged=True)
    assert set(spectra) == {f"{n}/lora/lora_{k}" for n in ("first", "second") for k in ("delta", "merged")}
    for name in ("first", "second"):
        layer = getattr(model, name)
        a, b = np.asarray(layer.lora.lora_a[...]), np.asarray(layer.lora.lora_b[...])
        assert np.abs(b).max() > 1e-3  # trained away from its zero initialisation
        delta = np.asarray(spectra[f"{name}/lora/lora_delta"][0])
        np.testing.assert_allclose(delta, dense_evals(a @ b, 4), rtol=1e-6, atol=1e-12 * delta.max())
        kernel = np.asarray(layer.kernel[...])
        merged = np.asarray(spectra[f"{name}/lora/lora_merged"][0])
        np.testing.assert_allclose(merged, dense_evals(kernel + a @ b, min(kernel.shape)), rtol=1e-6)


def test_core_is_jittable_and_small():
    a, b = jnp.ones((2, 300, 8)), jnp.ones((2, 8, 200))
    jaxpr = str(jax.make_jaxpr(lambda a, b: lora_core(a, b, "flax"))(a, b))
    assert "300,200" not in jaxpr.replace(" ", "")  # ΔW (300×200) is never formed


def test_tree_spectra_batch_same_shape_adapters_without_mixing_them(x64):
    rng = np.random.default_rng(5)
    tree = {
        f"block_{i}": {"lora_a": rng.normal(size=(20, 3)), "lora_b": rng.normal(size=(3, 12))} for i in range(3)
    }
    tree["head"] = {"lora_A": rng.normal(size=(2, 12)), "lora_B": rng.normal(size=(5, 2))}
    spectra = lora_tree_spectra(tree)
    assert {k: v.shape for k, v in spectra.items()} == {
        "block_0/lora_delta": (1, 3), "block_1/lora_delta": (1, 3), "block_2/lora_delta": (1, 3),
        "head/lora_delta": (1, 2),
    }
    for i in range(3):
        leaf = tree[f"block_{i}"]
        np.testing.assert_allclose(spectra[f"block_{i}/lora_delta"][0], dense_evals(leaf["lora_a"] @ leaf["lora_b"], 3),
                                   rtol=1e-10)
    head = tree["head"]
    np.testing.assert_allclose(spectra["head/lora_delta"][0], dense_evals(head["lora_B"] @ head["lora_A"], 2), rtol=1e-10)
