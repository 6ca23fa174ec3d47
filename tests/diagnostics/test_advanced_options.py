"""The advanced options: bad values raise errors that say what to change; results are the same under jax.jit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import wwjax
from conftest import heavy_tailed


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(fix_fingers="clip"), ValueError, "fix_fingers must be one of"),
        (dict(fix_fingers="clip_xmax", xmax=-1), ValueError, "cannot be combined with an int xmax"),
        (dict(max_fingers=0), ValueError, "max_fingers"),
        (dict(fit="E_TPL", fix_fingers="clip_xmax"), ValueError, "cannot be combined with fix_fingers='clip_xmax'"),
        (dict(fit="powerlaw"), ValueError, "fit must be one of"),
        (dict(inverse=True, vectors=True), ValueError, "inverse=True cannot be combined"),
        (dict(detX=1), TypeError, "detX must be True or False"),
        (dict(fft_size=0), ValueError, "fft_size"),
    ],
)
def test_bad_options_say_what_to_change(options, error, match):
    with pytest.raises(error, match=match):
        wwjax.analyze({"w": np.ones((16, 8), np.float32)}, **options)


@pytest.mark.slow
def test_advanced_columns_under_jit_and_eager_agree():
    params = {"dense": {"kernel": heavy_tailed(np.random.default_rng(0), (40, 24))},
              "conv": {"kernel": heavy_tailed(np.random.default_rng(1), (2, 2, 8, 12))}}  # one padded length: 32
    options = dict(fix_fingers="clip_xmax", detX=True, vectors=True, max_fingers=3)
    eager = wwjax.analyze(params, **options)
    jitted = jax.jit(lambda p: wwjax.analyze(p, **options))(params)
    for leaf in (("dense", "kernel"), ("conv", "kernel")):
        a, b = eager[leaf[0]][leaf[1]], jitted[leaf[0]][leaf[1]]
        assert set(a.extra) >= {"num_fingers", "raw_alpha", "detX_num", "detX_val", "bulk_mean_loc_ratio"}
        for name in a.extra:
            np.testing.assert_allclose(np.asarray(a.extra[name]), np.asarray(b.extra[name]), rtol=1e-5,
                                       err_msg=name)
