"""`training_dataset`, `walk_forward_splits` and `challenger_model` [symbol × timeframe], and the
per-timeframe `global_challenger_model`: every trained model is an MLflow run and a registered version."""

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import numpy as np
import polars as pl

from quant_assets.defs.batching import PartitionOutput, emit, inputs_of
from quant_assets.defs.conditions import FOLLOWS_UPSTREAM
from quant_assets.defs.partitions import (
    PARTITION_BATCH,
    TIMEFRAME_EACH,
    registered_symbols,
    step_partitions,
    symbol_timeframe_partitions,
    timeframe_partitions,
)
from quant_assets.defs.resources import (
    ArtifactStore,
    MarketDataResource,
    MlflowResource,
    RetrainRulesResource,
    TradingStoreResource,
)
from quant_assets.defs.sweeps import swept_params
from quant_assets.lib.calibration import calibration_plot_png
from quant_assets.lib.datasets import (
    TrainingDataset,
    build_global_dataset,
    build_training_dataset,
    dataset_fingerprint,
    dataset_from_frame,
)
from quant_assets.lib.errors import SplitConfigError
from quant_assets.lib.health import (
    PER_SIGNAL,
    RUN_TAG_MODE,
    RUN_TAG_REASONS,
    PartitionStatus,
    model_state_tags,
    partition_status,
)
from quant_assets.lib.live import training_signal_quality
from quant_assets.lib.lookback import (
    day_walk_forward_plan,
    default_lookback_days,
    lookback_start_row,
    shifted_plan,
    training_window_label,
)
from quant_assets.lib.model_card import model_card_summary, render_model_card
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.retrain import ModelState, next_version
from quant_assets.lib.scratch import scratch_dir
from quant_assets.lib.signals import choose_long_threshold, choose_short_threshold
from quant_assets.lib.splits import (
    SplitConfig,
    SplitPlan,
    make_splits,
    split_plan_frame,
    split_plan_from_frame,
)
from quant_assets.lib.tracking import ALIAS_CHALLENGER, Tracker, git_commit, registered_model_name
from quant_assets.lib.training import (
    INCREMENTAL_TYPES,
    ModelConfig,
    SkippedTraining,
    TrainingResult,
    continue_training,
    fit_per_symbol_calibrators,
    train_with_cv,
)
from quant_assets.lib.trials import (
    OOF_ARTIFACT,
    TRIALS_ARTIFACT,
    model_config_id,
    oof_predictions_frame,
    reusable_version,
    reused_record,
    training_trial_record,
)

BY_TIMEFRAME = dg.MultiToSingleDimensionPartitionMapping("timeframe")
CODE_VERSION = "1"


class DatasetConfig(dg.Config):
    target: Literal["take_profit", "fixed_horizon", "binary_outperformance", "multi_class"] = (
        "take_profit"
    )
    """`take_profit`: 1 when the triple barrier hit take-profit first; `fixed_horizon`: label_fh;
    `binary_outperformance`: label_out (beat the labels' benchmark symbol over its horizon);
    `multi_class`: label_mc as y_class (K return buckets), y = a class above the middle one. A
    multi-class model is trained on y_class (see lib.training.train_with_cv) and trades P(up)."""


class SplitsConfig(dg.Config):
    """Validation scheme: purged k-fold with embargo (default), expanding or rolling walk-forward."""

    scheme: Literal["purged_kfold", "expanding", "rolling"] = "purged_kfold"
    holdout_fraction: float = 0.2
    """The latest rows, never seen by cross-validation; reserved for champion/challenger evaluation."""
    n_splits: int = 5
    embargo: float = 0.01
    """Rows dropped from training after each test block: a count (>= 1) or a fraction of rows (< 1)."""
    min_train: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    step: int | None = None
    gap: int = 0
    lookback_days: int | None = 0
    """Rolling window: only the latest N days of the dataset are split (folds, final fit and the
    hold-out, the latest `holdout_fraction` of the window). 0 (default): the full history. None:
    the timeframe's lookback (180 days for 1h and finer, the full history for coarser ones), which
    is not the default because on the demo's data it cost every 1h partition its promotion
    (README, "Research breadth")."""
    train_days: float | None = None
    """Walk-forward in calendar days (schemes expanding and rolling, used when test_days is set):
    rolling trains on the train_days before each test window, expanding on every earlier row."""
    test_days: float | None = None
    step_days: float | None = None

    def lookback(self, timeframe: str) -> int | None:
        """The rolling window of `timeframe` in days; None for the full history."""
        if self.lookback_days is None:
            return default_lookback_days(timeframe)
        return self.lookback_days or None

    def split_config(self, n_rows: int) -> SplitConfig:
        embargo: int | float = int(self.embargo) if self.embargo >= 1 else self.embargo
        dev = int(n_rows * (1 - self.holdout_fraction))
        test_size = self.test_size or max(dev // (self.n_splits + 1), 1)
        return SplitConfig(
            scheme=self.scheme,
            holdout_fraction=self.holdout_fraction,
            n_splits=self.n_splits,
            embargo=embargo,
            min_train=self.min_train or (test_size if self.scheme == "expanding" else None),
            train_size=self.train_size or (2 * test_size if self.scheme == "rolling" else None),
            test_size=test_size if self.scheme != "purged_kfold" else self.test_size,
            step=self.step,
            gap=self.gap,
        )


class ModelTrainingConfig(dg.Config):
    """Model type and hyperparameters (overrides of lib.training.DEFAULT_PARAMS), editable in the Launchpad."""

    model_type: Literal["lightgbm", "xgboost", "logistic", "gradient_boosting", "random_forest"] = (
        "lightgbm"
    )
    params: dict[str, Any] = {}
    seed: int = 42
    calibration: Literal["isotonic", "sigmoid", "none"] = "isotonic"
    n_bins: int = 10
    """Equal-width bins of the expected calibration error."""
    min_rows: int = 100
    """Fewer labelled development rows than this skips the partition (recorded, not failed)."""
    mode: Literal["complete", "incremental", "auto"] = "complete"
    """complete: from scratch; incremental: continue the champion's LightGBM booster on the rows it
    has not seen (falls back to complete, saying why, when it cannot); auto: as the retrain rules
    decide. The run tag quant_assets/retrain_mode of retrain runs overrides this."""
    incremental_trees: int = 5
    """Trees an incremental retrain adds to the champion's booster. Increments fit only the new
    development rows (~130 after a week of 1h bars): benchmarks/bench_retrain.py measured hold-out
    AUC 0.620 / raw ECE 0.057 with 5 trees against 0.608 / 0.119 with 20 (champion 0.621 / 0.036)."""

    use_sweep: bool = True
    """Train with the best parameters of the partition's stored `hyperparameter_sweep` of this
    model type, when there is one (`params` still override them key by key)."""

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(
            self.model_type, self.seed, dict(self.params), self.calibration, self.n_bins
        )


class GlobalTrainingConfig(ModelTrainingConfig):
    splits: SplitsConfig = SplitsConfig()
    """Validation scheme over the time-sorted union of every symbol's rows."""
    max_rows_per_symbol: int = 20_000
    """The latest rows of each symbol the global model reads."""
    max_rows: int = 400_000
    """The rows of all symbols together: each symbol's latest max_rows / symbols rows when that
    is fewer than max_rows_per_symbol. Memory and training time of the global model stay bounded
    whatever the universe (500 symbols of 1h bars at 20,000 rows each were 10 M rows, about
    3 GB as float64 before LightGBM's and the folds' copies, and 16 times the fitting)."""

    def rows_per_symbol(self, symbols: int) -> int:
        """The latest rows read of each of `symbols` symbols."""
        return max(1, min(self.max_rows_per_symbol, self.max_rows // max(1, symbols)))


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    deps=[dg.AssetDep("cross_sectional_ranks", partition_mapping=BY_TIMEFRAME)],
    group_name="training",
    kinds={"polars"},
    code_version=CODE_VERSION,
    backfill_policy=PARTITION_BATCH,
)
def training_dataset(
    context: dg.AssetExecutionContext,
    config: DatasetConfig,
    artifacts: ArtifactStore,
    features: dict[str, pl.DataFrame],
    labels: dict[str, pl.DataFrame],
):
    """Features (with the multi-timeframe snapshot and this symbol's cross-sectional ranks) joined
    with the binary target, its label span [t0, t1] and sample weight. Warm-up, unlabelled and
    incomplete rows are dropped and counted."""
    outputs = {}
    for key, symbol, timeframe in step_partitions(context):
        dataset = build_training_dataset(
            inputs_of(features, key),
            inputs_of(labels, key),
            artifacts.read_ranks(symbol, timeframe),
            target=config.target,
            symbol=symbol,
        )
        frame = dataset.frame.with_columns(pl.lit(config.target).alias("target"))
        version = dataset_fingerprint(frame)
        outputs[key] = PartitionOutput(
            frame,
            data_version=version,
            metadata={
                "dagster/row_count": frame.height,
                **{
                    k: dg.MetadataValue.int(int(v)) if isinstance(v, int) else float(v)
                    for k, v in dataset.counts.items()
                },
                "target": config.target,
                "features": len(dataset.feature_columns),
                "feature_columns": ", ".join(dataset.feature_columns),
                "first_row": str(frame["timestamp"].min()) if frame.height else "none",
                "last_row": str(frame["timestamp"].max()) if frame.height else "none",
                "data_version": version,
            },
        )
    yield from emit(context, outputs)


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    group_name="training",
    kinds={"polars"},
    code_version=CODE_VERSION,
    backfill_policy=PARTITION_BATCH,
)
def walk_forward_splits(
    context: dg.AssetExecutionContext,
    config: SplitsConfig,
    training_dataset: dict[str, pl.DataFrame],
):
    """The validation folds as data: per fold its train/test boundaries, row counts, purged and
    embargoed rows and exact row lists; the last row (fold -1) is the hold-out. Purging uses each
    row's label span [t0, t1]: no training span overlaps a test span."""
    yield from emit(
        context,
        {
            key: _splits_of(context, config, inputs_of(training_dataset, key), key)
            for key, _, _ in step_partitions(context)
        },
    )


def _splits_of(
    context: dg.AssetExecutionContext, config: SplitsConfig, frame: pl.DataFrame, key: str
) -> PartitionOutput:
    days = config.lookback(key.split("|")[1])
    first = lookback_start_row(frame["timestamp"], days)
    window = frame.slice(first)
    split = config.split_config(window.height)
    try:
        if config.test_days and config.scheme != "purged_kfold":
            plan = day_walk_forward_plan(
                window["timestamp"],
                window["t0"],
                window["t1"],
                holdout_fraction=config.holdout_fraction,
                train_days=config.train_days if config.scheme == "rolling" else None,
                test_days=config.test_days,
                step_days=config.step_days,
            )
        else:
            plan = _split_plan(split, window)
        plan = shifted_plan(plan, first)
    except SplitConfigError as exc:  # too few rows: recorded; training skips this partition
        context.log.warning(f"{key}: no folds: {exc}")
        plan = SplitPlan(split.scheme, np.arange(frame.height), np.empty(0, dtype=np.int64), 0, [])
    table = split_plan_frame(plan, frame["timestamp"])
    return PartitionOutput(
        table,
        metadata={
            "dagster/row_count": table.height,
            "scheme": plan.scheme,
            "folds": len(plan.folds),
            "dev_rows": int(plan.dev_idx.size),
            "holdout_rows": int(plan.holdout_idx.size),
            "holdout_purged_rows": plan.n_holdout_purged,
            "holdout_start": str(frame["timestamp"][int(plan.holdout_idx[0])])
            if plan.holdout_idx.size
            else "none",
            "lookback": training_window_label(days, frame["timestamp"], first),
            "rows_before_window": first,
            "config": dg.MetadataValue.json(config.model_dump()),
            "fold_table": dg.MetadataValue.md(
                markdown_table(table.drop("train_rows", "test_rows", "scheme"), max_rows=30)
            ),
        },
    )


def _split_plan(split: SplitConfig, frame: pl.DataFrame) -> SplitPlan:
    """`split` applied to a training frame, purging by its label spans [t0, t1]."""
    return make_splits(
        split.scheme,
        frame.height,
        frame["t0"],
        frame["t1"],
        holdout_fraction=split.holdout_fraction,
        **split.scheme_params(),
    )


def image_markdown(path: Path, alt: str) -> str:
    """An inline PNG, so the plot shows in the Dagster UI's metadata panel."""
    import base64

    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def _training_tags(
    context: dg.AssetExecutionContext,
    partition: str,
    data_version: str,
    model_type: str,
    data_source: str,
) -> dict[str, str]:
    return {
        "data_source": data_source,
        "dagster.run_id": context.run.run_id,
        "dagster.partition_key": partition,
        "dagster.asset_key": context.asset_key.to_user_string(),
        "code_version": CODE_VERSION,
        "git_commit": git_commit(Path(__file__).parent),
        "data_version": data_version,
        "model_type": model_type,
    }


def log_training_run(
    tracker: Tracker,
    *,
    experiment: str,
    run_name: str,
    registered_name: str,
    dataset: TrainingDataset,
    plan_table: pl.DataFrame,
    result: TrainingResult,
    config: dict[str, Any],
    tags: dict[str, str],
    symbol: str,
    timeframe: str,
    data_source: str | None = None,
    extra_artifacts: dict[str, dict] | None = None,
    dataset_path: Path | None = None,
) -> tuple[dict[str, Any], Path]:
    """One MLflow run with everything needed to audit and reuse a trained model; the new version gets
    the `challenger` alias. Returns the record stored by the asset and the calibration plot."""
    frame = dataset.frame
    window = (str(frame["timestamp"].min()), str(frame["timestamp"].max()))
    # the trading rule is fitted like the calibrator: on out-of-fold predictions only
    # (an incremental retrain has no out-of-fold predictions and keeps its base model's threshold)
    oof_ret = frame["ret"].gather(result.oof["row"]).to_numpy() if "ret" in frame.columns else None
    if result.oof.is_empty():
        threshold = float(tags.get("decision_threshold", 0.5))
    elif oof_ret is not None and dataset.target == "take_profit":
        threshold = choose_long_threshold(result.oof["prob_cal"].to_numpy(), oof_ret)
    else:
        threshold = 0.5
    # the trials behind this training (its configuration x the thresholds its search compared),
    # which the evaluation's deflated Sharpe ratio and PBO count
    config_id = model_config_id(
        result.config.model_type,
        result.config.model_params(),
        result.config.seed,
        result.config.calibration,
        dataset.target,
    )
    if result.oof.is_empty() and tags.get("base_version"):
        # an incremental retrain continues its base version: the same trial, whose out-of-fold
        # evidence (recorded with the base) is what the evaluation's selection gates judge
        base_tags = tracker.version_tags(registered_name, tags["base_version"])
        config_id = base_tags.get("config_id") or config_id
    searched = oof_ret is not None and dataset.target == "take_profit"
    trials = training_trial_record(
        config_id,
        {"model_type": result.config.model_type, "params": result.config.model_params()},
        result.oof["prob_cal"].to_numpy() if not result.oof.is_empty() else np.empty(0),
        oof_ret if searched and not result.oof.is_empty() else None,
        threshold,
    )
    tags = {**tags, "decision_threshold": f"{threshold:.2f}", "config_id": config_id}
    if searched and not result.oof.is_empty():
        # the short side's threshold, chosen the same way on the same out-of-fold predictions
        short = choose_short_threshold(result.oof["prob_cal"].to_numpy(), oof_ret)
        tags["decision_threshold_short"] = "" if short is None else f"{short:.2f}"
    workdir = scratch_dir("qa_train_")
    with tracker.run(experiment, run_name, tags) as run_id:
        tracker.log_params(
            run_id,
            {
                **{f"model.{k}": v for k, v in config.items() if k != "params"},
                **{f"model.params.{k}": v for k, v in result.config.model_params().items()},
                "data.target": dataset.target,
                "data.window_start": window[0],
                "data.window_end": window[1],
                "data.rows": frame.height,
                "data.n_dev": result.n_dev,
                "data.n_holdout": result.n_holdout,
                "data.n_features": len(result.feature_columns),
                "split.scheme": str(plan_table["scheme"][0]) if plan_table.height else "none",
                "split.folds": int((plan_table["fold"] >= 0).sum()),
                "decision.long_threshold": threshold,
            },
        )
        tracker.log_dict(run_id, {"features": result.feature_columns}, "feature_list.json")
        by_fold = {
            int(row["fold"]): {f"fold_{k}": v for k, v in row.items() if k != "fold"}
            for row in result.fold_metrics.to_dicts()
        }
        summary = {**result.overall_metrics, **result.holdout_metrics}
        # fold k's metrics at step k; the summary at step 0 (with fold 0's, as before)
        tracker.log_metric_steps(run_id, {**by_fold, 0: {**by_fold.get(0, {}), **summary}})
        curves = {
            "out-of-fold, raw": (result.oof["y"].to_numpy(), result.oof["prob_raw"].to_numpy()),
            "out-of-fold, calibrated": (
                result.oof["y"].to_numpy(),
                result.oof["prob_cal"].to_numpy(),
            ),
            "hold-out, calibrated": (
                result.holdout["y"].to_numpy(),
                result.holdout["prob_cal"].to_numpy(),
            ),
        }
        plot = calibration_plot_png(
            {label: pair for label, pair in curves.items() if pair[0].size},
            workdir / "calibration_curve.png",
            n_bins=result.config.n_bins,
            title=f"{registered_name}: reliability",
        )
        tracker.log_file(run_id, plot)
        tracker.log_frame(run_id, result.feature_importances, "feature_importances.csv")
        tracker.log_frame(run_id, plan_table.drop("train_rows", "test_rows"), "folds.csv")
        tracker.log_frame(run_id, result.fold_metrics, "fold_metrics.csv")
        if result.calibrator is not None:
            tracker.log_dict(run_id, result.calibrator.to_dict(), "calibrator.json")
        if not result.oof.is_empty():
            tracker.log_dict(run_id, trials, TRIALS_ARTIFACT)
            oof_path = workdir / OOF_ARTIFACT
            oof_predictions_frame(result.oof).write_parquet(oof_path)
            tracker.log_file(run_id, oof_path)
        for name, payload in (extra_artifacts or {}).items():
            tracker.log_dict(run_id, payload, name)
        if result.class_calibrators:  # a multi-class model's one-vs-rest calibrators, per class
            tracker.log_dict(
                run_id,
                {str(k): c.to_dict() for k, c in result.class_calibrators.items()},
                "class_calibrators.json",
            )
        card = render_model_card(
            name=registered_name,
            symbol=None if symbol == "ALL" else symbol,
            timeframe=timeframe,
            dataset_counts=dataset.counts,
            split_summary=plan_table.drop("train_rows", "test_rows", "scheme"),
            config=result.config,
            overall_metrics=result.overall_metrics,
            holdout_metrics=result.holdout_metrics,
            feature_importances=result.feature_importances,
            data_window=window,
            code_version=f"{CODE_VERSION} ({tags['git_commit']})",
            data_version=tags["data_version"],
            fold_metrics=result.fold_metrics,
            target=dataset.target,
            data_source=data_source,
        )
        tracker.log_text(run_id, card, "model_card.md")
        tracker.describe_run(run_id, model_card_summary(card))
        if dataset_path is not None:
            # the Parquet file trained on and its data version: the run's input in the MLflow UI
            tracker.log_dataset(
                run_id,
                dataset_path,
                f"training_dataset {symbol}|{timeframe}",
                tags["data_version"],
                {name: str(dtype) for name, dtype in frame.schema.items()},
            )
        example = frame.select(pl.col(result.feature_columns).cast(pl.Float64)).head(5).to_pandas()
        version = tracker.log_model(
            result.model, result.config.model_type, example, registered_name, tags
        )
        tracker.set_alias(registered_name, ALIAS_CHALLENGER, version.version)
        kind = registered_name.split(".", 1)[0]
        tracker.describe_registered_model(
            registered_name,
            f"{'Global' if symbol == 'ALL' else symbol} {timeframe} direction model "
            f"(`{kind}`): calibrated probability that the take-profit barrier is hit first. "
            "Aliases: `challenger` (newest), `champion` (serving), `prior_champion`.",
            {"symbol": symbol, "timeframe": timeframe, "kind": kind, "target": dataset.target},
        )
    record = {
        "symbol": symbol,
        "timeframe": timeframe,
        "status": "trained",
        "reason": "",
        "model_name": registered_name,
        "version": version.version,
        "run_id": run_id,
        "model_uri": version.model_uri,
        "model_type": result.config.model_type,
        "target": dataset.target,
        "data_version": tags["data_version"],
        "n_dev": result.n_dev,
        "n_holdout": result.n_holdout,
        "decision_threshold": threshold,
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: float(v) for k, v in result.overall_metrics.items()},
        **{k: float(v) for k, v in result.holdout_metrics.items()},
    }
    return record, plot


def _skipped_output(
    symbol: str, timeframe: str, reason: str, context: dg.AssetExecutionContext
) -> tuple[pl.DataFrame, dict[str, Any]]:
    context.log.warning(f"{symbol or 'global'}|{timeframe}: training skipped: {reason}")
    record = pl.DataFrame(
        [{"symbol": symbol, "timeframe": timeframe, "status": "skipped", "reason": reason}]
    )
    return record, {"status": "skipped", "reason": reason}


def _trained_output(
    record: dict[str, Any], plot: Path, tracker: Tracker, fold_metrics: pl.DataFrame
) -> tuple[pl.DataFrame, dict[str, Any]]:
    keys = (
        "oof_roc_auc",
        "oof_brier",
        "oof_log_loss",
        "oof_accuracy",
        "oof_ece",
        "oof_ece_calibrated",
        "holdout_roc_auc",
        "holdout_brier",
        "holdout_ece",
        "holdout_ece_calibrated",
    )
    return (
        pl.DataFrame([record]),
        {
            "status": "trained",
            "registered_model": record["model_name"],
            "version": record["version"],
            **{
                k: str(record[k])
                for k in ("version_label", "mode", "retrain_reasons")
                if k in record
            },
            "alias": ALIAS_CHALLENGER,
            "mlflow_run": dg.MetadataValue.url(tracker.run_url(record["run_id"])),
            "mlflow_run_id": record["run_id"],
            "mlflow_version": dg.MetadataValue.url(
                tracker.version_url(record["model_name"], record["version"])
            ),
            **{k: float(record[k]) for k in keys if k in record},
            "n_dev": record["n_dev"],
            "n_holdout": record["n_holdout"],
            "fold_metrics": dg.MetadataValue.md(markdown_table(fold_metrics, max_rows=30)),
            "calibration_curve": dg.MetadataValue.md(image_markdown(plot, "calibration curve")),
        },
    )


def batch_output(
    context: dg.AssetExecutionContext, outputs: dict[str, tuple[pl.DataFrame, dict[str, Any]]]
):
    """The events of a step over several partitions' (frame, metadata) pairs (see batching.emit)."""
    return emit(
        context,
        {key: PartitionOutput(frame, metadata) for key, (frame, metadata) in outputs.items()},
    )


@dg.asset(
    partitions_def=symbol_timeframe_partitions,
    deps=[training_dataset, walk_forward_splits],
    group_name="training",
    kinds={"lightgbm", "xgboost", "scikitlearn", "mlflow"},
    code_version=CODE_VERSION,
    pool="mlflow",
    tags={"quant_assets/kind": "training"},
    backfill_policy=PARTITION_BATCH,
)
def challenger_model(
    context: dg.AssetExecutionContext,
    config: ModelTrainingConfig,
    mlflow: MlflowResource,
    market_data: MarketDataResource,
    artifacts: ArtifactStore,
    trading_store: TradingStoreResource,
    retrain_rules: RetrainRulesResource,
):
    """A model trained with purged cross-validation, calibrated on its out-of-fold predictions and
    refit on every development row, logged to MLflow and registered as a new version of
    `direction.<SYMBOL>.<timeframe>` with the alias `challenger`. The stored record names that version.

    Complete or incremental: an incremental retrain continues the champion's LightGBM booster on the
    development rows it has not seen. The run tag `quant_assets/retrain_mode` (set by the retrain
    sensors) overrides `config.mode`; `auto` lets the retrain rules decide. Versions are labelled
    v1.0, v1.1 after an incremental retrain, v2.0 after a complete one. A batched retrain run trains
    each of its partitions in turn."""
    tracker = mlflow.get_tracker()
    mode = context.run.tags.get(RUN_TAG_MODE, config.mode)
    trigger = "scheduled" if RUN_TAG_REASONS in context.run.tags else "manual"
    outputs = {}
    for key, symbol, timeframe in step_partitions(context):
        outputs[key] = _train_partition(
            context,
            config,
            tracker,
            market_data,
            artifacts,
            trading_store,
            retrain_rules,
            symbol,
            timeframe,
            mode,
            trigger,
        )
    yield from batch_output(context, outputs)


def _train_partition(
    context: dg.AssetExecutionContext,
    config: ModelTrainingConfig,
    tracker: Tracker,
    market_data: MarketDataResource,
    artifacts: ArtifactStore,
    trading_store: TradingStoreResource,
    retrain_rules: RetrainRulesResource,
    symbol: str,
    timeframe: str,
    requested_mode: str,
    trigger: str,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    key = f"{symbol}|{timeframe}"
    swept = (
        swept_params(artifacts, symbol, timeframe, config.model_type) if config.use_sweep else None
    )
    if swept:
        config = config.model_copy(update={"params": {**swept, **config.params}})
        context.log.info(f"{key}: parameters of the stored hyperparameter_sweep: {swept}")
    frame = artifacts.require_partition("training_dataset", symbol, timeframe)
    plan_table = artifacts.require_partition("walk_forward_splits", symbol, timeframe)
    dataset = dataset_from_frame(frame, symbol=symbol)
    plan = split_plan_from_frame(plan_table)
    now = datetime.now(UTC)
    status = partition_status(
        tracker,
        trading_store.get_store(),
        artifacts.read_partition("labels", symbol, timeframe),
        symbol,
        timeframe,
        now,
        retrain_rules.policy(),
    )
    # why this partition is retrained: its own rules now (a batch run's tags are shared)
    reasons = ",".join(dict.fromkeys(r.code for r in status.reasons)) or trigger
    policy = retrain_rules.policy()
    mode, why_complete = _resolve_mode(requested_mode, status, config, policy.max_incremental_steps)
    result = None
    if mode == "incremental":
        champion = tracker.load_model(status.model_name, status.version)
    if mode == "incremental" and dataset.target == "multi_class":
        why_complete = "incremental retraining continues binary models only; trained from scratch"
        mode = "complete"
    if mode == "incremental" and champion.model_type != config.model_type:
        why_complete = (
            f"the champion is a {champion.model_type} model, config asks for {config.model_type}; "
            "trained from scratch"
        )
        mode = "complete"
    if mode == "incremental":
        result = continue_training(
            dataset,
            plan,
            champion.model,
            champion.calibrator,
            status.fitted_through,
            feature_columns=champion.feature_columns,
            extra_trees=config.incremental_trees,
            log=context.log.info,
        )
        if isinstance(result, SkippedTraining):
            why_complete = f"incremental retrain impossible ({result.reason}); trained from scratch"
            mode, result = "complete", None
    if why_complete:
        context.log.info(f"{key}: {why_complete}")
    name = registered_model_name(symbol, timeframe)
    model_config = config.to_model_config()
    identity = {
        "data_version": dataset_fingerprint(frame),
        "splits_version": dataset_fingerprint(plan_table.drop("train_rows", "test_rows")),
        "config_id": model_config_id(
            model_config.model_type,
            model_config.model_params(),
            model_config.seed,
            model_config.calibration,
            dataset.target,
        ),
        "code_version": CODE_VERSION,
        # an incremental version shares its base's configuration but is another model
        "retrain_mode": "complete",
    }
    existing = reusable_version(tracker, name, identity) if mode == "complete" else None
    if existing is not None:
        # same data, splits, configuration and code: the model would be the same; no new trial
        tracker.set_alias(name, ALIAS_CHALLENGER, existing)
        why = (
            f"reused {name} v{existing}: trained on the same data version, splits, configuration "
            "and code version; no new version registered"
        )
        context.log.info(f"{key}: {why}")
        record = reused_record(tracker, name, existing)
        record.update(symbol=symbol, timeframe=timeframe, mode="reused", retrain_reasons=reasons)
        return pl.DataFrame([record]), {
            "status": "trained",
            "reused": why,
            "registered_model": name,
            "version": existing,
            "alias": ALIAS_CHALLENGER,
            "mlflow_run_id": record["run_id"],
        }
    if result is None:
        result = train_with_cv(
            dataset, plan, config.to_model_config(), min_rows=config.min_rows, log=context.log.info
        )
    if isinstance(result, SkippedTraining):
        return _skipped_output(symbol, timeframe, result.reason, context)
    label = next_version(
        ModelState(trained_at=now, version_label=status.newest_label)
        if status.newest_label
        else ModelState(),
        mode,
    )
    trained_through = frame["timestamp"].gather(plan.dev_idx).max()
    data_through = frame["timestamp"].max()
    quality = _training_quality(result, frame, status, mode)
    state = ModelState(
        trained_at=now,
        last_labelled_at_training=data_through,
        training_hit_rate=quality["hit_rate"],
        training_sharpe=quality["sharpe"],
        incremental_steps=status.state.incremental_steps + 1 if mode == "incremental" else 0,
        version_label=label,
    )
    record, plot = log_training_run(
        tracker,
        experiment="challenger_model",
        run_name=f"{key} {label}",
        dataset_path=artifacts.path("training_dataset", symbol, timeframe),
        registered_name=name,
        dataset=dataset,
        plan_table=plan_table,
        result=result,
        config=config.model_dump(),
        tags={
            **_training_tags(
                context,
                key,
                dataset_fingerprint(frame),
                config.model_type,
                market_data.describe(),
            ),
            **model_state_tags(state, trained_through, mode, reasons),
            "splits_version": identity["splits_version"],
            # the rows the plan draws from (its rolling lookback window), which the evaluation reports
            "training_window": (
                f"{frame['timestamp'][int(plan.dev_idx.min())]} .. {frame['timestamp'].max()}"
                if plan.dev_idx.size
                else "none"
            ),
            **(
                {
                    "base_version": status.version or "",
                    "decision_threshold": champion.tags.get("decision_threshold", "0.5"),
                    "decision_threshold_short": champion.tags.get("decision_threshold_short", ""),
                }
                if mode == "incremental"
                else {}
            ),
        },
        symbol=symbol,
        timeframe=timeframe,
        data_source=market_data.describe(),
    )
    record.update(version_label=label, mode=mode, retrain_reasons=reasons)
    context.log.info(
        f"{name} v{record['version']} ({label}, {mode}): "
        f"hold-out auc {record.get('holdout_roc_auc', float('nan')):.3f}"
    )
    return _trained_output(record, plot, tracker, result.fold_metrics)


def _resolve_mode(
    requested: str, status: PartitionStatus, config: ModelTrainingConfig, max_steps: int
) -> tuple[str, str]:
    """The mode to train in and, when it is complete although incremental was asked for, why."""
    if requested not in ("complete", "incremental", "auto"):
        raise ValueError(
            f"retrain mode {requested!r} (run tag {RUN_TAG_MODE} or config.mode) is not one of "
            "complete, incremental, auto"
        )
    if requested == "complete":
        return "complete", ""
    if requested == "auto" and status.mode != "incremental":
        return "complete", f"retrain rules chose a complete retrain ({status.mode or 'none'})"
    if status.role != "champion":
        return "complete", "no champion to continue; trained from scratch"
    if status.fitted_through is None:
        return "complete", "the champion does not record the rows it was fitted on"
    if config.model_type not in INCREMENTAL_TYPES:
        return "complete", (
            f"incremental retraining needs one of {INCREMENTAL_TYPES}, config has {config.model_type}"
        )
    if status.state.incremental_steps >= max_steps:
        return "complete", f"{status.state.incremental_steps} incremental steps in a row"
    return "incremental", ""


def _training_quality(
    result: TrainingResult,
    frame: pl.DataFrame,
    status: PartitionStatus,
    mode: str,
) -> dict[str, float | None]:
    """Hit rate and Sharpe of the model's long signals on its out-of-fold predictions, the
    reference the degradation rule compares live signals with. An incremental retrain has no
    out-of-fold predictions; it keeps its base model's reference."""
    if mode == "incremental" or "ret" not in frame.columns or result.oof.is_empty():
        return {"hit_rate": status.state.training_hit_rate, "sharpe": status.state.training_sharpe}
    prob = result.oof["prob_cal"].to_numpy()
    ret = frame["ret"].gather(result.oof["row"]).to_numpy()
    threshold = choose_long_threshold(prob, ret)
    return training_signal_quality(prob, ret, threshold, PER_SIGNAL)


@dg.asset(
    partitions_def=timeframe_partitions,
    deps=[dg.AssetDep(training_dataset, partition_mapping=BY_TIMEFRAME)],
    group_name="training",
    kinds={"lightgbm", "mlflow"},
    code_version=CODE_VERSION,
    pool="mlflow",
    tags={"quant_assets/kind": "training"},
    backfill_policy=TIMEFRAME_EACH,
)
def global_challenger_model(
    context: dg.AssetExecutionContext,
    config: GlobalTrainingConfig,
    mlflow: MlflowResource,
    market_data: MarketDataResource,
    artifacts: ArtifactStore,
):
    """One model per timeframe trained on every symbol's dataset (time-sorted union, purged across
    symbols by time), with a calibrator per symbol fitted on that symbol's out-of-fold predictions;
    registered as `direction_global.<timeframe>` with the alias `challenger`. Each symbol's latest
    rows are read, at most `max_rows_per_symbol` and `max_rows` for all symbols together, which
    bounds memory and training time at any number of symbols."""
    symbols = registered_symbols(context.instance)
    yield from batch_output(
        context,
        {
            timeframe: _train_global(
                context, config, mlflow, market_data, artifacts, symbols, timeframe
            )
            for timeframe in context.partition_keys
        },
    )


def _train_global(
    context: dg.AssetExecutionContext,
    config: GlobalTrainingConfig,
    mlflow: MlflowResource,
    market_data: MarketDataResource,
    artifacts: ArtifactStore,
    symbols: list[str],
    timeframe: str,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    datasets = {}
    rows = config.rows_per_symbol(len(symbols))
    for symbol in symbols:
        frame = artifacts.read_partition("training_dataset", symbol, timeframe)
        if frame is not None and frame.height:
            datasets[symbol] = dataset_from_frame(frame.tail(rows), symbol=symbol)
    if not datasets:
        return _skipped_output("", timeframe, "no symbol has a training dataset", context)
    dataset = build_global_dataset(datasets)
    frame = dataset.frame
    try:
        plan = _split_plan(config.splits.split_config(frame.height), frame)
    except SplitConfigError as exc:
        return _skipped_output("", timeframe, str(exc), context)
    result = train_with_cv(
        dataset, plan, config.to_model_config(), min_rows=config.min_rows, log=context.log.info
    )
    if isinstance(result, SkippedTraining):
        return _skipped_output("", timeframe, result.reason, context)
    method = config.calibration if config.calibration != "none" else "isotonic"
    per_symbol = fit_per_symbol_calibrators(result.oof, method, pooled=result.calibrator)
    tracker = mlflow.get_tracker()
    name = registered_model_name("", timeframe, kind="direction_global")
    record, plot = log_training_run(
        tracker,
        experiment="global_challenger_model",
        run_name=f"global|{timeframe}",
        registered_name=name,
        dataset=dataset,
        plan_table=split_plan_frame(plan, frame["timestamp"]),
        result=result,
        config=config.model_dump(),
        tags=_training_tags(
            context,
            timeframe,
            dataset_fingerprint(frame),
            config.model_type,
            market_data.describe(),
        ),
        symbol="ALL",
        timeframe=timeframe,
        data_source=market_data.describe(),
        extra_artifacts={
            "calibrators_by_symbol.json": {s: c.to_dict() for s, c in per_symbol.items()}
        },
    )
    record["symbols"] = ", ".join(sorted(datasets))
    return _trained_output(record, plot, tracker, result.fold_metrics)
