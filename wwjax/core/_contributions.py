"""The extension point of :func:`wwjax.analyze`: optional analyses plug into the core stages through a registry.

A :class:`Contribution` is a bundle of hooks, each optional, each called by one stage of the core without the core
knowing what the contribution is (``docs/architecture.md`` has the contract and an example):

* ``options`` / ``check``: option names and defaults that :func:`wwjax.analyze` accepts (read as ``opts.<name>``),
  and a check that raises a TypeError/ValueError saying what to change;
* ``leaves`` (stage 0, before the plan): ``leaves(entries, opts) -> entries | None``: the whole leaf list
  ``[(LeafInfo, value, skip reason | None)]`` with some leaves replaced or joined by derived ones (LoRA factor pairs
  by the small matrix of their product); traced like the rest, so ``jax.jit(analyze)`` still works;
* ``plan`` (stage 1, host): ``plan(leaf, opts) -> leaf | str``: a different plan of a leaf (another shape, or a
  ``solver`` that makes its matrices instead of a shape bucket, or a ``transform`` of its matrices that the shape
  buckets solve, see :class:`MatricesTransform`), or the reason to skip it;
* ``row_fit`` / ``row_columns`` / ``esd_transform`` (stage 5, inside the jitted, vmapped row program): given the
  options, a hashable strategy object or ``None``;
* ``columns`` (after stage 5, host-orchestrated): ``columns(stage: ColumnsInput) -> list[dict] | None``: per leaf, the
  columns added to ``LayerMetrics.extra``;
* ``summary`` (:func:`wwjax.summary`): ``summary(nodes: list[LayerMetrics]) -> dict | None``: entries added to the
  means, from the contribution's own columns (``None`` when the result has none of them).

A hook returns ``None`` (or the leaf unchanged) when its options are off, so that an option that is off costs nothing:
the default analysis compiles the same programs whatever is registered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol


class MatrixSolver(Protocol):
    """A contribution's own solve of a planned leaf (instead of a shape bucket): hashable, static.

    Called as ``solver(value, view, method, dtype)``; returns ``(evals (count, M) ascending, rank (count,),
    finite (count,))`` for the leaf's ``num_layers·num_slices`` matrices, as a bucket's solve does. The core scales
    such a leaf's eigenvalues by 1 (``conv2d_norm`` does not apply) and counts its rank at the solver's floor.
    """

    def __call__(self, value, view, method: str, dtype) -> tuple:
        ...


class MatricesTransform(Protocol):
    """A contribution's map of a planned leaf's matrices to the matrices that are solved: hashable, static.

    Called inside the bucket's compiled program on ``as_matrices(value, view)`` ``(L, S, N, M)``; returns
    ``(L, S·k, n, m)`` (``n >= m``), each of the ``S`` matrices becoming ``k`` consecutive ones (FARMS: its
    windows). ``shape(MatrixShape) -> MatrixShape`` gives the result's shape from the leaf's, on the host. The new
    matrices join the shape buckets of their ``(n, m)`` across all leaves; a row pools the ``S·k`` matrices of a layer
    (``pool=False``: the ``k`` of one kernel position). The leaf's reported ``N``, ``M``, ``rf`` stay its own.
    """

    def __call__(self, mats):
        ...

    def shape(self, shape: Any) -> Any:
        ...


@dataclasses.dataclass(frozen=True)
class ColumnsInput:
    """What a ``columns`` hook receives, once the rows of every analysed leaf are fitted.

    ``leaves[i]`` is the plan of leaf ``i`` (``.info``, ``.view``, ``.shape``, ``.solver``), ``values[i]`` its array
    (a device array; sharded if the params were), ``metrics[i]`` its per-row columns so far (``esd`` (rows, n)
    ascending, ``alpha``, ``xmin``, ``status_code``, ``extra`` …), ``scales[i]`` the ``conv2d_norm`` factor its
    eigenvalues were multiplied by, ``method`` the resolved solver (``gram`` or ``svd``).
    """

    leaves: Sequence[Any]
    values: Sequence[Any]
    metrics: Sequence[dict]
    opts: Any
    method: str
    scales: Sequence[float]


@dataclasses.dataclass(frozen=True)
class Contribution:
    """An optional analysis: its options and the hooks the core stages call (every hook may be ``None``).

    Example:
      >>> import jax.numpy as jnp
      >>> top = Contribution(
      ...     "top_eval", options={"top_eval": False},
      ...     columns=lambda s: [{"top": m["esd"][:, -1]} for m in s.metrics] if s.opts.top_eval else None)
      >>> top.options
      {'top_eval': False}
    """

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Callable[[Any], None] | None = None
    leaves: Callable[[list, Any], list | None] | None = None
    plan: Callable[[Any, Any], Any] | None = None
    row_fit: Callable[[Any], Any] | None = None
    row_columns: Callable[[Any], Any] | None = None
    esd_transform: Callable[[Any], Any] | None = None
    columns: Callable[[ColumnsInput], list[dict] | None] | None = None
    summary: Callable[[Sequence[Any]], Mapping[str, Any] | None] | None = None


_REGISTRY: dict[str, Contribution] = {}


def register(contribution: Contribution) -> Contribution:
    """Adds ``contribution`` to every later analysis (re-registering a name replaces it, in place).

    Its option names must not clash with the core's or another contribution's.
    """
    from wwjax.core._options import core_option_names

    taken = set(core_option_names())
    for other in _REGISTRY.values():
        if other.name != contribution.name:
            taken.update(other.options)
    clash = sorted(taken & set(contribution.options))
    if clash:
        raise ValueError(f"contribution {contribution.name!r}: option(s) {clash} are already taken; rename them")
    _REGISTRY[contribution.name] = contribution
    return contribution


def unregister(name: str) -> None:
    """Removes the contribution registered as ``name`` (a KeyError if there is none)."""
    del _REGISTRY[name]


def contributions() -> tuple[Contribution, ...]:
    """The registered contributions, in registration order (the order their hooks run and their columns appear)."""
    return tuple(_REGISTRY.values())


def option_defaults() -> dict[str, Any]:
    """Every contributed option and its default, in registration order."""
    return {name: default for c in _REGISTRY.values() for name, default in c.options.items()}


def single_strategy(hook: str, opts) -> Any:
    """The one strategy the contributions give for ``hook`` (``row_fit``, ``esd_transform``) under ``opts``, or
    ``None``; two at once is an error naming both options' owners."""
    given = [(c.name, s) for c in _REGISTRY.values() if getattr(c, hook) is not None
             for s in [getattr(c, hook)(opts)] if s is not None]
    if len(given) > 1:
        raise ValueError(f"options of {' and '.join(repr(n) for n, _ in given)} each replace the {hook}; "
                         "choose one of them")
    return given[0][1] if given else None


def row_columns(opts) -> tuple:
    """Every contribution's per-row columns strategy under ``opts`` (those that are on), in registration order."""
    return tuple(s for c in _REGISTRY.values() if c.row_columns is not None for s in [c.row_columns(opts)]
                 if s is not None)


__all__ = ["ColumnsInput", "Contribution", "MatricesTransform", "MatrixSolver",
           "contributions", "option_defaults", "register",
           "row_columns", "single_strategy", "unregister"]
