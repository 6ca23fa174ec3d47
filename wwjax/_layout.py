"""How a parameter leaf becomes matrices: the matrix view of every Flax layout.

A :class:`MatrixView` names, for each axis of a leaf, what it is:

* ``layer_axes``: stacked layers (``nn.scan`` / ``nnx.vmap``); every index is a separate layer and its own row.
* ``slice_axes``: kernel positions of a convolution; every position is one ``(in, out)`` matrix, and their
  eigenvalues are pooled into one ESD per layer (or one row per position with ``pool=False``).
* ``row_axes`` / ``col_axes``: contracted into the rows and the columns of the matrix.

:func:`classify_leaf` picks a view from the leaf's key path, shape and any Flax metadata (boxed axis names, nnx
module types). Everything here works on shapes only, so it runs on abstract arrays and tracers alike.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

LAYER_TYPES = ("dense", "embedding", "attention", "conv1d", "conv2d", "conv3d")

# Axis names that Flax users give a stacked-layers axis (``nn.scan``/``nnx.vmap`` with metadata).
_LAYER_AXIS_NAMES = frozenset({"layers", "layer", "stack", "blocks", "block", "scan", "stage"})
# Parent-module names of attention input projections (q/k/v) and of the output projection.
_QKV_NAMES = frozenset({"query", "key", "value", "q", "k", "v", "q_proj", "k_proj", "v_proj", "wq", "wk", "wv"})
_OUT_NAMES = frozenset({"out", "o", "o_proj", "out_proj", "wo", "attn_out", "output"})
_DENSE_HINTS = ("dense", "linear", "mlp", "fc", "proj", "ffn", "feedforward", "lm_head", "head")
# Leaf names that are never weight matrices.
_NON_WEIGHT_NAMES = {
    "bias": "bias",
    "scale": "normalization scale",
    "mean": "batch statistic",
    "var": "batch statistic",
    "u": "power-iteration vector",
    "sigma": "power-iteration statistic",
}


@dataclasses.dataclass(frozen=True)
class MatrixView:
    """How one parameter leaf is read as a stack of matrices.

    Every axis of the leaf must appear in exactly one of the four groups. Singular values do not depend on the
    orientation, so ``row_axes`` and ``col_axes`` may be given either way round.

    Args:
      row_axes: axes flattened into the matrix rows (the input side in Flax).
      col_axes: axes flattened into the matrix columns (the output side in Flax).
      slice_axes: convolution kernel positions; each position is one matrix (pooled per layer).
      layer_axes: stacked, independent layers; each index gives its own row in the results.
      layer_type: one of ``dense``, ``embedding``, ``attention``, ``conv1d``, ``conv2d``, ``conv3d``.

    Example:
      A fused QKV kernel ``(features, 3, heads, head_dim)`` read as three ``(features, heads*head_dim)`` layers:

      >>> view = MatrixView(row_axes=(0,), col_axes=(2, 3), layer_axes=(1,), layer_type="attention")
      >>> view.num_axes
      4
    """

    row_axes: tuple[int, ...]
    col_axes: tuple[int, ...]
    slice_axes: tuple[int, ...] = ()
    layer_axes: tuple[int, ...] = ()
    layer_type: str = "dense"

    def __post_init__(self):
        for name in ("row_axes", "col_axes", "slice_axes", "layer_axes"):
            object.__setattr__(self, name, tuple(int(a) for a in getattr(self, name)))
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"MatrixView.layer_type must be one of {LAYER_TYPES}, got {self.layer_type!r}")
        if not self.row_axes or not self.col_axes:
            raise ValueError("MatrixView needs at least one row axis and one column axis")

    @property
    def num_axes(self) -> int:
        return len(self.row_axes) + len(self.col_axes) + len(self.slice_axes) + len(self.layer_axes)

    def check(self, shape: Sequence[int], path: str) -> None:
        """Raises ValueError naming ``path`` unless the view assigns every axis of ``shape`` exactly once."""
        axes = sorted(a % len(shape) for a in self.row_axes + self.col_axes + self.slice_axes + self.layer_axes)
        if axes != list(range(len(shape))):
            raise ValueError(
                f"MatrixView for {path!r} does not assign each of the {len(shape)} axes of shape {tuple(shape)} "
                f"exactly once (rows={self.row_axes}, cols={self.col_axes}, slices={self.slice_axes}, "
                f"layers={self.layer_axes}); fix the view passed in views=."
            )

    def shifted(self, offset: int, extra_layer_axes: int) -> "MatrixView":
        """The same view for a leaf with ``extra_layer_axes`` leading stacked-layer axes."""
        move = lambda axes: tuple(a + offset for a in axes)  # noqa: E731
        return dataclasses.replace(
            self,
            row_axes=move(self.row_axes),
            col_axes=move(self.col_axes),
            slice_axes=move(self.slice_axes),
            layer_axes=tuple(range(extra_layer_axes)) + move(self.layer_axes),
        )


@dataclasses.dataclass(frozen=True)
class MatrixShape:
    """The static shape facts of a leaf read through its view (all from shapes, no data)."""

    num_layers: int  # L: product of the layer axes
    num_slices: int  # K = rf: product of the slice axes (kernel positions)
    rows: int  # product of the row axes
    cols: int  # product of the column axes

    @property
    def N(self) -> int:  # noqa: N802 (WeightWatcher's name)
        return max(self.rows, self.cols)

    @property
    def M(self) -> int:  # noqa: N802 (WeightWatcher's name)
        return min(self.rows, self.cols)


def matrix_shape(shape: Sequence[int], view: MatrixView) -> MatrixShape:
    size = lambda axes: math.prod(shape[a] for a in axes)  # noqa: E731
    return MatrixShape(size(view.layer_axes), size(view.slice_axes), size(view.row_axes), size(view.col_axes))


def as_matrices(leaf, view: MatrixView):
    """Reshapes ``leaf`` to ``(layers, slices, N, M)`` with the long side first (a transpose changes no singular value).

    Example:
      >>> import jax.numpy as jnp
      >>> conv = jnp.zeros((3, 3, 16, 32))  # Flax HWIO
      >>> as_matrices(conv, MatrixView((2,), (3,), slice_axes=(0, 1), layer_type="conv2d")).shape
      (1, 9, 32, 16)
    """
    ms = matrix_shape(leaf.shape, view)
    order = view.layer_axes + view.slice_axes + view.row_axes + view.col_axes
    stack = leaf.transpose(order).reshape(ms.num_layers, ms.num_slices, ms.rows, ms.cols)
    if ms.rows < ms.cols:
        stack = stack.swapaxes(-1, -2)
    return stack


# ---------------------------------------------------------------------------------------------------------------------
# Classification


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """What the planner knows about one leaf before any array is read."""

    path: str
    keys: tuple[str, ...]
    shape: tuple[int, ...] | None  # None: not an array
    dtype: Any
    axis_names: tuple[str | None, ...] | None = None  # from boxed (Partitioned) or nnx sharding metadata
    module_type: str | None = None  # the owning nnx module's class name, when known


ViewSpec = Mapping[str, MatrixView] | Callable[[str, tuple[int, ...]], MatrixView | None] | None


def path_matches(path: str, pattern: str) -> bool:
    """Whether ``pattern`` selects ``path``: a glob (``*``, ``?``, ``[``), or whole ``/``-separated segments.

    Example:
      >>> path_matches("params/Dense_1/kernel", "Dense_1"), path_matches("params/Dense_10/kernel", "Dense_1")
      (True, False)
      >>> path_matches("params/block/query/kernel", "*/query/*")
      True
    """
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(path, pattern)
    return f"/{pattern.strip('/')}/" in f"/{path}/"


def _user_view(info: LeafInfo, views: ViewSpec) -> MatrixView | None:
    if views is None:
        return None
    if callable(views):
        return views(info.path, info.shape)
    for pattern, view in views.items():
        if path_matches(info.path, pattern):
            return view
    return None


def _conv_view(ndim: int) -> MatrixView:
    spatial = tuple(range(ndim - 2))
    kind = {1: "conv1d", 2: "conv2d", 3: "conv3d"}.get(len(spatial), "conv3d")
    return MatrixView(row_axes=(ndim - 2,), col_axes=(ndim - 1,), slice_axes=spatial, layer_type=kind)


def _base_view(info: LeafInfo, ndim: int, stacked: bool) -> MatrixView | str:
    """The view of an unstacked leaf with ``ndim`` axes, or a reason string when no rule applies."""
    name = info.keys[-1] if info.keys else ""
    parent = info.keys[-2].lower() if len(info.keys) >= 2 else ""
    module = (info.module_type or "").lower()
    if name == "embedding" or module == "embed":
        return MatrixView((0,), (1,), layer_type="embedding") if ndim == 2 else "an embedding table must be 2-D"
    if "conv" in module or "conv" in parent:
        if ndim < 3:
            return MatrixView((0,), (1,), layer_type="dense") if ndim == 2 else "a convolution kernel needs >= 3 axes"
        return _conv_view(ndim)
    if parent in _QKV_NAMES or module in {"multiheadattention"}:
        if ndim == 3:  # (features, heads, head_dim)
            return MatrixView((0,), (1, 2), layer_type="attention")
    if parent in _OUT_NAMES:
        if ndim == 3:  # (heads, head_dim, features)
            return MatrixView((0, 1), (2,), layer_type="attention")
    if ndim == 2:
        return MatrixView((0,), (1,), layer_type="dense")
    if not stacked and name == "kernel" and ndim in (4, 5) and not any(h in parent for h in _DENSE_HINTS):
        return _conv_view(ndim)  # Flax convolutions store (*kernel_size, in, out)
    return (
        f"cannot tell how a {ndim}-D '{name}' of shape {info.shape} is a matrix (a DenseGeneral/Einsum kernel, "
        f"a fused projection or a stacked layer?); pass views={{'{info.path}': wwjax.MatrixView(...)}} "
        "or stacked=[...] to analyse it"
    )


def _num_leading_layer_axes(info: LeafInfo, stacked_patterns: Sequence[str]) -> int:
    if any(path_matches(info.path, p) for p in stacked_patterns):
        return 1
    names = info.axis_names or ()
    count = 0
    for axis_name in names:
        if axis_name is not None and str(axis_name).lower() in _LAYER_AXIS_NAMES:
            count += 1
        else:
            break
    return count


def _dense_stack_axes(info: LeafInfo) -> int:
    """Leading stacked axes of a kernel whose owner is clearly a dense layer (``Dense_0``, ``mlp``, nnx ``Linear``)."""
    parent = info.keys[-2].lower() if len(info.keys) >= 2 else ""
    module = (info.module_type or "").lower()
    if info.keys[-1] != "kernel" or len(info.shape) < 3:
        return 0
    if module == "linear" or (not module and any(h in parent for h in _DENSE_HINTS) and "general" not in parent):
        return len(info.shape) - 2
    if parent in _QKV_NAMES | _OUT_NAMES and len(info.shape) == 4:
        return 1  # a stacked multi-head projection
    return 0


def classify_leaf(info: LeafInfo, views: ViewSpec = None, stacked: Sequence[str] = ()) -> MatrixView | str:
    """Returns the leaf's :class:`MatrixView`, or a string saying why it is not a weight matrix.

    Example:
      >>> info = LeafInfo("params/Conv_0/kernel", ("params", "Conv_0", "kernel"), (3, 3, 8, 16), "float32")
      >>> classify_leaf(info).layer_type
      'conv2d'
      >>> classify_leaf(LeafInfo("params/Dense_0/bias", ("params", "Dense_0", "bias"), (16,), "float32"))
      'bias'
    """
    if info.shape is None:
        return "not an array"
    user = _user_view(info, views)
    if user is not None:
        user.check(info.shape, info.path)
        return user
    name = info.keys[-1] if info.keys else ""
    if len(info.shape) < 2:
        return _NON_WEIGHT_NAMES.get(name, f"{len(info.shape)}-D leaf (not a weight matrix)")
    if name in _NON_WEIGHT_NAMES:
        return _NON_WEIGHT_NAMES[name]
    lead = _num_leading_layer_axes(info, stacked) or _dense_stack_axes(info)
    base = _base_view(info, len(info.shape) - lead, stacked=lead > 0)
    if isinstance(base, str) or lead == 0:
        return base
    return base.shifted(lead, lead)


def skip_reason_for_dtype(dtype) -> str | None:
    """A reason when the dtype cannot hold trained weights (integers, booleans, complex), else None."""
    kind = np.dtype(dtype).kind if not _is_extended_float(dtype) else "f"
    if kind == "f":
        return None
    return {"i": "integer dtype", "u": "integer dtype", "b": "boolean dtype", "c": "complex dtype"}.get(
        kind, f"non-numeric dtype {dtype}"
    )


def _is_extended_float(dtype) -> bool:
    import jax.numpy as jnp

    try:
        return jnp.issubdtype(dtype, jnp.floating)
    except TypeError:
        return False
