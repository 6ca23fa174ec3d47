"""examples/alpha_pruning.py --quick: a trained MLP pruned uniformly and by α, at the same global sparsity."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "alpha_pruning.py"


@pytest.mark.slow
def test_quick_run_prunes_both_ways(tmp_path):
    spec = importlib.util.spec_from_file_location("alpha_pruning", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    try:
        spec.loader.exec_module(example)
        mlp, _ = example.main(["--quick", "--out", str(tmp_path)])
    finally:
        sys.modules.pop(spec.name, None)
    assert sorted(set(mlp.method)) == ["alpha", "alpha_median", "uniform"] and sorted(set(mlp.target)) == [0.5, 0.8]
    sizes = {f"Dense_{i}": 256 * 256 for i in range(1, 5)}  # the hidden layers; input and output stay dense
    for _, row in mlp.iterrows():  # the same global sparsity both ways (per-layer ratios rounded to 1e-3)
        total = sum(row[f"s_{name}"] * n for name, n in sizes.items()) / sum(sizes.values())
        assert abs(total - row.target) < 2e-3
        assert 0.1 < row.accuracy <= row.dense_accuracy + 0.02
    assert (tmp_path / "alpha_pruning.png").stat().st_size > 10_000
