"""AlphaPruning (Lu et al., NeurIPS 2024) for parameter pytrees: layer sparsities from α, and pure pruning.

:func:`alpha_sparsity` maps each layer's α linearly to ``[1 − ε, 1 + ε]`` (least α → ``1 − ε``: heavy-tailed,
"well-trained" layers are pruned least), then rescales so that the parameter-weighted mean sparsity is exactly
``target``: ``s_l = r_l · target · Σ n_l / Σ n_l r_l``. :func:`prune` zeroes the lowest-scoring fraction ``s_l`` of
each layer (``|W|`` by default, or any score: :func:`wanda_scores` is Wanda's ``|W| · ‖x‖``) and returns new params
and boolean masks of the same structure; :func:`keep_pruned` is the optax transform that keeps pruned weights at
zero in further training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from wwjax.core import _results
from wwjax.core._tree import normalize_keys

ScoreFn = Callable[[str, Array], Array]


def _leaf_sizes(tree) -> dict[str, int]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(normalize_keys(p)): math.prod(getattr(v, "shape", ())) for p, v in flat}


def _is_result(tree) -> bool:
    nodes = jax.tree_util.tree_leaves(tree, is_leaf=_results._is_node)
    return bool(nodes) and all(_results._is_node(n) for n in nodes)


def sparsity_from_alpha(
    alpha: Float[Array, " layers"], sizes: Float[Array, " layers"], target: float, epsilon: float = 0.3
) -> Float[Array, " layers"]:
    """The AlphaPruning map: per-layer sparsities whose size-weighted mean is ``target`` (pure, jittable).

    Example:
      >>> import jax.numpy as jnp
      >>> s = sparsity_from_alpha(jnp.array([2.0, 4.0, 6.0]), jnp.array([100.0, 100.0, 200.0]), 0.5, 0.2)
      >>> [round(float(x), 4) for x in s], round(float((s * jnp.array([1, 1, 2])).sum() / 4), 6)
      ([0.381, 0.4762, 0.5714], 0.5)
    """
    alpha, sizes = jnp.asarray(alpha), jnp.asarray(sizes, jnp.result_type(float))
    lo, hi = jnp.min(alpha), jnp.max(alpha)
    frac = jnp.where(hi > lo, (alpha - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.5)  # all α equal: uniform
    ratios = (1.0 - epsilon) + 2.0 * epsilon * frac
    return ratios * target * jnp.sum(sizes) / jnp.sum(sizes * ratios)


def alpha_sparsity(
    result_or_params, target: float = 0.7, *, epsilon: float = 0.3, xmin: str | None = "peak", **options
) -> dict[str, Float[Array, ""]]:
    """Per-layer sparsity ratios from α (AlphaPruning): ``{leaf path: sparsity}``, size-weighted mean = ``target``.

    Args:
      result_or_params: a :func:`wwjax.analyze` result (its α is used), or a parameter pytree (α is measured with
        the Hill estimator and ``xmin`` rule: ``'peak'``, the paper's ``alpha_peak``; ``'median'``; None: KS fit).
      target: the global sparsity (fraction of the analysed layers' weights set to zero).
      epsilon: α maps linearly to ``[1 − ε, 1 + ε]`` before the rescaling.
      **options: :func:`wwjax.analyze`'s options choosing the layers (params only).

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> params = {"a": {"kernel": rng.standard_t(3, (128, 64))}, "b": {"kernel": rng.standard_normal((128, 64))}}
      >>> s = alpha_sparsity(params, 0.6, epsilon=0.2, xmin="median")  # the heavy-tailed "a" has the smaller α
      >>> {k: round(float(v), 2) for k, v in s.items()}
      {'a/kernel': 0.48, 'b/kernel': 0.72}
    """
    if not 0.0 <= target < 1.0:
        raise ValueError(f"target must be a sparsity in [0, 1), got {target!r}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon!r}")
    if _is_result(result_or_params):
        nodes = [n for n in _results.iter_nodes(result_or_params) if isinstance(n, _results.LayerMetrics)]
        alpha = {n.path: jnp.nanmean(n.alpha) for n in nodes}
        sizes = {n.path: math.prod(n.shape) for n in nodes}
    else:
        from wwjax.training._monitor import spectral_metrics

        metrics = spectral_metrics(result_or_params, xmin=xmin, **options)
        alpha = {p: jnp.nanmean(a) for p, a in metrics.alpha.items()}
        sizes = _leaf_sizes(result_or_params)
    if not alpha:
        raise ValueError("no layer was analysed: nothing to allocate sparsity to (see wwjax.describe(params))")
    paths = list(alpha)
    values = jnp.stack([alpha[p] for p in paths])
    if not isinstance(values, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(values))):
        bad = [p for p in paths if not bool(jnp.isfinite(alpha[p]))]
        raise ValueError(f"α is not finite for {bad}: leave them out with layers=['-<path>'] or fit them otherwise")
    sparsity = sparsity_from_alpha(values, jnp.asarray([sizes[p] for p in paths], float), target, epsilon)
    if not isinstance(sparsity, jax.core.Tracer) and float(jnp.max(sparsity)) > 1.0:
        raise ValueError(f"epsilon={epsilon} asks a layer for sparsity {float(jnp.max(sparsity)):.3f} > 1 at "
                         f"target={target}: lower epsilon")
    return {p: sparsity[k] for k, p in enumerate(paths)}


def uniform_sparsity(params, target: float, **options) -> dict[str, float]:
    """The baseline: every analysed layer (as :func:`wwjax.analyze` chooses them) at ``target`` sparsity.

    Example:
      >>> import numpy as np
      >>> params = {"Dense_0": {"kernel": np.ones((16, 8)), "bias": np.ones(8)}}
      >>> uniform_sparsity(params, 0.5)  # the bias is not a matrix: it is left as it is
      {'Dense_0/kernel': 0.5}
    """
    from wwjax.core._analyze import _PlannedLeaf, plan  # the plan from shapes alone, as describe() shows it
    from wwjax.core._options import make_options
    from wwjax.core._tree import flatten_params

    planned = plan(flatten_params(params), make_options(**options))
    return {leaf.info.path: target for leaf in planned if isinstance(leaf, _PlannedLeaf)}


def wanda_scores(activation_norms: Mapping[str, Array]) -> ScoreFn:
    """Wanda's importance ``|W_ij| · ‖x_i‖`` for kernels whose input axis is the second to last (Flax ``Dense``).

    ``activation_norms[path]`` is the L2 norm of each input feature over a calibration set, shape ``(in,)``.

    Example:
      >>> import numpy as np
      >>> score = wanda_scores({"Dense_0/kernel": np.array([1.0, 10.0])})
      >>> score("Dense_0/kernel", np.array([[-2.0, 1.0], [0.5, -0.5]])).tolist()  # row i scaled by ‖x_i‖
      [[2.0, 1.0], [5.0, 5.0]]
    """

    def score(path: str, kernel: Array) -> Array:
        if path not in activation_norms:
            raise KeyError(f"wanda_scores: no activation norms for {path!r} (have {sorted(activation_norms)})")
        return jnp.abs(kernel) * jnp.asarray(activation_norms[path])[:, None]

    return score


class Pruned(NamedTuple):
    """The pruned params and the masks (True: kept), both with the structure and dtypes of the input."""

    params: object
    masks: object


def _prune_leaf(kernel: Array, scores: Array, sparsity, per_output: bool) -> Array:
    """The mask keeping all but the ``round(sparsity · count)`` lowest scores (per output column if asked)."""
    if per_output:  # compare within each output column (last axis), over every input
        flat = scores.reshape(-1, scores.shape[-1])
        rank = jnp.argsort(jnp.argsort(flat, axis=0), axis=0)
        count = flat.shape[0]
        return (rank >= jnp.round(sparsity * count)).reshape(kernel.shape)
    flat = scores.reshape(-1)
    rank = jnp.argsort(jnp.argsort(flat))
    return (rank >= jnp.round(sparsity * flat.shape[0])).reshape(kernel.shape)


def prune(
    params,
    sparsity: Mapping[str, float | Array],
    *,
    method: str = "magnitude",
    score: ScoreFn | None = None,
    per_output: bool = False,
) -> Pruned:
    """Zeroes the lowest-importance fraction of each listed leaf: new params and masks (pure; nothing edited).

    Args:
      params: the parameter pytree (dicts, linen boxes, nnx state…: any pytree of arrays).
      sparsity: ``{leaf path: fraction to zero}`` (from :func:`alpha_sparsity` or :func:`uniform_sparsity`).
      method: ``'magnitude'`` (``|W|``), or ``'score'`` with ``score``.
      score: ``(path, kernel) -> scores`` of the kernel's shape, e.g. :func:`wanda_scores`.
      per_output: rank within each output column (Wanda's rule) instead of over the whole leaf.

    Example:
      >>> import numpy as np
      >>> params = {"Dense_0": {"kernel": np.arange(1.0, 9.0).reshape(4, 2), "bias": np.ones(2)}}
      >>> pruned = prune(params, {"Dense_0/kernel": 0.5})
      >>> pruned.params["Dense_0"]["kernel"].tolist(), pruned.masks["Dense_0"]["bias"].tolist()
      ([[0.0, 0.0], [0.0, 0.0], [5.0, 6.0], [7.0, 8.0]], [True, True])
    """
    if method not in ("magnitude", "score"):
        raise ValueError(f"method must be 'magnitude' or 'score', got {method!r}")
    if method == "score" and score is None:
        raise ValueError("method='score' needs score=(path, kernel) -> scores, e.g. wwjax.wanda_scores(norms)")
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = ["/".join(normalize_keys(p)) for p, _ in flat]
    unknown = sorted(set(sparsity) - set(paths))
    if unknown:
        raise KeyError(f"prune: no leaf at {unknown}; the leaf paths are like {paths[:3]}")
    new_leaves, masks = [], []
    for path, (_, leaf) in zip(paths, flat):
        leaf = jnp.asarray(leaf)
        if path not in sparsity:
            new_leaves.append(leaf)
            masks.append(jnp.ones(leaf.shape, bool))
            continue
        scores = jnp.abs(leaf) if method == "magnitude" else score(path, leaf)
        mask = _prune_leaf(leaf, scores, jnp.asarray(sparsity[path]), per_output)
        new_leaves.append(jnp.where(mask, leaf, jnp.zeros((), leaf.dtype)))
        masks.append(mask)
    return Pruned(jax.tree_util.tree_unflatten(treedef, new_leaves), jax.tree_util.tree_unflatten(treedef, masks))


def keep_pruned(masks):
    """An optax transform that zeroes the updates of pruned weights, so that they stay pruned in training.

    Chain it last: ``optax.chain(optax.adam(1e-3), keep_pruned(pruned.masks))``.

    Example:
      >>> import numpy as np, optax
      >>> masks = {"kernel": np.array([True, False, True])}
      >>> tx = optax.chain(optax.sgd(1.0), keep_pruned(masks))
      >>> params = {"kernel": np.array([1.0, 0.0, 3.0], np.float32)}
      >>> updates, _ = tx.update({"kernel": np.ones(3, np.float32)}, tx.init(params), params)
      >>> updates["kernel"].tolist()
      [-1.0, 0.0, -1.0]
    """
    import optax

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros((), u.dtype)), updates, masks), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
