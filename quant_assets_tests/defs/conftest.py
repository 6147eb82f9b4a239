"""Fixtures for tests that run real Dagster materializations."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from quant_assets.definitions import build_defs
from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
from quant_assets.lib.settings import load_settings


@pytest.fixture
def instance(project_dir: Path):
    """A real, persistent (SQLite) Dagster instance in the test's DAGSTER_HOME."""
    home = project_dir / "dagster_home"
    home.mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst


@pytest.fixture
def settings(project_dir: Path):
    return load_settings()


@pytest.fixture
def defs(settings) -> dg.Definitions:
    return build_defs(settings)


def register(instance: dg.DagsterInstance, *symbols: str) -> None:
    instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, list(symbols))
