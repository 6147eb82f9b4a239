"""Serving at bar close and the retention of `agent_preds`, as Dagster jobs and schedules.

`serve_bar_close`: one run per close of a timeframe scores the newly closed bar of every symbol
and applies the regime gate (lib/bar_close.py), a few minutes after the ohlcv refresh
(`serving_delay_minutes`). The server, with its loaded models and the stored history it keeps,
lives as long as the process: runs executed in one process load each model and read each
unchanged file once. The instance's run launcher hands these runs to such a process, a warm worker
(defs/warm_launcher.py); a run in a fresh process (`execute_in_process` in a new interpreter, or
another launcher) reads the champions from the local model cache (`<artifacts>/serving_cache`,
lib/serving_cache.py), from MLflow only after a promotion.
`agent_preds_retention`: daily, deletes predictions older than `agent_preds_retention_days`."""

import os
from datetime import timedelta

import dagster as dg

from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
from quant_assets.defs.resources import ArtifactStore, MlflowResource, TradingStoreResource
from quant_assets.lib.settings import Settings
from quant_assets.lib.timeframes import refresh_cron

#: one server per (tracking store, trading store, artifacts) in this process: its models stay loaded
_SERVERS: dict[tuple[str, str, str], object] = {}
#: closes each of those servers has served in this process (1: a cold process)
_CLOSES: dict[tuple[str, str, str], int] = {}


class BarCloseConfig(dg.Config):
    timeframe: str
    """The timeframe whose bar just closed."""
    lookback_bars: int = 400
    """Stored bars the new bar's features are computed from."""
    use_regime_gate: bool = True
    """Flat on bars whose regime gate is off, as `signals` (SignalsConfig.use_regime_gate)."""
    regime_quantile_window: int | None = None
    """The `regime` asset's quantile_window (None: expanding); keep the two equal."""


#: op results stay in memory: the rows live in SQL, the Parquet IO manager is for assets
RESULTS_IN_MEMORY = {"op_results": dg.mem_io_manager}


@dg.op(
    description="Score the newly closed bar of every symbol of a timeframe, apply the regime gate "
    "and upsert agent_preds and agent_signals (lib/bar_close.py).",
    out=dg.Out(dict, io_manager_key="op_results"),
)
def serve_new_bars(
    context: dg.OpExecutionContext,
    config: BarCloseConfig,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    artifacts: ArtifactStore,
) -> dict:
    from quant_assets.lib.bar_close import BarCloseServer
    from quant_assets.lib.regimes import RegimeConfig

    key = (mlflow.tracking_uri, trading_store.url, artifacts.root)
    server = _SERVERS.get(key)
    if server is None:
        # the tracker is made only for a champion not in the local model cache: a run in a
        # fresh process then does not import MLflow (seconds)
        server = _SERVERS[key] = BarCloseServer(
            mlflow.get_tracker, trading_store.get_store(), artifacts.root
        )
    server.lookback = config.lookback_bars
    server.use_regime_gate = config.use_regime_gate
    server.regime = RegimeConfig(quantile_window=config.regime_quantile_window)
    symbols = context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME)
    report = server.serve(config.timeframe, symbols, dagster_run_id=context.run_id)
    _CLOSES[key] = closes = _CLOSES.get(key, 0) + 1
    context.log.info(
        f"{config.timeframe} bar close: {report.rows} rows for {len(report.served)} symbols, "
        f"{len(report.skipped)} skipped; "
        + ", ".join(f"{k} {v:.3f}s" for k, v in report.timings.items())
    )
    context.add_output_metadata(
        {
            "rows": report.rows,
            "symbols_served": len(report.served),
            "skipped": dg.MetadataValue.json(report.skipped),
            "gated": int((~report.inputs["gate"]).sum()) if report.inputs is not None else 0,
            # a warm worker (defs/warm_launcher.py) shows the same pid and a growing count
            "process_pid": os.getpid(),
            "process_closes_served": closes,
            **{f"seconds_{k}": v for k, v in report.timings.items()},
        }
    )
    return {"rows": report.rows, "served": report.served, "skipped": report.skipped}


@dg.job(
    description="Bar-close serving of one timeframe (config: timeframe).",
    # in the process that executes the run (the warm worker) whatever the deployment: one op
    # across every symbol, latency-bound, its models kept in that process
    executor_def=dg.in_process_executor,
)
def serve_bar_close():
    serve_new_bars()


class RetentionConfig(dg.Config):
    max_age_days: float = 90.0
    """agent_preds rows whose bar is older than this are deleted (setting
    `agent_preds_retention_days`)."""


@dg.op(
    description="Delete agent_preds rows older than the retention age.",
    out=dg.Out(int, io_manager_key="op_results"),
)
def delete_old_agent_preds(
    context: dg.OpExecutionContext, config: RetentionConfig, trading_store: TradingStoreResource
) -> int:
    from quant_assets.lib.catalog import delete_old_predictions

    deleted = delete_old_predictions(trading_store.get_store(), timedelta(days=config.max_age_days))
    context.log.info(f"deleted {deleted} agent_preds rows older than {config.max_age_days} days")
    context.add_output_metadata({"deleted": deleted, "max_age_days": config.max_age_days})
    return deleted


@dg.job(
    description="Retention of agent_preds (setting agent_preds_retention_days).",
)
def agent_preds_retention():
    delete_old_agent_preds()


def build_serving_automation(settings: Settings) -> dict[str, list]:
    """The serving and retention jobs, their schedules (bar-close serving per configured
    timeframe; retention daily at 04:30 UTC) and the in-memory IO manager of their op results."""
    schedules = [
        dg.ScheduleDefinition(
            name=f"serve_bar_close_{timeframe}",
            cron_schedule=refresh_cron(timeframe, settings.serving_delay_minutes),
            execution_timezone="UTC",
            job=serve_bar_close,
            run_config={"ops": {"serve_new_bars": {"config": {"timeframe": timeframe}}}},
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Score the newly closed {timeframe} bar of every symbol.",
        )
        for timeframe in settings.timeframes
    ]
    schedules.append(
        dg.ScheduleDefinition(
            name="agent_preds_retention_daily",
            cron_schedule="30 4 * * *",
            execution_timezone="UTC",
            job=agent_preds_retention,
            run_config={
                "ops": {
                    "delete_old_agent_preds": {
                        "config": {"max_age_days": float(settings.agent_preds_retention_days)}
                    }
                }
            },
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Delete agent_preds older than {settings.agent_preds_retention_days} days.",
        )
    )
    return {
        "jobs": [serve_bar_close, agent_preds_retention],
        "schedules": schedules,
        "resources": RESULTS_IN_MEMORY,
    }
