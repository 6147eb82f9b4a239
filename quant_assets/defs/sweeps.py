"""`hyperparameter_sweep` [symbol × timeframe]: an Optuna TPE study over the model type's search
space on the partition's purged folds, when enabled by Config; its best parameters are what
`challenger_model` trains with next (ModelTrainingConfig.use_sweep)."""

import json
from typing import Any, Literal

import dagster as dg
import polars as pl

from quant_assets.defs.batching import PartitionOutput, emit
from quant_assets.defs.partitions import (
    PARTITION_BATCH,
    step_partitions,
    symbol_timeframe_partitions,
)
from quant_assets.defs.resources import ArtifactStore, MlflowResource, TradingStoreResource
from quant_assets.lib.datasets import dataset_fingerprint, dataset_from_frame
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.splits import split_plan_from_frame
from quant_assets.lib.sweeps import SweepLogger, run_sweep
from quant_assets.lib.tracking import registered_model_name

_SCHEMA = {
    "symbol": pl.String,
    "timeframe": pl.String,
    "status": pl.String,
    "reason": pl.String,
    "model_type": pl.String,
    "objective": pl.String,
    "study_name": pl.String,
    "best_value": pl.Float64,
    "best_params": pl.String,
    "trials_in_study": pl.Int64,
    "trials_this_run": pl.Int64,
    "parent_run_id": pl.String,
}


class SweepConfig(dg.Config):
    """Which partitions to sweep and how (Launchpad, or `quant-assets materialize --config`)."""

    enabled: bool = False
    """Off by default: a materialization records "disabled" and costs nothing."""
    only: list[str] = []
    """Partition keys (BTCUSDT|1h) or timeframes (1h) to sweep; empty: every partition of the run."""
    model_type: Literal["lightgbm", "xgboost", "logistic", "gradient_boosting", "random_forest"] = (
        "lightgbm"
    )
    objective: Literal["oof_log_loss", "oof_sharpe"] = "oof_log_loss"
    """oof_log_loss: calibrated out-of-fold log loss (minimized); oof_sharpe: per-signal Sharpe of
    the decision rule on the out-of-fold predictions (maximized; every threshold it compares is
    a trial in the evaluation's count)."""
    n_trials: int = 50
    """Finished trials the study holds at the end (a resumed study runs only the rest)."""
    timeout_seconds: float | None = 1800
    """Wall-time bound of one partition's sweep."""
    seed: int = 42
    calibration: Literal["isotonic", "sigmoid", "none"] = "isotonic"
    min_rows: int = 100


def _wanted(config: SweepConfig, key: str, timeframe: str) -> bool:
    return config.enabled and (not config.only or key in config.only or timeframe in config.only)


@dg.asset(
    partitions_def=symbol_timeframe_partitions,
    deps=["training_dataset", "walk_forward_splits"],
    group_name="training",
    kinds={"optuna", "mlflow"},
    code_version="1",
    pool="mlflow",
    tags={"quant_assets/kind": "training"},
    backfill_policy=PARTITION_BATCH,
)
def hyperparameter_sweep(
    context: dg.AssetExecutionContext,
    config: SweepConfig,
    mlflow: MlflowResource,
    artifacts: ArtifactStore,
    trading_store: TradingStoreResource,
):
    """Optuna (TPE) over the model type's search space: every trial cross-validated on the stored
    purged folds (hold-out untouched) and scored by the configured objective, a nested MLflow run
    under the sweep's parent run (experiment `hyperparameter_sweep`) and a trial in the
    partition's count behind the next promotion decision. The study lives in the trading store's
    database (resumed when re-run on the same data), bounded by `n_trials` and `timeout_seconds`.
    The stored record holds the best parameters, which `challenger_model` trains with."""
    outputs = {}
    for key, symbol, timeframe in step_partitions(context):
        record = _sweep_partition(
            context, config, mlflow, artifacts, trading_store, key, symbol, timeframe
        )
        frame = pl.DataFrame([record], schema=_SCHEMA)
        outputs[key] = PartitionOutput(
            frame,
            metadata={
                "status": record["status"],
                **({"reason": record["reason"]} if record["reason"] else {}),
                **(
                    {
                        "best_value": record["best_value"],
                        "objective": record["objective"],
                        "trials_in_study": record["trials_in_study"],
                        "trials_this_run": record["trials_this_run"],
                        "study_name": record["study_name"],
                        "mlflow_parent_run_id": record["parent_run_id"],
                        "best_params": dg.MetadataValue.json(json.loads(record["best_params"])),
                    }
                    if record["status"] == "swept"
                    else {}
                ),
                "preview": dg.MetadataValue.md(markdown_table(frame.drop("best_params"))),
            },
        )
    yield from emit(context, outputs)


def _sweep_partition(
    context: dg.AssetExecutionContext,
    config: SweepConfig,
    mlflow: MlflowResource,
    artifacts: ArtifactStore,
    trading_store: TradingStoreResource,
    key: str,
    symbol: str,
    timeframe: str,
) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(_SCHEMA) | {
        "symbol": symbol,
        "timeframe": timeframe,
        "model_type": config.model_type,
        "objective": config.objective,
        "reason": "",
    }
    if not _wanted(config, key, timeframe):
        why = "sweeps are off (SweepConfig.enabled)" if not config.enabled else "not in `only`"
        return record | {"status": "disabled", "reason": why}
    frame = artifacts.require_partition("training_dataset", symbol, timeframe)
    plan_table = artifacts.require_partition("walk_forward_splits", symbol, timeframe)
    plan = split_plan_from_frame(plan_table)
    if not plan.folds:
        return record | {"status": "skipped", "reason": "the split plan has no folds"}
    dataset = dataset_from_frame(frame, symbol=symbol)
    version = dataset_fingerprint(frame)[:12]
    study = f"{key} {config.model_type} {config.objective} {dataset.target} data {version}"
    tracker = mlflow.get_tracker()
    logger = SweepLogger(
        tracker,
        registered_model_name(symbol, timeframe),
        f"sweep {key} {config.model_type}",
        {
            "dagster.run_id": context.run.run_id,
            "dagster.partition_key": key,
            "data_version": version,
            "model_type": config.model_type,
        },
        {f"sweep.{k}": v for k, v in config.model_dump().items()} | {"sweep.study": study},
    )
    result = run_sweep(
        dataset,
        plan,
        model_type=config.model_type,
        objective=config.objective,
        n_trials=config.n_trials,
        timeout=config.timeout_seconds,
        seed=config.seed,
        calibration=config.calibration,
        study_name=study,
        storage_url=trading_store.url,
        min_rows=config.min_rows,
        on_trial=logger.log_trial,
    )
    logger.finish(result)
    context.log.info(
        f"{key}: {len(result.trials)} trial(s) now, {result.n_total} in study {study!r}; best "
        f"{config.objective} {result.best_value:.5f} (trial {result.best_number})"
    )
    return record | {
        "status": "swept",
        "study_name": study,
        "best_value": result.best_value,
        "best_params": json.dumps(result.best_params, sort_keys=True, default=str),
        "trials_in_study": result.n_total,
        "trials_this_run": len(result.trials),
        "parent_run_id": result.parent_run_id,
    }


def swept_params(
    artifacts: ArtifactStore, symbol: str, timeframe: str, model_type: str
) -> dict[str, Any] | None:
    """The best parameters of the partition's stored sweep of `model_type`, None without one."""
    stored = artifacts.read_partition("hyperparameter_sweep", symbol, timeframe)
    if stored is None or stored.is_empty():
        return None
    row = stored.row(0, named=True)
    if row["status"] != "swept" or row["model_type"] != model_type or not row["best_params"]:
        return None
    return json.loads(row["best_params"])
