"""Performance metrics of per-period strategy returns and trade lists, with pinned conventions.

r_t are simple per-period net returns, n their count, P the periods per year, Phi the standard
normal CDF. A ratio whose denominator is 0 is +-inf by the sign of its numerator, NaN if that is 0.

| metric           | definition                                                                 |
|------------------|----------------------------------------------------------------------------|
| total_return     | prod(1 + r_t) - 1                                                          |
| years            | n / P (bars counted, not calendar time: gaps in the data do not add years) |
| cagr             | (1 + total_return) ** (1 / years) - 1; -1 once equity reaches 0            |
| volatility       | std(r, ddof=1) * sqrt(P)                                                   |
| sharpe           | mean(r) / std(r, ddof=1) * sqrt(P); no risk-free rate; NaN if n < 2        |
| sortino          | mean(r) / sqrt(mean(min(r_t, 0)^2)) * sqrt(P), downside over ALL periods   |
| max_drawdown     | max_t (1 - E_t / max_{s<=t} E_s), E the compounded equity starting at 1.0  |
|                  | (the start counts as a peak); a positive fraction: 0.12 is a 12% drawdown  |
| calmar           | cagr / max_drawdown                                                        |
| psr              | PSR(0) below, on the per-period (not annualised) Sharpe                    |
| dsr              | DSR below with the n_trials given                                          |
| exposure         | fraction of bars with a non-zero position (NaN without positions)          |
| trade_count      | number of trades (NaN without a trade list)                                |
| win_rate         | fraction of trades with ret > 0 (NaN with no trades)                       |
| profit_factor    | sum(ret > 0) / |sum(ret < 0)|: inf with winners and no losers, NaN with no |
|                  | trades or only flat ones, 0 with losers and no winners                     |
| avg_trade_return | mean trade ret (NaN with no trades)                                        |

PSR(SR*) = Phi((SR - SR*) sqrt(n - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)) (Bailey & Lopez de
Prado 2012), SR = mean / std(ddof=1) per period, g3 the skewness and g4 the Pearson kurtosis
(normal = 3), both the biased moment estimators (scipy.stats.skew / kurtosis(fisher=False)).
DSR = PSR(SR*) with SR* = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))), the
expected maximum Sharpe of N independent zero-mean trials (Bailey & Lopez de Prado 2014), gamma
the Euler-Mascheroni constant, V the variance of the trials' per-period Sharpe ratios. When V is
unknown it is the variance of this Sharpe estimate, (1 - g3 SR + (g4 - 1) / 4 SR^2) / (n - 1).
N = 1 means no selection: SR* = 0 and DSR = PSR(0). The champion/challenger evaluation passes the
partition's trials: N = every (model configuration, threshold candidate) fitted or compared for it
and V the variance of their out-of-fold Sharpe ratios (lib.trials); MinTRL and PBO live in
lib.overfitting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Literal

import numpy as np
import polars as pl

from quant_assets.lib.backtest import BacktestResult
from quant_assets.lib.timeframes import periods_per_year as bars_per_year

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()

Returns = np.ndarray | pl.Series | Sequence[float]


def annualization(
    timeframe: str,
    calendar_kind: Literal["24/7", "session"],
    session_hours: float = 7.0,
) -> float:
    """Periods per year of `timeframe` bars: 365 days x 24 h for markets trading around the clock,
    252 sessions x `session_hours` for exchange sessions (one bar a session for "1d")."""
    if calendar_kind == "24/7":
        return bars_per_year(timeframe)
    if calendar_kind == "session":
        if not (0 < session_hours <= 24):
            raise ValueError(f"session_hours must be in (0, 24], got {session_hours!r}")
        return bars_per_year(timeframe, trading_days=252, hours_per_day=session_hours)
    raise ValueError(f"calendar_kind must be '24/7' or 'session', got {calendar_kind!r}")


def _returns_array(returns: Returns, name: str = "returns") -> np.ndarray:
    if isinstance(returns, pl.Series):
        returns = returns.cast(pl.Float64).to_numpy()
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {r.shape}")
    bad = ~np.isfinite(r)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be finite; row {row} is {float(r[row])}")
    return r


def _check_periods(periods_per_year: float) -> float:
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year must be a positive number, got {periods_per_year!r}")
    return float(periods_per_year)


def _ratio(numerator: float, denominator: float) -> float:
    if denominator != 0:
        return numerator / denominator
    return math.copysign(math.inf, numerator) if numerator != 0 else math.nan


def sharpe_ratio(returns: Returns, periods_per_year: float = 1.0) -> float:
    """mean / std (ddof=1) x sqrt(periods_per_year); NaN with fewer than 2 returns.
    periods_per_year=1 gives the per-period Sharpe used by PSR and DSR."""
    r = _returns_array(returns)
    ppy = _check_periods(periods_per_year)
    if r.size < 2:
        return math.nan
    return _ratio(float(r.mean()), float(r.std(ddof=1))) * math.sqrt(ppy)


def sortino_ratio(returns: Returns, periods_per_year: float = 1.0) -> float:
    """mean / sqrt(mean(min(r, 0)^2)) x sqrt(periods_per_year), target return 0, downside deviation
    averaged over all periods (not only the losing ones); NaN with no returns."""
    r = _returns_array(returns)
    ppy = _check_periods(periods_per_year)
    if r.size == 0:
        return math.nan
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    return _ratio(float(r.mean()), downside) * math.sqrt(ppy)


def total_return(returns: Returns) -> float:
    """prod(1 + r) - 1 (0 with no returns)."""
    return float(np.prod(1.0 + _returns_array(returns)) - 1.0)


def cagr(returns: Returns, periods_per_year: float) -> float:
    """Compound annual growth: (1 + total_return) ** (periods_per_year / n) - 1, the elapsed time
    being n / periods_per_year years; -1 once equity is wiped out, NaN with no returns."""
    r = _returns_array(returns)
    ppy = _check_periods(periods_per_year)
    if r.size == 0:
        return math.nan
    growth = float(np.prod(1.0 + r))
    if growth <= 0:
        return -1.0
    return growth ** (ppy / r.size) - 1.0


def drawdowns(equity: np.ndarray | pl.Series | Sequence[float]) -> np.ndarray:
    """1 - equity / running peak of equity, per point (0 at a new high, positive below it)."""
    e = _returns_array(equity, "equity")
    return 1.0 - e / np.maximum.accumulate(e)


def max_drawdown(returns: Returns) -> float:
    """Largest fall of the compounded equity from a previous peak, the initial 1.0 included, as a
    positive fraction (0.12 for a 12% drawdown); 0 with no returns."""
    r = _returns_array(returns)
    equity = np.cumprod(np.concatenate(([1.0], 1.0 + r)))
    return float(drawdowns(equity).max())


def calmar_ratio(returns: Returns, periods_per_year: float) -> float:
    """cagr / max_drawdown (see the module table for zero drawdowns)."""
    return _ratio(cagr(returns, periods_per_year), max_drawdown(returns))


def profit_factor(trade_returns: Returns) -> float:
    """Sum of winning trade returns / |sum of losing ones|: inf with winners and no losers, 0 with
    losers and no winners, NaN with no trades (or only flat ones)."""
    t = _returns_array(trade_returns, "trade_returns")
    return _ratio(float(t[t > 0].sum()), float(-t[t < 0].sum()))


def win_rate(trade_returns: Returns) -> float:
    """Fraction of trades with a positive return; NaN with no trades."""
    t = _returns_array(trade_returns, "trade_returns")
    return float((t > 0).mean()) if t.size else math.nan


def _sharpe_moments(r: np.ndarray) -> tuple[float, float, float] | None:
    """Per-period Sharpe (ddof=1), skewness and Pearson kurtosis (biased moment estimators), or
    None when fewer than 2 returns or no variance leave them undefined."""
    d = r - r.mean()
    m2 = float(np.mean(d**2)) if r.size >= 2 else 0.0
    if m2 == 0:
        return None
    skew = float(np.mean(d**3)) / m2**1.5
    kurt = float(np.mean(d**4)) / m2**2
    return float(r.mean() / r.std(ddof=1)), skew, kurt


def _check_trials(n_trials: int) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int | np.integer) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")


def psr_from_moments(
    sharpe: float, n_obs: int, skew: float, kurtosis: float, sr_benchmark: float = 0.0
) -> float:
    """PSR(sr_benchmark) from a per-period Sharpe ratio, the number of returns behind it, their
    skewness and Pearson kurtosis (normal = 3); NaN when the variance term is not positive."""
    variance = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if n_obs < 2 or not variance > 0:
        return math.nan
    return _NORMAL.cdf((sharpe - sr_benchmark) * math.sqrt(n_obs - 1) / math.sqrt(variance))


def probabilistic_sharpe_ratio(returns: Returns, sr_benchmark: float = 0.0) -> float:
    """Probability that the true per-period Sharpe exceeds `sr_benchmark` (per period, not
    annualised), given the sample's length, skewness and kurtosis; NaN with < 2 returns or no
    variance."""
    r = _returns_array(returns)
    moments = _sharpe_moments(r)
    if moments is None:
        return math.nan
    sharpe, skew, kurt = moments
    return psr_from_moments(sharpe, r.size, skew, kurt, sr_benchmark=sr_benchmark)


def expected_max_sharpe(n_trials: int, trials_sharpe_variance: float) -> float:
    """Expected maximum of `n_trials` independent zero-mean Sharpe estimates of variance
    `trials_sharpe_variance`: sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e)));
    0 for a single trial."""
    _check_trials(n_trials)
    if not (math.isfinite(trials_sharpe_variance) and trials_sharpe_variance >= 0):
        raise ValueError(
            f"trials_sharpe_variance must be finite and >= 0, got {trials_sharpe_variance!r}"
        )
    if n_trials == 1:
        return 0.0
    z = (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / n_trials) + EULER_GAMMA * (
        _NORMAL.inv_cdf(1.0 - 1.0 / (n_trials * math.e))
    )
    return math.sqrt(trials_sharpe_variance) * z


def deflated_sharpe_ratio(
    returns: Returns, n_trials: int, trials_sharpe_variance: float | None = None
) -> float:
    """PSR against the Sharpe ratio the best of `n_trials` unskilled strategies would show.

    trials_sharpe_variance: variance of the per-period Sharpe ratios across the trials; None uses
    the variance of this series' Sharpe estimate, (1 - g3 SR + (g4 - 1) / 4 SR^2) / (n - 1).
    """
    _check_trials(n_trials)
    r = _returns_array(returns)
    moments = _sharpe_moments(r)
    if moments is None:
        return math.nan
    sharpe, skew, kurt = moments
    n = r.size
    if trials_sharpe_variance is None:
        trials_sharpe_variance = max(
            (1.0 - skew * sharpe + (kurt - 1.0) / 4.0 * sharpe**2) / (n - 1), 0.0
        )
    benchmark = expected_max_sharpe(n_trials, trials_sharpe_variance)
    return psr_from_moments(sharpe, n, skew, kurt, sr_benchmark=benchmark)


def performance_metrics(
    result_or_returns: BacktestResult | Returns,
    trades: pl.DataFrame | None,
    periods_per_year: float,
    n_trials: int = 1,
    trials_sharpe_variance: float | None = None,
) -> dict[str, float]:
    """Every metric of the module table as a float.

    result_or_returns: a BacktestResult (its per_bar net_ret and position; its trades unless
    `trades` is given) or per-period returns (exposure is then NaN). trades: a frame with a `ret`
    column, or None (with plain returns, trade metrics are then NaN).
    """
    positions = None
    if isinstance(result_or_returns, BacktestResult):
        r = _returns_array(result_or_returns.per_bar.get_column("net_ret"))
        positions = result_or_returns.per_bar.get_column("position").to_numpy()
        if trades is None:
            trades = result_or_returns.trades
    else:
        r = _returns_array(result_or_returns)
    ppy = _check_periods(periods_per_year)
    n = r.size
    metrics = {
        "n_periods": float(n),
        "years": n / ppy,
        "total_return": total_return(r),
        "cagr": cagr(r, ppy),
        "volatility": float(r.std(ddof=1)) * math.sqrt(ppy) if n >= 2 else math.nan,
        "sharpe": sharpe_ratio(r, ppy),
        "sortino": sortino_ratio(r, ppy),
        "max_drawdown": max_drawdown(r),
        "calmar": calmar_ratio(r, ppy),
        "psr": probabilistic_sharpe_ratio(r),
        "dsr": deflated_sharpe_ratio(r, n_trials, trials_sharpe_variance),
        "exposure": float(np.mean(positions != 0)) if positions is not None and n else math.nan,
    }
    trade_metrics = dict.fromkeys(
        ("trade_count", "win_rate", "profit_factor", "avg_trade_return"), math.nan
    )
    if trades is not None:
        if "ret" not in trades.columns:
            raise ValueError(f"trades need a 'ret' column, got {trades.columns}")
        t = _returns_array(trades.get_column("ret"), "trades.ret")
        trade_metrics = {
            "trade_count": float(t.size),
            "win_rate": win_rate(t),
            "profit_factor": profit_factor(t),
            "avg_trade_return": float(t.mean()) if t.size else math.nan,
        }
    return metrics | trade_metrics
