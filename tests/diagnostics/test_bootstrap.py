"""The bootstrap of α: reproducible streams, the resampling itself, the formulas shared with the fit, coverage."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wwjax
from wwjax.core._powerlaw import candidate_fits, fit_power_law
from wwjax.diagnostics._bootstrap import (
    DEFAULTS, alpha_mean_and_sem, bootstrap_columns, bootstrap_rows, check_options, resample_esd, resampled_alphas,
    row_seeds, summarize, tail_alpha, uniforms,
)


fit_rows = jax.jit(jax.vmap(fit_power_law))
resample_esd_jit = jax.jit(resample_esd, static_argnames="num_clipped")


def pareto(rng, alpha: float, shape) -> np.ndarray:
    """Ascending Pareto samples with density ∝ x^-α on [1, ∞)."""
    return np.sort((1.0 - rng.random(shape)) ** (-1.0 / (alpha - 1.0)), axis=-1)


def fit_and_bootstrap(esd, B, *, key=0, path="w", **kwargs):
    evals = jnp.asarray(esd)
    rows, n = evals.shape
    fit = fit_rows(evals)
    out = bootstrap_rows(evals, jnp.full(rows, n), jnp.zeros(rows, evals.dtype), row_seeds(key, path, rows),
                         fit.alpha, fit.xmin, fit.num_pl_spikes, num_resamples=B, **kwargs)
    return fit, jax.tree.map(np.asarray, out)


def test_uniforms_do_not_depend_on_the_length_drawn():
    seed = jnp.asarray(row_seeds(0, "a", 1)[0])
    short, long = uniforms(seed, jnp.int32(3), 50), uniforms(seed, jnp.int32(3), 200)
    np.testing.assert_array_equal(short, long[:50])
    other = uniforms(seed, jnp.int32(4), 50)
    assert not np.allclose(short, other)
    assert 0.0 <= float(long.min()) and float(long.max()) < 1.0
    # roughly uniform: the mean of 200 draws within 4 standard errors of 1/2
    assert abs(float(long.mean()) - 0.5) < 4 * np.sqrt(1 / 12 / 200)


def test_replica_draws_only_fitted_eigenvalues(x64):
    rng = np.random.default_rng(1)
    evals = np.sort(np.concatenate([np.zeros(5), np.full(3, 1e-7), pareto(rng, 3.0, 40)]))  # 8 not fitted
    u = uniforms(jnp.asarray(row_seeds(0, "w", 1)[0]), jnp.int32(0), evals.size)
    replica = np.asarray(resample_esd_jit(jnp.asarray(evals), jnp.int32(48), jnp.float64(0.0), u))
    assert np.all(replica[:8] == 0.0) and np.all(np.isin(replica[8:], evals[8:]))
    assert np.all(np.diff(replica) >= 0)
    assert len(np.unique(replica[8:])) < 40  # drawn with replacement: 40 draws of 40 values repeat some (P > 1-1e-16)
    # the same row padded in front gives the same replica: draws are counted from the top
    padded = np.concatenate([np.zeros(16), evals])
    u_long = uniforms(jnp.asarray(row_seeds(0, "w", 1)[0]), jnp.int32(0), padded.size)
    replica_long = np.asarray(resample_esd_jit(jnp.asarray(padded), jnp.int32(48), jnp.float64(0.0), u_long))
    np.testing.assert_array_equal(replica_long[16:], replica)
    # clipped top eigenvalues are never drawn
    clipped = np.asarray(resample_esd_jit(jnp.asarray(evals), jnp.int32(48), jnp.float64(0.0), u, num_clipped=3))
    assert clipped.max() <= evals[-4]


@pytest.mark.parametrize("n", [12, 200])  # the small-sample path (fewer than 20 fitted) and the standard one
def test_tail_alpha_is_the_fits_formula_at_the_fitted_xmin(x64, n):
    """With draws that pick each tail eigenvalue once, the tail replica is the data: its α is the fit's."""
    evals = jnp.asarray(pareto(np.random.default_rng(n), 2.5, n))
    fit = jax.jit(fit_power_law)(evals)
    m = int(fit.num_pl_spikes)
    u = jnp.asarray((np.arange(n) + 0.5) / max(m - 1, 1))  # draw k = k for k < m - 1
    alpha = jax.jit(tail_alpha)(evals, jnp.int32(n), jnp.float64(0.0), fit.xmin, fit.num_pl_spikes, u)
    np.testing.assert_allclose(float(alpha), float(fit.alpha), rtol=1e-12)
    fits, _, _ = jax.jit(candidate_fits)(evals)
    np.testing.assert_allclose(float(alpha), float(fits.alphas[n - m]), rtol=1e-12)


def test_same_key_same_numbers_and_leaves_are_independent(x64):
    rng = np.random.default_rng(2)
    a, b = pareto(rng, 3.0, (2, 60)), pareto(rng, 4.0, (3, 50))
    fits = [dict(alpha=np.asarray(f.alpha), xmin=np.asarray(f.xmin), num_pl_spikes=np.asarray(f.num_pl_spikes))
            for f in (fit_rows(jnp.asarray(x)) for x in (a, b))]
    both = bootstrap_columns([a, b], fits, key=7, B=30, paths=["a", "b"])
    again = bootstrap_columns([a, b], fits, key=7, B=30, paths=["a", "b"])
    alone = bootstrap_columns([a], fits[:1], key=7, B=30, paths=["a"])  # another row count, another padding
    for name in ("alpha_std", "alpha_ci_low", "alpha_ci_high"):
        np.testing.assert_array_equal(both[0][name], again[0][name])
        np.testing.assert_allclose(both[0][name], alone[0][name], rtol=1e-12)
    other_key = bootstrap_columns([a], fits[:1], key=8, B=30, paths=["a"])
    other_path = bootstrap_columns([a], fits[:1], key=7, B=30, paths=["a2"])
    assert not np.allclose(other_key[0]["alpha_std"], alone[0]["alpha_std"])
    assert not np.allclose(other_path[0]["alpha_std"], alone[0]["alpha_std"])
    # the two rows of a leaf draw different resamples (the row number is part of the seed)
    same = np.stack([a[0], a[0]])
    twin = bootstrap_columns([same], [jax.tree.map(lambda v: v[[0, 0]], fits[0])], key=7, B=30, paths=["a"])
    assert twin[0]["alpha_std"][0] != twin[0]["alpha_std"][1]


@pytest.mark.slow
def test_columns_inside_jit_are_the_eager_ones(x64):
    esd = pareto(np.random.default_rng(5), 3.0, (1, 32))
    fit = fit_rows(jnp.asarray(esd))
    columns = dict(alpha=fit.alpha, xmin=fit.xmin, num_pl_spikes=fit.num_pl_spikes)
    eager = bootstrap_columns([esd], [columns], key=3, B=16, paths=["w"])
    jitted = jax.jit(lambda e, c, k: bootstrap_columns([e], [c], k, 16, paths=["w"]))(esd, columns, jax.random.key(3))
    for name in eager[0]:
        np.testing.assert_allclose(jitted[0][name], eager[0][name], rtol=1e-12)


@pytest.mark.slow
def test_memory_blocking_does_not_change_the_numbers(x64):
    esd = pareto(np.random.default_rng(3), 3.0, (3, 64))
    _, wide = fit_and_bootstrap(esd, 20)
    _, narrow = fit_and_bootstrap(esd, 20, ks_elements=64 * 64 * 2)  # two resamples per step
    np.testing.assert_allclose(narrow.alpha_std, wide.alpha_std, rtol=1e-12)
    np.testing.assert_allclose(narrow.alpha_ci_high, wide.alpha_ci_high, rtol=1e-12)


def test_intervals_from_known_resamples():
    """The two intervals on a hand-made set of resamples: percentile quantiles, and their reflection on log(α−1)."""
    boot = jnp.asarray(np.linspace(2.0, 4.0, 101))[None, :]  # α* from 2 to 4; α̂ = 3
    per = summarize(jnp.array([3.0]), boot, level=0.9, interval="percentile")
    np.testing.assert_allclose([per.alpha_ci_low[0], per.alpha_ci_high[0]], [2.1, 3.9], rtol=1e-6)
    basic = summarize(jnp.array([3.0]), boot, level=0.9, interval="basic_log")
    q_lo, q_hi = np.quantile(np.log(np.linspace(2.0, 4.0, 101) - 1.0), [0.05, 0.95])
    np.testing.assert_allclose([basic.alpha_ci_low[0], basic.alpha_ci_high[0]],
                               [1 + 4.0 / np.exp(q_hi), 1 + 4.0 / np.exp(q_lo)], rtol=1e-5)
    np.testing.assert_allclose(basic.alpha_std[0], np.std(np.linspace(2.0, 4.0, 101), ddof=1), rtol=1e-5)
    failed = summarize(jnp.array([jnp.nan, 3.0]), jnp.stack([boot[0], jnp.full(101, jnp.nan)]))
    assert np.isnan(np.asarray(failed.alpha_std)).all()  # no fit, or fewer than 2 replicas that fit


def _coverage(alpha, n, trials, B, seed, resample="esd", interval="basic_log"):
    esd = pareto(np.random.default_rng(seed), alpha, (trials, n))
    fit, out = fit_and_bootstrap(esd, B, key=seed, resample=resample, interval=interval)
    covered = (out.alpha_ci_low <= alpha) & (alpha <= out.alpha_ci_high)
    return float(covered.mean()), np.asarray(fit.alpha), out


def test_coverage_small_pareto(x64):
    """64 Pareto spectra of 64 eigenvalues (α = 3), 64 resamples each: the 95% interval holds the true α in
    about 95% of them (the band allows ±3 binomial standard errors and fails on intervals that always cover)."""
    coverage, fitted, out = _coverage(3.0, 64, 64, 64, seed=0)
    assert 0.85 <= coverage <= 0.99, coverage
    # the bootstrap's spread estimates the estimator's spread across spectra (the median: a spectrum whose KS scan
    # jumps between two xmins has a wide spread of its own)
    assert 0.7 < np.nanmedian(out.alpha_std) / np.std(fitted) < 1.4


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_coverage_pareto(x64, alpha):
    """200 spectra of 200 eigenvalues: ESD resampling with the basic log interval covers within ±3 standard
    errors of 95%; holding xmin fixed (``'tail'``) covers measurably less."""
    coverage, _, _ = _coverage(alpha, 200, 200, 100, seed=1)
    assert 0.90 <= coverage <= 0.99, coverage
    tail, _, _ = _coverage(alpha, 200, 200, 100, seed=1, resample="tail")
    assert tail < coverage


@pytest.mark.slow
def test_columns_of_an_analysis(f32):
    """The columns from ``analyze``'s own ``esd``, ``alpha``, ``xmin``, ``num_pl_spikes`` (float32)."""
    rng = np.random.default_rng(0)
    result = wwjax.analyze({"a": rng.standard_t(3, (300, 100)).astype(np.float32),
                            "b": rng.standard_t(3, (120, 60)).astype(np.float32)})
    nodes = [result["a"], result["b"]]
    fits = [dict(alpha=n.alpha, xmin=n.xmin, num_pl_spikes=n.num_pl_spikes) for n in nodes]
    cols = bootstrap_columns([n.esd for n in nodes], fits, key=0, B=40, paths=["a", "b"])
    assert [c["alpha_std"].shape for c in cols] == [(1,), (1,)]
    for node, c in zip(nodes, cols):
        alpha = np.asarray(node.alpha)
        assert c["alpha_std"].dtype == jnp.float32
        assert np.all((c["alpha_ci_low"] < alpha) & (alpha < c["alpha_ci_high"]) & (c["alpha_std"] > 0))


def test_resampled_alphas_tail_mode_is_cheap_and_finite(x64):
    esd = pareto(np.random.default_rng(4), 3.0, (2, 100))
    fit = fit_rows(jnp.asarray(esd))
    boot = resampled_alphas(jnp.asarray(esd), jnp.full(2, 100), jnp.zeros(2), jnp.asarray(row_seeds(0, "w", 2)),
                            fit.xmin, fit.num_pl_spikes, num_resamples=50, resample="tail", num_clipped=0,
                            ks_elements=1 << 20)
    assert boot.shape == (2, 50) and np.isfinite(np.asarray(boot)).all()
    # at a fixed xmin, the replicas' α scatter around the fitted one (Hill: sd ≈ (α−1)/√m)
    expected_sd = (np.asarray(fit.alpha) - 1) / np.sqrt(np.asarray(fit.num_pl_spikes))
    np.testing.assert_allclose(np.asarray(boot).std(axis=1), expected_sd, rtol=0.35)


def test_check_options_says_what_to_change():
    opts = types.SimpleNamespace(**DEFAULTS, key=None, fit="PL", fix_fingers=None)
    check_options(opts)
    for change, message in [
        (dict(bootstrap=1), "number of resamples"), (dict(bootstrap=True), "number of resamples"),
        (dict(bootstrap_level=1.0), "strictly between 0 and 1"), (dict(bootstrap_resample="xmin"), "one of"),
        (dict(bootstrap_interval="bca"), "one of"), (dict(bootstrap=100), "pass key="),
        (dict(bootstrap=100, key=0, fit="TPL"), "can redo only the KS power law"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_options(types.SimpleNamespace(**{**vars(opts), **change}))


def test_mean_and_sem_leave_out_failed_rows():
    mean, sem = alpha_mean_and_sem({"alpha": [2.0, np.nan, 4.0], "alpha_std": [0.3, np.nan, 0.4]})
    assert (mean, sem) == (3.0, 0.25)
    assert np.isnan(alpha_mean_and_sem({"alpha": [2.0, 4.0]})[1])  # no bootstrap columns: no error bar
