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


CHECKPOINT_STEPS = (0, 4, 8, 12)


def checkpoint_mlp():
    """The small linen MLP the checkpoint tests train."""
    from flax import linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(48)(x))
            x = nn.relu(nn.Dense(32)(x))
            return nn.Dense(10)(x)

    return MLP()


def train_checkpoints(directory, item_names=None) -> dict:
    """Adam on a fixed random classification task; saves {params, opt_state, step} at CHECKPOINT_STEPS and returns
    the params of each step."""
    import jax.numpy as jnp
    import optax
    import orbax.checkpoint as ocp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    y = (x[:, :10].argmax(-1)).astype(np.int32)
    model = checkpoint_mlp()
    params = model.init(jax.random.key(0), x[:1])["params"]
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state):
        loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()
        updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    saved = {}
    with ocp.CheckpointManager(directory, item_names=item_names) as manager:
        for i in range(CHECKPOINT_STEPS[-1] + 1):
            if i in CHECKPOINT_STEPS:
                state = {"params": params, "opt_state": opt_state, "step": i}
                if item_names:
                    accuracy = float(jnp.mean(model.apply({"params": params}, x).argmax(-1) == y))
                    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              metrics=ocp.args.JsonSave({"accuracy": accuracy}))
                else:
                    args = ocp.args.StandardSave(state)
                manager.save(i, args=args)
                saved[i] = jax.tree.map(np.asarray, params)
            params, opt_state = step(params, opt_state)
        manager.wait_until_finished()
    return saved


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A CheckpointManager directory written by a real flax + optax training loop (steps 0, 4, 8, 12), and the
    params saved at each step, shared by the checkpoint and command-line tests."""
    directory = tmp_path_factory.mktemp("run")
    return directory, train_checkpoints(directory)


def reference_hill_fit(eigs, xmin_rule, *, xmin_pos=2, bins=100, filter_zeros=True, thresh=1e-5, linear_lower=False):
    """TempBalance's / AlphaPruning's ``net_esd_estimator`` fit of one ESD, its per-layer loop line by line in NumPy
    (float64): returns (alpha, D). ``xmin_rule``: 'median', 'peak' or 'scan' (their ``fix_fingers=None``)."""
    eigs = np.sort(np.asarray(eigs, np.float64))
    nz = eigs[eigs > thresh] if filter_zeros else eigs
    if len(nz) == 0:
        nz = eigs
    N = len(nz)
    log_nz = np.log(nz)
    if xmin_rule == "median":
        i = int(N / xmin_pos)
        n = float(N - i)
        alpha = 1 + n / (np.sum(log_nz[i:]) - n * log_nz[i])
        D = np.max(np.abs(1 - (nz[i:] / nz[i]) ** (-alpha + 1) - np.arange(n) / n))
        return alpha, D
    alphas, Ds = np.zeros(N - 1), np.ones(N - 1)
    if xmin_rule == "peak":
        counts, edges = np.histogram(np.log10(nz), bins=bins)
        peak = 10 ** edges[np.argmax(counts)]
        xmin_min = 0.95 * peak if linear_lower else np.log10(0.95 * peak)
        xmin_max = 1.5 * peak
    for i, xmin in enumerate(nz[:-1]):
        if xmin_rule == "peak":
            if xmin < xmin_min:
                continue
            if xmin > xmin_max:
                break
        n = float(N - i)
        alpha = 1 + n / (np.sum(log_nz[i:]) - n * log_nz[i])
        alphas[i] = alpha
        if alpha > 1:
            Ds[i] = np.max(np.abs(1 - (nz[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n))
    best = np.argmin(Ds)
    return alphas[best], Ds[best]
