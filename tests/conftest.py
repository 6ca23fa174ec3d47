"""Shared fixtures: the golden weights, and switching float64 on for a test."""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np
import pytest

GOLDEN = pathlib.Path(__file__).parent / "golden"

# The command line and scan_checkpoints keep compiled programs on disk; the tests count compilations, so they run
# without that cache (tests/test_coldstart.py turns it on in subprocesses of its own).
os.environ.setdefault("WWJAX_NO_CACHE", "1")


def _with_x64(enabled: bool):
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", enabled)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def x64():
    """Runs the test with ``jax_enable_x64`` on (the parity setting), restoring the previous value after."""
    yield from _with_x64(True)


@pytest.fixture
def f32():
    """Runs the test in float32 (``jax_enable_x64`` off)."""
    yield from _with_x64(False)


def load_golden_params() -> dict:
    """The golden weights (Flax layout) as ``{case: {kernel|embedding: array}}``."""
    weights = np.load(GOLDEN / "weights.npz")
    params: dict = {}
    for key in weights.files:
        case, leaf = key.split("/")
        params.setdefault(case, {})[leaf] = weights[key]
    return params


@pytest.fixture(scope="session")
def golden_params() -> dict:
    return load_golden_params()


def heavy_tailed(rng: np.random.Generator, shape, df: float = 3.0) -> np.ndarray:
    """Student-t entries scaled by 1/sqrt(fan-in): a weight matrix with a heavy-tailed ESD."""
    return (rng.standard_t(df, size=shape) / np.sqrt(shape[-2] if len(shape) > 1 else 1)).astype(np.float32)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A CheckpointManager directory written by a real flax + optax training loop (steps 0, 4, 8, 12), and the
    params saved at each step, shared by the checkpoint and command-line tests."""
    from test_checkpoints import _train

    directory = tmp_path_factory.mktemp("run")
    return directory, _train(directory)
