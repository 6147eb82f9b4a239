"""Training datasets: the join of features, labels and cross-sectional ranks, the rows dropped and
counted, target switching, the global union of symbols and the dataset fingerprint."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.datasets import (
    EXCLUDED_FEATURES,
    TrainingDataset,
    build_global_dataset,
    build_training_dataset,
    dataset_fingerprint,
)
from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.features import (
    MTF_FEATURES,
    compute_features,
    cross_sectional_ranks,
    mtf_column,
    multi_timeframe_snapshot,
)
from quant_assets.lib.labels import build_labels
from quant_assets.lib.ohlcv import bars_for_timeframe
from quant_assets.lib.sources.base import MarketDataSource
from quant_assets.lib.sources.synthetic import SyntheticSource
from quant_assets.lib.storage import frame_fingerprint

T0 = datetime(2024, 1, 1, tzinfo=UTC)
N = 12
HOUR = timedelta(hours=1)


def pipeline_frames(
    source: MarketDataSource,
    symbol: str,
    timeframe: str = "1h",
    higher: tuple[str, ...] = ("4h", "1d"),
    fixed_threshold: float = 0.005,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(features with the multi-timeframe snapshot, labels with sample weights) of `symbol`, made
    with the library functions the way the features and labels assets make them (default labels)."""
    bars = bars_for_timeframe(source, symbol, timeframe).frame
    base = compute_features(bars, timeframe)
    snapshot = multi_timeframe_snapshot(
        base.select("timestamp"),
        timeframe,
        {tf: compute_features(bars_for_timeframe(source, symbol, tf).frame, tf) for tf in higher},
    )
    features = base.join(snapshot, on="timestamp", how="left", maintain_order="left")
    labels = build_labels(bars, base["atr_14"], timeframe, fixed_threshold=fixed_threshold)
    return features, labels


def _ts(rows: list[int]) -> list[datetime]:
    return [T0 + i * HOUR for i in rows]


def _hand_features() -> pl.DataFrame:
    ret_1 = [0.1 * (i + 1) for i in range(N)]
    ret_1[9] = float("nan")
    return pl.DataFrame(
        {
            "timestamp": _ts(list(range(N))),
            "ret_1": ret_1,
            "rsi_14": [10.0 * i for i in range(N)],
            "atr_14": [100.0 + i for i in range(N)],
            "macd": [1.0] * N,
            "tf4h_rsi_14": [None] * 4 + [50.0 + i for i in range(4, N)],
            "is_warm": [False, False] + [True] * (N - 2),
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


LABEL = [1, -1, 0, 1, -1, 1, 0, 1, -1, 1, None, None]
LABEL_FH = [0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, None]


def _hand_labels(with_weight: bool = True) -> pl.DataFrame:
    ts = _ts(list(range(N)))
    frame = pl.DataFrame(
        {
            "timestamp": ts,
            "label": pl.Series(LABEL, dtype=pl.Int8),
            "t1": [
                t + 3 * HOUR if lab is not None else None for t, lab in zip(ts, LABEL, strict=True)
            ],
            "ret": [0.01 * i if LABEL[i] is not None else None for i in range(N)],
            "label_fh": pl.Series(LABEL_FH, dtype=pl.Int8),
            "t1_fh": [
                t + 4 * HOUR if lab is not None else None
                for t, lab in zip(ts, LABEL_FH, strict=True)
            ],
            "ret_fh": [-0.01 * i if LABEL_FH[i] is not None else None for i in range(N)],
            "sample_weight": [0.5 if lab is not None else None for lab in LABEL],
        },
        schema_overrides={
            "timestamp": pl.Datetime("us", "UTC"),
            "t1": pl.Datetime("us", "UTC"),
            "t1_fh": pl.Datetime("us", "UTC"),
        },
    )
    return frame if with_weight else frame.drop("sample_weight")


def _hand_xs_ranks() -> pl.DataFrame:
    rows = [i for i in range(N) if i != 7]  # no rank at all at row 7
    ours = pl.DataFrame(
        {
            "symbol": "AAA",
            "timestamp": _ts(rows),
            "xs_rank_momentum": [None if i == 6 else i / N for i in rows],
            "xs_n_symbols": [2] * len(rows),
        }
    )
    other = pl.DataFrame(
        {
            "symbol": "BBB",
            "timestamp": _ts(list(range(N))),
            "xs_rank_momentum": [0.9] * N,
            "xs_n_symbols": [2] * N,
        }
    )
    return pl.concat([other, ours]).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))


def test_take_profit_join_drops_and_counts_the_hand_worked_rows() -> None:
    ds = build_training_dataset(_hand_features(), _hand_labels(), _hand_xs_ranks(), symbol="AAA")
    # rows 0-1 warm-up; 10-11 unlabelled; 2-3 no 4h snapshot, 6 null rank, 7 no rank, 9 NaN ret_1
    assert ds.counts == {
        "rows_in": 12,
        "dropped_warmup": 2,
        "dropped_unlabelled": 2,
        "dropped_missing_features": 5,
        "rows_out": 3,
        "positive_rate": pytest.approx(1 / 3),
    }
    assert ds.feature_columns == ["ret_1", "rsi_14", "tf4h_rsi_14", "xs_rank_momentum"]
    f = ds.frame
    assert f.columns == [
        "timestamp", "t0", "t1", *ds.feature_columns, "y", "sample_weight", "label", "ret",
        "label_fh", "ret_fh",
    ]  # fmt: skip
    assert f["timestamp"].to_list() == _ts([4, 5, 8])
    assert f["t0"].equals(f["timestamp"].alias("t0"))
    assert f["t1"].to_list() == _ts([7, 8, 11])
    assert f["y"].dtype == pl.Int8
    assert f["y"].to_list() == [0, 1, 0]  # labels -1, +1, -1
    assert f["xs_rank_momentum"].to_list() == [4 / N, 5 / N, 8 / N]  # AAA's ranks, not BBB's 0.9
    assert f["sample_weight"].to_list() == [0.5, 0.5, 0.5]
    assert f["label"].to_list() == [-1, 1, -1]
    assert ds.target == "take_profit" and ds.symbol == "AAA"


def test_fixed_horizon_target_uses_label_fh_and_its_span() -> None:
    ds = build_training_dataset(
        _hand_features(), _hand_labels(), _hand_xs_ranks(), target="fixed_horizon", symbol="AAA"
    )
    # row 10 has label_fh but no sample weight (its triple-barrier label is null): unlabelled too
    assert ds.counts["dropped_unlabelled"] == 2
    assert ds.counts["rows_out"] == 3
    assert ds.frame["y"].to_list() == [LABEL_FH[i] for i in (4, 5, 8)]
    assert ds.frame["t1"].to_list() == _ts([8, 9, 12])


def test_without_weights_or_ranks_every_labelled_row_counts_and_weighs_one() -> None:
    ds = build_training_dataset(
        _hand_features(), _hand_labels(with_weight=False), None, target="fixed_horizon"
    )
    assert ds.counts == {
        "rows_in": 12,
        "dropped_warmup": 2,
        "dropped_unlabelled": 1,  # row 11
        "dropped_missing_features": 3,  # rows 2, 3 (4h snapshot) and 9 (NaN)
        "rows_out": 6,
        "positive_rate": pytest.approx(4 / 6),
    }
    assert ds.feature_columns == ["ret_1", "rsi_14", "tf4h_rsi_14"]
    assert ds.frame["timestamp"].to_list() == _ts([4, 5, 6, 7, 8, 10])
    assert ds.frame["y"].to_list() == [1, 0, 0, 1, 1, 1]
    assert ds.frame["sample_weight"].to_list() == [1.0] * 6


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, lab, x: (f, lab, x, {"symbol": None}), "pass symbol="),
        (lambda f, lab, x: (f, lab, x, {"symbol": "ZZZ"}), "no rows for symbol 'ZZZ'"),
        (lambda f, lab, x: (f.drop("is_warm"), lab, x, {}), "missing columns ['is_warm']"),
        (lambda f, lab, x: (f, lab.drop("t1_fh"), x, {"target": "fixed_horizon"}), "t1_fh"),
        (lambda f, lab, x: (f, pl.concat([lab, lab.tail(1)]), x, {}), "must be unique"),
        (lambda f, lab, x: (f.reverse(), lab, x, {}), "strictly increasing at row 1"),
        (lambda f, lab, x: (f.with_columns(label=1), lab, x, {}), "holds label columns ['label']"),
        (lambda f, lab, x: (f.with_columns(note=pl.lit("a")), lab, x, {}), "not numeric"),
        (lambda f, lab, x: (f, lab, x, {"target": "direction"}), "unknown target"),
    ],
)
def test_inputs_that_cannot_be_joined_raise_naming_the_problem(change, message) -> None:
    features, labels, xs, extra = change(_hand_features(), _hand_labels(), _hand_xs_ranks())
    kwargs = {"symbol": "AAA", **extra}
    with pytest.raises(DataValidationError, match=re.escape(message)):
        build_training_dataset(features, labels, xs, **kwargs)


def test_pipeline_frames_give_a_complete_time_ordered_dataset() -> None:
    source = SyntheticSource(seed=7, start=T0, end=T0 + timedelta(days=120))
    features, labels = pipeline_frames(source, "BTCUSDT")
    ranks = cross_sectional_ranks(
        {s: pipeline_frames(source, s, higher=())[0] for s in ("BTCUSDT", "ETHUSDT")}
    )
    ds = build_training_dataset(features, labels, ranks, symbol="BTCUSDT")
    c = ds.counts
    assert c["rows_in"] == features.height == 120 * 24
    assert c["rows_in"] - c["dropped_warmup"] - c["dropped_unlabelled"] == (
        c["rows_out"] + c["dropped_missing_features"]
    )
    assert c["dropped_unlabelled"] == 5  # the last `horizon` bars
    # the daily snapshot needs 26 + 5 closed days for its EMA slope: hourly rows before are dropped
    assert c["dropped_missing_features"] > 0
    first_kept = ds.frame["timestamp"][0]
    assert (
        features.filter(pl.col("timestamp") == first_kept)["tf1d_ema_26_slope"].is_not_null().all()
    )
    f = ds.frame
    assert f.select(ds.feature_columns).null_count().sum_horizontal().item() == 0
    assert f["timestamp"].is_sorted() and (f["t1"] > f["t0"]).all()
    assert not set(EXCLUDED_FEATURES) & set(ds.feature_columns)
    assert {mtf_column(tf, m) for tf in ("4h", "1d") for m in MTF_FEATURES} <= set(
        ds.feature_columns
    )
    assert {"xs_rank_momentum", "xs_rank_volume", "xs_rank_volatility"} <= set(ds.feature_columns)
    assert "xs_n_symbols" not in ds.feature_columns
    assert {"atr_14_frac", "macd_norm", "volume_ratio_20"} <= set(ds.feature_columns)
    # y is the take-profit indicator of the kept rows' labels
    joined = f.join(labels, on="timestamp", suffix="_src")
    assert (joined["y"] == (joined["label_src"] == 1).cast(pl.Int8)).all()
    assert c["positive_rate"] == pytest.approx(f["y"].mean())


def _tiny(symbol_rows: list[int], y: list[int], extra_feature: bool = False) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "timestamp": _ts(symbol_rows),
            "t0": _ts(symbol_rows),
            "t1": _ts([r + 2 for r in symbol_rows]),
            "a": [float(r) for r in symbol_rows],
            "y": pl.Series(y, dtype=pl.Int8),
            "sample_weight": [1.0] * len(y),
        }
    )
    return frame.with_columns(b=pl.lit(0.0)) if extra_feature else frame


def _tiny_dataset(
    rows: list[int], y: list[int], features: list[str] | None = None
) -> TrainingDataset:
    counts = {
        "rows_in": len(rows) + 1,
        "dropped_warmup": 1,
        "dropped_unlabelled": 0,
        "dropped_missing_features": 0,
        "rows_out": len(rows),
        "positive_rate": float(np.mean(y)),
    }
    return TrainingDataset(
        _tiny(rows, y, features is not None), features or ["a"], counts, "take_profit"
    )


def test_global_dataset_is_the_time_sorted_union_with_a_symbol_column() -> None:
    btc = _tiny_dataset([0, 2, 4], [1, 0, 0])
    eth = _tiny_dataset([1, 2, 3], [1, 1, 0])
    ds = build_global_dataset({"ETH": eth, "BTC": btc})
    f = ds.frame
    assert f.columns[:2] == ["timestamp", "symbol"]
    assert f["timestamp"].to_list() == _ts([0, 1, 2, 2, 3, 4])
    assert f["symbol"].to_list() == ["BTC", "ETH", "BTC", "ETH", "ETH", "BTC"]
    assert f["y"].to_list() == [1, 1, 0, 1, 0, 0]
    assert ds.feature_columns == ["a"] and ds.symbol is None and ds.target == "take_profit"
    assert ds.counts == {
        "rows_in": 8,
        "dropped_warmup": 2,
        "dropped_unlabelled": 0,
        "dropped_missing_features": 0,
        "rows_out": 6,
        "positive_rate": pytest.approx(0.5),
        "symbols": 2,
    }


def test_global_dataset_refuses_symbols_with_different_features_or_targets() -> None:
    btc = _tiny_dataset([0, 1], [1, 0])
    with pytest.raises(
        DataValidationError, match=r"'ETH' has different feature columns.*extra \['b'\]"
    ):
        build_global_dataset({"BTC": btc, "ETH": _tiny_dataset([0, 1], [1, 0], ["a", "b"])})
    other = _tiny_dataset([0, 1], [1, 0])
    other = TrainingDataset(other.frame, other.feature_columns, other.counts, "fixed_horizon")
    with pytest.raises(DataValidationError, match="target 'fixed_horizon'"):
        build_global_dataset({"BTC": btc, "ETH": other})
    with pytest.raises(DataValidationError, match="no datasets"):
        build_global_dataset({})


def test_fingerprint_is_stable_and_sees_a_changed_value() -> None:
    ds = build_training_dataset(_hand_features(), _hand_labels(), _hand_xs_ranks(), symbol="AAA")
    again = build_training_dataset(_hand_features(), _hand_labels(), _hand_xs_ranks(), symbol="AAA")
    fp = dataset_fingerprint(ds.frame)
    assert fp == dataset_fingerprint(again.frame) == frame_fingerprint(ds.frame)
    assert len(fp) == 16
    changed = ds.frame.with_columns(
        pl.when(pl.col("y") == 1).then(0).otherwise(pl.col("y")).cast(pl.Int8).alias("y")
    )
    assert dataset_fingerprint(changed) != fp
