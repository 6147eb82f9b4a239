"""Handing a selection of assets × partitions to Dagster as one asset backfill, and following it.

This is what the UI's "Materialize all" does: the backfill daemon plans the runs stage by stage
(grouping assets and batching partitions by each asset's BackfillPolicy), the run queue runs
`max_concurrent_runs` of them at once and run monitoring watches them. The CLI only submits the
backfill, starts the daemon for the length of the invocation when none is running, prints progress,
and turns Ctrl-C / SIGTERM into a cancellation of the backfill.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import (
    BulkActionsFilter,
    BulkActionStatus,
    PartitionBackfill,
)
from dagster._core.utils import make_new_backfill_id

from quant_assets.defs.daemon import GRPC_TIMEOUT_SECONDS
from quant_assets.defs.partitions import partition_key
from quant_assets.lib.processes import pid_alive, run_process_env

TAG_INVOCATION = "quant_assets/invocation"
#: seconds without a line of progress before the watcher says what it waits for
QUIET_SECONDS = 10.0
FINISHED = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}
RUNNING = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}


def instance_yaml(run_slots: int, home: Path) -> str:
    """The embedded instance's dagster.yaml (SQLite under `home`, its DAGSTER_HOME)."""
    home = Path(home).resolve()
    return f"""\
# Written by quant-assets (rewritten when the settings change): the embedded default instance,
# SQLite under this folder. For PostgreSQL storage see the top-level dagster.yaml and README.md.
telemetry:
  enabled: false
# Dagster's SQLite storage (the default layout: history/runs.db, history/runs/*.db,
# schedules/schedules.db), each process keeping its connections (defs/storage.py); the paths
# follow DAGSTER_HOME when quant-assets rewrites this file
run_storage:
  module: quant_assets.defs.storage
  class: PooledSqliteRunStorage
  config:
    base_dir: {json.dumps(str(home / "history"))}
event_log_storage:
  module: quant_assets.defs.storage
  class: PooledSqliteEventLogStorage
  config:
    base_dir: {json.dumps(str(home / "history" / "runs"))}
schedule_storage:
  module: quant_assets.defs.storage
  class: PooledSqliteScheduleStorage
  config:
    base_dir: {json.dumps(str(home / "schedules"))}
# Dagster's run queue, starting the run holding the most bars first (defs/run_queue.py)
run_coordinator:
  module: quant_assets.defs.run_queue
  class: PriorityRunCoordinator
  config:
    dequeue_interval_seconds: 1
    # a code server too busy to answer StartRun within the gRPC timeout (a saturated machine)
    # puts the run back in the queue instead of failing it
    max_user_code_failure_retries: 5
    user_code_failure_retry_delay: 10
concurrency:
  runs:
    max_concurrent_runs: {run_slots}
  pools:
    default_limit: {run_slots}
# runs execute in warm worker processes that keep the code and libraries loaded
# (defs/warm_launcher.py): the serving jobs in one of their own, every other run in one of
# {run_slots} pipeline workers (one per run slot)
run_launcher:
  module: quant_assets.defs.warm_launcher
  class: WarmRunLauncher
  config:
    jobs: [serve_bar_close]
    idle_timeout_seconds: 10800
    pipeline_workers: {run_slots}
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 60
  poll_interval_seconds: 5
  free_slots_after_run_end_seconds: 0
"""


class BackfillError(RuntimeError):
    """The selection cannot be submitted (no asset, no partition)."""


def backfill_subset(
    defs: dg.Definitions,
    selection: str | dg.AssetSelection,
    symbols: Sequence[str],
    timeframes: Sequence[str],
) -> tuple[AssetGraphSubset, list[dg.AssetKey]]:
    """Every selected asset × the requested partitions (symbol × timeframe, or timeframe, or none)."""
    graph = defs.resolve_asset_graph()
    if isinstance(selection, str):
        selection = dg.AssetSelection.from_string(selection)
    keys = sorted(selection.resolve(graph), key=lambda k: k.to_user_string())
    if not keys:
        raise BackfillError(f"asset selection {selection} matches no asset")
    wanted: set[AssetKeyPartitionKey] = set()
    for key in keys:
        pdef = graph.get(key).partitions_def
        if pdef is None:
            wanted.add(AssetKeyPartitionKey(key, None))
        elif isinstance(pdef, dg.MultiPartitionsDefinition):
            wanted |= {
                AssetKeyPartitionKey(key, partition_key(s, t)) for s in symbols for t in timeframes
            }
        else:
            wanted |= {AssetKeyPartitionKey(key, t) for t in timeframes}
    return AssetGraphSubset.from_asset_partition_set(wanted, graph), keys


def submit_backfill(
    instance: dg.DagsterInstance,
    subset: AssetGraphSubset,
    *,
    title: str,
    tags: dict[str, str],
    run_config: dict | None = None,
) -> str:
    backfill_id = make_new_backfill_id()
    backfill = PartitionBackfill.from_asset_graph_subset(
        backfill_id=backfill_id,
        backfill_timestamp=time.time(),
        tags={TAG_INVOCATION: backfill_id, **tags},
        dynamic_partitions_store=instance,
        asset_graph_subset=subset,
        title=re.sub(r'[%*"]', "", title).strip() or None,
        description=f"launched by quant-assets ({tags.get('quant_assets/command', 'cli')})",
        run_config=run_config or None,
    )
    instance.add_backfill(backfill)
    return backfill_id


# ---------------------------------------------------------------- the daemon


#: the lock file in DAGSTER_HOME held by whoever runs the instance's execution daemon (an
#: invocation's ExecutionDaemon, or `quant-assets dev`): one backfill daemon per instance
DAEMON_LOCK = "daemon.lock"


def daemon_process_env() -> dict[str, str]:
    """The execution daemon's environment: its code server starts the run processes (one native
    math thread each), and its calls to the code server may take GRPC_TIMEOUT_SECONDS."""
    return run_process_env({"DAGSTER_GRPC_TIMEOUT_SECONDS": GRPC_TIMEOUT_SECONDS, **os.environ})


def backfill_daemon_alive(instance: dg.DagsterInstance) -> bool:
    """A backfill daemon (ours, `dagster dev`'s or a deployment's) heartbeats on this instance."""
    from dagster._daemon.controller import get_daemon_statuses

    status = get_daemon_statuses(instance, ["BACKFILL"], ignore_errors=True)["BACKFILL"]
    return bool(status.healthy)


class ExecutionDaemon:
    """`python -m quant_assets.defs.daemon` while this invocation needs it, unless another backfill
    daemon (`quant-assets dev`, a deployment, or a concurrent invocation's) runs on the instance.

    One invocation at a time owns the daemon it starts (a lock file in DAGSTER_HOME): a concurrent
    invocation submits its backfill to that daemon and takes over (starts its own) if the daemon
    goes away; the owner keeps its daemon running until no backfill on the instance is left."""

    def __init__(
        self, instance: dg.DagsterInstance, log: Callable[[str], None], verbose: bool = False
    ) -> None:
        self.instance = instance
        self.log = log
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self.log_path = Path(instance.root_directory) / "daemon.log"
        self._lock = None

    def __enter__(self) -> ExecutionDaemon:
        self.ensure()
        return self

    def ensure(self) -> None:
        """Start a daemon unless one runs (or a concurrent invocation is starting one)."""
        if self.process is not None and self.process.poll() is None:
            return
        if not self._take_lock():
            return  # another invocation's daemon serves every backfill of the instance
        if backfill_daemon_alive(self.instance) and self.process is None:
            self.log("a backfill daemon is already running on this instance; it executes the runs")
            self._release_lock()
            return
        # the daemon's and its runs' own logs go to a file (the terminal shows progress), or to the
        # terminal with --verbose
        sink = None if self.verbose else open(self.log_path, "a")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "quant_assets.defs.daemon"],
            # its code server's run processes and the warm workers inherit one native math thread
            env=daemon_process_env(),
            stdout=sink,
            stderr=subprocess.STDOUT if sink else None,
            start_new_session=True,  # Ctrl-C in the terminal reaches the CLI, which cancels first
        )
        if sink:
            sink.close()
        self.log(f"execution daemon started (pid {self.process.pid}; log: {self.log_path})")

    def _take_lock(self) -> bool:
        import fcntl

        if self._lock is not None:
            return True
        handle = open(Path(self.instance.root_directory) / DAEMON_LOCK, "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._lock = handle
        return True

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def alive(self) -> bool:
        """False only when the daemon this invocation started has died."""
        return self.process is None or self.process.poll() is None

    def __exit__(self, *exc) -> None:
        try:
            if self.process is None or self.process.poll() is not None:
                return
            if exc[0] is None:
                self._serve_other_backfills()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            # its heartbeats would look alive for minutes and keep the next invocation waiting
            # (a long-running daemon, e.g. `dagster dev`'s, writes its own again within seconds)
            self.instance.wipe_daemon_heartbeats()
        finally:
            self._release_lock()

    def _serve_other_backfills(self) -> None:
        """Keep the daemon while backfills of other invocations are still in flight."""
        waiting = ""
        while self.process is not None and self.process.poll() is None:
            others = self.instance.get_backfills(
                filters=BulkActionsFilter(
                    statuses=[BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING]
                )
            )
            if not others:
                return
            ids = ", ".join(sorted(b.backfill_id for b in others))
            if ids != waiting:
                self.log(f"this invocation's daemon still executes backfill(s) {ids}; waiting")
                waiting = ids
            time.sleep(1.0)


# ---------------------------------------------------------------- housekeeping


def _run_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of a run's worker process, from its "Started process for run" engine event."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        pid = event.event_specific_data.metadata.get("pid") if event else None
        if pid is not None:
            return int(pid.value)
    return None


def reap_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs left STARTED/STARTING/CANCELING by a worker process that no longer
    exists on this machine (killed with SIGKILL, machine restart), and free every pool slot held by
    a run that has finished. Returns what it did, one line each."""
    done = []
    stuck = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.CANCELING,
            ]
        )
    )
    for run in stuck:
        pid = _run_pid(instance, run.run_id)
        if pid is None or pid_alive(pid):
            continue
        instance.report_run_failed(
            run, f"quant-assets: the run's worker process {pid} no longer exists"
        )
        done.append(f"run {run.run_id[:8]} marked failed: its process {pid} is gone")
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        for pool in storage.get_concurrency_keys():
            info = storage.get_concurrency_info(pool)
            holders = {slot.run_id for slot in info.claimed_slots}
            for run_id in holders:
                run = instance.get_run_by_id(run_id)
                if run is None or run.status in FINISHED:
                    storage.free_concurrency_slots_for_run(run_id)
                    done.append(f"pool {pool}: freed the slots of finished run {run_id[:8]}")
    return done


def pool_waits(instance: dg.DagsterInstance) -> list[str]:
    """For each pool with every slot taken: the pool, its limit and the runs holding it."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    lines = []
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        if info.slot_count and len(info.claimed_slots) >= info.slot_count:
            holders = sorted({s.run_id[:8] for s in info.claimed_slots})
            lines.append(
                f"pool {pool!r} full ({info.slot_count} slots) held by run(s) {', '.join(holders)}"
            )
    return lines


# ---------------------------------------------------------------- following a backfill


@dataclass
class BackfillProgress:
    """done/failed/total: the backfill's own subsets (what the UI's backfill page counts; the
    daemon adds a run's partitions when the run has ended). running: partitions already
    materialized by runs of the backfill still in progress, not yet in `done` (a batched run
    materializes a step's partitions long before it ends)."""

    status: str
    done: int
    failed: int
    total: int
    runs: dict[str, int] = field(default_factory=dict)
    by_asset: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    running: int = 0


#: runs whose materializations the backfill's subsets do not hold yet
UNFINISHED_RUNS = [
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def materialized_by_unfinished_runs(
    instance: dg.DagsterInstance, backfill_id: str
) -> set[AssetKeyPartitionKey]:
    """Asset partitions materialized so far by the backfill's unfinished runs: each run's
    materializations, read as the daemon reads them, projected on their indexed columns (no event
    payload, which holds the metadata's charts)."""
    seen: set[AssetKeyPartitionKey] = set()
    runs = instance.get_run_records(
        filters=dg.RunsFilter(statuses=UNFINISHED_RUNS, tags={"dagster/backfill": backfill_id})
    )
    for run in runs:
        rows = instance.get_asset_event_summary_records(
            dg.DagsterEventType.ASSET_MATERIALIZATION, run_id=run.dagster_run.run_id
        )
        seen.update(AssetKeyPartitionKey(row.asset_key, row.partition) for row in rows)
    return seen


def backfill_progress(
    instance: dg.DagsterInstance,
    backfill_id: str,
    seen: set[AssetKeyPartitionKey] | None = None,
    count_running: bool = True,
) -> BackfillProgress:
    """The backfill's status, counts and runs, and `running`: the partitions in `seen` that the
    backfill's own `done` lacks yet. With count_running, `seen` first gains what its unfinished
    runs have materialized so far (a few event log queries; the CLI asks every QUIET_SECONDS).
    `seen` is kept by the caller across calls: a run that has just ended is no longer unfinished,
    and the daemon adds its partitions to `done` only at its next iteration."""
    seen = set() if seen is None else seen
    backfill = instance.get_backfill(backfill_id)
    data = backfill.asset_backfill_data
    target, done = data.target_subset, data.materialized_subset
    failed = data.failed_and_downstream_subset
    by_asset = {}
    for key in sorted(target.asset_keys, key=lambda k: k.to_user_string()):
        by_asset[key.to_user_string()] = (
            _count(done, key),
            _count(failed, key),
            _count(target, key),
        )
    counts: dict[str, int] = {}
    for status in dg.DagsterRunStatus:
        n = instance.get_runs_count(
            filters=dg.RunsFilter(statuses=[status], tags={"dagster/backfill": backfill_id})
        )
        if n:
            counts[status.value] = n
    if count_running and any(counts.get(status.value) for status in UNFINISHED_RUNS):
        seen |= materialized_by_unfinished_runs(instance, backfill_id)
    return BackfillProgress(
        status=backfill.status.value,
        done=sum(v[0] for v in by_asset.values()),
        failed=sum(v[1] for v in by_asset.values()),
        total=sum(v[2] for v in by_asset.values()),
        runs=counts,
        by_asset=by_asset,
        running=sum(1 for key in seen if key not in done),
    )


def _count(subset: AssetGraphSubset, key: dg.AssetKey) -> int:
    if key in subset.non_partitioned_asset_keys:
        return 1
    partitions = subset.partitions_subsets_by_asset_key.get(key)
    return len(partitions) if partitions is not None else 0


TERMINAL_BACKFILL = {
    BulkActionStatus.COMPLETED,
    BulkActionStatus.COMPLETED_SUCCESS,
    BulkActionStatus.COMPLETED_FAILED,
    BulkActionStatus.FAILED,
    BulkActionStatus.CANCELED,
}


def cancel_backfill(instance: dg.DagsterInstance, backfill_id: str) -> None:
    """What the UI's "Cancel backfill" does: the daemon cancels queued runs and terminates
    running ones, then marks the backfill CANCELED."""
    backfill = instance.get_backfill(backfill_id)
    if backfill.status == BulkActionStatus.REQUESTED:
        instance.update_backfill(backfill.with_status(BulkActionStatus.CANCELING))


def follow_backfill(
    instance: dg.DagsterInstance,
    backfill_id: str,
    daemon: ExecutionDaemon,
    log: Callable[[str], None],
    poll_seconds: float = 2.0,
    cancel_timeout: float = 120.0,
) -> tuple[BackfillProgress, int | None]:
    """Follow the backfill to its end, printing progress (partitions done / total, elapsed, ETA)
    whenever it changes and at least every QUIET_SECONDS. SIGINT/SIGTERM cancel it; returns the
    final progress and the signal that cancelled it (None when it ran to its end)."""
    received: list[int] = []

    def on_signal(signum, _frame) -> None:
        if not received:
            log(f"\n{signal.Signals(signum).name}: cancelling the backfill (its runs end CANCELED)")
        received.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    last_line, last_print, cancel_started = "", 0.0, None
    seen: set[AssetKeyPartitionKey] = set()  # materialized by the backfill's runs, as seen
    counted = -QUIET_SECONDS
    try:
        while True:
            # what running runs materialized, read again every QUIET_SECONDS
            stale = time.monotonic() - counted >= QUIET_SECONDS
            progress = backfill_progress(instance, backfill_id, seen, count_running=stale)
            if stale:
                counted = time.monotonic()
            status = BulkActionStatus(progress.status)
            if received and status == BulkActionStatus.REQUESTED:
                # Asked again on every poll: the backfill daemon writes back the copy it read at
                # the start of its iteration, which can overwrite a CANCELING written meanwhile.
                cancel_backfill(instance, backfill_id)
                if cancel_started is None:
                    cancel_started = time.monotonic()
            if status in TERMINAL_BACKFILL:
                return progress, (received[0] if received else None)
            if not daemon.alive():
                raise RuntimeError(
                    f"the execution daemon stopped unexpectedly; see {daemon.log_path}"
                )
            if daemon.process is None and not backfill_daemon_alive(instance):
                daemon.ensure()  # the daemon we relied on went away (its invocation ended)
            if cancel_started is not None and time.monotonic() - cancel_started > cancel_timeout:
                log(f"cancellation did not finish within {cancel_timeout:.0f} s; giving up")
                return progress, received[0]
            elapsed = time.monotonic() - started
            line = _progress_line(progress, elapsed)
            state = line.split("] ", 1)[1].split(", ETA")[0] + str(progress.runs)
            quiet = time.monotonic() - last_print > QUIET_SECONDS
            if state != last_line or quiet:
                extra = ""
                if quiet and progress.runs.get("QUEUED") and not progress.runs.get("STARTED"):
                    waits = pool_waits(instance)
                    extra = "  waiting: " + ("; ".join(waits) or "for the run queue to start runs")
                log(line + extra)
                last_line, last_print = state, time.monotonic()
            time.sleep(poll_seconds)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _progress_line(progress: BackfillProgress, elapsed: float) -> str:
    """Partitions done (those of runs still in progress included, as they materialize), failed,
    elapsed time, ETA at the rate so far, and the backfill's runs by status."""
    done = progress.done + progress.running
    settled = done + progress.failed
    eta = ""
    if 0 < settled < progress.total:
        eta = f", ETA {_clock(elapsed / settled * (progress.total - settled))}"
    runs = ", ".join(f"{n} {s.lower()}" for s, n in sorted(progress.runs.items())) or "none yet"
    failed = f", {progress.failed} failed" if progress.failed else ""
    done_line = f"{done}/{progress.total} asset partitions done{failed}{eta}"
    return f"[{_clock(elapsed)}] {done_line}; runs: {runs}"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:d}:{secs:02d}"


# ---------------------------------------------------------------- what happened


@dataclass
class RunReport:
    run_id: str
    status: str
    partitions: str
    assets: str
    errors: list[str]


def run_reports(instance: dg.DagsterInstance, backfill_id: str) -> list[RunReport]:
    from quant_assets.defs.automation import innermost_message

    reports = []
    for run in reversed(instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))):
        errors = []
        if run.status != dg.DagsterRunStatus.SUCCESS:
            for record in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
            ).records:
                event = record.event_log_entry.dagster_event
                errors.append(
                    f"{event.step_key}: {innermost_message(event.step_failure_data.error)}"
                )
        start = run.tags.get("dagster/asset_partition_range_start")
        end = run.tags.get("dagster/asset_partition_range_end")
        partitions = run.tags.get("dagster/partition") or (
            f"{start} .. {end}" if start and start != end else start or "-"
        )
        assets = ", ".join(sorted(k.to_user_string() for k in run.asset_selection or []))
        reports.append(RunReport(run.run_id, run.status.value, partitions, assets, errors))
    return reports


def check_outcomes(
    instance: dg.DagsterInstance, run_ids: Sequence[str], check_name: str
) -> dict[str, tuple[bool, str]]:
    """partition -> (passed, description) of one check's latest evaluation in these runs."""
    out: dict[str, tuple[bool, str]] = {}
    for run_id in run_ids:
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ).records
        for record in records:
            evaluation = record.event_log_entry.dagster_event.event_specific_data
            if evaluation.check_name != check_name:
                continue
            partition = evaluation.partition or record.event_log_entry.dagster_event.partition
            out[str(partition)] = (evaluation.passed, evaluation.description or "")
    return out
