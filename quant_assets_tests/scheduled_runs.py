"""Runs created and submitted the way the scheduler daemon does (`_create_scheduler_run`): a run
of a job of the code location, with its remote and code origins, handed to the instance's run
coordinator; used by the warm-launcher tests and the serving benchmark."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import dagster as dg

LOCATION = "quant_assets"


@contextlib.contextmanager
def code_location(instance: dg.DagsterInstance, working_directory: str | None = None) -> Iterator:
    """The `quant_assets.definitions` code location, served by a code server (as the daemon's)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import ModuleTarget

    target = ModuleTarget(
        module_name="quant_assets.definitions",
        attribute="defs",
        working_directory=working_directory or os.getcwd(),
        location_name=LOCATION,
    )
    with WorkspaceProcessContext(instance, target) as context:
        workspace = context.create_request_context()
        yield workspace, workspace.get_code_location(LOCATION)


def submit_run(
    instance: dg.DagsterInstance,
    workspace,
    location,
    job_name: str,
    run_config: dict,
    tags: dict[str, str] | None = None,
) -> str:
    """Create a run of `job_name` and submit it to the run coordinator; its id."""
    repo = next(iter(location.get_repositories().values()))
    remote_job = repo.get_full_job(job_name)
    plan = location.get_execution_plan(
        remote_job, run_config, step_keys_to_execute=None, known_state=None
    )
    run = instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        resolved_op_selection=None,
        step_keys_to_execute=None,
        op_selection=None,
        status=dg.DagsterRunStatus.NOT_STARTED,
        root_run_id=None,
        parent_run_id=None,
        tags={**remote_job.run_tags, **(tags or {})},
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repo.asset_graph,
    )
    instance.submit_run(run.run_id, workspace)
    return run.run_id


def wait_for_run(instance: dg.DagsterInstance, run_id: str, timeout: float = 300.0, poll=0.05):
    """The run once it has finished (or raise TimeoutError with its status)."""
    deadline = time.monotonic() + timeout
    while True:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {run.status if run else 'missing'}")
        time.sleep(poll)


def stop_daemon(daemon, log_path, timeout: float = 90.0) -> float:
    """SIGTERM a `quant_assets.defs.daemon` process and wait for it; seconds it took. When it does
    not exit in time, its threads' stacks (SIGUSR1, faulthandler) and the tail of its log are in the
    error, and its process group is killed."""
    import signal
    import subprocess
    from pathlib import Path

    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        daemon.send_signal(signal.SIGUSR1)
        time.sleep(2.0)
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()
        tail = Path(log_path).read_text(errors="replace")[-12000:]
        raise AssertionError(f"the daemon did not stop within {timeout:.0f} s:\n{tail}") from None
    return time.monotonic() - started
