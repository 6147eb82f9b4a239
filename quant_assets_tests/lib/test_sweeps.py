"""Sweeps: a 5-trial Optuna study logs a parent MLflow run with 5 nested trial runs, raises the
partition's trial count (the evaluation's N) by 5, resumes from its SQL storage without repeating
trials, and its best parameters are the ones a challenger trained with counts once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from quant_assets.defs.models import log_training_run
from quant_assets.lib.datasets import build_training_dataset
from quant_assets.lib.sources.synthetic import SyntheticSource
from quant_assets.lib.splits import make_splits, split_plan_frame
from quant_assets.lib.sweeps import (
    SWEEP_EXPERIMENT,
    TAG_PARENT,
    SweepError,
    SweepLogger,
    run_sweep,
)
from quant_assets.lib.tracking import Tracker
from quant_assets.lib.training import ModelConfig, train_with_cv
from quant_assets.lib.trials import TradeRules, partition_trials, selection_evidence
from quant_assets_tests.lib.test_datasets import pipeline_frames

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NAME = "direction.BTCUSDT.1h"
FAST = {"n_estimators": 40}


@pytest.fixture(scope="module")
def partition():
    source = SyntheticSource(seed=7, start=T0, end=T0 + timedelta(days=120))
    features, labels = pipeline_frames(source, "BTCUSDT", higher=("4h",))
    ds = build_training_dataset(features, labels)
    plan = make_splits("purged_kfold", ds.frame.height, ds.frame["t0"], ds.frame["t1"], n_splits=3)
    from quant_assets.lib.ohlcv import bars_for_timeframe

    bars = bars_for_timeframe(source, "BTCUSDT", "1h").frame
    return ds, plan, bars, features.select("timestamp", "atr_14")


def _register(tracker: Tracker, ds, plan, params: dict) -> str:
    result = train_with_cv(ds, plan, ModelConfig(params=params))
    record, _ = log_training_run(
        tracker,
        experiment="challenger_model",
        run_name="test",
        registered_name=NAME,
        dataset=ds,
        plan_table=split_plan_frame(plan, ds.frame["timestamp"]),
        result=result,
        config={"model_type": "lightgbm", "params": params},
        tags={"model_type": "lightgbm", "git_commit": "test", "data_version": "test"},
        symbol="BTCUSDT",
        timeframe="1h",
    )
    return record["version"]


def _n_trials(tracker: Tracker, version: str, bars, atr) -> int:
    fitted = partition_trials(tracker, NAME, version)
    evidence = selection_evidence(
        fitted.challenger, fitted.others, bars, atr, "1h", 24 * 365, TradeRules()
    )
    return evidence.n_trials


def test_a_sweep_logs_nested_trials_counts_them_and_resumes(
    partition, mlflow_uri: str, project_dir: Path
) -> None:
    ds, plan, bars, atr = partition
    tracker = Tracker(mlflow_uri)
    default_version = _register(tracker, ds, plan, FAST)
    before = _n_trials(tracker, default_version, bars, atr)

    storage = f"sqlite:///{project_dir / 'trading.db'}"
    logger = SweepLogger(tracker, NAME, "sweep BTCUSDT|1h", {}, {"sweep.objective": "oof_log_loss"})
    result = run_sweep(
        ds, plan, model_type="lightgbm", objective="oof_log_loss", n_trials=5,
        study_name="BTCUSDT|1h lightgbm", storage_url=storage, on_trial=logger.log_trial,
    )  # fmt: skip
    logger.finish(result)
    assert len(result.trials) == result.n_total == 5
    assert result.best_value == min(t.value for t in result.trials)
    # measured: 0.457-0.494 (positive rate ~0.3: the constant guess scores ~0.61)
    assert all(0.3 < t.value < 0.75 for t in result.trials)  # calibrated OOF log loss
    assert len({t.config_id for t in result.trials}) == 5

    experiment = tracker.client.get_experiment_by_name(SWEEP_EXPERIMENT)
    children = tracker.client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_PARENT}` = '{logger.parent_run_id}'"
    )
    assert len(children) == 5
    assert sorted(float(r.data.metrics["objective"]) for r in children) == sorted(
        t.value for t in result.trials
    )
    parent = tracker.client.get_run(logger.parent_run_id)
    assert parent.data.metrics["best_value"] == result.best_value
    assert parent.data.params["best.num_leaves"] == str(result.best_params["num_leaves"])

    # each log-loss trial is one more (configuration, threshold) trial in the evaluation's N
    assert _n_trials(tracker, default_version, bars, atr) == before + 5

    # resumed from the same storage: the budget is the study's, nothing is repeated
    again = run_sweep(
        ds, plan, model_type="lightgbm", objective="oof_log_loss", n_trials=5,
        study_name="BTCUSDT|1h lightgbm", storage_url=storage,
    )  # fmt: skip
    assert again.trials == [] and again.n_total == 5 and again.best_params == result.best_params

    # a challenger trained with the best parameters is the best trial: counted once, not twice
    best_version = _register(tracker, ds, plan, result.best_params)
    assert _n_trials(tracker, best_version, bars, atr) == _n_trials(
        tracker, default_version, bars, atr
    )
    with pytest.raises(SweepError, match="unknown objective"):
        run_sweep(ds, plan, objective="auc", n_trials=1)  # type: ignore[arg-type]


def test_sharpe_objective_and_the_xgboost_search_space(partition) -> None:
    ds, plan, _, _ = partition
    result = run_sweep(ds, plan, model_type="xgboost", objective="oof_sharpe", n_trials=2)
    assert result.direction == "maximize" and len(result.trials) == 2
    assert {"max_depth", "min_child_weight", "subsample", "colsample_bytree"} <= set(
        result.best_params
    )
    assert result.best_value == max(t.value for t in result.trials)
    assert all(np.isfinite(t.value) for t in result.trials)
    assert pl.Series([t.threshold for t in result.trials]).is_between(0, 1).all()
