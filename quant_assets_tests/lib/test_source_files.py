"""The file source: lenient about layout (headers, time zones, epochs), strict about values, precise in errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from quant_assets.lib.calendars import CRYPTO_24_7, US_EQUITY
from quant_assets.lib.errors import DataValidationError, InvalidTimeframeError, UnknownSymbolError
from quant_assets.lib.ohlcv import bars_for_timeframe, resample_bars
from quant_assets.lib.sources import FileSource
from quant_assets.lib.sources.base import OHLCV_SCHEMA
from quant_assets.lib.sources.synthetic import synthetic_bars

START = datetime(2024, 1, 1, tzinfo=UTC)

DAILY_CSV = """\
 Date ,OPEN,High ,low,Close,Adj Close,VOLUME
2024-01-02,100.0,101.5,99.0,101.0,100.2,1000
2024-01-03,101.0,102.0,100.5,101.5,100.7,1200
2024-01-04,101.5,103.0,101.0,102.5,101.7,900
2024-01-05,102.5,102.9,100.0,100.5,99.7,1500
2024-01-08,100.5,101.0,99.5,100.8,100.0,1100
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def hourly_csv(rows: int = 6, start: str = "2024-01-01", hour: int = 0) -> list[str]:
    """A header and `rows` consistent hourly CSV lines."""
    first = datetime.fromisoformat(start) + timedelta(hours=hour)
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(rows):
        stamp = (first + timedelta(hours=i)).isoformat(sep=" ")
        lines.append(f"{stamp},{10 + i},{11 + i},{9 + i},{10.5 + i},{100 + i}")
    return lines


def test_daily_csv_with_mixed_case_headers_and_adj_close(tmp_path: Path) -> None:
    write(tmp_path, "SPY.csv", DAILY_CSV)
    source = FileSource(tmp_path)
    assert source.list_symbols() == ["SPY"]
    assert source.native_timeframes("SPY") == ["1d"]
    bars = source.load_bars("SPY", "1d")
    assert bars.frame.schema == pl.Schema(OHLCV_SCHEMA)
    assert bars.frame["timestamp"].to_list() == [
        datetime(2024, 1, d, tzinfo=UTC) for d in (2, 3, 4, 5, 8)
    ]
    assert bars.frame.row(3) == (
        datetime(2024, 1, 5, tzinfo=UTC),
        102.5,
        102.9,
        100.0,
        100.5,
        1500.0,
    )
    assert (bars.calendar.weekdays_only, bars.calendar.session_open) == (True, None)


def test_symbol_is_matched_after_normalisation(tmp_path: Path) -> None:
    write(tmp_path, "BTC-USDT.csv", "\n".join(hourly_csv(48, "2024-01-06")))
    write(tmp_path, "notes here.csv", "not,market,data")
    source = FileSource(tmp_path)
    assert source.list_symbols() == ["BTCUSDT"]
    bars = source.load_bars("btc/usdt", "1h")
    assert bars.symbol == "BTCUSDT"
    assert bars.calendar == CRYPTO_24_7  # it has weekend bars


def test_parquet_with_aware_timestamps(tmp_path: Path) -> None:
    frame = synthetic_bars("ETHUSDT", 1, START, START + timedelta(days=10), "1h")
    frame.with_columns(pl.col("timestamp").dt.convert_time_zone("Asia/Tokyo")).write_parquet(
        tmp_path / "ETHUSDT.parquet"
    )
    bars = FileSource(tmp_path).load_bars("ETHUSDT", "1h")
    assert bars.frame.equals(frame)
    assert bars.calendar == CRYPTO_24_7


def test_timeframe_in_the_file_name_and_several_timeframes(tmp_path: Path) -> None:
    hourly = synthetic_bars("SPY", 1, START, START + timedelta(days=14), "1h")
    hourly.write_csv(tmp_path / "SPY.csv")
    write(tmp_path, "SPY_1d.csv", DAILY_CSV)
    source = FileSource(tmp_path)
    assert source.native_timeframes("SPY") == ["1h", "1d"]
    assert source.load_bars("SPY", "1d").frame.height == 5
    loaded = source.load_bars("SPY", "1h")
    assert loaded.calendar == US_EQUITY  # inferred from the 14:00-21:00 weekday bars
    assert loaded.frame.equals(hourly)
    four_hourly = bars_for_timeframe(source, "SPY", "4h")
    assert four_hourly.frame.equals(resample_bars(hourly, "1h", "4h", US_EQUITY))
    with pytest.raises(InvalidTimeframeError, match="holds 1h, 1d bars, not 4h"):
        source.load_bars("SPY", "4h")


def test_tz_aware_strings_are_converted_and_daily_ones_keep_their_date(tmp_path: Path) -> None:
    write(
        tmp_path,
        "AAPL_1h.csv",
        "Datetime,Open,High,Low,Close,Volume\n"
        "2024-01-02T09:00:00-05:00,10,11,9,10.5,100\n"
        "2024-01-02T10:00:00-05:00,10.5,11,10,10.8,100\n",
    )
    write(
        tmp_path,
        "MSFT.csv",
        "date,open,high,low,close,volume\n"
        "2024-03-08 00:00:00-05:00,10,11,9,10.5,100\n"
        "2024-03-11 00:00:00-04:00,10,11,9,10.5,100\n"
        "2024-03-12 00:00:00-04:00,10,11,9,10.5,100\n"
        "2024-03-13 00:00:00-04:00,10,11,9,10.5,100\n",
    )
    source = FileSource(tmp_path)
    assert source.load_bars("AAPL", "1h").frame["timestamp"].to_list() == [
        datetime(2024, 1, 2, 14, tzinfo=UTC),
        datetime(2024, 1, 2, 15, tzinfo=UTC),
    ]
    assert source.load_bars("MSFT", "1d").frame["timestamp"].to_list() == [
        datetime(2024, 3, d, tzinfo=UTC) for d in (8, 11, 12, 13)
    ]


@pytest.mark.parametrize(("scale", "name"), [(1, "seconds"), (1000, "milliseconds")])
def test_epoch_timestamps(tmp_path: Path, scale: int, name: str) -> None:
    first = int(START.timestamp())
    lines = ["time,open,high,low,close,volume"] + [
        f"{(first + 3600 * i) * scale},10,11,9,10.5,1" for i in range(5)
    ]
    write(tmp_path, "BTCUSDT.csv", "\n".join(lines))
    frame = FileSource(tmp_path).load_bars("BTCUSDT", "1h").frame
    assert frame["timestamp"].to_list() == [START + timedelta(hours=i) for i in range(5)], name


def test_since_filters_the_bars(tmp_path: Path) -> None:
    write(tmp_path, "BTCUSDT.csv", "\n".join(hourly_csv(10)))
    frame = FileSource(tmp_path).load_bars("BTCUSDT", "1h", since=START + timedelta(hours=7)).frame
    assert frame["timestamp"].to_list() == [START + timedelta(hours=h) for h in (7, 8, 9)]


def replace_line(lines: list[str], number: int, text: str) -> list[str]:
    """`lines` with 1-based line `number` replaced."""
    return lines[: number - 1] + [text] + lines[number:]


BAD_FILES = [
    (
        "unparsable timestamp",
        replace_line(hourly_csv(), 4, "yesterday noon,12,13,11,12.5,102"),
        "unparsable timestamp in column 'timestamp' at row 2: line 4 of the file; 'yesterday noon'",
    ),
    (
        "duplicate timestamp",
        replace_line(hourly_csv(), 5, "2024-01-01 02:00:00,13,14,12,13.5,103"),
        "duplicate timestamp at row 3: line 5 of the file; 2024-01-01T02:00:00+00:00 already at row 2",
    ),
    (
        "high < low",
        replace_line(hourly_csv(), 6, "2024-01-01 04:00:00,14,13,14.5,14,104"),
        "high < low at row 4: line 6 of the file; timestamp=2024-01-01T04:00:00+00:00, open=14.0, high=13.0, low=14.5",
    ),
    (
        "negative price",
        replace_line(hourly_csv(), 3, "2024-01-01 01:00:00,-11,12,10,11.5,101"),
        "open is not a positive number at row 1: line 3 of the file; timestamp=2024-01-01T01:00:00+00:00, open=-11.0",
    ),
    (
        "NaN price",
        replace_line(hourly_csv(), 7, "2024-01-01 05:00:00,15,16,14,NaN,105"),
        "close is not a positive number at row 5: line 7 of the file; timestamp=2024-01-01T05:00:00+00:00, open=15.0, high=16.0, low=14.0, close=nan",
    ),
    (
        "empty price",
        replace_line(hourly_csv(), 7, "2024-01-01 05:00:00,15,16,14,,105"),
        "close is not a positive number at row 5: line 7 of the file",
    ),
    (
        "unparsable number",
        replace_line(hourly_csv(), 3, "2024-01-01 01:00:00,11,12,10,11.5,lots"),
        "unparsable number in column 'volume' at row 1: line 3 of the file; 'lots'",
    ),
    (
        "unsorted",
        replace_line(hourly_csv(), 7, "2023-12-31 23:00:00,15,16,14,15.5,105"),
        "timestamps not increasing at row 5: line 7 of the file",
    ),
    (
        "ambiguous date",
        ["date,open,high,low,close,volume", "01/02/2024,1,2,0.5,1.5,1", "01/03/2024,1,2,0.5,1.5,1"],
        "ambiguous date in column 'date' at row 0: line 2 of the file; '01/02/2024' could be day/month",
    ),
    (
        "missing column",
        [line.rsplit(",", 1)[0] for line in hourly_csv()],
        "missing column volume: found columns ['timestamp', 'open', 'high', 'low', 'close']",
    ),
    (
        "missing timestamp column",
        [line.split(",", 1)[1] for line in hourly_csv()],
        "missing column timestamp (or date/datetime/time): found columns ['open', 'high'",
    ),
    ("empty file", [""], "empty file"),
    ("header only", hourly_csv(0), "no data rows"),
    (
        "spacing matches no timeframe",
        ["timestamp,open,high,low,close,volume"]
        + [f"2024-01-01 {2 * h:02d}:00:00,10,11,9,10.5,1" for h in range(6)],
        "bars are typically 7200 s apart, which is none of the timeframes",
    ),
]


@pytest.mark.parametrize(("case", "lines", "message"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_files_are_named_with_the_row_and_line(
    tmp_path: Path, case: str, lines: list[str], message: str
) -> None:
    path = write(tmp_path, "BTCUSDT.csv", "\n".join(lines))
    with pytest.raises(DataValidationError) as caught:
        FileSource(tmp_path).load_bars("BTCUSDT", "1h")
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_bad_parquet_rows_are_named_by_row(tmp_path: Path) -> None:
    frame = synthetic_bars("BTCUSDT", 1, START, START + timedelta(days=2), "1h")
    broken = frame.with_columns(
        high=pl.when(pl.int_range(pl.len()) == 30).then(pl.col("low") / 2).otherwise("high")
    )
    path = tmp_path / "BTCUSDT_1h.parquet"
    broken.write_parquet(path)
    with pytest.raises(DataValidationError) as caught:
        FileSource(tmp_path).load_bars("BTCUSDT", "1h")
    assert (caught.value.where, caught.value.row, caught.value.problem) == (
        str(path),
        30,
        "high < low",
    )
    assert "line" not in str(caught.value)


def test_unknown_symbol_lists_the_directory_and_what_is_there(tmp_path: Path) -> None:
    write(tmp_path, "SPY.csv", DAILY_CSV)
    write(tmp_path, "QQQ_1d.csv", DAILY_CSV)
    with pytest.raises(UnknownSymbolError) as caught:
        FileSource(tmp_path).load_bars("AAPL", "1d")
    assert str(caught.value) == (
        f"no file for AAPL in {tmp_path} (expected AAPL.csv, AAPL.parquet or AAPL_<timeframe>.csv); "
        "available symbols: QQQ, SPY"
    )


def test_two_files_for_the_same_bars_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "SPY.csv", DAILY_CSV)
    write(tmp_path, "spy_1d.csv", DAILY_CSV)
    with pytest.raises(
        DataValidationError, match="SPY 1d bars are in two files: SPY.csv and spy_1d.csv"
    ):
        FileSource(tmp_path).native_timeframes("SPY")


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, "BTCUSDT.csv", "\n".join(hourly_csv(4)))
    source = FileSource(tmp_path)
    assert source.load_bars("BTCUSDT", "1h").frame.height == 4
    path.write_text("\n".join(hourly_csv(7)))
    assert source.load_bars("BTCUSDT", "1h").frame.height == 7


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileSource(tmp_path / "nowhere").list_symbols()
