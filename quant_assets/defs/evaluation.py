"""`champion_challenger_evaluation` [symbol × timeframe]: challenger and champion scored on the same
hold-out with the same backtest, promotion gates decided, and a blocking check that gates `champion`."""

import dataclasses
import json

import dagster as dg
import polars as pl

from quant_assets.defs.batching import PartitionOutput, emit, partition_check
from quant_assets.defs.features import features
from quant_assets.defs.metadata import table
from quant_assets.defs.models import (
    challenger_model,
    image_markdown,
    training_dataset,
    walk_forward_splits,
)
from quant_assets.defs.ohlcv import ohlcv
from quant_assets.defs.partitions import (
    PARTITION_BATCH,
    step_partitions,
    symbol_timeframe_partitions,
)
from quant_assets.defs.resources import ArtifactStore, MlflowResource, TradingStoreResource
from quant_assets.lib.calendars import annualization_kind
from quant_assets.lib.performance import annualization
from quant_assets.lib.plots import backtest_report_png, fold_evidence_png
from quant_assets.lib.promotion import GateConfig, SelectionStats, evaluate_gates
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.scratch import scratch_dir
from quant_assets.lib.signals import resolve_long_threshold
from quant_assets.lib.sources import source_mismatch
from quant_assets.lib.splits import split_plan_from_frame
from quant_assets.lib.tracking import ALIAS_CHAMPION, LoadedModel
from quant_assets.lib.trials import (
    PartitionTrials,
    SelectionEvidence,
    TradeRules,
    holdout_scores,
    partition_trials,
    selection_evidence,
    selection_stats,
)

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
    min_dsr: float = 0.95
    """Deflated Sharpe ratio of the challenger's out-of-fold backtest at its chosen threshold,
    against the expected best Sharpe of every trial for this partition (N configurations x
    threshold candidates, V their Sharpe variance)."""
    min_trl_confidence: float = 0.95
    """The hold-out must be at least the minimum track record length (MinTRL) at this confidence."""
    min_trl_benchmark_sharpe: float = 0.0
    """Annualized Sharpe the hold-out must beat with that confidence."""
    min_profitable_folds: float = 0.8
    """Share of validation folds whose out-of-fold backtest made money."""
    max_pbo: float = 0.5
    """Probability of backtest overfitting (CSCV over the trials), when there are enough trials."""
    pbo_blocks: int = 16
    pbo_min_trials: int = 5
    threshold_long: float | None = None
    """Calibrated take-profit probability from which a bar gets a long signal; default: each model's
    own threshold, chosen on its out-of-fold predictions at training (tag `decision_threshold`),
    else the break-even probability of the barriers (sl / (tp + sl)) plus `edge`."""
    threshold_short: float | None = None
    """Calibrated take-profit probability at or below which a bar gets a short signal; default: the
    model's own short threshold (tag `decision_threshold_short`, chosen on its out-of-fold
    predictions), else no shorts."""
    shorts: bool = True
    """Backtest (and gate) short signals as well as long ones, on the hold-out and in every
    out-of-fold trial (each configuration's own short threshold)."""
    edge: float = 0.05
    tp_mult: float = 1.75
    sl_mult: float = 1.0
    horizon: int = 5
    """Bars a position is held after its last signal (the label's vertical barrier)."""
    fee_bps: float = 5.0
    slippage_bps: float = 2.0
    delay: int = 1
    """Bars between the signal's bar and execution (at least 1: never on the bar that made it)."""
    target_vol: float | None = 0.10
    """Annualized volatility each position is sized to (size = target / (ATR / close / 1.596 x
    sqrt(bars a year)), at most 1: signals.volatility_target_size); None trades full size."""

    def long_threshold(self, model: LoadedModel) -> float:
        return resolve_long_threshold(
            self.threshold_long, model.decision_threshold, self.tp_mult, self.sl_mult, self.edge
        )

    def short_threshold(self, model: LoadedModel) -> float | None:
        """The short side's threshold: the rule every out-of-fold trial uses too (TradeRules)."""
        return self.trade_rules().short_threshold(
            model.decision_threshold_short, self.long_threshold(model)
        )

    def gate_config(self) -> GateConfig:
        """The gate fields of this Config (same names as GateConfig's)."""
        names = {f.name for f in dataclasses.fields(GateConfig)}
        return GateConfig(**{k: v for k, v in self.model_dump().items() if k in names})

    def trade_rules(self) -> TradeRules:
        """The trading rules of every backtest of the evaluation (hold-out and out-of-fold),
        the short side's (`shorts`, `threshold_short`) included."""
        names = {f.name for f in dataclasses.fields(TradeRules)}
        return TradeRules(**{k: v for k, v in self.model_dump().items() if k in names})


def score_on_holdout(
    model: LoadedModel,
    holdout: pl.DataFrame,
    bars: pl.DataFrame,
    atr: pl.DataFrame,
    timeframe: str,
    periods_per_year: float,
    n_trials: int,
    config: EvaluationConfig,
    trials_variance: float | None = None,
):
    """Classification and backtest metrics of one model on the hold-out rows (and their bars);
    the hold-out DSR with the partition's N trials and their Sharpe variance V."""
    scored = holdout.select("timestamp", "y").with_columns(
        pl.Series("prob", model.predict_proba(holdout))
    )
    priced = scored.join(bars.select("timestamp", "close"), on="timestamp").join(
        atr, on="timestamp"
    )
    return holdout_scores(
        priced["y"].to_numpy(),
        priced["prob"].to_numpy(),
        priced,
        bars,
        config.long_threshold(model),
        timeframe,
        periods_per_year,
        config.trade_rules(),
        n_trials,
        trials_variance,
        threshold_short=config.short_threshold(model),
    )


@dg.asset(
    partitions_def=symbol_timeframe_partitions,
    deps=[challenger_model, training_dataset, walk_forward_splits, ohlcv, features],
    group_name="promotion",
    kinds={"mlflow"},
    code_version="1",
    backfill_policy=PARTITION_BATCH,
    check_specs=[
        partition_check(
            "champion_challenger_evaluation",
            "promotion_gates",
            "The challenger passed every promotion gate. A rejection is a decision, not a data "
            "problem: it is recorded at WARN and `champion` keeps the current champion.",
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

    Every partition of a batched run is evaluated in turn and gets its own `promotion_gates` result:
    passed, or a WARN naming the failed gates. The run succeeds either way; only data or code
    errors fail it."""
    outputs = {}
    for key, symbol, timeframe in step_partitions(context):
        frame, metadata, passed, check_metadata = _evaluate_partition(
            context, config, mlflow, trading_store, artifacts, symbol, timeframe
        )
        outputs[key] = PartitionOutput(
            frame,
            metadata,
            checks=[
                dg.AssetCheckResult(
                    check_name="promotion_gates",
                    passed=passed,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata=check_metadata,
                    description=str(check_metadata.get("reason", "")) or None,
                )
            ],
        )
    yield from emit(context, outputs)


def _log_rejection(
    context, trading_store, name, symbol, timeframe, record, champion_version, reason, gates
) -> None:
    """A rejected challenger's row in promotion_log (promotions are logged by `champion`)."""
    trading_store.get_store().log_promotion(
        model_name=name,
        symbol=symbol,
        timeframe=timeframe,
        version=record["version"],
        prior_version=champion_version,
        action="reject",
        decided_by="gates",
        reason=reason,
        gates=gates,
        dagster_run_id=context.run.run_id,
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
    champion_version = tracker.aliases(name).get(ALIAS_CHAMPION)
    if champion_version == record["version"]:
        # an identical retraining reused the champion's version: there is nothing to decide
        reason = f"the challenger {name} v{record['version']} is the champion already"
        frame = pl.DataFrame(
            [
                {
                    "symbol": symbol,
                    "timeframe": timeframe,
                    "decision": "none",
                    "reason": reason,
                    "model_name": name,
                    "challenger_version": record["version"],
                    "champion_version": champion_version,
                }
            ]
        )
        return frame, {"decision": "none", "reason": reason}, False, {"reason": reason}
    mismatch = (
        source_mismatch(
            tracker.version_tags(name, record["version"]).get("data_source"),
            tracker.version_tags(name, champion_version).get("data_source"),
        )
        if champion_version
        else None
    )
    if mismatch:  # a decision (a rejection), logged like any other
        _log_rejection(context, trading_store, name, symbol, timeframe, record, champion_version,
                       mismatch, {})  # fmt: skip
        frame = pl.DataFrame(
            [
                {
                    "symbol": symbol,
                    "timeframe": timeframe,
                    "decision": "reject",
                    "reason": mismatch,
                    "model_name": name,
                    "challenger_version": record["version"],
                    "champion_version": champion_version,
                    "gates_json": "{}",
                }
            ]
        )
        return frame, {"decision": "reject", "reason": mismatch}, False, {"reason": mismatch}
    plan = split_plan_from_frame(walk_forward_splits)
    holdout = training_dataset[plan.holdout_idx]
    atr = features.select("timestamp", "atr_14")
    ppy = annualization(timeframe, annualization_kind(ohlcv, timeframe))
    gate_config = config.gate_config()
    fitted = partition_trials(tracker, name, record["version"])
    evidence = _selection_evidence(fitted, ohlcv, atr, timeframe, ppy, config)
    n_trials = evidence.n_trials if evidence is not None else 1
    variance = evidence.trials_variance if evidence is not None else None

    def score(version: str):
        model = tracker.load_model(name, version)
        return score_on_holdout(
            model, holdout, ohlcv, atr, timeframe, ppy, n_trials, config, variance
        )

    scored = {"challenger": score(record["version"])}
    if champion_version:
        scored["champion"] = score(champion_version)
    metrics = {role: m for role, (m, _) in scored.items()}
    if evidence is not None:
        selection = selection_stats(evidence, scored["challenger"][1], ppy, gate_config)
    else:
        selection = _no_selection_evidence(fitted)
    decision = evaluate_gates(
        metrics["challenger"], metrics.get("champion"), gate_config, selection=selection
    )
    workdir = scratch_dir("qa_eval_")
    report_png = backtest_report_png(
        scored["challenger"][1],
        workdir / "backtest_report.png",
        title=f"{name} v{record['version']}: hold-out backtest",
        metrics=metrics["challenger"],
        label=f"challenger v{record['version']}",
        # the champion on the same bars, for comparison
        others={
            f"champion v{champion_version}": scored["champion"][1].per_bar.select(
                "timestamp", "equity"
            )
        }
        if "champion" in scored
        else None,
    )
    evidence_metrics = evidence.as_metrics(ppy) if evidence is not None else {}
    evidence_metrics |= {
        "min_trl_periods": selection.min_track_record,
        "holdout_periods": selection.track_record,
    }
    fold_png = (
        fold_evidence_png(
            evidence.folds,
            evidence.trials,
            workdir / "fold_evidence.png",
            title=f"{name} v{record['version']}: out-of-fold evidence",
        )
        if evidence is not None
        else None
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
        tracker.log_metrics(run_id, {f"selection_{k}": v for k, v in evidence_metrics.items()})
        tracker.log_params(
            run_id,
            {f"eval.{k}": v for k, v in config.model_dump().items()}
            | {
                "eval.n_trials": n_trials,
                "eval.trials_sharpe_variance": variance,
                "eval.periods_per_year": ppy,
            },
        )
        tracker.log_file(run_id, report_png)
        tracker.log_frame(run_id, gates, "gates.csv")
        tracker.log_frame(run_id, scored["challenger"][1].trades, "challenger_trades.csv")
        if evidence is not None:
            tracker.log_file(run_id, fold_png)
            tracker.log_frame(run_id, evidence.folds, "fold_backtests.csv")
            tracker.log_frame(run_id, evidence.trials, "trials.csv")
    tracker.set_version_tags(
        name,
        record["version"],
        {
            **decision.as_tags(),
            "evaluation_run_id": run_id,
            "evaluated_by_dagster_run": context.run.run_id,
            "n_trials": str(n_trials),
            "trials_sharpe_variance": f"{variance if variance is not None else float('nan'):.6g}",
        },
    )
    if not decision.promote:
        by_name = {g["name"]: g for g in decision.as_rows()}
        _log_rejection(context, trading_store, name, symbol, timeframe, record, champion_version,
                       decision.reason, by_name)  # fmt: skip
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
        **{f"selection_{k}": float(v) for k, v in evidence_metrics.items()},
    }
    metadata = {
        "decision": out["decision"],
        "reason": decision.reason,
        "challenger_version": record["version"],
        "champion_version": champion_version or "none",
        "holdout_rows": holdout.height,
        "holdout_window": f"{holdout['timestamp'].min()} .. {holdout['timestamp'].max()}",
        "training_window": tracker.version_tags(name, record["version"]).get(
            "training_window", "not recorded"
        ),
        "n_trials": dg.MetadataValue.int(n_trials),
        "trials_sharpe_variance": dg.MetadataValue.float(
            variance if variance is not None else float("nan")
        ),
        "trials": _trials_summary(fitted, evidence),
        **{
            k: dg.MetadataValue.float(float(evidence_metrics[k]))
            for k in (
                "oof_dsr",
                "expected_max_sharpe",
                "oof_sharpe",
                "oof_short_trades",
                "pbo",
                "profitable_fold_share",
                "min_trl_periods",
                "holdout_periods",
            )
            if k in evidence_metrics
        },
        # the challenger's key metrics as numbers: the Plots tab charts them across evaluations
        **{
            f"challenger_{k}": float(v)
            for k, v in metrics["challenger"].items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        },
        "side_by_side": table(side_by_side, max_rows=len(SHOWN_METRICS)),
        "gates": table(gates, max_rows=20),
        "backtest_report": dg.MetadataValue.md(image_markdown(report_png, "backtest report")),
        "mlflow_run": dg.MetadataValue.url(tracker.run_url(run_id)),
    }
    if evidence is not None:
        metadata["fold_backtests"] = dg.MetadataValue.md(
            markdown_table(evidence.folds, max_rows=evidence.folds.height)
        )
        metadata["fold_evidence"] = dg.MetadataValue.md(
            image_markdown(fold_png, "out-of-fold evidence")
        )
    check_metadata = {
        "decision": out["decision"],
        "reason": decision.reason,
        "n_trials": n_trials,
        **{gate.name: gate.describe() for gate in decision.gates},
    }
    return pl.DataFrame([out]), metadata, decision.promote, check_metadata


def _selection_evidence(
    fitted: PartitionTrials,
    bars: pl.DataFrame,
    atr: pl.DataFrame,
    timeframe: str,
    periods_per_year: float,
    config: EvaluationConfig,
) -> SelectionEvidence | None:
    """Every trial of the partition backtested on the challenger's out-of-fold window, or None
    when the challenger's configuration logged no out-of-fold predictions."""
    if fitted.challenger is None:
        return None
    return selection_evidence(
        fitted.challenger,
        fitted.others,
        bars,
        atr,
        timeframe,
        periods_per_year,
        config.trade_rules(),
        pbo_blocks=config.pbo_blocks,
        pbo_min_trials=config.pbo_min_trials,
    )


def _no_selection_evidence(fitted: PartitionTrials) -> SelectionStats:
    """Selection gates that fail, saying why: without out-of-fold evidence nothing supports them."""
    nan = float("nan")
    return SelectionStats(
        dsr=nan,
        n_trials=0,
        trials_variance=nan,
        track_record=nan,
        min_track_record=nan,
        profitable_fold_share=nan,
        n_folds=0,
        pbo=None,
        pbo_reason=(
            "the challenger's configuration logged no out-of-fold predictions "
            f"({fitted.versions_seen} versions, {fitted.without_record} without a trial record)"
        ),
    )


def _trials_summary(fitted: PartitionTrials, evidence: SelectionEvidence | None) -> str:
    """One line: what N counts."""
    if evidence is None:
        return "no trial record for the challenger's configuration"
    return (
        f"{evidence.n_trials} trials = {evidence.n_configs} configuration(s) x their threshold "
        f"candidates ({', '.join(c.label for c in [fitted.challenger, *fitted.others] if c)}); "
        f"{fitted.versions_seen} registered versions, {fitted.without_record} without a record"
    )
