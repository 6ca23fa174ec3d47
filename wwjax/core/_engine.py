"""Stages 3–5 of an analysis, orchestrated: leaves → shape buckets → batched eigen-solves → every row fitted at once.

Two kinds of compiled program do all the work, so a model costs a handful of compilations however many leaves it has:
one per width of its matrices (:func:`wwjax.core._buckets.solve_buckets`, the shape buckets of that width) and one
per fit group (:func:`wwjax.core._fit.fit_group`). A leaf whose plan carries a ``solver`` (a contribution's own solve, e.g. the
conv operator spectrum) is solved by it instead of a bucket, and its spectra join the fit groups like any other.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh

from wwjax.core._buckets import (
    Bucket, LeafPlan, Piece, bytes_per_matrix, merge_buckets, plan_buckets, solve_buckets,
)
from wwjax.core._fit import (
    _KS_BLOCK_ELEMENTS, POWER_LAW, EsdTransform, RowColumns, RowFit, RowIndex, _split_group, fit_group, fit_groups,
    padded_size, row_index,
)
from wwjax.core._layout import MatrixShape
from wwjax.core._programs import abstract, compile_ahead
from wwjax.core._spectra import rank_tolerance


def compute(
    values: Sequence, leaves: Sequence[LeafPlan], *, method: str, dtype, num_clipped: int, tolerance: float,
    max_bucket_bytes: int | None = None, mesh: Mesh | None = None, row_fit: RowFit = POWER_LAW,
    row_columns: tuple[RowColumns, ...] = (), esd_transform: EsdTransform | None = None,
) -> list[dict]:
    """Stages 2–5 for all analysed leaves: per-row metrics of each leaf (see :func:`fit_group`)."""
    itemsize = jnp.dtype(dtype).itemsize
    # The KS reduction of the fits materialises (rows × block × n) at once: a quarter of the budget at most.
    ks_elements = _KS_BLOCK_ELEMENTS if max_bucket_bytes is None else max(1, min(
        _KS_BLOCK_ELEMENTS, max_bucket_bytes // (4 * itemsize)))
    if mesh is not None:
        # Auto axes: the partitioner places the reshuffles between a weight's own sharding and the batch layout.
        mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
    buckets = plan_buckets(leaves, method, itemsize, max_bucket_bytes)
    merged = merge_buckets(buckets, method, itemsize, max_bucket_bytes, mesh)
    solve_options = [dict(views=tuple(tuple(leaves[p.leaf].view for p in buckets[b].pieces) for b in group),
                          buckets=tuple(buckets[b] for b in group), method=method, dtype=dtype, mesh=mesh,
                          **_transforms(leaves, [buckets[b] for b in group])) for group in merged]
    # The sources the fit groups read, in bucket order: the k-th solve returns the buckets of merged[k].
    order = [b for group in merged for b in group]
    pieces: list[list] = [[] for _ in leaves]  # per leaf: (first matrix, source, offset in source, count)
    # A matrix whose Gram is accumulated blockwise is not re-solved by the SVD: its rank counts at the Gram's floor.
    blockwise = {p.leaf for b in buckets if b.block_rows for p in b.pieces}
    leaves = [dataclasses.replace(leaf, rank_tol=rank_tolerance(method, leaf.shape.N, leaf.shape.M, dtype,
                                                                refined=False)) if i in blockwise else leaf
              for i, leaf in enumerate(leaves)]
    for b, bucket in enumerate(buckets):
        offset = 0
        for p in bucket.pieces:
            pieces[p.leaf].append((p.start, b, offset, p.stop - p.start))
            offset += p.stop - p.start
    fit_options = dict(num_clipped=num_clipped, tolerance=tolerance, dtype=dtype, mesh=mesh, ks_elements=ks_elements,
                       row_fit=row_fit, row_columns=row_columns, esd_transform=esd_transform)
    groups = fit_groups(leaves)

    def run(values) -> list:
        """Solves and fits: the metrics of each fit group (on ``jax.ShapeDtypeStruct`` stand-ins of ``values``
        inside :func:`compile_ahead`, where each program call compiles and answers with its outputs' shapes)."""
        calls = [((tuple(tuple(values[p.leaf] for p in buckets[b].pieces) for b in group),), kwargs)
                 for group, kwargs in zip(merged, solve_options)]
        sources = _solve(calls, order, len(buckets))
        where = [list(p) for p in pieces]
        for i, leaf in enumerate(leaves):  # a contribution's own solve (conv2d_fft: the operator's frequencies)
            if leaf.solver is not None:
                evals, rank, finite = leaf.solver(values[i], leaf.view, method, dtype)
                sources.append((evals, rank, finite.reshape(-1)))
                where[i].append((0, len(sources) - 1, 0, leaf.num_matrices))
        fitted = []
        for members in groups:
            used, index = _group_plan(members, leaves, where, sources, mesh)
            fitted.append(fit_group(tuple(sources[s] for s in used), index, **fit_options))
        return fitted

    if _compile_ahead_worthwhile(values, leaves, mesh):
        # What the programs depend on: a second analysis of the same shapes goes straight to the calls.
        signature = ("engine", tuple((tuple(v.shape), str(v.dtype)) for v in values), tuple(leaves),
                     tuple(map(tuple, groups)), method, str(jnp.dtype(dtype)), num_clipped, tolerance, ks_elements,
                     row_fit, row_columns, esd_transform, max_bucket_bytes)
        stand_ins = abstract(list(values))
        compile_ahead(lambda: run(stand_ins), signature)

    out: list = [None] * len(leaves)
    for members, metrics in zip(groups, run(values)):
        for i, m in zip(members, _split_group(metrics, [leaves[i] for i in members], num_clipped)):
            out[i] = m
    return out


def _solve(calls, order, count: int) -> list:
    """Every bucket's ``(evals, rank, finite)``, in bucket order (``calls[k]`` solves the buckets ``order`` lists
    k-th)."""
    solved = [out for args, kwargs in calls for out in solve_buckets(*args, **kwargs)]
    sources: list = [None] * count
    for b, out in zip(order, solved):
        sources[b] = out
    return sources


def _transforms(leaves: Sequence[LeafPlan], buckets: Sequence[Bucket]) -> dict:
    """The ``transforms`` argument of a solve, absent when no leaf of its buckets has one (the default analysis
    calls ``solve_buckets`` exactly as before, so it compiles the same programs)."""
    transforms = tuple(tuple(leaves[p.leaf].transform for p in bucket.pieces) for bucket in buckets)
    return {} if all(t is None for ts in transforms for t in ts) else {"transforms": transforms}


def _compile_ahead_worthwhile(values, leaves, mesh) -> bool:
    """Whether to compile every program of an eager analysis at once, before running any: with more than one
    program, on a machine with more than one core, outside a trace and a mesh (whose programs depend on shardings)."""
    if mesh is not None or (os.cpu_count() or 1) < 2 or any(leaf.solver is not None for leaf in leaves):
        return False
    return not any(isinstance(v, jax.core.Tracer) for v in values)


def _group_plan(members, leaves, pieces, sources, mesh) -> tuple[list[int], RowIndex]:
    """The sources a fit group reads and its :class:`RowIndex`."""
    used = sorted({s for i in members for _, s, _, _ in pieces[i]})
    local = {s: k for k, s in enumerate(used)}
    group_leaves = [leaves[i] for i in members]
    total = padded_size(sum(leaf.num_rows for leaf in group_leaves), minimum=1)
    if mesh is not None:
        total = -(-total // mesh.size) * mesh.size
    locations = [[(local[s], o, c) for _, s, o, c in sorted(pieces[i])] for i in members]
    n_pad = padded_size(max(leaf.row_length for leaf in group_leaves))
    return used, row_index(group_leaves, [tuple(sources[s][0].shape) for s in used], locations, n_pad, total)


__all__ = ["Bucket", "LeafPlan", "MatrixShape", "Piece", "RowIndex", "bytes_per_matrix", "compute", "fit_group",
           "fit_groups", "merge_buckets", "padded_size", "plan_buckets", "row_index", "solve_buckets"]
