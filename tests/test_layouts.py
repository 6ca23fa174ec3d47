"""How Flax layouts become matrices: the same weights give the same metrics however they are stored."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import wwjax
from conftest import heavy_tailed

METRICS = ["alpha", "D", "xmin", "lambda_max", "norm", "stable_rank", "entropy", "matrix_rank"]


def _rows(result) -> dict:
    table = wwjax.details(result)
    table = table[table.status != "skipped"]
    return {path: group[METRICS].to_numpy(float) for path, group in table.groupby("path")}


def _single(kernel, **options):
    return wwjax.details(wwjax.analyze({"w": {"kernel": kernel}}, **options))[METRICS].to_numpy(float)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Embed(300, 32)(x)
        x = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=32)(x)
        x = nn.Conv(48, (3,))(x)
        x = nn.Dense(64)(x)
        return nn.LayerNorm()(x)


def test_linen_variables_params_and_collections():
    variables = Block().init(jax.random.key(0), jnp.ones((1, 5), jnp.int32))
    variables = {**variables, "batch_stats": {"mean": jnp.zeros(3)}}
    table = wwjax.details(wwjax.analyze(variables))
    by_path = table.set_index("path")
    assert by_path.loc["params/Embed_0/embedding", "layer_type"] == "embedding"
    assert by_path.loc["params/MultiHeadDotProductAttention_0/query/kernel", "layer_type"] == "attention"
    assert by_path.loc["params/MultiHeadDotProductAttention_0/query/kernel", "N"] == 32
    assert by_path.loc["params/Conv_0/kernel", "layer_type"] == "conv1d"
    assert by_path.loc["params/Conv_0/kernel", "rf"] == 3
    assert by_path.loc["params/MultiHeadDotProductAttention_0/query/bias", "reason"] == "bias"
    assert by_path.loc["params/LayerNorm_0/scale", "reason"] == "normalization scale"
    assert "not 'params'" in by_path.loc["batch_stats/mean", "reason"]
    # Every leaf has a row: nothing is dropped silently.
    assert len(table) == len(jax.tree_util.tree_leaves(variables))
    params_only = _rows(wwjax.analyze(variables["params"]))
    for path, values in _rows(wwjax.analyze(variables)).items():
        np.testing.assert_array_equal(values, params_only[path.removeprefix("params/")])


def test_attention_kernels_are_the_projection_matrices():
    rng = np.random.default_rng(0)
    query = heavy_tailed(rng, (64, 4, 16))  # (features, heads, head_dim)
    out = heavy_tailed(rng, (4, 16, 64))  # (heads, head_dim, features)
    result = _rows(wwjax.analyze({"attn": {"query": {"kernel": query}, "out": {"kernel": out}}}))
    np.testing.assert_allclose(result["attn/query/kernel"], _single(query.reshape(64, 64)), rtol=1e-5)
    np.testing.assert_allclose(result["attn/out/kernel"], _single(out.reshape(64, 64)), rtol=1e-5)
    grouped_kv = heavy_tailed(rng, (64, 2, 16))  # grouped-query attention: fewer key/value heads
    row = wwjax.details(wwjax.analyze({"attn": {"key": {"kernel": grouped_kv}}})).iloc[0]
    assert (row.N, row.M, row.layer_type) == (64, 32, "attention")


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3), name="conv")(x)
        return nn.Dense(24, name="dense")(x.reshape(x.shape[0], -1))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 16, (3, 3), rngs=rngs)
        self.dense = nnx.Linear(16 * 36, 24, rngs=rngs)


def test_linen_nnx_and_boxed_params_give_the_same_metrics():
    linen = LinenNet().init(jax.random.key(0), jnp.ones((1, 6, 6, 3)))["params"]
    model = NnxNet(nnx.Rngs(1))
    model.conv.kernel[...] = linen["conv"]["kernel"]
    model.dense.kernel[...] = linen["dense"]["kernel"]
    boxed = jax.tree.map(lambda x: nn.Partitioned(x, names=(None,) * x.ndim), linen)
    expected = _rows(wwjax.analyze(linen))
    for params in (nnx.state(model, nnx.Param), model, nnx.to_pure_dict(nnx.state(model)), boxed):
        got = _rows(wwjax.analyze(params))
        assert got.keys() == expected.keys()
        for path in expected:
            np.testing.assert_allclose(got[path], expected[path], rtol=1e-6)


def test_stacked_layers_from_scan_and_vmap_are_one_row_each():
    rng = np.random.default_rng(1)
    stack = heavy_tailed(rng, (3, 48, 40))
    table = wwjax.details(wwjax.analyze({"ScanBlock_0": {"Dense_0": {"kernel": stack}}}))
    assert list(table.layer_index) == [0, 1, 2]
    for i in range(3):
        np.testing.assert_allclose(table[METRICS].to_numpy(float)[i], _single(stack[i])[0], rtol=1e-6)

    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
        return nnx.Linear(48, 40, rngs=nnx.Rngs(key))

    stacked_model = make(jax.random.split(jax.random.key(0), 3))
    assert list(wwjax.details(wwjax.analyze(stacked_model)).query("status != 'skipped'").layer_index) == [0, 1, 2]
    state = nnx.state(stacked_model, nnx.Param)
    unknown = wwjax.details(wwjax.analyze(state)).set_index("path")
    assert "stacked=" in unknown.loc["kernel", "reason"]
    assert list(wwjax.details(wwjax.analyze(state, stacked="kernel")).dropna(subset=["alpha"]).layer_index) == [0, 1, 2]
    # Boxed params whose first axis is named 'layers' are stacks without being told.
    boxed = {"blocks": {"mlp": {"kernel": nn.Partitioned(jnp.asarray(stack), names=("layers", "embed", "mlp"))}}}
    assert list(wwjax.details(wwjax.analyze(boxed)).layer_index) == [0, 1, 2]


def test_convolutions_pool_positions_or_give_one_row_each():
    rng = np.random.default_rng(2)
    conv3d = heavy_tailed(rng, (2, 3, 3, 8, 16))
    pooled = wwjax.details(wwjax.analyze({"Conv_0": {"kernel": conv3d}}, min_evals=1)).iloc[0]
    assert (pooled.layer_type, pooled.rf, pooled.num_evals, pooled.N, pooled.M) == ("conv3d", 18, 144, 16, 8)
    per_position = wwjax.details(wwjax.analyze({"Conv_0": {"kernel": conv3d}}, pool=False, min_evals=1))
    assert list(per_position.slice_id) == list(range(18))
    # Each position's ESD is that slice's, scaled by rf/2 (WeightWatcher's pool=False conv2d_norm).
    expected = np.sort(np.linalg.svd(conv3d.reshape(18, 8, 16)[5].astype(np.float64), compute_uv=False) ** 2) * 9
    np.testing.assert_allclose(per_position.lambda_max[5], expected[-1], rtol=1e-5)
    grouped = heavy_tailed(rng, (3, 3, 4, 32))  # feature_group_count=4: (in/groups, out) per position
    row = wwjax.details(wwjax.analyze({"Conv_0": {"kernel": grouped}})).iloc[0]
    assert (row.N, row.M, row.num_evals) == (32, 4, 36)


def test_user_view_for_a_fused_qkv_and_a_bad_view():
    rng = np.random.default_rng(3)
    fused = heavy_tailed(rng, (64, 3, 4, 16))  # (features, q/k/v, heads, head_dim)
    view = wwjax.MatrixView(row_axes=(0,), col_axes=(2, 3), layer_axes=(1,), layer_type="attention")
    table = wwjax.details(wwjax.analyze({"attn": {"qkv": {"kernel": fused}}}, views={"*/qkv/*": view}))
    assert list(table.layer_index) == [0, 1, 2]
    np.testing.assert_allclose(table[METRICS].to_numpy(float)[1], _single(fused[:, 1].reshape(64, 64))[0], rtol=1e-6)
    with pytest.raises(ValueError, match="attn/qkv/kernel"):
        wwjax.analyze({"attn": {"qkv": {"kernel": fused}}}, views={"qkv": wwjax.MatrixView((0,), (1,))})


def test_layers_filter_by_type_and_path():
    rng = np.random.default_rng(4)
    params = {
        "Dense_1": {"kernel": heavy_tailed(rng, (40, 30))},
        "Dense_10": {"kernel": heavy_tailed(rng, (40, 30))},
        "Conv_0": {"kernel": heavy_tailed(rng, (3, 3, 8, 16))},
    }
    status = lambda **o: dict(wwjax.details(wwjax.analyze(params, **o))[["path", "status"]].values)  # noqa: E731
    assert status(layers="conv2d") == {"Conv_0/kernel": "success", "Dense_1/kernel": "skipped",
                                       "Dense_10/kernel": "skipped"}
    assert status(layers=["Dense_1"])["Dense_10/kernel"] == "skipped"
    assert status(layers=["-Dense_*"])["Conv_0/kernel"] == "success"
    assert status(layers=["-Dense_*"])["Dense_1/kernel"] == "skipped"
