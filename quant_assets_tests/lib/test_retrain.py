"""Retraining rules: each rule at its boundary, dedup keys across evaluations, modes and versions."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.retrain import (
    LiveState,
    ModelState,
    RetrainPolicy,
    RetrainReason,
    next_version,
    parse_version,
    retrain_mode,
    retrain_reasons,
    unseen_reasons,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CUTOFF = T0 - timedelta(hours=1)
POLICY = RetrainPolicy()


def _model(**kw) -> ModelState:
    base = dict(
        trained_at=T0,
        last_labelled_at_training=CUTOFF,
        training_hit_rate=0.6,
        training_sharpe=1.2,
        version_label="v1.0",
    )
    return ModelState(**(base | kw))


def _new_bars(n: int) -> list[datetime]:
    return [CUTOFF + timedelta(hours=k) for k in range(1, n + 1)]


def _codes(reasons: list[RetrainReason]) -> list[str]:
    return [r.code for r in reasons]


def test_policy_defaults_and_validation() -> None:
    assert (
        POLICY.max_model_age_days,
        POLICY.min_new_samples,
        POLICY.degradation_tolerance,
        POLICY.max_incremental_steps,
    ) == (30, 20, 0.15, 5)
    with pytest.raises(ValueError, match="min_new_samples"):
        RetrainPolicy(min_new_samples=0)
    with pytest.raises(ValueError, match="degradation_tolerance"):
        RetrainPolicy(degradation_tolerance=1.5)


def test_no_model_is_the_only_reason() -> None:
    live = LiveState(now=T0, labelled_timestamps=_new_bars(100), live_hit_rate=0.1, live_sharpe=-3)
    assert retrain_reasons(ModelState(), live, POLICY) == [
        RetrainReason("no_model", "no model has been trained for this partition", "no_model")
    ]


def test_fresh_healthy_model_has_no_reasons() -> None:
    live = LiveState(now=T0 + timedelta(days=1), labelled_timestamps=_new_bars(5))
    assert retrain_reasons(_model(), live, POLICY) == []


def test_model_age_fires_only_past_exactly_30_days() -> None:
    at_limit = LiveState(now=T0 + timedelta(days=30))
    assert retrain_reasons(_model(), at_limit, POLICY) == []
    past = LiveState(now=T0 + timedelta(days=30, seconds=1))
    (reason,) = retrain_reasons(_model(), past, POLICY)
    assert reason.code == "model_age"
    assert reason.key == "model_age:2026-01-01T00:00:00+00:00"
    # A clock behind the training time is not an old model.
    assert retrain_reasons(_model(), LiveState(now=T0 - timedelta(days=90)), POLICY) == []


def test_new_samples_fires_at_exactly_20_new_bars() -> None:
    old = [CUTOFF - timedelta(hours=k) for k in range(50)]  # includes CUTOFF itself: already seen
    now = T0 + timedelta(days=2)
    nineteen = LiveState(now=now, labelled_timestamps=old + _new_bars(19))
    assert retrain_reasons(_model(), nineteen, POLICY) == []
    # Duplicates of a new bar are one bar, not two.
    dup = LiveState(now=now, labelled_timestamps=old + _new_bars(19) + _new_bars(1))
    assert retrain_reasons(_model(), dup, POLICY) == []
    twenty = LiveState(now=now, labelled_timestamps=list(reversed(old + _new_bars(20))))
    (reason,) = retrain_reasons(_model(), twenty, POLICY)
    assert reason.code == "new_samples"
    assert reason.key == "new_samples:2026-01-01T00:00:00+00:00:20"
    assert "20 labelled bars newer than 2025-12-31T23:00:00+00:00" in reason.detail


def test_new_samples_key_moves_per_threshold_multiple() -> None:
    def key(n: int) -> str:
        live = LiveState(now=T0, labelled_timestamps=_new_bars(n))
        (reason,) = retrain_reasons(_model(), live, POLICY)
        return reason.key

    assert key(20) == key(39) == "new_samples:2026-01-01T00:00:00+00:00:20"
    assert key(40) == "new_samples:2026-01-01T00:00:00+00:00:40"


def test_new_samples_skipped_when_training_cutoff_unknown() -> None:
    live = LiveState(now=T0, labelled_timestamps=_new_bars(500))
    assert retrain_reasons(_model(last_labelled_at_training=None), live, POLICY) == []


def test_polars_datetime_series_is_accepted() -> None:
    stamps = pl.datetime_range(
        CUTOFF + timedelta(hours=1), CUTOFF + timedelta(hours=20), "1h", time_unit="us", eager=True
    ).dt.replace_time_zone("UTC")
    live = LiveState(now=T0, labelled_timestamps=stamps)
    assert _codes(retrain_reasons(_model(), live, POLICY)) == ["new_samples"]


@pytest.mark.parametrize(
    ("training", "live_value", "fires"),
    [
        (0.6, 0.51, False),  # exactly 15 % worse: 0.09 / 0.6
        (0.6, 0.509, True),
        (0.6, 0.9, False),  # better
    ],
)
def test_hit_rate_degradation_boundary(training: float, live_value: float, fires: bool) -> None:
    live = LiveState(now=T0, live_hit_rate=live_value)
    reasons = retrain_reasons(_model(training_hit_rate=training), live, POLICY)
    assert _codes(reasons) == (["degradation"] if fires else [])


@pytest.mark.parametrize(
    ("training", "live_value", "fires"),
    [
        (1.2, 1.02, False),  # exactly 15 % worse: 0.18 / 1.2
        (1.2, 1.01, True),
        (2.0, 1.7, False),  # exactly 15 % on paper; the float ratio rounds to 0.15000000000000002
        (-0.5, -0.575, False),  # negative: 15 % of |-0.5| lower is the boundary
        (-0.5, -0.58, True),
        (-0.5, -0.4, False),  # less negative is better, not a drop
        (0.0, 0.0, False),
        (0.0, -0.01, True),  # any drop below a zero training value is unbounded
        (1.2, math.nan, False),  # undefined live Sharpe is no evidence
        (math.nan, -5.0, False),
    ],
)
def test_sharpe_degradation_boundary(training: float, live_value: float, fires: bool) -> None:
    live = LiveState(now=T0, live_sharpe=live_value)
    reasons = retrain_reasons(_model(training_sharpe=training), live, POLICY)
    assert _codes(reasons) == (["degradation"] if fires else [])


def test_degradation_none_values_skip_their_sub_rule() -> None:
    bad_live = LiveState(now=T0, live_hit_rate=0.1, live_sharpe=-2.0)
    no_training = _model(training_hit_rate=None, training_sharpe=None)
    assert retrain_reasons(no_training, bad_live, POLICY) == []
    assert retrain_reasons(_model(), LiveState(now=T0), POLICY) == []
    # Hit-rate sub-rule skipped, Sharpe sub-rule still fires.
    only_sharpe = _model(training_hit_rate=None)
    (reason,) = retrain_reasons(only_sharpe, bad_live, POLICY)
    assert "sharpe" in reason.detail and "hit rate" not in reason.detail


def test_both_metrics_degraded_give_one_reason_naming_both() -> None:
    live = LiveState(now=T0, live_hit_rate=0.3, live_sharpe=0.6)
    (reason,) = retrain_reasons(_model(), live, POLICY)
    assert reason.key == "degradation:2026-01-01T00:00:00+00:00"
    assert "live hit rate 0.3 vs 0.6 at training (50.0% worse > 15%)" in reason.detail
    assert "live sharpe 0.6 vs 1.2 at training (50.0% worse > 15%)" in reason.detail


def test_all_rules_in_order() -> None:
    live = LiveState(
        now=T0 + timedelta(days=31), labelled_timestamps=_new_bars(25), live_hit_rate=0.4
    )
    assert _codes(retrain_reasons(_model(), live, POLICY)) == [
        "model_age",
        "new_samples",
        "degradation",
    ]


def test_keys_stable_across_evaluations_and_new_after_retrain() -> None:
    day_31 = LiveState(
        now=T0 + timedelta(days=31), labelled_timestamps=_new_bars(21), live_sharpe=0.5
    )
    day_45 = LiveState(
        now=T0 + timedelta(days=45), labelled_timestamps=_new_bars(33), live_sharpe=0.2
    )
    first = retrain_reasons(_model(), day_31, POLICY)
    later = retrain_reasons(_model(), day_45, POLICY)
    assert _codes(first) == ["model_age", "new_samples", "degradation"]
    assert [r.key for r in first] == [r.key for r in later]
    seen = {r.key for r in first}
    assert unseen_reasons(later, seen) == []

    # The same instant written in another zone is the same model, so the same keys.
    same_model = _model(trained_at=T0.astimezone(timezone(timedelta(hours=2))))
    assert retrain_reasons(same_model, day_31, POLICY) == first

    retrained_at = T0 + timedelta(days=46)
    new_model = _model(
        trained_at=retrained_at,
        last_labelled_at_training=CUTOFF + timedelta(hours=33),
        version_label="v2.0",
    )
    after = retrain_reasons(
        new_model,
        LiveState(
            now=retrained_at + timedelta(days=31),
            labelled_timestamps=_new_bars(60),
            live_sharpe=0.2,
        ),
        POLICY,
    )
    assert _codes(after) == ["model_age", "new_samples", "degradation"]
    assert unseen_reasons(after, seen) == after
    assert after[0].key == "model_age:2026-02-16T00:00:00+00:00"


def test_unseen_reasons_filters_and_deduplicates_in_order() -> None:
    a = RetrainReason("model_age", "old", "model_age:x")
    b = RetrainReason("new_samples", "n", "new_samples:x:20")
    c = RetrainReason("degradation", "d", "degradation:x")
    assert unseen_reasons([a, b, c, b], {"model_age:x"}) == [b, c]
    assert unseen_reasons([], set()) == []


@pytest.mark.parametrize(
    ("codes", "steps", "expected"),
    [
        (["model_age"], 0, "incremental"),
        (["new_samples"], 4, "incremental"),
        (["new_samples"], 5, "complete"),
        (["model_age", "degradation"], 0, "complete"),
    ],
)
def test_retrain_mode(codes: list[str], steps: int, expected: str) -> None:
    reasons = [RetrainReason(code, "", code) for code in codes]
    assert retrain_mode(reasons, _model(incremental_steps=steps), POLICY) == expected


def test_retrain_mode_without_model_is_complete() -> None:
    no_model = [RetrainReason("no_model", "", "no_model")]
    assert retrain_mode(no_model, ModelState(), POLICY) == "complete"


def test_version_sequence_through_rules() -> None:
    policy = RetrainPolicy(max_incremental_steps=2)
    model = ModelState()
    labels = []
    for step in range(4):
        now = T0 + timedelta(days=40 * step)
        reasons = retrain_reasons(model, LiveState(now=now), policy)
        mode = retrain_mode(reasons, model, policy)
        label = next_version(model, mode)
        labels.append(label)
        steps = 0 if mode == "complete" else model.incremental_steps + 1
        model = ModelState(trained_at=now, incremental_steps=steps, version_label=label)
    assert labels == ["v1.0", "v1.1", "v1.2", "v2.0"]


def test_next_version_bumps() -> None:
    assert next_version(_model(version_label="v1.3"), "complete") == "v2.0"
    assert next_version(_model(version_label="v9.9"), "incremental") == "v9.10"
    assert next_version(ModelState(), "complete") == "v1.0"
    assert parse_version("v12.34") == (12, 34)


@pytest.mark.parametrize(
    "label",
    ["1.0", "v1", "v1.0.1", "v01.0", "v1.01", "v0.3", "V1.0", "v1.-1", "", " v1.0", "v1.0 "],
)
def test_malformed_version_labels_raise_naming_the_label(label: str) -> None:
    with pytest.raises(ValueError, match=f"malformed model version label {label!r}"):
        next_version(_model(version_label=label), "incremental")


def test_next_version_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="incremental retrain needs an existing model"):
        next_version(ModelState(), "incremental")
    with pytest.raises(ValueError, match="no version label"):
        next_version(_model(version_label=None), "complete")
    with pytest.raises(ValueError, match="unknown retrain mode"):
        next_version(_model(), "partial")  # type: ignore[arg-type]


def test_naive_datetimes_and_bad_fractions_are_rejected() -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match=r"ModelState.trained_at must be timezone-aware"):
        ModelState(trained_at=naive)
    with pytest.raises(ValueError, match=r"labelled_timestamps\[1\] must be timezone-aware"):
        LiveState(now=T0, labelled_timestamps=[T0, naive])
    with pytest.raises(ValueError, match="live_hit_rate must be a fraction"):
        LiveState(now=T0, live_hit_rate=1.5)


def test_a_million_timestamps_count_by_sorted_search() -> None:
    """1M labelled bars (shuffled, with repeats) in each accepted form count the same distinct
    bars after the cutoff: 1M - 900,000 of the hourly bars start after CUTOFF."""
    rng = np.random.default_rng(0)
    first = CUTOFF - timedelta(hours=899_999)
    hours = rng.permutation(np.r_[np.arange(1_000_000), rng.integers(0, 1_000_000, 5_000)])
    stamps = np.datetime64(first.replace(tzinfo=None), "us") + hours.astype("timedelta64[h]")
    series = pl.Series(stamps).dt.replace_time_zone("UTC")
    model = _model(last_labelled_at_training=CUTOFF)
    for given in (stamps, series, series.dt.convert_time_zone("Asia/Tokyo")):
        live = LiveState(now=T0, labelled_timestamps=given)
        assert live.labelled_timestamps.size == 1_000_000
        assert live.count_after(CUTOFF) == 100_000
        assert live.count_after(CUTOFF + timedelta(minutes=30)) == 100_000
        assert live.count_after(CUTOFF + timedelta(hours=1)) == 100_000 - 1
        assert live.count_after(CUTOFF.astimezone(timezone(timedelta(hours=-5)))) == 100_000
        (reason,) = retrain_reasons(model, live, POLICY)
        assert reason.key == "new_samples:2026-01-01T00:00:00+00:00:100000"
    # the same instants as aware datetimes (a slice: the Python objects are the slow path)
    few = [first + timedelta(hours=int(h)) for h in hours[:2000]]
    expected = int((hours[:2000] >= 900_000).sum())
    assert LiveState(now=T0, labelled_timestamps=few).count_after(CUTOFF) == expected


def test_timestamp_arrays_without_a_zone_or_with_gaps_are_rejected() -> None:
    naive = pl.Series([datetime(2026, 1, 1)])
    with pytest.raises(ValueError, match="must be a time-zone aware Datetime Series"):
        LiveState(now=T0, labelled_timestamps=naive)
    with pytest.raises(ValueError, match=r"labelled_timestamps\[1\] is null"):
        LiveState(now=T0, labelled_timestamps=pl.Series([T0, None]))
    with pytest.raises(ValueError, match=r"labelled_timestamps\[0\] is NaT"):
        LiveState(now=T0, labelled_timestamps=np.array(["NaT"], dtype="datetime64[us]"))
    with pytest.raises(ValueError, match=r"labelled_timestamps\[0\] must be a datetime"):
        LiveState(now=T0, labelled_timestamps=["2026-01-01"])
