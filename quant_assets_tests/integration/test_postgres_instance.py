"""`ohlcv` materialized on a Dagster instance stored in a real PostgreSQL, configured by ./dagster.yaml."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest

from quant_assets.defs.ohlcv import ohlcv
from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME, partition_key
from quant_assets.defs.resources import resources_from_settings
from quant_assets.lib.settings import load_settings
from quant_assets_tests.services import temporary_postgres_database

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.postgres


def test_top_level_dagster_yaml_runs_on_postgres(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with temporary_postgres_database("qa_dagster") as url:
        parts = urlparse(url.replace("+psycopg2", ""))
        monkeypatch.setenv("DAGSTER_PG_HOST", parts.hostname or "127.0.0.1")
        monkeypatch.setenv("DAGSTER_PG_PORT", str(parts.port or 5432))
        monkeypatch.setenv("DAGSTER_PG_USER", parts.username or "postgres")
        monkeypatch.setenv("DAGSTER_PG_PASSWORD", parts.password or "")
        monkeypatch.setenv("DAGSTER_PG_DB", parts.path.lstrip("/"))
        home = project_dir / "pg_home"
        home.mkdir()
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        settings = load_settings()
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, ["BTCUSDT", "SPY"])
            keys = [partition_key(s, t) for s in ("BTCUSDT", "SPY") for t in ("1h", "1d")]
            for key in keys:
                result = dg.materialize(
                    [ohlcv],
                    partition_key=key,
                    instance=instance,
                    resources=resources_from_settings(settings),
                )
                assert result.success
            records = instance.fetch_materializations(dg.AssetKey("ohlcv"), limit=50).records
            assert sorted({r.partition_key for r in records}) == sorted(str(k) for k in keys)
            runs = instance.get_runs()
            assert len(runs) == len(keys) and all(r.is_success for r in runs)
