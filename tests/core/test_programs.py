"""The program store: a later process runs the stored programs without tracing them, to the same bit; a store that
is corrupt, unwritable or written under another configuration never changes a number or fails an analysis."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

import wwjax
from wwjax.core import _programs

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds: a watchdog for every subprocess


def _params(seed: int = 0) -> dict:
    """Shapes and names of nobody's model: a wide dense, a conv, an embedding and a stacked attention kernel."""
    rng = np.random.default_rng(seed)
    t = lambda *shape: rng.standard_t(3, shape).astype(np.float32)  # noqa: E731
    return {"proj_head": {"kernel": t(3, 3, 8, 24)}, "wide": {"kernel": t(40, 130)},
            "tok": {"embedding": t(300, 40)}, "layers": {"attn": {"kernel": t(2, 40, 40)}}}


@pytest.fixture
def store(tmp_path):
    _programs.forget_loaded()  # programs another test's store loaded would not be written to this one
    _programs.use_program_store(tmp_path / "programs")
    try:
        yield tmp_path / "programs"
    finally:
        _programs.use_program_store(None)


def _leaves(result) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(result)]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True) for x, y in zip(a, b))


@pytest.mark.parametrize("options", [{}, {"randomize": True, "key": 3, "mp_fit": True, "trap_elements": 2}],
                         ids=["default", "randomize"])
def test_stored_programs_give_the_traced_numbers_to_the_bit(store, options):
    params = _params()
    if options:  # the randomized programs compile per leaf shape: two leaves keep the three runs short
        params = {"proj_head": params["proj_head"], "wide": params["wide"]}
    _programs.use_program_store(None)
    traced = _leaves(wwjax.analyze(params, **options))
    _programs.use_program_store(store)
    exported = _leaves(wwjax.analyze(params, **options))  # exports, stores and runs the exported programs
    assert sorted(p.name for p in store.iterdir()) and all(p.suffix == ".wwp" for p in store.iterdir())
    _programs.forget_loaded()  # as a new process: the programs come back from the files
    loaded = _leaves(wwjax.analyze(params, **options))
    assert _same(traced, exported) and _same(traced, loaded)


def test_a_program_is_stored_per_configuration(store):
    params = {"w": {"kernel": np.random.default_rng(1).standard_t(3, (90, 50))}}
    single = wwjax.analyze(params)["w"]["kernel"].alpha
    with jax.enable_x64(True):
        double = wwjax.analyze(params)["w"]["kernel"].alpha
    assert single.dtype == np.float32 and double.dtype == np.float64
    assert abs(float(single[0]) - float(double[0])) < 1e-4 * abs(float(double[0]))


def test_a_program_under_a_trace_is_traced_as_jax_jit_would(store):
    params = {"w": {"kernel": np.random.default_rng(2).standard_t(3, (64, 32)).astype(np.float32)}}
    eager = wwjax.analyze(params)["w"]["kernel"].alpha
    stored = len(list(store.iterdir()))
    jitted = jax.jit(lambda p: wwjax.analyze(p)["w"]["kernel"].alpha)(params)
    assert len(list(store.iterdir())) == stored  # nothing exported from inside a trace
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_corrupt_and_foreign_entries_are_recompiled_and_rewritten(store):
    params = _params(1)
    reference = _leaves(wwjax.analyze(params))
    entries = sorted(store.iterdir())
    entries[0].write_bytes(b"\x00garbage" * 9)  # torn
    data = bytearray(entries[-1].read_bytes())
    data[-5] ^= 0xFF  # one flipped byte: the checksum refuses it before anything is unpickled
    entries[-1].write_bytes(bytes(data))
    _programs.forget_loaded()
    assert _same(reference, _leaves(wwjax.analyze(params)))
    assert all(_programs._read(path)[0] is not None for path in entries)  # rewritten whole


def test_an_unwritable_store_only_costs_the_saving(tmp_path, capsys):
    _programs.forget_loaded()
    (tmp_path / "file").write_text("a file where the store's directory should be")
    _programs.use_program_store(tmp_path / "file" / "programs")
    try:
        params = _params(2)
        stored = _leaves(wwjax.analyze(params))
    finally:
        _programs.use_program_store(None)
    assert _same(stored, _leaves(wwjax.analyze(params)))
    assert "not storing compiled programs" in capsys.readouterr().err


_SECOND_PROCESS = """
import json, pickle, sys
import jax, numpy as np, wwjax
sys.path.insert(0, sys.argv[2])
from test_programs import _params
wwjax.enable_compilation_cache(sys.argv[1])
if sys.argv[3] == "refuse-tracing":  # every program must come from the store: exporting one fails the run
    def refuse(*args, **kwargs):
        raise AssertionError("a stored program was traced again")
    jax.export.export = refuse
with wwjax.count_compilations() as compiled:
    result = wwjax.analyze(_params(), randomize=True, key=0)
sys.stdout.buffer.write(pickle.dumps(([np.asarray(x) for x in jax.tree.leaves(result)], compiled.count)))
"""


def test_a_second_process_traces_nothing_and_compiles_nothing(tmp_path):
    def run(mode: str):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        done = subprocess.run([sys.executable, "-c", _SECOND_PROCESS, str(tmp_path), str(pathlib.Path(__file__).parent),
                               mode], capture_output=True, env=env, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        return pickle.loads(done.stdout)

    first, first_count = run("export")
    second, second_count = run("refuse-tracing")
    assert first_count >= 3 and second_count == 0
    assert _same(first, second)
    assert json.dumps(len(list((tmp_path / "programs").iterdir()))) != "0"
