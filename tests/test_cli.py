"""The ``wwjax`` command line: each format, each command, output files, and one clear line on bad input."""

from __future__ import annotations

import json
import os
import pathlib
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from flax import serialization

import wwjax
from wwjax import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _params(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    # The shapes of the trained run's layers, so that the compiled analysis is shared with those tests.
    return {"Dense_0": {"kernel": rng.standard_t(3, (64, 48)).astype(np.float32), "bias": np.zeros(48, np.float32)},
            "Dense_1": {"kernel": rng.standard_t(3, (48, 32)).astype(np.float32)}}


def _write_safetensors(path, tensors: dict) -> None:
    """A safetensors file written byte by byte (the format is a JSON header and raw little-endian data)."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header).encode()
    pathlib.Path(path).write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_analyze_msgpack_writes_csv_and_json(tmp_path, capsys):
    params = _params(0)
    model = tmp_path / "flax_model.msgpack"
    model.write_bytes(serialization.msgpack_serialize(params))
    assert cli.main(["analyze", str(model), "--csv", str(tmp_path / "t.csv"), "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "Dense_0/kernel" in out and "summary: log_norm=" in out
    written = pd.read_csv(tmp_path / "t.csv").set_index("path")
    expected = wwjax.details(wwjax.analyze(params)).set_index("path")
    np.testing.assert_allclose(written.loc["Dense_1/kernel", "alpha"], expected.loc["Dense_1/kernel", "alpha"])
    records = json.loads((tmp_path / "t.json").read_text())
    assert {r["path"] for r in records} == set(expected.index)
    summary = pd.read_csv(tmp_path / "t.summary.csv")
    assert summary.alpha.iloc[0] == pytest.approx(wwjax.summary(wwjax.analyze(params))["alpha"])


def test_analyze_safetensors_in_torch_layout(tmp_path, capsys):
    params = _params(1)
    torch_layout = {"fc1.weight": params["Dense_0"]["kernel"].T, "fc1.bias": params["Dense_0"]["bias"]}
    _write_safetensors(tmp_path / "model.safetensors", torch_layout)
    assert cli.main(["analyze", str(tmp_path / "model.safetensors"), "--csv", str(tmp_path / "t.csv")]) == 0
    row = pd.read_csv(tmp_path / "t.csv").set_index("path").loc["fc1/kernel"]
    expected = wwjax.details(wwjax.analyze({"fc1": {"kernel": params["Dense_0"]["kernel"]}})).iloc[0]
    assert (row.N, row.M) == (64, 48)
    assert row.alpha == pytest.approx(expected.alpha)
    assert wwjax.load_params(tmp_path / "model.safetensors")["fc1"]["kernel"].shape == (64, 48)


def test_scan_and_analyze_orbax(trained_run, tmp_path, capsys):
    directory, saved = trained_run
    png = tmp_path / "trend.png"
    status = cli.main(["scan", str(directory), "--init-step", "0", "--png", str(png), "--quiet",
                       "--csv", str(tmp_path / "scan.csv")])
    captured = capsys.readouterr()
    assert status == 0 and "wwjax scan [" not in captured.err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trend = pd.read_csv(tmp_path / "scan.summary.csv")
    assert trend.step.tolist() == [0, 4, 8, 12] and trend.distance_from_init.iloc[0] == 0.0
    layers = pd.read_csv(tmp_path / "scan.csv")
    assert (layers.groupby("step").status.apply(lambda s: (s == "success").sum()) == 3).all()
    assert cli.main(["analyze", str(directory), "--step", "4", "--json", str(tmp_path / "a.json")]) == 0
    assert {r["step"] for r in json.loads((tmp_path / "a.json").read_text())} == {4}


def test_distances_between_two_files(tmp_path, capsys):
    a, b = _params(2), _params(3)
    (tmp_path / "a.msgpack").write_bytes(serialization.msgpack_serialize(a))
    (tmp_path / "b.msgpack").write_bytes(serialization.msgpack_serialize(b))
    assert cli.main(["distances", str(tmp_path / "a.msgpack"), str(tmp_path / "b.msgpack"), "--method", "euclidean",
                     "--csv", str(tmp_path / "d.csv")]) == 0
    table = pd.read_csv(tmp_path / "d.csv").set_index("path")
    expected = np.linalg.norm(a["Dense_1"]["kernel"] - b["Dense_1"]["kernel"])
    assert table.loc["Dense_1/kernel", "delta_W"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["analyze", "/no/such/checkpoint"], "no such file or directory"),
    (["scan", "/no/such/run"], "no such checkpoint directory"),
    (["analyze", "{tmp}/notes.txt"], "not an Orbax checkpoint directory, a Flax .msgpack file or a .safetensors"),
    (["analyze", "{tmp}/broken.msgpack"], "not a readable Flax msgpack file"),
])
def test_bad_input_is_one_line_and_exit_1(tmp_path, capsys, argv, message):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.msgpack").write_bytes(b"\x85\x01")
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith(f"wwjax {argv[0]}: error:")


def test_help(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("analyze", "scan", "distances"))


def test_console_script_in_a_subprocess(tmp_path):
    """``python -m wwjax.cli``: its help, and the exit status and single stderr line of a bad path (the successful
    runs are checked in-process above, which spares a fresh process's compilation)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    help_text = subprocess.run([sys.executable, "-m", "wwjax.cli", "scan", "--help"], capture_output=True, text=True,
                               env=env)
    assert help_text.returncode == 0 and "--init-step" in help_text.stdout
    failed = subprocess.run([sys.executable, "-m", "wwjax.cli", "analyze", str(tmp_path / "none")],
                            capture_output=True, text=True, env=env)
    assert failed.returncode == 1
    expected = f"wwjax analyze: error: no such file or directory: {tmp_path / 'none'}"
    assert failed.stderr.strip().splitlines() == [expected]
    assert 'wwjax = "wwjax.cli:run"' in (ROOT / "pyproject.toml").read_text()


def test_the_command_writes_everything_before_its_quick_exit(tmp_path):
    """The command ends with ``os._exit`` after flushing (no interpreter teardown): its table, its summary line
    and the files it writes must all be complete."""
    model = tmp_path / "m.msgpack"
    model.write_bytes(serialization.msgpack_serialize(
        {"Dense_0": {"kernel": np.random.default_rng(5).standard_t(3, (64, 48)).astype(np.float32)},
         "Dense_1": {"kernel": np.random.default_rng(6).standard_t(3, (48, 40)).astype(np.float32)}}))
    env = dict(os.environ, PYTHONPATH=str(ROOT), WWJAX_NO_CACHE="1")
    done = subprocess.run([sys.executable, "-m", "wwjax.cli", "analyze", str(model), "--csv", str(tmp_path / "t.csv"),
                           "--json", str(tmp_path / "t.json")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Dense_0/kernel" in done.stdout and done.stdout.rstrip().splitlines()[-1].startswith("summary: ")
    table = pd.read_csv(tmp_path / "t.csv")
    assert list(table["path"]) == ["Dense_0/kernel", "Dense_1/kernel"] and table["alpha"].notna().all()
    assert len(pd.read_json(tmp_path / "t.json")) == 2
    assert len(pd.read_csv(tmp_path / "t.summary.csv")) == 1


def test_load_params_reads_orbax_params_only(trained_run):
    directory, saved = trained_run
    loaded = wwjax.load_params(directory, step=8)
    assert set(loaded) == {"params"}  # the optimizer state and the step counter stay on disk
    np.testing.assert_array_equal(loaded["params"]["Dense_1"]["kernel"], saved[8]["Dense_1"]["kernel"])
    with pytest.raises(ValueError, match="apply to Orbax checkpoints only"):
        model = directory.parent / "m.msgpack"
        model.write_bytes(serialization.msgpack_serialize(_params(5)))
        wwjax.load_params(model, step=3)


def test_parquet_output_or_a_clear_line(tmp_path, capsys):
    model = tmp_path / "m.msgpack"
    model.write_bytes(serialization.msgpack_serialize(_params(6)))
    status = cli.main(["analyze", str(model), "--parquet", str(tmp_path / "t.parquet")])
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        assert status == 1 and "--parquet needs pyarrow" in capsys.readouterr().err
    else:
        assert status == 0 and set(pd.read_parquet(tmp_path / "t.parquet").path) >= {"Dense_0/kernel"}


def test_analyze_plot_writes_one_esd_figure_per_matrix(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    model = tmp_path / "flax_model.msgpack"
    model.write_bytes(serialization.msgpack_serialize(_params(2)))
    assert cli.main(["analyze", str(model), "--plot", str(tmp_path / "figures"), "--csv", str(tmp_path / "t.csv")]) == 0
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert written == ["Dense_0.kernel.esd.png", "Dense_1.kernel.esd.png", "alpha_by_layer.png"]
    assert all((tmp_path / "figures" / name).read_bytes()[:4] == b"\x89PNG" for name in written)
    table = pd.read_csv(tmp_path / "t.csv")
    assert table.set_index("path").loc["Dense_0/kernel", "status"] == "success"
