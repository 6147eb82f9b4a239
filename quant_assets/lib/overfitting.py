"""Statistics of selection bias: the deflated Sharpe ratio of the best of N trials, the minimum track
record length, and the probability of backtest overfitting (CSCV).

Every Sharpe ratio here is per period (not annualised), SR = mean / std(ddof=1); g3 is the
skewness and g4 the Pearson kurtosis (normal = 3) of the returns, both biased moment estimators
(as in `performance`), and Phi the standard normal CDF.

- Deflated Sharpe ratio (Bailey & Lopez de Prado 2014, "The Deflated Sharpe Ratio"):
  DSR = Phi((SR - SR0) sqrt(T - 1) / sqrt(1 - g3 SR + (g4 - 1) / 4 SR^2)) with
  SR0 = sqrt(V) ((1 - gamma) Phi^-1(1 - 1/N) + gamma Phi^-1(1 - 1/(N e))), the expected maximum
  Sharpe ratio of N unskilled trials whose Sharpe ratios have cross-sectional variance V.
  V is the sample variance (ddof=1) of the trials' Sharpe ratios.
- Minimum track record length (Bailey & Lopez de Prado 2012, "The Sharpe Ratio Efficient
  Frontier"): MinTRL = 1 + (1 - g3 SR + (g4 - 1) / 4 SR^2) (Phi^-1(confidence) / (SR - SR*))^2
  observations; +inf when SR <= SR*. A record of n >= MinTRL observations has PSR(SR*) >=
  confidence.
- Probability of backtest overfitting (Bailey, Borwein, Lopez de Prado & Zhu 2015, "The
  probability of backtest overfitting"), combinatorially symmetric cross-validation: the T x N
  matrix of per-period returns of N trials is cut into S equal blocks of consecutive rows (the
  oldest T mod S rows dropped); for each of the C(S, S/2) ways to pick half the blocks as
  in-sample, the trial with the best in-sample Sharpe (first one on ties) gets the relative rank
  w = r / (N + 1) of its out-of-sample Sharpe (r = 1 for the worst, N for the best, ties at their
  average rank), and the logit l = ln(w / (1 - w)). PBO = share of combinations with l <= 0,
  i.e. the in-sample best did no better than the out-of-sample median.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from quant_assets.lib.performance import expected_max_sharpe, psr_from_moments

_NORMAL = NormalDist()


@dataclass(frozen=True)
class SharpeMoments:
    """Per-period Sharpe ratio, skewness, Pearson kurtosis and number of returns of a series."""

    sharpe: float
    skew: float
    kurtosis: float
    n_obs: int


def sharpe_moments(returns: np.ndarray) -> SharpeMoments:
    """Moments behind PSR/DSR/MinTRL; NaN Sharpe (and moments) with < 2 returns or no variance."""
    r = np.asarray(returns, dtype=np.float64)
    if r.size < 2:
        return SharpeMoments(math.nan, math.nan, math.nan, int(r.size))
    d = r - r.mean()
    m2 = float(np.mean(d**2))
    if m2 == 0:
        return SharpeMoments(math.nan, math.nan, math.nan, int(r.size))
    return SharpeMoments(
        sharpe=float(r.mean() / r.std(ddof=1)),
        skew=float(np.mean(d**3)) / m2**1.5,
        kurtosis=float(np.mean(d**4)) / m2**2,
        n_obs=int(r.size),
    )


def trials_sharpe_variance(trial_sharpes: np.ndarray) -> float:
    """Cross-sectional variance (ddof=1) of the trials' per-period Sharpe ratios (NaN ones left
    out); 0 with fewer than two defined ones."""
    s = np.asarray(trial_sharpes, dtype=np.float64)
    s = s[np.isfinite(s)]
    return float(np.var(s, ddof=1)) if s.size >= 2 else 0.0


def deflated_sharpe(moments: SharpeMoments, n_trials: int, trials_variance: float) -> float:
    """DSR of a selected strategy's moments, against the expected maximum Sharpe of `n_trials`
    trials of Sharpe variance `trials_variance`; NaN when the Sharpe is undefined."""
    if not math.isfinite(moments.sharpe):
        return math.nan
    benchmark = expected_max_sharpe(n_trials, trials_variance)
    return psr_from_moments(
        moments.sharpe, moments.n_obs, moments.skew, moments.kurtosis, sr_benchmark=benchmark
    )


def min_track_record_length(
    moments: SharpeMoments, sr_benchmark: float = 0.0, confidence: float = 0.95
) -> float:
    """Observations needed for PSR(sr_benchmark) >= confidence at the observed Sharpe, skewness and
    kurtosis: 1 + (1 - g3 SR + (g4 - 1)/4 SR^2) (z / (SR - SR*))^2; inf when SR <= SR* (no record
    is long enough), NaN when the Sharpe is undefined."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    sr = moments.sharpe
    if not math.isfinite(sr):
        return math.nan
    if sr <= sr_benchmark:
        return math.inf
    variance = 1.0 - moments.skew * sr + (moments.kurtosis - 1.0) / 4.0 * sr**2
    z = _NORMAL.inv_cdf(confidence)
    return 1.0 + variance * (z / (sr - sr_benchmark)) ** 2


@dataclass(frozen=True)
class PboResult:
    """PBO and what it rests on: the logits of every combination, the blocks and trials used."""

    pbo: float
    logits: np.ndarray
    n_blocks: int
    n_trials: int
    rows_used: int

    @property
    def n_combinations(self) -> int:
        return int(self.logits.size)


def _block_sharpe(s1: np.ndarray, s2: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Sharpe (ddof=1) from sums, sums of squares and counts; 0 for a flat series (no variance
    and mean 0), +-inf for a constant non-zero one."""
    mean = s1 / n
    var = np.maximum(s2 - n * mean**2, 0.0) / (n - 1)
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        sharpe = mean / sd
    flat = sd <= 1e-15 * np.maximum(np.abs(mean), 1e-300)
    sharpe[flat] = np.where(mean[flat] == 0, 0.0, np.copysign(np.inf, mean[flat]))
    return sharpe


def probability_of_backtest_overfitting(returns: np.ndarray, n_blocks: int = 16) -> PboResult:
    """PBO by combinatorially symmetric cross-validation of a T x N matrix of per-period returns
    (rows in time order, one column per trial); see the module docstring."""
    m = np.asarray(returns, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"returns must be a T x N matrix, got shape {m.shape}")
    if n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks must be an even number >= 2, got {n_blocks!r}")
    t, n_trials = m.shape
    if n_trials < 2:
        raise ValueError(f"PBO compares trials: need at least 2 columns, got {n_trials}")
    size = t // n_blocks
    if size < 2:
        raise ValueError(f"{t} rows are too few for {n_blocks} blocks of at least 2 rows")
    if not np.isfinite(m).all():
        raise ValueError("returns must be finite")
    used = m[t - size * n_blocks :].reshape(n_blocks, size, n_trials)
    s1, s2 = used.sum(axis=1), (used**2).sum(axis=1)  # n_blocks x N
    combos = np.array(list(itertools.combinations(range(n_blocks), n_blocks // 2)))
    pick = np.zeros((combos.shape[0], n_blocks))
    np.put_along_axis(pick, combos, 1.0, axis=1)
    count = np.full((combos.shape[0], 1), size * n_blocks / 2)
    in_s1, in_s2 = pick @ s1, pick @ s2
    is_sharpe = _block_sharpe(in_s1, in_s2, count)
    oos_sharpe = _block_sharpe(s1.sum(axis=0) - in_s1, s2.sum(axis=0) - in_s2, count)
    best = np.argmax(is_sharpe, axis=1)
    chosen = oos_sharpe[np.arange(best.size), best][:, None]
    rank = (oos_sharpe < chosen).sum(axis=1) + ((oos_sharpe == chosen).sum(axis=1) + 1) / 2.0
    w = rank / (n_trials + 1)
    logits = np.log(w / (1.0 - w))
    return PboResult(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        n_blocks=n_blocks,
        n_trials=n_trials,
        rows_used=size * n_blocks,
    )
