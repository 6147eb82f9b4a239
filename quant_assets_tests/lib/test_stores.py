"""The trading store on SQLite and on a real PostgreSQL server: append-only log, idempotent upserts,
UTC round trips and frame validation."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.signals import make_signals
from quant_assets.lib.stores import TradingStore, sql_url_for
from quant_assets_tests.services import temporary_postgres_database

T0 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TradingStore]:
    if request.param == "sqlite":
        trading = TradingStore(sql_url_for(None, tmp_path / "artifacts"))
        yield trading
        trading.dispose()
        return
    with temporary_postgres_database("qa_test_stores") as url:
        trading = TradingStore(url)
        yield trading
        trading.dispose()


def signals_frame(n: int, prob_shift: float = 0.0, start: datetime = T0) -> pl.DataFrame:
    rng = np.random.default_rng(11)
    ts = pl.datetime_range(start, start + timedelta(hours=n - 1), "1h", eager=True, time_zone="UTC")
    close = rng.uniform(90, 110, n)
    signals = make_signals(ts, close, rng.uniform(0.5, 2, n), rng.uniform(0, 1, n) + prob_shift)
    return signals.with_columns(
        symbol=pl.lit("BTCUSDT"),
        timeframe=pl.lit("1h"),
        model_name=pl.lit("lgbm"),
        model_version=pl.lit("3"),
        mlflow_run_id=pl.lit("run-a"),
    )


def predictions_frame(version: str, probs: list[float]) -> pl.DataFrame:
    n = len(probs)
    return pl.DataFrame(
        {
            "model_name": "lgbm",
            "model_version": version,
            "symbol": "SPY",
            "timeframe": "1d",
            "timestamp": pl.Series(
                [T0 + timedelta(days=i) for i in range(n)], dtype=pl.Datetime("us", "UTC")
            ),
            "horizon": 5,
            "prob_up": probs,
        }
    )


def test_sql_url_for(tmp_path: Path) -> None:
    assert sql_url_for(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/trading.db"
    assert sql_url_for("", tmp_path) == f"sqlite:///{tmp_path.resolve()}/trading.db"
    assert (
        sql_url_for("postgres://u:p@h:5433/db", tmp_path) == "postgresql+psycopg2://u:p@h:5433/db"
    )
    assert sql_url_for("postgresql://h/db", tmp_path) == "postgresql+psycopg2://h/db"
    assert sql_url_for("sqlite:////x/y.db", tmp_path) == "sqlite:////x/y.db"
    assert sql_url_for("postgresql+psycopg://h/db", tmp_path) == "postgresql+psycopg://h/db"


def test_promotion_log_appends_in_order_and_survives_reopening(store: TradingStore) -> None:
    first = store.log_promotion(
        model_name="lgbm",
        symbol="BTCUSDT",
        timeframe="1h",
        version="1",
        action="promote",
        decided_by="gates",
        reason="all 5 gates pass",
        gates={"gate.sortino": "1.53 >= 1.2: pass"},
        dagster_run_id="run-1",
        decided_at=datetime(2024, 5, 1, 12, tzinfo=UTC),
    )
    second = store.log_promotion(
        model_name="lgbm",
        symbol="BTCUSDT",
        timeframe="1h",
        version=2,
        prior_version=1,
        action="reject",
        decided_by="gates",
        reason="failed ece",
        # earlier wall-clock time than the first entry: the log orders by insertion, not by clock
        decided_at=datetime(2024, 4, 1, tzinfo=UTC),
    )
    store.log_promotion(
        model_name="other",
        symbol="SPY",
        timeframe="1d",
        version="7",
        action="manual_promote",
        decided_by="cli",
    )
    assert second > first
    reopened = TradingStore(store.url)
    history = reopened.promotion_history("lgbm")
    reopened.dispose()
    assert history["id"].to_list() == [first, second]
    assert history["version"].to_list() == ["1", "2"]
    assert history["prior_version"].to_list() == [None, "1"]
    assert history["action"].to_list() == ["promote", "reject"]
    assert history["decided_at"].to_list() == [
        datetime(2024, 5, 1, 12, tzinfo=UTC),
        datetime(2024, 4, 1, tzinfo=UTC),
    ]
    assert history.schema["decided_at"] == pl.Datetime("us", "UTC")
    assert json.loads(history["gates_json"][0]) == {"gate.sortino": "1.53 >= 1.2: pass"}
    assert history["dagster_run_id"].to_list() == ["run-1", None]
    assert store.promotion_history().height == 3
    assert store.promotion_history(symbol="SPY")["decided_by"].to_list() == ["cli"]
    with pytest.raises(ValueError, match="'demote' is not one of"):
        store.log_promotion(
            model_name="lgbm",
            symbol="BTCUSDT",
            timeframe="1h",
            version="3",
            action="demote",
            decided_by="gates",
        )
    assert store.promotion_history().height == 3


def test_writing_signals_twice_updates_in_place(store: TradingStore) -> None:
    frame = signals_frame(500)
    assert store.write_signals(frame) == 500
    created = store.read_signals()["created_at"]
    # Rewrite the last 100 bars with other probabilities and 50 new bars after them.
    again = signals_frame(150, prob_shift=0.3, start=T0 + timedelta(hours=400))
    assert store.write_signals(again) == 150
    stored = store.read_signals(symbol="BTCUSDT", timeframe="1h")
    assert stored.height == 550
    assert stored["timestamp"].is_unique().all()
    expected = pl.concat([frame.head(400), again]).sort("timestamp")
    for column in ("prob_up", "side", "strength", "entry_price", "stop_loss", "take_profit"):
        assert stored[column].to_list() == expected[column].to_list(), column
    # created_at records the first write of a key
    assert stored["created_at"].head(500).to_list() == created.to_list()
    assert store.read_signals(symbol="ETHUSDT").is_empty()


def test_predictions_are_unique_per_model_version(store: TradingStore) -> None:
    store.write_predictions(predictions_frame("1", [0.6, 0.4]))
    store.write_predictions(predictions_frame("2", [0.7, 0.3]))
    store.write_predictions(predictions_frame("1", [0.65, 0.45]))
    stored = store.read_predictions(model_name="lgbm")
    assert stored.height == 4
    assert stored.select("model_version", "prob_up").rows() == [
        ("1", 0.65),
        ("1", 0.45),
        ("2", 0.7),
        ("2", 0.3),
    ]
    assert store.read_predictions(model_version="2")["prob_up"].to_list() == [0.7, 0.3]


def test_read_back_types_and_utc_timestamps(store: TradingStore) -> None:
    frame = signals_frame(3).with_columns(
        pl.col("timestamp").dt.convert_time_zone("America/New_York").dt.cast_time_unit("ns")
    )
    store.write_signals(frame)
    stored = store.read_signals()
    assert stored.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert stored.schema["created_at"] == pl.Datetime("us", "UTC")
    assert stored.schema["side"] == pl.Int64 and stored.schema["prob_up"] == pl.Float64
    assert stored["timestamp"].to_list() == [T0 + timedelta(hours=i) for i in range(3)]
    assert stored["mlflow_run_id"].to_list() == ["run-a"] * 3
    assert stored.columns[:4] == ["id", "symbol", "timeframe", "timestamp"]


def test_frames_are_validated_before_writing(store: TradingStore) -> None:
    frame = signals_frame(5)
    with pytest.raises(DataValidationError, match="missing column.*model_version"):
        store.write_signals(frame.drop("model_version"))
    bad = frame.with_columns(
        symbol=pl.when(pl.int_range(pl.len()) == 3).then(None).otherwise(pl.col("symbol"))
    )
    with pytest.raises(DataValidationError, match="null or NaN in column symbol at row 3"):
        store.write_signals(bad)
    nan_prob = frame.with_columns(prob_up=pl.Series([0.5, 0.6, float("nan"), 0.1, 0.2]))
    with pytest.raises(DataValidationError, match="column prob_up at row 2"):
        store.write_signals(nan_prob)
    with pytest.raises(DataValidationError, match=r"duplicate key .* at row 0"):
        store.write_signals(pl.concat([frame.head(1), frame]))
    with pytest.raises(DataValidationError, match="time-zone aware"):
        store.write_signals(frame.with_columns(pl.col("timestamp").dt.replace_time_zone(None)))
    assert store.read_signals().is_empty()
    assert store.write_predictions(predictions_frame("1", [0.5]).head(0)) == 0


def test_alerts_round_trip(store: TradingStore) -> None:
    first = store.record_alert(
        severity="warning",
        kind="stale_data",
        message="no new bar for 3h",
        symbol="BTCUSDT",
        timeframe="1h",
        details={"lag_hours": 3},
    )
    store.record_alert(severity="error", kind="drift", message="PSI 0.4")
    alerts = store.alerts()
    assert alerts["id"].to_list()[0] == first
    assert alerts.select("severity", "kind", "symbol").rows() == [
        ("warning", "stale_data", "BTCUSDT"),
        ("error", "drift", None),
    ]
    assert json.loads(alerts["details_json"][0]) == {"lag_hours": 3}
    assert alerts.schema["raised_at"] == pl.Datetime("us", "UTC")
    with pytest.raises(ValueError, match="severity 'fatal'"):
        store.record_alert(severity="fatal", kind="x", message="y")


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    store = TradingStore(sql_url_for(None, tmp_path))
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    store.dispose()
    # WAL is a property of the file, visible to any other connection.
    with sqlite3.connect(tmp_path / "trading.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_shared_store_is_opened_once_per_process_and_url(tmp_path: Path) -> None:
    """`TradingStore.shared` opens a URL's store once per process (the assets ask for it per
    partition); another URL, another process or a SQLite file deleted since get a store of their
    own, with their tables created."""
    url = sql_url_for(None, tmp_path / "a")
    first = TradingStore.shared(url)
    assert TradingStore.shared(url) is first
    other = TradingStore.shared(sql_url_for(None, tmp_path / "b"))
    assert other is not first
    first.write_signals(signals_frame(3))
    assert TradingStore.shared(url).read_signals().height == 3
    # a forked child opens its own (its engine holds no connection of the parent's either)
    assert _in_forked_child(lambda: _shared_store_rows(url, id(first))) == [3, False]
    # the file removed behind the process's back: opened again, tables and all
    (tmp_path / "a" / "trading.db").unlink()
    again = TradingStore.shared(url)
    assert again is not first and again.read_signals().height == 0
    again.write_signals(signals_frame(2))
    assert TradingStore.shared(url) is again and again.read_signals().height == 2


def _shared_store_rows(url: str, parent_id: int) -> list:
    """In the child: the signal rows its shared store sees (plain SQL: polars' thread pool is
    not safe to use after a fork) and whether it is the parent's store object."""
    store = TradingStore.shared(url)
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT COUNT(*) FROM agent_signals").scalar()
    return [rows, id(store) == parent_id]


def _in_forked_child(work, timeout: float = 60.0):
    """`work()` in a child made by os.fork, its JSON result read from a pipe; the child is
    killed and the test fails if it has not answered within `timeout` seconds."""
    import json
    import os
    import select
    import signal

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, json.dumps(work()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"the forked child did not answer within {timeout:.0f} s")
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the forked child failed: {status}"
    return json.loads(data)
