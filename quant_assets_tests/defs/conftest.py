"""Helpers for tests that run real Dagster materializations (fixtures live in ../conftest.py)."""

from __future__ import annotations

import dagster as dg

from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME


def register(instance: dg.DagsterInstance, *symbols: str) -> None:
    instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, list(symbols))


#: asset Config for fast test trainings and for gates every model passes on its own
FAST = {"challenger_model": {"params": {"n_estimators": 40}}}
LENIENT_GATES = {
    "champion_challenger_evaluation": {
        "min_sortino": -1e9,
        "min_profit_factor": 0.0,
        "max_drawdown": 1.0,
        "max_ece": 1.0,
        "min_trades": 0,
        "min_dsr": 0.0,
        "min_trl_benchmark_sharpe": -1e9,
        "min_profitable_folds": 0.0,
        "max_pbo": 1.0,
    }
}
