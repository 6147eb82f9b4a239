"""The one partitions definition of the project: symbol (dynamic) × timeframe (static)."""

from __future__ import annotations

import dagster as dg

from quant_assets.lib.timeframes import TIMEFRAMES

# Dynamic partition names are global per Dagster instance, hence the project prefix.
SYMBOL_PARTITIONS_NAME = "quant_assets__symbol"

symbol_partitions = dg.DynamicPartitionsDefinition(name=SYMBOL_PARTITIONS_NAME)
timeframe_partitions = dg.StaticPartitionsDefinition(list(TIMEFRAMES))
symbol_timeframe_partitions = dg.MultiPartitionsDefinition(
    {"symbol": symbol_partitions, "timeframe": timeframe_partitions}
)


def partition_key(symbol: str, timeframe: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"symbol": symbol, "timeframe": timeframe})


def symbol_and_timeframe(
    context: dg.AssetExecutionContext | dg.OutputContext | dg.InputContext,
) -> tuple[str, str]:
    """The (symbol, timeframe) of the partition a step is working on."""
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        raise TypeError(f"expected a symbol|timeframe partition key, got {key!r}")
    dims = key.keys_by_dimension
    return dims["symbol"], dims["timeframe"]


def step_partitions(context: dg.AssetExecutionContext) -> list[tuple[str, str, str]]:
    """(key, symbol, timeframe) of every partition a step covers: one, or several when a backfill
    batches partitions into one run (BackfillPolicy.multi_run)."""
    out = []
    for key in context.partition_keys:
        symbol, timeframe = str(key).split("|", 1)
        out.append((str(key), symbol, timeframe))
    return out
