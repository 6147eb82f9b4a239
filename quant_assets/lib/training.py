"""Cross-validated training of a binary classifier on a TrainingDataset: out-of-fold predictions and
per-fold metrics, a calibrator fitted on out-of-fold predictions only, the final model refit on every
development row, and its scores on the untouched hold-out; and incremental LightGBM training that
adds trees to a champion on the development rows labelled since it was trained (XGBoost likewise,
through `xgb_model=`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl

if TYPE_CHECKING:  # LightGBM and scikit-learn are imported where a model is built or fitted
    from lightgbm import Booster, LGBMClassifier

from quant_assets.lib.calibration import CalibrationMethod, Calibrator, fit_calibrator
from quant_assets.lib.datasets import CLASS_COLUMN, TrainingDataset
from quant_assets.lib.errors import DataValidationError, QuantAssetsError, SplitConfigError
from quant_assets.lib.metrics import classification_metrics, multi_class_metrics, up_probability
from quant_assets.lib.retrain import RetrainMode
from quant_assets.lib.splits import SplitPlan

ModelType = Literal["lightgbm", "xgboost", "logistic", "gradient_boosting", "random_forest"]
MODEL_TYPES: tuple[str, ...] = (
    "lightgbm",
    "xgboost",
    "logistic",
    "gradient_boosting",
    "random_forest",
)
#: Model types whose fitted model can be continued with more trees (continue_training).
INCREMENTAL_TYPES: tuple[str, ...] = ("lightgbm", "xgboost")
#: Booster attribute holding an XGBoost model's estimator parameters: XGBoost's model file keeps the
#: trees but not the scikit-learn hyperparameters, which a registry model needs to be continued.
XGB_PARAMS_ATTR = "quant_assets_params"
CalibrationChoice = Literal["isotonic", "sigmoid", "none"]
CALIBRATIONS: tuple[str, ...] = ("isotonic", "sigmoid", "none")

#: Default keyword arguments of each model type's estimator; ModelConfig.params overrides them key by
#: key, and ModelConfig.seed becomes its random_state.
#: - lightgbm: LGBMClassifier. One thread, row-wise histograms and deterministic=True make two runs on
#:   the same data build the same trees (multi-threaded histogram sums can differ in the last bit).
#:   max_bin=63 (LightGBM's default is 255): 63 candidate thresholds per feature for trees of 15
#:   leaves on noisy returns. Cross-validation and the final fit took 31 % less CPU, and the
#:   out-of-fold AUC moved by -0.0004 (sd 0.0062 over 24 partitions, hold-out +0.0096 sd 0.0172):
#:   no loss (`benchmarks/bench_lightgbm_bins.py`).
#: - logistic: StandardScaler then an L2 (l1_ratio=0) LogisticRegression, in one Pipeline, so the
#:   scaler is fitted on each fold's training rows only; params go to the LogisticRegression.
#: - gradient_boosting: HistGradientBoostingClassifier (max_iter is its number of trees): 150 trees on
#:   24k rows fit in 2 s where GradientBoostingClassifier takes 48 s. Early stopping is off so the tree
#:   count does not depend on a random validation slice of the training rows. max_bins=63: with
#:   sample weights, scikit-learn 1.9 finds bin edges by one weighted-percentile call per bin and
#:   feature, a fixed ~4 s per fit at 255 bins (sped up upstream in scikit-learn PR #34248); 63
#:   candidate thresholds per feature are plenty for depth-3 trees.
#: - xgboost: XGBClassifier, histogram trees, one thread (deterministic for a seed); depth-wise trees
#:   of depth 4 (about the 15 leaves of the LightGBM default); min_child_weight is a hessian sum
#:   (p(1-p) <= 0.25 per unit weight), so 5 asks for at least ~20 rows per leaf.
#:   seed_per_iteration: without it a continued model (xgb_model=) draws its row and column
#:   samples from the process's random state, so two identical increments differed (measured).
#: - random_forest: RandomForestClassifier, one thread.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "lightgbm": {
        "n_estimators": 200,
        "learning_rate": 0.05,
        "num_leaves": 15,
        "min_child_samples": 50,
        "subsample": 0.8,
        "subsample_freq": 1,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "max_bin": 63,
        "n_jobs": 1,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    },
    "xgboost": {
        "n_estimators": 200,
        "learning_rate": 0.05,
        "max_depth": 4,
        "min_child_weight": 5.0,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "reg_lambda": 1.0,
        "tree_method": "hist",
        "seed_per_iteration": True,
        "n_jobs": 1,
        "verbosity": 0,
    },
    "logistic": {"C": 1.0, "l1_ratio": 0.0, "max_iter": 1000},
    "gradient_boosting": {
        "max_depth": 3,
        "max_iter": 150,
        "learning_rate": 0.05,
        "max_bins": 63,
        "early_stopping": False,
    },
    "random_forest": {
        "n_estimators": 300,
        "max_depth": 6,
        "min_samples_leaf": 50,
        "n_jobs": 1,
    },
}

METRIC_NAMES: tuple[str, ...] = ("roc_auc", "brier", "log_loss", "accuracy", "ece")
_FOLD_METRICS_SCHEMA = {"fold": pl.Int64, "n_train": pl.Int64, "n_test": pl.Int64} | dict.fromkeys(
    METRIC_NAMES, pl.Float64
)
# OpenMP/BLAS threads per fit, like n_jobs=1 above: partitions train in parallel processes, and on
# a busy 2-core machine OpenMP's waiting threads made a HistGradientBoosting fit of 150 trees on 13k
# rows take 7.6 s instead of 0.55 s single-threaded.
_THREADS = 1
_controller: tuple[int, Any] | None = None


def single_threaded() -> Any:
    """A context in which OpenMP and BLAS run one thread (`_THREADS`). threadpoolctl's
    `threadpool_limits` looks up every loaded library on each call (about 2 % of a pipeline run's
    CPU, called for every fit and prediction); the controller is kept and looked up again only when
    modules were imported since (a native library is loaded by an import)."""
    global _controller
    import sys

    from threadpoolctl import ThreadpoolController

    if _controller is None or _controller[0] != len(sys.modules):
        _controller = (len(sys.modules), ThreadpoolController())
    return _controller[1].limit(limits=_THREADS)


#: Symbols with fewer out-of-fold rows than this get the pooled calibrator (see fit_per_symbol_calibrators).
PER_SYMBOL_MIN_ROWS = 50


class ModelConfigError(QuantAssetsError, ValueError):
    """A model configuration names an unknown model type, calibration or estimator parameter."""


@dataclass
class ModelConfig:
    """What to train: the estimator type, its seed and parameter overrides, and the calibration."""

    model_type: ModelType = "lightgbm"
    seed: int = 42
    params: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationChoice = "isotonic"
    n_bins: int = 10

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ModelConfigError(
                f"unknown model_type {self.model_type!r}; expected one of {MODEL_TYPES}"
            )
        if self.calibration not in CALIBRATIONS:
            raise ModelConfigError(
                f"unknown calibration {self.calibration!r}; expected one of {CALIBRATIONS}"
            )
        if "random_state" in self.params:
            raise ModelConfigError("set the seed with ModelConfig.seed, not params['random_state']")

    def model_params(self) -> dict[str, Any]:
        """The estimator's keyword arguments: DEFAULT_PARAMS of the type, overridden by params."""
        return {**DEFAULT_PARAMS[self.model_type], **self.params}


@dataclass(frozen=True, eq=False)
class SkippedTraining:
    """Training was not attempted or could not finish; `reason` says why in words."""

    reason: str
    n_dev: int
    n_holdout: int


@dataclass(frozen=True)
class Increment:
    """What `continue_training` added to its base model: the rows it fitted (development rows newer
    than the base's trained_through), the trees before and after, and the newest timestamp fitted
    (the next increment's trained_through)."""

    n_new_rows: int
    base_trees: int
    new_trees: int
    total_trees: int
    min_child_samples: int
    trained_through: datetime


@dataclass(frozen=True, eq=False)
class TrainingResult:
    """Everything a training run produced.

    oof: one row per development row that a fold tested (row = position in the dataset frame,
    timestamp, [symbol,] fold, y, prob_raw, prob_cal). holdout: the hold-out rows scored by the final
    model and calibrator, never used to fit anything. timings: seconds per phase. increment: set by
    `continue_training` (whose oof and fold_metrics are empty), None for a complete training.
    """

    model: Any
    calibrator: Calibrator | None
    feature_columns: list[str]
    oof: pl.DataFrame
    fold_metrics: pl.DataFrame
    overall_metrics: dict[str, float]
    holdout: pl.DataFrame
    holdout_metrics: dict[str, float]
    feature_importances: pl.DataFrame
    config: ModelConfig
    n_dev: int
    n_holdout: int
    timings: dict[str, float]
    increment: Increment | None = None
    class_calibrators: dict[int, Calibrator] | None = None

    @property
    def mode(self) -> RetrainMode:
        return "complete" if self.increment is None else "incremental"


def make_model(config: ModelConfig) -> Any:
    """An unfitted scikit-learn-API classifier for `config`."""
    params = config.model_params()
    try:
        if config.model_type == "lightgbm":
            from lightgbm import LGBMClassifier

            return LGBMClassifier(random_state=config.seed, **params)
        if config.model_type == "xgboost":
            from xgboost import XGBClassifier

            return XGBClassifier(random_state=config.seed, **params)
        from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        if config.model_type == "logistic":
            return Pipeline(
                [
                    ("scale", StandardScaler()),
                    ("model", LogisticRegression(random_state=config.seed, **params)),
                ]
            )
        if config.model_type == "gradient_boosting":
            return HistGradientBoostingClassifier(random_state=config.seed, **params)
        return RandomForestClassifier(random_state=config.seed, **params)
    except TypeError as exc:
        raise ModelConfigError(
            f"{config.model_type} does not accept params {params}: {exc}"
        ) from exc


def _fit(
    model: Any, X: np.ndarray, y: np.ndarray, weight: np.ndarray, init_model: Any = None
) -> Any:
    """Fit `model` with sample weights scaled to mean 1, so regularisation strength (C, reg_lambda,
    min_child_weight) means the same whatever the average label uniqueness of the data is.

    Every fit goes through here. init_model (LightGBM, XGBoost): a Booster whose trees the fit
    starts from and keeps, adding the model's n_estimators trees after them. An XGBoost model records
    its parameters in its booster (XGB_PARAMS_ATTR), so a registry copy can be continued alike.
    """
    from sklearn.pipeline import Pipeline

    scaled = weight / weight.mean()
    xgb = type(model).__name__ == "XGBClassifier"
    continued = {} if init_model is None else {"xgb_model" if xgb else "init_model": init_model}
    with single_threaded():
        if isinstance(model, Pipeline):
            return model.fit(X, y, **{f"{model.steps[-1][0]}__sample_weight": scaled})
        fitted = model.fit(X, y, sample_weight=scaled, **continued)
    if xgb:
        params = {k: v for k, v in model.get_params().items() if v is not None and k != "missing"}
        fitted.get_booster().set_attr(**{XGB_PARAMS_ATTR: json.dumps(params, default=str)})
    return fitted


def _positive_proba(model: Any, X: np.ndarray) -> np.ndarray:
    """P(class 1) of a binary model; P(up) (metrics.up_probability) of a multi-class one."""
    classes = list(model.classes_)
    with single_threaded():
        proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    if classes == [0, 1]:
        return proba[:, 1]
    return up_probability(proba, classes)


def _class_proba(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, n_classes) class probabilities; a class the model never saw gets probability 0."""
    with single_threaded():
        proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    out = np.zeros((X.shape[0], n_classes))
    out[:, np.asarray(model.classes_, dtype=np.int64)] = proba
    return out


def _class_calibration(
    oof: np.ndarray,
    y_class: np.ndarray,
    fold: np.ndarray,
    method: CalibrationMethod,
) -> tuple[dict[int, Calibrator], np.ndarray]:
    """One-vs-rest calibrators per class fitted on the out-of-fold class probabilities, and the
    cross-fitted calibrated OOF matrix (each fold by the other folds' calibrators), rows
    renormalized to sum to 1. A class absent from the out-of-fold rows keeps its raw column."""
    calibrators: dict[int, Calibrator] = {}
    calibrated = oof.copy()
    for k in range(oof.shape[1]):
        hit = (y_class == k).astype(np.int8)
        if np.unique(hit).size < 2:
            continue
        calibrators[k] = fit_calibrator(oof[:, k], hit, method)
        calibrated[:, k] = _cross_fitted_calibration(oof[:, k], hit, fold, method, calibrators[k])
    return calibrators, _renormalized(calibrated)


def _renormalized(proba: np.ndarray) -> np.ndarray:
    total = proba.sum(axis=1, keepdims=True)
    return np.divide(proba, total, out=np.full_like(proba, 1 / proba.shape[1]), where=total > 0)


def calibrated_class_proba(proba: np.ndarray, calibrators: dict[int, Calibrator]) -> np.ndarray:
    """Class probabilities through their one-vs-rest calibrators, renormalized."""
    out = np.array(proba, dtype=np.float64)
    for k, calibrator in calibrators.items():
        out[:, k] = calibrator.predict(proba[:, k])
    return _renormalized(out)


def _feature_matrix(frame: pl.DataFrame, feature_columns: list[str], where: str) -> np.ndarray:
    missing = [c for c in feature_columns if c not in frame.columns]
    if missing:
        raise DataValidationError(where, f"missing feature columns {missing}")
    return frame.select(pl.col(c).cast(pl.Float64) for c in feature_columns).to_numpy()


def predict_proba(
    model: Any, calibrator: Calibrator | None, frame: pl.DataFrame, feature_columns: list[str]
) -> np.ndarray:
    """Calibrated probability of class 1 for each row of `frame` (raw when `calibrator` is None)."""
    p = _positive_proba(model, _feature_matrix(frame, feature_columns, "predict_proba(frame)"))
    return p if calibrator is None else calibrator.predict(p)


def feature_importances(
    model: Any, config: ModelConfig, feature_columns: list[str]
) -> pl.DataFrame:
    """feature, importance (descending): total split gain for lightgbm, xgboost and
    gradient_boosting, |coef| on standardized features for logistic, mean impurity decrease for
    random_forest."""
    if config.model_type == "lightgbm":
        values = model.booster_.feature_importance(importance_type="gain")
    elif config.model_type == "xgboost":
        # fitted on arrays, the booster names features f0, f1, ...; unused features have no entry
        gains = model.get_booster().get_score(importance_type="total_gain")
        values = [gains.get(f"f{i}", 0.0) for i in range(len(feature_columns))]
    elif config.model_type == "logistic":
        values = np.abs(model.steps[-1][1].coef_).sum(axis=0)  # summed over classes
    elif config.model_type == "gradient_boosting":
        # HistGradientBoostingClassifier exposes no importances; its trees record each split's gain.
        values = np.zeros(len(feature_columns))
        for trees in model._predictors:
            for tree in trees:
                splits = tree.nodes[~tree.nodes["is_leaf"].astype(bool)]
                np.add.at(values, splits["feature_idx"], splits["gain"])
    else:
        values = model.feature_importances_
    return pl.DataFrame(
        {"feature": feature_columns, "importance": np.asarray(values, dtype=np.float64)}
    ).sort(["importance", "feature"], descending=[True, False])


def _prefixed_metrics(
    prefix: str, y: np.ndarray, raw: np.ndarray, cal: np.ndarray, n_bins: int
) -> dict[str, float]:
    m_raw = classification_metrics(y, raw, n_bins=n_bins)
    m_cal = classification_metrics(y, cal, n_bins=n_bins)
    return {
        **{f"{prefix}_{k}": m_raw[k] for k in METRIC_NAMES},
        **{f"{prefix}_{k}_calibrated": m_cal[k] for k in METRIC_NAMES},
        f"{prefix}_n": m_raw["n"],
        f"{prefix}_positive_rate": m_raw["positive_rate"],
    }


def _cross_fitted_calibration(
    prob: np.ndarray, y: np.ndarray, fold: np.ndarray, method: CalibrationMethod, pooled: Calibrator
) -> np.ndarray:
    """Calibrated out-of-fold probabilities, each fold's by a calibrator fitted on the other folds'
    rows, so calibrated OOF metrics are not scored on the calibrator's own training rows. A fold
    whose complement lacks a class (e.g. a plan of one fold) falls back to the pooled calibrator."""
    out = np.empty_like(prob)
    for k in np.unique(fold):
        inside = fold == k
        others = ~inside
        if np.unique(y[others]).size == 2:
            calibrator = fit_calibrator(prob[others], y[others], method)
        else:
            calibrator = pooled
        out[inside] = calibrator.predict(prob[inside])
    return out


def _checked_weights(frame: pl.DataFrame, where: str) -> np.ndarray:
    weight = frame.get_column("sample_weight").to_numpy()
    bad = ~(np.isfinite(weight) & (weight > 0))
    if bad.any():
        raise DataValidationError(
            where,
            "sample_weight must be finite and positive",
            row=int(bad.argmax()),
            detail=f"value {weight[bad.argmax()]}",
        )
    return weight


def _check_plan(plan: SplitPlan, n_rows: int) -> None:
    indices = [plan.dev_idx, plan.holdout_idx, *(f.train_idx for f in plan.folds)]
    indices += [f.test_idx for f in plan.folds]
    largest = max((int(i.max()) for i in indices if i.size), default=-1)
    if largest >= n_rows:
        raise SplitConfigError(
            f"the split plan refers to row {largest} but the dataset has {n_rows} rows; "
            "make the splits on this dataset"
        )
    for f in plan.folds:
        for name, idx in (("training", f.train_idx), ("test", f.test_idx)):
            if np.isin(idx, plan.holdout_idx).any():
                raise SplitConfigError(f"fold {f.fold} has hold-out rows among its {name} rows")


def _row_frame(frame: pl.DataFrame, rows: np.ndarray, **columns: Any) -> pl.DataFrame:
    keys = ["timestamp", "symbol"] if "symbol" in frame.columns else ["timestamp"]
    return (
        pl.DataFrame({"row": pl.Series(rows, dtype=pl.Int64)})
        .hstack(frame.select(keys)[rows])
        .with_columns(**columns)
    )


def _scored_holdout(
    model: Any,
    calibrator: Calibrator | None,
    frame: pl.DataFrame,
    X: np.ndarray,
    y: np.ndarray,
    hold: np.ndarray,
    n_bins: int,
) -> tuple[pl.DataFrame, dict[str, float]]:
    """The hold-out frame (row, timestamp, [symbol,] y, prob_raw, prob_cal) and its metrics ({}
    without hold-out rows)."""
    n_hold = hold.size
    p_hold = _positive_proba(model, X[hold]) if n_hold else np.empty(0)
    p_hold_cal = p_hold if calibrator is None or not n_hold else calibrator.predict(p_hold)
    metrics = _prefixed_metrics("holdout", y[hold], p_hold, p_hold_cal, n_bins) if n_hold else {}
    scored = _row_frame(
        frame,
        hold,
        y=pl.Series(y[hold], dtype=pl.Int8),
        prob_raw=pl.Series(p_hold, dtype=pl.Float64),
        prob_cal=pl.Series(p_hold_cal, dtype=pl.Float64),
    )
    return scored, metrics


def train_with_cv(
    dataset: TrainingDataset,
    plan: SplitPlan,
    config: ModelConfig,
    min_rows: int = 100,
    log: Callable[[str], None] | None = None,
) -> TrainingResult | SkippedTraining:
    """Cross-validate `config` over `plan`'s folds, calibrate on the out-of-fold predictions, refit
    on all development rows and score the hold-out.

    `plan` must be made on dataset.frame's rows (in order; for a global dataset the time-sorted union).
    Each fold trains on its training rows with their sample weights and predicts its test rows. When
    folds test a row more than once (walk-forward with step < test_size), the out-of-fold prediction
    kept is the latest fold's, trained on the most history. The final calibrator is fitted on every
    out-of-fold prediction; the calibrated OOF metrics are cross-fitted (each fold calibrated by the
    other folds' predictions). Hold-out rows are scored, never fitted on.

    Returns SkippedTraining when there are fewer than `min_rows` development rows, or when the
    development rows, a fold's training rows or the out-of-fold rows hold a single class.

    Multi-class datasets (a `y_class` column, target multi_class): every fit is a K-class model on
    y_class. The probability the pipeline trades (prob_raw/prob_cal) is P(up), the summed
    probability of the classes above the middle one (y = 1), calibrated like a binary model's.
    Besides, each class gets a one-vs-rest calibrator on its out-of-fold probabilities
    (class_calibrators; rows renormalized), and per-class metrics raw and calibrated
    (`oof_class{k}_roc_auc`, ..., `_calibrated`; `holdout_class{k}_...`) with the multi-class log
    loss and accuracy (`oof_multiclass_log_loss`, `oof_multiclass_accuracy`).
    """
    started = time.perf_counter()
    say = log or (lambda _message: None)
    frame = dataset.frame
    _check_plan(plan, frame.height)
    dev, hold = plan.dev_idx, plan.holdout_idx
    n_dev, n_hold = int(dev.size), int(hold.size)

    def skipped(reason: str) -> SkippedTraining:
        say(f"skipped: {reason}")
        return SkippedTraining(reason, n_dev, n_hold)

    y = frame.get_column("y").to_numpy()
    multi = CLASS_COLUMN in frame.columns
    y_fit = frame.get_column(CLASS_COLUMN).to_numpy() if multi else y
    if n_dev < min_rows:
        return skipped(f"{n_dev} development rows, fewer than min_rows={min_rows}")
    dev_classes = np.unique(y[dev])
    if dev_classes.size < 2:
        return skipped(f"every development row has y={int(dev_classes[0])}")
    n_classes = int(y_fit[dev].max()) + 1 if multi else 2
    oof_matrix = np.full((frame.height, n_classes), np.nan) if multi else None
    for f in plan.folds:
        if np.unique(y_fit[f.train_idx]).size < 2:
            return skipped(f"fold {f.fold} trains on a single class ({f.train_idx.size} rows)")
    weight = _checked_weights(frame, "train_with_cv(dataset)")
    X = _feature_matrix(frame, dataset.feature_columns, "train_with_cv(dataset)")

    oof_prob = np.full(frame.height, np.nan)
    oof_fold = np.full(frame.height, -1, dtype=np.int64)
    fold_rows = []
    for k, f in enumerate(plan.folds, start=1):
        model = _fit(make_model(config), X[f.train_idx], y_fit[f.train_idx], weight[f.train_idx])
        if multi:
            oof_matrix[f.test_idx] = _class_proba(model, X[f.test_idx], n_classes)
            prob = up_probability(oof_matrix[f.test_idx])
        else:
            prob = _positive_proba(model, X[f.test_idx])
        oof_prob[f.test_idx] = prob
        oof_fold[f.test_idx] = f.fold
        m = classification_metrics(y[f.test_idx], prob, n_bins=config.n_bins)
        fold_rows.append(
            {"fold": f.fold, "n_train": f.train_idx.size, "n_test": f.test_idx.size}
            | {name: m[name] for name in METRIC_NAMES}
        )
        say(
            f"fold {k}/{len(plan.folds)}: auc {m['roc_auc']:.4f} brier {m['brier']:.4f} "
            f"ece {m['ece']:.4f} (train {f.train_idx.size}, test {f.test_idx.size} rows)"
        )
    cv_done = time.perf_counter()

    oof_rows = np.flatnonzero(oof_fold >= 0)
    y_oof, p_oof, f_oof = y[oof_rows], oof_prob[oof_rows], oof_fold[oof_rows]
    if np.unique(y_oof).size < 2:
        return skipped(f"the {oof_rows.size} out-of-fold rows hold a single class")
    if config.calibration == "none":
        calibrator, p_oof_cal = None, p_oof
    else:
        calibrator = fit_calibrator(p_oof, y_oof, config.calibration)
        p_oof_cal = _cross_fitted_calibration(p_oof, y_oof, f_oof, config.calibration, calibrator)
    overall = _prefixed_metrics("oof", y_oof, p_oof, p_oof_cal, config.n_bins)
    class_calibrators = None
    if multi:
        m_oof = oof_matrix[oof_rows]
        class_calibrators, m_oof_cal = {}, m_oof
        if config.calibration != "none":
            class_calibrators, m_oof_cal = _class_calibration(
                m_oof, y_fit[oof_rows], f_oof, config.calibration
            )
        overall |= multi_class_metrics(y_fit[oof_rows], m_oof, "oof", n_bins=config.n_bins)
        overall |= multi_class_metrics(
            y_fit[oof_rows], m_oof_cal, "oof", "_calibrated", n_bins=config.n_bins
        )
    calibrated = time.perf_counter()

    final = _fit(make_model(config), X[dev], y_fit[dev], weight[dev])
    final_done = time.perf_counter()

    holdout, holdout_metrics = _scored_holdout(final, calibrator, frame, X, y, hold, config.n_bins)
    if multi and hold.size:
        m_hold = _class_proba(final, X[hold], n_classes)
        holdout_metrics |= multi_class_metrics(y_fit[hold], m_hold, "holdout", n_bins=config.n_bins)
        holdout_metrics |= multi_class_metrics(
            y_fit[hold],
            calibrated_class_proba(m_hold, class_calibrators),
            "holdout",
            "_calibrated",
            n_bins=config.n_bins,
        )
    say(
        f"oof auc {overall['oof_roc_auc']:.4f}, ece {overall['oof_ece']:.4f} raw / "
        f"{overall['oof_ece_calibrated']:.4f} calibrated over {oof_rows.size} rows"
        + (f"; hold-out auc {holdout_metrics['holdout_roc_auc']:.4f}" if n_hold else "")
    )
    finished = time.perf_counter()
    return TrainingResult(
        model=final,
        calibrator=calibrator,
        feature_columns=list(dataset.feature_columns),
        oof=_row_frame(
            frame,
            oof_rows,
            fold=pl.Series(f_oof, dtype=pl.Int64),
            y=pl.Series(y_oof, dtype=pl.Int8),
            prob_raw=pl.Series(p_oof, dtype=pl.Float64),
            prob_cal=pl.Series(p_oof_cal, dtype=pl.Float64),
        ),
        fold_metrics=pl.DataFrame(fold_rows, schema=_FOLD_METRICS_SCHEMA),
        overall_metrics=overall,
        holdout=holdout,
        holdout_metrics=holdout_metrics,
        feature_importances=feature_importances(final, config, list(dataset.feature_columns)),
        config=config,
        n_dev=n_dev,
        n_holdout=n_hold,
        timings={
            "cv_seconds": cv_done - started,
            "calibration_seconds": calibrated - cv_done,
            "final_fit_seconds": final_done - calibrated,
            "total_seconds": finished - started,
        },
        class_calibrators=class_calibrators,
    )


def incremental_min_child_samples(base: int, n_new: int) -> int:
    """min_child_samples of an increment on `n_new` rows: max(5, min(base, n_new // 4)).

    The base value (50 by default) is sized for tens of thousands of rows; on a few hundred new rows
    it would forbid most splits, so it shrinks to a quarter of the new rows (a leaf keeps at least
    a quarter of them), never below 5 rows nor above the base.
    """
    return max(5, min(base, n_new // 4))


# LGBMClassifier parameters by their LightGBM name, as a Booster loaded from a model file (the
# registry's) states them; a booster still attached to its classifier uses the scikit-learn names.
_NATIVE_PARAMS = {
    "boosting": "boosting_type",
    "learning_rate": "learning_rate",
    "num_leaves": "num_leaves",
    "max_depth": "max_depth",
    "min_data_in_leaf": "min_child_samples",
    "min_sum_hessian_in_leaf": "min_child_weight",
    "min_gain_to_split": "min_split_gain",
    "bagging_fraction": "subsample",
    "bagging_freq": "subsample_freq",
    "feature_fraction": "colsample_bytree",
    "lambda_l1": "reg_alpha",
    "lambda_l2": "reg_lambda",
    "bin_construct_sample_cnt": "subsample_for_bin",
    "max_bin": "max_bin",
    "num_threads": "n_jobs",
    "deterministic": "deterministic",
    "force_row_wise": "force_row_wise",
    "verbosity": "verbose",
    "seed": "random_state",
}


def _base_xgboost(base_model: Any) -> tuple[Any, dict[str, Any], list[str]]:
    """The booster of a fitted binary XGBoost base model (XGBClassifier, as the registry loads it, or
    its Booster), the XGBClassifier parameters it was fitted with (recorded in the booster by _fit;
    random_state included) and its feature names (f0, f1, ... for a model fitted on an array)."""
    from xgboost import XGBClassifier

    if isinstance(base_model, XGBClassifier):
        if not base_model.__sklearn_is_fitted__():
            raise ModelConfigError(
                "continue_training needs a fitted base_model, got an unfitted XGBClassifier"
            )
        classes = list(base_model.classes_)
        if classes != [0, 1]:
            raise ModelConfigError(f"the base model must be a 0/1 classifier, not of {classes}")
        booster = base_model.get_booster()
    else:
        booster = base_model
    objective = json.loads(booster.save_config())["learner"]["learner_train_param"]["objective"]
    if objective != "binary:logistic":
        raise ModelConfigError(
            f"the base booster's objective is {objective!r}, not 'binary:logistic'"
        )
    recorded = booster.attr(XGB_PARAMS_ATTR)
    if recorded is None:
        raise ModelConfigError(
            "the XGBoost base model does not record its parameters (it was not fitted by "
            "quant_assets.lib.training); train it again to continue it"
        )
    params = json.loads(recorded)
    names = booster.feature_names or [f"f{i}" for i in range(booster.num_features())]
    return booster, params, list(names)


def _tree_count(model: Any) -> int:
    """Trees (boosting rounds) of a fitted LightGBM or XGBoost classifier or booster."""
    if hasattr(model, "booster_"):
        return model.booster_.num_trees()
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    return (
        booster.num_boosted_rounds()
        if hasattr(booster, "num_boosted_rounds")
        else booster.num_trees()
    )


def _base_booster(base_model: Any) -> tuple[Any, dict[str, Any], list[str], str]:
    """The booster of a fitted binary LightGBM or XGBoost base model (classifier or Booster), its
    classifier parameters (random_state included), its feature names and its model type."""
    from lightgbm import Booster, LGBMClassifier

    if type(base_model).__module__.startswith("xgboost"):
        return (*_base_xgboost(base_model), "xgboost")

    if isinstance(base_model, LGBMClassifier) and base_model.__sklearn_is_fitted__():
        classes = list(base_model.classes_)
        if classes != [0, 1]:
            raise ModelConfigError(f"the base model must be a 0/1 classifier, not of {classes}")
        return (
            base_model.booster_,
            base_model.get_params(),
            list(base_model.feature_name_),
            "lightgbm",
        )
    if isinstance(base_model, Booster):
        native = base_model.params
        if native.get("objective") != "binary":
            raise ModelConfigError(
                f"the base booster's objective is {native.get('objective')!r}, not 'binary'"
            )
        params = {
            sk: native.get(name, native.get(sk))
            for name, sk in _NATIVE_PARAMS.items()
            if name in native or sk in native
        }
        return (
            base_model,
            DEFAULT_PARAMS["lightgbm"] | params,
            base_model.feature_name(),
            "lightgbm",
        )
    raise ModelConfigError(
        "continue_training needs a fitted XGBoost (XGBClassifier or Booster) or LightGBM "
        "base_model (LGBMClassifier or Booster), got "
        f"{'an unfitted ' if isinstance(base_model, LGBMClassifier) else ''}"
        f"{type(base_model).__name__}"
    )


def _base_feature_columns(
    model_names: list[str], feature_columns: Sequence[str] | None, dataset_columns: list[str]
) -> list[str]:
    """The base model's feature columns, checked against the dataset's (any order)."""
    names = list(model_names if feature_columns is None else feature_columns)
    if len(names) != len(model_names):
        raise ModelConfigError(
            f"the base model was fitted on {len(model_names)} features, but feature_columns "
            f"names {len(names)}"
        )
    missing = [c for c in names if c not in dataset_columns]
    extra = [c for c in dataset_columns if c not in names]
    if missing or extra:
        hint = ""
        if feature_columns is None:
            hint = (
                "; a model fitted on a numpy array knows its features only as Column_0 (LightGBM) "
                "or f0 (XGBoost), ...: pass "
                "feature_columns= (TrainingResult.feature_columns, LoadedModel.feature_columns)"
            )
        raise ModelConfigError(
            "the dataset's feature columns differ from the base model's: missing from the dataset "
            f"{missing}, not in the base model {extra}{hint}"
        )
    return names


def continue_training(
    dataset: TrainingDataset,
    plan: SplitPlan,
    base_model: LGBMClassifier | Booster | Any,
    base_calibrator: Calibrator | None,
    trained_through: datetime,
    *,
    feature_columns: Sequence[str] | None = None,
    extra_trees: int = 50,
    min_new_rows: int = 10,
    log: Callable[[str], None] | None = None,
) -> TrainingResult | SkippedTraining:
    """Add `extra_trees` LightGBM or XGBoost trees to `base_model`, fitted on the development rows of
    `plan` whose timestamp is after `trained_through` (the newest timestamp the base model was fitted
    on). base_model: a fitted binary LGBMClassifier, or the Booster a registry load returns (its
    parameters read back from LightGBM's names); the result's model is an LGBMClassifier either way.
    Or a fitted binary XGBClassifier (what the registry loads) or its Booster, continued with
    XGBClassifier.fit(xgb_model=booster) and the parameters recorded in the booster; its
    min_child_weight is kept (a hessian sum, not a row count) and Increment.min_child_samples is 0.

    Leak-free by construction: those rows were in the base model's hold-out, never fitted, and the
    new hold-out (`plan.holdout_idx`, the latest rows) is only scored. The new trees start from the
    base model's scores (LGBMClassifier.fit(init_model=base booster)) and use its parameters, except
    n_estimators = extra_trees and min_child_samples from `incremental_min_child_samples`.
    feature_columns: the base model's features in its fitting order (e.g. the champion's
    TrainingResult.feature_columns); None reads the model's own feature names. They must be the
    dataset's feature columns in any order; the model is fed them in the base model's order.

    No cross-validation: oof and fold_metrics are empty (with their usual columns), overall_metrics
    is {}. The calibrator is `base_calibrator` unchanged: an increment is small next to the history
    the calibrator was fitted on, a calibrator fitted on it would follow noise, and the hold-out ECE
    (holdout_metrics, scored as in `train_with_cv`) shows when calibration has drifted.

    Returns SkippedTraining when fewer than `min_new_rows` new rows, or a single class among them.
    LightGBM stops adding trees when no split meets min_child_samples (a tiny increment), so
    result.increment.new_trees may be below extra_trees.
    """
    started = time.perf_counter()
    say = log or (lambda _message: None)
    base_booster, params, model_names, model_type = _base_booster(base_model)
    if isinstance(extra_trees, bool) or not isinstance(extra_trees, int) or extra_trees < 1:
        raise ModelConfigError(f"extra_trees must be a positive integer, got {extra_trees!r}")
    if trained_through.tzinfo is None or trained_through.utcoffset() is None:
        raise ModelConfigError(f"trained_through must be timezone-aware, got {trained_through!r}")
    frame = dataset.frame
    _check_plan(plan, frame.height)
    names = _base_feature_columns(model_names, feature_columns, list(dataset.feature_columns))
    dev, hold = plan.dev_idx, plan.holdout_idx
    n_dev, n_hold = int(dev.size), int(hold.size)

    epoch_us = frame.get_column("timestamp").dt.epoch("us").to_numpy()
    cutoff_us = (trained_through - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    new = dev[epoch_us[dev] > cutoff_us]
    y = frame.get_column("y").to_numpy()
    newer = f"development rows newer than {trained_through.isoformat()}"
    reason = None
    if new.size < min_new_rows:
        reason = f"{new.size} {newer}, fewer than min_new_rows={min_new_rows}"
    elif np.unique(y[new]).size < 2:
        reason = f"all {new.size} {newer} have y={int(y[new[0]])}"
    if reason is not None:
        say(f"skipped: {reason}")
        return SkippedTraining(reason, n_dev, n_hold)
    weight = _checked_weights(frame, "continue_training(dataset)")
    X = _feature_matrix(frame, names, "continue_training(dataset)")

    seed = params.pop("random_state")
    if model_type == "lightgbm":
        min_child = incremental_min_child_samples(params["min_child_samples"], new.size)
        leaf = {"min_child_samples": min_child}
    else:
        min_child, leaf = 0, {}
    config = ModelConfig(
        model_type=model_type,
        seed=seed,
        params=params | {"n_estimators": extra_trees} | leaf,
        calibration="none" if base_calibrator is None else base_calibrator.method,
    )
    model = _fit(make_model(config), X[new], y[new], weight[new], init_model=base_booster)
    fitted = time.perf_counter()

    base_trees, total_trees = _tree_count(base_booster), _tree_count(model)
    increment = Increment(
        n_new_rows=int(new.size),
        base_trees=base_trees,
        new_trees=total_trees - base_trees,
        total_trees=total_trees,
        min_child_samples=min_child,
        trained_through=frame.get_column("timestamp").gather(new).max(),
    )
    holdout, holdout_metrics = _scored_holdout(
        model, base_calibrator, frame, X, y, hold, config.n_bins
    )
    say(
        f"incremental: {increment.new_trees} trees on {base_trees} fitted on {new.size} rows after "
        f"{trained_through.isoformat()}"
        + (f" (min_child_samples {min_child})" if model_type == "lightgbm" else " (xgboost)")
        + (f"; hold-out auc {holdout_metrics['holdout_roc_auc']:.4f}" if n_hold else "")
    )
    no_rows = np.empty(0, dtype=np.int64)
    return TrainingResult(
        model=model,
        calibrator=base_calibrator,
        feature_columns=names,
        oof=_row_frame(
            frame,
            no_rows,
            fold=pl.Series(no_rows),
            y=pl.Series(no_rows, dtype=pl.Int8),
            prob_raw=pl.Series(no_rows, dtype=pl.Float64),
            prob_cal=pl.Series(no_rows, dtype=pl.Float64),
        ),
        fold_metrics=pl.DataFrame(schema=_FOLD_METRICS_SCHEMA),
        overall_metrics={},
        holdout=holdout,
        holdout_metrics=holdout_metrics,
        feature_importances=feature_importances(model, config, names),
        config=config,
        n_dev=n_dev,
        n_holdout=n_hold,
        timings={"fit_seconds": fitted - started, "total_seconds": time.perf_counter() - started},
        increment=increment,
    )


def fit_per_symbol_calibrators(
    oof: pl.DataFrame,
    method: CalibrationMethod,
    *,
    min_rows: int = PER_SYMBOL_MIN_ROWS,
    pooled: Calibrator | None = None,
) -> dict[str, Calibrator]:
    """One calibrator per symbol of a global model's out-of-fold frame (symbol, y, prob_raw).

    A symbol with fewer than `min_rows` out-of-fold rows, or only one class among them, gets the
    pooled calibrator (fitted on every symbol's rows, or `pooled` if given): a few dozen rows make a
    step function that follows noise, and the pooled map is the better estimate for that symbol.
    """
    where = "fit_per_symbol_calibrators(oof)"
    missing = [c for c in ("symbol", "y", "prob_raw") if c not in oof.columns]
    if missing:
        raise DataValidationError(where, f"missing columns {missing}", detail=f"has {oof.columns}")
    if pooled is None:
        pooled = fit_calibrator(oof.get_column("prob_raw"), oof.get_column("y"), method)
    calibrators = {}
    for (symbol,), rows in oof.group_by("symbol", maintain_order=True):
        y = rows.get_column("y").to_numpy()
        if rows.height >= min_rows and np.unique(y).size == 2:
            calibrators[symbol] = fit_calibrator(rows.get_column("prob_raw"), y, method)
        else:
            calibrators[symbol] = pooled
    return calibrators
