"""Model state in version tags (both directions), the model-health table, and refresh crons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from quant_assets.lib.health import (
    TAG_DATA_THROUGH,
    TAG_TRAINED_AT,
    ModelTagError,
    PartitionStatus,
    fitted_through,
    health_table,
    model_state_from_tags,
    model_state_tags,
)
from quant_assets.lib.retrain import LiveState, ModelState, RetrainReason
from quant_assets.lib.timeframes import refresh_cron

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def test_model_state_round_trips_through_version_tags() -> None:
    state = ModelState(
        trained_at=T0,
        last_labelled_at_training=T0 - timedelta(days=1),
        training_hit_rate=0.5625,
        training_sharpe=-0.75,
        incremental_steps=2,
        version_label="v3.2",
    )
    tags = model_state_tags(state, T0 - timedelta(days=30), "incremental", "new_samples")
    assert model_state_from_tags(tags) == state
    assert fitted_through(tags) == T0 - timedelta(days=30)
    assert tags["retrain_mode"] == "incremental" and tags["retrain_reasons"] == "new_samples"


def test_missing_and_unreadable_tags() -> None:
    assert model_state_from_tags({}) == ModelState()  # registered before state tags existed
    partial = model_state_from_tags({TAG_TRAINED_AT: "2026-06-01T00:00:00"})
    assert partial.trained_at == T0 and partial.last_labelled_at_training is None
    nan = model_state_from_tags({TAG_TRAINED_AT: T0.isoformat(), "training_sharpe": "nan"})
    assert nan.training_sharpe is None
    with pytest.raises(ModelTagError, match="direction.X.1h v3: tag data_through='yesterday'"):
        model_state_from_tags(
            {TAG_TRAINED_AT: T0.isoformat(), TAG_DATA_THROUGH: "yesterday"}, "direction.X.1h v3"
        )
    with pytest.raises(ModelTagError, match="incremental_steps='-1' is not a count"):
        model_state_from_tags({TAG_TRAINED_AT: T0.isoformat(), "incremental_steps": "-1"})


def _status(symbol: str, reasons: list[RetrainReason], state: ModelState, role: str):
    return PartitionStatus(
        symbol=symbol,
        timeframe="4h",
        model_name=f"direction.{symbol}.4h",
        version="3" if state.exists else None,
        role=role,
        state=state,
        live=LiveState(now=T0),
        live_trades=12,
        live_hit_rate=0.4,
        live_sharpe=0.5,
        reasons=reasons,
        mode="complete" if reasons else "none",
        newest_label=state.version_label,
        fitted_through=None,
    )


def test_health_table_explains_each_partition() -> None:
    trained = ModelState(
        trained_at=T0 - timedelta(days=40),
        training_hit_rate=0.6,
        training_sharpe=1.234,
        version_label="v2.0",
    )
    age = RetrainReason("model_age", "model is 40.00 days old (> 30 days)", "k")
    # the newest row is the volatility agent's: the direction model's decision is what is shown
    promotions = pl.DataFrame(
        {
            "decided_at": [
                T0 - timedelta(days=41),
                T0 - timedelta(days=40),
                T0 - timedelta(days=1),
            ],
            "model_name": ["direction.BTCUSDT.4h"] * 2 + ["volatility.BTCUSDT.4h"],
            "symbol": ["BTCUSDT"] * 3,
            "timeframe": ["4h"] * 3,
            "action": ["promote", "reject", "promote"],
            "version": ["2", "3", "7"],
        }
    )
    table = health_table(
        [
            _status("BTCUSDT", [age], trained, "champion"),
            _status(
                "ETHUSDT", [RetrainReason("no_model", "none yet", "no_model")], ModelState(), "none"
            ),
        ],
        promotions,
        T0,
    )
    btc, eth = table.row(0, named=True), table.row(1, named=True)
    assert btc["age_days"] == 40.0 and btc["label"] == "v2.0" and btc["role"] == "champion"
    assert btc["hit_rate_train"] == 0.6 and btc["hit_rate_live"] == 0.4
    assert btc["sharpe_train"] == 1.23 and btc["retrain"] == "model_age"
    assert btc["last_promotion"] == "reject v3 " + f"{T0 - timedelta(days=40):%Y-%m-%d %H:%M}"
    assert eth["role"] == "none" and eth["age_days"] is None and eth["last_promotion"] == "never"
    assert eth["retrain"] == "no_model" and eth["why"] == "none yet"


@pytest.mark.parametrize(
    ("timeframe", "delay", "cron"),
    [
        ("1m", 5, "* * * * *"),
        ("5m", 2, "2-59/5 * * * *"),
        ("15m", 30, "14-59/15 * * * *"),
        ("1h", 5, "5 * * * *"),
        ("4h", 5, "5 */4 * * *"),
        ("1d", 10, "10 0 * * *"),
    ],
)
def test_refresh_cron_follows_bar_closes(timeframe: str, delay: int, cron: str) -> None:
    assert refresh_cron(timeframe, delay) == cron


def test_refresh_cron_rejects_bad_delays() -> None:
    with pytest.raises(ValueError, match="< 60 minutes"):
        refresh_cron("4h", 60)
    with pytest.raises(ValueError, match=">= 0"):
        refresh_cron("1h", -1)
