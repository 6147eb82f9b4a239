"""`volatility_model` [symbol × timeframe]: the volatility agent. A GARCH(1,1) forecast of the
standard deviation of returns over the label horizon (lib/volatility.py), evaluated out of fold
against a naive rolling standard deviation, registered as `volatility.<SYMBOL>.<tf>` (alias
`challenger`) and promoted to `champion` when its out-of-fold QLIKE is the lower one. Refitted at
02:00 UTC by the model_automation sensor once its bars were updated (as the meta-learners)."""

import dagster as dg
import polars as pl

from quant_assets.defs.batching import each_partition
from quant_assets.defs.conditions import RETRAINS_NIGHTLY
from quant_assets.defs.partitions import (
    PARTITION_BATCH,
    symbol_and_timeframe,
    symbol_timeframe_partitions,
)
from quant_assets.defs.resources import MlflowResource, TradingStoreResource
from quant_assets.lib.storage import frame_fingerprint
from quant_assets.lib.tracking import registered_model_name


class VolatilityConfig(dg.Config):
    horizon: int = 5
    """Bars the forecast covers: the label horizon (the vertical barrier) of the direction model."""
    folds: int = 4
    """Walk-forward blocks of the out-of-fold evaluation."""
    min_train: int = 300
    """Bars before the first evaluated block (the first fold's training window)."""


@dg.asset(
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    group_name="agents",
    kinds={"mlflow"},
    code_version="1",
    # refitted nightly on the day's bars, like the meta-learners (model_automation sensor)
    automation_condition=RETRAINS_NIGHTLY,
)
@each_partition
def volatility_model(
    context: dg.AssetExecutionContext,
    config: VolatilityConfig,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    ohlcv: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """The registered volatility version of this partition and its out-of-fold evidence: QLIKE
    and variance MSE of GARCH(1,1) and of the naive 20-bar standard deviation on the same rows,
    and the coverage of the 90 % interval. Too little history: skipped with the reason."""
    from quant_assets.lib.catalog import sync_catalog
    from quant_assets.lib.registry_ops import promote_version
    from quant_assets.lib.volatility import (
        VolatilityFitError,
        evaluate_out_of_fold,
        fit_garch,
        log_returns,
        register_volatility_model,
    )

    symbol, timeframe = symbol_and_timeframe(context)
    name = registered_model_name(symbol, timeframe, "volatility")
    try:
        evaluation = evaluate_out_of_fold(
            ohlcv["close"], config.horizon, folds=config.folds, min_train=config.min_train
        )
        model = fit_garch(log_returns(ohlcv["close"].to_numpy()), config.horizon, where=name)
    except VolatilityFitError as exc:
        context.log.warning(f"{context.partition_key}: volatility agent skipped: {exc}")
        return dg.Output(
            pl.DataFrame([{"symbol": symbol, "timeframe": timeframe, "status": "skipped"}]),
            metadata={"status": "skipped", "reason": str(exc)},
        )
    window = (str(ohlcv["timestamp"].min()), str(ohlcv["timestamp"].max()))
    tracker = mlflow.get_tracker()
    store = trading_store.get_store()
    data_version = frame_fingerprint(ohlcv)
    version, run_id = register_volatility_model(
        tracker,
        name,
        model,
        evaluation,
        {
            "model_type": "garch11",
            "data_version": data_version,
            "trained_from": window[0],
            "trained_through": window[1],
            "dagster.run_id": context.run.run_id,
            "dagster.partition_key": context.partition_key,
            "horizon": str(config.horizon),
        },
    )
    sync_catalog(tracker, store, name)
    verdict = (
        f"out-of-fold QLIKE {evaluation.qlike_garch:.4f} vs naive {evaluation.qlike_naive:.4f}"
    )
    if evaluation.beats_naive:
        moved = promote_version(
            tracker,
            store,
            name,
            version,
            symbol=symbol,
            timeframe=timeframe,
            action="promote",
            decided_by="gates",
            reason=f"beats the naive rolling-std forecast: {verdict}",
            gates=evaluation.as_metrics(),
            dagster_run_id=context.run.run_id,
        )
        decision = "promote" if moved["changed"] else "keep"
    else:
        decision = "keep"
        context.log.warning(f"{name} v{version} not promoted: {verdict} (naive is better)")
    record = {
        "symbol": symbol,
        "timeframe": timeframe,
        "status": "trained",
        "model_name": name,
        "version": version,
        "run_id": run_id,
        "decision": decision,
        **evaluation.as_metrics(),
        "omega": model.omega,
        "alpha": model.alpha,
        "beta": model.beta,
    }
    return dg.Output(
        pl.DataFrame([record]),
        metadata={
            "registered_model": f"{name} v{version}",
            "decision": decision,
            "oof_qlike_garch": evaluation.qlike_garch,
            "oof_qlike_naive": evaluation.qlike_naive,
            "oof_coverage_90": evaluation.coverage_90,
            "persistence": model.persistence,
            "mlflow_run_id": run_id,
            "data_version": data_version,
        },
    )
