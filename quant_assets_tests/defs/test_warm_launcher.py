"""The instance's run launcher without a worker: configuration, which runs it keeps for the warm
worker, and what it answers for runs whose worker is gone (the worker itself is exercised with a
real daemon in integration/test_warm_launcher.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
from dagster._core.launcher.base import WorkerStatus
from dagster._core.test_utils import create_run_for_test

from quant_assets.defs.backfills import instance_yaml
from quant_assets.defs.warm_launcher import WARM_WORKER_TAG, WarmRunLauncher
from quant_assets.lib.processes import pid_alive


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_embedded_instance_launches_serving_runs_warm(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(instance_yaml(2, tmp_path))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, WarmRunLauncher)
        assert launcher.supports_check_run_worker_health
        assert launcher.workers_dir == tmp_path / "warm_workers"
        # serving in a worker of its own, every other run in one of a worker per run slot
        assert launcher._jobs == {"serve_bar_close"} and launcher._pipeline_workers == 2

        # a run of another job is Dagster's DefaultRunLauncher's: monitoring leaves it alone
        other = create_run_for_test(instance, job_name="ohlcv_refresh")
        assert not launcher.is_warm(other)  # no code origin, not a serving job
        assert launcher.check_run_worker_health(other).status == WorkerStatus.RUNNING

        # a serving run whose worker died: monitoring fails it, terminate cancels it
        pid = _dead_pid()
        assert not pid_alive(pid)
        orphan = create_run_for_test(
            instance,
            job_name="serve_bar_close",
            status=dg.DagsterRunStatus.STARTED,
            tags={WARM_WORKER_TAG: f"0123456789abcdef:{pid}:1"},
        )
        health = launcher.check_run_worker_health(orphan)
        assert health.status == WorkerStatus.FAILED
        assert f"pid {pid}" in health.msg and "gone" in health.msg
        assert launcher.terminate(orphan.run_id)
        assert instance.get_run_by_id(orphan.run_id).status == dg.DagsterRunStatus.CANCELED
        assert not launcher.terminate(orphan.run_id)  # already finished


def test_launcher_settings_come_from_the_instance_config(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text(
        "run_launcher:\n"
        "  module: quant_assets.defs.warm_launcher\n"
        "  class: WarmRunLauncher\n"
        "  config:\n"
        "    jobs: [serve_bar_close, agent_preds_retention]\n"
        "    idle_timeout_seconds: 60\n"
        "    preload_modules: [numpy]\n"
        "telemetry:\n  enabled: false\n"
    )
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        launcher = instance.run_launcher
        assert launcher._jobs == {"serve_bar_close", "agent_preds_retention"}
        assert launcher._idle_timeout == 60 and launcher._preload == ["numpy"]
        assert launcher._pipeline_workers == 0  # the default: other runs as DefaultRunLauncher
        other = create_run_for_test(instance, job_name="ohlcv_refresh")
        assert launcher.lane(other) is None
