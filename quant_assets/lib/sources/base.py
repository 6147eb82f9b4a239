"""The market-data source interface: every source returns validated base bars for one symbol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from quant_assets.lib.calendars import MarketCalendar
from quant_assets.lib.timeframes import TIMEFRAMES, timeframe_seconds

# The canonical bar frame every source returns and every asset stores.
OHLCV_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": pl.Datetime("us", "UTC"),  # bar OPEN time, UTC
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}
OHLCV_COLUMNS: tuple[str, ...] = tuple(OHLCV_SCHEMA)


#: consecutive steps at a coarser timeframe's spacing that mean the data changed interval
INTERVAL_RUN = 20


def interval_change(timestamps: pl.Series, timeframe: str) -> tuple[int, int, str] | None:
    """(first row, last row, coarser timeframe) of a stretch of bars spaced like a coarser timeframe
    inside `timeframe` data, or None.

    Data that switches interval midway (daily bars, then hourly) passes the per-bar checks of the
    finer interval, so this looks for INTERVAL_RUN or more consecutive steps of at least twice the
    timeframe whose median spacing is exactly another timeframe's. Gaps (an outage, a weekend, a
    thinly traded symbol's irregular days) are single steps or no timeframe's spacing.
    """
    if timestamps.len() <= INTERVAL_RUN:
        return None
    seconds = timeframe_seconds(timeframe)
    steps = timestamps.diff().dt.total_seconds().fill_null(0)
    coarse = pl.DataFrame({"coarse": steps >= 2 * seconds, "step": steps}).with_row_index("row")
    runs = (
        coarse.with_columns(run=pl.col("coarse").rle_id())
        .filter(pl.col("coarse"))
        .group_by("run")
        .agg(
            pl.col("row").min().alias("first"),
            pl.col("row").max().alias("last"),
            pl.col("step").quantile(0.5, interpolation="lower").alias("median"),
        )
        .filter(pl.col("last") - pl.col("first") + 1 >= INTERVAL_RUN)
        .sort("first")
    )
    by_seconds = {timeframe_seconds(t): t for t in TIMEFRAMES}
    for first, last, median in runs.select("first", "last", "median").iter_rows():
        if int(median) in by_seconds:
            # row `first` is the first bar after a coarse step; the stretch begins a bar earlier
            return max(int(first) - 1, 0), int(last), by_seconds[int(median)]
    return None


@dataclass(frozen=True)
class Bars:
    """Bars of one symbol at one timeframe, with the calendar they trade on."""

    symbol: str
    timeframe: str
    calendar: MarketCalendar
    frame: pl.DataFrame  # OHLCV_SCHEMA, strictly increasing timestamps


class MarketDataSource(ABC):
    """A place bars come from. Implementations validate everything they return."""

    #: short name used in logs and metadata, e.g. "synthetic", "files:/data", "postgres"
    description: str

    @abstractmethod
    def list_symbols(self) -> list[str]:
        """Symbols this source can serve (normalised partition keys)."""

    @abstractmethod
    def native_timeframes(self, symbol: str) -> list[str]:
        """Timeframes the source holds for `symbol` as stored bars, finest first.

        Raises UnknownSymbolError naming the symbol (and where it looked) when it has none.
        """

    @abstractmethod
    def load_bars(self, symbol: str, timeframe: str, since: datetime | None = None) -> Bars:
        """Validated bars of `symbol` at the native `timeframe`, from `since` (inclusive) on."""
