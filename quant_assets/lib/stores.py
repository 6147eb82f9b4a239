"""SQL tables of the trading side (promotion log, alerts, agent predictions and signals) via
SQLAlchemy Core: SQLite under the artifacts root by default, PostgreSQL when given its URL."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.pool import NullPool, StaticPool

from quant_assets.lib.alerts import ALERT_SEVERITIES
from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.sources.postgres import engine_url

PROMOTION_ACTIONS = ("promote", "reject", "manual_promote", "rollback")
#: actions that move the champion alias (a reject only records a decision)
MOVING_ACTIONS = ("promote", "manual_promote", "rollback")
PROMOTION_DECIDERS = ("gates", "cli")
SQLITE_BUSY_TIMEOUT_MS = 10_000
#: how long a promotion waits for another one holding the registry lock
REGISTRY_LOCK_TIMEOUT_SECONDS = 120.0


def sql_url_for(spec: str | None, artifacts_root: Path) -> str:
    """SQLAlchemy URL of the trading store: None or "" is `<artifacts_root>/trading.db` (SQLite),
    a libpq `postgres://`/`postgresql://` URL gets the psycopg2 driver, other URLs pass through."""
    if not spec:
        return f"sqlite:///{Path(artifacts_root).resolve() / 'trading.db'}"
    return engine_url(spec)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out on every backend (SQLite stores them as naive UTC text)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value} has no time zone; pass UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _choices(column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=f"ck_{column}")


metadata = sa.MetaData()

# Append-only: the store offers no update or delete, so the log is the history of every decision.
promotion_log = sa.Table(
    "promotion_log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("decided_at", UTCDateTime, nullable=False),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("prior_version", sa.Text, nullable=True),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("decided_by", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("gates_json", sa.Text, nullable=False),
    sa.Column("dagster_run_id", sa.Text, nullable=True),
    _choices("action", PROMOTION_ACTIONS),
    _choices("decided_by", PROMOTION_DECIDERS),
)

alerts_table = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("raised_at", UTCDateTime, nullable=False),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=True),
    sa.Column("timeframe", sa.Text, nullable=True),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("details_json", sa.Text, nullable=False),
    _choices("severity", ALERT_SEVERITIES),
)

PREDICTION_KEY = ("model_name", "model_version", "symbol", "timeframe", "timestamp", "horizon")
agent_preds = sa.Table(
    "agent_preds",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("timestamp", UTCDateTime, nullable=False),
    sa.Column("horizon", sa.Integer, nullable=False),
    sa.Column("prob_up", sa.Float(53), nullable=False),
    sa.Column("mlflow_run_id", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # traceability (issue 16): the catalog row of the version, the run, the data it scored, and the
    # other agents' outputs on the same bar (regime label, volatility forecast of the horizon)
    sa.Column("agent_version_id", sa.Integer, nullable=True),
    sa.Column("dagster_run_id", sa.Text, nullable=True),
    sa.Column("data_version", sa.Text, nullable=True),
    sa.Column("regime", sa.Text, nullable=True),
    sa.Column("sigma", sa.Float(53), nullable=True),
    sa.UniqueConstraint(*PREDICTION_KEY, name="uq_agent_preds"),
)

SIGNAL_KEY = ("symbol", "timeframe", "timestamp")
agent_signals = sa.Table(
    "agent_signals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("timestamp", UTCDateTime, nullable=False),
    sa.Column("side", sa.Integer, nullable=False),
    sa.Column("strength", sa.Float(53), nullable=False),
    sa.Column("prob_up", sa.Float(53), nullable=False),
    sa.Column("stop_loss", sa.Float(53), nullable=True),
    sa.Column("take_profit", sa.Float(53), nullable=True),
    sa.Column("entry_price", sa.Float(53), nullable=False),
    sa.Column("model_name", sa.Text, nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("mlflow_run_id", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    # fraction of capital: the volatility-target size (lib.signals.volatility_target_size)
    sa.Column("size", sa.Float(53), nullable=True),
    # traceability (issue 16): direction and volatility versions (agent_versions.id), the input
    # data version, the thresholds and the execution agent's inputs (lib.execution)
    sa.Column("agent_version_id", sa.Integer, nullable=True),
    sa.Column("vol_version_id", sa.Integer, nullable=True),
    sa.Column("data_version", sa.Text, nullable=True),
    sa.Column("threshold_long", sa.Float(53), nullable=True),
    sa.Column("threshold_short", sa.Float(53), nullable=True),
    sa.Column("sigma", sa.Float(53), nullable=True),
    sa.Column("meta", sa.Text, nullable=True),
    # the Dagster run that wrote the row (its page links to the materialization and the model)
    sa.Column("dagster_run_id", sa.Text, nullable=True),
    sa.UniqueConstraint(*SIGNAL_KEY, name="uq_agent_signals"),
)


AGENT_KINDS = ("direction", "volatility", "ensemble", "meta", "regime")
#: the version catalog beside the trading tables, kept in step with the MLflow registry by
#: lib.catalog.sync_catalog (registration, promotion, rollback); agent_preds/agent_signals rows
#: point at agent_versions.id
agents_table = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("symbol", sa.Text, nullable=False),
    sa.Column("timeframe", sa.Text, nullable=False),
    sa.Column("registered_name", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("registered_name", name="uq_agents"),
    _choices("kind", AGENT_KINDS),
)
agent_versions = sa.Table(
    "agent_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id"), nullable=False),
    sa.Column("registered_name", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("semver", sa.Text, nullable=False),
    sa.Column("artifact_uri", sa.Text, nullable=False),
    sa.Column("mlflow_run_id", sa.Text, nullable=True),
    sa.Column("metrics_json", sa.Text, nullable=False),
    sa.Column("train_start", sa.Text, nullable=True),
    sa.Column("train_end", sa.Text, nullable=True),
    sa.Column("data_version", sa.Text, nullable=True),
    sa.Column("code_version", sa.Text, nullable=True),
    sa.Column("aliases", sa.Text, nullable=False),
    sa.Column("registered_at", UTCDateTime, nullable=True),
    sa.Column("synced_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("registered_name", "version", name="uq_agent_versions"),
)


def _polars_dtype(column: sa.Column) -> pl.DataType:
    if isinstance(column.type, UTCDateTime):
        return pl.Datetime("us", "UTC")
    if isinstance(column.type, sa.Integer):
        return pl.Int64()
    if isinstance(column.type, sa.Float):
        return pl.Float64()
    return pl.String()


def _frame_of(table: sa.Table, rows: list[sa.Row]) -> pl.DataFrame:
    schema = {c.name: _polars_dtype(c) for c in table.columns}
    return pl.DataFrame([tuple(r) for r in rows], schema=schema, orient="row")


def _written_columns(table: sa.Table) -> list[sa.Column]:
    """Columns a frame supplies: all but the surrogate id and the store-stamped created_at."""
    return [c for c in table.columns if c.name not in ("id", "created_at")]


def _checked_frame(table: sa.Table, key: tuple[str, ...], frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with the table's columns, cast to its types and stamped with created_at, after
    checking for missing columns, nulls/NaN in non-nullable ones and duplicate keys."""
    where = f"{table.name} frame"
    columns = _written_columns(table)
    required = [c.name for c in columns if not c.nullable]
    missing = [name for name in required if name not in frame.columns]
    if missing:
        raise DataValidationError(
            where, f"missing column(s) {', '.join(missing)}", detail=f"has {frame.columns}"
        )
    ts = frame.schema["timestamp"]
    if not isinstance(ts, pl.Datetime) or ts.time_zone is None:
        raise DataValidationError(
            where, f"column timestamp must be a time-zone aware Datetime, not {ts}"
        )
    dtypes = {c.name: _polars_dtype(c) for c in columns}
    selected = frame.select(
        (pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype)).alias(name)
        for name, dtype in dtypes.items()
    ).with_columns(pl.col(pl.Float64).fill_nan(None))
    for name in required:
        bad = selected.get_column(name).is_null()
        if bad.any():
            raise DataValidationError(
                where, f"null or NaN in column {name}", row=int(bad.arg_true()[0])
            )
    duplicated = selected.select(pl.struct(list(key)).is_duplicated()).to_series()
    if duplicated.any():
        row = int(duplicated.arg_true()[0])
        raise DataValidationError(
            where,
            f"duplicate key ({', '.join(key)})",
            row=row,
            detail=str(selected.row(row, named=True)),
        )
    return selected.with_columns(
        pl.lit(datetime.now(UTC)).dt.cast_time_unit("us").alias("created_at")
    )


#: stores opened by `TradingStore.shared`, per process and URL
_SHARED: dict[tuple[int, str], TradingStore] = {}
_SHARED_LOCK = threading.Lock()


def _fresh_lock_after_fork() -> None:
    """A child forked while another thread held the lock would wait for it for ever."""
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_after_fork)


class TradingStore:
    """The trading tables at `url` (see `sql_url_for`), created when missing.

    Engines use no connection pool, since Dagster forks step processes and a pooled connection must
    not cross a fork (in-memory SQLite, which lives in its one connection, is the exception).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = sa.make_url(url)
        connect_args: dict[str, Any] = {}
        pool: type[sa.pool.Pool] = NullPool
        if parsed.get_backend_name() == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                pool = StaticPool
                connect_args["check_same_thread"] = False
            else:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        elif parsed.get_backend_name() == "postgresql":
            connect_args["options"] = "-c timezone=UTC"
        #: the SQLite file of the store (None for a server or an in-memory database)
        self._sqlite_file: Path | None = None
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            self._sqlite_file = Path(parsed.database)
        self.engine = sa.create_engine(parsed, poolclass=pool, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
        try:
            metadata.create_all(self.engine)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            # another process created the tables between the existence check and CREATE TABLE
            # (parallel steps opening a new store); the second pass finds them all
            metadata.create_all(self.engine)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Columns added to a table after a store was created (nullable, so existing rows keep
        working): ALTER TABLE ADD COLUMN on a store that lacks them."""
        inspector = sa.inspect(self.engine)
        for table in metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(dialect=self.engine.dialect)
                try:
                    with self.engine.begin() as connection:
                        connection.execute(
                            sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
                        )
                except (sa.exc.OperationalError, sa.exc.ProgrammingError):
                    pass  # a concurrent process added it first

    @classmethod
    def shared(cls, url: str) -> TradingStore:
        """The store at `url` this process opened already, else a new one. Opening a store
        creates its missing tables and inspects every table's columns (about 20 statements and
        SQLAlchemy's reflection): the assets that write trading tables ask for the store per
        partition, several times (signals, champion, volatility, rejections), about 1.5 % of the
        run workers' CPU in a sampling profile at 16 x 3. Its engine keeps no connection (NullPool,
        so a forked child may use it); a SQLite file deleted since it was opened is opened (and
        its tables created) again."""
        key = (os.getpid(), url)
        with _SHARED_LOCK:
            store = _SHARED.get(key)
            path = store._sqlite_file if store is not None else None
            if store is None or (path is not None and not path.exists()):
                store = cls(url)
                _SHARED[key] = store
            return store

    def dispose(self) -> None:
        self.engine.dispose()

    def log_promotion(
        self,
        *,
        model_name: str,
        symbol: str,
        timeframe: str,
        version: str,
        action: str,
        decided_by: str,
        reason: str = "",
        gates: Mapping[str, object] | None = None,
        prior_version: str | None = None,
        dagster_run_id: str | None = None,
        decided_at: datetime | None = None,
        connection: sa.Connection | None = None,
    ) -> int:
        """Append one promotion decision (action in PROMOTION_ACTIONS, decided_by in
        PROMOTION_DECIDERS, gates stored as JSON); returns its id. With `connection` (from
        `registry_lock`) the row is written in that transaction."""
        if action not in PROMOTION_ACTIONS:
            raise ValueError(f"promotion action {action!r} is not one of {PROMOTION_ACTIONS}")
        if decided_by not in PROMOTION_DECIDERS:
            raise ValueError(f"decided_by {decided_by!r} is not one of {PROMOTION_DECIDERS}")
        values = {
            "decided_at": decided_at or datetime.now(UTC),
            "model_name": model_name,
            "symbol": symbol,
            "timeframe": timeframe,
            "version": str(version),
            "prior_version": None if prior_version is None else str(prior_version),
            "action": action,
            "decided_by": decided_by,
            "reason": reason,
            "gates_json": json.dumps(dict(gates or {}), sort_keys=True, default=str),
            "dagster_run_id": dagster_run_id,
        }
        if connection is not None:
            result = connection.execute(promotion_log.insert().values(values))
            return int(result.inserted_primary_key[0])
        with self.engine.begin() as own:
            result = own.execute(promotion_log.insert().values(values))
            return int(result.inserted_primary_key[0])

    @contextmanager
    def registry_lock(
        self, name: str, timeout: float = REGISTRY_LOCK_TIMEOUT_SECONDS
    ) -> Iterator[sa.Connection]:
        """A transaction holding the promotion lock of registered model `name`; yields its
        connection, commits when the block ends (rolls back on an error), then releases the lock.

        Promotions and rollbacks read the aliases, move them, tag the version and append the log
        row inside it, so they happen one at a time and the log chains like the aliases moved.
        PostgreSQL: a transaction-scoped advisory lock keyed by `name`. SQLite: BEGIN IMMEDIATE
        (the database's write lock; SQLite has no finer one), retried until `timeout`.
        """
        if self.engine.dialect.name == "postgresql":
            with self.engine.begin() as connection:
                connection.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(name)}
                )
                yield connection
            return
        with self.engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            deadline = time.monotonic() + timeout
            while True:
                try:
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                    break
                except sa.exc.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
            try:
                yield connection
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")

    def last_move(self, model_name: str, connection: sa.Connection | None = None) -> dict | None:
        """The latest promotion_log row of `model_name` that moved the champion (promote,
        manual_promote, rollback) as a dict, or None."""
        query = (
            sa.select(promotion_log)
            .where(
                promotion_log.c.model_name == model_name,
                promotion_log.c.action.in_(MOVING_ACTIONS),
            )
            .order_by(promotion_log.c.id.desc())
            .limit(1)
        )
        if connection is not None:
            row = connection.execute(query).mappings().first()
        else:
            with self.engine.connect() as own:
                row = own.execute(query).mappings().first()
        return dict(row) if row is not None else None

    def promotion_history(
        self,
        model_name: str | None = None,
        *,
        symbol: str | None = None,
        timeframe: str | None = None,
    ) -> pl.DataFrame:
        """Promotion decisions in the order they were logged (by id), optionally filtered."""
        query = sa.select(promotion_log).order_by(promotion_log.c.id)
        for column, value in (
            ("model_name", model_name),
            ("symbol", symbol),
            ("timeframe", timeframe),
        ):
            if value is not None:
                query = query.where(promotion_log.c[column] == value)
        return self._read(promotion_log, query)

    def record_alert(
        self,
        *,
        severity: str,
        kind: str,
        message: str,
        symbol: str | None = None,
        timeframe: str | None = None,
        details: Mapping[str, object] | None = None,
        raised_at: datetime | None = None,
    ) -> int:
        """Append one alert (severity in ALERT_SEVERITIES); returns its id."""
        if severity not in ALERT_SEVERITIES:
            raise ValueError(f"alert severity {severity!r} is not one of {ALERT_SEVERITIES}")
        values = {
            "raised_at": raised_at or datetime.now(UTC),
            "severity": severity,
            "kind": kind,
            "symbol": symbol,
            "timeframe": timeframe,
            "message": message,
            "details_json": json.dumps(dict(details or {}), sort_keys=True, default=str),
        }
        with self.engine.begin() as connection:
            result = connection.execute(alerts_table.insert().values(values))
            return int(result.inserted_primary_key[0])

    def alerts(self) -> pl.DataFrame:
        """Every alert, oldest first."""
        return self._read(alerts_table, sa.select(alerts_table).order_by(alerts_table.c.id))

    def write_predictions(self, frame: pl.DataFrame) -> int:
        """Upsert predictions keyed by PREDICTION_KEY (a rewrite updates prob_up and run id, keeps
        created_at); rows written. Columns: model_name, model_version, symbol, timeframe,
        timestamp (UTC), horizon, prob_up, optional mlflow_run_id."""
        return self._upsert(agent_preds, PREDICTION_KEY, frame)

    def write_signals(self, frame: pl.DataFrame) -> int:
        """Upsert signals keyed by (symbol, timeframe, timestamp): the latest write wins, created_at
        is kept; rows written. Columns as `make_signals` plus symbol, timeframe, model_name,
        model_version and optional mlflow_run_id; stop_loss/take_profit may be null."""
        return self._upsert(agent_signals, SIGNAL_KEY, frame)

    def read_predictions(
        self,
        model_name: str | None = None,
        model_version: str | None = None,
        symbol: str | None = None,
        timeframe: str | None = None,
    ) -> pl.DataFrame:
        """Stored predictions, ordered by key, optionally filtered."""
        filters = {
            "model_name": model_name,
            "model_version": model_version,
            "symbol": symbol,
            "timeframe": timeframe,
        }
        return self._read_keyed(agent_preds, PREDICTION_KEY, filters)

    def read_signals(self, symbol: str | None = None, timeframe: str | None = None) -> pl.DataFrame:
        """Stored signals, ordered by symbol, timeframe and timestamp, optionally filtered."""
        return self._read_keyed(
            agent_signals, SIGNAL_KEY, {"symbol": symbol, "timeframe": timeframe}
        )

    def _upsert(self, table: sa.Table, key: tuple[str, ...], frame: pl.DataFrame) -> int:
        checked = _checked_frame(table, key, frame)
        if checked.is_empty():
            return 0
        postgres = self.engine.dialect.name == "postgresql"
        statement = (postgresql.insert if postgres else sqlite.insert)(table)
        if postgres:
            staging = _staging_table(table, checked.columns)
            statement = statement.from_select(checked.columns, sa.select(*staging.c))
        updated = {
            c.name: statement.excluded[c.name] for c in _written_columns(table) if c.name not in key
        }
        statement = statement.on_conflict_do_update(index_elements=list(key), set_=updated)
        with self.engine.begin() as connection:
            if postgres:
                _copy_into(connection, staging, checked)
                connection.execute(statement)
            else:
                connection.execute(statement, checked.to_dicts())
        return checked.height

    def _read_keyed(
        self, table: sa.Table, key: tuple[str, ...], filters: Mapping[str, str | None]
    ) -> pl.DataFrame:
        query = sa.select(table).order_by(*(table.c[name] for name in key))
        for column, value in filters.items():
            if value is not None:
                query = query.where(table.c[column] == value)
        return self._read(table, query)

    def _read(self, table: sa.Table, query: sa.Select) -> pl.DataFrame:
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return _frame_of(table, rows)


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for `name`, stable across processes and versions."""
    digest = hashlib.sha256(f"quant_assets.promotion:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets a reader work while a Dagster step writes; the busy timeout makes a second writer
    # wait for the lock instead of failing at once with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _staging_table(table: sa.Table, columns: list[str]) -> sa.Table:
    """A temporary table with `columns` of `table`, dropped at commit."""
    return sa.Table(
        f"staging_{table.name}",
        sa.MetaData(),
        *(sa.Column(name, table.c[name].type) for name in columns),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )


def _copy_into(connection: sa.Connection, staging: sa.Table, frame: pl.DataFrame) -> None:
    # COPY then one INSERT ... SELECT ... ON CONFLICT: parameterised multi-row upserts of 50k rows
    # took 6 s on PostgreSQL (20 s row by row), mostly in building and parsing the statements.
    staging.create(connection)
    rows = io.BytesIO()
    # Every datetime column was cast to UTC by _checked_frame.
    frame.write_csv(rows, include_header=False, datetime_format="%Y-%m-%dT%H:%M:%S%.6f+00:00")
    rows.seek(0)
    columns = ", ".join(frame.columns)
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.copy_expert(f"COPY {staging.name} ({columns}) FROM STDIN WITH (FORMAT csv)", rows)
