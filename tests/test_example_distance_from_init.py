"""examples/distance_from_init.py --quick: a real overfitting run, scanned with distance from init."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "distance_from_init.py"


@pytest.mark.slow
def test_quick_run_overfits_and_moves_away_from_init(tmp_path):
    spec = importlib.util.spec_from_file_location("distance_from_init", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    table = example.main(["--quick", "--out", str(tmp_path)])
    assert table.step.tolist() == list(range(0, 151, 25))
    written = pd.read_csv(tmp_path / "trend.csv")
    np.testing.assert_allclose(written.distance_from_init, table.distance_from_init)
    assert (tmp_path / "trend.png").stat().st_size > 10_000
    # It overfits: the training subset is fitted, test accuracy stays below it.
    assert table.train_accuracy.iloc[-1] == 1.0
    assert table.test_accuracy.iloc[-1] < 1.0 and table.test_accuracy.iloc[-1] > 0.8
    # The weights only ever move further from their start, and α falls from its random-init value as they learn.
    distance = table.distance_from_init.to_numpy()
    assert distance[0] == 0.0 and np.all(np.diff(distance) > 0)
    assert table.alpha.iloc[-1] < table.alpha.iloc[0] - 1.0
