"""Bar-close serving over several symbols: one row per symbol per new bar, idempotent when
repeated, traceable to the catalog, and a manual promotion served from the next bar on."""

from __future__ import annotations

import polars as pl

from quant_assets.lib.bar_close import BarCloseServer
from quant_assets.lib.catalog import catalog, version_id
from quant_assets.lib.registry_ops import promote_version
from quant_assets.lib.stores import TradingStore
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.lib.bars_factory import make_bars
from quant_assets_tests.lib.serving_factory import register_champions, store_bars

SYMBOLS = ["AAA", "BBB", "CCC"]
HISTORY = 900


def test_bar_close_serving(project_dir, mlflow_uri) -> None:
    tracker = Tracker(mlflow_uri)
    store = TradingStore(f"sqlite:///{project_dir / 'trading.db'}")
    bars = {s: make_bars(HISTORY + 3, "1h", seed=i) for i, s in enumerate(SYMBOLS)}
    register_champions(tracker, store, SYMBOLS, bars["AAA"].head(HISTORY), "1h", "4h")
    root = project_dir / "artifacts"
    server = BarCloseServer(tracker, store, root)

    store_bars(root, bars, HISTORY, "1h", "4h")
    first = server.serve("1h", SYMBOLS, dagster_run_id="run-1")
    signals = store.read_signals(timeframe="1h")
    assert first.rows == 3 and sorted(first.served) == SYMBOLS
    assert signals.group_by("symbol").len()["len"].to_list() == [1, 1, 1]
    assert signals["timestamp"].unique().to_list() == [bars["AAA"]["timestamp"][HISTORY - 1]]
    assert (signals["dagster_run_id"] == "run-1").all()

    repeat = server.serve("1h", SYMBOLS, dagster_run_id="run-2")  # no new bar
    assert repeat.rows == 0
    assert set(repeat.skipped.values()) == {"no new bar since the last one served"}
    assert store.read_signals(timeframe="1h").equals(signals)

    # every row joins to its direction and volatility versions in the catalog
    versions = catalog(store).select("id", "registered_name")
    joined = signals.join(versions, left_on="agent_version_id", right_on="id")
    assert joined["registered_name"].to_list() == [f"direction.{s}.1h" for s in SYMBOLS]
    vol = signals.join(versions, left_on="vol_version_id", right_on="id")
    assert vol["registered_name"].to_list() == [f"volatility.{s}.1h" for s in SYMBOLS]
    assert signals["sigma"].null_count() == 0

    # a manual promotion (a new AAA version) is served from the next bar on
    name = "direction.AAA.1h"
    source = tracker.client.get_model_version(name, "1")
    new = tracker.client.create_model_version(name, source.source, run_id=source.run_id)
    tracker.set_version_tags(name, new.version, {**source.tags, "decision_threshold": "0.99"})
    promote_version(
        tracker,
        store,
        name,
        new.version,
        symbol="AAA",
        timeframe="1h",
        action="manual_promote",
        decided_by="cli",
        reason="test",
    )
    store_bars(root, bars, HISTORY + 1, "1h", "4h")
    after = server.serve("1h", SYMBOLS, dagster_run_id="run-3")
    assert after.rows == 3
    latest = store.read_signals(symbol="AAA", timeframe="1h").filter(
        pl.col("timestamp") == bars["AAA"]["timestamp"][HISTORY]
    )
    assert latest["model_version"][0] == str(new.version)
    assert latest["agent_version_id"][0] == version_id(tracker, store, name, str(new.version))
    assert latest["threshold_long"][0] == 0.99
    assert store.read_signals(timeframe="1h").height == 6
