"""Feature definitions: hand-worked values, warm-up marking, flat/gap conventions, cross-sectional ranks."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from quant_assets.lib.errors import DataValidationError, InvalidTimeframeError
from quant_assets.lib.features import (
    FEATURE_WARMUP,
    MAX_WARMUP,
    MTF_FEATURES,
    compute_features,
    cross_sectional_ranks,
    feature_names,
    multi_timeframe_snapshot,
)
from quant_assets_tests.lib.bars_factory import make_bars

# Rows that stay null (window not full), worked out by hand from the definitions.
FIRST_VALUE_ROW = {
    "ret_1": 1,
    "ret_5": 5,
    "ret_20": 20,
    "ret_60": 60,
    "sma_20_ratio": 19,
    "sma_50_ratio": 49,
    "sma_200_ratio": 199,
    "ema_12_ratio": 11,
    "ema_26_ratio": 25,
    "ema_26_slope": 30,
    "macd": 25,
    "macd_signal": 33,
    "macd_hist": 33,
    "macd_norm": 25,
    "macd_signal_norm": 33,
    "macd_hist_norm": 33,
    "rsi_14": 14,
    "atr_14": 14,
    "atr_14_frac": 14,
    "bb_width": 19,
    "bb_pctb": 19,
    "vol_20": 20,
    "vol_60": 60,
    "vol_parkinson_20": 19,
    "vol_gk_20": 19,
    "volume_ratio_20": 19,
    "dollar_volume": 0,
    "hour_of_day": 0,
    "day_of_week": 0,
}


@pytest.fixture(scope="module")
def rough() -> tuple[pl.DataFrame, pl.DataFrame]:
    bars = make_bars(1500, "1h", seed=7, gaps=True, flat=True)
    return bars, compute_features(bars, "1h")


def _windows(x: np.ndarray, n: int) -> np.ndarray:
    return sliding_window_view(x, n)


def test_output_columns_and_names_per_timeframe(rough):
    bars, feats = rough
    assert feats.columns == ["timestamp", *feature_names("1h"), "is_warm"]
    assert feats.height == bars.height
    assert feats["timestamp"].equals(bars["timestamp"])
    assert "hour_of_day" in feature_names("5m")
    assert "hour_of_day" not in feature_names("1d")
    assert "day_of_week" in feature_names("1d")
    assert set(feature_names("1h")) == set(FEATURE_WARMUP) == set(FIRST_VALUE_ROW)
    daily = compute_features(make_bars(300, "1d", seed=1), "1d")
    assert daily.columns == ["timestamp", *feature_names("1d"), "is_warm"]


def test_values_are_null_exactly_until_the_window_is_full(rough):
    _, feats = rough
    for name, first in FIRST_VALUE_ROW.items():
        nulls = feats[name].is_null().to_numpy()
        assert not nulls[:first].size or nulls[:first].all(), name
        assert not nulls[first:].any(), name
        assert not feats[name].cast(pl.Float64).is_nan().any(), name
        assert FEATURE_WARMUP[name] >= first + 1, name


def test_is_warm_marks_every_feature_past_warmup(rough):
    _, feats = rough
    assert MAX_WARMUP == max(FEATURE_WARMUP.values()) == 200
    assert FEATURE_WARMUP["sma_200_ratio"] == 200
    # EMA-type: seed window + 3 spans (Wilder 14 has span 27)
    assert FEATURE_WARMUP["ema_26_ratio"] == 26 + 3 * 26
    assert FEATURE_WARMUP["rsi_14"] == 15 + 3 * 27
    assert FEATURE_WARMUP["macd_signal"] == FEATURE_WARMUP["macd"] + 3 * 9
    warm = feats["is_warm"].to_numpy()
    assert not warm[: MAX_WARMUP - 1].any() and warm[MAX_WARMUP - 1 :].all()
    assert (
        feats.filter("is_warm").drop("timestamp", "is_warm").null_count().sum_horizontal()[0] == 0
    )


def test_short_history_is_all_warmup_and_never_backfilled():
    bars = make_bars(30, seed=3)
    short = compute_features(bars, "1h")
    assert short["sma_50_ratio"].is_null().all()
    assert short["macd_signal"].is_null().all()
    assert not short["is_warm"].any()
    assert compute_features(bars.head(0), "1h").height == 0


def test_returns_and_trend_ratios_by_hand():
    bars = make_bars(400, seed=11)
    f = compute_features(bars, "1h")
    c = bars["close"].to_numpy()
    for k in (1, 5, 20, 60):
        np.testing.assert_allclose(f[f"ret_{k}"].to_numpy()[k:], np.log(c[k:] / c[:-k]), rtol=1e-12)
    for n in (20, 50, 200):
        sma = _windows(c, n).mean(axis=1)
        np.testing.assert_allclose(
            f[f"sma_{n}_ratio"].to_numpy()[n - 1 :], c[n - 1 :] / sma - 1.0, rtol=1e-9, atol=1e-12
        )
    assert f["dollar_volume"].to_numpy() == pytest.approx(c * bars["volume"].to_numpy())


def test_ema_slope_by_hand():
    c = 100.0 * np.exp(np.linspace(0.0, 0.6, 200))  # steady 0.003 log growth per bar
    bars = make_bars(200, seed=0).with_columns(
        close=pl.Series(c), open=pl.Series(c), high=pl.Series(c * 1.001), low=pl.Series(c * 0.999)
    )
    slope = compute_features(bars, "1h")["ema_26_slope"].to_numpy()
    # The EMA of an exponential grows at the same rate once the seed has washed out.
    assert slope[-1] == pytest.approx(0.6 / 199, rel=1e-6)
    ema = np.empty(200)
    ema[25] = c[:26].mean()
    for t in range(26, 200):  # a 174-step reference loop on a test series
        ema[t] = ema[t - 1] + 2.0 / 27.0 * (c[t] - ema[t - 1])
    np.testing.assert_allclose(slope[30:], np.log(ema[30:] / ema[25:-5]) / 5.0, rtol=1e-10)


def test_volatility_estimators_by_hand():
    bars = make_bars(300, seed=5)
    f = compute_features(bars, "1h")
    o, h, lo, c = (bars[x].to_numpy() for x in ("open", "high", "low", "close"))
    r = np.diff(np.log(c))
    for n in (20, 60):
        np.testing.assert_allclose(
            f[f"vol_{n}"].to_numpy()[n:], _windows(r, n).std(axis=1, ddof=1), rtol=1e-9
        )
    hl2 = np.log(h / lo) ** 2
    park = np.sqrt(_windows(hl2, 20).mean(axis=1) / (4 * math.log(2)))
    np.testing.assert_allclose(f["vol_parkinson_20"].to_numpy()[19:], park, rtol=1e-9)
    gk_terms = 0.5 * hl2 - (2 * math.log(2) - 1) * np.log(c / o) ** 2
    gk = np.sqrt(_windows(gk_terms, 20).mean(axis=1))
    np.testing.assert_allclose(f["vol_gk_20"].to_numpy()[19:], gk, rtol=1e-9)
    v = bars["volume"].to_numpy()
    np.testing.assert_allclose(
        f["volume_ratio_20"].to_numpy()[19:], v[19:] / _windows(v, 20).mean(axis=1), rtol=1e-9
    )


def test_bollinger_width_and_percent_b_by_hand():
    bars = make_bars(100, seed=9)
    f = compute_features(bars, "1h")
    c = bars["close"].to_numpy()
    w = _windows(c, 20)
    mid, std = w.mean(axis=1), w.std(axis=1, ddof=0)
    np.testing.assert_allclose(f["bb_width"].to_numpy()[19:], 4 * std / mid, rtol=1e-9)
    np.testing.assert_allclose(
        f["bb_pctb"].to_numpy()[19:], (c[19:] - (mid - 2 * std)) / (4 * std), rtol=1e-8
    )


def test_calendar_fields_of_bar_open_in_utc():
    start = datetime(2024, 3, 3, 22, 0, tzinfo=UTC)  # a Sunday, 22:00
    f = compute_features(make_bars(5, "1h", start=start), "1h")
    assert f["hour_of_day"].to_list() == [22, 23, 0, 1, 2]
    assert f["day_of_week"].to_list() == [7, 7, 1, 1, 1]
    daily = compute_features(make_bars(3, "1d", start=datetime(2024, 1, 1, tzinfo=UTC)), "1d")
    assert daily["day_of_week"].to_list() == [1, 2, 3]


def test_flat_stretch_conventions():
    bars = make_bars(3000, seed=2, flat=True)
    f = compute_features(bars, "1h")
    flat = (bars["high"] == bars["low"]).to_numpy()
    start = int(np.argmax(flat))
    length = int(np.argmin(flat[start:]))
    assert length >= 25
    inside = slice(start + 21, start + length)  # every 20-bar (and 21-close) window is flat
    seg = f[inside]
    assert (seg["vol_20"] == 0.0).all()
    assert (seg["bb_width"] == 0.0).all() and (seg["bb_pctb"] == 0.5).all()
    assert (seg["vol_parkinson_20"] == 0.0).all() and (seg["vol_gk_20"] == 0.0).all()
    assert (seg["volume_ratio_20"] == 1.0).all()
    assert (seg["ret_1"] == 0.0).all() and (seg["dollar_volume"] == 0.0).all()
    # Wilder's gains and losses decay together: RSI holds the value it had entering the stretch.
    rsi = f["rsi_14"].to_numpy()
    np.testing.assert_allclose(rsi[start : start + length], rsi[start - 1], rtol=1e-12)


def test_rsi_is_neutral_when_nothing_ever_moved():
    bars = make_bars(40, seed=0).with_columns(
        open=pl.lit(5.0), high=pl.lit(5.0), low=pl.lit(5.0), close=pl.lit(5.0)
    )
    rsi = compute_features(bars, "1h")["rsi_14"]
    assert rsi.drop_nulls().to_list() == [50.0] * (40 - 14)


def test_gaps_are_not_filled_windows_count_rows():
    bars = make_bars(400, seed=4, gaps=True)
    steps = bars["timestamp"].diff().dt.total_hours().to_numpy()
    assert (steps[1:] > 1).any()
    f = compute_features(bars, "1h")
    assert f["timestamp"].equals(bars["timestamp"])
    c = bars["close"].to_numpy()
    np.testing.assert_allclose(f["ret_1"].to_numpy()[1:], np.log(c[1:] / c[:-1]), rtol=1e-12)


def test_scale_free_features_ignore_the_price_level():
    bars = make_bars(600, seed=8, gaps=True, flat=True)
    scaled = bars.with_columns(pl.col("open", "high", "low", "close") * 1e-6)
    a, b = compute_features(bars, "1h"), compute_features(scaled, "1h")
    for name in ("ret_20", "sma_50_ratio", "ema_26_slope", "macd_hist_norm", "rsi_14"):
        np.testing.assert_allclose(b[name].to_numpy()[250:], a[name].to_numpy()[250:], atol=1e-9)
    for name in ("atr_14_frac", "bb_width", "vol_20", "vol_gk_20"):
        np.testing.assert_allclose(b[name].to_numpy()[250:], a[name].to_numpy()[250:], rtol=1e-7)


def test_invalid_inputs_raise_specific_errors():
    bars = make_bars(50, seed=1)
    with pytest.raises(InvalidTimeframeError, match="2h"):
        compute_features(bars, "2h")
    with pytest.raises(DataValidationError, match="missing columns \\['volume'\\]"):
        compute_features(bars.drop("volume"), "1h")
    dup = pl.concat([bars.head(10), bars.slice(9)])
    with pytest.raises(DataValidationError, match="strictly increasing at row 10"):
        compute_features(dup, "1h")


def test_snapshot_columns_and_timeframe_order():
    base = compute_features(make_bars(100, "1h"), "1h")
    higher = compute_features(make_bars(30, "4h"), "4h")
    snap = multi_timeframe_snapshot(base, "1h", {"4h": higher})
    assert snap.columns == ["timestamp", *(f"tf4h_{f}" for f in MTF_FEATURES)]
    with pytest.raises(InvalidTimeframeError, match="not coarser"):
        multi_timeframe_snapshot(base, "1h", {"1h": base})


def _xs_frame(timestamps: list[datetime], **cols: list[float | None]) -> pl.DataFrame:
    return pl.DataFrame({"timestamp": timestamps, **cols}).with_columns(
        pl.col("timestamp").dt.replace_time_zone("UTC")
    )


def test_cross_sectional_ranks_by_hand():
    t0 = datetime(2024, 1, 1)
    t1 = t0 + timedelta(hours=1)
    frames = {
        "AAA": _xs_frame(
            [t0, t1], ret_20=[0.10, 0.3], volume_ratio_20=[1.0, None], vol_20=[0.02, 0.1]
        ),
        "BBB": _xs_frame(
            [t0, t1], ret_20=[0.20, -0.1], volume_ratio_20=[1.0, 2.0], vol_20=[0.01, 0.2]
        ),
        "CCC": _xs_frame([t0], ret_20=[-0.5], volume_ratio_20=[3.0], vol_20=[float("nan")]),
    }
    xs = cross_sectional_ranks(frames)
    assert xs.columns == [
        "symbol",
        "timestamp",
        "xs_rank_momentum",
        "xs_rank_volume",
        "xs_rank_volatility",
        "xs_n_symbols",
    ]
    assert xs["symbol"].to_list() == ["AAA", "AAA", "BBB", "BBB", "CCC"]
    # t0: momentum -0.5 < 0.1 < 0.2 -> 0, 0.5, 1; volume ties 1.0, 1.0 (avg rank 1.5) < 3.0
    # volatility: CCC's NaN is missing, so AAA/BBB rank among two. t1: two symbols, volume one.
    assert xs["xs_rank_momentum"].to_list() == [0.5, 1.0, 1.0, 0.0, 0.0]
    assert xs["xs_rank_volume"].to_list() == [0.25, None, 0.25, 0.5, 1.0]
    assert xs["xs_rank_volatility"].to_list() == [1.0, 0.0, 0.0, 1.0, None]
    assert xs["xs_n_symbols"].to_list() == [3, 2, 3, 2, 3]


def test_cross_sectional_ranks_on_features_stay_in_unit_interval():
    frames = {f"S{i}": compute_features(make_bars(300, seed=i), "1h") for i in range(5)}
    xs = cross_sectional_ranks(frames).drop_nulls()
    assert xs.height == 5 * (300 - 20)  # ret_20 and vol_20 start at row 20
    for col in ("xs_rank_momentum", "xs_rank_volume", "xs_rank_volatility"):
        assert xs[col].min() == 0.0 and xs[col].max() == 1.0
        # Five distinct values per timestamp: ranks are exactly 0, 1/4, ..., 1.
        sums = xs.group_by("timestamp").agg(pl.col(col).sum())[col]
        assert (sums == 2.5).all()
    with pytest.raises(DataValidationError, match="no symbols"):
        cross_sectional_ranks({})
