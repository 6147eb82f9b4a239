"""Retraining rules for one symbol x timeframe model: why to retrain, how (complete or incremental),
and which version label the new model gets. Pure functions; the retrain sensor wraps them.

Every datetime must be timezone-aware (compared as instants; keys are written in UTC). Each
`RetrainReason.key` names the underlying cause, not the moment it was seen: it stays the same on
every evaluation until the model is replaced (a new `trained_at` yields new keys), so a sensor
cursor holding seen keys triggers each cause once. Keys are unique within one partition only; the
sensor prefixes them with the partition key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import polars as pl

ReasonCode = Literal["no_model", "model_age", "new_samples", "degradation"]
RetrainMode = Literal["complete", "incremental"]

FIRST_VERSION = "v1.0"
_VERSION_RE = re.compile(r"v([1-9][0-9]*)\.(0|[1-9][0-9]*)")
# Metrics are hand-entered or round-tripped through MLflow: a drop within this of the tolerance is
# "exactly at" it, so float rounding cannot flip the boundary case.
_BOUNDARY_EPS = 1e-9


def _require_aware(owner: str, name: str, value: datetime | None) -> None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{owner}.{name} must be timezone-aware (UTC), got naive {value!r}")


def _finite_or_none(value: float | None) -> float | None:
    # An undefined metric (NaN Sharpe of a flat signal, no trades yet) is no evidence either way.
    return value if value is not None and math.isfinite(value) else None


def _check_hit_rate(owner: str, name: str, value: float | None) -> None:
    if value is not None and math.isfinite(value) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}.{name} must be a fraction in [0, 1], got {value}")


@dataclass(frozen=True)
class RetrainPolicy:
    """Thresholds of the retraining rules; degradation_tolerance is relative (0.15 = 15 % worse)."""

    max_model_age_days: float = 30
    min_new_samples: int = 20
    degradation_tolerance: float = 0.15
    max_incremental_steps: int = 5

    def __post_init__(self) -> None:
        if self.max_model_age_days <= 0 or self.min_new_samples < 1:
            raise ValueError(
                "RetrainPolicy.max_model_age_days must be > 0 and min_new_samples >= 1, got "
                f"{self.max_model_age_days} and {self.min_new_samples}"
            )
        if not 0.0 <= self.degradation_tolerance < 1.0:
            raise ValueError(
                "RetrainPolicy.degradation_tolerance must be a fraction in [0, 1), got "
                f"{self.degradation_tolerance}"
            )
        if self.max_incremental_steps < 0:
            raise ValueError(
                f"RetrainPolicy.max_incremental_steps must be >= 0, got {self.max_incremental_steps}"
            )


@dataclass(frozen=True)
class ModelState:
    """The current (champion) model of a partition; `ModelState()` means there is none yet.

    last_labelled_at_training is the timestamp of the newest labelled bar the model was trained on;
    incremental_steps counts incremental updates since the last complete training.
    """

    trained_at: datetime | None = None
    last_labelled_at_training: datetime | None = None
    training_hit_rate: float | None = None
    training_sharpe: float | None = None
    incremental_steps: int = 0
    version_label: str | None = None

    def __post_init__(self) -> None:
        _require_aware("ModelState", "trained_at", self.trained_at)
        _require_aware("ModelState", "last_labelled_at_training", self.last_labelled_at_training)
        _check_hit_rate("ModelState", "training_hit_rate", self.training_hit_rate)
        if self.incremental_steps < 0:
            raise ValueError(
                f"ModelState.incremental_steps must be >= 0, got {self.incremental_steps}"
            )

    @property
    def exists(self) -> bool:
        return self.trained_at is not None


def _utc_us(ts: datetime) -> np.datetime64:
    return np.datetime64(ts.astimezone(UTC).replace(tzinfo=None), "us")


def _sorted_distinct(us: np.ndarray) -> np.ndarray:
    # sort, then drop repeats: np.unique takes ~10x longer on 1M datetime64 values (numpy 2.4)
    ordered = np.sort(us)
    first = np.ones(ordered.size, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def _timestamp_array(values: Sequence[datetime] | pl.Series | np.ndarray) -> np.ndarray:
    """Sorted distinct instants as naive-UTC datetime64[us], from a polars Datetime Series with a
    time zone, a numpy datetime64 array (read as UTC) or aware datetimes; nulls/NaT rejected."""
    where = "LiveState.labelled_timestamps"
    if isinstance(values, pl.Series):
        if not isinstance(values.dtype, pl.Datetime) or values.dtype.time_zone is None:
            raise ValueError(
                f"{where} must be a time-zone aware Datetime Series, not {values.dtype}"
            )
        if values.null_count():
            raise ValueError(f"{where}[{int(values.is_null().arg_true()[0])}] is null")
        us = values.dt.convert_time_zone("UTC").dt.replace_time_zone(None).dt.cast_time_unit("us")
        return _sorted_distinct(us.to_numpy())
    if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.datetime64):
        us = values.astype("datetime64[us]")
        if np.isnat(us).any():
            raise ValueError(f"{where}[{int(np.isnat(us).argmax())}] is NaT")
        return _sorted_distinct(us)
    stamps = list(values)
    for i, ts in enumerate(stamps):
        if not isinstance(ts, datetime):
            raise ValueError(f"{where}[{i}] must be a datetime, got {ts!r}")
        _require_aware("LiveState", f"labelled_timestamps[{i}]", ts)
    return _sorted_distinct(np.array([_utc_us(ts) for ts in stamps], dtype="datetime64[us]"))


@dataclass(frozen=True, eq=False)
class LiveState:
    """What is known now: the open times of every labelled bar available, and the champion's live
    hit rate and Sharpe of its signals against realized labels (None or NaN when not measurable yet).

    labelled_timestamps: aware datetimes, a time-zone aware polars Datetime Series or a numpy
    datetime64 array (UTC), in any order with duplicates; stored as their sorted distinct instants,
    a naive-UTC datetime64[us] array, so a million bars count in milliseconds.
    """

    now: datetime
    labelled_timestamps: Sequence[datetime] | pl.Series | np.ndarray = field(default_factory=tuple)
    live_hit_rate: float | None = None
    live_sharpe: float | None = None

    def __post_init__(self) -> None:
        _require_aware("LiveState", "now", self.now)
        _check_hit_rate("LiveState", "live_hit_rate", self.live_hit_rate)
        object.__setattr__(self, "labelled_timestamps", _timestamp_array(self.labelled_timestamps))

    def count_after(self, cutoff: datetime) -> int:
        """How many distinct labelled bars opened strictly after `cutoff` (aware)."""
        _require_aware("LiveState.count_after", "cutoff", cutoff)
        stamps = self.labelled_timestamps
        return int(stamps.size - np.searchsorted(stamps, _utc_us(cutoff), side="right"))


@dataclass(frozen=True)
class RetrainReason:
    """One cause to retrain: `code` for routing, `detail` for people, `key` for the sensor cursor."""

    code: ReasonCode
    detail: str
    key: str


def _iso_utc(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


def _degraded(training: float | None, live: float | None, tolerance: float) -> float | None:
    """The relative drop of `live` below `training` when it exceeds `tolerance`, else None.

    The drop is measured against |training|, so a negative training Sharpe (-0.5) is degraded by
    live values below -0.5 - tolerance * 0.5; with a training value of exactly 0 any strictly
    worse live value is an unbounded relative drop and counts as degraded.
    """
    training, live = _finite_or_none(training), _finite_or_none(live)
    if training is None or live is None or live >= training:
        return None
    if training == 0.0:
        return math.inf
    drop = (training - live) / abs(training)
    return drop if drop > tolerance + _BOUNDARY_EPS else None


def retrain_reasons(
    model: ModelState, live: LiveState, policy: RetrainPolicy
) -> list[RetrainReason]:
    """Every rule that calls for retraining, in the order no_model, model_age, new_samples,
    degradation; an empty list means keep the model.

    - no_model: there is no model yet (the only reason given then).
    - model_age: now - trained_at is more than max_model_age_days (exactly that age does not fire).
    - new_samples: at least min_new_samples distinct labelled bars newer than
      last_labelled_at_training. Skipped when that timestamp is unknown (None). The key records the
      multiple of min_new_samples reached (20, 40, ...), so if no retrain follows, each further
      batch asks again.
    - degradation: live hit rate or live Sharpe more than degradation_tolerance worse than at
      training, relative to |training value| (see `_degraded`); a sub-rule whose training or live
      value is None/NaN is skipped. One reason per model, naming every metric that degraded.
    """
    trained_at = model.trained_at
    if trained_at is None:
        return [
            RetrainReason("no_model", "no model has been trained for this partition", "no_model")
        ]
    trained = _iso_utc(trained_at)
    reasons: list[RetrainReason] = []

    age = live.now - trained_at
    if age > timedelta(days=policy.max_model_age_days):
        reasons.append(
            RetrainReason(
                "model_age",
                f"model trained at {trained} is {age.total_seconds() / 86400:.2f} days old "
                f"(> {policy.max_model_age_days} days)",
                f"model_age:{trained}",
            )
        )

    if model.last_labelled_at_training is not None:
        cutoff = model.last_labelled_at_training
        n_new = live.count_after(cutoff)
        if n_new >= policy.min_new_samples:
            crossed = (n_new // policy.min_new_samples) * policy.min_new_samples
            reasons.append(
                RetrainReason(
                    "new_samples",
                    f"{n_new} labelled bars newer than {_iso_utc(cutoff)} "
                    f"(>= {policy.min_new_samples})",
                    f"new_samples:{trained}:{crossed}",
                )
            )

    degraded = []
    for name, at_training, now_live in (
        ("hit rate", model.training_hit_rate, live.live_hit_rate),
        ("sharpe", model.training_sharpe, live.live_sharpe),
    ):
        drop = _degraded(at_training, now_live, policy.degradation_tolerance)
        if drop is not None:
            degraded.append(
                f"live {name} {now_live:.4g} vs {at_training:.4g} at training "
                f"({drop:.1%} worse > {policy.degradation_tolerance:.0%})"
            )
    if degraded:
        reasons.append(RetrainReason("degradation", "; ".join(degraded), f"degradation:{trained}"))
    return reasons


def retrain_mode(
    reasons: Iterable[RetrainReason], model: ModelState, policy: RetrainPolicy
) -> RetrainMode:
    """ "complete" when there is no model, a reason is degradation (the model itself is wrong, so
    updating it is not enough), or max_incremental_steps increments were already made since the
    last complete training; otherwise "incremental"."""
    codes = {r.code for r in reasons}
    if not model.exists or "no_model" in codes or "degradation" in codes:
        return "complete"
    if model.incremental_steps >= policy.max_incremental_steps:
        return "complete"
    return "incremental"


def parse_version(label: str) -> tuple[int, int]:
    """(major, minor) of a label "v<major>.<minor>" with major >= 1 and no leading zeros."""
    match = _VERSION_RE.fullmatch(label) if isinstance(label, str) else None
    if match is None:
        raise ValueError(
            f"malformed model version label {label!r}: expected 'v<major>.<minor>' like 'v1.0' "
            "(major >= 1, no leading zeros)"
        )
    return int(match.group(1)), int(match.group(2))


def next_version(model: ModelState, mode: RetrainMode) -> str:
    """The label of the model a retrain in `mode` produces: "v1.0" for the first model, a minor bump
    for an incremental step (v1.0 -> v1.1), a major bump for a complete retrain (v1.3 -> v2.0)."""
    if mode not in ("complete", "incremental"):
        raise ValueError(f"unknown retrain mode {mode!r}; expected 'complete' or 'incremental'")
    if not model.exists:
        if mode == "incremental":
            raise ValueError("an incremental retrain needs an existing model; there is none yet")
        return FIRST_VERSION
    if model.version_label is None:
        raise ValueError(
            f"model trained at {model.trained_at} has no version label; cannot number its successor"
        )
    major, minor = parse_version(model.version_label)
    return f"v{major}.{minor + 1}" if mode == "incremental" else f"v{major + 1}.0"


def unseen_reasons(reasons: Iterable[RetrainReason], seen_keys: set[str]) -> list[RetrainReason]:
    """The reasons whose key is not in `seen_keys` (nor repeated earlier in `reasons`), in order."""
    seen = set(seen_keys)
    fresh = []
    for reason in reasons:
        if reason.key not in seen:
            seen.add(reason.key)
            fresh.append(reason)
    return fresh
