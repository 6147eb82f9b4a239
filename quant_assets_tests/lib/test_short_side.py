"""The direction agent's short side: a short threshold chosen on out-of-fold predictions, shorts in
the signals and the hold-out backtest when the data hold a downside edge, none when they do not."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from quant_assets.lib.datasets import build_training_dataset
from quant_assets.lib.features import compute_features
from quant_assets.lib.labels import build_labels
from quant_assets.lib.ohlcv import bars_for_timeframe
from quant_assets.lib.signals import (
    choose_long_threshold,
    choose_short_threshold,
    make_signals,
    resolve_short_threshold,
)
from quant_assets.lib.sources.synthetic import SyntheticSource
from quant_assets.lib.splits import make_splits
from quant_assets.lib.training import ModelConfig, train_with_cv
from quant_assets.lib.trials import TradeRules, holdout_scores


def test_short_threshold_finds_a_planted_downside_edge() -> None:
    rng = np.random.default_rng(3)
    prob = rng.uniform(0.05, 0.95, 4000)
    # planted: the lowest fifth of probabilities precedes falls of 0.5 %, the rest is noise
    ret = rng.normal(0.0, 0.01, prob.size) - np.where(prob < np.quantile(prob, 0.2), 0.005, 0.0)
    short = choose_short_threshold(prob, ret)
    assert short is not None and short <= np.quantile(prob, 0.31)
    # the mirror of the long search: the same choice as the long rule on (1 - p, -ret)
    assert short == pytest.approx(1 - choose_long_threshold(1 - prob, -ret), abs=1e-9)
    # and no shorts without a downside edge (a market rising whatever the probability)
    up_only = rng.normal(0.002, 0.01, prob.size)
    assert choose_short_threshold(prob, up_only) is None
    assert resolve_short_threshold(None, None, 0.6) is None
    assert resolve_short_threshold(None, 0.7, 0.6) is None  # not below the long threshold
    assert resolve_short_threshold(0.2, 0.3, 0.6) == 0.2


def test_shorts_appear_on_synthetic_data_with_a_downside_edge() -> None:
    """The synthetic source plants mean reversion (a downside edge after rises): a model trained
    on it gets a short threshold from its OOF predictions, and its hold-out signals and backtest
    hold short trades as well as long ones."""
    source = SyntheticSource(
        seed=7, start=datetime(2023, 1, 1, tzinfo=UTC), end=datetime(2024, 3, 1, tzinfo=UTC)
    )
    bars = bars_for_timeframe(source, "BTCUSDT", "4h").frame
    features = compute_features(bars, "4h")
    dataset = build_training_dataset(features, build_labels(bars, features["atr_14"], "4h"))
    frame = dataset.frame
    plan = make_splits("purged_kfold", frame.height, frame["t0"], frame["t1"], n_splits=5)
    result = train_with_cv(
        dataset, plan, ModelConfig(params={"n_estimators": 40, "learning_rate": 0.1})
    )
    prob = result.oof["prob_cal"].to_numpy()
    ret = frame["ret"].gather(result.oof["row"]).to_numpy()
    long_t = choose_long_threshold(prob, ret)
    short_t = choose_short_threshold(prob, ret)
    print(f"OOF thresholds: long {long_t:.2f}, short {short_t}")
    assert short_t is not None and short_t < long_t
    shorted = ret[prob <= short_t]
    assert shorted.size >= 30 and float(np.mean(-shorted)) > 0  # the OOF short trades earned

    holdout = result.holdout
    priced = (
        holdout.select("timestamp", "prob_cal")
        .join(bars.select("timestamp", "close"), on="timestamp")
        .join(features.select("timestamp", "atr_14"), on="timestamp")
    )
    signals = make_signals(
        priced["timestamp"],
        priced["close"],
        priced["atr_14"],
        priced["prob_cal"],
        threshold_long=long_t,
        threshold_short=short_t,
    )
    sides = set(signals["side"].unique().to_list())
    assert sides == {-1, 0, 1}
    metrics, backtest = holdout_scores(
        priced["prob_cal"].to_numpy() > 0.5,
        priced["prob_cal"].to_numpy(),
        priced,
        bars,
        long_t,
        "4h",
        2190.0,
        TradeRules(),
        threshold_short=short_t,
    )
    assert metrics["short_trades"] > 0
    assert set(backtest.trades["side"].unique().to_list()) == {-1, 1}
