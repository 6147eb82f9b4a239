"""Tests of make_signals on hand-worked rows: sides at the thresholds, strength, ATR stop/take levels."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.signals import apply_ensemble, make_signals

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TS = pl.Series("ts", [T0 + timedelta(hours=i) for i in range(5)], dtype=pl.Datetime("us", "UTC"))
CLOSE = [100.0, 100.0, 200.0, 50.0, 80.0]
ATR = [2.0, 2.0, 4.0, 1.0, 3.0]
PROB = [0.55, 0.5499, 0.9, 0.3, 1.0]


def test_long_only_by_default_hand_worked() -> None:
    out = make_signals(TS, CLOSE, ATR, PROB)
    assert out.columns == [
        "timestamp",
        "prob_up",
        "side",
        "strength",
        "entry_price",
        "stop_loss",
        "take_profit",
    ]
    assert out.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert out["timestamp"].to_list() == TS.to_list()
    assert out["side"].to_list() == [1, 0, 1, 0, 1]  # 0.3 is not a short without threshold_short
    # (p - 0.55) / 0.45 for longs
    assert out["strength"].to_list() == pytest.approx([0.0, 0.0, 0.35 / 0.45, 0.0, 1.0])
    assert out["entry_price"].to_list() == CLOSE
    # long: close - 1.0 * atr, close + 1.75 * atr
    assert out["stop_loss"].to_list() == [98.0, None, 196.0, None, 77.0]
    assert out["take_profit"].to_list() == [103.5, None, 207.0, None, 85.25]


def test_short_side_mirrors_levels() -> None:
    out = make_signals(
        TS, CLOSE, ATR, PROB, threshold_long=0.6, threshold_short=0.3, sl_mult=2.0, tp_mult=3.0
    )
    assert out["side"].to_list() == [0, 0, 1, -1, 1]
    row = out.row(3, named=True)
    # short at 50 with atr 1: stop 50 + 2 * 1, take 50 - 3 * 1, strength (0.3 - 0.3) / 0.3
    assert row["stop_loss"] == 52.0 and row["take_profit"] == 47.0
    assert row["strength"] == pytest.approx(0.0)
    assert out.row(2, named=True)["stop_loss"] == 192.0
    assert out.row(2, named=True)["take_profit"] == 212.0
    # prob exactly at the short threshold is short, just above it flat
    edge = make_signals(TS[:2], [10.0, 10.0], [1.0, 1.0], [0.3, 0.3001], threshold_short=0.3)
    assert edge["side"].to_list() == [-1, 0]


def test_missing_inputs_make_the_bar_flat() -> None:
    out = make_signals(
        TS[:3],
        np.array([100.0, 100.0, 100.0]),
        pl.Series([math.nan, 2.0, None]),
        np.array([0.9, math.nan, 0.9]),
    )
    assert out["side"].to_list() == [0, 0, 0]
    assert out["strength"].to_list() == [0.0, 0.0, 0.0]
    assert out["stop_loss"].null_count() == 3 and out["take_profit"].null_count() == 3
    assert out["prob_up"].to_list() == [0.9, None, 0.9]


def test_vectorised_over_many_bars_matches_the_rule() -> None:
    rng = np.random.default_rng(7)
    n = 10_000
    ts = pl.datetime_range(T0, T0 + timedelta(hours=n - 1), "1h", eager=True, time_zone="UTC")
    close = rng.uniform(50, 150, n)
    atr = rng.uniform(0.5, 3.0, n)
    prob = rng.uniform(0, 1, n)
    out = make_signals(ts, close, atr, prob, threshold_long=0.6, threshold_short=0.35)
    side = out["side"].to_numpy()
    np.testing.assert_array_equal(side, np.where(prob >= 0.6, 1, np.where(prob <= 0.35, -1, 0)))
    long = side == 1
    np.testing.assert_allclose(out["stop_loss"].to_numpy()[long], close[long] - atr[long])
    np.testing.assert_allclose(out["take_profit"].to_numpy()[long], close[long] + 1.75 * atr[long])
    strength = out["strength"].to_numpy()
    assert strength.min() >= 0.0 and strength.max() <= 1.0
    assert np.all(strength[side == 0] == 0.0)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="atr has 2 values, timestamps have 5"):
        make_signals(TS, CLOSE, [1.0, 2.0], PROB)
    with pytest.raises(ValueError, match="threshold_short"):
        make_signals(TS, CLOSE, ATR, PROB, threshold_short=0.6)
    with pytest.raises(ValueError, match="atr must be >= 0, got -1.0 at row 1"):
        make_signals(TS, CLOSE, [1.0, -1.0, 1.0, 1.0, 1.0], PROB)
    with pytest.raises(ValueError, match="sl_mult"):
        make_signals(TS, CLOSE, ATR, PROB, sl_mult=0.0)


def test_breakeven_and_default_threshold() -> None:
    from quant_assets.lib.signals import breakeven_probability, long_threshold

    assert breakeven_probability(1.75, 1.0) == pytest.approx(1 / 2.75)
    assert long_threshold(1.75, 1.0) == pytest.approx(1 / 2.75 + 0.05)


def test_position_changes_hold_for_the_horizon_then_exit() -> None:
    from quant_assets.lib.signals import position_changes

    ts = [T0 + timedelta(hours=i) for i in range(10)]
    side = [0, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    frame = pl.DataFrame(
        {
            "timestamp": ts,
            "side": side,
            "stop_loss": [None if s == 0 else 90.0 + i for i, s in enumerate(side)],
            "take_profit": [None if s == 0 else 110.0 + i for i, s in enumerate(side)],
        },
        schema_overrides={"side": pl.Int8},
    )
    out = position_changes(frame, horizon=3)
    # long at 1 (held through 3), refreshed at 4 (held through 6), flat row at 7
    assert out["timestamp"].to_list() == [ts[1], ts[4], ts[7]]
    assert out["side"].to_list() == [1, 1, 0]
    assert out["stop_loss"].to_list() == [91.0, 94.0, None]
    assert out["take_profit"].to_list() == [111.0, 114.0, None]


def test_choose_long_threshold_picks_the_profitable_region_on_oof_rows() -> None:
    from quant_assets.lib.signals import choose_long_threshold

    rng = np.random.default_rng(0)
    prob = rng.uniform(0, 1, 20_000)
    # trades only pay above 0.7 in probability: the threshold must land there
    ret = np.where(prob > 0.7, 0.004, -0.002) + rng.normal(0, 0.002, prob.size)
    threshold = choose_long_threshold(prob, ret, cost=0.0005)
    assert 0.69 <= threshold <= 0.75
    # no edge anywhere: the fallback
    assert choose_long_threshold(prob, -np.abs(ret), fallback=0.77) == 0.77
    # too few rows above every threshold: the fallback
    assert choose_long_threshold(prob[:10], ret[:10], min_trades=30, fallback=0.6) == 0.6


def test_apply_ensemble_replaces_side_and_size_and_mirrors_levels_for_shorts() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    ts = pl.Series([t0 + timedelta(hours=i) for i in range(4)])
    champion = make_signals(
        ts,
        pl.Series([100.0, 101.0, 102.0, 103.0]),
        pl.Series([2.0, 2.0, 2.0, 2.0]),
        pl.Series([0.9, 0.1, 0.9, 0.9]),
        threshold_long=0.5,
        sl_mult=1.0,
        tp_mult=1.75,
    )
    ensemble = pl.DataFrame(
        {
            "timestamp": ts[:3],
            "side": pl.Series([0, -1, 1], dtype=pl.Int8),
            "size": [0.0, 0.4, 1.0],
        }
    )
    out = apply_ensemble(champion, pl.Series([2.0] * 4), ensemble, sl_mult=1.0, tp_mult=1.75)
    assert out["side"].to_list() == [0, -1, 1, 1]  # the last bar is not covered: champion's
    assert out["strength"].to_list()[:3] == [0.0, 0.4, 1.0]
    assert out["strength"][3] == champion["strength"][3]
    assert out["stop_loss"].to_list() == [None, 103.0, 100.0, 101.0]  # a short's stop is above
    assert out["take_profit"].to_list() == [None, 97.5, 105.5, 106.5]
    assert out["prob_up"].to_list() == champion["prob_up"].to_list()


def test_volatility_target_size_by_hand() -> None:
    from quant_assets.lib.signals import RANGE_TO_SIGMA, volatility_target_size

    # ATR 1 % of the close on 1h 24/7 bars: sigma = 0.01 / sqrt(8 / pi) = 0.0062666 a bar,
    # x sqrt(8760) = 0.586519 a year; 10 % target: size 0.1704975. ATR 0.05 % (a quiet series):
    # 0.0293 a year, the size would be 3.41: capped at 1 (no leverage). Missing ATR: flat.
    size = volatility_target_size([100.0, 200.0, 100.0], [1.0, 0.1, None], 8760, 0.10)
    assert math.isclose(RANGE_TO_SIGMA, 1.5957691216057308, abs_tol=1e-12)
    expected = 0.10 / (0.01 / RANGE_TO_SIGMA * math.sqrt(8760))
    assert size[0] == pytest.approx(expected, abs=1e-12)
    assert size[0] == pytest.approx(0.1704975, abs=1e-7)
    assert size[1] == 1.0
    assert size[2] == 0.0
    with pytest.raises(ValueError, match="periods_per_year"):
        volatility_target_size([1.0], [0.1], 0)


def test_position_changes_carry_the_entry_size() -> None:
    from quant_assets.lib.signals import position_changes

    frame = pl.DataFrame(
        {
            "timestamp": pl.datetime_range(
                datetime(2024, 1, 1, tzinfo=UTC),
                datetime(2024, 1, 1, 5, tzinfo=UTC),
                "1h",
                eager=True,
            ),
            "side": [1, 1, 0, 0, 0, 0],
            "size": [0.2, 0.3, 0.9, 0.9, 0.9, 0.9],
            "stop_loss": [90.0, 91.0, None, None, None, None],
            "take_profit": [110.0, 111.0, None, None, None, None],
        }
    )
    out = position_changes(frame, horizon=2)
    assert out["side"].to_list() == [1, 1, 0]
    assert out["size"].to_list() == [0.2, 0.3, 0.0]
    assert position_changes(frame.drop("size"), horizon=2)["size"].to_list() == [1.0, 1.0, 0.0]


def test_threshold_trials_are_the_candidates_choose_long_threshold_compares() -> None:
    from quant_assets.lib.signals import choose_long_threshold, threshold_grid, threshold_trials

    rng = np.random.default_rng(1)
    prob = rng.uniform(0, 1, 1000)
    ret = np.where(prob > 0.8, 0.01, -0.001) + rng.normal(0, 0.002, prob.size)
    # the default candidates trade the top 50, 30, 20, 10 and 5 % of rows
    grid = threshold_grid(prob)
    assert grid.tolist() == np.round(np.quantile(prob, [0.5, 0.7, 0.8, 0.9, 0.95]), 2).tolist()
    table = threshold_trials(prob, ret, cost=0.0)
    assert table["threshold"].to_list() == grid.tolist()
    assert table["n"].to_list() == [int((prob >= t).sum()) for t in grid]
    # by hand for the 0.9 candidate: mean / std(ddof=1) * sqrt(n) of the rows above it
    top = ret[prob >= grid[3]]
    assert table["score"][3] == pytest.approx(top.mean() / top.std(ddof=1) * math.sqrt(top.size))
    best = table.filter(pl.col("eligible")).sort("score", descending=True)["threshold"][0]
    assert choose_long_threshold(prob, ret, cost=0.0) == best
    few = threshold_trials(prob[:40], ret[:40], min_trades=30)
    assert few["eligible"].to_list() == [n >= 30 for n in few["n"].to_list()]
