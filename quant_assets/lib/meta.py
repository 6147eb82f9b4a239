"""Meta layer over the primary signals: per-regime meta-learners, a meta-labelling filter, an
ensemble that degrades to confidence-weighted voting, and hold-out backtests comparing them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from quant_assets.lib.backtest import run_backtest
from quant_assets.lib.calibration import Calibrator
from quant_assets.lib.datasets import TrainingDataset
from quant_assets.lib.errors import DataValidationError, QuantAssetsError
from quant_assets.lib.labels import sample_weights, triple_barrier_labels
from quant_assets.lib.performance import annualization, performance_metrics
from quant_assets.lib.signals import position_changes
from quant_assets.lib.splits import Fold, SplitConfig, SplitPlan, make_splits
from quant_assets.lib.training import (
    METRIC_NAMES,
    CalibrationChoice,
    ModelConfig,
    SkippedTraining,
    TrainingResult,
    predict_proba,
    train_with_cv,
)

PRIMARIES: tuple[str, ...] = ("trend", "meanrev", "breakout")
PRIMARY_CHOICES: tuple[str, ...] = (*PRIMARIES, "vote")
REGIMES: tuple[str, ...] = ("bull", "bear", "range", "neutral")
VOL_BUCKETS: tuple[str, ...] = ("low", "mid", "high")
META_MODEL_TYPES: tuple[str, ...] = ("logistic", "gradient_boosting")
ENSEMBLE_MODES: tuple[str, ...] = ("filter", "weighted")
SOURCE_DTYPE = pl.Enum(("meta", "voting"))
#: metrics of each variant in `compare_ensembles`, as named by performance.performance_metrics
COMPARISON_METRICS: tuple[str, ...] = (
    "total_return",
    "sharpe",
    "sortino",
    "max_drawdown",
    "profit_factor",
    "trade_count",
    "win_rate",
)
_MARKET_FEATURES: tuple[str, ...] = ("atr_14_frac", "vol_20", "ret_20", "rsi_14")
_FILTER_MARKET_FEATURES: tuple[str, ...] = ("atr_14_frac", "vol_20", "volume_ratio_20")

MetaModelType = Literal["logistic", "gradient_boosting"]
Primary = Literal["trend", "meanrev", "breakout", "vote"]
EnsembleMode = Literal["filter", "weighted"]


class MetaLayerError(QuantAssetsError, ValueError):
    """A meta-layer configuration is invalid, or a step is asked of a model that was not trained."""


# ---------------------------------------------------------------------------------------------------
# configuration


def _default_splits() -> SplitConfig:
    # the training pipeline's defaults (defs/models.py SplitsConfig): 5 purged folds, 1% embargo
    return SplitConfig(scheme="purged_kfold", holdout_fraction=0.2, n_splits=5, embargo=0.01)


def _check_model_type(model_type: str) -> None:
    if model_type not in META_MODEL_TYPES:
        raise MetaLayerError(
            f"unknown model_type {model_type!r}; a meta model is one of {META_MODEL_TYPES}"
        )


def _check_fraction(name: str, value: float, low_open: bool = True) -> None:
    inside = (0 < value <= 1) if low_open else (0 <= value <= 1)
    if not (isinstance(value, int | float) and inside):
        bounds = "(0, 1]" if low_open else "[0, 1]"
        raise MetaLayerError(f"{name} must be in {bounds}, got {value!r}")


@dataclass(frozen=True)
class BacktestSettings:
    """How a variant's per-bar sides become backtest orders, and what trading costs.

    Each bar with a side enters (or refreshes) a position with stop-loss close - side x sl_mult x atr
    and take-profit close + side x tp_mult x atr (atr = atr_14_frac x close) and holds it `horizon`
    bars after the last signal, as signals.position_changes does for the direction model. The
    meta-labelling filter labels its events with the same barriers.
    """

    horizon: int = 5
    tp_mult: float = 1.75
    sl_mult: float = 1.0
    fee_bps: float = 5.0
    slippage_bps: float = 2.0
    delay: int = 1
    use_stops: bool = True
    calendar_kind: Literal["24/7", "session"] = "24/7"
    session_hours: float = 7.0

    def periods_per_year(self, timeframe: str) -> float:
        return annualization(timeframe, self.calendar_kind, self.session_hours)


@dataclass(frozen=True)
class MetaConfig:
    """Per-regime meta-learners: estimator, calibration, window, splits and acceptance.

    model_type: "logistic" (StandardScaler + L2 LogisticRegression in a Pipeline) or
    "gradient_boosting" (HistGradientBoostingClassifier), with training.DEFAULT_PARAMS overridden by
    `params`. calibration defaults to Platt scaling: a regime has a few hundred out-of-fold rows, on
    which an isotonic step function follows noise. lookback_bars: only the latest usable rows (None =
    all); the hold-out is the last splits.holdout_fraction of them. max_ece: a model whose calibrated
    out-of-fold ECE is above it is reported as not usable (the ensemble applies its own max_ece).
    """

    model_type: MetaModelType = "logistic"
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 42
    calibration: CalibrationChoice = "sigmoid"
    n_bins: int = 10
    lookback_bars: int | None = None
    min_samples_per_regime: int = 100
    splits: SplitConfig = field(default_factory=_default_splits)
    max_ece: float = 0.15
    target: str = "y"

    def __post_init__(self) -> None:
        _check_model_type(self.model_type)
        if self.lookback_bars is not None and self.lookback_bars < 1:
            raise MetaLayerError(f"lookback_bars must be None or >= 1, got {self.lookback_bars!r}")
        if self.min_samples_per_regime < 1:
            raise MetaLayerError(
                f"min_samples_per_regime must be >= 1, got {self.min_samples_per_regime!r}"
            )
        _check_fraction("max_ece", self.max_ece)


@dataclass(frozen=True)
class MetaFilterConfig:
    """Meta-labelling filter: a primary trade is kept when its calibrated probability of reaching
    take-profit before the stop is >= threshold. Events are labelled with backtest's barriers;
    fewer than min_events labelled development events skips training."""

    threshold: float = 0.58
    model_type: MetaModelType = "logistic"
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 42
    calibration: CalibrationChoice = "sigmoid"
    n_bins: int = 10
    min_events: int = 100
    min_agreement: float = 0.5
    splits: SplitConfig = field(default_factory=_default_splits)
    backtest: BacktestSettings = field(default_factory=BacktestSettings)

    def __post_init__(self) -> None:
        _check_model_type(self.model_type)
        _check_fraction("threshold", self.threshold, low_open=False)
        _check_fraction("min_agreement", self.min_agreement)


def _model_config(config: MetaConfig | MetaFilterConfig) -> ModelConfig:
    """training.ModelConfig of a meta model (its estimator, seed, params and calibration)."""
    return ModelConfig(
        config.model_type, config.seed, dict(config.params), config.calibration, config.n_bins
    )


@dataclass(frozen=True)
class EnsembleConfig:
    """How `ensemble_signals` combines the meta-learners with the vote.

    mode "filter": the vote's side is traded (size 1) only where the meta probability of that side
    is >= min_confidence. "weighted": size = 2 x p_side - 1 clipped to [0, 1], the edge over a coin
    flip. A regime's meta-learner is used only when its calibrated out-of-fold ECE is <= max_ece.
    min_agreement: the |vote score| below which the vote is flat (see `voting`).
    """

    mode: EnsembleMode = "filter"
    max_ece: float = 0.15
    min_confidence: float = 0.55
    min_agreement: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ENSEMBLE_MODES:
            raise MetaLayerError(f"unknown ensemble mode {self.mode!r}; expected {ENSEMBLE_MODES}")
        _check_fraction("max_ece", self.max_ece)
        _check_fraction("min_confidence", self.min_confidence, low_open=False)
        _check_fraction("min_agreement", self.min_agreement)


# ---------------------------------------------------------------------------------------------------
# features and voting


def _require(frame: pl.DataFrame, columns: list[str] | tuple[str, ...], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            where, f"missing columns {missing}", detail=f"has {frame.columns}"
        )


def _complete(columns: list[str]) -> pl.Expr:
    """True where every one of `columns` is non-null and finite."""
    return pl.all_horizontal(
        pl.col(c).cast(pl.Float64).is_finite().fill_null(False) for c in columns
    )


def _check_values(frame: pl.DataFrame, column: str, allowed: tuple, where: str) -> None:
    values = frame.get_column(column)
    if values.dtype == pl.Categorical or isinstance(values.dtype, pl.Enum):
        values = values.cast(pl.String)
    bad = (values.is_not_null() & ~values.is_in(list(allowed))).arg_true()
    if len(bad):
        row = int(bad[0])
        raise DataValidationError(
            where, f"{column} must be one of {allowed} or null", row=row, detail=repr(values[row])
        )


def _check_primaries(frame: pl.DataFrame, where: str) -> None:
    _require(frame, [f"{p}_{part}" for p in PRIMARIES for part in ("side", "conf")], where)
    for p in PRIMARIES:
        _check_values(frame, f"{p}_side", (-1, 0, 1), where)


def _one_hot(column: str, values: tuple[str, ...]) -> list[pl.Expr]:
    text = pl.col(column).cast(pl.String)
    return [(text == v).cast(pl.Float64).alias(f"{column}_{v}") for v in values]


def meta_features(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The meta-learners' features, one row per row of `frame`, and their names in order.

    Each primary's side and confidence ({trend,meanrev,breakout}_{side,conf}), one-hot regime
    (regime_bull, regime_bear, regime_range, regime_neutral) and vol bucket (vol_bucket_low/mid/high),
    atr_14_frac, vol_20, ret_20, rsi_14, and prob_up when the frame has it. All Float64; a null
    input (warm-up, unknown regime) stays null, so such rows are never fitted nor scored.
    """
    where = "meta_features(frame)"
    _check_primaries(frame, where)
    _require(frame, ["regime", "vol_bucket", *_MARKET_FEATURES], where)
    _check_values(frame, "regime", REGIMES, where)
    _check_values(frame, "vol_bucket", VOL_BUCKETS, where)
    extra = ("prob_up",) if "prob_up" in frame.columns else ()
    exprs = [
        *(pl.col(f"{p}_{part}").cast(pl.Float64) for p in PRIMARIES for part in ("side", "conf")),
        *_one_hot("regime", REGIMES),
        *_one_hot("vol_bucket", VOL_BUCKETS),
        *(pl.col(c).cast(pl.Float64) for c in (*_MARKET_FEATURES, *extra)),
    ]
    features = frame.select(exprs)
    return features, features.columns


def voting(frame: pl.DataFrame, min_agreement: float = 0.5) -> pl.DataFrame:
    """Confidence-weighted vote of the primary signals, one row per row of `frame`.

    vote_score = sum(side x conf) / sum(conf over the primaries with a non-zero side), in [-1, 1]
    (0 when none is active); vote_side = sign(vote_score) where |vote_score| >= min_agreement, else
    0; vote_conf = |vote_score|. The score measures agreement among the active primaries, not their
    strength: a single active primary scores +-1 whatever its confidence. Null sides or
    confidences count as 0 (inactive).
    """
    _check_primaries(frame, "voting(frame)")
    _check_fraction("min_agreement", min_agreement)
    side = [pl.col(f"{p}_side").cast(pl.Float64).fill_null(0.0) for p in PRIMARIES]
    conf = [pl.col(f"{p}_conf").cast(pl.Float64).fill_null(0.0) for p in PRIMARIES]
    weighted = pl.sum_horizontal(s * c for s, c in zip(side, conf, strict=True))
    active = pl.sum_horizontal(c * (s != 0) for s, c in zip(side, conf, strict=True))
    score = pl.when(active > 0).then(weighted / active).otherwise(0.0)
    return frame.select(score.alias("vote_score")).with_columns(
        pl.when(pl.col("vote_score").abs() >= min_agreement)
        .then(pl.col("vote_score").sign())
        .otherwise(0)
        .cast(pl.Int8)
        .alias("vote_side"),
        pl.col("vote_score").abs().alias("vote_conf"),
    )


def primary_side(frame: pl.DataFrame, primary: Primary, min_agreement: float = 0.5) -> pl.DataFrame:
    """side (Int8, null read as 0) and conf (Float64) of one primary, or of the vote ("vote")."""
    if primary not in PRIMARY_CHOICES:
        raise MetaLayerError(f"unknown primary {primary!r}; expected one of {PRIMARY_CHOICES}")
    if primary == "vote":
        votes = voting(frame, min_agreement)
        return votes.select(side=pl.col("vote_side"), conf=pl.col("vote_conf"))
    _check_primaries(frame, f"primary_side(frame, {primary!r})")
    return frame.select(
        side=pl.col(f"{primary}_side").fill_null(0).cast(pl.Int8),
        conf=pl.col(f"{primary}_conf").cast(pl.Float64),
    )


# ---------------------------------------------------------------------------------------------------
# models


@dataclass(frozen=True, eq=False)
class MetaModel:
    """A fitted meta model (a regime's meta-learner, or a meta-labelling filter): the estimator, the
    calibrator fitted on its out-of-fold predictions, its features and its training metrics
    (training.train_with_cv names: oof_*, oof_*_calibrated, holdout_*, ...)."""

    name: str
    estimator: Any
    calibrator: Calibrator | None
    feature_columns: list[str]
    model_type: str
    metrics: dict[str, float]

    @property
    def ece(self) -> float:
        """Calibrated out-of-fold expected calibration error (NaN when unknown)."""
        return float(self.metrics.get("oof_ece_calibrated", math.nan))

    def predict_proba(self, features: pl.DataFrame) -> np.ndarray:
        """Calibrated P(y = 1) per row of `features`; NaN where a feature is null or not finite."""
        where = f"MetaModel {self.name!r}.predict_proba(features)"
        _require(features, self.feature_columns, where)
        complete = features.select(_complete(self.feature_columns)).to_series()
        out = np.full(features.height, np.nan)
        rows = complete.to_numpy()
        if rows.any():
            p = np.asarray(
                predict_proba(
                    self.estimator,
                    self.calibrator,
                    features.filter(complete),
                    self.feature_columns,
                ),
                dtype=np.float64,
            )
            if p.shape != (int(rows.sum()),) or not ((p >= 0) & (p <= 1)).all():
                raise MetaLayerError(
                    f"{where}: expected {int(rows.sum())} probabilities in [0, 1], got shape "
                    f"{p.shape} with range [{np.nanmin(p, initial=np.inf)}, "
                    f"{np.nanmax(p, initial=-np.inf)}]"
                )
            out[rows] = p
        return out

    def artifacts(self) -> tuple[Any, dict[str, Any] | None, list[str]]:
        """(estimator, calibrator as a JSON-ready dict or None, feature list): what the Dagster
        layer logs with tracking.Tracker (log_model with the estimator's model_type, the calibrator
        and features as JSON)."""
        calibrator = None if self.calibrator is None else self.calibrator.to_dict()
        return self.estimator, calibrator, list(self.feature_columns)

    @classmethod
    def from_artifacts(
        cls,
        name: str,
        estimator: Any,
        calibrator: dict[str, Any] | None,
        feature_columns: list[str],
        model_type: str,
        metrics: dict[str, float],
    ) -> MetaModel:
        """Rebuild a MetaModel from `artifacts()` (and the metrics logged beside it)."""
        return cls(
            name,
            estimator,
            None if calibrator is None else Calibrator.from_dict(calibrator),
            list(feature_columns),
            model_type,
            dict(metrics),
        )


def _meta_model(name: str, result: TrainingResult, model_type: str) -> MetaModel:
    return MetaModel(
        name,
        result.model,
        result.calibrator,
        list(result.feature_columns),
        model_type,
        {**result.overall_metrics, **result.holdout_metrics},
    )


def _plan(data: pl.DataFrame, splits: SplitConfig) -> SplitPlan:
    return make_splits(
        splits.scheme,
        data.height,
        data.get_column("t0"),
        data.get_column("t1"),
        holdout_fraction=splits.holdout_fraction,
        **splits.scheme_params(),
    )


def _restrict_plan(plan: SplitPlan, rows: np.ndarray) -> SplitPlan:
    """`plan` seen through the sorted subset `rows` of its dataset, as positions within the subset.

    Purging and the hold-out stay those of the whole dataset: a label span overlapping a test span
    leaks whichever regime the two rows are in. Folds whose test block holds none of the rows go;
    fold counts (n_purged, n_embargoed) are the whole dataset's.
    """

    def local(idx: np.ndarray) -> np.ndarray:
        return np.searchsorted(rows, idx[np.isin(idx, rows)])

    folds = [
        Fold(f.fold, local(f.train_idx), local(f.test_idx), f.n_purged, f.n_embargoed)
        for f in plan.folds
    ]
    return SplitPlan(
        plan.scheme,
        local(plan.dev_idx),
        local(plan.holdout_idx),
        plan.n_holdout_purged,
        [f for f in folds if f.test_idx.size],
    )


@dataclass(frozen=True, eq=False)
class MetaTrainingReport:
    """What `train_meta_learners` did.

    models: every regime, None when skipped. results: train_with_cv's result per regime (its oof
    and holdout frames' `row` are positions in `data`). data: the rows trained and held out on
    (timestamp, t0, t1, regime, features, y, sample_weight). plan: the split of `data`. summary: one
    row per regime: regime, status ("trained"/"skipped"), reason, n_rows, n_dev, n_holdout, the
    calibrated oof_/holdout_ metrics (roc_auc, brier, ece, log_loss, accuracy) and within_max_ece.
    """

    models: dict[str, MetaModel | None]
    results: dict[str, TrainingResult | SkippedTraining]
    data: pl.DataFrame
    plan: SplitPlan
    summary: pl.DataFrame
    feature_columns: list[str]
    config: MetaConfig


def train_meta_learners(
    frame: pl.DataFrame, config: MetaConfig | None = None
) -> MetaTrainingReport:
    """One meta-learner per regime of `frame`, predicting `config.target` (y: long take-profit first)
    from `meta_features`, each fitted on that regime's rows only.

    Rows without a target, t1 or complete features are dropped; `lookback_bars` keeps the latest.
    One split plan (make_splits with config.splits on t0/t1, as the training pipeline does) is made
    over all kept rows and each regime uses its rows of it, so the hold-out (the last rows overall)
    is never fitted and purging holds across regimes. Each regime is trained by
    training.train_with_cv (folds, OOF calibration, final refit on development rows, hold-out
    scores). A regime is skipped, with the reason, below min_samples_per_regime development rows or
    with a single class; train_with_cv's own skips (a fold of one class) are recorded too.
    """
    config = config or MetaConfig()
    where = "train_meta_learners(frame)"
    _require(frame, ["timestamp", "t0", "t1", config.target], where)
    features, names = meta_features(frame)
    weight = (
        pl.col("sample_weight").cast(pl.Float64)
        if "sample_weight" in frame.columns
        else pl.lit(1.0)
    )
    data = (
        frame.select(
            "timestamp",
            "t0",
            "t1",
            pl.col("regime").cast(pl.String),
            pl.col(config.target).cast(pl.Int8).alias("y"),
            weight.alias("sample_weight"),
        )
        .hstack(features)
        .filter(pl.col("y").is_not_null() & pl.col("t1").is_not_null() & _complete(names))
    )
    if config.lookback_bars is not None:
        data = data.tail(config.lookback_bars)
    _check_values(data, "y", (0, 1), where)
    plan = _plan(data, config.splits)
    regime = data.get_column("regime").to_numpy()
    y = data.get_column("y").to_numpy()
    minimum = config.min_samples_per_regime

    models: dict[str, MetaModel | None] = {}
    results: dict[str, TrainingResult | SkippedTraining] = {}
    rows_out = []
    for name in REGIMES:
        rows = np.flatnonzero(regime == name)
        sub = _restrict_plan(plan, rows)
        n_dev, n_hold = int(sub.dev_idx.size), int(sub.holdout_idx.size)
        classes = np.unique(y[rows[sub.dev_idx]])
        if n_dev < minimum:
            result: TrainingResult | SkippedTraining = SkippedTraining(
                f"{n_dev} rows < min_samples_per_regime={minimum}", n_dev, n_hold
            )
        elif classes.size < 2:
            result = SkippedTraining(
                f"single class: all {n_dev} development rows have y={int(classes[0])}",
                n_dev,
                n_hold,
            )
        else:
            dataset = TrainingDataset(data[rows], names, {"rows_out": rows.size}, "take_profit")
            result = train_with_cv(dataset, sub, _model_config(config), min_rows=minimum)
        results[name] = result
        trained = isinstance(result, TrainingResult)
        models[name] = _meta_model(name, result, config.model_type) if trained else None
        metrics = {**result.overall_metrics, **result.holdout_metrics} if trained else {}
        row = {
            "regime": name,
            "status": "trained" if trained else "skipped",
            "reason": None if trained else result.reason,
            "n_rows": int(rows.size),
            "n_dev": n_dev,
            "n_holdout": n_hold,
        }
        for part in ("oof", "holdout"):
            for m in METRIC_NAMES:
                row[f"{part}_{m}"] = float(metrics.get(f"{part}_{m}_calibrated", math.nan))
        row["within_max_ece"] = trained and row["oof_ece"] <= config.max_ece
        rows_out.append(row)
    summary = pl.DataFrame(
        rows_out,
        schema={
            "regime": pl.String,
            "status": pl.String,
            "reason": pl.String,
            "n_rows": pl.Int64,
            "n_dev": pl.Int64,
            "n_holdout": pl.Int64,
            **{f"{part}_{m}": pl.Float64 for part in ("oof", "holdout") for m in METRIC_NAMES},
            "within_max_ece": pl.Boolean,
        },
    )
    return MetaTrainingReport(models, results, data, plan, summary, names, config)


# ---------------------------------------------------------------------------------------------------
# meta-labelling filter


def meta_labels(
    frame: pl.DataFrame,
    side_column: str,
    tp_mult: float,
    sl_mult: float,
    horizon: int,
    timeframe: str,
) -> pl.DataFrame:
    """Meta-labels of the primary trades in `frame[side_column]` (+1 long, -1 short, 0/null none).

    A trade enters at the bar's close with triple barriers on its side (labels.triple_barrier_labels
    with side=, atr = atr_14_frac x close): meta_label = 1 when take-profit is hit first, 0 on the
    stop or the vertical barrier; null where the side is 0 (not an event) or the outcome is not
    known yet. Columns: timestamp, side, meta_label (Int8), t1, barrier, trade_ret (side x the
    label's price return: the trade's gross return), holding_bars.
    """
    where = f"meta_labels(frame, {side_column!r})"
    _require(
        frame, ["timestamp", "open", "high", "low", "close", "atr_14_frac", side_column], where
    )
    side = frame.get_column(side_column).fill_null(0).cast(pl.Int8)
    tb = triple_barrier_labels(
        frame["timestamp"],
        frame["open"],
        frame["high"],
        frame["low"],
        frame["close"],
        frame["atr_14_frac"] * frame["close"],
        timeframe=timeframe,
        horizon=horizon,
        tp_mult=tp_mult,
        sl_mult=sl_mult,
        side=side,
    )
    return tb.select(
        "timestamp",
        side.alias("side"),
        (pl.col("label") == 1).cast(pl.Int8).alias("meta_label"),
        "t1",
        "barrier",
        (pl.col("ret") * side.cast(pl.Float64)).alias("trade_ret"),
        "holding_bars",
    )


def filter_features(
    frame: pl.DataFrame, primary: Primary, min_agreement: float = 0.5
) -> tuple[pl.DataFrame, list[str]]:
    """The meta-labelling filter's features, one row per row of `frame`, and their names.

    primary_side and primary_conf (of `primary`), atr_14_frac, vol_20, volume_ratio_20, bar_range =
    (high - low) / close of the bar itself as the spread proxy (Corwin-Schultz needs two bars and is
    often negative at bar level; the range mixes spread and volatility, which is what a filter of
    costly bars needs), and hour_sin/hour_cos of hour_of_day when the frame has it (intraday).
    """
    where = "filter_features(frame)"
    _require(frame, ["high", "low", "close", *_FILTER_MARKET_FEATURES], where)
    chosen = primary_side(frame, primary, min_agreement)
    angle = pl.col("hour_of_day").cast(pl.Float64) * (2 * math.pi / 24)
    hours = (
        [angle.sin().alias("hour_sin"), angle.cos().alias("hour_cos")]
        if "hour_of_day" in frame.columns
        else []
    )
    features = chosen.select(
        pl.col("side").cast(pl.Float64).alias("primary_side"),
        pl.col("conf").alias("primary_conf"),
    ).hstack(
        frame.select(
            *(pl.col(c).cast(pl.Float64) for c in _FILTER_MARKET_FEATURES),
            ((pl.col("high") - pl.col("low")) / pl.col("close")).alias("bar_range"),
            *hours,
        )
    )
    return features, features.columns


@dataclass(frozen=True, eq=False)
class MetaFilterResult:
    """What `train_meta_filter` did. events: one row per labelled primary trade with complete
    features (frame_row = its position in the input frame, timestamp, t0, t1, features, y,
    sample_weight, barrier, trade_ret); plan: the split of `events`; model: None when skipped."""

    primary: str
    timeframe: str
    config: MetaFilterConfig
    events: pl.DataFrame
    feature_columns: list[str]
    plan: SplitPlan
    training: TrainingResult | SkippedTraining
    model: MetaModel | None


def train_meta_filter(
    frame: pl.DataFrame,
    primary: Primary = "trend",
    config: MetaFilterConfig | None = None,
    *,
    timeframe: str,
) -> MetaFilterResult:
    """Meta-labelling (López de Prado): learn P(take-profit first) of `primary`'s trades.

    Events are the bars where the primary has a side; their meta_labels are the target, their
    average uniqueness (labels.sample_weights) the sample weight, their label spans [bar, t1] the
    purging spans of a make_splits plan over the events (hold-out = the latest events). Training
    is training.train_with_cv; fewer than config.min_events development events skips it.
    """
    config = config or MetaFilterConfig()
    settings = config.backtest
    features, names = filter_features(frame, primary, config.min_agreement)
    labels = meta_labels(
        frame.with_columns(features.get_column("primary_side").alias("_primary_side")),
        "_primary_side",
        settings.tp_mult,
        settings.sl_mult,
        settings.horizon,
        timeframe,
    )
    events = (
        pl.concat(
            [
                frame.select("timestamp", pl.col("timestamp").alias("t0")),
                features,
                labels.select("t1", pl.col("meta_label").alias("y"), "barrier", "trade_ret"),
            ],
            how="horizontal",
        )
        .with_row_index("frame_row")
        .with_columns(pl.col("frame_row").cast(pl.Int64))
        .filter(pl.col("y").is_not_null() & _complete(names))
    )
    events = events.with_columns(
        sample_weight=pl.Series(
            sample_weights(events["t0"], events["t1"], timestamps=frame["timestamp"])
        )
    )
    plan = _plan(events, config.splits)
    dataset = TrainingDataset(events, names, {"rows_out": events.height}, "take_profit")
    training = train_with_cv(dataset, plan, _model_config(config), min_rows=config.min_events)
    model = (
        _meta_model(f"filter_{primary}", training, config.model_type)
        if isinstance(training, TrainingResult)
        else None
    )
    return MetaFilterResult(primary, timeframe, config, events, names, plan, training, model)


def filter_report(frame: pl.DataFrame, result: MetaFilterResult) -> EnsembleComparison:
    """Unfiltered primary trades against the filtered ones (calibrated prob >= threshold) on the
    filter's hold-out events, backtested by `compare_ensembles` over the frame's bars from the first
    hold-out event to the end of `frame` (the frame the filter was trained on).

    summary rows "unfiltered" and "filtered" get two more columns: signals (events traded) and
    precision (share of them whose take-profit was hit first; NaN with none).
    """
    if result.model is None:
        raise MetaLayerError(
            f"filter_report: the {result.primary!r} meta filter was not trained: "
            f"{result.training.reason}"
        )
    hold = result.plan.holdout_idx
    if hold.size == 0:
        raise MetaLayerError("filter_report: the meta filter's split plan has no hold-out events")
    held = result.events[hold]
    prob = result.training.holdout.get_column("prob_cal").to_numpy()
    start = int(held["frame_row"][0])
    window = frame[start:]
    local = held.get_column("frame_row").to_numpy() - start
    side = held.get_column("primary_side").to_numpy()
    y = held.get_column("y").to_numpy()
    taken = prob >= result.config.threshold
    unfiltered = np.zeros(window.height)
    unfiltered[local] = side
    filtered = np.zeros(window.height)
    filtered[local[taken]] = side[taken]
    comparison = compare_ensembles(
        window,
        window,
        {"unfiltered": pl.Series(unfiltered), "filtered": pl.Series(filtered)},
        result.timeframe,
        result.config.backtest,
    )

    def precision(hits: np.ndarray) -> float:
        return float(hits.mean()) if hits.size else math.nan

    summary = comparison.summary.with_columns(
        pl.Series("signals", [int(side.size), int(taken.sum())], dtype=pl.Int64),
        pl.Series("precision", [precision(y), precision(y[taken])], dtype=pl.Float64),
    )
    return EnsembleComparison(summary, comparison.per_bar)


# ---------------------------------------------------------------------------------------------------
# ensemble


@dataclass(frozen=True, eq=False)
class EnsembleResult:
    """signals: one row per row of the input: timestamp, regime, side (Int8), size (Float64 in
    [0, 1], 0 when flat), source ("meta"/"voting": what decided the row's regime), meta_prob (the
    meta-learner's calibrated P(y = 1), null where not used), vote_score. fallbacks: (regime,
    reason) of each regime present in the frame that fell back to voting."""

    signals: pl.DataFrame
    fallbacks: list[tuple[str, str]]
    config: EnsembleConfig


def _unusable(model: MetaModel | None, regime: str, max_ece: float) -> str | None:
    if model is None:
        return f"no meta-learner for regime {regime!r}"
    if not model.ece <= max_ece:
        return f"calibrated OOF ECE {model.ece:.4f} > max_ece={max_ece}"
    return None


def ensemble_signals(
    frame: pl.DataFrame,
    meta_models: Mapping[str, MetaModel | None],
    config: EnsembleConfig | None = None,
) -> EnsembleResult:
    """Per-row side and size from the regime's meta-learner and the vote of the primaries.

    A regime's rows use its meta-learner when there is one and its calibrated OOF ECE is <= max_ece;
    otherwise, or when predicting raises (any exception: the signal must not stop because a model
    broke), they degrade to `voting`, and the regime and reason are recorded in `fallbacks`.
    Meta rows: the candidate side is the vote's; p_side = meta_prob for a long and 1 - meta_prob for
    a short (meta-learners predict y, the long take-profit: the complement is a fair short
    probability only for a symmetric target, see docs/meta_layer_learning.md); mode filter trades
    size 1 where p_side >= min_confidence, mode weighted trades size clip(2 p_side - 1, 0, 1). Voting
    rows: the vote's side, size 1 (filter) or vote_conf (weighted). Flat: gate False or null,
    regime null, and meta rows with incomplete features. Every row uses only its own columns.
    """
    config = config or EnsembleConfig()
    where = "ensemble_signals(frame)"
    _require(frame, ["timestamp", "regime", "gate"], where)
    votes = voting(frame, config.min_agreement)
    features, _ = meta_features(frame)
    regime = frame.get_column("regime").cast(pl.String)
    n = frame.height
    prob = np.full(n, np.nan)
    from_meta = np.zeros(n, dtype=bool)
    fallbacks: list[tuple[str, str]] = []
    for name in REGIMES:
        rows = np.flatnonzero((regime == name).fill_null(False).to_numpy())
        if rows.size == 0:
            continue
        model = meta_models.get(name)
        reason = _unusable(model, name, config.max_ece)
        if reason is None:
            try:
                p = model.predict_proba(features[rows])
            except Exception as exc:  # whatever broke in the model, the signal degrades to voting
                reason = f"predict raised {type(exc).__name__}: {exc}"
        if reason is not None:
            fallbacks.append((name, reason))
            continue
        prob[rows] = p
        from_meta[rows] = True

    vote_side = votes.get_column("vote_side").to_numpy().astype(np.float64)
    p_side = np.where(vote_side > 0, prob, 1.0 - prob)
    with np.errstate(invalid="ignore"):
        if config.mode == "filter":
            meta_size = (p_side >= config.min_confidence).astype(np.float64)
            vote_size = np.ones(n)
        else:
            meta_size = np.nan_to_num(np.clip(2.0 * p_side - 1.0, 0.0, 1.0), nan=0.0)
            vote_size = votes.get_column("vote_conf").to_numpy()
    size = np.where(from_meta, meta_size, vote_size)
    live = (
        frame.get_column("gate").fill_null(False).to_numpy()
        & regime.is_not_null().to_numpy()
        & (vote_side != 0)
    )
    size = np.where(live, size, 0.0)
    signals = pl.DataFrame(
        {
            "timestamp": frame.get_column("timestamp"),
            "regime": regime,
            "side": pl.Series(np.where(size > 0, vote_side, 0.0), dtype=pl.Float64).cast(pl.Int8),
            "size": pl.Series(size, dtype=pl.Float64),
            "source": pl.Series(np.where(from_meta, "meta", "voting"), dtype=SOURCE_DTYPE),
            "meta_prob": pl.Series(prob, dtype=pl.Float64).fill_nan(None),
            "vote_score": votes.get_column("vote_score"),
        }
    )
    return EnsembleResult(signals, fallbacks, config)


# ---------------------------------------------------------------------------------------------------
# backtest comparison


@dataclass(frozen=True, eq=False)
class EnsembleComparison:
    """summary: one row per variant: variant and COMPARISON_METRICS. per_bar: each variant's
    backtest per_bar frame (timestamp, position, ..., equity), ready for plots.equity_curve_png."""

    summary: pl.DataFrame
    per_bar: dict[str, pl.DataFrame]


def _variant_arrays(
    name: str, variant: pl.DataFrame | pl.Series, n: int
) -> tuple[pl.Series, pl.Series]:
    where = f"compare_ensembles(variants[{name!r}])"
    if isinstance(variant, pl.Series):
        side, size = variant, pl.Series(np.ones(variant.len()))
    else:
        _require(variant, ["side"], where)
        side = variant.get_column("side")
        size = variant.get_column("size") if "size" in variant.columns else pl.Series(np.ones(n))
    if side.len() != n:
        raise DataValidationError(
            where, f"has {side.len()} rows but frame_holdout has {n}; give one side per row"
        )
    return side.fill_null(0).cast(pl.Int8), size.fill_null(0.0).cast(pl.Float64)


def _orders(
    frame: pl.DataFrame, side: pl.Series, size: pl.Series, settings: BacktestSettings
) -> pl.DataFrame:
    """Backtest orders of per-bar sides: signals.position_changes with barrier levels, carrying each
    signal bar's size (position_changes trades size 1)."""
    atr = pl.col("atr_14_frac") * pl.col("close")
    signed = pl.col("side").cast(pl.Float64)
    trading = pl.col("side") != 0
    signals = (
        frame.select("timestamp", "close", "atr_14_frac")
        .with_columns(side=side, _size=size)
        .select(
            "timestamp",
            "side",
            "_size",
            pl.when(trading)
            .then(pl.col("close") - signed * settings.sl_mult * atr)
            .alias("stop_loss"),
            pl.when(trading)
            .then(pl.col("close") + signed * settings.tp_mult * atr)
            .alias("take_profit"),
        )
    )
    orders = position_changes(signals, settings.horizon)
    return orders.join(signals.select("timestamp", "_size"), on="timestamp", how="left").select(
        "timestamp",
        "side",
        pl.when(pl.col("side") != 0).then(pl.col("_size")).otherwise(0.0).alias("size"),
        "stop_loss",
        "take_profit",
    )


def compare_ensembles(
    frame_holdout: pl.DataFrame,
    bars: pl.DataFrame,
    variants: Mapping[str, pl.DataFrame | pl.Series],
    timeframe: str,
    settings: BacktestSettings | None = None,
) -> EnsembleComparison:
    """Backtest every variant on the same hold-out with backtest.run_backtest and
    performance.performance_metrics, as the champion/challenger evaluation does.

    frame_holdout: the hold-out rows (timestamp, close, atr_14_frac). variants: per name, one side
    per row of frame_holdout, as a Series of sides or a frame with side and optional size (default
    1). Orders come from `_orders` (barrier stops, holding settings.horizon bars); the backtest runs
    on the bars from the first to the last hold-out timestamp.
    """
    settings = settings or BacktestSettings()
    _require(
        frame_holdout, ["timestamp", "close", "atr_14_frac"], "compare_ensembles(frame_holdout)"
    )
    if frame_holdout.is_empty():
        raise DataValidationError("compare_ensembles(frame_holdout)", "no hold-out rows")
    ts = frame_holdout.get_column("timestamp")
    window = bars.filter(pl.col("timestamp").is_between(ts.min(), ts.max()))
    ppy = settings.periods_per_year(timeframe)
    rows, per_bar = [], {}
    for name, variant in variants.items():
        side, size = _variant_arrays(name, variant, frame_holdout.height)
        result = run_backtest(
            window,
            _orders(frame_holdout, side, size, settings),
            timeframe=timeframe,
            delay=settings.delay,
            fee_bps=settings.fee_bps,
            slippage_bps=settings.slippage_bps,
            use_stops=settings.use_stops,
        )
        metrics = performance_metrics(result, None, ppy)
        rows.append({"variant": name, **{k: float(metrics[k]) for k in COMPARISON_METRICS}})
        per_bar[name] = result.per_bar
    summary = pl.DataFrame(
        rows, schema={"variant": pl.String, **dict.fromkeys(COMPARISON_METRICS, pl.Float64)}
    )
    return EnsembleComparison(summary, per_bar)


def meta_frame(
    bars: pl.DataFrame,
    features: pl.DataFrame,
    primary: pl.DataFrame,
    regime: pl.DataFrame,
    labels: pl.DataFrame,
) -> pl.DataFrame:
    """The meta layer's input, one row per bar present in all five frames (time-sorted): the
    bar's open/high/low/close, the market features the meta models read (atr_14_frac, vol_20,
    ret_20, rsi_14, volume_ratio_20, hour_of_day when intraday), the primary signals, the regime
    columns, and the target of the direction model: y = 1 when the long triple barrier hit
    take-profit first (null while unlabelled), with its label span t0 (the bar) .. t1 and `ret`."""
    wanted = [*_MARKET_FEATURES, "volume_ratio_20", "hour_of_day"]
    feature_columns = [c for c in dict.fromkeys(wanted) if c in features.columns]
    return (
        bars.select("timestamp", "open", "high", "low", "close")
        .join(features.select("timestamp", *feature_columns), on="timestamp")
        .join(primary, on="timestamp")
        .join(regime.select("timestamp", "regime", "vol_bucket", "gate"), on="timestamp")
        .join(
            labels.select(
                "timestamp",
                pl.when(pl.col("label").is_not_null())
                .then((pl.col("label") == 1).cast(pl.Int8))
                .alias("y"),
                "t1",
                "ret",
            ),
            on="timestamp",
        )
        .with_columns(pl.col("timestamp").alias("t0"))
        .sort("timestamp")
    )


# ---------------------------------------------------------------------------------------------------
# degenerate partitions


def degenerate_meta_input(frame: pl.DataFrame, config: MetaConfig | None = None) -> str | None:
    """Why `train_meta_learners` cannot train on `frame` (a `meta_frame`) at all, or None.

    A partition whose prices never move or whose history is shorter than the features' warm-up
    plus the label horizon leaves no row to split; `meta_learner` skips it with this reason (as
    `challenger_model` does) instead of failing in the split. The rows checked are exactly those
    `train_meta_learners` fits on.
    """
    config = config or MetaConfig()
    reason = _degenerate_bars(frame)
    if reason:
        return reason
    features, names = meta_features(frame)
    labelled = frame.select(
        pl.col(config.target).is_not_null() & pl.col("t1").is_not_null()
    ).to_series()
    return _unsplittable(frame, labelled, features, names, config.splits, config.lookback_bars)


def degenerate_filter_input(
    frame: pl.DataFrame, primary: Primary, config: MetaFilterConfig | None = None
) -> str | None:
    """Why `train_meta_filter` cannot train on `frame` for `primary` at all, or None: no bars, no
    price movement, a filter feature undefined on every bar (volume_ratio_20 when the volume is
    zero throughout), or too few labelled bars where the primary trades to split."""
    config = config or MetaFilterConfig()
    reason = _degenerate_bars(frame)
    if reason:
        return reason
    features, names = filter_features(frame, primary, config.min_agreement)
    undefined = [c for c in names if features[c].fill_nan(None).null_count() == features.height]
    if undefined:
        zero_volume = "volume_ratio_20" in undefined
        why = " (the volume is zero on every bar)" if zero_volume else ""
        return f"filter feature(s) {', '.join(undefined)} undefined on all {frame.height} bars{why}"
    trades = frame.select(pl.col("y").is_not_null() & pl.col("t1").is_not_null()).to_series() & (
        features["primary_side"].fill_null(0) != 0
    )
    return _unsplittable(frame, trades, features, names, config.splits, None)


def _degenerate_bars(frame: pl.DataFrame) -> str | None:
    if frame.is_empty():
        return "no bar is present in all of ohlcv, features, primary_signals, regime and labels"
    if frame["close"].n_unique() == 1 and frame["high"].max() == frame["low"].min():
        return f"prices are constant ({frame['close'][0]!r}) on all {frame.height} bars"
    return None


def _unsplittable(
    frame: pl.DataFrame,
    candidates: pl.Series,
    features: pl.DataFrame,
    names: list[str],
    splits: SplitConfig,
    lookback_bars: int | None,
) -> str | None:
    from quant_assets.lib.errors import SplitConfigError

    complete = features.select(_complete(names)).to_series().fill_null(False)
    usable = frame.filter(candidates & complete)
    if lookback_bars is not None:
        usable = usable.tail(lookback_bars)
    if usable.is_empty():
        return (
            f"none of the {frame.height} bars is usable: {int(candidates.sum())} are labelled "
            f"candidates, {int(complete.sum())} have complete features (history shorter than "
            "the warm-up and the label horizon, or features undefined on this data)"
        )
    try:
        _plan(usable, splits)
    except SplitConfigError as exc:
        return f"{usable.height} usable bars are too few to split: {exc}"
    return None
