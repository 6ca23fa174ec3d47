"""``wwjax.describe``: the plan from shapes alone — the same reading ``analyze`` uses, and no eigen-solve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import wwjax
from wwjax import cli
from wwjax.io import _checkpoints
from wwjax.core import _engine
from conftest import heavy_tailed

PLAN_COLUMNS = ["path", "layer_type", "N", "M", "rf", "num_evals", "status", "reason"]


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3))(x)
        x = nn.Conv(24, (1, 1), name="proj")(x)  # a 1x1 convolution with a dense name
        x = nn.DenseGeneral((16, 8), name="mlp")(x.mean((1, 2)))  # 3-D (24, 16, 8): read by its name, with a warning
        return nn.Dense(10, name="head")(x.reshape(x.shape[0], -1))


@pytest.fixture
def no_solve(monkeypatch):
    """Any eigen-solve fails the test: describe must not need one."""
    def refuse(*args, **kwargs):
        raise AssertionError("describe ran an eigen-solve")

    monkeypatch.setattr(_engine, "compute", refuse)


def test_describe_on_shapes_is_the_plan_analyze_follows():
    x = jnp.ones((1, 6, 6, 3))
    shapes = jax.eval_shape(Net().init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda s: heavy_tailed(np.random.default_rng(0), s.shape), shapes)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_engine, "compute", lambda *a, **k: pytest.fail("describe ran an eigen-solve"))
        plan = wwjax.describe(shapes)
    table = wwjax.details(wwjax.analyze(params))
    planned = plan[plan.status == "planned"]
    analysed = table[table.status != "skipped"].drop_duplicates("path")  # one row per stacked layer there
    assert list(planned.path) == list(analysed.path)
    for column in ["layer_type", "N", "M", "rf", "num_evals"]:
        assert list(planned[column]) == list(analysed[column]), column
    assert list(plan.set_index("path").loc[table[table.status == "skipped"].path, "reason"]) == list(
        table[table.status == "skipped"].reason)
    by_path = plan.set_index("path")
    assert by_path.loc["proj/kernel", "layer_type"] == "conv2d"
    assert "dense" in by_path.loc["proj/kernel", "warning"]  # the name is said out loud, the shape decides
    assert by_path.loc["mlp/kernel", "view"] == "24 layers (axis 0) x 16x8 (rows: axis 1, cols: axis 2)"
    assert by_path.loc["mlp/kernel", "warning"].startswith("3-D kernel read as a stack of dense layers")
    assert by_path.loc["Conv_0/kernel", "view"] == "9 positions (axes 0,1) of 3x16 (rows: axis 2, cols: axis 3)"
    assert by_path.loc["Conv_0/kernel", "warning"] == "" and by_path.loc["head/kernel", "warning"] == ""
    assert wwjax.describe(params).equals(plan)  # arrays or their shapes: the same plan


def test_describe_an_nnx_abstract_model_and_options(no_solve):
    model = nnx.eval_shape(lambda: nnx.Sequential(nnx.Linear(64, 32, rngs=nnx.Rngs(0)),
                                                  nnx.LinearGeneral(32, (4, 8), rngs=nnx.Rngs(1))))
    plan = wwjax.describe(model).set_index("path")
    assert plan.loc["layers/1/kernel", "view"] == "32x32 (rows: axis 0, cols: axes 1,2)"
    assert plan.loc["layers/1/kernel", "warning"] == ""
    small = wwjax.describe(model, min_evals=64).set_index("path")
    assert small.loc["layers/0/kernel", "status"] == "skipped" and "min_evals=64" in small.loc["layers/0/kernel",
                                                                                                "reason"]


def test_describe_an_orbax_checkpoint_reads_only_its_metadata(tmp_path, monkeypatch, capsys):
    import orbax.checkpoint as ocp

    rng = np.random.default_rng(1)
    state = {"params": {"Conv_0": {"kernel": heavy_tailed(rng, (3, 3, 8, 16))},
                        "scan": {"fc": {"kernel": heavy_tailed(rng, (3, 32, 24))}}},
             "opt_state": {"mu": np.zeros((3, 3, 8, 16), np.float32)}}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "ckpt", state)
    monkeypatch.setattr(_engine, "compute", lambda *a, **k: pytest.fail("describe ran an eigen-solve"))
    monkeypatch.setattr(_checkpoints, "_restore", lambda *a, **k: pytest.fail("describe read an array"))
    # The metadata tree Orbax gives (ArrayMetadata leaves) is described as it is ...
    metadata = wwjax.describe(_checkpoints._metadata_tree(tmp_path / "ckpt")).set_index("path")
    assert metadata.loc["params/scan/fc/kernel", "warning"].startswith("3-D kernel read as a stack of dense layers")
    # ... and so is the checkpoint's path (one row for the optimizer state, not read).
    plan = wwjax.describe(tmp_path / "ckpt").set_index("path")
    assert plan.loc["params/Conv_0/kernel", "num_evals"] == 72
    assert list(plan.loc["params/scan/fc/kernel", ["num_layers", "N", "M"]]) == [3, 32, 24]
    assert plan.loc["opt_state", "reason"] == "optimizer state (not read)"
    assert cli.main(["describe", str(tmp_path / "ckpt"), "--stacked", "fc", "--csv", str(tmp_path / "plan.csv")]) == 0
    out = capsys.readouterr().out
    assert "params/scan/fc/kernel" in out and "2 leaves to analyse, 1 skipped, 0 read on a guess" in out
    assert (tmp_path / "plan.csv").read_text().startswith("path,shape,layer_type,view")
