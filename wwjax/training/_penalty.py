"""``wwjax.spectral_penalty``: Yoshida & Miyato's spectral norm regulariser, over the same matrices ``analyze`` reads.

Yoshida & Miyato (2017) train on ``loss + (λ/2) Σ_l σ_max(W_l)²``. :func:`spectral_penalty` returns
``½ Σ σ_max²`` so that a user writes ``loss + λ · spectral_penalty(params)`` with the paper's λ, and the gradient
per matrix is exactly ``σ u vᵀ`` (top singular pair): only the top direction is shrunk, where weight decay shrinks
all of them.

Which leaves are matrices, and how, is :func:`wwjax.analyze`'s plan (``classify_leaf``, ``views=``,
``stacked=``, ``layers=``): Dense, DenseGeneral (with a view), Embed, attention projections, stacked layers. A
convolution kernel ``(*kernel_size, in, out)`` is read one of three ways (``conv=``):

* ``"reshape"`` (the paper's, and Miyato's spectral normalisation): one ``(kernel_size·in, out)`` matrix;
* ``"slices"``: one ``(in, out)`` matrix per kernel position, as ``analyze`` sees it (σ² summed over positions);
* ``"fft"``: the exact operator norm of the stride-1 circular convolution on an ``input_size`` grid
  (Sedghi, Gupta & Long 2019): the largest σ over the DFT frequencies' ``(in, out)`` matrices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from wwjax.core import _results
from wwjax.training._conv_operator import conv_frequency_matrices
from wwjax.core._analyze import view_or_skip
from wwjax.core._layout import MatrixView, as_matrices
from wwjax.core._options import _as_patterns
from wwjax.training._power_iteration import initial_vectors, power_iteration, top_singular
from wwjax.core._tree import flatten_params

CONV_MODES = ("reshape", "slices", "fft")
_CONV_TYPES = ("conv1d", "conv2d", "conv3d")


@dataclasses.dataclass(frozen=True)
class PenalizedLeaf:
    """One penalised leaf: where it is and how it becomes ``(layers, matrices, n, m)``."""

    path: str
    keys: tuple[str, ...]
    index: int  # position among the flattened leaves of the params
    view: MatrixView  # the matrix view (``conv='reshape'`` has the kernel positions merged into the rows)
    fft_sizes: tuple[int, ...] = ()  # ``conv='fft'``: the input grid per kernel axis; () for a plain matrix


class SpectralPenaltyState(NamedTuple):
    """The persistent power-iteration vectors: an ordinary pytree keyed like the params (checkpoints with them).

    ``u[...path]`` is ``(layers, matrices, n)`` (complex for ``conv='fft'``); ``sigma[...path]`` the current
    ``σ_max`` estimates ``(layers, matrices)``, handy for logging.
    """

    u: dict
    sigma: dict


def _as_mask_leaves(mask, params, num_leaves: int) -> list[bool] | None:
    if mask is None:
        return None
    tree = mask(params) if callable(mask) else mask
    flags = jax.tree_util.tree_leaves(tree)
    if len(flags) != num_leaves:
        raise ValueError(
            f"mask has {len(flags)} leaves but the params have {num_leaves}; pass a pytree of bools shaped like the "
            "params (e.g. jax.tree.map(lambda x: x.ndim > 1, params)) or a callable params -> such a pytree"
        )
    return [bool(f) for f in flags]


@dataclasses.dataclass(frozen=True)
class SpectralPenalty:
    """The stateful regulariser: persistent power-iteration vectors, one iteration per training step.

    Args:
      conv: how a convolution kernel is a matrix: ``"reshape"`` (default), ``"slices"`` or ``"fft"`` (see module).
      input_size: the spatial input size of the convolutions, needed by ``conv="fft"`` (an int or one per axis).
      layers: ``analyze``'s selection: layer types or path patterns, ``-`` in front excludes.
      views: ``{path pattern: MatrixView}`` or a callable, for leaves the Flax rules cannot read.
      stacked: path patterns of leaves whose leading axis is a stack of layers.
      mask: a pytree of bools like the params, or a callable params → such a pytree (optax's convention);
        False leaves are not penalised.
      num_iters: power iterations per :meth:`update` (1, as in the paper, when the vectors carry over).
      init_iters: warm-up iterations run by :meth:`init` from a deterministic start.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"Dense_0": {"kernel": jnp.diag(jnp.array([2.0, 1.0])), "bias": jnp.zeros(2)}}
      >>> penalty = SpectralPenalty()
      >>> state = penalty.init(params)
      >>> value, state = jax.jit(penalty.update)(params, state)
      >>> round(float(value), 4)  # ½ σ_max² = ½ · 2²
      2.0
    """

    conv: str = "reshape"
    input_size: int | tuple[int, ...] | None = None
    layers: tuple[str, ...] | str = ()
    views: Mapping[str, MatrixView] | Callable | None = None
    stacked: tuple[str, ...] | str = ()
    mask: Any = None
    num_iters: int = 1
    init_iters: int = 15

    def __post_init__(self):
        if self.conv not in CONV_MODES:
            raise ValueError(f"conv must be one of {CONV_MODES}, got {self.conv!r}")
        if self.conv == "fft" and self.input_size is None:
            raise ValueError("conv='fft' needs input_size=, the spatial size of the convolutions' inputs (e.g. 32)")
        for name in ("num_iters", "init_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        object.__setattr__(self, "layers", _as_patterns(self.layers, "layers"))
        object.__setattr__(self, "stacked", _as_patterns(self.stacked, "stacked"))
        if isinstance(self.input_size, list):
            object.__setattr__(self, "input_size", tuple(self.input_size))

    # -- plan (host, shapes only) -------------------------------------------------------------------------------

    def plan(self, params) -> list[PenalizedLeaf | _results.SkippedLeaf]:
        """Every leaf of ``params``: how it is penalised, or a :class:`~wwjax.SkippedLeaf` saying why not.

        Example:
          >>> import numpy as np
          >>> plan = SpectralPenalty().plan({"Conv_0": {"kernel": np.zeros((3, 3, 4, 8)), "bias": np.zeros(8)}})
          >>> plan[0].reason, as_matrices(np.zeros((3, 3, 4, 8)), plan[1].view).shape
          ('bias', (1, 1, 36, 8))
        """
        leaves = flatten_params(params)
        mask = _as_mask_leaves(self.mask, params, len(leaves))
        planned = []
        for index, (info, _, collection_skip) in enumerate(leaves):
            view = view_or_skip(info, collection_skip, self.views, self.stacked, self.layers)
            if isinstance(view, _results.SkippedLeaf):
                planned.append(view)
            elif mask is not None and not mask[index]:
                planned.append(_results.SkippedLeaf(info.path, "masked out", shape=info.shape,
                                                    layer_type=view.layer_type))
            else:
                planned.append(self._penalized(info, index, view))
        return planned

    def _penalized(self, info, index: int, view: MatrixView) -> PenalizedLeaf:
        if view.layer_type not in _CONV_TYPES or not view.slice_axes or self.conv == "slices":
            return PenalizedLeaf(info.path, info.keys, index, view)
        if self.conv == "reshape":
            merged = dataclasses.replace(view, row_axes=view.slice_axes + view.row_axes, slice_axes=())
            return PenalizedLeaf(info.path, info.keys, index, merged)
        spatial = tuple(info.shape[a] for a in view.slice_axes)
        sizes = (self.input_size,) * len(spatial) if isinstance(self.input_size, int) else tuple(self.input_size)
        if len(sizes) != len(spatial) or any(n < k for n, k in zip(sizes, spatial)):
            raise ValueError(
                f"{info.path!r}: input_size={self.input_size} must give one size >= the kernel size per kernel axis "
                f"{spatial} for conv='fft'"
            )
        return PenalizedLeaf(info.path, info.keys, index, view, fft_sizes=sizes)

    def _selected(self, params) -> tuple[list[PenalizedLeaf], list]:
        planned = [p for p in self.plan(params) if isinstance(p, PenalizedLeaf)]
        if not planned:
            raise ValueError(
                "spectral_penalty found no weight matrix to penalise in the params; check layers=/mask=, or pass "
                "views= for leaves the Flax rules cannot read (SpectralPenalty(...).plan(params) lists every reason)"
            )
        values = [value for _, value, _ in flatten_params(params)]
        return planned, [values[leaf.index] for leaf in planned]

    # -- the computation (pure, jittable) -----------------------------------------------------------------------

    def init(self, params) -> SpectralPenaltyState:
        """Deterministic start vectors for every penalised matrix, warmed up by ``init_iters`` iterations."""
        planned, values = self._selected(params)
        _, state = self._iterate(params, _start(planned, values), self.init_iters)
        return jax.lax.stop_gradient(state)

    def update(self, params, state: SpectralPenaltyState) -> tuple[Float[Array, ""], SpectralPenaltyState]:
        """``½ Σ σ_max²`` after ``num_iters`` warm-started iterations, and the state for the next step.

        Differentiable in ``params`` (gradient ``σ u vᵀ`` per matrix); use ``has_aux=True`` for the state.
        """
        return self._iterate(params, state, self.num_iters)

    def _iterate(self, params, state: SpectralPenaltyState, num_iters: int):
        planned, values = self._selected(params)
        return _iterate_leaves(planned, values, state, num_iters)


def _iterate_leaves(planned: Sequence[PenalizedLeaf], values, state: SpectralPenaltyState, num_iters: int):
    """``½ Σ σ²`` of the penalised leaves' ``values`` after ``num_iters`` iterations from ``state``, and the new state."""
    total = 0.0
    new_u, new_sigma = [], []
    for leaf, value in zip(planned, values):  # a trace-time loop: each leaf has its own shapes
        previous = _lookup(state.u, leaf)
        fit = power_iteration(_matrices(leaf, value), previous, num_iters=num_iters)
        # fft: the operator norm of each layer is its largest σ over frequencies; else every matrix counts.
        squares = jnp.max(fit.sigma, axis=-1) ** 2 if leaf.fft_sizes else fit.sigma**2
        total = total + 0.5 * jnp.sum(squares)
        new_u.append(fit.u)
        new_sigma.append(jax.lax.stop_gradient(fit.sigma))
    return jnp.asarray(total), _state(planned, new_u, new_sigma)


def _converged_leaves(planned: Sequence[PenalizedLeaf], values, rtol: float | None, max_iters: int):
    """``½ Σ σ²`` of the penalised leaves' ``values`` with every σ converged to ``rtol`` (:func:`top_singular`)."""
    total = 0.0
    for leaf, value in zip(planned, values):  # a trace-time loop: each leaf has its own shapes
        sigma = top_singular(_matrices(leaf, value), rtol=rtol, max_iters=max_iters).sigma
        squares = jnp.max(sigma, axis=-1) ** 2 if leaf.fft_sizes else sigma**2
        total = total + 0.5 * jnp.sum(squares)
    return jnp.asarray(total)


def _real_dtype(value):
    return jnp.promote_types(value.dtype, jnp.float32)


def _matrices(leaf: PenalizedLeaf, value) -> Array:
    """``(layers, matrices, n, m)``: the leaf through its view, FFT-transformed per layer for ``conv='fft'``."""
    stack = as_matrices(jnp.asarray(value).astype(_real_dtype(value)), leaf.view)
    if not leaf.fft_sizes:
        return stack
    # as_matrices puts the kernel positions (in slice-axis order) before the long and short channel sides.
    kernels = stack.reshape(stack.shape[0], *(value.shape[a] for a in leaf.view.slice_axes), *stack.shape[-2:])
    return jax.vmap(lambda k: conv_frequency_matrices(k, leaf.fft_sizes))(kernels)


def _start(planned: Sequence[PenalizedLeaf], values) -> SpectralPenaltyState:
    """The deterministic start vectors (shapes only: nothing is computed from the values)."""
    shapes = [jax.eval_shape(lambda v, leaf=leaf: _matrices(leaf, v), v).shape for leaf, v in zip(planned, values)]
    u = [initial_vectors(shape[:-1], _real_dtype(v)) for shape, v in zip(shapes, values)]
    return _state(planned, u, [jnp.zeros(x.shape[:-1], x.dtype) for x in u])


def _state(planned: Sequence[PenalizedLeaf], u, sigma) -> SpectralPenaltyState:
    return SpectralPenaltyState(
        u=_results.nest([(leaf.keys, x) for leaf, x in zip(planned, u)]),
        sigma=_results.nest([(leaf.keys, s) for leaf, s in zip(planned, sigma)]),
    )


def _lookup(tree: dict, leaf: PenalizedLeaf):
    node = tree
    for key in leaf.keys:
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(
                f"the spectral-penalty state has no vector for {leaf.path!r}: it was made for other params or other "
                "options; call init(params) with the same SpectralPenalty"
            )
        node = node[key]
    return node


def spectral_penalty(
    params,
    *,
    rtol: float | None = None,
    max_iters: int = 512,
    num_iters: int | None = None,
    conv: str = "reshape",
    input_size: int | tuple[int, ...] | None = None,
    layers: Sequence[str] | str = (),
    views: Mapping[str, MatrixView] | Callable | None = None,
    stacked: Sequence[str] | str = (),
    mask: Any = None,
) -> Float[Array, ""]:
    """Yoshida & Miyato's spectral norm penalty ``½ Σ σ_max(W)²`` over the weight matrices of ``params``.

    Stateless and exact: every matrix's top singular pair is converged to ``rtol`` by restarted Lanczos
    (:func:`~wwjax.top_singular`) from a deterministic start, so the same params always give the same value, and
    the value is ``½ σ_max²`` to float rounding even when the top two singular values are close (where a fixed
    number of power iterations is not: at σ2/σ1 = 0.95, 20 of them leave the gradient 3% to 140% off ``σ u vᵀ``).
    Add ``λ · spectral_penalty(params)`` to the loss (the paper's ``λ/2 Σ σ²``); the gradient per matrix is
    ``σ u vᵀ``: the loop is not differentiated, the penalty is ``uᵀWv`` with the converged vectors held constant,
    and ``jax.grad`` works under ``jax.jit``.

    The number of Lanczos steps depends on the data (a ``lax.while_loop``, at most ``max_iters``). Inside a
    ``pmap``-ed step each device loops on its own copy of the params with no collective inside the loop, so no
    device waits on another (replicated params give identical values everywhere); under ``jit`` with sharded
    weights XLA partitions the matrix products and the loop condition, and every device runs the same steps.

    For one power iteration per step with vectors carried over (cheaper, approximate while the vectors catch up),
    use :class:`SpectralPenalty` or the optax form :func:`add_spectral_penalty`.

    Args:
      params: a pytree of weights (Flax/nnx variables or plain dicts).
      rtol: the relative residual ``‖Wᵀu − σv‖/σ`` every matrix is converged to; 1e-6 in float32, 1e-12 in float64
        by default. The angle error of ``u``, ``v`` is at most ``rtol / (1 − σ2/σ1)``.
      max_iters: the cap on Lanczos steps per leaf (each costs one product with ``W`` and one with ``Wᵀ``).
      num_iters: if given, the former fixed-count form instead: ``num_iters`` power iterations, not converged.
      conv, input_size, layers, views, stacked, mask: as in :class:`SpectralPenalty`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> params = {"Dense_0": {"kernel": jnp.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])}}
      >>> round(float(spectral_penalty(params)), 4)
      4.5
      >>> g = jax.grad(spectral_penalty)(params)["Dense_0"]["kernel"]  # σ u vᵀ = 3 e0 e0ᵀ
      >>> round(float(g[0, 0]), 4), round(float(jnp.abs(g).sum()), 4)
      (3.0, 3.0)
    """
    penalty = SpectralPenalty(
        conv=conv, input_size=input_size, layers=layers, views=views, stacked=stacked, mask=mask, init_iters=0
    )
    planned, values = penalty._selected(params)
    if num_iters is not None:
        if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 0:
            raise ValueError(f"num_iters must be None (converge to rtol) or an int >= 0, got {num_iters!r}")
        value, _ = _iterate_leaves(planned, values, _start(planned, values), num_iters)
        return value
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be an int >= 1, got {max_iters!r}")
    return _converged_leaves(planned, values, rtol, max_iters)


def add_spectral_penalty(
    rate: float | Float[Array, ""],
    *,
    mask: Any = None,
    conv: str = "reshape",
    input_size: int | tuple[int, ...] | None = None,
    layers: Sequence[str] | str = (),
    views: Mapping[str, MatrixView] | Callable | None = None,
    stacked: Sequence[str] | str = (),
    num_iters: int = 1,
    init_iters: int = 15,
):
    """An optax ``GradientTransformation`` adding ``rate · σ u vᵀ`` (the penalty's gradient) to the updates.

    Decoupled like ``optax.add_decayed_weights``: put it before the learning-rate scaling (and after an adaptive
    preconditioner) in an ``optax.chain``. Its state is the :class:`SpectralPenaltyState` (one power iteration per
    step, warm-started), so the vectors checkpoint with the optimizer state. ``rate`` is the paper's λ. Other
    options as in :class:`SpectralPenalty`.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> params = {"Dense_0": {"kernel": jnp.diag(jnp.array([2.0, 1.0]))}}
      >>> tx = optax.chain(add_spectral_penalty(0.5), optax.sgd(0.1))
      >>> updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
      >>> step = updates["Dense_0"]["kernel"]  # -0.1 · 0.5 · σ u vᵀ with σ = 2, u = v = e0
      >>> round(float(step[0, 0]), 4), float(jnp.abs(step).sum() - jnp.abs(step[0, 0])) < 1e-6
      (-0.1, True)
    """
    import optax

    penalty = SpectralPenalty(
        conv=conv,
        input_size=input_size,
        layers=layers,
        views=views,
        stacked=stacked,
        mask=mask,
        num_iters=num_iters,
        init_iters=init_iters,
    )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("add_spectral_penalty needs the params: call tx.update(updates, state, params)")
        planned, values = penalty._selected(params)
        # The gradient of the penalised leaves only: no zero cotangents for every other parameter.
        grads, state = jax.grad(_iterate_leaves, argnums=1, has_aux=True)(planned, values, state, penalty.num_iters)
        # ``flatten_params`` unboxes one array per Flax box / nnx Variable: its leaf order is ``tree_leaves``'.
        flat, treedef = jax.tree_util.tree_flatten(updates)
        for leaf, grad in zip(planned, grads):
            flat[leaf.index] = flat[leaf.index] + (rate * grad).astype(flat[leaf.index].dtype)
        return jax.tree_util.tree_unflatten(treedef, flat), state

    return optax.GradientTransformation(penalty.init, update_fn)
