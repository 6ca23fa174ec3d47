"""Scale: memory budgets (chunked buckets, blockwise Gram), meshes, multi-host runs, and the compilation count."""

from __future__ import annotations

import json
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
from wwjax.core import _engine

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


# A watchdog for every subprocess: a hang fails the test within this many seconds (generous for a loaded 2-core
# machine, where one mesh case compiles for about a minute) and never stalls the run.
WATCHDOG_SECONDS = 900


def _watched(commands: list[list[str]], timeout: float = WATCHDOG_SECONDS) -> list[str]:
    """Runs the commands side by side; fails (killing every one of them) if any is not done within ``timeout``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
             for c in commands]
    outputs = []
    try:
        for p in procs:
            output, _ = p.communicate(timeout=timeout)
            outputs.append(output.decode(errors="replace"))
            assert p.returncode == 0, outputs[-1][-3000:]
    except subprocess.TimeoutExpired:
        pytest.fail(f"no result within {timeout} s (a hang): {' '.join(commands[len(outputs)][1:])}")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
    return outputs


def _run(*args: str) -> None:
    _watched([[sys.executable, str(WORKER), *args]])


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


def _orbax_run(directory: pathlib.Path, flat: dict) -> None:
    """A two-step CheckpointManager run of the weights (step 1 scaled), with an optimizer state beside them."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(directory) as manager:
        for step in (0, 1):
            params = _nest({k: v * (1.0 + step) for k, v in flat.items()})
            opt_state = {"mu": _nest({k: np.zeros_like(v) for k, v in flat.items()})}
            manager.save(step, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_two_processes_analyse_and_scan_a_run_like_one(tmp_path, weights_file, dtype):
    """Two jax.distributed processes on localhost (two CPU devices each) analyse sharded params and scan an Orbax
    run over the 4-device mesh, each restoring only its shards; both get the single-process tables."""
    run = tmp_path / "run"
    _orbax_run(run, _weights())
    port = str(_free_port())
    _watched([[sys.executable, str(WORKER), "multihost", str(tmp_path / f"p{i}.csv"), str(weights_file), str(i), "2",
               port, "2", dtype, str(run)] for i in range(2)])
    x64 = dtype == "f64"
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", x64)
    try:
        want = wwjax.details(wwjax.analyze(_nest(_weights())))
        want_scan = wwjax.scan_checkpoints(run, progress=False).details
    finally:
        jax.config.update("jax_enable_x64", previous)
    rtol = 1e-12 if x64 else 1e-6
    for i in range(2):  # every process holds the whole tables
        _assert_same_table(pd.read_csv(tmp_path / f"p{i}.csv"), want, rtol=rtol)
        _assert_same_table(pd.read_csv(tmp_path / f"p{i}.csv.scan.csv"), want_scan, rtol=rtol)


def test_two_processes_on_localhost_give_the_single_process_table(tmp_path, weights_file, reference):
    port = str(_free_port())
    _watched([[sys.executable, str(WORKER), "multihost", str(tmp_path / f"p{i}.csv"), str(weights_file), str(i), "2",
               port, "2"] for i in range(2)])
    for i in range(2):  # every process holds the whole table
        _assert_same_table(pd.read_csv(tmp_path / f"p{i}.csv"), reference, rtol=1e-9)


# The stress battery: every case runs on a mesh of simulated devices eagerly and jitted on params sharded over it,
# and must equal the single-device table. Each subprocess holds one device count.
# The truncated power law's (alpha, Lambda) come from a replay of SciPy's fmin (Nelder-Mead), which stops at
# xtol = ftol = 1e-4: its answer is defined to that tolerance only, and the last-bit differences of another per-device
# batch shape move the stopping point within it (1.4e-6 relative in float64 on 8 devices, 4e-4 in float32 on 4).
TPL_RTOL = 1e-3
_OPTIONS = [{}, {"mp_fit": True}, {"randomize": True, "key": 0}, {"fix_fingers": "clip_xmax"}, {"fit": "TPL"}]
BATTERY = {
    2: [dict(dtype="f64", layers=1, options=_OPTIONS[1]), dict(dtype="f32", layers=40, options=_OPTIONS[0]),
        dict(dtype="f32", layers=5, options=_OPTIONS[4], rtol=TPL_RTOL)],
    4: [dict(dtype="f32", layers=2, options=_OPTIONS[2]), dict(dtype="f64", layers=7, options=_OPTIONS[3]),
        dict(dtype="f64", layers=7, options=_OPTIONS[4], rtol=TPL_RTOL)],
    8: [dict(dtype="f64", layers=3, options=_OPTIONS[4], rtol=TPL_RTOL),
        dict(dtype="f32", layers=11, options=_OPTIONS[0]),
        dict(dtype="f64", layers=11, options=_OPTIONS[2]), dict(dtype="f32", layers=3, options=_OPTIONS[3])],
}
RTOL = {"f32": 1e-6, "f64": 1e-12}


def _battery(tmp_path, devices: int, cases: list[dict]) -> None:
    out = tmp_path / f"battery{devices}.json"
    _run("battery", str(out), str(devices), json.dumps(cases))
    for result in json.loads(out.read_text()):
        rtol = result.get("rtol", RTOL[result["dtype"]])
        assert result["eager"] <= rtol, result
        assert result["jit"] <= rtol, result


def test_mesh_battery_small_share(tmp_path):
    """The default run's share of the battery: float32, a dense and a conv kernel, two devices, eager and jitted."""
    _battery(tmp_path, 2, [dict(dtype="f32", layers=2, options={})])


@pytest.mark.slow
@pytest.mark.parametrize("devices", sorted(BATTERY))
def test_mesh_battery(tmp_path, devices):
    _battery(tmp_path, devices, BATTERY[devices])


def test_a_transformer_compiles_once_per_bucket_and_fit_group():
    rng = np.random.default_rng(3)
    params = {"embed": {"embedding": heavy_tailed(rng, (300, 32))}}
    for b in range(4):
        params[f"block_{b}"] = {name: {"kernel": heavy_tailed(rng, (32, 32))} for name in ("query", "key", "value")}
        params[f"block_{b}"]["mlp_in"] = {"kernel": heavy_tailed(rng, (32, 128))}
        params[f"block_{b}"]["mlp_out"] = {"kernel": heavy_tailed(rng, (128, 32))}
    with wwjax.count_compilations() as compiled:
        wwjax.details(wwjax.analyze(params))
    # 3 buckets (32x32, 128x32, 300x32) of one width, solved by one program, + 1 fit group (every ESD has 32
    # eigenvalues) = 2 programs; one per bucket made it 4, and before bucketing it was one per leaf and per glue
    # operation (> 40).
    assert compiled.count == 2, compiled.count
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
