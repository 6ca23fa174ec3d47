"""Scale: memory budgets (chunked buckets, blockwise Gram), meshes, multi-host runs, and the compilation count."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest

import wwjax
from conftest import heavy_tailed
from wwjax import _engine

WORKER = pathlib.Path(__file__).parent / "scale_worker.py"
NUMERIC = ["alpha", "alpha_weighted", "D", "xmin", "xmax", "sigma", "lambda_max", "log_norm", "stable_rank",
           "entropy", "matrix_rank", "rank_loss", "sv_max", "sv_min"]


def _weights() -> dict:
    """Flat '/'-keyed weights: a bucket of 6 equal dense kernels (not a multiple of 8 devices), a conv, an embedding,
    a wide kernel whose transpose is the matrix, and a bias that is skipped."""
    rng = np.random.default_rng(0)
    flat = {f"Dense_{i}/kernel": heavy_tailed(rng, (64, 32)) for i in range(6)}
    flat["Conv_0/kernel"] = heavy_tailed(rng, (3, 3, 8, 16))
    flat["Embed_0/embedding"] = heavy_tailed(rng, (200, 32))
    flat["Dense_6/kernel"] = heavy_tailed(rng, (32, 96))
    flat["Dense_6/bias"] = np.zeros(96, np.float32)
    return flat


def _nest(flat: dict) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        parent, leaf = key.split("/")
        tree.setdefault(parent, {})[leaf] = value
    return tree


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("scale") / "weights.npz"
    np.savez(path, **_weights())
    return path


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        return wwjax.details(wwjax.analyze(_nest(_weights())))
    finally:
        jax.config.update("jax_enable_x64", previous)


def _assert_same_table(got: pd.DataFrame, want: pd.DataFrame, rtol: float = 1e-9) -> None:
    assert list(got.path) == list(want.path)
    assert list(got.status) == list(want.status)
    np.testing.assert_allclose(got[NUMERIC].to_numpy(float), want[NUMERIC].to_numpy(float), rtol=rtol, atol=1e-12)


def test_budget_cuts_buckets_and_accumulates_big_matrices_blockwise(x64, reference):
    leaves = [_engine.LeafPlan(None, s) for s in (
        _engine.MatrixShape(1, 1, 64, 32),) * 6 + (_engine.MatrixShape(1, 1, 200, 32),)]
    budget = 2 * _engine.bytes_per_matrix(64, 32, "gram", 8)
    buckets = _engine.plan_buckets(leaves, "gram", 8, max_bucket_bytes=budget)
    # Six 64x32 matrices in chunks of two; the 200x32 embedding alone exceeds the budget, so its Gram is summed over
    # blocks of 192 rows (the second block overlaps the first by 184 rows, masked).
    assert [(b.N, len(b.pieces), b.block_rows) for b in buckets] == [(64, 2, 0)] * 3 + [(200, 1, 192)]

    got = wwjax.details(wwjax.analyze(_nest(_weights()), max_bucket_bytes=budget))
    _assert_same_table(got, reference)


def test_budget_splits_a_stacked_leaf(x64):
    rng = np.random.default_rng(1)
    params = {"layers": {"kernel": heavy_tailed(rng, (5, 48, 40))}}
    whole = wwjax.details(wwjax.analyze(params, stacked="layers"))
    budget = 2 * _engine.bytes_per_matrix(48, 40, "gram", 8)
    _assert_same_table(wwjax.details(wwjax.analyze(params, stacked="layers", max_bucket_bytes=budget)), whole)


def test_svd_matrix_over_budget_is_skipped_with_the_fix():
    rng = np.random.default_rng(2)
    df = wwjax.details(wwjax.analyze({"big": {"kernel": heavy_tailed(rng, (256, 64))}},
                                     svd_method="accurate", max_bucket_bytes=10_000))
    assert df.status.tolist() == ["skipped"]
    assert "max_bucket_bytes=10000" in df.reason[0] and "svd_method='fast'" in df.reason[0]


def test_bad_budget_and_mesh_options_say_what_to_pass():
    with pytest.raises(ValueError, match="max_bucket_bytes must be >= 1"):
        wwjax.analyze({}, max_bucket_bytes=0)
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        wwjax.analyze({}, mesh="8 devices")


def _run(*args: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, str(WORKER), *args], check=True, env=env, timeout=600)


def test_mesh_of_8_devices_matches_one_device(tmp_path, weights_file, reference):
    out = tmp_path / "mesh.csv"
    _run("mesh", str(out), str(weights_file), "8")
    _assert_same_table(pd.read_csv(out), reference)
    # Each device solves its share: the batched eigen-solve sees at most ceil(9 matrices / 8) = 2 per device.
    batches = [int(b) for b in (tmp_path / "mesh.csv.hlo").read_text().split(",")]
    assert batches and max(batches) <= 2



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_on_localhost_give_the_single_process_table(tmp_path, weights_file, reference):
    port = str(_free_port())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), "multihost", str(tmp_path / f"p{i}.csv"), str(weights_file),
                          str(i), "2", port, "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output.decode()[-3000:]
    for i in range(2):  # every process holds the whole table
        _assert_same_table(pd.read_csv(tmp_path / f"p{i}.csv"), reference, rtol=1e-9)


def test_a_transformer_compiles_once_per_bucket_and_fit_group():
    rng = np.random.default_rng(3)
    params = {"embed": {"embedding": heavy_tailed(rng, (300, 32))}}
    for b in range(4):
        params[f"block_{b}"] = {name: {"kernel": heavy_tailed(rng, (32, 32))} for name in ("query", "key", "value")}
        params[f"block_{b}"]["mlp_in"] = {"kernel": heavy_tailed(rng, (32, 128))}
        params[f"block_{b}"]["mlp_out"] = {"kernel": heavy_tailed(rng, (128, 32))}
    with wwjax.count_compilations() as compiled:
        wwjax.details(wwjax.analyze(params))
    # 3 buckets (32x32, 128x32, 300x32) + 1 fit group (every ESD has 32 eigenvalues) = 4 programs; before
    # bucketing it was one per leaf and per glue operation (> 40).
    assert compiled.count == 4, compiled.count
    with wwjax.count_compilations() as again:
        wwjax.analyze(params)
    assert again.count == 0


CACHED_CHILD = """
import sys, numpy as np, wwjax
wwjax.enable_compilation_cache(sys.argv[1])
rng = np.random.default_rng(0)
params = {f"Dense_{i}": {"kernel": rng.standard_normal((48, 40)).astype("float32")} for i in range(3)}
with wwjax.count_compilations() as compiled:
    wwjax.details(wwjax.analyze(params))
print(compiled.count, compiled.cache_hits)
"""


def test_the_persistent_cache_spares_a_new_process_the_compilations(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    counts = [
        subprocess.run([sys.executable, "-c", CACHED_CHILD, str(tmp_path)], env=env, check=True, timeout=300,
                       capture_output=True, text=True).stdout.split()[-2:]
        for _ in range(2)
    ]
    (compiled, hits), (compiled_again, hits_again) = [[int(x) for x in c] for c in counts]
    assert compiled >= 2 and hits == 0, counts
    assert compiled_again == 0 and hits_again == compiled, counts
    assert any(tmp_path.iterdir())
