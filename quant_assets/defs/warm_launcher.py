"""The instance's run launcher: runs execute in warm worker processes that have the code location
and the heavy libraries loaded already, instead of a fresh process per run spawned by the code
server (Dagster's DefaultRunLauncher, still used with `pipeline_workers: 0` for other runs).

A new run process pays about 11 s under load before it computes anything (interpreter,
definitions, MLflow, LightGBM with SciPy and scikit-learn, exit; docs/field-notes.md): more than
the 5 s a bar-close run may take, and most of the pipeline's overhead over calling the library. A
warm worker (`quant_assets.defs.warm_worker`) is a long-lived process that executes the runs it is
handed one after another with Dagster's run machinery (`core_execute_run`, the engine events and
termination of a code server's run process): each run is an ordinary Dagster run (queued by the
coordinator, launched here, its events, logs, status and cancellation in the instance and the UI).
Two lanes: the serving jobs (`jobs`) in a worker of their own, which also keeps the bar-close
server's models and histories between closes and never waits behind a training run; every other
run in one of `pipeline_workers` workers (one per run slot; an idle one is chosen, else one is
started, else the least loaded).

Workers are started on the first launch that needs them (the other pipeline workers start
loading at the same time, `_start_ahead`); each exits after `idle_timeout_seconds`
without a run, when the process that launched it (the daemon) has exited, or, when the code
location's files change, after its last run (the next launch starts a fresh one). Its key, pid and
port are tagged on each run it executes (`quant_assets/warm_worker`); run monitoring asks it about
its runs (`check_run_worker_health`), and a run whose worker is gone is marked failed. Logs:
`<instance root>/warm_workers/<key>.log`.

    run_launcher:
      module: quant_assets.defs.warm_launcher
      class: WarmRunLauncher
      config: {jobs: [serve_bar_close], idle_timeout_seconds: 10800, pipeline_workers: 2}
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import Array, Field
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClassData, serialize_value

from quant_assets.lib.processes import pid_alive, read_message, run_process_env, send_message

#: run tag: the warm worker that executes the run (`<key>:<pid>:<port>`)
WARM_WORKER_TAG = "quant_assets/warm_worker"
#: modules a worker imports before it reports ready, so its first run finds them loaded
DEFAULT_PRELOAD = ("lightgbm", "quant_assets.lib.bar_close", "quant_assets.lib.serving_cache")
#: what a pipeline worker imports before it reports ready (what training and evaluation steps use)
#: (charts are drawn with Pillow, lib/raster.py; matplotlib only for the daily report, once a run)
PIPELINE_PRELOAD = ("lightgbm", "sklearn.isotonic", "mlflow", "PIL.ImageDraw", "PIL.PngImagePlugin")
#: seconds one request to a worker may take (they are answered without waiting for a run)
REQUEST_TIMEOUT_SECONDS = 10.0


class WarmWorkerError(RuntimeError):
    """A warm worker could not be reached or started."""


def request(state: Mapping[str, Any], message: dict, timeout: float = REQUEST_TIMEOUT_SECONDS):
    """One request to the worker described by `state` (its state file); its JSON reply."""
    with socket.create_connection(("127.0.0.1", int(state["port"])), timeout=timeout) as conn:
        send_message(conn, {**message, "token": state["token"]})
        reply = read_message(conn)
    if reply is None:
        raise WarmWorkerError(f"warm worker pid {state.get('pid')} closed the connection")
    return reply


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created), across processes and threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def worker_key(repository_origin) -> str:
    """The worker's name: a hash of the code location it loads (interpreter, module, directory)."""
    return hashlib.sha256(serialize_value(repository_origin).encode()).hexdigest()[:16]


class WarmRunLauncher(DefaultRunLauncher):
    """Runs of `jobs` to a warm worker process; the rest as DefaultRunLauncher."""

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        jobs: list[str] | None = None,
        idle_timeout_seconds: int = 10800,
        start_timeout_seconds: int = 180,
        preload_modules: list[str] | None = None,
        pipeline_workers: int = 0,
        pipeline_preload_modules: list[str] | None = None,
    ):
        super().__init__(inst_data=inst_data)
        self._jobs = frozenset(jobs if jobs is not None else ["serve_bar_close"])
        self._idle_timeout = int(idle_timeout_seconds)
        self._start_timeout = float(start_timeout_seconds)
        self._preload = list(preload_modules if preload_modules is not None else DEFAULT_PRELOAD)
        self._pipeline_workers = max(0, int(pipeline_workers))
        self._pipeline_preload = list(
            pipeline_preload_modules if pipeline_preload_modules is not None else PIPELINE_PRELOAD
        )
        #: pipeline workers started ahead of their first run and still loading, by key
        self._starting: dict[str, subprocess.Popen] = {}

    @classmethod
    def config_type(cls):
        return {
            "jobs": Field(
                Array(str),
                is_required=False,
                default_value=["serve_bar_close"],
                description="Jobs whose runs the warm worker executes.",
            ),
            "idle_timeout_seconds": Field(
                int,
                is_required=False,
                default_value=10800,
                description="A worker without a run for this long exits.",
            ),
            "start_timeout_seconds": Field(
                int,
                is_required=False,
                default_value=180,
                description="How long a launch waits for a new worker to load the code.",
            ),
            "preload_modules": Field(
                Array(str),
                is_required=False,
                default_value=list(DEFAULT_PRELOAD),
                description="Modules a new worker imports before it takes its first run.",
            ),
            "pipeline_workers": Field(
                int,
                is_required=False,
                default_value=0,
                description="Warm workers for the runs of every other job (the pipeline's "
                "backfills); 0: a fresh process per run, as DefaultRunLauncher.",
            ),
            "pipeline_preload_modules": Field(
                Array(str),
                is_required=False,
                default_value=list(PIPELINE_PRELOAD),
                description="Modules a new pipeline worker imports before its first run.",
            ),
        }

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    # ------------------------------------------------------------------ where workers live

    @property
    def workers_dir(self) -> Path:
        return Path(self._instance.root_directory) / "warm_workers"

    def _paths(self, key: str) -> tuple[Path, Path, Path]:
        d = self.workers_dir
        return d / f"{key}.json", d / f"{key}.lock", d / f"{key}.log"

    def lane(self, run: DagsterRun) -> str | None:
        """ "serving" (the serving jobs: one worker of their own, never behind a training run),
        "pipeline" (every other run, when pipeline workers are configured), or None (Dagster's
        DefaultRunLauncher)."""
        if run.job_code_origin is None:
            return None
        if run.job_name in self._jobs:
            return "serving"
        return "pipeline" if self._pipeline_workers else None

    def is_warm(self, run: DagsterRun) -> bool:
        return self.lane(run) is not None

    # ------------------------------------------------------------------ launching

    def _live_state(self, key: str) -> tuple[dict | None, int]:
        """The state of the worker that takes runs and its load (running + queued runs), or None.
        A worker that is alive but does not answer is stopped; a stale one (its code changed)
        leaves on its own after its last run."""
        state_path, _, _ = self._paths(key)
        state = read_state(state_path)
        if not state or "port" not in state or not pid_alive(int(state["pid"])):
            return None, 0
        try:
            reply = request(state, {"op": "ping"}, timeout=3.0)
        except (OSError, WarmWorkerError, ValueError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(state["pid"]), signal.SIGTERM)
            return None, 0
        if not reply.get("ok") or reply.get("stale"):
            return None, 0
        return state, int(reply.get("current") is not None) + int(reply.get("queued", 0))

    def _pick(self, keys: list[str]) -> tuple[str, dict | None]:
        """An idle live worker, else a slot without one (to start), else the least loaded."""
        free, best = None, None
        for key in keys:
            state, load = self._live_state(key)
            if state is None:
                free = free or key
            elif load == 0:
                return key, state
            elif best is None or load < best[2]:
                best = (key, state, load)
        if free is not None or best is None:
            return free or keys[0], None
        return best[0], best[1]

    def _start_worker(self, key: str, repository_origin, preload: list[str]) -> dict:
        """Start the worker `key` (or take the one started ahead for it) and wait until it is
        ready; its state."""
        process = self._starting.pop(key, None)
        if process is None or process.poll() is not None:
            process = self._spawn(key, repository_origin, preload)
        return self._await_ready(key, process)

    def _start_ahead(self, keys: list[str], repository_origin, preload: list[str]) -> None:
        """Start the pipeline workers `keys` that have no live or loading process, without
        waiting: they load the code location and libraries (about 5 s each here) while the
        first run's worker does, instead of one after the other as runs arrive (the second slot
        of every invocation stood idle that long). A worker never handed a run leaves on its own
        when the daemon exits (`--parent-pid`) or after `idle_timeout_seconds`."""
        for key in keys:
            loading = self._starting.get(key)
            if loading is not None and loading.poll() is None:
                continue
            with locked(self._paths(key)[1]):
                if self._live_state(key)[0] is None:
                    self._starting[key] = self._spawn(key, repository_origin, preload)

    def _spawn(self, key: str, repository_origin, preload: list[str]) -> subprocess.Popen:
        state_path, _, log_path = self._paths(key)
        state_path.unlink(missing_ok=True)  # the old worker's, if any: it no longer takes runs
        token = secrets.token_hex(16)
        executable = repository_origin.executable_path or sys.executable
        pointer = repository_origin.code_pointer
        cwd = getattr(pointer, "working_directory", None) or os.getcwd()
        cmd = [
            executable,
            "-m",
            "quant_assets.defs.warm_worker",
            "--state",
            str(state_path),
            "--idle-timeout",
            str(self._idle_timeout),
            "--preload",
            ",".join(preload),
            "--parent-pid",
            str(os.getpid()),
        ]
        # the instance reference can hold a storage password and the secret is the worker's own:
        # both go through its stdin, never its command line or environment
        handover = {
            "token": token,
            "origin": serialize_value(repository_origin),
            "instance_ref": serialize_value(self._instance.get_ref()),
        }
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=run_process_env(),  # one native math thread: the run slots are the parallelism
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # not killed with the daemon's process group
            )
        with contextlib.suppress(BrokenPipeError):  # it died at once: its log says why below
            process.stdin.write((json.dumps(handover) + "\n").encode())
            process.stdin.close()
        return process

    def _await_ready(self, key: str, process: subprocess.Popen) -> dict:
        state_path, _, log_path = self._paths(key)
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            state = read_state(state_path)
            if state and state.get("pid") == process.pid and "port" in state:
                return state
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise WarmWorkerError(
                    f"the warm worker exited with code {process.returncode} while loading "
                    f"the code location (log {log_path}):\n{tail}"
                )
            time.sleep(0.1)
        process.terminate()
        raise WarmWorkerError(
            f"the warm worker did not load the code location within {self._start_timeout:.0f} s "
            f"(log {log_path})"
        )

    def _hand_over(self, run: DagsterRun) -> dict:
        origin = run.job_code_origin.repository_origin  # type: ignore[union-attr]
        base = worker_key(origin)
        if self.lane(run) == "serving":
            keys, preload = [base], self._preload
        else:
            keys = [f"{base}-p{i}" for i in range(self._pipeline_workers)]
            preload = self._pipeline_preload
        for attempt in range(2):
            with locked(self.workers_dir / f"{keys[0]}.lane"):
                key, state = self._pick(keys)
                if state is None and len(keys) > 1:  # the others load meanwhile
                    self._start_ahead([k for k in keys if k != key], origin, preload)
                with locked(self._paths(key)[1]):  # the worker retires under this lock
                    if state is None:
                        state = self._start_worker(key, origin, preload)
                    address = f"{key}:{state['pid']}:{state['port']}"
                    self._instance.add_run_tags(run.run_id, {WARM_WORKER_TAG: address})
                    try:
                        reply = request(state, {"op": "launch", "run_id": run.run_id})
                    except (OSError, WarmWorkerError, ValueError) as exc:
                        # it died between the ping and the launch: start another
                        reply = {
                            "ok": False,
                            "stale": True,
                            "error": f"{type(exc).__name__}: {exc}",
                        }
            if reply.get("ok"):
                return state
            if attempt == 1 or not reply.get("stale"):
                raise DagsterLaunchFailedError(
                    f"warm worker pid {state['pid']} refused run {run.run_id}: {reply.get('error')}"
                )
        raise AssertionError("unreachable")

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        if not self.is_warm(run):
            super().launch_run(context)
            return
        try:
            self._hand_over(run)
        except WarmWorkerError as exc:
            raise DagsterLaunchFailedError(str(exc)) from exc
        self._run_ids.add(run.run_id)

    # ------------------------------------------------------------------ the worker of a run

    def _worker_of(self, run: DagsterRun) -> tuple[dict | None, str]:
        """The live state of the worker tagged on `run`, or None and why not."""
        tag = run.tags.get(WARM_WORKER_TAG)
        if not tag:
            return None, "the run has no warm worker tag"
        key, pid, _port = tag.split(":")
        state_path, _, _ = self._paths(key)
        state = read_state(state_path)
        if not pid_alive(int(pid)):
            return None, f"its warm worker (pid {pid}) is gone"
        if not state or int(state.get("pid", -1)) != int(pid):
            return None, f"its warm worker (pid {pid}) no longer takes runs"
        return state, ""

    def terminate(self, run_id: str) -> bool:
        if not self.has_instance:
            return False
        run = self._instance.get_run_by_id(run_id)
        if not run or run.is_finished:
            return False
        if WARM_WORKER_TAG not in run.tags:
            return super().terminate(run_id)
        self._instance.report_run_canceling(run)
        state, why = self._worker_of(run)
        reply: dict = {}
        if state is not None:
            try:
                reply = request(state, {"op": "terminate", "run_id": run_id})
            except (OSError, WarmWorkerError, ValueError) as exc:
                why = f"its warm worker did not answer ({exc})"
        if reply.get("ok"):
            return True
        if state is None or reply.get("state") in ("unknown", "finished"):
            # nothing executes it any more: canceled here, not left CANCELING
            self._instance.report_run_canceled(run, f"canceled: {why or reply.get('state')}")
            return True
        return False

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if WARM_WORKER_TAG not in run.tags:
            # launched by the code server, whose process DefaultRunLauncher does not watch;
            # the CLI's reaper marks those failed when their pid is gone (defs/backfills.py)
            return CheckRunHealthResult(WorkerStatus.RUNNING, "launched by the code server")
        state, why = self._worker_of(run)
        if state is None:
            return CheckRunHealthResult(WorkerStatus.FAILED, why)
        try:
            reply = request(state, {"op": "status", "run_id": run.run_id}, timeout=5.0)
        except (OSError, WarmWorkerError, ValueError) as exc:
            return CheckRunHealthResult(
                WorkerStatus.UNKNOWN, f"warm worker pid {state['pid']}: {exc}", transient=True
            )
        status = reply.get("state")
        if status in ("queued", "running"):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(state["pid"]))
        if status == "finished":
            return CheckRunHealthResult(WorkerStatus.SUCCESS, run_worker_id=str(state["pid"]))
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"warm worker pid {state['pid']} does not know this run"
        )

    def get_run_worker_debug_info(self, run: DagsterRun, include_container_logs=True):
        tag = run.tags.get(WARM_WORKER_TAG)
        if not tag:
            return None
        _, _, log_path = self._paths(tag.split(":")[0])
        return f"warm worker {tag}, log {log_path}"

    def stop_workers(self, timeout: float = 30.0) -> list[int]:
        """Stop every warm worker of this instance (SIGTERM; a run in progress is interrupted).
        Returns their pids."""
        stopped = []
        for process in self._starting.values():  # started ahead, still loading: no state yet
            if process.poll() is None:
                process.terminate()
                stopped.append(process.pid)
        self._starting.clear()
        if not self.workers_dir.exists():
            return stopped
        for path in self.workers_dir.glob("*.json"):
            state = read_state(path)
            if state and pid_alive(int(state["pid"])):
                os.kill(int(state["pid"]), signal.SIGTERM)
                stopped.append(int(state["pid"]))
        deadline = time.monotonic() + timeout
        while any(pid_alive(p) for p in stopped) and time.monotonic() < deadline:
            time.sleep(0.1)
        return stopped
