"""Look-ahead checks: features survive truncation, leaky computations and joins are caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.features import (
    MTF_FEATURES,
    compute_features,
    mtf_column,
    multi_timeframe_snapshot,
)
from quant_assets.lib.leakage import (
    default_cut_points,
    mtf_lookahead_violations,
    recursive_analysis,
)
from quant_assets_tests.lib.bars_factory import make_bars, resample_bars


@pytest.fixture(scope="module")
def hourly() -> pl.DataFrame:
    return make_bars(1200, "1h", seed=31, gaps=True, flat=True)


def _mtf_inputs(hourly: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    base = compute_features(hourly, "1h")
    higher = {tf: compute_features(resample_bars(hourly, tf), tf) for tf in ("4h", "1d")}
    return base, higher


def test_default_cut_points_are_inside_the_history():
    assert default_cut_points(600, 5) == [100, 200, 300, 400, 500]
    assert default_cut_points(3, 5) == [1, 2]


@pytest.mark.parametrize("timeframe", ["1h", "1d"])
def test_features_are_bit_identical_on_truncated_history(hourly, timeframe):
    # cuts inside the seed windows, at the warm-up boundary, after gaps and flat stretches
    cuts = [1, 14, 26, 34, 199, 200, 201, 517, 1000, 1199]
    report = recursive_analysis(
        lambda bars: compute_features(bars, timeframe), hourly, cut_points=cuts, rtol=0.0
    )
    assert report.ok, report.describe()
    assert report.cuts == tuple(cuts)


def test_a_compute_peeking_one_bar_ahead_is_caught(hourly):
    report = recursive_analysis(
        lambda bars: bars.with_columns(next_close=pl.col("close").shift(-1)), hourly
    )
    assert not report.ok
    assert report.cut == 200 and report.row == 199 and report.column == "next_close"
    assert report.truncated_value is None
    assert report.full_value == hourly["close"][200]
    assert "row 199 column 'next_close'" in report.describe()


def test_a_centered_rolling_window_is_caught(hourly):
    report = recursive_analysis(
        lambda bars: bars.select(pl.col("close").rolling_mean(5, center=True)), hourly
    )
    assert not report.ok
    assert (report.cut, report.row) == (200, 198)  # the window of row 198 reaches row 200


def test_a_normalisation_over_the_whole_history_is_caught(hourly):
    # z-scoring with the full-sample mean is the classic silent leak: every row changes a bit
    report = recursive_analysis(
        lambda bars: bars.select(
            (pl.col("close") - pl.col("close").mean()) / pl.col("close").std()
        ),
        hourly,
    )
    assert not report.ok and report.row == 0


def test_dropping_warmup_rows_is_allowed_but_reordering_is_not(hourly):
    warm_only = recursive_analysis(
        lambda bars: compute_features(bars, "1h").filter("is_warm"), hourly, rtol=0.0
    )
    assert warm_only.ok, warm_only.describe()
    reversed_rows = recursive_analysis(lambda bars: bars.reverse(), hourly)
    assert not reversed_rows.ok and reversed_rows.row == 0


def test_a_changing_schema_is_reported_not_raised(hourly):
    report = recursive_analysis(
        lambda bars: bars.select("close") if bars.height < 1200 else bars.select("open"), hourly
    )
    assert not report.ok and report.row is None and "columns" in report.problem


def test_snapshot_from_closed_bars_only_has_no_violations(hourly):
    base, higher = _mtf_inputs(hourly)
    snapshot = multi_timeframe_snapshot(base, "1h", higher)
    assert snapshot["timestamp"].equals(base["timestamp"])
    # daily ema_26_slope needs 31 days of the ~55 covered: values really arrive after that
    assert snapshot.drop("timestamp").drop_nulls().height > 400
    assert mtf_lookahead_violations(base, "1h", snapshot, higher) == 0


def test_a_join_on_open_times_is_caught(hourly):
    base, higher = _mtf_inputs(hourly)
    leaky = base.select("timestamp")
    for tf, frame in higher.items():
        leaky = leaky.join_asof(
            frame.select("timestamp", *(pl.col(f).alias(mtf_column(tf, f)) for f in MTF_FEATURES)),
            on="timestamp",
            strategy="backward",
        )
    # Every hour but the last of a day sees a day that has not closed (nulls aside).
    assert mtf_lookahead_violations(base, "1h", leaky, higher) > base.height // 2


def test_daily_value_first_reaches_hourly_bars_at_the_23h_bar():
    day0 = datetime(2024, 5, 1, tzinfo=UTC)
    hours = pl.datetime_range(day0, day0 + timedelta(days=3, hours=-1), "1h", eager=True)
    base = pl.DataFrame({"timestamp": hours.dt.cast_time_unit("us")})
    days = pl.DataFrame(
        {
            "timestamp": [day0 + timedelta(days=d) for d in range(3)],
            **{f: [10.0, 20.0, 30.0] for f in MTF_FEATURES},
        }
    ).with_columns(pl.col("timestamp").dt.cast_time_unit("us"))
    snap = multi_timeframe_snapshot(base, "1h", {"1d": days})
    rsi = dict(zip(snap["timestamp"], snap["tf1d_rsi_14"], strict=True))
    assert rsi[day0 + timedelta(hours=22)] is None  # closes 23:00, day 1 still open
    assert rsi[day0 + timedelta(hours=23)] == 10.0  # closes 00:00 of day 2 = day 1's close
    assert rsi[day0 + timedelta(days=1, hours=22)] == 10.0
    assert rsi[day0 + timedelta(days=1, hours=23)] == 20.0
    assert rsi[day0 + timedelta(days=2, hours=23)] == 30.0
    assert mtf_lookahead_violations(base, "1h", snap, {"1d": days}) == 0
    early = snap.with_columns(
        pl.when(pl.col("timestamp") == day0 + timedelta(days=1, hours=22))
        .then(20.0)
        .otherwise(pl.col("tf1d_rsi_14"))
        .alias("tf1d_rsi_14")
    )
    assert mtf_lookahead_violations(base, "1h", early, {"1d": days}) == 1


def test_the_whole_multi_timeframe_pipeline_survives_truncation(hourly):
    # Truncating mid-day leaves an incomplete daily bar; the snapshot must not use it.
    def snapshot_of(bars: pl.DataFrame) -> pl.DataFrame:
        base, higher = _mtf_inputs(bars)
        return multi_timeframe_snapshot(base, "1h", higher)

    report = recursive_analysis(snapshot_of, hourly, cut_points=[250, 611, 1111], rtol=0.0)
    assert report.ok, report.describe()


def test_violation_check_refuses_a_snapshot_of_other_rows(hourly):
    base, higher = _mtf_inputs(hourly)
    snapshot = multi_timeframe_snapshot(base, "1h", higher)
    with pytest.raises(DataValidationError, match="not the base bars"):
        mtf_lookahead_violations(base, "1h", snapshot.head(10), higher)


def test_label_lookahead_report_accepts_causal_labels_and_catches_leaks() -> None:
    from quant_assets.lib.features import compute_features
    from quant_assets.lib.labels import triple_barrier_labels
    from quant_assets.lib.leakage import label_lookahead_report

    bars = make_bars(1500, seed=3)
    atr = compute_features(bars, "1h")["atr_14"]

    def labels_of(b: pl.DataFrame) -> pl.DataFrame:
        return triple_barrier_labels(
            b["timestamp"],
            b["open"],
            b["high"],
            b["low"],
            b["close"],
            atr.head(b.height),
            timeframe="1h",
        )

    report = label_lookahead_report(labels_of, bars, "1h")
    assert report.ok, report.describe()

    # labelling the tail from partial information changes labels once more data arrives
    def partial_tail(b: pl.DataFrame) -> pl.DataFrame:
        out = labels_of(b)
        return out.with_columns(
            pl.col("label").fill_null(0), pl.col("t1").fill_null(pl.col("timestamp"))
        )

    report = label_lookahead_report(partial_tail, bars, "1h")
    assert not report.ok and "before the entry bar closed" in report.describe()

    # an outcome stamped at the entry bar's open is known too early
    def early_t1(b: pl.DataFrame) -> pl.DataFrame:
        return labels_of(b).with_columns(
            pl.col("t1") - pl.duration(hours=1) * pl.col("holding_bars")
        )

    assert not label_lookahead_report(early_t1, bars, "1h").ok

    # a label that peeks past its own horizon (10 bars ahead, H = 5) changes when history is cut
    def peeking(b: pl.DataFrame) -> pl.DataFrame:
        peek = (b["close"].shift(-10) > b["close"]).fill_null(False).cast(pl.Int8)
        return labels_of(b).with_columns(label=pl.when(pl.col("label").is_not_null()).then(peek))

    report = label_lookahead_report(peeking, bars, "1h")
    assert not report.ok and report.column == "label"


def test_an_assets_own_output_is_checked_without_computing_it_again(hourly):
    """Assets pass the frame they computed (`full=`): `compute` runs once per cut only, and the
    stored frame itself is what the truncated histories must reproduce, so a stored output that
    differs from what the code computes is caught."""
    from quant_assets.lib.leakage import label_lookahead_report

    calls: list[int] = []

    def counted(bars: pl.DataFrame) -> pl.DataFrame:
        calls.append(bars.height)
        return compute_features(bars, "1h")

    full = compute_features(hourly, "1h")
    report = recursive_analysis(counted, hourly, n_cuts=5, full=full)
    assert report.ok, report.describe()
    assert calls == list(report.cuts)  # five truncated runs, no sixth on the whole history

    tampered = full.with_columns(pl.col("rsi_14") * 1.01)  # not what the code computes
    report = recursive_analysis(counted, hourly, n_cuts=5, full=tampered)
    assert not report.ok and report.column == "rsi_14"

    def labels_of(bars: pl.DataFrame) -> pl.DataFrame:
        calls.append(-bars.height)
        return bars.select(
            "timestamp",
            label=(pl.col("close").shift(-3) > pl.col("close")).cast(pl.Int8),
            t1=pl.col("timestamp").shift(-3) + pl.duration(hours=1),
        )

    calls.clear()
    report = label_lookahead_report(labels_of, hourly, "1h", full=labels_of(hourly))
    assert report.ok, report.describe()
    assert calls == [-hourly.height] + [-cut for cut in report.cuts]
