"""Trials behind a promotion decision: counting (configurations x threshold candidates), their
out-of-fold backtests (both sides, as served), per-fold metrics, the selection gates' inputs, and
the registry look-ups (trial records, reuse of an identical training)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.calendars import annualization_kind
from quant_assets.lib.datasets import build_training_dataset
from quant_assets.lib.features import compute_features
from quant_assets.lib.labels import build_labels
from quant_assets.lib.ohlcv import bars_for_timeframe
from quant_assets.lib.overfitting import expected_max_sharpe, trials_sharpe_variance
from quant_assets.lib.performance import annualization
from quant_assets.lib.promotion import GateConfig, evaluate_gates
from quant_assets.lib.signals import choose_long_threshold, choose_short_threshold
from quant_assets.lib.sources.synthetic import SyntheticSource
from quant_assets.lib.splits import make_splits
from quant_assets.lib.training import ModelConfig, TrainingResult, train_with_cv
from quant_assets.lib.trials import (
    ConfigTrials,
    TradeRules,
    config_fingerprint,
    holdout_scores,
    model_config_id,
    oof_predictions_frame,
    selection_evidence,
    selection_stats,
    strategy_backtest,
    training_trial_record,
)

TIMEFRAME = "4h"


@pytest.fixture(scope="module")
def partition() -> dict:
    """A year of synthetic BTCUSDT 4h bars (planted edge) with its dataset, splits and two models
    of different types trained on it, as the pipeline would for one partition."""
    source = SyntheticSource(
        seed=7, start=datetime(2023, 1, 1, tzinfo=UTC), end=datetime(2024, 3, 1, tzinfo=UTC)
    )
    bars = bars_for_timeframe(source, "BTCUSDT", TIMEFRAME).frame
    features = compute_features(bars, TIMEFRAME)
    dataset = build_training_dataset(features, build_labels(bars, features["atr_14"], TIMEFRAME))
    frame = dataset.frame
    plan = make_splits("purged_kfold", frame.height, frame["t0"], frame["t1"], n_splits=5)
    fast = {"n_estimators": 40, "learning_rate": 0.1}
    results = {
        "lightgbm": train_with_cv(dataset, plan, ModelConfig(params=fast)),
        "logistic": train_with_cv(dataset, plan, ModelConfig("logistic")),
    }
    configs = {}
    for name, result in results.items():
        assert isinstance(result, TrainingResult)
        prob = result.oof["prob_cal"].to_numpy()
        ret = frame["ret"].gather(result.oof["row"]).to_numpy()
        threshold = choose_long_threshold(prob, ret)
        record = training_trial_record(name, {"model_type": name}, prob, ret, threshold)
        configs[name] = (
            record,
            ConfigTrials(
                name,
                name,
                oof_predictions_frame(result.oof),
                record["eligible_thresholds"],
                threshold,
                record["chosen_threshold_short"],
            ),
        )
    return {
        "bars": bars,
        "atr": features.select("timestamp", "atr_14"),
        "ppy": annualization(TIMEFRAME, annualization_kind(bars, TIMEFRAME)),
        "results": results,
        "configs": configs,
        "frame": frame,
    }


def test_trial_record_lists_the_candidates_the_search_compared(partition: dict) -> None:
    record, trials = partition["configs"]["lightgbm"]
    assert record["threshold_grid"] == sorted(set(record["threshold_grid"]))
    assert 1 <= len(record["threshold_grid"]) <= 5  # one candidate per share of bars traded
    assert set(record["eligible_thresholds"]) <= set(record["threshold_grid"])
    assert record["chosen_threshold"] == trials.chosen
    # the short threshold training tags, chosen on the same out-of-fold predictions
    result = partition["results"]["lightgbm"]
    ret = partition["frame"]["ret"].gather(result.oof["row"]).to_numpy()
    short = choose_short_threshold(result.oof["prob_cal"].to_numpy(), ret)
    assert record["chosen_threshold_short"] == short == trials.short
    # another target: no search, the one threshold used is the one trial
    other = training_trial_record("x", {}, np.array([0.4, 0.6]), None, 0.5)
    assert other["eligible_thresholds"] == [0.5] and other["threshold_grid"] == []
    assert other["chosen_threshold_short"] is None


def test_every_trial_trades_both_sides_as_the_served_strategy(partition: dict) -> None:
    """The synthetic source plants mean reversion, a downside edge: the model's short threshold
    is set, and every out-of-fold trial trades the side rule of the hold-out backtest and
    `signals`, so the selected trial is exactly the served strategy on the out-of-fold bars."""
    _, lgb = partition["configs"]["lightgbm"]
    bars, atr, ppy = partition["bars"], partition["atr"], partition["ppy"]
    assert lgb.short is not None and lgb.short < lgb.chosen
    rules = TradeRules()
    evidence = selection_evidence(lgb, [], bars, atr, TIMEFRAME, ppy, rules)
    # each trial: its long threshold, and the short threshold the same rule gives with it
    expected = [lgb.short if lgb.short < t else None for t in evidence.trials["threshold"]]
    assert evidence.trials["threshold_short"].to_list() == expected
    selected = evidence.trials.filter(pl.col("selected"))
    assert selected["threshold_short"].to_list() == [lgb.short]
    shorts = int((evidence.oof_result.trades["side"] == -1).sum())
    assert shorts > 0 and evidence.as_metrics(ppy)["oof_short_trades"] == shorts
    # the hold-out backtest's call on the same out-of-fold rows, both sides: the same strategy
    result = partition["results"]["lightgbm"]
    priced = (
        result.oof.select("timestamp", "y", "prob_cal")
        .join(bars.select("timestamp", "close").join(atr, on="timestamp"), on="timestamp")
        .sort("timestamp")
    )
    metrics, served = holdout_scores(
        priced["y"].to_numpy(),
        priced["prob_cal"].to_numpy(),
        priced,
        bars,
        lgb.chosen,
        TIMEFRAME,
        ppy,
        rules,
        threshold_short=rules.short_threshold(lgb.short, lgb.chosen),
    )
    assert metrics["short_trades"] == shorts
    assert served.per_bar.equals(evidence.oof_result.per_bar)
    net = served.per_bar["net_ret"].to_numpy()
    assert evidence.oof_moments.sharpe == pytest.approx(net.mean() / net.std(ddof=1), abs=1e-12)
    assert float(selected["sharpe"][0]) == pytest.approx(metrics["sharpe"], rel=1e-9)
    # long only (the old out-of-fold rule) is another strategy: no shorts, another Sharpe
    prob = priced["prob_cal"].to_numpy()
    longs = strategy_backtest(bars, priced, prob, lgb.chosen, TIMEFRAME, ppy, rules)
    assert (longs.trades["side"] == -1).sum() == 0
    assert not longs.per_bar["net_ret"].equals(served.per_bar["net_ret"])
    # the rule's switches hold for the trials too: no shorts, or one short threshold for all
    off = selection_evidence(lgb, [], bars, atr, TIMEFRAME, ppy, TradeRules(shorts=False))
    assert off.trials["threshold_short"].is_null().all()
    assert off.oof_result.per_bar.equals(longs.per_bar)
    fixed = TradeRules(threshold_short=0.2)
    forced = selection_evidence(lgb, [], bars, atr, TIMEFRAME, ppy, fixed)
    expected = [0.2 if t > 0.2 else None for t in forced.trials["threshold"]]
    assert forced.trials["threshold_short"].to_list() == expected


def test_n_counts_every_configuration_and_threshold_fitted_for_the_partition(
    partition: dict,
) -> None:
    (lgb_record, lgb), (log_record, logistic) = (
        partition["configs"]["lightgbm"],
        partition["configs"]["logistic"],
    )
    args = (partition["bars"], partition["atr"], TIMEFRAME, partition["ppy"], TradeRules())
    alone = selection_evidence(lgb, [], *args)
    both = selection_evidence(lgb, [logistic], *args)
    own = set(lgb_record["eligible_thresholds"]) | {lgb.chosen}
    assert alone.n_trials == len(own)
    assert alone.n_configs == 1
    assert both.n_trials == len(own) + len(log_record["eligible_thresholds"])
    assert both.n_configs == 2
    # V is the sample variance of every trial's per-period Sharpe ratio, SR0 follows from N and V
    sharpes = both.trials["sharpe_per_period"].to_numpy()
    assert both.trials_variance == pytest.approx(trials_sharpe_variance(sharpes), abs=1e-15)
    assert both.expected_max_sharpe == pytest.approx(
        expected_max_sharpe(both.n_trials, both.trials_variance), abs=1e-15
    )
    assert both.trials.filter(pl.col("selected")).height == 1
    # the selected trial is the same strategy with or without the other configuration
    assert both.oof_moments == alone.oof_moments


def test_fold_table_splits_the_out_of_fold_backtest(partition: dict) -> None:
    _, lgb = partition["configs"]["lightgbm"]
    ppy = partition["ppy"]
    evidence = selection_evidence(
        lgb, [], partition["bars"], partition["atr"], TIMEFRAME, ppy, TradeRules()
    )
    folds = evidence.folds
    assert folds["fold"].to_list() == [0, 1, 2, 3, 4]
    assert folds["bars"].sum() == evidence.oof_result.per_bar.height
    assert folds["trade_count"].sum() == evidence.oof_result.trades.height
    # compounding the folds' returns gives the whole out-of-fold backtest's
    whole = float(evidence.oof_result.per_bar["equity"][-1]) - 1.0
    assert float(np.prod(1 + folds["total_return"].to_numpy()) - 1) == pytest.approx(whole)
    share = float(np.mean(folds["total_return"].to_numpy() > 0))
    assert evidence.profitable_fold_share == share


def test_volatility_targeted_holdout_and_the_selection_gates(partition: dict) -> None:
    _, lgb = partition["configs"]["lightgbm"]
    result = partition["results"]["lightgbm"]
    ppy, bars, atr = partition["ppy"], partition["bars"], partition["atr"]
    evidence = selection_evidence(lgb, [], bars, atr, TIMEFRAME, ppy, TradeRules())
    priced = result.holdout.select("timestamp", "y", "prob_cal").join(
        bars.select("timestamp", "close").join(atr, on="timestamp"), on="timestamp"
    )
    args = (priced["y"].to_numpy(), priced["prob_cal"].to_numpy(), priced, bars, lgb.chosen)
    sized, backtest = holdout_scores(*args, TIMEFRAME, ppy, TradeRules(), evidence.n_trials)
    full, _ = holdout_scores(*args, TIMEFRAME, ppy, TradeRules(target_vol=None), 1)
    # BTC-like bars (50-90 % a year) sized to 10 %: smaller positions, smaller drawdowns
    assert backtest.trades["size"].max() < 0.5
    if full["trade_count"] > 0:
        assert sized["max_drawdown"] <= full["max_drawdown"]
    config = GateConfig()
    stats = selection_stats(evidence, backtest, ppy, config)
    assert stats.n_trials == evidence.n_trials
    assert stats.track_record == backtest.per_bar.height
    decision = evaluate_gates(sized, None, config, selection=stats)
    names = [g.name for g in decision.gates]
    assert names[-4:] == ["dsr", "min_trl", "profitable_folds", "pbo"]
    assert f"N={evidence.n_trials} trials" in decision.as_tags()["gate.dsr"]


def test_config_identity() -> None:
    a = model_config_id("lightgbm", {"n_estimators": 10}, 42, "isotonic", "take_profit")
    assert a == model_config_id("lightgbm", {"n_estimators": 10}, 42, "isotonic", "take_profit")
    assert a != model_config_id("lightgbm", {"n_estimators": 11}, 42, "isotonic", "take_profit")
    assert a != model_config_id("logistic", {"n_estimators": 10}, 42, "isotonic", "take_profit")
    assert config_fingerprint({"b": 1, "a": 2}) == config_fingerprint({"a": 2, "b": 1})


def test_registry_lookups_find_trials_and_identical_trainings(
    partition: dict, mlflow_uri: str, tmp_path
) -> None:
    from quant_assets.lib.tracking import Tracker
    from quant_assets.lib.trials import (
        OOF_ARTIFACT,
        TRIALS_ARTIFACT,
        partition_trials,
        reusable_version,
        reused_record,
    )

    tracker = Tracker(mlflow_uri)
    name = "direction.BTCUSDT.4h"
    frame = partition["frame"]
    identity = {"data_version": "d1", "config_id": "lightgbm", "code_version": "1"}
    for model_type in ("lightgbm", "logistic"):
        result = partition["results"][model_type]
        record, _ = partition["configs"][model_type]
        tags = identity | {"config_id": model_type, "model_type": model_type}
        tags["decision_threshold"] = f"{record['chosen_threshold']:.2f}"
        if model_type == "lightgbm":  # the other's short threshold is read from its record
            short = record["chosen_threshold_short"]
            tags["decision_threshold_short"] = "" if short is None else f"{short:.2f}"
        with tracker.run("challenger_model", model_type, tags) as run_id:
            tracker.log_dict(run_id, record, TRIALS_ARTIFACT)
            oof_path = tmp_path / OOF_ARTIFACT
            oof_predictions_frame(result.oof).write_parquet(oof_path)
            tracker.log_file(run_id, oof_path)
            tracker.log_params(run_id, {"data.target": "take_profit", "data.n_dev": result.n_dev})
            tracker.log_metrics(run_id, result.overall_metrics)
            example = frame.select(pl.col(result.feature_columns).cast(pl.Float64)).head(5)
            example = example.to_pandas()
            tracker.log_model(result.model, model_type, example, name, tags)
    assert reusable_version(tracker, name, identity) == "1"
    assert reusable_version(tracker, name, identity | {"data_version": "d2"}) is None
    assert reusable_version(tracker, "direction.NONE.4h", identity) is None
    reused = reused_record(tracker, name, "1")
    assert reused["version"] == "1" and reused["status"] == "trained"
    assert reused["oof_roc_auc"] == pytest.approx(
        partition["results"]["lightgbm"].overall_metrics["oof_roc_auc"]
    )
    fitted = partition_trials(tracker, name, "2")
    assert fitted.challenger is not None and fitted.challenger.config_id == "logistic"
    assert [c.config_id for c in fitted.others] == ["lightgbm"]
    assert fitted.versions_seen == 2 and fitted.without_record == 0
    assert math.isclose(
        fitted.others[0].chosen, partition["configs"]["lightgbm"][0]["chosen_threshold"]
    )
    # each configuration's short threshold, exactly the recorded one (tag, else trial record)
    assert fitted.others[0].short == partition["configs"]["lightgbm"][0]["chosen_threshold_short"]
    assert fitted.challenger.short == partition["configs"]["logistic"][0]["chosen_threshold_short"]
