"""The local model cache of bar-close serving: a fresh server serves from it without MLflow,
its models predict exactly as the MLflow-loaded ones, a promotion invalidates an entry, and a
corrupted entry is ignored and rebuilt."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.bar_close import BarCloseServer, champions_from_catalog
from quant_assets.lib.catalog import sync_catalog
from quant_assets.lib.serving_cache import CatalogVersion, ServingCache
from quant_assets.lib.stores import TradingStore
from quant_assets.lib.tracking import ALIAS_CHAMPION, LoadedModel, Tracker
from quant_assets_tests.lib.bars_factory import make_bars
from quant_assets_tests.lib.serving_factory import register_champions, store_bars

SYMBOLS = ["AAA", "BBB"]
HISTORY = 900
NAMES = [f"{kind}.{s}.1h" for kind in ("direction", "volatility") for s in SYMBOLS]


@pytest.fixture
def served(project_dir, mlflow_uri):
    """Champions registered, one close served from MLflow (which fills the cache)."""
    tracker = Tracker(mlflow_uri)
    store = TradingStore(f"sqlite:///{project_dir / 'trading.db'}")
    bars = {s: make_bars(HISTORY + 3, "1h", seed=i) for i, s in enumerate(SYMBOLS)}
    register_champions(tracker, store, SYMBOLS, bars["AAA"].head(HISTORY), "1h", "4h")
    root = project_dir / "artifacts"
    store_bars(root, bars, HISTORY, "1h", "4h")
    server = BarCloseServer(tracker, store, root)
    assert server.serve("1h", SYMBOLS).rows == 2
    return tracker, store, bars, root, server


def _matrix(report, model: LoadedModel, symbol: str) -> np.ndarray:
    rows = report.inputs.filter(pl.col("symbol") == symbol)
    return rows.select(pl.col(model.feature_columns).cast(pl.Float64)).to_numpy()


def test_a_fresh_server_serves_from_the_cache_without_mlflow(served, mlflow_uri) -> None:
    tracker, store, bars, root, first = served
    cache = ServingCache.under(root)
    assert sorted(p.stem for p in cache.folder.glob("*.json")) == sorted(NAMES)

    # the MLflow store (registry and artifacts) is gone: a tracker on its URI finds nothing
    shutil.rmtree(root / "mlflow")
    gone = Tracker(mlflow_uri)
    store_bars(root, bars, HISTORY + 1, "1h", "4h")
    fresh = BarCloseServer(gone, store, root)
    report = fresh.serve("1h", SYMBOLS)
    assert report.rows == 2 and sorted(report.served) == SYMBOLS

    # the cached models predict exactly as the ones loaded from MLflow by the first server
    for symbol in SYMBOLS:
        name = f"direction.{symbol}.1h"
        (from_mlflow,) = (m for c, m in first._models.items() if c.name == name)
        (from_cache,) = (m for c, m in fresh._models.items() if c.name == name)
        assert from_cache is not from_mlflow
        assert from_cache.tags == from_mlflow.tags
        assert from_cache.feature_columns == from_mlflow.feature_columns
        X = _matrix(report, from_mlflow, symbol)
        # and on many rows around the served one, so every tree's leaves are reached
        wide = X * np.random.default_rng(0).lognormal(0, 0.5, (2000, X.shape[1]))
        for rows in (X, wide):
            assert np.array_equal(from_cache.predict_matrix(rows), from_mlflow.predict_matrix(rows))
        served_prob = store.read_predictions().filter(
            (pl.col("symbol") == symbol)
            & (pl.col("timestamp") == bars[symbol]["timestamp"][HISTORY])
        )["prob_up"]
        assert served_prob.to_list() == from_mlflow.predict_matrix(X).tolist()
        vol = f"volatility.{symbol}.1h"
        (vol_mlflow,) = (m for c, m in first._models.items() if c.name == vol)
        (vol_cache,) = (m for c, m in fresh._models.items() if c.name == vol)
        returns = np.random.default_rng(1).normal(0, 0.01, 500)
        assert np.array_equal(vol_cache.horizon_sigma(returns), vol_mlflow.horizon_sigma(returns))


def test_a_promotion_invalidates_the_entry(served) -> None:
    tracker, store, bars, root, _ = served
    cache = ServingCache.under(root)
    name = "direction.AAA.1h"
    old = champions_from_catalog(store, [name])[name]
    assert cache.load(old, "direction") is not None

    # a new version of the same artifact, with another threshold, made champion (the catalog
    # follows the registry as on every promotion)
    mv = tracker.client.get_model_version(name, old.version)
    tags = {**mv.tags, "decision_threshold": "0.99"}
    new = tracker.client.create_model_version(name, mv.source, run_id=mv.run_id, tags=tags)
    tracker.set_alias(name, ALIAS_CHAMPION, new.version)
    sync_catalog(tracker, store, name)
    champion = champions_from_catalog(store, [name])[name]
    assert champion.version == str(new.version)
    assert cache.load(champion, "direction") is None  # the entry is the old version's

    store_bars(root, bars, HISTORY + 1, "1h", "4h")
    report = BarCloseServer(tracker, store, root).serve("1h", SYMBOLS)
    assert report.rows == 2
    latest = store.read_signals(symbol="AAA", timeframe="1h").sort("timestamp")[-1]
    assert latest["model_version"][0] == str(new.version)
    assert latest["threshold_long"][0] == 0.99
    # rewritten for the new version; the old one no longer matches
    cached = cache.load(champion, "direction")
    assert cached.version == str(new.version) and cached.decision_threshold == 0.99
    assert cache.load(old, "direction") is None


def test_a_corrupted_entry_is_ignored_and_rebuilt(served, caplog) -> None:
    tracker, store, bars, root, _ = served
    cache = ServingCache.under(root)
    name = "direction.BBB.1h"
    champion = champions_from_catalog(store, [name])[name]
    path = cache.path(name)
    original = path.read_bytes()
    # an edited threshold: valid JSON, but not what was verified and written
    path.write_bytes(
        original.replace(b'"decision_threshold": "0.55"', b'"decision_threshold": "0.05"')
    )
    assert path.read_bytes() != original
    with caplog.at_level(logging.WARNING, logger="quant_assets.lib.serving_cache"):
        assert cache.load(champion, "direction") is None
    assert "does not match its content hash" in caplog.text

    store_bars(root, bars, HISTORY + 1, "1h", "4h")
    report = BarCloseServer(tracker, store, root).serve("1h", SYMBOLS)
    assert report.rows == 2
    latest = store.read_signals(symbol="BBB", timeframe="1h").sort("timestamp")[-1]
    assert latest["threshold_long"][0] == 0.55  # served from MLflow, not from the edited entry
    assert path.read_bytes() == original  # rebuilt
    assert cache.load(champion, "direction").decision_threshold == 0.55

    path.write_bytes(b"not json")
    assert cache.load(champion, "direction") is None


def test_xgboost_and_unsupported_types(tmp_path) -> None:
    import xgboost
    from sklearn.linear_model import LogisticRegression

    from quant_assets.lib.calibration import Calibrator

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + rng.normal(0, 0.5, 300) > 0).astype(int)
    clf = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(X, y)
    calibrator = Calibrator("sigmoid", slope=1.3, intercept=-0.1)
    model = LoadedModel("direction.X.1h", "3", "run", "xgboost", clf, calibrator, list("abcd"), {})
    champion = CatalogVersion("direction.X.1h", "3", 7, "file:///a", "2026-01-01T00:00:00+00:00")
    cache = ServingCache(tmp_path / "cache")
    assert cache.store(champion, "direction", model, "f" * 64)
    loaded = cache.load(champion, "direction")
    assert np.array_equal(loaded.predict_matrix(X), model.predict_matrix(X))
    other = CatalogVersion("direction.X.1h", "3", 7, "file:///a", "2026-02-01T00:00:00+00:00")
    assert cache.load(other, "direction") is None  # the version was registered again

    sklearn_model = LoadedModel(
        "direction.Y.1h", "1", "run", "sklearn", LogisticRegression().fit(X, y), None, [], {}
    )
    mine = CatalogVersion("direction.Y.1h", "1", 8, "file:///b", "")
    assert not cache.store(mine, "direction", sklearn_model, "")
    assert not cache.path("direction.Y.1h").exists()
