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
    monkeypatch.setenv("QUANT_ASSETS_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("QUANT_ASSETS_WATCHLIST", str(tmp_path / "watchlist.txt"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return tmp_path
