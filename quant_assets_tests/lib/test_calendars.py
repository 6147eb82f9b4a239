"""Trading calendars: window anchoring, expected bar open times and calendar inference."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import polars as pl
import pytest

from quant_assets.lib.calendars import (
    CRYPTO_24_7,
    US_EQUITY,
    MarketCalendar,
    calendar_for_symbol,
    infer_calendar,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def frame_of(timestamps: list[datetime] | pl.Series) -> pl.DataFrame:
    return pl.DataFrame({"timestamp": pl.Series(timestamps, dtype=pl.Datetime("us", "UTC"))})


@pytest.mark.parametrize(
    ("symbol", "calendar"),
    [("BTCUSDT", CRYPTO_24_7), ("eth/usdt", CRYPTO_24_7), ("SPY", US_EQUITY), ("AAPL", US_EQUITY)],
)
def test_calendar_for_symbol(symbol: str, calendar: MarketCalendar) -> None:
    assert calendar_for_symbol(symbol) == calendar


def test_window_offset_anchors_intraday_windows_at_the_session_open() -> None:
    assert US_EQUITY.window_offset("4h") == timedelta(hours=2)  # 14:00 = 3 * 4h + 2h
    assert US_EQUITY.window_offset("1h") == timedelta(0)
    assert US_EQUITY.window_offset("1d") == timedelta(0)
    assert CRYPTO_24_7.window_offset("4h") == timedelta(0)
    half_past = MarketCalendar("x", True, time(13, 30), time(20, 0))
    assert half_past.window_offset("1h") == timedelta(minutes=30)
    assert half_past.window_offset("4h") == timedelta(hours=1, minutes=30)
    assert half_past.window_offset("15m") == timedelta(0)


def test_equity_4h_bars_are_session_windows_on_weekdays_only() -> None:
    # Friday 2024-01-05 to Monday 2024-01-08: the weekend has no bars, each session two windows.
    starts = US_EQUITY.expected_bar_starts(utc(2024, 1, 5), utc(2024, 1, 8, 23), "4h")
    assert starts.to_list() == [
        utc(2024, 1, 5, 14),
        utc(2024, 1, 5, 18),
        utc(2024, 1, 8, 14),
        utc(2024, 1, 8, 18),
    ]
    assert starts.dtype == pl.Datetime("us", "UTC")


def test_equity_hourly_bars_cover_the_session() -> None:
    starts = US_EQUITY.expected_bar_starts(utc(2024, 1, 1), utc(2024, 1, 7, 23), "1h")
    assert starts.len() == 5 * 7
    assert sorted(set(starts.dt.hour().to_list())) == list(range(14, 21))
    assert starts.dt.weekday().max() == 5


def test_daily_bars_are_labelled_midnight_utc_on_weekdays() -> None:
    starts = US_EQUITY.expected_bar_starts(utc(2024, 1, 4, 12), utc(2024, 1, 9), "1d")
    # Jan 4 00:00 precedes the start; Jan 6-7 are a weekend; the end is inclusive.
    assert starts.to_list() == [utc(2024, 1, 5), utc(2024, 1, 8), utc(2024, 1, 9)]
    crypto = CRYPTO_24_7.expected_bar_starts(utc(2024, 1, 4), utc(2024, 1, 9), "1d")
    assert crypto.len() == 6


def test_crypto_bars_start_on_the_epoch_grid_at_or_after_start() -> None:
    starts = CRYPTO_24_7.expected_bar_starts(utc(2024, 1, 6, 1, 30), utc(2024, 1, 7, 0), "4h")
    assert starts.to_list() == [utc(2024, 1, 6, h) for h in (4, 8, 12, 16, 20)] + [utc(2024, 1, 7)]
    assert (
        CRYPTO_24_7.expected_bar_starts(utc(2024, 1, 1, 0, 1), utc(2024, 1, 1, 0, 59), "1h").len()
        == 0
    )


def test_naive_datetimes_are_taken_as_utc() -> None:
    naive = CRYPTO_24_7.expected_bar_starts(datetime(2024, 1, 1), datetime(2024, 1, 1, 3), "1h")
    assert naive.to_list() == [utc(2024, 1, 1, h) for h in range(4)]


def test_bar_close_times_are_open_plus_duration_even_past_the_session_close() -> None:
    opens = pl.Series([utc(2024, 1, 5, 14), utc(2024, 1, 5, 18)], dtype=pl.Datetime("us", "UTC"))
    closes = US_EQUITY.bar_close_times(opens, "4h")
    # The [18:00, 21:00) window really closes at 21:00; 22:00 is later, never earlier.
    assert closes.to_list() == [utc(2024, 1, 5, 18), utc(2024, 1, 5, 22)]
    as_expr = opens.to_frame("t").select(US_EQUITY.bar_close_times(pl.col("t"), "1d")).to_series()
    assert as_expr.to_list() == [utc(2024, 1, 6, 14), utc(2024, 1, 6, 18)]


def test_infer_calendar_sees_weekend_bars_as_24_7() -> None:
    hours = CRYPTO_24_7.expected_bar_starts(utc(2024, 1, 5), utc(2024, 1, 8), "1h")
    assert infer_calendar(frame_of(hours), "1h") == CRYPTO_24_7
    days = CRYPTO_24_7.expected_bar_starts(utc(2024, 1, 1), utc(2024, 1, 10), "1d")
    assert infer_calendar(frame_of(days), "1d") == CRYPTO_24_7


def test_infer_calendar_finds_the_session_of_weekday_bars() -> None:
    equity = US_EQUITY.expected_bar_starts(utc(2024, 1, 1), utc(2024, 1, 12), "1h")
    assert infer_calendar(frame_of(equity), "1h") == US_EQUITY
    half_past = [utc(2024, 1, 2, 13, 30) + timedelta(hours=h) for h in range(7)]
    inferred = infer_calendar(frame_of(half_past), "1h")
    assert inferred.weekdays_only
    assert (inferred.session_open, inferred.session_close) == (time(13, 30), time(20, 30))
    assert inferred.window_offset("4h") == timedelta(hours=1, minutes=30)


def test_infer_calendar_for_weekday_daily_and_round_the_clock_bars() -> None:
    days = US_EQUITY.expected_bar_starts(utc(2024, 1, 1), utc(2024, 1, 31), "1d")
    daily = infer_calendar(frame_of(days), "1d")
    assert (daily.weekdays_only, daily.session_open, daily.session_close) == (True, None, None)
    # 4h bars at 20:00 run past midnight: weekdays, but no daily session.
    four_hourly = [utc(2024, 1, 2) + timedelta(hours=4 * k) for k in range(18)]
    around = infer_calendar(frame_of(four_hourly), "4h")
    assert (around.weekdays_only, around.session_open, around.session_close) == (True, None, None)


def test_a_session_must_open_before_it_closes() -> None:
    with pytest.raises(ValueError, match="must be before"):
        MarketCalendar("overnight", True, time(22, 0), time(6, 0))
