"""A short run of each of the four ways of examples/train_digits_spectral.py (plain, penalty, MSN, BatchNorm)."""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest

pytest.importorskip("sklearn")

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "train_digits_spectral.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_digits_spectral", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_way_trains_and_reports_its_spectra(example):
    (x_train, y_train), test = example.load_digits()
    data = ((x_train[:640], y_train[:640]), test)  # 10 steps of 64 per variant
    results = {v: example.train(v, epochs=1, data=data, monitor_every=5) for v in example.VARIANTS}
    for variant, r in results.items():
        assert r["test_accuracy"] > 0.3, (variant, r)  # chance is 0.1
        assert 1.0 < r["mean_alpha"] < 20.0 and math.isfinite(r["mean_log_spectral_norm"]), (variant, r)
        assert len(r["alpha_trace"]) == 1 and math.isfinite(r["alpha_trace"][0])
    # The penalty shrinks the top singular values of the penalised layers; the MSN effective weights are W/σ·γ
    # with γ ≈ 1 this early: log10 λmax ≈ 0.
    assert results["penalty"]["mean_log_spectral_norm"] < results["plain"]["mean_log_spectral_norm"]
    np.testing.assert_allclose(results["msn"]["mean_log_spectral_norm"], 0.0, atol=0.3)
