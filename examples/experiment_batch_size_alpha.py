"""Experiment 1: hyper-parameters → α (Martin & Mahoney's batch-size result, JMLR 2021).

The same Flax MLP is trained on scikit-learn's digits with several batch sizes and weight decays, for the same number
of epochs; wwjax then analyses each trained model. The claim: smaller batches give more heavy-tailed layers (smaller
mean α) and better test accuracy, so mean α and test accuracy are anti-correlated across the runs.

    python examples/experiment_batch_size_alpha.py --out results/exp1            # full grid, about a minute
    python examples/experiment_batch_size_alpha.py --quick --out /tmp/exp1       # a few seconds

Writes ``runs.csv`` (one row per model: hyper-parameters, accuracies, wwjax's summary metrics),
``correlations.csv`` (Spearman ρ of each metric with test accuracy) and ``batch_size_alpha.png``.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from digits_training import RunConfig, load_digits, model_metrics, spearman, train_mlp  # noqa: E402

METRICS = ("alpha", "alpha_weighted", "log_spectral_norm", "log_norm", "log_alpha_norm", "stable_rank")
FULL = dict(batch_sizes=(8, 16, 32, 64, 128, 256, 512), weight_decays=(0.0, 1e-4, 1e-3), epochs=30)
QUICK = dict(batch_sizes=(16, 64, 256), weight_decays=(0.0,), epochs=8)


def run_grid(batch_sizes, weight_decays, epochs: int, depth: int = 2, width: int = 256, seed: int = 0) -> pd.DataFrame:
    """Trains one model per (batch size, weight decay) and returns one row per model."""
    data = load_digits(seed)
    rows = []
    for batch_size, weight_decay in itertools.product(batch_sizes, weight_decays):
        config = RunConfig(depth=depth, width=width, batch_size=batch_size, weight_decay=weight_decay,
                           epochs=epochs, seed=seed)
        params, train_acc, test_acc = train_mlp(config, data)
        rows.append(dict(batch_size=batch_size, weight_decay=weight_decay, train_accuracy=train_acc,
                         test_accuracy=test_acc, **model_metrics(params)))
    return pd.DataFrame(rows)


def correlations(runs: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ of each metric (and of the batch size) with test accuracy, over all runs and per weight decay."""
    out = []
    for name in ("batch_size",) + METRICS:
        row = dict(metric=name, rho_all=spearman(runs[name], runs.test_accuracy))
        for wd, group in runs.groupby("weight_decay"):
            row[f"rho_wd={wd:g}"] = spearman(group[name], group.test_accuracy)
        out.append(row)
    out.append(dict(metric="alpha vs batch_size", rho_all=spearman(runs.alpha, runs.batch_size),
                    **{f"rho_wd={wd:g}": spearman(g.alpha, g.batch_size) for wd, g in runs.groupby("weight_decay")}))
    return pd.DataFrame(out)


def plot(runs: pd.DataFrame, rho: pd.DataFrame, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.3))
    markers = dict(zip(sorted(runs.weight_decay.unique()), "osD^v"))
    for wd, group in runs.groupby("weight_decay"):
        group = group.sort_values("batch_size")
        left.plot(group.batch_size, group.alpha, marker=markers[wd], label=f"weight decay {wd:g}")
        sc = right.scatter(group.alpha, group.test_accuracy, c=np.log2(group.batch_size), cmap="viridis",
                           marker=markers[wd], s=50, edgecolors="k", label=f"weight decay {wd:g}")
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size")
    left.set_ylabel("mean α (wwjax.summary)")
    left.axhspan(2, 6, color="0.92", zorder=0)
    left.set_title("α grows with the batch size")
    left.legend()
    r = rho.set_index("metric").loc["alpha", "rho_all"]
    right.set_xlabel("mean α")
    right.set_ylabel("test accuracy")
    right.set_title(f"test accuracy against mean α (Spearman ρ = {r:.2f})")
    fig.colorbar(sc, ax=right, label="log2 batch size")
    right.legend(loc="center left")
    fig.suptitle("Experiment 1: MLP on digits, same epochs, varying batch size and weight decay")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced grid (3 batch sizes, 8 epochs)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/experiment1"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    runs = run_grid(**(QUICK if args.quick else FULL))
    rho = correlations(runs)
    runs.to_csv(args.out / "runs.csv", index=False)
    rho.to_csv(args.out / "correlations.csv", index=False)
    plot(runs, rho, args.out / "batch_size_alpha.png")
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(runs.to_string(index=False))
        print()
        print(rho.to_string(index=False))
    print(f"\n{len(runs)} models in {time.perf_counter() - start:.0f} s; written to {args.out}")
    return runs


if __name__ == "__main__":
    main()
