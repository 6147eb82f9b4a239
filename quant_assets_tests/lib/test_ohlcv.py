"""Resampling bars session-aware, picking the base timeframe of a source, and merging stored bars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quant_assets.lib.calendars import CRYPTO_24_7, US_EQUITY, calendar_for_symbol
from quant_assets.lib.errors import DataValidationError, InvalidTimeframeError
from quant_assets.lib.ohlcv import bars_for_timeframe, merge_bars, resample_bars
from quant_assets.lib.sources.base import OHLCV_SCHEMA, Bars, MarketDataSource
from quant_assets.lib.sources.synthetic import SyntheticSource, synthetic_bars

START = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
END = datetime(2024, 1, 15, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def eight_hours() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "timestamp": [START + timedelta(hours=h) for h in range(8)],
            "open": [10.0, 11, 12, 13, 14, 15, 16, 17],
            "high": [12.0, 15, 13, 14, 16, 16.5, 18, 17.5],
            "low": [9.0, 10.5, 11, 8, 13, 14, 12, 16],
            "close": [11.0, 12, 13, 14, 15, 16, 17, 17.2],
            "volume": [1.0, 2, 3, 4, 5, 6, 7, 8],
        },
        schema=OHLCV_SCHEMA,
    )


def test_4h_from_1h_crypto_equals_hand_aggregates() -> None:
    bars = resample_bars(eight_hours(), "1h", "4h", CRYPTO_24_7)
    expected = pl.DataFrame(
        {
            "timestamp": [START, START + timedelta(hours=4)],
            "open": [10.0, 14.0],
            "high": [15.0, 18.0],
            "low": [8.0, 12.0],
            "close": [14.0, 17.2],
            "volume": [10.0, 26.0],
        },
        schema=OHLCV_SCHEMA,
    )
    assert bars.equals(expected)


def test_crypto_resampling_agrees_with_polars_group_by_dynamic() -> None:
    hourly = synthetic_bars("BTCUSDT", 3, START, END, "1h")
    for timeframe, every in (("4h", "4h"), ("1d", "1d")):
        peer = hourly.group_by_dynamic("timestamp", every=every, closed="left", label="left").agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
        # Volume sums may differ in the last bit (summation order).
        assert_frame_equal(resample_bars(hourly, "1h", timeframe, CRYPTO_24_7), peer, rel_tol=1e-12)


def test_equity_4h_windows_are_14_to_18_and_18_to_21() -> None:
    hourly = synthetic_bars("SPY", 3, START, END, "1h")
    bars = resample_bars(hourly, "1h", "4h", US_EQUITY)
    assert bars.height == 2 * 10  # two windows a session, ten sessions
    assert set(bars["timestamp"].dt.hour()) == {14, 18}
    # The same windows by another route: group each session's bars by before/after 18:00.
    peer = hourly.group_by(
        pl.col("timestamp").dt.date().alias("day"),
        (pl.col("timestamp").dt.hour() >= 18).alias("late"),
        maintain_order=True,
    ).agg(
        pl.col("timestamp").first().dt.truncate("1h"),
        pl.col("open").first(),
        pl.col("high").max(),
        pl.col("low").min(),
        pl.col("close").last(),
        pl.col("volume").sum(),
        pl.len().alias("bars"),
    )
    assert peer.filter(~pl.col("late"))["bars"].unique().to_list() == [4]
    assert peer.filter(pl.col("late"))["bars"].unique().to_list() == [3]
    assert bars.equals(peer.select(bars.columns))


def test_daily_from_hourly_equity_bars_is_the_session_labelled_midnight() -> None:
    hourly = synthetic_bars("SPY", 3, START, END, "1h")
    daily = resample_bars(hourly, "1h", "1d", US_EQUITY)
    assert daily.height == 10
    assert set(daily["timestamp"].dt.hour()) == {0}
    monday = hourly.filter(pl.col("timestamp").dt.date() == START.date())
    assert daily.row(0) == (
        START,
        monday["open"][0],
        monday["high"].max(),
        monday["low"].min(),
        monday["close"][-1],
        pytest.approx(monday["volume"].sum()),
    )


def test_gaps_aggregate_what_exists_and_empty_windows_yield_no_row() -> None:
    hourly = synthetic_bars("BTCUSDT", 3, START, START + timedelta(hours=12), "1h")
    holed = hourly.filter(~pl.col("timestamp").dt.hour().is_in([1, 4, 5, 6, 7]))
    bars = resample_bars(holed, "1h", "4h", CRYPTO_24_7)
    assert bars["timestamp"].to_list() == [START, START + timedelta(hours=8)]
    first = hourly.filter(pl.col("timestamp").dt.hour().is_in([0, 2, 3]))
    assert bars.row(0) == (
        START,
        first["open"][0],
        first["high"].max(),
        first["low"].min(),
        first["close"][-1],
        pytest.approx(first["volume"].sum()),
    )


def test_incomplete_trailing_window_is_dropped() -> None:
    ten_hours = synthetic_bars("BTCUSDT", 3, START, START + timedelta(hours=10), "1h")
    assert resample_bars(ten_hours, "1h", "4h", CRYPTO_24_7)["timestamp"].to_list() == [
        START,
        START + timedelta(hours=4),
    ]
    # Once the window has ended, missing bars are a gap, not an unfinished bar.
    late = resample_bars(ten_hours, "1h", "4h", CRYPTO_24_7, as_of=START + timedelta(hours=12))
    assert late.height == 3


def test_equity_session_windows_complete_at_the_session_close() -> None:
    hourly = synthetic_bars("SPY", 3, START, END, "1h")
    to_20 = hourly.filter(pl.col("timestamp") <= utc(2024, 1, 3, 20))  # last bar closes 21:00
    assert resample_bars(to_20, "1h", "4h", US_EQUITY)["timestamp"][-1] == utc(2024, 1, 3, 18)
    assert resample_bars(to_20, "1h", "1d", US_EQUITY)["timestamp"][-1] == utc(2024, 1, 3)
    to_19 = hourly.filter(pl.col("timestamp") <= utc(2024, 1, 3, 19))
    assert resample_bars(to_19, "1h", "4h", US_EQUITY)["timestamp"][-1] == utc(2024, 1, 3, 14)
    assert resample_bars(to_19, "1h", "1d", US_EQUITY)["timestamp"][-1] == utc(2024, 1, 2)


def test_resampling_to_a_finer_timeframe_raises_and_to_the_same_is_identity() -> None:
    with pytest.raises(InvalidTimeframeError, match="finer"):
        resample_bars(eight_hours(), "1h", "15m", CRYPTO_24_7)
    assert resample_bars(eight_hours(), "1h", "1h", CRYPTO_24_7).equals(eight_hours())


class FakeSource(MarketDataSource):
    """Synthetic bars at the given native timeframes; records what was loaded."""

    description = "fake"

    def __init__(self, natives: list[str]) -> None:
        self.natives = natives
        self.loads: list[tuple[str, datetime | None]] = []

    def list_symbols(self) -> list[str]:
        return ["BTCUSDT"]

    def native_timeframes(self, symbol: str) -> list[str]:
        return self.natives

    def load_bars(self, symbol: str, timeframe: str, since: datetime | None = None) -> Bars:
        self.loads.append((timeframe, since))
        frame = synthetic_bars(symbol, 1, START, END, timeframe)
        if since is not None:
            frame = frame.filter(pl.col("timestamp") >= since)
        return Bars(symbol, timeframe, calendar_for_symbol(symbol), frame)


def test_bars_for_timeframe_uses_the_native_timeframe_when_held() -> None:
    source = FakeSource(["15m", "1d"])
    bars = bars_for_timeframe(source, "BTCUSDT", "1d")
    assert source.loads == [("1d", None)]
    assert bars.frame.equals(synthetic_bars("BTCUSDT", 1, START, END, "1d"))


def test_bars_for_timeframe_resamples_the_coarsest_dividing_timeframe() -> None:
    source = FakeSource(["1m", "15m", "1d"])
    bars = bars_for_timeframe(source, "BTCUSDT", "4h")
    assert source.loads == [("15m", None)]
    quarter_hours = synthetic_bars("BTCUSDT", 1, START, END, "15m")
    assert bars.timeframe == "4h"
    assert bars.frame.equals(resample_bars(quarter_hours, "15m", "4h", CRYPTO_24_7))


def test_bars_are_never_invented() -> None:
    with pytest.raises(InvalidTimeframeError) as caught:
        bars_for_timeframe(SyntheticSource(end=END), "BTCUSDT", "5m")
    assert str(caught.value) == (
        "BTCUSDT: 5m is finer than the source's data (finest 1h); bars are never invented"
    )


@pytest.mark.parametrize(
    ("symbol", "timeframe", "since", "first"),
    [
        ("BTCUSDT", "4h", utc(2024, 1, 5, 10, 30), utc(2024, 1, 5, 8)),
        ("SPY", "4h", utc(2024, 1, 5, 20, 30), utc(2024, 1, 5, 18)),
        ("SPY", "1d", utc(2024, 1, 5, 15, 30), utc(2024, 1, 5)),
        (
            "SPY",
            "1d",
            utc(2024, 1, 6, 12),
            utc(2024, 1, 8),
        ),  # a Saturday: no window, next is Monday
    ],
)
def test_since_starts_at_the_complete_window_containing_it(
    symbol: str, timeframe: str, since: datetime, first: datetime
) -> None:
    source = SyntheticSource(start=START, end=END)
    full = bars_for_timeframe(source, symbol, timeframe).frame
    recent = bars_for_timeframe(source, symbol, timeframe, since=since).frame
    assert recent["timestamp"][0] == first
    assert recent.equals(full.filter(pl.col("timestamp") >= first))


def test_merge_keeps_stored_bars_before_the_new_ones_and_is_idempotent() -> None:
    hourly = synthetic_bars("BTCUSDT", 3, START, END, "1h")
    stored = hourly.head(100)
    revised_last = hourly.slice(99, 1).with_columns(
        close=pl.col("close") * 1.001, high=pl.col("high") * 1.001
    )
    new = pl.concat([revised_last, hourly.slice(100, 20)])
    merged = merge_bars(stored, new)
    assert merged.equals(pl.concat([hourly.head(99), new]))
    assert merge_bars(merged, new).equals(merged)
    assert merge_bars(None, new).equals(new)
    assert merge_bars(stored, new.clear()).equals(stored)


def test_merge_rejects_new_bars_that_are_not_increasing() -> None:
    hourly = synthetic_bars("BTCUSDT", 3, START, END, "1h")
    new = pl.concat([hourly.slice(50, 5), hourly.slice(52, 1)])
    with pytest.raises(DataValidationError, match="duplicate timestamp at row 55"):
        merge_bars(hourly.head(60), new)
