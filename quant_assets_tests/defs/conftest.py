"""Helpers for tests that run real Dagster materializations (fixtures live in ../conftest.py)."""

from __future__ import annotations

import dagster as dg

from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME


def register(instance: dg.DagsterInstance, *symbols: str) -> None:
    instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, list(symbols))
