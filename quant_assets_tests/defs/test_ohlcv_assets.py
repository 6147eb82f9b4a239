"""`ohlcv` through real Dagster runs: the IO manager, incremental refresh, checks and failures."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from quant_assets.definitions import build_defs
from quant_assets.defs.io import partition_path
from quant_assets.defs.ohlcv import integrity_result, ohlcv
from quant_assets.defs.partitions import partition_key
from quant_assets.defs.resources import resources_from_settings
from quant_assets.lib.settings import load_settings
from quant_assets.lib.storage import read_parquet, write_parquet_atomic
from quant_assets_tests.defs.conftest import register


def _materialize(instance, settings, key: str, raise_on_error: bool = True):
    return dg.materialize(
        [ohlcv],
        partition_key=key,
        instance=instance,
        resources=resources_from_settings(settings),
        raise_on_error=raise_on_error,
    )


def test_definitions_load_with_every_asset_partitioned(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert "ohlcv" in keys
    assert graph.get(dg.AssetKey("ohlcv")).partitions_def is not None
    checks = {k.name for k in graph.asset_check_keys}
    assert {"ohlcv_integrity", "ohlcv_gaps", "ohlcv_freshness"} <= checks
    assert defs.resolve_sensor_def("watchlist_sensor") is not None


def test_materialize_several_partitions_writes_parquet_and_metadata(
    instance, settings, project_dir: Path
) -> None:
    register(instance, "BTCUSDT", "SPY")
    frames = {}
    for symbol in ("BTCUSDT", "SPY"):
        for tf in ("1h", "4h", "1d"):
            result = _materialize(instance, settings, partition_key(symbol, tf))
            assert result.success
            mat = result.asset_materializations_for_node("ohlcv")[0]
            assert mat.metadata["dagster/row_count"].value > 100
            assert {"first_bar", "last_bar", "preview", "source", "data_version"} <= set(
                mat.metadata
            )
            checks = result.get_asset_check_evaluations()
            assert {c.check_name for c in checks} == {
                "ohlcv_integrity",
                "ohlcv_gaps",
                "ohlcv_freshness",
            }
            assert all(c.passed for c in checks), [(c.check_name, c.metadata) for c in checks]
            path = project_dir / "artifacts" / "ohlcv" / symbol / f"{tf}.parquet"
            frames[symbol, tf] = read_parquet(path)
    # a 4h bar aggregates its 1h bars; equity bars never fall on weekends
    h1, h4 = frames["BTCUSDT", "1h"], frames["BTCUSDT", "4h"]
    first4 = h4.row(0, named=True)
    parts = h1.filter(
        (pl.col("timestamp") >= first4["timestamp"])
        & (pl.col("timestamp") < first4["timestamp"] + pl.duration(hours=4))
    )
    assert first4["open"] == parts["open"][0] and first4["close"] == parts["close"][-1]
    assert first4["high"] == parts["high"].max() and first4["volume"] == pytest.approx(
        parts["volume"].sum()
    )
    assert frames["SPY", "1d"]["timestamp"].dt.weekday().max() <= 5
    # the run is recorded on the instance with its partition
    records = instance.fetch_materializations(dg.AssetKey("ohlcv"), limit=100).records
    assert {r.partition_key for r in records} >= {"BTCUSDT|1h", "SPY|1d"}


def test_rematerializing_is_idempotent_and_incremental(
    instance, settings, project_dir: Path
) -> None:
    register(instance, "ETHUSDT")
    key = partition_key("ETHUSDT", "1h")
    path = project_dir / "artifacts" / "ohlcv" / "ETHUSDT" / "1h.parquet"
    _materialize(instance, settings, key)
    full = read_parquet(path)
    # drop the last 30 bars as if they had not existed at the last run
    write_parquet_atomic(full.head(full.height - 30), path)
    result = _materialize(instance, settings, key)
    meta = result.asset_materializations_for_node("ohlcv")[0].metadata
    assert meta["new_rows"].value == 30 and meta["full_reload"].value is False
    assert read_parquet(path).equals(full)
    result = _materialize(instance, settings, key)
    assert result.asset_materializations_for_node("ohlcv")[0].metadata["new_rows"].value == 0
    assert read_parquet(path).equals(full)


def test_integrity_check_fails_on_planted_corruption(instance, settings, project_dir: Path) -> None:
    register(instance, "BTCUSDT")
    _materialize(instance, settings, partition_key("BTCUSDT", "1d"))
    path = partition_path(project_dir / "artifacts", dg.AssetKey("ohlcv"), "BTCUSDT|1d")
    good = read_parquet(path)
    assert integrity_result(good, "1d").passed
    # corruption on disk, as another tool or a bad manual edit would leave it
    corrupt = good.with_columns(
        pl.when(pl.int_range(pl.len()) == 10)
        .then(pl.col("low") * 0.5)
        .otherwise(pl.col("high"))
        .alias("high"),
    )
    corrupt = pl.concat([corrupt, corrupt.tail(1)])
    result = integrity_result(corrupt, "1d")
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert result.metadata["duplicates"].value == 1
    assert result.metadata["ohlc_inconsistent"].value == 1
    assert "duplicates: 1" in result.description


def test_gap_and_freshness_checks_warn_in_a_real_run(
    project_dir: Path, monkeypatch, instance
) -> None:
    data = project_dir / "data"
    data.mkdir()
    days = [
        d for d in range(1, 30) if d not in (4, 5, 11, 12, 18, 19, 25, 26)
    ]  # weekdays of 2025-01
    days.remove(15)  # a missing trading day
    (data / "SPY.csv").write_text(
        "date,open,high,low,close,volume\n"
        + "".join(f"2025-01-{d:02d},10,11,9,10.5,100\n" for d in days)
    )
    monkeypatch.setenv("QUANT_ASSETS_SOURCE", f"files:{data}")
    register(instance, "SPY")
    result = _materialize(instance, load_settings(), partition_key("SPY", "1d"))
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["ohlcv_integrity"].passed
    gaps = checks["ohlcv_gaps"]
    assert not gaps.passed and gaps.severity == dg.AssetCheckSeverity.WARN
    assert gaps.metadata["missing_bars"].value == 1
    assert gaps.metadata["first_missing"].value.startswith("2025-01-15")
    fresh = checks["ohlcv_freshness"]
    assert not fresh.passed and fresh.metadata["staleness_hours"].value > 24 * 300


def test_timeframe_finer_than_source_fails_with_a_clear_message(
    instance, project_dir: Path, monkeypatch
) -> None:
    data = project_dir / "data"
    data.mkdir()
    days = "".join(f"2025-03-{d:02d},100,101,99,100,1000\n" for d in range(3, 29))
    (data / "SPY.csv").write_text("date,open,high,low,close,volume\n" + days)
    monkeypatch.setenv("QUANT_ASSETS_SOURCE", f"files:{data}")
    register(instance, "SPY")
    result = _materialize(instance, load_settings(), partition_key("SPY", "1h"), False)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    text = str(error.cause.message if error.cause else error.message)
    assert "1h" in text and "finer" in text


def test_broken_file_fails_and_keeps_the_good_stored_data(
    project_dir: Path, monkeypatch, instance
) -> None:
    data = project_dir / "data"
    data.mkdir()
    good = "Date,Open,High,Low,Close,Adj Close,Volume\n" + "".join(
        f"2024-01-{d:02d},{100 + d},{101 + d},{99 + d},{100.5 + d},{100.4 + d},{1000 + d}\n"
        for d in range(1, 11)
    )
    (data / "SPY.csv").write_text(good)
    monkeypatch.setenv("QUANT_ASSETS_SOURCE", f"files:{data}")
    settings = load_settings()
    register(instance, "SPY")
    key = partition_key("SPY", "1d")
    assert _materialize(instance, settings, key).success
    stored = partition_path(project_dir / "artifacts", dg.AssetKey("ohlcv"), "SPY|1d")
    before = read_parquet(stored)
    assert before.height == 10
    (data / "SPY.csv").write_text(good + "2024-01-11,105,104,106,105,105,900\n")  # high < low
    result = _materialize(instance, settings, key, raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    message = error.cause.message if error.cause else error.message
    assert "SPY.csv" in message and "high" in message.lower()
    assert read_parquet(stored).equals(before)
    assert build_defs(settings).resolve_asset_graph() is not None
