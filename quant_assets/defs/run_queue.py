"""The instance's run coordinator: Dagster's run queue, which starts a queued run of a finer
timeframe before one of a coarser timeframe.

Dagster's queue starts runs by their `dagster/priority` tag, then in the order they were queued.
A backfill's runs carry no priority, so a stage's runs started in the order their parents
finished: the coarse timeframes first (their runs are the shortest) and the finest last. Its
partitions hold the most bars (a 1h partition 24 times those of a 1d one), so its runs are the
backfill's critical path: at 64 symbols x 3 timeframes on 2 slots the 1h training run (220 s,
beside 134 and 84 s) started last, and the stages after it ran on one core for 90 s.
`PriorityRunCoordinator` gives each run it queues a priority from the timeframe of its
partitions (longest-processing-time first): 0 for one-minute bars, -2 for 5m, -6 for 1h, -8
for 4h, -10 for 1d; runs without a timeframe (unpartitioned assets, the bar-close serving job)
keep 0. A priority set on the run (the UI's Launchpad, a job's tags) is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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


def run_priority(tags: Mapping[str, str]) -> int | None:
    """The queue priority of a run with these tags: minus log2 of its finest timeframe in minutes
    (1h: -6, 4h: -8, 1d: -10), None when its partitions name no timeframe."""
    seconds = [
        s for name in PARTITION_TAGS if (s := _timeframe_seconds(tags.get(name, ""))) is not None
    ]
    if not seconds:
        return None
    return -round(math.log2(min(seconds) / 60))


class PriorityRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's QueuedRunCoordinator (same config, limits and daemon) that tags each run it
    queues with `run_priority` unless the run has a priority already (module docstring)."""

    def submit_run(self, context: SubmitRunContext) -> dg.DagsterRun:
        run = context.dagster_run
        if PRIORITY_TAG not in run.tags:
            priority = run_priority(run.tags)
            if priority is not None:
                self._instance.add_run_tags(run.run_id, {PRIORITY_TAG: str(priority)})
        return super().submit_run(context)
