"""The optional columns of :func:`wwjax.analyze`: ``mp_fit=True`` and ``randomize=True`` (with correlation traps).

Called once after the rows' spectra and fits exist. Everything is batched like the core: MP fits of all rows of
similar ESD length in one vmapped call; the shuffled matrices of all leaves bucketed by shape, one eigen-solve per
bucket. Each step is a small program keyed on shapes, not one program for the whole model: leaves and buckets of
the same shape share a compilation (within a model and across models), and XLA's CPU runtime is never handed one
huge program of many independent parts (which could stall it). The columns go to ``LayerMetrics.extra``
(``details`` tables the 1-D ones):

* ``mp_fit``: ``num_spikes, sigma_mp, mp_softrank, W_scale, bulk_max, bulk_min``;
* ``randomize``: ``max_rand_eval, rand_distance, ww_softrank, ww_maxdist, rand_num_spikes, num_traps,
  rand_sigma_mp, rand_mp_softrank, rand_W_scale, rand_bulk_max, rand_bulk_min`` and, not tabled, ``rand_esd``
  (the pooled shuffled spectrum ``R1``, ascending);
* ``trap_elements=k``: ``num_trap_elements`` (elements large enough to make an eigenvalue escape the shuffled
  bulk on their own) and, not tabled, ``trap_index`` ``(rows, k, leaf.ndim)`` / ``trap_value`` ``(rows, k)``: where
  the k largest of them sit in the leaf (−1 / NaN where fewer exist).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np

from wwjax.core import _results
from wwjax.core._layout import MatrixView, as_matrices
from wwjax.core._programs import FAST_COMPILE, abstract, compile_ahead, program
from wwjax.diagnostics._mpfit import MarchenkoPasturFit, fit_marchenko_pastur_rows
from wwjax.diagnostics._randomize import (
    as_key, jensen_shannon_distance, leaf_seed, num_replicas, path_hash, permutations, permuted, trap_threshold,
)
from wwjax.core._spectra import spectra_of

MP_COLUMNS = ("num_spikes", "sigma_mp", "mp_softrank", "W_scale", "bulk_max", "bulk_min")


def check_options(opts) -> None:
    """Raises a TypeError/ValueError that says what to change in the diagnostics options."""
    for flag in ("mp_fit", "randomize", "fresh_r2"):
        if not isinstance(getattr(opts, flag), bool):
            raise TypeError(f"{flag} must be True or False, got {getattr(opts, flag)!r}")
    if opts.randomize and opts.key is None:
        raise ValueError("randomize=True shuffles the weights: pass key= (an int seed or a jax.random key), e.g. key=0")
    if opts.key is not None:
        as_key(opts.key)
    k = opts.trap_elements
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"trap_elements must be an int >= 0 (how many large elements to locate per row), got {k!r}")
    if k and not opts.randomize:
        raise ValueError("trap_elements needs randomize=True (the threshold comes from the shuffled bulk edge)")
    if opts.fresh_r2 and not opts.randomize:
        raise ValueError("fresh_r2 chooses how randomize=True draws R2: pass randomize=True too, or drop fresh_r2")


def _padded_size(n: int, minimum: int = 8) -> int:
    return max(minimum, 1 << (n - 1).bit_length())


def fit_rows_grouped(rows: list, shapes: list[tuple[int, int]]) -> list[MarchenkoPasturFit]:
    """MP fits of every row of every ``(r, n)`` array; rows of similar length share one vmapped call (one
    program per group: the padding, the fit and the split per array all happen inside it)."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i, evals in enumerate(rows):
        groups[_padded_size(evals.shape[-1])].append(i)
    out: list = [None] * len(rows)
    for n_pad, members in groups.items():
        counts = [rows[i].shape[0] for i in members]
        r_pad = _padded_size(sum(counts), minimum=1) - sum(counts)
        dtype = rows[members[0]].dtype
        # Shapes are static: the per-row constants are built on the host.
        Q = np.concatenate([np.full(c, shapes[i][0] / shapes[i][1]) for i, c in zip(members, counts)]
                           + [np.full(r_pad, 2.0)]).astype(dtype)
        M = np.concatenate([np.full(c, shapes[i][1]) for i, c in zip(members, counts)] + [np.full(r_pad, n_pad)])
        valid = np.concatenate([np.full(c, rows[i].shape[1]) for i, c in zip(members, counts)]
                               + [np.full(r_pad, n_pad)])
        fits = _fit_padded_rows(tuple(rows[i] for i in members), Q, M, valid, n_pad=n_pad, r_pad=r_pad)
        for i, fit in zip(members, fits):
            out[i] = fit
    return out


@program(static_argnames=("n_pad", "r_pad"), cpu_options=FAST_COMPILE)
def _fit_padded_rows(rows: tuple, Q, M, valid, *, n_pad: int, r_pad: int) -> tuple:  # noqa: N803
    """The rows of ``rows`` zero-padded in front to ``n_pad``, stacked with ``r_pad`` rows of ones, MP-fitted
    together, and the fits split back per array."""
    dtype = rows[0].dtype
    evals = jnp.concatenate([jnp.pad(r, ((0, 0), (n_pad - r.shape[1], 0))) for r in rows]
                            + [jnp.ones((r_pad, n_pad), dtype)])
    fits = fit_marchenko_pastur_rows(evals, Q, M, valid)
    out, offset = [], 0
    for r in rows:
        out.append(jax.tree.map(lambda v, o=offset, c=r.shape[0]: v[o : o + c], fits))
        offset += r.shape[0]
    return tuple(out)


def _mp_columns(fit: MarchenkoPasturFit, prefix: str) -> dict:
    names = {"num_spikes": "num_spikes"} if not prefix else {"num_spikes": "rand_num_spikes"}
    return {names.get(c, prefix + c): getattr(fit, c) for c in MP_COLUMNS}


@program(static_argnames=("size", "count"))
def _leaf_permutations(key, path_word, *, size: int, count: int):
    """A leaf's shuffle permutations; ``path_word`` (its :func:`path_hash`) is an argument, so that leaves of one
    shape share the compilation."""
    return permutations(leaf_seed(key, path_word), size, count)


@program(static_argnames=("view", "dtype"))
def _shuffle_leaf(value, perms, ok, *, view: MatrixView, dtype):
    """A leaf's ``(L, K, N, M)`` matrices shuffled by ``perms`` (``replicas·L·K`` of them), as
    ``(replicas·L·K, N, M)``.

    The shuffles of rows whose weights are not finite (``ok`` false, one flag per ESD row) are zeros: those rows
    are already marked failed, and the core found them, so no second pass over the weights looks for them.
    """
    mats = as_matrices(value.astype(dtype), view)
    L, K, n, m = mats.shape
    ok = jnp.repeat(ok, L * K // ok.shape[0])  # one flag per matrix (a pooled row covers K of them)
    out = permuted(mats.reshape(L * K, n, m), perms)
    return jnp.where(ok[None, :, None, None], out, 0.0).reshape(-1, n, m)


def _random_rows(evals, *, replicas: int, pool: bool, scale: float, L: int, K: int):  # noqa: N803
    """Shuffled spectra ``(shuffles, L·K, m)`` → ``R1`` and ``R2`` rows, pooled like the ESD rows.

    ``R1`` pools the first ``replicas`` shuffles; ``R2`` is the one after them if there is one (``fresh_r2``),
    else the first.
    """
    m = evals.shape[-1]
    evals = evals.reshape(-1, L, K, m) * scale
    r1, r2 = evals[:replicas], evals[replicas % evals.shape[0]]
    if pool:
        r1 = r1.transpose(1, 0, 2, 3).reshape(L, replicas * K * m)
        r2 = r2.reshape(L, K * m)
    else:
        r1 = r1.transpose(1, 2, 0, 3).reshape(L * K, replicas * m)
        r2 = r2.reshape(L * K, m)
    return jnp.sort(r1, axis=-1), jnp.sort(r2, axis=-1)


@program(static_argnames=("rows", "method"))
def _shuffled_rows(shuffles: tuple, *, rows: tuple, method: str) -> tuple:
    """``(R1, R2)`` of each of some leaves of one width ``M`` from their shuffled matrices ``shuffles[j]``: those of
    one ``(N, M)`` shape stacked, one eigen-solve for them all (:func:`wwjax.core._spectra.spectra_of`), then split
    per leaf and pooled by ``rows[j] = (replicas, pool, scale, L, K)`` (see :func:`_random_rows`). One program per
    width."""
    shapes = list(dict.fromkeys(s.shape[1:] for s in shuffles))
    members = [[j for j, s in enumerate(shuffles) if s.shape[1:] == shape] for shape in shapes]
    stacks = [jnp.concatenate([shuffles[j] for j in group]) if len(group) > 1 else shuffles[group[0]]
              for group in members]
    evals = [None] * len(shuffles)
    for group, spectra in zip(members, spectra_of(stacks, method=method)):
        offset = 0
        for j in group:
            count = shuffles[j].shape[0]
            evals[j] = spectra.evals[offset : offset + count]
            offset += count
    return tuple(_random_rows(ev, replicas=replicas, pool=pool, scale=scale, L=L, K=K)
                 for ev, (replicas, pool, scale, L, K) in zip(evals, rows))  # noqa: N806


def _random_spectra(leaves, values, ok, key, method: str, dtype, scales, pool: bool, fresh_r2: bool):
    """``(R1, R2)`` rows of every leaf: the shuffles of all leaves grouped by width, one eigen-solve per width."""
    shuffles, widths = [], defaultdict(list)
    for i, (leaf, value, row_ok) in enumerate(zip(leaves, values, ok)):
        replicas = num_replicas(leaf.shape.M) + int(fresh_r2)
        L, K, N, M = leaf.shape.num_layers, leaf.shape.num_slices, leaf.shape.N, leaf.shape.M  # noqa: N806
        perms = _leaf_permutations(key, path_hash(leaf.info.path), size=N * M, count=replicas * L * K)
        shuffles.append(_shuffle_leaf(value, perms, row_ok, view=leaf.view, dtype=dtype))
        widths[M if method == "gram" else (N, M)].append(i)  # the SVD's solves are per shape
    out = [None] * len(leaves)
    for members in widths.values():
        rows = tuple((num_replicas(leaves[i].shape.M), pool, float(scales[i]), leaves[i].shape.num_layers,
                      leaves[i].shape.num_slices) for i in members)
        for i, pair in zip(members, _shuffled_rows(tuple(shuffles[i] for i in members), rows=rows, method=method)):
            out[i] = pair
    return out


@program(static_argnames=("view", "shape", "k", "pool", "scale", "N", "M"))
def _trap_elements(value, bulk_max, *, view: MatrixView, shape: tuple, k: int, pool: bool, scale: float, N: int,
                   M: int):
    """Elements whose (scaled) square passes the one-element escape threshold: their count, and the k largest."""
    mats = as_matrices(value.astype(bulk_max.dtype), view)
    where = as_matrices(jnp.arange(int(np.prod(shape))).reshape(shape), view)
    L, K = mats.shape[:2]
    rows = L if pool else L * K
    mats, where = mats.reshape(rows, -1), where.reshape(rows, -1)
    threshold = trap_threshold(bulk_max, N, M)[:, None]
    large = jnp.where(jnp.isfinite(mats), mats * mats * scale, 0.0) > threshold
    k = min(k, mats.shape[1])
    magnitude, order = jax.lax.top_k(jnp.where(large, jnp.abs(mats), -1.0), k)
    found = magnitude >= 0
    index = jnp.stack(jnp.unravel_index(jnp.take_along_axis(where, order, axis=1), shape), axis=-1)
    return (
        jnp.sum(large, axis=1),
        jnp.where(found[..., None], index, -1),
        jnp.where(found, jnp.take_along_axis(mats, order, axis=1), jnp.nan),
    )


@program
def _masked(columns: dict, ok) -> dict:
    """NaN (floats) / −1 (ints) in rows whose weights were not finite."""
    def mask(v):
        fill = jnp.nan if jnp.issubdtype(v.dtype, jnp.floating) else -1
        return jnp.where(ok.reshape(ok.shape + (1,) * (v.ndim - 1)), v, fill)

    return {name: mask(v) for name, v in columns.items()}


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What the diagnostics need to know statically."""

    leaves: tuple
    scales: tuple[float, ...]
    method: str
    pool: bool
    mp_fit: bool
    randomize: bool
    trap_elements: int
    fresh_r2: bool


@program
def _rand_columns(esd, r1, r2) -> dict:
    """The columns that compare a leaf's ESD rows with its shuffled ones."""
    return dict(
        max_rand_eval=r1[:, -1],
        rand_distance=jax.vmap(jensen_shannon_distance)(esd, r2),
        ww_softrank=r2[:, -1] / esd[:, -1],
        ww_maxdist=esd[:, -1] - r2[:, -1],
    )


def _columns(values, esds, ok, key, *, plan: _Plan) -> list[dict]:
    """Every optional column of every leaf (under ``jax.jit`` too: then it is all one program)."""
    leaves = plan.leaves
    extras: list[dict] = [{} for _ in leaves]
    shapes = [(leaf.shape.N, leaf.shape.M) for leaf in leaves]
    if plan.mp_fit:
        for extra, fit in zip(extras, fit_rows_grouped(list(esds), shapes)):
            extra.update(_mp_columns(fit, ""))
    if plan.randomize:
        rand = _random_spectra(leaves, values, ok, key, plan.method, esds[0].dtype, plan.scales, plan.pool,
                               plan.fresh_r2)
        fits = fit_rows_grouped([r1 for r1, _ in rand], shapes)
        for i, (extra, esd, (r1, r2), fit) in enumerate(zip(extras, esds, rand, fits)):
            extra.update(_rand_columns(esd, r1, r2))
            extra.update(_mp_columns(fit, "rand_"))
            extra["num_traps"] = fit.num_spikes
            if plan.trap_elements:
                leaf = leaves[i]
                count, index, value = _trap_elements(
                    values[i], fit.bulk_max, view=leaf.view, shape=tuple(leaf.info.shape), k=plan.trap_elements,
                    pool=plan.pool, scale=plan.scales[i], N=leaf.shape.N, M=leaf.shape.M,
                )
                extra.update(num_trap_elements=count, trap_index=index, trap_value=value)
            extra["rand_esd"] = r1
    return [_masked(extra, row_ok) for extra, row_ok in zip(extras, ok)]


def add_diagnostics(leaves, values, metrics: list[dict], opts, *, scales, method: str) -> list[dict]:
    """Adds the ``mp_fit`` / ``randomize`` columns to each leaf's metrics (under the key ``extra``)."""
    if not (opts.mp_fit or opts.randomize):
        return metrics
    plan = _Plan(tuple(leaves), tuple(float(s) for s in scales), method, opts.pool, opts.mp_fit, opts.randomize,
                 opts.trap_elements, opts.fresh_r2)
    key = as_key(opts.key) if opts.randomize else None
    ok = [m["status_code"] != _results.STATUS_NON_FINITE for m in metrics]
    esds = tuple(m["esd"] for m in metrics)
    inputs = (tuple(values), esds, ok, key)
    # Eagerly, the programs are compiled side by side first (a randomized MiniLM compiles ~18 of them).
    stand_ins = abstract(inputs)
    signature = (plan, str(jax.tree.structure(stand_ins)), tuple(map(repr, jax.tree.leaves(stand_ins))))
    compile_ahead(lambda: _columns(*stand_ins, plan=plan), signature)
    extras = _columns(*inputs, plan=plan)
    return [dict(m, extra={**m.get("extra", {}), **extra}) for m, extra in zip(metrics, extras)]
