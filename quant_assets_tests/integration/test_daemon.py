"""The real `dagster-daemon` against a temporary instance: a scheduled `ohlcv` refresh is launched
by the scheduler and succeeds, without anyone starting it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.slow

DAEMON_TIMEOUT_SECONDS = 240


def test_daemon_launches_the_ohlcv_schedule_and_the_run_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # a run coordinator with the default queue; runs launch in their own processes as in production
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QUANT_ASSETS_", "DAGSTER_", "MLFLOW_"))
    }
    env.update(
        DAGSTER_HOME=str(home),
        QUANT_ASSETS_ARTIFACTS=str(tmp_path / "artifacts"),
        QUANT_ASSETS_WATCHLIST=str(tmp_path / "watchlist.txt"),
        QUANT_ASSETS_TIMEFRAMES="1d",
        QUANT_ASSETS_SYNTHETIC_START="2026-01-01",
        QUANT_ASSETS_OHLCV_REFRESH_CRON="* * * * *",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    (tmp_path / "watchlist.txt").write_text("BTCUSDT\n")
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: quant_assets.definitions\n"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("quant_assets__symbol", ["BTCUSDT"])
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "daemon.log").open("w"),
        start_new_session=True,
    )
    try:
        run = _wait_for_scheduled_run("ohlcv_refresh_1d")
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(timeout=60)
    log = (tmp_path / "daemon.log").read_text()
    assert run is not None, (
        f"no scheduled run succeeded within {DAEMON_TIMEOUT_SECONDS} s:\n{log[-3000:]}"
    )
    assert run.tags["dagster/partition"] == "BTCUSDT|1d"
    assert run.tags["quant_assets/trigger"] == "ohlcv_refresh_1d"
    assert (tmp_path / "artifacts" / "ohlcv" / "BTCUSDT" / "1d.parquet").exists()


def _wait_for_scheduled_run(schedule: str) -> dg.DagsterRun | None:
    deadline = time.monotonic() + DAEMON_TIMEOUT_SECONDS
    with dg.DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            runs = instance.get_runs(
                filters=dg.RunsFilter(tags={"dagster/schedule_name": schedule})
            )
            done = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
            if done:
                return done[0]
            failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
            if failed:
                raise AssertionError(f"scheduled run {failed[0].run_id} failed")
            time.sleep(2)
    return None
