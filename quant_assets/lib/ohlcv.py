"""OHLCV bars at any timeframe: resampling base bars session-aware, and merging re-materialized bars."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from quant_assets.lib.calendars import MarketCalendar, as_utc
from quant_assets.lib.errors import InvalidTimeframeError
from quant_assets.lib.sources.base import OHLCV_COLUMNS, Bars, MarketDataSource
from quant_assets.lib.timeframes import check_timeframe, timeframe_delta, timeframe_seconds
from quant_assets.lib.validation import validate_bars

_US_PER_SECOND = 1_000_000


def resample_bars(
    frame: pl.DataFrame,
    from_timeframe: str,
    to_timeframe: str,
    calendar: MarketCalendar,
    as_of: datetime | None = None,
) -> pl.DataFrame:
    """Validated `from_timeframe` bars aggregated into `to_timeframe` bars labelled by window start.

    First open, max high, min low, last close, summed volume over the base bars each window holds;
    a window without base bars yields no row. Intraday windows start at the calendar's session open,
    daily windows are UTC days. The trailing window is dropped unless it ended (at the session close
    when that comes first) by `as_of`, which defaults to the close of the last base bar.
    """
    from_seconds, to_seconds = timeframe_seconds(from_timeframe), timeframe_seconds(to_timeframe)
    if to_seconds < from_seconds:
        raise InvalidTimeframeError(
            f"cannot resample {from_timeframe} bars to the finer {to_timeframe}; bars are never invented"
        )
    if to_seconds % from_seconds:
        raise InvalidTimeframeError(
            f"{to_timeframe} is not a whole number of {from_timeframe} bars; cannot resample"
        )
    if to_seconds == from_seconds or frame.is_empty():
        return frame.select(OHLCV_COLUMNS)
    as_of = (
        as_utc(as_of)
        if as_of is not None
        else frame["timestamp"][-1] + timeframe_delta(from_timeframe)
    )
    step_us = to_seconds * _US_PER_SECOND
    offset_us = int(calendar.window_offset(to_timeframe).total_seconds()) * _US_PER_SECOND
    window_start = (
        ((pl.col("timestamp").dt.epoch("us") - offset_us) // step_us * step_us + offset_us)
        .cast(pl.Datetime("us"))
        .dt.replace_time_zone("UTC")
    )
    window_end = pl.col("timestamp") + timeframe_delta(to_timeframe)
    if calendar.session_close is not None:
        day_close = pl.col("timestamp").dt.truncate("1d") + pl.duration(
            seconds=calendar.session_close_seconds
        )
        window_end = (
            pl.when(pl.col("timestamp") < day_close)
            .then(pl.min_horizontal(window_end, day_close))
            .otherwise(window_end)
        )
    return (
        frame.group_by(window_start.alias("window"), maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
        .rename({"window": "timestamp"})
        .filter(window_end <= as_of)
        .select(OHLCV_COLUMNS)
    )


def bars_for_timeframe(
    source: MarketDataSource, symbol: str, timeframe: str, since: datetime | None = None
) -> Bars:
    """`symbol`'s bars at `timeframe`: the source's own if it holds them, else resampled from the
    coarsest timeframe it holds that divides `timeframe`.

    With `since`, bars start at the window containing `since`, built from all of its base bars.
    Raises InvalidTimeframeError when `timeframe` is finer than anything the source holds.
    """
    check_timeframe(timeframe)
    natives = source.native_timeframes(symbol)
    if timeframe in natives:
        return source.load_bars(symbol, timeframe, since)
    target = timeframe_seconds(timeframe)
    divisors = [
        t for t in natives if timeframe_seconds(t) < target and target % timeframe_seconds(t) == 0
    ]
    if not divisors:
        finest = min(natives, key=timeframe_seconds)
        if target < timeframe_seconds(finest):
            raise InvalidTimeframeError(
                f"{symbol}: {timeframe} is finer than the source's data (finest {finest}); "
                "bars are never invented"
            )
        raise InvalidTimeframeError(
            f"{symbol}: none of the source's timeframes ({', '.join(natives)}) divides {timeframe}"
        )
    base_timeframe = max(divisors, key=timeframe_seconds)
    window = timeframe_delta(timeframe)
    # Windows tile time, so the one containing `since` is the only one starting in (since - window,
    # since]; loading from since - window brings all of its base bars.
    first_window_after = None if since is None else as_utc(since) - window
    base = source.load_bars(symbol, base_timeframe, first_window_after)
    frame = resample_bars(base.frame, base_timeframe, timeframe, base.calendar)
    if first_window_after is not None:
        frame = frame.filter(pl.col("timestamp") > first_window_after)
    return Bars(base.symbol, timeframe, base.calendar, frame)


def merge_bars(stored: pl.DataFrame | None, new: pl.DataFrame) -> pl.DataFrame:
    """Stored bars before the first new bar, then the new bars (which replace any revised ones).

    Merging the same `new` twice gives the same result, so re-materializing is idempotent.
    """
    if stored is None or stored.is_empty():
        return new
    if new.is_empty():
        return stored
    first_new = new["timestamp"][0]
    merged = pl.concat(
        [stored.filter(pl.col("timestamp") < first_new), new], how="vertical_relaxed"
    )
    return validate_bars(merged, "merge_bars(stored bars, new bars)")
