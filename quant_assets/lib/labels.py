"""Targets for supervised learning on bars: triple-barrier, fixed-horizon, outperformance (against a
benchmark symbol) and multi-class (return buckets) labels, their sample weights (average
uniqueness), and a class-balance summary for metadata and checks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from quant_assets.lib.errors import QuantAssetsError
from quant_assets.lib.timeframes import timeframe_seconds

BARRIERS: tuple[str, ...] = ("tp", "sl", "vertical")
BARRIER_DTYPE = pl.Enum(BARRIERS)
UTC_US = pl.Datetime("us", "UTC")
#: a class rarer than this among labelled rows deserves a WARN-level asset check
MINORITY_CLASS_WARN_FRACTION = 0.05

# Rows per block of the first-touch scan: a block's float arrays (entry barriers and the high/low
# windows, ~4 x 8 bytes per row) stay in L2 across the H passes; measured fastest at 64k-128k.
_BLOCK_ROWS = 1 << 16

ArrayLike = np.ndarray | pl.Series | Sequence[float]


class LabelInputError(QuantAssetsError, ValueError):
    """Inputs of a labeller are inconsistent (lengths, order, side values, parameters)."""


def triple_barrier_labels(
    timestamps: ArrayLike,
    open_: ArrayLike,
    high: ArrayLike,
    low: ArrayLike,
    close: ArrayLike,
    atr: ArrayLike,
    *,
    timeframe: str,
    horizon: int = 5,
    tp_mult: float = 1.75,
    sl_mult: float = 1.0,
    side: ArrayLike | None = None,
) -> pl.DataFrame:
    """Triple-barrier labels (López de Prado), one row per bar.

    The position is entered at the close of bar i. Take-profit and stop-loss sit `tp_mult` and
    `sl_mult` x atr[i] away from that close (above/below for a long, mirrored for a short); the
    vertical barrier is bar i+horizon. Touches are tested on the high and low of each following bar
    i+1..i+horizon, so intrabar excursions count, not only closes.

    Conventions:
    - `horizon` counts rows: a missing bar is not a row, so across a gap the vertical barrier is
      further away in wall-clock time than horizon x timeframe.
    - A bar that touches both barriers is a stop-loss: the order inside the bar is unknown, and
      assuming the worse outcome keeps the label set from looking better than it could trade.
    - exit_price is the touched barrier's level, except when the exit bar OPENED beyond it (a gap
      through the barrier): then it is that bar's open, the first price one could trade at. For the
      vertical barrier it is the close of bar i+horizon.
    - ret = exit_price / close[i] - 1 is the price return (long-side convention) for every row; the
      profit of a short bet is -ret. `label` is +1 tp, -1 sl, 0 vertical for either side.
    - t1 is when the outcome is known: the CLOSE time (open + timeframe) of the exit bar.
    - Unlabelled (all outcome columns null): rows whose bar i+horizon is past the data end, even if
      a barrier was already touched, so a label never changes or appears differently when more data
      arrives; rows whose atr or close is null/NaN (warm-up); rows whose side is 0 or null.

    `side` is optional, +1 (long) or -1 (short) per row, e.g. a primary model's bets for
    meta-labelling. Arrays may be numpy or polars; the result has columns timestamp, label (Int8),
    t1, barrier (Enum tp/sl/vertical), exit_price, ret, holding_bars (Int32).
    """
    where = "triple_barrier_labels"
    _check_horizon(horizon, where)
    for name, mult in (("tp_mult", tp_mult), ("sl_mult", sl_mult)):
        if not (np.isfinite(mult) and mult > 0):
            raise LabelInputError(f"{where}: {name} must be a positive finite number, got {mult!r}")
    step_us = timeframe_seconds(timeframe) * 1_000_000
    ts = _epoch_us(timestamps, "timestamps", where)
    n = ts.size
    o, h, lo, c, a = (
        _float_array(x, name, n, where)
        for name, x in (
            ("open_", open_),
            ("high", high),
            ("low", low),
            ("close", close),
            ("atr", atr),
        )
    )
    m = max(n - horizon, 0)  # rows whose vertical barrier is inside the data
    entry, width = c[:m], a[:m]
    valid = np.isfinite(entry) & np.isfinite(width)
    long = None  # all long
    if side is None:
        upper = entry + tp_mult * width
        lower = entry - sl_mult * width
    else:
        s = _side_array(side, n, where)[:m]
        valid &= s != 0
        long = s > 0
        # table look-ups and bit operations instead of np.where, which is slow on random masks
        upper = entry + np.array([sl_mult, tp_mult]).take(long.view(np.uint8)) * width
        lower = entry - np.array([tp_mult, sl_mult]).take(long.view(np.uint8)) * width

    up_score, dn_score = _first_touch_scores(h, lo, upper, lower, horizon)
    if long is None:
        tp_score, sl_score = up_score, dn_score
    else:
        # modular unsigned arithmetic: dn + 1 * (up - dn) wraps around exactly to up
        tp_score = dn_score + long.view(np.uint8) * (up_score - dn_score)
        sl_score = up_score + dn_score - tp_score
    # a bar touching both barriers gives them equal scores: the tie goes to the stop-loss
    is_tp = tp_score > sl_score
    is_sl = (sl_score >= tp_score) & (sl_score > 0)
    if long is None:
        via_upper, via_lower = is_tp, is_sl
    else:
        via_upper = (long & is_tp) | (~long & is_sl)
        via_lower = (long & is_sl) | (~long & is_tp)
    # branch-free integer arithmetic: np.where on random masks costs ~8 ms per 1M rows
    first = np.maximum(tp_score, sl_score).astype(np.int32)
    holding = horizon + 1 - first - (first == 0)  # no touch: the vertical barrier, i+horizon
    exit_bar = np.arange(m) + holding
    barrier = 2 - 2 * is_tp.view(np.int8) - is_sl.view(np.int8)  # index into BARRIERS
    exit_open = o.take(exit_bar)
    inputs = {
        "holding": holding,
        "t1": ts.take(exit_bar) + step_us,
        "barrier": barrier,
        "is_tp": is_tp,
        "is_sl": is_sl,
        "via_upper": via_upper,
        "via_lower": via_lower,
        # a barrier fills at its level, or at the open of a bar that gapped beyond it
        "fill_upper": np.maximum(exit_open, upper, out=upper),
        "fill_lower": np.minimum(exit_open, lower, out=lower),
        "exit_close": c.take(exit_bar),
        "entry": entry,
    }
    col = pl.col
    exit_price = (
        pl.when(col("via_upper"))
        .then(col("fill_upper"))
        .when(col("via_lower"))
        .then(col("fill_lower"))
        .otherwise(col("exit_close"))
    )
    return _labels_frame(
        ts,
        valid,
        inputs,
        {
            "label": col("is_tp").cast(pl.Int8) - col("is_sl").cast(pl.Int8),
            "t1": col("t1").cast(UTC_US),
            "barrier": pl.lit(pl.Series(BARRIERS, dtype=BARRIER_DTYPE)).gather(col("barrier")),
            "exit_price": exit_price,
            "ret": exit_price / col("entry") - 1.0,
            "holding_bars": col("holding"),
        },
    )


def fixed_horizon_labels(
    timestamps: ArrayLike,
    close: ArrayLike,
    *,
    timeframe: str,
    horizon: int = 5,
    threshold: float = 0.02,
) -> pl.DataFrame:
    """Fixed-horizon binary labels: label_fh = 1 if close[i+horizon]/close[i] - 1 >= threshold.

    Columns timestamp, label_fh (Int8 0/1), t1_fh (close time of bar i+horizon), ret_fh. Like the
    triple barrier, `horizon` counts rows and rows whose bar i+horizon is past the data end, or
    whose closes are null/NaN, are null.
    """
    where = "fixed_horizon_labels"
    _check_horizon(horizon, where)
    if not np.isfinite(threshold):
        raise LabelInputError(f"{where}: threshold must be finite, got {threshold!r}")
    step_us = timeframe_seconds(timeframe) * 1_000_000
    ts = _epoch_us(timestamps, "timestamps", where)
    c = _float_array(close, "close", ts.size, where)
    m = max(c.size - horizon, 0)
    inputs = {"entry": c[:m], "exit_close": c[horizon:], "t1": ts[horizon:] + step_us}
    ret = pl.col("exit_close") / pl.col("entry") - 1.0
    return _labels_frame(
        ts,
        np.isfinite(c[:m]) & np.isfinite(c[horizon:]),
        inputs,
        {
            "label_fh": (ret >= threshold).cast(pl.Int8),
            "t1_fh": pl.col("t1").cast(UTC_US),
            "ret_fh": ret,
        },
    )


def outperformance_labels(
    timestamps: ArrayLike,
    close: ArrayLike,
    benchmark_timestamps: ArrayLike,
    benchmark_close: ArrayLike,
    *,
    timeframe: str,
    benchmark_timeframe: str | None = None,
    horizon: int = 5,
) -> pl.DataFrame:
    """Binary outperformance: label_out = 1 when the symbol's return over `horizon` bars (close of
    bar i to close of bar i+horizon) beats the benchmark's return over the same clock interval.

    The benchmark is aligned as of each instant: its close at time t is the close of its last bar
    that had *closed* by t (open time + its timeframe <= t), so a benchmark with other sessions
    (an equity index against crypto) contributes its latest known close, never a later one.
    Columns timestamp, label_out (Int8 0/1), t1_out (close time of bar i+horizon), ret_out (the
    symbol's return minus the benchmark's). A row is null when its horizon runs past the symbol's
    data, when the benchmark has no closed bar at entry, or when the benchmark's data end before
    the exit time (a benchmark bar closing before the exit could still arrive, and would change the
    label); recomputing on truncated history therefore never changes a label, it only leaves more
    of the latest rows null.
    """
    where = "outperformance_labels"
    _check_horizon(horizon, where)
    step_us = timeframe_seconds(timeframe) * 1_000_000
    bench_step_us = timeframe_seconds(benchmark_timeframe or timeframe) * 1_000_000
    ts = _epoch_us(timestamps, "timestamps", where)
    c = _float_array(close, "close", ts.size, where)
    bench_close_time = (
        _epoch_us(benchmark_timestamps, "benchmark_timestamps", where) + bench_step_us
    )
    bc = _float_array(benchmark_close, "benchmark_close", bench_close_time.size, where)
    m = max(c.size - horizon, 0)
    entry_time, exit_time = ts[:m] + step_us, ts[horizon:] + step_us

    def as_of(t: np.ndarray) -> np.ndarray:
        if not bc.size:
            return np.full(t.size, np.nan)
        k = np.searchsorted(bench_close_time, t, side="right") - 1
        return np.where(k >= 0, bc[np.maximum(k, 0)], np.nan)

    data_end = bench_close_time[-1] if bench_close_time.size else np.iinfo(np.int64).min
    b_entry, b_exit = as_of(entry_time), as_of(exit_time)
    valid = (
        np.isfinite(c[:m])
        & np.isfinite(c[horizon:])
        & np.isfinite(b_entry)
        & np.isfinite(b_exit)
        & (exit_time <= data_end)
    )
    inputs = {
        "entry": c[:m],
        "exit_close": c[horizon:],
        "b_entry": b_entry,
        "b_exit": b_exit,
        "t1": exit_time,
    }
    excess = (pl.col("exit_close") / pl.col("entry")) - (pl.col("b_exit") / pl.col("b_entry"))
    return _labels_frame(
        ts,
        valid,
        inputs,
        {
            "label_out": (excess > 0).cast(pl.Int8),
            "t1_out": pl.col("t1").cast(UTC_US),
            "ret_out": excess,
        },
    )


#: Names of the classes of a 5-class multi_class label, lowest return bucket first.
FIVE_CLASS_NAMES: tuple[str, ...] = ("strong_sell", "sell", "hold", "buy", "strong_buy")


def multi_class_labels(
    timestamps: ArrayLike,
    close: ArrayLike,
    *,
    timeframe: str,
    horizon: int = 5,
    n_classes: int = 5,
    thresholds: Sequence[float] | None = None,
    window: int = 1000,
) -> pl.DataFrame:
    """Multi-class labels: the bucket of the return over `horizon` bars (close i to close i+horizon),
    class 0 the lowest returns (strong sell) ... n_classes - 1 the highest (strong buy).

    thresholds: fixed, increasing bucket edges (n_classes = len(thresholds) + 1; a return equal to
    an edge goes to the upper bucket). Without thresholds, the edges are the k/n_classes quantiles
    of the horizon returns already *known* at the entry bar's close (rows j <= i - horizon), over
    the latest `window` of them (at least window // 2; earlier rows are null), so a label never
    depends on later prices than its own exit. Columns timestamp, label_mc (Int8), t1_mc, ret_mc.
    """
    where = "multi_class_labels"
    _check_horizon(horizon, where)
    step_us = timeframe_seconds(timeframe) * 1_000_000
    ts = _epoch_us(timestamps, "timestamps", where)
    c = _float_array(close, "close", ts.size, where)
    m = max(c.size - horizon, 0)
    ret = np.full(ts.size, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ret[:m] = c[horizon:] / c[:m] - 1.0
    if thresholds is not None and len(thresholds):
        edges = np.asarray(thresholds, dtype=np.float64)
        if not (np.isfinite(edges).all() and (np.diff(edges) > 0).all()):
            raise LabelInputError(
                f"{where}: thresholds must be finite and increasing, got {thresholds}"
            )
        edge_matrix = np.broadcast_to(edges, (m, edges.size))
    else:
        if isinstance(n_classes, bool) or n_classes < 2:
            raise LabelInputError(f"{where}: n_classes must be at least 2, got {n_classes!r}")
        if window < 2 * n_classes:
            raise LabelInputError(
                f"{where}: window must be at least {2 * n_classes} rows, got {window}"
            )
        known = pl.Series(ret).fill_nan(None).shift(horizon)
        edge_matrix = np.column_stack(
            [
                known.rolling_quantile(
                    k / n_classes, "linear", window_size=window, min_samples=window // 2
                )
                .cast(pl.Float64)
                .fill_null(np.nan)
                .to_numpy()[:m]
                for k in range(1, n_classes)
            ]
        )
    r = ret[:m]
    valid = np.isfinite(r) & np.isfinite(edge_matrix).all(axis=1)
    bucket = (r[:, None] >= edge_matrix).sum(axis=1)
    return _labels_frame(
        ts,
        valid,
        {"bucket": bucket, "ret": r, "t1": ts[horizon:] + step_us},
        {
            "label_mc": pl.col("bucket").cast(pl.Int8),
            "t1_mc": pl.col("t1").cast(UTC_US),
            "ret_mc": pl.col("ret"),
        },
    )


def sample_weights(
    t0: ArrayLike,
    t1: ArrayLike,
    timestamps: ArrayLike | None = None,
    decay: float = 1.0,
) -> np.ndarray:
    """Per-label weight: average uniqueness over the label's life, times an optional recency decay.

    A label's life is the inclusive bar-index span [a, b] from its entry bar to its exit bar
    (i.e. [i, i + holding_bars]). Concurrency c_t is the number of labels alive at bar t, and the
    uniqueness of a label is the mean of 1/c_t over its life (López de Prado, AFML 4.4). Both are
    computed in O(n) with a difference array and a prefix sum over bar indices.

    Without `timestamps`, t0 and t1 are the integer bar indices a and b. With `timestamps` (the bar
    open times), t0 are label timestamps (bar opens) and t1 outcome times as returned by
    `triple_barrier_labels` (close time of the exit bar); b is the last bar opening before t1.
    Null t0/t1 (or NaN/NaT) mark unlabelled rows: they get NaN and do not count in concurrency.

    decay in (0, 1]: the weight is multiplied by decay ** (age / span), age being how many bars the
    label starts before the newest label and span the distance in bars between the oldest and the
    newest label start, so the oldest label is scaled by `decay`, the newest by 1, exponentially in
    between. decay=1 means no decay. Weights are not normalised.
    """
    where = "sample_weights"
    if not (0.0 < decay <= 1.0):
        raise LabelInputError(f"{where}: decay must be in (0, 1], got {decay!r}")
    if timestamps is None:
        start, start_ok = _optional_int_array(t0, "t0", where)
        end, end_ok = _optional_int_array(t1, "t1", where)
    else:
        bars = _epoch_us(timestamps, "timestamps", where)
        start_us, start_ok = _optional_epoch_us(t0, "t0", where)
        end_us, end_ok = _optional_epoch_us(t1, "t1", where)
        start = np.searchsorted(bars, start_us, side="left")
        end = np.searchsorted(bars, end_us, side="left") - 1
        not_a_bar = start_ok & (
            (start >= bars.size) | (bars[np.minimum(start, bars.size - 1)] != start_us)
        )
        if not_a_bar.any():
            row = int(np.flatnonzero(not_a_bar)[0])
            raise LabelInputError(f"{where}: t0 at row {row} is not one of the bar timestamps")
    if start.size != end.size:
        raise LabelInputError(f"{where}: t0 has {start.size} rows but t1 has {end.size}")
    live = start_ok & end_ok
    weights = np.full(start.size, np.nan)
    if not live.any():
        return weights
    a, b = start[live], end[live]
    bad = (a < 0) | (b < a)
    if bad.any():
        row = int(np.flatnonzero(live)[np.flatnonzero(bad)[0]])
        raise LabelInputError(
            f"{where}: row {row} has an empty or negative life: bar span [{a[bad][0]}, {b[bad][0]}]"
        )
    n_bars = int(b.max()) + 1
    concurrency = np.cumsum(
        np.bincount(a, minlength=n_bars + 1) - np.bincount(b + 1, minlength=n_bars + 1)
    )[:n_bars]
    inverse = np.divide(1.0, concurrency, out=np.zeros(n_bars), where=concurrency > 0)
    prefix = np.concatenate(([0.0], np.cumsum(inverse)))
    uniqueness = (prefix[b + 1] - prefix[a]) / (b - a + 1)
    if decay < 1.0 and a.max() > a.min():
        uniqueness *= decay ** ((a.max() - a) / (a.max() - a.min()))
    weights[live] = uniqueness
    return weights


def label_summary(labels: pl.DataFrame) -> dict[str, Any]:
    """Class balance and coverage of a label frame, for asset metadata and checks.

    Summarises `label` (-1/0/1) if present, else `label_fh` (0/1). Fractions are of labelled rows;
    coverage is labelled/total; `minority_class_fraction` below MINORITY_CLASS_WARN_FRACTION
    deserves a warning (0.0 when a class is absent or nothing is labelled).
    """
    if "label" in labels.columns:
        column, classes = "label", (-1, 0, 1)
    elif "label_fh" in labels.columns:
        column, classes = "label_fh", (0, 1)
    else:
        raise LabelInputError(
            f"label_summary: expected a 'label' or 'label_fh' column, got {labels.columns}"
        )
    values = labels.get_column(column)
    rows = labels.height
    labelled = rows - values.null_count()
    counts = {k: int((values == k).sum()) for k in classes}
    fractions = {k: (counts[k] / labelled if labelled else 0.0) for k in classes}
    minority = min(classes, key=lambda k: counts[k])
    mean_holding = None
    if "holding_bars" in labels.columns and labelled:
        mean_holding = float(labels.get_column("holding_bars").mean())
    return {
        "label_column": column,
        "rows": rows,
        "labelled": labelled,
        "coverage": labelled / rows if rows else 0.0,
        "class_counts": {str(k): v for k, v in counts.items()},
        "class_fractions": {str(k): v for k, v in fractions.items()},
        "mean_holding_bars": mean_holding,
        "minority_class": minority,
        "minority_class_fraction": fractions[minority],
    }


def build_labels(
    bars: pl.DataFrame,
    atr: ArrayLike,
    timeframe: str,
    *,
    horizon: int = 5,
    tp_mult: float = 1.75,
    sl_mult: float = 1.0,
    fixed_horizon: int = 5,
    fixed_threshold: float = 0.02,
    weight_decay: float = 1.0,
    benchmark: pl.DataFrame | None = None,
    benchmark_timeframe: str | None = None,
    outperformance_horizon: int = 5,
    multi_class_horizon: int = 5,
    multi_class_classes: int = 5,
    multi_class_thresholds: Sequence[float] | None = None,
    multi_class_window: int = 1000,
) -> pl.DataFrame:
    """Everything the `labels` asset stores: triple-barrier labels, the fixed-horizon label, the
    multi-class label, the outperformance label against `benchmark` bars (timestamp, close; all
    null without a benchmark) and the average-uniqueness sample weight of each bar of canonical
    `bars` (ATR(14) given per bar)."""
    tb = triple_barrier_labels(
        bars["timestamp"],
        bars["open"],
        bars["high"],
        bars["low"],
        bars["close"],
        atr,
        timeframe=timeframe,
        horizon=horizon,
        tp_mult=tp_mult,
        sl_mult=sl_mult,
    )
    fh = fixed_horizon_labels(
        bars["timestamp"],
        bars["close"],
        timeframe=timeframe,
        horizon=fixed_horizon,
        threshold=fixed_threshold,
    )
    mc = multi_class_labels(
        bars["timestamp"],
        bars["close"],
        timeframe=timeframe,
        horizon=multi_class_horizon,
        n_classes=multi_class_classes,
        thresholds=multi_class_thresholds,
        window=multi_class_window,
    )
    if benchmark is None:
        benchmark = pl.DataFrame(
            schema={"timestamp": bars.schema["timestamp"], "close": pl.Float64}
        )
    out = outperformance_labels(
        bars["timestamp"],
        bars["close"],
        benchmark["timestamp"],
        benchmark["close"],
        timeframe=timeframe,
        benchmark_timeframe=benchmark_timeframe,
        horizon=outperformance_horizon,
    )
    weights = sample_weights(
        tb["timestamp"], tb["t1"], timestamps=bars["timestamp"], decay=weight_decay
    )
    joined = tb.join(fh, on="timestamp", how="left", maintain_order="left")
    for extra in (mc, out):
        joined = joined.join(extra, on="timestamp", how="left", maintain_order="left")
    return joined.with_columns(pl.Series("sample_weight", weights).fill_nan(None))


def _first_touch_scores(
    high: np.ndarray, low: np.ndarray, upper: np.ndarray, lower: np.ndarray, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """For each row i, horizon+1-k for the first k in 1..horizon with high[i+k] >= upper[i] (resp.
    low[i+k] <= lower[i]), or 0 when there is none: a higher score is an earlier touch.

    Keeps the running maximum of the scores of touches, so the earliest touch wins with two
    branch-free byte passes per k (a masked first-touch assignment is ~10x slower on random masks);
    blocks of rows keep the k-shifted windows in cache.
    """
    m = upper.size
    dtype = np.uint8 if horizon < 255 else np.uint32
    up_score = np.zeros(m, dtype=dtype)
    dn_score = np.zeros(m, dtype=dtype)
    hit = np.empty(min(m, _BLOCK_ROWS), dtype=bool)
    scored = np.empty(hit.size, dtype=dtype)
    for r0 in range(0, m, _BLOCK_ROWS):
        r1 = min(r0 + _BLOCK_ROWS, m)
        hit_b, scored_b = hit[: r1 - r0], scored[: r1 - r0]
        up_b, dn_b = upper[r0:r1], lower[r0:r1]
        up_s, dn_s = up_score[r0:r1], dn_score[r0:r1]
        for k in range(1, horizon + 1):
            score = dtype(horizon + 1 - k)
            np.greater_equal(high[r0 + k : r1 + k], up_b, out=hit_b)
            np.multiply(hit_b, score, out=scored_b)
            np.maximum(up_s, scored_b, out=up_s)
            np.less_equal(low[r0 + k : r1 + k], dn_b, out=hit_b)
            np.multiply(hit_b, score, out=scored_b)
            np.maximum(dn_s, scored_b, out=dn_s)
    return up_score, dn_score


def _labels_frame(
    ts: np.ndarray, valid: np.ndarray, inputs: dict[str, np.ndarray], outputs: dict[str, pl.Expr]
) -> pl.DataFrame:
    """All n rows: timestamp, then each of `outputs` evaluated on `inputs` (arrays of the first
    m = len(valid) rows), null where not valid and on the rows past m."""
    body = (
        pl.DataFrame({**inputs, "_valid": valid})
        .lazy()
        .select(pl.when(pl.col("_valid")).then(expr).alias(name) for name, expr in outputs.items())
        .collect()
    )
    unknown = pl.DataFrame(schema=body.schema).clear(ts.size - valid.size)
    return pl.concat([body, unknown]).insert_column(0, pl.Series("timestamp", ts).cast(UTC_US))


def _check_horizon(horizon: int, where: str) -> None:
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 1:
        raise LabelInputError(
            f"{where}: horizon must be a positive number of bars, got {horizon!r}"
        )


def _float_array(values: ArrayLike, name: str, n: int, where: str) -> np.ndarray:
    if isinstance(values, pl.Series):
        values = values.cast(pl.Float64).to_numpy()
    array = np.ascontiguousarray(values, dtype=np.float64)
    if array.shape != (n,):
        raise LabelInputError(
            f"{where}: {name} has shape {array.shape}, expected ({n},) like timestamps"
        )
    return array


def _side_array(side: ArrayLike, n: int, where: str) -> np.ndarray:
    s = np.nan_to_num(_float_array(side, "side", n, where), nan=0.0)
    bad = (s != 1) & (s != -1) & (s != 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise LabelInputError(
            f"{where}: side at row {row} is {s[row]!r}; expected +1, -1, 0 or null"
        )
    return s


def _epoch_us(values: ArrayLike, name: str, where: str) -> np.ndarray:
    """Strictly increasing, non-null datetimes as int64 microseconds since the epoch (UTC)."""
    us, ok = _optional_epoch_us(values, name, where)
    if not ok.all():
        raise LabelInputError(f"{where}: {name} is null at row {int(np.flatnonzero(~ok)[0])}")
    not_increasing = np.flatnonzero(np.diff(us) <= 0)
    if not_increasing.size:
        row = int(not_increasing[0]) + 1
        raise LabelInputError(f"{where}: {name} not strictly increasing at row {row}")
    return us


def _optional_epoch_us(values: ArrayLike, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Datetimes (polars Datetime in any zone, or numpy datetime64; zone-naive ones read as UTC) as
    int64 microseconds since the epoch, and a mask of the non-null rows."""
    if isinstance(values, pl.Series):
        if not isinstance(values.dtype, pl.Datetime):
            raise LabelInputError(f"{where}: {name} must be Datetime, got {values.dtype}")
        us = values.dt.epoch("us")
        if us.null_count() == 0:
            return us.to_numpy().astype(np.int64, copy=False), np.ones(us.len(), dtype=bool)
        return us.fill_null(0).to_numpy().astype(np.int64, copy=False), us.is_not_null().to_numpy()
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.datetime64):
        raise LabelInputError(f"{where}: {name} must be datetimes, got dtype {array.dtype}")
    array = array.astype("datetime64[us]")
    return array.view(np.int64), ~np.isnat(array)


def _optional_int_array(values: ArrayLike, name: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer bar indices and a mask of present rows (polars null or float NaN = absent)."""
    as_float = _float_array(values, name, len(values), where)
    ok = np.isfinite(as_float)
    if (as_float[ok] != np.round(as_float[ok])).any():
        raise LabelInputError(f"{where}: {name} must hold integer bar indices")
    return np.where(ok, as_float, 0).astype(np.int64), ok
