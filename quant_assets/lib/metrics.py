"""Metrics of probabilistic binary classifiers: ROC AUC, Brier score, log loss, accuracy and
calibration (expected calibration error and the reliability table behind it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

# The clip scikit-learn's log_loss applies to float64 probabilities, so the two agree to the last digit.
LOG_LOSS_EPS: float = float(np.finfo(np.float64).eps)


def _checked_inputs(y_true: Any, prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or y.shape != p.shape:
        raise ValueError(
            f"y_true and prob must be 1-d of equal length, got shapes {y.shape} and {p.shape}"
        )
    if y.size == 0:
        raise ValueError("no predictions to score: y_true and prob are empty")
    not_binary = (y != 0) & (y != 1)
    if not_binary.any():
        row = int(not_binary.argmax())
        raise ValueError(f"y_true must hold 0/1 labels; row {row} is {y[row]}")
    outside = ~((p >= 0) & (p <= 1))  # also catches NaN
    if outside.any():
        row = int(outside.argmax())
        raise ValueError(f"prob must be probabilities in [0, 1]; row {row} is {p[row]}")
    return y.astype(np.float64), p


def _bin_index(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin k holds k/n_bins <= p < (k+1)/n_bins; the last bin also holds p = 1.

    Edges are k/n_bins as float64 (the number you get typing 0.3), so a probability equal to an edge
    goes to the bin above it: with 10 bins, 0.1 is in bin 1 and 0.3 in bin 3.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.arange(n_bins + 1) / n_bins
    return np.minimum(np.searchsorted(edges, p, side="right") - 1, n_bins - 1)


def _bin_sums(y: np.ndarray, p: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    """(count, sum of prob, sum of y) per bin."""
    idx = _bin_index(p, n_bins)
    return (
        np.bincount(idx, minlength=n_bins),
        np.bincount(idx, weights=p, minlength=n_bins),
        np.bincount(idx, weights=y, minlength=n_bins),
    )


def expected_calibration_error(y_true: Any, prob: Any, n_bins: int = 10) -> float:
    """ECE = sum over bins b of (n_b / n) * |mean(y)_b - mean(prob)_b|, with `n_bins` equal-width bins
    on [0, 1] (left-closed; the last bin closed on the right, see `_bin_index`). Empty bins add 0."""
    y, p = _checked_inputs(y_true, prob)
    count, sum_p, sum_y = _bin_sums(y, p, n_bins)
    # n_b/n * |sum_y/n_b - sum_p/n_b| = |sum_y - sum_p| / n: no division by empty bins needed
    return float(np.abs(sum_y - sum_p).sum() / y.size)


def calibration_curve_table(y: Any, p: Any, n_bins: int = 10) -> pl.DataFrame:
    """Reliability table: one row per bin (empty bins included, with null means) with its edges,
    row count, mean predicted probability and fraction of positives."""
    y_arr, p_arr = _checked_inputs(y, p)
    count, sum_p, sum_y = _bin_sums(y_arr, p_arr, n_bins)
    filled = count > 0
    safe = np.where(filled, count, 1)
    edges = np.arange(n_bins + 1) / n_bins
    return pl.DataFrame(
        {
            "bin": pl.Series(np.arange(n_bins), dtype=pl.Int64),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": pl.Series(count, dtype=pl.Int64),
            "mean_pred": pl.Series(np.where(filled, sum_p / safe, np.nan)).fill_nan(None),
            "frac_pos": pl.Series(np.where(filled, sum_y / safe, np.nan)).fill_nan(None),
        }
    )


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def roc_auc(y_true: Any, prob: Any) -> float:
    """Area under the ROC curve via the Mann-Whitney rank sum (ties count half); NaN when y_true
    holds a single class, since the ROC curve is then undefined."""
    y, p = _checked_inputs(y_true, prob)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = _average_ranks(p)[y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(
    y_true: Any, prob: Any, threshold: float = 0.5, n_bins: int = 10
) -> dict[str, float]:
    """roc_auc (NaN with a single class), brier, log_loss (prob clipped to [eps, 1 - eps], eps =
    LOG_LOSS_EPS), accuracy (predicting 1 when prob >= threshold), ece (`n_bins` bins), n and
    positive_rate (fraction of y_true equal to 1)."""
    y, p = _checked_inputs(y_true, prob)
    clipped = np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return {
        "roc_auc": roc_auc(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))),
        "accuracy": float(np.mean((p >= threshold) == (y == 1))),
        "ece": expected_calibration_error(y, p, n_bins),
        "n": float(y.size),
        "positive_rate": float(y.mean()),
    }


def up_probability(proba: Any, classes: Any = None) -> np.ndarray:
    """The probability of "up" from a classifier's output: a vector (a binary model's P(1)) as is;
    a matrix of class probabilities (n, K), columns in the order of `classes` (default 0 .. K-1):
    the sum over the classes above the middle one, 2c > K - 1 (class 1 of 2; buy and strong buy
    of 5; K = the largest class + 1)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        return p
    labels = np.arange(p.shape[1]) if classes is None else np.asarray(classes)
    n_classes = int(labels.max()) + 1
    return p[:, 2 * labels > n_classes - 1].sum(axis=1)


def multi_class_metrics(
    y_class: Any, proba: Any, prefix: str, suffix: str = "", n_bins: int = 10
) -> dict[str, float]:
    """Per class k, one-vs-rest classification metrics of column k (`{prefix}_class{k}_{metric}`),
    and the multi-class log loss (clipped like log_loss) and accuracy (most probable class) as
    `{prefix}_multiclass_log_loss` / `_accuracy`; `suffix` ends every name (e.g. "_calibrated")."""
    y = np.asarray(y_class, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    out: dict[str, float] = {}
    for k in range(p.shape[1]):
        m = classification_metrics(
            (y == k).astype(np.int8), np.clip(p[:, k], 0.0, 1.0), n_bins=n_bins
        )
        out.update(
            {
                f"{prefix}_class{k}_{name}{suffix}": m[name]
                for name in ("roc_auc", "brier", "ece", "log_loss", "positive_rate")
            }
        )
    picked = np.clip(p[np.arange(y.size), y], LOG_LOSS_EPS, 1.0)
    out[f"{prefix}_multiclass_log_loss{suffix}"] = float(-np.mean(np.log(picked)))
    out[f"{prefix}_multiclass_accuracy{suffix}"] = float(np.mean(p.argmax(axis=1) == y))
    return out
