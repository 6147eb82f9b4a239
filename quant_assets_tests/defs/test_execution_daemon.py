"""The execution daemon (`defs/daemon.py`): when its backfill daemon iterates (only on settled
inputs: a finished run, a backfill to act on, nothing in flight) and its stop watchdog (a daemon
that does not stop after SIGTERM says where its threads are and exits, so the CLI, which waits
30 s, and supervisors are never held up). The effect on a real backfill is checked by the demo
test (one run per stage and timeframe)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

from quant_assets.defs.daemon import (
    SETTLE_MAX_SECONDS,
    STOP_GRACE_SECONDS,
    iteration_due,
    latest_materialization_id,
    run_slots,
    settle_signature,
)


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
