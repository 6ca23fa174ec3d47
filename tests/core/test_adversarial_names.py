"""Adversarial module names: real weights renamed with every name wwjax treats as a hint, in every position of the
path, must keep the reading — and so the metrics — of every leaf whose layout is unambiguous (2-D, 4-D).

Real weights: sentence-transformers all-MiniLM-L6-v2 (converted from PyTorch by ``wwjax.load_safetensors``) and a
small CNN trained on scikit-learn's digits (1x1, 3x3, depthwise and 1-D convolutions and dense layers), both as Flax
params and converted back and forth through a PyTorch-layout safetensors file. The plan battery (every name,
every position, no eigen-solve) runs by default; the end-to-end metrics battery is ``slow``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import linen as nn

import wwjax
from wwjax.core import _reading
from wwjax.core._analyze import _PlannedLeaf, plan
from wwjax.core._options import make_options
from wwjax.core._tree import flatten_params
from test_cli import _write_safetensors
from test_pretrained import _minilm_file

# Every name the reading knows, and names real models give their convolutions (DETR's input_proj, ViT's patch
# embedding 'proj', EfficientNet's '_project_conv' / '_conv_head').
HINT_NAMES = sorted(_reading.ATTENTION_IN_NAMES | _reading.ATTENTION_OUT_NAMES | set(_reading.CONV_HINTS)
                    | set(_reading.DENSE_HINTS) | set(_reading.GENERAL_HINTS) | _reading.LAYER_AXIS_NAMES
                    | {"embedding", "embed", "input_proj", "patch_embed", "_project_conv", "_conv_head", "Conv_0",
                       "Dense_0", "DenseGeneral_0"})
METRICS = ["alpha", "alpha_weighted", "D", "lambda_max", "log_norm", "log_spectral_norm", "stable_rank", "entropy",
           "matrix_rank", "num_evals", "N", "M", "rf"]


def _renamings(all_keys: list[tuple[str, ...]]):
    """``(label, keys -> keys)`` for every hint name inserted before each key, or replacing each module name
    (siblings that would collide become ``name``, ``name_1``, … as real models number them)."""
    depth = max(len(keys) for keys in all_keys)
    for name in HINT_NAMES:
        for i in range(depth):
            yield f"insert {name!r} at {i}", lambda keys, i=i, name=name: keys[:i] + (name,) + keys[i:]
            siblings: dict[tuple, list[str]] = {}
            for keys in all_keys:
                if i < len(keys) - 1 and keys[i] not in siblings.setdefault(keys[:i], []):
                    siblings[keys[:i]].append(keys[i])
            new = {(*parent, key): name + (f"_{j}" if j else "") for parent, keys in siblings.items()
                   for j, key in enumerate(sorted(keys))}
            yield f"{name!r} for key {i}", lambda keys, i=i, new=new: (
                keys[:i] + (new[keys[:i + 1]],) + keys[i + 1:] if i < len(keys) - 1 else keys)


def _unambiguous(info) -> bool:
    """2-D leaves, 4-D/5-D kernels, and any tensor that knows the PyTorch layer it came from."""
    return info.module_view is not None or len(info.shape) == 2 or (
        len(info.shape) in (4, 5) and info.keys[-1] == "kernel")


def _reading(planned):
    if isinstance(planned, _PlannedLeaf):
        return planned.view, planned.shape, planned.num_evals
    return planned.reason


def _assert_plan_battery(params, expected_unambiguous: int) -> int:
    """Plans every renaming of ``params`` (shapes only) and checks every unambiguous leaf reads as before."""
    leaves = flatten_params(params)
    opts = make_options()
    baseline = [_reading(p) for p in plan(leaves, opts)]
    checked = [i for i, (info, _, _) in enumerate(leaves) if info.shape is not None and _unambiguous(info)]
    assert len(checked) == expected_unambiguous
    count = 0
    for label, rename in _renamings([info.keys for info, _, _ in leaves]):
        renamed = []
        for info, value, skip in leaves:
            keys = rename(info.keys)
            renamed.append((dataclasses.replace(info, keys=keys, path="/".join(keys)), value, skip))
        readings = plan(renamed, opts)
        for i in checked:
            assert _reading(readings[i]) == baseline[i], (label, leaves[i][0].path)
        count += 1
    return count


class DigitsNet(nn.Module):
    """1x1, 3x3, depthwise and 1-D convolutions and two dense layers, for 8x8 digits."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        x = nn.relu(nn.Conv(32, (3, 3), feature_group_count=32)(x))  # depthwise: (3, 3, 1, 32)
        x = nn.relu(nn.Conv(48, (1, 1))(x))  # a 1x1 projection
        x = nn.relu(nn.Conv(32, (3,))(x.reshape(x.shape[0], 64, 48)))  # 1-D over the 64 pixels: a 3-D kernel
        x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


def _digits_net(steps: int):
    """DigitsNet after ``steps`` Adam steps on scikit-learn's digits (its initial weights for ``steps=0``)."""
    if steps == 0:
        return jax.tree.map(np.asarray, jax.jit(DigitsNet().init)(jax.random.key(0), np.ones((1, 8, 8, 1), "float32"))[
            "params"])
    import optax
    from wwjax.demo import load_digits

    (x_train, y_train), _ = load_digits(0)
    model = DigitsNet()
    params = model.init(jax.random.key(0), x_train[:1])["params"]
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = rng.integers(0, len(x_train), 64)
        params, opt_state = step(params, opt_state, x_train[batch], y_train[batch])
    return jax.tree.map(np.asarray, params)


def _through_pytorch_layout(params: dict, path) -> dict:
    """The Flax params written as a PyTorch state dict ((out, in, *k) weights) and read back by load_safetensors."""
    tensors = {}
    for info, value, _ in flatten_params(params):
        name = ".".join(info.keys[:-1]) + (".weight" if info.keys[-1] == "kernel" else ".bias")
        if value.ndim >= 2:  # (*kernel, in, out) -> (out, in, *kernel); (in, out) -> (out, in)
            value = value.transpose((value.ndim - 1, value.ndim - 2) + tuple(range(value.ndim - 2)))
        tensors[name] = value
    _write_safetensors(path, tensors)
    return wwjax.load_safetensors(path)


def test_plan_battery_minilm():
    params = wwjax.load_safetensors(_minilm_file())
    # The first encoder layer, the embeddings and the pooler (the other layers repeat the first one's names).
    params["encoder"]["layer"] = {"0": params["encoder"]["layer"]["0"]}
    assert _assert_plan_battery(params, expected_unambiguous=11) == 2 * 7 * len(HINT_NAMES)


def test_plan_battery_conv_net(tmp_path):
    shapes = jax.eval_shape(DigitsNet().init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8, 8, 1), "float32"))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])  # the plan needs no values
    assert _assert_plan_battery(params, expected_unambiguous=5) == 2 * 2 * len(HINT_NAMES)
    # Converted from PyTorch, even the 1-D convolution's 3-D kernel is unambiguous: the layout says it is a Conv.
    converted = _through_pytorch_layout(params, tmp_path / "net.safetensors")
    assert _assert_plan_battery(converted, expected_unambiguous=6) == 2 * 2 * len(HINT_NAMES)


def _renamed_tree(params: dict, rename) -> dict:
    items = [(rename(info.keys), value) for info, value, _ in flatten_params(params)]
    return wwjax.core._results.nest(items)


def _assert_metrics_battery(params: dict, labels: list[str] | None = None, cycle: bool = False):
    """Analyses every renaming of ``params`` in one call (one tree holding all of them) against the original.
    ``cycle``: each name at one position only (inserted and replacing), the positions cycling over the names."""
    leaves = flatten_params(params)
    renamings = [(label, fn) for label, fn in _renamings([info.keys for info, _, _ in leaves])
                 if labels is None or label in labels]
    if cycle:
        depth = max(len(info.keys) for info, _, _ in leaves)
        renamings = [r for k, r in enumerate(renamings) if (k // 2) % depth == (k // (2 * depth)) % depth]
    whole = {"original": params} | {f"v{j}": _renamed_tree(params, fn) for j, (_, fn) in enumerate(renamings)}
    table = wwjax.details(wwjax.analyze(whole)).set_index("path")
    checked = 0
    for info, _, _ in leaves:
        if info.shape is None or not _unambiguous(info) or ("original/" + info.path) not in table.index:
            continue
        expected = table.loc[["original/" + info.path], METRICS].to_numpy(float)
        if table.loc["original/" + info.path, "status"] == "skipped":
            continue
        for j, (label, fn) in enumerate(renamings):
            got = table.loc[[f"v{j}/" + "/".join(fn(info.keys))], METRICS].to_numpy(float)
            np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=f"{label}: {info.path}")
        checked += 1
    return checked, len(renamings)


@pytest.mark.slow
def test_metrics_battery_conv_net_a_few_names(tmp_path):
    params = _digits_net(steps=0)
    labels = ["insert 'proj' at 0", "'head' for key 0", "'query' for key 0", "insert 'mlp' at 1", "'fc' for key 0"]
    assert _assert_metrics_battery(params, labels) == (5, len(labels))


@pytest.mark.slow
def test_metrics_battery_trained_conv_net(tmp_path):
    params = _digits_net(steps=100)
    # Every name at one position (inserted and replacing a key), cycling over the positions; every (name, position)
    # pair is planned by test_plan_battery_conv_net.
    assert _assert_metrics_battery(params, cycle=True) == (5, 2 * len(HINT_NAMES))
    converted = _through_pytorch_layout(params, tmp_path / "net.safetensors")
    assert _assert_metrics_battery(converted, cycle=True) == (6, 2 * len(HINT_NAMES))


@pytest.mark.slow
@pytest.mark.pretrained
def test_metrics_battery_minilm():
    params = wwjax.load_safetensors(_minilm_file())
    # One attention projection, the feed-forward input and the pooler: the names around them vary, not the shapes.
    # Every name at one position (inserted and replacing a key), cycling over the positions: every (name, position)
    # pair is planned by test_plan_battery_minilm; solving them all would take minutes.
    layer = params["encoder"]["layer"]["0"]
    small = {"encoder": {"layer": {"0": {"attention": {"self": {"query": layer["attention"]["self"]["query"]}},
                                         "intermediate": layer["intermediate"]}}},
             "pooler": params["pooler"]}
    assert _assert_metrics_battery(small, cycle=True) == (3, 2 * len(HINT_NAMES))
