"""The PostgreSQL source against a real server, in a database created for this module and dropped after."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import polars as pl
import pytest
import sqlalchemy as sa

from quant_assets.lib.calendars import CRYPTO_24_7, US_EQUITY
from quant_assets.lib.errors import DataValidationError, InvalidTimeframeError, UnknownSymbolError
from quant_assets.lib.ohlcv import bars_for_timeframe, resample_bars
from quant_assets.lib.sources import PostgresSource, source_from_spec
from quant_assets.lib.sources.postgres import DEFAULT_TABLE, ensure_table, write_bars
from quant_assets.lib.sources.synthetic import synthetic_bars
from quant_assets_tests.services import (
    REQUIRE_SERVICES_VAR,
    postgres_admin_url,
    require_service,
    temporary_postgres_database,
)

pytestmark = pytest.mark.postgres

START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2024, 1, 15, tzinfo=UTC)
BTC = synthetic_bars("BTCUSDT", 5, START, END, "1h")
SPY = synthetic_bars("SPY", 5, START, END, "1h")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with temporary_postgres_database("qa_test_source") as database_url:
        ensure_table(database_url)
        write_bars(database_url, DEFAULT_TABLE, "BTCUSDT", "1h", BTC)
        write_bars(database_url, DEFAULT_TABLE, "SPY", "1h", SPY)
        yield database_url


def insert_rows(url: str, table: str, rows: list[dict[str, object]]) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                f"INSERT INTO {table} VALUES "
                "(:symbol, :timeframe, :timestamp, :open, :high, :low, :close, :volume)"
            ),
            rows,
        )
    engine.dispose()


def test_bars_round_trip_exactly(url: str) -> None:
    source = PostgresSource(url)
    assert source.list_symbols() == ["BTCUSDT", "SPY"]
    assert source.native_timeframes("btc/usdt") == ["1h"]
    btc = source.load_bars("BTCUSDT", "1h")
    assert btc.frame.equals(BTC)
    assert btc.calendar == CRYPTO_24_7
    spy = source.load_bars("SPY", "1h")
    assert spy.frame.equals(SPY)
    assert spy.calendar == US_EQUITY


def test_since_and_resampling(url: str) -> None:
    source = source_from_spec(f"postgres:{url}")
    since = datetime(2024, 1, 10, 5, 30, tzinfo=UTC)
    tail = source.load_bars("BTCUSDT", "1h", since=since).frame
    assert tail.equals(BTC.filter(pl.col("timestamp") >= since))
    assert source.load_bars("BTCUSDT", "1h", since=END).frame.is_empty()
    four_hourly = bars_for_timeframe(source, "SPY", "4h").frame
    assert four_hourly.equals(resample_bars(SPY, "1h", "4h", US_EQUITY))


def test_write_bars_replaces_the_range_it_covers(url: str) -> None:
    source = PostgresSource(url)
    revised = BTC.tail(10).with_columns(close=pl.col("close") * 1.001, high=pl.col("high") * 1.001)
    assert write_bars(url, DEFAULT_TABLE, "BTCUSDT", "1h", revised) == 10
    assert write_bars(url, DEFAULT_TABLE, "BTCUSDT", "1h", revised) == 10  # again: same result
    assert source.load_bars("BTCUSDT", "1h").frame.equals(
        pl.concat([BTC.head(BTC.height - 10), revised])
    )
    write_bars(url, DEFAULT_TABLE, "BTCUSDT", "1h", BTC.tail(10))
    assert source.load_bars("BTCUSDT", "1h").frame.equals(BTC)


def test_write_bars_validates_first(url: str) -> None:
    bad = BTC.head(5).with_columns(low=pl.col("high") * 2)
    with pytest.raises(
        DataValidationError,
        match="bars to write for symbol ETHUSDT timeframe 1h: high < low at row 0",
    ):
        write_bars(url, DEFAULT_TABLE, "ETHUSDT", "1h", bad)
    assert "ETHUSDT" not in PostgresSource(url).list_symbols()


def test_stored_spellings_are_normalised_and_bad_rows_named(url: str) -> None:
    ensure_table(url, "public.raw_bars")
    rows = BTC.head(6).with_columns(symbol=pl.lit("ETH/USDT"), timeframe=pl.lit("1h"))
    rows = rows.with_columns(
        high=pl.when(pl.int_range(pl.len()) == 4).then(pl.col("low") / 2).otherwise("high")
    )
    insert_rows(url, "public.raw_bars", rows.to_dicts())
    source = PostgresSource(url, table="public.raw_bars")
    assert source.list_symbols() == ["ETHUSDT"]
    with pytest.raises(DataValidationError) as caught:
        source.load_bars("ETHUSDT", "1h")
    assert caught.value.where == "symbol ETHUSDT timeframe 1h in table public.raw_bars"
    assert (caught.value.problem, caught.value.row) == ("high < low", 4)
    insert_rows(url, "public.raw_bars", rows.with_columns(symbol=pl.lit("ETHUSDT")).to_dicts())
    with pytest.raises(
        DataValidationError,
        match=r"ETHUSDT is stored under several spellings: \['ETH/USDT', 'ETHUSDT'\]",
    ):
        source.load_bars("ETHUSDT", "1h")


def test_unknown_symbol_and_timeframe(url: str) -> None:
    source = PostgresSource(url)
    with pytest.raises(
        UnknownSymbolError,
        match=f"no rows for AAPL in table {DEFAULT_TABLE}; available symbols: BTCUSDT, SPY",
    ):
        source.load_bars("AAPL", "1h")
    with pytest.raises(InvalidTimeframeError, match="holds 1h bars, not 1d"):
        source.load_bars("SPY", "1d")
    with pytest.raises(InvalidTimeframeError, match="5m is finer than the source's data"):
        bars_for_timeframe(source, "SPY", "5m")


@pytest.mark.parametrize(
    "table", ["bars; DROP TABLE x", "a.b.c", "1bars", "trading.historical-data", ""]
)
def test_table_names_must_be_identifiers(table: str) -> None:
    with pytest.raises(ValueError, match="is not \\[schema.\\]identifier"):
        PostgresSource("postgresql://localhost/x", table=table)


def test_a_table_without_schema(url: str) -> None:
    ensure_table(url, "plain_bars")
    write_bars(url, "plain_bars", "SPY", "1h", SPY.head(14))
    assert PostgresSource(url, "plain_bars").load_bars("SPY", "1h").frame.equals(SPY.head(14))


def test_require_service_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_SERVICES_VAR, raising=False)
    with pytest.raises(
        pytest.skip.Exception, match="PostgreSQL at h:1 not reachable: OSError: refused"
    ):
        require_service("PostgreSQL at h:1", OSError("refused"))
    monkeypatch.setenv(REQUIRE_SERVICES_VAR, "1")
    with pytest.raises(
        pytest.fail.Exception, match="not reachable.*QUANT_ASSETS_REQUIRE_SERVICES=1"
    ):
        require_service("PostgreSQL at h:1", OSError("refused"))


def test_unreachable_server_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_SERVICES_VAR, raising=False)
    monkeypatch.setenv(
        "QUANT_ASSETS_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:1/postgres"
    )
    with (
        pytest.raises(pytest.skip.Exception, match="127.0.0.1:1"),
        temporary_postgres_database("qa_never"),
    ):
        pass  # pragma: no cover


def test_the_temporary_database_is_dropped() -> None:
    with temporary_postgres_database("qa_drop") as database_url:
        name = sa.engine.make_url(database_url).database
        assert name.startswith("qa_drop_")
    admin = sa.create_engine(postgres_admin_url(), poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        query = sa.text("SELECT 1 FROM pg_database WHERE datname = :name")
        exists = connection.execute(query, {"name": name}).first()
    admin.dispose()
    assert exists is None
