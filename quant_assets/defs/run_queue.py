"""The instance's run coordinator: Dagster's run queue, which starts the queued run holding the
most bars first.

Dagster's queue starts runs by their `dagster/priority` tag, then in the order they were queued.
A backfill's runs carry no priority, so a stage's runs started in the order their parents
finished: the coarse timeframes first (their runs are the shortest) and the finest last. Its
partitions hold the most bars (a 1h partition 24 times those of a 1d one), so its runs are the
backfill's critical path: at 64 symbols x 3 timeframes on 2 slots the 1h training run (220 s,
beside 134 and 84 s) started last, and the stages after it ran on one core for 90 s.
`PriorityRunCoordinator` gives each run it queues a priority from the bars its partitions hold
(longest-processing-time first): log2 of the number of symbols times the sum over its timeframes
of bars per minute, rounded. One partition: 0 for one-minute bars, -2 for 5m, -6 for 1h, -8 for
4h, -10 for 1d; a batched run of 32 symbols' 1d partitions -5, of their 1h partitions -1. So a
timeframe's global model (one partition, about 40 s of 1h rows) waits for a batch of 1d training
(about 45 s) that the last stage's runs depend on too (at 64 x 3 the backfill's last 1d batch
started after both global models, and ran alone for 20 s at the end). Runs without a timeframe
(unpartitioned assets, the bar-close serving job) keep 0. A priority set on the run (the UI's
Launchpad, a job's tags) is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.run_coordinator import SubmitRunContext
from dagster._core.storage.tags import PRIORITY_TAG

from quant_assets.lib.errors import InvalidTimeframeError
from quant_assets.lib.timeframes import timeframe_seconds

#: the run tags naming the partitions of a run (one partition, or the two ends of a range)
PARTITION_TAGS = (
    "dagster/partition",
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
)


def _timeframe_seconds(key: str) -> int | None:
    """Seconds of the timeframe a partition key names ("SYMBOL|tf" or "tf"), None when none."""
    try:
        return timeframe_seconds(key.rsplit("|", 1)[-1])
    except InvalidTimeframeError:
        return None


def _symbol_count(keys: list[str], symbols: Sequence[str]) -> int:
    """Symbols from the first to the last key's, in the order of `symbols` (the dynamic
    dimension's keys, as Dagster orders a range); 1 when either is not among them."""
    named = [key.rsplit("|", 1)[0] for key in keys if "|" in key]
    position = {symbol: i for i, symbol in enumerate(symbols)}
    if len(named) < 2 or named[0] not in position or named[-1] not in position:
        return 1
    return abs(position[named[-1]] - position[named[0]]) + 1


def run_priority(tags: Mapping[str, str], symbols: Sequence[str] = ()) -> int | None:
    """The queue priority of a run with these tags: log2 of the bars its partitions hold per
    minute (the symbols from the range's first to its last in `symbols`, times the sum over its
    timeframes of 60 / seconds), rounded; None when its partitions name no timeframe."""
    keys = [tags[name] for name in PARTITION_TAGS if tags.get(name)]
    seconds = {s for key in keys if (s := _timeframe_seconds(key)) is not None}
    if not seconds:
        return None
    if len(seconds) > 1:  # a range across timeframes holds every configured one between its ends
        from quant_assets.defs.partitions import CONFIGURED_TIMEFRAMES

        between = (timeframe_seconds(tf) for tf in CONFIGURED_TIMEFRAMES)
        seconds |= {s for s in between if min(seconds) <= s <= max(seconds)}
    bars_per_minute = sum(60 / s for s in seconds)
    return round(math.log2(_symbol_count(keys, symbols) * bars_per_minute))


class PriorityRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's QueuedRunCoordinator (same config, limits and daemon) that tags each run it
    queues with `run_priority` unless the run has a priority already (module docstring); a
    range's symbols are counted in the instance's symbol partitions."""

    def submit_run(self, context: SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if PRIORITY_TAG not in run.tags:
            symbols: Sequence[str] = ()
            if run.tags.get(PARTITION_TAGS[1]):  # a range: how many symbols it spans
                from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME

                symbols = self._instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME)
            priority = run_priority(run.tags, symbols)
            if priority is not None:
                self._instance.add_run_tags(run.run_id, {PRIORITY_TAG: str(priority)})
        return super().submit_run(context)
