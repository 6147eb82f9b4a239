"""Dagster resources: the market-data source and the artifacts store, configured from Settings."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import polars as pl

from quant_assets.defs.io import ParquetIOManager, partition_path
from quant_assets.lib.alerts import Alert, WebhookResult, post_webhook
from quant_assets.lib.retrain import RetrainPolicy
from quant_assets.lib.settings import Settings
from quant_assets.lib.sources import MarketDataSource, source_from_spec
from quant_assets.lib.storage import read_parquet

if TYPE_CHECKING:  # heavy (SQLAlchemy, MLflow): imported where used, so definitions load fast
    from quant_assets.lib.stores import TradingStore
    from quant_assets.lib.tracking import Tracker


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class MarketDataResource(dg.ConfigurableResource):
    """Where bars come from: `synthetic`, `files:<dir>` or `postgres:<url>` (QUANT_ASSETS_SOURCE)."""

    source: str = "synthetic"
    synthetic_seed: int = 7
    synthetic_start: str = "2023-01-01"
    synthetic_random_walk: bool = False
    synthetic_end: str = ""
    """Last bar time (ISO, UTC) of the synthetic source; empty = the current hour."""
    postgres_table: str = "trading.historical_data"
    allow_history_rewrite: bool = False
    """Accept a source that rewrote stored bars (reloaded in full, recorded); default: refuse."""

    def describe(self) -> str:
        """The source with the settings that determine its data (recorded on trained models),
        passwords masked."""
        from quant_assets.lib.sources import source_identity

        if self.source.strip().lower() == "synthetic":
            # the end is not part of the identity: a longer history of the same series is the
            # same source (the data window is recorded with each model anyway)
            walk = ", random walk" if self.synthetic_random_walk else ""
            return f"synthetic(seed={self.synthetic_seed}, start={self.synthetic_start}{walk})"
        postgres = self.source.strip().lower().startswith("postgres")
        return source_identity(self.source, table=self.postgres_table if postgres else None)

    def get_source(self) -> MarketDataSource:
        kind = self.source.strip().split(":", 1)[0].lower()
        options: dict[str, object] = {}
        if kind == "synthetic":
            options = {
                "seed": self.synthetic_seed,
                "start": _utc(self.synthetic_start),
                "random_walk": self.synthetic_random_walk,
                "end": _utc(self.synthetic_end) if self.synthetic_end else None,
            }
        elif kind == "postgres":
            options = {"table": self.postgres_table}
        return source_from_spec(self.source, **options)


class ArtifactStore(dg.ConfigurableResource):
    """Read access to what the IO manager stored, for assets that extend their own history."""

    root: str

    def path(self, asset: str, symbol: str, timeframe: str) -> Path:
        return partition_path(self.root, dg.AssetKey(asset), f"{symbol}|{timeframe}")

    def read_partition(
        self, asset: str, symbol: str, timeframe: str, columns: tuple[str, ...] | None = None
    ) -> pl.DataFrame | None:
        """The stored partition (only `columns` when given), None when it was never written."""
        path = self.path(asset, symbol, timeframe)
        if not path.exists():
            return None
        return pl.read_parquet(path, columns=list(columns)) if columns else read_parquet(path)

    def read_ranks(self, symbol: str, timeframe: str) -> pl.DataFrame:
        """One symbol's rows of the timeframe's `cross_sectional_ranks` (the filter is pushed down
        to the Parquet reader, so a universe of hundreds of symbols is never loaded whole)."""
        path = partition_path(self.root, dg.AssetKey("cross_sectional_ranks"), timeframe)
        if not path.exists():
            raise FileNotFoundError(
                f"cross_sectional_ranks partition {timeframe} has not been materialized "
                f"(no file at {path})"
            )
        return pl.scan_parquet(path).filter(pl.col("symbol") == symbol).collect()

    def require_partition(self, asset: str, symbol: str, timeframe: str) -> pl.DataFrame:
        frame = self.read_partition(asset, symbol, timeframe)
        if frame is None:
            raise FileNotFoundError(
                f"{asset} partition {symbol}|{timeframe} has not been materialized "
                f"(no file at {self.path(asset, symbol, timeframe)})"
            )
        return frame


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry (MLFLOW_TRACKING_URI; default SQLite under the artifacts root)."""

    tracking_uri: str
    ui_url: str = ""
    """Base URL of the MLflow UI that metadata links point to (QUANT_ASSETS_MLFLOW_UI_URL)."""

    def get_tracker(self) -> Tracker:
        from quant_assets.lib.tracking import Tracker

        return Tracker(self.tracking_uri, self.ui_url)


class TradingStoreResource(dg.ConfigurableResource):
    """SQL tables read by people and execution systems: promotion_log, alerts, agent_preds,
    agent_signals (QUANT_ASSETS_TRADING_DB; default SQLite under the artifacts root)."""

    url: str

    def get_store(self) -> TradingStore:
        from quant_assets.lib.stores import TradingStore

        return TradingStore.shared(self.url)


class AlertResource(dg.ConfigurableResource):
    """Where alerts go: the `alerts` table of the trading store, and a webhook when one is set
    (QUANT_ASSETS_ALERT_WEBHOOK_URL), posted with retries and a timeout."""

    url: str
    webhook_url: str = ""
    webhook_timeout_seconds: float = 5.0
    webhook_retries: int = 3

    def get_store(self) -> TradingStore:
        from quant_assets.lib.stores import TradingStore

        return TradingStore.shared(self.url)

    def send(self, alert: Alert) -> WebhookResult | None:
        """Append `alert` to the alerts table and post it to the webhook (None when none is set)."""
        self.get_store().record_alert(
            severity=alert.severity,
            kind=alert.kind,
            message=f"{alert.subject}: {alert.message}",
            symbol=alert.symbol,
            timeframe=alert.timeframe,
            details=alert.details,
            raised_at=alert.created_at,
        )
        if not self.webhook_url:
            return None
        return post_webhook(
            self.webhook_url,
            alert,
            timeout=self.webhook_timeout_seconds,
            retries=self.webhook_retries,
        )


class RetrainRulesResource(dg.ConfigurableResource):
    """Thresholds of the retrain rules (lib.retrain.RetrainPolicy), shared by the retrain sensors
    and by `challenger_model` when it decides between an incremental and a complete retrain."""

    max_model_age_days: float = 30.0
    min_new_samples: int = 20
    degradation_tolerance: float = 0.15
    max_incremental_steps: int = 5
    timeframes: list[str] = ["1h", "4h", "1d"]
    """Timeframes whose models the rules watch (every symbol partition at each)."""

    def policy(self) -> RetrainPolicy:
        return RetrainPolicy(
            max_model_age_days=self.max_model_age_days,
            min_new_samples=self.min_new_samples,
            degradation_tolerance=self.degradation_tolerance,
            max_incremental_steps=self.max_incremental_steps,
        )


def trading_store_url(spec: str | None, artifacts_root: Path) -> str:
    """SQLAlchemy URL of the trading store (lib.stores.sql_url_for), without importing SQLAlchemy
    for the default SQLite file."""
    if not spec:
        return f"sqlite:///{Path(artifacts_root).resolve() / 'trading.db'}"
    from quant_assets.lib.stores import sql_url_for

    return sql_url_for(spec, artifacts_root)


def resources_from_settings(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    root = str(settings.artifacts_path)
    trading_url = trading_store_url(settings.trading_db, settings.artifacts_path)
    return {
        "market_data": MarketDataResource(
            source=settings.source,
            synthetic_seed=settings.synthetic_seed,
            synthetic_start=settings.synthetic_start,
            synthetic_random_walk=settings.synthetic_random_walk,
            synthetic_end=settings.synthetic_end,
            postgres_table=settings.postgres_table,
            allow_history_rewrite=settings.allow_history_rewrite,
        ),
        "artifacts": ArtifactStore(root=root),
        "io_manager": ParquetIOManager(root=root),
        "mlflow": MlflowResource(tracking_uri=settings.mlflow_uri, ui_url=settings.mlflow_ui),
        "trading_store": TradingStoreResource(url=trading_url),
        "alerts": AlertResource(url=trading_url, webhook_url=settings.alert_webhook_url),
        "retrain_rules": RetrainRulesResource(
            max_model_age_days=settings.max_model_age_days,
            min_new_samples=settings.min_new_samples,
            degradation_tolerance=settings.degradation_tolerance,
            max_incremental_steps=settings.max_incremental_steps,
            timeframes=list(settings.timeframes),
        ),
    }
