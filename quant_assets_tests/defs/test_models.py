"""Training through real Dagster runs, recorded in a real MLflow tracking store."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dagster as dg
import mlflow
import polars as pl
import pytest

from quant_assets.definitions import build_defs
from quant_assets.lib.settings import load_settings
from quant_assets.lib.storage import read_parquet
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.defs.conftest import register
from quant_assets_tests.defs.inprocess import execute_plan, plan_runs

pytestmark = pytest.mark.slow

FAST_MODEL = {"challenger_model": {"params": {"n_estimators": 40}}}


@pytest.fixture
def short_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """About 16 months of bars: enough rows for 5 folds and a hold-out on 1h, quick to train."""
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2025-07-01")


def _build(
    instance, selection: str, symbols: list[str], timeframes=("1h", "4h", "1d"), config=FAST_MODEL
):
    defs = build_defs(load_settings())
    plan = plan_runs(defs, selection, symbols, list(timeframes))
    outcomes = execute_plan(defs, plan, instance, asset_config=config)
    failed = [(o.planned.label, o.error) for o in outcomes if o.status != "success"]
    assert not failed, failed
    return outcomes


def _record(project_dir: Path, symbol: str, timeframe: str) -> dict:
    return read_parquet(
        project_dir / "artifacts" / "challenger_model" / symbol / f"{timeframe}.parquet"
    ).row(0, named=True)


def test_challenger_is_trained_logged_and_registered(
    instance, project_dir: Path, mlflow_uri: str, short_history
) -> None:
    register(instance, "BTCUSDT")
    _build(instance, "*challenger_model", ["BTCUSDT"])
    record = _record(project_dir, "BTCUSDT", "1h")
    assert record["status"] == "trained" and record["model_name"] == "direction.BTCUSDT.1h"
    client = Tracker(mlflow_uri).client
    assert Tracker(mlflow_uri).aliases("direction.BTCUSDT.1h") == {"challenger": record["version"]}
    run = client.get_run(record["run_id"])
    assert run.data.tags["dagster.partition_key"] == "BTCUSDT|1h"
    assert run.data.tags["dagster.asset_key"] == "challenger_model"
    assert {"git_commit", "code_version", "data_version", "dagster.run_id"} <= set(run.data.tags)
    assert run.data.params["model.model_type"] == "lightgbm"
    assert run.data.params["model.params.n_estimators"] == "40"
    assert run.data.params["split.scheme"] == "purged_kfold"
    assert 0.45 < run.data.metrics["oof_roc_auc"] < 0.75
    folds = client.get_metric_history(record["run_id"], "fold_roc_auc")
    assert sorted(m.step for m in folds) == [0, 1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {
        "calibration_curve.png",
        "model_card.md",
        "feature_importances.csv",
        "folds.csv",
        "calibrator.json",
        "feature_list.json",
    } <= artifacts
    card = Path(
        mlflow.artifacts.download_artifacts(run_id=record["run_id"], artifact_path="model_card.md")
    ).read_text()
    assert "direction.BTCUSDT.1h" in card and "Known risks" in card
    booster = mlflow.lightgbm.load_model(record["model_uri"])
    features = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=record["run_id"], artifact_path="feature_list.json"
            )
        ).read_text()
    )
    assert booster.num_feature() == len(features["features"])

    mats = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("challenger_model"), asset_partitions=["BTCUSDT|1h"]
        ),
        limit=1,
    ).records
    meta = mats[0].asset_materialization.metadata
    assert meta["mlflow_run"].value.startswith("http")
    assert meta["calibration_curve"].value.startswith("![calibration curve](data:image/png;base64,")
    splits = read_parquet(
        project_dir / "artifacts" / "walk_forward_splits" / "BTCUSDT" / "1h.parquet"
    )
    assert splits["fold"].to_list() == [0, 1, 2, 3, 4, -1]


def test_retraining_on_unchanged_data_reproduces_metrics(
    instance, project_dir, mlflow_uri, short_history
) -> None:
    register(instance, "ETHUSDT")
    _build(instance, "*challenger_model", ["ETHUSDT"], timeframes=("4h", "1d"))
    first = _record(project_dir, "ETHUSDT", "4h")
    _build(instance, "challenger_model", ["ETHUSDT"], timeframes=("4h",))
    second = _record(project_dir, "ETHUSDT", "4h")
    # same data version, configuration and code version: the registered version is reused (a
    # new one would only inflate the trial count behind the next promotion decision)
    assert second["mode"] == "reused"
    assert second["version"] == first["version"] and second["run_id"] == first["run_id"]
    client = Tracker(mlflow_uri).client
    assert len(client.search_model_versions("name='direction.ETHUSDT.4h'")) == 1
    assert Tracker(mlflow_uri).aliases("direction.ETHUSDT.4h")["challenger"] == first["version"]


def test_too_few_rows_skips_with_the_reason(
    instance, project_dir, mlflow_uri, short_history
) -> None:
    register(instance, "SPY")
    outcomes = _build(
        instance,
        "*challenger_model",
        ["SPY"],
        timeframes=("1d",),
        config={"challenger_model": {"min_rows": 100_000}},
    )
    assert outcomes[-1].status == "success"  # a skip is not a failure: the backfill goes on
    record = _record(project_dir, "SPY", "1d")
    assert record["status"] == "skipped" and "100000" in record["reason"].replace(",", "")
    assert Tracker(mlflow_uri).client.search_registered_models() == []


def _train_one(args: tuple[str, str, str, str]) -> tuple[str, bool, str]:
    """Worker of the parallel test: one Dagster run training one partition."""
    home, artifacts, uri, key = args
    import os

    os.environ.update(
        {
            "DAGSTER_HOME": home,
            "QUANT_ASSETS_ARTIFACTS": artifacts,
            "MLFLOW_TRACKING_URI": uri,
            "QUANT_ASSETS_SYNTHETIC_START": "2025-07-01",
        }
    )
    from quant_assets.definitions import build_defs as build
    from quant_assets.lib.settings import load_settings as settings
    from quant_assets_tests.defs.inprocess import PlannedRun
    from quant_assets_tests.defs.inprocess import execute_plan as run_plan

    symbol, timeframe = key.split("|")
    planned = PlannedRun(0, (dg.AssetKey("challenger_model"),), key, symbol, timeframe)
    with dg.DagsterInstance.get() as inst:
        outcome = run_plan(build(settings()), [planned], inst, asset_config=FAST_MODEL)[0]
    return key, outcome.status == "success", outcome.error or ""


def test_four_partitions_train_in_parallel_on_the_sqlite_store(
    instance, project_dir, mlflow_uri, short_history
) -> None:
    """Four Dagster runs in four processes write to one SQLite store at once (WAL + busy timeout)."""
    symbols = ["BTCUSDT", "ETHUSDT", "SPY", "AAPL"]
    register(instance, *symbols)
    _build(instance, "*walk_forward_splits", symbols, timeframes=("1d",))
    keys = [f"{s}|1d" for s in symbols]
    home = str(project_dir / "dagster_home")
    args = [(home, str(project_dir / "artifacts"), mlflow_uri, k) for k in keys]
    with ProcessPoolExecutor(
        max_workers=4, mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        results = list(pool.map(_train_one, args))
    assert [r for r in results if not r[1]] == [], results
    names = {m.name for m in Tracker(mlflow_uri).client.search_registered_models()}
    assert names == {f"direction.{s}.1d" for s in symbols}


def test_global_model_per_timeframe(instance, project_dir, mlflow_uri, short_history) -> None:
    symbols = ["BTCUSDT", "ETHUSDT"]
    register(instance, *symbols)
    _build(instance, "*training_dataset", symbols, timeframes=("4h", "1d"))
    _build(
        instance,
        "global_challenger_model",
        symbols,
        timeframes=("4h",),
        config={"global_challenger_model": {"params": {"n_estimators": 40}}},
    )
    record = read_parquet(project_dir / "artifacts" / "global_challenger_model" / "4h.parquet").row(
        0, named=True
    )
    assert record["status"] == "trained" and record["symbols"] == "BTCUSDT, ETHUSDT"
    assert Tracker(mlflow_uri).aliases("direction_global.4h") == {"challenger": record["version"]}
    calibrators = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=record["run_id"], artifact_path="calibrators_by_symbol.json"
            )
        ).read_text()
    )
    assert set(calibrators) == set(symbols)
    assert pl.DataFrame([record]).height == 1


def test_the_global_model_reads_a_bounded_number_of_rows() -> None:
    """Each symbol's latest rows, at most max_rows_per_symbol, and max_rows for all together: the
    global model's memory and fitting do not grow with the universe."""
    from quant_assets.defs.models import GlobalTrainingConfig

    config = GlobalTrainingConfig()
    assert config.rows_per_symbol(4) == 20_000  # small universes: unchanged
    assert config.rows_per_symbol(20) == 20_000
    assert config.rows_per_symbol(64) == 6_250
    assert config.rows_per_symbol(500) == 800
    for symbols in (1, 7, 64, 500, 5000):
        assert symbols * config.rows_per_symbol(symbols) <= max(config.max_rows, symbols)
    small = GlobalTrainingConfig(max_rows=100, max_rows_per_symbol=50)
    assert [small.rows_per_symbol(n) for n in (1, 2, 3, 1000)] == [50, 50, 33, 1]
