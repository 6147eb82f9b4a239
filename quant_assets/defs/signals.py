"""`champion` [symbol × timeframe]: promotion of a challenger that passed the gates; `signals`
[symbol × timeframe]: the champion's predictions on recent bars, written for execution systems."""

import json

import dagster as dg
import numpy as np
import polars as pl

from quant_assets.defs.batching import each_partition
from quant_assets.defs.conditions import FOLLOWS_UPSTREAM
from quant_assets.defs.models import BY_TIMEFRAME
from quant_assets.defs.partitions import (
    PARTITION_BATCH,
    symbol_and_timeframe,
    symbol_timeframe_partitions,
)
from quant_assets.defs.resources import ArtifactStore, MlflowResource, TradingStoreResource
from quant_assets.lib.calendars import annualization_kind
from quant_assets.lib.datasets import EXCLUDED_FEATURES
from quant_assets.lib.performance import annualization
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.signals import (
    apply_ensemble,
    make_signals,
    resolve_long_threshold,
    volatility_target_size,
)
from quant_assets.lib.tracking import ALIAS_CHAMPION, registered_model_name


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    group_name="promotion",
    kinds={"mlflow"},
    code_version="1",
)
@each_partition
def champion(
    context: dg.AssetExecutionContext,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    champion_challenger_evaluation: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """The model in service after the latest evaluation. A challenger that passed every gate
    becomes the champion: the registry alias `champion` moves to it, the previous one is kept as
    `prior_champion`, the version is tagged with the decision and promotion_log gets a row. A
    rejected challenger (or none) leaves the champion as it was, and this records that decision:
    a rejection is a successful materialization, not a failure."""
    symbol, timeframe = symbol_and_timeframe(context)
    row = champion_challenger_evaluation.row(0, named=True)
    tracker = mlflow.get_tracker()
    name = row.get("model_name") or registered_model_name(symbol, timeframe)
    if row["decision"] != "promote":
        current = tracker.aliases(name).get(ALIAS_CHAMPION) if row.get("model_name") else None
        record = {
            "symbol": symbol,
            "timeframe": timeframe,
            "decision": "keep",
            "champion": current or "",
            "prior_champion": "",
            "reason": f"challenger not promoted ({row['decision']}): {row['reason']}",
        }
        context.log.info(f"{context.partition_key}: {record['reason']}")
        return dg.Output(
            pl.DataFrame([record]),
            metadata={
                "decision": "keep",
                "champion": current or "none",
                "registered_model": name,
                "reason": record["reason"],
            },
        )
    from quant_assets.lib.registry_ops import promote_version  # SQLAlchemy: only when promoting

    result = promote_version(
        tracker,
        trading_store.get_store(),
        name,
        row["challenger_version"],
        symbol=symbol,
        timeframe=timeframe,
        action="promote",
        decided_by="gates",
        reason=row["reason"],
        gates=json.loads(row["gates_json"]),
        dagster_run_id=context.run.run_id,
    )
    return dg.Output(
        pl.DataFrame(
            [
                {
                    "symbol": symbol,
                    "timeframe": timeframe,
                    "decision": "promote",
                    "champion": result["champion"],
                    "prior_champion": result["prior_champion"] or "",
                    "reason": row["reason"],
                }
            ]
        ),
        metadata={
            "decision": "promote",
            "champion": result["champion"],
            "prior_champion": result["prior_champion"] or "none",
            "registered_model": name,
            "reason": row["reason"],
        },
    )


class SignalsConfig(dg.Config):
    lookback_bars: int = 500
    """Recent bars the champion scores each time (predictions are upserted, so overlap is harmless)."""
    threshold_long: float | None = None
    """Default: the champion's own threshold (chosen on its out-of-fold predictions), else the
    break-even probability of the barriers plus `edge`, as in the evaluation."""
    edge: float = 0.05
    sl_mult: float = 1.0
    tp_mult: float = 1.75
    horizon: int = 5
    """Horizon (bars) recorded with each prediction: the label horizon the model was trained on."""
    target_vol: float | None = 0.10
    """Annualized volatility a position is sized to (size = min(target / forecast, 1), the
    evaluation's convention); None: full size."""


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    # the model served (champion, or the ensemble when it beat the champion's gates) is read from
    # the registry and the ensemble's record; these edges make the lineage walkable in the UI
    deps=[
        dg.AssetDep("cross_sectional_ranks", partition_mapping=BY_TIMEFRAME),
        champion,
        "ensemble_signals",
    ],
    group_name="signals",
    kinds={"sql"},
    code_version="1",
)
@each_partition
def signals(
    context: dg.AssetExecutionContext,
    config: SignalsConfig,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    artifacts: ArtifactStore,
    ohlcv: pl.DataFrame,
    features: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """The champion's calibrated `prob_up` on the latest bars, with side, strength and ATR-based
    stop-loss and take-profit; every row names the registered model, version and MLflow run.
    Upserted into `agent_preds` and `agent_signals` (no duplicates on re-runs). The champion is
    read from the registry alias, so a rejected challenger leaves the current champion serving.
    When the latest `ensemble_signals` passed the promotion gates against this champion, its side
    and size replace the champion's in `agent_signals` (the predictions stay the champion's)."""
    symbol, timeframe = symbol_and_timeframe(context)
    tracker = mlflow.get_tracker()
    name = registered_model_name(symbol, timeframe)
    version = tracker.aliases(name).get(ALIAS_CHAMPION)
    cross_sectional_ranks = artifacts.read_ranks(symbol, timeframe)
    if not version:
        reason = f"no champion: {name} has no `champion` alias yet"
        context.log.info(f"{context.partition_key}: {reason}")
        return dg.Output(
            pl.DataFrame(schema={"timestamp": pl.Datetime("us", "UTC")}),
            metadata={"status": "no champion", "reason": reason, "dagster/row_count": 0},
        )
    model = tracker.load_model(name, version)
    ranks = cross_sectional_ranks.filter(pl.col("symbol") == symbol).drop("symbol", "xs_n_symbols")
    recent = (
        features.filter(pl.col("is_warm"))
        .drop(EXCLUDED_FEATURES, strict=False)
        .join(ranks, on="timestamp", how="left")
        .join(ohlcv.select("timestamp", "close"), on="timestamp")
        .join(features.select("timestamp", "atr_14"), on="timestamp")
        .tail(config.lookback_bars)
        .drop_nulls(model.feature_columns)
    )
    prob = model.predict_proba(recent)
    frame = make_signals(
        recent["timestamp"],
        recent["close"],
        recent["atr_14"],
        prob,
        threshold_long=resolve_long_threshold(
            config.threshold_long,
            model.decision_threshold,
            config.tp_mult,
            config.sl_mult,
            config.edge,
        ),
        sl_mult=config.sl_mult,
        tp_mult=config.tp_mult,
    )
    frame = frame.with_columns(
        pl.lit(symbol).alias("symbol"),
        pl.lit(timeframe).alias("timeframe"),
        pl.lit(name).alias("model_name"),
        pl.lit(version).alias("model_version"),
        pl.lit(model.run_id).alias("mlflow_run_id"),
        pl.lit(config.horizon).alias("horizon"),
    )
    store = trading_store.get_store()
    store.write_predictions(frame)
    ensemble = artifacts.read_partition("ensemble_signals", symbol, timeframe)
    served_by = f"{name} v{version}"
    if ensemble is not None and ensemble.height and bool(ensemble["serving"][0]):
        # the ensemble beat this champion under the promotion gates: it decides side and size
        frame = apply_ensemble(
            frame, recent["atr_14"], ensemble, sl_mult=config.sl_mult, tp_mult=config.tp_mult
        ).with_columns(
            pl.lit(f"ensemble.{symbol}.{timeframe}").alias("model_name"),
            pl.lit(str(ensemble["mlflow_run_id"][0])).alias("mlflow_run_id"),
        )
        served_by = f"ensemble.{symbol}.{timeframe} (run {ensemble['mlflow_run_id'][0]})"
    # the position's fraction of capital: volatility-target sizing of whatever side is served
    # (the evaluation's convention); the ensemble's own confidence stays in `strength`
    target = (
        volatility_target_size(
            recent["close"],
            recent["atr_14"],
            annualization(timeframe, annualization_kind(ohlcv, timeframe)),
            config.target_vol,
        )
        if config.target_vol
        else np.ones(recent.height)
    )
    frame = frame.with_columns((pl.Series("size", target) * (pl.col("side") != 0)).alias("size"))
    store.write_signals(frame)
    latest = frame.tail(1).row(0, named=True) if frame.height else {}
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": frame.height,
            "status": "ok",
            "model": f"{name} v{version}",
            "served_by": served_by,
            "mlflow_run_id": model.run_id,
            "longs": int((frame["side"] == 1).sum()),
            "latest_signal": json.dumps(
                {
                    k: str(v)
                    for k, v in latest.items()
                    if k in ("timestamp", "side", "prob_up", "stop_loss", "take_profit")
                }
            ),
            "preview": dg.MetadataValue.md(
                markdown_table(
                    frame.select(
                        "timestamp", "prob_up", "side", "strength", "stop_loss", "take_profit"
                    ).tail(5)
                )
            ),
        },
    )
