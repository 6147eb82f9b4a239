"""The embedded instance's SQLite storage with kept connections (defs/storage.py): the same records
as Dagster's own SQLite storage, safe with several processes, a fork, a wipe and many run shards."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from quant_assets.defs import storage as pooled
from quant_assets.defs.backfills import instance_yaml


def _instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_yaml(2, home))
    return dg.DagsterInstance.from_config(str(home))


def _materialize(instance: dg.DagsterInstance, count: int, prefix: str = "a") -> None:
    for i in range(count):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=f"{prefix}{i % 10}", partition=f"p{i}", metadata={"i": i}
            )
        )


def _records(instance: dg.DagsterInstance) -> list[tuple[str, str | None, int]]:
    out = []
    for i in range(10):
        result = instance.fetch_materializations(dg.AssetKey(f"a{i}"), limit=1000)
        for record in result.records:
            m = record.asset_materialization
            out.append((m.asset_key.to_user_string(), m.partition, m.metadata["i"].value))
    return sorted(out)


def test_same_records_as_dagsters_storage_and_cheaper(tmp_path):
    with _instance(tmp_path / "pooled") as instance:
        assert isinstance(instance.event_log_storage, pooled.PooledSqliteEventLogStorage)
        assert isinstance(instance.run_storage, pooled.PooledSqliteRunStorage)
        assert isinstance(instance.schedule_storage, pooled.PooledSqliteScheduleStorage)
        started = time.process_time()
        _materialize(instance, 200)
        ours = time.process_time() - started
        kept = _records(instance)
        # the run workers get the instance by reference: the same classes come back
        with dg.DagsterInstance.from_ref(instance.get_ref()) as again:
            assert isinstance(again.event_log_storage, pooled.PooledSqliteEventLogStorage)
            assert _records(again) == kept
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        started = time.process_time()
        _materialize(instance, 200)
        theirs = time.process_time() - started
        assert _records(instance) == kept
    assert len(kept) == 200
    print(f"200 materializations: {theirs:.2f} CPU-s Dagster's SQLite storage, {ours:.2f} kept")


@dg.op
def noop():
    return 1


@dg.job
def tiny():
    noop()


def _write_from_child(home: str, prefix: str) -> None:
    with dg.DagsterInstance.from_config(home) as instance:
        _materialize(instance, 50, prefix)


def test_concurrent_processes_and_a_fork(tmp_path):
    home = tmp_path / "home"
    with _instance(home) as instance:
        _materialize(instance, 20)  # the parent's engines are open before the fork
        spawn = multiprocessing.get_context("spawn")
        children = [
            spawn.Process(target=_write_from_child, args=(str(home), prefix))
            for prefix in ("b", "c")
        ]
        for child in children:
            child.start()
        pid = os.fork()
        if pid == 0:  # the forked child writes on connections of its own, then exits at once
            code = 0
            try:
                _materialize(instance, 30, "d")
            except BaseException:
                code = 1
            os._exit(code)
        _materialize(instance, 30, "e")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        for child in children:
            child.join(120)
            assert child.exitcode == 0
        for prefix, count in (("a", 20), ("b", 50), ("c", 50), ("d", 30), ("e", 30)):
            stored = sum(
                len(instance.fetch_materializations(dg.AssetKey(f"{prefix}{i}"), limit=100).records)
                for i in range(10)
            )
            assert stored == count, prefix


def test_many_run_shards_and_a_wipe(tmp_path, monkeypatch):
    monkeypatch.setattr(pooled, "MAX_SHARD_ENGINES", 4)

    with _instance(tmp_path / "home") as instance:
        results = [tiny.execute_in_process(instance=instance) for _ in range(7)]
        assert all(r.success for r in results)
        storage = instance.event_log_storage
        assert len(storage._engines) <= 4  # the least recently used shards were closed
        for result in results:  # and reopen on demand
            assert instance.all_logs(result.run_id)
        _materialize(instance, 10)
        instance.wipe()
        assert instance.get_runs() == []
        _materialize(instance, 10)
        assert len(_records(instance)) == 10


@pytest.mark.parametrize("kind", ["run", "schedule"])
def test_run_and_schedule_storage_threads(tmp_path, kind):
    from concurrent.futures import ThreadPoolExecutor

    with _instance(tmp_path / kind) as instance:
        if kind == "run":
            job = dg.GraphDefinition(name="g", node_defs=[]).to_job()
            runs = [instance.create_run_for_job(job) for _ in range(6)]
            with ThreadPoolExecutor(4) as pool:
                found = list(pool.map(lambda r: instance.get_run_by_id(r.run_id), runs * 5))
            assert {r.run_id for r in found} == {r.run_id for r in runs}
        else:
            with ThreadPoolExecutor(4) as pool:
                states = list(pool.map(lambda _: instance.all_instigator_state(), range(20)))
            assert states == [[]] * 20


def test_a_stamped_shard_is_opened_without_reading_the_migration_scripts(tmp_path, monkeypatch):
    import traceback

    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    reads = []
    from_config = ScriptDirectory.from_config.__func__
    monkeypatch.setattr(
        ScriptDirectory,
        "from_config",
        classmethod(
            lambda cls, config: (
                reads.append(traceback.extract_stack()[-3].filename) or from_config(cls, config)
            )
        ),
    )

    home = tmp_path / "home"
    with _instance(home) as instance:
        run_id = tiny.execute_in_process(instance=instance).run_id
    # a new shard: Dagster's own path created and stamped it
    assert any(path.endswith("sqlite_event_log.py") for path in reads), reads
    db = home / "history" / "runs" / f"{run_id}.db"
    with create_engine(f"sqlite:///{db}").connect() as conn:
        stamped = MigrationContext.configure(conn).get_current_revision()
    from dagster._core.storage.event_log.sqlite import sqlite_event_log
    from dagster._core.storage.sql import get_alembic_config

    head = from_config(
        ScriptDirectory, get_alembic_config(sqlite_event_log.__file__)
    ).get_current_head()
    assert stamped == head  # the revision Dagster's own path would check against
    reads.clear()
    # another process opening the stamped shards (as the CLI, the daemon and the worker each do):
    # only the run and schedule storages read the scripts, once per process
    with dg.DagsterInstance.from_config(str(home)) as again:
        events = again.all_logs(run_id)
        assert again.fetch_materializations(dg.AssetKey("a0"), limit=1).records == []  # index
    assert not any(path.endswith("sqlite_event_log.py") for path in reads), reads
    assert any(e.dagster_event_type == dg.DagsterEventType.RUN_SUCCESS for e in events)


def test_commits_sync_to_disk_only_at_checkpoints_in_wal_mode(tmp_path):
    """Every connection of the three storages to a WAL file runs with synchronous=NORMAL (1);
    a file in rollback-journal mode keeps SQLite's FULL (2)."""
    import sqlalchemy as sa

    with _instance(tmp_path / "home") as instance:
        _materialize(instance, 3)
        assert tiny.execute_in_process(instance=instance).success  # a run, its shard
        storages = {
            "runs": instance.run_storage.connect(),
            "schedules": instance.schedule_storage.connect(),
            "index": instance.event_log_storage.index_connection(),
        }
        for name, connecting in storages.items():
            with connecting as conn:
                mode = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
                synchronous = conn.execute(sa.text("PRAGMA synchronous")).scalar()
            assert (str(mode).lower(), synchronous) == ("wal", 1), name
    plain = tmp_path / "plain.db"
    engine = pooled._engine(f"sqlite:///{plain}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "delete"
        assert conn.execute(sa.text("PRAGMA synchronous")).scalar() == 2
    engine.dispose()


def test_tables_found_are_remembered_and_a_missing_one_is_asked_again(tmp_path, monkeypatch):
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    asked: list[str] = []
    dagsters = SqliteEventLogStorage.has_table
    monkeypatch.setattr(
        SqliteEventLogStorage,
        "has_table",
        lambda self, name: asked.append(name) or dagsters(self, name),
    )
    with _instance(tmp_path / "home") as instance:
        storage = instance.event_log_storage
        instance.add_dynamic_partitions("symbols", ["AAA", "BBB"])
        for _ in range(5):  # as a step resolving its partition key ranges does
            assert instance.has_dynamic_partition("symbols", "AAA")
            assert not instance.has_dynamic_partition("symbols", "ZZZ")
            assert instance.get_dynamic_partitions("symbols") == ["AAA", "BBB"]
        _materialize(instance, 30)  # asset events: their tags table is looked up for each
        assert _records(instance) == sorted((f"a{i % 10}", f"p{i}", i) for i in range(30))
        # Dagster's own check ran once per table, not once per call
        assert asked.count("dynamic_partitions") == 1, asked
        assert asked.count("asset_event_tags") <= 1, asked
        # a missing table is asked again each time, and seen once it exists
        assert not storage.has_table("qa_extra") and not storage.has_table("qa_extra")
        assert asked.count("qa_extra") == 2
        with storage.index_connection() as conn:
            conn.exec_driver_sql("CREATE TABLE qa_extra (x INTEGER)")
        assert storage.has_table("qa_extra") and storage.has_table("qa_extra")
        assert asked.count("qa_extra") == 3
        # a wipe forgets what was found (the schema is Dagster's to change)
        instance.wipe()
        assert instance.get_dynamic_partitions("symbols") == []
        assert asked.count("dynamic_partitions") == 2, asked
