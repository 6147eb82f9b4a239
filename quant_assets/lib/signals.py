"""Trade signals from a model's probabilities: side, strength, entry and ATR-based stop/take-profit.

The model's target is "take-profit hit before the stop for a LONG entry". A low prob_up means "a
long would likely stop out", which is not by itself "a short would win": a short threshold is only
used when it was chosen on the model's out-of-fold predictions against the realized short return
(`choose_short_threshold`) and showed an edge there; without one (threshold_short=None) only long
signals are emitted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl

ArrayLike = pl.Series | np.ndarray | Sequence[float]


def _floats(values: ArrayLike, name: str, n: int) -> np.ndarray:
    series = values if isinstance(values, pl.Series) else pl.Series(name, values)
    array = series.cast(pl.Float64).fill_null(np.nan).to_numpy()
    if array.size != n:
        raise ValueError(f"make_signals: {name} has {array.size} values, timestamps have {n}")
    return array


def make_signals(
    timestamps: pl.Series | Sequence,
    close: ArrayLike,
    atr: ArrayLike,
    prob_up: ArrayLike,
    *,
    threshold_long: float = 0.55,
    threshold_short: float | None = None,
    sl_mult: float = 1.0,
    tp_mult: float = 1.75,
) -> pl.DataFrame:
    """One row per bar: timestamp, prob_up, side, strength, entry_price, stop_loss, take_profit.

    side is +1 when prob_up >= threshold_long, -1 when threshold_short is set and prob_up <=
    threshold_short, else 0; a bar whose prob_up, close or ATR is NaN/null (warm-up) is flat.
    strength is how far prob_up lies past its threshold, as a fraction of the room left:
    (prob_up - threshold_long) / (1 - threshold_long) for longs, (threshold_short - prob_up) /
    threshold_short for shorts; 0 when flat. entry_price is the bar's
    close, since the signal is known only once the bar has closed. Long: stop_loss = close -
    sl_mult * atr, take_profit = close + tp_mult * atr; short mirrored; both null when flat.
    """
    if not 0.0 < threshold_long < 1.0:
        raise ValueError(f"threshold_long must lie in (0, 1), got {threshold_long}")
    if threshold_short is not None and not 0.0 < threshold_short < threshold_long:
        raise ValueError(
            f"threshold_short must lie in (0, threshold_long={threshold_long}), got {threshold_short}"
        )
    if sl_mult <= 0 or tp_mult <= 0:
        raise ValueError(f"sl_mult and tp_mult must be > 0, got {sl_mult} and {tp_mult}")
    ts = timestamps if isinstance(timestamps, pl.Series) else pl.Series("timestamp", timestamps)
    n = ts.len()
    c, a, p = _floats(close, "close", n), _floats(atr, "atr", n), _floats(prob_up, "prob_up", n)
    if np.any(a < 0):
        row = int(np.flatnonzero(a < 0)[0])
        raise ValueError(f"make_signals: atr must be >= 0, got {a[row]} at row {row}")

    usable = ~(np.isnan(c) | np.isnan(a) | np.isnan(p))
    side = np.where(usable & (p >= threshold_long), 1, 0)
    if threshold_short is not None:
        side = np.where(usable & (p <= threshold_short), -1, side)
    long_strength = (p - threshold_long) / (1.0 - threshold_long)
    short_strength = (threshold_short - p) / threshold_short if threshold_short is not None else 0.0
    strength = np.clip(
        np.where(side == 1, long_strength, np.where(side == -1, short_strength, 0.0)), 0.0, 1.0
    )
    # Flat rows get NaN levels, turned into nulls below.
    levels = np.where(side != 0, 1.0, np.nan)
    stop_loss = (c - side * sl_mult * a) * levels
    take_profit = (c + side * tp_mult * a) * levels
    return pl.DataFrame(
        {
            "timestamp": ts.alias("timestamp"),
            "prob_up": p,
            "side": pl.Series(side, dtype=pl.Int8),
            "strength": strength,
            "entry_price": c,
            "stop_loss": stop_loss,
            "take_profit": take_profit,
        }
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


def breakeven_probability(tp_mult: float, sl_mult: float) -> float:
    """Take-profit probability at which a long triple-barrier trade breaks even before costs:
    p * tp = (1 - p) * sl, i.e. sl / (tp + sl) (0.364 for tp 1.75, sl 1.0 ATR)."""
    return sl_mult / (tp_mult + sl_mult)


def long_threshold(tp_mult: float, sl_mult: float, edge: float = 0.05) -> float:
    """The default long threshold: break-even probability plus a margin `edge` for costs and error."""
    return min(breakeven_probability(tp_mult, sl_mult) + edge, 0.99)


def resolve_long_threshold(
    explicit: float | None,
    model_threshold: float | None,
    tp_mult: float,
    sl_mult: float,
    edge: float,
) -> float:
    """The long threshold in force: an explicit one, else the model's own (chosen on its out-of-fold
    predictions), else the barriers' break-even probability plus `edge`."""
    if explicit is not None:
        return explicit
    if model_threshold is not None:
        return model_threshold
    return long_threshold(tp_mult, sl_mult, edge)


def position_changes(signals: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """Backtest orders from per-bar signals: enter (or refresh levels) on every long bar, hold for
    `horizon` bars after the last one (the label's vertical barrier), then a flat row.

    Only rows where something happens are kept, so a stop-loss or take-profit exit is not undone by
    the next bar repeating an old signal. Columns: timestamp, side, size, stop_loss, take_profit;
    size is the signals' `size` column on entry rows when they have one (volatility-target sizing,
    `volatility_target_size`), else 1.0.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    idx = pl.int_range(pl.len())
    last = pl.when(pl.col("side") != 0).then(idx).otherwise(None).forward_fill()
    holding = (idx - last < horizon).fill_null(False)
    flagged = signals.with_columns(_holding=holding)
    opened = pl.col("side") != 0
    closed = ~pl.col("_holding") & pl.col("_holding").shift(1, fill_value=False)
    size = pl.col("size").cast(pl.Float64) if "size" in signals.columns else pl.lit(1.0)
    return flagged.filter(opened | closed).select(
        "timestamp",
        pl.when(opened).then(pl.col("side")).otherwise(0).cast(pl.Int8).alias("side"),
        pl.when(opened).then(size).otherwise(0.0).alias("size"),
        pl.when(opened).then(pl.col("stop_loss")).alias("stop_loss"),
        pl.when(opened).then(pl.col("take_profit")).alias("take_profit"),
    )


#: Brownian motion's expected high-low range over a bar is sqrt(8 / pi) = 1.596 times its standard
#: deviation: the factor that turns an average (true) range into a per-bar volatility.
RANGE_TO_SIGMA = math.sqrt(8.0 / math.pi)


def volatility_target_size(
    close: ArrayLike,
    atr: ArrayLike,
    periods_per_year: float,
    target_vol: float = 0.10,
    max_size: float = 1.0,
) -> np.ndarray:
    """Position size (fraction of equity) that targets `target_vol` annualized volatility.

    Convention: the per-bar volatility forecast is sigma = ATR / close / sqrt(8 / pi) (the ATR is
    an average true range; a Brownian bar's expected range is sqrt(8 / pi) sigma), annualized by
    sqrt(periods_per_year); size = min(target_vol / annualized sigma, max_size), so a position is
    never levered beyond max_size (1.0: no leverage). Rows without a usable close or ATR get 0.
    E.g. ATR 1 % of the close on 1h crypto bars (8,760 a year): sigma_ann = 0.01 / 1.596 * 93.6 =
    58.6 %, size = 0.10 / 0.586 = 0.171.
    """
    if not (math.isfinite(periods_per_year) and periods_per_year > 0):
        raise ValueError(f"periods_per_year must be > 0, got {periods_per_year!r}")
    if not (target_vol > 0 and 0 < max_size <= 1):
        raise ValueError(
            f"target_vol must be > 0 and max_size in (0, 1], got {target_vol!r}, {max_size!r}"
        )
    c = np.asarray(pl.Series(values=close).cast(pl.Float64).fill_null(np.nan), dtype=np.float64)
    a = np.asarray(pl.Series(values=atr).cast(pl.Float64).fill_null(np.nan), dtype=np.float64)
    if c.size != a.size:
        raise ValueError(f"close has {c.size} values, atr {a.size}")
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = a / c / RANGE_TO_SIGMA * math.sqrt(periods_per_year)
        size = np.minimum(target_vol / sigma, max_size)
    return np.where(np.isfinite(size) & (size > 0), size, 0.0)


#: Shares of out-of-fold bars a candidate threshold trades (its top 50 %, 30 %, ... of calibrated
#: probabilities): the default search has one candidate per share, not a fine probability grid,
#: because every candidate is a trial the deflated Sharpe ratio must pay for (91 grid points of
#: step 0.01 were mostly near-duplicates, and the always-long ones only widened the trials' spread).
THRESHOLD_SHARES: tuple[float, ...] = (0.5, 0.3, 0.2, 0.1, 0.05)
#: Round-trip cost charged on each OOF trade return in the threshold search (5 + 2 bps a leg).
THRESHOLD_COST = 0.0007
#: A threshold leaving fewer out-of-fold trades than this cannot be chosen.
THRESHOLD_MIN_TRADES = 30


def threshold_grid(prob: ArrayLike, shares: Sequence[float] = THRESHOLD_SHARES) -> np.ndarray:
    """The default candidate thresholds: the (1 - share) quantiles of the finite probabilities,
    rounded to 0.01 (the precision of the recorded `decision_threshold`), without duplicates."""
    p = np.asarray(prob, dtype=np.float64)
    p = p[np.isfinite(p)]
    if p.size == 0:
        return np.empty(0)
    levels = 1.0 - np.asarray(shares, dtype=np.float64)
    return np.unique(np.clip(np.round(np.quantile(p, levels), 2), 0.01, 0.99))


def threshold_trials(
    prob: ArrayLike,
    trade_return: ArrayLike,
    *,
    cost: float = THRESHOLD_COST,
    min_trades: int = THRESHOLD_MIN_TRADES,
    grid: ArrayLike | None = None,
) -> pl.DataFrame:
    """Every threshold of the search (`grid`, default `threshold_grid` of the probabilities) as a
    trial: threshold, n (rows with prob >= threshold), mean
    and score (mean / std * sqrt(n)) of `trade_return - cost` over them, and `eligible` (n >=
    max(min_trades, 2), i.e. the threshold could have been chosen). Rows with a non-finite prob or
    return are left out."""
    p = np.asarray(prob, dtype=np.float64)
    r = np.asarray(trade_return, dtype=np.float64) - cost
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    candidates = np.asarray(grid if grid is not None else threshold_grid(p), dtype=np.float64)
    order = np.argsort(-p)
    p_sorted, r_sorted = p[order], r[order]
    csum = np.concatenate([[0.0], np.cumsum(r_sorted)])
    csum2 = np.concatenate([[0.0], np.cumsum(r_sorted**2)])
    n = np.searchsorted(-p_sorted, -candidates, side="right")
    eligible = n >= max(min_trades, 2)
    safe = np.maximum(n, 2)
    mean = np.where(n > 0, csum[n] / np.maximum(n, 1), np.nan)
    var = np.maximum(csum2[n] / safe - (csum[n] / safe) ** 2, 1e-18) * safe / (safe - 1)
    score = np.where(eligible, mean / np.sqrt(var) * np.sqrt(safe), np.nan)
    return pl.DataFrame(
        {
            "threshold": candidates,
            "n": pl.Series(n, dtype=pl.Int64),
            "mean": mean,
            "score": score,
            "eligible": eligible,
        }
    )


def choose_long_threshold(
    prob: ArrayLike,
    trade_return: ArrayLike,
    *,
    cost: float = THRESHOLD_COST,
    min_trades: int = THRESHOLD_MIN_TRADES,
    grid: ArrayLike | None = None,
    fallback: float = 0.5,
) -> float:
    """The probability threshold whose long trades earned the best risk-adjusted return on
    OUT-OF-FOLD predictions (never the hold-out): maximises mean / std * sqrt(n) of
    `trade_return - cost` over the rows with prob >= threshold, among thresholds leaving at least
    `min_trades` rows (`threshold_trials`; the first of equal scores). `fallback` when no
    threshold has a positive mean (the model shows no edge)."""
    trials = threshold_trials(prob, trade_return, cost=cost, min_trades=min_trades, grid=grid)
    best, best_score = fallback, 0.0
    for threshold, mean, score, eligible in trials.select(
        "threshold", "mean", "score", "eligible"
    ).iter_rows():
        if eligible and mean > 0 and score > best_score:
            best, best_score = float(threshold), float(score)
    return best


def choose_short_threshold(
    prob: ArrayLike,
    trade_return: ArrayLike,
    *,
    cost: float = THRESHOLD_COST,
    min_trades: int = THRESHOLD_MIN_TRADES,
) -> float | None:
    """The short threshold, chosen like the long one on OUT-OF-FOLD predictions: short the bars
    with prob <= threshold, scored on the short's return `-trade_return - cost` (the long label
    trade's realized return negated: a short held over the same bars to the same exit), among the
    candidates trading the bottom 50/30/20/10/5 % of probabilities (the mirror of the long grid).
    None when no candidate has a positive mean (no downside edge): then no shorts are emitted.

    The mirror is exact: `choose_long_threshold` on (1 - prob, -trade_return) with the grid of
    1 - prob's quantiles, then mapped back by t -> 1 - t."""
    p = np.asarray(prob, dtype=np.float64)
    r = np.asarray(trade_return, dtype=np.float64)
    flipped = choose_long_threshold(
        1.0 - p, -r, cost=cost, min_trades=min_trades, fallback=math.nan
    )
    return None if math.isnan(flipped) else round(1.0 - flipped, 2)


def resolve_short_threshold(
    explicit: float | None, model_threshold: float | None, threshold_long: float
) -> float | None:
    """The short threshold in force: an explicit one, else the model's own (tag
    `decision_threshold_short`, chosen on its out-of-fold predictions), else None (no shorts);
    None too when it would not lie below the long threshold."""
    chosen = explicit if explicit is not None else model_threshold
    if chosen is None or not 0.0 < chosen < threshold_long:
        return None
    return chosen


def apply_ensemble(
    signals: pl.DataFrame,
    atr: pl.Series,
    ensemble: pl.DataFrame,
    *,
    sl_mult: float,
    tp_mult: float,
) -> pl.DataFrame:
    """`signals` (make_signals' frame, with `atr` per row) whose side and strength come from the
    ensemble (timestamp, side, size) on the bars it covers; stop-loss and take-profit are
    recomputed for that side (mirrored for a short), prob_up stays the direction model's. Bars the
    ensemble does not cover keep the direction model's signal."""
    joined = signals.with_columns(pl.Series("_atr", atr)).join(
        ensemble.select("timestamp", pl.col("side").alias("_side"), pl.col("size").alias("_size")),
        on="timestamp",
        how="left",
    )
    side = pl.coalesce("_side", "side")
    signed = side.cast(pl.Float64)
    trading = side != 0
    return joined.with_columns(
        side.cast(pl.Int8).alias("side"),
        pl.when(pl.col("_side").is_not_null())
        .then(pl.col("_size").clip(0.0, 1.0))
        .otherwise(pl.col("strength"))
        .alias("strength"),
        pl.when(trading)
        .then(pl.col("entry_price") - signed * sl_mult * pl.col("_atr"))
        .alias("stop_loss"),
        pl.when(trading)
        .then(pl.col("entry_price") + signed * tp_mult * pl.col("_atr"))
        .alias("take_profit"),
    ).drop("_atr", "_side", "_size")
