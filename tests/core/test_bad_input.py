"""Bad weights never abort an analysis; bad arguments raise errors that say what to do."""

from __future__ import annotations

import numpy as np
import pytest

import wwjax
from conftest import heavy_tailed


@pytest.fixture(scope="module")
def good():
    return heavy_tailed(np.random.default_rng(0), (60, 40))


def _table(params, **options):
    return wwjax.details(wwjax.analyze(params, **options)).set_index("path")


def test_bad_leaves_become_rows_and_the_rest_is_unaffected(good):
    nan = good.copy()
    nan[3, 4] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    u, v = np.arange(1, 61, dtype=np.float32), np.arange(1, 41, dtype=np.float32)
    params = {
        "good": {"kernel": good},
        "nan": {"kernel": nan},
        "inf": {"kernel": inf},
        "zeros": {"kernel": np.zeros((60, 40), np.float32)},
        "rank1": {"kernel": np.outer(u, v)},
        "ints": {"kernel": np.ones((60, 40), np.int32)},
        "bools": {"kernel": np.ones((60, 40), bool)},
        "text": {"kernel": "not a weight"},
        "empty": {"kernel": np.zeros((0, 40), np.float32)},
        "half": {"kernel": good.astype(np.float16)},
    }
    table = _table(params)
    assert table.loc["good/kernel", "status"] == "success"
    for path in ("nan/kernel", "inf/kernel"):
        assert table.loc[path, "status"] == "failed" and "NaN or Inf" in table.loc[path, "reason"]
        assert np.isnan(table.loc[path, "alpha"]) and np.isnan(table.loc[path, "lambda_max"])
    for path in ("zeros/kernel", "rank1/kernel"):
        assert table.loc[path, "status"] == "failed" and "fewer than 2 eigenvalues" in table.loc[path, "reason"]
    assert table.loc["rank1/kernel", "matrix_rank"] == 1
    assert table.loc["ints/kernel", "reason"] == "integer dtype"
    assert table.loc["bools/kernel", "reason"] == "boolean dtype"
    assert table.loc["text/kernel", "reason"] == "not an array"
    assert "zero-size" in table.loc["empty/kernel", "reason"]
    assert table.loc["half/kernel", "status"] == "success"  # fp16 is upcast
    alone = _table({"good": {"kernel": good}})
    np.testing.assert_array_equal(table.loc["good/kernel", ["alpha", "D", "norm"]].astype(float),
                                  alone.loc["good/kernel", ["alpha", "D", "norm"]].astype(float))


def test_empty_tree_gives_an_empty_table_and_nan_summary():
    table = wwjax.details(wwjax.analyze({}))
    assert len(table) == 0 and "alpha" in table.columns
    assert all(np.isnan(v) for v in wwjax.summary(wwjax.analyze({})).values())


def test_size_limits_skip_with_a_reason_that_says_how_to_lift_them(good):
    table = _table({"w": {"kernel": good}}, min_evals=41)
    assert table.loc["w/kernel", "status"] == "skipped"
    assert "lower min_evals" in table.loc["w/kernel", "reason"]
    assert "raise max_N" in _table({"w": {"kernel": good}}, max_N=59).loc["w/kernel", "reason"]
    assert "raise max_evals" in _table({"w": {"kernel": good}}, max_evals=39).loc["w/kernel", "reason"]
    assert _table({"w": {"kernel": good}}, max_evals=40).loc["w/kernel", "status"] == "success"


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"min_eval": 3}, TypeError, "did you mean 'min_evals'"),
        ({"min_evals": "8"}, TypeError, "min_evals must be an int"),
        ({"min_evals": 20, "max_evals": 10}, ValueError, "must not exceed"),
        ({"svd_method": "lapack"}, ValueError, "svd_method must be one of"),
        ({"xmax": "force"}, ValueError, "nonzero int"),
        ({"pool": "yes"}, TypeError, "pool must be True or False"),
        ({"layers": 3}, TypeError, "layers takes a path pattern"),
        ({"views": {"w": "dense"}}, TypeError, "MatrixView"),
    ],
)
def test_bad_options_raise_clear_errors(good, options, error, message):
    with pytest.raises(error, match=message):
        wwjax.analyze({"w": {"kernel": good}}, **options)


def test_xmax_clipping_more_than_half_is_a_failed_row(good):
    row = _table({"w": {"kernel": good}}, xmax=30).loc["w/kernel"]
    assert row.status == "failed" and "more than half" in row.reason
