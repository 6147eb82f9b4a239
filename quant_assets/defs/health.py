"""`model_health`: one table explaining every partition's model: version, age, live versus
training quality, what the retrain rules say now, and the last promotion decision."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from quant_assets.defs.metadata import readable_metadata
from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
from quant_assets.defs.resources import (
    ArtifactStore,
    MlflowResource,
    RetrainRulesResource,
    TradingStoreResource,
)
from quant_assets.lib.health import health_table, partition_status
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.tracking import registered_model_name

HOURLY = "0 * * * *"


def partition_statuses(
    instance: dg.DagsterInstance,
    tracker,
    store,
    artifacts: ArtifactStore,
    retrain_rules: RetrainRulesResource,
    now: datetime,
) -> list:
    """`lib.health.partition_status` of every registered symbol × configured timeframe at `now`
    (read by `model_health` and `model_report`)."""
    policy = retrain_rules.policy()
    partitions = [
        (symbol, timeframe)
        for symbol in sorted(instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME))
        for timeframe in retrain_rules.timeframes
    ]
    registry = tracker.registry_view([registered_model_name(s, t) for s, t in partitions])
    return [
        partition_status(
            registry,
            store,
            artifacts.read_partition("labels", symbol, timeframe),
            symbol,
            timeframe,
            now,
            policy,
        )
        for symbol, timeframe in partitions
    ]


@dg.asset(
    group_name="monitoring",
    kinds={"mlflow", "sql"},
    code_version="1",
    # it summarizes every partition's models and signals: in a backfill it runs after them
    deps=["challenger_model", "champion", "signals"],
    # hourly, whatever its (many, partitioned) dependencies did since the last tick
    automation_condition=dg.AutomationCondition.cron_tick_passed(HOURLY)
    & ~dg.AutomationCondition.in_progress(),
)
def model_health(
    context: dg.AssetExecutionContext,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    artifacts: ArtifactStore,
    retrain_rules: RetrainRulesResource,
) -> dg.Output[pl.DataFrame]:
    """Per symbol|timeframe: the model in service (champion, else the newest challenger), its version
    label (v1.0, v1.1 after an incremental retrain, v2.0 after a complete one) and age, hit rate and
    Sharpe of its signals at training (out-of-fold) and live (against realized labels), the retrain
    reasons the rules give now and the mode they imply, and the last promotion decision."""
    now = datetime.now(UTC)
    tracker, store = mlflow.get_tracker(), trading_store.get_store()
    statuses = partition_statuses(context.instance, tracker, store, artifacts, retrain_rules, now)
    table = health_table(statuses, store.promotion_history(), now)
    flagged = table.filter(pl.col("retrain") != "no")
    return dg.Output(
        table,
        metadata=readable_metadata(
            table,
            {
                "dagster/row_count": table.height,
                "partitions": table.height,
                "with_champion": int((table["role"] == "champion").sum()) if table.height else 0,
                "without_model": int((table["role"] == "none").sum()) if table.height else 0,
                "needing_retrain": flagged.height,
                "model_health": dg.MetadataValue.md(
                    markdown_table(table.drop("why"), max_rows=max(table.height, 1))
                ),
                "retrain_reasons": dg.MetadataValue.md(
                    markdown_table(flagged.select("partition", "mode", "why"), max_rows=200)
                    if flagged.height
                    else "no partition needs a retrain"
                ),
            },
        ),
    )
