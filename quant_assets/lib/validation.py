"""Bar validation: reject bad OHLCV data naming where and the first bad row, and report data quality."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import polars as pl

from quant_assets.lib.calendars import MarketCalendar, as_utc
from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.sources.base import OHLCV_COLUMNS
from quant_assets.lib.timeframes import timeframe_delta, timeframe_seconds

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
# Price adjustments leave float noise (high 99.99999999999 vs close 100.0); tolerate only that.
_REL_TOL = 1e-9
_US_PER_SECOND = 1_000_000
# A feed is stale once this many bars the calendar expects have closed without arriving.
STALE_AFTER_BARS = 3
_MISSING_SHOWN = 5


def validate_bars(
    frame: pl.DataFrame,
    where: str,
    timeframe: str | None = None,
    calendar: MarketCalendar | None = None,
) -> pl.DataFrame:
    """`frame` cast to OHLCV_SCHEMA (columns in canonical order), or DataValidationError.

    The error names `where`, the problem, the first bad row (0-based) and its values. Nothing is
    repaired: unsorted or duplicated bars are errors, not silently sorted or dropped. With a
    `timeframe`, bars must be at least that far apart and on its grid: the `calendar`'s windows
    when given, else 00:00 UTC for daily bars and the first bar's phase for intraday ones.
    """
    if frame.height == 0:
        raise DataValidationError(where, "no bars (empty frame)")
    missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
    if missing:
        raise DataValidationError(
            where,
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
            detail=f"found columns {frame.columns}",
        )
    bars = frame.select(
        _timestamp_utc(frame, where), *(_float_column(frame, c, where) for c in OHLCV_COLUMNS[1:])
    )

    _raise_at_first(bars, bars["timestamp"].is_null(), where, "missing timestamp")
    bad_prices = {c: _bad_number(bars[c]) | (bars[c] <= 0).fill_null(True) for c in PRICE_COLUMNS}
    any_bad = pl.DataFrame(bad_prices).select(pl.any_horizontal(PRICE_COLUMNS)).to_series()
    if any_bad.any():
        row = int(any_bad.arg_true()[0])
        column = next(c for c in PRICE_COLUMNS if bad_prices[c][row])
        raise DataValidationError(
            where, f"{column} is not a positive number", row, _describe_row(bars, row)
        )
    _raise_at_first(
        bars,
        _bad_number(bars["volume"]) | (bars["volume"] < 0),
        where,
        "volume is missing, NaN, infinite or negative",
    )
    high, low = bars["high"], bars["low"]
    _raise_at_first(bars, high < low * (1 - _REL_TOL), where, "high < low")
    body_top = bars.select(pl.max_horizontal("open", "close")).to_series()
    body_bottom = bars.select(pl.min_horizontal("open", "close")).to_series()
    _raise_at_first(bars, high < body_top * (1 - _REL_TOL), where, "high below max(open, close)")
    _raise_at_first(bars, low > body_bottom * (1 + _REL_TOL), where, "low above min(open, close)")

    timestamps = bars["timestamp"]
    duplicated = ~timestamps.is_first_distinct()
    if duplicated.any():
        row = int(duplicated.arg_true()[0])
        first_seen = int((timestamps == timestamps[row]).arg_true()[0])
        raise DataValidationError(
            where,
            "duplicate timestamp",
            row,
            f"{_fmt(timestamps[row])} already at row {first_seen}",
        )
    steps = timestamps.diff()
    decreasing = (steps < timedelta(0)).fill_null(False)
    if decreasing.any():
        row = int(decreasing.arg_true()[0])
        raise DataValidationError(
            where,
            "timestamps not increasing",
            row,
            f"{_fmt(timestamps[row])} comes after {_fmt(timestamps[row - 1])} (row {row - 1}); sort the bars",
        )
    if timeframe is not None:
        _check_grid(timestamps, steps, timeframe, calendar, where)
    return bars


def _timestamp_utc(frame: pl.DataFrame, where: str) -> pl.Expr:
    dtype = frame.schema["timestamp"]
    column = pl.col("timestamp")
    if dtype == pl.Date:
        column = column.cast(pl.Datetime("us"))
    elif not isinstance(dtype, pl.Datetime):
        raise DataValidationError(
            where, f"column 'timestamp' has dtype {dtype}, expected datetimes"
        )
    elif dtype.time_zone is not None:  # type: ignore[union-attr]
        return column.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    return column.dt.cast_time_unit("us").dt.replace_time_zone("UTC")


def _float_column(frame: pl.DataFrame, column: str, where: str) -> pl.Expr:
    dtype = frame.schema[column]
    if not dtype.is_numeric():
        raise DataValidationError(where, f"column {column!r} has dtype {dtype}, expected numbers")
    return pl.col(column).cast(pl.Float64)


def _bad_number(values: pl.Series) -> pl.Series:
    return (values.is_null() | ~values.is_finite()).fill_null(True)


def _raise_at_first(bars: pl.DataFrame, bad: pl.Series, where: str, problem: str) -> None:
    bad = bad.fill_null(True)
    if bad.any():
        row = int(bad.arg_true()[0])
        raise DataValidationError(where, problem, row, _describe_row(bars, row))


def _describe_row(bars: pl.DataFrame, row: int) -> str:
    values = bars.row(row, named=True)
    return ", ".join(f"{name}={_fmt(value)}" for name, value in values.items())


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def _check_grid(
    timestamps: pl.Series,
    steps: pl.Series,
    timeframe: str,
    calendar: MarketCalendar | None,
    where: str,
) -> None:
    duration = timeframe_delta(timeframe)
    too_close = (steps < duration).fill_null(False)
    if too_close.any():
        row = int(too_close.arg_true()[0])
        raise DataValidationError(
            where,
            f"bars closer together than the timeframe {timeframe}",
            row,
            f"{_fmt(timestamps[row])} is {steps[row]} after {_fmt(timestamps[row - 1])}",
        )
    step_us = timeframe_seconds(timeframe) * _US_PER_SECOND
    phase = timestamps.dt.epoch("us") % step_us
    if calendar is not None:
        expected = int(calendar.window_offset(timeframe).total_seconds()) * _US_PER_SECOND
        rule = f"{timeframe} windows of the {calendar.name} calendar"
    elif timeframe_seconds(timeframe) >= 86400:
        expected, rule = 0, "daily bars labelled 00:00 UTC of their day"
    else:
        expected = int(phase[0])
        rule = f"the {timeframe} grid of the first bar ({_fmt(timestamps[0])})"
    off_grid = phase != expected
    if off_grid.any():
        row = int(off_grid.arg_true()[0])
        raise DataValidationError(
            where,
            f"timestamp not aligned to the {timeframe} grid",
            row,
            f"{_fmt(timestamps[row])} is not on {rule}",
        )


def ohlcv_quality(
    frame: pl.DataFrame, timeframe: str, calendar: MarketCalendar, now: datetime
) -> dict[str, Any]:
    """A data-quality report of canonical bars, with plain values fit for Dagster metadata.

    Counts of rows breaking each rule (`non_increasing` counts steps that do not increase, so an
    adjacent duplicate counts there too), bars the calendar expects but are missing (with the first
    few), bars it does not expect, the longest run of missing bars, and staleness: hours since the
    last bar closed, and whether STALE_AFTER_BARS expected bars have closed since (so a weekend is
    not staleness for equities, but three missing hours are for crypto).
    """
    now = as_utc(now)
    timestamps = frame["timestamp"].drop_nulls().unique().sort()
    report: dict[str, Any] = {
        "timeframe": timeframe,
        "calendar": calendar.name,
        "rows": frame.height,
        "duplicates": int((~frame["timestamp"].is_first_distinct()).sum()),
        "non_increasing": int((frame["timestamp"].diff() <= timedelta(0)).sum()),
        "ohlc_inconsistent": int(
            frame.select(
                (pl.col("high") < pl.col("low"))
                | (pl.col("high") < pl.max_horizontal("open", "close"))
                | (pl.col("low") > pl.min_horizontal("open", "close"))
            )
            .to_series()
            .sum()
        ),
        "bad_prices": int(
            frame.select(
                pl.any_horizontal(
                    pl.col(c).is_null() | ~pl.col(c).is_finite() | (pl.col(c) <= 0)
                    for c in PRICE_COLUMNS
                )
            )
            .to_series()
            .fill_null(True)
            .sum()
        ),
        "negative_volume": int((frame["volume"] < 0).sum()),
    }
    if timestamps.is_empty():
        return report | {
            "first_bar": None,
            "last_bar": None,
            "expected_bars": 0,
            "missing_bars": 0,
            "first_missing": [],
            "unexpected_bars": 0,
            "largest_gap_bars": 0,
            "largest_gap_start": None,
            "staleness_hours": None,
            "stale_threshold_hours": None,
            "stale": True,
        }
    first, last = timestamps[0], timestamps[-1]
    expected = calendar.expected_bar_starts(first, last, timeframe)
    is_missing = ~expected.is_in(timestamps.implode())
    missing = expected.filter(is_missing)
    runs = (
        pl.DataFrame({"timestamp": expected, "missing": is_missing})
        .with_columns(run=pl.col("missing").rle_id())
        .filter(pl.col("missing"))
        .group_by("run")
        .agg(pl.col("timestamp").first().alias("start"), pl.len().alias("bars"))
        .sort(["bars", "start"], descending=[True, False])
    )
    step = timeframe_delta(timeframe)
    last_close = last + step
    upcoming = calendar.expected_bar_starts(last + step, last + timedelta(days=14), timeframe)
    stale_after = upcoming[STALE_AFTER_BARS - 1] + step
    return report | {
        "first_bar": first.isoformat(),
        "last_bar": last.isoformat(),
        "expected_bars": expected.len(),
        "missing_bars": missing.len(),
        "first_missing": [t.isoformat() for t in missing.head(_MISSING_SHOWN)],
        "unexpected_bars": int((~timestamps.is_in(expected.implode())).sum()),
        "largest_gap_bars": int(runs["bars"][0]) if runs.height else 0,
        "largest_gap_start": runs["start"][0].isoformat() if runs.height else None,
        "staleness_hours": (now - last_close) / timedelta(hours=1),
        "stale_threshold_hours": (stale_after - last_close) / timedelta(hours=1),
        "stale": now >= stale_after,
    }
