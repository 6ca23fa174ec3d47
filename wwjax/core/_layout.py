"""How a parameter leaf becomes matrices: the matrix view of every Flax layout.

A :class:`MatrixView` names, for each axis of a leaf, what it is:

* ``layer_axes``: stacked layers (``nn.scan`` / ``nnx.vmap``); every index is a separate layer and its own row.
* ``slice_axes``: kernel positions of a convolution; every position is one ``(in, out)`` matrix, and their
  eigenvalues are pooled into one ESD per layer (or one row per position with ``pool=False``).
* ``row_axes`` / ``col_axes``: contracted into the rows and the columns of the matrix.

:func:`wwjax.core._reading.read_leaf` picks a view from the leaf's shape and metadata; this module holds the types it
works with (:class:`LeafInfo`, :class:`LeafReading`), the matrices of a view, and the dtypes that are never read.
Everything here works on shapes only, so it runs on abstract arrays (``jax.ShapeDtypeStruct``, Orbax metadata) and
tracers alike.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

LAYER_TYPES = ("dense", "embedding", "attention", "conv1d", "conv2d", "conv3d")
_CONV_TYPES = {1: "conv1d", 2: "conv2d", 3: "conv3d"}


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


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """What the planner knows about one leaf before any array is read."""

    path: str
    keys: tuple[str, ...]
    shape: tuple[int, ...] | None  # None: not an array
    dtype: Any
    axis_names: tuple[str | None, ...] | None = None  # from boxed (Partitioned) or nnx sharding metadata
    module_type: str | None = None  # the owning module's class name, when known (nnx, a converted PyTorch tensor)
    module_view: MatrixView | None = None  # the kernel's view by its module's own attributes (nnx), unstacked


@dataclasses.dataclass(frozen=True)
class LeafReading:
    """How :func:`read_leaf` reads a leaf: a view, or the reason there is none; and any guess the reading rests on.

    Example:
      >>> from wwjax.core._reading import read_leaf
      >>> info = LeafInfo("attn/query/kernel", ("attn", "query", "kernel"), (64, 4, 16), "float32")
      >>> reading = read_leaf(info)
      >>> reading.view.layer_type, reading.warning.split(" because")[0]
      ('attention', '3-D kernel read as an attention input projection (features, heads, head_dim)')
    """

    view: MatrixView | None
    reason: str = ""  # why the leaf is not read as matrices (when view is None)
    warning: str = ""  # the reading rests on a guess: which, and the option that would change it


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


def conv_view(ndim: int) -> MatrixView:
    """Flax's (*kernel_size, in, out)."""
    spatial = tuple(range(ndim - 2))
    return MatrixView(row_axes=(ndim - 2,), col_axes=(ndim - 1,), slice_axes=spatial, layer_type=_CONV_TYPES[ndim - 2])


def _torch_conv_view(ndim: int) -> MatrixView:
    """PyTorch's (out, in, *kernel_size)."""
    return MatrixView(row_axes=(1,), col_axes=(0,), slice_axes=tuple(range(2, ndim)), layer_type=_CONV_TYPES[ndim - 2])


def view_in_words(shape: Sequence[int], view: MatrixView) -> str:
    """The matrix view of a leaf of ``shape`` in words: how many layers and kernel positions, and which axes are rows.

    Example:
      >>> view_in_words((3, 3, 8, 16), MatrixView((2,), (3,), slice_axes=(0, 1), layer_type="conv2d"))
      '9 positions (axes 0,1) of 8x16 (rows: axis 2, cols: axis 3)'
    """
    axes = lambda group: ("axis " if len(group) == 1 else "axes ") + ",".join(map(str, group))  # noqa: E731
    ms = matrix_shape(shape, view)
    parts = []
    plural = lambda n, word: f"{n} {word}" + ("s" if n != 1 else "")  # noqa: E731
    if view.layer_axes:
        parts.append(f"{plural(ms.num_layers, 'layer')} ({axes(view.layer_axes)}) x ")
    if view.slice_axes:
        parts.append(f"{plural(ms.num_slices, 'position')} ({axes(view.slice_axes)}) of ")
    parts.append(f"{ms.rows}x{ms.cols} (rows: {axes(view.row_axes)}, cols: {axes(view.col_axes)})")
    return "".join(parts)


class ConvertedArray(np.ndarray):
    """A numpy array converted from a PyTorch tensor, that remembers the layer it came from (``Conv``, ``Linear``,
    ``Embedding``) and so how it reads as matrices, whatever its module is called. Otherwise a plain ndarray.

    Example:
      >>> kernel = ConvertedArray.of(np.zeros((3, 8, 16)), "Conv", conv_view(3))
      >>> kernel.module_type, kernel.astype(np.float64).module_view.layer_type, kernel[0].module_view
      ('Conv', 'conv1d', None)
    """

    module_type: str | None = None
    module_view: MatrixView | None = None

    @classmethod
    def of(cls, array: np.ndarray, module_type: str, module_view: MatrixView | None) -> "ConvertedArray":
        marked = np.asarray(array).view(cls)
        marked.module_type, marked.module_view = module_type, module_view
        return marked

    def __array_finalize__(self, obj):
        # A slice or a reshape makes a new array whose axes the mark may no longer describe: only an array of the
        # same shape (a copy, a dtype cast, arithmetic) keeps it.
        same = obj is not None and getattr(obj, "shape", None) == self.shape
        self.module_type = getattr(obj, "module_type", None) if same else None
        self.module_view = getattr(obj, "module_view", None) if same else None


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
