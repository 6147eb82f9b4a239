"""The one partitions definition of the project: symbol (dynamic) × timeframe (the configured ones),
and how a backfill batches its partitions into runs.

The timeframe dimension holds exactly the timeframes of the settings (`QUANT_ASSETS_TIMEFRAMES`),
read when the code location loads: changing them adds or removes columns of every partition grid
without a code change, and keys of the timeframes kept keep their materialization history.
"""

from __future__ import annotations

import math

import dagster as dg

from quant_assets.lib.settings import Settings, load_settings
from quant_assets.lib.timeframes import timeframe_seconds

# Dynamic partition names are global per Dagster instance, hence the project prefix.
SYMBOL_PARTITIONS_NAME = "quant_assets__symbol"
#: symbols of one batched run when the setting is 0 (auto), at most
MAX_AUTO_SYMBOLS_PER_RUN = 16

_SETTINGS = load_settings()
#: the configured timeframes, finest first (the order of the partition grid's columns)
CONFIGURED_TIMEFRAMES: tuple[str, ...] = tuple(sorted(_SETTINGS.timeframes, key=timeframe_seconds))

symbol_partitions = dg.DynamicPartitionsDefinition(name=SYMBOL_PARTITIONS_NAME)
timeframe_partitions = dg.StaticPartitionsDefinition(list(CONFIGURED_TIMEFRAMES))
symbol_timeframe_partitions = dg.MultiPartitionsDefinition(
    {"symbol": symbol_partitions, "timeframe": timeframe_partitions}
)


def watched_symbol_count(settings: Settings) -> int:
    """Symbols the pipeline runs on: the watchlist file's, else the default universe's."""
    from quant_assets.lib.watchlist import read_watchlist

    path = settings.watchlist_path
    symbols = read_watchlist(path).symbols if path.exists() else ()
    return len(symbols) or len(settings.universe)


def symbols_per_run(settings: Settings) -> int:
    """Symbols a batched run covers: the setting, or the watched symbols spread over the run
    slots (two slots and four symbols: two runs of two symbols per stage, both cores busy)."""
    if settings.symbols_per_run > 0:
        return settings.symbols_per_run
    spread = math.ceil(watched_symbol_count(settings) / settings.run_slots)
    return max(1, min(MAX_AUTO_SYMBOLS_PER_RUN, spread))


def partition_batch_policy(settings: Settings) -> dg.BackfillPolicy:
    """Backfill policy of every symbol × timeframe asset: runs of whole symbols (every configured
    timeframe of each). Dagster reads a multi-partition range as the rectangle symbols × timeframes,
    so a batch must hold whole rows of the grid: a multiple of the timeframe count."""
    return dg.BackfillPolicy.multi_run(
        max_partitions_per_run=symbols_per_run(settings) * len(CONFIGURED_TIMEFRAMES)
    )


#: the policy of every symbol × timeframe asset (timeframe-partitioned ones run all timeframes at once)
PARTITION_BATCH = partition_batch_policy(_SETTINGS)
TIMEFRAME_BATCH = dg.BackfillPolicy.single_run()


def partition_key(symbol: str, timeframe: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"symbol": symbol, "timeframe": timeframe})


def split_key(key: str) -> tuple[str, str]:
    """(symbol, timeframe) of a "SYMBOL|tf" key, validated: a key registered from outside the CLI
    (the UI, GraphQL, a sensor) must not smuggle a path or an unknown timeframe into a step."""
    from quant_assets.lib.symbols import normalize_symbol
    from quant_assets.lib.timeframes import check_timeframe

    symbol, sep, timeframe = str(key).partition("|")
    if not sep:
        raise ValueError(f"expected a SYMBOL|timeframe partition key, got {key!r}")
    if normalize_symbol(symbol) != symbol:
        raise ValueError(
            f"partition key {key!r}: symbol {symbol!r} is not normalised "
            f"({normalize_symbol(symbol)!r}); register symbols with `quant-assets symbols add`"
        )
    return symbol, check_timeframe(timeframe)


def registered_symbols(instance: dg.DagsterInstance) -> list[str]:
    """The symbol partitions registered on the instance, validated."""
    return [
        split_key(f"{s}|{CONFIGURED_TIMEFRAMES[0]}")[0]
        for s in instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME)
    ]


def symbol_and_timeframe(
    context: dg.AssetExecutionContext | dg.OutputContext | dg.InputContext,
) -> tuple[str, str]:
    """The (symbol, timeframe) of the partition a single-partition step is working on."""
    return split_key(str(context.partition_key))


def step_partitions(context: dg.AssetExecutionContext) -> list[tuple[str, str, str]]:
    """(key, symbol, timeframe) of every partition a step covers: one, or several when a backfill
    batches partitions into one run (BackfillPolicy.multi_run)."""
    out = []
    for key in context.partition_keys:
        symbol, timeframe = split_key(str(key))
        out.append((str(key), symbol, timeframe))
    return out
