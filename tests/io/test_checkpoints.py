"""Orbax checkpoints written by a real flax + optax + CheckpointManager training loop, scanned and analysed."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest
from flax import nnx

import wwjax
from wwjax.io import _checkpoints

from conftest import CHECKPOINT_STEPS as STEPS
from conftest import checkpoint_mlp
from conftest import train_checkpoints as _train

@pytest.fixture
def run(trained_run):
    return trained_run


def test_scan_matches_analyze_and_skips_optimizer(run, monkeypatch):
    directory, saved = run
    read_keys = []
    restore = _checkpoints._restore
    monkeypatch.setattr(_checkpoints, "_restore",
                        lambda d, t, keys, **kw: read_keys.append(set(keys)) or restore(d, t, keys, **kw))
    scan = wwjax.scan_checkpoints(directory, progress=False)
    assert list(scan.summary.step) == list(STEPS) and set(scan.summary.status) == {"success"}
    assert all("opt_state" not in k for keys in read_keys for k in keys)  # the optimizer state is never read
    assert len(read_keys) == len(STEPS)  # one bucket per step at the default budget
    last = scan.details[scan.details.step == STEPS[-1]].set_index("path")
    assert last.loc["opt_state", "reason"] == "optimizer state (not read)"
    assert last.loc["step", "status"] == "skipped"
    expected = wwjax.details(wwjax.analyze({"params": saved[STEPS[-1]]})).set_index("path")
    analysed = expected.index[expected.status == "success"]
    assert len(analysed) == 3
    for column in ("alpha", "D", "lambda_max", "stable_rank", "log_norm"):
        np.testing.assert_array_equal(last.loc[analysed, column].to_numpy(float),
                                      expected.loc[analysed, column].to_numpy(float))
    assert scan.summary.alpha.notna().all()


def test_analyze_checkpoint_latest_and_step(run):
    directory, saved = run
    latest = wwjax.analyze_checkpoint(directory)
    assert latest.summary.step.tolist() == [STEPS[-1]]
    first = wwjax.analyze_checkpoint(directory / "4")  # a step directory
    assert first.summary.step.tolist() == [4]
    by_step = wwjax.analyze_checkpoint(directory, step=4)
    pd.testing.assert_frame_equal(first.details, by_step.details)
    with pytest.raises(ValueError, match="no finalised step 5"):
        wwjax.analyze_checkpoint(directory, step=5)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        wwjax.analyze_checkpoint(directory / "missing")


def test_small_buckets_give_the_same_numbers(run, monkeypatch):
    directory, _ = run
    calls = []
    restore = _checkpoints._restore
    monkeypatch.setattr(_checkpoints, "_restore",
                        lambda d, t, keys, **kw: calls.append(len(keys)) or restore(d, t, keys, **kw))
    small = wwjax.analyze_checkpoint(directory, bucket_bytes=1)  # every leaf its own bucket
    assert calls == [1, 1, 1]
    whole = wwjax.analyze_checkpoint(directory)
    pd.testing.assert_frame_equal(small.details, whole.details)


def test_distance_from_init(run):
    directory, saved = run
    scan = wwjax.scan_checkpoints(directory, init_step=0, progress=False)
    distance = scan.summary.set_index("step").distance_from_init
    assert distance.loc[0] == 0.0
    assert distance.loc[4] < distance.loc[8] < distance.loc[12]  # Adam keeps moving away from the start
    last = scan.details[(scan.details.step == 12) & (scan.details.status == "success")].set_index("path")
    expected = wwjax.distances({"params": saved[0]}, {"params": saved[12]}, method="euclidean")
    expected = expected[expected.status == "success"].set_index("path")
    np.testing.assert_allclose(last.distance_from_init, expected.loc[last.index, "delta_W"], rtol=1e-6)
    np.testing.assert_allclose(last.relative_distance_from_init, expected.loc[last.index, "delta_W_rel"], rtol=1e-6)
    given = wwjax.scan_checkpoints(directory, steps=[12], init_params={"params": saved[0]}, progress=False)
    np.testing.assert_allclose(given.summary.distance_from_init, distance.loc[12], rtol=1e-6)
    with pytest.raises(ValueError, match=r"steps \[13\] are not in"):
        wwjax.scan_checkpoints(directory, steps=[12, 13], progress=False)
    with pytest.raises(ValueError, match="init_params has none of the checkpoint's paths"):
        wwjax.scan_checkpoints(directory, steps=[12], init_params=saved[0], progress=False)


def test_unfinished_and_corrupt_steps_are_rows(run, tmp_path, capsys, monkeypatch):
    directory, _ = run
    copy = tmp_path / "run"
    shutil.copytree(directory, copy)
    shutil.copytree(copy / "8", copy / "16.orbax-checkpoint-tmp-1795321406")  # what a killed save leaves behind
    shutil.copytree(copy / "8", copy / "20")
    for data in (copy / "20" / "default").rglob("*"):
        if data.is_file() and data.name not in ("_METADATA", "_CHECKPOINT_METADATA"):
            data.write_bytes(b"")  # the array data is gone
    (copy / "logs_3").mkdir()  # a folder named like a step that Orbax did not write is not a step
    (copy / "logs_3" / "events.txt").write_text("loss 0.1")
    monkeypatch.setattr(_checkpoints, "PROGRESS_DELAY", 0.0)
    scan = wwjax.scan_checkpoints(copy, progress=True)
    rows = scan.summary.set_index("step")
    assert rows.loc[16, "status"] == "unfinished" and "never finalised" in rows.loc[16, "reason"]
    assert rows.loc[20, "status"] == "failed" and rows.loc[20, "reason"].startswith("cannot read the step")
    assert (rows.loc[list(STEPS), "status"] == "success").all() and 3 not in rows.index
    assert "wwjax scan" in capsys.readouterr().err
    wwjax.scan_checkpoints(copy, steps=[0], progress=False)
    assert capsys.readouterr().err == ""


def test_named_items_and_metrics(tmp_path):
    _train(tmp_path, item_names=("state", "metrics"))
    scan = wwjax.scan_checkpoints(tmp_path, progress=False)
    accuracy = scan.summary["metrics/accuracy"]
    assert accuracy.between(0, 1).all() and accuracy.iloc[-1] > accuracy.iloc[0]
    assert (scan.summary.num_layers == 3).all()
    with pytest.raises(ValueError, match="no PyTree item 'model'"):
        wwjax.analyze_checkpoint(tmp_path, item="model")


def test_nnx_state_and_standard_checkpointer(tmp_path):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(40, 24, rngs=rngs)
            self.fc2 = nnx.Linear(24, 12, rngs=rngs)

    model = Net(nnx.Rngs(0))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "nnx", nnx.state(model))
    table = wwjax.analyze_checkpoint(tmp_path / "nnx").details.set_index("path")
    expected = wwjax.details(wwjax.analyze(nnx.state(model))).set_index("path")
    assert list(table.index[table.status == "success"]) == ["fc1/kernel", "fc2/kernel"]
    np.testing.assert_array_equal(table.loc[["fc1/kernel", "fc2/kernel"], "alpha"],
                                  expected.loc[["fc1/kernel", "fc2/kernel"], "alpha"])


def test_orbax_v1_layout(tmp_path):
    v1 = pytest.importorskip("orbax.checkpoint.experimental.v1")
    params = checkpoint_mlp().init(jax.random.key(1), jnp.ones((1, 64)))["params"]
    (getattr(v1, "save", None) or v1.save_pytree)(tmp_path / "v1", {"params": params})  # renamed in 0.12
    table = wwjax.analyze_checkpoint(tmp_path / "v1").details
    assert (table.status == "success").sum() == 3
    assert set(table.path[table.status == "success"]) == {f"params/Dense_{i}/kernel" for i in range(3)}
