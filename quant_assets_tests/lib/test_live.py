"""Signal quality at training and live: hand-computed hit rates and Sharpe ratios, only realized
labels counted live, and the two measures agreeing on the same signals."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.live import live_signal_quality, signal_quality, training_signal_quality
from quant_assets.lib.signals import make_signals

T0 = datetime(2026, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)
# long bar +2 %, long -1 %, short on -3 % (+3 %): results 0.02, -0.01, 0.03, mean 0.04 / 3,
# squared deviations (2/300)^2 + (7/300)^2 + (5/300)^2 = 78/90000, / 2 = 13/30000
SHARPE_PER_BAR = (0.04 / 3) / math.sqrt(13 / 30_000)  # 0.64051...


def test_signal_quality_by_hand() -> None:
    side = [1, 0, -1, 1, 1]
    ret = [0.02, 0.5, 0.01, -0.01, 0.03]  # the flat bar's +50 % is not a trade
    q = signal_quality(side, ret, periods_per_year=4)
    # results 0.02, -0.01 (short on +1 %), -0.01, 0.03: mean 0.0075, var 0.001275 / 3
    assert q["n_trades"] == 4 and q["hit_rate"] == 0.5
    assert q["sharpe"] == pytest.approx(0.0075 / math.sqrt(0.000425) * 2)
    assert q["sharpe"] == pytest.approx(0.727607, abs=1e-6)
    assert signal_quality(pl.Series([1, -1]), pl.Series([0.0, -0.02]), 1)["hit_rate"] == 0.5


@pytest.mark.parametrize(
    ("side", "ret", "hit_rate", "n_trades"),
    [
        ([], [], math.nan, 0),
        ([0, 0], [0.1, -0.1], math.nan, 0),
        ([1, 0], [0.01, 0.2], 1.0, 1),  # one trade: no spread to measure
        ([1, -1], [0.01, -0.01], 1.0, 2),  # identical results: zero spread
    ],
)
def test_undefined_sharpe_is_nan(side, ret, hit_rate, n_trades) -> None:
    q = signal_quality(np.array(side, dtype=float), np.array(ret, dtype=float), 8760)
    assert math.isnan(q["sharpe"]) and q["n_trades"] == n_trades
    assert q["hit_rate"] == hit_rate or (math.isnan(hit_rate) and math.isnan(q["hit_rate"]))


def test_signal_quality_rejects_bad_inputs() -> None:
    with pytest.raises(DataValidationError, match="side must be -1, 0 or \\+1 at row 1: 2.0"):
        signal_quality([1, 2], [0.1, 0.1], 1)
    with pytest.raises(DataValidationError, match="side has 2 values but realized_ret 1"):
        signal_quality([1, 0], [0.1], 1)
    with pytest.raises(DataValidationError, match="finite on signalled bars at row 2: nan"):
        signal_quality([0, 1, -1], [math.nan, 0.1, math.nan], 1)
    # an unrealized (NaN) return on a flat bar does not matter
    assert signal_quality([0, 1], [math.nan, 0.1], 1)["n_trades"] == 1


def test_training_signal_quality_goes_long_at_or_above_the_threshold() -> None:
    prob = [0.7, 0.4, 0.55, 0.6]
    ret = [0.02, -0.5, -0.01, 0.03]
    q = training_signal_quality(prob, ret, threshold=0.55, periods_per_year=9)
    assert q["n_trades"] == 3 and q["hit_rate"] == pytest.approx(2 / 3)
    assert q["sharpe"] == pytest.approx(SHARPE_PER_BAR * 3)
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\), got 1.0"):
        training_signal_quality(prob, ret, 1.0, 9)
    with pytest.raises(DataValidationError, match="oof_prob is NaN at row 1"):
        training_signal_quality([0.6, math.nan], [0.1, 0.1], 0.5, 9)


def _predictions(sides: list[int], tz: str = "UTC") -> pl.DataFrame:
    ts = [T0 + k * H for k in range(len(sides))]
    return pl.DataFrame(
        {"timestamp": ts, "side": sides},
        schema={"timestamp": pl.Datetime("us", "UTC"), "side": pl.Int8},
    ).with_columns(pl.col("timestamp").dt.convert_time_zone(tz))


def _labels(rets: list[float | None]) -> pl.DataFrame:
    """Hourly labels whose outcome is known 3 hours after the bar opens (null when unlabelled)."""
    ts = [T0 + k * H for k in range(len(rets))]
    t1 = [None if r is None else t + 3 * H for t, r in zip(ts, rets, strict=True)]
    return pl.DataFrame(
        {"timestamp": ts, "ret": rets, "t1": t1},
        schema={
            "timestamp": pl.Datetime("us", "UTC"),
            "ret": pl.Float64,
            "t1": pl.Datetime("us", "UTC"),
        },
    )


def test_live_quality_counts_only_labels_realized_by_now() -> None:
    preds = _predictions([1, 1, 0, -1, 1, 1, 1])
    labels = _labels([0.02, -0.01, 0.05, -0.03, 0.04, None])  # bar 6 has no label row at all
    now = T0 + 6 * H  # bars 0-3 realized (bar 3's t1 is exactly now), bar 4's at 7h not yet
    q = live_signal_quality(preds, labels, now, periods_per_year=4)
    assert q["n_realized"] == 4 and q["n_trades"] == 3
    assert q["hit_rate"] == pytest.approx(2 / 3)
    assert q["sharpe"] == pytest.approx(SHARPE_PER_BAR * 2)
    # the unrealized label cannot move the numbers, whatever it holds
    other_future = _labels([0.02, -0.01, 0.05, -0.03, -0.9, None])
    assert live_signal_quality(preds, other_future, now, 4) == q
    # the same instant in another zone, predictions stored in another zone: same answer
    berlin = now.astimezone(timezone(timedelta(hours=1)))
    assert (
        live_signal_quality(
            _predictions([1, 1, 0, -1, 1, 1, 1], "Europe/Berlin"), labels, berlin, 4
        )
        == q
    )
    later = live_signal_quality(preds, labels, now + H, 4)
    assert (later["n_realized"], later["n_trades"], later["hit_rate"]) == (5, 4, 0.75)


def test_live_quality_of_nothing_is_nan() -> None:
    empty_preds = _predictions([])
    for preds, labels in (
        (empty_preds, _labels([0.01, 0.02])),
        (_predictions([1, 1]), _labels([])),
    ):
        q = live_signal_quality(preds, labels, T0 + 100 * H, 8760)
        assert (q["n_trades"], q["n_realized"]) == (0, 0)
        assert math.isnan(q["hit_rate"]) and math.isnan(q["sharpe"])
    nothing_realized = live_signal_quality(_predictions([1, 1]), _labels([0.01, 0.02]), T0, 8760)
    assert (nothing_realized["n_realized"], nothing_realized["n_trades"]) == (0, 0)


def test_live_and_training_measures_agree_on_the_same_signals() -> None:
    rng = np.random.default_rng(3)
    n = 400
    prob = rng.uniform(0.2, 0.8, n)
    ret = rng.normal(0.001, 0.01, n)
    ts = pl.datetime_range(T0, T0 + (n - 1) * H, "1h", time_unit="us", time_zone="UTC", eager=True)
    signals = make_signals(ts, np.full(n, 100.0), np.full(n, 1.0), prob, threshold_long=0.6)
    labels = pl.DataFrame({"timestamp": ts, "ret": ret, "t1": ts + timedelta(hours=5)})
    live = live_signal_quality(signals, labels, T0 + 1000 * H, 8760)
    training = training_signal_quality(prob, ret, 0.6, 8760)
    assert live.pop("n_realized") == n
    assert live == training and training["n_trades"] == int((prob >= 0.6).sum()) > 100


def test_live_inputs_are_checked() -> None:
    labels = _labels([0.01])
    with pytest.raises(DataValidationError, match=r"labels\): missing column\(s\) t1"):
        live_signal_quality(_predictions([1]), labels.drop("t1"), T0, 1)
    naive = _predictions([1]).with_columns(pl.col("timestamp").dt.replace_time_zone(None))
    with pytest.raises(DataValidationError, match="column timestamp must be a time-zone aware"):
        live_signal_quality(naive, labels, T0, 1)
    twice = pl.concat([_predictions([1]), _predictions([0])])
    with pytest.raises(DataValidationError, match=r"timestamps must be unique .* at row 0"):
        live_signal_quality(twice, labels, T0, 1)
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        live_signal_quality(_predictions([1]), labels, datetime(2026, 3, 2), 1)
    with pytest.raises(ValueError, match="periods_per_year must be the number of bars a year"):
        live_signal_quality(_predictions([1]), labels, T0, "1h")
    with pytest.raises(ValueError, match="periods_per_year must be a positive number, got 0"):
        signal_quality([1], [0.01], 0)
