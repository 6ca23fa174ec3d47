"""Reading a leaf: the layout decides, names only break the ties of 3-D kernels.

:func:`read_leaf` picks a :class:`~wwjax.MatrixView` from the leaf's shape and metadata (boxed axis names, nnx
modules, the PyTorch layer a converted tensor came from); names on the key path only break the ties of 3-D kernels,
and every reading that rests on a name says so in its ``warning``. ``docs/reading-leaves.md`` has the rules as a
table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from wwjax.core._layout import (
    LeafInfo, LeafReading, MatrixView, ViewSpec, _torch_conv_view, conv_view, path_matches,
)

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
