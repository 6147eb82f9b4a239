"""Dagster resources: the market-data source and the artifacts store, configured from Settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from quant_assets.defs.io import ParquetIOManager, partition_path
from quant_assets.lib.settings import Settings
from quant_assets.lib.sources import MarketDataSource, source_from_spec
from quant_assets.lib.storage import read_parquet
from quant_assets.lib.stores import TradingStore, sql_url_for
from quant_assets.lib.tracking import Tracker


class MarketDataResource(dg.ConfigurableResource):
    """Where bars come from: `synthetic`, `files:<dir>` or `postgres:<url>` (QUANT_ASSETS_SOURCE)."""

    source: str = "synthetic"
    synthetic_seed: int = 7
    synthetic_start: str = "2023-01-01"
    synthetic_random_walk: bool = False
    postgres_table: str = "trading.historical_data"

    def describe(self) -> str:
        """The source with the settings that determine its data (recorded on trained models)."""
        if self.source.strip().lower() == "synthetic":
            walk = ", random walk" if self.synthetic_random_walk else ""
            return f"synthetic(seed={self.synthetic_seed}, start={self.synthetic_start}{walk})"
        return self.source

    def get_source(self) -> MarketDataSource:
        kind = self.source.strip().split(":", 1)[0].lower()
        options: dict[str, object] = {}
        if kind == "synthetic":
            options = {
                "seed": self.synthetic_seed,
                "start": datetime.fromisoformat(self.synthetic_start).replace(tzinfo=UTC),
                "random_walk": self.synthetic_random_walk,
            }
        elif kind == "postgres":
            options = {"table": self.postgres_table}
        return source_from_spec(self.source, **options)


class ArtifactStore(dg.ConfigurableResource):
    """Read access to what the IO manager stored, for assets that extend their own history."""

    root: str

    def path(self, asset: str, symbol: str, timeframe: str) -> Path:
        return partition_path(self.root, dg.AssetKey(asset), f"{symbol}|{timeframe}")

    def read_partition(self, asset: str, symbol: str, timeframe: str) -> pl.DataFrame | None:
        path = self.path(asset, symbol, timeframe)
        return read_parquet(path) if path.exists() else None


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry (MLFLOW_TRACKING_URI; default SQLite under the artifacts root)."""

    tracking_uri: str

    def get_tracker(self) -> Tracker:
        return Tracker(self.tracking_uri)


class TradingStoreResource(dg.ConfigurableResource):
    """SQL tables read by people and execution systems: promotion_log, alerts, agent_preds,
    agent_signals (QUANT_ASSETS_TRADING_DB; default SQLite under the artifacts root)."""

    url: str

    def get_store(self) -> TradingStore:
        return TradingStore(self.url)


def resources_from_settings(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    root = str(settings.artifacts_path)
    return {
        "market_data": MarketDataResource(
            source=settings.source,
            synthetic_seed=settings.synthetic_seed,
            synthetic_start=settings.synthetic_start,
            synthetic_random_walk=settings.synthetic_random_walk,
            postgres_table=settings.postgres_table,
        ),
        "artifacts": ArtifactStore(root=root),
        "io_manager": ParquetIOManager(root=root),
        "mlflow": MlflowResource(tracking_uri=settings.mlflow_uri),
        "trading_store": TradingStoreResource(
            url=sql_url_for(settings.trading_db, settings.artifacts_path)
        ),
    }
