"""The detX constraint: how many of the largest eigenvalues it takes for ``det X = 1`` (WeightWatcher's ``detX``).

The ESD is rescaled to mean 1 (``r = λ·n/Σλ``); scanning down from the largest eigenvalue, the tail starts at the
first index ``i`` whose tail product ``Π_{k>=i} r_k`` falls below 1. The tail size is ``detX_num`` and its
smallest eigenvalue ``detX_val``. The product is taken as a sum of logs, so it neither overflows nor underflows.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


class DetX(NamedTuple):
    detX_num: Int[Array, ""]  # noqa: N815 (WeightWatcher's names)
    detX_val: Float[Array, ""]  # noqa: N815  the tail's smallest eigenvalue, in the ESD's units
    detX_val_rescaled: Float[Array, ""]  # noqa: N815  the same on the mean-1 scale


def detx(evals: Float[Array, " n"], num_valid: int | Int[Array, ""] | None = None) -> DetX:
    """The detX tail of one ascending ESD whose last ``num_valid`` entries are eigenvalues (zero padding in front).

    With fewer than two eigenvalues, or all equal, the tail is empty (``detX_num = 0``) as in WeightWatcher;
    when no tail product falls below 1 the whole ESD but its smallest value counts (``detX_num = n``).

    Example:
      90 eigenvalues of 0.1 and 10 of 1: the ten 1s and 26 of the 0.1s make the tail.

      >>> import jax.numpy as jnp
      >>> out = detx(jnp.concatenate([jnp.full(90, 0.1), jnp.ones(10)]))
      >>> int(out.detX_num), round(float(out.detX_val), 3)
      (36, 0.1)
    """
    size = evals.shape[0]
    n = size if num_valid is None else num_valid
    first = size - n  # index of the smallest eigenvalue
    idx = jnp.arange(size)
    valid = idx >= first
    rescaled = evals * (n / jnp.sum(jnp.where(valid, evals, 0.0)))
    log_r = jnp.where(valid, jnp.log(jnp.where(valid, rescaled, 1.0)), 0.0)
    tail_log_prod = jnp.cumsum(log_r[::-1])[::-1]  # Σ_{k>=i} ln r_k
    candidate = (idx > first) & (tail_log_prod < 0.0)
    # the largest candidate index; none: WeightWatcher's loop ends on first + 1 with the whole ESD counted
    last = jnp.max(jnp.where(candidate, idx, -1))
    num = jnp.where(last >= 0, size - last, n)
    at = jnp.where(last >= 0, last, first + 1)
    degenerate = (n < 2) | ~(evals[jnp.minimum(first, size - 1)] < evals[-1])
    num = jnp.where(degenerate, 0, num)
    at = jnp.where(degenerate, jnp.minimum(first, size - 1), at)
    return DetX(detX_num=num, detX_val=evals[at], detX_val_rescaled=rescaled[at])


@dataclasses.dataclass(frozen=True)
class DetXColumns:
    """``detX=True``'s per-row columns, computed in the core's row program after the fit (a static, hashable
    :class:`wwjax.core.RowColumns`): ``detX_num``, ``detX_val``, ``detX_val_rescaled``, ``num_ERG_spikes`` and
    ``ERG_gap`` (``detX_num`` minus the power law's ``num_pl_spikes``)."""

    def __call__(self, evals: Float[Array, " n"], num_valid: Int[Array, ""], fit) -> dict:
        d = detx(evals, num_valid)
        return dict(
            detX_num=d.detX_num,
            detX_val=d.detX_val,
            detX_val_rescaled=d.detX_val_rescaled,
            num_ERG_spikes=d.detX_num,
            ERG_gap=jnp.where(fit.ok, d.detX_num - fit.num_pl_spikes, jnp.nan).astype(evals.dtype),
        )
