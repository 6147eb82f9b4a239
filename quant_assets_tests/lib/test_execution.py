"""The execution agent's rules, one bar per rule (lib/execution.py)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from quant_assets.lib.execution import ExecutionRules, decision_counts, execution_decisions
from quant_assets.lib.signals import RANGE_TO_SIGMA, make_signals

T0 = datetime(2025, 1, 1, tzinfo=UTC)
RULES = ExecutionRules(threshold_long=0.6, threshold_short=0.3, horizon=4, periods_per_year=8760)


def _bars(**columns) -> pl.DataFrame:
    n = len(columns["prob_up"])
    base = {
        "timestamp": [T0 + timedelta(hours=i) for i in range(n)],
        "close": [100.0] * n,
        "atr_14": [1.0] * n,
    }
    return pl.DataFrame({**base, **columns})


def test_direction_both_sides_with_atr_levels_matching_the_labels() -> None:
    bars = _bars(prob_up=[0.7, 0.2, 0.45, None])
    out = execution_decisions(bars, RULES)
    assert out["side"].to_list() == [1, -1, 0, 0]
    # without a volatility forecast the unit is the ATR: the labels' and evaluation's barriers
    reference = make_signals(
        bars["timestamp"],
        bars["close"],
        bars["atr_14"],
        bars["prob_up"],
        threshold_long=0.6,
        threshold_short=0.3,
    )
    assert out["stop_loss"].to_list() == pytest.approx(
        reference["stop_loss"].to_list(), nan_ok=True
    )
    assert out["take_profit"].to_list()[:2] == pytest.approx([101.75, 98.25])
    sigma_bar = 1.0 / 100.0 / RANGE_TO_SIGMA
    size = min(0.10 / (sigma_bar * math.sqrt(8760)), 1.0)
    assert out["size"].to_list() == pytest.approx([size, size, 0.0, 0.0])
    assert out["sigma"][0] == pytest.approx(sigma_bar * 2.0)  # sqrt(h = 4)
    assert decision_counts(out) == {"longs": 1, "shorts": 1, "flat": 2}
    meta = json.loads(out["meta"][1])
    assert meta["source"] == "direction" and meta["sigma_source"] == "atr"
    assert meta["threshold_short"] == 0.3


def test_volatility_forecast_sets_size_and_levels() -> None:
    # forecast h-bar sigma 4 % (2 % a bar at h = 4): half the size of a 1 % bar sigma
    out = execution_decisions(_bars(prob_up=[0.7, 0.2], sigma=[0.04, 0.04]), RULES)
    unit = RANGE_TO_SIGMA * 0.02 * 100.0
    assert out["stop_loss"].to_list() == pytest.approx([100 - unit, 100 + unit])
    assert out["take_profit"].to_list() == pytest.approx([100 + 1.75 * unit, 100 - 1.75 * unit])
    assert out["size"][0] == pytest.approx(0.10 / (0.02 * math.sqrt(8760)))
    assert json.loads(out["meta"][0])["sigma_source"] == "volatility_agent"


def test_ensemble_and_regime_gate() -> None:
    bars = _bars(
        prob_up=[0.7, 0.7, 0.45, 0.7, 0.7],
        ensemble_side=[None, -1, 1, None, 1],
        ensemble_size=[None, 0.4, 0.8, None, 0.9],
        gate=[True, True, True, False, False],
        regime=["bull", "bear", "range", "range", "range"],
    )
    out = execution_decisions(bars, RULES)
    # the ensemble overrides; gate off flattens the direction model's side, not the ensemble's
    assert out["side"].to_list() == [1, -1, 1, 0, 1]
    assert out["strength"].to_list()[1:3] == pytest.approx([0.4, 0.8])
    metas = [json.loads(m) for m in out["meta"]]
    assert [m["source"] for m in metas] == ["direction", "ensemble", "ensemble", "flat", "ensemble"]
    assert metas[3]["gated"] and metas[3]["regime"] == "range" and not metas[4]["gated"]
    ungated = execution_decisions(bars, ExecutionRules(0.6, 0.3, use_regime_gate=False))
    assert ungated["side"][3] == 1
    full = execution_decisions(bars, ExecutionRules(0.6, 0.3, target_vol=None))
    assert full["size"].to_list() == [1.0, 1.0, 1.0, 0.0, 1.0]
