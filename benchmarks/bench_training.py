"""Per-step cost of training with spectra: the spectral norm penalty and the in-step metrics, on a small CNN.

A small CNN (``--size``x``--size``x3 inputs, 16 by default; Conv 32, Conv 64, pool, Conv 64, pool, Dense 128,
Dense 10; 0.2M parameters at size 16) trained with Adam on random data. Each configuration's jitted step (forward,
backward, optimizer update) is timed after a warm-up, in interleaved rounds (one step of every configuration per round); the script prints the median
step time and the median over rounds of its ratio to the plain step of the same round:

* ``plain``: Adam;
* ``penalty (stateful)``: ``wwjax.add_spectral_penalty`` in the chain, one warm-started power iteration per step
  (the paper's form; the issue's goal is < 10% overhead);
* ``penalty (stateless, 20 power iters)``: ``λ·wwjax.spectral_penalty(params, num_iters=20)`` in the loss, the
  former stateless default (a fixed count, not converged when the top two singular values are close);
* ``penalty (stateless, converged)``: ``λ·wwjax.spectral_penalty(params)`` in the loss, the default: every top
  singular pair converged to a tolerance by restarted Lanczos (exact to float rounding);
* ``penalty (fft, stateful)``: the exact conv operator norm (``conv='fft'`` on the input grid), one iteration per
  step;
* ``msn``: the same CNN built from ``wwjax.nn.linen`` MSN layers;
* ``monitor every step``: ``wwjax.monitor_spectra(every=1)``, the worst case of the in-step metrics (with
  ``every=k`` the cost is paid once per k steps).

It then prints the stateless penalty's cost per step against the former fixed-count form and the stateful form
(medians over rounds of the per-round ratios), and, per weight matrix of a few sizes, the time of one jitted
value-and-gradient of ``½σ_max²`` by the converged Lanczos solve, by 20 power iterations and by an exact ``eigh``
of the Gram matrix (the "exact small solve" alternative), with each one's gradient error against a float64 SVD.

Run from the repository root::

    python benchmarks/bench_training.py [--batch 64] [--size 16] [--steps 30] [--only penalty]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import wwjax
import wwjax.nn


class SmallCNN(nn.Module):
    msn: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        def conv(features):
            if self.msn:
                return lambda x: wwjax.nn.linen.MSNConv(features, (3, 3))(x, not train)
            return nn.Conv(features, (3, 3))

        x = nn.relu(conv(32)(x))
        x = nn.avg_pool(nn.relu(conv(64)(x)), (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(conv(64)(x)), (2, 2), (2, 2)).reshape(x.shape[0], -1)
        x = nn.relu(wwjax.nn.linen.MSNDense(128)(x, not train) if self.msn else nn.Dense(128)(x))
        return nn.Dense(10)(x)


def make_step(model, tx, loss_extra=None):
    def step(params, stats, opt_state, x, y):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, **stats}, x, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return (loss + loss_extra(p) if loss_extra else loss), updates

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    return jax.jit(step, donate_argnums=(0, 2))


class Runner:
    """One configuration's jitted step and its training state, compiled and warmed up."""

    def __init__(self, model, tx, x, y, loss_extra=None):
        variables = model.init(jax.random.key(0), x)
        self.params = variables["params"]
        self.stats = {k: v for k, v in variables.items() if k != "params"}
        self.opt_state = tx.init(self.params)
        self.step = make_step(model, tx, loss_extra)
        self.batch = (x, y)
        for _ in range(3):  # compile and warm up
            self.time_one_step()

    def time_one_step(self) -> float:
        start = time.perf_counter()
        self.params, self.stats, self.opt_state, loss = self.step(self.params, self.stats, self.opt_state, *self.batch)
        jax.block_until_ready((self.params, loss))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this (and plain)")
    parser.add_argument("--matrices", type=int, default=20,
                        help="timed calls per matrix in the per-matrix table (0: no table)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, 3)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, args.batch).astype(np.int32))
    adam = optax.adam(1e-3)
    configs = {
        "plain": (SmallCNN(), adam, None),
        "penalty (stateful)": (
            SmallCNN(),
            optax.chain(optax.scale_by_adam(), wwjax.add_spectral_penalty(0.01), optax.scale_by_learning_rate(1e-3)),
            None,
        ),
        "penalty (stateless, 20 power iters)": (SmallCNN(), adam,
                                                lambda p: 0.01 * wwjax.spectral_penalty(p, num_iters=20)),
        "penalty (stateless, converged)": (SmallCNN(), adam, lambda p: 0.01 * wwjax.spectral_penalty(p)),
        "penalty (fft, stateful)": (
            SmallCNN(),
            optax.chain(optax.scale_by_adam(), wwjax.add_spectral_penalty(0.01, conv="fft", input_size=args.size),
                        optax.scale_by_learning_rate(1e-3)),
            None,
        ),
        "msn": (SmallCNN(msn=True), adam, None),
        "monitor every step": (SmallCNN(), optax.chain(adam, wwjax.monitor_spectra(every=1)), None),
    }
    configs = {name: config for name, config in configs.items() if name == "plain" or args.only in name}
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, batch {args.batch} of {args.size}x{args.size}x3, "
          f"{args.steps} rounds", flush=True)
    runners = {name: Runner(model, tx, x, y, extra) for name, (model, tx, extra) in configs.items()}
    # Interleaved rounds: every configuration runs one step per round, and each ratio is the median over rounds of
    # (its step time / the plain step time in the same round), which cancels slow drifts of a shared machine's load.
    times = {name: [] for name in runners}
    for _ in range(args.steps):
        for name, runner in runners.items():
            times[name].append(runner.time_one_step())
    plain = np.asarray(times["plain"])
    print(f"{'configuration':<38} {'median step ms':>15} {'median ratio':>13}")
    for name, values in times.items():
        ratio = statistics.median(np.asarray(values) / plain)
        print(f"{name:<38} {1e3 * statistics.median(values):>15.2f} {ratio:>13.3f}", flush=True)
    old, new, stateful = "penalty (stateless, 20 power iters)", "penalty (stateless, converged)", "penalty (stateful)"
    if all(name in times for name in (old, new, stateful)):
        added = {name: np.asarray(times[name]) - plain for name in (old, new, stateful)}
        ms = {name: 1e3 * statistics.median(values) for name, values in added.items()}
        print(f"stateless converged / 20 power iters: {statistics.median(np.asarray(times[new]) / times[old]):.3f} "
              f"(step), added ms {ms[new]:.2f} vs {ms[old]:.2f}; / stateful: "
              f"{statistics.median(np.asarray(times[new]) / times[stateful]):.3f} (step), added ms vs {ms[stateful]:.2f}",
              flush=True)
    if args.matrices > 0:
        per_matrix(args.matrices)


def _with_gap(rng, n: int, m: int, gap: float) -> np.ndarray:
    """``U diag(s) Vᵀ`` with σ2/σ1 = 1 − gap over a uniform bulk below σ2."""
    k = min(n, m)
    u, _ = np.linalg.qr(rng.standard_normal((n, k)))
    v, _ = np.linalg.qr(rng.standard_normal((m, k)))
    s = np.concatenate([[1.0, 1.0 - gap], np.sort(rng.uniform(0, 1.0 - gap, k - 2))[::-1]])
    return ((u * s) @ v.T).astype(np.float32)


def _gram_top(w):
    """The exact small solve: the top eigenpair of the short-side Gram by ``eigh`` (the penalty is then uᵀWv)."""
    frozen = jax.lax.stop_gradient(w)
    wide = w.shape[0] < w.shape[1]
    gram = frozen @ frozen.T if wide else frozen.T @ frozen
    vector = jnp.linalg.eigh(gram)[1][:, -1]
    other = (vector @ frozen) if wide else (frozen @ vector)
    other = other / jnp.linalg.norm(other)
    u, v = (vector, other) if wide else (other, vector)
    return u @ w @ v


def per_matrix(calls: int) -> None:
    """Per weight matrix: one jitted value-and-gradient of ``½σ_max²`` by each method, and its gradient error."""
    solvers = {
        "converged (default)": lambda w: wwjax.top_singular(w).sigma,
        "20 power iters": lambda w: wwjax.power_iteration(w, num_iters=20).sigma,
        "Gram eigh": _gram_top,
    }
    print(f"\nper matrix (σ2/σ1 = 0.95): median ms of jit(value_and_grad(½σ²)) over {calls} calls, gradient error")
    print(f"{'shape':<12}" + "".join(f"{name:>30}" for name in solvers))
    for shape in [(27, 32), (288, 64), (576, 64), (1024, 128), (2304, 256), (4096, 1024)]:
        w = _with_gap(np.random.default_rng(0), *shape, 0.05)
        u, s, vt = np.linalg.svd(w.astype(np.float64))
        w = jnp.asarray(w)
        exact = s[0] * np.outer(u[:, 0], vt[0])
        cells = []
        for solver in solvers.values():
            step = jax.jit(jax.value_and_grad(lambda w, solver=solver: 0.5 * solver(w) ** 2))
            _, grad = jax.block_until_ready(step(w))
            elapsed = []
            for _ in range(calls):
                start = time.perf_counter()
                jax.block_until_ready(step(w))
                elapsed.append(time.perf_counter() - start)
            error = np.linalg.norm(np.asarray(grad, np.float64) - exact) / np.linalg.norm(exact)
            cells.append(f"{1e3 * statistics.median(elapsed):>9.3f} ms, err {error:8.1e}")
        print(f"{str(shape):<12}" + "".join(f"{cell:>30}" for cell in cells), flush=True)


if __name__ == "__main__":
    main()
