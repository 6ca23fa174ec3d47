"""``mp_fit`` and ``randomize``: the MP fit against WeightWatcher's golden numbers, the randomized columns by their
definitions (a NumPy re-implementation on the same shuffles), by reproducibility, by WeightWatcher's spread over
seeds, and correlation traps on matrices where the answer is known."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import scipy.stats

import wwjax
from conftest import GOLDEN, heavy_tailed
from wwjax.core._layout import MatrixView, as_matrices
from wwjax.diagnostics._randomize import as_key, leaf_seed, path_hash, shuffled

MP_COLUMNS = ["num_spikes", "sigma_mp", "mp_softrank", "W_scale", "bulk_max", "bulk_min"]
RAND_COLUMNS = ["max_rand_eval", "rand_distance", "ww_softrank", "ww_maxdist", "rand_num_spikes", "num_traps",
                "rand_sigma_mp", "rand_mp_softrank", "rand_W_scale", "rand_bulk_max", "rand_bulk_min"]
# WeightWatcher swaps N and M of even kernels with out < in (docs/differences.md): its Q, and so its MP fit, differ.
SWAPPED = "conv2x2_down/kernel"


def _joined(theirs: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    keys = ["path", "slice_id"] if "slice_id" in theirs else ["path"]
    ours = ours[ours.status != "skipped"].astype({k: str for k in keys})
    return ours.merge(theirs.astype({k: str for k in keys}), on=keys, suffixes=("", "_ww"))


# A fast subset: the quarter-circle fit (Q = 1, a real trained matrix), spikes, a heavy tail, conv pooling, a rank-1
# matrix and WeightWatcher's swapped even kernel. The slow variant runs every golden case.
MP_CASES = ("dense_wide", "heavy", "conv3x3_up", "conv2x2_down", "rank1", "trained_query")


@pytest.mark.parametrize("pool,cases", [
    pytest.param(True, MP_CASES, marks=pytest.mark.slow),
    (False, ("conv2x2_up", "conv2x2_down")),
    pytest.param(True, None, marks=pytest.mark.slow),
    pytest.param(False, None, marks=pytest.mark.slow),
])
def test_mp_fit_matches_weightwatcher(pool, cases, golden_params, x64):
    theirs = pd.read_csv(GOLDEN / ("ww_mp_fit.csv" if pool else "ww_mp_fit_pool_false.csv"))
    params = {k: v for k, v in golden_params.items()
              if (cases is None or k in cases) and (pool or k.startswith("conv"))}
    joined = _joined(theirs, wwjax.details(wwjax.analyze(params, svd_method="accurate", pool=pool, mp_fit=True)))
    assert len(joined) == len(theirs[theirs.path.isin(joined.path)])
    same = joined[joined.path != SWAPPED]
    np.testing.assert_array_equal(same.num_spikes.astype(int), same.num_spikes_ww)
    for column in MP_COLUMNS[1:]:  # measured: <= 3e-15 relative
        np.testing.assert_allclose(same[column].astype(float), same[f"{column}_ww"], rtol=1e-9, err_msg=column)
    swapped = joined[joined.path == SWAPPED]
    assert (swapped.Q > 1).all() and (swapped.Q_ww < 1).all()


def test_mp_fit_float32_is_close(golden_params, f32):
    theirs = pd.read_csv(GOLDEN / "ww_mp_fit.csv")
    params = {k: golden_params[k] for k in ("dense_wide",)}
    joined = _joined(theirs, wwjax.details(wwjax.analyze(params, mp_fit=True)))
    np.testing.assert_array_equal(joined.num_spikes.astype(int), joined.num_spikes_ww)
    np.testing.assert_allclose(joined.sigma_mp.astype(float), joined.sigma_mp_ww, rtol=1e-3)


def _numpy_randomized(w: np.ndarray, shuffles: np.ndarray, replicas: int) -> dict:
    """The spec's definitions, in NumPy/SciPy, on given shuffles of one matrix ``w``: R1 pools the first
    ``replicas``; R2 is the next one (``replicas + 1`` given, WeightWatcher's fresh R2) or else the first."""
    esd = np.sort(np.linalg.svd(w, compute_uv=False) ** 2)
    spectra = [np.linalg.svd(s, compute_uv=False) ** 2 for s in shuffles]
    r1, r2 = np.sort(np.concatenate(spectra[:replicas])), np.sort(spectra[replicas % len(spectra)])
    m = (esd + r2) / 2
    js = np.sqrt((scipy.stats.entropy(esd, m) + scipy.stats.entropy(r2, m)) / 2)
    return dict(max_rand_eval=r1.max(), rand_distance=js, ww_softrank=r2.max() / esd.max(),
                ww_maxdist=esd.max() - r2.max())


@pytest.mark.parametrize("fresh_r2", [False, True])
@pytest.mark.parametrize("shape", [(120, 40), (200, 120)])  # 5 shuffles in R1 (M < 100), and 1
def test_randomized_columns_follow_their_definitions(shape, fresh_r2, x64):
    w = heavy_tailed(np.random.default_rng(1), shape).astype(np.float64)
    params = {"dense": {"kernel": w}}
    row = wwjax.details(wwjax.analyze(params, svd_method="accurate", randomize=True, key=7, fresh_r2=fresh_r2)).iloc[0]
    replicas = 5 if shape[1] < 100 else 1
    mats = as_matrices(w, MatrixView((0,), (1,)))[0]
    shuffles = np.asarray(shuffled(leaf_seed(as_key(7), path_hash("dense/kernel")), mats, replicas + fresh_r2))[:, 0]
    expected = _numpy_randomized(w, shuffles, replicas)
    for column, value in expected.items():
        np.testing.assert_allclose(row[column], value, rtol=1e-9, err_msg=column)
    assert 0 < row.rand_distance < 1


@pytest.mark.slow
def test_randomize_is_reproducible_jitted_or_not():
    rng = np.random.default_rng(2)
    params = {"Conv_0": {"kernel": heavy_tailed(rng, (3, 3, 8, 16))}}
    columns = ["rand_distance", "max_rand_eval", "rand_sigma_mp", "num_traps"]
    first = wwjax.details(wwjax.analyze(params, randomize=True, key=3))[columns]
    again = wwjax.details(wwjax.analyze(params, randomize=True, key=jax.random.key(3)))[columns]
    jitted = wwjax.details(jax.jit(functools.partial(wwjax.analyze, randomize=True, key=3))(params))[columns]
    other = wwjax.details(wwjax.analyze(params, randomize=True, key=4))[columns]
    pd.testing.assert_frame_equal(first, again)
    np.testing.assert_allclose(jitted.to_numpy(float), first.to_numpy(float), rtol=1e-5)
    assert not np.allclose(other.rand_distance.astype(float), first.rand_distance.astype(float))


@pytest.mark.slow
@pytest.mark.parametrize("fresh_r2", [False, True])
def test_randomize_agrees_with_weightwatcher_over_seeds(golden_params, fresh_r2, x64):
    """WeightWatcher's shuffle is unseeded: our mean over keys must sit within the spread of its runs (whether R2 is
    a shuffle of its own, as in WeightWatcher, or R1's: each column's distribution is the same)."""
    theirs = pd.read_csv(GOLDEN / "ww_randomize.csv")
    names = ("dense_square", "dense_wide", "heavy", "conv_rgb", "rank1")
    params = {k: golden_params[k] for k in names}
    runs = [wwjax.details(wwjax.analyze(params, svd_method="accurate", randomize=True, key=k, fresh_r2=fresh_r2))
            for k in range(4)]
    ours = pd.concat(runs).groupby("path")
    ww = theirs[theirs.path.isin(ours.groups)].groupby("path")
    for column in ["rand_distance", "ww_softrank", "max_rand_eval", "rand_sigma_mp", "rand_bulk_max", "num_traps"]:
        mean_ours, mean_ww = ours[column].mean().astype(float), ww[column].mean()
        spread = ww[column].std() + ours[column].std().astype(float)
        # Standard errors of two means of 4 and 8 runs, with a floor for columns that hardly vary.
        bound = 3 * spread / 2 + 1e-3 * mean_ww.abs() + (0.5 if column == "num_traps" else 0)
        assert ((mean_ours - mean_ww).abs() <= bound).all(), (column, pd.DataFrame({"ours": mean_ours, "ww": mean_ww}))


def test_gaussian_matrix_has_no_traps_and_a_planted_element_makes_one():
    rng = np.random.default_rng(5)
    gaussian = rng.normal(0, 1 / np.sqrt(200), (200, 100)).astype(np.float32)
    planted = heavy_tailed(rng, (200, 100), df=5)
    planted[37, 50] = 40 * np.abs(planted).max()
    result = wwjax.analyze({"gauss": {"kernel": gaussian}, "planted": {"kernel": planted}}, randomize=True, key=0,
                           trap_elements=2)
    g, p = result["gauss"]["kernel"], result["planted"]["kernel"]
    assert int(g.extra["num_traps"][0]) == 0 and int(g.extra["num_trap_elements"][0]) == 0
    assert (np.asarray(g.extra["trap_index"]) == -1).all()
    assert int(p.extra["num_traps"][0]) >= 1
    assert int(p.extra["num_trap_elements"][0]) >= 1
    np.testing.assert_array_equal(np.asarray(p.extra["trap_index"][0, 0]), [37, 50])  # the largest one first
    assert float(p.extra["trap_value"][0, 0]) == planted[37, 50]
    # The trap is an eigenvalue of the shuffled matrix far beyond its bulk edge.
    assert float(p.extra["max_rand_eval"][0]) > 10 * float(p.extra["rand_bulk_max"][0])


@pytest.mark.slow
def test_pool_false_gives_one_randomized_row_per_kernel_position():
    kernel = heavy_tailed(np.random.default_rng(3), (3, 3, 8, 16))
    result = wwjax.analyze({"conv": {"kernel": kernel}}, pool=False, randomize=True, key=1, mp_fit=True,
                           trap_elements=1)
    node = result["conv"]["kernel"]
    assert node.extra["rand_distance"].shape == (9,) and node.extra["rand_esd"].shape == (9, 5 * 8)
    assert node.extra["trap_index"].shape == (9, 1, 4)
    table = wwjax.details(result)
    assert len(table) == 9 and table[MP_COLUMNS + RAND_COLUMNS].notna().all().all()


def test_bad_diagnostics_options_say_what_to_do():
    params = {"w": np.ones((20, 10))}
    with pytest.raises(ValueError, match="pass key="):
        wwjax.analyze(params, randomize=True)
    with pytest.raises(TypeError, match="key must be"):
        wwjax.analyze(params, randomize=True, key="seed")
    with pytest.raises(ValueError, match="needs randomize=True"):
        wwjax.analyze(params, trap_elements=3)
    with pytest.raises(TypeError, match="mp_fit must be"):
        wwjax.analyze(params, mp_fit="yes")


def test_non_finite_weights_give_missing_diagnostics():
    w = heavy_tailed(np.random.default_rng(0), (64, 32))
    w[3, 4] = np.nan
    row = wwjax.details(wwjax.analyze({"w": {"kernel": w}}, mp_fit=True, randomize=True, key=0)).iloc[0]
    assert row.status == "failed" and np.isnan(row.sigma_mp) and np.isnan(row.rand_distance)
    assert row.num_traps is pd.NA or row.num_traps == -1


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097, 100003])
def test_the_shuffle_permutation_is_a_bijection_and_depends_on_the_key(n):
    from wwjax.diagnostics._randomize import random_permutation

    p = np.asarray(random_permutation(jax.random.key(n), n))
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
    if n >= 1000:  # a random permutation has ~1 fixed point, two independent ones agree on ~1 position
        q = np.asarray(random_permutation(jax.random.key(n + 1), n))
        assert (p == np.arange(n)).sum() < 10 and (p == q).sum() < 10


def test_every_element_lands_anywhere_with_equal_chance():
    from wwjax.diagnostics._randomize import random_permutation

    perms = jax.vmap(lambda k: random_permutation(k, 10))(jax.random.split(jax.random.key(0), 4000))
    counts = np.bincount(np.asarray(jnp.argmax(perms == 0, axis=1)), minlength=10)
    # 4000 draws over 10 positions: 400 ± 19 each; a biased shuffle (e.g. a plain rotation) fails this at once
    assert counts.min() > 320 and counts.max() < 480, counts


def test_elements_that_share_a_row_or_column_are_spread_as_by_chance():
    """The pair statistics that a matrix's spectrum sees: how often two elements from one row (or column) of W land
    in one row (or column) of the shuffle. A uniform shuffle gives a known mean; too few Feistel rounds do not (three
    rounds miss it by ~20 standard errors here, two by hundreds)."""
    from wwjax.diagnostics._randomize import random_permutation

    N, M, seeds = 3000, 384, 8
    n = N * M
    out_row, out_col = np.arange(n) // M, np.arange(n) % M

    def pair_count(a, b, nb):
        c = np.bincount(a.astype(np.int64) * nb + b).astype(np.float64)
        return (c * (c - 1) / 2).sum()

    z = []
    for seed in range(seeds):
        src = np.asarray(random_permutation(jax.random.key(seed), n))
        src_row, src_col = src // M, src % M
        row = []
        for same_src, size in ((src_row, M), (src_col, N)):
            for same_out, chance in ((out_row, (M - 1) / (n - 1)), (out_col, (N - 1) / (n - 1))):
                expected = n * (size - 1) / 2 * chance
                row.append((pair_count(same_src, same_out, max(N, M)) - expected) / np.sqrt(expected))
        z.append(row)
    z_of_mean = np.mean(z, axis=0) * np.sqrt(seeds)
    assert np.all(np.abs(z_of_mean) < 4.5), z_of_mean
