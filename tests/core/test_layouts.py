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


# ---------------------------------------------------------------------------------------------------------------------
# The layout decides; names only break the ties of 3-D kernels, and say so


def test_a_4d_kernel_is_a_convolution_whatever_its_module_is_called():
    # EfficientNet's 1x1 projections and conv head, converted to Flax HWIO: 'proj' and 'head' are dense names.
    rng = np.random.default_rng(5)
    project, depthwise = heavy_tailed(rng, (1, 1, 96, 24)), heavy_tailed(rng, (3, 3, 1, 96))
    expected = _rows(wwjax.analyze({"Conv_0": {"kernel": project}, "Conv_1": {"kernel": depthwise}}, min_evals=1))
    names = ("_project_conv", "proj", "head", "fc", "out_proj", "mlp", "query", "dense", "linear", "DenseGeneral")
    params = {f"model{i}": {"blocks": {"0": {name: {"kernel": project}}}, name: {"dw": {"kernel": depthwise}}}
              for i, name in enumerate(names)}  # one analysis for all names
    table = wwjax.details(wwjax.analyze(params, min_evals=1)).set_index("path")
    for i, name in enumerate(names):
        for path, original in ((f"model{i}/blocks/0/{name}/kernel", "Conv_0/kernel"),
                               (f"model{i}/{name}/dw/kernel", "Conv_1/kernel")):
            assert table.loc[path, "layer_type"] == "conv2d", (name, path)
            np.testing.assert_array_equal(table.loc[[path], METRICS].to_numpy(float), expected[original])
        # A name that says something else than the shape is said out loud; a conv name or none is not.
        warning = table.loc[f"model{i}/blocks/0/{name}/kernel", "warning"]
        assert (warning == "") == (name == "_project_conv"), (name, warning)
        if warning:
            assert "read by its shape as a conv2d" in warning
            assert f"stacked=['model{i}/blocks/0/{name}/kernel']" in warning
    # Only stacked= (or metadata) makes a 4-D kernel a stack: then its 3-D layers are read by their name.
    stack = heavy_tailed(rng, (2, 64, 4, 16))  # two scanned attention query projections
    row = wwjax.details(wwjax.analyze({"layers": {"query": {"kernel": stack}}}, stacked="layers")).iloc[0]
    assert (row.layer_type, row.N, row.M) == ("attention", 64, 64) and "name 'query'" in row.warning


def test_3d_kernels_are_read_by_the_deepest_name_on_the_path_with_a_warning():
    rng = np.random.default_rng(6)
    kernel = heavy_tailed(rng, (3, 48, 64))
    expected = {  # path -> (layer_type, rows, N, M)
        "layers_3/mlp/fc1/kernel": ("dense", 3, 64, 48),  # a stack of 3 dense layers (the deepest hint: fc1)
        "conv_block/mlp/kernel": ("dense", 3, 64, 48),
        "mlp/Conv_0/kernel": ("conv1d", 1, 64, 48),  # (k=3, in, out)
        "encoder/layers/kernel": ("dense", 3, 64, 48),  # a stack by the module name 'layers'
        "attention/out/kernel": ("attention", 1, 144, 64),  # (heads=3, head_dim=48, features=64)
    }
    for path, (layer_type, rows, N, M) in expected.items():
        row = wwjax.describe(_nest_path(path, kernel), min_evals=1).iloc[0]  # the plan: no solve needed
        assert (row.layer_type, row.num_layers, row.N, row.M) == (layer_type, rows, N, M), path
        assert row.warning.startswith("3-D kernel read as") and f"views={{'{path}'" in row.warning
    query = heavy_tailed(rng, (64, 4, 16))
    row = wwjax.details(wwjax.analyze(_nest_path("encoder/attention/query/kernel", query))).iloc[0]
    assert (row.layer_type, row.N, row.M) == ("attention", 64, 64)
    # No hint at all, or a DenseGeneral/Einsum name: skipped with the options that would read it.
    for path in ("encoder/block_mixer/kernel", "mlp/DenseGeneral_0/kernel"):
        row = wwjax.describe(_nest_path(path, kernel)).iloc[0]
        assert row.status == "skipped" and "views=" in row.reason and "stacked=" in row.reason
    # A view the user gives is no guess.
    view = wwjax.MatrixView((0,), (1, 2), layer_type="attention")
    assert wwjax.describe(_nest_path("mlp/kernel", kernel), views={"mlp": view}).warning.iloc[0] == ""


def _nest_path(path: str, leaf) -> dict:
    tree: dict = {}
    node = tree
    *modules, name = path.split("/")
    for key in modules:
        node = node.setdefault(key, {})
    node[name] = leaf
    return tree


def test_nnx_modules_say_how_their_kernels_read_whatever_they_are_called():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.mlp = nnx.LinearGeneral(64, (4, 16), rngs=rngs)  # (in, heads, dim): a dense name on a 3-D kernel
            self.fc = nnx.LinearGeneral((4, 16), 32, axis=(-2, -1), rngs=rngs)  # (heads, dim, out)
            self.query = nnx.Einsum("BTD,NDH->BTNH", (4, 64, 16), rngs=rngs)  # (heads, features, dim)
            self.proj = nnx.Conv(8, 16, (3,), rngs=rngs)  # a Conv1D called 'proj'

    model = Model(nnx.Rngs(0))
    table = wwjax.details(wwjax.analyze(model, min_evals=1)).set_index("path")
    assert not table.warning.str.contains("read").any()  # no guess (an alpha warning may be there)
    assert tuple(table.loc["mlp/kernel", ["N", "M"]]) == (64, 64)
    assert tuple(table.loc["fc/kernel", ["N", "M"]]) == (64, 32)
    assert tuple(table.loc["query/kernel", ["N", "M"]]) == (64, 64)
    assert tuple(table.loc["proj/kernel", ["layer_type", "rf", "N", "M"]]) == ("conv1d", 3, 16, 8)
    einsum = np.asarray(model.query.kernel[...]).transpose(1, 0, 2).reshape(64, 64)
    np.testing.assert_allclose(table.loc[["query/kernel"], METRICS].to_numpy(float), _single(einsum), rtol=1e-5)
    # The same weights as a plain nnx.State have no module to ask: the 3-D kernels are read by their names, and
    # the table says so ('mlp' guesses a stack of 64 dense layers).
    mlp = wwjax.describe(nnx.state(model, nnx.Param), min_evals=1).set_index("path").loc["mlp/kernel"]
    assert mlp.num_layers == 64 and mlp.warning.startswith("3-D kernel read as a stack of dense layers")


def test_converted_pytorch_tensors_are_read_as_their_torch_layer(tmp_path):
    from test_cli import _write_safetensors

    rng = np.random.default_rng(7)
    torch_layout = {  # (out, in, *kernel): EfficientNet-style names, a Conv1d called 'query', a Linear called 'conv'
        "_blocks.0._project_conv.weight": heavy_tailed(rng, (24, 96, 1, 1)),
        "_conv_head.weight": heavy_tailed(rng, (64, 24, 1, 1)),
        "mixer.query.weight": heavy_tailed(rng, (32, 16, 3)),
        "mixer.conv.weight": heavy_tailed(rng, (40, 32)),
    }
    _write_safetensors(tmp_path / "model.safetensors", torch_layout)
    params = wwjax.load_safetensors(tmp_path / "model.safetensors")
    table = wwjax.details(wwjax.analyze(params, min_evals=1)).set_index("path")
    assert not table.warning.str.contains("read").any()
    assert list(table.layer_type) == ["conv2d", "conv2d", "dense", "conv1d"]
    conv1d = wwjax.details(wwjax.analyze({"Conv_0": {"kernel": torch_layout["mixer.query.weight"].transpose(2, 1, 0)}},
                                         min_evals=1))
    np.testing.assert_array_equal(table.loc[["mixer/query/kernel"], METRICS].to_numpy(float),
                                  conv1d[METRICS].to_numpy(float))
    loaded = wwjax.load_params(tmp_path)  # a directory of safetensors shards
    assert loaded["mixer"]["query"]["kernel"].module_view.layer_type == "conv1d"
    # The mark travels with the array, whatever the tree around it is renamed to.
    renamed = {"attention": {"out": {"kernel": params["mixer"]["query"]["kernel"]}}}
    assert wwjax.details(wwjax.analyze(renamed, min_evals=1)).layer_type.iloc[0] == "conv1d"
    # layout='raw' keeps PyTorch's (out, in, *kernel): a 3-D to 5-D 'weight' is read that way, with a warning.
    raw = wwjax.load_safetensors(tmp_path / "model.safetensors", layout="raw")
    raw_table = wwjax.details(wwjax.analyze(raw, min_evals=1)).set_index("path")
    np.testing.assert_array_equal(raw_table.loc[["mixer.query.weight"], METRICS].to_numpy(float),
                                  conv1d[METRICS].to_numpy(float))
    assert "PyTorch convolution (out, in, *kernel_size)" in raw_table.loc["mixer.query.weight", "warning"]
