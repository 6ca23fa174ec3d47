"""Tables for people: :func:`details` (one row per matrix and per skipped leaf) and :func:`summary` (the means)."""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from wwjax.core import _results
from wwjax.core._contributions import contributions

if TYPE_CHECKING:  # pandas is imported by details() itself: `import wwjax` and summary() do without it
    import pandas as pd

OVER_TRAINED_THRESH = 2.0
UNDER_TRAINED_THRESH = 6.0
SUMMARY_METRICS = ("log_norm", "alpha", "alpha_weighted", "log_alpha_norm", "log_spectral_norm", "stable_rank")

COLUMNS = (
    "path",
    "alpha",
    "alpha_weighted",
    "D",
    "xmin",
    "xmax",
    "sigma",
    "num_pl_spikes",
    "lambda_max",
    "spectral_norm",
    "log_spectral_norm",
    "norm",
    "log_norm",
    "log_alpha_norm",
    "stable_rank",
    "matrix_rank",
    "entropy",
    "rank_loss",
    "weak_rank_loss",
    "sv_max",
    "sv_min",
    "num_evals",
    "N",
    "M",
    "Q",
    "rf",
    "layer_type",
    "status",
    "warning",
    "has_esd",
    "reason",
)
# Integer columns use pandas' nullable Int64, so that skipped rows show <NA> rather than turning them into floats.
_INT_COLUMNS = ("layer_index", "slice_id", "num_pl_spikes", "matrix_rank", "rank_loss", "weak_rank_loss",
                "num_evals", "N", "M", "rf")


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _warning(alpha: float) -> str:
    if not np.isfinite(alpha):
        return ""
    if alpha < OVER_TRAINED_THRESH:
        return "over-trained"
    if alpha > UNDER_TRAINED_THRESH:
        return "under-trained"
    return ""


# Float32 resolves no singular value below about eps32·σmax, WeightWatcher's float64 rank counts every one above
# σmax·N·eps64: in between, an eigenvalue counted as zero may be a genuine one (docs/engine.md).
RANK_UNDECIDED = ("float32 cannot resolve the small singular values: matrix_rank, rank_loss and entropy may differ "
                  "from float64 (enable jax_enable_x64)")


def _rank_warning(row: dict, dtype) -> str:
    """Says when the rank columns rest on eigenvalues the compute precision cannot tell from zero."""
    lost = row["matrix_rank"] < row["num_evals"] or row["rank_loss"] > 0
    return RANK_UNDECIDED if lost and np.dtype(dtype) == np.float32 else ""


def _join_warnings(*messages: str) -> str:
    return "; ".join(m for m in messages if m)


def _analysed_rows(node: _results.LayerMetrics) -> list[dict]:
    arrays = {name: np.asarray(getattr(node, name)) for name in _results.METRIC_FIELDS if name != "esd"}
    extra = {name: np.asarray(v) for name, v in node.extra.items() if np.ndim(v) == 1}
    rows = []
    for r in range(len(node.layer_index)):
        row = {name: values[r].item() for name, values in arrays.items()}
        row.update({name: values[r].item() for name, values in extra.items()})
        code = row.pop("status_code")
        row.update(
            path=node.path,
            layer_index=node.layer_index[r],
            slice_id=node.slice_id[r],
            spectral_norm=row["lambda_max"],
            num_evals=node.num_evals,
            N=node.N,
            M=node.M,
            Q=node.N / node.M,
            rf=node.rf,
            layer_type=node.layer_type,
            status="success" if code == _results.STATUS_SUCCESS else "failed",
            has_esd=True,
            reason=_results.STATUS_REASONS.get(code, f"status {code}"),
        )
        rank_warning = _rank_warning(row, node.esd.dtype) if code != _results.STATUS_NON_FINITE else ""
        row["warning"] = _join_warnings(_warning(row["alpha"]), rank_warning, node.layout_warning)
        rows.append(row)
    return rows


def _skipped_row(node: _results.SkippedLeaf) -> dict:
    return dict(
        path=node.path,
        layer_type=node.layer_type or "",
        status="skipped",
        warning=node.warning,
        has_esd=False,
        reason=node.reason,
    )


def details(result) -> pd.DataFrame:
    """The per-layer table: one row per analysed matrix, one per leaf that was not analysed (``status='skipped'``).

    Columns are WeightWatcher's, with its names and meanings, after ``path`` (the key path joined with ``/``);
    ``layer_index`` appears for stacked layers and ``slice_id`` with ``pool=False``; ``reason`` says why a row
    failed or was skipped.

    Example:
      >>> import numpy as np, wwjax
      >>> rng = np.random.default_rng(0)
      >>> df = wwjax.details(wwjax.analyze({"w": {"kernel": rng.normal(size=(64, 32))}, "b": np.zeros(3)}))
      >>> df[["path", "status", "N", "M"]].to_string(index=False)
      '    path  status    N    M\\n       b skipped <NA> <NA>\\nw/kernel success   64   32'
    """
    import pandas as pd

    records = []
    for node in _results.iter_nodes(result):
        if isinstance(node, _results.LayerMetrics):
            records.extend(_analysed_rows(node))
        else:
            records.append(_skipped_row(node))
    records.sort(key=lambda r: (_natural_key(r["path"]), r.get("layer_index") or 0, r.get("slice_id") or 0))
    columns = list(COLUMNS)
    if any(r.get("layer_index") is not None for r in records):
        columns.insert(1, "layer_index")
    if any(r.get("slice_id") is not None for r in records):
        columns.insert(1 + ("layer_index" in columns), "slice_id")
    # Optional columns (LayerMetrics.extra) follow the default ones, in the order they first appear.
    int_columns = list(_INT_COLUMNS)
    for node in _results.iter_nodes(result):
        if isinstance(node, _results.LayerMetrics):
            for k, v in node.extra.items():
                if np.ndim(v) == 1 and k not in columns:
                    columns.append(k)
                    if jnp.issubdtype(v.dtype, jnp.integer):
                        int_columns.append(k)
    frame = pd.DataFrame.from_records(records, columns=columns)
    for name in int_columns:
        if name in frame:
            frame[name] = frame[name].astype("Int64")
    return frame


def summary(result) -> dict:
    """WeightWatcher's ``get_summary``: the mean of each summary metric over the analysed rows.

    Failed rows (NaN α) are left out of the α-based means rather than averaged in as −1 as WeightWatcher does.
    Works inside ``jax.jit`` too (then the values are jax scalars). Optional analyses add their entries (with
    ``analyze(..., bootstrap=B)``: ``alpha_sem``, the standard error of the mean α, ``√(Σ alpha_std²)/k`` over the
    ``k`` rows with a finite α).

    Example:
      >>> import numpy as np, wwjax
      >>> rng = np.random.default_rng(0)
      >>> s = wwjax.summary(wwjax.analyze({"kernel": rng.standard_t(3, size=(300, 100))}))
      >>> sorted(s)
      ['alpha', 'alpha_weighted', 'log_alpha_norm', 'log_norm', 'log_spectral_norm', 'stable_rank']
    """
    nodes = [n for n in _results.iter_nodes(result) if isinstance(n, _results.LayerMetrics)]
    traced = any(isinstance(getattr(n, name), jax.core.Tracer) for n in nodes for name in SUMMARY_METRICS)
    # Eagerly the means are taken on the host: three tiny XLA programs (ravel, concatenate, nanmean) would cost
    # more to compile than the whole table takes to average.
    xp = jnp if traced else np
    means = {}
    with warnings.catch_warnings():  # numpy warns where every row failed (an all-NaN mean); jnp does not
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in SUMMARY_METRICS:
            values = [xp.ravel(xp.asarray(getattr(n, name))) for n in nodes]
            means[name] = xp.nanmean(xp.concatenate(values)) if values else xp.asarray(xp.nan)
    for contribution in contributions():  # entries of the contributions' own columns (alpha_sem …)
        if contribution.summary is not None:
            means.update(contribution.summary(nodes) or {})
    if traced:
        return means
    return {k: float(v) for k, v in means.items()}
