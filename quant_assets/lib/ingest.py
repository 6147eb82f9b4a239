"""Refresh of stored bars with protected history: the source's bars are compared with the stored
partition on every bar they share, and bars that contradict it are refused unless a rewrite is
explicitly allowed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from quant_assets.lib.calendars import MarketCalendar, as_utc
from quant_assets.lib.errors import HistoryConflictError
from quant_assets.lib.ohlcv import bars_for_timeframe
from quant_assets.lib.sources.base import OHLCV_COLUMNS, MarketDataSource
from quant_assets.lib.timeframes import timeframe_delta

VALUE_COLUMNS: tuple[str, ...] = OHLCV_COLUMNS[1:]
# Bars a source recomputes from the same data agree to float noise (a resampled volume summed in
# another order); anything beyond that is a different bar.
_REL_TOL = 1e-12
REWRITE_HINT = (
    "set allow_history_rewrite = true (or QUANT_ASSETS_ALLOW_HISTORY_REWRITE=1) to accept the "
    "source's history and reload the partition in full"
)


@dataclass(frozen=True)
class RefreshResult:
    frame: pl.DataFrame
    calendar: MarketCalendar
    new_rows: int  # rows past the previously stored last bar
    revised_rows: int  # the stored last bar replaced by the source's newer version of it (0 or 1)
    full_reload: bool  # True when nothing was stored, or an allowed rewrite replaced the history
    reason: str
    filled_rows: int = 0  # bars before or inside the stored range that the stored partition lacked
    #: the conflict an allowed rewrite overrode ("" when the source agreed with stored history),
    #: for the materialization metadata
    history_rewrite: str = ""


@dataclass(frozen=True)
class HistoryConflict:
    """The first way the source's bars contradict the stored ones."""

    kind: str  # "shrunk" | "rewritten"
    timestamp: datetime
    column: str  # the first differing value column ("" when the bar is missing)
    old: dict[str, float]
    new: dict[str, float] | None  # None: the source no longer has the bar
    count: int  # stored bars affected

    def describe(
        self, symbol: str, timeframe: str, stored: pl.DataFrame, fresh: pl.DataFrame
    ) -> str:
        when = self.timestamp.isoformat()
        old = _values(self.old)
        if self.new is None:
            return (
                f"{symbol} {timeframe}: the source no longer has {self.count} stored bar(s), first "
                f"{when} (stored {old}); stored {_span(stored)}, source {_span(fresh)}"
            )
        return (
            f"{symbol} {timeframe}: the source rewrote {self.count} stored bar(s), first {when}: "
            f"{self.column} stored {self.old[self.column]!r}, new {self.new[self.column]!r} "
            f"(stored {old}; new {_values(self.new)})"
        )


def refresh_bars(
    source: MarketDataSource,
    symbol: str,
    timeframe: str,
    stored: pl.DataFrame | None,
    *,
    allow_rewrite: bool = False,
    now: datetime | None = None,
) -> RefreshResult:
    """The source's bars of the partition, checked against the `stored` partition.

    Every stored bar must still be in the source with the same values; only the last stored bar may
    differ (it may have been in progress when stored). Bars the stored partition lacks (new ones,
    filled gaps, older history) are taken. A source that dropped stored bars or changed their
    values raises HistoryConflictError naming the symbol, the first differing timestamp and both
    values, unless `allow_rewrite`, which takes the source's history in full and records the
    conflict in `history_rewrite`. Bars opening more than one bar after `now` are always refused.
    Nothing is written here, so a refusal keeps the stored file.
    """
    now = as_utc(now) if now is not None else datetime.now(UTC)
    bars = bars_for_timeframe(source, symbol, timeframe)
    fresh = bars.frame
    check_not_in_future(fresh, symbol, timeframe, now)
    if stored is None or stored.is_empty():
        return RefreshResult(fresh, bars.calendar, fresh.height, 0, True, "initial load")

    conflict = history_conflict(stored, fresh)
    if conflict is not None:
        message = conflict.describe(symbol, timeframe, stored, fresh)
        if not allow_rewrite:
            raise HistoryConflictError(
                f"{message}. The stored partition is kept; if the source's history is right, "
                f"{REWRITE_HINT}"
            )
        return RefreshResult(
            fresh,
            bars.calendar,
            fresh.height,
            conflict.count,
            True,
            f"history rewrite allowed: {message}; reloaded in full",
            history_rewrite=message,
        )
    last_stored = stored["timestamp"][-1]
    new_rows = fresh.filter(pl.col("timestamp") > last_stored).height
    filled = fresh.height - new_rows - stored.height
    revised = _changed(stored.tail(1), fresh.filter(pl.col("timestamp") == last_stored))
    return RefreshResult(
        fresh,
        bars.calendar,
        new_rows,
        int(revised.height > 0),
        False,
        "incremental" + (f"; {filled} earlier bar(s) filled in" if filled else ""),
        filled_rows=filled,
    )


def check_not_in_future(frame: pl.DataFrame, symbol: str, timeframe: str, now: datetime) -> None:
    """HistoryConflictError when a bar opens more than one bar after `now` (a bad date, not data)."""
    if frame.is_empty():
        return
    limit = as_utc(now) + timeframe_delta(timeframe)
    future = frame["timestamp"] > limit
    if future.any():
        row = int(future.arg_true()[0])
        bar = frame.row(row, named=True)
        raise HistoryConflictError(
            f"{symbol} {timeframe}: {int(future.sum())} bar(s) dated after the present, first at row "
            f"{row}: {bar['timestamp'].isoformat()} ({_values(bar)}) opens more than one bar after "
            f"{as_utc(now).isoformat(timespec='seconds')}; the stored partition is kept"
        )


def history_conflict(stored: pl.DataFrame, fresh: pl.DataFrame) -> HistoryConflict | None:
    """The first stored bar (by time) the source no longer has or has with other values, ignoring
    the last stored bar's values; None when the source agrees with every stored bar."""
    joined = stored.join(fresh, on="timestamp", how="left", suffix="_new", coalesce=True)
    missing = joined["close_new"].is_null()
    # the last stored bar may have been in progress when stored: it is revised, not rewritten
    not_last = pl.Series(range(joined.height)) < joined.height - 1
    differs = _differs(joined).fill_null(False) & not_last
    first_missing = int(missing.arg_true()[0]) if missing.any() else None
    first_differs = int(differs.arg_true()[0]) if differs.any() else None
    if first_missing is None and first_differs is None:
        return None
    if first_differs is None or (first_missing is not None and first_missing < first_differs):
        row = joined.row(first_missing, named=True)  # type: ignore[arg-type]
        old = {c: row[c] for c in VALUE_COLUMNS}
        return HistoryConflict("shrunk", row["timestamp"], "", old, None, int(missing.sum()))
    row = joined.row(first_differs, named=True)
    old = {c: row[c] for c in VALUE_COLUMNS}
    new = {c: row[f"{c}_new"] for c in VALUE_COLUMNS}
    column = next(c for c in VALUE_COLUMNS if not _close(old[c], new[c]))
    return HistoryConflict("rewritten", row["timestamp"], column, old, new, int(differs.sum()))


def _differs(joined: pl.DataFrame) -> pl.Series:
    return joined.select(
        pl.any_horizontal(
            (pl.col(c) - pl.col(f"{c}_new")).abs()
            > _REL_TOL * pl.max_horizontal(pl.col(c).abs(), pl.col(f"{c}_new").abs())
            for c in VALUE_COLUMNS
        )
    ).to_series()


def _changed(old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    joined = old.join(new, on="timestamp", how="inner", suffix="_new")
    return joined.filter(_differs(joined)) if joined.height else joined


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _REL_TOL * max(abs(a), abs(b))


def _values(row: dict) -> str:
    return ", ".join(f"{c}={row[c]!r}" for c in VALUE_COLUMNS)


def _span(frame: pl.DataFrame) -> str:
    if frame.is_empty():
        return "0 bars"
    first, last = frame["timestamp"][0], frame["timestamp"][-1]
    return f"{frame.height} bars {first.isoformat()} .. {last.isoformat()}"
