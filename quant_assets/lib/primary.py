"""Primary signals of each bar (EMA trend, Bollinger %B mean reversion, N-bar breakout) as side and
confidence, from the bar's close and earlier data only (lib.meta.voting combines them)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from quant_assets.lib.errors import DataValidationError, QuantAssetsError
from quant_assets.lib.features import (
    EMA_WARM_SPANS,
    FEATURE_WARMUP,
    _ema,
    _require_columns,
    _require_increasing,
)
from quant_assets.lib.sources.base import OHLCV_COLUMNS

PRIMARY_NAMES: tuple[str, ...] = ("trend", "meanrev", "breakout")
PRIMARY_COLUMNS: tuple[str, ...] = (
    "timestamp",
    *(f"{name}_{part}" for name in PRIMARY_NAMES for part in ("side", "conf")),
    "primary_warm",
)
_FEATURE_INPUTS: tuple[str, ...] = ("timestamp", "atr_14", "bb_pctb")


class PrimarySignalError(QuantAssetsError, ValueError):
    """Primary-signal parameters are invalid."""


@dataclass(frozen=True)
class PrimaryConfig:
    """Parameters of the three generators; docs/meta_layer.md ("Primary signals") has the formulas.

    Each confidence is tanh(distance / scale): a distance of one `scale` gives tanh(1) ~ 0.76.
    """

    fast: int = 12  # trend: EMA periods of close (TA-Lib's EMA, seeded with an SMA)
    slow: int = 26
    trend_scale: float = 1.0  # |EMA_fast - EMA_slow| in ATRs
    meanrev_lower: float = 0.0  # %B below it: long
    meanrev_upper: float = 1.0  # %B above it: short
    meanrev_scale: float = 0.25  # %B units beyond the band (0.25 = one std of the 2-std bands)
    breakout_window: int = 20  # prior bars whose high/low the close must clear
    breakout_scale: float = 0.5  # breakout distance in ATRs

    def __post_init__(self) -> None:
        if not 1 <= self.fast < self.slow:
            raise PrimarySignalError(
                f"need 1 <= fast < slow EMA periods, got fast={self.fast}, slow={self.slow}"
            )
        if not self.meanrev_lower < self.meanrev_upper:
            raise PrimarySignalError(
                f"need meanrev_lower < meanrev_upper, got {self.meanrev_lower} and {self.meanrev_upper}"
            )
        if self.breakout_window < 1:
            raise PrimarySignalError(f"breakout_window must be >= 1, got {self.breakout_window}")
        for name in ("trend_scale", "meanrev_scale", "breakout_scale"):
            if not getattr(self, name) > 0:
                raise PrimarySignalError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def warmup(self) -> int:
        """Bars of history (current bar included) before every generator is warm: the slow EMA past
        its seed by EMA_WARM_SPANS spans, ATR and %B warm, and a full prior breakout window."""
        return max(
            (1 + EMA_WARM_SPANS) * self.slow,
            FEATURE_WARMUP["atr_14"],
            FEATURE_WARMUP["bb_pctb"],
            self.breakout_window + 1,
        )


def _side(long: pl.Expr, short: pl.Expr) -> pl.Expr:
    return pl.when(long).then(1).when(short).then(-1).otherwise(0).cast(pl.Int8)


def _confidence(side: pl.Expr, distance: pl.Expr, scale: float) -> pl.Expr:
    # A zero ATR (a history flat since its start) makes any move an infinite distance: conf 1.
    return pl.when(side != 0).then((distance / scale).tanh()).otherwise(0.0)


def primary_signals(
    bars: pl.DataFrame, features: pl.DataFrame, config: PrimaryConfig | None = None
) -> pl.DataFrame:
    """Side (Int8 -1/0/+1) and confidence (Float64 in [0, 1], 0 when the side is 0) of each
    generator for each bar, known at the bar's close. `features` is compute_features(bars, tf)
    (its atr_14 and bb_pctb are used) with the same timestamps as `bars`.

    trend: +1 when EMA_fast(close) > EMA_slow(close), -1 when below; conf tanh(|gap| / atr_14 /
    trend_scale). meanrev: +1 when bb_pctb < meanrev_lower, -1 when > meanrev_upper; conf
    tanh(%B distance beyond the bound / meanrev_scale). breakout: +1 when close > the highest high
    of the `breakout_window` bars before this one, -1 when close < their lowest low; conf
    tanh(distance past that level / atr_14 / breakout_scale). Rows before config.warmup bars
    (primary_warm False) have side 0 and conf 0 for every generator. Columns: PRIMARY_COLUMNS.
    """
    config = config or PrimaryConfig()
    _require_columns(bars, OHLCV_COLUMNS, "primary_signals(bars)")
    _require_columns(features, _FEATURE_INPUTS, "primary_signals(features)")
    _require_increasing(bars["timestamp"], "primary_signals(bars)")
    if not features["timestamp"].equals(bars["timestamp"]):
        raise DataValidationError(
            "primary_signals(features)",
            "timestamps differ from the bars'",
            detail=f"{features.height} feature rows vs {bars.height} bars",
        )
    close, atr, pctb = pl.col("close"), pl.col("atr_14"), pl.col("bb_pctb")
    warm = pl.int_range(pl.len(), dtype=pl.Int64) >= config.warmup - 1
    gap = _ema(close, config.fast) - _ema(close, config.slow)
    # shift(1) first: the window ends at the previous bar, so the current bar never counts
    prior_high = pl.col("high").shift(1).rolling_max(config.breakout_window)
    prior_low = pl.col("low").shift(1).rolling_min(config.breakout_window)
    sides = {
        "trend": _side(gap > 0, gap < 0),
        "meanrev": _side(pctb < config.meanrev_lower, pctb > config.meanrev_upper),
        "breakout": _side(close > prior_high, close < prior_low),
    }
    distances = {
        "trend": (gap.abs() / atr, config.trend_scale),
        "meanrev": (
            pl.max_horizontal(config.meanrev_lower - pctb, pctb - config.meanrev_upper),
            config.meanrev_scale,
        ),
        "breakout": (
            pl.max_horizontal(close - prior_high, prior_low - close) / atr,
            config.breakout_scale,
        ),
    }
    inputs = pl.concat(
        [
            bars.select("timestamp", "high", "low", "close"),
            features.select(atr.cast(pl.Float64), pctb.cast(pl.Float64)),
        ],
        how="horizontal",
    )
    return (
        inputs.lazy()
        .with_columns(
            *(
                pl.when(warm).then(sides[n]).otherwise(0).cast(pl.Int8).alias(f"{n}_side")
                for n in PRIMARY_NAMES
            ),
            warm.alias("primary_warm"),
        )
        .with_columns(
            _confidence(pl.col(f"{n}_side"), *distances[n]).alias(f"{n}_conf")
            for n in PRIMARY_NAMES
        )
        .select(PRIMARY_COLUMNS)
        # in-memory engine: each row a function of its prefix alone (see compute_features)
        .collect(engine="in-memory")
    )
