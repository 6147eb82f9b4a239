"""The meta layer [symbol × timeframe]: `regime`, `primary_signals`, per-regime `meta_learner`s, the
meta-labelling `meta_filter`, and `ensemble_signals`, which degrades to voting when a meta-learner
is missing, miscalibrated or broken, and is served only when it passes the champion's gates and
a deflated Sharpe ratio that pays for every variant compared."""

import json
from pathlib import Path
from typing import Literal

import dagster as dg
import numpy as np
import polars as pl

from quant_assets.defs.batching import each_partition, partition_check
from quant_assets.defs.conditions import FOLLOWS_UPSTREAM, RETRAINS_NIGHTLY
from quant_assets.defs.metadata import table
from quant_assets.defs.models import BY_TIMEFRAME, image_markdown
from quant_assets.defs.partitions import (
    PARTITION_BATCH,
    symbol_and_timeframe,
    symbol_timeframe_partitions,
)
from quant_assets.defs.resources import AlertResource, ArtifactStore, MlflowResource
from quant_assets.lib.alerts import Alert
from quant_assets.lib.calendars import annualization_kind
from quant_assets.lib.meta import (
    BacktestSettings,
    EnsembleConfig,
    MetaConfig,
    MetaFilterConfig,
    MetaModel,
    compare_ensembles,
    degenerate_filter_input,
    degenerate_meta_input,
    filter_report,
    meta_frame,
    primary_side,
    train_meta_filter,
    train_meta_learners,
    voting,
)
from quant_assets.lib.meta import (
    ensemble_signals as combine_signals,
)
from quant_assets.lib.plots import equity_curve_png
from quant_assets.lib.primary import PrimaryConfig
from quant_assets.lib.primary import primary_signals as primary_signal_frame
from quant_assets.lib.promotion import GateConfig, ensemble_calibration, evaluate_gates
from quant_assets.lib.regimes import RegimeConfig, regime_summary, regimes
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.scratch import scratch_dir
from quant_assets.lib.signals import resolve_long_threshold
from quant_assets.lib.tracking import ALIAS_CHAMPION, Tracker, git_commit, registered_model_name
from quant_assets.lib.trials import compared_selection

GROUP = "meta"


def _tags(context: dg.AssetExecutionContext, **extra: str) -> dict[str, str]:
    return {
        "dagster.run_id": context.run.run_id,
        "dagster.partition_key": str(context.partition_key),
        "dagster.asset_key": context.asset_key.to_user_string(),
        "git_commit": git_commit(Path(__file__).parent),
        **extra,
    }


class RegimeAssetConfig(dg.Config):
    """How bars are classified (lib.regimes.RegimeConfig; defaults there)."""

    method: Literal["rules", "kmeans"] = "rules"
    quantile_window: int | None = None
    """Trailing bars of the volatility/slope quantiles; None = all earlier bars (expanding)."""
    train_fraction: float = 0.8
    """k-means only: fitted on the first fraction of warm bars, the rest are predictions."""
    n_clusters: int = 4
    seed: int = 0


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    group_name=GROUP,
    kinds={"polars"},
    code_version="1",
    check_specs=[
        partition_check(
            "regime",
            "regime_no_lookahead",
            "Regimes recomputed on truncated history are identical for every earlier bar.",
            blocking=True,
        )
    ],
)
@each_partition
def regime(context: dg.AssetExecutionContext, config: RegimeAssetConfig, features: pl.DataFrame):
    """A regime per bar from information available at that bar: bull, bear, range or neutral from
    the trend slope and volatility bucket of the coarsest higher timeframe in the snapshot (rules),
    or k-means clusters fitted on the training window only and named from their centres. `gate`
    is off in choppy regimes (neutral at high volatility) and before warm-up."""
    train_end = None
    if config.method == "kmeans":
        warm = features.filter(pl.col("is_warm"))["timestamp"]
        train_end = warm[int((warm.len() - 1) * config.train_fraction)]
    regime_config = RegimeConfig(
        method=config.method,
        quantile_window=config.quantile_window,
        train_end=train_end,
        n_clusters=config.n_clusters,
        seed=config.seed,
    )
    frame = regimes(features, regime_config)
    cuts = [int(frame.height * q) for q in (0.5, 0.75, 0.9)]
    if train_end is not None:  # k-means: cut after the training window, whose fit is fixed
        end_row = int(features["timestamp"].search_sorted(train_end, side="right"))
        cuts = [max(c, end_row + 1) for c in cuts]
    changed = [
        cut
        for cut in cuts
        if not regimes(features.head(cut), regime_config).equals(frame.head(cut))
    ]
    summary = regime_summary(frame)
    shares = pl.DataFrame(
        [{"regime": name, **values} for name, values in summary["regimes"].items()]
    )
    yield dg.Output(
        frame,
        metadata={
            "dagster/row_count": frame.height,
            "method": config.method,
            "train_end": str(train_end) if train_end is not None else "n/a (rules)",
            "gate_on_share": float(summary["gate_on_share"]),
            "latest": json.dumps({k: str(v) for k, v in frame.tail(1).row(0, named=True).items()}),
            "regimes": dg.MetadataValue.md(markdown_table(shares)),
        },
    )
    yield dg.AssetCheckResult(
        check_name="regime_no_lookahead",
        passed=not changed,
        metadata={"cuts": str(cuts), "changed_at_cuts": str(changed)},
    )


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    group_name=GROUP,
    kinds={"polars"},
    code_version="1",
)
@each_partition
def primary_signals(
    context: dg.AssetExecutionContext, ohlcv: pl.DataFrame, features: pl.DataFrame
) -> dg.Output[pl.DataFrame]:
    """Side (-1/0/+1) and confidence of three documented primary strategies per bar, known at its
    close: trend (EMA 12/26 cross), mean reversion (Bollinger %B beyond the bands), breakout
    (close beyond the previous 20 bars' range). The meta layer combines them."""
    bars = ohlcv.join(features.select("timestamp"), on="timestamp", how="semi")
    frame = primary_signal_frame(bars, features, PrimaryConfig())
    counts = frame.select(
        *(
            pl.col(f"{name}_side").eq(side).sum().alias(f"{name}_{label}")
            for name in ("trend", "meanrev", "breakout")
            for side, label in ((1, "long"), (-1, "short"))
        )
    ).row(0, named=True)
    return dg.Output(
        frame,
        metadata={
            "dagster/row_count": frame.height,
            **{k: int(v) for k, v in counts.items()},
            "preview": table(frame.tail(5)),
        },
    )


class MetaLearnerConfig(dg.Config):
    """Per-regime meta-learners (lib.meta.MetaConfig)."""

    model_type: Literal["logistic", "gradient_boosting"] = "logistic"
    lookback_bars: int | None = None
    """Only the latest bars (None = all)."""
    min_samples_per_regime: int = 100
    max_ece: float = 0.15
    seed: int = 42


def _log_meta_model(
    tracker: Tracker,
    run_id: str,
    model: MetaModel,
    registered_name: str,
    example: pl.DataFrame,
    tags: dict[str, str],
) -> str:
    """Log one meta model (estimator, calibrator, features) in the active run; its version."""
    estimator, calibrator, feature_columns = model.artifacts()
    tracker.log_dict(run_id, {"features": feature_columns}, "feature_list.json")
    if calibrator is not None:
        tracker.log_dict(run_id, calibrator, "calibrator.json")
    version = tracker.log_model(
        estimator,
        model.model_type,
        example.select(pl.col(feature_columns).cast(pl.Float64)).head(5).to_pandas(),
        registered_name,
        tags | {"model_type": model.model_type, "oof_ece_calibrated": f"{model.ece:.6f}"},
    )
    return version.version


def _alias_meta_models(
    tracker: Tracker, meta_learner: pl.DataFrame, used: set[str], serving: bool
) -> None:
    """Registry aliases of the meta-learners the ensemble used: `ensemble` on each, and `champion`
    while the ensemble is served (removed when it no longer is)."""
    for row in meta_learner.iter_rows(named=True):
        if not row.get("version") or row["regime"] not in used:
            continue
        name, version = row["model_name"], str(row["version"])
        tracker.set_alias(name, "ensemble", version)
        if serving:
            tracker.set_alias(name, ALIAS_CHAMPION, version)
        elif ALIAS_CHAMPION in tracker.aliases(name):
            tracker.delete_alias(name, ALIAS_CHAMPION)


def _log_variant_metrics(tracker: Tracker, run_id: str, summary: pl.DataFrame) -> None:
    """Every finite metric of every backtested variant, as `<variant>_<metric>` (one batch)."""
    tracker.log_metrics(
        run_id,
        {
            f"{row['variant']}_{k}": float(v)
            for row in summary.iter_rows(named=True)
            for k, v in row.items()
            if k != "variant" and v is not None and np.isfinite(float(v))
        },
    )


@dg.asset(
    automation_condition=RETRAINS_NIGHTLY,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    group_name=GROUP,
    kinds={"scikitlearn", "mlflow"},
    code_version="1",
    pool="mlflow",
)
@each_partition
def meta_learner(
    context: dg.AssetExecutionContext,
    config: MetaLearnerConfig,
    mlflow: MlflowResource,
    ohlcv: pl.DataFrame,
    features: pl.DataFrame,
    primary_signals: pl.DataFrame,
    regime: pl.DataFrame,
    labels: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """One meta-learner per regime, predicting whether a long reaches take-profit first from the
    primary signals' sides and confidences, the regime and volatility bucket, ATR, momentum and
    RSI; purged k-fold on the regime's rows, calibrated on out-of-fold predictions, the last 20 %
    of rows held out. One MLflow run per regime (skipped regimes too, with the reason), each
    trained model registered as `meta.<SYMBOL>.<timeframe>.<regime>`."""
    symbol, timeframe = symbol_and_timeframe(context)
    frame = meta_frame(ohlcv, features, primary_signals, regime, labels)
    meta_config = MetaConfig(
        model_type=config.model_type,
        lookback_bars=config.lookback_bars,
        min_samples_per_regime=config.min_samples_per_regime,
        max_ece=config.max_ece,
        seed=config.seed,
    )
    degenerate = degenerate_meta_input(frame, meta_config)
    if degenerate:  # constant prices, too short a history: skipped like challenger_model
        context.log.warning(f"{symbol}|{timeframe}: meta-learners skipped: {degenerate}")
        skipped = {"regime": "all", "status": "skipped", "reason": degenerate}
        return dg.Output(
            pl.DataFrame([{**skipped, "model_name": "", "version": "", "run_id": ""}]).with_columns(
                pl.lit(None, pl.Datetime("us", "UTC")).alias("holdout_start")
            ),
            metadata={"status": "skipped", "reason": degenerate, "dagster/row_count": 1},
        )
    report = train_meta_learners(frame, meta_config)
    tracker = mlflow.get_tracker()
    holdout_start = report.data["timestamp"][int(report.plan.holdout_idx[0])]
    rows = []
    workdir = scratch_dir("qa_meta_")
    summary_csv = workdir / "training_summary.csv"
    report.summary.write_csv(summary_csv)
    for row in report.summary.iter_rows(named=True):
        name = f"meta.{symbol}.{timeframe}.{row['regime']}"
        model = report.models.get(row["regime"])
        with tracker.run(
            "meta_learner",
            f"{symbol}|{timeframe} {row['regime']}",
            _tags(context, regime=row["regime"], status=row["status"]),
        ) as run_id:
            tracker.log_params(
                run_id,
                {f"meta.{k}": v for k, v in config.model_dump().items()}
                | {"regime": row["regime"], "holdout_start": str(holdout_start)},
            )
            tracker.log_metrics(
                run_id,
                {
                    k: float(v)
                    for k, v in row.items()
                    if isinstance(v, float | int) and not isinstance(v, bool) and np.isfinite(v)
                },
            )
            tracker.log_file(run_id, summary_csv)
            tracker.log_text(run_id, row["reason"] or "trained", "status.txt")
            version = (
                _log_meta_model(
                    tracker, run_id, model, name, report.data, {"regime": row["regime"]}
                )
                if model is not None
                else ""
            )
        if version:
            tracker.set_alias(name, "challenger", version)
            tracker.describe_registered_model(
                name,
                f"{symbol} {timeframe} meta-learner of the `{row['regime']}` regime: calibrated "
                "probability that the primary strategies' trade hits its take-profit first. "
                "Aliases: `challenger` (newest), `ensemble` (used by the latest ensemble), "
                "`champion` (serving: the ensemble passed the promotion gates).",
                {"symbol": symbol, "timeframe": timeframe, "kind": "meta", "regime": row["regime"]},
            )
        rows.append(
            {**row, "model_name": name if version else "", "version": version, "run_id": run_id}
        )
        context.log.info(
            f"{symbol}|{timeframe} {row['regime']}: {row['status']}"
            + (f" ({row['reason']})" if row["reason"] else f", version {version}")
        )
    out = pl.DataFrame(rows).with_columns(pl.lit(holdout_start).alias("holdout_start"))
    shown = [
        c
        for c in (
            "regime",
            "status",
            "reason",
            "n_rows",
            "oof_roc_auc",
            "oof_ece",
            "holdout_roc_auc",
            "holdout_brier",
            "holdout_log_loss",
            "holdout_accuracy",
            "version",
        )
        if c in out.columns
    ]
    return dg.Output(
        out,
        metadata={
            "trained": int((out["status"] == "trained").sum()),
            "skipped": int((out["status"] != "trained").sum()),
            "holdout_start": str(holdout_start),
            "summary": dg.MetadataValue.md(markdown_table(out.select(shown), max_rows=10)),
        },
    )


class MetaFilterAssetConfig(dg.Config):
    """Meta-labelling filter (lib.meta.MetaFilterConfig)."""

    primary: Literal["trend", "meanrev", "breakout", "vote"] = "vote"
    threshold: float = 0.58
    """A primary trade is taken when the filter's calibrated P(take-profit first) >= this."""
    model_type: Literal["logistic", "gradient_boosting"] = "logistic"
    min_events: int = 100


@dg.asset(
    automation_condition=RETRAINS_NIGHTLY,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    group_name=GROUP,
    kinds={"scikitlearn", "mlflow"},
    code_version="1",
    pool="mlflow",
)
@each_partition
def meta_filter(
    context: dg.AssetExecutionContext,
    config: MetaFilterAssetConfig,
    mlflow: MlflowResource,
    ohlcv: pl.DataFrame,
    features: pl.DataFrame,
    primary_signals: pl.DataFrame,
    regime: pl.DataFrame,
    labels: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """A second-stage classifier of the primary's trades (label: its take-profit was hit before its
    stop) from primary confidence, volatility, volume ratio, a spread proxy and time of day; on the
    hold-out, the primary with and without the filter side by side (precision, trades, profit
    factor, drawdown), logged to MLflow with both equity curves."""
    symbol, timeframe = symbol_and_timeframe(context)
    frame = meta_frame(ohlcv, features, primary_signals, regime, labels)
    filter_config = MetaFilterConfig(
        threshold=config.threshold,
        model_type=config.model_type,
        min_events=config.min_events,
        backtest=BacktestSettings(calendar_kind=annualization_kind(ohlcv, timeframe)),
    )
    degenerate = degenerate_filter_input(frame, config.primary, filter_config)
    result = (
        None
        if degenerate
        else train_meta_filter(frame, config.primary, filter_config, timeframe=timeframe)
    )
    if result is None or result.model is None:
        reason = degenerate or getattr(result.training, "reason", "not trained")
        context.log.warning(f"{symbol}|{timeframe}: meta filter skipped: {reason}")
        return dg.Output(
            pl.DataFrame([{"variant": "none", "status": "skipped", "reason": reason}]),
            metadata={"status": "skipped", "reason": reason},
        )
    comparison = filter_report(frame, result)
    tracker = mlflow.get_tracker()
    workdir = scratch_dir("qa_filter_")
    png = equity_curve_png(
        {k: v.select("timestamp", "equity") for k, v in comparison.per_bar.items()},
        workdir / "filter_equity_curves.png",
        title=f"{symbol}|{timeframe}: primary {config.primary} with and without the filter",
    )
    name = f"meta_filter.{symbol}.{timeframe}"
    with tracker.run(
        "meta_filter", f"{symbol}|{timeframe}", _tags(context, primary=config.primary)
    ) as run_id:
        tracker.log_params(run_id, {f"filter.{k}": v for k, v in config.model_dump().items()})
        _log_variant_metrics(tracker, run_id, comparison.summary)
        tracker.log_frame(run_id, comparison.summary, "filter_comparison.csv")
        tracker.log_file(run_id, png)
        version = _log_meta_model(
            tracker, run_id, result.model, name, result.events, {"primary": config.primary}
        )
    out = comparison.summary.with_columns(
        pl.lit("trained").alias("status"),
        pl.lit(name).alias("model_name"),
        pl.lit(version).alias("version"),
        pl.lit(run_id).alias("run_id"),
    )
    return dg.Output(
        out,
        metadata={
            "primary": config.primary,
            "threshold": config.threshold,
            "model": f"{name} v{version}",
            "side_by_side": dg.MetadataValue.md(markdown_table(comparison.summary)),
            "equity_curves": dg.MetadataValue.md(image_markdown(png, "filtered vs unfiltered")),
            "mlflow_run": dg.MetadataValue.url(tracker.run_url(run_id)),
        },
    )


class EnsembleAssetConfig(dg.Config):
    """How the ensemble combines (lib.meta.EnsembleConfig) and when it is served."""

    mode: Literal["filter", "weighted"] = "filter"
    max_ece: float = 0.15
    """A regime's meta-learner is used only with a calibrated out-of-fold ECE at most this."""
    min_confidence: float = 0.55
    lookback_bars: int = 500
    """Recent bars whose ensemble signals are stored for `signals`."""
    min_sortino: float = 1.2
    min_profit_factor: float = 1.15
    max_drawdown: float = 0.06
    min_trades: int = 20
    min_dsr: float = 0.95
    """Deflated Sharpe ratio of the served mode's hold-out backtest against the expected best
    Sharpe of every variant compared for the decision (N variants, V their Sharpe variance)."""
    min_trl_confidence: float = 0.95
    """The hold-out must be at least the minimum track record length (MinTRL) at this confidence..."""
    min_trl_benchmark_sharpe: float = 0.0
    """...that the true annualized Sharpe exceeds this benchmark."""


def _load_meta_models(
    tracker: Tracker, learners: pl.DataFrame
) -> tuple[dict[str, MetaModel | None], list[tuple[str, str]]]:
    """The registered meta-learner of each regime (None when skipped) and the regimes whose model
    could not be loaded, with the error."""
    models: dict[str, MetaModel | None] = {}
    failures = []
    for row in learners.iter_rows(named=True):
        if not row["version"]:
            models[row["regime"]] = None
            continue
        try:
            loaded = tracker.load_model(row["model_name"], row["version"])
            models[row["regime"]] = MetaModel.from_artifacts(
                row["model_name"],
                loaded.model,
                loaded.calibrator.to_dict() if loaded.calibrator else None,
                loaded.feature_columns,
                loaded.model_type,
                {"oof_ece_calibrated": float(loaded.tags.get("oof_ece_calibrated", "nan"))},
            )
        except Exception as exc:  # a broken registry entry must not stop the signals
            models[row["regime"]] = None
            failures.append(
                (
                    row["regime"],
                    f"loading {row['model_name']} v{row['version']} failed: {type(exc).__name__}: {exc}",
                )
            )
    return models, failures


def _champion_sides(
    tracker: Tracker,
    symbol: str,
    timeframe: str,
    features: pl.DataFrame,
    ranks: pl.DataFrame,
    frame: pl.DataFrame,
) -> tuple[pl.Series | None, str]:
    """The champion direction model's long signals on the rows of `frame` (its own threshold, as
    `signals` uses it), with the version; (None, reason) without a champion."""
    name = registered_model_name(symbol, timeframe)
    version = tracker.aliases(name).get(ALIAS_CHAMPION)
    if not version:
        return None, f"{name} has no champion"
    model = tracker.load_model(name, version)
    rows = (
        frame.select("timestamp")
        .join(features, on="timestamp", how="left")
        .join(
            ranks.filter(pl.col("symbol") == symbol).drop("symbol", "xs_n_symbols"),
            on="timestamp",
            how="left",
        )
    )
    prob = model.predict_proba(rows.with_columns(pl.col(model.feature_columns).fill_null(np.nan)))
    threshold = resolve_long_threshold(None, model.decision_threshold, 1.75, 1.0, 0.05)
    sides = np.where(np.isfinite(prob) & (prob >= threshold), 1, 0).astype(np.int8)
    return pl.Series("side", sides), f"{name} v{version}"


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    # compared with the champion in service, so after this partition's promotion decision
    deps=[dg.AssetDep("cross_sectional_ranks", partition_mapping=BY_TIMEFRAME), "champion"],
    group_name=GROUP,
    kinds={"mlflow", "polars"},
    code_version="1",
)
@each_partition
def ensemble_signals(
    context: dg.AssetExecutionContext,
    config: EnsembleAssetConfig,
    mlflow: MlflowResource,
    alerts: AlertResource,
    artifacts: ArtifactStore,
    ohlcv: pl.DataFrame,
    features: pl.DataFrame,
    primary_signals: pl.DataFrame,
    regime: pl.DataFrame,
    labels: pl.DataFrame,
    meta_learner: pl.DataFrame,
) -> dg.Output[pl.DataFrame]:
    """Per bar: side and size from the regime's meta-learner when it exists and is calibrated
    (ECE <= max_ece), else, or when loading or predicting fails, from confidence-weighted voting of
    the primary signals, with an alert naming the regime and the reason. On the meta-learners'
    hold-out, primary-only, voting and the meta ensembles (filter and weighted) are backtested side
    by side (MLflow and the metadata). The ensemble is served to `signals` only when it passes the
    promotion gates against the champion direction model on that hold-out, its deflated Sharpe
    ratio (N = the variants compared, V their Sharpe variance) and MinTRL among them."""
    symbol, timeframe = symbol_and_timeframe(context)
    if meta_learner["holdout_start"][0] is None:  # meta-learners skipped (degenerate data)
        reason = f"no meta-learners: {meta_learner['reason'][0]}"
        context.log.warning(f"{symbol}|{timeframe}: ensemble skipped: {reason}")
        return dg.Output(
            pl.DataFrame(
                [{"status": "skipped", "reason": reason, "serving": False, "source": "none"}]
            ).with_columns(pl.lit("").alias("mlflow_run_id")),
            metadata={"status": "skipped", "reason": reason, "serving": False},
        )
    tracker = mlflow.get_tracker()
    cross_sectional_ranks = artifacts.read_ranks(symbol, timeframe)
    frame = meta_frame(ohlcv, features, primary_signals, regime, labels)
    models, load_failures = _load_meta_models(tracker, meta_learner)
    ensemble_config = EnsembleConfig(
        mode=config.mode, max_ece=config.max_ece, min_confidence=config.min_confidence
    )
    combined = combine_signals(frame, models, ensemble_config)
    other_mode = combine_signals(
        frame,
        models,
        EnsembleConfig(
            mode="weighted" if config.mode == "filter" else "filter",
            max_ece=config.max_ece,
            min_confidence=config.min_confidence,
        ),
    )
    reasons = dict(combined.fallbacks) | dict(load_failures)
    for regime_name, reason in sorted(reasons.items()):
        alerts.send(
            Alert(
                kind="ensemble_fallback",
                severity="warning",
                subject=f"{symbol}|{timeframe} {regime_name}",
                message=f"voting instead of the meta-learner: {reason}",
                details={"regime": regime_name, "reason": reason},
                symbol=symbol,
                timeframe=timeframe,
            )
        )
        context.log.warning(f"{symbol}|{timeframe} {regime_name}: falls back to voting: {reason}")

    holdout_start = meta_learner["holdout_start"][0]
    in_holdout = frame["timestamp"] >= holdout_start
    hold = frame.filter(in_holdout)
    votes = voting(frame.filter(in_holdout), ensemble_config.min_agreement)
    variants = {
        "primary_trend": primary_side(hold, "trend").select("side"),
        "voting": votes.select(pl.col("vote_side").alias("side")),
        f"meta_{config.mode}": combined.signals.filter(in_holdout).select("side", "size"),
        f"meta_{other_mode.config.mode}": other_mode.signals.filter(in_holdout).select(
            "side", "size"
        ),
    }
    champion_sides, champion = _champion_sides(
        tracker, symbol, timeframe, features, cross_sectional_ranks, hold
    )
    if champion_sides is not None:
        variants["champion"] = champion_sides
    settings = BacktestSettings(calendar_kind=annualization_kind(ohlcv, timeframe))
    comparison = compare_ensembles(hold, ohlcv, variants, timeframe, settings)
    metrics = {row["variant"]: row for row in comparison.summary.iter_rows(named=True)}
    gates = GateConfig(
        min_sortino=config.min_sortino,
        min_profit_factor=config.min_profit_factor,
        max_drawdown=config.max_drawdown,
        max_ece=config.max_ece,
        min_trades=config.min_trades,
        min_dsr=config.min_dsr,
        min_trl_confidence=config.min_trl_confidence,
        min_trl_benchmark_sharpe=config.min_trl_benchmark_sharpe,
    )
    # serving the ensemble is a choice among every variant backtested here, the champion
    # included: its DSR deflates by N = those variants (the champion counts as one: its own
    # threshold and configuration trials were paid for by its own DSR gate, and the ensemble's
    # meta-learners never searched them) and V = the variance of their per-bar Sharpe ratios
    ppy = settings.periods_per_year(timeframe)
    selection = compared_selection(
        {name: frame["net_ret"].to_numpy() for name, frame in comparison.per_bar.items()},
        f"meta_{config.mode}",
        ppy,
        gates,
    )
    # the ensemble's calibration is that of the meta-learners it uses (voting has no probability)
    used = [m.ece for r, m in models.items() if m is not None and r not in reasons]
    # the ensemble's calibration is its meta-learners'; with none in use (all voting) the gate is
    # not applicable, with that reason, rather than passing on a vacuous ECE of 0
    ece, not_applicable = ensemble_calibration(used)
    chosen = {**metrics[f"meta_{config.mode}"], "ece": ece}
    decision = evaluate_gates(
        chosen,
        metrics.get("champion"),
        gates,
        selection=selection.stats(),
        not_applicable=not_applicable,
    )
    selection_metrics = selection.as_metrics(ppy)
    workdir = scratch_dir("qa_ensemble_")
    png = equity_curve_png(
        {k: v.select("timestamp", "equity") for k, v in comparison.per_bar.items()},
        workdir / "ensemble_equity_curves.png",
        title=f"{symbol}|{timeframe}: ensembles on the hold-out",
    )
    with tracker.run(
        "ensemble_signals",
        f"{symbol}|{timeframe}",
        _tags(context, mode=config.mode, serving=str(decision.promote).lower()),
    ) as run_id:
        tracker.log_params(
            run_id,
            {f"ensemble.{k}": v for k, v in config.model_dump().items()}
            | {
                "ensemble.n_trials": selection.n_trials,
                "ensemble.trials": ", ".join(selection.sharpes),
                "ensemble.trials_sharpe_variance": selection.trials_variance,
                "ensemble.periods_per_year": ppy,
            },
        )
        tracker.log_metrics(run_id, {f"selection_{k}": v for k, v in selection_metrics.items()})
        _log_variant_metrics(tracker, run_id, comparison.summary)
        tracker.log_frame(run_id, comparison.summary, "ensemble_comparison.csv")
        tracker.log_frame(run_id, pl.DataFrame(decision.as_rows()), "gates.csv")
        tracker.log_dict(run_id, {"fallbacks": reasons}, "fallbacks.json")
        tracker.log_file(run_id, png)
    _alias_meta_models(tracker, meta_learner, set(models) - set(reasons), decision.promote)
    recent = combined.signals.tail(config.lookback_bars).with_columns(
        pl.lit(decision.promote).alias("serving"),
        pl.lit(decision.reason).alias("decision_reason"),
        pl.lit(run_id).alias("mlflow_run_id"),
    )
    source_counts = combined.signals.group_by("source").len().sort("source")
    return dg.Output(
        recent,
        metadata={
            "dagster/row_count": recent.height,
            "serving": decision.promote,
            "decision": decision.reason,
            "fallbacks": dg.MetadataValue.md(
                markdown_table(
                    pl.DataFrame({"regime": list(reasons), "reason": list(reasons.values())})
                )
                if reasons
                else "none: every regime's meta-learner is in use"
            ),
            "sources": dg.MetadataValue.md(markdown_table(source_counts)),
            "comparison": dg.MetadataValue.md(markdown_table(comparison.summary)),
            "gates": dg.MetadataValue.md(markdown_table(pl.DataFrame(decision.as_rows()))),
            "equity_curves": dg.MetadataValue.md(image_markdown(png, "ensembles on the hold-out")),
            "mlflow_run": dg.MetadataValue.url(tracker.run_url(run_id)),
            "holdout_start": str(holdout_start),
            "compared_with": champion,
            "n_trials": dg.MetadataValue.int(selection.n_trials),
            "trials": f"{selection.n_trials} variants compared: {', '.join(selection.sharpes)}",
            # the served mode's DSR against the variants, its Sharpe, hold-out periods and MinTRL
            **{
                k: dg.MetadataValue.float(float(v))
                for k, v in selection_metrics.items()
                if k != "n_trials"
            },
        },
    )


META_ASSETS = [regime, primary_signals, meta_learner, meta_filter, ensemble_signals]
