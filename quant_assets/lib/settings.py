"""Project settings: documented defaults, overridden by a TOML config file, then by environment.

Precedence (lowest first): the defaults below; `quant_assets.toml` in the working directory (or the
file named by QUANT_ASSETS_CONFIG); environment variables. Every setting and its default is listed in
README.md ("Settings").
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from quant_assets.lib.errors import QuantAssetsError
from quant_assets.lib.symbols import normalize_symbol
from quant_assets.lib.timeframes import check_timeframe

DEFAULT_UNIVERSE: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "SPY", "AAPL")
DEFAULT_TIMEFRAMES: tuple[str, ...] = ("1h", "4h", "1d")
CONFIG_FILE_NAME = "quant_assets.toml"
#: values of the `deployment` setting
DEPLOYMENTS: tuple[str, ...] = ("local", "celery")


class SettingsError(QuantAssetsError, ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    #: where bars come from: "synthetic" | "files:<dir>" | "postgres:<url>"
    source: str = "synthetic"
    #: root of every file the pipeline writes (Parquet, MLflow store, SQL tables)
    artifacts: str = "./artifacts"
    #: Dagster instance directory; created on first use
    dagster_home: str = "./.dagster_home"
    #: MLflow tracking URI; empty means a SQLite store under the artifacts root
    mlflow_tracking_uri: str = ""
    #: base URL of the MLflow UI that metadata links point to (run, registry version); empty = the
    #: tracking URI when it is an http(s) server, else http://127.0.0.1:5000 (`mlflow ui`'s default)
    mlflow_ui_url: str = ""
    #: symbols registered by `quant-assets demo`
    universe: tuple[str, ...] = DEFAULT_UNIVERSE
    #: timeframes materialized by default
    timeframes: tuple[str, ...] = DEFAULT_TIMEFRAMES
    #: a text file with one symbol per line; the watchlist sensor keeps the partitions in step
    watchlist: str = "./watchlist.txt"
    #: seed of the synthetic source
    synthetic_seed: int = 7
    #: first bar of the synthetic source (ISO date, UTC)
    synthetic_start: str = "2023-01-01"
    #: synthetic data without learnable structure (a driftless random walk)
    synthetic_random_walk: bool = False
    #: table read by the postgres source
    postgres_table: str = "trading.historical_data"
    #: SQL database of promotion_log, alerts, agent_preds, agent_signals; empty = SQLite under artifacts
    trading_db: str = ""
    #: last bar time of the synthetic source (ISO, UTC); empty = the current hour
    synthetic_end: str = ""
    #: minutes after a bar closes before its timeframe's ohlcv refresh schedule fetches it
    ohlcv_refresh_delay_minutes: int = 5
    #: one cron (UTC) for every timeframe's ohlcv refresh instead of each bar's close; empty = per bar
    ohlcv_refresh_cron: str = ""
    #: cron (UTC) of the nightly retrain of every partition the retrain rules flag
    nightly_retrain_cron: str = "0 2 * * *"
    #: cron (UTC) of the weekly complete retrain of every partition
    weekly_retrain_cron: str = "0 3 * * 0"
    #: hours between evaluations of the retrain sensor
    retrain_sensor_hours: int = 4
    #: retrain rule: a model older than this many days is retrained
    max_model_age_days: float = 30.0
    #: retrain rule: this many newly labelled bars since training call for a retrain
    min_new_samples: int = 20
    #: retrain rule: live hit rate or Sharpe this much worse than at training (relative) is degradation
    degradation_tolerance: float = 0.15
    #: incremental retrains in a row before the next one is complete
    max_incremental_steps: int = 5
    #: URL that alerts are POSTed to as JSON (retried, with a timeout); empty = table and log only
    alert_webhook_url: str = ""
    #: minutes after a bar closes before its timeframe's bar-close serving run scores it (after the
    #: ohlcv refresh, `ohlcv_refresh_delay_minutes`)
    serving_delay_minutes: int = 7
    #: agent_preds rows whose bar is older than this many days are deleted by the daily retention job
    agent_preds_retention_days: int = 90
    #: Dagster runs executing at once (the run queue's limit); 0 = one per CPU core
    max_concurrent_runs: int = 0
    #: partitions per batched run of a backfill (symbols of one timeframe); 0 = spread the watched
    #: symbols over the run slots (at most 64 a run)
    symbols_per_run: int = 0
    #: accept a source whose history contradicts stored bars (dropped or changed bars) and reload
    #: the partition in full, recorded in its metadata; false = refuse, keeping the stored bars
    allow_history_rewrite: bool = False
    #: where steps run: "local" (each run in one process, the embedded default) or "celery" (Dagster's
    #: Celery executor: steps on worker machines; needs shared stores, see README "Scale out")
    deployment: str = "local"
    #: Celery broker of the celery deployment (RabbitMQ; redis://... works too)
    celery_broker: str = "pyamqp://guest:guest@127.0.0.1:5672//"
    #: Celery result backend of the celery deployment (dagster-celery's default, results over the broker)
    celery_backend: str = "rpc://"
    #: Celery queue the steps are sent to and the workers listen on
    celery_queue: str = "quant_assets"
    #: where this came from, for logs
    origin: tuple[str, ...] = field(default=("defaults",), compare=False)

    def resolved_path(self, value: str) -> Path:
        return Path(value).expanduser().resolve()

    @property
    def artifacts_path(self) -> Path:
        return self.resolved_path(self.artifacts)

    @property
    def dagster_home_path(self) -> Path:
        return self.resolved_path(self.dagster_home)

    @property
    def watchlist_path(self) -> Path:
        return self.resolved_path(self.watchlist)

    @property
    def run_slots(self) -> int:
        """Runs the queue executes at once: the setting, or one per CPU core."""
        return self.max_concurrent_runs if self.max_concurrent_runs > 0 else os.cpu_count() or 1

    @property
    def mlflow_ui(self) -> str:
        """Base URL of the MLflow UI for links (see `mlflow_ui_url`)."""
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        if self.mlflow_uri.startswith(("http://", "https://")):
            return self.mlflow_uri.rstrip("/")
        return "http://127.0.0.1:5000"

    @property
    def mlflow_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.artifacts_path / 'mlflow' / 'mlflow.db'}"


_ENV = {
    "source": "QUANT_ASSETS_SOURCE",
    "artifacts": "QUANT_ASSETS_ARTIFACTS",
    "dagster_home": "DAGSTER_HOME",
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_ui_url": "QUANT_ASSETS_MLFLOW_UI_URL",
    "universe": "QUANT_ASSETS_UNIVERSE",
    "timeframes": "QUANT_ASSETS_TIMEFRAMES",
    "watchlist": "QUANT_ASSETS_WATCHLIST",
    "synthetic_seed": "QUANT_ASSETS_SYNTHETIC_SEED",
    "synthetic_start": "QUANT_ASSETS_SYNTHETIC_START",
    "synthetic_random_walk": "QUANT_ASSETS_SYNTHETIC_RANDOM_WALK",
    "postgres_table": "QUANT_ASSETS_POSTGRES_TABLE",
    "trading_db": "QUANT_ASSETS_TRADING_DB",
    "synthetic_end": "QUANT_ASSETS_SYNTHETIC_END",
    "ohlcv_refresh_delay_minutes": "QUANT_ASSETS_OHLCV_REFRESH_DELAY_MINUTES",
    "ohlcv_refresh_cron": "QUANT_ASSETS_OHLCV_REFRESH_CRON",
    "nightly_retrain_cron": "QUANT_ASSETS_NIGHTLY_RETRAIN_CRON",
    "weekly_retrain_cron": "QUANT_ASSETS_WEEKLY_RETRAIN_CRON",
    "retrain_sensor_hours": "QUANT_ASSETS_RETRAIN_SENSOR_HOURS",
    "max_model_age_days": "QUANT_ASSETS_MAX_MODEL_AGE_DAYS",
    "min_new_samples": "QUANT_ASSETS_MIN_NEW_SAMPLES",
    "degradation_tolerance": "QUANT_ASSETS_DEGRADATION_TOLERANCE",
    "max_incremental_steps": "QUANT_ASSETS_MAX_INCREMENTAL_STEPS",
    "alert_webhook_url": "QUANT_ASSETS_ALERT_WEBHOOK_URL",
    "serving_delay_minutes": "QUANT_ASSETS_SERVING_DELAY_MINUTES",
    "agent_preds_retention_days": "QUANT_ASSETS_AGENT_PREDS_RETENTION_DAYS",
    "allow_history_rewrite": "QUANT_ASSETS_ALLOW_HISTORY_REWRITE",
    "max_concurrent_runs": "QUANT_ASSETS_MAX_CONCURRENT_RUNS",
    "symbols_per_run": "QUANT_ASSETS_SYMBOLS_PER_RUN",
    "deployment": "QUANT_ASSETS_DEPLOYMENT",
    "celery_broker": "QUANT_ASSETS_CELERY_BROKER",
    "celery_backend": "QUANT_ASSETS_CELERY_BACKEND",
    "celery_queue": "QUANT_ASSETS_CELERY_QUEUE",
}
ENV_VARS: dict[str, str] = dict(_ENV)


def _coerce(name: str, value: object, where: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[union-attr]
            items = [str(i).strip() for i in items if str(i).strip()]
            if name == "universe":
                return tuple(normalize_symbol(i) for i in items)
            return tuple(check_timeframe(i) for i in items)
        if kind == "int":
            return int(value)  # type: ignore[arg-type]
        if kind == "float":
            return float(value)  # type: ignore[arg-type]
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in {"1", "0", "true", "false", "yes", "no", "on", "off", ""}:
                raise ValueError(f"{value!r} is not a boolean")
            return text in {"1", "true", "yes", "on"}
        if name == "deployment":
            text = str(value).strip().lower()
            if text not in DEPLOYMENTS:
                raise ValueError(f"{value!r} is not one of {', '.join(DEPLOYMENTS)}")
            return text
        return str(value)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{where}: setting {name!r}: {exc}") from exc


def load_settings(config_file: str | os.PathLike[str] | None = None) -> Settings:
    """Settings from defaults, then the config file (if present), then the environment."""
    values: dict[str, object] = {}
    origin = ["defaults"]
    path = Path(config_file or os.environ.get("QUANT_ASSETS_CONFIG") or CONFIG_FILE_NAME)
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
        table = data.get("quant_assets", data)
        known = {f.name for f in fields(Settings)} - {"origin"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise SettingsError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        for name, value in table.items():
            values[name] = _coerce(name, value, str(path))
        origin.append(str(path))
    elif config_file is not None or os.environ.get("QUANT_ASSETS_CONFIG"):
        raise SettingsError(f"config file {path} does not exist")
    for name, var in _ENV.items():
        raw = os.environ.get(var)
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw, f"environment variable {var}")
            origin.append(var)
    return replace(Settings(), **values, origin=tuple(origin))  # type: ignore[arg-type]
