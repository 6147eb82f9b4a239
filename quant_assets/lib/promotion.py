"""Champion/challenger promotion gates: absolute quality bars, plus "beats the champion" when one exists.

Metric names are those of `performance.performance_metrics` (sortino, profit_factor, max_drawdown
as a positive fraction, trade_count, total_return, sharpe) and `metrics.classification_metrics` (ece).
A NaN makes its comparison false, so a NaN metric fails its gate (an undefined Sortino or profit
factor is never evidence of quality); in the either-or gate `beats_champion` a NaN comparison only
counts as "not better" and the other comparison may still pass it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
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

    def __post_init__(self) -> None:
        for name in ("max_drawdown", "max_ece"):
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

    def describe(self) -> str:
        """E.g. "1.53 >= 1.2: pass"."""
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


def evaluate_gates(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    config: GateConfig,
) -> GateDecision:
    """Gate the challenger's out-of-sample metrics; with no champion the absolute gates decide.

    Absolute: sortino >= min_sortino, profit_factor >= min_profit_factor, max_drawdown <=
    config.max_drawdown, ece <= max_ece, trade_count >= min_trades. With a champion also:
    beats_champion (total_return or sharpe strictly above the champion's; skipped when
    require_beat_champion is False) and drawdown_vs_champion (max_drawdown <= champion's +
    champion_drawdown_tolerance).
    """

    def ours(key: str) -> float:
        return _metric(challenger, key, "challenger")

    gates = [
        _compare("sortino", ours("sortino"), ">=", config.min_sortino),
        _compare("profit_factor", ours("profit_factor"), ">=", config.min_profit_factor),
        _compare("max_drawdown", ours("max_drawdown"), "<=", config.max_drawdown),
        _compare("ece", ours("ece"), "<=", config.max_ece),
        _compare("trades", ours("trade_count"), ">=", float(config.min_trades)),
    ]
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
