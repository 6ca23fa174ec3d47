"""Experiment 2: Simpson's paradox — scale metrics across depths, shape metrics within a depth.

A grid of MLPs on scikit-learn's digits: several depths × several training settings (batch size, weight decay).
Martin & Mahoney's post-mortem of the PGDL contest (arXiv 2106.00734) found that a scale metric (mean log spectral
norm) tracks test accuracy across models of different depth but reverses within a group of fixed depth trained with
varied regularisation, while the shape metric α does the opposite and α-weighted (α · log λmax) combines both.

    python examples/experiment_simpsons_paradox.py --out results/exp2            # full grid, a few minutes
    python examples/experiment_simpsons_paradox.py --quick --out /tmp/exp2       # well under a minute

Writes ``runs.csv`` (one row per model), ``correlations.csv`` (per metric: Spearman ρ with test accuracy over all
models, across depths on the depth groups' means, and within each depth group and their mean) and
``simpsons_paradox.png`` (one panel per metric: the models coloured by depth, each group's trend and the trend of the
group means).
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

METRICS = ("log_spectral_norm", "alpha", "alpha_weighted", "log_alpha_norm")
LABELS = dict(log_spectral_norm="mean log spectral norm", alpha="mean α", alpha_weighted="mean α-weighted",
              log_alpha_norm="mean log α-norm")
FULL = dict(depths=(1, 2, 3, 4), batch_sizes=(16, 64, 256), weight_decays=(0.0, 1e-3), epochs=20)
QUICK = dict(depths=(1, 2), batch_sizes=(16, 256), weight_decays=(0.0,), epochs=6)


def run_grid(depths, batch_sizes, weight_decays, epochs: int, width: int = 256, seed: int = 0) -> pd.DataFrame:
    """Trains one model per (depth, batch size, weight decay); one row per model."""
    data = load_digits(seed)
    rows = []
    for depth, batch_size, weight_decay in itertools.product(depths, batch_sizes, weight_decays):
        config = RunConfig(depth=depth, width=width, batch_size=batch_size, weight_decay=weight_decay,
                           epochs=epochs, seed=seed)
        params, train_acc, test_acc = train_mlp(config, data)
        rows.append(dict(depth=depth, batch_size=batch_size, weight_decay=weight_decay, train_accuracy=train_acc,
                         test_accuracy=test_acc, **model_metrics(params)))
    return pd.DataFrame(rows)


def correlations(runs: pd.DataFrame) -> pd.DataFrame:
    """Per metric, Spearman ρ with test accuracy: over all models (``pooled``), over the depth groups' means
    (``across_depths``), within each depth group (``depth=d``) and the mean of those (``within_mean``)."""
    means = runs.groupby("depth").mean(numeric_only=True)
    out = []
    for name in METRICS:
        within = {f"depth={d}": spearman(g[name], g.test_accuracy) for d, g in runs.groupby("depth")}
        out.append(dict(metric=name, pooled=spearman(runs[name], runs.test_accuracy),
                        across_depths=spearman(means[name], means.test_accuracy),
                        within_mean=float(np.nanmean(list(within.values()))), **within))
    return pd.DataFrame(out)


def plot(runs: pd.DataFrame, rho: pd.DataFrame, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted(runs.depth.unique())
    colours = dict(zip(depths, plt.get_cmap("viridis")(np.linspace(0, 0.9, len(depths)))))
    means = runs.groupby("depth").mean(numeric_only=True)
    rho = rho.set_index("metric")
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4.2), sharey=True)
    for ax, name in zip(axes, METRICS):
        for depth, group in runs.groupby("depth"):
            ax.scatter(group[name], group.test_accuracy, color=colours[depth], s=30, label=f"depth {depth}")
            if len(group) > 1 and np.ptp(group[name]) > 0:  # the within-group trend (least squares)
                slope, icpt = np.polyfit(group[name], group.test_accuracy, 1)
                xs = np.linspace(group[name].min(), group[name].max(), 2)
                ax.plot(xs, slope * xs + icpt, color=colours[depth], lw=1.5)
        ax.plot(means[name], means.test_accuracy, "k--", lw=1)  # the across-depth trend of the group means
        ax.scatter(means[name], means.test_accuracy, marker="*", s=160, c=[colours[d] for d in means.index],
                   edgecolors="k", zorder=3)
        ax.set_xlabel(LABELS[name])
        ax.set_title(f"across depths ρ = {rho.loc[name, 'across_depths']:.2f}\n"
                     f"within depth (mean) ρ = {rho.loc[name, 'within_mean']:.2f}", fontsize=10)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    fig.suptitle("Experiment 2: Simpson's paradox (★ and dashed: depth-group means; lines: trend within a depth)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a reduced grid (2 depths × 2 batch sizes, 6 epochs)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("results/experiment2"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    runs = run_grid(**(QUICK if args.quick else FULL))
    rho = correlations(runs)
    runs.to_csv(args.out / "runs.csv", index=False)
    rho.to_csv(args.out / "correlations.csv", index=False)
    plot(runs, rho, args.out / "simpsons_paradox.png")
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(runs.to_string(index=False))
        print()
        print(rho.to_string(index=False))
    print(f"\n{len(runs)} models in {time.perf_counter() - start:.0f} s; written to {args.out}")
    return runs


if __name__ == "__main__":
    main()
