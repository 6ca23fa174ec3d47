"""``analyze(farms=True)``: every column on the FARMS ESD, the windows solved in the core's shape buckets."""

import functools
import subprocess
import sys

import jax
import numpy as np
import pytest

import wwjax
from wwjax.core._layout import MatrixView
from wwjax.diagnostics._farms import farms_spectra, farms_windows, fit_farms_rows

SMALL = dict(farms_window=16, farms_windows_per_dim=3)  # small windows: fast fits
WINDOW = dict(window_size=16, windows_per_dim=3)
DENSE = MatrixView((0,), (1,))
CONV = MatrixView((2,), (3,), slice_axes=(0, 1), layer_type="conv2d")
STACKED = MatrixView((1,), (2,), layer_axes=(0,))


def _params(rng):
    return {"dense": {"kernel": rng.standard_t(3, (70, 30))},
            "conv": {"kernel": rng.standard_t(3, (2, 2, 12, 40))},
            "stack": {"kernel": rng.standard_t(3, (2, 50, 24))}}


def _reference(value, view, scale=1.0):
    """farms_spectra + fit_farms_rows: the pure pieces, leaf by leaf."""
    shape = wwjax.core._layout.matrix_shape(value.shape, view)
    plan = farms_windows(shape.N, shape.M, **WINDOW)
    esd = farms_spectra(value, view, svd_method="fast", **WINDOW)
    return np.asarray(esd) * scale, np.asarray(fit_farms_rows(esd, plan.cols, svd_method="fast",
                                                              window_rows=plan.rows).alpha), plan


@pytest.mark.slow
def test_alpha_and_esd_equal_the_pure_farms_pieces(x64):
    params = _params(np.random.default_rng(0))
    result = wwjax.analyze(params, farms=True, stacked=["stack/*"], **SMALL)
    for name, view, scale in (("dense", DENSE, 1.0), ("conv", CONV, 0.5), ("stack", STACKED, 1.0)):
        m = result[name]["kernel"]
        esd, alpha, plan = _reference(params[name]["kernel"], view, scale)  # conv2d_norm: × 1/2, pooled
        np.testing.assert_allclose(m.esd, esd, rtol=0, atol=1e-10 * esd.max())
        np.testing.assert_allclose(m.alpha, alpha, rtol=1e-10)
        assert m.num_evals == esd.shape[1] == (4 if name == "conv" else 1) * plan.num_windows * plan.cols
    conv = result["conv"]["kernel"]
    assert (conv.N, conv.M, conv.rf) == (40, 12, 4)  # the leaf's own matrices, not the windows'
    assert result["stack"]["kernel"].alpha.shape == (2,)


@pytest.mark.slow
def test_per_position_rows_pool_each_positions_windows(x64):
    params = _params(np.random.default_rng(1))
    conv = params["conv"]["kernel"]
    m = wwjax.analyze({"conv": {"kernel": conv}}, farms=True, pool=False, conv2d_norm=False, **SMALL)["conv"]["kernel"]
    assert m.alpha.shape == (4,) and m.slice_id == (0, 1, 2, 3)
    for k, (i, j) in enumerate(np.ndindex(2, 2)):
        esd, alpha, _ = _reference(conv[i, j], DENSE)
        np.testing.assert_allclose(m.esd[k], esd[0], rtol=0, atol=1e-10 * esd.max())
        np.testing.assert_allclose(m.alpha[k], alpha[0], rtol=1e-10)


@pytest.mark.slow
def test_jit_equals_eager(x64):
    params = _params(np.random.default_rng(2))
    run = functools.partial(wwjax.analyze, farms=True, stacked=["stack/*"], **SMALL)
    eager, jitted = run(params), jax.jit(run)(params)
    for name in params:
        np.testing.assert_allclose(jitted[name]["kernel"].alpha, eager[name]["kernel"].alpha, rtol=1e-12)


@pytest.mark.slow
def test_windows_of_all_leaves_share_buckets():
    """Three leaves of three shapes, one window shape: one bucket, one batched eigen-solve of all 27 windows."""
    rng = np.random.default_rng(3)
    params = {f"d{k}": {"kernel": rng.standard_t(3, (40 + 7 * k, 20 + k)).astype(np.float32)} for k in range(3)}
    from wwjax.core import _engine
    planned = []
    original = _engine.plan_buckets
    _engine.plan_buckets = lambda *a, **k: planned.extend(original(*a, **k)) or original(*a, **k)
    try:
        wwjax.analyze(params, farms=True, **SMALL)
    finally:
        _engine.plan_buckets = original
    assert [(b.N, b.M, len(b.pieces)) for b in planned] == [(16, 16, 3)]


def test_dense_leaf_equals_the_pure_farms_pieces(x64):
    w = np.random.default_rng(5).standard_t(3, (70, 30))
    m = wwjax.analyze({"d": {"kernel": w}}, farms=True, **SMALL)["d"]["kernel"]
    esd, alpha, _ = _reference(w, DENSE)
    np.testing.assert_allclose(m.esd, esd, rtol=0, atol=1e-10 * esd.max())
    np.testing.assert_allclose(m.alpha, alpha, rtol=1e-10)
    assert (m.N, m.M, m.rf, m.num_evals) == (70, 30, 1, 9 * 16)


@pytest.mark.slow
def test_matrix_smaller_than_a_window(x64):
    """The window shrinks to the matrix' short side (aspect ratio kept), as docs/farms.md says; a matrix that holds
    no window of the aspect ratio is skipped with the fix."""
    w = np.random.default_rng(4).standard_t(3, (12, 10))
    m = wwjax.analyze({"d": {"kernel": w}}, farms=True, **SMALL)["d"]["kernel"]
    esd = np.asarray(farms_spectra(w, DENSE, svd_method="fast", **WINDOW))
    assert farms_windows(12, 10, **WINDOW).rows == 10 and m.num_evals == esd.shape[1] == 30
    np.testing.assert_allclose(m.esd, esd, rtol=0, atol=1e-10 * esd.max())
    skipped = wwjax.analyze({"d": {"kernel": w[:3, :3]}}, farms=True, farms_aspect_ratio=4.0, min_evals=0)["d"]
    assert "lower farms aspect_ratio" in skipped["kernel"].reason


def test_bad_options_say_what_to_change():
    with pytest.raises(TypeError, match="farms must be True or False"):
        wwjax.analyze({}, farms=1)
    with pytest.raises(ValueError, match="window_size must be a positive int"):
        wwjax.analyze({}, farms=True, farms_window=0)
    with pytest.raises(ValueError, match="separate analysis"):
        wwjax.analyze({}, farms=True, mp_fit=True)


MESH_CHILD = """
import jax, numpy as np, wwjax
jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(0)
params = {"dense": {"kernel": rng.standard_t(3, (70, 30))}, "conv": {"kernel": rng.standard_t(3, (2, 2, 12, 40))},
          "stack": {"kernel": rng.standard_t(3, (2, 50, 24))}}
opts = dict(farms=True, stacked=["stack/*"], farms_window=16, farms_windows_per_dim=3)
one = wwjax.analyze(params, **opts)
two = wwjax.analyze(params, mesh=jax.make_mesh((2,), ("batch",)), **opts)
for name in params:
    np.testing.assert_allclose(two[name]["kernel"].alpha, one[name]["kernel"].alpha, rtol=1e-10)
    np.testing.assert_allclose(two[name]["kernel"].esd, one[name]["kernel"].esd, rtol=1e-10, atol=1e-12)
print("ok", len(jax.devices()))
"""


@pytest.mark.slow
def test_mesh_of_2_devices_equals_one_device():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": ":".join(sys.path)}
    try:
        out = subprocess.run([sys.executable, "-c", MESH_CHILD], env=env, capture_output=True, text=True,
                             timeout=600, start_new_session=True)
    except subprocess.TimeoutExpired:
        pytest.fail("no result within 600 s (a hang)")
    assert out.returncode == 0 and "ok 2" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
