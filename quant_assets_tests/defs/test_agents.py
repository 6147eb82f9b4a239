"""The agents execution reads, through real Dagster runs: the volatility agent registered and
promoted, `signals` made by the execution agent with long and short sides, volatility-based size
and levels, and every row traceable to its versions in the SQL catalog."""

from __future__ import annotations

import json

import polars as pl
import pytest

from quant_assets.definitions import build_defs
from quant_assets.lib.catalog import catalog, registry_catalog_differences
from quant_assets.lib.settings import load_settings
from quant_assets.lib.stores import TradingStore, sql_url_for
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.defs.conftest import FAST, LENIENT_GATES, register
from quant_assets_tests.defs.inprocess import execute_plan, plan_runs

pytestmark = pytest.mark.slow


def _run(selection: str, instance, config=None, timeframes=("4h",)) -> None:
    defs = build_defs(load_settings())
    outcomes = execute_plan(
        defs,
        plan_runs(defs, selection, ["BTCUSDT"], list(timeframes)),
        instance,
        asset_config=config,
    )
    assert all(o.status == "success" for o in outcomes), [
        (o.planned.label, o.error) for o in outcomes
    ]


def test_signals_from_the_execution_agent_are_traceable(
    instance, project_dir, mlflow_uri, monkeypatch
) -> None:
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2025-03-01")
    register(instance, "BTCUSDT")
    _run("ohlcv", instance, timeframes=("1d",))  # the 4h features' snapshot reads it
    _run("*champion", instance, {**FAST, **LENIENT_GATES})
    _run("volatility_model", instance)
    _run("regime", instance)  # its gate applies to `signals` and at bar close alike
    tracker = Tracker(mlflow_uri)
    store = TradingStore(sql_url_for("", project_dir / "artifacts"))
    direction, volatility = "direction.BTCUSDT.4h", "volatility.BTCUSDT.4h"

    # bar-close serving: one run scores the newest closed bar of every symbol, once
    defs = build_defs(load_settings())
    serve = defs.resolve_job_def("serve_bar_close")
    run_config = {"ops": {"serve_new_bars": {"config": {"timeframe": "4h"}}}}
    first = serve.execute_in_process(run_config=run_config, instance=instance)
    assert first.output_for_node("serve_new_bars")["rows"] == 1
    at_close = store.read_signals(symbol="BTCUSDT", timeframe="4h")
    assert at_close.height == 1 and at_close["vol_version_id"][0] is not None
    repeat = serve.execute_in_process(run_config=run_config, instance=instance)
    assert repeat.output_for_node("serve_new_bars")["rows"] == 0  # no new bar: nothing rewritten
    assert store.read_signals(symbol="BTCUSDT", timeframe="4h").equals(at_close)

    at_close_regime = store.read_predictions(model_name=direction)["regime"].to_list()
    _run("signals", instance)
    # the asset, computing features and the regime on the whole history, agrees with the
    # bar-close row: side, size, levels and the regime gate
    same_bar = store.read_signals(symbol="BTCUSDT", timeframe="4h").filter(
        pl.col("timestamp") == at_close["timestamp"][0]
    )
    same_regime = store.read_predictions(model_name=direction).filter(
        pl.col("timestamp") == at_close["timestamp"][0]
    )["regime"]
    print(f"bar-close row: {at_close.select('side', 'prob_up', 'sigma', 'size').row(0)}")
    print(f"bar-close regime {at_close_regime}, meta {at_close['meta'][0]}")
    assert at_close_regime == same_regime.to_list() and at_close_regime[0] is not None
    assert json.loads(same_bar["meta"][0])["gate"] == json.loads(at_close["meta"][0])["gate"]
    for column in ("prob_up", "sigma", "size", "stop_loss", "take_profit"):
        if at_close[column][0] is None:  # flat: no levels
            assert same_bar[column][0] is None
        else:
            assert same_bar[column][0] == pytest.approx(at_close[column][0], rel=1e-9)
    assert same_bar["side"][0] == at_close["side"][0]
    assert tracker.aliases(volatility).get("champion")  # beat the naive forecast out of fold
    for name in (direction, volatility):
        assert registry_catalog_differences(tracker, store, name) == []

    signals = store.read_signals(symbol="BTCUSDT", timeframe="4h")
    assert signals.height > 0
    assert set(signals["side"].unique()) <= {-1, 0, 1}
    short_tag = tracker.version_tags(direction, tracker.aliases(direction)["champion"]).get(
        "decision_threshold_short"
    )
    print(
        f"\nsides served: {signals['side'].value_counts().sort('side').rows()}, short {short_tag}"
    )
    if short_tag:  # a downside edge on the model's out-of-fold predictions: shorts are served
        assert (signals["side"] == -1).sum() > 0
        assert signals["threshold_short"].drop_nulls().unique().to_list() == [float(short_tag)]

    # every row joins to its direction and volatility versions in the catalog
    versions = catalog(store).select("id", "registered_name", "version")
    joined = signals.join(versions, left_on="agent_version_id", right_on="id", how="left")
    assert joined["registered_name"].to_list() == [direction] * signals.height
    assert (joined["version"] == joined["model_version"]).all()
    vol = signals.join(versions, left_on="vol_version_id", right_on="id", how="left")
    assert vol["registered_name"].to_list() == [volatility] * signals.height
    assert signals["dagster_run_id"].n_unique() == 1 and signals["data_version"].null_count() == 0

    # the volatility agent's sigma sets size and levels
    trading = signals.filter(pl.col("side") != 0)
    assert trading["sigma"].null_count() == 0 and (trading["size"] > 0).all()
    assert {json.loads(m)["sigma_source"] for m in trading["meta"]} == {"volatility_agent"}
    long_ok = (pl.col("side") * (pl.col("take_profit") - pl.col("entry_price"))) > 0
    assert trading.select(long_ok.all()).item()
    preds = store.read_predictions(model_name=direction)
    assert preds["agent_version_id"].null_count() == 0 and preds["sigma"].null_count() == 0

    # idempotent: serving again rewrites the same rows
    _run("signals", instance)
    again = store.read_signals(symbol="BTCUSDT", timeframe="4h")
    assert again.height == signals.height

    # retention through its job: nothing is as old as 10,000 days
    retention = defs.resolve_job_def("agent_preds_retention").execute_in_process(
        run_config={"ops": {"delete_old_agent_preds": {"config": {"max_age_days": 1e4}}}},
        instance=instance,
    )
    assert retention.output_for_node("delete_old_agent_preds") == 0
    assert store.read_predictions(model_name=direction).height == preds.height
