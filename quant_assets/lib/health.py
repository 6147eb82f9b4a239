"""What the retrain rules and the model-health view know about a partition's model: its state read
from (and written to) registry version tags, and one row of the model-health table."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import polars as pl

from quant_assets.lib.live import live_signal_quality
from quant_assets.lib.retrain import (
    LiveState,
    ModelState,
    RetrainPolicy,
    RetrainReason,
    retrain_mode,
    retrain_reasons,
)
from quant_assets.lib.signals import resolve_long_threshold
from quant_assets.lib.tracking import (
    ALIAS_CHAMPION,
    RegistryView,
    Tracker,
    registered_model_name,
)

if TYPE_CHECKING:
    from quant_assets.lib.stores import TradingStore

TAG_VERSION_LABEL = "version_label"
TAG_TRAINED_AT = "trained_at"
TAG_TRAINED_THROUGH = "trained_through"
TAG_DATA_THROUGH = "data_through"
TAG_TRAINING_HIT_RATE = "training_hit_rate"
TAG_TRAINING_SHARPE = "training_sharpe"
TAG_INCREMENTAL_STEPS = "incremental_steps"
TAG_RETRAIN_MODE = "retrain_mode"
TAG_RETRAIN_REASONS = "retrain_reasons"
#: signal quality's Sharpe is per signalled bar (mean / std of side x label return), the same at
#: training and live; not annualized, since the label returns of consecutive bars overlap and a
#: bars-per-year scaling would inflate it (a 1h model showed "23")
PER_SIGNAL = 1.0
#: run tags of retrain runs: the mode to train in ("complete", "incremental", "auto") and why
RUN_TAG_MODE = "quant_assets/retrain_mode"
RUN_TAG_REASONS = "quant_assets/retrain_reasons"


class ModelTagError(ValueError):
    """A registered model version carries a state tag that cannot be read."""


def _parse_time(name: str, value: str | None, where: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ModelTagError(f"{where}: tag {name}={value!r} is not an ISO timestamp") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _parse_float(name: str, value: str | None, where: str) -> float | None:
    if value in (None, "", "nan", "None"):
        return None
    try:
        number = float(value)
    except ValueError as exc:
        raise ModelTagError(f"{where}: tag {name}={value!r} is not a number") from exc
    return number if math.isfinite(number) else None


def model_state_from_tags(tags: Mapping[str, str], where: str = "model version") -> ModelState:
    """The ModelState a registered version's tags describe. A version registered before these tags
    existed has trained_at only (or nothing): the rules that need the rest are then skipped."""
    trained_at = _parse_time(TAG_TRAINED_AT, tags.get(TAG_TRAINED_AT), where)
    if trained_at is None:
        return ModelState()
    steps = tags.get(TAG_INCREMENTAL_STEPS) or "0"
    if not steps.isdigit():
        raise ModelTagError(f"{where}: tag {TAG_INCREMENTAL_STEPS}={steps!r} is not a count")
    return ModelState(
        trained_at=trained_at,
        last_labelled_at_training=_parse_time(TAG_DATA_THROUGH, tags.get(TAG_DATA_THROUGH), where),
        training_hit_rate=_parse_float(
            TAG_TRAINING_HIT_RATE, tags.get(TAG_TRAINING_HIT_RATE), where
        ),
        training_sharpe=_parse_float(TAG_TRAINING_SHARPE, tags.get(TAG_TRAINING_SHARPE), where),
        incremental_steps=int(steps),
        version_label=tags.get(TAG_VERSION_LABEL) or None,
    )


def fitted_through(tags: Mapping[str, str], where: str = "model version") -> datetime | None:
    """The newest row a version was fitted on (its last development row): an incremental retrain
    continues it on the development rows after this one, which it has never been fitted on."""
    return _parse_time(TAG_TRAINED_THROUGH, tags.get(TAG_TRAINED_THROUGH), where)


def model_state_tags(
    state: ModelState, trained_through: datetime, mode: str, reasons: str
) -> dict[str, str]:
    """Version tags recording `state` (the inverse of model_state_from_tags), the last row the
    model was fitted on, and why it was trained. state.last_labelled_at_training is the newest
    labelled row of the data at training time (hold-out included): the new-samples rule counts
    labels after it."""

    def text(value: float | None) -> str:
        return "nan" if value is None else f"{value:.6g}"

    return {
        TAG_VERSION_LABEL: state.version_label or "",
        TAG_TRAINED_AT: state.trained_at.astimezone(UTC).isoformat() if state.trained_at else "",
        TAG_TRAINED_THROUGH: trained_through.astimezone(UTC).isoformat(),
        TAG_DATA_THROUGH: state.last_labelled_at_training.astimezone(UTC).isoformat()
        if state.last_labelled_at_training
        else "",
        TAG_TRAINING_HIT_RATE: text(state.training_hit_rate),
        TAG_TRAINING_SHARPE: text(state.training_sharpe),
        TAG_INCREMENTAL_STEPS: str(state.incremental_steps),
        TAG_RETRAIN_MODE: mode,
        TAG_RETRAIN_REASONS: reasons or "manual",
    }


@dataclass(frozen=True)
class PartitionStatus:
    """What the retrain rules see for one partition, and what they decided."""

    symbol: str
    timeframe: str
    model_name: str
    version: str | None
    role: str  # "champion", "challenger" (no champion yet) or "none"
    state: ModelState
    live: LiveState
    live_trades: int
    live_hit_rate: float | None
    live_sharpe: float | None
    reasons: list[RetrainReason]
    mode: str
    newest_label: str | None
    fitted_through: datetime | None

    @property
    def key(self) -> str:
        return f"{self.symbol}|{self.timeframe}"


def _labelled(frame: pl.DataFrame | None, now: datetime) -> pl.DataFrame:
    """Labels realized by `now`: a triple-barrier label is known once its exit time t1 has passed."""
    if frame is None or frame.is_empty():
        return pl.DataFrame(schema={"timestamp": pl.Datetime("us", "UTC")})
    return frame.filter(pl.col("label").is_not_null() & (pl.col("t1") <= now))


def partition_status(
    tracker: Tracker | RegistryView,
    store: TradingStore,
    labels: pl.DataFrame | None,
    symbol: str,
    timeframe: str,
    now: datetime,
    policy: RetrainPolicy,
    *,
    tp_mult: float = 1.75,
    sl_mult: float = 1.0,
    edge: float = 0.05,
    min_live_trades: int = 20,
) -> PartitionStatus:
    """The current model of a partition (champion, else newest version), its live quality against
    realized labels, and the retrain reasons and mode the rules give.

    Age and new samples count from the newest version trained, even one the gates rejected:
    retraining on the data a rejected challenger already saw would change nothing. Degradation
    compares the champion's live signals with its own training reference, and triggers once per
    champion version. Live sides use the champion's own long threshold (else break-even of the
    barriers `tp_mult`/`sl_mult` plus `edge`), as the `signals` asset does; only predictions for
    bars after the champion's data count as live (`signals` also scores recent history), and
    fewer than `min_live_trades` signalled bars are not evidence of degradation yet."""
    name = registered_model_name(symbol, timeframe)
    champion_version = tracker.aliases(name).get(ALIAS_CHAMPION)
    newest = tracker.latest_version(name)
    version = champion_version or newest
    role = "champion" if champion_version else ("challenger" if version else "none")
    tags = tracker.version_tags(name, version) if version else {}
    state = model_state_from_tags(tags, f"{name} v{version}")
    newest_tags = tracker.version_tags(name, newest) if newest and newest != version else tags
    latest = model_state_from_tags(newest_tags, f"{name} v{newest}")
    realized = _labelled(labels, now)
    quality = {"hit_rate": None, "sharpe": None, "n_trades": 0}
    if champion_version and realized.height:
        predictions = store.read_predictions(name, champion_version, symbol, timeframe)
        if state.last_labelled_at_training is not None:
            predictions = predictions.filter(pl.col("timestamp") > state.last_labelled_at_training)
        if predictions.height:
            threshold = resolve_long_threshold(
                None, _float(tags.get("decision_threshold")), tp_mult, sl_mult, edge
            )
            sides = predictions.select(
                "timestamp", (pl.col("prob_up") >= threshold).cast(pl.Int8).alias("side")
            )
            quality = live_signal_quality(sides, realized, now, PER_SIGNAL)
    enough = quality["n_trades"] >= min_live_trades
    live = LiveState(
        now=now,
        labelled_timestamps=realized["timestamp"],
        live_hit_rate=quality["hit_rate"] if enough else None,
        live_sharpe=quality["sharpe"] if enough else None,
    )
    rules_state = dataclasses.replace(
        state,
        trained_at=latest.trained_at,
        last_labelled_at_training=latest.last_labelled_at_training,
        version_label=latest.version_label,
    )
    reasons = [
        RetrainReason(r.code, r.detail, f"degradation:{name}:v{champion_version}")
        if r.code == "degradation"
        else r
        for r in retrain_reasons(rules_state, live, policy)
    ]
    newest_label = latest.version_label
    return PartitionStatus(
        symbol,
        timeframe,
        name,
        version,
        role,
        state,
        live,
        int(quality["n_trades"]),
        quality["hit_rate"],
        quality["sharpe"],
        reasons,
        retrain_mode(reasons, state, policy) if reasons else "none",
        newest_label,
        fitted_through(tags, f"{name} v{version}"),
    )


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def health_table(
    statuses: list[PartitionStatus], promotions: pl.DataFrame, now: datetime
) -> pl.DataFrame:
    """One row per partition: model version and label, age, training versus live hit rate and
    Sharpe, the retrain reasons (and mode) the rules give now, and the last promotion decision."""
    last: dict[tuple[str, str], str] = {}
    if promotions.height:
        for row in promotions.sort("decided_at").iter_rows(named=True):
            if row["model_name"] != registered_model_name(row["symbol"], row["timeframe"]):
                continue  # another agent of the partition (volatility, meta-learners)
            last[(row["symbol"], row["timeframe"])] = (
                f"{row['action']} v{row['version']} {row['decided_at']:%Y-%m-%d %H:%M}"
            )
    rows = []
    for status in statuses:
        state = status.state
        age = (now - state.trained_at).total_seconds() / 86400 if state.trained_at else None
        rows.append(
            {
                "partition": status.key,
                "version": status.version or "",
                "label": state.version_label or "",
                "role": status.role,
                "age_days": _rounded(age, 1),
                "hit_rate_train": _rounded(state.training_hit_rate),
                "hit_rate_live": _rounded(status.live_hit_rate),
                "sharpe_train": _rounded(state.training_sharpe, 2),
                "sharpe_live": _rounded(status.live_sharpe, 2),
                "live_trades": status.live_trades,
                "retrain": ", ".join(r.code for r in status.reasons) or "no",
                "mode": status.mode,
                "why": "; ".join(r.detail for r in status.reasons),
                "last_promotion": last.get((status.symbol, status.timeframe), "never"),
            }
        )
    schema = {
        "partition": pl.String,
        "version": pl.String,
        "label": pl.String,
        "role": pl.String,
        "age_days": pl.Float64,
        "hit_rate_train": pl.Float64,
        "hit_rate_live": pl.Float64,
        "sharpe_train": pl.Float64,
        "sharpe_live": pl.Float64,
        "live_trades": pl.Int64,
        "retrain": pl.String,
        "mode": pl.String,
        "why": pl.String,
        "last_promotion": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)
