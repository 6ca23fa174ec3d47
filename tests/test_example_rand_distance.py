"""``examples/rand_distance_vs_alpha.py --quick``: trains, analyses with randomize=True, writes table and figures."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "rand_distance_vs_alpha.py"


@pytest.mark.slow  # trains a CNN (compilation included): ~15 s on an idle 2-core CPU
def test_quick_run_writes_the_table_and_figures(tmp_path):
    spec = importlib.util.spec_from_file_location("rand_distance_vs_alpha", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    table = example.main(["--quick", "--out", str(tmp_path)])
    assert set(table.path) == {"Conv_0/kernel", "Conv_1/kernel", "Dense_0/kernel", "Dense_1/kernel"}
    on_disk = pd.read_csv(tmp_path / "rand_distance_vs_alpha.csv")
    np.testing.assert_allclose(on_disk.rand_distance, table.rand_distance.astype(float), rtol=1e-6)
    assert ((table.rand_distance >= 0) & (table.rand_distance < np.sqrt(np.log(2)))).all()
    by_path = table.set_index("path")
    # Conv_0 maps 1 input channel: each kernel position is a 32 x 1 matrix, whose one singular value (its norm)
    # no shuffle can change: its shuffled spectrum is its spectrum.
    assert by_path.loc["Conv_0/kernel", "rand_distance"] < 1e-3
    assert by_path.loc["Conv_0/kernel", "ww_softrank"] == pytest.approx(1.0, rel=1e-5)
    # The hidden dense layer learns the most structure: farther from its shuffle than the untouched Conv_0.
    assert by_path.loc["Dense_0/kernel", "rand_distance"] > 0.05
    for name in ("rand_distance_vs_alpha.png", "randomized_esd.png"):
        assert (tmp_path / name).stat().st_size > 10_000
