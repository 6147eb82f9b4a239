"""The product's execution path end to end: `quant-assets materialize` as a user runs it (a real
process, one asset backfill executed by Dagster's own daemon): Ctrl-C/SIGTERM that cancels,
concurrent invocations, and the same backfill launched the way the UI launches it (GraphQL on a
real dagster-webserver). Batched runs in parallel and rejected challengers that are successful
runs are checked on the demo's 12 partitions (integration/test_demo.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("quant-assets"))
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SPY", "AAPL"]


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QUANT_ASSETS_", "DAGSTER_", "MLFLOW_"))
    }
    env.update(
        QUANT_ASSETS_TIMEFRAMES="1d",
        QUANT_ASSETS_SYNTHETIC_START="2023-01-01",
        QUANT_ASSETS_SYNTHETIC_END="2025-06-30T00:00:00",
        QUANT_ASSETS_MAX_CONCURRENT_RUNS="2",
        QUANT_ASSETS_ARTIFACTS=str(workdir / "artifacts"),
        QUANT_ASSETS_WATCHLIST=str(workdir / "watchlist.txt"),
        DAGSTER_HOME=str(workdir / ".dagster_home"),
        **extra,
    )
    return env


def _cli(workdir: Path, env: dict[str, str], *args: str, timeout: float = 600):
    return subprocess.run(
        [CLI, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )


def _instance(workdir: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(workdir / ".dagster_home"))


def _backfill_runs(instance: dg.DagsterInstance) -> list:
    (backfill,) = instance.get_backfills()
    return backfill, instance.get_run_records(dg.RunsFilter.for_backfill(backfill.backfill_id))


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_sigterm_cancels_the_backfill_and_frees_every_slot(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _cli(tmp_path, env, "symbols", "add", *SYMBOLS[:2]).returncode == 0
    process = subprocess.Popen(
        [CLI, "materialize", "--select", "*"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with _instance(tmp_path) as instance:

        def training_started() -> bool:
            runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            return any("challenger_model" in str(r.asset_selection) for r in runs)

        _wait_for(training_started, 240, "a training run to start")
        # progress counts what a batched run has materialized before the run ends (the backfill's
        # own subset gains it later), never twice, and never goes back
        from quant_assets.defs.backfills import backfill_progress

        (backfill,) = instance.get_backfills()
        polls: list = []
        materialized: set = set()

        def partitions_of_a_running_run_counted() -> bool:
            polls.append(backfill_progress(instance, backfill.backfill_id, materialized))
            return polls[-1].running > 0

        _wait_for(partitions_of_a_running_run_counted, 120, "a running run's materializations")
        counts = [p.done + p.running for p in polls]
        assert counts == sorted(counts) and counts[-1] <= polls[-1].total, counts
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=180)
        assert process.returncode == 128 + signal.SIGTERM, out + err
        assert "cancelled by SIGTERM" in err
        backfill, records = _backfill_runs(instance)
        assert backfill.status.value == "CANCELED"
        statuses = {r.dagster_run.status for r in records}
        assert dg.DagsterRunStatus.CANCELED in statuses
        assert statuses <= {
            dg.DagsterRunStatus.SUCCESS,
            dg.DagsterRunStatus.CANCELED,
            dg.DagsterRunStatus.FAILURE,
        }
        storage = instance.event_log_storage
        for pool in storage.get_concurrency_keys():
            assert not storage.get_concurrency_info(pool).claimed_slots, pool


def test_two_invocations_at_once_on_a_fresh_instance_both_succeed(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _cli(tmp_path, env, "symbols", "add", *SYMBOLS).returncode == 0
    procs = [
        subprocess.Popen(
            [CLI, "materialize", "--select", "*labels", "--symbols", *pair],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pair in (SYMBOLS[:2], SYMBOLS[2:])
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
    for symbol in SYMBOLS:
        assert (tmp_path / "artifacts" / "labels" / symbol / "1d.parquet").exists()


def test_mlflow_store_is_created_once_by_concurrent_processes(tmp_path: Path) -> None:
    code = (
        "from quant_assets.cli import ensure_mlflow_store\n"
        "from quant_assets.lib.settings import load_settings\n"
        "ensure_mlflow_store(load_settings())\n"
    )
    env = _env(tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert (tmp_path / "artifacts" / "mlflow" / "mlflow.db").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""


def test_a_backfill_launched_from_quant_assets_dev_gives_the_cli_results(tmp_path: Path) -> None:
    """`quant-assets dev` runs the webserver and the execution daemon with every daemon the
    instance requires; the UI's "Materialize all" of ohlcv, features and labels (GraphQL
    launchPartitionBackfill on that webserver) is executed by that daemon and equals the CLI's
    results; Ctrl-C stops the webserver and the daemon."""
    from dagster._core.execution.backfill import BulkActionStatus
    from dagster._daemon.controller import all_daemons_healthy

    ui, cli = tmp_path / "ui", tmp_path / "cli"
    ui.mkdir()
    cli.mkdir()
    symbols = SYMBOLS[:2]
    env_ui, env_cli = _env(ui), _env(cli)
    for where, env in ((ui, env_ui), (cli, env_cli)):
        assert _cli(where, env, "symbols", "add", *symbols).returncode == 0
    assert _cli(cli, env_cli, "materialize", "--select", "*labels").returncode == 0

    port = _free_port()
    out = ui / "dev.out"
    with open(out, "w") as sink:
        dev = subprocess.Popen(
            [CLI, "dev", "--port", str(port)], cwd=ui, env=env_ui, stdout=sink, stderr=sink
        )
    try:

        def up() -> bool:
            try:
                return _graphql(port, "{ version }", {}).get("data") is not None
            except OSError:
                return False

        _wait_for(up, 120, "dagster-webserver to answer")
        instance = _instance(ui)
        required = set(instance.get_required_daemon_types())
        assert {"SCHEDULER", "SENSOR", "ASSET", "BACKFILL", "QUEUED_RUN_COORDINATOR"} <= required
        _wait_for(lambda: all_daemons_healthy(instance), 120, f"heartbeats of {sorted(required)}")
        params = {
            "assetSelection": [{"path": [name]} for name in ("ohlcv", "features", "labels")],
            "allPartitions": True,
        }
        answer = _graphql(port, LAUNCH_BACKFILL, {"params": params})
        launched = answer["data"]["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", answer

        def done() -> bool:
            return (
                instance.get_backfill(launched["backfillId"]).status != BulkActionStatus.REQUESTED
            )

        _wait_for(done, 300, "the UI's backfill to finish")
        assert (
            instance.get_backfill(launched["backfillId"]).status
            == BulkActionStatus.COMPLETED_SUCCESS
        )
        runs = instance.get_run_records(dg.RunsFilter.for_backfill(launched["backfillId"]))
        assert runs and all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        # planned as the CLI's: two stages (ohlcv; features with labels), each split over the run
        # queue's 2 slots
        stages = sorted(sorted(k.path[-1] for k in r.dagster_run.asset_selection) for r in runs)
        assert stages == [["features", "labels"]] * 2 + [["ohlcv"]] * 2, stages
        dev.send_signal(signal.SIGINT)  # Ctrl-C
        assert dev.wait(timeout=90) == 0, out.read_text()
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
    text = out.read_text()
    assert "quant_assets.defs.daemon --all" in text, text
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", text)]
    assert len(pids) == 2, text
    for pid in pids:  # the webserver and the daemon stopped with it (and were reaped)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    for symbol in symbols:
        for asset in ("ohlcv", "features", "labels"):
            ours = pl.read_parquet(ui / "artifacts" / asset / symbol / "1d.parquet")
            theirs = pl.read_parquet(cli / "artifacts" / asset / symbol / "1d.parquet")
            assert ours.equals(theirs), (asset, symbol)
