"""The celery deployment on real servers: RabbitMQ, PostgreSQL (Dagster instance, MLflow backend
store, trading tables), an `mlflow server`, and two Celery workers each in its own working directory
and environment, as two machines. One `quant-assets materialize` of four partitions up to the
champion runs its steps on both workers; one worker is killed (SIGKILL of its process group, as a
machine dies) when it starts a training step, which then runs on the other; the stored data equal
those of the local (in-process) deployment and nothing is duplicated in the registry or the
trading tables."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.execution.backfill import BulkActionStatus

from quant_assets.definitions import build_defs
from quant_assets.defs.executor import executor_from_settings
from quant_assets.lib.deployment import DeploymentError, celery_config, worker_yaml
from quant_assets.lib.settings import SettingsError, load_settings
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.defs.conftest import FAST, LENIENT_GATES, register
from quant_assets_tests.defs.inprocess import execute_plan, plan_runs
from quant_assets_tests.distributed import BIN, celery_cluster, stop_group

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SPY", "AAPL"]
#: short history, one timeframe, two partitions a run: two runs per stage, one per worker
SETTINGS = {
    "QUANT_ASSETS_TIMEFRAMES": "1d",
    "QUANT_ASSETS_SYNTHETIC_START": "2025-01-01",
    "QUANT_ASSETS_SYNTHETIC_END": "2026-06-30T00:00:00",
    "QUANT_ASSETS_MAX_CONCURRENT_RUNS": "2",
    "QUANT_ASSETS_SYMBOLS_PER_RUN": "2",
}
CONFIG = {**FAST, **LENIENT_GATES}
SELECTION = "*champion"
KILL_AT = 'STEP_START - Started execution of step "challenger_model"'
#: columns of a challenger record that name a run or a time, not a result
RUN_IDENTITY = ["trained_at", "run_id", "model_uri"]


def test_celery_deployment_refuses_stores_other_machines_cannot_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUANT_ASSETS_DEPLOYMENT", "celery")
    with pytest.raises(DeploymentError, match="MLflow tracking server.*PostgreSQL URL"):
        executor_from_settings(load_settings())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("QUANT_ASSETS_TRADING_DB", "postgresql+psycopg2://u@db/trading")
    assert executor_from_settings(load_settings()).name == "celery"
    # workers start from exactly the executor's config
    settings = load_settings()
    assert yaml.safe_load(worker_yaml(settings)) == {
        "execution": {"config": celery_config(settings)}
    }
    assert celery_config(settings)["config_source"]["task_acks_late"] is True
    monkeypatch.setenv("QUANT_ASSETS_DEPLOYMENT", "local")
    assert executor_from_settings(load_settings()) is dg.in_process_executor
    monkeypatch.setenv("QUANT_ASSETS_DEPLOYMENT", "kubernetes")
    with pytest.raises(SettingsError, match="not one of local, celery"):
        load_settings()


def _local_reference(project_dir: Path, instance, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The same materialization on the local deployment (in-process runs, SQLite MLflow)."""
    for name, value in SETTINGS.items():
        monkeypatch.setenv(name, value)
    register(instance, *SYMBOLS)
    defs = build_defs(load_settings())
    outcomes = execute_plan(
        defs, plan_runs(defs, SELECTION, SYMBOLS, ["1d"]), instance, asset_config=CONFIG
    )
    assert all(o.status == "success" for o in outcomes), [
        (o.planned.label, o.error) for o in outcomes
    ]
    return project_dir / "artifacts"


def _kill_first_trainer(cluster, cli: subprocess.Popen, timeout: float = 900) -> str:
    """SIGKILL the worker that first starts a training step; return its name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and cli.poll() is None:
        for name, worker in cluster.workers.items():
            if KILL_AT in (cluster.root / name / "worker.log").read_text(errors="replace"):
                stop_group(worker, signal.SIGKILL)
                return name
        time.sleep(0.2)
    raise AssertionError(f"no worker started challenger_model; CLI exit {cli.poll()}")


def _steps_by_worker(
    instance: dg.DagsterInstance, run_ids: list[str]
) -> list[tuple[str, str, str]]:
    """(run id, step, worker) of every step a Celery worker started, from the run's engine events."""
    seen = []
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            data = record.dagster_event.engine_event_data
            worker = data.metadata.get("Celery worker") if data else None
            if worker is not None:
                seen.append((run_id, record.step_key, worker.value))
    return seen


@pytest.mark.postgres
@pytest.mark.slow
def test_steps_run_on_two_workers_survive_a_killed_worker_and_match_the_local_run(
    project_dir: Path, instance, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _local_reference(project_dir, instance, monkeypatch)

    with celery_cluster(project_dir / "cluster", **SETTINGS) as cluster:
        for name in ("worker_a", "worker_b"):
            cluster.start_worker(name)
        cluster.wait_workers_ready()
        cwd, env = cluster.machine("scheduler")
        added = subprocess.run(
            [str(BIN / "quant-assets"), "symbols", "add", *SYMBOLS],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert added.returncode == 0, added.stdout + added.stderr
        (cwd / "config.json").write_text(json.dumps(CONFIG))
        log = cwd / "materialize.log"
        with log.open("w") as sink:
            cli = subprocess.Popen(
                [str(BIN / "quant-assets"), "materialize", "--select", SELECTION,
                 "--config", str(cwd / "config.json")],
                cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            killed = _kill_first_trainer(cluster, cli)
            assert cli.wait(timeout=1200) == 0, log.read_text()[-5000:]
        finally:
            stop_group(cli, timeout=60)  # SIGTERM: the CLI cancels its backfill, stops its daemon
        survivor = next(n for n in cluster.workers if n != killed)

        with dg.DagsterInstance.from_config(str(cwd / "dagster_home")) as shared_instance:
            (backfill,) = shared_instance.get_backfills()
            assert backfill.status == BulkActionStatus.COMPLETED_SUCCESS
            records = shared_instance.get_run_records(
                dg.RunsFilter.for_backfill(backfill.backfill_id)
            )
            assert records and all(r.dagster_run.is_success for r in records)
            steps = _steps_by_worker(shared_instance, [r.dagster_run.run_id for r in records])
        workers = {worker.split("@")[0] for _, _, worker in steps}
        assert workers == {"worker_a", "worker_b"}, steps
        # the training step the killed worker had started ran again, to its end, on the other
        trainings = [(run, w.split("@")[0]) for run, step, w in steps if step == "challenger_model"]
        retried = {run for run, w in trainings if w == killed}
        assert retried and all((run, survivor) in trainings for run in retried), trainings

        # the same decisions as the local deployment (a partition or more promoted), and no
        # duplicate: one registry version per model, aliases as in the local registry, one
        # promotion_log row per decision (promote or reject)
        shared = Path(env["QUANT_ASSETS_ARTIFACTS"])
        decisions = {
            symbol: [
                pl.read_parquet(root / "champion" / symbol / "1d.parquet")["decision"][0]
                for root in (shared, local)
            ]
            for symbol in SYMBOLS
        }
        assert all(remote == here for remote, here in decisions.values()), decisions
        promoted = {s for s, (decision, _) in decisions.items() if decision == "promote"}
        assert promoted, decisions
        tracker, local_tracker = Tracker(env["MLFLOW_TRACKING_URI"]), Tracker(mlflow_uri)
        for symbol in SYMBOLS:
            name = f"direction.{symbol}.1d"
            versions = tracker.client.search_model_versions(f"name = '{name}'")
            assert [v.version for v in versions] == ["1"], (name, versions)
            assert tracker.aliases(name) == local_tracker.aliases(name), name
        engine = sa.create_engine(env["QUANT_ASSETS_TRADING_DB"], poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as connection:
                promotions = connection.execute(
                    sa.text("SELECT symbol, timeframe, version, action FROM promotion_log")
                ).all()
        finally:
            engine.dispose()
        assert Counter((p.symbol, p.timeframe) for p in promotions) == {
            (symbol, "1d"): 1 for symbol in SYMBOLS
        }, promotions
        assert {p.symbol for p in promotions if p.action == "promote"} == promoted, promotions

        # same data and models as the local deployment
        for symbol in SYMBOLS:
            for asset in ("features", "labels"):
                assert pl.read_parquet(shared / asset / symbol / "1d.parquet").equals(
                    pl.read_parquet(local / asset / symbol / "1d.parquet")
                ), (asset, symbol)
            remote, here = (
                pl.read_parquet(root / "challenger_model" / symbol / "1d.parquet").drop(
                    RUN_IDENTITY
                )
                for root in (shared, local)
            )
            assert remote.equals(here), (symbol, remote.to_dicts(), here.to_dicts())
