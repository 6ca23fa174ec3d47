"""TempBalance against a tuned uniform learning rate: a small CNN on scikit-learn's digits, several seeds.

The same CNN (four 3×3 convolutions, a hidden dense layer, a classifier) is trained with SGD (momentum 0.9, cosine
decay) at a few base learning rates, once with one learning rate for every layer ("uniform") and once with
``wwjax.temperature_balance`` chained after the optimizer (per-layer factors in [0.5, 1.5] from the Hill α of each
layer, re-measured every epoch inside the jitted step; first and last layer unbalanced, as in the paper). The
uniform learning rate is tuned on a validation split; test accuracy is reported as mean ± std over seeds.

Writes, under ``--out`` (default ``temperature_balance_out``): ``runs.csv`` (one row per run: method, learning rate,
seed, validation and test accuracy, seconds per step), ``alpha.csv`` (per epoch and run: the std and mean of the
layers' α) and ``temperature_balance.png``.

Run::

    python examples/temperature_balance_digits.py           # 3 learning rates x 2 methods x 5 seeds x 20 epochs
    python examples/temperature_balance_digits.py --quick   # 1 learning rate, 1 seed, 2 epochs, for a test
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import linen as nn

import wwjax  # noqa: F401  (the package the transform belongs to)
from wwjax import spectral_metrics
from wwjax.demo import load_digits
from wwjax import temperature_balance


class SmallCNN(nn.Module):
    """Four 3×3 convolutions, a 64-unit dense layer and a classifier (paths Conv_0..3, Dense_0..1)."""

    @nn.compact
    def __call__(self, x):
        for features in (16, 32, 32, 32):
            x = nn.relu(nn.Conv(features, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2)).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(64)(x))
        return nn.Dense(10)(x)


def _split(seed: int):
    """Train / validation / test: the validation set (300 images) is cut from the training split."""
    (x_train, y_train), test = load_digits(seed)
    return (x_train[300:], y_train[300:]), (x_train[:300], y_train[:300]), test


@functools.lru_cache(maxsize=None)
def _compiled(method: str, learning_rate: float, steps_per_epoch: int, epochs: int):
    model = SmallCNN()
    schedule = optax.cosine_decay_schedule(learning_rate, steps_per_epoch * epochs)
    tx = optax.sgd(schedule, momentum=0.9)
    if method == "tempbalance":
        tx = optax.chain(tx, temperature_balance(every=steps_per_epoch, xmin="median"))

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)

    alphas = jax.jit(lambda p: spectral_metrics(p, xmin="median").alpha)
    return model, tx, step, accuracy, alphas


def train(method: str, learning_rate: float, seed: int, epochs: int, batch_size: int = 64) -> tuple[dict, list]:
    """One run: its accuracies and seconds per step, and per epoch the layers' α."""
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = _split(seed)
    steps_per_epoch = len(x_train) // batch_size
    model, tx, step, accuracy, alphas = _compiled(method, learning_rate, steps_per_epoch, epochs)
    params = model.init(jax.random.key(seed), x_train[:1])["params"]
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    trace, seconds, timed_steps = [], 0.0, 0
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        start = time.perf_counter()
        for b in range(steps_per_epoch):
            batch = order[b * batch_size : (b + 1) * batch_size]
            params, opt_state = step(params, opt_state, x_train[batch], y_train[batch])
        jax.block_until_ready(params)
        if epoch > 0:  # the first epoch compiles
            seconds += time.perf_counter() - start
            timed_steps += steps_per_epoch
        alpha = np.array([float(np.nanmean(a)) for a in alphas(params).values()])
        trace.append(dict(method=method, learning_rate=learning_rate, seed=seed, epoch=epoch + 1,
                          alpha_std=float(np.std(alpha)), alpha_mean=float(np.mean(alpha))))
    run = dict(method=method, learning_rate=learning_rate, seed=seed,
               val_accuracy=float(accuracy(params, x_val, y_val)),
               test_accuracy=float(accuracy(params, x_test, y_test)),
               seconds_per_step=seconds / max(timed_steps, 1))
    return run, trace


def plot(runs: pd.DataFrame, alpha: pd.DataFrame, best_lr: float, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    table = runs.groupby(["method", "learning_rate"]).test_accuracy.agg(["mean", "std"]).reset_index()
    for offset, (method, rows) in zip((-0.15, 0.15), table.groupby("method")):
        x = np.arange(len(rows)) + offset
        left.errorbar(x, rows["mean"], yerr=rows["std"].fillna(0), fmt="o", capsize=4, label=method)
        left.set_xticks(np.arange(len(rows)), [f"{lr:g}" for lr in rows.learning_rate])
    left.set(xlabel="base learning rate", ylabel="test accuracy (mean ± std over seeds)",
             title=f"SmallCNN on digits (uniform lr tuned on validation: {best_lr:g})")
    left.legend()
    chosen = alpha[alpha.learning_rate == best_lr]
    for method, rows in chosen.groupby("method"):
        curve = rows.groupby("epoch").alpha_std.agg(["mean", "std"])
        right.plot(curve.index, curve["mean"], marker=".", label=method)
        right.fill_between(curve.index, curve["mean"] - curve["std"].fillna(0), curve["mean"] + curve["std"].fillna(0),
                           alpha=0.2)
    right.set(xlabel="epoch", ylabel="std of the layers' Hill α (median xmin)",
              title=f"α spread across layers, lr {best_lr:g}")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 learning rate, 1 seed, 2 epochs")
    parser.add_argument("--out", default="temperature_balance_out")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.learning_rates = 2, 1, [0.03]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs, traces = [], []
    for learning_rate in args.learning_rates:
        for method in ("uniform", "tempbalance"):
            for seed in range(args.seeds):
                run, trace = train(method, learning_rate, seed, args.epochs)
                runs.append(run)
                traces += trace
                print(f"{method:12s} lr={learning_rate:<5g} seed={seed}  val {run['val_accuracy']:.4f}  "
                      f"test {run['test_accuracy']:.4f}  {1e3 * run['seconds_per_step']:.2f} ms/step", flush=True)
    runs, alpha = pd.DataFrame(runs), pd.DataFrame(traces)
    runs.to_csv(out / "runs.csv", index=False)
    alpha.to_csv(out / "alpha.csv", index=False)
    uniform = runs[runs.method == "uniform"]
    best_lr = float(uniform.groupby("learning_rate").val_accuracy.mean().idxmax())
    summary = runs.groupby(["learning_rate", "method"]).agg(
        test_mean=("test_accuracy", "mean"), test_std=("test_accuracy", "std"),
        ms_per_step=("seconds_per_step", lambda s: 1e3 * float(np.median(s))))
    print(summary.to_string())
    print(f"tuned uniform learning rate (validation): {best_lr:g}")
    plot(runs, alpha, best_lr, out / "temperature_balance.png")
    return runs


if __name__ == "__main__":
    main()
