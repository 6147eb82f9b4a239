"""The warm worker: a long-lived process that executes, one after another, the runs that
`WarmRunLauncher` hands it (defs/warm_launcher.py), with the code location and the libraries its
runs use loaded once, so a run does not pay a process start.

    python -m quant_assets.defs.warm_worker --state FILE [--idle-timeout SECONDS]
        [--preload mod1,mod2] [--parent-pid PID]

(started by the launcher, which writes one JSON line to its stdin: the code location's origin, the
instance reference and the worker's secret). It listens on 127.0.0.1 (port and pid in
the state file, mode 0600) for requests with that secret: `launch` queues a run, `terminate`
cancels a queued run or interrupts the running one (as Dagster's run processes are interrupted),
`status` tells whether it knows a run, `ping` whether its code is still the code on disk. Each run
executes through Dagster's own `_run_in_subprocess` (what a code server's run process calls), so
its events, logs, status and the "Started process for run (pid)" event are a normal run's.
SIGTERM or Ctrl-C: the running run is interrupted, queued runs are marked canceled, the process
exits. It exits on its own after `--idle-timeout` seconds without a run, and once the process that
started it (the daemon, `--parent-pid`) has exited and no run is left.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hmac
import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from quant_assets.defs.warm_launcher import locked
from quant_assets.lib.processes import pid_alive, read_message, send_message

log = logging.getLogger("quant_assets.warm_worker")
#: finished runs remembered for `status` (run monitoring asks a few seconds after the end)
REMEMBERED = 1000


def code_stamp(module: str) -> tuple[int, float]:
    """(number of files, latest modification time) of the Python package `module` belongs to: a
    change means the worker's loaded code is no longer the code on disk."""
    spec = importlib.util.find_spec(module.split(".")[0])
    roots = list(spec.submodule_search_locations or []) if spec else []
    if not roots and spec and spec.origin:
        return 1, os.stat(spec.origin).st_mtime
    files = [p for root in roots for p in Path(root).rglob("*.py")]
    return len(files), max((p.stat().st_mtime for p in files), default=0.0)


class Worker:
    def __init__(self, args: argparse.Namespace, handover: dict):
        from dagster._core.instance import DagsterInstance
        from dagster._core.origin import RepositoryPythonOrigin
        from dagster._serdes import deserialize_value
        from dagster._utils.hosted_user_process import recon_repository_from_origin

        self.state_path = Path(args.state)
        self.lock_path = self.state_path.with_suffix(".lock")
        self.token = handover["token"]
        self.idle_timeout = float(args.idle_timeout)
        self.parent_pid = args.parent_pid
        self.instance_ref_json = handover["instance_ref"]
        self.origin = deserialize_value(handover["origin"], RepositoryPythonOrigin)
        self.module = getattr(self.origin.code_pointer, "module", None) or "quant_assets"
        started = time.perf_counter()
        self.recon_repo = recon_repository_from_origin(self.origin)
        self.recon_repo.get_definition()
        for name in filter(None, args.preload.split(",")):
            importlib.import_module(name)
        self.stamp = code_stamp(self.module)
        self.instance = DagsterInstance.from_ref(deserialize_value(self.instance_ref_json))
        log.info("loaded the code location in %.1f s", time.perf_counter() - started)
        self.cond = threading.Condition()
        self.queue: collections.deque[str] = collections.deque()
        self.current: str | None = None
        self.current_stop = None
        self.finished: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.stopping = False
        self.last_activity = time.monotonic()

    # ------------------------------------------------------------------ requests

    def serve_requests(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(5.0)
                    reply = self.handle(read_message(conn) or {})
                except Exception as exc:  # a bad request must not stop the worker
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                with contextlib.suppress(OSError):  # the client gave up waiting
                    send_message(conn, reply)

    def handle(self, message: dict) -> dict:
        if not hmac.compare_digest(str(message.get("token", "")), self.token):
            return {"ok": False, "error": "bad token"}
        op, run_id = message.get("op"), message.get("run_id")
        with self.cond:
            stale = op in ("ping", "launch") and code_stamp(self.module) != self.stamp
            if op == "ping":
                return {
                    "ok": True,
                    "pid": os.getpid(),
                    "stale": stale,
                    "current": self.current,
                    "queued": len(self.queue),
                }
            if op == "launch":
                if stale or self.stopping:
                    why = "its code changed on disk" if stale else "it is stopping"
                    return {"ok": False, "stale": True, "error": f"worker not taking runs: {why}"}
                self.queue.append(str(run_id))
                self.cond.notify_all()
                return {"ok": True, "pid": os.getpid(), "queued": len(self.queue)}
            if op == "status":
                return {"ok": True, "state": self._state_of(run_id)}
            if op == "terminate":
                state = self._state_of(run_id)
                if state == "queued":
                    self.queue.remove(run_id)
                    self._finish(run_id, "canceled")
                    threading.Thread(target=self._cancel_queued, args=(run_id,)).start()
                    return {"ok": True, "state": state}
                if state == "running" and self.current_stop is not None:
                    # Dagster's termination thread interrupts the main thread (SIGINT), which
                    # the run turns into a canceled run
                    self.current_stop.set()
                    return {"ok": True, "state": state}
                return {"ok": False, "state": state}
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _state_of(self, run_id) -> str:
        if run_id == self.current:
            return "running"
        if run_id in self.queue:
            return "queued"
        if run_id in self.finished:
            return "finished"
        return "unknown"

    def _finish(self, run_id: str, how: str) -> None:
        self.finished[run_id] = how
        while len(self.finished) > REMEMBERED:
            self.finished.popitem(last=False)

    def _cancel_queued(self, run_id: str) -> None:
        from dagster._core.instance import DagsterInstance
        from dagster._serdes import deserialize_value

        with DagsterInstance.from_ref(deserialize_value(self.instance_ref_json)) as instance:
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_canceled(run, "canceled before the warm worker started it")

    # ------------------------------------------------------------------ runs

    def execute(self, run_id: str, stop_event) -> None:
        """Execute one run as a code server's run process does (`dagster._grpc.impl.
        _run_in_subprocess`: the same engine events, `core_execute_run`, Dagster's termination
        thread), on this process's instance instead of a new one per run (0.2 s each on SQLite)."""
        import dagster as dg
        from dagster._core.events import EngineEventData
        from dagster._grpc.impl import core_execute_run
        from dagster._utils import start_termination_thread
        from dagster._utils.interrupts import capture_interrupts

        instance = self.instance
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            log.warning("run %s: %s", run_id, "not found" if run is None else "already finished")
            return
        if run.status == dg.DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, "canceled before the warm worker started it")
            return
        recon_job = self.recon_repo.get_reconstructable_job(run.job_name)
        started = time.perf_counter()
        done = threading.Event()
        pid = os.getpid()
        with capture_interrupts():
            start_termination_thread(stop_event, done)
            instance.report_engine_event(
                f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid)
            )
            try:
                for _event in core_execute_run(recon_job, run, instance, inject_env_vars=False):
                    pass
            except Exception:
                pass  # core_execute_run has logged it to the run's event log
            finally:
                instance.report_engine_event(f"Process for run exited (pid: {pid}).", run)
                done.set()
                stop_event.set()
        # a run this worker no longer executes must not stay in progress: canceled while it was
        # being handed over (Dagster then ignores it as a duplicate), or ended without a status
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            if run.status == dg.DagsterRunStatus.CANCELING:
                instance.report_run_canceled(run, "canceled while the warm worker started it")
            else:
                instance.report_run_failed(
                    run, "the warm worker's execution ended without a status"
                )
        log.info("run %s (%s) in %.2f s", run_id, run.job_name, time.perf_counter() - started)

    def loop(self) -> None:
        import multiprocessing

        while True:
            with self.cond:
                why = ""
                while not self.queue and not self.stopping:
                    idle = time.monotonic() - self.last_activity
                    if idle >= self.idle_timeout:
                        why = f"idle for {self.idle_timeout:.0f} s"
                        break
                    if self.parent_pid and not pid_alive(self.parent_pid):
                        why = f"the process that started it (pid {self.parent_pid}) exited"
                        break
                    if code_stamp(self.module) != self.stamp:
                        why = "its code changed on disk (the next launch starts a new worker)"
                        break
                    self.cond.wait(timeout=min(self.idle_timeout - idle, 2.0))
                if self.stopping:
                    return
                if not self.queue:
                    if self._retire(why):
                        return
                    continue
                run_id = self.queue.popleft()
                self.current = run_id
                # Dagster's termination thread checks the event's type (multiprocessing's)
                self.current_stop = multiprocessing.Event()
                stop_event = self.current_stop
            try:
                self.execute(run_id, stop_event)
            except Exception:
                log.exception("run %s", run_id)
            finally:
                with self.cond:
                    self.current = None
                    self.current_stop = None
                    self._finish(run_id, "done")
                    self.last_activity = time.monotonic()

    def _retire(self, why: str) -> bool:
        """Leave the launcher's view (under its lock, so no launch is handed over meanwhile)."""
        with locked(self.lock_path), self.cond:
            if self.queue:
                return False
            self.stopping = True
            self.remove_state()
        log.info("exiting: %s", why)
        return True

    def remove_state(self) -> None:
        """Delete the state file if it is this process's (a newer worker may have replaced it)."""
        try:
            state = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        if state.get("pid") == os.getpid():
            self.state_path.unlink(missing_ok=True)

    def stop(self, *_args) -> None:
        """SIGTERM / Ctrl-C: interrupt the running run, cancel the queued ones, exit."""
        with self.cond:
            self.stopping = True
            queued = list(self.queue)
            self.queue.clear()
            if self.current_stop is not None:
                self.current_stop.set()
            self.cond.notify_all()
        for run_id in queued:
            self._finish(run_id, "canceled")
            self._cancel_queued(run_id)


def write_state(path: Path, state: dict) -> None:
    """Atomically, readable by this user only (it holds the secret)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(state, handle)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", required=True, help="state file (port, pid, secret)")
    parser.add_argument("--idle-timeout", type=float, default=10800.0)
    parser.add_argument("--preload", default="", help="modules imported before the first run")
    parser.add_argument(
        "--parent-pid", type=int, default=0, help="exit when this process (the launcher's) exits"
    )
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s warm worker {os.getpid()} %(levelname)s %(message)s")
    )
    log.addHandler(handler)  # this module's lines at INFO; libraries keep their own levels
    log.setLevel(logging.INFO)
    line = sys.stdin.readline()
    if not line.strip():
        parser.error("no hand-over on stdin: the worker is started by WarmRunLauncher")
    handover = json.loads(line)
    worker = Worker(args, handover)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    # While a run executes, Dagster's interrupt handling replaces these handlers and turns SIGTERM
    # into that run's interruption only; the signal's number still reaches the wakeup fd, where a
    # thread sees it and stops the worker too. (Blocking SIGTERM instead would be inherited by
    # every child process, Dagster's log tailers included, which could then not be terminated.)
    wake_read, wake_write = socket.socketpair()
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)

    def watch_signals() -> None:
        while data := wake_read.recv(64):
            if signal.SIGTERM in data:
                log.info("SIGTERM: stopping")
                worker.stop()

    threading.Thread(target=watch_signals, name="signals", daemon=True).start()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    threading.Thread(target=worker.serve_requests, args=(server,), daemon=True).start()
    write_state(
        worker.state_path,
        {
            "pid": os.getpid(),
            "port": server.getsockname()[1],
            "token": worker.token,
            "started": time.time(),
        },
    )
    log.info("ready on 127.0.0.1:%d", server.getsockname()[1])
    try:
        worker.loop()
    finally:
        with locked(worker.lock_path):
            worker.remove_state()
        server.close()
        worker.instance.dispose()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
