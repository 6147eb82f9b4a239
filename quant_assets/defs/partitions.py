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
#: partitions of one batched run when the setting is 0 (auto), at most
MAX_AUTO_SYMBOLS_PER_RUN = 64
#: symbols per run slot from which the auto batch spreads each timeframe over every slot (below it,
#: e.g. the 4-symbol demo, one run per timeframe: fewer runs, each run's fixed costs paid less often)
MIN_SPLIT_SYMBOLS_PER_RUN = 8

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
    """Partitions of one timeframe a batched run covers: the setting, or enough to keep every run
    slot busy. Dagster splits a multi-partition backfill into ranges along the dimension with fewer
    keys (usually one range per timeframe), so the timeframes already run side by side; the
    symbols of each are spread over the slots left (4 symbols x 3 timeframes on 2 slots: 3 runs of
    4 partitions per stage).

    From `MIN_SPLIT_SYMBOLS_PER_RUN` symbols per slot on, every range is spread over all the slots:
    the finest timeframe holds about three quarters of a stage's work, so one run per timeframe
    left a slot idle while that run went on, and the last stages of its partitions ran alone (at
    64 x 3 on 2 slots: the 1h training run 220 s beside 134 and 84 s for the others, then 90 s on
    one core). 16 x 3 on 2 slots: 6 runs of 8 partitions per stage; 64 x 3: 6 of 32."""
    if settings.symbols_per_run > 0:
        return settings.symbols_per_run
    ranges = len(CONFIGURED_TIMEFRAMES)
    symbols = watched_symbol_count(settings)
    runs_per_range = max(1, math.ceil(settings.run_slots / ranges))
    if symbols >= settings.run_slots * MIN_SPLIT_SYMBOLS_PER_RUN:
        runs_per_range = max(runs_per_range, settings.run_slots)
    spread = math.ceil(symbols / runs_per_range)
    return max(1, min(MAX_AUTO_SYMBOLS_PER_RUN, spread))


def partition_batch_policy(settings: Settings) -> dg.BackfillPolicy:
    """Backfill policy of every symbol × timeframe asset. Each run holds part of one range (one
    timeframe's symbols, or one symbol's timeframes), so a chunk of it is exactly the partitions it
    names (Dagster reads a multi-partition range as a rectangle)."""
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=symbols_per_run(settings))


#: the policy of every symbol × timeframe asset
PARTITION_BATCH = partition_batch_policy(_SETTINGS)
#: timeframe-partitioned assets that cost little (cross-sectional ranks): every timeframe in one run
TIMEFRAME_BATCH = dg.BackfillPolicy.single_run()
#: timeframe-partitioned assets that cost much (the global model: 400,000 rows of 1h bars, about
#: 50 s): a run per timeframe, so the timeframes train side by side on both slots and each starts
#: as soon as its own datasets exist (one run for 1h and 4h took 70 s on one slot at 64 x 3 while
#: the other slot stood idle, the last minute of the backfill)
TIMEFRAME_EACH = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)


def partition_key(symbol: str, timeframe: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"symbol": symbol, "timeframe": timeframe})


def split_key(key: str) -> tuple[str, str]:
    """(symbol, timeframe) of a "SYMBOL|tf" key, validated (lib.symbols.validate_partition_key): a
    key registered from outside the CLI (the UI, GraphQL, a sensor) must not smuggle a path or an
    unknown timeframe into a step."""
    from quant_assets.lib.errors import InvalidPartitionKeyError
    from quant_assets.lib.symbols import validate_partition_key

    symbol, timeframe = validate_partition_key(key)
    if timeframe is None:
        raise InvalidPartitionKeyError(f"expected a SYMBOL|timeframe partition key, got {key!r}")
    return symbol, timeframe


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
