"""Figures of an analysis (matplotlib, the optional ``plot`` extra: ``pip install wwjax[plot]``).

Each function draws one figure for one row of a result (a layer, or one kernel position with ``pool=False``) or for
the whole model, and returns the :class:`matplotlib.figure.Figure`; nothing is shown or written unless ``save`` is
given (a path). Pass ``ax`` to draw into an existing axes instead.

* :func:`esd`: the log–log ESD with the fitted power law and the ``xmin`` line;
* :func:`mp_fit`: the ESD (rescaled to mean 1) with the fitted Marchenko–Pastur density and its bulk edge;
* :func:`randomized_esd`: the ESD overlaid with the ESD of the shuffled weights, correlation traps marked;
* :func:`ks_alpha`: the KS distance and α of every candidate ``xmin``;
* :func:`layers`: any metric (α by default) across the model's rows.

A layer is named by its node (``result["params"]["Dense_0"]["kernel"]``) or by the result and its ``path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wwjax.core import _results
from wwjax.diagnostics._bootstrap import draw_alpha_intervals
from wwjax.diagnostics._mpfit import fit_marchenko_pastur
from wwjax.core._powerlaw import EVALS_THRESH, candidate_fits

__all__ = ("esd", "ks_alpha", "layers", "mp_fit", "randomized_esd")

ESD_COLOR, FIT_COLOR, RAND_COLOR, TRAP_COLOR = "tab:green", "tab:red", "mediumorchid", "darkorange"


def _figure(ax, ncols: int = 1, width: float = 6.4):
    if ax is not None:
        return ax.figure, (ax if ncols == 1 else [ax])
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols if ncols > 1 else width, 4.4), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _num_bins(n: int) -> int:
    """100 bins (WeightWatcher's) for large spectra, fewer for small ones, so that bins are not mostly empty."""
    return int(np.clip(n // 4, 10, 100))


def _done(fig, save):
    if save is not None:
        fig.savefig(Path(save), dpi=120)
    return fig


def _node(layer, path: str | None) -> _results.LayerMetrics:
    if isinstance(layer, _results.LayerMetrics):
        return layer
    nodes = [n for n in _results.iter_nodes(layer) if isinstance(n, _results.LayerMetrics)]
    for node in nodes:
        if node.path == path:
            return node
    raise KeyError(f"no analysed layer with path {path!r}; analysed paths: {[n.path for n in nodes]}")


def _label(node: _results.LayerMetrics, row: int) -> str:
    if not 0 <= row < len(node.layer_index):
        raise IndexError(f"{node.path} has {len(node.layer_index)} rows, got row={row}")
    parts = [node.path]
    if node.layer_index[row] is not None:
        parts.append(f"layer {node.layer_index[row]}")
    if node.slice_id[row] is not None:
        parts.append(f"position {node.slice_id[row]}")
    return " · ".join(parts)


def _extra(node: _results.LayerMetrics, name: str, row: int, option: str):
    if name not in node.extra:
        raise ValueError(f"{node.path} has no {name!r}: analyse with {option}")
    return np.asarray(node.extra[name][row])


def esd(layer, path: str | None = None, *, row: int = 0, ax=None, save=None):
    """The log–log ESD of one row with its fitted power law ``p(λ) ∝ λ^−α`` on ``λ ≥ xmin``.

    The histogram is a density over log-spaced bins of the eigenvalues above ``xmin/100``; the fitted line is the
    power-law density times the share of eigenvalues in the tail, so that it sits on the histogram.

    Example:
      >>> import numpy as np, wwjax, wwjax.plot
      >>> result = wwjax.analyze({"w": np.random.default_rng(0).standard_t(3, (300, 100))})
      >>> fig = wwjax.plot.esd(result, "w")
      >>> fig.axes[0].get_xscale()
      'log'
    """
    node = _node(layer, path)
    label = _label(node, row)
    evals = np.asarray(node.esd[row], dtype=float)
    alpha, xmin, D = (float(np.asarray(getattr(node, c))[row]) for c in ("alpha", "xmin", "D"))
    fig, ax = _figure(ax)
    fitted = np.isfinite(alpha)
    floor = xmin / 100 if fitted else max(evals.max() * 0.004, EVALS_THRESH)
    shown = evals[evals > floor]
    bins = np.logspace(np.log10(shown.min()), np.log10(shown.max()), _num_bins(len(shown)))
    ax.hist(shown, bins=bins, density=True, color=ESD_COLOR, alpha=0.6, label="ESD")
    if fitted:
        tail = np.sort(evals[evals >= xmin])
        share = len(tail) / len(shown)
        density = share * (alpha - 1) / xmin * (tail / xmin) ** (-alpha)
        ax.plot(tail, density, color=FIT_COLOR, ls="--", lw=2, label=f"power law, α = {alpha:.2f}")
        ax.axvline(xmin, color=FIT_COLOR, lw=1, label=f"xmin = {xmin:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="eigenvalue λ of WᵀW", ylabel="density",
           title=f"{label}\nα = {alpha:.3f}, D = {D:.3f}" if fitted else f"{label}\npower-law fit failed")
    ax.legend()
    return _done(fig, save)


def mp_fit(layer, path: str | None = None, *, row: int = 0, randomized: bool = False, ax=None, save=None):
    """The ESD rescaled to mean 1 (``W_scale²·λ``) with its Marchenko–Pastur fit, bulk edge and spikes.

    The fit is recomputed from the row's ESD (as ``mp_fit=True`` computes it), so any result can be drawn. With
    ``randomized=True`` the shuffled spectrum of a ``randomize=True`` analysis is drawn instead. For square matrices
    (Q = 1) the fit is the quarter-circle law of the singular values, as WeightWatcher fits it.

    Example:
      >>> import numpy as np, wwjax, wwjax.plot
      >>> result = wwjax.analyze({"w": np.random.default_rng(0).normal(size=(400, 100))})
      >>> wwjax.plot.mp_fit(result, "w").axes[0].get_xlabel()
      'rescaled eigenvalue W_scale²·λ'
    """
    node = _node(layer, path)
    label = _label(node, row)
    evals = _extra(node, "rand_esd", row, "randomize=True") if randomized else np.asarray(node.esd[row])
    Q = node.N / node.M
    fit = fit_marchenko_pastur(evals, Q, node.M)
    sigma, scale = float(fit.sigma_mp), float(fit.W_scale)
    x = np.asarray(evals, dtype=float) * scale**2
    bulk_max, bulk_min = float(fit.bulk_max) * scale**2, float(fit.bulk_min) * scale**2
    edge = bulk_max + np.sqrt(Q**-0.5 * bulk_max ** (2 / 3) * node.M ** (-2 / 3))
    fig, ax = _figure(ax)
    color = RAND_COLOR if randomized else "royalblue"
    if Q == 1.0:
        values, grid = np.sqrt(x), np.linspace(0, 2, 400)
        density = np.sqrt(np.clip(4 - grid**2, 0, None)) / (np.pi * sigma**2)
        edge, xlabel = np.sqrt(edge), "rescaled singular value √(W_scale²·λ)"
    else:
        values, grid = x, np.linspace(bulk_min, bulk_max, 400)
        density = np.sqrt(np.clip((bulk_max - grid) * (grid - bulk_min), 0, None)) / (2 * np.pi * sigma**2 * grid / Q)
        xlabel = "rescaled eigenvalue W_scale²·λ"
    ax.hist(values, bins=_num_bins(len(values)), density=True, color=color, alpha=0.55, label="shuffled ESD" if randomized else "ESD")
    ax.plot(grid, density, color=FIT_COLOR, lw=2, label=f"MP fit, σ = {sigma:.3f}")
    ax.axvline(edge, color=FIT_COLOR, ls="--", lw=1, label="bulk edge + Tracy–Widom")
    spikes = values[values > edge]
    if len(spikes):
        ax.plot(spikes, np.zeros_like(spikes), "v", color=TRAP_COLOR, ms=9, clip_on=False,
                label=f"{len(spikes)} {'trap' if randomized else 'spike'}{'s' if len(spikes) > 1 else ''}")
    ax.set(xlabel=xlabel, ylabel="density",
           title=f"{label}{' (shuffled)' if randomized else ''}\nQ = {Q:.3g}, σ_mp = {sigma:.3f}, "
                 f"mp_softrank = {float(fit.mp_softrank):.3f}, spikes = {int(fit.num_spikes)}")
    ax.legend()
    return _done(fig, save)


def randomized_esd(layer, path: str | None = None, *, row: int = 0, log: bool = True, ax=None, save=None):
    """The ESD overlaid with the ESD of the shuffled weights (``randomize=True``); correlation traps marked.

    Shuffled eigenvalues beyond the shuffled bulk edge (``rand_bulk_max`` plus the Tracy–Widom margin) are the
    traps (triangles); the orange line is ``max_rand_eval``. Real structure shows as ESD mass right of the
    shuffled spectrum; a trap shows as a shuffled eigenvalue far right of its own bulk.

    Example:
      >>> import numpy as np, wwjax, wwjax.plot
      >>> result = wwjax.analyze({"w": np.random.default_rng(0).standard_t(3, (300, 100))}, randomize=True, key=0)
      >>> len(wwjax.plot.randomized_esd(result, "w").axes[0].patches) > 0
      True
    """
    node = _node(layer, path)
    label = _label(node, row)
    rand = _extra(node, "rand_esd", row, "randomize=True").astype(float)
    evals = np.asarray(node.esd[row], dtype=float)
    bulk_max = float(_extra(node, "rand_bulk_max", row, "randomize=True"))
    scale = float(_extra(node, "rand_W_scale", row, "randomize=True")) ** 2
    Q = node.N / node.M
    margin = np.sqrt(Q**-0.5 * (bulk_max * scale) ** (2 / 3) * node.M ** (-2 / 3)) / scale
    edge = bulk_max + margin
    traps = rand[rand > edge]
    f = np.log10 if log else (lambda v: v)
    evals, rand = evals[evals > 0], rand[rand > 0]
    fig, ax = _figure(ax)
    bins = np.linspace(f(min(evals.min(), rand.min())), f(max(evals.max(), rand.max())), _num_bins(len(evals)))
    ax.hist(f(evals), bins=bins, density=True, color=ESD_COLOR, alpha=0.6, label="ESD")
    ax.hist(f(rand), bins=bins, density=True, color=RAND_COLOR, alpha=0.5, label="shuffled ESD")
    ax.axvline(f(rand.max()), color=TRAP_COLOR, lw=1.5, label="max_rand_eval")
    ax.axvline(f(edge), color=FIT_COLOR, ls="--", lw=1, label="shuffled bulk edge")
    if len(traps):
        ax.plot(f(traps), np.zeros_like(traps), "v", color=FIT_COLOR, ms=10, clip_on=False,
                label=f"{len(traps)} correlation trap{'s' if len(traps) > 1 else ''}")
    distance = float(_extra(node, "rand_distance", row, "randomize=True"))
    ax.set(xlabel="log10 λ" if log else "λ", ylabel="density",
           title=f"{label}: ESD and shuffled ESD\nrand_distance = {distance:.3f}, "
                 f"num_traps = {int(_extra(node, 'num_traps', row, 'randomize=True'))}")
    ax.legend()
    return _done(fig, save)


def ks_alpha(layer, path: str | None = None, *, row: int = 0, ax=None, save=None):
    """The KS distance D and α of every candidate ``xmin`` (the fit takes the least D), on two axes.

    Example:
      >>> import numpy as np, wwjax, wwjax.plot
      >>> result = wwjax.analyze({"w": np.random.default_rng(0).standard_t(3, (300, 100))})
      >>> len(wwjax.plot.ks_alpha(result, "w").axes)
      2
    """
    node = _node(layer, path)
    label = _label(node, row)
    evals = node.esd[row]
    fits, start, end = candidate_fits(evals)
    idx = np.arange(int(start), int(end) - 1)
    xmins = np.asarray(evals)[idx]
    Ds, alphas = np.asarray(fits.Ds)[idx], np.asarray(fits.alphas)[idx]
    if ax is not None:
        fig, axes = ax.figure, [ax, ax.twinx()]
    else:
        fig, axes = _figure(None, ncols=2, width=4.6)
    xmin = float(np.asarray(node.xmin)[row])
    for a, values, name, color in ((axes[0], Ds, "KS distance D", "tab:blue"), (axes[1], alphas, "α", FIT_COLOR)):
        a.plot(xmins, values, color=color, lw=1)
        a.axvline(xmin, color="gray", ls="--", lw=1, label=f"chosen xmin = {xmin:.3g}")
        a.set(xscale="log", xlabel="candidate xmin", ylabel=name)
    axes[0].legend()
    axes[0].set_title(f"{label}: D by xmin")
    axes[1].set_title(f"α by xmin (fit: α = {float(np.asarray(node.alpha)[row]):.3f})")
    return _done(fig, save)


def layers(result, metric: str = "alpha", *, ax=None, save=None):
    """A metric across the model's rows, in the order of :func:`wwjax.details` (α: the 2–6 band shaded).

    Any numeric column of ``details`` works, the optional ones included (``rand_distance``, ``num_spikes`` …). With
    α of an ``analyze(..., bootstrap=B)`` result each row's ``[alpha_ci_low, alpha_ci_high]`` is drawn as a bar.

    Example:
      >>> import numpy as np, wwjax, wwjax.plot
      >>> rng = np.random.default_rng(0)
      >>> result = wwjax.analyze({f"d{i}": rng.standard_t(3, (200, 100)) for i in range(3)})
      >>> len(wwjax.plot.layers(result).axes[0].lines[0].get_xdata())
      3
    """
    from wwjax.core._details import details

    table = details(result)
    table = table[table.status != "skipped"]
    if metric not in table:
        raise KeyError(f"no column {metric!r} in details(result); columns: {list(table.columns)}")
    values = table[metric].astype(float).to_numpy()
    names = table.path.astype(str).tolist()
    for extra in ("layer_index", "slice_id"):
        if extra in table:
            names = [n if pd_na(v) else f"{n}[{v}]" for n, v in zip(names, table[extra])]
    fig, ax = _figure(ax, width=max(6.4, 0.35 * len(values)))
    x = np.arange(len(values))
    ax.plot(x, values, "o-", color="tab:blue")
    if metric == "alpha" and "alpha_ci_low" in table:  # analyze(bootstrap=B): each row's interval as a bar
        draw_alpha_intervals(ax, table, lw=2, alpha=0.5, label="bootstrap interval")
    if metric == "alpha":
        ax.axhspan(2.0, 6.0, color=ESD_COLOR, alpha=0.12, label="2 ≤ α ≤ 6")
        ax.legend()
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=f"{metric} by layer")
    return _done(fig, save)


def pd_na(value) -> bool:
    """True for a missing table entry (None, NaN or pandas' NA)."""
    import pandas as pd

    return bool(pd.isna(value))
