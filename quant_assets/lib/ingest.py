"""Incremental refresh of stored bars: fetch only what is new, and detect a source that rewrote history."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from quant_assets.lib.calendars import MarketCalendar
from quant_assets.lib.ohlcv import bars_for_timeframe, merge_bars
from quant_assets.lib.sources.base import MarketDataSource


@dataclass(frozen=True)
class RefreshResult:
    frame: pl.DataFrame
    calendar: MarketCalendar
    new_rows: int  # rows past the previously stored last bar
    revised_rows: int  # stored rows replaced by the source's newer version of the same bars
    full_reload: bool  # True when nothing was stored or the source disagreed with stored history
    reason: str


def refresh_bars(
    source: MarketDataSource, symbol: str, timeframe: str, stored: pl.DataFrame | None
) -> RefreshResult:
    """Stored bars extended with the source's new bars.

    The fetch starts two bars before the stored end: the last stored bar may have been revised by
    the source (it is replaced), the one before it must be unchanged. If it changed, the source has
    rewritten history (another seed, another file) and the whole series is reloaded rather than
    stitching two histories together.
    """
    if stored is None or stored.height < 2:
        bars = bars_for_timeframe(source, symbol, timeframe)
        return RefreshResult(bars.frame, bars.calendar, bars.frame.height, 0, True, "initial load")

    anchor = stored["timestamp"][-2]
    bars = bars_for_timeframe(source, symbol, timeframe, since=anchor)
    fresh = bars.frame.filter(pl.col("timestamp") >= anchor)
    overlap_stored = stored.filter(pl.col("timestamp") == anchor)
    overlap_fresh = fresh.filter(pl.col("timestamp") == anchor)
    if fresh.is_empty() or not overlap_stored.equals(overlap_fresh):
        full = bars_for_timeframe(source, symbol, timeframe)
        return RefreshResult(
            full.frame,
            full.calendar,
            full.frame.height,
            0,
            True,
            f"source history differs from stored bars at {anchor}; reloaded in full",
        )
    merged = merge_bars(stored, fresh)
    last_stored = stored["timestamp"][-1]
    new_rows = merged.filter(pl.col("timestamp") > last_stored).height
    revised = fresh.filter(pl.col("timestamp") == last_stored)
    revised_rows = int(not revised.equals(stored.filter(pl.col("timestamp") == last_stored)))
    return RefreshResult(merged, bars.calendar, new_rows, revised_rows, False, "incremental")
