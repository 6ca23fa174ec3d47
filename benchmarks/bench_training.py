"""Per-step cost of training with spectra: the spectral norm penalty and the in-step metrics, on a small CNN.

A small CNN (``--size``x``--size``x3 inputs, 16 by default; Conv 32, Conv 64, pool, Conv 64, pool, Dense 128,
Dense 10; 0.2M parameters at size 16) trained with Adam on random data. Each configuration's jitted step (forward,
backward, optimizer update) is timed after a warm-up, in interleaved rounds (one step of every configuration per round); the script prints the median
step time and the median over rounds of its ratio to the plain step of the same round:

* ``plain``: Adam;
* ``penalty (stateful)``: ``wwjax.add_spectral_penalty`` in the chain, one warm-started power iteration per step
  (the paper's form; the issue's goal is < 10% overhead);
* ``penalty (loss term, 20 iters)``: ``λ·wwjax.spectral_penalty(params)`` in the loss, stateless;
* ``penalty (fft, stateful)``: the exact conv operator norm (``conv='fft'`` on the input grid), one iteration per
  step;
* ``msn``: the same CNN built from ``wwjax.nn.linen`` MSN layers;
* ``monitor every step``: ``wwjax.monitor_spectra(every=1)``, the worst case of the in-step metrics (with
  ``every=k`` the cost is paid once per k steps).

Run from the repository root::

    python benchmarks/bench_training.py [--batch 64] [--size 16] [--steps 30]
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
        "penalty (loss term, 20 iters)": (SmallCNN(), adam, lambda p: 0.01 * wwjax.spectral_penalty(p)),
        "penalty (fft, stateful)": (
            SmallCNN(),
            optax.chain(optax.scale_by_adam(), wwjax.add_spectral_penalty(0.01, conv="fft", input_size=args.size),
                        optax.scale_by_learning_rate(1e-3)),
            None,
        ),
        "msn": (SmallCNN(msn=True), adam, None),
        "monitor every step": (SmallCNN(), optax.chain(adam, wwjax.monitor_spectra(every=1)), None),
    }
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
    print(f"{'configuration':<32} {'median step ms':>15} {'median ratio':>13}")
    for name, values in times.items():
        ratio = statistics.median(np.asarray(values) / plain)
        print(f"{name:<32} {1e3 * statistics.median(values):>15.2f} {ratio:>13.3f}", flush=True)


if __name__ == "__main__":
    main()
