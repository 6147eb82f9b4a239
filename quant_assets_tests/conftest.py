"""Shared fixtures: isolated settings, artifacts root and Dagster instance per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never read the developer's quant_assets.toml or environment overrides.
for _var in (
    "QUANT_ASSETS_CONFIG",
    "QUANT_ASSETS_SOURCE",
    "QUANT_ASSETS_ARTIFACTS",
    "QUANT_ASSETS_UNIVERSE",
    "QUANT_ASSETS_TIMEFRAMES",
    "QUANT_ASSETS_WATCHLIST",
    "MLFLOW_TRACKING_URI",
):
    os.environ.pop(_var, None)


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary working directory with its own artifacts, watchlist and DAGSTER_HOME."""
    monkeypatch.chdir(tmp_path)
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI; a test starts without one
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("QUANT_ASSETS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("QUANT_ASSETS_WATCHLIST", str(tmp_path / "watchlist.txt"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return tmp_path


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated MLflow SQLite store per session (creating one costs seconds of migrations)."""
    from quant_assets.lib.tracking import Tracker

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    import sqlite3

    Tracker(f"sqlite:///{path}").client.search_experiments()
    with sqlite3.connect(path) as connection:  # fold the WAL into the file before it is copied
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


@pytest.fixture
def mlflow_uri(project_dir: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh MLflow tracking store for this test (a copy of the template), set in the environment."""
    import shutil

    target = project_dir / "artifacts" / "mlflow" / "mlflow.db"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(mlflow_template_db, target)
    uri = f"sqlite:///{target}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def instance(project_dir: Path):
    """A real, persistent (SQLite) Dagster instance in the test's DAGSTER_HOME."""
    import dagster as dg

    home = project_dir / "dagster_home"
    home.mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def settings(project_dir: Path):
    from quant_assets.lib.settings import load_settings

    return load_settings()


@pytest.fixture
def defs(settings):
    from quant_assets.definitions import build_defs

    return build_defs(settings)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first: the demo, then the end-to-end (`slow`) ones, then the rest, each
    group in collection order. With pytest-xdist (`-n`, one test file per worker at a time:
    `--dist loadscope`) the long files start at once and the short ones fill the gaps at the end,
    instead of one long file starting last on an otherwise idle machine."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("demo"):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)  # stable: collection order within each group
