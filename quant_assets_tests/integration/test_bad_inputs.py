"""Bad inputs a new user or an operator would try: malformed files and tables, rewritten or
truncated history, future dates, broken database settings. Each is refused with an error naming
the file or symbol, the row and the field, and the stored partition stays byte-identical."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa

from quant_assets.cli import main
from quant_assets.lib.errors import (
    DataValidationError,
    HistoryConflictError,
    InvalidSourceSpecError,
    MarketDataUnavailableError,
)
from quant_assets.lib.ingest import refresh_bars
from quant_assets.lib.sources import FileSource, PostgresSource
from quant_assets.lib.sources.postgres import DEFAULT_TABLE, ensure_table, write_bars
from quant_assets.lib.sources.synthetic import synthetic_bars
from quant_assets.lib.storage import read_parquet, write_parquet_atomic
from quant_assets_tests.services import temporary_postgres_database

NOW = datetime(2024, 6, 1, tzinfo=UTC)
DAILY = synthetic_bars("SPY", 3, datetime(2016, 1, 1, tzinfo=UTC), NOW, "1d")
HEADER = "date,open,high,low,close,volume"
SECRET = "S3cretPW"


def csv_rows(frame: pl.DataFrame) -> list[str]:
    return [
        f"{r['timestamp']:%Y-%m-%d},{r['open']!r},{r['high']!r},{r['low']!r},{r['close']!r},"
        f"{r['volume']!r}"
        for r in frame.iter_rows(named=True)
    ]


GOOD = csv_rows(DAILY)


def ts(row: int) -> str:
    return DAILY["timestamp"][row].isoformat()


def edited(row: int, column: int, value: str) -> list[str]:
    """GOOD with field `column` (0 = date) of data row `row` replaced."""
    fields = GOOD[row].split(",")
    fields[column] = value
    return [*GOOD[:row], ",".join(fields), *GOOD[row + 1 :]]


def hourly_after(days: int) -> list[str]:
    """`days` daily bars, then hourly bars of the same symbol (the interval changes midway)."""
    first = DAILY["timestamp"][days]
    hourly = synthetic_bars("SPY", 4, first, first + timedelta(days=200), "1h")
    daily = [f"{line.split(',', 1)[0]} 00:00:00,{line.split(',', 1)[1]}" for line in GOOD[:days]]
    return daily + [
        f"{r['timestamp']:%Y-%m-%d %H:%M:%S},{r['open']},{r['high']},{r['low']},{r['close']},"
        f"{r['volume']}"
        for r in hourly.iter_rows(named=True)
    ]


@dataclass(frozen=True)
class Case:
    name: str
    files: dict[str, str | bytes]  # file name -> content; replaces SPY.csv
    error: type[Exception]
    message: str  # a regular expression the error message must match (re.search)


def text(lines: list[str], header: str = HEADER) -> str:
    return "\n".join([header, *lines]) + "\n"


FILE = r"[^ ]*/data/SPY\.csv"
CASES = [
    Case(
        "truncated to 300 bars",
        {"SPY.csv": text(GOOD[:300])},
        HistoryConflictError,
        rf"^SPY 1d: the source no longer has {len(GOOD) - 300} stored bar\(s\), first "
        rf"{re.escape(ts(300))} \(stored open=.*source 300 bars",
    ),
    Case(
        "truncated to 2 bars",
        {"SPY.csv": None, "SPY_1d.csv": text(GOOD[:2])},  # type: ignore[dict-item]
        HistoryConflictError,
        rf"^SPY 1d: the source no longer has {len(GOOD) - 2} stored bar\(s\), first {re.escape(ts(2))}",
    ),
    Case(
        "bars dated years in the future",
        {"SPY.csv": text(GOOD + ["2031-03-03,10,11,9,10.5,100", "2031-03-04,10,11,9,10.5,100"])},
        HistoryConflictError,
        rf"^SPY 1d: 2 bar\(s\) dated after the present, first at row {len(GOOD)}: "
        r"2031-03-03T00:00:00\+00:00 \(open=10.0, high=11.0, low=9.0, close=10.5, volume=100.0\)",
    ),
    Case(
        "interval changes from daily to hourly midway",
        {"SPY.csv": text(hourly_after(300))},
        DataValidationError,
        rf"^{FILE}: bar interval changes from 1d to 1h within the file at row 300: line 302 of "
        r"the file; rows 0-300 \(2016-01-01T00:00:00\+00:00 \.\. 2017-02-24T14:00:00\+00:00\) are "
        r"1d apart, the rest 1h",
    ),
    Case(
        "one close rewritten deep in history",
        {"SPY.csv": text(edited(100, 4, repr(DAILY["low"][100])))},
        HistoryConflictError,
        rf"^SPY 1d: the source rewrote 1 stored bar\(s\), first {re.escape(ts(100))}: close "
        rf"stored {DAILY['close'][100]!r}, new {DAILY['low'][100]!r}",
    ),
    Case(
        "a bar deleted from the middle",
        {"SPY.csv": text(GOOD[:500] + GOOD[501:])},
        HistoryConflictError,
        rf"^SPY 1d: the source no longer has 1 stored bar\(s\), first {re.escape(ts(500))}",
    ),
    Case(
        "every price halved (an unannounced split adjustment)",
        {
            "SPY.csv": text(
                csv_rows(
                    DAILY.with_columns(pl.col(c) / 2 for c in ("open", "high", "low", "close"))
                )
            )
        },
        HistoryConflictError,
        rf"^SPY 1d: the source rewrote {len(GOOD) - 1} stored bar\(s\), first {re.escape(ts(0))}: "
        "open stored",
    ),
    Case(
        "unparsable number",
        {"SPY.csv": text(edited(19, 4, "not-a-price"))},
        DataValidationError,
        rf"^{FILE}: unparsable number in column 'close' at row 19: line 21 of the file; "
        "'not-a-price'$",
    ),
    Case(
        "unparsable timestamp",
        {"SPY.csv": text(edited(7, 0, "yesterday"))},
        DataValidationError,
        rf"^{FILE}: unparsable timestamp in column 'date' at row 7: line 9 of the file; 'yesterday'",
    ),
    Case(
        "missing volume column",
        {"SPY.csv": text([r.rsplit(",", 1)[0] for r in GOOD], "date,open,high,low,close")},
        DataValidationError,
        rf"^{FILE}: missing column volume: found columns",
    ),
    Case(
        "duplicate timestamp",
        {"SPY.csv": text(GOOD[:50] + [GOOD[49]] + GOOD[50:])},
        DataValidationError,
        rf"^{FILE}: duplicate timestamp at row 50: line 52 of the file; "
        rf"{re.escape(ts(49))} already at row 49",
    ),
    Case(
        "timestamps out of order",
        {"SPY.csv": text(GOOD[:30] + [GOOD[31], GOOD[30]] + GOOD[32:])},
        DataValidationError,
        rf"^{FILE}: timestamps not increasing at row 31: line 33 of the file",
    ),
    Case(
        "high below low",
        {"SPY.csv": text(edited(12, 2, "0.5"))},
        DataValidationError,
        rf"^{FILE}: high < low at row 12: line 14 of the file; timestamp={re.escape(ts(12))}",
    ),
    Case(
        "negative price",
        {"SPY.csv": text(edited(3, 1, "-5"))},
        DataValidationError,
        rf"^{FILE}: open is not a positive number at row 3: line 5 of the file",
    ),
    Case(
        "zero price",
        {"SPY.csv": text(edited(4, 3, "0"))},
        DataValidationError,
        rf"^{FILE}: low is not a positive number at row 4: line 6 of the file",
    ),
    Case(
        "NaN close",
        {"SPY.csv": text(edited(5, 4, "nan"))},
        DataValidationError,
        rf"^{FILE}: close is not a positive number at row 5: line 7 of the file",
    ),
    Case(
        "infinite high",
        {"SPY.csv": text(edited(6, 2, "inf"))},
        DataValidationError,
        rf"^{FILE}: high is not a positive number at row 6: line 8 of the file",
    ),
    Case(
        "negative volume",
        {"SPY.csv": text(edited(8, 5, "-1"))},
        DataValidationError,
        rf"^{FILE}: volume is missing, NaN, infinite or negative at row 8: line 10 of the file",
    ),
    Case(
        "missing timestamp value",
        {"SPY.csv": text(edited(9, 0, ""))},
        DataValidationError,
        rf"^{FILE}: missing timestamp in column 'date' at row 9: line 11 of the file",
    ),
    Case(
        "ambiguous day/month date",
        {"SPY.csv": text(edited(0, 0, "01/02/2016"))},
        DataValidationError,
        rf"^{FILE}: ambiguous date in column 'date' at row 0: line 2 of the file; '01/02/2016' "
        "could be day/month or month/day",
    ),
    Case("empty file", {"SPY.csv": ""}, DataValidationError, rf"^{FILE}: empty file$"),
    Case(
        "header only",
        {"SPY.csv": HEADER + "\n"},
        DataValidationError,
        rf"^{FILE}: no data rows: columns \['date', 'open', 'high', 'low', 'close', 'volume'\]$",
    ),
    Case(
        "a single bar",
        {"SPY.csv": text(GOOD[:1])},
        DataValidationError,
        rf"^{FILE}: cannot infer the timeframe of a single bar: name the file "
        r"<SYMBOL>_<timeframe>\.csv",
    ),
    Case(
        "bars two days apart (no such timeframe)",
        {
            "SPY.csv": text(
                [
                    f"{(datetime(2016, 1, 1) + timedelta(days=2 * i)):%Y-%m-%d},10,11,9,10.5,1"
                    for i in range(50)
                ]
            )
        },
        DataValidationError,
        rf"^{FILE}: bars are typically 172800 s apart, which is none of the timeframes",
    ),
    Case(
        "two columns that read the same",
        {"SPY.csv": text([f"{r},{r.split(',')[4]}" for r in GOOD], HEADER + ",Close")},
        DataValidationError,
        rf"^{FILE}: columns 'close' and 'Close' both read as 'close'$",
    ),
    Case(
        "no timestamp column",
        {"SPY.csv": text(GOOD, "when,open,high,low,close,volume")},
        DataValidationError,
        rf"^{FILE}: missing column timestamp \(or date/datetime/time\)",
    ),
    Case(
        "the same bars in two files",
        {"SPY.csv": text(GOOD), "SPY_1d.csv": text(GOOD)},
        DataValidationError,
        r"/data: SPY 1d bars are in two files: SPY.csv and SPY_1d.csv; keep one$",
    ),
    Case(
        "a parquet file that is not Parquet",
        {"SPY.csv": None, "SPY.parquet": b"PAR1 this is not parquet"},  # type: ignore[dict-item]
        DataValidationError,
        r"/data/SPY\.parquet: unreadable parquet file: ",
    ),
]


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A data directory with a good SPY.csv and the ohlcv partition loaded from it."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "SPY.csv").write_text(text(GOOD))
    partition = tmp_path / "artifacts" / "ohlcv" / "SPY" / "1d.parquet"
    ingest(FileSource(data), partition)
    assert read_parquet(partition).equals(DAILY)
    yield data, partition


def ingest(source, partition: Path, symbol: str = "SPY", timeframe: str = "1d") -> None:
    """What the ohlcv asset does: stored partition in, refreshed partition out, nothing on error."""
    stored = read_parquet(partition) if partition.exists() else None
    result = refresh_bars(source, symbol, timeframe, stored, now=NOW)
    write_parquet_atomic(result.frame, partition)


def test_the_suite_covers_enough_distinct_cases() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 25


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_file_is_refused_and_the_stored_partition_kept(stored, case: Case) -> None:
    data, partition = stored
    before = partition.read_bytes()
    for name, content in case.files.items():
        path = data / name
        if content is None:
            path.unlink()
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    with pytest.raises(case.error) as caught:
        ingest(FileSource(data), partition)
    message = str(caught.value)
    assert re.search(case.message, message), message
    assert "\n" not in message
    assert partition.read_bytes() == before


def test_the_same_file_after_the_failures_still_loads(stored) -> None:
    data, partition = stored
    before = partition.read_bytes()
    ingest(FileSource(data), partition)
    assert partition.read_bytes() == before


# ---------------------------------------------------------------- PostgreSQL

SPY_HOURLY = synthetic_bars("SPY", 5, datetime(2024, 1, 1, tzinfo=UTC), NOW, "1h")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with temporary_postgres_database("qa_test_bad_inputs") as url:
        ensure_table(url)
        write_bars(url, DEFAULT_TABLE, "SPY", "1h", SPY_HOURLY)
        yield url


def execute(url: str, statement: str, **params: object) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(statement), params)
    engine.dispose()


def junk_row(url: str, symbol: str, close: float = 10.0, table: str = DEFAULT_TABLE) -> None:
    execute(
        url,
        f"INSERT INTO {table} VALUES (:s, '1h', '2024-02-01T00:00:00Z', 10, 11, 9, :c, 1)",
        s=symbol,
        c=close,
    )


def delete_symbol(url: str, symbol: str, table: str = DEFAULT_TABLE) -> None:
    execute(url, f"DELETE FROM {table} WHERE symbol = :s", s=symbol)


@pytest.mark.postgres
def test_other_symbols_junk_rows_never_matter(pg_url: str, tmp_path: Path) -> None:
    junk_row(pg_url, "BAD SYM")  # not a symbol at all
    junk_row(pg_url, "ETH/USDT", close=-3.0)  # a bad price of another symbol
    try:
        source = PostgresSource(pg_url)
        assert source.list_symbols() == ["ETHUSDT", "SPY"]
        partition = tmp_path / "SPY" / "1h.parquet"
        ingest(source, partition, timeframe="1h")
        assert read_parquet(partition).equals(SPY_HOURLY)
    finally:
        delete_symbol(pg_url, "BAD SYM")
        delete_symbol(pg_url, "ETH/USDT")


@dataclass(frozen=True)
class TableCase:
    name: str
    spoil: Callable[[str], None]  # spoils the database at url
    repair: Callable[[str], None]
    error: type[Exception]
    message: str
    table: str = DEFAULT_TABLE


def _add_volume(url: str, extra: float) -> None:
    execute(
        url,
        f"UPDATE {DEFAULT_TABLE} SET volume = volume + :v WHERE symbol = 'SPY' AND timestamp = :t",
        v=extra,
        t=SPY_HOURLY["timestamp"][40],
    )


TABLE_CASES = [
    TableCase(
        "a negative price of the symbol itself",
        lambda url: execute(
            url,
            f"UPDATE {DEFAULT_TABLE} SET low = -1 WHERE symbol = 'SPY' AND timestamp = :t",
            t=SPY_HOURLY["timestamp"][3],
        ),
        lambda url: write_bars(url, DEFAULT_TABLE, "SPY", "1h", SPY_HOURLY),
        DataValidationError,
        rf"^symbol SPY timeframe 1h in table {DEFAULT_TABLE}: low is not a positive number at "
        rf"row 3: timestamp={re.escape(SPY_HOURLY['timestamp'][3].isoformat())}",
    ),
    TableCase(
        "the symbol under two spellings",
        lambda url: junk_row(url, "spy"),
        lambda url: delete_symbol(url, "spy"),
        DataValidationError,
        rf"^table {DEFAULT_TABLE}: symbol SPY is stored under several spellings: "
        r"\['SPY', 'spy'\]; keep one$",
    ),
    TableCase(
        "a rewritten bar",
        lambda url: _add_volume(url, 1.0),
        lambda url: write_bars(url, DEFAULT_TABLE, "SPY", "1h", SPY_HOURLY),
        HistoryConflictError,
        rf"^SPY 1h: the source rewrote 1 stored bar\(s\), first "
        rf"{re.escape(SPY_HOURLY['timestamp'][40].isoformat())}: volume stored "
        rf"{SPY_HOURLY['volume'][40]!r}, new {SPY_HOURLY['volume'][40] + 1.0!r}",
    ),
    TableCase(
        "bars deleted from the table",
        lambda url: execute(
            url,
            f"DELETE FROM {DEFAULT_TABLE} WHERE symbol = 'SPY' AND timestamp >= :t",
            t=SPY_HOURLY["timestamp"][100],
        ),
        lambda url: write_bars(url, DEFAULT_TABLE, "SPY", "1h", SPY_HOURLY),
        HistoryConflictError,
        rf"^SPY 1h: the source no longer has {SPY_HOURLY.height - 100} stored bar\(s\)",
    ),
    TableCase(
        "a table without the volume column",
        lambda url: execute(
            url,
            "CREATE TABLE public.novolume AS SELECT symbol, timeframe, "
            f"timestamp, open, high, low, close FROM {DEFAULT_TABLE}",
        ),
        lambda url: execute(url, "DROP TABLE public.novolume"),
        MarketDataUnavailableError,
        r"^table public\.novolume at 127\.0\.0\.1:5432/qa_test_bad_inputs_\w+: column "
        r"(\w+\.)?volume does not exist.*expected columns symbol, timeframe, timestamp, open, "
        "high, low, close, volume$",
        table="public.novolume",
    ),
    TableCase(
        "a missing table",
        lambda url: None,
        lambda url: None,
        MarketDataUnavailableError,
        r"^table market\.nosuch does not exist in the database at 127\.0\.0\.1:5432/"
        r"qa_test_bad_inputs_\w+ \(set postgres_table",
        table="market.nosuch",
    ),
]


@pytest.mark.postgres
@pytest.mark.parametrize("case", TABLE_CASES, ids=[c.name for c in TABLE_CASES])
def test_bad_table_is_refused_and_the_stored_partition_kept(
    pg_url: str, tmp_path: Path, case: TableCase
) -> None:
    partition = tmp_path / "SPY" / "1h.parquet"
    ingest(PostgresSource(pg_url), partition, timeframe="1h")
    before = partition.read_bytes()
    case.spoil(pg_url)
    try:
        with pytest.raises(case.error) as caught:
            ingest(PostgresSource(pg_url, table=case.table), partition, timeframe="1h")
    finally:
        case.repair(pg_url)
    message = str(caught.value)
    assert re.search(case.message, message), message
    assert "\n" not in message
    assert partition.read_bytes() == before


def test_unreachable_server_and_invalid_table_name_are_one_line_errors() -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:1/market"
    with pytest.raises(MarketDataUnavailableError) as caught:
        PostgresSource(url).list_symbols()
    message = str(caught.value)
    assert message.startswith("PostgreSQL at 127.0.0.1:1/market is unavailable: ")
    assert SECRET not in message and "\n" not in message
    for bad in ("bars; DROP TABLE x", "a.b.c", "1bars", ""):
        with pytest.raises(InvalidSourceSpecError, match=r"is not \[schema\.\]identifier"):
            PostgresSource(url, table=bad)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"QUANT_ASSETS_SOURCE": f"postgres:postgresql://postgres:{SECRET}@127.0.0.1:1/market"},
            "error: PostgreSQL at 127.0.0.1:1/market is unavailable: ",
        ),
        (
            {
                "QUANT_ASSETS_SOURCE": "postgres:postgresql://postgres@127.0.0.1:1/market",
                "QUANT_ASSETS_POSTGRES_TABLE": "bars;drop",
            },
            "error: table name 'bars;drop' is not [schema.]identifier",
        ),
        (
            {"QUANT_ASSETS_SOURCE": f"postgress:postgresql://postgres:{SECRET}@h/db"},
            "error: unknown market data source 'postgress:postgresql://postgres:***@h/db'",
        ),
    ],
)
def test_cli_exits_2_with_one_masked_line(
    instance, project_dir: Path, monkeypatch, capsys, env: dict[str, str], expected: str
) -> None:
    from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME

    instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, ["SPY"])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["materialize", "--select", "ohlcv", "--symbols", "SPY", "--timeframes", "1d"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(expected) and err.count("\n") == 1, err
    assert SECRET not in err
