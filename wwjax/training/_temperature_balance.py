"""TempBalance (Zhou et al., NeurIPS 2023) as an optax transform: each layer's step size set from its α.

Every ``every`` steps (one epoch in the paper) the transform measures the Hill α of every balanced layer inside the
jitted step (``lax.cond``: other steps pay nothing) and maps the α of the balanced layers to step-size factors:

* ``'linear'`` (the paper's ``tb_linear_map``): ``np.interp(α, [α_min, α_max], [s_min, s_max])``: the layer of least
  α gets ``s_min`` (0.5), the largest ``s_max`` (1.5); heavy-tailed (small α, "well trained") layers slow down;
* ``'sqrt'`` / ``'log2'``: ``f(α) / mean f(α)``;
* ``'step'``: by rank, the k-th smallest α of ``n`` gets ``s_min + (s_max − s_min) k / n``.

As in the paper, the first and last layers are not balanced (factor 1), the other parameters of a balanced layer's
module (its bias) follow it, and a ``BatchNorm_k`` / ``LayerNorm_k`` module follows the sibling ``Conv_k`` /
``Dense_k`` (their ``batchnorm_type='name'``: ``bn1`` follows ``conv1``); pass ``follow=`` to say it otherwise.
Everything else keeps factor 1. The factors multiply the updates, so chain the transform *after* the optimizer:
``optax.chain(optax.sgd(lr, momentum=0.9), temperature_balance(every=steps_per_epoch))`` is SGD with per-layer
learning rates ``lr · factor``, the paper's setting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from wwjax.training._monitor import spectral_metrics
from wwjax.core._tree import normalize_keys

AssignRule = Literal["linear", "sqrt", "log2", "step"]
_ASSIGN_RULES = ("linear", "sqrt", "log2", "step")
_NORM_MODULE = re.compile(r"^(BatchNorm|LayerNorm|GroupNorm|RMSNorm)_(\d+)$")


def temperature_factors(
    alpha: Float[Array, " layers"], assign: AssignRule = "linear", s_min: float = 0.5, s_max: float = 1.5
) -> Float[Array, " layers"]:
    """The step-size factor of each balanced layer from its α (NaN α: factor 1, left out of the map).

    Example:
      >>> import jax.numpy as jnp
      >>> temperature_factors(jnp.array([2.0, 3.0, 6.0])).tolist()
      [0.5, 0.75, 1.5]
      >>> [round(f, 4) for f in temperature_factors(jnp.array([2.0, 6.0, 3.0]), "step").tolist()]
      [0.5, 1.1667, 0.8333]
    """
    if assign not in _ASSIGN_RULES:
        raise ValueError(f"assign must be one of {_ASSIGN_RULES}, got {assign!r}")
    alpha = jnp.asarray(alpha)
    good = jnp.isfinite(alpha)
    count = jnp.sum(good)
    if assign == "linear":
        lo = jnp.min(jnp.where(good, alpha, jnp.inf))
        hi = jnp.max(jnp.where(good, alpha, -jnp.inf))
        # All α equal: np.interp would return s_max; the midpoint keeps the mean step size (see differences.md).
        frac = jnp.where(hi > lo, (alpha - lo) / jnp.where(hi > lo, hi - lo, 1.0), 0.5)
        factors = s_min + (s_max - s_min) * frac
    elif assign in ("sqrt", "log2"):
        f = jnp.sqrt(alpha) if assign == "sqrt" else jnp.log2(alpha)
        factors = f / jnp.sum(jnp.where(good, f, 0.0)) * count
    else:
        rank = jnp.argsort(jnp.argsort(jnp.where(good, alpha, jnp.inf)))
        factors = s_min + (s_max - s_min) * rank / count
    return jnp.where(good, factors, 1.0)


class TemperatureBalanceState(NamedTuple):
    """The state of :func:`temperature_balance` (arrays only: Orbax checkpoints it as is).

    ``alpha`` and ``factor`` are keyed by the balanced layers' leaf paths; ``measured_at`` is the step of the
    params they were measured on (0: at ``init``).
    """

    count: Int[Array, ""]
    measured_at: Int[Array, ""]
    alpha: dict[str, Float[Array, ""]]
    factor: dict[str, Float[Array, ""]]


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _default_follow(param_path: str, layers: tuple[str, ...]) -> str | None:
    """The balanced layer a parameter follows: its own module's kernel, or a norm's sibling Conv_k / Dense_k."""
    module = param_path.rpartition("/")[0]
    for layer in layers:
        if layer.rpartition("/")[0] == module:
            return layer
    parent, _, name = module.rpartition("/")
    match = _NORM_MODULE.match(name)
    if match:
        for kind in ("Conv", "Dense"):
            sibling = f"{parent}/{kind}_{match.group(2)}" if parent else f"{kind}_{match.group(2)}"
            for layer in layers:
                if layer.rpartition("/")[0] == sibling:
                    return layer
    return None


def temperature_balance(
    every: int,
    *,
    assign: AssignRule = "linear",
    s_min: float = 0.5,
    s_max: float = 1.5,
    xmin: str = "median",
    exclude_first: bool = True,
    exclude_last: bool = True,
    order: Callable[[str], object] | None = None,
    follow: Mapping[str, str] | Callable[[str, tuple[str, ...]], str | None] | None = None,
    **options,
):
    """An optax transform that scales each layer's updates by a factor mapped from its α (TempBalance).

    Args:
      every: re-measure α every this many steps (the paper: once per epoch).
      assign: the α → factor map: ``'linear'`` (paper default), ``'sqrt'``, ``'log2'`` or ``'step'``.
      s_min, s_max: the factor range of ``'linear'`` and ``'step'`` (the paper's ``lr_min_ratio``, ``lr_max_ratio``).
      xmin: the Hill estimator's xmin rule (``'median'``, the paper's default; ``'peak'``; ``'scan'``), or None
        for WeightWatcher's KS fit.
      exclude_first, exclude_last: leave the first / last analysed layer unbalanced (factor 1), as the paper does.
        First and last are in ``order`` of the leaf paths (default: natural sort, ``Conv_2`` before ``Conv_10``).
      order: a sort key over leaf paths giving the network's layer order.
      follow: for parameters that are not an analysed kernel, the kernel they follow: ``{param path: kernel path}``,
        or ``(param path, kernel paths) -> kernel path | None``. Default: their own module's kernel (biases), and
        ``BatchNorm_k`` → ``Conv_k`` or ``Dense_k`` in the same parent module.
      **options: :func:`wwjax.analyze`'s options choosing and reading the layers (``layers=``, ``min_evals=`` …).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`TemperatureBalanceState`;
      ``update(updates, state, params)`` needs the params.

    Example:
      >>> import jax, numpy as np, optax
      >>> rng = np.random.default_rng(0)
      >>> params = {f"Dense_{i}": {"kernel": rng.standard_t(2 + i, (64, 32)).astype("float32"),
      ...                          "bias": np.zeros(32, "float32")} for i in range(4)}
      >>> tx = optax.chain(optax.sgd(0.1), temperature_balance(every=10))
      >>> state = tx.init(params)
      >>> factor = optax.tree.get(state, "factor")
      >>> sorted(factor), [round(float(f), 2) for f in factor.values()]
      (['Dense_1/kernel', 'Dense_2/kernel'], [0.5, 1.5])
      >>> updates, state = jax.jit(tx.update)(jax.tree.map(np.ones_like, params), state, params)
      >>> float(updates["Dense_1"]["bias"][0]), float(updates["Dense_0"]["bias"][0])
      (-0.05000000074505806, -0.10000000149011612)
    """
    import optax

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    temperature_factors(jnp.ones(1), assign, s_min, s_max)  # checks `assign` now, not at the first step
    sort_key = _natural_key if order is None else order

    def measure(params):
        metrics = spectral_metrics(params, xmin=xmin, **options)
        paths = sorted(metrics.alpha, key=sort_key)
        first, last = (1 if exclude_first else 0), (len(paths) - 1 if exclude_last else len(paths))
        balanced = paths[first:last]
        # A layer with several rows (a stack of scanned layers, unpooled conv positions) has one α: their mean.
        alpha = {p: jnp.nanmean(metrics.alpha[p]) for p in balanced}
        if not balanced:
            return alpha, {}
        factors = temperature_factors(jnp.stack([alpha[p] for p in balanced]), assign, s_min, s_max)
        return alpha, {p: factors[k] for k, p in enumerate(balanced)}

    def scale_updates(updates, factor: dict):
        layers = tuple(factor)

        def one(path, update):
            name = "/".join(normalize_keys(path))
            if name in factor:
                target = name
            elif callable(follow):
                target = follow(name, layers)
            elif follow is not None:
                target = follow.get(name)
            else:
                target = _default_follow(name, layers)
            return (update * factor[target]).astype(update.dtype) if target in factor else update

        return jax.tree_util.tree_map_with_path(one, updates)

    def init_fn(params):
        alpha, factor = measure(params)
        return TemperatureBalanceState(
            count=jnp.zeros((), jnp.int32), measured_at=jnp.zeros((), jnp.int32), alpha=alpha, factor=factor
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("temperature_balance measures the params: call tx.update(updates, state, params)")
        count = state.count + 1
        due = count % every == 0
        alpha, factor = jax.lax.cond(due, measure, lambda _: (state.alpha, state.factor), params)
        updates = scale_updates(updates, factor)
        new_state = TemperatureBalanceState(
            count=count, measured_at=jnp.where(due, count, state.measured_at), alpha=alpha, factor=factor
        )
        return updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)
