"""How far is each layer from random? ``rand_distance`` against α on a small CNN trained on scikit-learn's digits.

Trains :class:`wwjax.demo.DigitsCNN` (two 3×3 convolutions, a hidden dense layer, a classifier) with Adam, then
analyses it with ``randomize=True``: every weight matrix is shuffled (which keeps its element distribution and
destroys what it learnt) and its ESD compared with the original's. ``rand_distance`` (the Jensen–Shannon distance
of the two spectra) is near 0 for a layer that learnt nothing and grows with learnt structure, which also lowers α.

It writes, under ``--out``:

* ``rand_distance_vs_alpha.csv``: one row per layer (α, rand_distance, num_traps, …);
* ``rand_distance_vs_alpha.png``: rand_distance against α, one point per layer;
* ``randomized_esd.png``: the randomized ESD of the layer with the most correlation traps (the one with the largest
  ``max_rand_eval / rand_bulk_max`` when none has a trap), traps marked.

Run: ``python examples/rand_distance_vs_alpha.py --out out/`` (a minute on a laptop CPU), or ``--quick`` (a few
seconds). Needs the ``examples`` and ``plot`` extras (scikit-learn, matplotlib).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import pandas as pd

import wwjax
import wwjax.plot
from wwjax.demo import train

COLUMNS = ["path", "layer_type", "N", "M", "rf", "alpha", "rand_distance", "ww_softrank", "max_rand_eval",
           "rand_bulk_max", "num_traps", "num_trap_elements"]


def trap_layer(table: pd.DataFrame) -> str:
    """The layer whose traps are clearest: most traps, then the largest shuffled eigenvalue over its bulk edge."""
    ranked = table.assign(excess=table.max_rand_eval / table.rand_bulk_max)
    return ranked.sort_values(["num_traps", "excess"], ascending=False).path.iloc[0]


def run(steps: int, learning_rate: float, out: pathlib.Path, seed: int = 0) -> pd.DataFrame:
    """Trains, analyses with ``randomize=True``, writes the table and the figures; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    params, accuracy = train(steps=steps, seed=seed, learning_rate=learning_rate)
    trained = time.perf_counter()
    result = wwjax.analyze(params, randomize=True, key=seed, trap_elements=5)
    table = wwjax.details(result)
    table = table[table.status == "success"][COLUMNS].reset_index(drop=True)
    analysed = time.perf_counter()
    table.to_csv(out / "rand_distance_vs_alpha.csv", index=False)

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.scatter(table.alpha, table.rand_distance, s=60, c="tab:blue")
    for _, row in table.iterrows():
        ax.annotate(row.path.replace("/kernel", ""), (row.alpha, row.rand_distance), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="α (power-law exponent of the ESD tail)", ylabel="rand_distance (JS distance to shuffled ESD)",
           title=f"DigitsCNN, {steps} steps at lr {learning_rate:g}: test accuracy {accuracy:.3f}")
    fig.savefig(out / "rand_distance_vs_alpha.png", dpi=120)

    wwjax.plot.randomized_esd(result, trap_layer(table), save=out / "randomized_esd.png")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 4):
        print(table.to_string(index=False))
    print(f"\ntest accuracy {accuracy:.3f}; trained in {trained - start:.1f} s, analysed in {analysed - trained:.1f} s;"
          f" figures and table in {out}")
    return table


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few training steps: seconds, for a smoke test")
    parser.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    parser.add_argument("--learning-rate", type=float, default=1e-2,
                        help="Adam learning rate (default 1e-2: large enough to leave correlation traps)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("rand_distance_vs_alpha"))
    args = parser.parse_args(argv)
    return run(40 if args.quick else args.steps, args.learning_rate, args.out)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
