"""Tests of the labellers: hand-worked cases, agreement with the per-event reference, stability."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quant_assets.lib.labels import (
    BARRIER_DTYPE,
    LabelInputError,
    fixed_horizon_labels,
    label_summary,
    sample_weights,
    triple_barrier_labels,
)
from quant_assets.lib.reference_labels import reference_triple_barrier_labels

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _hours(*offsets: int) -> pl.Series:
    return pl.Series("timestamp", [T0 + h * HOUR for h in offsets], dtype=pl.Datetime("us", "UTC"))


def _labels(bars: list[tuple[float, float, float, float]], atr, ts=None, **kw) -> pl.DataFrame:
    o, h, lo, c = (np.array(col, dtype=float) for col in zip(*bars, strict=True))
    ts = _hours(*range(len(bars))) if ts is None else ts
    return triple_barrier_labels(ts, o, h, lo, c, atr, timeframe="1h", **kw)


def test_hand_worked_long_series():
    # horizon 2, default tp 1.75 / sl 1.0 x ATR, ATR = 1 (null at row 0: warm-up).
    # The hour after row 3 is missing: horizon counts rows, so row 3's vertical barrier is row 5.
    ts = _hours(0, 1, 2, 3, 5, 6, 7)
    bars = [  # open, high, low, close
        (100.0, 100.5, 99.5, 100.0),
        (100.0, 100.5, 99.6, 100.0),
        (100.0, 102.0, 99.8, 101.5),
        (101.5, 102.5, 100.2, 100.4),
        (100.4, 101.0, 99.9, 100.6),
        (100.6, 101.2, 99.8, 100.9),
        (100.9, 103.0, 99.0, 101.0),
    ]
    atr = pl.Series([None, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    out = _labels(bars, atr, ts=ts, horizon=2)
    # row 0: ATR null -> unlabelled
    # row 1: entry 100, tp 101.75, sl 99; bar 2 high 102 >= 101.75, low 99.8 > 99 -> tp at the
    #        level (bar 2 opened at 100, below it); known at bar 2's close 03:00
    # row 2: entry 101.5, tp 103.25, sl 100.5; bar 3 low 100.2 <= 100.5 -> sl at 100.5
    # row 3: entry 100.4, tp 102.15, sl 99.4; bars 4, 5 stay inside -> vertical, exit = close of
    #        bar 5 (100.9), known at 06:00 + 1h
    # row 4: entry 100.6, tp 102.35, sl 99.6; bar 5 inside; bar 6 (high 103, low 99) touches both
    #        -> sl at 99.6, known at 08:00
    # rows 5, 6: bar i+2 is past the end -> unlabelled
    assert out["timestamp"].to_list() == ts.to_list()
    assert out["label"].to_list() == [None, 1, -1, 0, -1, None, None]
    assert out["barrier"].to_list() == [None, "tp", "sl", "vertical", "sl", None, None]
    assert out["holding_bars"].to_list() == [None, 1, 1, 2, 2, None, None]
    assert out["exit_price"].to_list() == [None, 101.75, 100.5, 100.9, 99.6, None, None]
    assert out["t1"].to_list() == [None] + [T0 + h * HOUR for h in (3, 4, 7, 8)] + [None, None]
    expected_ret = [101.75 / 100 - 1, 100.5 / 101.5 - 1, 100.9 / 100.4 - 1, 99.6 / 100.6 - 1]
    np.testing.assert_allclose(out["ret"].to_numpy()[1:5], expected_ret, rtol=1e-15)
    assert out.schema == {
        "timestamp": pl.Datetime("us", "UTC"),
        "label": pl.Int8,
        "t1": pl.Datetime("us", "UTC"),
        "barrier": BARRIER_DTYPE,
        "exit_price": pl.Float64,
        "ret": pl.Float64,
        "holding_bars": pl.Int32,
    }


@pytest.mark.parametrize(
    ("gap_bar", "label", "barrier", "exit_price"),
    [
        # entry 100, sl 99: the next bar opens at 98, below the stop -> filled at the open 98
        ((98.0, 98.5, 97.5, 98.0), -1, "sl", 98.0),
        # entry 100, tp 101.75: the next bar opens at 103, above the target -> filled at 103
        ((103.0, 103.5, 102.8, 103.2), 1, "tp", 103.0),
    ],
)
def test_bar_gapping_through_a_barrier_exits_at_its_open(gap_bar, label, barrier, exit_price):
    bars = [(100.0, 100.2, 99.8, 100.0), gap_bar, (gap_bar[3],) * 4]
    # only row 0 is under test (ATR NaN elsewhere); horizon 2 keeps it inside the data
    out = _labels(bars, [1.0, np.nan, np.nan], horizon=2).row(0, named=True)
    assert (out["label"], out["barrier"], out["holding_bars"]) == (label, barrier, 1)
    assert out["exit_price"] == exit_price
    assert out["ret"] == pytest.approx(exit_price / 100 - 1, rel=1e-15)


def test_short_side_mirrors_the_barriers():
    bars = [
        (100.0, 100.2, 99.8, 100.0),
        (100.0, 100.5, 98.0, 98.5),
        (98.5, 99.7, 96.5, 97.0),
        (97.0, 97.5, 96.8, 97.2),
        (97.2, 97.6, 97.0, 97.4),
    ]
    side = np.array([-1, -1, 0, 1, 1])
    out = _labels(bars, np.ones(5), horizon=2, side=side)
    # row 0 short: entry 100, tp 98.25 (below), sl 101 (above); bar 1 low 98 -> tp at 98.25;
    #        ret is the price return 98.25/100 - 1 < 0 although the short bet won (label +1)
    # row 1 short: entry 98.5, tp 96.75, sl 99.5; bar 2 high 99.7 and low 96.5 touch both -> sl,
    #        filled at the level 99.5 (bar 2 opened at 98.5, inside)
    # row 2: side 0 (no bet) -> unlabelled; rows 3, 4: past the end
    assert out["label"].to_list() == [1, -1, None, None, None]
    assert out["barrier"].to_list() == ["tp", "sl", None, None, None]
    assert out["exit_price"].to_list() == [98.25, 99.5, None, None, None]
    np.testing.assert_allclose(out["ret"].to_numpy()[:2], [-0.0175, 99.5 / 98.5 - 1], rtol=1e-14)


def test_series_shorter_than_the_horizon_is_all_unlabelled():
    bars = [(100.0, 101.0, 99.0, 100.0)] * 3
    out = _labels(bars, np.ones(3), horizon=3)
    assert out.height == 3
    assert out["label"].null_count() == 3 and out["t1"].null_count() == 3


def test_fixed_horizon_hand_worked():
    ts = _hours(0, 1, 2, 3, 4)
    close = np.array([100.0, 101.0, 102.5, 101.0, 104.0])
    out = fixed_horizon_labels(ts, close, timeframe="1h", horizon=2)
    # returns over 2 bars: 102.5/100-1 = 2.5% (>= 2%), 101/101-1 = 0, 104/102.5-1 = 1.46%;
    # rows 3, 4 have no bar i+2
    assert out.columns == ["timestamp", "label_fh", "t1_fh", "ret_fh"]
    assert out["label_fh"].to_list() == [1, 0, 0, None, None]
    assert out["t1_fh"].to_list() == [T0 + h * HOUR for h in (3, 4, 5)] + [None, None]
    np.testing.assert_allclose(out["ret_fh"].to_numpy()[:3], [0.025, 0.0, 104 / 102.5 - 1])
    # a 1% threshold also makes the 1.46% move positive
    lower = fixed_horizon_labels(ts, close, timeframe="1h", horizon=2, threshold=0.01)
    assert lower["label_fh"].to_list() == [1, 0, 1, None, None]


def test_sample_weights_hand_worked():
    # spans (inclusive bar indices): A=[0,2], B=[1,3], C=[2,2], D=[4,5]
    # concurrency per bar 0..5: 1, 2 (A,B), 3 (A,B,C), 1 (B), 1 (D), 1 (D)
    # uniqueness: A = (1 + 1/2 + 1/3)/3 = 11/18, B = (1/2 + 1/3 + 1)/3 = 11/18, C = 1/3, D = 1
    # the unlabelled row (NaN) gets NaN and does not count
    t0 = np.array([0, 1, 2, 4, np.nan])
    t1 = np.array([2, 3, 2, 5, np.nan])
    expected = np.array([11 / 18, 11 / 18, 1 / 3, 1.0, np.nan])
    np.testing.assert_allclose(sample_weights(t0, t1), expected, rtol=1e-14)
    # decay 0.5: starts 0, 1, 2, 4 -> ages 4, 3, 2, 0 of a span of 4 -> x 0.5^(age/4)
    decayed = expected * np.array([0.5, 0.5**0.75, 0.5**0.5, 1.0, np.nan])
    np.testing.assert_allclose(sample_weights(t0, t1, decay=0.5), decayed, rtol=1e-14)
    # the same spans given as timestamps: t0 = bar opens, t1 = close time of the exit bar
    bars = _hours(0, 1, 2, 3, 4, 5)
    t0_ts = pl.Series([T0, T0 + HOUR, T0 + 2 * HOUR, T0 + 4 * HOUR, None])
    t1_ts = pl.Series([T0 + h * HOUR for h in (3, 4, 3, 6)] + [None])
    from_ts = sample_weights(t0_ts.cast(bars.dtype), t1_ts.cast(bars.dtype), bars)
    np.testing.assert_allclose(from_ts, expected, rtol=1e-14)


def test_sample_weights_equal_naive_average_uniqueness():
    rng = np.random.default_rng(7)
    n = 400
    a = np.sort(rng.integers(0, 300, n))
    b = a + rng.integers(0, 40, n)
    alive = (np.arange(b.max() + 1)[:, None] >= a) & (np.arange(b.max() + 1)[:, None] <= b)
    concurrency = alive.sum(axis=1)
    naive = np.array([np.mean(1 / concurrency[a[i] : b[i] + 1]) for i in range(n)])
    np.testing.assert_allclose(sample_weights(a, b), naive, rtol=1e-12)


def test_sample_weights_scale_to_a_million_long_overlapping_labels():
    # 1M labels whose lives overlap by up to 500k bars: a per-label or per-pair computation would
    # not finish; the O(n) difference-array version is timed in benchmarks/, not here
    rng = np.random.default_rng(3)
    n = 1_000_000
    a = np.arange(n)
    b = a + rng.integers(0, 500_000, n)
    weights = sample_weights(a, b)
    assert np.isfinite(weights).all() and (weights > 0).all() and (weights <= 1).all()


def test_label_summary_counts_and_minority():
    labels = pl.DataFrame(
        {
            "label": pl.Series([1, -1, -1, 0, None, -1, 1, None], dtype=pl.Int8),
            "holding_bars": pl.Series([1, 2, 3, 5, None, 1, 2, None], dtype=pl.Int32),
        }
    )
    summary = label_summary(labels)
    assert summary["rows"] == 8 and summary["labelled"] == 6
    assert summary["coverage"] == 6 / 8
    assert summary["class_counts"] == {"-1": 3, "0": 1, "1": 2}
    assert summary["class_fractions"] == {"-1": 0.5, "0": 1 / 6, "1": 1 / 3}
    assert summary["mean_holding_bars"] == 14 / 6
    assert (summary["minority_class"], summary["minority_class_fraction"]) == (0, 1 / 6)
    fixed = label_summary(pl.DataFrame({"label_fh": pl.Series([1, 1, 1, None], dtype=pl.Int8)}))
    assert fixed["class_counts"] == {"0": 0, "1": 3}
    assert (fixed["minority_class"], fixed["minority_class_fraction"]) == (0, 0.0)


def _random_bars(seed: int, n: int) -> dict[str, np.ndarray]:
    """Random-walk bars with missing hours, opening gaps, wide bars and NaN ATR stretches."""
    rng = np.random.default_rng(seed)
    gaps = np.where(rng.random(n) < 0.08, rng.normal(0, 0.03, n), 0.0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n) + gaps))
    open_ = np.concatenate(([100.0], close[:-1])) * np.exp(gaps)
    width = np.where(rng.random(n) < 0.05, 0.03, 0.005)
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, width)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, width)))
    atr = close * rng.uniform(0.004, 0.05, n)
    atr[:14] = np.nan
    atr[rng.random(n) < 0.02] = np.nan
    hours = np.cumsum(rng.choice([1, 1, 1, 2], n))
    ts = np.datetime64("2024-01-01T00:00", "us") + hours * np.timedelta64(3600, "s")
    side = rng.choice([-1.0, 1.0, 0.0, np.nan], n, p=[0.45, 0.45, 0.05, 0.05])
    return {
        "timestamps": ts,
        "open_": open_,
        "high": high,
        "low": low,
        "close": close,
        "atr": atr,
        "side": side,
    }


@pytest.mark.parametrize("horizon", [1, 5, 20])
@pytest.mark.parametrize(("seed", "with_side"), [(1, False), (2, True), (3, True)])
def test_equals_reference_implementation(seed, with_side, horizon):
    data = _random_bars(seed, 300)
    if not with_side:
        data.pop("side")
    kw = {"timeframe": "1h", "horizon": horizon, "tp_mult": 1.5, "sl_mult": 0.8}
    fast = triple_barrier_labels(**data, **kw)
    ref = pl.from_pandas(reference_triple_barrier_labels(**data, **kw))
    assert_frame_equal(
        fast, ref.with_columns(pl.col("barrier").cast(BARRIER_DTYPE)), check_exact=True
    )
    # the random data exercises every outcome, gap fills and bars touching both barriers
    assert set(fast["barrier"].drop_nulls()) == {"tp", "sl", "vertical"}
    assert _gap_fills(fast, data) > 0 and _double_touches(fast, data, kw) > 0


def test_equals_reference_with_a_long_horizon():
    data = _random_bars(4, 330)
    kw = {"timeframe": "1h", "horizon": 300}
    fast = triple_barrier_labels(**data, **kw)
    ref = pl.from_pandas(reference_triple_barrier_labels(**data, **kw))
    assert_frame_equal(
        fast, ref.with_columns(pl.col("barrier").cast(BARRIER_DTYPE)), check_exact=True
    )
    assert fast["label"].drop_nulls().len() > 10


def _exit_bars(labels: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(labels["label"].is_not_null().to_numpy())
    return rows, rows + labels["holding_bars"].to_numpy()[rows].astype(int)


def _gap_fills(labels: pl.DataFrame, data: dict) -> int:
    rows, exits = _exit_bars(labels)
    hit = labels["barrier"].to_numpy()[rows] != "vertical"
    return int((labels["exit_price"].to_numpy()[rows][hit] == data["open_"][exits][hit]).sum())


def _double_touches(labels: pl.DataFrame, data: dict, kw: dict) -> int:
    rows, exits = _exit_bars(labels)
    side = data.get("side", np.ones(len(data["close"])))[rows]
    up = np.where(side > 0, kw["tp_mult"], kw["sl_mult"]) * data["atr"][rows]
    dn = np.where(side > 0, kw["sl_mult"], kw["tp_mult"]) * data["atr"][rows]
    entry = data["close"][rows]
    both = (data["high"][exits] >= entry + up) & (data["low"][exits] <= entry - dn)
    assert (labels["label"].to_numpy()[rows][both] == -1).all()
    return int(both.sum())


@pytest.mark.parametrize("cut", [60, 777, 1499])
def test_labels_are_stable_when_more_data_arrives(cut):
    data = _random_bars(5, 1500)
    full = triple_barrier_labels(**data, timeframe="1h", horizon=20)
    part = triple_barrier_labels(
        **{k: v[:cut] for k, v in data.items()}, timeframe="1h", horizon=20
    )
    labelled = part["label"].is_not_null()
    assert labelled.sum() > 0
    assert_frame_equal(part.filter(labelled), full.head(cut).filter(labelled), check_exact=True)
    # what the truncated series cannot know yet is null, not a guess: its last 20 rows
    assert part.tail(20)["label"].null_count() == 20
    fh_full = fixed_horizon_labels(data["timestamps"], data["close"], timeframe="1h", horizon=20)
    fh_part = fixed_horizon_labels(
        data["timestamps"][:cut], data["close"][:cut], timeframe="1h", horizon=20
    )
    assert_frame_equal(fh_part.head(cut - 20), fh_full.head(cut - 20), check_exact=True)
    assert fh_part.tail(20)["label_fh"].null_count() == 20


def test_invalid_inputs_name_the_problem():
    data = _random_bars(6, 50)
    with pytest.raises(LabelInputError, match="atr has shape"):
        triple_barrier_labels(**{**data, "atr": data["atr"][:-1]}, timeframe="1h")
    ts = data["timestamps"].copy()
    ts[10] = ts[9]
    with pytest.raises(LabelInputError, match="not strictly increasing at row 10"):
        triple_barrier_labels(**{**data, "timestamps": ts}, timeframe="1h")
    side = np.ones(50)
    side[7] = 2
    with pytest.raises(LabelInputError, match="side at row 7"):
        triple_barrier_labels(**{**data, "side": side}, timeframe="1h")
    with pytest.raises(LabelInputError, match="horizon"):
        fixed_horizon_labels(data["timestamps"], data["close"], timeframe="1h", horizon=0)
    with pytest.raises(LabelInputError, match="row 1 has an empty"):
        sample_weights(np.array([0, 5]), np.array([1, 3]))
