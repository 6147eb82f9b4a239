"""Training against a real `mlflow server` backed by PostgreSQL, over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from quant_assets.definitions import build_defs
from quant_assets.lib.settings import load_settings
from quant_assets.lib.storage import read_parquet
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.defs.conftest import register
from quant_assets_tests.defs.inprocess import execute_plan, plan_runs
from quant_assets_tests.services import temporary_postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(
                f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"mlflow server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def test_training_logs_to_an_mlflow_server_on_postgres(
    project_dir: Path, instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    with temporary_postgres_database("qa_mlflow") as db_url:
        port = _free_port()
        log = project_dir / "mlflow_server.log"
        mlflow_bin = str(Path(sys.executable).parent / "mlflow")
        with log.open("w") as sink:
            server = subprocess.Popen(
                [
                    mlflow_bin,
                    "server",
                    "--backend-store-uri",
                    db_url,
                    "--artifacts-destination",
                    str(project_dir / "mlartifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MLFLOW_TRACKING_URI": ""},
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(url, server, log)
            monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
            monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2025-01-01")
            register(instance, "BTCUSDT")
            defs = build_defs(load_settings())
            plan = plan_runs(defs, "*challenger_model", ["BTCUSDT"], ["1d"])
            outcomes = execute_plan(
                defs,
                plan,
                instance,
                asset_config={"challenger_model": {"params": {"n_estimators": 30}}},
            )
            assert all(o.status == "success" for o in outcomes), [
                (o.planned.label, o.error) for o in outcomes
            ]
            record = read_parquet(
                project_dir / "artifacts" / "challenger_model" / "BTCUSDT" / "1d.parquet"
            ).row(0, named=True)
            assert record["status"] == "trained"
            tracker = Tracker(url)
            assert tracker.aliases("direction.BTCUSDT.1d") == {"challenger": record["version"]}
            run = tracker.client.get_run(record["run_id"])
            assert run.data.tags["dagster.partition_key"] == "BTCUSDT|1d"
            assert "model_card.md" in {
                a.path for a in tracker.client.list_artifacts(record["run_id"])
            }
            assert (project_dir / "mlartifacts").exists()  # artifacts went through the server
            assert url in tracker.run_url(record["run_id"])
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
