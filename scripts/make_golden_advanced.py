"""Golden fixtures for wwjax's advanced diagnostics, from the real WeightWatcher.

Runs ``WeightWatcher.analyze`` with ``fix_fingers``, ``fit='TPL'`` and ``'E_TPL'``, ``detX``, ``vectors``,
``inverse`` (pooled and ``pool=False``) and ``SVDSmoothing`` on the golden weights of ``scripts/make_golden.py``
(same cases, same torch layers), and writes under ``tests/golden/``:

* ``ww_adv_<config>.csv``: the details table, every WeightWatcher column plus ``path``;
* ``ww_adv_smoothing.csv``: per layer and smoothing method, WeightWatcher's rank choice (the number of nonzero
  singular values it leaves per matrix) and the singular values of its smoothed weight.

Oracle environment: as for ``make_golden.py``, and ``powerlaw<2``: with powerlaw 2.0 every fit WeightWatcher sends
to the powerlaw package (``xmin_peak``, TPL) fails silently, so install ``pip install "powerlaw==1.5"`` into the
oracle environment (or a directory put first on ``PYTHONPATH``). Run from the repository root::

    ww-oracle/bin/python scripts/make_golden_advanced.py
"""

from __future__ import annotations

import copy
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as mg  # noqa: E402

import powerlaw  # noqa: E402
import weightwatcher as ww  # noqa: E402

CONFIGS: dict[str, dict] = {
    "clip_xmax": {"fix_fingers": "clip_xmax"},
    "clip_xmax_pool_false": {"fix_fingers": "clip_xmax", "pool": False},
    "xmin_peak": {"fix_fingers": "xmin_peak", "pl_package": "powerlaw"},
    "tpl": {"fit": "TPL", "pl_package": "powerlaw"},
    "e_tpl": {"fit": "E_TPL", "pl_package": "powerlaw"},
    "tpl_all": {"fit": "TPL", "pl_package": "powerlaw"},  # every golden layer (slow: ~5 minutes)
    "detx": {"detX": True},
    "detx_pool_false": {"detX": True, "pool": False},
    "vectors": {"vectors": True},
    "inverse": {"inverse": True},
    "inverse_pool_false": {"inverse": True, "pool": False},
}
TPL_CASES = ("dense_tall/kernel", "dense_wide/kernel", "heavy/kernel", "trained_query/kernel")
SMOOTHING = {"svd_50": dict(method="svd", percent=0.5), "svd_m10": dict(method="svd", percent=-0.1),
             "detX": dict(method="detX"), "alpha_min": dict(method="alpha_min")}
SMOOTHING_CASES = ("dense_square/kernel", "dense_wide/kernel", "heavy/kernel", "trained_query/kernel",
                   "conv3x3_down/kernel")


def build_model(weights, cases):
    model = torch.nn.Module()
    for case in cases:
        model.add_module(case.module_name, mg.torch_layer(case, weights[case.key]))
    return model


def smoothing_rows(weights, cases) -> list[dict]:
    rows = []
    keep = [c for c in cases if c.key in SMOOTHING_CASES]
    for name, kwargs in SMOOTHING.items():
        model = build_model(weights, keep)
        smoothed = ww.WeightWatcher().SVDSmoothing(model=copy.deepcopy(model), **kwargs)
        for case in keep:
            w = getattr(smoothed, case.module_name).weight.detach().numpy().astype(np.float64)
            mats = w.transpose(2, 3, 0, 1).reshape(-1, *w.shape[:2]) if w.ndim == 4 else w[None]
            for position, mat in enumerate(mats):
                sv = np.linalg.svd(mat, compute_uv=False)
                rows.append(dict(method=name, path=case.key, position=position,
                                 rank=int(np.sum(sv > 1e-5 * sv[0])),
                                 sv=" ".join(f"{s:.17g}" for s in sv)))
    return rows


def main() -> None:
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    assert powerlaw.__version__.startswith("1."), "needs powerlaw<2 (see the module docstring)"
    weights = mg.make_weights()
    cases = mg.CASES
    longname_to_path = {c.module_name: c.key for c in cases}
    for name, kwargs in CONFIGS.items():
        chosen = [c for c in cases if c.key in TPL_CASES] if name in ("tpl", "e_tpl") else cases
        details, _ = mg.analyze(build_model(weights, chosen), **kwargs)
        mg.write_csv(mg.with_path(details, longname_to_path), f"ww_adv_{name}.csv")
    mg.write_csv(pd.DataFrame(smoothing_rows(weights, cases)), "ww_adv_smoothing.csv")


if __name__ == "__main__":
    main()
