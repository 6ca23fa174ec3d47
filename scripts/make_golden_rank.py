"""Golden fixtures for small singular values: WeightWatcher's rank, entropy and detX on rank-deficient weights.

The weights are float32, in Flax layout, built so that their singular values are genuinely tiny (not float32
rounding noise): exact rank deficiency (a duplicated channel, a zeroed channel) and *graded* matrices, whose columns
are scaled by factors spread down to 1e-12 (a column scaled by 1e-12 is stored to float32's relative precision, so
its singular value is about 1e-12·σmax, not lost). Such slices are what a trained conv net holds (dead or duplicated
filters), and what a Gram matrix cannot resolve: it squares the condition number.

Writes, under ``tests/golden/``:

* ``rank_weights.npz``: the weights, keyed by a '/'-joined Flax path;
* ``ww_rank_<config>.csv``: ``WeightWatcher.analyze(...)`` details (every WeightWatcher column plus ``path``) for
  the defaults, ``detX=True`` and ``detX=True, pool=False``;
* ``rank_metadata.json``: versions, seeds, recipes, the singular-value spread of every case.

Oracle environment and numerics: as for ``make_golden.py`` (CPU only: WeightWatcher's float64 SciPy SVD of the
float32 weights). Run from the repository root::

    ww-oracle/bin/python scripts/make_golden_rank.py
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import platform
import sys
from pathlib import Path

import numpy as np
import scipy
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as mg  # noqa: E402

import weightwatcher as ww  # noqa: E402

CONFIGS: dict[str, dict] = {
    "default": {},
    "detx": {"detX": True},
    "detx_pool_false": {"detX": True, "pool": False},
}


def graded(shape, low: float, axis: int = -1):
    """N(0, 1/fan_in) with the entries along ``axis`` scaled by factors log-spaced from 1 down to ``low``."""
    def make(rng):
        w = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), size=shape)
        scale_shape = [1] * len(shape)
        scale_shape[axis] = shape[axis]
        return w * np.logspace(0.0, np.log10(low), shape[axis]).reshape(scale_shape)
    return make


def duplicated(shape, copies: int, axis: int):
    """N(0, 1/fan_in) whose last ``copies`` channels along ``axis`` (-2: inputs, -1: outputs, the smaller of the
    two) repeat the first ones: rank deficiency ``copies`` in every matrix (every kernel position of a conv)."""
    def make(rng):
        w = np.moveaxis(rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), size=shape), axis, 0)
        w[-copies:] = w[:copies]
        return np.moveaxis(w, 0, axis)
    return make


def strong_then_graded(shape, strong: int, low: float):
    """``strong`` output columns of N(0, 1/fan_in), then columns scaled from 0.1 down to ``low``: detX's tail
    reaches into the small singular values."""
    def make(rng):
        w = rng.normal(0.0, 1.0 / np.sqrt(shape[0]), size=shape)
        w[:, strong:] *= np.logspace(-1.0, np.log10(low), shape[1] - strong)
        return w
    return make


def flat_top_tiny_tail(shape, tiny: int, scale: float):
    """Orthonormal output columns (equal singular values 1) and ``tiny`` Gaussian ones scaled by ``scale``: the
    detX tail product of the flat top stays above 1 until the first tiny eigenvalue, where detX lands."""
    def make(rng):
        q, _ = np.linalg.qr(rng.normal(size=(shape[0], shape[1] - tiny)))
        return np.concatenate([q, scale * rng.normal(0.0, 1.0 / np.sqrt(shape[0]), size=(shape[0], tiny))], axis=1)
    return make


def conv_mixed(shape):
    """A conv whose kernel positions differ: one with zeroed input channels (exact rank loss in that slice), one
    scaled by 1e-9 (resolved, counted in the pooled rank), one by 1e-16 (below the pooled rank threshold), one
    graded down to 1e-12, the rest Gaussian."""
    def make(rng):
        w = rng.normal(0.0, 1.0 / np.sqrt(np.prod(shape[:-1])), size=shape)
        w[1, 1, shape[2] // 2 :, :] = 0.0
        w[0, 0] *= 1e-9
        w[0, 1] *= 1e-16
        w[2, 2] *= np.logspace(0.0, -12.0, shape[3])
        return w
    return make


CASES: list[mg.Case] = [
    mg._case("graded_dense/kernel", "dense", (256, 96), lambda s: graded(s, 1e-12), 2001,
             "N(0, 1/256), output columns scaled log-spaced 1 .. 1e-12"),
    mg._case("graded_wide/kernel", "dense", (64, 200), lambda s: graded(s, 1e-12, axis=0), 2002,
             "N(0, 1/64), input rows scaled log-spaced 1 .. 1e-12; N=200 from the output side"),
    mg._case("duplicated_dense/kernel", "dense", (128, 64), lambda s: duplicated(s, 8, -1), 2003,
             "N(0, 1/128), last 8 output columns copy the first 8: rank 56 of M=64"),
    mg._case("duplicated_wide/kernel", "dense", (64, 160), lambda s: duplicated(s, 6, -2), 2004,
             "N(0, 1/64), last 6 input rows copy the first 6: rank 58 of M=64, N=160 from the output side"),
    mg._case("detx_tail/kernel", "dense", (300, 100), lambda s: strong_then_graded(s, 70, 1e-12), 2005,
             "70 N(0, 1/300) output columns, then 30 scaled 0.1 .. 1e-12: detX reaches the small values"),
    mg._case("detx_tiny/kernel", "dense", (200, 64), lambda s: flat_top_tiny_tail(s, 4, 1e-9), 2010,
             "60 orthonormal output columns, 4 N(0, 1/200) columns scaled by 1e-9: detX lands on a 1e-18·λmax"),
    mg._case("conv_duplicated/kernel", "conv", (3, 3, 32, 48), lambda s: duplicated(s, 3, -2), 2006,
             "N(0, 1/fan_in), last 3 input channels copy the first 3 at every position: rank loss 3 x 9"),
    mg._case("conv_graded/kernel", "conv", (3, 3, 64, 32), lambda s: graded(s, 1e-12), 2007,
             "N(0, 1/fan_in), output channels scaled log-spaced 1 .. 1e-12 at every position"),
    mg._case("conv_mixed/kernel", "conv", (3, 3, 16, 40), conv_mixed, 2008,
             "N(0, 1/fan_in); position (1,1): input channels 8.. zeroed; (0,0) x 1e-9; (0,1) x 1e-16; "
             "(2,2) output channels graded 1 .. 1e-12"),
    mg._case("ordinary/kernel", "dense", (192, 128), mg.gaussian, 2009, "N(0, 1/192): nothing doubtful"),
]


def make_weights() -> dict[str, np.ndarray]:
    weights = {}
    for case in CASES:
        w = np.ascontiguousarray(case.make(np.random.default_rng(case.seed)), dtype=np.float32)
        assert w.shape == case.shape, (case.key, w.shape)
        weights[case.key] = w
    return weights


def spread(w: np.ndarray) -> list[float]:
    """Per matrix (kernel position), the smallest singular value over the largest, in float64."""
    mats = w.reshape(-1, *w.shape[-2:]) if w.ndim == 4 else w[None]
    out = []
    for mat in mats.astype(np.float64):
        sv = np.linalg.svd(mat, compute_uv=False)
        out.append(float(sv.min() / sv.max()) if sv.max() > 0 else 0.0)
    return out


def main() -> None:
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    weights = make_weights()
    np.savez_compressed(mg.GOLDEN_DIR / "rank_weights.npz", **weights)
    model = torch.nn.Module()
    for case in CASES:
        model.add_module(case.module_name, mg.torch_layer(case, weights[case.key]))
    longname_to_path = {c.module_name: c.key for c in CASES}
    for name, kwargs in CONFIGS.items():
        details = ww.WeightWatcher(model=model).analyze(**kwargs)
        mg.write_csv(mg.with_path(details, longname_to_path), f"ww_rank_{name}.csv")
    mg.write_json({
        "versions": {
            "weightwatcher": ww.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "weightwatcher_dist": importlib.metadata.version("weightwatcher"),
        },
        "date": datetime.date.today().isoformat(),
        "numerics": "CPU only: WeightWatcher's float64 SciPy SVD of float32 weights",
        "configs": {f"ww_rank_{name}.csv": kwargs for name, kwargs in CONFIGS.items()},
        "cases": {c.key: {"kind": c.kind, "shape": list(c.shape), "seed": c.seed, "content": c.content,
                          "min_over_max_sv": [f"{x:.3g}" for x in spread(weights[c.key])]} for c in CASES},
        "rng": "numpy.random.default_rng(seed) per case",
    }, "rank_metadata.json")


if __name__ == "__main__":
    main()
