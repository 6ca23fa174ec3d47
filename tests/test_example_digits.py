"""A short run of each of the four ways of examples/train_digits_spectral.py (plain, penalty, MSN, BatchNorm)."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest

pytest.importorskip("sklearn")

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "train_digits_spectral.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_digits_spectral", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax's dataclass modules look their defining module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.slow
def test_each_way_trains_and_reports_its_spectra(example):
    (x_train, y_train), test = example.load_digits()
    data = ((x_train[:640], y_train[:640]), test)  # 10 steps of 64 per variant
    results = {v: example.train(v, epochs=1, data=data, monitor_every=5) for v in example.VARIANTS}
    for variant, r in results.items():
        assert r["test_accuracy"] > 0.3, (variant, r)  # chance is 0.1
        assert 1.0 < r["mean_alpha"] < 20.0 and math.isfinite(r["mean_log_spectral_norm"]), (variant, r)
        assert len(r["alpha_trace"]) == 1 and math.isfinite(r["alpha_trace"][0])
    # The penalty shrinks the top singular values of the penalised layers. MSN's effective weights W/σ·γ have
    # σ_max ≈ 1 (γ ≈ 1 this early): λmax ≈ 1 for the dense layer, and for a conv layer analyze's per-position
    # slices (each σ <= the reshaped kernel's) scaled by conv2d_norm's 1/2 give log10 λmax <= log10(0.5).
    assert results["penalty"]["mean_log_spectral_norm"] < results["plain"]["mean_log_spectral_norm"]
    assert -1.5 < results["msn"]["mean_log_spectral_norm"] < 0.05
    assert results["msn"]["mean_log_spectral_norm"] < results["plain"]["mean_log_spectral_norm"]
