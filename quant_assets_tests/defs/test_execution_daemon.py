"""The execution daemon (`defs/daemon.py`): when its backfill daemon iterates (only on settled
inputs: a finished run, a backfill to act on, nothing in flight) and its stop watchdog (a daemon
that does not stop after SIGTERM says where its threads are and exits, so the CLI, which waits
30 s, and supervisors are never held up). The effect on a real backfill is checked by the demo
test (one run per stage and timeframe). Also the instance's run coordinator (`defs/run_queue.py`):
Dagster's run queue, every queued run given a priority from its partitions' timeframe, and the
auto batch size of the partitioned assets (`symbols_per_run`)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
import uuid

import dagster as dg
import yaml
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.remote_origin import (
    InProcessCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.run_coordinator import SubmitRunContext
from dagster._core.storage.tags import PRIORITY_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)

from quant_assets.defs.backfills import instance_yaml
from quant_assets.defs.daemon import (
    SETTLE_MAX_SECONDS,
    STOP_GRACE_SECONDS,
    iteration_due,
    latest_materialization_id,
    run_slots,
    settle_signature,
)
from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
from quant_assets.defs.run_queue import run_priority
from quant_assets.lib.settings import load_settings


@dg.op
def _noop() -> None:
    return None


@dg.job
def _job() -> None:
    _noop()


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b", "c"]))
def _batch() -> None:
    return None


def test_stored_materializations_are_seen_as_they_are_stored(tmp_path) -> None:
    """The quiet period before an iteration watches the latest materialization of any asset."""
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert latest_materialization_id(instance) == 0
        dg.materialize([_batch], instance=instance, partition_key="a")
        first = latest_materialization_id(instance)
        assert first > 0
        dg.materialize([_batch], instance=instance, partition_key="b")
        assert latest_materialization_id(instance) > first


def test_the_backfill_daemon_iterates_when_a_run_finishes_or_a_backfill_changes(tmp_path) -> None:
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        idle = settle_signature(instance)
        assert idle == ((), 0, 0)  # nothing in flight: it iterates on every look
        pending = instance.create_run_for_job(_job, status=dg.DagsterRunStatus.NOT_STARTED)
        started = instance.create_run_for_job(_job, status=dg.DagsterRunStatus.STARTED)
        waiting = settle_signature(instance)
        assert waiting == ((), 0, 2)
        # runs starting or storing their outputs change nothing: no iteration on a partial batch
        instance.handle_run_event(
            pending.run_id,
            dg.DagsterEvent(
                event_type_value=dg.DagsterEventType.RUN_START.value,
                job_name=pending.job_name,
                message="started",
            ),
        )
        assert instance.get_run_by_id(pending.run_id).status == dg.DagsterRunStatus.STARTED
        assert settle_signature(instance) == waiting
        # a finished run is the signal that its materializations are all stored
        instance.report_run_failed(started)
        after_run = settle_signature(instance)
        assert after_run[1] == 1 and after_run != waiting
        # a backfill requested, then being cancelled: each is acted on at once
        backfill_id = uuid.uuid4().hex[:8]
        backfill = PartitionBackfill(
            backfill_id, BulkActionStatus.REQUESTED, False, {}, time.time(), partition_names=[]
        )
        instance.add_backfill(backfill)
        requested = settle_signature(instance)
        assert requested[0] == ((backfill_id, "REQUESTED"),)
        instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELING))
        assert settle_signature(instance)[0] == ((backfill_id, "CANCELING"),)
        # a run of it failed: Dagster cancels the rest of it (FAILING), also acted on at once
        instance.update_backfill(backfill.with_status(BulkActionStatus.FAILING))
        assert settle_signature(instance)[0] == ((backfill_id, "FAILING"),)
        instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELED))
        assert settle_signature(instance)[0] == ()


def test_an_iteration_waits_while_a_run_is_queued() -> None:
    """Children requested while a run already waits for a slot would queue behind it, and the
    stage's runs still going could not join them: the daemon waits until the queued run starts."""
    look = dict(changed=True, quiet=True, canceling=False, since_last=5.0)
    assert not iteration_due(in_flight=3, slots=2, **look)  # two running, one queued
    assert iteration_due(in_flight=2, slots=2, **look)  # both running, none queued: look ahead
    assert iteration_due(in_flight=1, slots=2, **look)
    assert iteration_due(in_flight=0, slots=2, **look)
    assert iteration_due(in_flight=9, slots=None, **look)  # no limit: as soon as settled
    # a batch being stored (not quiet) is waited for, a cancellation never
    assert not iteration_due(in_flight=1, slots=2, **(look | {"quiet": False}))
    assert iteration_due(in_flight=3, slots=2, **(look | {"canceling": True, "quiet": False}))
    # nothing changed: a look every SETTLE_MAX_SECONDS when quiet, at 4 x that regardless
    still = look | {"changed": False}
    assert not iteration_due(in_flight=1, slots=2, **still)
    assert iteration_due(in_flight=1, slots=2, **(still | {"since_last": SETTLE_MAX_SECONDS}))
    late = still | {"quiet": False, "since_last": 4 * SETTLE_MAX_SECONDS}
    assert iteration_due(in_flight=1, slots=2, **late)
    assert not iteration_due(in_flight=3, slots=2, **late)
    # nothing in flight: every look once quiet (a backfill just requested)
    assert iteration_due(in_flight=0, slots=2, **still)
    assert not iteration_due(in_flight=0, slots=2, **(still | {"quiet": False}))
    # the last run of a stage finished: every batch is stored, no need to wait for quiet
    assert iteration_due(in_flight=0, slots=2, **(look | {"quiet": False}))
    assert not iteration_due(in_flight=1, slots=2, **(look | {"quiet": False}))


def test_run_slots_reads_the_run_queue(tmp_path) -> None:
    overrides = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"max_concurrent_runs": 3},
        }
    }
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=overrides) as instance:
        assert run_slots(instance) == 3
    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    overrides["run_coordinator"]["config"] = {"max_concurrent_runs": -1}
    with dg.instance_for_test(temp_dir=str(unlimited), overrides=overrides) as instance:
        assert run_slots(instance) is None
    # the embedded instance: the limit under `concurrency: runs:`, the priority queue as coordinator
    embedded = tmp_path / "embedded"
    embedded.mkdir()
    config = yaml.safe_load(instance_yaml(3, embedded))
    with dg.instance_for_test(temp_dir=str(embedded), overrides=config) as instance:
        assert type(instance.run_coordinator).__name__ == "PriorityRunCoordinator"
        assert run_slots(instance) == 3


def test_a_stop_that_hangs_dumps_the_threads_and_exits() -> None:
    code = (
        "import threading, time\n"
        "from quant_assets.defs.daemon import _stop_watchdog\n"
        "def stuck_daemon_thread():\n"
        "    time.sleep(60)\n"
        "threading.Thread(target=stuck_daemon_thread, name='stuck').start()\n"
        "_stop_watchdog(1.0)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert time.monotonic() - started < 20
    assert done.returncode == 3
    out = done.stdout + done.stderr
    assert "the daemon did not stop within 1 s of SIGTERM" in out
    assert "stuck_daemon_thread" in out  # the stack of the thread that held it
    # shorter than the 30 s the CLI waits before it kills the daemon's process group
    assert STOP_GRACE_SECONDS < 30


def test_priority_follows_the_finest_timeframe_of_the_partitions() -> None:
    assert run_priority({"dagster/partition": "BTCUSDT|1h"}) == -6
    assert run_priority({"dagster/partition": "4h"}) == -8  # a timeframe-partitioned asset
    whole_range = {
        "dagster/asset_partition_range_start": "AAPL|1d",
        "dagster/asset_partition_range_end": "XRPUSDT|1d",
    }
    assert run_priority(whole_range) == -10
    one_symbol = {
        "dagster/asset_partition_range_start": "BTCUSDT|1h",
        "dagster/asset_partition_range_end": "BTCUSDT|1d",
    }
    assert run_priority(one_symbol) == -6  # the finest of the range
    assert run_priority({"dagster/partition": "BTCUSDT|15m"}) == -4
    assert run_priority({"dagster/partition": "BTCUSDT|1m"}) == 0
    # no timeframe: unpartitioned, another partitioning, a foreign key
    assert run_priority({}) is None
    assert run_priority({"dagster/partition": "2026-06-30"}) is None
    assert run_priority({"dagster/partition": "BTCUSDT|2h"}) is None


def test_a_batched_run_counts_the_bars_of_all_its_symbols() -> None:
    """A range of symbols is worth its symbols' bars: 32 symbols of 1d hold about as many as one
    symbol of 1h (-5 against -6), so a batch of 1d training starts before a timeframe's global
    model (one partition); the symbols are counted in the instance's order."""
    symbols = [f"S{i:02d}" for i in range(64)]

    def batch(first: str, last: str, timeframe: str) -> dict[str, str]:
        return {
            "dagster/asset_partition_range_start": f"{first}|{timeframe}",
            "dagster/asset_partition_range_end": f"{last}|{timeframe}",
        }

    assert run_priority(batch("S00", "S31", "1d"), symbols) == -5  # log2(32 / 1440)
    assert run_priority(batch("S32", "S63", "4h"), symbols) == -3
    assert run_priority(batch("S00", "S63", "1h"), symbols) == 0  # log2(64 / 60)
    assert (
        run_priority({"dagster/partition": "1h"})
        == -6
        < run_priority(batch("S00", "S31", "1d"), symbols)
    )
    # ends not among the symbols (or none given): one symbol
    assert run_priority(batch("S00", "X", "1d"), symbols) == -10
    assert run_priority(batch("S00", "S31", "1d")) == -10
    # a rectangle of one symbol's timeframes, and of 2 symbols' timeframes
    across = {
        "dagster/asset_partition_range_start": "S00|1h",
        "dagster/asset_partition_range_end": "S01|1d",
    }
    assert run_priority(across, symbols) == round(math.log2(2 * (1 / 60 + 1 / 240 + 1 / 1440)))


def test_queued_runs_start_finest_timeframe_first(tmp_path) -> None:
    """Runs queued in the order a stage's parents finished (1d, 4h, 1h) are started by Dagster's
    queue daemon in the order 1h, 4h, 1d, after the unpartitioned run queued first and a batch of
    32 symbols' 1d partitions (its symbols counted in the instance); a priority set by the user is
    kept."""
    config = yaml.safe_load(instance_yaml(2, tmp_path))
    # a queued run names the code it runs (this module, loaded in process)
    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(
            InProcessCodeLocationOrigin(LoadableTargetOrigin(python_file=__file__)),
            "__repository__",
        ),
        "_job",
    )
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides=config) as instance:
        assert type(instance.run_coordinator).__name__ == "PriorityRunCoordinator"
        instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, [f"S{i:02d}" for i in range(64)])
        queued = {}
        for name, tags in (
            ("unpartitioned", {}),
            ("1d", {"dagster/partition": "BTCUSDT|1d"}),
            ("4h", {"dagster/partition": "BTCUSDT|4h"}),
            ("1h", {"dagster/partition": "BTCUSDT|1h"}),
            ("user", {"dagster/partition": "BTCUSDT|1d", PRIORITY_TAG: "5"}),
            ("global 1h", {"dagster/partition": "1h"}),
            (
                "1d batch",
                {
                    "dagster/asset_partition_range_start": "S00|1d",
                    "dagster/asset_partition_range_end": "S31|1d",
                },
            ),
        ):
            run = instance.create_run_for_job(_job, tags=tags, remote_job_origin=origin)
            stored = instance.run_coordinator.submit_run(SubmitRunContext(run, workspace=None))
            assert stored.status == dg.DagsterRunStatus.QUEUED
            queued[name] = stored
        tags = {name: run.tags.get(PRIORITY_TAG) for name, run in queued.items()}
        assert tags == {
            "unpartitioned": None,
            "1d": "-10",
            "4h": "-8",
            "1h": "-6",
            "user": "5",
            "global 1h": "-6",
            "1d batch": "-5",  # 32 of the instance's symbols
        }
        # the order Dagster's queue daemon dequeues them in (its own sort of the queued runs)
        runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED]))
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        order = [run.run_id for run in daemon._priority_sort(list(reversed(runs)))]
        names = {run.run_id: name for name, run in queued.items()}
        assert [names[r] for r in order] == [
            "user", "unpartitioned", "1d batch", "1h", "global 1h", "4h", "1d",
        ]  # fmt: skip


def test_auto_batch_spreads_each_timeframe_over_the_slots_from_eight_symbols_a_slot(
    tmp_path,
) -> None:
    """`symbols_per_run` auto: one run per timeframe for a small universe (the demo: fewer runs),
    each timeframe over every slot from 8 symbols a slot on (its finest timeframe holds most of a
    stage's work), at most 64 partitions a run; the setting wins."""
    import dataclasses

    from quant_assets.defs.partitions import symbols_per_run

    base = dataclasses.replace(
        load_settings(), watchlist=str(tmp_path / "absent.txt"), symbols_per_run=0
    )

    def auto(symbols: int, slots: int) -> int:
        universe = tuple(f"SYM{i:03d}USDT" for i in range(symbols))
        return symbols_per_run(
            dataclasses.replace(base, universe=universe, max_concurrent_runs=slots)
        )

    assert auto(4, 2) == 4  # the demo: 3 runs per stage (one per timeframe)
    assert auto(12, 2) == 12
    assert auto(16, 2) == 8  # 6 runs per stage
    assert auto(64, 2) == 32
    assert auto(64, 1) == 64  # one slot: nothing to spread over
    assert auto(500, 2) == 64  # the cap
    assert auto(4, 4) == 2  # more slots than timeframes: spread as before
    assert auto(64, 8) == 8
    assert symbols_per_run(dataclasses.replace(base, symbols_per_run=5)) == 5
