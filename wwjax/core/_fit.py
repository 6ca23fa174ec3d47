"""Stage 5: every row of every leaf fitted at once, grouped by padded ESD length.

**One compiled program per fit group** (:func:`fit_group`): every row whose ESD pads to the same power-of-two length,
pooled over kernel positions, zero-padded in front and fitted by one vmapped row fit. The row fit is a static,
hashable strategy (:class:`RowFit`; the plain power law unless a contribution provides another), followed by the
contributions' per-row columns (:class:`RowColumns`), and optionally preceded by an ESD transform.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from wwjax.core import _results
from wwjax.core._buckets import LeafPlan, _batch_spec, _replicated, _split_batch
from wwjax.core._metrics import norm_metrics
from wwjax.core._powerlaw import PowerLawFit, fit_power_law
from wwjax.core._programs import program

# Elements of the (rows × candidates × eigenvalues) KS reduction materialised at once (per device).
_KS_BLOCK_ELEMENTS = 1 << 23
# Extra (rows × n × n) fit work worth spending to save a fit program's compilation (see fit_groups).
_MERGE_ELEMENTS = 1 << 22


class RowFit(Protocol):
    """The fit of one padded row, run inside the vmapped, jitted row program: hashable and static (it is part of the
    compilation's key), so equal strategies share one program.

    Called as ``fit(evals (n,), num_valid, num_clipped, noise_floor, *, block)`` on one ascending ESD zero-padded in
    front; returns the :class:`~wwjax.core.PowerLawFit` the core columns come from and a dict of extra per-row
    scalars (``LayerMetrics.extra``).
    """

    def __call__(self, evals, num_valid, num_clipped: int, noise_floor, *, block: int) -> tuple[PowerLawFit, dict]:
        ...


class RowColumns(Protocol):
    """Extra per-row scalars computed in the row program after the fit: ``columns(evals, num_valid, fit) -> dict``.
    Hashable and static, like :class:`RowFit`."""

    def __call__(self, evals, num_valid, fit: PowerLawFit) -> dict:
        ...


@dataclasses.dataclass(frozen=True)
class PowerLawRowFit:
    """The default row fit: WeightWatcher's power law (:func:`wwjax.fit_power_law`), no extra columns.

    Example:
      >>> import jax.numpy as jnp
      >>> fit, extra = PowerLawRowFit()(jnp.linspace(0.1, 4.0, 64) ** 3, 64, 0, 1e-6, block=8)
      >>> bool(fit.ok), extra
      (True, {})
    """

    def __call__(self, evals, num_valid, num_clipped: int, noise_floor, *, block: int) -> tuple[PowerLawFit, dict]:
        return fit_power_law(evals, num_clipped, noise_floor, block=block), {}


POWER_LAW = PowerLawRowFit()
EsdTransform = Callable  # (evals (rows, n) ascending, rank_tolerance (rows,)) -> evals (rows, n) ascending


def _fit_rows(
    evals, num_valid, rank_tol, finite, *, num_clipped: int, tolerance: float, block: int, row_fit: RowFit,
    row_columns: tuple[RowColumns, ...],
) -> dict:
    """Row fit, extra columns and norm metrics of every row of ``evals (rows, n)`` (zero-padded in front), vmapped."""

    def one_row(ev, valid, tol, ok):
        fit, extra = row_fit(ev, valid, num_clipped, ev[-1] * tol, block=block)
        for columns in row_columns:
            extra = {**extra, **columns(ev, valid, fit)}
        nan = jnp.array(jnp.nan, ev.dtype)
        fitted = fit.ok & ok
        alpha = jnp.where(fitted, fit.alpha, nan)
        norms = norm_metrics(ev, alpha, rank_tolerance=tol, tolerance=tolerance, num_valid=valid)
        status = jnp.where(
            ~ok,
            _results.STATUS_NON_FINITE,
            jnp.where(fit.ok, _results.STATUS_SUCCESS, _results.STATUS_FIT_FAILED),
        )
        out = dict(norms._asdict())
        out.update(
            alpha=alpha,
            D=jnp.where(fitted, fit.D, nan),
            sigma=jnp.where(fitted, fit.sigma, nan),
            xmin=jnp.where(fitted, fit.xmin, nan),
            xmax=jnp.where(fitted, fit.xmax, nan),
            num_pl_spikes=jnp.where(fitted, fit.num_pl_spikes, -1),
        )
        # A non-finite matrix was solved as zeros: none of its numbers mean anything.
        out = {k: jnp.where(ok, v, _missing(v)) for k, v in out.items()}
        out["extra"] = {k: jnp.where(ok, v, _missing(v)) for k, v in extra.items()}
        out["status_code"] = status
        return out

    return jax.vmap(one_row)(evals, num_valid, rank_tol, finite)

def _missing(value):
    return jnp.nan if jnp.issubdtype(value.dtype, jnp.floating) else -1


def padded_size(n: int, minimum: int = 8) -> int:
    """Rounds up to a power of two so that few ESD lengths (and few compilations) occur."""
    return max(minimum, 1 << (n - 1).bit_length())


def _mark_failed(metrics: dict, code: int) -> dict:
    fit_columns = ("alpha", "alpha_weighted", "D", "xmin", "xmax", "sigma", "log_alpha_norm")
    metrics = {k: (jnp.full_like(v, jnp.nan) if k in fit_columns else v) for k, v in metrics.items()}
    metrics["num_pl_spikes"] = jnp.full_like(metrics["num_pl_spikes"], -1)
    metrics["status_code"] = jnp.full_like(metrics["status_code"], code)
    return metrics


class RowIndex(NamedTuple):
    """Where each row of a fit group comes from, as indices into the group's flattened spectra.

    ``evals[r]`` indexes the concatenated, flattened eigenvalues of the group's sources (bucket outputs) with one
    extra slot at the end for padding; ``matrices[r]`` indexes their matrices (again with a padding slot last).
    Indices are data, not static arguments: the program depends only on the group's shapes, so groups and models
    that share them share one compilation.
    """

    evals: np.ndarray  # (rows, n_pad) int32, padding in front
    matrices: np.ndarray  # (rows, max matrices per row) int32
    scale: np.ndarray  # (rows,) conv2d_norm's factor
    num_valid: np.ndarray  # (rows,) the ESD's length
    rank_tol: np.ndarray  # (rows,)


def row_index(
    leaves: Sequence[LeafPlan], sources: Sequence[tuple[int, int]], locations: Sequence[Sequence[tuple[int, int, int]]],
    n_pad: int, total: int,
) -> RowIndex:
    """The gather indices of a group's rows (host-side planning, numpy).

    ``sources[s] = (count, M)`` are the shapes of the group's spectra; ``locations[j]`` lists, for leaf ``leaves[j]``
    in matrix order, ``(source, first matrix in it, number of matrices)``.
    """
    eval_base = np.cumsum([0] + [c * m for c, m in sources])
    mat_base = np.cumsum([0] + [c for c, _ in sources])
    pad_eval, pad_mat = int(eval_base[-1]), int(mat_base[-1])
    per_row = max(leaf.shape.num_slices if leaf.pool else 1 for leaf in leaves)
    evals = np.full((total, n_pad), pad_eval, np.int32)
    matrices = np.full((total, per_row), pad_mat, np.int32)
    scale = np.ones(total)
    num_valid = np.full(total, n_pad, np.int32)
    rank_tol = np.ones(total)
    row = 0
    for leaf, where in zip(leaves, locations):
        m = leaf.shape.M
        # every matrix of the leaf: its index among all sources' matrices, and its first eigenvalue's flat index
        mats = np.concatenate([mat_base[s] + o + np.arange(c) for s, o, c in where])
        firsts = np.concatenate([eval_base[s] + (o + np.arange(c)) * sources[s][1] for s, o, c in where])
        per = leaf.shape.num_slices if leaf.pool else 1
        rows = leaf.num_rows
        flat = (firsts[:, None] + np.arange(m)).reshape(rows, per * m)
        evals[row : row + rows, n_pad - per * m :] = flat
        matrices[row : row + rows, :per] = mats.reshape(rows, per)
        scale[row : row + rows] = leaf.scale
        num_valid[row : row + rows] = leaf.row_length
        rank_tol[row : row + rows] = leaf.rank_tol
        row += rows
    return RowIndex(evals, matrices, scale, num_valid, rank_tol)


@program(static_argnames=("num_clipped", "tolerance", "dtype", "mesh", "ks_elements", "row_fit", "row_columns",
                          "esd_transform"))
def fit_group(
    sources: tuple, index: RowIndex, *, num_clipped: int, tolerance: float, dtype, mesh=None,
    ks_elements: int = _KS_BLOCK_ELEMENTS, row_fit: RowFit = POWER_LAW,
    row_columns: tuple[RowColumns, ...] = (), esd_transform: EsdTransform | None = None,
) -> dict:
    """Fits every row of a group of leaves whose ESDs pad to the same length, in one vmapped call.

    ``sources`` are the spectra ``(evals (count, M), rank (count,), finite (count,))`` the group's rows are made of
    and ``index`` (:func:`row_index`) says which of their eigenvalues and matrices form each row. A pooled row (the
    kernel positions of one conv) is gathered and sorted like any other: one gather and one sort serve every leaf,
    where per-leaf slicing would make the program (and its compilation time) grow with the number of leaves.
    Returns the per-row metrics, with ``esd`` (rows, n_pad; zero-padded in front) and ``rank_loss``.
    """
    flat = jnp.concatenate([ev.astype(dtype).reshape(-1) for ev, _, _ in sources] + [jnp.full(1, -jnp.inf, dtype)])
    loss = jnp.concatenate([(ev.shape[1] - rank).astype(jnp.int32) for ev, rank, _ in sources]
                           + [jnp.zeros(1, jnp.int32)])
    finite = jnp.concatenate([ok for _, _, ok in sources] + [jnp.ones(1, bool)])
    # Padding gathers -inf, which the sort keeps in front; it then becomes the zeros every fit expects there.
    evals = jnp.sort(flat[index.evals] * index.scale.astype(dtype)[:, None], axis=-1)
    evals = jnp.where(jnp.isneginf(evals), 0.0, evals)
    tol = index.rank_tol.astype(dtype)
    if esd_transform is not None:  # a contribution's transform of the ESD before the fit (inverse: 1/λ)
        evals = esd_transform(evals, tol)
    rank_loss = loss[index.matrices].sum(-1)
    finite = finite[index.matrices].all(-1)
    num_valid = index.num_valid
    total, n_pad = evals.shape
    per_device = total // (mesh.size if mesh is not None else 1)
    block = max(1, min(n_pad, ks_elements // (per_device * n_pad)))
    fit = lambda *a: _fit_rows(*a, num_clipped=num_clipped, tolerance=tolerance, block=block, row_fit=row_fit,  # noqa: E731
                             row_columns=row_columns)
    if mesh is not None:
        # check_vma=False: the row fit holds no collective, and the loops of its fits (TPL's Nelder-Mead) start from
        # constants that the per-device rows make device-varying, which the check would reject.
        fit = jax.shard_map(fit, mesh=mesh, in_specs=_batch_spec(mesh), out_specs=_batch_spec(mesh), check_vma=False)
        evals, num_valid, tol, finite = _split_batch((evals, num_valid, tol, finite), mesh)
    metrics = fit(evals, num_valid, tol, finite)
    metrics["esd"] = evals
    return _replicated(metrics, mesh) | {"rank_loss": rank_loss}


def _split_group(metrics: dict, leaves: Sequence[LeafPlan], num_clipped: int) -> list[dict]:
    """Per-leaf metrics from a group's. Outside ``jit`` the columns are split on the host (one transfer each, no
    compilation); under ``jit`` the slices are part of the traced program."""
    traced = any(isinstance(v, jax.core.Tracer) for v in jax.tree.leaves(metrics))
    if not traced:
        metrics = jax.tree.map(np.asarray, metrics)
    put = (lambda v: v) if traced else jax.device_put
    out, offset = [], 0
    for leaf in leaves:
        count = leaf.num_rows
        mine = jax.tree.map(lambda v, o=offset: put(v[o : o + count]), metrics)
        mine["esd"] = put(metrics["esd"][offset : offset + count, metrics["esd"].shape[1] - leaf.row_length :])
        if num_clipped > leaf.row_length / 2:  # WeightWatcher still fits here; we refuse and say why
            mine = _mark_failed(mine, _results.STATUS_XMAX_TOO_LARGE)
        out.append(mine)
        offset += count
    return out


def fit_groups(leaves: Sequence[LeafPlan], merge_elements: int = _MERGE_ELEMENTS) -> list[list[int]]:
    """The leaves fitted together: rows whose ESDs pad to the same power-of-two length, and then every shorter group
    whose rows, padded to the longest length, add at most ``merge_elements`` to the fit's ``rows × n × n`` work.

    Each fit group is one compiled program (about a second of compilation on CPU); fitting a few short rows at a
    longer length costs milliseconds. The fit masks the padding, so a row's metrics do not depend on its group.

    Example:
      >>> from wwjax.core._layout import MatrixShape, MatrixView
      >>> def leaf(m, slices=1):
      ...     return LeafPlan(MatrixView((0,), (1,)), MatrixShape(1, slices, 4 * m, m))
      >>> fit_groups([leaf(32), leaf(10), leaf(128)])  # a 4-layer CNN's three ESD lengths: one program
      [[2, 0, 1]]
      >>> fit_groups([leaf(16), leaf(4096)], merge_elements=1 << 20)  # a long ESD: each keeps its own
      [[1], [0]]
    """
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, leaf in enumerate(leaves):
        by_length[padded_size(leaf.row_length)].append(i)
    lengths = sorted(by_length, reverse=True)
    groups = [list(by_length[n]) for n in lengths]
    if lengths:
        longest, budget = lengths[0], merge_elements
        for n, members in zip(lengths[1:], groups[1:]):
            extra = sum(leaves[i].num_rows for i in members) * (longest * longest - n * n)
            if extra <= budget:
                budget -= extra
                groups[0] += members
                members.clear()
    return [g for g in groups if g]


__all__ = ["POWER_LAW", "PowerLawRowFit", "RowColumns", "RowFit", "RowIndex", "fit_group", "fit_groups", "padded_size", "row_index"]
