"""Trading calendars: when a market trades, which bar open times it produces, and how bars are windowed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal

import polars as pl

from quant_assets.lib.symbols import is_crypto_symbol
from quant_assets.lib.timeframes import timeframe_delta, timeframe_seconds

_DAY_SECONDS = 86400
_US_PER_SECOND = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _seconds_of_day(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def as_utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; naive datetimes are taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class MarketCalendar:
    """When a market trades, in UTC.

    `session_open`/`session_close` bound the trading hours of each trading day; `None` means the
    session starts at 00:00 / ends at 24:00, so both `None` is a market trading around the clock.
    Sessions crossing midnight are not modelled.
    """

    name: str
    weekdays_only: bool
    session_open: time | None
    session_close: time | None

    def __post_init__(self) -> None:
        if self.session_open_seconds >= self.session_close_seconds:
            raise ValueError(
                f"calendar {self.name!r}: session_open {self.session_open} must be before "
                f"session_close {self.session_close} (sessions crossing midnight are not modelled)"
            )

    @property
    def session_open_seconds(self) -> int:
        return 0 if self.session_open is None else _seconds_of_day(self.session_open)

    @property
    def session_close_seconds(self) -> int:
        return _DAY_SECONDS if self.session_close is None else _seconds_of_day(self.session_close)

    @property
    def has_session(self) -> bool:
        """True when the market closes for part of each trading day."""
        return self.session_open is not None or self.session_close is not None

    def window_offset(self, timeframe: str) -> timedelta:
        """Offset from the epoch-aligned grid of `timeframe` windows.

        Intraday windows start at the session open (a 4h equity bar is [14:00, 18:00) then
        [18:00, 21:00)); daily windows are UTC days and 24/7 windows are epoch aligned.
        """
        seconds = timeframe_seconds(timeframe)
        if seconds >= _DAY_SECONDS:
            return timedelta(0)
        return timedelta(seconds=self.session_open_seconds % seconds)

    def expected_bar_starts(self, start: datetime, end: datetime, timeframe: str) -> pl.Series:
        """Open times (UTC) of every bar the calendar expects with `start <= open <= end`.

        Daily bars are labelled 00:00 UTC of their day; intraday bars lie on the window grid
        (see `window_offset`) and open inside the session. Holidays are not modelled.
        """
        step_us = timeframe_seconds(timeframe) * _US_PER_SECOND
        offset_us = int(self.window_offset(timeframe).total_seconds()) * _US_PER_SECOND
        start_us = (as_utc(start) - _EPOCH) // timedelta(microseconds=1)
        first_us = -((offset_us - start_us) // step_us) * step_us + offset_us  # ceil onto the grid
        first = _EPOCH + timedelta(microseconds=first_us)
        end = as_utc(end)
        if first > end:
            return pl.Series("timestamp", [], dtype=pl.Datetime("us", "UTC"))
        starts = pl.datetime_range(
            first, end, f"{step_us // _US_PER_SECOND}s", time_unit="us", eager=True
        ).alias("timestamp")
        keep = pl.lit(True)
        if self.weekdays_only:
            keep = keep & (pl.col("timestamp").dt.weekday() <= 5)
        if self.has_session and step_us < _DAY_SECONDS * _US_PER_SECOND:
            tod = _seconds_of_day_expr(pl.col("timestamp"))
            keep = keep & (tod >= self.session_open_seconds) & (tod < self.session_close_seconds)
        return starts.to_frame().filter(keep).to_series()

    def bar_close_times(
        self, timestamps: pl.Expr | pl.Series, timeframe: str
    ) -> pl.Expr | pl.Series:
        """When bars opening at `timestamps` are available: open + the timeframe's duration.

        Conservative: for a window cut short by the session close (the [18:00, 21:00) 4h equity
        bar, a daily equity bar) this is later than the real close, never earlier.
        """
        return timestamps + timeframe_delta(timeframe)


def _seconds_of_day_expr(timestamps: pl.Expr) -> pl.Expr:
    return (
        timestamps.dt.hour().cast(pl.Int64) * 3600
        + timestamps.dt.minute().cast(pl.Int64) * 60
        + timestamps.dt.second().cast(pl.Int64)
    )


CRYPTO_24_7 = MarketCalendar(
    "crypto 24/7", weekdays_only=False, session_open=None, session_close=None
)
# A documented simplification of NYSE/Nasdaq regular hours (13:30/14:30-20:00/21:00 UTC with DST,
# plus holidays): fixed 14:00-21:00 UTC on every weekday, no holidays.
US_EQUITY = MarketCalendar(
    "US equity (weekdays 14:00-21:00 UTC)",
    weekdays_only=True,
    session_open=time(14, 0),
    session_close=time(21, 0),
)


def calendar_for_symbol(symbol: str) -> MarketCalendar:
    """CRYPTO_24_7 for crypto-style pairs (BTCUSDT), US_EQUITY for everything else."""
    return CRYPTO_24_7 if is_crypto_symbol(symbol) else US_EQUITY


def infer_calendar(frame: pl.DataFrame, timeframe: str) -> MarketCalendar:
    """The calendar bars from a file evidently trade on.

    Any bar on a Saturday or Sunday means 24/7. Otherwise weekdays only, with the session spanning
    the earliest bar open to the latest bar close time of day (no session for daily bars).
    """
    timestamps = frame.get_column("timestamp")
    if (timestamps.dt.weekday() >= 6).any():
        return CRYPTO_24_7
    seconds = timeframe_seconds(timeframe)
    if seconds >= _DAY_SECONDS or timestamps.is_empty():
        return MarketCalendar("weekdays (inferred)", True, None, None)
    tod = timestamps.to_frame().select(_seconds_of_day_expr(pl.col("timestamp"))).to_series()
    open_s, close_s = int(tod.min()), int(tod.max()) + seconds
    if close_s > _DAY_SECONDS:  # a bar runs past midnight: no daily session to speak of
        open_s, close_s = 0, _DAY_SECONDS
    session_open = None if open_s == 0 else _time_of_seconds(open_s)
    session_close = None if close_s == _DAY_SECONDS else _time_of_seconds(close_s)
    if (session_open, session_close) == (US_EQUITY.session_open, US_EQUITY.session_close):
        return US_EQUITY
    label = f"{_time_of_seconds(open_s):%H:%M}-{'24:00' if session_close is None else f'{session_close:%H:%M}'}"
    return MarketCalendar(f"weekdays {label} UTC (inferred)", True, session_open, session_close)


def _time_of_seconds(seconds: int) -> time:
    return time(seconds // 3600, seconds % 3600 // 60, seconds % 60)


def annualization_kind(frame: pl.DataFrame, timeframe: str) -> Literal["24/7", "session"]:
    """How bars `frame` trade for annualizing their returns: "24/7" or exchange "session"s."""
    return "session" if infer_calendar(frame, timeframe).has_session else "24/7"
