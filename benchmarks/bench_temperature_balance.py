"""Per-step overhead of ``temperature_balance`` (α re-measured once per epoch) on the small digits CNN.

Trains ``examples/temperature_balance_digits.py``'s SmallCNN with plain SGD and with TempBalance chained after it,
epochs interleaved so that both see the same machine load, and prints the median seconds per epoch of each and
their ratio. The issue's budget: under 5% at ``every`` = one epoch.

Run::

    python benchmarks/bench_temperature_balance.py [--epochs 30]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time

import jax
import numpy as np
import optax

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "temperature_balance_digits.py"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    spec = importlib.util.spec_from_file_location("temperature_balance_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example
    spec.loader.exec_module(example)
    (x_train, y_train), _, _ = example._split(0)
    batch_size = 64
    steps_per_epoch = len(x_train) // batch_size
    state, times = {}, {"uniform": [], "tempbalance": []}
    for method in times:
        model, tx, step, _, _ = example._compiled(method, 0.03, steps_per_epoch, args.epochs)
        params = model.init(jax.random.key(0), x_train[:1])["params"]
        state[method] = [step, params, tx.init(params)]
    rng = np.random.default_rng(0)
    for epoch in range(args.epochs + 1):
        order = rng.permutation(len(x_train))
        for method, entry in state.items():
            step, params, opt_state = entry
            start = time.perf_counter()
            for b in range(steps_per_epoch):
                batch = order[b * batch_size : (b + 1) * batch_size]
                params, opt_state = step(params, opt_state, x_train[batch], y_train[batch])
            jax.block_until_ready(params)
            if epoch > 0:  # epoch 0 compiles
                times[method].append(time.perf_counter() - start)
            entry[1:] = [params, opt_state]
    medians = {m: float(np.median(t)) for m, t in times.items()}
    ratio = medians["tempbalance"] / medians["uniform"]
    print(f"steps per epoch {steps_per_epoch}; median s/epoch: uniform {medians['uniform']:.4f}, "
          f"tempbalance {medians['tempbalance']:.4f}; ratio {ratio:.3f} ({100 * (ratio - 1):+.1f}%)")
    return dict(medians, ratio=ratio)


if __name__ == "__main__":
    main()
