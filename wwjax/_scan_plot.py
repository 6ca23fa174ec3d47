"""One PNG of a scan's trends: each summary metric (and distance from init, and stored metrics) against step."""

from __future__ import annotations

import pandas as pd

TREND_COLUMNS = ("alpha", "alpha_weighted", "log_spectral_norm", "stable_rank", "log_norm", "distance_from_init")


def plot_scan_summary(summary: pd.DataFrame, path) -> list[str]:
    """Writes ``path`` (PNG) with one panel per metric of ``summary`` against ``step``; returns the panels drawn.

    Needs matplotlib (the ``plot`` extra).

    Example:
      >>> import pandas as pd, tempfile
      >>> frame = pd.DataFrame({"step": [0, 10], "alpha": [5.0, 3.5], "status": ["success"] * 2})
      >>> plot_scan_summary(frame, tempfile.mkdtemp() + "/trend.png")
      ['alpha']
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    done = summary[summary["status"] == "success"] if "status" in summary else summary
    panels = [c for c in TREND_COLUMNS if c in done and done[c].notna().any()]
    panels += [c for c in done if c.startswith("metrics/") and done[c].notna().any()]
    if not panels:
        raise ValueError("the scan has no successful step with metrics to plot")
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, panels):
        ax.plot(done["step"].astype(float), done[name].astype(float), marker="o")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return panels
