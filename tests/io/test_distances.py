"""wwjax.distances: parity with WeightWatcher 0.7.7's distances, the methods' defining properties, path matching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import wwjax
from wwjax.io._safetensors import torch_to_flax

from conftest import GOLDEN


def _flax_tree(weights, prefix: str) -> dict:
    tree: dict = {}
    for key in weights.files:
        side, name = key.split("/", 1)
        if side != prefix:
            continue
        keys, value = torch_to_flax(name, weights[key])
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return tree


@pytest.fixture(scope="module")
def golden_pair():
    weights = np.load(GOLDEN / "distances_weights.npz")
    return _flax_tree(weights, "a"), _flax_tree(weights, "b"), pd.read_csv(GOLDEN / "ww_distances.csv")


@pytest.mark.parametrize("method, ours", [("raw", "raw"), ("euclidean", "euclidean"), ("cka", "ww_cka")])
def test_matches_weightwatcher(golden_pair, x64, method, ours):
    a, b, golden = golden_pair
    table = wwjax.distances(a, b, method=ours)
    rows = table[table.status == "success"].set_index("path")
    expected = golden[golden.method == method]
    assert len(expected) == 5
    for _, ref in expected.iterrows():
        path = f"{ref.longname}/{'embedding' if ref.longname == 'embed' else 'kernel'}"
        np.testing.assert_allclose(rows.loc[path, "delta_W"], ref.delta_W, rtol=2e-6, err_msg=path)
        if method == "raw" and ref.longname.startswith("fc"):  # WeightWatcher reads no conv or embedding bias
            np.testing.assert_allclose(rows.loc[path, "delta_b"], ref.delta_b, rtol=2e-6, err_msg=path)


def test_identity_and_invariances(golden_pair, x64):
    a, _, _ = golden_pair
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    # An orthogonal transform of the features and a scaling leave CKA at 1; a shifted mean too (centred).
    b = {"fc1": {"kernel": 3.0 * (q @ a["fc1"]["kernel"]) + 0.7}}
    a1 = {"fc1": {"kernel": a["fc1"]["kernel"]}}
    assert wwjax.distances(a1, b, method="cka").delta_W.iloc[0] == pytest.approx(1.0, abs=1e-12)
    assert wwjax.distances(a1, b, method="ww_cka").delta_W.iloc[0] < 0.99  # uncentred: the shift shows
    for method, same in [("raw", 0.0), ("euclidean", 0.0), ("cosine", 1.0), ("cka", 1.0), ("ww_cka", 1.0)]:
        values = wwjax.distances(a, a, method=method).query("status == 'success'").delta_W
        np.testing.assert_allclose(values, same, atol=1e-12, err_msg=method)


def test_cosine_and_relative(x64):
    a = {"w": {"kernel": np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])}}
    b = {"w": {"kernel": np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])}}
    row = wwjax.distances(a, b, method="cosine", layers=[], pool=True).iloc[0]
    assert row.delta_W == pytest.approx(2 / (np.sqrt(2) * np.sqrt(3)))
    row = wwjax.distances(a, b, method="euclidean").iloc[0]
    assert (row.delta_W, row.delta_W_rel) == pytest.approx((1.0, 1 / np.sqrt(2)))


def test_conv_pool_false_and_stacked(x64):
    rng = np.random.default_rng(1)
    a = {"Conv_0": {"kernel": rng.normal(size=(2, 2, 3, 5))}, "blocks": {"kernel": rng.normal(size=(4, 6, 6))}}
    b = {"Conv_0": {"kernel": a["Conv_0"]["kernel"] + 1.0}, "blocks": {"kernel": a["blocks"]["kernel"] * 2}}
    per_slice = wwjax.distances(a, b, method="euclidean", pool=False, stacked=["blocks"])
    conv = per_slice[per_slice.path == "Conv_0/kernel"]
    assert list(conv.slice_id) == [0, 1, 2, 3]
    np.testing.assert_allclose(conv.delta_W, np.sqrt(15))  # every 3×5 slice moved by 1 in each entry
    stacked = per_slice[per_slice.path == "blocks/kernel"]
    assert list(stacked.layer_index) == [0, 1, 2, 3]
    np.testing.assert_allclose(stacked.delta_W, np.linalg.norm(a["blocks"]["kernel"], axis=(1, 2)))


def test_matched_by_path_not_position(x64):
    rng = np.random.default_rng(2)
    k0, k1 = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
    a = {"Dense_0": {"kernel": k0}, "Dense_1": {"kernel": k1}}
    b = {"Dense_1": {"kernel": k1}, "Dense_0": {"kernel": k0}}  # other insertion order
    assert wwjax.distances(a, b, method="euclidean").delta_W.tolist() == [0.0, 0.0]


def test_mismatch_rows_and_strict(x64):
    rng = np.random.default_rng(3)
    a = {"Dense_0": {"kernel": rng.normal(size=(8, 4))}, "Dense_1": {"kernel": rng.normal(size=(4, 4))}}
    b = {"Dense_0": {"kernel": rng.normal(size=(8, 4))}, "Dense_1": {"kernel": rng.normal(size=(4, 3))},
         "Dense_2": {"kernel": rng.normal(size=(3, 3))}}
    table = wwjax.distances(a, b, method="euclidean").set_index("path")
    assert table.loc["Dense_0/kernel", "status"] == "success"
    assert table.loc["Dense_1/kernel", "reason"] == "shape (4, 4) in params_a but (4, 3) in params_b"
    assert table.loc["Dense_2/kernel", "reason"] == "only in params_b (missing from params_a)"
    with pytest.raises(ValueError, match="Dense_1/kernel: shape"):
        wwjax.distances(a, b, strict=True)
    with pytest.raises(ValueError, match="share no weight matrix"):
        wwjax.distances(a, {"other": {"kernel": np.ones((2, 2))}})
    with pytest.raises(ValueError, match="method must be one of"):
        wwjax.distances(a, a, method="manhattan")
