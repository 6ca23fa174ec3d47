"""SVD smoothing and sharpening of weights: pure functions that return new params (WeightWatcher's ``SVDSmoothing`` /
``SVDSharpness`` modify a model in place).

Every analysed matrix is rebuilt from its SVD with some singular values zeroed. ``k > 0`` keeps the ``k`` largest
(a rank-``k`` approximation: *smoothing*); ``k < 0`` removes the ``|k|`` largest (*sharpening*). The rank comes
from an analysis of the same params (:func:`smoothing_ranks`):

* ``svd``: ``k = int(percent·M·rf)`` (``percent < 0`` removes that share instead);
* ``detX``: the detX tail size (``LayerMetrics.extra['detX_num']``), WeightWatcher's default;
* ``alpha_min`` (alias ``pl_spikes``): the power-law tail size ``num_pl_spikes``;
* ``rmt`` (alias ``mp_spikes``): the Marchenko–Pastur spike count ``LayerMetrics.extra['num_spikes']`` of an
  analysis with ``mp_fit=True``.

A convolution's rank ``k`` is shared among its ``rf`` kernel positions: each keeps (or loses) ``⌈|k|/rf⌉``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from wwjax.core import _results
from wwjax.core._layout import MatrixView, as_matrices, matrix_shape
from wwjax.core._tree import _is_box, flatten_params

METHODS = {"svd": "svd", "detX": "detX", "alpha_min": "alpha_min", "pl_spikes": "alpha_min", "rmt": "rmt",
           "mp_spikes": "rmt"}
_EXTRA_NEEDED = {"detX": "detX_num", "rmt": "num_spikes"}
_TRAP_COLUMNS = ("num_traps", "rand_num_spikes")


def smoothing_ranks(result, method: str = "detX", percent: float = 0.8) -> dict[str, np.ndarray]:
    """Per analysed leaf path, the signed rank ``k`` of each row (layer) for ``method`` (see the module doc).

    Args:
      result: ``wwjax.analyze(params, ...)`` with ``pool=True`` (with ``detX=True`` for ``detX``, with
        ``mp_fit=True`` for ``rmt``).
      method: ``svd``, ``detX``, ``alpha_min``/``pl_spikes`` or ``rmt``/``mp_spikes``.
      percent: the share of ``M·rf`` kept by ``svd`` (negative: removed).

    Example:
      >>> import numpy as np, wwjax
      >>> w = np.random.default_rng(0).normal(size=(60, 20))
      >>> wwjax.smoothing_ranks(wwjax.analyze({"w": w}), method="svd", percent=0.5)
      {'w': array([10])}
    """
    kind = _method(method)
    ranks = {}
    for node in _results.iter_nodes(result):
        if not isinstance(node, _results.LayerMetrics):
            continue
        if any(s is not None for s in node.slice_id):
            raise ValueError(f"{node.path}: smoothing needs an analysis with pool=True (one row per layer)")
        if kind == "svd":
            k = np.full(len(node.layer_index), int(percent * node.M * node.rf))
        elif kind == "alpha_min":
            k = np.asarray(node.num_pl_spikes)
        else:
            column = _EXTRA_NEEDED[kind]
            if column not in node.extra:
                how = "detX=True" if kind == "detX" else "mp_fit=True"
                raise ValueError(f"method={method!r} reads {column!r}: pass result=wwjax.analyze(params, {how})")
            k = np.asarray(node.extra[column])
        ranks[node.path] = np.where(np.asarray(node.status_code) == _results.STATUS_SUCCESS, k, 0).astype(int)
    return ranks


def _method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method]


def _default_result(params, kind: str, layers):
    from wwjax.core._analyze import analyze
    from wwjax.core._contributions import option_defaults

    options = dict(layers=layers, conv2d_norm=False)  # WeightWatcher chooses the rank on the unscaled ESD
    if kind == "detX":
        options["detX"] = True
    if kind == "rmt":
        if "mp_fit" not in option_defaults():
            raise ValueError("method='rmt' needs the MP fit: pass result=wwjax.analyze(params, mp_fit=True)")
        options["mp_fit"] = True
    return analyze(params, **options)


def from_matrices(stack, view: MatrixView, shape) -> jax.Array:
    """The inverse of :func:`wwjax.core._layout.as_matrices`: ``(layers, slices, N, M)`` back to the leaf's layout.

    Example:
      >>> import jax.numpy as jnp
      >>> leaf = jnp.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
      >>> view = MatrixView((2,), (3,), slice_axes=(0, 1), layer_type="conv2d")
      >>> bool((from_matrices(as_matrices(leaf, view), view, leaf.shape) == leaf).all())
      True
    """
    ms = matrix_shape(shape, view)
    if ms.rows < ms.cols:
        stack = stack.swapaxes(-1, -2)
    order = view.layer_axes + view.slice_axes + view.row_axes + view.col_axes
    ordered = stack.reshape(tuple(shape[a] for a in order))
    return ordered.transpose(np.argsort(order))


@functools.partial(jax.jit, static_argnames=("view", "rf"))
def _smooth_leaf(value, ranks, *, view: MatrixView, rf: int):
    """Zeroes the chosen singular values of every matrix of one leaf (``ranks``: one signed k per layer)."""
    dtype = value.dtype
    mats = as_matrices(value.astype(jnp.promote_types(dtype, jnp.float32)), view)
    u, s, vh = jnp.linalg.svd(mats, full_matrices=False)
    per_slice = jnp.sign(ranks) * ((jnp.abs(ranks) + rf - 1) // rf)  # ⌈|k|/rf⌉ per kernel position, signed
    index = jnp.arange(s.shape[-1])
    k = per_slice[:, None, None]
    keep = jnp.where(k > 0, index < k, jnp.where(k < 0, index >= -k, True))
    smoothed = jnp.einsum("lknm,lkm,lkmj->lknj", u, jnp.where(keep, s, 0.0), vh,
                          precision=jax.lax.Precision.HIGHEST)
    return from_matrices(smoothed, view, value.shape).astype(dtype)


def _replace_leaves(params, new_values: dict[str, jax.Array]):
    leaves = flatten_params(params)
    flat, treedef = jax.tree_util.tree_flatten(params, is_leaf=_is_box)
    out = []
    for (info, _, _), node in zip(leaves, flat):
        if info.path not in new_values:
            out.append(node)
            continue
        new = new_values[info.path]
        if _is_box(node):
            from flax.core import meta

            node = node.replace_boxed(new) if isinstance(node, meta.AxisMetadata) else node.replace(value=new)
            out.append(node)
        else:
            out.append(new if isinstance(node, jax.Array) else np.asarray(new))
    return jax.tree_util.tree_unflatten(treedef, out)


def apply_ranks(params, result, ranks: dict[str, np.ndarray]):
    """New params with each analysed leaf's matrices rebuilt at the signed ranks ``ranks[path]`` (per layer)."""
    nodes = {n.path: n for n in _results.iter_nodes(result) if isinstance(n, _results.LayerMetrics)}
    values = {info.path: value for info, value, _ in flatten_params(params)}
    new_values = {}
    for path, k in ranks.items():
        node = nodes[path]
        if not np.any(k):
            continue
        view = _view_of(params, path)
        new_values[path] = _smooth_leaf(jnp.asarray(values[path]), jnp.asarray(k), view=view, rf=node.rf)
    return _replace_leaves(params, new_values)


def _view_of(params, path: str, views=None, stacked=()) -> MatrixView:
    from wwjax.core._reading import classify_leaf

    for info, _, _ in flatten_params(params):
        if info.path == path:
            view = classify_leaf(info, views, stacked)
            assert isinstance(view, MatrixView), view
            return view
    raise KeyError(path)


def svd_smoothing(params, method: str = "detX", percent: float = 0.8, *, result=None, layers=()):
    """WeightWatcher's ``SVDSmoothing``: each analysed matrix replaced by a low-rank approximation (exact SVD).

    Args:
      params: a parameter pytree (as for :func:`wwjax.analyze`).
      method: how the rank is chosen: ``detX`` (default), ``svd`` (``percent``), ``alpha_min``/``pl_spikes``,
        ``rmt``/``mp_spikes`` (see :func:`smoothing_ranks`).
      percent: for ``svd``: the share of singular values kept (negative: the share of the largest removed).
      result: the analysis to read ranks from; by default ``wwjax.analyze(params, conv2d_norm=False, ...)`` with
        what the method needs.
      layers: which leaves to smooth (``layers=`` of :func:`wwjax.analyze`).

    Returns:
      New params of the same structure, shapes and dtypes; leaves that are not analysed are returned as they are.

    Example:
      >>> import numpy as np, wwjax
      >>> w = np.random.default_rng(0).normal(size=(60, 20)).astype("float32")
      >>> smooth = wwjax.svd_smoothing({"w": w}, method="svd", percent=0.25)
      >>> int(np.linalg.matrix_rank(smooth["w"])), smooth["w"].dtype
      (5, dtype('float32'))
    """
    kind = _method(method)
    result = _default_result(params, kind, layers) if result is None else result
    return apply_ranks(params, result, smoothing_ranks(result, kind, percent))


def svd_sharpness(params, key=None, *, result=None, layers=()):
    """WeightWatcher's ``SVDSharpness``: remove, from each matrix, as many of its largest singular values as its
    randomly shuffled copy has Marchenko–Pastur spikes (correlation traps).

    Args:
      params: a parameter pytree.
      key: a ``jax.random`` key or int seed for the shuffles (when ``result`` is not given).
      result: an analysis with ``randomize=True`` whose ``LayerMetrics.extra`` holds ``num_traps`` (or
        ``rand_num_spikes``); by default ``wwjax.analyze(params, randomize=True, key=key, conv2d_norm=False)``.
      layers: which leaves to sharpen.

    Returns:
      New params, every analysed matrix without its top ``num_traps`` singular directions.

    Example:
      >>> import numpy as np, jax.numpy as jnp, wwjax
      >>> w = np.random.default_rng(0).normal(size=(60, 20))
      >>> result = wwjax.analyze({"w": w})
      >>> result["w"].extra["num_traps"] = jnp.array([2])  # as a randomized analysis reports them
      >>> sharp = wwjax.svd_sharpness({"w": w}, result=result)
      >>> bool(np.isclose(np.linalg.svd(sharp["w"], compute_uv=False)[0], np.linalg.svd(w, compute_uv=False)[2]))
      True
    """
    if result is None:
        from wwjax.core._analyze import analyze
        from wwjax.core._contributions import option_defaults

        if "randomize" not in option_defaults():
            raise ValueError("svd_sharpness needs the randomized analysis: pass result=wwjax.analyze(params, "
                             "randomize=True, key=key)")
        result = analyze(params, randomize=True, key=key, conv2d_norm=False, layers=layers)
    ranks = {}
    for node in _results.iter_nodes(result):
        if isinstance(node, _results.LayerMetrics):
            column = next((c for c in _TRAP_COLUMNS if c in node.extra), None)
            if column is None:
                raise ValueError(f"{node.path}: the result has no {' or '.join(_TRAP_COLUMNS)}; pass "
                                 "result=wwjax.analyze(params, randomize=True, key=key)")
            traps = np.asarray(node.extra[column])
            ranks[node.path] = -np.where(traps > 0, traps, 0).astype(int)
    return apply_ranks(params, result, ranks)
