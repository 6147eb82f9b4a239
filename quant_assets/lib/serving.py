"""Serving: from scored bars to the rows of `agent_preds` and `agent_signals`, each traceable to
the agent versions (catalog ids), the Dagster run, the input data version and the thresholds.

Used by the `signals` asset (recent bars of one partition) and by bar-close serving
(lib/bar_close.py: the newly closed bar of every symbol of a timeframe)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from quant_assets.lib.execution import ExecutionRules, execution_decisions


@dataclass(frozen=True)
class ServedVersions:
    """Who made a row: the direction version (and its catalog id), the volatility version when
    one forecast sigma, the run and the data."""

    symbol: str
    timeframe: str
    model_name: str
    model_version: str
    mlflow_run_id: str
    agent_version_id: int | None
    vol_version_id: int | None
    dagster_run_id: str
    data_version: str
    horizon: int


def agent_rows(
    bars: pl.DataFrame, rules: ExecutionRules, served: ServedVersions
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(agent_preds rows, agent_signals rows) of `bars` (execution_decisions' input: timestamp,
    close, atr_14, prob_up and the optional sigma, regime, gate, ensemble_side/size columns)."""
    decided = execution_decisions(bars, rules)
    identity = [
        pl.lit(served.symbol).alias("symbol"),
        pl.lit(served.timeframe).alias("timeframe"),
        pl.lit(served.model_name).alias("model_name"),
        pl.lit(served.model_version).alias("model_version"),
        pl.lit(served.mlflow_run_id).alias("mlflow_run_id"),
        pl.lit(served.agent_version_id, pl.Int64).alias("agent_version_id"),
        pl.lit(served.dagster_run_id).alias("dagster_run_id"),
        pl.lit(served.data_version).alias("data_version"),
    ]
    regime = bars["regime"] if "regime" in bars.columns else pl.Series([None] * bars.height)
    preds = decided.select("timestamp", "prob_up", "sigma").with_columns(
        *identity,
        pl.lit(served.horizon).alias("horizon"),
        regime.cast(pl.String).alias("regime"),
    )
    signals = decided.with_columns(
        *identity,
        pl.lit(served.vol_version_id, pl.Int64).alias("vol_version_id"),
        pl.lit(rules.threshold_long).alias("threshold_long"),
        pl.lit(rules.threshold_short, pl.Float64).alias("threshold_short"),
    )
    return preds.filter(pl.col("prob_up").is_not_null()), signals.filter(
        pl.col("prob_up").is_not_null()
    )
