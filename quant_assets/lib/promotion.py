"""Champion/challenger promotion gates: absolute quality bars, "beats the champion" when one exists,
and, given the selection statistics of `trials`, the gates a statistician would ask for: deflated
Sharpe ratio of the best of N trials, minimum track record length, profitable folds and PBO.

Metric names are those of `performance.performance_metrics` (sortino, profit_factor, max_drawdown
as a positive fraction, trade_count, total_return, sharpe) and `metrics.classification_metrics` (ece).
A NaN makes its comparison false, so a NaN metric fails its gate (an undefined Sortino or profit
factor is never evidence of quality); in the either-or gate `beats_champion` a NaN comparison only
counts as "not better" and the other comparison may still pass it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PROMOTE = "promote"
REJECT = "reject"

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
}


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the promotion gates; max_drawdown is a positive fraction (0.06 = 6%)."""

    min_sortino: float = 1.2
    min_profit_factor: float = 1.15
    max_drawdown: float = 0.06
    max_ece: float = 0.15
    min_trades: int = 20
    # The challenger's max drawdown may exceed the champion's by at most this much.
    champion_drawdown_tolerance: float = 0.01
    require_beat_champion: bool = True
    # Selection gates (used when evaluate_gates gets SelectionStats):
    min_dsr: float = 0.95
    """Deflated Sharpe ratio of the selected trial's out-of-fold returns, N and V of every trial."""
    min_trl_confidence: float = 0.95
    """The hold-out must be at least the minimum track record length for this confidence..."""
    min_trl_benchmark_sharpe: float = 0.0
    """...that the true annualized Sharpe exceeds this benchmark."""
    min_profitable_folds: float = 0.8
    """Share of validation folds whose out-of-fold backtest made money (0.8 = 4 of 5 folds)."""
    max_pbo: float = 0.5
    """Probability of backtest overfitting (CSCV across the trials), when there are enough trials:
    above 0.5 the in-sample choice more often than not trails the median trial out of sample.
    Stricter caps reject real edges: when every threshold candidate shares the edge their ranking
    is noise (benchmarks/bench_false_promotion.py: 0.2 failed 13 of 24 planted partitions on PBO
    alone, while 0 of 200 random walks were promoted with or without it)."""

    def __post_init__(self) -> None:
        for name in (
            "max_drawdown",
            "max_ece",
            "min_dsr",
            "min_profitable_folds",
            "max_pbo",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"GateConfig.{name} must be a fraction in [0, 1], got {value}")
        if self.min_trades < 0 or self.champion_drawdown_tolerance < 0:
            raise ValueError(
                "GateConfig.min_trades and champion_drawdown_tolerance must be >= 0, got "
                f"{self.min_trades} and {self.champion_drawdown_tolerance}"
            )


@dataclass(frozen=True)
class Gate:
    """One gate: `value op threshold` and whether it held; `detail` replaces that text when the
    gate is more than one comparison (beats_champion)."""

    name: str
    value: float
    threshold: float
    op: str
    passed: bool
    detail: str = ""
    applicable: bool = True

    def describe(self) -> str:
        """E.g. "1.53 >= 1.2: pass", or "not applicable (reason)"."""
        if not self.applicable:
            return f"not applicable ({self.detail})"
        text = self.detail or f"{self.value:.4g} {self.op} {self.threshold:.4g}"
        return f"{text}: {'pass' if self.passed else 'fail'}"


@dataclass(frozen=True)
class GateDecision:
    """Outcome of `evaluate_gates`: promote only if every gate passed."""

    promote: bool
    gates: list[Gate]
    has_champion: bool
    reason: str

    @property
    def action(self) -> str:
        return PROMOTE if self.promote else REJECT

    def as_tags(self) -> dict[str, str]:
        """String tags (MLflow / Dagster): decision, reason, has_champion and gate.<name> each."""
        tags = {
            "decision": self.action,
            "reason": self.reason,
            "has_champion": str(self.has_champion).lower(),
        }
        return tags | {f"gate.{gate.name}": gate.describe() for gate in self.gates}

    def as_rows(self) -> list[dict[str, object]]:
        """One dict per gate (name, value, op, threshold, passed, detail), for a metadata table."""
        return [
            {
                "name": g.name,
                "value": g.value,
                "op": g.op,
                "threshold": g.threshold,
                "passed": g.passed,
                "applicable": g.applicable,
                "detail": g.describe(),
            }
            for g in self.gates
        ]


def _metric(metrics: Mapping[str, float], key: str, whose: str) -> float:
    if key not in metrics:
        raise KeyError(
            f"{whose} metrics lack {key!r} (have: {', '.join(sorted(metrics)) or 'none'}); "
            "pass performance_metrics(...) | classification_metrics(...)"
        )
    return float(metrics[key])


def _compare(name: str, value: float, op: str, threshold: float) -> Gate:
    passed = not (math.isnan(value) or math.isnan(threshold)) and _OPS[op](value, threshold)
    return Gate(name, value, threshold, op, passed)


@dataclass(frozen=True)
class SelectionStats:
    """The evidence behind the selection gates (see lib.trials and lib.overfitting).

    dsr: deflated Sharpe ratio of the selected trial's out-of-fold returns, with n_trials (N) and
    trials_variance (V, per-period Sharpe ratios). track_record / min_track_record: hold-out
    periods and the MinTRL of the hold-out returns (periods; inf when its Sharpe is not above the
    benchmark). profitable_fold_share of n_folds, None when there are no folds (a comparison on
    one window), `folds_reason` saying why. pbo: CSCV probability of backtest overfitting, None
    when not computed, `pbo_reason` saying why. A None makes its gate not applicable; a NaN fails.
    """

    dsr: float
    n_trials: int
    trials_variance: float
    track_record: float
    min_track_record: float
    profitable_fold_share: float | None
    n_folds: int
    pbo: float | None
    pbo_reason: str = ""
    folds_reason: str = ""


def _not_applicable(name: str, op: str, threshold: float, reason: str) -> Gate:
    """A gate whose evidence does not exist for this decision, with the reason; it does not block."""
    return Gate(name, math.nan, threshold, op, True, reason, applicable=False)


def _selection_gates(stats: SelectionStats, config: GateConfig) -> list[Gate]:
    dsr = _compare("dsr", stats.dsr, ">=", config.min_dsr)
    trl = _compare("min_trl", stats.track_record, ">=", stats.min_track_record)
    gates = [
        dataclasses.replace(
            dsr,
            detail=f"DSR {stats.dsr:.4g} >= {config.min_dsr:.4g} "
            f"(N={stats.n_trials} trials, V={stats.trials_variance:.3g})",
        ),
        dataclasses.replace(
            trl,
            detail=f"hold-out {stats.track_record:.0f} periods >= MinTRL "
            f"{stats.min_track_record:.4g} (confidence {config.min_trl_confidence:.4g})",
        ),
    ]
    share = stats.profitable_fold_share
    if share is None:
        gates.append(
            _not_applicable(
                "profitable_folds", ">=", config.min_profitable_folds, stats.folds_reason
            )
        )
    else:
        folds = _compare("profitable_folds", share, ">=", config.min_profitable_folds)
        detail = (
            f"{share:.4g} of {stats.n_folds} folds profitable >= {config.min_profitable_folds:.4g}"
        )
        gates.append(dataclasses.replace(folds, detail=detail))
    if stats.pbo is None:
        gates.append(_not_applicable("pbo", "<=", config.max_pbo, stats.pbo_reason))
    else:
        gates.append(_compare("pbo", stats.pbo, "<=", config.max_pbo))
    return gates


def ensemble_calibration(used_eces: Sequence[float]) -> tuple[float, dict[str, str]]:
    """The ECE an ensemble's calibration gate judges, and the gates not applicable to it.

    The ensemble's calibration is that of the meta-learners it uses: the worst of their ECEs.
    When no meta-learner is in use (every regime fell back to voting) the gate is not applicable
    with that reason, instead of passing on a vacuous ECE of 0:
    `evaluate_gates(metrics | {"ece": ece}, champion, config, not_applicable=not_applicable)`.
    """
    used = [float(e) for e in used_eces]
    if not used:
        return math.nan, {
            "ece": "no meta-learner in use: every regime fell back to voting, which has no "
            "probability to calibrate"
        }
    return max(used), {}


def evaluate_gates(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    config: GateConfig,
    *,
    selection: SelectionStats | None = None,
    not_applicable: Mapping[str, str] | None = None,
) -> GateDecision:
    """Gate the challenger's out-of-sample metrics; with no champion the absolute gates decide.

    Absolute: sortino >= min_sortino, profit_factor >= min_profit_factor, max_drawdown <=
    config.max_drawdown, ece <= max_ece, trade_count >= min_trades. With a champion also:
    beats_champion (total_return or sharpe strictly above the champion's; skipped when
    require_beat_champion is False) and drawdown_vs_champion (max_drawdown <= champion's +
    champion_drawdown_tolerance). With `selection`: dsr >= min_dsr, min_trl (hold-out periods >=
    MinTRL), profitable_folds >= min_profitable_folds and pbo <= max_pbo (each not applicable
    without folds or a PBO). `not_applicable`: absolute gates (by name) that do not apply, with
    the reason; they are recorded as such and do not block.
    """
    skip = dict(not_applicable or {})

    def ours(key: str) -> float:
        if key == "ece" and "ece" in skip:
            return math.nan
        return _metric(challenger, key, "challenger")

    gates = [
        _compare("sortino", ours("sortino"), ">=", config.min_sortino),
        _compare("profit_factor", ours("profit_factor"), ">=", config.min_profit_factor),
        _compare("max_drawdown", ours("max_drawdown"), "<=", config.max_drawdown),
        _compare("ece", ours("ece"), "<=", config.max_ece),
        _compare("trades", ours("trade_count"), ">=", float(config.min_trades)),
    ]
    unknown = set(skip) - {g.name for g in gates}
    if unknown:
        raise ValueError(
            f"not_applicable names unknown gate(s) {sorted(unknown)}; absolute gates are "
            f"{[g.name for g in gates]}"
        )
    gates = [
        Gate(g.name, g.value, g.threshold, g.op, True, skip[g.name], applicable=False)
        if g.name in skip
        else g
        for g in gates
    ]
    if selection is not None:
        gates.extend(_selection_gates(selection, config))
    if champion is not None:

        def theirs(key: str) -> float:
            return _metric(champion, key, "champion")

        if config.require_beat_champion:
            by_return = _compare("", ours("total_return"), ">", theirs("total_return"))
            by_sharpe = _compare("", ours("sharpe"), ">", theirs("sharpe"))
            gates.append(
                Gate(
                    "beats_champion",
                    by_return.value,
                    by_return.threshold,
                    ">",
                    by_return.passed or by_sharpe.passed,
                    detail=(
                        f"total_return {by_return.value:.4g} > {by_return.threshold:.4g} or "
                        f"sharpe {by_sharpe.value:.4g} > {by_sharpe.threshold:.4g}"
                    ),
                )
            )
        gates.append(
            _compare(
                "drawdown_vs_champion",
                ours("max_drawdown"),
                "<=",
                theirs("max_drawdown") + config.champion_drawdown_tolerance,
            )
        )
    failed = [g.name for g in gates if not g.passed]
    context = "vs champion" if champion is not None else "no champion, absolute gates only"
    if failed:
        reason = f"failed {', '.join(failed)} ({context})"
    else:
        reason = f"all {len(gates)} gates pass ({context})"
    return GateDecision(not failed, gates, champion is not None, reason)
