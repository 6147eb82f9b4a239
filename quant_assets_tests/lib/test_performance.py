"""Tests of the performance metrics: hand-worked numbers, the DSR paper's example, scipy agreement."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy import stats

from quant_assets.lib.backtest import run_backtest
from quant_assets.lib.performance import (
    EULER_GAMMA,
    annualization,
    cagr,
    calmar_ratio,
    deflated_sharpe_ratio,
    drawdowns,
    expected_max_sharpe,
    max_drawdown,
    performance_metrics,
    probabilistic_sharpe_ratio,
    profit_factor,
    psr_from_moments,
    sharpe_ratio,
    sortino_ratio,
    total_return,
    win_rate,
)
from quant_assets.lib.sources.base import OHLCV_SCHEMA

R = [0.01, -0.02, 0.03, 0.0]
# mean = 0.02 / 4 = 0.005
# deviations 0.005, -0.025, 0.025, -0.005; squares 2.5e-5, 6.25e-4, 6.25e-4, 2.5e-5, sum 1.3e-3
# std (ddof=1) = sqrt(1.3e-3 / 3) = 0.0208167
SR_PER_PERIOD = 0.005 / math.sqrt(1.3e-3 / 3)  # 0.2401922


def test_annualization_24_7_and_sessions():
    assert annualization("1h", "24/7") == 365 * 24
    assert annualization("1d", "24/7") == 365
    assert annualization("1h", "session") == 252 * 7  # 7 one-hour bars a session
    assert annualization("1d", "session") == 252
    assert annualization("5m", "session", session_hours=6.5) == 252 * 78  # 6.5 h = 78 x 5 min
    with pytest.raises(ValueError, match="calendar_kind"):
        annualization("1h", "weekdays")  # type: ignore[arg-type]


def test_sharpe_and_sortino_by_hand():
    assert math.isclose(SR_PER_PERIOD, 0.2401922, rel_tol=1e-6)
    assert sharpe_ratio(R) == pytest.approx(SR_PER_PERIOD, rel=1e-12)
    assert sharpe_ratio(R, 252) == pytest.approx(0.2401922 * math.sqrt(252), rel=1e-6)  # 3.81297
    # downside: min(r, 0) = 0, -0.02, 0, 0 -> mean of squares 4e-4 / 4 = 1e-4 over ALL 4 periods
    # -> deviation 0.01; 0.005 / 0.01 = 0.5 per period, x sqrt(252) = 7.93725
    assert sortino_ratio(R, 252) == pytest.approx(0.5 * math.sqrt(252), rel=1e-12)
    assert sortino_ratio([0.01, 0.02]) == math.inf  # no downside, positive mean
    assert math.isnan(sharpe_ratio([0.01]))


def test_total_return_cagr_drawdown_calmar_by_hand():
    # equity 1 -> 1.01 -> 1.01 x 0.98 = 0.9898 -> x 1.03 = 1.019494 -> x 1.0 = 1.019494
    assert total_return(R) == pytest.approx(0.019494, rel=1e-12)
    # peak 1.01, trough 0.9898: 1 - 0.9898 / 1.01 = 1 - 0.98 = 0.02, reported positive
    assert max_drawdown(R) == pytest.approx(0.02, rel=1e-12)
    # 4 daily periods = 4 / 252 years: 1.019494 ** (252 / 4) - 1 = 1.019494 ** 63 - 1
    expected_cagr = 1.019494**63 - 1
    assert expected_cagr == pytest.approx(2.3747, rel=1e-4)
    assert cagr(R, 252) == pytest.approx(expected_cagr, rel=1e-12)
    assert calmar_ratio(R, 252) == pytest.approx(expected_cagr / 0.02, rel=1e-12)
    # a loss on the very first period is a drawdown from the initial capital
    assert max_drawdown([-0.1, 0.05]) == pytest.approx(0.1, rel=1e-12)
    assert max_drawdown([0.01, 0.02]) == 0.0
    assert calmar_ratio([0.01, 0.02], 252) == math.inf
    assert cagr([0.5, -1.0], 252) == -1.0  # wiped out
    np.testing.assert_allclose(drawdowns([1.0, 1.2, 0.9, 1.5]), [0, 0, 0.25, 0], atol=1e-15)


def test_trade_statistics_by_hand():
    trades = [0.05, -0.02, 0.03, -0.01]
    # winners 0.05 + 0.03 = 0.08, losers |-0.02 - 0.01| = 0.03 -> 8/3
    assert profit_factor(trades) == pytest.approx(8 / 3, rel=1e-12)
    assert win_rate(trades) == 0.5
    assert profit_factor([0.01, 0.02]) == math.inf  # winners, no losers
    assert profit_factor([-0.01]) == 0.0  # losers, no winners
    assert math.isnan(profit_factor([]))  # no trades
    assert math.isnan(win_rate([]))


def test_psr_by_hand_against_scipy_normal_cdf():
    # central moments (biased): m2 = 1.3e-3 / 4 = 3.25e-4
    # m3 = (0.005^3 - 0.025^3 + 0.025^3 - 0.005^3) / 4 = 0 -> skew 0
    # m4 = (2 x 0.005^4 + 2 x 0.025^4) / 4 = (1.25e-9 + 7.8125e-7) / 4 = 1.95625e-7
    # kurtosis = 1.95625e-7 / 3.25e-4^2 = 1.8520710
    kurt = 1.95625e-7 / 3.25e-4**2
    assert stats.skew(R) == pytest.approx(0.0, abs=1e-12)
    assert stats.kurtosis(R, fisher=False) == pytest.approx(kurt, rel=1e-12)
    # SR^2 = 2.5e-5 / 4.33333e-4 = 0.0576923
    # variance term: 1 - 0 x SR + (1.852071 - 1) / 4 x 0.0576923 = 1.0122895
    var_term = 1 + (kurt - 1) / 4 * SR_PER_PERIOD**2
    assert var_term == pytest.approx(1.0122895, rel=1e-6)
    # z = SR x sqrt(n - 1) / sqrt(var_term) = 0.2401922 x sqrt(3) / 1.0061260 = 0.4134919
    z = SR_PER_PERIOD * math.sqrt(3) / math.sqrt(var_term)
    assert z == pytest.approx(0.4134919, rel=1e-6)
    assert probabilistic_sharpe_ratio(R) == pytest.approx(stats.norm.cdf(z), rel=1e-12)  # 0.6604
    # against a benchmark Sharpe of 0.1 per period
    z_01 = (SR_PER_PERIOD - 0.1) * math.sqrt(3) / math.sqrt(var_term)
    assert probabilistic_sharpe_ratio(R, 0.1) == pytest.approx(stats.norm.cdf(z_01), rel=1e-12)


def test_psr_limits():
    rng = np.random.default_rng(0)
    strong = rng.normal(0.01, 0.01, 500)  # per-period Sharpe about 1
    assert probabilistic_sharpe_ratio(strong) > 0.999999
    noise = rng.normal(0.0, 0.01, 2000)
    noise -= noise.mean()  # exactly zero mean: SR = 0, so PSR(0) = Phi(0)
    assert probabilistic_sharpe_ratio(noise) == pytest.approx(0.5, abs=1e-9)
    assert math.isnan(probabilistic_sharpe_ratio([0.01, 0.01, 0.01]))  # no variance


def test_dsr_paper_numerical_example():
    # Bailey & Lopez de Prado (2014), "The Deflated Sharpe Ratio", numerical example: N = 100
    # trials, annualised SR 2.5 and V[SR_n] 1/2 over 250 days a year, T = 1250 daily returns,
    # skewness -3, kurtosis 10 -> E[max SR] = 0.1132 per day and DSR = 0.9004
    sr_star = expected_max_sharpe(100, 0.5 / 250)
    assert sr_star == pytest.approx(0.1132, abs=5e-5)
    dsr = psr_from_moments(2.5 / math.sqrt(250), 1250, -3.0, 10.0, sr_benchmark=sr_star)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_dsr_of_returns_by_hand():
    # N = 10 trials whose per-period Sharpe ratios have variance 0.01:
    # SR* = 0.1 x ((1 - gamma) Phi^-1(0.9) + gamma Phi^-1(1 - 1 / (10 e)))
    sr_star = 0.1 * (
        (1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / 10)
        + EULER_GAMMA * stats.norm.ppf(1 - 1 / (10 * math.e))
    )
    assert expected_max_sharpe(10, 0.01) == pytest.approx(sr_star, rel=1e-12)
    kurt = 1.95625e-7 / 3.25e-4**2
    var_term = 1 + (kurt - 1) / 4 * SR_PER_PERIOD**2
    z = (SR_PER_PERIOD - sr_star) * math.sqrt(3) / math.sqrt(var_term)
    assert deflated_sharpe_ratio(R, 10, 0.01) == pytest.approx(stats.norm.cdf(z), rel=1e-12)
    # unknown variance: the variance of this Sharpe estimate, var_term / (n - 1)
    sr_star_own = math.sqrt(var_term / 3) * sr_star / 0.1
    z_own = (SR_PER_PERIOD - sr_star_own) * math.sqrt(3) / math.sqrt(var_term)
    assert deflated_sharpe_ratio(R, 10) == pytest.approx(stats.norm.cdf(z_own), rel=1e-12)
    # one trial: no selection to correct for
    assert deflated_sharpe_ratio(R, 1) == pytest.approx(probabilistic_sharpe_ratio(R), rel=1e-15)
    rng = np.random.default_rng(1)
    r = rng.normal(0.001, 0.01, 1000)
    dsr = [deflated_sharpe_ratio(r, n, 0.001) for n in (1, 10, 100, 1000)]
    assert dsr == sorted(dsr, reverse=True) and dsr[0] > dsr[-1]
    with pytest.raises(ValueError, match="n_trials"):
        deflated_sharpe_ratio(R, 0)


def test_performance_metrics_of_a_backtest():
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    closes = [100.0, 101.0, 99.0, 102.0, 103.0, 101.0]
    bars = pl.DataFrame(
        {
            "timestamp": [t0 + timedelta(days=i) for i in range(6)],
            "open": [100.0, *closes[:-1]],
            "high": [c + 1 for c in closes],
            "low": [c - 3 for c in closes],
            "close": closes,
            "volume": [1.0] * 6,
        },
        schema=OHLCV_SCHEMA,
    )
    signals = pl.DataFrame(
        {"timestamp": [t0, t0 + timedelta(days=2)], "side": [1, 0]}
    ).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    result = run_backtest(bars, signals, timeframe="1d", fee_bps=0.0, slippage_bps=0.0)
    # long over bars 1 and 2 (opens 100 -> close 99): returns 0, 0.01, 99/101 - 1, 0, 0, 0
    expected_returns = [0.0, 0.01, 99 / 101 - 1, 0.0, 0.0, 0.0]
    m = performance_metrics(result, None, 365)
    assert m["exposure"] == pytest.approx(2 / 6)
    assert m["trade_count"] == 1.0
    assert m["win_rate"] == 0.0  # 99 / 100 - 1 < 0
    assert m["profit_factor"] == 0.0
    assert m["avg_trade_return"] == pytest.approx(99 / 100 - 1, rel=1e-12)
    assert m["total_return"] == pytest.approx(0.99 - 1, rel=1e-12)
    assert m["max_drawdown"] == pytest.approx(1 - 0.99 / 1.01, rel=1e-12)
    assert m["sharpe"] == pytest.approx(sharpe_ratio(expected_returns, 365), rel=1e-12)
    assert m["years"] == pytest.approx(6 / 365)
    plain = performance_metrics(np.array(expected_returns), None, 365)
    assert math.isnan(plain["exposure"]) and math.isnan(plain["trade_count"])
    assert plain["sortino"] == pytest.approx(m["sortino"], rel=1e-12)
    no_trades = performance_metrics(expected_returns, result.trades.clear(), 365)
    assert no_trades["trade_count"] == 0.0 and math.isnan(no_trades["profit_factor"])
    with pytest.raises(ValueError, match="row 1 is nan"):
        performance_metrics([0.0, float("nan")], None, 365)
