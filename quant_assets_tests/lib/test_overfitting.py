"""Deflated Sharpe ratio, minimum track record length and PBO against the papers' formulas, worked
by hand (numbers below) and against naive re-implementations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from quant_assets.lib.overfitting import (
    SharpeMoments,
    deflated_sharpe,
    min_track_record_length,
    probability_of_backtest_overfitting,
    sharpe_moments,
    trials_sharpe_variance,
)
from quant_assets.lib.performance import psr_from_moments

TOL = 1e-9


def test_dsr_reproduces_the_papers_numerical_example() -> None:
    # Bailey & Lopez de Prado (2014), section 5: annualized SR 2.5 over 5 years of daily returns
    # (T = 1250, 250 a year), skewness -3, kurtosis 10, N = 100 trials whose annualized Sharpe
    # ratios have variance 1/2. By hand:
    #   Z(N) = (1 - g) Phi^-1(0.99) + g Phi^-1(1 - 1/(100 e))
    #        = 0.4227843351 x 2.3263478740 + 0.5772156649 x 2.6805300600 = 2.5306028932
    #   SR0  = sqrt(0.5 / 250) x 2.5306028932 = 0.1131720019 per day (1.7894 annualized)
    #   SR   = 2.5 / sqrt(250) = 0.1581138830
    #   DSR  = Phi((0.1581138830 - 0.1131720019) sqrt(1249)
    #              / sqrt(1 + 3 x 0.158113883 + 9/4 x 0.025)) = Phi(1.28451) = 0.9003968344
    # (the paper prints 0.9004)
    moments = SharpeMoments(sharpe=2.5 / math.sqrt(250), skew=-3.0, kurtosis=10.0, n_obs=1250)
    assert deflated_sharpe(moments, 100, 0.5 / 250) == pytest.approx(0.9003968344493903, abs=TOL)


def test_dsr_with_one_trial_is_the_psr_and_falls_with_more_trials() -> None:
    moments = SharpeMoments(sharpe=0.05, skew=-0.5, kurtosis=5.0, n_obs=2000)
    psr = psr_from_moments(0.05, 2000, -0.5, 5.0)
    assert deflated_sharpe(moments, 1, 0.001) == pytest.approx(psr, abs=TOL)
    values = [deflated_sharpe(moments, n, 0.0004) for n in (1, 2, 10, 100, 1000)]
    assert values == sorted(values, reverse=True)
    # against scipy, written out independently
    n, v = 37, 0.0004
    z = (1 - np.euler_gamma) * stats.norm.ppf(1 - 1 / n) + np.euler_gamma * stats.norm.ppf(
        1 - 1 / (n * math.e)
    )
    expected = stats.norm.cdf(
        (0.05 - math.sqrt(v) * z)
        * math.sqrt(1999)
        / math.sqrt(1 + 0.5 * 0.05 + (5 - 1) / 4 * 0.05**2)
    )
    assert deflated_sharpe(moments, n, v) == pytest.approx(expected, abs=TOL)


def test_min_track_record_length_by_hand() -> None:
    # Bailey & Lopez de Prado (2012): MinTRL = 1 + (1 - g3 SR + (g4 - 1)/4 SR^2) (z / (SR - SR*))^2
    # SR = 0.1, normal returns (g3 = 0, g4 = 3), SR* = 0, 95 %: z = 1.6448536270,
    # 1 + (1 + 0.5 x 0.01) x (16.448536270)^2 = 1 + 1.005 x 270.5543454 = 272.9071171
    normal = SharpeMoments(sharpe=0.1, skew=0.0, kurtosis=3.0, n_obs=500)
    assert min_track_record_length(normal) == pytest.approx(272.907117136589, abs=TOL)
    # SR = 0.05, g3 = -1, g4 = 6, SR* = 0.01, 90 %: z = 1.2815515655,
    # 1 + (1 + 0.05 + 1.25 x 0.0025) x (1.2815515655 / 0.04)^2 = 1 + 1.053125 x 1026.4841 = 1082.016
    fat = SharpeMoments(sharpe=0.05, skew=-1.0, kurtosis=6.0, n_obs=500)
    assert min_track_record_length(fat, 0.01, 0.90) == pytest.approx(1082.0159724716564, abs=TOL)
    # at exactly MinTRL observations, PSR(SR*) is the confidence
    trl = min_track_record_length(fat, 0.01, 0.90)
    assert psr_from_moments(0.05, trl, -1.0, 6.0, 0.01) == pytest.approx(0.90, abs=TOL)
    assert min_track_record_length(fat, 0.05) == math.inf
    assert min_track_record_length(fat, 0.2) == math.inf
    assert math.isnan(min_track_record_length(SharpeMoments(math.nan, 0, 3, 10)))
    with pytest.raises(ValueError, match="confidence"):
        min_track_record_length(normal, confidence=1.0)


def test_sharpe_moments_and_trials_variance() -> None:
    r = np.array([0.01, -0.02, 0.03, 0.0])
    m = sharpe_moments(r)
    assert m.sharpe == pytest.approx(0.005 / math.sqrt(1.3e-3 / 3), abs=TOL)
    assert m.skew == pytest.approx(stats.skew(r), abs=TOL)
    assert m.kurtosis == pytest.approx(stats.kurtosis(r, fisher=False), abs=TOL)
    assert math.isnan(sharpe_moments(np.zeros(5)).sharpe)
    # sample variance (ddof = 1) of the defined Sharpe ratios: 0.1, 0.2, 0.3 -> 0.01
    assert trials_sharpe_variance(np.array([0.1, 0.2, np.nan, 0.3])) == pytest.approx(0.01, abs=TOL)
    assert trials_sharpe_variance(np.array([0.1])) == 0.0


def test_pbo_by_hand_two_blocks_two_trials() -> None:
    # Blocks of 2 rows. Trial A: block 1 (0.01, 0.03) SR = 0.02 / 0.0141421 = 1.414214,
    # block 2 (-0.01, -0.03) SR = -1.414214. Trial B: block 1 (0.00, 0.02) SR = 0.707107,
    # block 2 (0.01, 0.03) SR = 1.414214.
    # In-sample block 1: A is best; out of sample (block 2) A ranks 1 of 2: w = 1/3, logit ln(1/2).
    # In-sample block 2: B is best; out of sample (block 1) B ranks 1 of 2: w = 1/3, logit ln(1/2).
    # Both logits <= 0: PBO = 2/2 = 1.
    m = np.array([[0.01, 0.00], [0.03, 0.02], [-0.01, 0.01], [-0.03, 0.03]])
    result = probability_of_backtest_overfitting(m, n_blocks=2)
    assert result.pbo == 1.0
    assert result.n_combinations == 2
    np.testing.assert_allclose(result.logits, [math.log(0.5)] * 2, atol=TOL)
    # a trial better than the other in every block is the in-sample and out-of-sample best:
    # w = 2/3, logit ln 2 > 0 in every combination, PBO = 0
    dominant = np.column_stack([m[:, 1], m[:, 1] + 0.05])
    result = probability_of_backtest_overfitting(dominant, n_blocks=2)
    assert result.pbo == 0.0
    np.testing.assert_allclose(result.logits, [math.log(2.0)] * 2, atol=TOL)


def _naive_pbo(m: np.ndarray, s: int) -> tuple[float, list[float]]:
    """CSCV written out loop by loop (Bailey, Borwein, Lopez de Prado & Zhu 2015, section 2)."""
    t, n = m.shape
    size = t // s
    blocks = np.split(m[t - size * s :], s)
    logits = []
    for chosen in itertools.combinations(range(s), s // 2):
        train = np.vstack([blocks[i] for i in chosen])
        test = np.vstack([blocks[i] for i in range(s) if i not in chosen])
        r = train.mean(axis=0) / train.std(axis=0, ddof=1)
        r_bar = test.mean(axis=0) / test.std(axis=0, ddof=1)
        best = int(np.argmax(r))
        rank = stats.rankdata(r_bar)[best]  # 1 = worst, average rank on ties
        w = rank / (n + 1)
        logits.append(math.log(w / (1 - w)))
    return float(np.mean(np.array(logits) <= 0)), logits


def test_pbo_matches_a_loop_by_loop_cscv() -> None:
    rng = np.random.default_rng(3)
    m = rng.standard_t(4, size=(203, 7)) * 0.01 + np.linspace(-0.001, 0.002, 7)
    result = probability_of_backtest_overfitting(m, n_blocks=8)
    pbo, logits = _naive_pbo(m, 8)
    assert result.n_combinations == math.comb(8, 4) == 70
    assert result.rows_used == 200  # the 3 oldest rows dropped: 8 equal blocks of 25
    assert result.pbo == pytest.approx(pbo, abs=TOL)
    np.testing.assert_allclose(result.logits, logits, atol=TOL)


def test_pbo_is_about_one_half_for_pure_noise_and_low_for_a_real_edge() -> None:
    rng = np.random.default_rng(11)
    noise = rng.standard_normal((1600, 20)) * 0.01
    assert 0.2 < probability_of_backtest_overfitting(noise).pbo < 0.8
    edge = noise + np.linspace(0.0, 0.004, 20)  # later trials truly better
    assert probability_of_backtest_overfitting(edge).pbo < 0.05


def test_pbo_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="even"):
        probability_of_backtest_overfitting(np.zeros((40, 3)), n_blocks=3)
    with pytest.raises(ValueError, match="at least 2 columns"):
        probability_of_backtest_overfitting(np.zeros((40, 1)))
    with pytest.raises(ValueError, match="too few"):
        probability_of_backtest_overfitting(np.zeros((20, 3)), n_blocks=16)
