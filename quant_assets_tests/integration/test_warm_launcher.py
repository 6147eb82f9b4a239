"""Bar-close runs through the instance's run launcher (defs/warm_launcher.py) as the daemon launches
them: a real `python -m quant_assets.defs.daemon` dequeues runs created the way the scheduler creates
them; the runs of `serve_bar_close` execute in one warm worker process, which keeps its models and
histories between closes, recovers when killed or when the code changes, and answers run
monitoring."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.launcher.base import WorkerStatus

from quant_assets.defs import warm_worker
from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
from quant_assets.defs.warm_launcher import WARM_WORKER_TAG, read_state
from quant_assets.lib.processes import NATIVE_THREAD_VARIABLES, pid_alive
from quant_assets.lib.stores import TradingStore, sql_url_for
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.lib.bars_factory import make_bars
from quant_assets_tests.lib.serving_factory import register_champions, store_bars
from quant_assets_tests.scheduled_runs import code_location, stop_daemon, submit_run, wait_for_run

pytestmark = pytest.mark.slow

SYMBOLS = ["AAA", "BBB", "CCC"]
CONFIG = {"ops": {"serve_new_bars": {"config": {"timeframe": "1h"}}}}


def _step_metadata(instance: dg.DagsterInstance, run_id: str) -> dict:
    (event,) = [
        e
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT)
        if e.dagster_event is not None
    ]
    meta = event.dagster_event.event_specific_data.metadata
    return {k: v.value for k, v in meta.items()}


def _started_pid(instance: dg.DagsterInstance, run_id: str) -> int:
    """The pid of "Started process for run (pid: N)", the event every run worker reports."""
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if event.message.startswith("Started process for run"):
            return int(event.message.split("pid: ")[1].rstrip(")."))
    raise AssertionError(f"run {run_id} reported no process")


def test_bar_close_runs_execute_in_one_warm_worker(project_dir, mlflow_uri) -> None:
    from quant_assets.defs.backfills import instance_yaml

    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_yaml(2, home))
    artifacts = Path(os.environ["QUANT_ASSETS_ARTIFACTS"])
    store = TradingStore(sql_url_for("", artifacts))
    bars = {s: make_bars(600, "1h", seed=i) for i, s in enumerate(SYMBOLS)}
    register_champions(Tracker(mlflow_uri), store, SYMBOLS, bars["AAA"], "1h", "4h")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "quant_assets.defs.daemon"],
        env={**os.environ, "QUANT_ASSETS_DAEMON_LOG_LEVEL": "info"},
        stdout=open(project_dir / "daemon.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker_pid = None
    try:
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, SYMBOLS)
            launcher = instance.run_launcher
            assert type(launcher).__name__ == "WarmRunLauncher"
            with code_location(instance) as (workspace, location):

                def close(upto: int) -> tuple[dg.DagsterRun, dict]:
                    store_bars(artifacts, bars, upto, "1h", "4h")  # the bar closed, stored
                    run_id = submit_run(instance, workspace, location, "serve_bar_close", CONFIG)
                    run = wait_for_run(instance, run_id, timeout=300)
                    assert run.status == dg.DagsterRunStatus.SUCCESS, [
                        e.message for e in instance.all_logs(run_id)
                    ][-20:]
                    return run, _step_metadata(instance, run_id)

                # three closes: one worker, started by the daemon's launcher, serves them all
                runs = [close(500 + k) for k in range(3)]
                pids = {_started_pid(instance, run.run_id) for run, _ in runs}
                assert len(pids) == 1, pids
                worker_pid = pids.pop()
                assert worker_pid not in (os.getpid(), daemon.pid)
                # one native math thread in the worker: the run slots are the parallelism
                environ = dict(
                    item.split("=", 1)
                    for item in Path(f"/proc/{worker_pid}/environ").read_text().split("\0")
                    if "=" in item
                )
                for name in NATIVE_THREAD_VARIABLES:
                    assert environ.get(name) == os.environ.get(name, "1"), name
                assert {meta["process_pid"] for _, meta in runs} == {worker_pid}
                # the same bar-close server: models loaded and histories read once, then extended
                assert [meta["process_closes_served"] for _, meta in runs] == [1, 2, 3]
                assert {run.tags[WARM_WORKER_TAG].split(":")[1] for run, _ in runs} == {
                    str(worker_pid)
                }
                # one row per symbol per close, each the newly closed bar
                signals = store.read_signals(timeframe="1h")
                assert signals.height == 3 * len(SYMBOLS)
                per_bar = signals.group_by("timestamp").len().sort("timestamp")
                assert per_bar["len"].to_list() == [len(SYMBOLS)] * 3
                assert per_bar["timestamp"][-1] == bars["AAA"]["timestamp"][501]
                # every row names the run that wrote it
                run_of = {r.run_id for r, _ in runs}
                assert set(signals["dagster_run_id"].to_list()) == run_of

                # the worker answers run monitoring for its runs: RUNNING until it has written the
                # run's last engine event (after RUN_SUCCESS, which wait_for_run saw), then SUCCESS
                deadline = time.monotonic() + 30
                while True:
                    health = launcher.check_run_worker_health(runs[-1][0])
                    if health.status != WorkerStatus.RUNNING or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                assert health.status == WorkerStatus.SUCCESS, health
                assert health.run_worker_id == str(worker_pid)

                # a new close while the code changed on disk: a new worker takes it
                # (a later modification time, as an editor's save: the content is unchanged)
                module = Path(warm_worker.__file__)
                stamp = module.stat()
                os.utime(module, (stamp.st_atime, max(time.time(), stamp.st_mtime + 1)))
                fresh, meta = close(503)
                second_pid = _started_pid(instance, fresh.run_id)
                assert second_pid != worker_pid and meta["process_closes_served"] == 1
                deadline = time.monotonic() + 30  # the stale one exits once it has no run
                while pid_alive(worker_pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert not pid_alive(worker_pid)
                log = next((home / "warm_workers").glob("*.log")).read_text()
                assert f"warm worker {worker_pid} INFO exiting: its code changed on disk" in log

                # killed with SIGKILL: its run is reported failed by monitoring's health check,
                # and the next close starts a worker again
                os.kill(second_pid, signal.SIGKILL)
                time.sleep(0.5)
                health = launcher.check_run_worker_health(fresh)
                assert health.status == WorkerStatus.FAILED
                assert "gone" in health.msg
                again, meta = close(504)
                third_pid = _started_pid(instance, again.run_id)
                assert third_pid not in (worker_pid, second_pid)
                assert meta["process_closes_served"] == 1

                # two closes at once, the second canceled from the UI (the launcher's terminate):
                # canceled while queued in the worker or interrupted while running, it ends
                # CANCELED; or it had already finished and terminate says so
                store_bars(artifacts, bars, 505, "1h", "4h")
                first = submit_run(instance, workspace, location, "serve_bar_close", CONFIG)
                second = submit_run(instance, workspace, location, "serve_bar_close", CONFIG)
                deadline = time.monotonic() + 120
                while WARM_WORKER_TAG not in instance.get_run_by_id(second).tags:
                    assert time.monotonic() < deadline
                    time.sleep(0.02)
                terminated = launcher.terminate(second)
                assert wait_for_run(instance, first).status == dg.DagsterRunStatus.SUCCESS
                # promptly: not by monitoring's 60-s cancel timeout
                ended = wait_for_run(instance, second, timeout=20).status
                print(f"terminate -> {terminated}, run {ended}")
                assert ended == (
                    dg.DagsterRunStatus.CANCELED if terminated else dg.DagsterRunStatus.SUCCESS
                )
                # the worker goes on serving
                last, meta = close(506)
                assert _started_pid(instance, last.run_id) == third_pid
                assert meta["process_closes_served"] >= 3

                # SIGTERM (a supervisor, `stop_workers`): it leaves, its state file with it
                state_file = next((home / "warm_workers").glob("*.json"))
                os.kill(third_pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while pid_alive(third_pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert not pid_alive(third_pid) and not state_file.exists()
                fourth, _ = close(507)
                third_pid = _started_pid(instance, fourth.run_id)  # the worker the rest checks

                state_file = next((home / "warm_workers").glob("*.json"))
                assert read_state(state_file)["pid"] == third_pid
                assert oct(state_file.stat().st_mode & 0o777) == "0o600"  # it holds the secret
                # which is not on the worker's command line or in its environment, nor is the
                # instance reference (a storage password would be in it)
                token = read_state(state_file)["token"].encode()
                for part in ("cmdline", "environ"):
                    exposed = Path(f"/proc/{third_pid}/{part}").read_bytes()
                    assert token not in exposed and b"InstanceRef" not in exposed
    finally:
        print(f"daemon stopped in {stop_daemon(daemon, project_dir / 'daemon.log'):.1f} s")
    # the daemon that started it has exited: the worker leaves
    deadline = time.monotonic() + 30
    state = read_state(state_file)
    while state and pid_alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not state or not pid_alive(state["pid"])
    assert not state_file.exists()
    log = next((home / "warm_workers").glob("*.log")).read_text()
    assert f"warm worker {third_pid} INFO exiting: the process that started it" in log
    assert "bad token" not in log
    print(json.dumps({"worker_pids": [worker_pid, second_pid, third_pid]}))
