"""The execution daemon the CLI starts for the length of an invocation: Dagster's own backfill,
run-queue and run-monitoring daemons (no schedules or sensors, so nothing but the requested backfill
runs), on the instance in DAGSTER_HOME, loading the code location from `quant_assets.definitions`.

    python -m quant_assets.defs.daemon        # stops cleanly on SIGINT / SIGTERM
    python -m quant_assets.defs.daemon --all  # every daemon the instance needs (quant-assets dev)
    kill -USR1 <pid>                          # prints every thread's stack to its log

With `--all` (what `quant-assets dev` runs beside the webserver) it also runs the schedules,
sensors and declarative automation, and reloads the code location every
`DEV_WORKSPACE_RELOAD_SECONDS` as `dagster dev` does, so that backfills launched from the UI are
planned by the same settled, holding backfill daemon as the CLI's.

The backfill daemon normally looks for work every 30 s; a backfill of a pipeline waits for that
between every stage, so this process looks every `BACKFILL_LOOP_SECONDS` (1 s). It does not run a
backfill iteration on every look, though: a batched step stores the materializations of its
partitions one event at a time, in no particular partition order, over a few seconds (64
partitions: several seconds on a loaded machine), and an iteration that lands in that window
requests the children of the partitions stored so far: a scattered subset, so many small runs
(measured at 64 symbols x 3 timeframes: about 100 runs of 1-2 partitions for each of three
stages). `SettledBackfillDaemon` runs an iteration when a run has finished, when a backfill is
requested or is being cancelled, or while the backfills have nothing in flight, and then only once
no materialization has been stored for `SETTLE_QUIET_SECONDS` (another run may be storing its
batch) and no run waits in the queue (children requested then would queue behind it, and the
stage's runs still going could not join them); besides, every `SETTLE_MAX_SECONDS` when quiet,
and at the latest every 4 x that, with nothing queued (`iteration_due`).

An iteration also holds its requests back while a run in flight still makes a parent of an asset
that would otherwise join a run it requests (`holding_iteration`): Dagster would run that asset
apart, and everything after it (the demo's 20-run outcome, against 14: the ensemble and signals
apart from the training stage because one timeframe's meta layer was still running). The check
reads the very run requests Dagster computed, so nothing is computed twice.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

#: seconds between two iterations of the backfill daemon in this process
BACKFILL_LOOP_SECONDS = 1
#: seconds after which the backfill daemon iterates even when no run has finished, once no batch
#: is being stored (Dagster's own interval); at 4 x this it iterates regardless
SETTLE_MAX_SECONDS = 30.0
#: seconds without a new materialization before an iteration (a batch is stored as a burst)
SETTLE_QUIET_SECONDS = 2.0
#: seconds between two reloads of the code location: Dagster's daemon replaces its code server
#: every 60 s (a new process loading the definitions, about 12 CPU-s here: 15 of them over a
#: 15-minute rebuild); the execution daemon lives for one invocation, whose runs should all run
#: the code it started with, so it loads the code once
WORKSPACE_RELOAD_SECONDS = 24 * 3600
#: with --all (quant-assets dev): the code is edited while the UI is open, so it is reloaded as
#: `dagster dev`'s daemon reloads it
DEV_WORKSPACE_RELOAD_SECONDS = 60
#: the daemons this process runs (with --all: every daemon the instance requires)
DAEMON_TYPES = ("BACKFILL", "QUEUED_RUN_COORDINATOR", "MONITORING")
#: seconds between the automation daemon's evaluations when the instance does not set it: Dagster's
#: default (`DEFAULT_DAEMON_INTERVAL_SECONDS`, which this process lowers for the backfill loop)
AUTOMATION_INTERVAL_SECONDS = 30
#: seconds a call to the code server (StartRun) may take: Dagster's 60 s default fails runs at
#: launch on a machine saturated by the runs themselves (measured at load average 20 on 2 cores).
#: Dagster reads it when its gRPC client is imported, so the CLI sets it in this process's
#: environment (ExecutionDaemon).
GRPC_TIMEOUT_SECONDS = "300"
#: seconds the daemon may take to stop after SIGTERM: Dagster joins each daemon thread for up to
#: 30 s and then shuts the code server down; past this, every thread's stack goes to the log and
#: the process exits (code 3). Its state is in the instance: runs it left are for run monitoring.
STOP_GRACE_SECONDS = 25.0


def _stop_watchdog(grace: float) -> None:
    """After `grace` seconds, dump every thread's stack and exit the process."""
    import threading

    def expire() -> None:
        print(f"the daemon did not stop within {grace:.0f} s of SIGTERM; its threads:", flush=True)
        faulthandler.dump_traceback(all_threads=True)
        sys.stdout.flush()
        os._exit(3)

    timer = threading.Timer(grace, expire)
    timer.daemon = True
    timer.start()


def _on_sigterm(*_) -> None:
    _stop_watchdog(STOP_GRACE_SECONDS)
    os.kill(os.getpid(), signal.SIGINT)


def run_slots(instance) -> int | None:
    """How many runs the instance's run queue runs at once (None: no limit, or not a queue): the
    limit its daemon applies, from `concurrency: runs:` or the run coordinator's own config (the
    coordinator's config alone reads Dagster's default of 10 when the limit is under
    `concurrency`, as in the embedded instance)."""
    config = instance.get_concurrency_config().run_queue_config
    limit = config.max_concurrent_runs if config is not None else None
    return limit if limit is not None and limit > 0 else None


def settle_signature(instance) -> tuple[tuple, int, int]:
    """What a backfill iteration waits for: the backfills to act on (requested, canceling, failing:
    the statuses Dagster's iteration reads), the number of finished runs, and the number of runs
    in flight (not started, queued or running)."""
    import dagster as dg
    from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
    from dagster._core.storage.dagster_run import FINISHED_STATUSES, IN_PROGRESS_RUN_STATUSES

    backfills = instance.get_backfills(
        filters=BulkActionsFilter(
            statuses=[
                BulkActionStatus.REQUESTED,
                BulkActionStatus.CANCELING,
                BulkActionStatus.FAILING,
            ]
        )
    )
    finished = instance.get_runs_count(dg.RunsFilter(statuses=list(FINISHED_STATUSES)))
    in_flight = instance.get_runs_count(
        dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.QUEUED,
                *IN_PROGRESS_RUN_STATUSES,
            ]
        )
    )
    return (
        tuple(sorted((b.backfill_id, b.status.value) for b in backfills)),
        finished,
        in_flight,
    )


def latest_materialization_id(instance) -> int:
    """The storage id of the latest materialization of any asset: one indexed lookup of one event
    (`idx_event_type`). Reading every asset's record instead cost 10 s of the daemon's CPU over the
    4 x 3 demo, looking every second."""
    from dagster import DagsterEventType, EventRecordsFilter

    records = instance.event_log_storage.get_event_records(
        EventRecordsFilter(event_type=DagsterEventType.ASSET_MATERIALIZATION),
        limit=1,
        ascending=False,
    )
    return records[0].storage_id if records else 0


def iteration_due(
    *,
    changed: bool,
    in_flight: int,
    slots: int | None,
    quiet: bool,
    canceling: bool,
    since_last: float,
) -> bool:
    """Whether the backfill daemon iterates now.

    changed: a run finished or a backfill's status changed since the last iteration; in_flight:
    runs not started, queued or running; slots: the run queue's limit (None: none); quiet: no
    materialization stored for SETTLE_QUIET_SECONDS (no batch is being stored); since_last:
    seconds since the last iteration.

    A cancellation (by a user, or Dagster's after a failed run) is acted on at once. While a run
    already waits in the queue for a slot, children requested now would queue behind it: waiting
    until it has a slot lets more of the stage's runs finish, so their children are requested
    together (fewer, larger runs), and no core is left idle meanwhile (the queued run takes the
    next free slot; waiting for a free slot instead left one idle for the 5-8 s of the next
    iteration and launch at every stage: 169 % instead of 177 % CPU at 64 x 3). Otherwise an
    iteration runs when quiet and something changed, when nothing is in flight, every
    SETTLE_MAX_SECONDS when quiet, and at 4 x that regardless.

    When nothing is in flight and something changed (the stage's last run finished, a backfill
    was requested), it runs at once: a run stores its materializations before it ends, so no
    batch can be half stored, and waiting SETTLE_QUIET_SECONDS left both cores idle at every
    stage that ends with no run queued (twice per backfill at 16 x 3)."""
    if canceling:
        return True
    if changed and in_flight == 0:
        return True
    if slots is not None and in_flight > slots:
        return False
    if since_last >= 4 * SETTLE_MAX_SECONDS:
        return True
    return quiet and (changed or in_flight == 0 or since_last >= SETTLE_MAX_SECONDS)


def _groupable(asset_graph, parent_key, child_key) -> bool:
    """Whether Dagster's backfill can put `child_key` in the run of `parent_key` (the same
    partitions, backfill policy and an identity mapping: `_get_cant_run_because_of_parent_reason`
    in Dagster's `asset_backfill.py`)."""
    import dagster as dg

    parent, child = asset_graph.get(parent_key), asset_graph.get(child_key)
    if parent.partitions_def != child.partitions_def:
        return False
    if parent.backfill_policy != child.backfill_policy:
        return False
    if not parent.is_partitioned:
        return True
    mapping = asset_graph.get_partition_mapping(child_key, parent_asset_key=parent_key)
    return isinstance(mapping, dg.IdentityPartitionMapping) or (
        isinstance(mapping, dg.TimeWindowPartitionMapping)
        and mapping.start_offset == 0
        and mapping.end_offset == 0
    )


def split_by_runs_in_flight(view, tick, in_flight, settled) -> list[str]:
    """The asset partitions an iteration would leave to runs of their own only because a run in
    flight still makes one of their parents: an asset partition `c` that could join the run of a
    parent the iteration requests (`_groupable`), is not requested with it, and has another parent
    partition still in flight. Dagster then drops every candidate partition of `c`'s asset until
    that parent has materialized, and runs them apart later, a run per timeframe (the demo's 20-run
    outcome: `ensemble_signals` and `signals` apart from the training stage because one
    timeframe's meta layer was still running). Once the run in flight has finished, the same
    iteration requests `c` with its parent.

    view: an AssetGraphView; tick: the AssetGraphSubset the iteration would request; in_flight:
    requested but neither materialized nor failed; settled: requested, materialized or failed
    before this iteration. Returns one line per asset found ("child with parent: waits for
    other"), empty when nothing would be split this way."""
    graph = view.asset_graph
    found = []
    for parent_key in sorted(tick.asset_keys):
        asked = view.get_entity_subset_from_asset_graph_subset(tick, parent_key)
        for child_key in sorted(graph.get(parent_key).child_keys):
            if not _groupable(graph, parent_key, child_key):
                continue
            left = view.compute_child_subset(child_key, asked).compute_difference(
                view.get_entity_subset_from_asset_graph_subset(tick | settled, child_key)
            )
            if left.is_empty:
                continue
            for other in sorted(graph.get(child_key).parent_keys - {parent_key, child_key}):
                going = view.get_entity_subset_from_asset_graph_subset(in_flight, other)
                if going.is_empty:
                    continue
                if not view.compute_parent_subset(other, left).compute_intersection(going).is_empty:
                    found.append(
                        f"{child_key.to_user_string()} with {parent_key.to_user_string()}: "
                        f"waits for {other.to_user_string()}"
                    )
                    break
    return found


#: whether the backfill iteration may hold a split back (set by the settled daemon's loop: nothing
#: is being cancelled and the forced iteration is not due)
HOLD = {"allowed": False}


def held_splits(result, asset_backfill_data, view) -> list[str]:
    """What `split_by_runs_in_flight` finds in the run requests of a backfill iteration
    (`result`, an AssetBackfillIterationResult) computed from `asset_backfill_data`."""
    from dagster._core.definitions.partitions.context import partition_loading_context
    from dagster._core.execution.asset_backfill import (
        _get_requested_asset_graph_subset_from_run_requests,
    )

    if not result.run_requests:
        return []
    requested = asset_backfill_data.requested_subset
    done = result.backfill_data
    finished = done.materialized_subset | done.failed_and_downstream_subset
    with partition_loading_context(
        effective_dt=view.effective_dt,
        dynamic_partitions_store=view.get_inner_queryer_for_back_compat(),
    ):
        tick = _get_requested_asset_graph_subset_from_run_requests(result.run_requests, view)
        return split_by_runs_in_flight(view, tick, requested - finished, requested | finished)


def _has_runs_in_flight(instance, backfill_id: str) -> bool:
    """Whether a run of the backfill is not finished (else nothing it waits for can come)."""
    import dagster as dg
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
    from dagster._core.storage.tags import BACKFILL_ID_TAG

    runs = dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}, statuses=list(NOT_FINISHED_STATUSES))
    return instance.get_runs_count(runs) > 0


def holding_iteration(inner, allowed):
    """Dagster's backfill iteration (`execute_asset_backfill_iteration_inner`, which computes the
    runs to request and has no side effects) that requests nothing while `allowed()` and the runs
    it would request split a stage (`held_splits`): the materialized and failed partitions it has
    read are kept, the candidates are all computed again on the next iteration, once the run in
    flight has finished. Nothing is computed twice, and what is checked is exactly what would be
    requested."""

    def iteration(**kwargs):
        result = inner(**kwargs)
        if allowed():
            view = kwargs["asset_graph_view"]
            found = held_splits(result, kwargs["asset_backfill_data"], view)
            if found and _has_runs_in_flight(view.instance, kwargs["backfill_id"]):
                kwargs["logger"].info(
                    "backfill %s: requests held until a run in flight has finished, else "
                    "Dagster would run these apart: %s",
                    kwargs["backfill_id"],
                    "; ".join(found),
                )
                return result._replace(run_requests=[], reserved_run_ids=[])
        return result

    return iteration


def settled_backfill_daemon(instance):
    """Dagster's backfill daemon, iterating only when its inputs are settled (module docstring)."""
    import time

    from dagster._daemon.backfill import execute_backfill_iteration
    from dagster._daemon.daemon import BackfillDaemon, DaemonErrorCapture, SpanMarker

    class SettledBackfillDaemon(BackfillDaemon):
        def core_loop(self, workspace_process_context, shutdown_event):
            futures: dict = {}
            last, last_at = None, 0.0
            stored, stored_at = None, 0.0
            slots = run_slots(workspace_process_context.instance)
            while not shutdown_event.is_set():
                instance = workspace_process_context.instance
                signature = settle_signature(instance)
                now = time.monotonic()
                latest = latest_materialization_id(instance)
                if latest != stored:  # (the first look counts as quiet)
                    stored_at = now if stored is not None else now - SETTLE_QUIET_SECONDS
                    stored = latest
                canceling = any(s in ("CANCELING", "FAILING") for _, s in signature[0])
                due = iteration_due(
                    changed=signature != last,
                    in_flight=signature[2],
                    slots=slots,
                    quiet=now - stored_at >= SETTLE_QUIET_SECONDS,
                    canceling=canceling,
                    since_last=now - last_at,
                )
                # a split is never held back in the forced iteration or during a cancellation (a
                # hold also needs an unfinished run of the backfill: `holding_iteration`)
                HOLD["allowed"] = not canceling and now - last_at < 4 * SETTLE_MAX_SECONDS
                if due:
                    yield SpanMarker.START_SPAN
                    try:
                        yield from execute_backfill_iteration(
                            workspace_process_context,
                            self._logger,
                            threadpool_executor=self._threadpool_executor,
                            backfill_futures=futures,
                            submit_threadpool_executor=self._submit_threadpool_executor,
                        )
                    except Exception:
                        yield DaemonErrorCapture.process_exception(
                            exc_info=sys.exc_info(),
                            logger=self._logger,
                            log_message="BackfillDaemon caught an error",
                        )
                    yield SpanMarker.END_SPAN
                    # an iteration still working in its thread has not seen this signature yet:
                    # look again on the next tick (a busy backfill is skipped by Dagster)
                    busy = any(not future.done() for future in futures.values())
                    last, last_at = (None if busy else signature), now
                shutdown_event.wait(BACKFILL_LOOP_SECONDS)
                yield None

    return SettledBackfillDaemon(settings=instance.get_backfill_settings())


def daemon_of_type(kind: str, instance):
    """Dagster's daemon of this type, the backfill daemon settled and holding; the automation
    daemon at Dagster's own interval, not the backfill loop's."""
    from dagster._daemon.asset_daemon import AssetDaemon
    from dagster._daemon.controller import create_daemon_of_type

    if kind == "BACKFILL":
        return settled_backfill_daemon(instance)
    if kind == AssetDaemon.daemon_type():
        interval = instance.auto_materialize_minimum_interval_seconds
        return AssetDaemon(
            settings=instance.get_auto_materialize_settings(),
            pre_sensor_interval_seconds=interval or AUTOMATION_INTERVAL_SECONDS,
        )
    return create_daemon_of_type(kind, instance)


def _arguments(argv: list[str] | None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m quant_assets.defs.daemon",
        description="Dagster's backfill, run-queue and run-monitoring daemons on the instance in "
        "DAGSTER_HOME, with backfill iterations that wait for a stage's batches to be stored "
        "(the CLI starts it for the length of an invocation). SIGINT or SIGTERM stops it; "
        "SIGUSR1 prints every thread's stack to its log.",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="every daemon the instance requires (schedules, sensors, automation too), reloading "
        f"the code every {DEV_WORKSPACE_RELOAD_SECONDS} s: what `quant-assets dev` runs beside "
        "the webserver",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import dagster._core.execution.asset_backfill as asset_backfill
    import dagster._daemon.controller as controller
    from dagster import DagsterInstance
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.controller import daemon_controller_from_instance
    from dagster._utils.interrupts import capture_interrupts

    args = _arguments(argv)
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = BACKFILL_LOOP_SECONDS
    # the backfill iterations of this process hold back requests that would split a stage
    asset_backfill.execute_asset_backfill_iteration_inner = holding_iteration(
        asset_backfill.execute_asset_backfill_iteration_inner, lambda: HOLD["allowed"]
    )
    controller.RELOAD_WORKSPACE_INTERVAL = (
        DEV_WORKSPACE_RELOAD_SECONDS if args.all else WORKSPACE_RELOAD_SECONDS
    )
    # a daemon that does not stop can say where each of its threads is
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # SIGTERM (from the CLI or a supervisor) stops the daemon like Ctrl-C: threads wind down,
    # the code server is shut down, heartbeats stop
    signal.signal(signal.SIGTERM, _on_sigterm)
    target = ModuleTarget(
        module_name="quant_assets.definitions",
        attribute="defs",
        working_directory=os.getcwd(),
        location_name="quant_assets",
    )

    def daemons(instance: DagsterInstance):
        required = instance.get_required_daemon_types()
        kinds = required if args.all else [k for k in DAEMON_TYPES if k in required]
        return [daemon_of_type(kind, instance) for kind in kinds]

    try:
        with (
            capture_interrupts(),
            DagsterInstance.get() as instance,
            daemon_controller_from_instance(
                instance,
                workspace_load_target=target,
                gen_daemons=daemons,
                log_level=os.environ.get("QUANT_ASSETS_DAEMON_LOG_LEVEL", "warning"),
                code_server_log_level="warning",
            ) as daemon,
        ):
            daemon.check_daemon_loop()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
