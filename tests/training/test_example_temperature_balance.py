"""examples/temperature_balance_digits.py --quick: both methods train the CNN, the α trace and the figure exist."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "temperature_balance_digits.py"


@pytest.mark.slow
def test_quick_run_trains_both_ways(tmp_path):
    spec = importlib.util.spec_from_file_location("temperature_balance_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # flax's dataclass modules look their defining module up
    try:
        spec.loader.exec_module(example)
        runs = example.main(["--quick", "--out", str(tmp_path)])
    finally:
        sys.modules.pop(spec.name, None)
    assert sorted(runs.method) == ["tempbalance", "uniform"]
    assert (runs.test_accuracy > 0.3).all()  # two epochs; chance is 0.1
    alpha = pd.read_csv(tmp_path / "alpha.csv")
    assert len(alpha) == 4 and np.isfinite(alpha.alpha_std).all() and (alpha.alpha_mean > 1).all()
    assert (tmp_path / "temperature_balance.png").stat().st_size > 10_000
