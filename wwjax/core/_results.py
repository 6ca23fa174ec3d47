"""The result pytree of :func:`wwjax.analyze`: one node per parameter leaf, keyed like the params.

:class:`LayerMetrics` holds jax arrays (one entry per row: per stacked layer, and per kernel position with
``pool=False``) and static facts (path, type, N, M …) as pytree metadata, so a result can leave ``jax.jit`` and
live inside a training step. :class:`SkippedLeaf` records a leaf that was not analysed and why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
from jaxtyping import Array, Float, Int

# Row status codes (the ``status_code`` array) and what they mean.
STATUS_SUCCESS = 0
STATUS_FIT_FAILED = 1
STATUS_NON_FINITE = 2
STATUS_XMAX_TOO_LARGE = 3
STATUS_REASONS = {
    STATUS_SUCCESS: "",
    STATUS_FIT_FAILED: "power-law fit failed: fewer than 2 eigenvalues above 1e-5 (a zero or rank-1 matrix?)",
    STATUS_NON_FINITE: "the weights contain NaN or Inf",
    STATUS_XMAX_TOO_LARGE: "xmax clips more than half of the eigenvalues",
}

METRIC_FIELDS = (
    "alpha",
    "alpha_weighted",
    "D",
    "xmin",
    "xmax",
    "sigma",
    "num_pl_spikes",
    "lambda_max",
    "log_spectral_norm",
    "norm",
    "log_norm",
    "log_alpha_norm",
    "stable_rank",
    "matrix_rank",
    "entropy",
    "rank_loss",
    "weak_rank_loss",
    "sv_max",
    "sv_min",
    "status_code",
    "esd",
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerMetrics:
    """Per-row metrics of one analysed leaf (WeightWatcher's column names and meanings).

    Arrays have a leading row axis of length ``len(layer_index)``; ``esd`` is ``(rows, num_evals)``, ascending.
    Failed rows hold NaN in every α-based column (see ``status_code``).

    Example:
      >>> import numpy as np, wwjax
      >>> kernel = np.random.default_rng(0).standard_t(3, size=(200, 100)).astype("float32")
      >>> node = wwjax.analyze({"dense": {"kernel": kernel}})["dense"]["kernel"]
      >>> node.layer_type, node.N, node.M, node.alpha.shape, node.esd.shape
      ('dense', 200, 100, (1,), (1, 100))
    """

    alpha: Float[Array, " rows"]
    alpha_weighted: Float[Array, " rows"]
    D: Float[Array, " rows"]
    xmin: Float[Array, " rows"]
    xmax: Float[Array, " rows"]
    sigma: Float[Array, " rows"]
    num_pl_spikes: Int[Array, " rows"]
    lambda_max: Float[Array, " rows"]
    log_spectral_norm: Float[Array, " rows"]
    norm: Float[Array, " rows"]
    log_norm: Float[Array, " rows"]
    log_alpha_norm: Float[Array, " rows"]
    stable_rank: Float[Array, " rows"]
    matrix_rank: Int[Array, " rows"]
    entropy: Float[Array, " rows"]
    rank_loss: Int[Array, " rows"]
    weak_rank_loss: Int[Array, " rows"]
    sv_max: Float[Array, " rows"]
    sv_min: Float[Array, " rows"]
    status_code: Int[Array, " rows"]
    esd: Float[Array, "rows num_evals"]
    path: str = dataclasses.field(metadata=dict(static=True))
    layer_type: str = dataclasses.field(metadata=dict(static=True))
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))
    N: int = dataclasses.field(metadata=dict(static=True))
    M: int = dataclasses.field(metadata=dict(static=True))
    rf: int = dataclasses.field(metadata=dict(static=True))
    num_evals: int = dataclasses.field(metadata=dict(static=True))
    layer_index: tuple = dataclasses.field(metadata=dict(static=True))  # per row: stacked-layer index or None
    slice_id: tuple = dataclasses.field(metadata=dict(static=True))  # per row: kernel position or None (pooled)
    # Optional columns (randomized ESD, MP fit, …): ``{column name: (rows,) array}``, shown by ``details`` after
    # the default columns in insertion order. Arrays with more axes (e.g. eigenvectors) are kept but not tabled.
    extra: dict = dataclasses.field(default_factory=dict)
    # How the leaf was read rests on a guess (a 3-D kernel read by its name …): which, and the option that changes it.
    layout_warning: str = dataclasses.field(metadata=dict(static=True), default="")

    @property
    def spectral_norm(self) -> Float[Array, " rows"]:
        """WeightWatcher's ``spectral_norm``: the largest eigenvalue of WᵀW (= ``lambda_max``)."""
        return self.lambda_max


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SkippedLeaf:
    """A parameter leaf that was not analysed, and why.

    Example:
      >>> import numpy as np, wwjax
      >>> skipped = wwjax.analyze({"norm": {"scale": np.ones(64)}})["norm"]["scale"]
      >>> skipped.path, skipped.shape, skipped.reason
      ('norm/scale', (64,), 'normalization scale')
    """

    path: str = dataclasses.field(metadata=dict(static=True))
    reason: str = dataclasses.field(metadata=dict(static=True))
    shape: tuple | None = dataclasses.field(metadata=dict(static=True), default=None)
    layer_type: str | None = dataclasses.field(metadata=dict(static=True), default=None)
    warning: str = dataclasses.field(metadata=dict(static=True), default="")  # a guess the reading rested on


def _is_node(x) -> bool:
    return isinstance(x, (LayerMetrics, SkippedLeaf))


def iter_nodes(result) -> Iterator[LayerMetrics | SkippedLeaf]:
    """Every :class:`LayerMetrics` and :class:`SkippedLeaf` of a result, in pytree order."""
    for node in jax.tree_util.tree_leaves(result, is_leaf=_is_node):
        if _is_node(node):
            yield node


def nest(items: list[tuple[tuple[str, ...], object]]) -> dict:
    """``[(keys, value)]`` → a nested dict keyed like the params (``result['params']['Dense_0']['kernel']``)."""
    tree: dict = {}
    for keys, value in items:
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1] if keys else ""] = value
    return tree
