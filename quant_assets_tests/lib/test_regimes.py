"""Regimes: the rules on hand-built inputs, no look-ahead (rules and k-means), k-means fitted on
training rows only with names that depend on the centers alone, and volatility buckets that order
realized volatility on synthetic bars."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.features import compute_features, multi_timeframe_snapshot
from quant_assets.lib.leakage import recursive_analysis
from quant_assets.lib.regimes import (
    REGIME_DTYPE,
    VOL_BUCKET_DTYPE,
    RegimeConfig,
    RegimeConfigError,
    RegimeModel,
    assign_regimes,
    fit_regime_model,
    name_clusters,
    regime_columns,
    regime_summary,
    regimes,
)
from quant_assets.lib.sources.synthetic import synthetic_bars
from quant_assets_tests.lib.bars_factory import make_bars, resample_bars

START = datetime(2024, 1, 1, tzinfo=UTC)
HISTORY = 1000
# (slope, vol) -> (regime, vol_bucket, gate), after a history where |slope| = 1 (scale 1) and vol is
# uniform on [1, 3] (buckets split near 1.67 and 2.33)
CASES = [
    ((3.0, 5.0), ("bull", "high", True)),
    ((1.5, 1.0), ("bull", "low", True)),
    ((1.5, 5.0), ("neutral", "high", False)),  # too weak for a trend in high volatility: chop
    ((-1.5, 2.0), ("bear", "mid", True)),
    ((-3.0, 5.0), ("bear", "high", True)),
    ((0.2, 1.0), ("range", "low", True)),
    ((-0.2, 2.0), ("range", "mid", True)),
    ((0.2, 5.0), ("neutral", "high", False)),
    ((0.7, 2.0), ("neutral", "mid", True)),  # between range_k 0.5 and trend_k 1
    ((None, 2.0), ("neutral", "mid", False)),  # slope unknown
]


def hand_frame(slope: list[float | None], vol: list[float]) -> pl.DataFrame:
    rng = np.random.default_rng(5)
    s = [1.0 if i % 2 else -1.0 for i in range(HISTORY)] + slope
    v = list(rng.permutation(np.linspace(1.0, 3.0, HISTORY))) + vol
    ts = [START + timedelta(hours=i) for i in range(len(s))]
    return pl.DataFrame({"timestamp": ts, "s": s, "v": v}, schema_overrides={"s": pl.Float64})


HAND = RegimeConfig(slope_column="s", vol_column="v")


def test_rules_on_hand_built_inputs():
    frame = hand_frame([c[0][0] for c in CASES], [c[0][1] for c in CASES])
    got = regimes(frame, HAND).tail(len(CASES))
    expected = [c[1] for c in CASES]
    assert got["regime"].cast(pl.String).to_list() == [e[0] for e in expected]
    assert got["vol_bucket"].cast(pl.String).to_list() == [e[1] for e in expected]
    assert got["gate"].to_list() == [e[2] for e in expected]
    assert got["trend_slope"].to_list()[:2] == [3.0, 1.5]
    assert got["volatility"].to_list()[:2] == [5.0, 1.0]
    assert (got["method"] == "rules").all()


def test_thresholds_are_configurable():
    frame = hand_frame([1.5, 0.7], [5.0, 2.0])
    got = regimes(
        frame, RegimeConfig(slope_column="s", vol_column="v", high_vol_trend_k=1.2, range_k=0.8)
    )
    assert got["regime"].tail(2).cast(pl.String).to_list() == ["bull", "range"]


def test_rows_before_warm_up_are_neutral_and_gated_off():
    frame = hand_frame([3.0, 3.0], [1.0, 1.0])
    out = regimes(frame, HAND)
    early = out.head(HAND.min_history - 1)
    assert (early["regime"] == "neutral").all() and not early["gate"].any()
    assert early["vol_bucket"].null_count() == HAND.min_history - 1
    assert out["vol_bucket"][HAND.min_history - 1] is not None
    # is_warm, when the frame has it, holds every row back too
    cold = regimes(frame.with_columns(is_warm=pl.int_range(pl.len()) < HISTORY + 1), HAND)
    assert cold["regime"].tail(2).cast(pl.String).to_list() == ["bull", "neutral"]
    assert cold["gate"].tail(2).to_list() == [True, False]


def test_output_columns_and_types():
    out = regimes(hand_frame([3.0], [5.0]), HAND)
    assert out.schema == pl.Schema(
        {
            "timestamp": pl.Datetime("us", "UTC"),
            "regime": REGIME_DTYPE,
            "vol_bucket": VOL_BUCKET_DTYPE,
            "gate": pl.Boolean,
            "trend_slope": pl.Float64,
            "volatility": pl.Float64,
            "method": pl.String,
        }
    )


def test_quantiles_use_the_past_only():
    # a later burst of huge volatility must not change how earlier bars are bucketed
    frame = hand_frame([0.2] * 300, [2.2] * 300)
    row = pl.int_range(pl.len())
    burst = frame.with_columns(
        v=pl.when((row >= HISTORY + 100) & (row < pl.len() - 1)).then(50.0).otherwise(pl.col("v"))
    )
    calm, stormy = regimes(frame, HAND), regimes(burst, HAND)
    assert calm.head(HISTORY + 100).equals(stormy.head(HISTORY + 100))
    assert stormy["vol_bucket"][-2] == "high" and stormy["vol_bucket"][-1] == "mid"
    # a 250-bar window forgets the calm history: after 199 bars at 50, 2.2 is low
    windowed = RegimeConfig(slope_column="s", vol_column="v", quantile_window=250)
    assert regimes(burst, windowed)["vol_bucket"][-1] == "low"


def test_regime_columns_prefer_the_coarsest_higher_timeframe():
    own = pl.DataFrame(
        schema={"timestamp": pl.Datetime, "ema_26_slope": pl.Float64, "atr_14_frac": pl.Float64}
    )
    assert regime_columns(own, RegimeConfig()) == ("ema_26_slope", "atr_14_frac")
    mtf = own.with_columns(
        *(
            pl.lit(0.0).alias(f"tf{tf}_{f}")
            for tf in ("4h", "1d")
            for f in ("ema_26_slope", "atr_14_frac")
        )
    )
    assert regime_columns(mtf, RegimeConfig()) == ("tf1d_ema_26_slope", "tf1d_atr_14_frac")
    assert regime_columns(mtf.drop("tf1d_atr_14_frac"), RegimeConfig()) == (
        "tf4h_ema_26_slope",
        "tf4h_atr_14_frac",
    )
    config = RegimeConfig(slope_column="tf4h_ema_26_slope")
    assert regime_columns(mtf, config) == ("tf4h_ema_26_slope", "tf1d_atr_14_frac")


def test_regime_summary_counts_runs():
    frame = pl.DataFrame(
        {
            "regime": pl.Series(
                ["bull", "bull", "bear", "neutral", "neutral", "neutral", "bull"],
                dtype=REGIME_DTYPE,
            ),
            "vol_bucket": pl.Series(
                [None, "low", "low", "high", "high", "mid", "low"], dtype=VOL_BUCKET_DTYPE
            ),
            "gate": [False, True, True, False, False, True, True],
            "method": ["rules"] * 7,
        }
    )
    s = regime_summary(frame)
    assert s["rows"] == 7 and s["method"] == "rules"
    assert s["gate_on_share"] == pytest.approx(4 / 7)
    assert s["regimes"]["bull"] == {
        "bars": 3,
        "share": pytest.approx(3 / 7),
        "runs": 2,
        "mean_run_bars": 1.5,
        "max_run_bars": 2,
    }
    assert s["regimes"]["neutral"]["runs"] == 1 and s["regimes"]["neutral"]["max_run_bars"] == 3
    assert s["regimes"]["range"] == {
        "bars": 0,
        "share": 0.0,
        "runs": 0,
        "mean_run_bars": 0.0,
        "max_run_bars": 0,
    }
    assert s["vol_bucket_shares"] == pytest.approx({"low": 3 / 7, "mid": 1 / 7, "high": 2 / 7})
    json.dumps(s)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="hmm"),
        dict(vol_low_quantile=0.7, vol_high_quantile=0.6),
        dict(range_k=1.5),
        dict(high_vol_trend_k=0.5),
        dict(quantile_window=10),
        dict(n_clusters=1),
        dict(method="kmeans"),
    ],
)
def test_bad_config_is_rejected(kwargs):
    with pytest.raises(RegimeConfigError):
        RegimeConfig(**kwargs)


def test_missing_columns_are_named():
    # without a complete tf<H> pair the bar's own columns are needed
    with pytest.raises(DataValidationError, match=r"\['ema_26_slope', 'atr_14_frac'\]"):
        regimes(pl.DataFrame({"timestamp": [START], "tf1d_ema_26_slope": [0.0]}))
    with pytest.raises(DataValidationError, match="nope"):
        regimes(
            pl.DataFrame({"timestamp": [START], "s": [0.0]}), RegimeConfig("rules", "s", "nope")
        )


# ---- on real features -------------------------------------------------------------------------


def mtf_frame(bars: pl.DataFrame) -> pl.DataFrame:
    higher = {tf: compute_features(resample_bars(bars, tf), tf) for tf in ("4h", "1d")}
    snapshot = multi_timeframe_snapshot(bars, "1h", higher)
    return compute_features(bars, "1h").join(snapshot, on="timestamp")


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    return make_bars(3000, "1h", seed=61, gaps=True, flat=True)


@pytest.fixture(scope="module")
def frame(bars) -> pl.DataFrame:
    return mtf_frame(bars)


FOUR_H = dict(slope_column="tf4h_ema_26_slope", vol_column="tf4h_atr_14_frac")


def train_end_of(frame: pl.DataFrame) -> datetime:
    return frame["timestamp"][1800]


@pytest.mark.parametrize("columns", [{}, FOUR_H])
def test_rules_have_no_look_ahead(bars, frame, columns):
    config = RegimeConfig(**columns)
    full = regimes(frame, config)
    assert full["gate"].sum() > 500  # enough warm rows for the comparison to mean something
    cuts = [150, 199, 200, 201, 900, 1333, 2000, 2999]
    report = recursive_analysis(
        lambda b: regimes(mtf_frame(b), config), bars, cut_points=cuts, rtol=0.0
    )
    assert report.ok, report.describe()


def test_kmeans_has_no_look_ahead_after_train_end(bars, frame):
    config = RegimeConfig(method="kmeans", train_end=train_end_of(frame), **FOUR_H)
    # cuts before train_end would shrink the training set: its labels are in-sample by design
    cuts = [1801, 2200, 2600, 2999]
    report = recursive_analysis(
        lambda b: regimes(mtf_frame(b), config), bars, cut_points=cuts, rtol=0.0
    )
    assert report.ok, report.describe()
    out = regimes(frame, config)
    assert (out["method"] == "kmeans").all()
    assert out["regime"].n_unique() == 4


def test_kmeans_ignores_rows_after_train_end(frame):
    config = RegimeConfig(method="kmeans", train_end=train_end_of(frame), **FOUR_H)
    after = pl.col("timestamp") > config.train_end
    wild = frame.with_columns(
        pl.when(after).then(pl.col(c) * -1000.0 + 7.0).otherwise(pl.col(c)).alias(c)
        for c in FOUR_H.values()
    )
    model = fit_regime_model(frame, config.train_end, config)
    assert fit_regime_model(wild, config.train_end, config) == model
    mask = frame.select(~after).to_series()
    assert fit_regime_model(wild, mask, config) == model
    assert model.n_train == frame.filter(~after & pl.col("is_warm")).height


def test_kmeans_names_do_not_depend_on_seed_or_row_order(frame):
    config = RegimeConfig(method="kmeans", train_end=train_end_of(frame), **FOUR_H)
    model = fit_regime_model(frame, config.train_end, config)
    assert model.names == ("bull", "bear", "range", "neutral")
    centers = np.asarray(model.centers)
    assert centers[0, 0] == centers[:, 0].max() and centers[1, 0] == centers[:, 0].min()
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=3)
    assert fit_regime_model(shuffled, config.train_end, config) == model
    assigned = assign_regimes(model, frame)
    for seed in (1, 5, 11, 2024):
        other = fit_regime_model(frame, config.train_end, replace(config, seed=seed))
        # k-means++ from another seed may stop in a neighbouring optimum: cluster numbers and
        # the last digits move, the names follow the centers
        assert other.names == model.names
        np.testing.assert_allclose(np.asarray(other.centers), centers, rtol=0, atol=0.05)
        assert (assign_regimes(other, frame) == assigned).mean() > 0.97


def test_cluster_names_come_from_the_centers_alone():
    slope = np.array([0.0, 2.0, -1.0, 0.1, 0.5])
    vol = np.array([3.0, 1.0, 2.0, 0.5, 2.0])
    order, names = name_clusters(slope, vol)
    assert [names[order.index(j)] for j in range(5)] == [
        "neutral",
        "bull",
        "bear",
        "range",
        "neutral_2",
    ]
    perm = np.array([3, 0, 4, 1, 2])
    p_order, p_names = name_clusters(slope[perm], vol[perm])
    assert [(slope[perm][j], n) for j, n in zip(p_order, p_names, strict=True)] == [
        (slope[j], n) for j, n in zip(order, names, strict=True)
    ]
    assert name_clusters(slope[:2], vol[:2])[1] == ["bull", "bear"]
    assert name_clusters(slope[:3], vol[:3])[1] == ["bull", "bear", "range"]


def test_kmeans_model_round_trips_through_json(frame):
    config = RegimeConfig(
        method="kmeans",
        train_end=train_end_of(frame),
        n_clusters=5,
        extra_features=("tf4h_rsi_14",),
        **FOUR_H,
    )
    model = fit_regime_model(frame, config.train_end, config)
    assert model.names[-1] == "neutral_2" and model.regimes[-1] == "neutral"
    rebuilt = RegimeModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert rebuilt == model
    assert assign_regimes(rebuilt, frame).equals(assign_regimes(model, frame))


def test_kmeans_needs_enough_training_rows(frame):
    config = RegimeConfig(method="kmeans", train_end=frame["timestamp"][0], **FOUR_H)
    with pytest.raises(DataValidationError, match="training rows"):
        regimes(frame, config)


def test_volatility_buckets_order_realized_volatility_on_synthetic_regimes():
    bars = synthetic_bars(
        "BTCUSDT", 7, datetime(2022, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC), "1h"
    )
    frame = mtf_frame(bars)
    out = regimes(frame)
    realized = (
        frame.select("ret_1", out["vol_bucket"], out["regime"])
        .filter(pl.col("vol_bucket").is_not_null())
        .group_by("vol_bucket")
        .agg(pl.col("ret_1").std())
        .sort("vol_bucket")
    )
    low, mid, high = realized["ret_1"].to_list()
    assert low < mid < high and high > 1.5 * low
    assert set(out["regime"].unique().cast(pl.String)) == {"bull", "bear", "range", "neutral"}
