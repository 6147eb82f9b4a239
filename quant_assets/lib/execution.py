"""The execution agent: the rules that turn the other agents' outputs on a bar into the row written
to `agent_signals` (side, size, stop-loss, take-profit, meta). Every rule is here, in this order:

1. **Direction.** Long when the direction model's calibrated prob_up >= threshold_long, short when
   prob_up <= threshold_short (both chosen on out-of-fold predictions, lib/signals.py), else flat.
2. **Ensemble.** On bars the ensemble covers while it is served (it beat the champion's gates),
   its side replaces the direction side and its size becomes the strength.
3. **Regime gate.** A direction-model signal on a bar whose regime gate is off (choppy market,
   lib/regimes.py) is flat (`use_regime_gate`; bars without a regime are not gated). The
   ensemble's side is not gated: its meta-learners already decide per regime.
4. **Volatility.** The per-bar sigma is the volatility agent's forecast of the h-bar log-return
   standard deviation / sqrt(h) when there is one, else the evaluation's ATR proxy
   ATR / close / sqrt(8 / pi) (`sigma_source` in meta says which).
5. **Size.** Volatility target: min(target_vol / (sigma_bar x sqrt(bars a year)), max_size) for a
   long or short, 0 when flat (full size when target_vol is None).
6. **Stop-loss / take-profit** in price units: the unit is the bar's expected range
   sqrt(8 / pi) x sigma_bar x close (exactly the ATR when sigma comes from the ATR, so the levels
   are the labels' and the evaluation's barriers: stop sl_mult, target tp_mult units; mirrored for
   a short). With the volatility agent the forecast range replaces the trailing ATR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from quant_assets.lib.signals import RANGE_TO_SIGMA


@dataclass(frozen=True)
class ExecutionRules:
    """Parameters of the rules above (thresholds in calibrated probability)."""

    threshold_long: float
    threshold_short: float | None = None
    sl_mult: float = 1.0
    tp_mult: float = 1.75
    horizon: int = 5
    periods_per_year: float = 8760.0
    target_vol: float | None = 0.10
    max_size: float = 1.0
    use_regime_gate: bool = True


SIGNAL_COLUMNS = (
    "timestamp",
    "prob_up",
    "side",
    "strength",
    "size",
    "entry_price",
    "stop_loss",
    "take_profit",
    "sigma",
    "threshold_long",
    "threshold_short",
    "regime",
    "meta",
)


def _optional(frame: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Expr:
    return pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype)


def execution_decisions(bars: pl.DataFrame, rules: ExecutionRules) -> pl.DataFrame:
    """One `agent_signals` row per bar of `bars`, in their order: SIGNAL_COLUMNS (sigma is the
    h-bar forecast used, the thresholds those in force; meta a JSON object with source, regime,
    gate, sigma_source and thresholds).

    `bars` columns: timestamp, close, atr_14, prob_up; optional sigma (volatility agent, h-bar),
    regime and gate (regime agent), ensemble_side and ensemble_size (served ensemble), and per-row
    threshold_long, threshold_short, periods_per_year overriding `rules` (many symbols' models in
    one frame: bar-close serving)."""
    if not 0.0 < rules.threshold_long < 1.0:
        raise ValueError(f"threshold_long must lie in (0, 1), got {rules.threshold_long}")
    t_long = (
        _optional(bars, "threshold_long", pl.Float64)
        if "threshold_long" in bars.columns
        else pl.lit(rules.threshold_long)
    )
    t_short = (
        _optional(bars, "threshold_short", pl.Float64)
        if "threshold_short" in bars.columns
        else pl.lit(rules.threshold_short, pl.Float64)
    )
    ppy = (
        _optional(bars, "periods_per_year", pl.Float64)
        if "periods_per_year" in bars.columns
        else pl.lit(rules.periods_per_year)
    )
    p = pl.col("prob_up").cast(pl.Float64).fill_nan(None)
    usable = p.is_not_null() & pl.col("close").is_not_null() & pl.col("atr_14").is_not_null()
    direction_side = (
        pl.when(usable & (p >= pl.col("_t_long")))
        .then(1)
        .when(usable & pl.col("_t_short").is_not_null() & (p <= pl.col("_t_short")))
        .then(-1)
        .otherwise(0)
    )
    direction_strength = (
        pl.when(direction_side == 1)
        .then((p - pl.col("_t_long")) / (1.0 - pl.col("_t_long")))
        .when(direction_side == -1)
        .then((pl.col("_t_short") - p) / pl.col("_t_short"))
        .otherwise(0.0)
        .clip(0.0, 1.0)
    )
    h = rules.horizon
    frame = bars.select(
        "timestamp",
        pl.col("close").cast(pl.Float64),
        pl.col("atr_14").cast(pl.Float64).fill_nan(None),
        pl.col("prob_up").cast(pl.Float64).fill_nan(None),
        t_long.alias("_t_long"),
        t_short.alias("_t_short"),
        ppy.alias("_ppy"),
        _optional(bars, "sigma", pl.Float64).fill_nan(None).alias("_sigma_h"),
        _optional(bars, "regime", pl.String).alias("regime"),
        _optional(bars, "gate", pl.Boolean).alias("gate"),
        _optional(bars, "ensemble_side", pl.Int8).alias("_ens_side"),
        _optional(bars, "ensemble_size", pl.Float64).alias("_ens_size"),
    ).with_columns(
        direction_side.cast(pl.Int8).alias("_dir_side"),
        direction_strength.alias("_dir_strength"),
    )
    from_ensemble = pl.col("_ens_side").is_not_null()
    gated = (
        pl.col("gate").is_not_null() & ~pl.col("gate") & ~from_ensemble
        if rules.use_regime_gate
        else pl.lit(False)
    )
    side = (
        pl.when(gated)
        .then(0)
        .otherwise(pl.coalesce("_ens_side", "_dir_side"))
        .fill_null(0)
        .cast(pl.Int8)
    )
    atr_sigma = pl.col("atr_14") / pl.col("close") / RANGE_TO_SIGMA
    has_forecast = pl.col("_sigma_h").is_not_null() & (pl.col("_sigma_h") > 0)
    sigma_bar = pl.when(has_forecast).then(pl.col("_sigma_h") / math.sqrt(h)).otherwise(atr_sigma)
    frame = frame.with_columns(sigma_bar.fill_nan(None).alias("_sigma_bar")).with_columns(
        # no usable volatility (warm-up): no size and no levels, so no position
        pl.when(pl.col("_sigma_bar") > 0).then(side).otherwise(0).cast(pl.Int8).alias("side")
    )
    trading = pl.col("side") != 0
    if rules.target_vol is None:
        size = pl.lit(1.0)
    else:
        annual = pl.col("_sigma_bar") * pl.col("_ppy").sqrt()
        size = pl.min_horizontal(rules.target_vol / annual, pl.lit(rules.max_size))
    unit = RANGE_TO_SIGMA * pl.col("_sigma_bar") * pl.col("close")
    signed = pl.col("side").cast(pl.Float64)
    meta = pl.struct(
        pl.when(pl.col("side") == 0)
        .then(pl.lit("flat"))
        .when(from_ensemble)
        .then(pl.lit("ensemble"))
        .otherwise(pl.lit("direction"))
        .alias("source"),
        pl.col("regime"),
        pl.col("gate"),
        gated.alias("gated"),
        pl.when(has_forecast)
        .then(pl.lit("volatility_agent"))
        .otherwise(pl.lit("atr"))
        .alias("sigma_source"),
        pl.col("_t_long").alias("threshold_long"),
        pl.col("_t_short").alias("threshold_short"),
    ).struct.json_encode()
    out = frame.with_columns(
        pl.when(pl.col("side") == 0)
        .then(0.0)
        .when(from_ensemble)
        .then(pl.col("_ens_size").clip(0.0, 1.0))
        .otherwise(pl.col("_dir_strength"))
        .fill_null(0.0)
        .alias("strength"),
        pl.when(trading).then(size).otherwise(0.0).alias("size"),
        pl.col("close").alias("entry_price"),
        pl.when(trading).then(pl.col("close") - signed * rules.sl_mult * unit).alias("stop_loss"),
        pl.when(trading).then(pl.col("close") + signed * rules.tp_mult * unit).alias("take_profit"),
        (pl.col("_sigma_bar") * math.sqrt(h)).alias("sigma"),
        pl.col("_t_long").alias("threshold_long"),
        pl.col("_t_short").alias("threshold_short"),
        meta.alias("meta"),
    )
    return out.select(SIGNAL_COLUMNS).with_columns(pl.col(pl.Float64).fill_nan(None))


def decision_counts(signals: pl.DataFrame) -> dict[str, int]:
    """Longs, shorts and flat bars of an execution frame (for metadata and logs)."""
    side = signals["side"].to_numpy()
    return {
        "longs": int(np.sum(side == 1)),
        "shorts": int(np.sum(side == -1)),
        "flat": int(np.sum(side == 0)),
    }
