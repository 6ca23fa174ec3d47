"""AlphaPruning: the α → sparsity map, the global target, pure pruning with masks, further training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import wwjax
from wwjax.training._pruning import (alpha_sparsity, keep_pruned, prune, sparsity_from_alpha, uniform_sparsity,
                                     wanda_scores)


def test_sparsity_map_against_hand_computed_values(x64):
    alpha = jnp.array([2.0, 3.5, 5.0, 2.75])
    sizes = jnp.array([1000.0, 3000.0, 500.0, 1500.0])
    got = sparsity_from_alpha(alpha, sizes, 0.7, epsilon=0.2)
    ratios = np.array([0.8, 1.0, 1.2, 0.9])  # linear in α onto [1 - ε, 1 + ε]
    want = ratios * 0.7 * sizes.sum() / float((sizes * ratios).sum())
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(float((got * sizes).sum() / sizes.sum()), 0.7, rtol=1e-12)  # exactly on target
    np.testing.assert_allclose(sparsity_from_alpha(jnp.array([3.0, 3.0]), jnp.array([1.0, 9.0]), 0.5), [0.5, 0.5])


def _params():
    rng = np.random.default_rng(0)
    return {
        "Dense_0": {"kernel": rng.standard_t(2.5, (96, 64)).astype("float32"), "bias": np.zeros(64, "float32")},
        "Dense_1": {"kernel": rng.standard_normal((64, 48)).astype("float32")},
        "Dense_2": {"kernel": (rng.standard_t(4, (48, 32)) * 0.1).astype(jnp.bfloat16)},
    }


@pytest.mark.slow
def test_alpha_sparsity_hits_the_target_and_orders_by_alpha():
    params = _params()
    result = wwjax.analyze(params)
    from_result = alpha_sparsity(result, 0.6, epsilon=0.25)
    from_params = alpha_sparsity(params, 0.6, epsilon=0.25, xmin=None)  # the same KS α
    sizes = {"Dense_0/kernel": 96 * 64, "Dense_1/kernel": 64 * 48, "Dense_2/kernel": 48 * 32}
    for s in (from_result, from_params):
        assert sorted(s) == sorted(sizes)
        total = sum(float(s[p]) * n for p, n in sizes.items()) / sum(sizes.values())
        assert abs(total - 0.6) < 1e-6
    for p in sizes:
        np.testing.assert_allclose(float(from_result[p]), float(from_params[p]), rtol=1e-6)
    alpha = {p: float(result[p.split("/")[0]]["kernel"].alpha[0]) for p in sizes}
    order_alpha, order_sparsity = sorted(sizes, key=alpha.get), sorted(sizes, key=lambda p: float(from_result[p]))
    assert order_alpha == order_sparsity
    assert uniform_sparsity(params, 0.6) == {p: 0.6 for p in sizes}
    with pytest.raises(ValueError, match="lower epsilon"):
        alpha_sparsity(result, 0.95, epsilon=0.5)


def test_prune_is_pure_keeps_structure_dtypes_and_exact_counts():
    params = _params()
    before = jax.tree.map(np.array, params)
    sparsity = {"Dense_0/kernel": 0.7, "Dense_2/kernel": 0.25}
    pruned = jax.jit(lambda p: prune(p, sparsity))(params)
    assert jax.tree.structure(pruned.params) == jax.tree.structure(params)
    assert jax.tree.map(lambda x: x.dtype, pruned.params) == jax.tree.map(lambda x: jnp.asarray(x).dtype, params)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(before)):
        np.testing.assert_array_equal(got, want)  # nothing edited in place
    kernel, mask = np.asarray(pruned.params["Dense_0"]["kernel"]), np.asarray(pruned.masks["Dense_0"]["kernel"])
    assert (~mask).sum() == round(0.7 * 96 * 64) and (kernel[~mask] == 0).all()
    # the pruned ones are the smallest magnitudes
    assert np.abs(params["Dense_0"]["kernel"][~mask]).max() <= np.abs(params["Dense_0"]["kernel"][mask]).min()
    assert (~np.asarray(pruned.masks["Dense_2"]["kernel"])).sum() == round(0.25 * 48 * 32)
    assert np.asarray(pruned.masks["Dense_1"]["kernel"]).all() and np.asarray(pruned.masks["Dense_0"]["bias"]).all()
    with pytest.raises(KeyError, match="no leaf at"):
        prune(params, {"Dense_9/kernel": 0.5})


def test_wanda_scores_prune_per_output_by_weight_times_input_norm():
    params = _params()
    norms = {"Dense_1/kernel": np.linspace(0.1, 10.0, 64)}
    pruned = prune(params, {"Dense_1/kernel": 0.5}, method="score", score=wanda_scores(norms), per_output=True)
    mask = np.asarray(pruned.masks["Dense_1"]["kernel"])
    np.testing.assert_array_equal(mask.sum(axis=0), 32)  # half of every output column
    score = np.abs(params["Dense_1"]["kernel"]) * norms["Dense_1/kernel"][:, None]
    for col in range(48):
        assert score[~mask[:, col], col].max() <= score[mask[:, col], col].min()


def test_keep_pruned_keeps_zeros_through_training():
    params = _params()
    pruned = prune(params, {"Dense_0/kernel": 0.5})
    tx = optax.chain(optax.adam(1e-2), keep_pruned(pruned.masks))
    state = tx.init(pruned.params)
    grads = jax.tree.map(lambda x: jnp.ones_like(x), pruned.params)
    updates, state = tx.update(grads, state, pruned.params)
    trained = optax.apply_updates(pruned.params, updates)
    mask = np.asarray(pruned.masks["Dense_0"]["kernel"])
    assert (np.asarray(trained["Dense_0"]["kernel"])[~mask] == 0).all()
    moved = np.asarray(trained["Dense_0"]["kernel"]) != np.asarray(pruned.params["Dense_0"]["kernel"])
    assert moved[mask].all()
