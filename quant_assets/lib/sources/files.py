"""Bars from a directory of CSV or Parquet files, one per symbol (and optionally per timeframe).

`BTC-USDT.csv` serves BTCUSDT at the timeframe its timestamps are spaced by; `SPY_1d.parquet` serves
SPY daily bars. Errors name the file and the first bad row (0-based data row, and for CSV the line).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import polars as pl

from quant_assets.lib.calendars import as_utc, infer_calendar
from quant_assets.lib.errors import (
    DataValidationError,
    InvalidSymbolError,
    InvalidTimeframeError,
    UnknownSymbolError,
)
from quant_assets.lib.sources.base import OHLCV_COLUMNS, Bars, MarketDataSource, interval_change
from quant_assets.lib.symbols import normalize_symbol
from quant_assets.lib.timeframes import TIMEFRAMES, timeframe_seconds
from quant_assets.lib.validation import validate_bars

SUFFIXES = (".csv", ".parquet")
TIMESTAMP_NAMES = ("timestamp", "date", "datetime", "time", "open_time")
_TIMEFRAME_SUFFIX = re.compile(rf"(.+)_({'|'.join(TIMEFRAMES)})", re.IGNORECASE)
_AMBIGUOUS_DATE = re.compile(r"^\d{1,2}/\d{1,2}/\d{2,4}")
_EPOCH_DIGITS = re.compile(r"^-?\d+$")
# Epoch magnitudes of dates between 1973 and 5138 in each unit, checked coarsest first.
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (float("inf"), "ns"))


class FileSource(MarketDataSource):
    """`<SYMBOL>[_<timeframe>].csv|.parquet` files in one directory, read on demand."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.description = f"files:{self.directory}"
        self._cache: dict[tuple[Path, int, int, str | None], tuple[pl.DataFrame, str]] = {}

    def list_symbols(self) -> list[str]:
        return sorted(self._index())

    def native_timeframes(self, symbol: str) -> list[str]:
        return sorted(self._files_by_timeframe(symbol), key=timeframe_seconds)

    def load_bars(self, symbol: str, timeframe: str, since: datetime | None = None) -> Bars:
        symbol = normalize_symbol(symbol)
        files = self._files_by_timeframe(symbol)
        if timeframe not in files:
            held = ", ".join(sorted(files, key=timeframe_seconds))
            raise InvalidTimeframeError(
                f"{symbol}: {self.directory} holds {held} bars, not {timeframe}; "
                "coarser timeframes are resampled by bars_for_timeframe"
            )
        path, declared = files[timeframe]
        frame, _ = self._read(path, declared)
        calendar = infer_calendar(frame, timeframe)
        if since is not None:
            frame = frame.filter(pl.col("timestamp") >= as_utc(since))
        return Bars(symbol, timeframe, calendar, frame)

    def _index(self) -> dict[str, list[tuple[Path, str | None]]]:
        """Files of each symbol, with the timeframe their name declares (None: inferred from data)."""
        if not self.directory.is_dir():
            raise FileNotFoundError(f"market data directory {self.directory} does not exist")
        index: dict[str, list[tuple[Path, str | None]]] = {}
        for path in sorted(self.directory.iterdir()):
            if path.suffix.lower() not in SUFFIXES or not path.is_file():
                continue
            match = _TIMEFRAME_SUFFIX.fullmatch(path.stem)
            raw, timeframe = (match[1], match[2].lower()) if match else (path.stem, None)
            try:
                symbol = normalize_symbol(raw)
            except InvalidSymbolError:
                continue  # not a market data file name (e.g. "my notes.csv")
            index.setdefault(symbol, []).append((path, timeframe))
        return index

    def _files_by_timeframe(self, symbol: str) -> dict[str, tuple[Path, str | None]]:
        symbol = normalize_symbol(symbol)
        index = self._index()
        if symbol not in index:
            available = ", ".join(sorted(index)) or "none"
            raise UnknownSymbolError(
                f"no file for {symbol} in {self.directory} (expected {symbol}.csv, {symbol}.parquet "
                f"or {symbol}_<timeframe>.csv); available symbols: {available}"
            )
        files: dict[str, tuple[Path, str | None]] = {}
        for path, declared in index[symbol]:
            timeframe = declared or self._read(path, None)[1]
            if timeframe in files:
                raise DataValidationError(
                    str(self.directory),
                    f"{symbol} {timeframe} bars are in two files",
                    detail=f"{files[timeframe][0].name} and {path.name}; keep one",
                )
            files[timeframe] = (path, declared)
        return files

    def _read(self, path: Path, declared: str | None) -> tuple[pl.DataFrame, str]:
        """Validated bars of one file and their timeframe, cached until the file changes."""
        stat = path.stat()
        key = (path, stat.st_mtime_ns, stat.st_size, declared)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != path}
            self._cache[key] = read_bars_file(path, declared)
        return self._cache[key]


def read_bars_file(path: Path, timeframe: str | None = None) -> tuple[pl.DataFrame, str]:
    """Validated canonical bars of a CSV or Parquet file, and their timeframe.

    Without `timeframe` it is inferred from the median spacing of the timestamps. Daily bars are
    labelled 00:00 UTC of the date their timestamp shows, in its own time zone.
    """
    raw = _read_table(path)
    columns = _ohlcv_column_names(raw, path)
    timestamps, local_dates = _parse_timestamps(raw[columns[0]], path)
    frame = pl.DataFrame(
        [timestamps.alias("timestamp")]
        + [
            _parse_numbers(raw[name], path).alias(canonical)
            for canonical, name in zip(OHLCV_COLUMNS[1:], columns[1:], strict=True)
        ]
    )
    timeframe = timeframe or _inferred_timeframe(timestamps, path)
    if timeframe_seconds(timeframe) >= 86400:
        frame = frame.with_columns(
            local_dates.cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("timestamp")
        )
    try:
        bars = validate_bars(frame, str(path), timeframe)
    except DataValidationError as error:
        raise _file_error(path, error.problem, error.row, error.detail) from None
    changed = interval_change(bars["timestamp"], timeframe)
    if changed is not None:
        first, last, coarser = changed
        # the row where the other interval starts: after a leading stretch, or its first bar
        boundary = last if first == 0 else first + 1
        raise _file_error(
            path,
            f"bar interval changes from {coarser} to {timeframe} within the file",
            boundary,
            f"rows {first}-{last} ({bars['timestamp'][first].isoformat()} .. "
            f"{bars['timestamp'][last].isoformat()}) are {coarser} apart, the rest {timeframe}; "
            f"keep one interval per file (one file per timeframe, e.g. <SYMBOL>_{coarser}"
            f"{path.suffix})",
        )
    return bars, timeframe


def _file_error(
    path: Path, problem: str, row: int | None = None, detail: str = ""
) -> DataValidationError:
    if row is not None and path.suffix.lower() == ".csv":
        detail = (
            f"line {row + 2} of the file; {detail}" if detail else f"line {row + 2} of the file"
        )
    return DataValidationError(str(path), problem, row, detail)


def _read_table(path: Path) -> pl.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            # Everything as text, so each unparsable value can be reported with its row.
            table = pl.read_csv(path, infer_schema=False)
        else:
            table = pl.read_parquet(path)
    except pl.exceptions.NoDataError:
        raise _file_error(path, "empty file") from None
    except (pl.exceptions.PolarsError, OSError) as error:
        raise _file_error(
            path, f"unreadable {path.suffix.lstrip('.')} file", detail=str(error)
        ) from None
    if table.height == 0:
        raise _file_error(path, "no data rows", detail=f"columns {table.columns}")
    return table


def _ohlcv_column_names(table: pl.DataFrame, path: Path) -> list[str]:
    """The file's names of the timestamp, open, high, low, close and volume columns, in that order."""
    by_key: dict[str, str] = {}
    for name in table.columns:
        key = name.strip().lower()
        if key in by_key:
            raise _file_error(path, f"columns {by_key[key]!r} and {name!r} both read as {key!r}")
        by_key[key] = name
    timestamp = next((by_key[k] for k in TIMESTAMP_NAMES if k in by_key), None)
    missing = ([] if timestamp else ["timestamp (or date/datetime/time)"]) + [
        c for c in OHLCV_COLUMNS[1:] if c not in by_key
    ]
    if missing:
        raise _file_error(
            path,
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
            detail=f"found columns {table.columns}",
        )
    return [timestamp] + [by_key[c] for c in OHLCV_COLUMNS[1:]]  # type: ignore[list-item]


def _first_row(mask: pl.Series) -> int | None:
    rows = mask.fill_null(False).arg_true()
    return int(rows[0]) if rows.len() else None


def _parse_timestamps(column: pl.Series, path: Path) -> tuple[pl.Series, pl.Series]:
    """UTC bar times, and the calendar date each timestamp shows in its own time zone."""
    dtype = column.dtype
    empty = column.is_null() | (column.str.strip_chars() == "" if dtype == pl.String else False)
    row = _first_row(empty)
    if row is not None:
        raise _file_error(path, f"missing timestamp in column {column.name!r}", row)
    if dtype == pl.String:
        text = column.str.strip_chars()
        if text.str.contains(_EPOCH_DIGITS.pattern).all():
            return _parse_timestamps(text.cast(pl.Int64), path)
        row = _first_row(text.str.contains(_AMBIGUOUS_DATE.pattern))
        if row is not None:
            raise _file_error(
                path,
                f"ambiguous date in column {column.name!r}",
                row,
                f"{text[row]!r} could be day/month or month/day; write dates as YYYY-MM-DD",
            )
        parsed = text.str.to_datetime(time_unit="us", strict=False)
        row = _first_row(parsed.is_null())
        if row is not None:
            raise _file_error(
                path, f"unparsable timestamp in column {column.name!r}", row, repr(text[row])
            )
        local_dates = text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False)
        if local_dates.null_count() == 0:
            return _as_utc(parsed), local_dates
        column = parsed
    elif dtype.is_integer():
        unit = next(u for bound, u in _EPOCH_UNITS if column.abs().max() < bound)  # type: ignore[operator]
        column = pl.from_epoch(column, time_unit=unit)  # type: ignore[arg-type]
    elif dtype == pl.Date:
        column = column.cast(pl.Datetime("us"))
    elif not isinstance(dtype, pl.Datetime):
        raise _file_error(path, f"column {column.name!r} has dtype {dtype}, expected timestamps")
    return _as_utc(column), column.dt.date()


def _as_utc(column: pl.Series) -> pl.Series:
    if column.dtype.time_zone is None:  # type: ignore[union-attr]
        column = column.dt.replace_time_zone("UTC")
    return column.dt.convert_time_zone("UTC").dt.cast_time_unit("us")


def _parse_numbers(column: pl.Series, path: Path) -> pl.Series:
    if column.dtype.is_numeric():
        return column.cast(pl.Float64)
    if column.dtype != pl.String:
        raise _file_error(
            path, f"column {column.name!r} has dtype {column.dtype}, expected numbers"
        )
    text = column.str.strip_chars()
    numbers = text.cast(pl.Float64, strict=False)
    row = _first_row(numbers.is_null() & text.is_not_null() & (text != ""))
    if row is not None:
        raise _file_error(
            path, f"unparsable number in column {column.name!r}", row, repr(text[row])
        )
    return numbers


def _inferred_timeframe(timestamps: pl.Series, path: Path) -> str:
    spacing = timestamps.unique().sort().diff().drop_nulls()
    if spacing.is_empty():
        raise _file_error(
            path,
            "cannot infer the timeframe of a single bar",
            detail=f"name the file <SYMBOL>_<timeframe>{path.suffix} (timeframes {', '.join(TIMEFRAMES)})",
        )
    # The lower median is a spacing that occurs, not the mean of two.
    seconds = spacing.dt.total_seconds().quantile(0.5, interpolation="lower")
    by_seconds = {timeframe_seconds(t): t for t in TIMEFRAMES}
    if seconds not in by_seconds:
        raise _file_error(
            path,
            f"bars are typically {seconds:g} s apart, which is none of the timeframes {', '.join(TIMEFRAMES)}",
            detail=f"name the file <SYMBOL>_<timeframe>{path.suffix} to state it",
        )
    return by_seconds[int(seconds)]  # type: ignore[arg-type]
