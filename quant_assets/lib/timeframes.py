"""Bar timeframes: their durations, their order, and how many of them make a year."""

from __future__ import annotations

from datetime import timedelta

from quant_assets.lib.errors import InvalidTimeframeError

# Ordered finest first; the order is the one of the `timeframe` partition dimension.
TIMEFRAMES: tuple[str, ...] = ("1m", "5m", "15m", "1h", "4h", "1d")

_SECONDS: dict[str, int] = {
    "1m": 60,
    "5m": 5 * 60,
    "15m": 15 * 60,
    "1h": 3600,
    "4h": 4 * 3600,
    "1d": 86400,
}


def check_timeframe(timeframe: str) -> str:
    """Return `timeframe` if it is one of TIMEFRAMES, else raise InvalidTimeframeError."""
    if timeframe not in _SECONDS:
        raise InvalidTimeframeError(
            f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAMES)}"
        )
    return timeframe


def timeframe_seconds(timeframe: str) -> int:
    return _SECONDS[check_timeframe(timeframe)]


def timeframe_delta(timeframe: str) -> timedelta:
    return timedelta(seconds=timeframe_seconds(timeframe))


def polars_every(timeframe: str) -> str:
    """The duration string polars uses for this timeframe (`1m` is a month in polars)."""
    return f"{timeframe_seconds(timeframe)}s"


def higher_timeframes(timeframe: str, among: tuple[str, ...] | list[str] = TIMEFRAMES) -> list[str]:
    """Timeframes of `among` strictly coarser than `timeframe`, finest first."""
    secs = timeframe_seconds(timeframe)
    return sorted((t for t in among if timeframe_seconds(t) > secs), key=timeframe_seconds)


def bars_per_day(timeframe: str, trading_hours_per_day: float = 24.0) -> float:
    if timeframe == "1d":
        return 1.0
    return trading_hours_per_day * 3600 / timeframe_seconds(timeframe)


def periods_per_year(
    timeframe: str, *, trading_days: int = 365, hours_per_day: float = 24.0
) -> float:
    """Bars per year: 365 days of 24h for 24/7 markets, 252 sessions of `hours_per_day` for equities."""
    return trading_days * bars_per_day(timeframe, hours_per_day)


def refresh_cron(timeframe: str, delay_minutes: int = 5) -> str:
    """Cron (UTC) of the times a `timeframe` bar has just closed, `delay_minutes` later (for the
    source to publish it): "5 * * * *" for 1h, "5 */4 * * *" for 4h, "5 0 * * *" for 1d. Sub-hour
    timeframes keep the delay below one bar ("1-59/5 * * * *" for 5m)."""
    minutes = timeframe_seconds(timeframe) // 60
    if delay_minutes < 0:
        raise ValueError(f"refresh delay must be >= 0 minutes, got {delay_minutes}")
    if minutes < 60:
        offset = min(delay_minutes, minutes - 1)
        return "* * * * *" if minutes == 1 else f"{offset}-59/{minutes} * * * *"
    hours = minutes // 60
    if delay_minutes >= 60:
        raise ValueError(f"refresh delay must be < 60 minutes, got {delay_minutes}")
    if hours < 24:
        return f"{delay_minutes} * * * *" if hours == 1 else f"{delay_minutes} */{hours} * * *"
    return f"{delay_minutes} 0 * * *"
