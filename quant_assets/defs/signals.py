"""`champion` [symbol × timeframe]: promotion of a challenger that passed the gates; `signals`
[symbol × timeframe]: the champion's predictions on recent bars, written for execution systems."""

import json
from typing import Literal

import dagster as dg
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
from quant_assets.lib.execution import ExecutionRules, decision_counts
from quant_assets.lib.performance import annualization
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.serving import ServedVersions, agent_rows
from quant_assets.lib.signals import resolve_long_threshold, resolve_short_threshold
from quant_assets.lib.storage import frame_fingerprint
from quant_assets.lib.tracking import ALIAS_CHAMPION, registered_model_name


class ChampionConfig(dg.Config):
    """A manual decision (`quant-assets promote` / `rollback`, or the Launchpad); empty = the
    decision of the latest evaluation's gates."""

    manual: Literal["", "promote", "rollback"] = ""
    version: str = ""
    """Version to promote (default: the current challenger)."""
    requested_by: str = ""
    """The person who decided (a version tag, the run's tag and this materialization's metadata;
    promotion_log records the decision as `cli` with this run's id)."""
    reason: str = ""
    again: bool = False
    """Allow rolling back a rollback (re-instates the version just rolled back from)."""


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    group_name="promotion",
    kinds={"mlflow"},
    code_version="1",
    # read from the store, not loaded as an input: a manual decision needs no evaluation
    deps=["champion_challenger_evaluation"],
)
@each_partition
def champion(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    artifacts: ArtifactStore,
) -> dg.Output[pl.DataFrame]:
    """The model in service after the latest evaluation. A challenger that passed every gate
    becomes the champion: the registry alias `champion` moves to it, the previous one is kept as
    `prior_champion`, the version is tagged with the decision and promotion_log gets a row. A
    rejected challenger (or none) leaves the champion as it was, and this records that decision:
    a rejection is a successful materialization, not a failure. A manual decision (config
    `manual`) promotes a chosen version or rolls back to the prior champion instead, recorded
    the same way with who decided and why."""
    symbol, timeframe = symbol_and_timeframe(context)
    tracker = mlflow.get_tracker()
    if config.manual:
        return _manual_decision(context, config, tracker, trading_store, symbol, timeframe)
    evaluation = artifacts.require_partition("champion_challenger_evaluation", symbol, timeframe)
    row = evaluation.row(0, named=True)
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
        if row.get("model_name"):
            # the challenger registered by this evaluation's training enters the SQL catalog
            from quant_assets.lib.catalog import sync_catalog

            sync_catalog(tracker, trading_store.get_store(), name)
        return dg.Output(
            pl.DataFrame([record]),
            metadata={
                "decision": "keep",
                "champion": current or "none",
                "registered_model": name,
                "reason": record["reason"],
                **(
                    {"champion_version": dg.MetadataValue.url(tracker.version_url(name, current))}
                    if current
                    else {}
                ),
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
            "champion_version": dg.MetadataValue.url(tracker.version_url(name, result["champion"])),
        },
    )


def _manual_decision(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    tracker,
    trading_store: TradingStoreResource,
    symbol: str,
    timeframe: str,
) -> dg.Output[pl.DataFrame]:
    """A promotion or rollback decided by a person, carried out in this run (so the UI, the
    registry's tags and promotion_log name the same run, person and reason)."""
    from quant_assets.lib.registry_ops import promote_version, rollback_champion
    from quant_assets.lib.tracking import ALIAS_CHALLENGER

    name = registered_model_name(symbol, timeframe)
    requested_by = config.requested_by or "launchpad"
    if config.manual == "promote":
        version = config.version or tracker.aliases(name).get(ALIAS_CHALLENGER)
        if not version:
            raise dg.Failure(f"{name} has no challenger; name a version to promote")
        result = promote_version(
            tracker,
            trading_store.get_store(),
            name,
            version,
            symbol=symbol,
            timeframe=timeframe,
            action="manual_promote",
            decided_by="cli",
            reason=config.reason or "manual promotion",
            dagster_run_id=context.run.run_id,
        )
        decision = "manual_promote"
    else:
        result = rollback_champion(
            tracker,
            trading_store.get_store(),
            name,
            symbol=symbol,
            timeframe=timeframe,
            reason=config.reason or "manual rollback",
            again=config.again,
            decided_by="cli",
            dagster_run_id=context.run.run_id,
        )
        decision = "rollback"
    if result["changed"]:
        tracker.set_version_tags(
            name, str(result["champion"]), {"promotion.requested_by": requested_by}
        )
    context.log.info(str(result["message"]))
    record = {
        "symbol": symbol,
        "timeframe": timeframe,
        "decision": decision if result["changed"] else "keep",
        "champion": str(result["champion"]),
        "prior_champion": str(result["prior_champion"] or ""),
        "reason": config.reason,
    }
    return dg.Output(
        pl.DataFrame([record]),
        metadata={
            **{k: v or "none" for k, v in record.items() if k not in ("symbol", "timeframe")},
            "requested_by": requested_by,
            "message": str(result["message"]),
            "registered_model": name,
            "champion_version": dg.MetadataValue.url(
                tracker.version_url(name, str(result["champion"]))
            ),
        },
    )


class SignalsConfig(dg.Config):
    lookback_bars: int = 500
    """Recent bars the champion scores each time (predictions are upserted, so overlap is harmless)."""
    threshold_long: float | None = None
    """Default: the champion's own threshold (chosen on its out-of-fold predictions), else the
    break-even probability of the barriers plus `edge`, as in the evaluation."""
    threshold_short: float | None = None
    """Default: the champion's own short threshold (chosen on its out-of-fold predictions, tag
    `decision_threshold_short`), else no shorts."""
    shorts: bool = True
    edge: float = 0.05
    sl_mult: float = 1.0
    """Stop-loss distance in ATR-equivalents: the volatility agent's forecast range when it has a
    champion, else the ATR (lib/execution.py, rule 6)."""
    tp_mult: float = 1.75
    horizon: int = 5
    """Horizon (bars) recorded with each prediction: the label horizon the model was trained on."""
    use_regime_gate: bool = True
    """Flat on bars whose regime gate is off (choppy market), when `regime` is materialized."""
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
    threshold_long = resolve_long_threshold(
        config.threshold_long, model.decision_threshold, config.tp_mult, config.sl_mult, config.edge
    )
    rules = ExecutionRules(
        threshold_long=threshold_long,
        threshold_short=resolve_short_threshold(
            config.threshold_short, model.decision_threshold_short, threshold_long
        )
        if config.shorts
        else None,
        sl_mult=config.sl_mult,
        tp_mult=config.tp_mult,
        horizon=config.horizon,
        periods_per_year=annualization(timeframe, annualization_kind(ohlcv, timeframe)),
        target_vol=config.target_vol,
        use_regime_gate=config.use_regime_gate,
    )
    store = trading_store.get_store()
    bars = recent.select("timestamp", "close", "atr_14").with_columns(pl.Series("prob_up", prob))
    bars, vol_version = _other_agents(bars, tracker, artifacts, ohlcv, symbol, timeframe)
    ensemble = artifacts.read_partition("ensemble_signals", symbol, timeframe)
    served_by = f"{name} v{version}"
    if ensemble is not None and ensemble.height and bool(ensemble["serving"][0]):
        # the ensemble beat this champion under the promotion gates: it decides the side
        # (lib/execution.py, rule 2); the rows still name the champion whose prob_up they carry
        bars = bars.join(
            ensemble.select(
                "timestamp",
                pl.col("side").alias("ensemble_side"),
                pl.col("size").alias("ensemble_size"),
            ),
            on="timestamp",
            how="left",
        )
        served_by = f"ensemble.{symbol}.{timeframe} (run {ensemble['mlflow_run_id'][0]})"
    from quant_assets.lib.catalog import version_id  # SQLAlchemy: only when serving

    vol_name = registered_model_name(symbol, timeframe, "volatility")
    served = ServedVersions(
        symbol=symbol,
        timeframe=timeframe,
        model_name=name,
        model_version=version,
        mlflow_run_id=model.run_id,
        agent_version_id=version_id(tracker, store, name, version),
        vol_version_id=version_id(tracker, store, vol_name, vol_version) if vol_version else None,
        dagster_run_id=context.run.run_id,
        data_version=frame_fingerprint(recent),
        horizon=config.horizon,
    )
    preds, frame = agent_rows(bars, rules, served)
    store.write_predictions(preds)
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
            "mlflow_run": dg.MetadataValue.url(tracker.run_url(model.run_id)),
            "model_version": dg.MetadataValue.url(tracker.version_url(name, version)),
            **decision_counts(frame),
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


def _other_agents(
    bars: pl.DataFrame,
    tracker,
    artifacts: ArtifactStore,
    ohlcv: pl.DataFrame,
    symbol: str,
    timeframe: str,
) -> tuple[pl.DataFrame, str | None]:
    """`bars` with the regime agent's `regime` and `gate` (when `regime` was materialized) and the
    volatility champion's `sigma` (when there is one), and that champion's version."""
    regime = artifacts.read_partition("regime", symbol, timeframe)
    if regime is not None:
        bars = bars.join(regime.select("timestamp", "regime", "gate"), on="timestamp", how="left")
    vol_name = registered_model_name(symbol, timeframe, "volatility")
    vol_version = tracker.aliases(vol_name).get(ALIAS_CHAMPION)
    if vol_version:
        from quant_assets.lib.volatility import load_volatility_model, volatility_frame

        forecaster = load_volatility_model(tracker, vol_name, vol_version)
        sigma = volatility_frame(ohlcv["timestamp"], ohlcv["close"], forecaster)
        bars = bars.join(sigma, on="timestamp", how="left")
    return bars, vol_version
