"""The market-data source interface: every source returns validated base bars for one symbol."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from quant_assets.lib.calendars import MarketCalendar

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
