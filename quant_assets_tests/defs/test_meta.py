"""The meta layer through real Dagster runs and a real MLflow store: regimes, primary signals,
per-regime meta-learners, the meta-labelling filter and the ensemble with its fallbacks."""

from __future__ import annotations

import json

import polars as pl
import pytest

from quant_assets.definitions import build_defs
from quant_assets.lib.settings import load_settings
from quant_assets.lib.storage import read_parquet, write_parquet_atomic
from quant_assets.lib.stores import TradingStore, sql_url_for
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.defs.conftest import FAST, LENIENT_GATES, register
from quant_assets_tests.defs.inprocess import execute_plan, plan_runs

pytestmark = pytest.mark.slow


@pytest.fixture
def meta_project(instance, project_dir, mlflow_uri, monkeypatch):
    monkeypatch.setenv("QUANT_ASSETS_UNIVERSE", "BTCUSDT")
    monkeypatch.setenv("QUANT_ASSETS_TIMEFRAMES", "4h,1d")
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2024-06-01")
    register(instance, "BTCUSDT")
    return load_settings()


def _run(instance, settings, selection, config=None, timeframes=("4h", "1d")):
    defs = build_defs(settings)
    outcomes = execute_plan(
        defs,
        plan_runs(defs, selection, ["BTCUSDT"], list(timeframes)),
        instance,
        asset_config={**FAST, **LENIENT_GATES, **(config or {})},
    )
    assert all(o.status == "success" for o in outcomes), [
        (o.planned.label, o.error) for o in outcomes
    ]
    return outcomes


def _stored(settings, asset: str, timeframe: str = "4h") -> pl.DataFrame:
    return read_parquet(settings.artifacts_path / asset / "BTCUSDT" / f"{timeframe}.parquet")


def _latest_materialization(instance, asset: str, partition: str = "BTCUSDT|4h"):
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return records[0].asset_materialization.metadata


def test_meta_layer_end_to_end_with_fallbacks(instance, meta_project) -> None:
    settings = meta_project
    _run(instance, settings, "*")

    regimes = _stored(settings, "regime")
    assert set(regimes["regime"].unique().to_list()) <= {"bull", "bear", "range", "neutral"}
    assert regimes["gate"].dtype == pl.Boolean and regimes["gate"].sum() > 0

    learners = _stored(settings, "meta_learner")
    tracker = Tracker(settings.mlflow_uri)
    runs = tracker.client.search_runs(
        [tracker.experiment_id("meta_learner")],
        filter_string="tags.`dagster.partition_key` = 'BTCUSDT|4h'",
    )
    assert len(runs) == learners.height  # one MLflow run per regime, trained or skipped
    trained = learners.filter(pl.col("status") == "trained")
    assert trained.height >= 1
    for row in trained.iter_rows(named=True):
        version = tracker.client.get_model_version(row["model_name"], row["version"])
        assert version.tags["regime"] == row["regime"]
        assert row["model_name"] == f"meta.BTCUSDT.4h.{row['regime']}"
    for row in learners.filter(pl.col("status") != "trained").iter_rows(named=True):
        assert row["reason"]  # skipped regimes say why

    report = _stored(settings, "meta_filter")
    assert set(report["variant"]) == {"unfiltered", "filtered"}
    unfiltered, filtered = (
        report.filter(pl.col("variant") == v).row(0, named=True) for v in ("unfiltered", "filtered")
    )
    assert filtered["signals"] <= unfiltered["signals"]

    ensemble = _stored(settings, "ensemble_signals")
    assert ensemble.height > 0 and set(ensemble["source"].unique()) <= {"meta", "voting"}
    metadata = _latest_materialization(instance, "ensemble_signals")
    comparison = metadata["comparison"].value
    for variant in ("primary_trend", "voting", "meta_filter", "meta_weighted"):
        assert variant in comparison
    run = tracker.client.get_run(ensemble["mlflow_run_id"][0])
    artifacts = {a.path for a in tracker.client.list_artifacts(run.info.run_id)}
    assert {"ensemble_comparison.csv", "ensemble_equity_curves.png", "gates.csv"} <= artifacts
    # the serving decision is deflated by every variant compared, the champion's included
    compared = run.data.params["ensemble.trials"].split(", ")
    assert "champion" in compared and len(compared) == 5
    assert metadata["n_trials"].value == int(run.data.params["ensemble.n_trials"]) == 5
    assert run.data.metrics["selection_dsr"] == pytest.approx(metadata["dsr"].value)
    assert metadata["trials_sharpe_variance"].value >= 0 and "min_trl_periods" in metadata
    assert "DSR" in metadata["gates"].value and "N=5 trials" in metadata["gates"].value

    # an ensemble that passed its gates is what `signals` serves (side and size), not the champion
    assert tracker.aliases("direction.BTCUSDT.4h").get("champion")
    serving = ensemble.with_columns(pl.lit(True).alias("serving"))
    write_parquet_atomic(
        serving, settings.artifacts_path / "ensemble_signals" / "BTCUSDT" / "4h.parquet"
    )
    _run(instance, settings, "signals", timeframes=("4h",))
    served = TradingStore(sql_url_for("", settings.artifacts_path)).read_signals("BTCUSDT", "4h")
    latest = served.join(serving.select("timestamp", "side", "size"), on="timestamp", suffix="_ens")
    # rows name the registered champion whose prob_up they carry; meta says the ensemble decided
    assert latest.height > 0 and set(latest["model_name"]) == {"direction.BTCUSDT.4h"}
    assert {json.loads(m)["source"] for m in latest["meta"]} <= {"ensemble", "flat"}
    assert latest["side"].to_list() == latest["side_ens"].cast(pl.Int64).to_list()
    assert (latest["strength"] - latest["size_ens"].clip(0.0, 1.0)).abs().max() < 1e-12
    # the size served is the volatility-target fraction of capital, on every bar with a side
    assert ((latest["size"] > 0) == (latest["side"] != 0)).all()
    assert latest["size"].max() <= 1.0
    assert _latest_materialization(instance, "signals")["served_by"].value.startswith(
        "ensemble.BTCUSDT.4h"
    )

    # 1. no model for a regime: regimes below min_samples_per_regime are skipped -> voting
    store = TradingStore(sql_url_for("", settings.artifacts_path))
    before = store.alerts().height
    _run(
        instance,
        settings,
        "meta_learner*",
        {"meta_learner": {"min_samples_per_regime": 10**9}},
        timeframes=("4h",),
    )
    signals = _stored(settings, "ensemble_signals")
    assert set(signals["source"].unique()) == {"voting"}
    fallbacks = store.alerts().slice(before).filter(pl.col("kind") == "ensemble_fallback")
    assert fallbacks.height >= 1
    assert all("no meta-learner for regime" in m for m in fallbacks["message"])

    # 2. a calibrated model above max_ece -> voting, with the ECE in the reason
    before = store.alerts().height
    _run(
        instance,
        settings,
        "meta_learner*",
        {"ensemble_signals": {"max_ece": 0.001}},
        timeframes=("4h",),
    )
    learners = _stored(settings, "meta_learner")
    assert (learners["status"] == "trained").any()
    signals = _stored(settings, "ensemble_signals")
    assert set(signals["source"].unique()) == {"voting"}
    newest = store.alerts().slice(before).filter(pl.col("kind") == "ensemble_fallback")
    assert any("calibrated OOF ECE" in m and "> max_ece=0.001" in m for m in newest["message"])

    # 3. a model that cannot be loaded (its registry entry is broken) -> voting for that regime
    row = learners.filter(pl.col("status") == "trained").row(0, named=True)
    broken = learners.with_columns(
        pl.when(pl.col("regime") == row["regime"])
        .then(pl.lit("999"))
        .otherwise(pl.col("version"))
        .alias("version")
    )
    write_parquet_atomic(
        broken, settings.artifacts_path / "meta_learner" / "BTCUSDT" / "4h.parquet"
    )
    _run(instance, settings, "ensemble_signals", timeframes=("4h",))
    metadata = _latest_materialization(instance, "ensemble_signals")
    assert f"loading {row['model_name']} v999 failed" in metadata["fallbacks"].value
    latest = store.alerts().tail(1).row(0, named=True)
    assert (
        latest["kind"] == "ensemble_fallback"
        and json.loads(latest["details_json"])["regime"] == row["regime"]
    )


def test_degenerate_partition_is_skipped_with_its_reason_not_failed(
    instance, project_dir, mlflow_uri, monkeypatch
) -> None:
    """Constant prices (a halted instrument, a broken feed): every step of the meta layer
    succeeds, and the meta-learners, the filter and the ensemble say why they skipped."""
    data = project_dir / "data"
    data.mkdir()
    days = pl.date_range(pl.date(2024, 1, 1), pl.date(2024, 12, 31), eager=True)
    pl.DataFrame(
        {"date": days, "open": 100.0, "high": 100.0, "low": 100.0, "close": 100.0, "volume": 1e3}
    ).write_csv(data / "FLATUSDT.csv")
    monkeypatch.setenv("QUANT_ASSETS_SOURCE", f"files:{data}")
    monkeypatch.setenv("QUANT_ASSETS_TIMEFRAMES", "1d")
    register(instance, "FLATUSDT")
    settings = load_settings()
    defs = build_defs(settings)
    for selection in ("*meta_learner", "*meta_filter", "ensemble_signals"):
        outcomes = execute_plan(
            defs, plan_runs(defs, selection, ["FLATUSDT"], ["1d"]), instance, asset_config=FAST
        )
        assert all(o.status == "success" for o in outcomes), [
            (o.planned.label, o.error) for o in outcomes
        ]
    root = settings.artifacts_path
    learners = read_parquet(root / "meta_learner" / "FLATUSDT" / "1d.parquet")
    assert learners["status"].to_list() == ["skipped"]
    assert "constant" in learners["reason"][0]
    filtered = read_parquet(root / "meta_filter" / "FLATUSDT" / "1d.parquet")
    assert filtered["status"][0] == "skipped" and filtered["reason"][0]
    ensemble = read_parquet(root / "ensemble_signals" / "FLATUSDT" / "1d.parquet")
    assert ensemble["status"][0] == "skipped" and not ensemble["serving"][0]
