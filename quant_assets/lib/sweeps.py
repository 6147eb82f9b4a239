"""Hyperparameter sweeps: Optuna's TPE sampler over a model type's search space, every trial scored
by the partition's purged cross-validation (train_with_cv on its split plan) with a configurable
objective, each trial a nested MLflow run (with the trial record the evaluation counts), the study
stored in a SQL database (resumable) and bounded by a number of trials and a time budget."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from quant_assets.lib.datasets import TrainingDataset
from quant_assets.lib.errors import QuantAssetsError
from quant_assets.lib.signals import THRESHOLD_COST, choose_long_threshold
from quant_assets.lib.splits import SplitPlan
from quant_assets.lib.training import (
    ModelConfig,
    SkippedTraining,
    TrainingResult,
    train_with_cv,
)
from quant_assets.lib.trials import (
    OOF_ARTIFACT,
    TRIALS_ARTIFACT,
    model_config_id,
    oof_predictions_frame,
    training_trial_record,
)

if TYPE_CHECKING:  # optuna is imported where a study runs
    import optuna

    from quant_assets.lib.tracking import Tracker

SweepObjective = Literal["oof_log_loss", "oof_sharpe"]
OBJECTIVES: tuple[str, ...] = ("oof_log_loss", "oof_sharpe")
#: MLflow experiment of sweep runs (a parent run per sweep call, a nested run per trial)
SWEEP_EXPERIMENT = "hyperparameter_sweep"
#: run tags that tie a sweep trial to the partition's registered model (lib.trials counts them)
TAG_SWEEP_MODEL = "quant_assets.sweep_model"
TAG_SWEEP_TRIAL = "quant_assets.sweep_trial"
TAG_PARENT = "mlflow.parentRunId"


class SweepError(QuantAssetsError, ValueError):
    """A sweep request that cannot run (unknown objective or model type, no budget)."""


def _lightgbm_space(t: optuna.Trial) -> dict[str, Any]:
    return {
        "n_estimators": t.suggest_int("n_estimators", 50, 400, log=True),
        "learning_rate": t.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "num_leaves": t.suggest_int("num_leaves", 7, 63, log=True),
        "min_child_samples": t.suggest_int("min_child_samples", 20, 300, log=True),
        "subsample": t.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": t.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_lambda": t.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


def _xgboost_space(t: optuna.Trial) -> dict[str, Any]:
    return {
        "n_estimators": t.suggest_int("n_estimators", 50, 400, log=True),
        "learning_rate": t.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "max_depth": t.suggest_int("max_depth", 2, 8),
        "min_child_weight": t.suggest_float("min_child_weight", 1.0, 50.0, log=True),
        "subsample": t.suggest_float("subsample", 0.5, 1.0),
        "colsample_bytree": t.suggest_float("colsample_bytree", 0.4, 1.0),
        "reg_lambda": t.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
    }


def _logistic_space(t: optuna.Trial) -> dict[str, Any]:
    return {"C": t.suggest_float("C", 1e-3, 100.0, log=True)}


def _gradient_boosting_space(t: optuna.Trial) -> dict[str, Any]:
    return {
        "max_iter": t.suggest_int("max_iter", 50, 300, log=True),
        "learning_rate": t.suggest_float("learning_rate", 0.01, 0.2, log=True),
        "max_depth": t.suggest_int("max_depth", 2, 6),
        "min_samples_leaf": t.suggest_int("min_samples_leaf", 20, 300, log=True),
        "l2_regularization": t.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
    }


def _random_forest_space(t: optuna.Trial) -> dict[str, Any]:
    return {
        "n_estimators": t.suggest_int("n_estimators", 100, 400, log=True),
        "max_depth": t.suggest_int("max_depth", 3, 10),
        "min_samples_leaf": t.suggest_int("min_samples_leaf", 20, 300, log=True),
        "max_features": t.suggest_float("max_features", 0.3, 1.0),
    }


#: The search space of each model type: tree count, learning rate, depth/leaves, minimum leaf size
#: (min_child_samples / min_child_weight), row subsample and column sample, L2 penalty. Anything not
#: searched keeps lib.training.DEFAULT_PARAMS (threads, determinism).
SEARCH_SPACES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "lightgbm": _lightgbm_space,
    "xgboost": _xgboost_space,
    "logistic": _logistic_space,
    "gradient_boosting": _gradient_boosting_space,
    "random_forest": _random_forest_space,
}


def oof_sharpe(result: TrainingResult, trade_return: np.ndarray) -> tuple[float, float]:
    """(per-signal Sharpe, threshold) of the decision rule on the out-of-fold predictions: long
    where the calibrated probability reaches the threshold the rule chooses on them
    (signals.choose_long_threshold), each signal's realized label return net of THRESHOLD_COST;
    mean / std of those returns (not annualized: they overlap). 0 without two signals."""
    prob = result.oof["prob_cal"].to_numpy()
    threshold = choose_long_threshold(prob, trade_return)
    net = trade_return[prob >= threshold] - THRESHOLD_COST
    net = net[np.isfinite(net)]
    if net.size < 2 or not np.std(net, ddof=1) > 0:
        return 0.0, threshold
    return float(np.mean(net) / np.std(net, ddof=1)), threshold


def objective_value(
    result: TrainingResult, trade_return: np.ndarray | None, objective: SweepObjective
) -> tuple[float, float]:
    """(value, decision threshold) of one trial: `oof_log_loss` is the calibrated (cross-fitted)
    out-of-fold log loss, minimized; `oof_sharpe` the decision rule's per-signal Sharpe, maximized."""
    prob = result.oof["prob_cal"].to_numpy()
    if objective == "oof_sharpe":
        if trade_return is None:
            raise SweepError("objective oof_sharpe needs the dataset's `ret` column")
        return oof_sharpe(result, trade_return)
    threshold = 0.5 if trade_return is None else choose_long_threshold(prob, trade_return)
    return float(result.overall_metrics["oof_log_loss_calibrated"]), threshold


@dataclass(frozen=True)
class SweepTrial:
    """One finished trial: Optuna's number, the estimator parameters, the objective value, the
    decision threshold, the training result (None when it was skipped) and the wall time."""

    number: int
    params: dict[str, Any]
    value: float
    threshold: float
    result: TrainingResult | None
    seconds: float
    config_id: str = ""
    oof_return: np.ndarray | None = None


@dataclass
class SweepResult:
    """What a sweep call did: its study (name, direction), the trials it ran now, the study's best
    trial over all calls (a resumed study keeps earlier trials) and the wall time."""

    study_name: str
    objective: str
    direction: str
    best_params: dict[str, Any]
    best_value: float
    best_number: int
    trials: list[SweepTrial] = field(default_factory=list)
    n_total: int = 0
    seconds: float = 0.0
    parent_run_id: str | None = None


def load_study(study_name: str, storage_url: str | None, objective: str, seed: int) -> Any:
    """The Optuna study `study_name` in `storage_url` (an SQLAlchemy URL: the same database as the
    trading store), created when missing (TPE sampler seeded with `seed`); in memory when None."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    if storage_url:
        storage = optuna.storages.RDBStorage(
            storage_url,
            engine_kwargs={"connect_args": {"timeout": 60}}
            if storage_url.startswith("sqlite")
            else {},
        )
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        direction="minimize" if objective == "oof_log_loss" else "maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
    )


def run_sweep(
    dataset: TrainingDataset,
    plan: SplitPlan,
    *,
    model_type: str = "lightgbm",
    objective: SweepObjective = "oof_log_loss",
    n_trials: int = 50,
    timeout: float | None = None,
    seed: int = 42,
    calibration: str = "isotonic",
    study_name: str = "sweep",
    storage_url: str | None = None,
    min_rows: int = 100,
    on_trial: Callable[[SweepTrial], None] | None = None,
) -> SweepResult:
    """Run TPE trials until the study holds `n_trials` finished trials or `timeout` seconds pass
    (a resumed study only runs what its budget still allows). Each trial cross-validates the model
    type with the sampled parameters on `plan` (purged folds, hold-out never touched) and is scored
    by `objective_value`; `on_trial` sees each finished trial (the MLflow logging). A trial whose
    training is skipped (a fold of one class) is pruned, not scored."""
    import optuna

    if objective not in OBJECTIVES:
        raise SweepError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if model_type not in SEARCH_SPACES:
        raise SweepError(f"no search space for model type {model_type!r}")
    started = time.perf_counter()
    study = load_study(study_name, storage_url, objective, seed)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    budget = max(n_trials - len(finished), 0)
    trade_return = dataset.frame["ret"].to_numpy() if "ret" in dataset.frame.columns else None
    ran: list[SweepTrial] = []

    def evaluate(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        params = SEARCH_SPACES[model_type](trial)
        config = ModelConfig(model_type, seed, params, calibration)  # type: ignore[arg-type]
        result = train_with_cv(dataset, plan, config, min_rows=min_rows)
        if isinstance(result, SkippedTraining):
            raise optuna.TrialPruned(result.reason)
        rets = None if trade_return is None else trade_return[result.oof["row"].to_numpy()]
        value, threshold = objective_value(result, rets, objective)
        done = SweepTrial(
            trial.number,
            config.model_params(),
            value,
            threshold,
            result,
            time.perf_counter() - t0,
            model_config_id(model_type, config.model_params(), seed, calibration, dataset.target),
            rets,
        )
        trial.set_user_attr("threshold", threshold)
        trial.set_user_attr("seconds", done.seconds)
        ran.append(done)
        if on_trial is not None:
            on_trial(done)
        return value if math.isfinite(value) else float("inf")

    if budget:
        study.optimize(evaluate, n_trials=budget, timeout=timeout, gc_after_trial=False)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise SweepError(f"study {study_name!r}: no trial finished (all pruned or no budget)")
    best = study.best_trial
    best_config = ModelConfig(model_type, seed, dict(best.params), calibration)  # type: ignore[arg-type]
    return SweepResult(
        study_name=study_name,
        objective=objective,
        direction="minimize" if objective == "oof_log_loss" else "maximize",
        best_params=best_config.model_params() | dict(best.params),
        best_value=float(best.value),
        best_number=best.number,
        trials=ran,
        n_total=len(completed),
        seconds=time.perf_counter() - started,
    )


class SweepLogger:
    """MLflow records of a sweep: one parent run per sweep call in experiment SWEEP_EXPERIMENT and a
    nested run per trial (tag mlflow.parentRunId) with its parameters, objective, out-of-fold
    metrics and the trial record (`trials.json`, `oof_predictions.parquet`) by which lib.trials
    counts it among the partition's trials (tags TAG_SWEEP_MODEL, config_id)."""

    def __init__(
        self,
        tracker: Tracker,
        registered_name: str,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, Any],
    ) -> None:
        self.tracker = tracker
        self.registered_name = registered_name
        client = tracker.client
        self.experiment_id = tracker.experiment_id(SWEEP_EXPERIMENT)
        parent = client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={**tags, TAG_SWEEP_MODEL: registered_name},
        )
        self.parent_run_id = parent.info.run_id
        tracker.log_params(self.parent_run_id, params)
        self.run_ids: list[str] = []
        self.objective = str(params.get("sweep.objective", ""))

    def log_trial(self, trial: SweepTrial) -> None:
        client, tracker = self.tracker.client, self.tracker
        result = trial.result
        run = client.create_run(
            self.experiment_id,
            run_name=f"trial {trial.number}",
            tags={
                TAG_PARENT: self.parent_run_id,
                TAG_SWEEP_MODEL: self.registered_name,
                TAG_SWEEP_TRIAL: str(trial.number),
                "config_id": trial.config_id,
            },
        )
        run_id = run.info.run_id
        tracker.log_params(run_id, {f"model.params.{k}": v for k, v in trial.params.items()})
        metrics = {"objective": trial.value, "decision_threshold": trial.threshold}
        metrics["trial_seconds"] = trial.seconds
        if result is not None:
            metrics |= {
                k: v for k, v in result.overall_metrics.items() if not k.startswith("oof_class")
            }
            oof = result.oof
            # a sharpe objective compared the threshold grid: each grid point is a trial; a log
            # loss objective compared configurations only: one trial at the rule's threshold
            searched = self.objective == "oof_sharpe" and trial.oof_return is not None
            record = training_trial_record(
                trial.config_id,
                {"model_type": result.config.model_type, "params": trial.params, "sweep": True},
                oof["prob_cal"].to_numpy(),
                trial.oof_return if searched else None,
                trial.threshold,
            )
            tracker.log_dict(run_id, record, TRIALS_ARTIFACT)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / OOF_ARTIFACT
                oof_predictions_frame(oof).write_parquet(path)
                tracker.log_file(run_id, path)
        tracker.log_metrics(run_id, metrics)
        client.set_terminated(run_id)
        self.run_ids.append(run_id)

    def finish(self, result: SweepResult) -> None:
        self.tracker.log_params(
            self.parent_run_id, {f"best.{k}": v for k, v in result.best_params.items()}
        )
        self.tracker.log_metrics(
            self.parent_run_id,
            {
                "best_value": result.best_value,
                "best_trial": float(result.best_number),
                "trials_this_call": float(len(result.trials)),
                "trials_in_study": float(result.n_total),
                "sweep_seconds": result.seconds,
            },
        )
        self.tracker.client.set_terminated(self.parent_run_id)
        result.parent_run_id = self.parent_run_id
