"""Bars from a PostgreSQL table (symbol, timeframe, timestamp, open, high, low, close, volume).

Read with SQLAlchemy 2 Core + psycopg2, so every value is a bound parameter; the table name, which
cannot be bound, is checked to be `[schema.]identifier` first.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import polars as pl
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from quant_assets.lib.calendars import as_utc, calendar_for_symbol, infer_calendar
from quant_assets.lib.errors import (
    DataValidationError,
    InvalidSourceSpecError,
    InvalidSymbolError,
    InvalidTimeframeError,
    MarketDataUnavailableError,
    UnknownSymbolError,
)
from quant_assets.lib.masking import mask_secrets
from quant_assets.lib.sources.base import (
    OHLCV_COLUMNS,
    OHLCV_SCHEMA,
    Bars,
    MarketDataSource,
    interval_change,
)
from quant_assets.lib.symbols import normalize_symbol
from quant_assets.lib.timeframes import TIMEFRAMES, check_timeframe, timeframe_seconds
from quant_assets.lib.validation import validate_bars

DEFAULT_TABLE = "trading.historical_data"
# the separators normalize_symbol removes, as a PostgreSQL regular expression
_SEPARATORS_SQL = "[/:._-]"
_TABLE_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$")


def checked_table_name(table: str) -> str:
    """`table` if it is `[schema.]identifier` (letters, digits, underscores), else
    InvalidSourceSpecError (the name is put into SQL text, where it cannot be a bound parameter)."""
    if not isinstance(table, str) or not _TABLE_NAME.match(table):
        raise InvalidSourceSpecError(
            f"table name {table!r} is not [schema.]identifier (letters, digits and underscores, "
            "at most 63 each, not starting with a digit)"
        )
    return table


def engine_url(url: str) -> str:
    """A SQLAlchemy URL for `url`, which may be a libpq `postgres://` / `postgresql://` URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidSourceSpecError(
            f"{mask_secrets(url)!r} is not a database URL such as postgresql://user@host:5432/db"
        )
    if scheme in ("postgres", "postgresql"):
        return f"postgresql+psycopg2://{rest}"
    return url


def server_name(url: str) -> str:
    """`host:port/database` of a database URL, for messages (never the user or password)."""
    try:
        parsed = sa.make_url(engine_url(url))
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable database URL>"
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database or ''}"


# SQLSTATEs of a missing table / column
_UNDEFINED_TABLE, _UNDEFINED_COLUMN = "42P01", "42703"
CONNECT_TIMEOUT_SECONDS = 10


@contextmanager
def _connection(
    url: str, *, begin: bool = False, table: str | None = None
) -> Iterator[sa.Connection]:
    """A connection to `url` (a transaction with `begin`); an unreachable server, a missing `table`
    or column become one-line MarketDataUnavailableErrors naming the host or table, never the
    password."""
    try:
        # No pool: Dagster runs steps in forked processes (a pooled connection must not cross a
        # fork), each asset issues a few queries, and an idle pooled connection would block DROP
        # DATABASE.
        engine = sa.create_engine(
            engine_url(url),
            poolclass=NullPool,
            connect_args={"options": "-c timezone=UTC", "connect_timeout": CONNECT_TIMEOUT_SECONDS},
        )
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as exc:
        raise InvalidSourceSpecError(
            f"cannot use database URL {mask_secrets(url)!r}: {mask_secrets(_first_line(exc))}"
        ) from None
    try:
        with _readable_errors(url, table), engine.begin() if begin else engine.connect() as c:
            yield c
    finally:
        engine.dispose()


@contextmanager
def _readable_errors(url: str, table: str | None) -> Iterator[None]:
    server = server_name(url)
    try:
        yield
    except sa.exc.OperationalError as exc:
        raise MarketDataUnavailableError(
            f"PostgreSQL at {server} is unavailable: {mask_secrets(_first_line(exc.orig or exc))}"
        ) from None
    except sa.exc.ProgrammingError as exc:
        code = getattr(exc.orig, "pgcode", None)
        where = f"table {table}" if table else "the queried table"
        if code == _UNDEFINED_TABLE:
            raise MarketDataUnavailableError(
                f"{where} does not exist in the database at {server} "
                "(set postgres_table / QUANT_ASSETS_POSTGRES_TABLE, or create it with ensure_table)"
            ) from None
        if code == _UNDEFINED_COLUMN:
            raise MarketDataUnavailableError(
                f"{where} at {server}: {mask_secrets(_first_line(exc.orig))}; expected columns "
                f"symbol, timeframe, {', '.join(OHLCV_COLUMNS)}"
            ) from None
        raise MarketDataUnavailableError(
            f"{where} at {server} cannot be read: {mask_secrets(_first_line(exc.orig or exc))}"
        ) from None
    except sa.exc.DBAPIError as exc:
        where = f"table {table}" if table else "the queried table"
        raise MarketDataUnavailableError(
            f"{where} at {server} cannot be read: {mask_secrets(_first_line(exc.orig or exc))}"
        ) from None


def _first_line(error: object) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def bars_table(table: str = DEFAULT_TABLE) -> sa.Table:
    """The SQLAlchemy description of a bars table named `[schema.]identifier`."""
    schema, _, name = checked_table_name(table).rpartition(".")
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("symbol", sa.Text, primary_key=True),
        sa.Column("timeframe", sa.Text, primary_key=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), primary_key=True),
        *(sa.Column(c, sa.Float(53), nullable=False) for c in OHLCV_COLUMNS[1:]),
        schema=schema or None,
    )


def ensure_table(url: str, table: str = DEFAULT_TABLE) -> None:
    """Create `table` (and its schema) with the bar columns and a (symbol, timeframe, timestamp) key."""
    bars = bars_table(table)
    with _connection(url, begin=True, table=table) as connection:
        if bars.schema:
            connection.execute(sa.schema.CreateSchema(bars.schema, if_not_exists=True))
        bars.create(connection, checkfirst=True)


def write_bars(url: str, table: str, symbol: str, timeframe: str, frame: pl.DataFrame) -> int:
    """Replace `symbol`'s `timeframe` bars in the time range of `frame` with `frame`; rows written.

    Validated first, and written in one transaction (delete the range, then insert).
    """
    stored = bars_table(table)
    symbol, timeframe = normalize_symbol(symbol), check_timeframe(timeframe)
    bars = validate_bars(
        frame, f"bars to write for symbol {symbol} timeframe {timeframe}", timeframe
    )
    with _connection(url, begin=True, table=table) as connection:
        connection.execute(
            sa.delete(stored).where(
                stored.c.symbol == symbol,
                stored.c.timeframe == timeframe,
                stored.c.timestamp.between(bars["timestamp"][0], bars["timestamp"][-1]),
            )
        )
        # COPY, because row-by-row INSERT takes seconds per year of hourly bars.
        rows = io.BytesIO()
        bars.select(
            pl.lit(symbol).alias("symbol"), pl.lit(timeframe).alias("timeframe"), *OHLCV_COLUMNS
        ).write_csv(rows, include_header=False, datetime_format="%Y-%m-%dT%H:%M:%S%.6f+00:00")
        rows.seek(0)
        columns = ", ".join(c.name for c in stored.columns)
        target = connection.dialect.identifier_preparer.format_table(stored)
        with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.copy_expert(f"COPY {target} ({columns}) FROM STDIN WITH (FORMAT csv)", rows)
    return bars.height


class PostgresSource(MarketDataSource):
    """Bars stored in a PostgreSQL table, one row per (symbol, timeframe, timestamp).

    Like files, the calendar is inferred from the bars themselves.
    """

    def __init__(self, url: str, table: str = DEFAULT_TABLE) -> None:
        self.url = url
        self.table = checked_table_name(table)
        self._bars = bars_table(table)
        self.description = f"postgres:{self.table}"

    def _spellings(self, symbol: str | None = None) -> dict[str, list[str]]:
        """Stored symbol spellings by partition key (`BTC/USDT` and `BTCUSDT` are both BTCUSDT).

        With `symbol`, only its spellings are read: the separators are stripped and the text
        upper-cased in SQL as normalize_symbol does, so rows of other symbols, even unusable ones
        (`BAD SYM`), never reach this process. Spellings that are not symbols are skipped.
        """
        column = self._bars.c.symbol
        query = sa.select(column).distinct()
        if symbol is not None:
            key = sa.func.upper(sa.func.regexp_replace(column, _SEPARATORS_SQL, "", "g"))
            query = query.where(key == symbol)
        with _connection(self.url, table=self.table) as connection:
            stored = connection.execute(query).scalars().all()
        spellings: dict[str, list[str]] = {}
        for raw in stored:
            try:
                spellings.setdefault(normalize_symbol(raw), []).append(raw)
            except InvalidSymbolError:
                continue  # another symbol's bad spelling is its own problem, not this one's
        return spellings

    def _stored_symbol(self, symbol: str) -> str:
        spellings = self._spellings(symbol)
        if symbol not in spellings:
            available = self.list_symbols()
            raise UnknownSymbolError(
                f"no rows for {symbol} in table {self.table}; "
                f"available symbols: {', '.join(available) or 'none'}"
            )
        if len(spellings[symbol]) > 1:
            raise DataValidationError(
                f"table {self.table}",
                f"symbol {symbol} is stored under several spellings",
                detail=f"{sorted(spellings[symbol])}; keep one",
            )
        return spellings[symbol][0]

    def list_symbols(self) -> list[str]:
        return sorted(self._spellings())

    def native_timeframes(self, symbol: str) -> list[str]:
        return self._timeframes_of(self._stored_symbol(normalize_symbol(symbol)))

    def _timeframes_of(self, stored_symbol: str) -> list[str]:
        column = self._bars.c.timeframe
        query = sa.select(column).distinct().where(self._bars.c.symbol == stored_symbol)
        with _connection(self.url, table=self.table) as connection:
            held = connection.execute(query).scalars().all()
        return sorted((t for t in held if t in TIMEFRAMES), key=timeframe_seconds)

    def load_bars(self, symbol: str, timeframe: str, since: datetime | None = None) -> Bars:
        symbol = normalize_symbol(symbol)
        check_timeframe(timeframe)
        stored_symbol = self._stored_symbol(symbol)
        natives = self._timeframes_of(stored_symbol)
        if timeframe not in natives:
            raise InvalidTimeframeError(
                f"{symbol}: table {self.table} holds {', '.join(natives)} bars, not {timeframe}; "
                "coarser timeframes are resampled by bars_for_timeframe"
            )
        bars = self._bars
        # Epoch microseconds, because building tz-aware datetimes row by row is the slow part.
        epoch_us = sa.cast(sa.extract("epoch", bars.c.timestamp) * 1_000_000, sa.BigInteger)
        query = (
            sa.select(epoch_us, *(bars.c[name] for name in OHLCV_COLUMNS[1:]))
            .where(bars.c.symbol == stored_symbol, bars.c.timeframe == timeframe)
            .order_by(bars.c.timestamp)
        )
        if since is not None:
            query = query.where(bars.c.timestamp >= as_utc(since))
        with _connection(self.url, table=self.table) as connection:
            rows = connection.execute(query).all()
        where = f"symbol {symbol} timeframe {timeframe} in table {self.table}"
        try:
            frame = pl.DataFrame(
                rows,
                schema={"timestamp": pl.Int64} | dict(list(OHLCV_SCHEMA.items())[1:]),
                orient="row",
            )
        except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
            raise DataValidationError(
                where,
                "columns hold values that are not numbers",
                detail=f"{_first_line(exc)}; expected {', '.join(OHLCV_COLUMNS[1:])} as numbers",
            ) from None
        frame = frame.with_columns(
            pl.from_epoch("timestamp", time_unit="us").dt.replace_time_zone("UTC")
        )
        if frame.is_empty():  # nothing new since `since`: too few bars to infer a calendar from
            return Bars(symbol, timeframe, calendar_for_symbol(symbol), frame)
        frame = validate_bars(frame, where, timeframe)
        changed = interval_change(frame["timestamp"], timeframe)
        if changed is not None:
            first, last, coarser = changed
            raise DataValidationError(
                where,
                f"bar interval changes: rows {first}-{last} are {coarser} apart, the rest {timeframe}",
                first,
                f"{frame['timestamp'][first].isoformat()} .. {frame['timestamp'][last].isoformat()}; "
                "store each timeframe's bars under its own timeframe value",
            )
        return Bars(symbol, timeframe, infer_calendar(frame, timeframe), frame)
