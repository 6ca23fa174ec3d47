"""The optional analyses of :func:`wwjax.analyze`, registered with the core as contributions.

Each option plugs into the stage it changes (``wwjax.core._contributions``): the tail options and the Hill rules
(``xmin=``) replace the row fit, ``detX`` adds per-row columns in the row program, ``inverse`` transforms the ESD
before the fit, ``conv2d_fft`` plans a conv leaf as the operator it is, ``farms`` plans a leaf as its
fixed-aspect-ratio windows, ``lora`` replaces adapter factor pairs by their product's small core before the plan, and
``mp_fit`` / ``randomize`` / ``vectors`` / ``bootstrap`` add columns after the fit (``bootstrap`` an entry of the
summary too).
Registration order is the order the hooks run, the columns appear and the options are listed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wwjax.core._contributions import Contribution, register
from wwjax.core._fit import POWER_LAW
from wwjax.core._spectra import rank_tolerance
from wwjax.diagnostics import _bootstrap
from wwjax.diagnostics._conv_fft import OperatorSolver, plan_operator
from wwjax.diagnostics._detx import DetXColumns
from wwjax.diagnostics._farms import FARMS_DEFAULTS, check_analyze_farms, plan_farms
from wwjax.diagnostics._hill import XMIN_OPTIONS, check_xmin_options, hill_row_fit
from wwjax.diagnostics._inverse import invert_esd
from wwjax.diagnostics._lora import check_analyze_lora, lora_leaves
from wwjax.diagnostics._mp_randomize import add_diagnostics, check_options
from wwjax.diagnostics._tail import check_flag, check_tail_options, tail_fit
from wwjax.diagnostics._vectors import leaf_vector_metrics


def _check_fft(opts) -> None:
    check_flag(opts, "conv2d_fft")
    if isinstance(opts.fft_size, bool) or not isinstance(opts.fft_size, int) or opts.fft_size < 1:
        raise ValueError(f"fft_size must be a positive int (the input grid of conv2d_fft), got {opts.fft_size!r}")


def _check_vectors(opts) -> None:
    check_flag(opts, "vectors")
    if opts.inverse and opts.vectors:
        raise ValueError("inverse=True cannot be combined with vectors=True (the eigenvectors of 1/λ are those of λ; "
                         "run them separately)")


def _mp_randomize_columns(stage):
    if not (stage.opts.mp_fit or stage.opts.randomize):
        return None
    metrics = add_diagnostics(stage.leaves, stage.values, stage.metrics, stage.opts, method=stage.method,
                              scales=stage.scales)
    return [m["extra"] for m in metrics]


def _vector_columns(stage):
    """Eigenvector localisation, split at each row's xmin."""
    if not stage.opts.vectors:
        return None
    out = []
    for leaf, value, m, scale in zip(stage.leaves, stage.values, stage.metrics, stage.scales):
        num_tail = jnp.where(jnp.isnan(m["xmin"]), -1, jnp.sum(m["esd"] >= m["xmin"][:, None], axis=1))
        fft_size = leaf.solver.fft_size if isinstance(leaf.solver, OperatorSolver) else 0
        out.append(leaf_vector_metrics(jax.device_put(value), leaf.view, scale=scale, pool=stage.opts.pool,
                                       num_tail=num_tail, fft_size=fft_size, method=stage.method))
    return out


def _bootstrap_columns(stage):
    """``alpha_std``, ``alpha_ci_low``, ``alpha_ci_high``: every row refitted ``bootstrap`` times with its own fit."""
    opts = stage.opts
    if not opts.bootstrap:
        return None
    # The noise floor each row was fitted above: λmax times the tolerance of the solver of its shape (the engine's).
    # (eagerly on the host: an eager slice and product per leaf would each compile a small program)
    host = lambda v: v if isinstance(v, jax.core.Tracer) else np.asarray(v)  # noqa: E731
    floors = [host(m["esd"])[:, -1] * rank_tolerance(stage.method, leaf.shape.N, leaf.shape.M, m["esd"].dtype,
                                                       refined=leaf.solver is None)
              for leaf, m in zip(stage.leaves, stage.metrics)]
    return _bootstrap.bootstrap_columns(
        [m["esd"] for m in stage.metrics], stage.metrics, opts.key, opts.bootstrap, opts.bootstrap_level,
        [leaf.info.path for leaf in stage.leaves], noise_floors=floors, resample=opts.bootstrap_resample,
        interval=opts.bootstrap_interval, num_clipped=opts.num_clipped, refit=hill_row_fit(opts) or POWER_LAW,
    )


BUILTIN = (
    Contribution(
        "tail", options=dict(fix_fingers=None, max_fingers=10, finger_thresh=1.0, xmin_max=None, fit="PL"),
        check=check_tail_options, row_fit=tail_fit,
    ),
    Contribution("xmin", options=XMIN_OPTIONS, check=check_xmin_options, row_fit=hill_row_fit),
    Contribution("detX", options=dict(detX=False), check=lambda opts: check_flag(opts, "detX"),
                 row_columns=lambda opts: DetXColumns() if opts.detX else None),
    Contribution("inverse", options=dict(inverse=False), check=lambda opts: check_flag(opts, "inverse"),
                 esd_transform=lambda opts: invert_esd if opts.inverse else None),
    Contribution("conv2d_fft", options=dict(conv2d_fft=False, fft_size=32), check=_check_fft, plan=plan_operator),
    Contribution(
        "farms",
        options=dict(farms=False, farms_window=FARMS_DEFAULTS["window_size"],
                     farms_aspect_ratio=FARMS_DEFAULTS["aspect_ratio"],
                     farms_windows_per_dim=FARMS_DEFAULTS["windows_per_dim"]),
        check=check_analyze_farms, plan=plan_farms,
    ),
    Contribution("lora", options=dict(lora=False, lora_merged=False, lora_pairs=None, lora_scale=1.0),
                 check=check_analyze_lora, leaves=lora_leaves),
    Contribution(
        "mp_randomize",
        options=dict(mp_fit=False, randomize=False, key=None, trap_elements=0, fresh_r2=False),
        check=check_options, columns=_mp_randomize_columns,
    ),
    Contribution("vectors", options=dict(vectors=False), check=_check_vectors, columns=_vector_columns),
    # key= is mp_randomize's option, shared: one seed for every random column of an analysis.
    Contribution("bootstrap", options=_bootstrap.DEFAULTS, check=_bootstrap.check_options,
                 columns=_bootstrap_columns, summary=_bootstrap.summary_entries),
)

for _contribution in BUILTIN:
    register(_contribution)
