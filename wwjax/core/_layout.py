"""How a parameter leaf becomes matrices: the matrix view of every Flax layout.

A :class:`MatrixView` names, for each axis of a leaf, what it is:

* ``layer_axes``: stacked layers (``nn.scan`` / ``nnx.vmap``); every index is a separate layer and its own row.
* ``slice_axes``: kernel positions of a convolution; every position is one ``(in, out)`` matrix, and their
  eigenvalues are pooled into one ESD per layer (or one row per position with ``pool=False``).
* ``row_axes`` / ``col_axes``: contracted into the rows and the columns of the matrix.

:func:`read_leaf` picks a view from the leaf's shape and metadata (boxed axis names, nnx modules, the PyTorch layer a
converted tensor came from); names on the key path only break the ties of 3-D kernels, and every reading that rests
on a name says so in its ``warning``. Everything here works on shapes only, so it runs on abstract arrays
(``jax.ShapeDtypeStruct``, Orbax metadata) and tracers alike.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

LAYER_TYPES = ("dense", "embedding", "attention", "conv1d", "conv2d", "conv3d")


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
# Classification: the layout decides, names only break the ties of 3-D kernels


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
      >>> info = LeafInfo("attn/query/kernel", ("attn", "query", "kernel"), (64, 4, 16), "float32")
      >>> reading = read_leaf(info)
      >>> reading.view.layer_type, reading.warning.split(" because")[0]
      ('attention', '3-D kernel read as an attention input projection (features, heads, head_dim)')
    """

    view: MatrixView | None
    reason: str = ""  # why the leaf is not read as matrices (when view is None)
    warning: str = ""  # the reading rests on a guess: which, and the option that would change it


ViewSpec = Mapping[str, MatrixView] | Callable[[str, tuple[int, ...]], MatrixView | None] | None

# The name hints. They are looked up along the whole key path, deepest module first, and matter only for 3-D
# kernels (and to flag a 4-D/5-D kernel whose name says something else than its shape).
ATTENTION_IN_NAMES = frozenset({"query", "key", "value", "q", "k", "v", "q_proj", "k_proj", "v_proj", "wq", "wk",
                                "wv"})  # exact module names of attention input projections: (features, heads, dim)
ATTENTION_OUT_NAMES = frozenset({"out", "o", "o_proj", "out_proj", "wo", "attn_out", "output"})  # (heads, dim, out)
CONV_HINTS = ("conv",)  # substrings: Conv_0, conv1, _project_conv, depthwise_conv
DENSE_HINTS = ("dense", "linear", "mlp", "fc", "proj", "ffn", "feedforward", "lm_head", "head")  # substrings
GENERAL_HINTS = ("general", "einsum")  # DenseGeneral / Einsum: the name says the split of axes is not (in, out)
# Axis names that Flax users give a stacked-layers axis (``nn.scan``/``nnx.vmap`` with metadata); as module names
# they hint that a 3-D kernel is a stack.
LAYER_AXIS_NAMES = frozenset({"layers", "layer", "stack", "blocks", "block", "scan", "stage"})
# Leaf names that are never weight matrices.
_NON_WEIGHT_NAMES = {
    "bias": "bias",
    "scale": "normalization scale",
    "mean": "batch statistic",
    "var": "batch statistic",
    "u": "power-iteration vector",
    "sigma": "power-iteration statistic",
}
_FLAX_KERNEL_NAMES = frozenset({"kernel", "w"})  # Flax and Haiku: (*kernel_size, in, out)
_TORCH_WEIGHT_NAME = "weight"  # PyTorch and Equinox: (out, in, *kernel_size)
_CONV_TYPES = {1: "conv1d", 2: "conv2d", 3: "conv3d"}


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


def name_hint(segment: str) -> str | None:
    """What one module name suggests about a 3-D kernel: ``attention_in``, ``attention_out``, ``conv``, ``general``,
    ``dense``, ``stack`` or None. Exact attention names first, then substrings (a segment with ``conv`` is a conv).

    Example:
      >>> [name_hint(s) for s in ("q_proj", "_project_conv", "fc1", "DenseGeneral_0", "layers_3", "encoder")]
      ['attention_in', 'conv', 'dense', 'general', 'stack', None]
    """
    name = segment.lower()
    if name in ATTENTION_IN_NAMES:
        return "attention_in"
    if name in ATTENTION_OUT_NAMES:
        return "attention_out"
    if any(h in name for h in CONV_HINTS):
        return "conv"
    if any(h in name for h in GENERAL_HINTS):
        return "general"
    if any(h in name for h in DENSE_HINTS):
        return "dense"
    if name.rstrip("0123456789").rstrip("_") in LAYER_AXIS_NAMES or "scan" in name:
        return "stack"
    return None


def _segments(info: LeafInfo) -> tuple[str, ...]:
    """The key path's names, dotted keys split (a raw PyTorch state dict: ``encoder.layer.0.query.weight``)."""
    return tuple(part for key in info.keys for part in key.split(".")) or ("",)


def path_hint(info: LeafInfo) -> tuple[str | None, str]:
    """The hint of the deepest module on the leaf's path that has one (the module type first), and its name."""
    for segment in ((info.module_type,) if info.module_type else ()) + tuple(reversed(_segments(info)[:-1])):
        hint = name_hint(segment)
        if hint is not None:
            return hint, segment
    return None, ""


def conv_view(ndim: int) -> MatrixView:
    """Flax's (*kernel_size, in, out)."""
    spatial = tuple(range(ndim - 2))
    return MatrixView(row_axes=(ndim - 2,), col_axes=(ndim - 1,), slice_axes=spatial, layer_type=_CONV_TYPES[ndim - 2])


def _torch_conv_view(ndim: int) -> MatrixView:
    """PyTorch's (out, in, *kernel_size)."""
    return MatrixView(row_axes=(1,), col_axes=(0,), slice_axes=tuple(range(2, ndim)), layer_type=_CONV_TYPES[ndim - 2])


# A 3-D kernel read by its name: the view, and the layout in words.
_NAMED_3D = {
    "conv": (MatrixView((1,), (2,), slice_axes=(0,), layer_type="conv1d"), "a 1-D convolution (k, in, out)"),
    "attention_in": (MatrixView((0,), (1, 2), layer_type="attention"),
                     "an attention input projection (features, heads, head_dim)"),
    "attention_out": (MatrixView((0, 1), (2,), layer_type="attention"),
                      "an attention output projection (heads, head_dim, features)"),
    "dense": (MatrixView((1,), (2,), layer_axes=(0,)), "a stack of dense layers (layers, in, out)"),
    "stack": (MatrixView((1,), (2,), layer_axes=(0,)), "a stack of dense layers (layers, in, out)"),
}


def _change_hint(path: str, stack: bool = True) -> str:
    views = f"if it is not, pass views={{'{path}': wwjax.MatrixView(...)}}"
    return views + (f", or stacked=['{path}'] if its first axis stacks layers" if stack else "")


def _unstacked_reading(info: LeafInfo, shape: tuple[int, ...]) -> LeafReading:
    """The reading of a leaf whose stacked-layer axes (if any) are already taken off: ``shape`` is what remains."""
    name = _segments(info)[-1]
    ndim = len(shape)
    module = (info.module_type or "").lower()
    if name == "embedding" or module in {"embed", "embedding"}:
        if ndim == 2:
            return LeafReading(MatrixView((0,), (1,), layer_type="embedding"))
        return LeafReading(None, f"an embedding table must be 2-D, got shape {info.shape}")
    if ndim < 2:
        return LeafReading(None, f"a stack of {ndim}-D leaves (not weight matrices)")
    if ndim == 2:  # one matrix, whatever it is called: a transpose changes no singular value
        return LeafReading(MatrixView((0,), (1,), layer_type="dense"))
    hint, segment = path_hint(info)
    if name == _TORCH_WEIGHT_NAME and ndim in (3, 4, 5):
        return LeafReading(_torch_conv_view(ndim), warning=(
            f"{ndim}-D 'weight' read as a PyTorch convolution (out, in, *kernel_size) because of its name; "
            "wwjax.load_safetensors converts PyTorch files to Flax layouts; " + _change_hint(info.path)))
    if ndim in (4, 5) and (name in _FLAX_KERNEL_NAMES or hint == "conv"):
        view = conv_view(ndim)
        if name in _FLAX_KERNEL_NAMES and hint in (None, "conv"):
            return LeafReading(view)
        what = f"the name {segment!r} suggests a {hint} layer" if hint else f"its name {name!r} is not 'kernel'"
        return LeafReading(view, warning=(
            f"{ndim}-D read by its shape as a {view.layer_type} kernel (*kernel_size, in, out) although {what}; "
            + _change_hint(info.path)))
    if ndim == 3 and hint in _NAMED_3D:
        view, words = _NAMED_3D[hint]
        return LeafReading(view, warning=f"3-D kernel read as {words} because of the name {segment!r}; "
                                         + _change_hint(info.path, stack=not view.layer_axes))
    general = f" ({segment!r} names a DenseGeneral/Einsum, whose split of axes the name does not tell)" if (
        hint == "general") else ""
    return LeafReading(None, (
        f"cannot tell how a {ndim}-D '{name}' of shape {info.shape} is a matrix{general} (a DenseGeneral/Einsum "
        f"kernel, a fused projection or a stacked layer?); pass views={{'{info.path}': wwjax.MatrixView(...)}} "
        "or stacked=[...] to analyse it"))


def _num_leading_layer_axes(info: LeafInfo, stacked_patterns: Sequence[str]) -> int:
    """Stacked-layer axes that the user (``stacked=``) or the metadata (boxed axis names, an nnx module) declare."""
    if any(path_matches(info.path, p) for p in stacked_patterns):
        return 1
    if info.module_view is not None and len(info.shape) > info.module_view.num_axes:
        return len(info.shape) - info.module_view.num_axes  # nnx.vmap / nnx.scan over the module
    count = 0
    for axis_name in info.axis_names or ():
        if axis_name is None or str(axis_name).lower() not in LAYER_AXIS_NAMES:
            break
        count += 1
    return count


def read_leaf(info: LeafInfo, views: ViewSpec = None, stacked: Sequence[str] = ()) -> LeafReading:
    """How a leaf is read as matrices: its shape and metadata decide, names only break the ties of 3-D kernels.

    In order: a view the user passed (``views=``); stacked-layer axes that ``stacked=``, boxed axis names or an nnx
    module declare; the owning nnx module's own attributes (``Linear``, ``LinearGeneral``, ``Einsum``, ``Conv``,
    ``Embed``); then the shape: 2-D is one matrix, a 4-D or 5-D ``kernel`` is a convolution (*kernel_size, in, out),
    and only a 3-D kernel — a Conv1D, a DenseGeneral or a scanned Dense — is read by the names on its path, with a
    ``warning`` that says so.

    Example:
      >>> proj = LeafInfo("blocks/_project_conv/kernel", ("blocks", "_project_conv", "kernel"), (1, 1, 96, 24), "f")
      >>> read_leaf(proj).view.layer_type, read_leaf(proj).warning
      ('conv2d', '')
      >>> head = LeafInfo("head/kernel", ("head", "kernel"), (1, 1, 96, 24), "float32")
      >>> read_leaf(head).view.layer_type, read_leaf(head).warning[:40]
      ('conv2d', '4-D read by its shape as a conv2d kernel')
    """
    if info.shape is None:
        return LeafReading(None, "not an array")
    user = _user_view(info, views)
    if user is not None:
        user.check(info.shape, info.path)
        return LeafReading(user)
    name = _segments(info)[-1]
    if len(info.shape) < 2:
        return LeafReading(None, _NON_WEIGHT_NAMES.get(name, f"{len(info.shape)}-D leaf (not a weight matrix)"))
    if name in _NON_WEIGHT_NAMES:
        return LeafReading(None, _NON_WEIGHT_NAMES[name])
    lead = _num_leading_layer_axes(info, stacked)
    if info.module_view is not None and len(info.shape) - lead == info.module_view.num_axes:
        reading = LeafReading(info.module_view)
    else:
        reading = _unstacked_reading(info, info.shape[lead:])
    if reading.view is None or lead == 0:
        return reading
    return dataclasses.replace(reading, view=reading.view.shifted(lead, lead))


def classify_leaf(info: LeafInfo, views: ViewSpec = None, stacked: Sequence[str] = ()) -> MatrixView | str:
    """Returns the leaf's :class:`MatrixView`, or a string saying why it is not a weight matrix (see :func:`read_leaf`).

    Example:
      >>> info = LeafInfo("params/Conv_0/kernel", ("params", "Conv_0", "kernel"), (3, 3, 8, 16), "float32")
      >>> classify_leaf(info).layer_type
      'conv2d'
      >>> classify_leaf(LeafInfo("params/Dense_0/bias", ("params", "Dense_0", "bias"), (16,), "float32"))
      'bias'
    """
    reading = read_leaf(info, views, stacked)
    return reading.view if reading.view is not None else reading.reason


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

# ---------------------------------------------------------------------------------------------------------------------
# What a module says about its kernel: nnx attributes, and the PyTorch layer a converted tensor came from


def _einsum_view(equation: str, layer_type: str) -> MatrixView | None:
    """An Einsum kernel's view from its equation ``'inputs,kernel->outputs'``: kernel axes shared with the inputs
    only are contracted (rows), those shared with the outputs only are columns, and those in all three are
    independent matrices (one per index, e.g. per head)."""
    try:
        operands, output = equation.replace(" ", "").replace("...", "").split("->")
        inputs, kernel = operands.split(",")
    except ValueError:
        return None
    rows = tuple(i for i, a in enumerate(kernel) if a in inputs and a not in output)
    cols = tuple(i for i, a in enumerate(kernel) if a in output and a not in inputs)
    layers = tuple(i for i, a in enumerate(kernel) if a in inputs and a in output)
    if not rows or not cols or len(rows) + len(cols) + len(layers) != len(kernel):
        return None
    return MatrixView(rows, cols, layer_axes=layers, layer_type=layer_type)


def module_kernel_view(type_name: str, attributes: Mapping[str, Any], parent_type: str = "") -> MatrixView | None:
    """The view of a module's ``kernel`` from the module itself (an nnx ``Linear``, ``LinearGeneral``, ``Einsum``,
    ``Conv``, ``ConvTranspose``), without any stacked-layer axes; None for any other module.

    Example:
      >>> module_kernel_view("LinearGeneral", {"in_features": (4, 16), "out_features": (64,), "batch_axis": {}})
      MatrixView(row_axes=(0, 1), col_axes=(2,), slice_axes=(), layer_axes=(), layer_type='dense')
      >>> module_kernel_view("Einsum", {"einsum_str": "BTD,NDH->BTNH"}, "Attention").col_axes
      (0, 2)
    """
    layer_type = "attention" if "attention" in parent_type.lower() else "dense"
    if type_name == "Linear":
        return MatrixView((0,), (1,), layer_type=layer_type)
    if type_name == "LinearGeneral":
        as_tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x,)  # noqa: E731
        num_batch = len(attributes.get("batch_axis") or {})
        num_in = len(as_tuple(attributes.get("in_features", ())))
        num_out = len(as_tuple(attributes.get("out_features", ())))
        if not num_in or not num_out:
            return None
        rows = tuple(range(num_batch, num_batch + num_in))
        return MatrixView(rows, tuple(range(rows[-1] + 1, rows[-1] + 1 + num_out)),
                          layer_axes=tuple(range(num_batch)), layer_type=layer_type)
    if type_name == "Einsum" and isinstance(attributes.get("einsum_str"), str):
        return _einsum_view(attributes["einsum_str"], layer_type)
    if type_name in ("Conv", "ConvTranspose") and attributes.get("kernel_size") is not None:
        kernel_size = attributes["kernel_size"]
        spatial = len(kernel_size) if isinstance(kernel_size, (tuple, list)) else 1
        return conv_view(spatial + 2) if 1 <= spatial <= 3 else None
    return None


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
