"""Distance from initialisation and α while a small CNN overfits: does either track test accuracy?

A Flax CNN (``wwjax.demo.DigitsCNN``) is trained with Adam on a small subset of scikit-learn's digits, long enough
to fit it perfectly; an Orbax ``CheckpointManager`` saves the train state (params beside the optimizer state) and the
accuracies (a JSON ``metrics`` item) every few steps. Then ``wwjax.scan_checkpoints(run, init_step=0)`` analyses
every step, reading only the weights, and adds each layer's distance from its initial weights.

Writes, under ``--out`` (default ``distance_from_init_out``): ``checkpoints/`` (the run), ``trend.csv`` (one row per
step: accuracies, mean distance from init, mean α) and ``trend.png`` (both against step and against test accuracy).

Run::

    python examples/distance_from_init.py           # ~2,000 steps
    python examples/distance_from_init.py --quick   # a few hundred steps, for a test
"""

from __future__ import annotations

import argparse
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import wwjax
from wwjax.demo import DigitsCNN, load_digits


def train(directory: pathlib.Path, *, steps: int, every: int, train_size: int, batch_size: int = 32, seed: int = 0):
    """Trains on ``train_size`` examples; checkpoints ``{params, opt_state, step}`` and accuracies every ``every``."""
    (x_train, y_train), (x_test, y_test) = load_digits(seed)
    x_train, y_train = x_train[:train_size], y_train[:train_size]
    model = DigitsCNN()
    params = model.init(jax.random.key(seed), x_train[:1])["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def update(params, opt_state, x, y):
        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

        updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)

    rng = np.random.default_rng(seed)
    options = ocp.CheckpointManagerOptions(max_to_keep=None)
    with ocp.CheckpointManager(directory, options=options, item_names=("state", "metrics")) as manager:
        for step in range(steps + 1):
            if step % every == 0:
                metrics = {"train_accuracy": float(accuracy(params, x_train, y_train)),
                           "test_accuracy": float(accuracy(params, x_test, y_test))}
                state = {"params": params, "opt_state": opt_state, "step": step}
                manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                           metrics=ocp.args.JsonSave(metrics)))
            batch = rng.integers(0, len(x_train), batch_size)
            params, opt_state = update(params, opt_state, x_train[batch], y_train[batch])
        manager.wait_until_finished()


def trend_table(directory: pathlib.Path):
    """The scan's per-step summary, renamed for reading: step, accuracies, mean distance from init, mean α."""
    scan = wwjax.scan_checkpoints(directory, init_step=0, progress=False)
    table = scan.summary.rename(columns={"metrics/train_accuracy": "train_accuracy",
                                         "metrics/test_accuracy": "test_accuracy"})
    columns = ["step", "train_accuracy", "test_accuracy", "distance_from_init", "alpha", "alpha_weighted",
               "log_spectral_norm", "stable_rank"]
    return table[columns], scan.details


def plot(table, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(table.step, table.train_accuracy, marker="o", label="train")
    axes[0].plot(table.step, table.test_accuracy, marker="o", label="test")
    axes[0].set(xlabel="step", ylabel="accuracy", title="accuracy")
    axes[0].legend()
    twin = axes[1].twinx()
    axes[1].plot(table.step, table.distance_from_init, marker="o", color="C2")
    twin.plot(table.step, table.alpha, marker="s", color="C3")
    axes[1].set(xlabel="step", title="distance from init (green), mean α (red)")
    axes[1].set_ylabel("mean ‖W − W₀‖_F", color="C2")
    twin.set_ylabel("mean α", color="C3")
    axes[2].scatter(table.distance_from_init, table.test_accuracy, c=table.step, cmap="viridis")
    axes[2].set(xlabel="mean distance from init", ylabel="test accuracy", title="test accuracy vs distance")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (150 steps) for tests and a first look")
    parser.add_argument("--out", default="distance_from_init_out", help="output directory")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    run = out / "checkpoints"
    if run.exists():
        shutil.rmtree(run)  # a fresh run: CheckpointManager would otherwise refuse to overwrite steps
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        train(run.absolute(), steps=150, every=25, train_size=150)
    else:
        train(run.absolute(), steps=2000, every=100, train_size=300)
    table, _ = trend_table(run)
    table.to_csv(out / "trend.csv", index=False)
    plot(table, out / "trend.png")
    with np.printoptions(precision=3):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwrote {out / 'trend.csv'} and {out / 'trend.png'}")
    return table


if __name__ == "__main__":
    main()
