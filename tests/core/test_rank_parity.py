"""Small singular values as WeightWatcher's SVD sees them: golden fixtures made by scripts/make_golden_rank.py.

Rank-deficient and graded weights (singular values down to 1e-12·σmax and exact zeros). In float64 the default
``svd_method='fast'`` must give WeightWatcher's rank, entropy and detX to 1e-6 like the SVD does; in float32 the
rows whose rank the precision cannot decide must say so.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import wwjax
from conftest import GOLDEN
from wwjax.core._details import RANK_UNDECIDED
from wwjax.core._spectra import DOUBT_FACTOR, doubtful, eigenvalues, gram_floor, slice_spectra

CONFIGS = {"default": {}, "detx": {"detX": True}, "detx_pool_false": {"detX": True, "pool": False}}
INTEGER_COLUMNS = ["matrix_rank", "rank_loss", "weak_rank_loss", "num_pl_spikes", "num_evals", "N", "M", "rf"]
FLOAT_COLUMNS = ["entropy", "alpha", "alpha_weighted", "D", "xmin", "xmax", "log_alpha_norm", "lambda_max",
                 "spectral_norm", "log_spectral_norm", "norm", "log_norm", "stable_rank", "sv_max"]
DETX_COLUMNS = ["detX_num", "detX_val", "num_ERG_spikes"]
FIT_COLUMNS = ["alpha", "alpha_weighted", "D", "xmin", "xmax", "log_alpha_norm", "num_pl_spikes"]
RTOL = 1e-6


@pytest.fixture(scope="module")
def rank_params() -> dict:
    weights = np.load(GOLDEN / "rank_weights.npz")
    return {key.split("/")[0]: {key.split("/")[1]: weights[key]} for key in weights.files}


def _joined(config: str, ours: pd.DataFrame) -> pd.DataFrame:
    theirs = pd.read_csv(GOLDEN / f"ww_rank_{config}.csv")
    theirs = theirs[theirs.path.isin(ours.path)]
    keys = ["path", "slice_id"] if "slice_id" in theirs else ["path"]
    assert len(ours) == len(theirs)
    return ours.merge(theirs, on=keys, suffixes=("", "_ww"), validate="one_to_one")


def _worst(joined: pd.DataFrame, column: str) -> float:
    ours, theirs = joined[column].astype(float), joined[f"{column}_ww"].astype(float)
    return float(((ours - theirs).abs() / theirs.abs().where(theirs != 0, 1.0)).max())


# The default run checks one dense and one conv case of each kind (a few seconds); -m slow checks them all.
QUICK_CASES = ("duplicated_dense", "detx_tiny", "conv_mixed")


def _parity_cases(config: str, svd_method: str, everything: bool):
    return pytest.param(config, svd_method, everything, marks=() if not everything else pytest.mark.slow)


@pytest.mark.parametrize(
    "config, svd_method, everything",
    [_parity_cases("detx", "fast", False)]
    + [_parity_cases(c, m, True) for c in CONFIGS for m in ("fast", "accurate")],
)
def test_rank_entropy_detx_match_weightwatcher_in_float64(config, svd_method, everything, rank_params, x64):
    params = rank_params if everything else {k: v for k, v in rank_params.items() if k in QUICK_CASES}
    ours = wwjax.details(wwjax.analyze(params, svd_method=svd_method, **CONFIGS[config]))
    joined = _joined(config, ours)
    integers = INTEGER_COLUMNS + (DETX_COLUMNS[::2] if "detX" in CONFIGS[config] else [])
    for column in integers:
        rows = joined[joined.alpha_ww != -1] if column in FIT_COLUMNS else joined
        np.testing.assert_array_equal(rows[column], rows[f"{column}_ww"], err_msg=column)
    # Slices scaled by 1e-9 and 1e-16 have no eigenvalue above 1e-5 to fit: WeightWatcher's -1 sentinels, our NaN.
    failed = joined.alpha_ww == -1
    assert (joined[failed].status == "failed").all() and joined[failed].alpha.isna().all()
    floats = FLOAT_COLUMNS + (["detX_val"] if "detX" in CONFIGS[config] else [])
    for column in floats:
        rows = joined[~failed] if column in FIT_COLUMNS else joined
        np.testing.assert_allclose(rows[column].astype(float), rows[f"{column}_ww"].astype(float), rtol=RTOL,
                                   atol=0, err_msg=column)
    # sv_min: WeightWatcher takes the largest per-slice minimum; compared where there is one slice per row and the
    # value is above the float64 SVD's own noise (~eps·σmax, the exact zeros of duplicated channels).
    single = joined[(joined.rf == 1) | ("slice_id" in joined)]
    resolved = single[single.sv_min_ww > single.sv_max_ww * single.N * np.finfo(np.float64).eps]
    np.testing.assert_allclose(resolved.sv_min, resolved.sv_min_ww, rtol=RTOL)
    assert (joined[~failed].status == joined[~failed].status_ww).all()
    assert (joined[~failed].warning.fillna("") == joined[~failed].warning_ww.fillna("")).all()
    # the fixture is made to need the small singular values: some rows lose rank, some have tiny ones
    assert (joined.rank_loss > 0).any() and (joined.sv_min_ww < 1e-11 * joined.sv_max_ww).any()


@pytest.mark.slow
def test_jitted_analyze_resolves_the_doubtful_matrices(rank_params, x64):
    params = {k: jax.tree.map(jnp.asarray, v) for k, v in rank_params.items() if k in QUICK_CASES}
    jitted = wwjax.details(jax.jit(wwjax.analyze)(params))
    joined = _joined("default", jitted)
    for column in ("matrix_rank", "rank_loss"):
        np.testing.assert_array_equal(joined[column], joined[f"{column}_ww"], err_msg=column)
    np.testing.assert_allclose(joined.entropy, joined.entropy_ww, rtol=RTOL)


def test_only_matrices_near_the_gram_floor_are_doubtful(x64):
    rng = np.random.default_rng(0)
    ordinary = rng.normal(size=(96, 48))
    graded = ordinary * np.logspace(0, -9, 48)  # σmin/σmax ~ 1e-9: λ below the Gram floor
    duplicated = ordinary.copy()
    duplicated[:, -1] = duplicated[:, 0]
    stack = jnp.asarray(np.stack([ordinary, graded, duplicated, np.zeros_like(ordinary)]))
    gram = jnp.einsum("bnm,bnk->bmk", stack, stack, precision=jax.lax.Precision.HIGHEST)
    evals = jnp.clip(eigenvalues(gram), 0.0, None)
    assert DOUBT_FACTOR * gram_floor(48, jnp.float64) < 1e-9
    assert doubtful(evals, jnp.float64).tolist() == [False, True, True, False]
    # the doubtful ones come out as the SVD's, the others stay the Gram's
    fast, svd = slice_spectra(stack, method="gram"), slice_spectra(stack, method="svd")
    np.testing.assert_allclose(fast.evals[1:3], svd.evals[1:3], rtol=1e-12, atol=1e-28)
    np.testing.assert_array_equal(fast.rank, [48, 48, 47, 0])
    np.testing.assert_array_equal(fast.evals[0], evals[0])


@pytest.mark.parametrize("svd_method, everything", [
    ("fast", False), pytest.param("accurate", True, marks=pytest.mark.slow),
    pytest.param("fast", True, marks=pytest.mark.slow),
])
def test_float32_says_when_it_cannot_decide_the_rank(svd_method, everything, rank_params, f32):
    params = rank_params if everything else {k: v for k, v in rank_params.items()
                                             if k in ("duplicated_dense", "graded_dense", "ordinary")}
    ours = wwjax.details(wwjax.analyze(params, svd_method=svd_method)).set_index("path")
    undecided = ours.warning.str.contains(RANK_UNDECIDED, regex=False)
    lost = (ours.matrix_rank < ours.num_evals) | (ours.rank_loss > 0)
    assert (undecided == lost).all()
    # every rank-deficient or graded case is flagged; the ordinary Gaussian layer is exact and silent
    assert undecided.drop("ordinary/kernel").all() and not undecided["ordinary/kernel"]
    theirs = pd.read_csv(GOLDEN / "ww_rank_default.csv").set_index("path")
    assert ours.loc["ordinary/kernel", "matrix_rank"] == theirs.loc["ordinary/kernel", "matrix_rank"]
    # where it warns, float32 is indeed off: WeightWatcher counts more (graded) or equal (exact zeros) rank
    assert (ours.matrix_rank <= theirs.loc[ours.index, "matrix_rank"]).all()


# Eager analysis over a mesh of simulated CPU devices, in its own process (the device count is fixed at start-up).
MESH_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np, wwjax
weights = np.load(sys.argv[1])
params = {key.split("/")[0]: {key.split("/")[1]: weights[key]} for key in weights.files}
mesh = jax.make_mesh((4,), ("batch",))
wwjax.details(wwjax.analyze(params, mesh=mesh)).to_csv(sys.argv[2], index=False)
"""


@pytest.mark.slow
def test_mesh_resolves_the_doubtful_matrices_on_each_device(tmp_path):
    """Over a mesh of 4 simulated devices each device re-solves its own doubtful matrices (the loop holds no
    collective). Own process, under a watchdog timeout."""
    out = tmp_path / "mesh.csv"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(GOLDEN / "rank_weights.npz"), str(out)],
                   check=True, env=env, timeout=600)
    joined = _joined("default", pd.read_csv(out))
    for column in ("matrix_rank", "rank_loss", "weak_rank_loss"):
        np.testing.assert_array_equal(joined[column], joined[f"{column}_ww"], err_msg=column)
    np.testing.assert_allclose(joined.entropy, joined.entropy_ww, rtol=RTOL)
