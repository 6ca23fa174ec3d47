"""The experiments (examples/experiment_*.py) in their quick versions: they run, write their table and figure, and
their numbers are what the tables say."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

pytest.importorskip("sklearn", reason="the experiments train on scikit-learn's digits")
pytest.importorskip("matplotlib", reason="the experiments draw their figures with matplotlib")

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import experiment_batch_size_alpha as exp1  # noqa: E402
import experiment_simpsons_paradox as exp2  # noqa: E402

pytestmark = pytest.mark.slow


def _assert_png(path: pathlib.Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_experiment1_batch_size_alpha(tmp_path, capsys):
    exp1.main(["--quick", "--out", str(tmp_path)])
    runs = pd.read_csv(tmp_path / "runs.csv")
    rho = pd.read_csv(tmp_path / "correlations.csv").set_index("metric")
    _assert_png(tmp_path / "batch_size_alpha.png")
    assert list(runs.batch_size) == [16, 64, 256]
    assert runs.test_accuracy.between(0.9, 1.0).all()
    # The JMLR claim at this scale: mean α grows with the batch size (measured: 2.74, 3.14, 5.33).
    assert np.all(np.diff(runs.alpha) > 0.2), runs.alpha.tolist()
    assert runs.alpha.between(2.0, 6.0).all()
    # The correlation table is Spearman's ρ of the table's own numbers.
    for metric in ("alpha", "alpha_weighted", "log_spectral_norm"):
        expected = stats.spearmanr(runs[metric], runs.test_accuracy).statistic
        assert rho.loc[metric, "rho_all"] == pytest.approx(expected)
    assert rho.loc["alpha vs batch_size", "rho_all"] == pytest.approx(1.0)
    assert "3 models" in capsys.readouterr().out


def test_experiment2_simpsons_paradox(tmp_path):
    exp2.main(["--quick", "--out", str(tmp_path)])
    runs = pd.read_csv(tmp_path / "runs.csv")
    rho = pd.read_csv(tmp_path / "correlations.csv").set_index("metric")
    _assert_png(tmp_path / "simpsons_paradox.png")
    assert len(runs) == 4 and sorted(runs.depth.unique()) == [1, 2]
    assert runs.test_accuracy.between(0.85, 1.0).all()  # 6 epochs: batch 256 reaches only 0.90-0.92
    # Within each depth the larger batch gives the larger mean α, as in experiment 1.
    for _, group in runs.groupby("depth"):
        assert group.sort_values("batch_size").alpha.is_monotonic_increasing
    means = runs.groupby("depth").mean(numeric_only=True)
    for metric in exp2.METRICS:
        within = [stats.spearmanr(g[metric], g.test_accuracy).statistic for _, g in runs.groupby("depth")]
        assert rho.loc[metric, ["depth=1", "depth=2"]].to_numpy() == pytest.approx(within, nan_ok=True)
        assert rho.loc[metric, "within_mean"] == pytest.approx(np.nanmean(within), nan_ok=True)
        across = stats.spearmanr(means[metric], means.test_accuracy).statistic
        assert rho.loc[metric, "across_depths"] == pytest.approx(across, nan_ok=True)
        pooled = stats.spearmanr(runs[metric], runs.test_accuracy).statistic
        assert rho.loc[metric, "pooled"] == pytest.approx(pooled, nan_ok=True)
