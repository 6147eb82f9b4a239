"""SQLite connection settings shared by the embedded stores (Dagster's files, `defs/storage.py`;
MLflow's tracking store, `lib/tracking.py`). No heavy imports: every Dagster process loads it."""

from __future__ import annotations

from typing import Any


def synchronous_normal_in_wal(dbapi_connection: Any, _record: Any = None) -> None:
    """`PRAGMA synchronous=NORMAL` on a connection to a database in WAL mode (a SQLAlchemy
    `connect` listener). SQLite's default, FULL, syncs the WAL file to disk at every commit: the
    event log commits twice per event (run shard, then index), about a hundred events per
    partition, each sync stalling the run's process 0.5-2 ms on this machine's disk. In WAL mode
    NORMAL cannot corrupt the database; a power loss or OS crash (not a killed process) may lose
    the last transactions before a checkpoint. A file not (yet) in WAL mode keeps FULL: there
    NORMAL could corrupt it on power loss."""
    cursor = dbapi_connection.cursor()
    try:
        (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() == "wal":
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
