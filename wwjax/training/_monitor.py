"""Spectral metrics inside a compiled training loop: a small pure function and an optax monitor transform.

:func:`spectral_metrics` keeps two columns of :func:`wwjax.analyze` per layer (α and log10 λmax) and their means.
It is ``analyze`` itself, so the numbers are the ones ``wwjax.details`` shows (and WeightWatcher's); under
``jax.jit`` the columns it drops are dead code that XLA removes. :func:`monitor_spectra` computes them every
``every`` steps inside the optimizer (``lax.cond``: the other steps pay nothing), so a user logs how α evolves
without leaving the jitted step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from wwjax.core import _results
from wwjax.core._analyze import analyze
from wwjax.core._details import summary


class SpectralMetrics(NamedTuple):
    """Per analysed leaf (keyed by path), one entry per row; and the means over all rows (failed fits left out)."""

    alpha: dict[str, Float[Array, " rows"]]
    log_spectral_norm: dict[str, Float[Array, " rows"]]
    mean_alpha: Float[Array, ""]
    mean_log_spectral_norm: Float[Array, ""]


def spectral_metrics(params, xmin: str | None = None, **options) -> SpectralMetrics:
    """Per-layer power-law α and log10 spectral norm of ``params``: pure, jittable, cheap enough for every k steps.

    Args:
      params: the parameter pytree (as for :func:`wwjax.analyze`).
      xmin: None: α of WeightWatcher's KS fit (``analyze``'s). ``'median'`` / ``'peak'`` / ``'scan'``: α of the Hill
        estimator with TempBalance's / AlphaPruning's fixed xmin rule (``analyze(xmin=...)``, see
        :func:`wwjax.hill_fit`); failed fits are NaN and left out of ``mean_alpha``.
      **options: :func:`wwjax.analyze`'s options (``layers=``, ``min_evals=``, ``views=`` …).

    Example:
      >>> import jax, numpy as np
      >>> rng = np.random.default_rng(0)
      >>> params = {"Dense_0": {"kernel": rng.standard_t(3, (200, 100)).astype("float32")}}
      >>> metrics = jax.jit(spectral_metrics)(params)
      >>> list(metrics.alpha), metrics.alpha["Dense_0/kernel"].shape, bool(metrics.mean_alpha > 1)
      (['Dense_0/kernel'], (1,), True)
    """
    if xmin is not None:  # the Hill rule replaces the KS scan as analyze's row fit: one fit, not two
        options = dict(options, xmin=xmin)
    result = analyze(params, **options)
    nodes = [n for n in _results.iter_nodes(result) if isinstance(n, _results.LayerMetrics)]
    means = summary(result)
    return SpectralMetrics(
        alpha={n.path: n.alpha for n in nodes},
        log_spectral_norm={n.path: n.log_spectral_norm for n in nodes},
        mean_alpha=jnp.asarray(means["alpha"]),
        mean_log_spectral_norm=jnp.asarray(means["log_spectral_norm"]),
    )


class SpectralMonitorState(NamedTuple):
    """The optimizer state of :func:`monitor_spectra`: the step count and the latest metrics.

    ``metrics`` were measured on the params of step ``measured_at`` (0: at ``init``).
    """

    count: Int[Array, ""]
    measured_at: Int[Array, ""]
    metrics: SpectralMetrics


def monitor_spectra(every: int = 100, **options):
    """An optax transform that leaves the updates alone and keeps :func:`spectral_metrics` in its state.

    The params passed to ``update`` are measured when the step count is a multiple of ``every`` (and at
    ``init``); read them with ``optax.tree.get(opt_state, "metrics")``. Chain it anywhere:
    ``optax.chain(optax.adam(1e-3), wwjax.monitor_spectra(100))``.

    Args:
      every: measure every this many steps.
      **options: :func:`wwjax.analyze`'s options.

    Example:
      >>> import jax, numpy as np, optax
      >>> rng = np.random.default_rng(0)
      >>> params = {"Dense_0": {"kernel": rng.standard_t(3, (100, 50)).astype("float32")}}
      >>> tx = optax.chain(optax.sgd(0.1), monitor_spectra(every=2))
      >>> state = tx.init(params)
      >>> grads = jax.tree.map(np.ones_like, params)
      >>> for _ in range(3):
      ...     updates, state = jax.jit(tx.update)(grads, state, params)
      >>> int(optax.tree.get(state, "measured_at")), optax.tree.get(state, "metrics").alpha["Dense_0/kernel"].shape
      (2, (1,))
    """
    import optax

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")

    def init_fn(params):
        # Two separate buffers: a train step that donates the optimizer state must not see one array twice.
        return SpectralMonitorState(
            count=jnp.zeros((), jnp.int32), measured_at=jnp.zeros((), jnp.int32),
            metrics=spectral_metrics(params, **options),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("monitor_spectra measures the params: call tx.update(updates, state, params)")
        count = state.count + 1
        due = count % every == 0
        metrics = jax.lax.cond(due, lambda p: spectral_metrics(p, **options), lambda _: state.metrics, params)
        measured_at = jnp.where(due, count, state.measured_at)
        return updates, SpectralMonitorState(count=count, measured_at=measured_at, metrics=metrics)

    return optax.GradientTransformation(init_fn, update_fn)
