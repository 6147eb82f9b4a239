"""Champion/challenger evaluation, promotion, rollback and signals through real Dagster runs."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from quant_assets.cli import main
from quant_assets.definitions import build_defs
from quant_assets.lib.settings import load_settings
from quant_assets.lib.storage import read_parquet
from quant_assets.lib.stores import TradingStore, sql_url_for
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.defs.conftest import FAST, LENIENT_GATES, register
from quant_assets_tests.defs.inprocess import execute_plan, plan_runs

pytestmark = pytest.mark.slow


def _run(instance, selection: str, symbols, timeframes, config) -> list:
    defs = build_defs(load_settings())
    outcomes = execute_plan(
        defs, plan_runs(defs, selection, symbols, list(timeframes)), instance, asset_config=config
    )
    assert all(o.status == "success" for o in outcomes), [
        (o.planned.label, o.error) for o in outcomes
    ]
    return outcomes


def _evaluation(project_dir: Path, symbol: str, timeframe: str) -> dict:
    path = (
        project_dir
        / "artifacts"
        / "champion_challenger_evaluation"
        / symbol
        / f"{timeframe}.parquet"
    )
    return read_parquet(path).row(0, named=True)


def test_promotion_rejection_signals_and_rollback(
    instance, project_dir, mlflow_uri, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2025-03-01")
    register(instance, "BTCUSDT")
    name = "direction.BTCUSDT.4h"
    tracker = Tracker(mlflow_uri)
    store = TradingStore(sql_url_for("", project_dir / "artifacts"))

    # 1. first challenger, lenient gates, no champion yet: promoted by the `champion` asset
    outcomes = _run(instance, "*", ["BTCUSDT"], ("4h", "1d"), {**FAST, **LENIENT_GATES})
    assert any("promotion_gates: pass" in o.decisions for o in outcomes)
    first = _evaluation(project_dir, "BTCUSDT", "4h")
    assert first["decision"] == "promote" and first["champion_version"] == ""
    assert tracker.aliases(name)["champion"] == first["challenger_version"]
    tags = tracker.client.get_model_version(name, first["challenger_version"]).tags
    assert tags["decision"] == "promote" and tags["promotion.decided_by"] == "gates"
    assert any(k.startswith("gate.") for k in tags)
    signals = store.read_signals(symbol="BTCUSDT", timeframe="4h")
    assert signals.height > 0
    assert set(signals["model_version"]) == {first["challenger_version"]}
    assert signals["mlflow_run_id"].n_unique() == 1

    # 2. retraining the same configuration on the same data reuses the registered version (no new
    #    trial); another seed gives a new challenger, which fails a strict gate -> rejected, a
    #    successful run whose `champion` keeps the champion; signals are rewritten without duplicates
    _run(instance, "challenger_model", ["BTCUSDT"], ("4h",), FAST)
    assert len(tracker.client.search_model_versions(f"name='{name}'")) == 1
    strict = {
        "champion_challenger_evaluation": {
            **LENIENT_GATES["champion_challenger_evaluation"],
            "min_sortino": 1e9,
        }
    }
    other_seed = {"challenger_model": {**FAST["challenger_model"], "seed": 43}}
    outcomes = _run(instance, "*", ["BTCUSDT"], ("4h",), {**other_seed, **strict})
    assert any("promotion_gates: fail" in o.decisions for o in outcomes)
    assert all(o.status == "success" for o in outcomes), [
        (o.planned.label, o.error) for o in outcomes
    ]
    second = _evaluation(project_dir, "BTCUSDT", "4h")
    assert (
        second["decision"] == "reject" and second["champion_version"] == first["challenger_version"]
    )
    assert second["challenger_version"] != first["challenger_version"]
    assert "sortino" in second["reason"]
    assert tracker.aliases(name)["champion"] == first["challenger_version"]
    kept = pl.read_parquet(project_dir / "artifacts" / "champion" / "BTCUSDT" / "4h.parquet")
    assert kept["decision"][0] == "keep" and kept["champion"][0] == first["challenger_version"]
    again = store.read_signals(symbol="BTCUSDT", timeframe="4h")
    assert again.height == signals.height
    assert again["timestamp"].n_unique() == again.height
    preds = store.read_predictions(model_name=name)
    assert preds.select("model_version", "timestamp", "horizon").is_duplicated().sum() == 0

    log = store.promotion_history(name)
    assert log["action"].to_list() == ["promote", "reject"]
    assert log["version"].to_list() == [first["challenger_version"], second["challenger_version"]]

    # 3. a manual promotion keeps the previous champion as prior_champion; rollback restores it
    assert main(["promote", "BTCUSDT", "4h", "--reason", "desk override"]) == 0
    assert tracker.aliases(name) == {
        "challenger": second["challenger_version"],
        "champion": second["challenger_version"],
        "prior_champion": first["challenger_version"],
    }
    assert main(["rollback", "BTCUSDT", "4h"]) == 0
    assert tracker.aliases(name)["champion"] == first["challenger_version"]
    log = store.promotion_history(name)
    assert log["action"].to_list() == ["promote", "reject", "manual_promote", "rollback"]
    assert log["reason"][2] == "desk override"
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "BTCUSDT|4h" in out and "reject" in out


def test_nothing_is_promoted_on_a_random_walk(
    instance, project_dir, mlflow_uri, monkeypatch
) -> None:
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_RANDOM_WALK", "true")
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2024-06-01")
    symbols = ["BTCUSDT", "ETHUSDT"]
    register(instance, *symbols)
    _run(instance, "*champion", symbols, ("4h", "1d"), FAST)
    tracker = Tracker(mlflow_uri)
    decisions = []
    for symbol in symbols:
        for timeframe in ("4h", "1d"):
            evaluation = _evaluation(project_dir, symbol, timeframe)
            decisions.append(evaluation["decision"])
            assert "champion" not in tracker.aliases(f"direction.{symbol}.{timeframe}")
    assert set(decisions) <= {"reject", "none"} and "reject" in decisions
    log = TradingStore(sql_url_for("", project_dir / "artifacts")).promotion_history()
    assert set(log["action"]) == {"reject"}
    assert pl.Series(decisions).len() == 4


def test_a_challenger_from_another_data_source_is_not_compared(
    instance, project_dir, mlflow_uri, monkeypatch
) -> None:
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2025-03-01")
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_END", "2025-06-30T00:00:00")
    register(instance, "BTCUSDT")
    name = "direction.BTCUSDT.4h"
    _run(instance, "*champion", ["BTCUSDT"], ("4h", "1d"), {**FAST, **LENIENT_GATES})
    tracker = Tracker(mlflow_uri)
    first = tracker.aliases(name)["champion"]
    # the same registered name, trained on another source (the random walk), rewriting history
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_RANDOM_WALK", "true")
    monkeypatch.setenv("QUANT_ASSETS_ALLOW_HISTORY_REWRITE", "true")
    _run(instance, "*champion", ["BTCUSDT"], ("4h", "1d"), {**FAST, **LENIENT_GATES})
    evaluation = _evaluation(project_dir, "BTCUSDT", "4h")
    assert evaluation["decision"] == "reject"
    assert "different data sources" in evaluation["reason"]
    assert "random walk" in evaluation["reason"]
    assert tracker.aliases(name)["champion"] == first
    store = TradingStore(sql_url_for("", project_dir / "artifacts"))
    assert store.promotion_history(name)["action"].to_list() == ["promote", "reject"]
