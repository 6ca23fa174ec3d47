"""``wwjax.plot``: every figure draws what it says, returns a Figure, and writes only when asked."""

from __future__ import annotations

import numpy as np
import pytest

import wwjax
from conftest import heavy_tailed

pytest.importorskip("matplotlib")
import wwjax.plot  # noqa: E402


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(0)
    planted = heavy_tailed(rng, (120, 60), df=4)
    planted[5, 7] = 30 * np.abs(planted).max()
    params = {"planted": {"kernel": planted}, "conv": {"kernel": heavy_tailed(rng, (3, 3, 8, 16))}}
    return wwjax.analyze(params, randomize=True, key=0, mp_fit=True)


def test_esd_draws_the_fitted_power_law(result):
    node = result["planted"]["kernel"]
    fig = wwjax.plot.esd(node)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    xmin_line = [line for line in ax.lines if line.get_label().startswith("xmin")][0]
    assert xmin_line.get_xdata()[0] == pytest.approx(float(node.xmin[0]))
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"power law, α = {float(node.alpha[0]):.2f}" in legend


def test_randomized_esd_marks_the_trap(result, tmp_path):
    node = result["planted"]["kernel"]
    target = tmp_path / "rand.png"
    fig = wwjax.plot.randomized_esd(result, "planted/kernel", save=target)
    assert target.stat().st_size > 10_000
    traps = [line for line in fig.axes[0].lines if "trap" in line.get_label()]
    assert len(traps) == 1 and len(traps[0].get_xdata()) == int(node.extra["num_traps"][0]) >= 1


@pytest.mark.slow
def test_mp_fit_matches_the_analysis_and_needs_randomize_for_the_shuffled_one(result):
    node = result["planted"]["kernel"]
    fig = wwjax.plot.mp_fit(node)
    assert f"spikes = {int(node.extra['num_spikes'][0])}" in fig.axes[0].get_title()
    plain = wwjax.analyze({"w": heavy_tailed(np.random.default_rng(1), (64, 32))})
    with pytest.raises(ValueError, match="randomize=True"):
        wwjax.plot.mp_fit(plain, "w", randomized=True)
    with pytest.raises(KeyError, match="analysed paths"):
        wwjax.plot.esd(plain, "nope")


def test_ks_alpha_and_layers(result):
    fig = wwjax.plot.ks_alpha(result, "conv/kernel")
    assert len(fig.axes) == 2
    fig = wwjax.plot.layers(result, "rand_distance")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(),
                               wwjax.details(result).rand_distance.astype(float).to_numpy())
