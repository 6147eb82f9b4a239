"""Degenerate partitions (constant prices, very short history) give the meta layer a skip reason
instead of a SplitConfigError that names no partition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from quant_assets.lib.calendars import CRYPTO_24_7
from quant_assets.lib.errors import SplitConfigError
from quant_assets.lib.features import compute_features, multi_timeframe_snapshot
from quant_assets.lib.labels import build_labels
from quant_assets.lib.meta import (
    degenerate_filter_input,
    degenerate_meta_input,
    meta_frame,
    train_meta_filter,
    train_meta_learners,
)
from quant_assets.lib.ohlcv import resample_bars
from quant_assets.lib.primary import PrimaryConfig, primary_signals
from quant_assets.lib.regimes import RegimeConfig, regimes
from quant_assets.lib.sources.synthetic import synthetic_bars

START = datetime(2024, 1, 1, tzinfo=UTC)
BARS = synthetic_bars("BTCUSDT", 3, START, START + timedelta(days=300), "4h")


def frame_of(bars: pl.DataFrame) -> pl.DataFrame:
    """The meta layer's input built from 4h bars the way the assets build it."""
    base = compute_features(bars, "4h")
    daily = compute_features(resample_bars(bars, "4h", "1d", CRYPTO_24_7), "1d")
    snapshot = multi_timeframe_snapshot(base.select("timestamp"), "4h", {"1d": daily})
    features = base.join(snapshot, on="timestamp", how="left", maintain_order="left")
    labels = build_labels(bars, base["atr_14"], "4h")
    signals = primary_signals(bars, features, PrimaryConfig())
    return meta_frame(bars, features, signals, regimes(features, RegimeConfig()), labels)


def test_a_healthy_partition_has_no_skip_reason() -> None:
    frame = frame_of(BARS)
    assert degenerate_meta_input(frame) is None
    assert degenerate_filter_input(frame, "vote") is None


@pytest.mark.parametrize(
    ("bars", "learner", "filter_"),
    [
        (
            BARS.with_columns(pl.lit(100.0).alias(c) for c in ("open", "high", "low", "close")),
            "prices are constant (100.0) on all 1800 bars",
            "prices are constant (100.0) on all 1800 bars",
        ),
        (
            BARS.head(40),
            "none of the 40 bars is usable: 21 are labelled candidates, 0 have complete features",
            "none of the 40 bars is usable: 0 are labelled candidates, 20 have complete features",
        ),
    ],
    ids=["constant prices", "short history"],
)
def test_degenerate_partitions_are_skipped_with_a_reason(
    bars: pl.DataFrame, learner: str, filter_: str
) -> None:
    frame = frame_of(bars)
    assert degenerate_meta_input(frame).startswith(learner)
    assert degenerate_filter_input(frame, "vote").startswith(filter_)
    # what the assets ran into without the check
    with pytest.raises(SplitConfigError, match="n_rows must be an integer >= 1, got 0"):
        train_meta_filter(frame, "vote", timeframe="4h")
    if frame.height < 100:
        with pytest.raises(SplitConfigError):
            train_meta_learners(frame)


def test_an_empty_join_is_named() -> None:
    assert degenerate_meta_input(frame_of(BARS).head(0)) == (
        "no bar is present in all of ohlcv, features, primary_signals, regime and labels"
    )
