"""`champion_challenger_evaluation` [symbol × timeframe]: challenger and champion scored on the same
hold-out with the same backtest, promotion gates decided, and a blocking check that gates `champion`."""

import dataclasses
import json
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl

from quant_assets.defs.features import features
from quant_assets.defs.models import (
    RETRAIN_BACKFILL_POLICY,
    batch_output,
    challenger_model,
    image_markdown,
    training_dataset,
    walk_forward_splits,
)
from quant_assets.defs.ohlcv import ohlcv
from quant_assets.defs.partitions import step_partitions, symbol_timeframe_partitions
from quant_assets.defs.resources import ArtifactStore, MlflowResource, TradingStoreResource
from quant_assets.lib.backtest import run_backtest
from quant_assets.lib.calendars import annualization_kind
from quant_assets.lib.health import RUN_TAG_MODE
from quant_assets.lib.metrics import classification_metrics
from quant_assets.lib.performance import annualization, performance_metrics
from quant_assets.lib.plots import backtest_report_png, equity_curve_png
from quant_assets.lib.promotion import GateConfig, evaluate_gates
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.signals import make_signals, position_changes, resolve_long_threshold
from quant_assets.lib.splits import split_plan_from_frame
from quant_assets.lib.tracking import ALIAS_CHAMPION, LoadedModel

#: the step output Dagster gives the `promotion_gates` check (<asset>_<check>)
PROMOTION_GATES_OUTPUT = "champion_challenger_evaluation_promotion_gates"
SHOWN_METRICS = (
    "roc_auc",
    "ece",
    "brier",
    "total_return",
    "sharpe",
    "sortino",
    "max_drawdown",
    "profit_factor",
    "trade_count",
    "win_rate",
    "exposure",
    "psr",
    "dsr",
)


class EvaluationConfig(dg.Config):
    """Backtest settings and promotion gates (defaults as in lib.promotion.GateConfig)."""

    min_sortino: float = 1.2
    min_profit_factor: float = 1.15
    max_drawdown: float = 0.06
    max_ece: float = 0.15
    min_trades: int = 20
    champion_drawdown_tolerance: float = 0.01
    require_beat_champion: bool = True
    """A challenger must beat the champion's total return or Sharpe on the same hold-out."""
    threshold_long: float | None = None
    """Calibrated take-profit probability from which a bar gets a long signal; default: each model's
    own threshold, chosen on its out-of-fold predictions at training (tag `decision_threshold`),
    else the break-even probability of the barriers (sl / (tp + sl)) plus `edge`."""
    edge: float = 0.05
    tp_mult: float = 1.75
    sl_mult: float = 1.0
    horizon: int = 5
    """Bars a position is held after its last signal (the label's vertical barrier)."""
    fee_bps: float = 5.0
    slippage_bps: float = 2.0
    delay: int = 1
    """Bars between the signal's bar and execution (at least 1: never on the bar that made it)."""

    def long_threshold(self, model: LoadedModel) -> float:
        return resolve_long_threshold(
            self.threshold_long, model.decision_threshold, self.tp_mult, self.sl_mult, self.edge
        )

    def gate_config(self) -> GateConfig:
        """The gate fields of this Config (same names as GateConfig's)."""
        names = {f.name for f in dataclasses.fields(GateConfig)}
        return GateConfig(**{k: v for k, v in self.model_dump().items() if k in names})


def score_on_holdout(
    model: LoadedModel,
    holdout: pl.DataFrame,
    bars: pl.DataFrame,
    atr: pl.DataFrame,
    timeframe: str,
    periods_per_year: float,
    n_trials: int,
    config: EvaluationConfig,
):
    """Classification and backtest metrics of one model on the hold-out rows (and their bars)."""
    prob = model.predict_proba(holdout)
    metrics = {
        k: float(v) for k, v in classification_metrics(holdout["y"].to_numpy(), prob).items()
    }
    priced = (
        holdout.select("timestamp")
        .join(bars.select("timestamp", "close"), on="timestamp")
        .join(atr, on="timestamp")
    )
    signals = make_signals(
        priced["timestamp"],
        priced["close"],
        priced["atr_14"],
        prob,
        threshold_long=config.long_threshold(model),
        sl_mult=config.sl_mult,
        tp_mult=config.tp_mult,
    )
    window = bars.filter(
        pl.col("timestamp").is_between(holdout["timestamp"].min(), holdout["timestamp"].max())
    )
    result = run_backtest(
        window,
        position_changes(signals, config.horizon),
        timeframe=timeframe,
        delay=config.delay,
        fee_bps=config.fee_bps,
        slippage_bps=config.slippage_bps,
    )
    metrics.update(
        {
            k: float(v)
            for k, v in performance_metrics(
                result, None, periods_per_year, n_trials=n_trials
            ).items()
        }
    )
    return metrics, result


@dg.asset(
    partitions_def=symbol_timeframe_partitions,
    deps=[challenger_model, training_dataset, walk_forward_splits, ohlcv, features],
    group_name="promotion",
    kinds={"mlflow"},
    code_version="1",
    backfill_policy=RETRAIN_BACKFILL_POLICY,
    check_specs=[
        dg.AssetCheckSpec(
            "promotion_gates",
            asset="champion_challenger_evaluation",
            blocking=True,
            # a result per partition, which `champion`'s automation condition reads
            partitions_def=symbol_timeframe_partitions,
            description="The challenger passed every promotion gate; when it fails, `champion` does not run.",
        )
    ],
)
def champion_challenger_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    artifacts: ArtifactStore,
):
    """The challenger and the current champion (registry alias) on exactly the same hold-out rows and
    backtest settings: classification and backtest metrics side by side, both equity curves, and the
    gate decision. Rejections are logged here (promotion_log); promotions by `champion`.

    In a batched retrain run every partition is evaluated in turn and gets its own `promotion_gates`
    result. In runs launched by the retrain sensors a rejection is recorded at WARN severity, so it
    does not fail the run (nor its batch-mates); `champion`'s automation condition promotes only
    partitions whose gate passed."""
    parts = step_partitions(context)
    results = {
        key: _evaluate_partition(context, config, mlflow, trading_store, artifacts, symbol, tf)
        for key, symbol, tf in parts
    }
    outputs = {key: (frame, metadata) for key, (frame, metadata, _, _) in results.items()}
    yield batch_output(context, outputs)
    # A rejection is a decision. In a run the retrain sensors launched (with batch-mates, and
    # without `champion`, which the model automation promotes only where the gate passed) it is
    # recorded at WARN, so the run does not fail for it; a manual run with `champion` in it keeps
    # ERROR, which blocks that step.
    automated = RUN_TAG_MODE in context.run.tags

    def severity(passed: bool) -> dg.AssetCheckSeverity:
        return (
            dg.AssetCheckSeverity.WARN if automated and not passed else dg.AssetCheckSeverity.ERROR
        )

    if len(results) == 1 and context.has_partition_key:
        _, _, passed, check_metadata = next(iter(results.values()))
        yield dg.AssetCheckResult(
            check_name="promotion_gates",
            passed=passed,
            metadata=check_metadata,
            severity=severity(passed),
        )
        return
    # An AssetCheckResult in a step over several partitions would be recorded for no partition;
    # Dagster turns one into exactly these two events, so the step emits them per partition.
    yield dg.Output(None, output_name=PROMOTION_GATES_OUTPUT)
    for key, (_, _, passed, check_metadata) in results.items():
        yield dg.AssetCheckEvaluation(
            asset_key=context.asset_key,
            check_name="promotion_gates",
            passed=passed,
            metadata=check_metadata,
            severity=severity(passed),
            blocking=True,
            partition=key,
            target_materialization_data=_latest_materialization(context, key),
        )


def _latest_materialization(context: dg.AssetExecutionContext, partition: str):
    """What an AssetCheckResult records as the materialization it checked (the one just made)."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=records[0].storage_id,
        run_id=records[0].event_log_entry.run_id,
        timestamp=records[0].timestamp,
    )


def _evaluate_partition(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    artifacts: ArtifactStore,
    symbol: str,
    timeframe: str,
) -> tuple[pl.DataFrame, dict, bool, dict]:
    """(stored row, asset metadata, gate passed, check metadata) of one partition."""
    challenger_model = artifacts.require_partition("challenger_model", symbol, timeframe)
    training_dataset = artifacts.require_partition("training_dataset", symbol, timeframe)
    walk_forward_splits = artifacts.require_partition("walk_forward_splits", symbol, timeframe)
    ohlcv = artifacts.require_partition("ohlcv", symbol, timeframe)
    features = artifacts.require_partition("features", symbol, timeframe)
    record = challenger_model.row(0, named=True)
    if record["status"] != "trained":
        reason = f"no challenger: {record.get('reason') or record['status']}"
        frame = pl.DataFrame(
            [{"symbol": symbol, "timeframe": timeframe, "decision": "none", "reason": reason}]
        )
        return frame, {"decision": "none", "reason": reason}, False, {"reason": reason}
    tracker = mlflow.get_tracker()
    name = record["model_name"]
    plan = split_plan_from_frame(walk_forward_splits)
    holdout = training_dataset[plan.holdout_idx]
    atr = features.select("timestamp", "atr_14")
    ppy = annualization(timeframe, annualization_kind(ohlcv, timeframe))
    n_trials = max(tracker.version_count(name), 1)

    def score(version: str):
        model = tracker.load_model(name, version)
        return score_on_holdout(model, holdout, ohlcv, atr, timeframe, ppy, n_trials, config)

    scored = {"challenger": score(record["version"])}
    champion_version = tracker.aliases(name).get(ALIAS_CHAMPION)
    if champion_version and champion_version != record["version"]:
        scored["champion"] = score(champion_version)
    metrics = {role: m for role, (m, _) in scored.items()}
    decision = evaluate_gates(metrics["challenger"], metrics.get("champion"), config.gate_config())
    workdir = Path(tempfile.mkdtemp(prefix="qa_eval_"))
    curves = {
        f"{role} v{record['version'] if role == 'challenger' else champion_version}": r.per_bar.select(
            "timestamp", "equity"
        )
        for role, (_, r) in scored.items()
    }
    equity_png = equity_curve_png(
        curves, workdir / "equity_curves.png", title=f"{name}: hold-out equity"
    )
    report_png = backtest_report_png(
        scored["challenger"][1],
        workdir / "backtest_report.png",
        title=f"{name} v{record['version']}: hold-out backtest",
        metrics=metrics["challenger"],
    )
    side_by_side = pl.DataFrame(
        {
            "metric": list(SHOWN_METRICS),
            **{
                role: [metrics[role].get(k, float("nan")) for k in SHOWN_METRICS]
                for role in metrics
            },
        }
    )
    gates = pl.DataFrame(decision.as_rows())
    with tracker.run(
        "champion_challenger_evaluation",
        f"{symbol}|{timeframe}",
        {
            "dagster.run_id": context.run.run_id,
            "dagster.partition_key": f"{symbol}|{timeframe}",
            "challenger_version": record["version"],
            "champion_version": champion_version or "none",
            "decision": "promote" if decision.promote else "reject",
            "model_name": name,
        },
    ) as run_id:
        for role, m in metrics.items():
            tracker.log_metrics(run_id, {f"{role}_{k}": v for k, v in m.items()})
        tracker.log_params(
            run_id,
            {f"eval.{k}": v for k, v in config.model_dump().items()}
            | {"eval.n_trials": n_trials, "eval.periods_per_year": ppy},
        )
        tracker.log_file(run_id, equity_png)
        tracker.log_file(run_id, report_png)
        tracker.log_frame(run_id, gates, "gates.csv")
        tracker.log_frame(run_id, scored["challenger"][1].trades, "challenger_trades.csv")
    tracker.set_version_tags(
        name,
        record["version"],
        {
            **decision.as_tags(),
            "evaluation_run_id": run_id,
            "evaluated_by_dagster_run": context.run.run_id,
        },
    )
    if not decision.promote:
        trading_store.get_store().log_promotion(
            model_name=name,
            symbol=symbol,
            timeframe=timeframe,
            version=record["version"],
            prior_version=champion_version,
            action="reject",
            decided_by="gates",
            reason=decision.reason,
            gates={g["name"]: g for g in decision.as_rows()},
            dagster_run_id=context.run.run_id,
        )
    out = {
        "symbol": symbol,
        "timeframe": timeframe,
        "decision": "promote" if decision.promote else "reject",
        "reason": decision.reason,
        "model_name": name,
        "challenger_version": record["version"],
        "champion_version": champion_version or "",
        "evaluation_run_id": run_id,
        "gates_json": json.dumps({g["name"]: g for g in decision.as_rows()}, default=str),
        **{f"challenger_{k}": v for k, v in metrics["challenger"].items()},
        **{f"champion_{k}": v for k, v in metrics.get("champion", {}).items()},
    }
    metadata = {
        "decision": out["decision"],
        "reason": decision.reason,
        "challenger_version": record["version"],
        "champion_version": champion_version or "none",
        "holdout_rows": holdout.height,
        "holdout_window": f"{holdout['timestamp'].min()} .. {holdout['timestamp'].max()}",
        "side_by_side": dg.MetadataValue.md(
            markdown_table(side_by_side, max_rows=len(SHOWN_METRICS))
        ),
        "gates": dg.MetadataValue.md(markdown_table(gates, max_rows=20)),
        "equity_curves": dg.MetadataValue.md(image_markdown(equity_png, "equity curves")),
        "backtest_report": dg.MetadataValue.md(image_markdown(report_png, "backtest report")),
        "mlflow_run": dg.MetadataValue.url(tracker.run_url(run_id).split(" ")[0]),
    }
    check_metadata = {
        "decision": out["decision"],
        "reason": decision.reason,
        **{gate.name: gate.describe() for gate in decision.gates},
    }
    return pl.DataFrame([out]), metadata, decision.promote, check_metadata
