"""Tests of the promotion gates: each gate on both sides of its threshold, NaN, champion or not, tags."""

from __future__ import annotations

import math

import pytest

from quant_assets.lib.promotion import GateConfig, evaluate_gates

CONFIG = GateConfig()
GOOD = {
    "sortino": 1.53,
    "profit_factor": 1.4,
    "max_drawdown": 0.04,
    "ece": 0.05,
    "trade_count": 35.0,
    "total_return": 0.12,
    "sharpe": 1.1,
}
CHAMPION = {**GOOD, "total_return": 0.10, "sharpe": 1.3, "max_drawdown": 0.035}


def gate_passed(challenger: dict[str, float], champion: dict[str, float] | None = None) -> dict:
    decision = evaluate_gates(challenger, champion, CONFIG)
    return {g.name: g.passed for g in decision.gates}


def test_good_challenger_without_champion_is_promoted_on_absolute_gates() -> None:
    decision = evaluate_gates(GOOD, None, CONFIG)
    assert decision.promote and not decision.has_champion
    assert [g.name for g in decision.gates] == [
        "sortino",
        "profit_factor",
        "max_drawdown",
        "ece",
        "trades",
    ]
    assert decision.reason == "all 5 gates pass (no champion, absolute gates only)"


@pytest.mark.parametrize(
    ("key", "passing", "failing", "gate"),
    [
        ("sortino", 1.2, 1.19, "sortino"),
        ("profit_factor", 1.15, 1.1499, "profit_factor"),
        ("profit_factor", math.inf, 0.0, "profit_factor"),
        ("max_drawdown", 0.06, 0.0601, "max_drawdown"),
        ("ece", 0.15, 0.1501, "ece"),
        ("trade_count", 20.0, 19.0, "trades"),
    ],
)
def test_each_absolute_gate_at_and_past_its_threshold(
    key: str, passing: float, failing: float, gate: str
) -> None:
    assert gate_passed({**GOOD, key: passing})[gate]
    failed = evaluate_gates({**GOOD, key: failing}, None, CONFIG)
    assert not failed.promote
    assert [g.name for g in failed.gates if not g.passed] == [gate]
    assert failed.reason == f"failed {gate} (no champion, absolute gates only)"


@pytest.mark.parametrize("key", ["sortino", "profit_factor", "max_drawdown", "ece", "trade_count"])
def test_nan_metric_fails_its_gate(key: str) -> None:
    decision = evaluate_gates({**GOOD, key: math.nan}, None, CONFIG)
    assert not decision.promote
    assert [g.name for g in decision.gates if not g.passed] == [
        "trades" if key == "trade_count" else key
    ]


def test_beats_champion_by_return_or_by_sharpe() -> None:
    # total_return 0.12 > 0.10 although sharpe 1.1 < 1.3: beats by return.
    decision = evaluate_gates(GOOD, CHAMPION, CONFIG)
    assert decision.promote and decision.has_champion
    assert [g.name for g in decision.gates][-2:] == ["beats_champion", "drawdown_vs_champion"]
    by_sharpe = {**GOOD, "total_return": 0.09, "sharpe": 1.31}
    assert gate_passed(by_sharpe, CHAMPION)["beats_champion"]
    neither = {**GOOD, "total_return": 0.10, "sharpe": 1.3}  # ties are not better
    assert not gate_passed(neither, CHAMPION)["beats_champion"]
    assert not evaluate_gates(neither, CHAMPION, CONFIG).promote


def test_beats_champion_nan_comparison_counts_as_not_better() -> None:
    assert gate_passed({**GOOD, "sharpe": math.nan}, CHAMPION)["beats_champion"]
    assert not gate_passed({**GOOD, "total_return": math.nan}, CHAMPION)["beats_champion"]
    nan_champion = {**CHAMPION, "total_return": math.nan, "sharpe": math.nan}
    assert not gate_passed(GOOD, nan_champion)["beats_champion"]


def test_drawdown_vs_champion_allows_the_tolerance_only() -> None:
    # champion 0.035 + tolerance 0.01 = 0.045
    assert gate_passed({**GOOD, "max_drawdown": 0.045}, CHAMPION)["drawdown_vs_champion"]
    worse = evaluate_gates({**GOOD, "max_drawdown": 0.0451}, CHAMPION, CONFIG)
    assert [g.name for g in worse.gates if not g.passed] == ["drawdown_vs_champion"]
    assert worse.reason == "failed drawdown_vs_champion (vs champion)"
    # The absolute gate still binds when the champion itself drew down more.
    deep_champion = {**CHAMPION, "max_drawdown": 0.2}
    deep = gate_passed({**GOOD, "max_drawdown": 0.07}, deep_champion)
    assert deep["drawdown_vs_champion"] and not deep["max_drawdown"]


def test_require_beat_champion_false_drops_only_that_gate() -> None:
    config = GateConfig(require_beat_champion=False)
    neither = {**GOOD, "total_return": 0.0, "sharpe": 0.0}
    decision = evaluate_gates(neither, CHAMPION, config)
    assert decision.promote
    assert "beats_champion" not in [g.name for g in decision.gates]
    assert "drawdown_vs_champion" in [g.name for g in decision.gates]


def test_tags_and_rows_format() -> None:
    decision = evaluate_gates({**GOOD, "ece": 0.2}, CHAMPION, CONFIG)
    tags = decision.as_tags()
    assert tags["decision"] == "reject"
    assert tags["has_champion"] == "true"
    assert tags["gate.sortino"] == "1.53 >= 1.2: pass"
    assert tags["gate.ece"] == "0.2 <= 0.15: fail"
    assert tags["gate.trades"] == "35 >= 20: pass"
    assert tags["gate.beats_champion"] == "total_return 0.12 > 0.1 or sharpe 1.1 > 1.3: pass"
    assert tags["gate.drawdown_vs_champion"] == "0.04 <= 0.045: pass"
    assert tags["reason"] == "failed ece (vs champion)"
    assert all(isinstance(v, str) for v in tags.values())
    rows = decision.as_rows()
    assert rows[3] == {
        "name": "ece",
        "value": 0.2,
        "op": "<=",
        "threshold": 0.15,
        "passed": False,
        "applicable": True,
        "detail": "0.2 <= 0.15: fail",
    }
    assert evaluate_gates(GOOD, None, CONFIG).as_tags()["decision"] == "promote"


def test_missing_metric_names_it() -> None:
    with pytest.raises(KeyError, match="challenger metrics lack 'ece'"):
        evaluate_gates({k: v for k, v in GOOD.items() if k != "ece"}, None, CONFIG)
    with pytest.raises(KeyError, match="champion metrics lack 'sharpe'"):
        evaluate_gates(GOOD, {k: v for k, v in CHAMPION.items() if k != "sharpe"}, CONFIG)


def test_config_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="max_drawdown"):
        GateConfig(max_drawdown=6.0)
    with pytest.raises(ValueError, match="min_trades"):
        GateConfig(min_trades=-1)


def _selection(**overrides: object):
    from quant_assets.lib.promotion import SelectionStats

    values = {
        "dsr": 0.97,
        "n_trials": 9,
        "trials_variance": 2.5e-5,
        "track_record": 1500.0,
        "min_track_record": 700.0,
        "profitable_fold_share": 0.8,
        "n_folds": 5,
        "pbo": 0.1,
        "pbo_reason": "",
    }
    return SelectionStats(**(values | overrides))


def test_selection_gates_each_on_both_sides() -> None:
    decision = evaluate_gates(GOOD, None, CONFIG, selection=_selection())
    assert decision.promote
    assert [g.name for g in decision.gates][-4:] == ["dsr", "min_trl", "profitable_folds", "pbo"]
    tags = decision.as_tags()
    assert tags["gate.dsr"] == "DSR 0.97 >= 0.95 (N=9 trials, V=2.5e-05): pass"
    assert tags["gate.min_trl"] == "hold-out 1500 periods >= MinTRL 700 (confidence 0.95): pass"
    assert tags["gate.profitable_folds"] == "0.8 of 5 folds profitable >= 0.8: pass"
    assert tags["gate.pbo"] == "0.1 <= 0.5: pass"
    for overrides, gate in (
        ({"dsr": 0.949}, "dsr"),
        ({"dsr": math.nan}, "dsr"),
        ({"min_track_record": 1500.5}, "min_trl"),
        ({"min_track_record": math.inf}, "min_trl"),
        ({"profitable_fold_share": 0.6}, "profitable_folds"),
        ({"pbo": 0.51}, "pbo"),
    ):
        decision = evaluate_gates(GOOD, None, CONFIG, selection=_selection(**overrides))
        assert [g.name for g in decision.gates if not g.passed] == [gate], overrides
    # without selection stats (the ensemble's gates) the selection gates are not part of the stack
    assert "dsr" not in [g.name for g in evaluate_gates(GOOD, None, CONFIG).gates]


def test_pbo_without_enough_trials_is_not_applicable_with_its_reason() -> None:
    decision = evaluate_gates(
        GOOD, None, CONFIG, selection=_selection(pbo=None, pbo_reason="3 trials, fewer than 5")
    )
    assert decision.promote
    pbo = decision.gates[-1]
    assert pbo.name == "pbo" and not pbo.applicable
    assert decision.as_tags()["gate.pbo"] == "not applicable (3 trials, fewer than 5)"
    assert decision.as_rows()[-1]["applicable"] is False


def test_ensemble_calibration_gate_is_not_applicable_without_a_meta_learner() -> None:
    from quant_assets.lib.promotion import ensemble_calibration

    ece, not_applicable = ensemble_calibration([0.04, 0.09])
    assert ece == 0.09 and not_applicable == {}
    ece, not_applicable = ensemble_calibration([])
    assert math.isnan(ece)
    assert "fell back to voting" in not_applicable["ece"]
    metrics = {**GOOD, "ece": ece}
    decision = evaluate_gates(metrics, None, CONFIG, not_applicable=not_applicable)
    assert decision.promote
    assert decision.as_tags()["gate.ece"].startswith("not applicable (no meta-learner in use")
    # the NaN alone, without the reason, fails the gate: never a vacuous pass
    assert not evaluate_gates(metrics, None, CONFIG).promote
    with pytest.raises(ValueError, match="unknown gate"):
        evaluate_gates(GOOD, None, CONFIG, not_applicable={"nonsense": "why"})
