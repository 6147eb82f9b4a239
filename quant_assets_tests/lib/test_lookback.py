"""Training windows in days: the rolling lookback keeps exactly the latest N days, day-bounded
walk-forward folds keep every train and test row inside their calendar windows (with equity
session gaps), and a plan made on a window maps back to the full dataset's rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.errors import SplitConfigError
from quant_assets.lib.lookback import (
    day_walk_forward,
    day_walk_forward_plan,
    default_lookback_days,
    lookback_start_row,
    shifted_plan,
)
from quant_assets.lib.ohlcv import bars_for_timeframe
from quant_assets.lib.sources.synthetic import SyntheticSource
from quant_assets.lib.splits import make_splits

T0 = datetime(2023, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def spy() -> pl.DataFrame:
    """SPY 1h bars (sessions only: nights, weekends and holidays missing) and 5-bar label spans."""
    bars = bars_for_timeframe(
        SyntheticSource(seed=1, start=T0, end=T0 + 400 * DAY), "SPY", "1h"
    ).frame.select("timestamp")
    return bars.with_columns(
        t0=pl.col("timestamp"), t1=pl.col("timestamp").shift(-5).fill_null(strategy="forward")
    )


def test_default_lookback_is_180_days_intraday_and_full_history_daily() -> None:
    assert [default_lookback_days(tf) for tf in ("5m", "1h", "4h", "1d")] == [180, 180, None, None]


def test_the_rolling_window_holds_exactly_the_latest_days(spy) -> None:
    ts = spy["timestamp"]
    first = lookback_start_row(ts, 180)
    assert (ts.slice(first) > ts[-1] - 180 * DAY).all()
    assert ts[first - 1] <= ts[-1] - 180 * DAY
    assert lookback_start_row(ts, None) == lookback_start_row(ts, 0) == 0
    assert lookback_start_row(ts, 10_000) == 0
    plan = make_splits(
        "purged_kfold", ts.len() - first, spy["t0"].slice(first), spy["t1"].slice(first), n_splits=3
    )
    shifted = shifted_plan(plan, first)
    assert shifted.dev_idx.min() == first and shifted.holdout_idx.max() == ts.len() - 1
    for f, g in zip(plan.folds, shifted.folds, strict=True):
        np.testing.assert_array_equal(g.train_idx, f.train_idx + first)
        np.testing.assert_array_equal(g.test_idx, f.test_idx + first)


@pytest.mark.parametrize("train_days", [90, None])
def test_day_walk_forward_rows_respect_the_day_bounds(spy, train_days) -> None:
    ts = spy["timestamp"]
    folds = day_walk_forward(
        ts, spy["t0"], spy["t1"], train_days=train_days, test_days=30, step_days=30
    )
    assert len(folds) >= 8 if train_days else len(folds) >= 11
    last_end = ts[-1] + timedelta(microseconds=1)
    for k, f in enumerate(folds):
        assert f.fold == k
        test_from = last_end - (len(folds) - 1 - k) * 30 * DAY - 30 * DAY
        test_ts = ts.gather(f.test_idx)
        assert (test_ts >= test_from).all() and (test_ts < test_from + 30 * DAY).all()
        # every row of the window is tested: the block is contiguous and complete
        inside = ((ts >= test_from) & (ts < test_from + 30 * DAY)).arg_true().to_numpy()
        np.testing.assert_array_equal(f.test_idx, inside)
        train_ts = ts.gather(f.train_idx)
        assert (train_ts < test_from).all()
        if train_days:
            assert (train_ts >= test_from - train_days * DAY).all()
        else:
            assert f.train_idx[0] == 0
        # purged: no training label span reaches the first test row's open
        assert (spy["t1"].gather(f.train_idx) < spy["t0"][int(f.test_idx[0])]).all()
        assert f.n_purged > 0
    # equity sessions: the test windows hold different row counts, the day bounds are fixed
    assert len({f.test_idx.size for f in folds}) > 1


def test_day_walk_forward_plan_holds_out_the_latest_rows(spy) -> None:
    plan = day_walk_forward_plan(
        spy["timestamp"], spy["t0"], spy["t1"], holdout_fraction=0.2, train_days=90, test_days=30
    )
    assert plan.scheme == "rolling_days"
    assert plan.holdout_idx.max() == spy.height - 1
    assert max(f.test_idx.max() for f in plan.folds) <= plan.dev_idx.max()
    with pytest.raises(SplitConfigError, match="no walk-forward fold"):
        day_walk_forward_plan(
            spy["timestamp"],
            spy["t0"],
            spy["t1"],
            holdout_fraction=0.2,
            train_days=500,
            test_days=30,
        )
