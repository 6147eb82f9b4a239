"""The agent version catalog in SQL (`agents`, `agent_versions`, defined in lib/stores.py), kept in
step with the MLflow registry, and the retention of `agent_preds`.

An execution system joins `agent_signals.agent_version_id` / `agent_preds.agent_version_id` to
`agent_versions.id` without reaching MLflow. `sync_catalog` rewrites one registered model's rows
from the registry (every version, its aliases); it runs at every registration (volatility agent,
the `champion` asset after each evaluation), every promotion and rollback (inside the registry
lock, lib/registry_ops.py) and whenever serving meets a version it does not know.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from quant_assets.lib.stores import (
    AGENT_KINDS,
    TradingStore,
    agent_preds,
    agent_versions,
    agents_table,
)
from quant_assets.lib.tracking import chunks


def agent_identity(name: str) -> tuple[str, str, str]:
    """(kind, symbol, timeframe) of a registered name: `direction.BTCUSDT.1h`,
    `volatility.BTCUSDT.1h`, `meta.BTCUSDT.1h.bull`; a global model (`direction_global.1h`) has
    symbol `ALL`."""
    parts = name.split(".")
    head = parts[0]
    kind = next((k for k in AGENT_KINDS if head == k or head.startswith(f"{k}_")), None)
    if kind is None or len(parts) < 2:
        raise ValueError(f"{name!r} is not an agent's registered name (<kind>.<SYMBOL>.<tf>)")
    if len(parts) == 2:
        return kind, "ALL", parts[1]
    return kind, parts[1], parts[2]


def semantic_version(tags: dict[str, str], version: str) -> str:
    """vMAJOR.MINOR.PATCH: the retrain rules' label (v1.0, v1.1 incremental, v2.0 complete) with
    patch 0, or v<registry version>.0.0 for a version registered without one."""
    label = tags.get("version_label") or ""
    if label.startswith("v") and label.count(".") == 1:
        return f"{label}.0"
    if label.startswith("v") and label.count(".") == 2:
        return label
    return f"v{version}.0.0"


def _insert(engine: sa.Engine, table: sa.Table):
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


def sync_catalog(
    tracker: Any, store: TradingStore, name: str, connection: sa.Connection | None = None
) -> int:
    """Write every registered version of `name` and its current aliases into the catalog; returns
    the number of versions. Metrics and training window are read once per version (they never
    change); aliases are rewritten on every call. With `connection` (the registry lock's), in
    that transaction."""
    if connection is None:
        with store.engine.begin() as own:
            return sync_catalog(tracker, store, name, own)
    kind, symbol, timeframe = agent_identity(name)
    now = datetime.now(UTC)
    connection.execute(
        _insert(store.engine, agents_table)
        .values(kind=kind, symbol=symbol, timeframe=timeframe, registered_name=name, created_at=now)
        .on_conflict_do_nothing(index_elements=["registered_name"])
    )
    agent_id = connection.execute(
        sa.select(agents_table.c.id).where(agents_table.c.registered_name == name)
    ).scalar_one()
    known = dict(
        connection.execute(
            sa.select(agent_versions.c.version, agent_versions.c.aliases).where(
                agent_versions.c.registered_name == name
            )
        ).all()
    )
    by_version: dict[str, list[str]] = {}
    for alias, version in tracker.aliases(name).items():
        by_version.setdefault(str(version), []).append(alias)
    versions = tracker.versions(name)  # a version a night for a model retrained nightly
    listed = [mv.version for mv in versions if mv.version in known]
    # every listed version is synced now; only the rows whose aliases moved are rewritten
    for chunk in chunks(listed, 500):
        connection.execute(
            agent_versions.update()
            .where(agent_versions.c.registered_name == name, agent_versions.c.version.in_(chunk))
            .values(synced_at=now)
        )
    for mv in versions:
        version = mv.version
        aliases = ",".join(sorted(by_version.get(version, [])))
        if version in known:
            if known[version] != aliases:
                connection.execute(
                    agent_versions.update()
                    .where(
                        agent_versions.c.registered_name == name,
                        agent_versions.c.version == version,
                    )
                    .values(aliases=aliases)
                )
            continue
        tags = tracker.version_tags(name, version)
        run = tracker.client.get_run(mv.run_id) if mv.run_id else None
        params = run.data.params if run is not None else {}
        metrics = run.data.metrics if run is not None else {}
        connection.execute(
            _insert(store.engine, agent_versions)
            .values(
                agent_id=agent_id,
                registered_name=name,
                version=version,
                semver=semantic_version(tags, version),
                artifact_uri=str(mv.source),
                mlflow_run_id=mv.run_id,
                metrics_json=json.dumps(metrics, sort_keys=True),
                train_start=params.get("data.window_start") or tags.get("trained_from"),
                train_end=params.get("data.window_end") or tags.get("trained_through"),
                data_version=tags.get("data_version"),
                code_version=tags.get("code_version") or tags.get("git_commit"),
                aliases=aliases,
                registered_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
                if mv.creation_timestamp
                else None,
                synced_at=now,
            )
            .on_conflict_do_update(
                index_elements=["registered_name", "version"],
                set_={"aliases": aliases, "synced_at": now},
            )
        )
    return len(versions)


def version_ids(store: TradingStore, name: str) -> dict[str, int]:
    """version -> agent_versions.id of registered model `name`."""
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(agent_versions.c.version, agent_versions.c.id).where(
                agent_versions.c.registered_name == name
            )
        ).all()
    return {str(v): int(i) for v, i in rows}


def version_id(tracker: Any, store: TradingStore, name: str, version: str) -> int:
    """agent_versions.id of `name` v`version`, syncing the catalog first when it lacks it."""
    found = version_ids(store, name).get(str(version))
    if found is None:
        sync_catalog(tracker, store, name)
        found = version_ids(store, name)[str(version)]
    return found


def catalog(store: TradingStore, name: str | None = None) -> pl.DataFrame:
    """The catalog as one frame (agent_versions joined to agents), by name and version number."""
    query = sa.select(
        agent_versions, agents_table.c.kind, agents_table.c.symbol, agents_table.c.timeframe
    ).join(agents_table, agents_table.c.id == agent_versions.c.agent_id)
    if name is not None:
        query = query.where(agent_versions.c.registered_name == name)
    with store.engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    frame = pl.DataFrame([dict(r) for r in rows], infer_schema_length=None)
    if frame.is_empty():
        return frame
    return frame.sort("registered_name", pl.col("version").cast(pl.Int64))


def registry_catalog_differences(tracker: Any, store: TradingStore, name: str) -> list[str]:
    """Where the catalog disagrees with the registry for `name`: versions missing on either side
    and aliases that differ; empty when they agree."""
    registry = {v.version for v in tracker.versions(name)}
    rows = catalog(store, name)
    stored = dict(zip(rows["version"], rows["aliases"], strict=True)) if rows.height else {}
    problems = [f"v{v} registered but not in the catalog" for v in sorted(registry - set(stored))]
    problems += [f"v{v} in the catalog but not registered" for v in sorted(set(stored) - registry)]
    by_version: dict[str, list[str]] = {}
    for alias, version in tracker.aliases(name).items():
        by_version.setdefault(str(version), []).append(alias)
    for version in sorted(registry & set(stored)):
        expected = ",".join(sorted(by_version.get(version, [])))
        if stored[version] != expected:
            problems.append(
                f"v{version}: catalog aliases {stored[version]!r}, registry {expected!r}"
            )
    return problems


def delete_old_predictions(
    store: TradingStore, max_age: timedelta, now: datetime | None = None
) -> int:
    """Retention: delete agent_preds rows whose bar (timestamp) is older than `now - max_age`;
    returns the number deleted. Signals are kept (they are the audit trail of what was served)."""
    if max_age <= timedelta(0):
        raise ValueError(f"max_age must be positive, got {max_age}")
    cutoff = (now or datetime.now(UTC)) - max_age
    with store.engine.begin() as connection:
        result = connection.execute(agent_preds.delete().where(agent_preds.c.timestamp < cutoff))
    return int(result.rowcount or 0)
