"""Meta layer: per-regime meta-learners (skips, hold-out and purging never leak), the meta-labelling
filter and its hold-out report, the ensemble's fallbacks to voting, hold-out backtests, and the
serving decision's deflated Sharpe ratio over every variant compared."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta
from statistics import NormalDist

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quant_assets.lib.backtest import run_backtest
from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.labels import triple_barrier_labels
from quant_assets.lib.meta import (
    COMPARISON_METRICS,
    BacktestSettings,
    EnsembleConfig,
    MetaConfig,
    MetaFilterConfig,
    MetaLayerError,
    MetaModel,
    compare_ensembles,
    ensemble_signals,
    filter_features,
    filter_report,
    meta_features,
    meta_labels,
    primary_side,
    train_meta_filter,
    train_meta_learners,
    voting,
)
from quant_assets.lib.overfitting import deflated_sharpe, sharpe_moments
from quant_assets.lib.performance import annualization, performance_metrics
from quant_assets.lib.promotion import GateConfig, evaluate_gates
from quant_assets.lib.sources.base import OHLCV_SCHEMA
from quant_assets.lib.trials import compared_selection
from quant_assets_tests.lib.bars_factory import make_bars

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
N_ROWS = 1500
RANGE_ROWS = slice(100, 140)  # 40 development rows of regime "range": below the minimum of 100


def _synthetic(n: int = N_ROWS, seed: int = 3) -> pl.DataFrame:
    """Bars with the meta layer's input columns. trend_side agrees with the realised label 70% of the
    time (a planted primary edge); the other primaries are noise. Regimes come in 50-bar blocks."""
    rng = np.random.default_rng(seed)
    bars = make_bars(n, "1h", seed=seed)
    atr_frac = ((pl.col("high") - pl.col("low")) / pl.col("close")).rolling_mean(14, min_samples=1)
    bars = bars.with_columns(atr_14_frac=atr_frac)
    tb = triple_barrier_labels(
        bars["timestamp"],
        bars["open"],
        bars["high"],
        bars["low"],
        bars["close"],
        bars["atr_14_frac"] * bars["close"],
        timeframe="1h",
        horizon=5,
    )
    y = (tb["label"] == 1).cast(pl.Int8)
    truth = np.where(y.fill_null(0).to_numpy() == 1, 1, -1)
    noise = rng.choice([-1, 0, 1], n)
    regime = np.array(["bull", "bear", "neutral"])[(np.arange(n) // 50) % 3]
    regime[RANGE_ROWS] = "range"
    return bars.with_columns(
        t0=pl.col("timestamp"),
        t1=tb["t1"],
        y=y,
        label=tb["label"],
        ret=tb["ret"],
        trend_side=pl.Series(np.where(rng.random(n) < 0.7, truth, noise), dtype=pl.Int8),
        meanrev_side=pl.Series(rng.choice([-1, 0, 1], n), dtype=pl.Int8),
        breakout_side=pl.Series(rng.choice([-1, 0, 1], n), dtype=pl.Int8),
        trend_conf=rng.uniform(0.3, 1.0, n),
        meanrev_conf=rng.uniform(0.0, 1.0, n),
        breakout_conf=rng.uniform(0.0, 1.0, n),
        regime=pl.Series(regime),
        vol_bucket=pl.Series(rng.choice(["low", "mid", "high"], n)),
        gate=pl.Series(rng.random(n) < 0.9),
        vol_20=rng.uniform(0.005, 0.02, n),
        ret_20=rng.normal(0.0, 0.05, n),
        rsi_14=rng.uniform(20.0, 80.0, n),
        volume_ratio_20=rng.lognormal(0.0, 0.3, n),
        hour_of_day=pl.col("timestamp").dt.hour(),
    )


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return _synthetic()


@pytest.fixture(scope="module")
def report(frame: pl.DataFrame):
    return train_meta_learners(frame, MetaConfig())


@pytest.fixture(scope="module")
def trend_filter(frame: pl.DataFrame):
    return train_meta_filter(frame, "trend", MetaFilterConfig(), timeframe="1h")


# ---------------------------------------------------------------------------------------------------
# features and voting


def _primaries(rows: list[tuple[int, float, int, float, int, float]], **extra) -> pl.DataFrame:
    columns = ("trend_side", "trend_conf", "meanrev_side", "meanrev_conf")
    columns += ("breakout_side", "breakout_conf")
    data = {name: [r[i] for r in rows] for i, name in enumerate(columns)}
    frame = pl.DataFrame(data).with_columns(pl.col("^.*_side$").cast(pl.Int8))
    return frame.with_columns(**{k: pl.Series(v) for k, v in extra.items()})


def test_voting_is_the_confidence_weighted_agreement_of_active_primaries() -> None:
    votes = voting(
        _primaries(
            [
                (1, 0.8, 1, 0.4, -1, 0.6),  # (0.8 + 0.4 - 0.6) / 1.8 = 1/3: below 0.5, flat
                (1, 0.9, 0, 0.5, 0, 0.1),  # one active primary: +1 whatever its confidence
                (0, 0.9, 0, 0.5, 0, 0.1),  # nobody active
                (-1, 0.6, -1, 0.2, 1, 0.2),  # (-0.6 - 0.2 + 0.2) / 1.0 = -0.6
            ]
        ),
        min_agreement=0.5,
    )
    assert votes["vote_score"].to_list() == pytest.approx([1 / 3, 1.0, 0.0, -0.6])
    assert votes["vote_side"].to_list() == [0, 1, 0, -1]
    assert votes["vote_conf"].to_list() == pytest.approx([1 / 3, 1.0, 0.0, 0.6])


def test_meta_features_one_hot_and_optional_prob_up(frame: pl.DataFrame) -> None:
    features, names = meta_features(frame.head(3))
    assert names[:6] == [
        "trend_side",
        "trend_conf",
        "meanrev_side",
        "meanrev_conf",
        "breakout_side",
        "breakout_conf",
    ]
    assert names[6:] == [
        "regime_bull",
        "regime_bear",
        "regime_range",
        "regime_neutral",
        "vol_bucket_low",
        "vol_bucket_mid",
        "vol_bucket_high",
        "atr_14_frac",
        "vol_20",
        "ret_20",
        "rsi_14",
    ]
    assert features["regime_bull"].to_list() == [1.0, 1.0, 1.0]
    assert features.select(pl.col("^vol_bucket_.*$")).sum_horizontal().to_list() == [1.0] * 3
    _, with_prob = meta_features(frame.head(3).with_columns(prob_up=pl.lit(0.6)))
    assert with_prob[-1] == "prob_up"
    with pytest.raises(DataValidationError, match="regime must be one of .* at row 1: 'sideways'"):
        meta_features(frame.head(3).with_columns(regime=pl.Series(["bull", "sideways", "bull"])))


def test_filter_features_spread_proxy_and_time_of_day(frame: pl.DataFrame) -> None:
    features, names = filter_features(frame.head(4), "trend")
    assert names == [
        "primary_side",
        "primary_conf",
        "atr_14_frac",
        "vol_20",
        "volume_ratio_20",
        "bar_range",
        "hour_sin",
        "hour_cos",
    ]
    head = frame.head(4)
    expected_range = ((head["high"] - head["low"]) / head["close"]).to_list()
    assert features["bar_range"].to_list() == pytest.approx(expected_range)
    # bars start at 00:00 UTC: hour 1 is 15 degrees round the clock
    assert features["hour_sin"][1] == pytest.approx(math.sin(2 * math.pi / 24))
    _, daily = filter_features(frame.head(4).drop("hour_of_day"), "vote")
    assert "hour_sin" not in daily and daily[0] == "primary_side"


# ---------------------------------------------------------------------------------------------------
# per-regime meta-learners


def test_regimes_below_minimum_are_skipped_with_the_reason(report) -> None:
    summary = report.summary
    assert summary["regime"].to_list() == ["bull", "bear", "range", "neutral"]
    status = dict(zip(summary["regime"], summary["status"], strict=True))
    assert status == {
        "bull": "trained",
        "bear": "trained",
        "range": "skipped",
        "neutral": "trained",
    }
    reason = summary.filter(pl.col("regime") == "range")["reason"][0]
    assert reason == "40 rows < min_samples_per_regime=100"
    assert report.models["range"] is None
    trained = summary.filter(pl.col("status") == "trained")
    # trend_side agrees with y 70% of the time: every regime's model finds it
    assert trained["oof_roc_auc"].min() > 0.65
    assert trained["holdout_roc_auc"].min() > 0.65
    assert trained["n_dev"].min() > 300 and trained["n_holdout"].min() > 80
    assert summary["n_rows"].sum() == report.data.height
    for m in ("brier", "ece", "log_loss", "accuracy"):
        assert trained[f"oof_{m}"].is_finite().all() and trained[f"holdout_{m}"].is_finite().all()
    assert trained["within_max_ece"].all()


def test_single_class_regime_is_skipped(frame: pl.DataFrame) -> None:
    bear_all_tp = frame.with_columns(
        y=pl.when(pl.col("regime") == "bear").then(1).otherwise(pl.col("y")).cast(pl.Int8)
    )
    summary = train_meta_learners(bear_all_tp, MetaConfig()).summary
    bear = summary.filter(pl.col("regime") == "bear")
    assert bear["status"][0] == "skipped"
    assert bear["reason"][0].startswith("single class: all ") and bear["reason"][0].endswith("y=1")
    assert summary.filter(pl.col("regime") == "bull")["status"][0] == "trained"


def _perturbed_y(frame: pl.DataFrame, timestamps: pl.Series) -> pl.DataFrame:
    return frame.with_columns(
        y=pl.when(pl.col("timestamp").is_in(timestamps.implode()))
        .then(1 - pl.col("y"))
        .otherwise(pl.col("y"))
    )


def test_holdout_rows_are_never_fitted(frame: pl.DataFrame, report) -> None:
    held = report.data["timestamp"].gather(report.plan.holdout_idx)
    again = train_meta_learners(_perturbed_y(frame, held), MetaConfig())
    dev = report.data[report.plan.dev_idx]
    for regime in ("bull", "bear", "neutral"):
        before, after = report.results[regime], again.results[regime]
        assert_frame_equal(before.oof, after.oof)
        model_before, model_after = report.models[regime], again.models[regime]
        assert model_before.calibrator.to_dict() == model_after.calibrator.to_dict()
        np.testing.assert_array_equal(
            model_before.predict_proba(dev), model_after.predict_proba(dev)
        )
        # the flipped labels do reach the hold-out scores: the comparison above has teeth
        assert before.holdout_metrics["holdout_roc_auc"] != after.holdout_metrics["holdout_roc_auc"]


def test_purged_and_embargoed_rows_never_train_their_fold(frame: pl.DataFrame, report) -> None:
    fold = report.plan.folds[2]
    used = np.concatenate([fold.train_idx, fold.test_idx])
    dropped = np.setdiff1d(report.plan.dev_idx, used)
    assert dropped.size >= 10  # label spans of 5 bars on both sides plus a 1% embargo
    again = train_meta_learners(
        _perturbed_y(frame, report.data["timestamp"].gather(dropped)), MetaConfig()
    )
    changed_elsewhere = False
    for regime in ("bull", "bear", "neutral"):
        before, after = report.results[regime].oof, again.results[regime].oof
        in_fold = pl.col("fold") == fold.fold
        assert_frame_equal(
            before.filter(in_fold).select("row", "prob_raw"),
            after.filter(in_fold).select("row", "prob_raw"),
        )
        changed_elsewhere |= not before.filter(~in_fold)["prob_raw"].equals(
            after.filter(~in_fold)["prob_raw"]
        )
    assert changed_elsewhere  # those rows do train the other folds


def test_lookback_keeps_the_latest_rows_and_gradient_boosting_trains(frame: pl.DataFrame) -> None:
    config = MetaConfig(
        model_type="gradient_boosting",
        params={"max_iter": 20, "max_bins": 15},
        lookback_bars=900,
    )
    report = train_meta_learners(frame, config)
    assert report.data.height == 900
    assert report.data["timestamp"][-1] == frame.drop_nulls("y")["timestamp"][-1]
    summary = report.summary
    assert summary.filter(pl.col("regime") == "range")["reason"][0] == (
        "0 rows < min_samples_per_regime=100"
    )
    assert summary.filter(pl.col("status") == "trained").height == 3
    assert report.models["bull"].model_type == "gradient_boosting"


def test_meta_model_artifacts_round_trip(report) -> None:
    model = report.models["bull"]
    estimator, calibrator, features = model.artifacts()
    assert calibrator["method"] == "sigmoid" and features == report.feature_columns
    rebuilt = MetaModel.from_artifacts(
        "bull", estimator, calibrator, features, model.model_type, model.metrics
    )
    np.testing.assert_array_equal(
        rebuilt.predict_proba(report.data), model.predict_proba(report.data)
    )
    assert rebuilt.ece == model.ece == model.metrics["oof_ece_calibrated"]


def test_configs_reject_unknown_choices() -> None:
    with pytest.raises(MetaLayerError, match="unknown model_type 'lightgbm'"):
        MetaConfig(model_type="lightgbm")
    with pytest.raises(MetaLayerError, match="unknown ensemble mode 'blend'"):
        EnsembleConfig(mode="blend")
    with pytest.raises(MetaLayerError, match="min_confidence must be in"):
        EnsembleConfig(min_confidence=1.5)


# ---------------------------------------------------------------------------------------------------
# ensemble


class _Raises:
    classes_ = np.array([0, 1])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")


class _Column:
    """Predicts P(y = 1) = one feature column, so probabilities can be chosen by hand."""

    classes_ = np.array([0, 1])

    def __init__(self, index: int) -> None:
        self.index = index

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = X[:, self.index]
        return np.column_stack([1.0 - p, p])


def test_fallbacks_to_voting_record_each_reason(frame: pl.DataFrame, report) -> None:
    bull = report.models["bull"]
    models = {
        "bull": bull,
        "bear": dataclasses.replace(bull, metrics={**bull.metrics, "oof_ece_calibrated": 0.3}),
        "neutral": dataclasses.replace(bull, estimator=_Raises()),
    }
    result = ensemble_signals(frame, models, EnsembleConfig())
    assert sorted(result.fallbacks) == [
        ("bear", "calibrated OOF ECE 0.3000 > max_ece=0.15"),
        ("neutral", "predict raised RuntimeError: boom"),
        ("range", "no meta-learner for regime 'range'"),
    ]
    signals = result.signals
    source = dict(signals.group_by("regime").agg(pl.col("source").unique()).iter_rows())
    assert source == {
        "bull": ["meta"],
        "bear": ["voting"],
        "neutral": ["voting"],
        "range": ["voting"],
    }
    votes = voting(frame)
    voted = signals.with_columns(vote_side=votes["vote_side"]).filter(
        (pl.col("source") == "voting") & frame["gate"]
    )
    assert (voted["side"] == voted["vote_side"]).all()
    assert voted["size"].to_list() == (voted["side"] != 0).cast(pl.Float64).to_list()
    assert signals.filter(pl.col("source") == "voting")["meta_prob"].is_null().all()
    assert signals.filter(pl.col("source") == "meta")["meta_prob"].is_not_null().all()


def _hand_frame(gate: list[bool] | None = None) -> pl.DataFrame:
    """Five bull rows; the stub model's P(y = 1) is trend_conf, the vote follows trend alone."""
    rows = [
        (1, 0.70, 0, 0.0, 0, 0.0),  # long, p_side 0.70
        (1, 0.50, 0, 0.0, 0, 0.0),  # long, p_side 0.50
        (-1, 0.10, 0, 0.0, 0, 0.0),  # short, p_side 0.90
        (-1, 0.60, 0, 0.0, 0, 0.0),  # short, p_side 0.40
        (1, 0.90, 0, 0.0, 0, 0.0),  # long, p_side 0.90
    ]
    n = len(rows)
    return _primaries(
        rows,
        timestamp=[T0 + i * HOUR for i in range(n)],
        regime=["bull"] * n,
        vol_bucket=["mid"] * n,
        gate=gate or [True] * n,
        atr_14_frac=[0.01] * n,
        vol_20=[0.01] * n,
        ret_20=[0.0] * n,
        rsi_14=[50.0] * n,
    )


def _stub_models(frame: pl.DataFrame) -> dict[str, MetaModel]:
    _, names = meta_features(frame)
    stub = MetaModel(
        "bull",
        _Column(names.index("trend_conf")),
        None,
        names,
        "logistic",
        {"oof_ece_calibrated": 0.02},
    )
    return {"bull": stub}


def test_filter_mode_vetoes_below_min_confidence_and_gate_false_is_flat() -> None:
    frame = _hand_frame(gate=[True, True, True, True, False])
    signals = ensemble_signals(frame, _stub_models(frame), EnsembleConfig(mode="filter")).signals
    assert signals["side"].to_list() == [1, 0, -1, 0, 0]
    assert signals["size"].to_list() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert signals["meta_prob"].to_list() == pytest.approx([0.7, 0.5, 0.1, 0.6, 0.9])
    assert signals["source"].to_list() == ["meta"] * 5


def test_weighted_mode_sizes_by_the_probability_of_the_side() -> None:
    frame = _hand_frame()
    signals = ensemble_signals(frame, _stub_models(frame), EnsembleConfig(mode="weighted")).signals
    # size = clip(2 p_side - 1, 0, 1)
    assert signals["size"].to_list() == pytest.approx([0.4, 0.0, 0.8, 0.0, 0.8])
    assert signals["side"].to_list() == [1, 0, -1, 0, 1]
    fallback = ensemble_signals(frame, {}, EnsembleConfig(mode="weighted")).signals
    assert fallback["size"].to_list() == [1.0] * 5  # a lone active primary: vote_conf 1
    assert fallback["source"].to_list() == ["voting"] * 5


def test_ensemble_rows_use_no_later_information(frame: pl.DataFrame, report) -> None:
    full = ensemble_signals(frame, report.models, EnsembleConfig(mode="weighted")).signals
    part = ensemble_signals(frame.head(700), report.models, EnsembleConfig(mode="weighted")).signals
    assert_frame_equal(part, full.head(700))
    assert (full["source"] == "meta").sum() > 1000
    assert 0 < (full["size"] > 0).sum() < frame.height


# ---------------------------------------------------------------------------------------------------
# meta-labelling filter


def _hand_bars(rows: list[tuple[float, float, float, float]], **extra) -> pl.DataFrame:
    o, h, lo, c = (list(col) for col in zip(*rows, strict=True))
    n = len(rows)
    bars = pl.DataFrame(
        {
            "timestamp": [T0 + i * HOUR for i in range(n)],
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": [1.0] * n,
        },
        schema=OHLCV_SCHEMA,
    )
    return bars.with_columns(
        atr_14_frac=pl.lit(0.01), **{k: pl.Series(v) for k, v in extra.items()}
    )


def test_meta_labels_of_long_and_short_trades() -> None:
    quiet = (100.0, 100.4, 99.6, 100.0)
    bars = _hand_bars(
        [
            (100.0, 100.2, 99.8, 100.0),  # long: TP 102, SL 99
            (100.0, 100.5, 99.5, 100.0),  # short: TP 98, SL 101
            (100.0, 102.5, 99.6, 100.0),  # long's TP and short's SL
            (100.0, 100.3, 97.5, 100.0),  # short: TP 98 (its own low does not count)
            (100.0, 100.2, 97.9, 100.0),  # the short's TP; long: nothing touched, vertical
            quiet,
            quiet,
            quiet,
        ],
        side=pl.Series([1, -1, 0, -1, 1, 1, 0, 0], dtype=pl.Int8),
    )
    labels = meta_labels(bars, "side", tp_mult=2.0, sl_mult=1.0, horizon=3, timeframe="1h")
    assert labels["meta_label"].to_list() == [1, 0, None, 1, 0, None, None, None]
    assert labels["barrier"].to_list()[:5] == ["tp", "sl", None, "tp", "vertical"]
    assert labels["trade_ret"].to_list()[:5] == pytest.approx([0.02, -0.01, None, 0.02, 0.0])
    assert labels["t1"][0] == T0 + 3 * HOUR  # the close of bar 2, where the TP was hit


def test_filter_report_on_the_holdout(frame: pl.DataFrame, trend_filter) -> None:
    assert trend_filter.model is not None
    assert trend_filter.model.metrics["oof_roc_auc_calibrated"] > 0.6
    events = trend_filter.events
    assert (events["primary_side"] != 0).all()
    report = filter_report(frame, trend_filter).summary
    assert report["variant"].to_list() == ["unfiltered", "filtered"]
    unfiltered, filtered = report.row(0, named=True), report.row(1, named=True)
    held = events[trend_filter.plan.holdout_idx]
    assert unfiltered["signals"] == held.height
    assert unfiltered["precision"] == pytest.approx(held["y"].sum() / held.height)
    prob = trend_filter.training.holdout["prob_cal"]
    kept = held.filter(prob >= 0.58)
    assert filtered["signals"] == kept.height <= unfiltered["signals"]
    assert filtered["precision"] == pytest.approx(kept["y"].mean())
    assert filtered["precision"] > unfiltered["precision"]  # trend_side's edge is learnable
    for name in ("trade_count", "profit_factor", "max_drawdown"):
        assert math.isfinite(unfiltered[name]) and math.isfinite(filtered[name])


def test_filter_report_precision_by_hand(frame: pl.DataFrame, trend_filter) -> None:
    holdout = trend_filter.training.holdout
    chosen = np.where(np.arange(holdout.height) < 4, 0.9, 0.1)  # only the first 4 pass 0.58
    rigged = dataclasses.replace(
        trend_filter,
        training=dataclasses.replace(
            trend_filter.training, holdout=holdout.with_columns(prob_cal=chosen)
        ),
    )
    summary = filter_report(frame, rigged).summary
    first4 = trend_filter.events[trend_filter.plan.holdout_idx[:4]]["y"].to_list()
    filtered = summary.row(1, named=True)
    assert filtered["signals"] == 4
    assert filtered["precision"] == sum(first4) / 4
    assert 1 <= filtered["trade_count"] <= 4


def test_filter_report_refuses_an_untrained_filter(frame: pl.DataFrame) -> None:
    skipped = train_meta_filter(
        frame.head(300), "trend", MetaFilterConfig(min_events=1000), timeframe="1h"
    )
    assert skipped.model is None
    with pytest.raises(MetaLayerError, match="was not trained: .*fewer than min_rows=1000"):
        filter_report(frame.head(300), skipped)


# ---------------------------------------------------------------------------------------------------
# backtest comparison


def test_compare_ensembles_matches_run_backtest_on_hand_built_orders() -> None:
    closes = [100.0, 101.0, 102.0, 101.5, 103.0, 104.0, 103.0, 102.0]
    rows = [(c - 0.5, c + 0.3, c - 0.7, c) for c in closes]
    bars = _hand_bars(rows)
    side = pl.Series([0, 1, 0, 0, 0, -1, 0, 0], dtype=pl.Int8)
    settings = BacktestSettings(horizon=2, tp_mult=3.0, sl_mult=3.0)
    comparison = compare_ensembles(
        bars,
        bars,
        {"primary": side, "half": pl.DataFrame({"side": side, "size": [0.5] * 8})},
        "1h",
        settings,
    )
    # by hand: the long of bar 1 holds 2 bars (flat order at bar 3), the short of bar 5 to the end
    orders = pl.DataFrame(
        {
            "timestamp": [T0 + HOUR, T0 + 3 * HOUR, T0 + 5 * HOUR],
            "side": pl.Series([1, 0, -1], dtype=pl.Int8),
            "size": [1.0, 0.0, 1.0],
            "stop_loss": [101.0 - 3 * 1.01, None, 104.0 + 3 * 1.04],
            "take_profit": [101.0 + 3 * 1.01, None, 104.0 - 3 * 1.04],
        }
    )
    direct = run_backtest(bars, orders, timeframe="1h")
    expected = performance_metrics(direct, None, annualization("1h", "24/7"))
    row = comparison.summary.row(0, named=True)
    assert row["variant"] == "primary"
    assert row == pytest.approx(
        {"variant": "primary", **{k: expected[k] for k in COMPARISON_METRICS}}
    )
    assert_frame_equal(comparison.per_bar["primary"], direct.per_bar)
    opens = bars["open"].to_list()
    long_ret = opens[4] / opens[2] - 1 - 2 * 7e-4
    short_ret = -(closes[7] / opens[6] - 1) - 7e-4  # still open at the end: one leg of costs
    assert direct.trades["ret"].to_list() == pytest.approx([long_ret, short_ret])
    assert row["trade_count"] == 2
    half = comparison.per_bar["half"]["position"].to_list()
    assert half == [0.0, 0.0, 0.5, 0.5, 0.0, 0.0, -0.5, -0.5]


# ---------------------------------------------------------------------------------------------------
# the ensemble's serving decision


def _holdout_variants(frame: pl.DataFrame, report) -> tuple[pl.DataFrame, dict]:
    """The hold-out rows and the variants `ensemble_signals` (defs) backtests on them."""
    start = report.data["timestamp"][int(report.plan.holdout_idx[0])]
    hold = frame.filter(pl.col("timestamp") >= start)
    variants = {"primary_trend": primary_side(hold, "trend").select("side")}
    variants["voting"] = voting(hold).select(pl.col("vote_side").alias("side"))
    for mode in ("filter", "weighted"):
        combined = ensemble_signals(frame, report.models, EnsembleConfig(mode=mode)).signals
        variants[f"meta_{mode}"] = combined.filter(pl.col("timestamp") >= start).select(
            "side", "size"
        )
    return hold, variants


def test_ensemble_decision_deflates_by_every_variant_compared(frame: pl.DataFrame, report) -> None:
    hold, variants = _holdout_variants(frame, report)
    comparison = compare_ensembles(hold, frame, variants, "1h")
    returns = {k: v["net_ret"].to_numpy() for k, v in comparison.per_bar.items()}
    ppy = annualization("1h", "24/7")
    config = GateConfig()
    selection = compared_selection(returns, "meta_filter", ppy, config)
    assert selection.n_trials == len(variants) == 4
    # V by hand: the sample variance of the variants' per-bar Sharpe ratios
    sharpes = np.array([r.mean() / r.std(ddof=1) for r in returns.values()])
    assert list(selection.sharpes) == list(variants)
    assert list(selection.sharpes.values()) == pytest.approx(sharpes, rel=1e-12)
    assert selection.trials_variance == pytest.approx(np.var(sharpes, ddof=1), rel=1e-12)
    # DSR by hand (Bailey & Lopez de Prado 2014), and as lib.overfitting computes it
    r = returns["meta_filter"]
    d = r - r.mean()
    g3 = np.mean(d**3) / np.mean(d**2) ** 1.5
    g4 = np.mean(d**4) / np.mean(d**2) ** 2
    sr, n, v = r.mean() / r.std(ddof=1), 4, np.var(sharpes, ddof=1)
    normal, gamma = NormalDist(), 0.5772156649015329
    sr0 = math.sqrt(v) * (
        (1 - gamma) * normal.inv_cdf(1 - 1 / n) + gamma * normal.inv_cdf(1 - 1 / (n * math.e))
    )
    spread = 1 - g3 * sr + (g4 - 1) / 4 * sr**2
    dsr = normal.cdf((sr - sr0) * math.sqrt(r.size - 1) / math.sqrt(spread))
    assert selection.expected_max_sharpe == pytest.approx(sr0, abs=1e-12)
    assert selection.dsr == pytest.approx(dsr, abs=1e-9)
    assert selection.dsr == deflated_sharpe(sharpe_moments(r), n, selection.trials_variance)
    trl = 1 + spread * (normal.inv_cdf(0.95) / sr) ** 2
    assert selection.min_track_record == pytest.approx(trl, rel=1e-9)
    # the gates take it as the direction model's selection evidence: DSR and MinTRL gate, folds
    # and PBO do not exist for one hold-out and say so
    metrics = comparison.summary.filter(pl.col("variant") == "meta_filter").row(0, named=True)
    decision = evaluate_gates(metrics | {"ece": 0.05}, None, config, selection=selection.stats())
    gates = {g.name: g for g in decision.gates}
    assert gates["dsr"].value == selection.dsr and gates["dsr"].applicable
    assert "N=4 trials" in gates["dsr"].describe()
    assert gates["min_trl"].threshold == selection.min_track_record
    assert not gates["profitable_folds"].applicable and not gates["pbo"].applicable
    assert "one window" in gates["profitable_folds"].describe()
    assert selection.as_metrics(ppy)["dsr"] == selection.dsr
    with pytest.raises(ValueError, match="not among those compared"):
        compared_selection(returns, "champion", ppy, config)


def test_a_variant_that_wins_only_by_selection_among_noise_is_refused() -> None:
    """Random sides on a random walk: the best of 60 looks significant alone (PSR >= 0.95, the
    gates without deflation would let its Sharpe through) but not as the best of 60."""
    bars = make_bars(1200, "1h", seed=12).with_columns(atr_14_frac=pl.lit(0.01))
    rng = np.random.default_rng(5)
    variants = {
        f"noise_{i}": pl.Series(rng.choice([-1, 0, 1], bars.height, p=[0.05, 0.9, 0.05]))
        for i in range(60)
    }
    # without costs and stops, so that noise is zero-mean rather than a sure loss
    frictionless = BacktestSettings(fee_bps=0.0, slippage_bps=0.0, use_stops=False)
    comparison = compare_ensembles(bars, bars, variants, "1h", frictionless)
    returns = {k: v["net_ret"].to_numpy() for k, v in comparison.per_bar.items()}
    ppy, config = annualization("1h", "24/7"), GateConfig()
    best = max(returns, key=lambda k: sharpe_moments(returns[k]).sharpe)
    alone = compared_selection({best: returns[best]}, best, ppy, config)
    among = compared_selection(returns, best, ppy, config)
    assert alone.n_trials == 1 and alone.dsr >= config.min_dsr  # DSR with N = 1 is the PSR
    assert among.n_trials == 60 and among.dsr < config.min_dsr
    metrics = comparison.summary.filter(pl.col("variant") == best).row(0, named=True)
    metrics |= {"ece": 0.05}
    failed = [
        g.name
        for g in evaluate_gates(metrics, None, config, selection=among.stats()).gates
        if not g.passed
    ]
    assert "dsr" in failed
    passed_alone = evaluate_gates(metrics, None, config, selection=alone.stats())
    assert "dsr" not in [g.name for g in passed_alone.gates if not g.passed]
