"""The package's layout is its architecture: the front door re-exports each area's names, imports run one way (the
core never imports an area built on it), and optional analyses reach the core only through the registry."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

import wwjax
from wwjax.core import _contributions
from wwjax.core._contributions import ColumnsInput, Contribution
from wwjax.core._layout import LeafInfo, MatrixShape, MatrixView

PACKAGE = pathlib.Path(wwjax.__file__).parent

# Every public name and the module it lives in.
HOMES = {
    "analyze": "wwjax.core._analyze", "details": "wwjax.core._details", "summary": "wwjax.core._details",
    "CompilationCount": "wwjax.core._compilation", "count_compilations": "wwjax.core._compilation",
    "enable_compilation_cache": "wwjax.core._compilation", "MatrixView": "wwjax.core._layout",
    "path_matches": "wwjax.core._layout", "fit_power_law": "wwjax.core._powerlaw",
    "LayerMetrics": "wwjax.core._results", "SkippedLeaf": "wwjax.core._results",
    "MarchenkoPasturFit": "wwjax.diagnostics._mpfit", "fit_marchenko_pastur": "wwjax.diagnostics._mpfit",
    "jensen_shannon_distance": "wwjax.diagnostics._randomize", "smoothing_ranks": "wwjax.diagnostics._smoothing",
    "svd_sharpness": "wwjax.diagnostics._smoothing", "svd_smoothing": "wwjax.diagnostics._smoothing",
    "PowerIteration": "wwjax.training._power_iteration", "power_iteration": "wwjax.training._power_iteration",
    "top_singular": "wwjax.training._power_iteration", "SpectralMetrics": "wwjax.training._monitor",
    "SpectralMonitorState": "wwjax.training._monitor", "monitor_spectra": "wwjax.training._monitor",
    "spectral_metrics": "wwjax.training._monitor", "SpectralPenalty": "wwjax.training._penalty",
    "SpectralPenaltyState": "wwjax.training._penalty", "add_spectral_penalty": "wwjax.training._penalty",
    "spectral_penalty": "wwjax.training._penalty", "conv_operator_norm": "wwjax.training._conv_operator",
    "load_safetensors": "wwjax.io._safetensors", "load_params": "wwjax.io._formats",
    "CheckpointScan": "wwjax.io._checkpoints", "analyze_checkpoint": "wwjax.io._checkpoints",
    "scan_checkpoints": "wwjax.io._checkpoints", "describe": "wwjax.io._describe", "distances": "wwjax.io._distances",
}
# Public names added since the restructure (the α-driven methods, the Hill estimator): their homes.
HOMES |= {
    "HillFit": "wwjax.diagnostics._hill", "hill_fit": "wwjax.diagnostics._hill",
    "temperature_balance": "wwjax.training._temperature_balance",
    "TemperatureBalanceState": "wwjax.training._temperature_balance",
    "temperature_factors": "wwjax.training._temperature_balance",
    "alpha_sparsity": "wwjax.training._pruning", "sparsity_from_alpha": "wwjax.training._pruning",
    "uniform_sparsity": "wwjax.training._pruning", "prune": "wwjax.training._pruning", "Pruned": "wwjax.training._pruning",
    "wanda_scores": "wwjax.training._pruning", "keep_pruned": "wwjax.training._pruning",
    "farms_spectra": "wwjax.diagnostics._farms", "farms_alpha": "wwjax.diagnostics._farms",
    "find_lora_pairs": "wwjax.diagnostics._lora", "lora_spectra": "wwjax.diagnostics._lora",
    "LoraPair": "wwjax.diagnostics._lora",
}


def test_every_public_name_is_the_object_of_its_home_module():
    assert set(wwjax.__all__) == set(HOMES)
    for name in wwjax.__all__:
        assert getattr(wwjax, name) is getattr(importlib.import_module(HOMES[name]), name), name
        area = importlib.import_module(HOMES[name].rsplit(".", 1)[0])
        assert getattr(area, name) is getattr(wwjax, name), f"{area.__name__} does not re-export {name}"


def test_nn_submodules_still_import():
    from wwjax.nn import linen, nnx

    assert linen.MSNDense.__module__ == "wwjax.nn.linen" and nnx.MSNLinear.__module__ == "wwjax.nn.nnx"


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every wwjax module a file imports, at the top or inside a function (absolute imports only: the package has
    no relative ones)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "wwjax" or m.startswith("wwjax.")}


@pytest.mark.parametrize("area", ["core", "diagnostics", "training", "io", "nn"])
def test_imports_run_one_way(area):
    """The core imports no area built on it; training and the I/O side may use diagnostics and the core, but the
    diagnostics never import training or I/O. Nothing inside a subpackage imports the front door, cli or plot."""
    forbidden = {
        "core": ("wwjax.diagnostics", "wwjax.training", "wwjax.io", "wwjax.nn"),
        "diagnostics": ("wwjax.training", "wwjax.io", "wwjax.nn"),
        "training": ("wwjax.io",),
        "io": ("wwjax.training", "wwjax.nn"),
        "nn": ("wwjax.io", "wwjax.diagnostics"),
    }[area] + ("wwjax.cli", "wwjax.plot", "wwjax.demo")
    arrows = []
    for path in sorted((PACKAGE / area).glob("*.py")):
        for module in _imported_modules(path):
            if module == "wwjax" or any(module == f or module.startswith(f + ".") for f in forbidden):
                arrows.append(f"{path.relative_to(PACKAGE.parent)} -> {module}")
    assert not arrows, "imports against the layering:\n" + "\n".join(arrows)


def test_core_names_no_option_of_a_contribution():
    """The core reads contributed options only through the registry: no core module mentions them by name."""
    names = set(_contributions.option_defaults()) - {"key"}
    for path in sorted((PACKAGE / "core").glob("*.py")):
        text = path.read_text()
        for name in names:
            assert f"opts.{name}" not in text and f"options.{name}" not in text, f"{path.name} reads {name}"


def test_no_comment_fences_remain():
    for name in ("__init__.py", "core/_analyze.py", "core/_options.py", "core/_engine.py"):
        assert "# ---" not in (PACKAGE / name).read_text(), name


def _model(rng, width: int) -> dict:
    # with a pair of LoRA-named factors: lora=False leaves them two ordinary matrices (no core, no extra program)
    return {"conv": {"kernel": rng.standard_t(4, (3, 3, 5, width)).astype(np.float32)},
            "dense": {"kernel": rng.standard_t(4, (3 * width, width)).astype(np.float32),
                      "lora_a": rng.standard_t(4, (3 * width, 9)).astype(np.float32),
                      "lora_b": rng.standard_t(4, (9, width)).astype(np.float32)}}


def test_options_that_are_off_compile_nothing_more():
    """The default analysis compiles the same programs with every built-in contribution registered as with none:
    two models of the same structure and fresh shapes, one analysed each way (the registered one with the
    estimators' options, xmin= and bootstrap=, given explicitly off: their defaults)."""
    rng = np.random.default_rng(0)
    with wwjax.count_compilations() as registered:
        wwjax.analyze(_model(rng, 41), xmin=None, bootstrap=0, bootstrap_level=0.9)
    saved = _contributions.contributions()
    try:
        for contribution in saved:
            _contributions.unregister(contribution.name)
        with wwjax.count_compilations() as bare:
            wwjax.analyze(_model(rng, 43))
    finally:
        for contribution in saved:
            _contributions.register(contribution)
    assert [c.name for c in _contributions.contributions()] == [c.name for c in saved]
    assert registered.count == bare.count > 0


def _top_eval(stage: ColumnsInput):
    if not stage.opts.top_eval:
        return None
    return [{"top_eval": m["esd"][:, -1] * stage.opts.top_eval} for m in stage.metrics]


def test_a_registered_contribution_adds_an_option_and_a_column():
    def check(opts):
        if not isinstance(opts.top_eval, (int, float)):
            raise TypeError(f"top_eval must be a number, got {opts.top_eval!r}")

    def summary(nodes):  # the summary hook: an entry from the contribution's own column, when it is there
        tops = [float(n.extra["top_eval"].max()) for n in nodes if "top_eval" in n.extra]
        return {"top_eval_max": max(tops)} if tops else None

    _contributions.register(Contribution("top_eval", options={"top_eval": 0}, check=check, columns=_top_eval,
                                         summary=summary))
    try:
        w = np.random.default_rng(1).standard_t(3, (120, 60)).astype(np.float32)
        result = wwjax.analyze({"w": w}, top_eval=2)
        node = result["w"]
        largest = np.linalg.svd(w.astype(np.float64), compute_uv=False)[0] ** 2
        np.testing.assert_allclose(np.asarray(node.extra["top_eval"]), [2 * largest], rtol=1e-4)
        np.testing.assert_allclose(wwjax.summary(result)["top_eval_max"], 2 * largest, rtol=1e-4)
        assert "top_eval" not in wwjax.analyze({"w": w})["w"].extra
        assert "top_eval_max" not in wwjax.summary(wwjax.analyze({"w": w}))
        with pytest.raises(TypeError, match="top_eval must be a number"):
            wwjax.analyze({"w": w}, top_eval="big")
        with pytest.raises(TypeError, match=r"analyze\(\) takes .*min_evals.*mp_fit.*top_eval"):
            wwjax.analyze({"w": w}, top_evals=1)
        with pytest.raises(ValueError, match="already taken"):
            _contributions.register(Contribution("clash", options={"mp_fit": True}))
    finally:
        _contributions.unregister("top_eval")
    with pytest.raises(TypeError, match="unknown option 'top_eval'"):
        wwjax.analyze({"w": w}, top_eval=2)


def test_two_row_fits_at_once_are_refused():
    from wwjax.core._fit import PowerLawRowFit

    _contributions.register(Contribution("other_fit", options={"other_fit": False},
                                         row_fit=lambda opts: PowerLawRowFit() if opts.other_fit else None))
    try:
        w = np.random.default_rng(2).standard_t(3, (80, 40)).astype(np.float32)
        with pytest.raises(ValueError, match="'tail' and 'other_fit' each replace the row_fit"):
            wwjax.analyze({"w": w}, fit="TPL", other_fit=True)
        plain = wwjax.analyze({"w": w})["w"]
        same = wwjax.analyze({"w": w}, other_fit=True)["w"]  # an equal strategy: the same numbers
        np.testing.assert_array_equal(np.asarray(plain.alpha), np.asarray(same.alpha))
        assert bool(jnp.isfinite(plain.alpha).all())
    finally:
        _contributions.unregister("other_fit")


@dataclasses.dataclass(frozen=True)
class _Halves:
    """A toy MatricesTransform: each (N, M) matrix becomes its top and bottom halves (k = 2)."""

    def __call__(self, mats):
        n = mats.shape[-2] // 2
        return jnp.stack([mats[..., :n, :], mats[..., n : 2 * n, :]], axis=2).reshape(
            mats.shape[0], -1, n, mats.shape[-1])

    def shape(self, shape):
        return MatrixShape(shape.num_layers, 2 * shape.num_slices, shape.N // 2, shape.M)


def _halves_plan(leaf, opts):
    return dataclasses.replace(leaf, transform=_Halves()) if opts.halves else leaf


def _sum_leaves(entries, opts):
    """A toy leaves hook: ``a`` and ``b`` replaced by a derived ``a_plus_b``."""
    if not opts.sum_ab:
        return None
    values = {info.path: value for info, value, _ in entries}
    out = [(info, value, "summed" if info.path in ("a", "b") else skip) for info, value, skip in entries]
    value = jnp.asarray(values["a"]) + jnp.asarray(values["b"])
    info = LeafInfo("a_plus_b", ("a_plus_b",), tuple(value.shape), value.dtype, module_view=MatrixView((0,), (1,)))
    return out + [(info, value, None)]


def test_the_leaves_hook_and_a_matrices_transform_are_generic(x64):
    """A toy of each: a derived leaf is analysed like the matrix it holds; a transformed leaf's rows pool the
    spectra of its transformed matrices, while it reports its own N, M."""
    _contributions.register(Contribution("halves", options={"halves": False}, plan=_halves_plan))
    _contributions.register(Contribution("sum_ab", options={"sum_ab": False}, leaves=_sum_leaves))
    try:
        rng = np.random.default_rng(3)
        a, b = rng.standard_t(3, (40, 12)), rng.standard_t(3, (40, 12))
        summed = wwjax.analyze({"a": a, "b": b}, sum_ab=True)
        assert summed["a"].reason == summed["b"].reason == "summed"
        np.testing.assert_allclose(summed["a_plus_b"].esd[0], np.linalg.svd(a + b, compute_uv=False)[::-1] ** 2,
                                   rtol=1e-10)
        halves = wwjax.analyze({"w": a}, halves=True)["w"]
        expected = np.sort(np.concatenate([np.linalg.svd(h, compute_uv=False) ** 2 for h in (a[:20], a[20:])]))
        np.testing.assert_allclose(halves.esd[0], expected, rtol=1e-10)
        assert (halves.N, halves.M, halves.num_evals) == (40, 12, 24)
    finally:
        _contributions.unregister("halves")
        _contributions.unregister("sum_ab")
