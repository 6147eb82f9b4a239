"""Primary signals: hand-computed cases of each generator, agreement with TA-Lib's EMA, no look-ahead."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import talib

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.features import compute_features
from quant_assets.lib.leakage import recursive_analysis
from quant_assets.lib.primary import (
    PRIMARY_COLUMNS,
    PRIMARY_NAMES,
    PrimaryConfig,
    PrimarySignalError,
    primary_signals,
)
from quant_assets_tests.lib.bars_factory import make_bars

WARM = PrimaryConfig().warmup  # 104: the 26-bar EMA seed plus 3 spans
# |our EMA gap - TA-Lib's| <= 1e-9 * close on every warm row; observed < 1e-16 * close, as the
# EMAs are seeded with the SMA of the first n closes exactly like TA-Lib's
EMA_RTOL = 1e-9


def hand_inputs(
    close: list[float],
    high: list[float] | None = None,
    low: list[float] | None = None,
    pctb: list[float] | None = None,
    atr: float = 2.0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Bars and a minimal features frame (atr_14, bb_pctb) with WARM flat rows at 100 in front."""
    n = WARM + len(close)
    c = [100.0] * WARM + close
    h = [100.0] * WARM + (high or close)
    lo = [100.0] * WARM + (low or close)
    ts = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=i) for i in range(n)]
    bars = pl.DataFrame(
        {"timestamp": ts, "open": c, "high": h, "low": lo, "close": c, "volume": [1.0] * n}
    )
    features = pl.DataFrame(
        {
            "timestamp": ts,
            "atr_14": [atr] * n,
            "bb_pctb": [0.5] * WARM + (pctb or [0.5] * len(close)),
        }
    )
    return bars, features


def tail(frame: pl.DataFrame, rows: int) -> dict[str, list]:
    return frame.tail(rows).to_dict(as_series=False)


def test_trend_follows_the_ema_cross_with_hand_computed_confidence():
    config = PrimaryConfig(fast=2, slow=3)
    bars, features = hand_inputs([110.0, 110.0, 90.0, 90.0])
    got = tail(primary_signals(bars, features, config), 4)
    # EMA2 (alpha 2/3) and EMA3 (alpha 1/2) from 100: gaps 1.6667, 1.3889, -2.4537, -0.3549
    fast, slow, gaps = 100.0, 100.0, []
    for c in (110.0, 110.0, 90.0, 90.0):
        fast, slow = fast + 2 / 3 * (c - fast), slow + 0.5 * (c - slow)
        gaps.append(fast - slow)
    assert gaps[0] == pytest.approx(5 / 3) and gaps[2] == pytest.approx(-2.4537037, abs=1e-6)
    assert got["trend_side"] == [1, 1, -1, -1]
    assert got["trend_conf"] == pytest.approx([math.tanh(abs(g) / 2.0) for g in gaps], abs=1e-12)


def test_flat_history_gives_no_trend_and_zero_confidence():
    bars, features = hand_inputs([100.0, 100.0])
    got = tail(primary_signals(bars, features), 2)
    assert got["trend_side"] == [0, 0] and got["trend_conf"] == [0.0, 0.0]


def test_meanrev_fades_bollinger_excursions():
    pctb = [-0.25, 0.0, 0.5, 1.0, 1.5]
    bars, features = hand_inputs([100.0] * 5, pctb=pctb)
    got = tail(primary_signals(bars, features), 5)
    assert got["meanrev_side"] == [1, 0, 0, 0, -1]  # the band itself is not beyond it
    assert got["meanrev_conf"] == pytest.approx([math.tanh(1.0), 0, 0, 0, math.tanh(2.0)])
    narrow = PrimaryConfig(meanrev_lower=0.2, meanrev_upper=0.8, meanrev_scale=0.5)
    got = tail(primary_signals(bars, features.with_columns(bb_pctb=0.1), narrow), 1)
    assert got["meanrev_side"] == [1] and got["meanrev_conf"] == pytest.approx([math.tanh(0.2)])


def test_breakout_compares_the_close_with_prior_bars_only():
    high = [104.0, 102.0, 101.0, 130.0, 106.0, 100.0]
    low = [99.0, 98.0, 97.0, 100.0, 101.0, 90.0]
    close = [100.0, 100.0, 100.0, 105.0, 103.0, 95.0]
    bars, features = hand_inputs(close, high, low)
    got = tail(primary_signals(bars, features, PrimaryConfig(breakout_window=3)), 3)
    # 105 > max(104, 102, 101): a breakout although the bar's own high is 130; 103 is inside
    # [97, 130]; 95 < min(97, 100, 101). Distances 1 and 2 price units = 0.5 and 1 ATR.
    assert got["breakout_side"] == [1, 0, -1]
    assert got["breakout_conf"] == pytest.approx([math.tanh(1.0), 0.0, math.tanh(2.0)])
    # a one-bar window looks at the previous bar only: [100, 130], then [101, 106]
    got = tail(primary_signals(bars, features, PrimaryConfig(breakout_window=1)), 2)
    assert got["breakout_side"] == [0, -1]
    assert got["breakout_conf"] == pytest.approx([0.0, math.tanh(6.0)])


def test_every_generator_is_silent_before_warm_up():
    bars, features = hand_inputs([100.0])
    # a strong excursion in every input during warm-up
    bars = bars.with_columns(close=pl.int_range(pl.len()).cast(pl.Float64) * 5.0 + 100.0)
    features = features.with_columns(bb_pctb=-3.0)
    out = primary_signals(bars, features)
    early = out.head(WARM - 1)
    assert not early["primary_warm"].any()
    assert all((early[f"{n}_side"] == 0).all() for n in PRIMARY_NAMES)
    assert all((early[f"{n}_conf"] == 0.0).all() for n in PRIMARY_NAMES)
    assert out["primary_warm"][WARM - 1] and out["trend_side"][WARM - 1] == 1
    assert out["meanrev_side"][WARM - 1] == 1 and out["breakout_side"][WARM - 1] == 1


def test_warmup_counts_the_slowest_input():
    assert PrimaryConfig().warmup == 104
    assert PrimaryConfig(fast=5, slow=10).warmup == 96  # ATR's Wilder warm-up dominates
    assert PrimaryConfig(breakout_window=200).warmup == 201


@pytest.fixture(scope="module")
def real() -> tuple[pl.DataFrame, pl.DataFrame]:
    bars = make_bars(3000, "1h", seed=41, gaps=True, flat=True)
    return bars, compute_features(bars, "1h")


def test_output_contract(real):
    out = primary_signals(*real)
    assert tuple(out.columns) == PRIMARY_COLUMNS
    assert out.schema["primary_warm"] == pl.Boolean
    for n in PRIMARY_NAMES:
        side, conf = out[f"{n}_side"], out[f"{n}_conf"]
        assert side.dtype == pl.Int8 and conf.dtype == pl.Float64
        assert side.null_count() == 0 and conf.null_count() == 0
        assert set(side.unique()) <= {-1, 0, 1}
        assert conf.min() >= 0.0 and conf.max() <= 1.0
        assert ((conf > 0) == (side != 0)).all()
        assert (side != 0).sum() > 50  # each generator fires on this path


@pytest.mark.parametrize(("fast", "slow"), [(12, 26), (5, 50)])
def test_trend_ema_gap_matches_talib(real, fast, slow):
    bars, features = real
    # a huge scale keeps tanh linear, so |gap| = atanh(conf) * scale * atr is recovered exactly
    scale = 1e6
    out = primary_signals(bars, features, PrimaryConfig(fast=fast, slow=slow, trend_scale=scale))
    c = bars["close"].to_numpy()
    ref = talib.EMA(c, fast) - talib.EMA(c, slow)
    warm = out["primary_warm"].to_numpy()
    assert warm.sum() == 3000 - PrimaryConfig(fast=fast, slow=slow).warmup + 1
    ours = np.arctanh(out["trend_conf"].to_numpy()) * scale * features["atr_14"].to_numpy()
    side = out["trend_side"].to_numpy()
    assert np.all(np.abs(side[warm] * ours[warm] - ref[warm]) <= EMA_RTOL * c[warm])
    clear = warm & (np.abs(ref) > EMA_RTOL * c)
    np.testing.assert_array_equal(side[clear], np.sign(ref[clear]))


def test_no_look_ahead_on_truncated_history(real):
    bars, _ = real
    cuts = [50, WARM - 1, WARM, WARM + 1, 777, 1500, 2999]
    report = recursive_analysis(
        lambda b: primary_signals(b, compute_features(b, "1h")), bars, cut_points=cuts, rtol=0.0
    )
    assert report.ok, report.describe()


def test_features_of_other_bars_are_rejected(real):
    bars, features = real
    with pytest.raises(DataValidationError, match="timestamps differ"):
        primary_signals(bars, features.slice(1))
    with pytest.raises(DataValidationError, match="bb_pctb"):
        primary_signals(bars, features.drop("bb_pctb"))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(fast=26, slow=26),
        dict(meanrev_lower=1.0, meanrev_upper=0.0),
        dict(breakout_window=0),
        dict(trend_scale=0.0),
        dict(meanrev_scale=float("nan")),
    ],
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(PrimarySignalError):
        PrimaryConfig(**kwargs)
