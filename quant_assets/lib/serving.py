"""Serving: from scored bars to the rows of `agent_preds` and `agent_signals`, each traceable to
the agent versions (catalog ids), the Dagster run, the input data version and the thresholds.

Used by the `signals` asset (recent bars of one partition) and by bar-close serving
(lib/bar_close.py: the newly closed bar of every symbol of a timeframe)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from quant_assets.lib.execution import ExecutionRules, execution_decisions

#: what makes a row traceable: the agents' versions (catalog ids), the run and the data
IDENTITY_COLUMNS = (
    "symbol",
    "timeframe",
    "model_name",
    "model_version",
    "mlflow_run_id",
    "agent_version_id",
    "vol_version_id",
    "dagster_run_id",
    "data_version",
    "horizon",
)


@dataclass(frozen=True)
class ServedVersions:
    """Who made a partition's rows: the direction version (and its catalog id), the volatility
    version when one forecast sigma, the run and the data (IDENTITY_COLUMNS as values)."""

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
    bars: pl.DataFrame, rules: ExecutionRules, served: ServedVersions | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(agent_preds rows, agent_signals rows) of `bars` (execution_decisions' input). The identity
    of the rows is `served` for one partition, else the IDENTITY_COLUMNS of `bars` per row (many
    symbols in one frame); rows without a probability are left out."""
    decided = execution_decisions(bars, rules)
    if served is not None:
        decided = decided.with_columns(
            pl.lit(getattr(served, name)).alias(name) for name in IDENTITY_COLUMNS
        )
    else:
        decided = decided.hstack(bars.select(IDENTITY_COLUMNS))
    decided = decided.with_columns(
        pl.col("agent_version_id", "vol_version_id").cast(pl.Int64)
    ).filter(pl.col("prob_up").is_not_null())
    preds = decided.select("timestamp", "prob_up", "sigma", "regime", *IDENTITY_COLUMNS).drop(
        "vol_version_id"
    )
    return preds, decided.drop("regime", "horizon")
