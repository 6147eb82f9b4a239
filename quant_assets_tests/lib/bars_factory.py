"""Synthetic OHLCV frames for tests: fat-tailed random walks, optionally with gaps and flat stretches."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

from quant_assets.lib.sources.base import OHLCV_SCHEMA
from quant_assets.lib.timeframes import timeframe_seconds

DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)


def make_bars(
    n: int,
    timeframe: str = "1h",
    seed: int = 0,
    start: datetime = DEFAULT_START,
    gaps: bool = False,
    flat: bool = False,
    price: float = 100.0,
    sigma: float = 0.01,
) -> pl.DataFrame:
    """`n` bars (exactly `n` rows) in the canonical OHLCV schema, opening at `start`.

    Log returns are Student-t (3 degrees of freedom) scaled to a per-bar std of `sigma`.
    gaps: about 3% of steps skip 1-5 bars, and a few long holes of 20-100 bars (missing rows,
    timestamps jump; prices continue from the last close as after a market closure).
    flat: stretches of 25-60 bars where open=high=low=close equal the previous close and
    volume is 0 (a halted or illiquid market), about one per 1000 bars, at least one.
    """
    rng = np.random.default_rng(seed)
    step = np.ones(n, dtype=np.int64)
    if gaps and n > 1:
        skips = rng.random(n) < 0.03
        step[skips] += rng.integers(1, 6, skips.sum())
        holes = rng.choice(np.arange(1, n), size=min(n - 1, max(1, n // 2000)), replace=False)
        step[holes] += rng.integers(20, 101, holes.size)
    step[0] = 0
    seconds = np.cumsum(step) * timeframe_seconds(timeframe)
    start_us = int(start.timestamp()) * 1_000_000
    timestamps = start_us + seconds * 1_000_000

    log_ret = rng.standard_t(3, n) * sigma / np.sqrt(3.0)  # t(3) has variance 3
    is_flat = np.zeros(n, dtype=bool)
    if flat and n > 2:
        k = max(1, n // 1000)
        segment = n // k
        for j in range(k):  # k stretches, one per segment: a handful of iterations
            length = min(int(rng.integers(25, 61)), max(1, segment // 2))
            first = j * segment + 1 + int(rng.integers(0, max(1, segment - length - 1)))
            is_flat[first : first + length] = True
        log_ret[is_flat] = 0.0
    close = price * np.exp(np.cumsum(log_ret))
    open_ = np.r_[price, close[:-1]]
    wick = np.abs(rng.standard_t(3, (2, n))) * sigma * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = rng.lognormal(10.0, 0.8, n) * (1.0 + 50.0 * np.abs(log_ret))
    high[is_flat] = close[is_flat]
    low[is_flat] = close[is_flat]
    volume[is_flat] = 0.0

    return pl.DataFrame(
        {
            "timestamp": pl.Series(timestamps, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
        },
        schema=OHLCV_SCHEMA,
    )


def resample_bars(bars: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """Aggregate canonical bars into coarser `timeframe` bars aligned on the epoch (days at 00:00 UTC).

    A trailing incomplete bar is kept, as a live feed would show it; its close time is still in
    the future, which is exactly what multi-timeframe joins must not use.
    """
    every = f"{timeframe_seconds(timeframe)}s"
    return (
        bars.group_by_dynamic("timestamp", every=every, closed="left", label="left")
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
        .cast(OHLCV_SCHEMA)
    )
