"""The embedded instance's storage: Dagster's own SQLite run, event-log and schedule storages (the
same files, schema and behaviour as `storage: sqlite`), except that each process keeps its
SQLAlchemy engines and their connections instead of building an engine for every call.

Dagster's SQLite storages create an engine per call (`create_engine` + the dialect's first-connect
queries + statement compilation, which SQLAlchemy caches per engine) and dispose of it after. The
event log does that twice per asset event (run shard, then index shard), and the alembic revision
of every run shard is checked again by each process that opens it. Measured on this machine
(`pytest -s quant_assets_tests/defs/test_storage.py` prints it): 200 materializations 3.1 CPU-s
with Dagster's storage, 1.05 CPU-s with kept connections; event storage was about a fifth of the
pipeline's CPU in a sampling profile of the 4 x 3 demo.

Safe across processes: SQLite locks per transaction (WAL journal on the event shards, as Dagster
sets it), every use is one transaction, and SQLite reads see what other processes committed.
Within a process, the event log serialises its connections with Dagster's own lock; runs and
schedules use a thread-safe pool. At most `MAX_SHARD_ENGINES` run shards stay open per process
(least recently used closed first); a forked child drops the inherited connections unclosed
(SQLite connections must not cross a fork), and `wipe` closes them before deleting the files.
Connections to a file in WAL mode commit with `synchronous=NORMAL` (no disk sync per commit; see
`lib/sqlite_pragmas.synchronous_normal_in_wal`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool

from quant_assets.lib.sqlite_pragmas import synchronous_normal_in_wal

#: run shards (plus the index) whose engine a process keeps open
MAX_SHARD_ENGINES = 16
#: connections a run or schedule storage keeps per process (more are opened and closed on demand)
POOL_SIZE = 2

_live: weakref.WeakSet = weakref.WeakSet()
_ENGINE_LOCK = threading.Lock()


def _engine(conn_string: str, **connect_args) -> Engine:
    engine = create_engine(
        conn_string,
        poolclass=QueuePool,
        pool_size=POOL_SIZE,
        max_overflow=8,
        connect_args={**connect_args, "check_same_thread": False},
    )
    event.listen(engine, "connect", synchronous_normal_in_wal)
    return engine


def _after_fork_in_child() -> None:
    for storage in list(_live):
        storage._forget_engines()


os.register_at_fork(after_in_child=_after_fork_in_child)


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log (run shards + index shard under `base_dir`), engines kept."""

    def __init__(self, base_dir: str, inst_data=None):
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        self._tables_present: set[str] = set()
        super().__init__(base_dir, inst_data)
        _live.add(self)

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    def _initdb(self, engine: Engine, for_index_shard: bool = False) -> None:
        """Dagster's, without its cost on a shard that is stamped already. Dagster creates the
        tables and stamps the alembic revision of a shard that has none, and otherwise does
        nothing, but to find that out it reads the head revision from alembic's migration scripts
        (parsing every one of them) each time a process first opens a shard: every run shard is
        opened by the CLI, the daemon and the run's worker (about 1 % of a pipeline's CPU in a
        sampling profile at 16 x 3). The stamp is read first here; only a new shard goes through
        Dagster's own path."""
        from alembic.runtime.migration import MigrationContext

        with engine.connect() as conn:
            stamped = MigrationContext.configure(conn).get_current_revision()
        if not stamped:
            super()._initdb(engine, for_index_shard=for_index_shard)

    def has_table(self, table_name: str) -> bool:
        """Dagster's check of the index shard, with the tables it found remembered per process.
        Dagster builds an engine and opens a connection for every call, and calls it for the tags
        of every asset event, every check evaluation and every read of the dynamic partitions
        (each multi-partition key range a step resolves, several per step: about 1.3 % of the run
        workers' CPU in a sampling profile at 16 x 3). A table, once created, stays: only a wipe
        or an upgrade changes the schema, and both forget what was found. A missing table is
        looked up again at every call (Dagster's fallbacks for an older schema keep working until
        a migration adds it). Called inside `index_connection` too, so without `_db_lock`."""
        if table_name in self._tables_present:
            return True
        present = super().has_table(table_name)
        if present:
            self._tables_present.add(table_name)
        return present

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engines.pop(shard, None)
            if engine is None:
                engine = _engine(
                    self.conn_string_for_shard(shard), timeout=SQLITE_BUSY_TIMEOUT_SECONDS
                )
                if shard not in self._initialized_dbs:
                    self._initdb(engine)
                    self._initialized_dbs.add(shard)
            self._engines[shard] = engine  # the most recently used last
            while len(self._engines) > MAX_SHARD_ENGINES:
                _, oldest = self._engines.popitem(last=False)
                oldest.dispose()
            with engine.connect() as conn, conn.begin():
                yield conn

    def _drop_engines(self, close: bool) -> None:
        for engine in self._engines.values():
            engine.dispose(close=close)
        self._engines = OrderedDict()

    def _forget_engines(self) -> None:
        """Drop every engine without closing its connections (they belong to the parent)."""
        self._drop_engines(close=False)
        self._db_lock = threading.Lock()

    def close_engines(self) -> None:
        with self._db_lock:
            self._drop_engines(close=True)

    def wipe(self) -> None:
        self.close_engines()
        self._tables_present = set()
        super().wipe()

    def upgrade(self) -> None:
        self.close_engines()
        self._tables_present = set()
        super().upgrade()

    def dispose(self) -> None:
        super().dispose()
        self.close_engines()


class _KeptEngine:
    """`connect()` of Dagster's SQLite run and schedule storages, on one engine kept per process."""

    _conn_string: str

    def _kept_engine(self) -> Engine:
        engine = self.__dict__.get("_qa_engine")
        if engine is None:
            with _ENGINE_LOCK:
                engine = self.__dict__.get("_qa_engine")
                if engine is None:
                    engine = self.__dict__["_qa_engine"] = _engine(self._conn_string)
                    _live.add(self)
        return engine

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self._kept_engine().connect() as conn, conn.begin():
            yield conn

    def _drop_engine(self, close: bool) -> None:
        engine = self.__dict__.pop("_qa_engine", None)
        if engine is not None:
            engine.dispose(close=close)

    def _forget_engines(self) -> None:
        self._drop_engine(close=False)

    def dispose(self) -> None:
        super().dispose()  # type: ignore[misc]
        self._drop_engine(close=True)


@contextmanager
def _opening_lock(base_dir: str) -> Iterator[None]:
    """An exclusive file lock in `base_dir` while a process opens (and, on a fresh folder, creates
    and stamps) a database there. Dagster's `from_local` creates the tables and stamps alembic's
    revision when it finds none: two processes opening a fresh `schedules.db` at once both stamped
    it, and every later open failed with "Version table 'alembic_version' has more than one head
    present" (seen once in a fresh-clone CI run, a warm worker and the daemon starting together)."""
    import fcntl

    os.makedirs(base_dir, exist_ok=True)
    with open(os.path.join(base_dir, ".quant_assets_open.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class PooledSqliteRunStorage(_KeptEngine, SqliteRunStorage):
    """Dagster's SQLite run storage (`runs.db` under `base_dir`), engine kept."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        with _opening_lock(config_value["base_dir"]):
            return cls.from_local(inst_data=inst_data, **config_value)


class PooledSqliteScheduleStorage(_KeptEngine, SqliteScheduleStorage):
    """Dagster's SQLite schedule storage (`schedules.db` under `base_dir`), engine kept."""

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        with _opening_lock(config_value["base_dir"]):
            return cls.from_local(inst_data=inst_data, **config_value)
