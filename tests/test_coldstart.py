"""Cold start: what `import wwjax` loads, how many programs an analysis compiles, the persistent cache of the command
line, its flags and its table, and one clear line for every malformed file."""

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
from wwjax.core import _compilation

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 300  # seconds: a watchdog for every subprocess


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **extra)
    for name in ("WWJAX_NO_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        if name not in extra:
            env.pop(name, None)
    return env


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(**env),
                          timeout=TIMEOUT)


def test_import_loads_no_orbax_pandas_matplotlib_or_nnx():
    heavy = ("orbax", "orbax.checkpoint", "pandas", "matplotlib", "flax.nnx", "flax.linen")
    done = _python("import sys, numpy as np, wwjax\n"
                   f"print([m for m in {heavy!r} if m in sys.modules])\n"
                   "table = wwjax.details(wwjax.analyze({'w': np.ones((16, 8), np.float32)}))\n"
                   "print(callable(wwjax.scan_checkpoints), 'pandas' in sys.modules)")
    assert done.returncode == 0, done.stderr
    loaded, lazily = done.stdout.strip().splitlines()
    assert loaded == "[]"
    assert lazily == "True True"  # the lazy names still work, and load what they need


def test_lazy_names_are_listed_and_unknown_names_fail():
    assert {"scan_checkpoints", "load_params", "distances"} <= set(dir(wwjax))
    with pytest.raises(AttributeError, match="no attribute 'scan_checkpoint'"):
        wwjax.scan_checkpoint  # noqa: B018


def test_a_small_cnn_compiles_one_program_per_shape_and_one_fit():
    """The demo CNN's layout (two 3x3 convs, two dense layers, shapes this test alone uses): four eigen-solve
    programs, one per (N, M), and the three ESD lengths fitted by one program. A fifth fit or an extra program for
    an option that is off fails here."""
    rng = np.random.default_rng(0)
    params = {"Conv_0": {"kernel": rng.standard_t(4, (3, 3, 1, 23)).astype(np.float32), "bias": np.zeros(23)},
              "Conv_1": {"kernel": rng.standard_t(4, (3, 3, 23, 37)).astype(np.float32)},
              "Dense_0": {"kernel": rng.standard_t(4, (333, 111)).astype(np.float32)},
              "Dense_1": {"kernel": rng.standard_t(4, (111, 11)).astype(np.float32)}}
    with wwjax.count_compilations() as first:
        result = wwjax.analyze(params)
        means = wwjax.summary(result)
    assert first.count == 5, first
    assert np.isfinite(means["alpha"])
    with wwjax.count_compilations() as again:
        wwjax.summary(wwjax.analyze(params, mp_fit=False, randomize=False, detX=False, vectors=False))
    assert again.count == 0


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _compilation.default_cache_dir() == tmp_path / "wwjax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _compilation.default_cache_dir() == pathlib.Path.home() / ".cache" / "wwjax"
    for value, disabled in (("1", True), ("0", False), ("", False)):
        monkeypatch.setenv("WWJAX_NO_CACHE", value)
        assert _compilation.cache_disabled_by_env() is disabled


_CACHED_RUN = """
import json, numpy as np, wwjax
from wwjax.core._compilation import use_default_cache
directory = use_default_cache()
params = {"kernel": np.random.default_rng(0).standard_t(3, (72, 40)).astype("float32")}
with wwjax.count_compilations() as compiled:
    alpha = float(wwjax.analyze(params)["kernel"].alpha[0])
print(json.dumps({"dir": str(directory), "count": compiled.count, "hits": compiled.cache_hits, "alpha": alpha}))
"""


def _cached_run(**env) -> dict:
    done = _python(_CACHED_RUN, **env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_second_process_loads_every_program_from_the_cache(tmp_path):
    cold = _cached_run(XDG_CACHE_HOME=str(tmp_path))
    warm = _cached_run(XDG_CACHE_HOME=str(tmp_path))
    assert cold["dir"] == str(tmp_path / "wwjax") and cold["count"] >= 2 and cold["hits"] == 0
    assert warm["count"] == 0 and warm["hits"] == cold["count"] and warm["alpha"] == cold["alpha"]
    off = _cached_run(XDG_CACHE_HOME=str(tmp_path), WWJAX_NO_CACHE="1")
    assert off["dir"] == "None" and off["hits"] == 0


@pytest.mark.slow
def test_a_corrupt_or_unusable_cache_never_fails_an_analysis(tmp_path):
    reference = _cached_run(XDG_CACHE_HOME=str(tmp_path / "good"))
    entries = [p for p in (tmp_path / "good" / "wwjax").rglob("*") if p.is_file()]
    assert any(p.parent.name == "programs" for p in entries)  # the program store sits beside JAX's cache
    for entry in entries:  # every stored program, JAX's and the store's, becomes garbage
        entry.write_bytes(b"\x00garbage" * 7)
    corrupt = _cached_run(XDG_CACHE_HOME=str(tmp_path / "good"))
    assert corrupt["alpha"] == reference["alpha"]
    (tmp_path / "file").write_text("a file where the cache directory should be")
    done = _python(_CACHED_RUN, XDG_CACHE_HOME=str(tmp_path / "file"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["alpha"] == reference["alpha"]
    assert "not caching compiled programs" in done.stderr


def test_cli_no_cache_flag_leaves_jax_alone(tmp_path, monkeypatch, capsys):
    model = tmp_path / "m.msgpack"
    model.write_bytes(serialization.msgpack_serialize(
        {"Dense_0": {"kernel": np.random.default_rng(0).standard_t(3, (64, 48)).astype(np.float32)}}))
    monkeypatch.delenv("WWJAX_NO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli.main(["analyze", str(model), "--no-cache", "--summary"]) == 0
    assert not (tmp_path / "xdg").exists()
    assert capsys.readouterr().out.startswith("summary: log_norm=")


def test_cli_flags_become_analyze_options():
    args = cli.build_parser().parse_args(["analyze", "m.msgpack", "--mp-fit", "--randomize", "--seed", "7",
                                          "--fix-fingers", "clip_xmax", "--fit", "TPL", "--detX", "--vectors",
                                          "--no-pool", "--x64"])
    assert cli._analyze_options(args) == dict(pool=False, fit="TPL", fix_fingers="clip_xmax", mp_fit=True,
                                              randomize=True, key=7, detX=True, vectors=True)
    assert args.x64
    plain = cli._analyze_options(cli.build_parser().parse_args(["analyze", "m.msgpack"]))
    assert plain == {}  # an option left out is wwjax.analyze's default, not a value the CLI chose


def test_cli_flags_of_the_estimators_become_analyze_options(tmp_path, capsys):
    args = cli.build_parser().parse_args(["analyze", "m.msgpack", "--xmin", "median", "--bootstrap", "16", "--seed",
                                          "3", "--farms", "--lora"])
    assert cli._analyze_options(args) == dict(xmin="median", bootstrap=16, key=3, farms=True, lora=True)
    params = {"Dense_0": {"kernel": np.random.default_rng(0).standard_t(3, (64, 48)).astype(np.float32)}}
    model = tmp_path / "m.msgpack"
    model.write_bytes(serialization.msgpack_serialize(params))
    csv = tmp_path / "t.csv"
    assert cli.main(["analyze", str(model), "--xmin", "median", "--bootstrap", "16", "--quiet", "--csv", str(csv)]) == 0
    assert "alpha_ci_low" in capsys.readouterr().out  # the terminal table shows the interval
    row = pd.read_csv(csv).set_index("path").loc["Dense_0/kernel"]
    expected = wwjax.details(wwjax.analyze(params, xmin="median", bootstrap=16, key=0)).set_index("path")
    np.testing.assert_allclose(row[["alpha", "alpha_ci_low", "alpha_ci_high"]].to_numpy(float),
                               expected.loc["Dense_0/kernel", ["alpha", "alpha_ci_low", "alpha_ci_high"]].to_numpy(float),
                               rtol=1e-6)


def test_help_groups_the_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["analyze", "--help"])
    text = capsys.readouterr().out
    headings = ["which matrices", "the fit", "more diagnostics", "what is printed", "output files", "Orbax"]
    assert all(h in text for h in headings)
    assert [text.index(h) for h in headings[:3]] == sorted(text.index(h) for h in headings[:3])


def test_skipped_leaves_are_one_line_unless_all(tmp_path, capsys):
    rng = np.random.default_rng(1)
    params = {"Dense_0": {"kernel": rng.standard_t(3, (64, 48)).astype(np.float32), "bias": np.zeros(48, np.float32)},
              "Dense_1": {"kernel": rng.standard_t(3, (48, 32)).astype(np.float32), "bias": np.zeros(32, np.float32)},
              "LayerNorm_0": {"scale": np.ones(32, np.float32)}, "tiny": {"kernel": np.ones((3, 2), np.float32)}}
    model = tmp_path / "m.msgpack"
    model.write_bytes(serialization.msgpack_serialize(params))
    assert cli.main(["analyze", str(model)]) == 0
    out = capsys.readouterr().out
    assert "Dense_0/bias" not in out and "Dense_1/kernel" in out
    line = next(x for x in out.splitlines() if x.startswith("skipped"))
    assert line.startswith("skipped 4 leaves: 2 bias, ") and line.endswith("; --all lists them")
    assert "1 fewer eigenvalues than min_evals" in line
    assert cli.main(["analyze", str(model), "--all"]) == 0
    out = capsys.readouterr().out
    assert "Dense_0/bias" in out and "min_evals=8" in out and "skipped 4" not in out


# ---------------------------------------------------------------------------------------------------------------
# Malformed files: one line on stderr, exit 1
# ---------------------------------------------------------------------------------------------------------------


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


_GOOD = np.arange(12, dtype=np.float32).reshape(3, 4)
_GOOD_HEADER = {"fc.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}
_RNG = np.random.default_rng(0)

MALFORMED = {
    "empty.safetensors": b"",
    "short.safetensors": b"\x01\x02\x03",
    "random.safetensors": _RNG.bytes(4096),
    "huge_header.safetensors": struct.pack("<Q", 1 << 62) + b'{"a": 1}',
    "truncated.safetensors": _safetensors_bytes(_GOOD_HEADER, _GOOD.tobytes())[:-7],
    "wrong_offsets.safetensors": _safetensors_bytes(
        {"fc.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [16, 64]}}, _GOOD.tobytes()),
    "size_mismatch.safetensors": _safetensors_bytes(
        {"fc.weight": {"dtype": "F32", "shape": [5, 4], "data_offsets": [0, 48]}}, _GOOD.tobytes()),
    "bad_dtype.safetensors": _safetensors_bytes(
        {"fc.weight": {"dtype": "Q7", "shape": [3, 4], "data_offsets": [0, 48]}}, _GOOD.tobytes()),
    "header_not_json.safetensors": struct.pack("<Q", 10) + b"{not json}" + _GOOD.tobytes(),
    "empty.msgpack": b"",
    "random.msgpack": b"\x85" + _RNG.bytes(2048),
    "truncated.msgpack": serialization.msgpack_serialize({"Dense_0": {"kernel": _GOOD}})[:-9],
    "not_a_tree.msgpack": serialization.msgpack_serialize([1, 2, 3]),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_file_is_one_line_and_exit_1(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_bytes(MALFORMED[name])
    assert cli.main(["analyze", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wwjax analyze: error: "), err
    assert "Traceback" not in err and (name in err or str(tmp_path) in err), err


def _orbax_step(tmp_path) -> pathlib.Path:
    import orbax.checkpoint as ocp

    run = tmp_path / "run"
    with ocp.CheckpointManager(run) as manager:
        manager.save(0, args=ocp.args.StandardSave({"params": {"Dense_0": {"kernel": _GOOD}}}))
    return run


@pytest.mark.parametrize("damage", ["metadata_random", "metadata_empty", "data_truncated", "data_random",
                                    "no_files"])
def test_malformed_orbax_checkpoint_is_one_line_and_exit_1(tmp_path, capsys, damage):
    run = _orbax_step(tmp_path)
    item = run / "0" / "default"
    files = [p for p in item.rglob("*") if p.is_file()]
    for path in files:
        if damage == "metadata_random" and path.name == "_METADATA":
            path.write_bytes(_RNG.bytes(300))
        elif damage == "metadata_empty" and path.name == "_METADATA":
            path.write_bytes(b"")
        elif damage == "data_truncated" and path.name not in ("_METADATA", "_CHECKPOINT_METADATA"):
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
        elif damage == "data_random" and path.name not in ("_METADATA", "_CHECKPOINT_METADATA"):
            path.write_bytes(_RNG.bytes(max(8, path.stat().st_size)))
        elif damage == "no_files":
            path.unlink()
    assert cli.main(["analyze", str(run), "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wwjax analyze: error: "), err
