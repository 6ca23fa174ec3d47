"""``analyze(xmin=...)`` (the Hill rules as the row fit) and ``analyze(bootstrap=B)`` (error bars on α)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wwjax
from conftest import heavy_tailed, reference_hill_fit
from wwjax.core._spectra import rank_tolerance
from wwjax.diagnostics._bootstrap import (
    alpha_mean_and_sem, bootstrap_columns, resample_esd, resampled_alphas, row_seeds, uniforms,
)
from wwjax.diagnostics._hill import HillRowFit, hill_fit_rows

RULES = ("median", "peak", "scan")
BOOT = ("alpha_std", "alpha_ci_low", "alpha_ci_high")


def _params(seed: int = 0) -> dict:
    """A dense kernel, a conv kernel (9 positions) and a stack of 3 dense layers (rows: 1, 1 or 9, 3)."""
    rng = np.random.default_rng(seed)
    return {"Dense_0": {"kernel": heavy_tailed(rng, (160, 64))},
            "Conv_0": {"kernel": heavy_tailed(rng, (3, 3, 8, 16))},
            "blocks": {"kernel": heavy_tailed(rng, (3, 96, 48))}}


def _rows(result) -> list[tuple[str, np.ndarray, float]]:
    """Every analysed row: (path, its ESD, its α)."""
    out = []
    for node in jax.tree.leaves(result, is_leaf=lambda n: isinstance(n, wwjax.LayerMetrics)):
        if isinstance(node, wwjax.LayerMetrics):
            out += [(node.path, np.asarray(node.esd[r]), float(node.alpha[r])) for r in range(node.esd.shape[0])]
    return out


def test_xmin_median_on_a_dense_leaf(x64):
    """The fast check: α, xmin and num_pl_spikes of analyze(xmin='median') are the published fit's."""
    node = wwjax.analyze({"w": heavy_tailed(np.random.default_rng(7), (80, 40))}, xmin="median")["w"]
    esd = np.asarray(node.esd[0])
    np.testing.assert_allclose(float(node.alpha[0]), reference_hill_fit(esd, "median")[0], rtol=1e-8)
    assert float(node.xmin[0]) == esd[20] and int(node.num_pl_spikes[0]) == 20


@pytest.mark.slow
@pytest.mark.parametrize("pool", [True, False])
def test_xmin_rules_are_hill_fit_and_the_published_fit(x64, pool):
    """Every row's α (dense, conv pooled or per position, stacked) is hill_fit's and the NumPy transcription's."""
    params = _params()
    for rule in RULES if pool else ("median",):
        result = wwjax.analyze(params, xmin=rule, pool=pool, stacked="blocks")
        rows = _rows(result)
        assert len(rows) == 1 + (1 if pool else 9) + 3
        width = max(len(e) for _, e, _ in rows)
        esd = np.stack([np.pad(e, (width - len(e), 0)) for _, e, _ in rows])  # engine rows: zeros in front
        want = hill_fit_rows(esd, np.array([len(e) for _, e, _ in rows]), xmin=rule)
        for (path, e, alpha), hill, ok in zip(rows, np.asarray(want.alpha), np.asarray(want.ok)):
            assert ok, (rule, path)
            np.testing.assert_allclose(alpha, hill, rtol=1e-10, err_msg=f"{rule} {path}")
            np.testing.assert_allclose(alpha, reference_hill_fit(e, rule)[0], rtol=1e-8, err_msg=f"{rule} {path}")
    # the other columns come from the same fit: num_pl_spikes eigenvalues at or above xmin, σ = (α − 1)/√that
    node = wwjax.analyze(params, xmin="median")["Dense_0"]["kernel"]
    esd, m = np.asarray(node.esd[0]), int(node.num_pl_spikes[0])
    assert m == 64 - 32 and np.sum(esd >= float(node.xmin[0])) == m
    np.testing.assert_allclose(node.sigma, (node.alpha - 1) / np.sqrt(m), rtol=1e-12)
    np.testing.assert_allclose(node.xmax, node.lambda_max, rtol=1e-12)
    default = wwjax.analyze(params)["Dense_0"]["kernel"]
    assert not np.allclose(node.alpha, default.alpha)  # the rule, not WeightWatcher's KS fit


def test_xmin_options_say_what_to_change():
    w = {"w": np.ones((20, 10), np.float32)}
    for options, message in [
        (dict(xmin="mid"), r"xmin must be None \(WeightWatcher's KS scan\) or one of"),
        (dict(xmin="median", xmin_pos=0.5), "xmin_pos must be >= 1"),
        (dict(xmin="peak", xmin_bins=0), "xmin_bins must be an int"),
        (dict(xmin="peak", xmin_peak_lower="log"), "xmin_peak_lower must be"),
        (dict(xmin="median", fit="TPL"), r"cannot be combined with fit='TPL'"),
        (dict(xmin="peak", fix_fingers="xmin_peak"), r"cannot be combined with fix_fingers='xmin_peak'"),
        (dict(xmin="median", xmax=-1), "drop xmax"),
        (dict(bootstrap=10, key=0, fix_fingers="clip_xmax"), "can redo only the KS power law"),
    ]:
        with pytest.raises(ValueError, match=message):
            wwjax.analyze(w, **options)


def test_bootstrap_same_key_same_numbers_and_alpha_sem(f32):
    """The fast check: same key, same columns; another key, others; summary's alpha_sem from them."""
    params = {"w": heavy_tailed(np.random.default_rng(8), (96, 48))}
    first, again = (wwjax.analyze(params, bootstrap=8, key=3) for _ in range(2))
    other = wwjax.analyze(params, bootstrap=8, key=4)
    for name in BOOT:
        np.testing.assert_array_equal(first["w"].extra[name], again["w"].extra[name])
    assert float(first["w"].extra["alpha_std"][0]) != float(other["w"].extra["alpha_std"][0])
    np.testing.assert_allclose(wwjax.summary(first)["alpha_sem"], first["w"].extra["alpha_std"][0], rtol=1e-6)


@pytest.mark.slow
def test_bootstrap_columns_are_those_of_the_rows_own_fits(f32):
    """analyze(bootstrap=B) == bootstrap_columns on the analysis' rows; same key, same numbers; a leaf's columns do
    not depend on the other leaves; summary's alpha_sem is alpha_mean_and_sem's."""
    params = _params(1)
    result = wwjax.analyze(params, bootstrap=24, key=5, stacked="blocks")
    again = wwjax.analyze(params, bootstrap=24, key=5, stacked="blocks")
    alone = wwjax.analyze({"Dense_0": params["Dense_0"]}, bootstrap=24, key=5)
    other = wwjax.analyze({"Dense_0": params["Dense_0"]}, bootstrap=24, key=6)
    node = result["Dense_0"]["kernel"]
    fits = dict(alpha=node.alpha, xmin=node.xmin, num_pl_spikes=node.num_pl_spikes)
    floor = node.esd[:, -1] * rank_tolerance("gram", 160, 64, jnp.float32, refined=True)
    direct = bootstrap_columns([node.esd], [fits], 5, 24, paths=["Dense_0/kernel"], noise_floors=[floor])[0]
    for name in BOOT:
        np.testing.assert_array_equal(node.extra[name], direct[name])
        np.testing.assert_array_equal(node.extra[name], again["Dense_0"]["kernel"].extra[name])
        np.testing.assert_array_equal(node.extra[name], alone["Dense_0"]["kernel"].extra[name])
    assert not np.allclose(node.extra["alpha_std"], other["Dense_0"]["kernel"].extra["alpha_std"])
    table = wwjax.details(result)
    assert set(BOOT) <= set(table.columns) and len(table) == 5
    assert np.all(table.alpha_ci_low < table.alpha) and np.all(table.alpha < table.alpha_ci_high)
    summary = wwjax.summary(result)
    mean, sem = alpha_mean_and_sem(table)
    np.testing.assert_allclose([summary["alpha"], summary["alpha_sem"]], [mean, sem], rtol=1e-6)
    assert 0 < sem < float(table.alpha_std.max())
    assert "alpha_sem" not in wwjax.summary(wwjax.analyze(params, stacked="blocks"))


@pytest.mark.slow
def test_bootstrap_refits_with_the_hill_rule(x64):
    """With xmin=rule each replica is refitted by the rule: its resampled α are hill_fit's of the replicas."""
    rng = np.random.default_rng(3)
    esd = np.sort(np.linalg.svd(rng.standard_t(3, (120, 60)), compute_uv=False) ** 2)[None]
    n, B = esd.shape[1], 6
    seeds = row_seeds(2, "w", 1)
    replicas = np.stack([np.asarray(resample_esd(jnp.asarray(esd[0]), n, 0.0, uniforms(seeds[0], jnp.int32(b), n)))
                         for b in range(B)])
    for rule in ("median", "peak"):
        got = resampled_alphas(jnp.asarray(esd), jnp.array([n]), jnp.zeros(1), seeds, jnp.zeros(1),
                               jnp.zeros(1, jnp.int32), num_resamples=B, resample="esd", num_clipped=0,
                               ks_elements=1 << 20, refit=HillRowFit(rule))
        want = [reference_hill_fit(r, rule)[0] for r in replicas]
        np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-8)
    ks = resampled_alphas(jnp.asarray(esd), jnp.array([n]), jnp.zeros(1), seeds, jnp.zeros(1),
                          jnp.zeros(1, jnp.int32), num_resamples=B, resample="esd", num_clipped=0, ks_elements=1 << 20)
    assert not np.allclose(np.asarray(ks), np.asarray(got))  # the default refit is the KS power law
    # and through analyze: the interval is built around the Hill α, from Hill refits
    node = wwjax.analyze({"w": esd_matrix(rng)}, xmin="median", bootstrap=40, key=0)["w"]
    assert float(node.extra["alpha_ci_low"][0]) < float(node.alpha[0]) < float(node.extra["alpha_ci_high"][0])
    assert float(node.extra["alpha_std"][0]) < 0.5 * float(node.alpha[0] - 1)


def esd_matrix(rng) -> np.ndarray:
    return rng.standard_t(3, (200, 100))


@pytest.mark.slow
def test_plot_layers_draws_the_intervals(f32):
    import matplotlib

    matplotlib.use("Agg")
    import wwjax.plot

    params = {f"Dense_{i}": {"kernel": heavy_tailed(np.random.default_rng(i), (150, 60))} for i in range(3)}
    result = wwjax.analyze(params, bootstrap=16, key=0)
    ax = wwjax.plot.layers(result, "alpha").axes[0]
    bars = [c for c in ax.collections if len(getattr(c, "get_segments", lambda: [])()) == 3]
    assert len(bars) == 1
    table = wwjax.details(result)
    np.testing.assert_allclose([s[:, 1] for s in bars[0].get_segments()],
                               table[["alpha_ci_low", "alpha_ci_high"]].to_numpy(float), rtol=1e-6)
    plain = wwjax.plot.layers(wwjax.analyze(params), "alpha").axes[0]
    assert not [c for c in plain.collections if hasattr(c, "get_segments")]


@pytest.mark.slow
def test_jit_equals_eager(x64):
    params = _params(2)
    for options in (dict(xmin="peak"), dict(xmin="median", bootstrap=12, key=1), dict(bootstrap=12, key=1)):
        eager = wwjax.details(wwjax.analyze(params, stacked="blocks", **options))
        jitted = jax.jit(lambda p, o=options: wwjax.analyze(p, stacked="blocks", **o))(params)
        jitted = wwjax.details(jitted)
        columns = ["alpha", "D", "xmin", "sigma", "num_pl_spikes"] + [c for c in BOOT if c in eager]
        np.testing.assert_allclose(jitted[columns].to_numpy(float), eager[columns].to_numpy(float), rtol=1e-10,
                                   err_msg=str(options))
    traced = jax.jit(lambda p: wwjax.summary(wwjax.analyze(p, stacked="blocks", bootstrap=12, key=1)))(params)
    eager = wwjax.summary(wwjax.analyze(params, stacked="blocks", bootstrap=12, key=1))
    np.testing.assert_allclose(float(traced["alpha_sem"]), eager["alpha_sem"], rtol=1e-10)


_MESH_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import wwjax
    sys.path.insert(0, sys.argv[1])
    from test_estimators import _params
    params = _params(4)
    mesh = jax.make_mesh((2,), ("batch",))
    out = {}
    for name, options in [("peak", dict(xmin="peak")), ("boot", dict(xmin="median", bootstrap=8, key=0))]:
        single = wwjax.details(wwjax.analyze(params, stacked="blocks", **options))
        meshed = wwjax.details(wwjax.analyze(params, stacked="blocks", mesh=mesh, **options))
        cols = [c for c in ("alpha", "D", "xmin", "num_pl_spikes", "alpha_std", "alpha_ci_low") if c in single]
        a, b = single[cols].to_numpy(float), meshed[cols].to_numpy(float)
        out[name] = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-300)))
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_mesh_equals_single_device():
    """On 2 simulated CPU devices (a subprocess under a watchdog) the Hill rows and the bootstrap are unchanged."""
    here = os.path.dirname(__file__)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(here), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _MESH_SCRIPT, here], capture_output=True, text=True, timeout=300,
                          env=env, cwd=os.path.dirname(os.path.dirname(here)))
    assert done.returncode == 0, done.stderr[-3000:]
    deviations = json.loads(done.stdout.strip().splitlines()[-1])
    assert max(deviations.values()) < 1e-10, deviations
