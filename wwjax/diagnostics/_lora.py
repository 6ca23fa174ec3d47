"""LoRA adapters: the spectrum of ``ΔW = A·B`` from its factors, without forming ``ΔW``; and the merged ``W + ΔW``.

A LoRA adapter keeps a low-rank update as two factors next to a frozen base. Layouts recognised by path (one path
segment, exact match; paths are split at ``/`` and ``.``):

* ``lora_a`` / ``lora_b``: ``flax.nnx.LoRA`` and ``nnx.LoRALinear`` (``lora_a: (in, r)``, ``lora_b: (r, out)``,
  ``y = x·A·B``); the base is the sibling ``kernel`` (``LoRALinear``: ``…/kernel`` next to ``…/lora/``) or
  ``base_module/kernel``.
* ``lora_A`` / ``lora_B``: PEFT (``lora_A.weight: (r, in)``, ``lora_B.weight: (out, r)``, ``ΔW = B·A`` in PyTorch's
  ``(out, in)``; the adapter name segment, ``lora_A.default.weight``, is kept in the pairing); the base is
  ``base_layer.weight`` or the sibling ``weight``.
* ``lora_down`` / ``lora_up``: the kohya/diffusers names, PyTorch orientation like PEFT.

``pairs={"my_a": "my_b"}`` names other segments. Which factor orientation a pair has is read from the shapes (the
contracted axis is the rank, the smaller shared one); a tie falls back to the names' convention.

The nonzero singular values of ``ΔW = A·B`` (``A: in×r``, ``B: r×out``) are those of an ``r×r`` matrix: with
``A = Q_A R_A`` and ``Bᵀ = Q_B R_B`` (reduced QR), ``ΔW = Q_A (R_A R_Bᵀ) Q_Bᵀ`` and ``Q_A``, ``Q_B`` have orthonormal
columns. :func:`lora_core` returns ``R_A R_Bᵀ`` as a ``(L, 1, r, r)`` stack, read by the engine's solvers like any
small matrix. Factors with leading axes (a scanned stack of adapters) give one row per layer.

Example:
  >>> import numpy as np
  >>> rng = np.random.default_rng(0)
  >>> a, b = rng.normal(size=(64, 4)), rng.normal(size=(4, 32))
  >>> evals = lora_spectra(a, b, "flax")
  >>> dense = np.linalg.svd(a @ b, compute_uv=False) ** 2
  >>> np.allclose(np.sort(np.asarray(evals[0])), np.sort(dense[:4]), rtol=1e-4)
  True
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from wwjax.core._spectra import compute_dtype, resolve_method, slice_spectra
from wwjax.core._tree import flatten_params

# (A segment, B segment, orientation when the shapes cannot tell): "flax" = A (in, r), B (r, out), ΔW = A·B;
# "torch" = A (r, in), B (out, r), ΔW = B·A.
LORA_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("lora_a", "lora_b", "flax"),
    ("lora_A", "lora_B", "torch"),
    ("lora_down", "lora_up", "torch"),
)
LAYOUTS = ("flax", "torch")


@dataclasses.dataclass(frozen=True)
class LoraPair:
    """One adapter found in a tree: the paths of its factors (and of its base, when found) and their orientation."""

    name: str  # the A path with the A segment replaced by "lora_delta"
    a_path: str
    b_path: str
    layout: str  # "flax" or "torch"
    rank: int
    base_path: str | None = None


def _as_flax(a, b, layout: str):
    """The factors as ``A (…, in, r)``, ``B (…, r, out)`` whatever their layout (``ΔWᵀ`` has the same spectrum)."""
    if layout == "flax":
        return a, b
    if layout == "torch":
        return jnp.swapaxes(a, -1, -2), jnp.swapaxes(b, -1, -2)
    raise ValueError(f"LoRA layout must be one of {LAYOUTS}, got {layout!r}")


def lora_core(a: Float[Array, "... p q"], b: Float[Array, "... s t"], layout: str) -> Float[Array, "L 1 k l"]:
    """The small matrix ``R_A·R_Bᵀ`` whose singular values are the nonzero ones of ``ΔW``, as a ``(L, 1, k, l)`` stack
    (``L`` = the product of the leading axes, ``k = min(in, r)``, ``l = min(out, r)``). Pure and jittable.

    Example:
      >>> import jax.numpy as jnp
      >>> lora_core(jnp.ones((3, 8, 2)), jnp.ones((3, 2, 5)), "flax").shape
      (3, 1, 2, 2)
    """
    a, b = _as_flax(a, b, layout)
    if a.shape[-1] != b.shape[-2] or a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"LoRA factors do not multiply: A {a.shape} · B {b.shape} (read as layout {layout!r})")
    r_a = jnp.linalg.qr(a, mode="r")  # (…, min(in, r), r)
    r_b = jnp.linalg.qr(jnp.swapaxes(b, -1, -2), mode="r")  # (…, min(out, r), r)
    core = r_a @ jnp.swapaxes(r_b, -1, -2)
    core = core.reshape(-1, 1, *core.shape[-2:])
    return core if core.shape[-2] >= core.shape[-1] else jnp.swapaxes(core, -1, -2)


def lora_delta(a, b, layout: str) -> Float[Array, "... n m"]:
    """The dense ``ΔW`` in the base's own orientation: ``A·B`` (flax, ``(in, out)``) or ``B·A`` (torch, ``(out, in)``).

    Example:
      >>> import jax.numpy as jnp
      >>> lora_delta(jnp.ones((2, 4)), jnp.ones((3, 2)), "torch").shape
      (3, 4)
    """
    if layout == "flax":
        return a @ b
    if layout == "torch":
        return b @ a
    raise ValueError(f"LoRA layout must be one of {LAYOUTS}, got {layout!r}")


@functools.partial(jax.jit, static_argnames=("layout", "method"))
def _delta_spectra(a, b, layout: str, method: str):
    core = lora_core(a, b, layout)
    return slice_spectra(core.reshape(-1, *core.shape[-2:]), method=method).evals


def lora_spectra(a, b, layout: str, *, svd_method: str = "accurate") -> Float[Array, "L k"]:
    """The nonzero ESD of ``ΔW`` per adapter (``min(in, out, r)`` eigenvalues, squared singular values, ascending),
    from the factors alone: two QRs and an ``r×r`` solve instead of an ``in×out`` one.

    Example:
      >>> import jax.numpy as jnp
      >>> [round(float(x), 4) for x in lora_spectra(jnp.eye(3)[:, :2] * 2.0, jnp.eye(2, 4), "flax")[0]]
      [4.0, 4.0]
    """
    dtype = compute_dtype(None)
    return _delta_spectra(jnp.asarray(a, dtype), jnp.asarray(b, dtype), layout, resolve_method(svd_method))


def merged_matrices(base, a, b, layout: str, *, scale: float = 1.0) -> Float[Array, "L 1 N M"]:
    """``W + scale·ΔW`` as a ``(L, 1, N, M)`` stack (long side first), dense: the merged layer has full rank.

    ``scale`` is PEFT's ``lora_alpha / r`` (not stored with the weights); ``nnx.LoRA`` applies none.

    Example:
      >>> import jax.numpy as jnp
      >>> merged_matrices(jnp.zeros((5, 3)), jnp.ones((5, 2)), jnp.ones((2, 3)), "flax").shape
      (1, 1, 5, 3)
    """
    delta = lora_delta(a, b, layout)
    if delta.shape != base.shape:
        raise ValueError(f"the LoRA update has shape {delta.shape} (layout {layout!r}), the base {base.shape}")
    merged = (base + scale * delta).reshape(-1, 1, *base.shape[-2:])
    return merged if merged.shape[-2] >= merged.shape[-1] else jnp.swapaxes(merged, -1, -2)


# ---------------------------------------------------------------------------------------------------------------------
# Finding adapters by path (host side, shapes only)


def _segments(path: str) -> tuple[str, ...]:
    return tuple(s for s in re.split(r"[/.]", path) if s)


def infer_layout(a_shape, b_shape, default: str, path: str = "") -> tuple[str, int]:
    """(layout, rank) of a pair of factor shapes: the contracted axis is the rank, the smaller one when both
    orientations multiply; ``default`` on a tie.

    Example:
      >>> infer_layout((768, 8), (8, 768), "torch")
      ('flax', 8)
    """
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    options = []
    if len(a_shape) >= 2 and a_shape[:-2] == b_shape[:-2]:
        if a_shape[-1] == b_shape[-2]:
            options.append(("flax", a_shape[-1]))
        if b_shape[-1] == a_shape[-2]:
            options.append(("torch", a_shape[-2]))
    if not options:
        raise ValueError(
            f"LoRA factors at {path!r} do not multiply: A {a_shape}, B {b_shape} (expected A (in, r) and "
            "B (r, out), or PyTorch's A (r, in) and B (out, r)); rename them or pass pairs= with the right segments"
        )
    options.sort(key=lambda option: (option[1], option[0] != default))
    return options[0]


def _base_candidates(prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
    names = [("kernel",), ("base_module", "kernel"), ("base_layer", "weight"), ("base_layer", "kernel"), ("weight",)]
    candidates = [prefix + n for n in names]
    if prefix and prefix[-1] == "lora":  # nnx.LoRALinear: …/kernel next to …/lora/lora_a
        candidates += [prefix[:-1] + n for n in names]
    return candidates


def find_lora_pairs(params, pairs: Mapping[str, str] | None = None) -> list[LoraPair]:
    """Every LoRA adapter of ``params`` by path, with its base when one is found next to it.

    Args:
      params: any parameter pytree (nnx State, linen dict, a flat dict of converted PyTorch tensors).
      pairs: more ``{A segment: B segment}`` names to recognise (orientation from the shapes).

    Example:
      >>> import numpy as np
      >>> tree = {"q": {"kernel": np.zeros((16, 8)), "lora": {"lora_a": np.zeros((16, 2)), "lora_b": np.zeros((2, 8))}}}
      >>> [(p.name, p.layout, p.rank, p.base_path) for p in find_lora_pairs(tree)]
      [('q/lora/lora_delta', 'flax', 2, 'q/kernel')]
    """
    return [pair for pair, _ in _pairs_in([info for info, _, _ in flatten_params(params)], pairs)]


def _leaf_values(params) -> dict[str, np.ndarray]:
    return {info.path: value for info, value, _ in flatten_params(params) if info.shape is not None}


def lora_tree_spectra(
    params,
    *,
    merged: bool = False,
    scale: float = 1.0,
    pairs: Mapping[str, str] | None = None,
    svd_method: str = "accurate",
) -> dict[str, Float[Array, "L k"]]:
    """The ESD of every adapter's ``ΔW`` (``{pair name: (L, r) evals}``); with ``merged=True`` also that of
    ``W + scale·ΔW`` under ``name.replace("lora_delta", "lora_merged")`` (an error if no base is found).

    Example:
      >>> import numpy as np
      >>> rng = np.random.default_rng(0)
      >>> tree = {"q": {"kernel": rng.normal(size=(16, 8)),
      ...               "lora": {"lora_a": rng.normal(size=(16, 2)), "lora_b": rng.normal(size=(2, 8))}}}
      >>> {k: v.shape for k, v in lora_tree_spectra(tree, merged=True).items()}
      {'q/lora/lora_delta': (1, 2), 'q/lora/lora_merged': (1, 8)}
    """
    values = _leaf_values(params)
    dtype = compute_dtype(None)
    method = resolve_method(svd_method)
    found = find_lora_pairs(params, pairs)
    # Adapters of one shape are one batched call (stacked on a new leading axis), not one call each.
    groups: dict[tuple, list[LoraPair]] = {}
    for pair in found:
        key = (np.shape(values[pair.a_path]), np.shape(values[pair.b_path]), pair.layout)
        groups.setdefault(key, []).append(pair)
    delta = {}
    for (_, _, layout), members in groups.items():
        a = jnp.stack([jnp.asarray(values[p.a_path], dtype) for p in members])
        b = jnp.stack([jnp.asarray(values[p.b_path], dtype) for p in members])
        evals = _delta_spectra(a, b, layout, method).reshape(len(members), -1, min(a.shape[-2:] + b.shape[-2:]))
        delta.update({p.name: evals[i] for i, p in enumerate(members)})
    out = {}
    for pair in found:
        out[pair.name] = delta[pair.name]
        if merged:
            if pair.base_path is None:
                raise ValueError(
                    f"no base weight found next to the LoRA adapter {pair.a_path!r} (looked for kernel, "
                    "base_module/kernel, base_layer/weight, weight); analyse ΔW alone with merged=False"
                )
            a, b = jnp.asarray(values[pair.a_path], dtype), jnp.asarray(values[pair.b_path], dtype)
            stack = merged_matrices(jnp.asarray(values[pair.base_path], dtype), a, b, pair.layout, scale=scale)
            evals = slice_spectra(stack.reshape(-1, *stack.shape[-2:]), method=method).evals
            out[pair.name.replace("lora_delta", "lora_merged")] = evals
    return out


# ---------------------------------------------------------------------------------------------------------------------
# analyze(lora=True): the adapter pairs replaced by derived leaves, before the plan


def _pairs_in(infos, pairs: Mapping[str, str] | None) -> list[tuple[LoraPair, str]]:
    """The adapters among ``infos`` (LeafInfo of the array leaves), each with the A segment it was found by."""
    known = list(LORA_PAIRS) + [(a, b, "flax") for a, b in (pairs or {}).items()]
    leaves = {_segments(info.path): (info.path, info.shape) for info in infos if info.shape is not None}
    found = []
    for segments, (path, shape) in leaves.items():
        for a_token, b_token, default in known:
            if a_token not in segments:
                continue
            at = segments.index(a_token)
            b_segments = segments[:at] + (b_token,) + segments[at + 1 :]
            if b_segments not in leaves:
                raise ValueError(f"LoRA factor {path!r} has no {b_token!r} partner; pass pairs= naming its segments")
            b_path, b_shape = leaves[b_segments]
            layout, rank = infer_layout(shape, b_shape, default, path)
            base = next((leaves[c][0] for c in _base_candidates(segments[:at]) if c in leaves), None)
            name = "/".join(segments[:at] + ("lora_delta",) + segments[at + 1 :])
            found.append((LoraPair(name, path, b_path, layout, rank, base), a_token))
    return found


def _renamed(keys: tuple[str, ...], token: str, new: str) -> tuple[str, ...]:
    """``keys`` with the first path segment ``token`` (in a key, between ``/`` and ``.``) replaced by ``new``."""
    for i, key in enumerate(keys):
        parts = re.split(r"([/.])", key)
        if token in parts:
            parts[parts.index(token)] = new
            return keys[:i] + ("".join(parts),) + keys[i + 1 :]
    raise AssertionError(f"{token!r} not in {keys}")


def _matrix_view(ndim: int):
    from wwjax.core._layout import MatrixView

    return MatrixView((ndim - 2,), (ndim - 1,), layer_axes=tuple(range(ndim - 2)), layer_type="dense")


@functools.partial(jax.jit, static_argnames=("layout",))
def _core_leaf(a, b, layout: str):
    core = lora_core(a, b, layout)
    return core.reshape(*a.shape[:-2], *core.shape[-2:])


@functools.partial(jax.jit, static_argnames=("layout",))
def _merged_leaf(base, a, b, layout: str, scale):
    delta = lora_delta(a, b, layout)
    if delta.shape != base.shape:
        raise ValueError(f"the LoRA update has shape {delta.shape} (layout {layout!r}), the base {base.shape}")
    return base + scale * delta


def check_analyze_lora(opts) -> None:
    """The checks of ``analyze(lora=..., lora_merged=..., lora_pairs=..., lora_scale=...)``."""
    for flag in ("lora", "lora_merged"):
        if not isinstance(getattr(opts, flag), bool):
            raise TypeError(f"{flag} must be True or False, got {getattr(opts, flag)!r}")
    pairs = opts.lora_pairs
    if pairs is not None and not (isinstance(pairs, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in pairs.items())):
        raise TypeError(f"lora_pairs must map A segments to B segments (e.g. {{'down': 'up'}}), got {pairs!r}")
    if pairs and not (opts.lora or opts.lora_merged):
        raise ValueError("lora_pairs names adapter factors for lora=True or lora_merged=True; turn one of them on")
    if isinstance(opts.lora_scale, bool) or not isinstance(opts.lora_scale, (int, float)):
        raise TypeError(f"lora_scale must be a number (PEFT's lora_alpha / r), got {opts.lora_scale!r}")


def lora_leaves(entries: list, opts) -> list | None:
    """The ``leaves`` hook of ``analyze(lora=True)``: each adapter's two factor leaves are skipped (the reason names
    where they are analysed) and joined by derived leaves: ``…/lora_delta/…`` (the ``r×r`` core whose eigenvalues
    are the nonzero ones of ``ΔW``, with ``lora=True``) and ``…/lora_merged/…`` (``W + lora_scale·ΔW``, with
    ``lora_merged=True``), at the A factor's path with its A segment renamed. Traceable (under ``jax.jit``)."""
    if not (opts.lora or opts.lora_merged):
        return None
    from wwjax.core._layout import LeafInfo

    usable = [info for info, _, skip in entries if skip is None]
    found = _pairs_in(usable, opts.lora_pairs)
    if not found:
        return None
    index = {info.path: k for k, (info, _, _) in enumerate(entries)}
    dtype = compute_dtype(None)
    out = list(entries)
    derived: dict[int, list] = {}
    for pair, token in found:
        a_info, a, _ = entries[index[pair.a_path]]
        b_info, b, _ = entries[index[pair.b_path]]
        a, b = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        made = []
        if opts.lora:
            value = _core_leaf(a, b, pair.layout)
            made.append((_renamed(a_info.keys, token, "lora_delta"), value))
        if opts.lora_merged:
            if pair.base_path is None:
                raise ValueError(
                    f"no base weight found next to the LoRA adapter {pair.a_path!r} (looked for kernel, "
                    "base_module/kernel, base_layer/weight, weight); analyse ΔW alone with lora_merged=False")
            base = jnp.asarray(entries[index[pair.base_path]][1], dtype)
            value = _merged_leaf(base, a, b, pair.layout, jnp.asarray(opts.lora_scale, dtype))
            made.append((_renamed(a_info.keys, token, "lora_merged"), value))
        where = " and ".join("/".join(keys) for keys, _ in made)
        for info in (a_info, b_info):
            out[index[info.path]] = (info, entries[index[info.path]][1],
                                     f"LoRA factor (rank {pair.rank}): analysed as {where}")
        last = max(index[pair.a_path], index[pair.b_path])
        derived.setdefault(last, []).extend(
            (LeafInfo("/".join(keys), keys, tuple(value.shape), value.dtype, module_type="LoRA",
                      module_view=_matrix_view(value.ndim)), value, None) for keys, value in made)
    return [item for k, entry in enumerate(out) for item in [entry] + derived.get(k, [])]
