"""Schedules, sensors and automation conditions evaluated with real ticks on a real instance while
the test moves the clock; the requests they make are executed as real runs."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import polars as pl
import pytest

from quant_assets.defs.partitions import PARTITION_BATCH
from quant_assets.lib.health import RUN_TAG_MODE, RUN_TAG_REASONS
from quant_assets.lib.settings import load_settings
from quant_assets.lib.stores import TradingStore, sql_url_for
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.defs.automation_harness import DATA_SENSOR, MODEL_SENSOR, Harness
from quant_assets_tests.defs.conftest import FAST, LENIENT_GATES, register
from quant_assets_tests.defs.inprocess import execute_plan, plan_runs

pytestmark = pytest.mark.slow

# gates every challenger passes, also against a champion
LENIENT = {
    "champion_challenger_evaluation": {
        **LENIENT_GATES["champion_challenger_evaluation"],
        "champion_drawdown_tolerance": 1.0,
        "require_beat_champion": False,
    }
}
STRICT = {"champion_challenger_evaluation": {"min_sortino": 1e9}}
MONDAY = datetime(2026, 6, 1, tzinfo=UTC)  # a Monday
DATA_UP_TO_SPLITS = dg.AssetSelection.assets(
    "ohlcv",
    "features",
    "cross_sectional_ranks",
    "labels",
    "training_dataset",
    "walk_forward_splits",
)


@pytest.fixture
def auto_settings(project_dir, mlflow_uri, monkeypatch):
    monkeypatch.setenv("QUANT_ASSETS_UNIVERSE", "BTCUSDT")
    # 4h features snapshot the 1d bars, so 1d runs too (features' default snapshot_timeframes)
    monkeypatch.setenv("QUANT_ASSETS_TIMEFRAMES", "4h,1d")
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2025-06-01")
    return load_settings()


def _bootstrap(harness: Harness, symbols: list[str]) -> None:
    """What `quant-assets demo` does before the daemon takes over: the data up to the splits."""
    register(harness.instance, *symbols)
    defs = harness.defs
    outcomes = execute_plan(
        defs,
        plan_runs(defs, DATA_UP_TO_SPLITS, symbols, list(harness.settings.timeframes)),
        harness.instance,
    )
    assert all(o.status == "success" for o in outcomes), [o.error for o in outcomes]


def _versions(mlflow_uri: str, name: str) -> list[dict[str, str]]:
    client = Tracker(mlflow_uri).client
    found = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    return [{"version": str(v.version), **dict(v.tags)} for v in found]


def test_ohlcv_schedule_requests_each_symbol_once_per_tick_and_fetches_new_bars(
    instance, auto_settings
) -> None:
    harness = Harness(auto_settings, instance, MONDAY + timedelta(minutes=5))
    assert harness.defs.get_schedule_def("ohlcv_refresh_4h").cron_schedule == "5 */4 * * *"
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=harness.now)
    skipped = harness.defs.get_schedule_def("ohlcv_refresh_4h").evaluate_tick(context)
    assert not skipped.run_requests and "no symbol partitions" in skipped.skip_message

    register(instance, "BTCUSDT", "SPY")
    requests = harness.run_schedule("ohlcv_refresh_4h")
    assert sorted(r.partition_key for r in requests) == ["BTCUSDT|4h", "SPY|4h"]
    assert len({r.run_key for r in requests}) == 2
    first = instance.get_latest_materialization_event(dg.AssetKey("ohlcv"))
    assert first is not None

    harness.now += timedelta(hours=4)  # one more 4h bar closed for the 24/7 symbol
    later = harness.run_schedule("ohlcv_refresh_4h")
    assert not {r.run_key for r in later} & {r.run_key for r in requests}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("ohlcv"), asset_partitions=["BTCUSDT|4h"]),
        limit=1,
    ).records
    metadata = records[0].asset_materialization.metadata
    assert metadata["new_rows"].value == 1 and metadata["full_reload"].value is False


def test_new_symbol_gets_history_built_by_data_automation_only(instance, auto_settings) -> None:
    harness = Harness(auto_settings, instance, MONDAY)
    assert harness.automate(DATA_SENSOR) == {}  # first tick: nothing to do
    register(instance, "ETHUSDT")  # what the watchlist sensor does for a new symbol
    harness.now += timedelta(minutes=1)
    first = harness.automate(DATA_SENSOR)
    assert first == {"ohlcv": {"ETHUSDT|4h", "ETHUSDT|1d"}}
    # a new partition's chain advances one layer per tick (eager waits for missing upstream)
    built: dict[str, set[str]] = {}
    for _ in range(8):
        harness.now += timedelta(minutes=1)
        requested = harness.automate(DATA_SENSOR)
        if not requested:
            break
        for asset, partitions in requested.items():
            assert not built.get(asset, set()) & partitions, f"{asset} requested twice"
            built.setdefault(asset, set()).update(partitions)
    both = {"ETHUSDT|4h", "ETHUSDT|1d"}
    assert built == {
        "features": both,
        "cross_sectional_ranks": {"4h", "1d"},
        "labels": both,
        "training_dataset": both,
        "walk_forward_splits": both,
        "regime": both,
        "primary_signals": both,
    }  # signals wait for champion and ensemble_signals (their lineage), which wait for models
    assert not [r for r in harness.launched if r["status"] == "failed"], harness.launched
    assert harness.automate(DATA_SENSOR) == {}  # no duplicate requests
    # retrains never ride along with ingestion: the model sensor owns no data asset and vice versa
    defs = harness.defs
    graph = defs.resolve_asset_graph()
    data = defs.get_sensor_def(DATA_SENSOR).asset_selection.resolve(graph)
    model = defs.get_sensor_def(MODEL_SENSOR).asset_selection.resolve(graph)
    assert dg.AssetKey("challenger_model") not in data | model
    assert not data & model


def test_retrain_sensor_requests_once_per_reason_with_reasons_as_tags(
    instance, auto_settings
) -> None:
    harness = Harness(auto_settings, instance, MONDAY, asset_config={**FAST, **LENIENT})
    _bootstrap(harness, ["BTCUSDT", "SPY"])
    harness.automate(DATA_SENSOR)  # the daemon's automation sensors were already running
    harness.automate(MODEL_SENSOR)
    requests = harness.tick_sensor("retrain_sensor")
    assert sorted(r.partition_key for r in requests) == [
        "BTCUSDT|1d",
        "BTCUSDT|4h",
        "SPY|1d",
        "SPY|4h",
    ]
    for request in requests:
        assert request.tags[RUN_TAG_REASONS] == "no_model"
        assert request.tags[RUN_TAG_MODE] == "complete"
        assert [k.to_user_string() for k in request.asset_selection] == [
            "challenger_model",
            "champion_challenger_evaluation",
        ]
    assert not [r for r in harness.launched if r["status"] == "failed"], harness.launched
    harness.now += timedelta(hours=4)
    again = harness.tick_sensor("retrain_sensor")
    assert again == []  # the cursor remembers the reasons it acted on; the models exist now

    # degradation: the champion's live signals all lost since training -> an alert and a
    # complete retrain at once, requested once
    # `champion` records every evaluation's decision; promoted where the gates passed
    # (BTCUSDT|1d passes the lenient gates too: its hold-out trades short as well as long;
    # SPY|1d had too little data: kept, no champion)
    assert harness.automate(MODEL_SENSOR)["champion"] == {
        "BTCUSDT|4h",
        "SPY|4h",
        "BTCUSDT|1d",
        "SPY|1d",
    }
    store = TradingStore(sql_url_for("", auto_settings.artifacts_path))
    tracker = Tracker(auto_settings.mlflow_uri)
    promoted = {
        f"{s}|{t}"
        for s in ("BTCUSDT", "SPY")
        for t in ("4h", "1d")
        if tracker.aliases(f"direction.{s}.{t}").get("champion")
    }
    assert promoted == {"BTCUSDT|4h", "SPY|4h", "BTCUSDT|1d"}
    name = "direction.BTCUSDT.4h"
    version = tracker.aliases(name)["champion"]
    tags = tracker.version_tags(name, version)
    labels = pl.read_parquet(auto_settings.artifacts_path / "labels" / "BTCUSDT" / "4h.parquet")
    live = labels.filter(
        pl.col("timestamp") > datetime.fromisoformat(tags["data_through"])
    ).drop_nulls("ret")
    assert live.height < 20
    harness.now += timedelta(days=6)
    harness.run_schedule("ohlcv_refresh_4h")
    harness.automate(DATA_SENSOR)
    labels = pl.read_parquet(auto_settings.artifacts_path / "labels" / "BTCUSDT" / "4h.parquet")
    live = labels.filter(
        (pl.col("timestamp") > datetime.fromisoformat(tags["data_through"]))
        & (pl.col("t1") <= harness.now)
        & pl.col("ret").is_not_null()
    )
    assert live.height >= 20
    # predictions that went long exactly when the trade lost, and stayed out when it won
    wrong = live.select(
        pl.lit(name).alias("model_name"),
        pl.lit(version).alias("model_version"),
        pl.lit("BTCUSDT").alias("symbol"),
        pl.lit("4h").alias("timeframe"),
        "timestamp",
        pl.lit(5).alias("horizon"),
        pl.when(pl.col("ret") < 0).then(0.99).otherwise(0.01).alias("prob_up"),
        pl.lit("x").alias("mlflow_run_id"),
    )
    store.write_predictions(wrong)
    degraded = harness.tick_sensor("retrain_sensor")
    assert [r.partition_key for r in degraded] == ["BTCUSDT|4h"]
    assert degraded[0].tags[RUN_TAG_REASONS] == "degradation"
    assert degraded[0].tags[RUN_TAG_MODE] == "complete"
    alerts = store.alerts()
    assert alerts.filter(pl.col("kind") == "degradation").height == 1
    assert "live hit rate 0" in alerts["message"][0]
    assert harness.tick_sensor("retrain_sensor") == []


def test_nightly_retrain_is_one_backfill_of_flagged_partitions(instance, auto_settings) -> None:
    harness = Harness(auto_settings, instance, MONDAY + timedelta(hours=1))
    _bootstrap(harness, ["BTCUSDT", "SPY"])
    first = harness.defs.get_sensor_def("nightly_retrain")
    with dg.build_sensor_context(
        instance=instance, definitions=harness.defs, resources=harness.defs.resources
    ) as context:
        started = first.evaluate_tick(context)
    assert not started.run_requests and started.cursor == (MONDAY - timedelta(hours=22)).isoformat()
    harness.cursors["nightly_retrain"] = started.cursor

    harness.now = MONDAY + timedelta(hours=1, minutes=59)
    assert harness.tick_sensor("nightly_retrain") == []  # 02:00 has not come yet
    harness.now = MONDAY + timedelta(hours=2, minutes=1)
    # a retrain of SPY|1d is still running (e.g. from the retrain sensor): not requested again
    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id="running-retrain",
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": "SPY|1d", "quant_assets/retrain_trigger": "retrain_sensor"},
        )
    )
    with dg.build_sensor_context(
        instance=instance,
        cursor=harness.cursors["nightly_retrain"],
        definitions=harness.defs,
        resources=harness.defs.resources,
    ) as context:
        tick = harness.defs.get_sensor_def("nightly_retrain").evaluate_tick(context)
    requests = list(tick.run_requests)
    assert len(requests) == 1
    subset = requests[0].asset_graph_subset
    assert subset is not None  # a backfill, batched by the assets' BackfillPolicy
    assert {
        (k.asset_key.to_user_string(), str(k.partition_key))
        for k in subset.iterate_asset_partitions()
    } == {
        (asset, partition)
        for asset in ("challenger_model", "champion_challenger_evaluation")
        for partition in ("BTCUSDT|4h", "SPY|4h", "BTCUSDT|1d")
    }
    assert requests[0].tags["quant_assets/retrain_trigger"] == "nightly_retrain"
    assert requests[0].tags[RUN_TAG_MODE] == "auto"
    graph = harness.defs.resolve_asset_graph()
    policy = graph.get(dg.AssetKey("challenger_model")).backfill_policy
    assert policy == PARTITION_BATCH and policy.max_partitions_per_run >= 1


def _batched_retrain(harness: Harness, gates: dict) -> dg.ExecuteInProcessResult:
    """One run over BTCUSDT|4h..ETHUSDT|4h, as a retrain backfill batches them."""
    defs = harness.defs
    return dg.materialize(
        assets=list(defs.assets),
        selection=dg.AssetSelection.assets("challenger_model", "champion_challenger_evaluation"),
        instance=harness.instance,
        resources=defs.resources,
        run_config={
            "ops": {
                "challenger_model": {"config": FAST["challenger_model"]},
                "champion_challenger_evaluation": {
                    "config": gates["champion_challenger_evaluation"]
                },
            }
        },
        tags={
            "dagster/asset_partition_range_start": "BTCUSDT|4h",
            "dagster/asset_partition_range_end": "ETHUSDT|4h",
            RUN_TAG_MODE: "complete",
        },
        raise_on_error=False,
    )


def test_batched_retrain_run_evaluates_each_partition_and_promotes_only_passed_ones(
    instance, auto_settings
) -> None:
    harness = Harness(auto_settings, instance, MONDAY, asset_config={**FAST, **LENIENT})
    _bootstrap(harness, ["BTCUSDT", "ETHUSDT"])
    # gates no model can pass: both rejected, neither fails the batch run
    result = _batched_retrain(harness, STRICT)
    assert result.success
    checks = {e.partition: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"BTCUSDT|4h", "ETHUSDT|4h"}
    assert all(not e.passed and e.severity == dg.AssetCheckSeverity.WARN for e in checks.values())
    stored = {
        p: pl.read_parquet(
            auto_settings.artifacts_path / "champion_challenger_evaluation" / p / "4h.parquet"
        )["decision"][0]
        for p in ("BTCUSDT", "ETHUSDT")
    }
    assert stored == {"BTCUSDT": "reject", "ETHUSDT": "reject"}
    harness.automate(MODEL_SENSOR)
    assert not [r for r in harness.launched if "champion" in r["assets"]]

    # the same batch with lenient gates: the model sensor promotes exactly the passed partitions
    harness.now += timedelta(hours=1)
    result = _batched_retrain(harness, LENIENT)
    assert result.success
    passed = {e.partition for e in result.get_asset_check_evaluations() if e.passed}
    assert passed, "lenient gates: at least one partition passes"
    requested = harness.automate(MODEL_SENSOR)
    assert requested["champion"] == passed
    store = TradingStore(sql_url_for("", auto_settings.artifacts_path))
    history = store.promotion_history().sort("id")
    assert history["action"].to_list()[:2] == ["reject", "reject"]
    promoted = history.filter(pl.col("action") == "promote")
    assert {f"{r['symbol']}|{r['timeframe']}" for r in promoted.iter_rows(named=True)} == passed


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_run_failure_sensor_records_an_alert_and_posts_the_webhook(
    instance, project_dir, mlflow_uri, monkeypatch
) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    try:
        monkeypatch.setenv("QUANT_ASSETS_SOURCE", f"files:{project_dir / 'no_such_dir'}")
        monkeypatch.setenv(
            "QUANT_ASSETS_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook"
        )
        settings = load_settings()
        register(instance, "BTCUSDT")
        harness = Harness(settings, instance, MONDAY)
        defs = harness.defs
        result = dg.materialize(
            assets=list(defs.assets),
            selection=dg.AssetSelection.assets("ohlcv"),
            partition_key="BTCUSDT|4h",
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        failure = next(
            e
            for e in instance.all_logs(result.run_id)
            if e.dagster_event and e.dagster_event.event_type == dg.DagsterEventType.RUN_FAILURE
        )
        context = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alerts",
            dagster_event=failure.dagster_event,
            dagster_instance=instance,
            dagster_run=run,
            resources=defs.resources,
        ).for_run_failure()
        defs.get_sensor_def("run_failure_alerts")(context)
    finally:
        server.shutdown()
    alerts = TradingStore(sql_url_for("", settings.artifacts_path)).alerts()
    assert alerts.height == 1
    row = alerts.row(0, named=True)
    assert row["kind"] == "run_failure" and row["severity"] == "error"
    assert (row["symbol"], row["timeframe"]) == ("BTCUSDT", "4h")
    details = json.loads(row["details_json"])
    assert details["run_id"] == result.run_id and "ohlcv" in details["failed_steps"][0]
    assert "no_such_dir" in details["failed_steps"][0]
    assert len(_Hook.received) == 1 and _Hook.received[0]["kind"] == "run_failure"


def test_simulated_week_retrains_and_promotes_exactly_as_the_rules_say(
    instance, auto_settings, monkeypatch
) -> None:
    """Monday to Monday, BTCUSDT at 4h and 1d. Every day at 00:05 fresh bars arrive (the
    schedules), the data follows (automation), the retrain sensor and model automation tick; the
    nightly retrain at 02:00 and the weekly complete retrain on Sunday 03:00 tick too. Expected,
    from the rules (min_new_samples=30, gates lenient until Sunday 03:00, then strict):
    Mon 00:05: no models -> 4h v1.0 and 1d v1.0, complete (retrain sensor); 4h promoted, 1d
      promoted too (lenient gates; its hold-out trades short as well as long).
    Sun 02:00: 30 labelled 4h bars newer than v1.0's data -> 4h v1.1 incremental (nightly),
      promoted. 1d has 6 new bars: nothing.
    Sun 03:00: weekly complete retrain of both -> v2.0 each, rejected by the strict gates: the
      4h champion stays v1.1. Nothing else: no duplicate requests, no other retrain."""
    # 30 new labelled 4h bars (5 days) call for a retrain; 24 of them are new development rows
    monkeypatch.setenv("QUANT_ASSETS_MIN_NEW_SAMPLES", "30")
    auto_settings = load_settings()
    # the daemon starts on Sunday 04:00, after that week's complete retrain tick
    harness = Harness(
        auto_settings, instance, MONDAY - timedelta(hours=20), asset_config={**FAST, **LENIENT}
    )
    _bootstrap(harness, ["BTCUSDT"])
    for name in ("nightly_retrain", "weekly_complete_retrain"):  # the daemon starts the sensors
        assert harness.tick_sensor(name) == []
    harness.automate(DATA_SENSOR)
    harness.automate(MODEL_SENSOR)

    name = "direction.BTCUSDT.4h"
    tracker = Tracker(auto_settings.mlflow_uri)
    day = MONDAY
    while day <= MONDAY + timedelta(days=7):
        harness.now = day + timedelta(minutes=5)
        harness.run_schedule("ohlcv_refresh_4h")
        harness.run_schedule("ohlcv_refresh_1d")
        harness.automate(DATA_SENSOR)
        harness.tick_sensor("retrain_sensor")
        harness.automate(MODEL_SENSOR)
        harness.now += timedelta(seconds=30)  # the next tick sees what those runs materialized
        harness.automate(MODEL_SENSOR)
        for hour, sensor in ((2, "nightly_retrain"), (3, "weekly_complete_retrain")):
            if (day.weekday(), hour) == (6, 3):  # a stricter risk policy from Sunday 03:00
                harness.asset_config = {**FAST, **STRICT}
            harness.now = day + timedelta(hours=hour, minutes=1)
            harness.tick_sensor(sensor)
            harness.automate(MODEL_SENSOR)
            # the sensor ticks again (every 30 s in a deployment) after the runs it launched
            harness.now += timedelta(seconds=30)
            harness.automate(MODEL_SENSOR)
        day += timedelta(days=1)

    failed = [r for r in harness.launched if r["status"] == "failed"]
    assert not failed, failed
    # the volatility agent is refitted by model automation once a day for each partition: at the
    # first tick after 02:00 at which its bars were updated since (on_cron), i.e. after the next
    # refresh; and a champion serves
    refits = [r for r in harness.launched if "volatility_model" in r["assets"]]
    assert {r["by"] for r in refits} == {MODEL_SENSOR}
    for partition in ("BTCUSDT|4h", "BTCUSDT|1d"):
        days = [r["at"].date() for r in refits if r["partition"] == partition]
        assert len(days) >= 6 and len(days) == len(set(days)), (partition, days)
        assert all((b - a).days == 1 for a, b in zip(days, days[1:], strict=False)), days
    assert "champion" in tracker.aliases("volatility.BTCUSDT.4h")
    versions = _versions(auto_settings.mlflow_uri, name)
    assert [(v["version_label"], v["retrain_mode"], v["retrain_reasons"]) for v in versions] == [
        ("v1.0", "complete", "no_model"),
        ("v1.1", "incremental", "new_samples"),
        ("v2.0", "complete", "scheduled"),
    ]
    assert versions[1]["base_version"] == "1"
    daily = _versions(auto_settings.mlflow_uri, "direction.BTCUSDT.1d")
    assert [(v["version_label"], v["retrain_reasons"]) for v in daily] == [
        ("v1.0", "no_model"),
        ("v2.0", "scheduled"),
    ]
    assert tracker.aliases(name)["champion"] == "2"
    assert tracker.aliases("direction.BTCUSDT.1d")["champion"] == "1"
    history = TradingStore(sql_url_for("", auto_settings.artifacts_path)).promotion_history()
    direction = history.filter(history["model_name"].str.starts_with("direction."))
    assert direction.sort("id").select("timeframe", "version", "action").rows() == [
        ("1d", "1", "promote"),
        ("4h", "1", "promote"),
        ("4h", "2", "promote"),
        ("1d", "2", "reject"),
        ("4h", "3", "reject"),
    ]
    retrains = [r for r in harness.launched if "challenger_model" in r["assets"]]
    assert [(r["by"], r["at"].isoformat(), r["partition"]) for r in retrains] == [
        ("retrain_sensor", "2026-06-01T00:05:00+00:00", "BTCUSDT|4h"),
        ("retrain_sensor", "2026-06-01T00:05:00+00:00", "BTCUSDT|1d"),
        ("nightly_retrain", "2026-06-07T02:01:00+00:00", "BTCUSDT|4h"),
        ("weekly_complete_retrain", "2026-06-07T03:01:00+00:00", "BTCUSDT|1d"),
        ("weekly_complete_retrain", "2026-06-07T03:01:00+00:00", "BTCUSDT|4h"),
    ]
    # the model-health view explains each partition at the end of the week
    harness.execute(harness.defs, [dg.AssetKey("model_health")], None, {}, "test")
    health = {
        row["partition"]: row
        for row in pl.read_parquet(auto_settings.artifacts_path / "model_health.parquet").iter_rows(
            named=True
        )
    }
    assert set(health) == {"BTCUSDT|4h", "BTCUSDT|1d"}
    four = health["BTCUSDT|4h"]
    assert (four["role"], four["version"], four["label"]) == ("champion", "2", "v1.1")
    assert four["last_promotion"].startswith("reject v3 ")
    assert four["hit_rate_train"] is not None and four["age_days"] is not None
    daily = health["BTCUSDT|1d"]
    assert (daily["role"], daily["version"], daily["label"]) == ("champion", "1", "v1.0")
    # `champion` records every evaluation's decision (promote or keep), right after it
    decisions = [
        (r["at"].isoformat(), r["partition"])
        for r in harness.launched
        if r["assets"] == ["champion"]
    ]
    assert sorted(decisions) == sorted((r["at"].isoformat(), r["partition"]) for r in retrains)
