"""The trials behind a promotion decision and the evidence they give: every configuration fitted or
compared for a partition (model configurations x decision-threshold grid points), backtested on
out-of-fold predictions, per-fold trading metrics, and the deflated Sharpe ratio and PBO they imply.

A trial is one (model configuration, long threshold) pair. Training records, per configuration,
the thresholds its search could have chosen (`threshold_trials`, eligible rows) and the short
threshold chosen on the same out-of-fold predictions (`choose_short_threshold`) in `trials.json`
beside its out-of-fold predictions. The evaluation backtests every trial on the challenger's
out-of-fold window with the same trade rules as the hold-out backtest (`TradeRules`: sides,
sizing, stops, costs, delay): long from the trial's threshold and short from the short threshold
the served strategy would use with it (`TradeRules.short_threshold`), so the selected trial is
the served strategy, and each trial's per-period Sharpe ratio is measured the same way as the
selected one's: N = number of trials, V = the cross-sectional variance of their Sharpe ratios.

`compared_selection` deflates a choice among strategies backtested side by side on one window
(the ensemble's variants) the same way: N = the strategies compared, V = their Sharpe variance.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from quant_assets.lib.backtest import BacktestResult, run_backtest
from quant_assets.lib.metrics import classification_metrics
from quant_assets.lib.overfitting import (
    PboResult,
    SharpeMoments,
    deflated_sharpe,
    min_track_record_length,
    probability_of_backtest_overfitting,
    sharpe_moments,
    trials_sharpe_variance,
)
from quant_assets.lib.performance import expected_max_sharpe, performance_metrics
from quant_assets.lib.promotion import GateConfig, SelectionStats
from quant_assets.lib.signals import (
    THRESHOLD_COST,
    THRESHOLD_MIN_TRADES,
    choose_short_threshold,
    make_signals,
    position_changes,
    resolve_short_threshold,
    threshold_trials,
    volatility_target_size,
)

TRIALS_ARTIFACT = "trials.json"
OOF_ARTIFACT = "oof_predictions.parquet"
#: metrics of each fold's backtest, in the fold table
FOLD_METRICS = ("total_return", "sharpe", "sortino", "max_drawdown", "profit_factor", "trade_count")


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """Short stable id of a model configuration (model type, parameters, seed, calibration, ...):
    two trainings with the same fingerprint are one trial."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_trial_record(
    config_id: str,
    config: Mapping[str, Any],
    prob: np.ndarray,
    trade_return: np.ndarray | None,
    chosen_threshold: float,
) -> dict[str, Any]:
    """What one training tried, for `trials.json`: its configuration and the threshold search on
    its out-of-fold predictions (grid, cost, minimum trades, the eligible grid points, the chosen
    one) and the short threshold chosen on them (`choose_short_threshold`, as training tags it:
    None when no downside edge). Without trade returns (another target) no threshold was
    searched: one trial at the chosen threshold, long only."""
    if trade_return is None:
        grid, eligible, short = [], [float(chosen_threshold)], None
    else:
        table = threshold_trials(prob, trade_return)
        grid = table["threshold"].to_list()
        eligible = table.filter(pl.col("eligible"))["threshold"].to_list()
        short = choose_short_threshold(prob, trade_return)
    return {
        "config_id": config_id,
        "config": dict(config),
        "threshold_grid": grid,
        "threshold_cost": THRESHOLD_COST,
        "threshold_min_trades": THRESHOLD_MIN_TRADES,
        "eligible_thresholds": eligible or [float(chosen_threshold)],
        "chosen_threshold": float(chosen_threshold),
        "chosen_threshold_short": short,
    }


@dataclass(frozen=True)
class TradeRules:
    """How probabilities become trades, in the hold-out and every out-of-fold backtest alike:
    long when prob >= the long threshold, short when prob <= the short threshold in force
    (`short_threshold`), ATR stop-loss / take-profit, held `horizon` bars after the last signal,
    executed `delay` bars later at the open, costs per leg, and positions sized to `target_vol`
    annualized volatility (`signals.volatility_target_size`; None: full size)."""

    tp_mult: float = 1.75
    sl_mult: float = 1.0
    horizon: int = 5
    fee_bps: float = 5.0
    slippage_bps: float = 2.0
    delay: int = 1
    target_vol: float | None = 0.10
    shorts: bool = True
    """Trade the short side (False: long only, whatever the models chose)."""
    threshold_short: float | None = None
    """A short threshold for every model; None: each model's own."""

    def short_threshold(self, model_short: float | None, threshold_long: float) -> float | None:
        """The short threshold in force for a model whose own short threshold (chosen on its
        out-of-fold predictions, tag `decision_threshold_short`) is `model_short`, trading long
        from `threshold_long`: `threshold_short` if set, else the model's; None (long only) without
        shorts or when it would not lie below the long threshold (`resolve_short_threshold`)."""
        if not self.shorts:
            return None
        return resolve_short_threshold(self.threshold_short, model_short, threshold_long)


def strategy_backtest(
    bars: pl.DataFrame,
    priced: pl.DataFrame,
    prob: np.ndarray,
    threshold: float,
    timeframe: str,
    periods_per_year: float,
    rules: TradeRules,
    window: tuple[Any, Any] | None = None,
    threshold_short: float | None = None,
) -> BacktestResult:
    """Backtest of long (and, with `threshold_short`, short) signals from `prob` on the rows of
    `priced` (timestamp, close, atr_14), over the bars from the first to the last priced timestamp
    (or `window`)."""
    signals = make_signals(
        priced["timestamp"],
        priced["close"],
        priced["atr_14"],
        prob,
        threshold_long=threshold,
        threshold_short=threshold_short,
        sl_mult=rules.sl_mult,
        tp_mult=rules.tp_mult,
    )
    if rules.target_vol is not None:
        size = volatility_target_size(
            priced["close"], priced["atr_14"], periods_per_year, rules.target_vol
        )
        signals = signals.with_columns(pl.Series("size", size))
    start, end = window or (priced["timestamp"].min(), priced["timestamp"].max())
    return run_backtest(
        bars.filter(pl.col("timestamp").is_between(start, end)),
        position_changes(signals, rules.horizon),
        timeframe=timeframe,
        delay=rules.delay,
        fee_bps=rules.fee_bps,
        slippage_bps=rules.slippage_bps,
    )


@dataclass(frozen=True)
class ConfigTrials:
    """One model configuration fitted on the partition: its out-of-fold predictions (timestamp,
    fold, prob) and the thresholds its search could choose; `chosen` is the one it chose, `short`
    the short threshold chosen on the same predictions (None: no downside edge, long only)."""

    config_id: str
    label: str
    oof: pl.DataFrame
    thresholds: Sequence[float]
    chosen: float
    short: float | None = None


def trial_sharpes(returns: Sequence[np.ndarray]) -> np.ndarray:
    """Per-period Sharpe ratio of each trial's returns; 0 for a trial that never traded (flat
    returns have no Sharpe ratio, and a strategy that does nothing has no edge)."""
    sharpes = np.array([sharpe_moments(r).sharpe for r in returns], dtype=np.float64)
    return np.where(np.isfinite(sharpes), sharpes, 0.0)


def _min_trl(moments: SharpeMoments, periods_per_year: float, config: GateConfig) -> float:
    """MinTRL (periods) of `moments` against the gate config's annualized benchmark Sharpe."""
    benchmark = config.min_trl_benchmark_sharpe / math.sqrt(periods_per_year)
    return min_track_record_length(moments, benchmark, config.min_trl_confidence)


def fold_metrics_table(
    result: BacktestResult, oof: pl.DataFrame, periods_per_year: float
) -> pl.DataFrame:
    """Trading metrics per validation fold of one out-of-fold backtest: each bar belongs to the
    fold whose test rows started last at or before it, each trade to the fold it entered in."""
    bounds = oof.group_by("fold").agg(
        pl.col("timestamp").min().alias("start"), pl.col("timestamp").max().alias("end")
    )
    bounds = bounds.sort("start")
    starts = bounds["start"].to_numpy()
    per_bar, trades = result.per_bar, result.trades
    bar_fold = np.searchsorted(starts, per_bar["timestamp"].to_numpy(), side="right") - 1
    trade_fold = np.searchsorted(starts, trades["entry_time"].to_numpy(), side="right") - 1
    rows = []
    for i, (fold, start, end) in enumerate(bounds.select("fold", "start", "end").iter_rows()):
        r = per_bar["net_ret"].to_numpy()[bar_fold == i]
        t = trades.filter(pl.Series(trade_fold == i))
        m = performance_metrics(r, t, periods_per_year) if r.size else {}
        rows.append(
            {
                "fold": int(fold),
                "start": start,
                "end": end,
                "bars": int(r.size),
                **{k: float(m.get(k, math.nan)) for k in FOLD_METRICS},
            }
        )
    return pl.DataFrame(rows)


@dataclass(frozen=True)
class SelectionEvidence:
    """What the trials say about the selected (challenger, chosen threshold) trial.

    n_trials and trials_variance: N and V of the DSR; oof_moments: the selected trial's
    per-period out-of-fold returns; dsr against the expected maximum Sharpe of N trials; folds:
    per-fold trading metrics; pbo: CSCV across all trials, or None with `pbo_reason`."""

    n_trials: int
    n_configs: int
    trials_variance: float
    expected_max_sharpe: float
    oof_moments: SharpeMoments
    dsr: float
    folds: pl.DataFrame
    profitable_fold_share: float
    pbo: PboResult | None
    pbo_reason: str
    trials: pl.DataFrame
    oof_result: BacktestResult = field(repr=False)

    def as_metrics(self, periods_per_year: float) -> dict[str, float]:
        """Flat numbers for metadata and MLflow (the OOF Sharpe annualized too)."""
        return {
            "n_trials": float(self.n_trials),
            "n_configs": float(self.n_configs),
            "trials_sharpe_variance": self.trials_variance,
            "expected_max_sharpe": self.expected_max_sharpe,
            "oof_sharpe_per_period": self.oof_moments.sharpe,
            "oof_sharpe": self.oof_moments.sharpe * math.sqrt(periods_per_year),
            "oof_skew": self.oof_moments.skew,
            "oof_kurtosis": self.oof_moments.kurtosis,
            "oof_periods": float(self.oof_moments.n_obs),
            "oof_short_trades": float((self.oof_result.trades["side"] == -1).sum()),
            "oof_dsr": self.dsr,
            "profitable_fold_share": self.profitable_fold_share,
            "n_folds": float(self.folds.height),
            "pbo": self.pbo.pbo if self.pbo is not None else math.nan,
        }


def _priced(oof: pl.DataFrame, prices: pl.DataFrame) -> pl.DataFrame:
    return oof.join(prices, on="timestamp").sort("timestamp")


def selection_evidence(
    challenger: ConfigTrials,
    others: Sequence[ConfigTrials],
    bars: pl.DataFrame,
    atr: pl.DataFrame,
    timeframe: str,
    periods_per_year: float,
    rules: TradeRules,
    *,
    pbo_blocks: int = 16,
    pbo_min_trials: int = 5,
) -> SelectionEvidence:
    """Backtest every trial on the challenger's out-of-fold window and gather the evidence.

    bars: OHLCV; atr: timestamp, atr_14. Each trial trades long from its threshold and short from
    `rules.short_threshold(config.short, threshold)`, the side rule of the hold-out backtest and
    of `signals`. Other configurations' predictions are used where they fall in the window (a
    configuration fitted on older data is flat after its last prediction). PBO needs at least
    `pbo_min_trials` trials and enough bars for `pbo_blocks` blocks.
    """
    prices = bars.select("timestamp", "close").join(atr, on="timestamp")
    own = _priced(challenger.oof, prices)
    if own.is_empty():
        raise ValueError(f"{challenger.label}: no out-of-fold predictions with prices")
    window = (own["timestamp"].min(), own["timestamp"].max())
    columns, labels, shorts = [], [], []
    selected: BacktestResult | None = None
    for config in (challenger, *others):
        priced = own if config is challenger else _priced(config.oof, prices)
        priced = priced.filter(pl.col("timestamp").is_between(*window))
        if priced.is_empty():
            continue
        prob = priced["prob"].to_numpy()
        thresholds = sorted(set(map(float, config.thresholds)) | {float(config.chosen)})
        for threshold in thresholds:
            if config is not challenger and threshold not in set(map(float, config.thresholds)):
                continue
            short = rules.short_threshold(config.short, threshold)
            result = strategy_backtest(
                bars, priced, prob, threshold, timeframe, periods_per_year, rules, window, short
            )
            columns.append(result.per_bar["net_ret"].to_numpy())
            labels.append((config.label, threshold))
            shorts.append(short)
            if config is challenger and threshold == float(challenger.chosen):
                selected = result
    assert selected is not None  # the challenger's chosen threshold is always backtested
    matrix = np.column_stack(columns)
    sharpes = trial_sharpes(columns)
    n_trials = len(columns)
    variance = trials_sharpe_variance(sharpes)
    moments = sharpe_moments(selected.per_bar["net_ret"].to_numpy())
    folds = fold_metrics_table(selected, challenger.oof, periods_per_year)
    returns = folds["total_return"].to_numpy()
    share = float(np.mean(returns > 0)) if returns.size else math.nan
    pbo, pbo_reason = None, ""
    if n_trials < pbo_min_trials:
        pbo_reason = f"{n_trials} trials, fewer than pbo_min_trials={pbo_min_trials}"
    elif matrix.shape[0] < 2 * pbo_blocks:
        pbo_reason = f"{matrix.shape[0]} out-of-fold bars are too few for {pbo_blocks} blocks"
    else:
        pbo = probability_of_backtest_overfitting(matrix, pbo_blocks)
    trials = pl.DataFrame(
        {
            "config": [label for label, _ in labels],
            "threshold": [t for _, t in labels],
            "threshold_short": pl.Series(shorts, dtype=pl.Float64),
            "sharpe_per_period": sharpes,
            "sharpe": sharpes * math.sqrt(periods_per_year),
            "selected": [
                label == challenger.label and t == float(challenger.chosen) for label, t in labels
            ],
        }
    )
    return SelectionEvidence(
        n_trials=n_trials,
        n_configs=len({label for label, _ in labels}),
        trials_variance=variance,
        expected_max_sharpe=expected_max_sharpe(n_trials, variance),
        oof_moments=moments,
        dsr=deflated_sharpe(moments, n_trials, variance),
        folds=folds,
        profitable_fold_share=share,
        pbo=pbo,
        pbo_reason=pbo_reason,
        trials=trials,
        oof_result=selected,
    )


def holdout_scores(
    y: np.ndarray,
    prob: np.ndarray,
    priced: pl.DataFrame,
    bars: pl.DataFrame,
    threshold: float,
    timeframe: str,
    periods_per_year: float,
    rules: TradeRules,
    n_trials: int = 1,
    trials_variance: float | None = None,
    threshold_short: float | None = None,
) -> tuple[dict[str, float], BacktestResult]:
    """Classification and backtest metrics of one model's calibrated probabilities on the hold-out
    rows (`priced`: timestamp, close, atr_14, in the order of `y` and `prob`); long and short
    trades when `threshold_short` is set (`short_trades` counts the shorts)."""
    metrics = {k: float(v) for k, v in classification_metrics(y, prob).items()}
    result = strategy_backtest(
        bars,
        priced,
        prob,
        threshold,
        timeframe,
        periods_per_year,
        rules,
        threshold_short=threshold_short,
    )
    metrics["short_trades"] = float((result.trades["side"] == -1).sum())
    performance = performance_metrics(
        result, None, periods_per_year, n_trials=n_trials, trials_sharpe_variance=trials_variance
    )
    return metrics | {k: float(v) for k, v in performance.items()}, result


def selection_stats(
    evidence: SelectionEvidence,
    holdout: BacktestResult,
    periods_per_year: float,
    config: GateConfig,
) -> SelectionStats:
    """The selection gates' inputs: the evidence's DSR, folds and PBO, and the hold-out's length
    against its minimum track record length (benchmark Sharpe annualized in `config`)."""
    moments = sharpe_moments(holdout.per_bar["net_ret"].to_numpy())
    return SelectionStats(
        dsr=evidence.dsr,
        n_trials=evidence.n_trials,
        trials_variance=evidence.trials_variance,
        track_record=float(moments.n_obs),
        min_track_record=_min_trl(moments, periods_per_year, config),
        profitable_fold_share=evidence.profitable_fold_share,
        n_folds=evidence.folds.height,
        pbo=evidence.pbo.pbo if evidence.pbo is not None else None,
        pbo_reason=evidence.pbo_reason,
    )


@dataclass(frozen=True)
class ComparedSelection:
    """A strategy chosen among `n_trials` strategies backtested side by side on the same bars,
    deflated for that choice: each one's per-period Sharpe ratio (`sharpes`), V their variance,
    SR0 the expected maximum Sharpe of N unskilled ones, the chosen one's moments, its DSR and
    its MinTRL (periods, at the gate config's confidence and benchmark Sharpe)."""

    chosen: str
    sharpes: dict[str, float]
    n_trials: int
    trials_variance: float
    expected_max_sharpe: float
    moments: SharpeMoments
    dsr: float
    min_track_record: float

    def stats(self) -> SelectionStats:
        """The selection gates' inputs: DSR and MinTRL on the comparison window; no folds and no
        PBO (the strategies were compared on one window, not cross-validated)."""
        reason = "the strategies were compared on one window, without validation folds"
        return SelectionStats(
            dsr=self.dsr,
            n_trials=self.n_trials,
            trials_variance=self.trials_variance,
            track_record=float(self.moments.n_obs),
            min_track_record=self.min_track_record,
            profitable_fold_share=None,
            n_folds=0,
            pbo=None,
            pbo_reason=reason,
            folds_reason=reason,
        )

    def as_metrics(self, periods_per_year: float) -> dict[str, float]:
        """Flat numbers for metadata and MLflow (the chosen one's Sharpe annualized too)."""
        return {
            "n_trials": float(self.n_trials),
            "trials_sharpe_variance": self.trials_variance,
            "expected_max_sharpe": self.expected_max_sharpe,
            "sharpe_per_period": self.moments.sharpe,
            "sharpe": self.moments.sharpe * math.sqrt(periods_per_year),
            "periods": float(self.moments.n_obs),
            "dsr": self.dsr,
            "min_trl_periods": self.min_track_record,
        }


def compared_selection(
    returns: Mapping[str, np.ndarray],
    chosen: str,
    periods_per_year: float,
    config: GateConfig,
) -> ComparedSelection:
    """The deflated Sharpe ratio of `chosen` among every strategy in `returns` (per name, its
    per-bar net returns on the same window): N = the strategies compared, V = the variance of
    their per-period Sharpe ratios (`trial_sharpes`), and its MinTRL on that window."""
    if chosen not in returns:
        raise ValueError(f"chosen strategy {chosen!r} is not among those compared: {list(returns)}")
    names = list(returns)
    sharpes = trial_sharpes([np.asarray(returns[name], dtype=np.float64) for name in names])
    variance = trials_sharpe_variance(sharpes)
    moments = sharpe_moments(np.asarray(returns[chosen], dtype=np.float64))
    return ComparedSelection(
        chosen=chosen,
        sharpes=dict(zip(names, map(float, sharpes), strict=True)),
        n_trials=len(names),
        trials_variance=variance,
        expected_max_sharpe=expected_max_sharpe(len(names), variance),
        moments=moments,
        dsr=deflated_sharpe(moments, len(names), variance),
        min_track_record=_min_trl(moments, periods_per_year, config),
    )


def model_config_id(
    model_type: str, params: Mapping[str, Any], seed: int, calibration: str, target: str
) -> str:
    """The trial identity of a trained direction model: what it fits (model type, its effective
    parameters, seed, calibration) and on which target."""
    return config_fingerprint(
        {
            "model_type": model_type,
            "params": dict(params),
            "seed": seed,
            "calibration": calibration,
            "target": target,
        }
    )


def oof_predictions_frame(oof: pl.DataFrame) -> pl.DataFrame:
    """The out-of-fold predictions a training logs for the evaluation: timestamp, fold, prob
    (calibrated, cross-fitted)."""
    return oof.select("timestamp", "fold", pl.col("prob_cal").alias("prob"))


def _version_trials(tracker: Any, version: Any) -> tuple[dict[str, Any], pl.DataFrame] | None:
    """trials.json and the OOF predictions logged by a version's training run, or None.

    `version`: a model version or a run's info (with `run_id`; a run's info has its
    `artifact_uri` too). Both files from the run's artifact repository, resolved once (MLflow's
    `download_artifacts(run_id=...)` reads the run again for every file)."""
    try:
        artifact_uri = getattr(version, "artifact_uri", None) or (
            tracker.client.get_run(version.run_id).info.artifact_uri
        )
        repository = tracker.run_artifacts(artifact_uri)
        names = {a.path for a in repository.list_artifacts()}
        if TRIALS_ARTIFACT not in names or OOF_ARTIFACT not in names:
            return None
        with tempfile.TemporaryDirectory() as tmp:
            record = json.loads(
                Path(repository.download_artifacts(TRIALS_ARTIFACT, dst_path=tmp)).read_text()
            )
            oof = pl.read_parquet(repository.download_artifacts(OOF_ARTIFACT, dst_path=tmp))
        return record, oof
    except (OSError, ValueError, KeyError):
        return None


@dataclass(frozen=True)
class PartitionTrials:
    """The configurations fitted on one partition: the challenger's (None when no version of its
    configuration logged out-of-fold predictions) and the latest of every other configuration."""

    challenger: ConfigTrials | None
    others: list[ConfigTrials]
    versions_seen: int
    without_record: int


def partition_trials(tracker: Any, name: str, challenger_version: str) -> PartitionTrials:
    """Every distinct configuration (version tag `config_id`) registered under `name`, each by its
    newest version with a trial record; the challenger's configuration by the challenger itself, or
    (an incremental retrain has no out-of-fold predictions) by the newest version of that
    configuration that has them."""
    versions = sorted(
        tracker.client.search_model_versions(f"name = '{name}'"),
        key=lambda v: int(v.version),
        reverse=True,
    )
    own = next((v for v in versions if str(v.version) == str(challenger_version)), None)
    own_config = (own.tags or {}).get("config_id") if own is not None else None
    seen: dict[str, ConfigTrials] = {}
    without = 0
    ordered = ([own] if own is not None else []) + [v for v in versions if v is not own]
    for v in ordered:
        config_id = (v.tags or {}).get("config_id")
        if not config_id or config_id in seen:
            without += not config_id
            continue
        found = _version_trials(tracker, v)
        if found is None:
            without += 1
            continue
        record, oof = found
        seen[config_id] = ConfigTrials(
            config_id,
            f"{record.get('config', {}).get('model_type', 'model')} v{v.version}",
            oof,
            record["eligible_thresholds"],
            float(record["chosen_threshold"]),
            _recorded_short(record, v.tags or {}),
        )
    # sweep trials (lib.sweeps): nested runs tagged with the registered model, each a configuration
    # cross-validated on the partition; one the challenger was trained with is counted once
    for run in _sweep_trial_runs(tracker, name):
        config_id = run.data.tags.get("config_id")
        if not config_id or config_id in seen:
            continue
        found = _version_trials(tracker, run.info)
        if found is None:
            without += 1
            continue
        record, oof = found
        seen[config_id] = ConfigTrials(
            config_id,
            f"sweep trial {run.data.tags.get('quant_assets.sweep_trial', '?')} "
            f"({record.get('config', {}).get('model_type', 'model')})",
            oof,
            record["eligible_thresholds"],
            float(record["chosen_threshold"]),
            _recorded_short(record, run.data.tags),
        )
    challenger = seen.pop(own_config, None) if own_config else None
    return PartitionTrials(challenger, list(seen.values()), len(versions), without)


def _recorded_short(record: Mapping[str, Any], tags: Mapping[str, str]) -> float | None:
    """A configuration's short threshold: its version's tag `decision_threshold_short` (what the
    served model reads; "" for none), else its trial record's, else None (long only)."""
    tagged = tags.get("decision_threshold_short")
    if tagged is not None:
        return float(tagged) if tagged else None
    short = record.get("chosen_threshold_short")
    return float(short) if short is not None else None


def _sweep_trial_runs(tracker: Any, name: str) -> list[Any]:
    """The finished sweep-trial runs of registered model `name`, newest first (none when no sweep
    ever ran: its experiment does not exist)."""
    from quant_assets.lib.sweeps import SWEEP_EXPERIMENT, TAG_SWEEP_MODEL, TAG_SWEEP_TRIAL

    experiment = tracker.client.get_experiment_by_name(SWEEP_EXPERIMENT)
    if experiment is None:
        return []
    escaped = name.replace("'", "''")
    return list(
        tracker.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{TAG_SWEEP_MODEL}` = '{escaped}' "
            f"and tags.`{TAG_SWEEP_TRIAL}` != ''",
            order_by=["attributes.start_time DESC"],
            max_results=5000,
        )
    )


def reusable_version(tracker: Any, name: str, identity: Mapping[str, str]) -> str | None:
    """The newest registered version of `name` whose tags match every item of `identity` (data
    version, configuration, splits, code version): retraining it would register a duplicate."""
    from mlflow.exceptions import MlflowException

    try:
        versions = tracker.client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    matching = [
        str(v.version)
        for v in versions
        if all((v.tags or {}).get(k) == str(value) for k, value in identity.items())
    ]
    return max(matching, key=int, default=None)


def reused_record(tracker: Any, name: str, version: str) -> dict[str, Any]:
    """The challenger record of an existing version (as training would have stored it), read from
    the registry and its training run."""
    mv = tracker.client.get_model_version(name, str(version))
    run = tracker.client.get_run(mv.run_id)
    tags = dict(mv.tags or {})
    params = run.data.params
    return {
        "status": "trained",
        "reason": "",
        "model_name": name,
        "version": str(version),
        "run_id": mv.run_id,
        "model_uri": f"models:/{name}/{version}",
        "model_type": tags.get("model_type", ""),
        "target": params.get("data.target", ""),
        "data_version": tags.get("data_version", ""),
        "n_dev": int(params.get("data.n_dev", 0)),
        "n_holdout": int(params.get("data.n_holdout", 0)),
        "decision_threshold": float(tags.get("decision_threshold", "0.5")),
        **{k: float(v) for k, v in run.data.metrics.items() if k.startswith(("oof_", "holdout_"))},
    }
