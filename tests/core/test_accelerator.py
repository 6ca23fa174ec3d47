"""On a GPU or TPU: the golden parity and the mesh path on real accelerator devices (skipped on CPU).

Run on an accelerator machine with ``python -m pytest -q -m accelerator``; the figures of the 7B benchmark come
from ``benchmarks/bench_llama7b.py``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import wwjax
from test_parity import CONFIGS, F32_RTOL, _check_config

pytestmark = [
    pytest.mark.accelerator,
    pytest.mark.skipif(jax.default_backend() == "cpu", reason="needs a GPU or TPU backend"),
]


@pytest.mark.parametrize("svd_method", ["fast", "accurate"])
def test_golden_parity_on_the_accelerator_in_float64(x64, golden_params, svd_method):
    # GPU eigensolvers differ from LAPACK in the last bits only; the parity bound is the CPU one.
    for config in CONFIGS:
        _check_config(config, golden_params, svd_method, rtol=1e-6, exact_ranks=svd_method == "accurate")


def test_golden_parity_on_the_accelerator_in_float32(f32, golden_params):
    _check_config("default", golden_params, "accurate", rtol=F32_RTOL, exact_ranks=False)


def test_mesh_over_every_accelerator_matches_one_device(x64, golden_params):
    mesh = jax.make_mesh((len(jax.devices()),), ("batch",))
    one = wwjax.details(wwjax.analyze(golden_params))
    spread = wwjax.details(wwjax.analyze(golden_params, mesh=mesh))
    columns = ["alpha", "D", "lambda_max", "log_norm", "stable_rank", "entropy"]
    np.testing.assert_allclose(spread[columns].to_numpy(float), one[columns].to_numpy(float), rtol=1e-9)
