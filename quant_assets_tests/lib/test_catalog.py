"""The SQL version catalog follows the MLflow registry through registration, promotion, rollback
and retraining, on SQLite and PostgreSQL; retention of agent_preds deletes only older rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from quant_assets.lib.catalog import (
    agent_identity,
    catalog,
    delete_old_predictions,
    registry_catalog_differences,
    semantic_version,
    sync_catalog,
    version_id,
)
from quant_assets.lib.registry_ops import promote_version, rollback_champion
from quant_assets.lib.stores import TradingStore
from quant_assets.lib.tracking import Tracker
from quant_assets.lib.volatility import (
    GarchForecaster,
    VolatilityEvaluation,
    register_volatility_model,
)
from quant_assets_tests.services import temporary_postgres_database

NAME = "volatility.BTCUSDT.1h"
EVALUATION = VolatilityEvaluation(-6.0, -5.9, 1e-6, 2e-6, 0.9, 500, 4)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, project_dir):
    if request.param == "sqlite":
        trading = TradingStore(f"sqlite:///{project_dir / 'trading.db'}")
        yield trading
        trading.dispose()
        return
    with temporary_postgres_database("qa_catalog") as url:
        trading = TradingStore(url)
        yield trading
        trading.dispose()


def _register(tracker: Tracker, n: int) -> str:
    model = GarchForecaster(0.01 * n, 0.05, 0.9, 1.0, 5)
    version, _ = register_volatility_model(
        tracker, NAME, model, EVALUATION, {"version_label": f"v{n}.0", "data_version": f"d{n}"}
    )
    return version


def _move(tracker, store, version=None):
    kwargs = dict(symbol="BTCUSDT", timeframe="1h", reason="test")
    if version is None:
        return rollback_champion(tracker, store, NAME, **kwargs)
    return promote_version(
        tracker, store, NAME, version, action="manual_promote", decided_by="cli", **kwargs
    )


def test_catalog_follows_registration_promotion_rollback_retrain(mlflow_uri, store) -> None:
    tracker = Tracker(mlflow_uri)
    v1 = _register(tracker, 1)
    sync_catalog(tracker, store, NAME)  # registration
    assert registry_catalog_differences(tracker, store, NAME) == []
    _move(tracker, store, v1)
    v2 = _register(tracker, 2)
    sync_catalog(tracker, store, NAME)
    _move(tracker, store, v2)  # the promotion syncs inside its own transaction
    assert registry_catalog_differences(tracker, store, NAME) == []
    rows = catalog(store, NAME)
    assert dict(zip(rows["version"], rows["aliases"], strict=True)) == {
        v1: "prior_champion",
        v2: "challenger,champion",
    }
    _move(tracker, store)  # rollback
    assert registry_catalog_differences(tracker, store, NAME) == []
    assert dict(zip(*catalog(store, NAME).select("version", "aliases"), strict=True)) == {
        v1: "champion",
        v2: "challenger,prior_champion",
    }
    v3 = _register(tracker, 3)  # a retrain registers a new challenger
    assert registry_catalog_differences(tracker, store, NAME) == [
        f"v{v3} registered but not in the catalog",
        f"v{v2}: catalog aliases 'challenger,prior_champion', registry 'prior_champion'",
    ]
    sync_catalog(tracker, store, NAME)
    assert registry_catalog_differences(tracker, store, NAME) == []
    rows = catalog(store, NAME)
    # a sync stamps every version it listed, the ones whose aliases did not move too
    assert rows.height == 3 and rows["synced_at"].n_unique() == 1
    third = rows.filter(pl.col("version") == v3).row(0, named=True)
    assert (third["kind"], third["symbol"], third["timeframe"]) == ("volatility", "BTCUSDT", "1h")
    assert third["semver"] == "v3.0.0" and third["data_version"] == "d3"
    assert third["artifact_uri"].endswith("/model")
    assert json.loads(third["metrics_json"])["oof_qlike"] == pytest.approx(-6.0)
    assert version_id(tracker, store, NAME, v3) == third["id"]


def test_names_and_labels() -> None:
    assert agent_identity("direction.BTCUSDT.1h") == ("direction", "BTCUSDT", "1h")
    assert agent_identity("direction_global.4h") == ("direction", "ALL", "4h")
    assert agent_identity("meta.ETHUSDT.1d.bull") == ("meta", "ETHUSDT", "1d")
    with pytest.raises(ValueError, match="registered name"):
        agent_identity("unknown.X.1h")
    assert semantic_version({"version_label": "v1.1"}, "7") == "v1.1.0"
    assert semantic_version({}, "7") == "v7.0.0"


def test_retention_deletes_only_older_predictions(store) -> None:
    now = datetime(2026, 1, 31, tzinfo=UTC)
    stamps = [now - timedelta(days=d) for d in (40, 31, 29, 1)]
    store.write_predictions(
        pl.DataFrame(
            {
                "model_name": "direction.BTCUSDT.1h",
                "model_version": "1",
                "symbol": "BTCUSDT",
                "timeframe": "1h",
                "timestamp": pl.Series(stamps, dtype=pl.Datetime("us", "UTC")),
                "horizon": 5,
                "prob_up": [0.1, 0.2, 0.3, 0.4],
            }
        )
    )
    assert delete_old_predictions(store, timedelta(days=30), now=now) == 2
    kept = store.read_predictions()
    assert kept["prob_up"].to_list() == [0.3, 0.4]
    assert delete_old_predictions(store, timedelta(days=30), now=now) == 0
    with pytest.raises(ValueError, match="positive"):
        delete_old_predictions(store, timedelta(0))
