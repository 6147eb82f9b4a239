"""Bar validation names where, what and the first bad row; the quality report counts planted faults."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from quant_assets.lib.calendars import CRYPTO_24_7, US_EQUITY
from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.sources.base import OHLCV_SCHEMA
from quant_assets.lib.validation import ohlcv_quality, validate_bars

START = datetime(2024, 1, 1, tzinfo=UTC)


def hourly_bars(n: int = 8, start: datetime = START) -> pl.DataFrame:
    """Consistent bars: open i+10, close i+10.5, high i+11, low i+9.5, volume 100 + i."""
    i = pl.int_range(n, eager=True).cast(pl.Float64)
    return pl.DataFrame(
        {
            "timestamp": pl.datetime_range(
                start, start + timedelta(hours=n - 1), "1h", eager=True, time_zone="UTC"
            ),
            "open": i + 10,
            "high": i + 11,
            "low": i + 9.5,
            "close": i + 10.5,
            "volume": i + 100,
        }
    )


def at(frame: pl.DataFrame, row: int, **values: object) -> pl.DataFrame:
    """`frame` with the given columns replaced at one row."""
    index = pl.int_range(pl.len())
    return frame.with_columns(
        pl.when(index == row).then(pl.lit(v)).otherwise(pl.col(c)).alias(c)
        for c, v in values.items()
    )


def test_valid_bars_come_back_cast_to_the_canonical_schema() -> None:
    frame = hourly_bars().with_columns(
        pl.col("timestamp").dt.replace_time_zone(None),  # naive is UTC
        pl.col("volume").cast(pl.Int64),
        extra=pl.lit("ignored"),
    )
    frame = frame.select("volume", "extra", "timestamp", "open", "high", "low", "close")
    bars = validate_bars(frame, "test", "1h")
    assert bars.schema == pl.Schema(OHLCV_SCHEMA)
    assert bars["timestamp"][0] == START
    assert bars.drop("timestamp").equals(hourly_bars().drop("timestamp"))


def test_aware_timestamps_are_converted_to_utc() -> None:
    frame = hourly_bars().with_columns(pl.col("timestamp").dt.convert_time_zone("America/New_York"))
    assert (
        validate_bars(frame, "test")["timestamp"].to_list() == hourly_bars()["timestamp"].to_list()
    )


BAD_CASES: list[tuple[str, Callable[[pl.DataFrame], pl.DataFrame], str, int, str]] = [
    (
        "nan close",
        lambda f: at(f, 3, close=float("nan")),
        "close is not a positive number",
        3,
        "close=nan",
    ),
    ("null open", lambda f: at(f, 5, open=None), "open is not a positive number", 5, "open=None"),
    ("zero low", lambda f: at(f, 2, low=0.0), "low is not a positive number", 2, "low=0.0"),
    (
        "infinite high",
        lambda f: at(f, 4, high=float("inf")),
        "high is not a positive number",
        4,
        "high=inf",
    ),
    ("negative volume", lambda f: at(f, 6, volume=-1.0), "volume is", 6, "volume=-1.0"),
    ("nan volume", lambda f: at(f, 1, volume=float("nan")), "volume is", 1, "volume=nan"),
    ("high < low", lambda f: at(f, 2, high=9.0, low=9.4), "high < low", 2, "high=9.0"),
    ("high < close", lambda f: at(f, 3, high=13.2), "high below max(open, close)", 3, "high=13.2"),
    ("low > open", lambda f: at(f, 4, low=14.2), "low above min(open, close)", 4, "low=14.2"),
    (
        "duplicate",
        lambda f: at(f, 5, timestamp=f["timestamp"][4]),
        "duplicate timestamp",
        5,
        "already at row 4",
    ),
    (
        "decreasing",
        lambda f: at(f, 3, timestamp=START - timedelta(hours=1)),
        "timestamps not increasing",
        3,
        "2023-12-31T23:00:00+00:00 comes after 2024-01-01T02:00:00+00:00 (row 2)",
    ),
]


@pytest.mark.parametrize(
    ("case", "mutate", "problem", "row", "shown"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_each_fault_names_where_the_problem_the_row_and_its_values(
    case: str, mutate: Callable[[pl.DataFrame], pl.DataFrame], problem: str, row: int, shown: str
) -> None:
    with pytest.raises(DataValidationError) as caught:
        validate_bars(mutate(hourly_bars()), "symbol X from source Y")
    error = caught.value
    assert (error.where, error.row) == ("symbol X from source Y", row)
    assert problem in error.problem
    assert shown in str(error)
    assert str(error).startswith(f"symbol X from source Y: {error.problem} at row {row}")


def test_the_first_bad_row_is_reported_when_several_are_bad() -> None:
    frame = at(at(hourly_bars(), 6, open=-1.0), 2, close=-2.0)
    with pytest.raises(DataValidationError) as caught:
        validate_bars(frame, "w")
    assert (caught.value.row, caught.value.problem) == (2, "close is not a positive number")


def test_empty_frame_and_missing_columns() -> None:
    with pytest.raises(DataValidationError, match="w: no bars"):
        validate_bars(hourly_bars().clear(), "w")
    with pytest.raises(
        DataValidationError,
        match=r"missing columns 'high', 'volume': found columns \['timestamp', 'open', 'low', 'close'\]",
    ):
        validate_bars(hourly_bars().drop("high", "volume"), "w")


def test_wrong_dtypes_are_named() -> None:
    with pytest.raises(DataValidationError, match="column 'close' has dtype String"):
        validate_bars(hourly_bars().with_columns(pl.col("close").cast(pl.String)), "w")
    with pytest.raises(DataValidationError, match="column 'timestamp' has dtype String"):
        validate_bars(hourly_bars().with_columns(pl.col("timestamp").cast(pl.String)), "w")


def test_bars_closer_than_the_timeframe_are_rejected() -> None:
    with pytest.raises(
        DataValidationError, match="closer together than the timeframe 4h at row 1"
    ) as caught:
        validate_bars(hourly_bars(), "w", "4h")
    assert "1:00:00 after" in str(caught.value)


def test_bars_off_the_timeframe_grid_are_rejected() -> None:
    shifted = at(hourly_bars(), 5, timestamp=START + timedelta(hours=5, minutes=30))
    with pytest.raises(DataValidationError, match="not aligned to the 1h grid at row 5"):
        validate_bars(shifted.slice(0, 6), "w", "1h")
    daily = pl.DataFrame(
        {"timestamp": [START + timedelta(days=d, hours=d == 3) for d in range(4)]}
    ).with_columns(hourly_bars(4).drop("timestamp"))
    with pytest.raises(DataValidationError, match="not aligned to the 1d grid at row 3.*00:00 UTC"):
        validate_bars(daily, "w", "1d")


def test_the_calendar_fixes_the_grid_phase() -> None:
    four_hourly = hourly_bars(3).with_columns(
        timestamp=pl.Series([START + timedelta(hours=h) for h in (14, 18, 38)]).dt.cast_time_unit(
            "us"
        )
    )
    assert validate_bars(four_hourly, "w", "4h", US_EQUITY).height == 3
    with pytest.raises(
        DataValidationError, match="not aligned to the 4h grid at row 0.*crypto 24/7"
    ):
        validate_bars(four_hourly, "w", "4h", CRYPTO_24_7)


def test_validation_does_not_sort_or_repair() -> None:
    frame = hourly_bars().reverse()
    with pytest.raises(DataValidationError, match="not increasing at row 1"):
        validate_bars(frame, "w")


# ---- quality report ---------------------------------------------------------------------------


def test_quality_report_counts_planted_gaps() -> None:
    bars = hourly_bars(48).filter(~pl.int_range(pl.len()).is_in([5, 6, 7, 20]))
    last_close = START + timedelta(hours=48)
    report = ohlcv_quality(bars, "1h", CRYPTO_24_7, now=last_close + timedelta(hours=1))
    assert report["rows"] == 44
    assert report["expected_bars"] == 48
    assert report["missing_bars"] == 4
    assert report["first_missing"] == [
        (START + timedelta(hours=h)).isoformat() for h in (5, 6, 7, 20)
    ]
    assert (report["largest_gap_bars"], report["largest_gap_start"]) == (
        3,
        (START + timedelta(hours=5)).isoformat(),
    )
    assert report["unexpected_bars"] == 0
    assert report["staleness_hours"] == 1.0
    assert report["stale"] is False
    assert report["first_bar"] == START.isoformat()


def test_quality_report_counts_broken_rows() -> None:
    bars = hourly_bars(10)
    bars = at(bars, 3, high=5.0)  # below low and body
    bars = at(bars, 7, low=20.0)  # above the body
    bars = at(bars, 8, volume=-5.0)
    bars = at(bars, 9, close=float("nan"))
    bars = pl.concat([bars, bars.slice(4, 1)])  # duplicate of row 4, also a backwards step
    report = ohlcv_quality(bars, "1h", CRYPTO_24_7, now=START + timedelta(hours=11))
    assert report["duplicates"] == 1
    assert report["non_increasing"] == 1
    assert report["ohlc_inconsistent"] == 2
    assert report["negative_volume"] == 1
    assert report["bad_prices"] == 1
    assert report["missing_bars"] == 0


def test_weekends_are_neither_missing_nor_stale_for_equities() -> None:
    sessions = US_EQUITY.expected_bar_starts(
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 5, 23, tzinfo=UTC), "1h"
    )
    bars = hourly_bars(sessions.len()).with_columns(timestamp=sessions)
    friday_close = datetime(2024, 1, 5, 21, tzinfo=UTC)
    monday = datetime(2024, 1, 8, tzinfo=UTC)
    before = ohlcv_quality(bars, "1h", US_EQUITY, now=monday + timedelta(hours=16, minutes=59))
    assert before["missing_bars"] == 0
    assert before["staleness_hours"] == pytest.approx(
        (monday + timedelta(hours=16, minutes=59) - friday_close) / timedelta(hours=1)
    )
    # Monday's 14:00, 15:00 and 16:00 bars must all have closed (17:00) before the feed is stale.
    assert before["stale_threshold_hours"] == 68.0
    assert before["stale"] is False
    assert ohlcv_quality(bars, "1h", US_EQUITY, now=monday + timedelta(hours=17))["stale"] is True
    weekend_bar = pl.concat(
        [
            bars,
            bars.tail(1).with_columns(
                timestamp=pl.lit(datetime(2024, 1, 6, 15, tzinfo=UTC)).dt.cast_time_unit("us")
            ),
        ]
    )
    assert ohlcv_quality(weekend_bar, "1h", US_EQUITY, now=monday)["unexpected_bars"] == 1


def test_crypto_is_stale_after_three_missing_hours() -> None:
    bars = hourly_bars(5)
    last_close = START + timedelta(hours=5)
    assert (
        ohlcv_quality(bars, "1h", CRYPTO_24_7, now=last_close + timedelta(hours=2, minutes=59))[
            "stale"
        ]
        is False
    )
    report = ohlcv_quality(bars, "1h", CRYPTO_24_7, now=last_close + timedelta(hours=3))
    assert (report["stale"], report["stale_threshold_hours"], report["staleness_hours"]) == (
        True,
        3.0,
        3.0,
    )


def test_quality_report_of_no_bars() -> None:
    report = ohlcv_quality(hourly_bars().clear(), "1h", CRYPTO_24_7, now=START)
    assert (report["rows"], report["missing_bars"], report["stale"], report["last_bar"]) == (
        0,
        0,
        True,
        None,
    )
