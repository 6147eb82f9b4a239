"""Per-bar technical features of one symbol at one timeframe, and their multi-timeframe and
cross-sectional views. Names, formulas and warm-up lengths are documented in docs/features.md."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from quant_assets.lib.errors import DataValidationError, InvalidTimeframeError
from quant_assets.lib.sources.base import OHLCV_COLUMNS
from quant_assets.lib.timeframes import check_timeframe, timeframe_delta, timeframe_seconds

RETURN_HORIZONS: tuple[int, ...] = (1, 5, 20, 60)
SMA_PERIODS: tuple[int, ...] = (20, 50, 200)
EMA_PERIODS: tuple[int, ...] = (12, 26)
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
RSI_PERIOD = ATR_PERIOD = 14
BB_PERIOD, BB_K = 20, 2.0
VOL_WINDOWS: tuple[int, ...] = (20, 60)
RANGE_VOL_WINDOW = 20
VOLUME_WINDOW = 20
SLOPE_LAG = 5

# An EMA-type feature is declared warm once the recursion has run 3 spans past its seed: the
# seed's weight is then (1 - 2/(span+1))**(3*span) ~ e**-6 ~ 0.25%. Wilder's alpha = 1/n is the
# EMA alpha of span 2n - 1.
EMA_WARM_SPANS = 3


def _ema_warm(first_value_bars: int, span: int) -> int:
    return first_value_bars + EMA_WARM_SPANS * span


_EMA_WARM = {n: _ema_warm(n, n) for n in EMA_PERIODS}
_WILDER_WARM = _ema_warm(RSI_PERIOD + 1, 2 * RSI_PERIOD - 1)
# MACD's line is as converged as its slow EMA; the signal EMA adds its own spans on top.
_MACD_WARM = max(_EMA_WARM[MACD_SLOW], _ema_warm(MACD_SLOW, MACD_FAST))
_MACD_SIGNAL_WARM = _MACD_WARM + EMA_WARM_SPANS * MACD_SIGNAL

#: Bars of history (the current bar included) each feature needs before it is warm: row i
#: (0-based) is warm for feature f iff i + 1 >= FEATURE_WARMUP[f]. Windows count rows, not time.
FEATURE_WARMUP: dict[str, int] = {
    **{f"ret_{k}": k + 1 for k in RETURN_HORIZONS},
    **{f"sma_{n}_ratio": n for n in SMA_PERIODS},
    **{f"ema_{n}_ratio": _EMA_WARM[n] for n in EMA_PERIODS},
    "ema_26_slope": _EMA_WARM[26] + SLOPE_LAG,
    "macd": _MACD_WARM,
    "macd_signal": _MACD_SIGNAL_WARM,
    "macd_hist": _MACD_SIGNAL_WARM,
    "macd_norm": _MACD_WARM,
    "macd_signal_norm": _MACD_SIGNAL_WARM,
    "macd_hist_norm": _MACD_SIGNAL_WARM,
    "rsi_14": _WILDER_WARM,
    "atr_14": _WILDER_WARM,
    "atr_14_frac": _WILDER_WARM,
    "bb_width": BB_PERIOD,
    "bb_pctb": BB_PERIOD,
    **{f"vol_{n}": n + 1 for n in VOL_WINDOWS},
    "vol_parkinson_20": RANGE_VOL_WINDOW,
    "vol_gk_20": RANGE_VOL_WINDOW,
    "volume_ratio_20": VOLUME_WINDOW,
    "dollar_volume": 1,
    "hour_of_day": 1,
    "day_of_week": 1,
}
MAX_WARMUP: int = max(FEATURE_WARMUP.values())

_INTRADAY_ONLY = frozenset({"hour_of_day"})

MTF_FEATURES: tuple[str, ...] = ("rsi_14", "ema_26_slope", "atr_14_frac")
XS_SOURCES: dict[str, str] = {
    "xs_rank_momentum": "ret_20",
    "xs_rank_volume": "volume_ratio_20",
    "xs_rank_volatility": "vol_20",
}

_LN2 = math.log(2.0)


def feature_names(timeframe: str) -> list[str]:
    """Feature columns compute_features returns for `timeframe`, in order (hour_of_day is intraday only)."""
    intraday = timeframe_seconds(timeframe) < 86400
    return [f for f in FEATURE_WARMUP if intraday or f not in _INTRADAY_ONLY]


def mtf_column(timeframe: str, feature: str) -> str:
    """Name of the snapshot column holding `feature` of the higher `timeframe`, e.g. tf4h_rsi_14."""
    return f"tf{timeframe}_{feature}"


def _row() -> pl.Expr:
    return pl.int_range(pl.len(), dtype=pl.Int64)


def _seeded_ema(x: pl.Expr, alpha: float, seed_from: int, period: int) -> pl.Expr:
    """TA-Lib's EMA recursion: null before row seed_from+period-1, the mean of x over rows
    [seed_from, seed_from+period) there, then prev + alpha*(x - prev)."""
    first = seed_from + period - 1
    seeded = (
        pl.when(_row() > first)
        .then(x)
        .when(_row() == first)
        .then(x.slice(seed_from, period).mean())
    )
    return seeded.ewm_mean(alpha=alpha, adjust=False)


def _wilder(x: pl.Expr, period: int) -> pl.Expr:
    """Wilder smoothing of a series whose first row is undefined (a difference), as TA-Lib seeds it."""
    return _seeded_ema(x, 1.0 / period, 1, period)


def _ema(close: pl.Expr, period: int) -> pl.Expr:
    return _seeded_ema(close, 2.0 / (period + 1), 0, period)


def _range_vol(per_bar_variance: pl.Expr, hl2: pl.Expr) -> pl.Expr:
    """Root of the rolling mean of a per-bar range variance estimate (Parkinson, Garman-Klass)."""
    # Sliding sums keep rounding residue after large terms leave the window; it could be
    # negative under the root, and it would make windows of bars with high == low non-zero.
    return (
        pl.when(hl2.rolling_max(RANGE_VOL_WINDOW) == 0.0)
        .then(0.0)
        .otherwise(per_bar_variance.rolling_mean(RANGE_VOL_WINDOW).clip(lower_bound=0.0).sqrt())
    )


def _bollinger_exprs(close: pl.Expr, period: int, k: float) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
    middle = close.rolling_mean(period)
    std = close.rolling_std(period, ddof=0)
    return middle + k * std, middle, middle - k * std


def bollinger_bands(close: pl.Series, period: int = BB_PERIOD, k: float = BB_K) -> pl.DataFrame:
    """Upper, middle and lower Bollinger bands (SMA ± k population std), null until `period` rows."""
    upper, middle, lower = _bollinger_exprs(pl.col("close"), period, k)
    return pl.DataFrame({"close": close}).select(
        upper.alias("bb_upper"), middle.alias("bb_middle"), lower.alias("bb_lower")
    )


def _require_columns(frame: pl.DataFrame, columns: tuple[str, ...] | list[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            where, f"missing columns {missing}", detail=f"has {frame.columns}"
        )


def _require_increasing(timestamps: pl.Series, where: str) -> None:
    # numpy on the physical integers: the polars expression cost milliseconds per call, most of
    # the time of a 500-bar feature computation on the bar-close serving path
    physical = timestamps.to_physical().to_numpy()
    nulls = timestamps.is_null().to_numpy() if timestamps.null_count() else None
    steps = np.diff(physical) <= 0 if physical.size > 1 else np.zeros(0, dtype=bool)
    bad = np.flatnonzero(np.r_[False, steps] | (nulls if nulls is not None else False))
    if len(bad):
        raise DataValidationError(
            where, "timestamps must be non-null and strictly increasing", row=int(bad[0])
        )


def _require_increasing_within(frame: pl.DataFrame, by: str, where: str) -> None:
    """Each series of a stacked frame (rows with the same `by`) is one contiguous block of rows
    whose timestamps are non-null and strictly increasing."""
    _require_columns(frame, [by, "timestamp"], where)
    runs = frame[by].rle_id()
    if frame.height and runs[-1] + 1 != frame[by].n_unique():
        raise DataValidationError(where, f"the rows of each {by} must be contiguous")
    physical = frame["timestamp"].to_physical().to_numpy()
    same_series = np.diff(runs.to_numpy()) == 0
    steps = same_series & (np.diff(physical) <= 0) if physical.size > 1 else same_series
    nulls = frame["timestamp"].is_null().to_numpy()
    bad = np.flatnonzero(np.r_[False, steps] | nulls)
    if len(bad):
        raise DataValidationError(
            where, "timestamps must be non-null and strictly increasing", row=int(bad[0])
        )


def _per_series(by: str | None):
    """Identity for one series; evaluation per `by` group (`.over`) for a stacked frame."""
    if by is None:
        return lambda expr: expr
    return lambda expr: expr.over(by)


def features_plan(bars: pl.DataFrame, timeframe: str, *, by: str | None = None) -> pl.LazyFrame:
    """The lazy query behind `compute_features` (validated inputs, not yet collected)."""
    check_timeframe(timeframe)
    _require_columns(bars, OHLCV_COLUMNS, "compute_features(bars)")
    if by is None:
        _require_increasing(bars["timestamp"], "compute_features(bars)")
    else:
        _require_increasing_within(bars, by, "compute_features(bars)")
    each = _per_series(by)
    o, h, lo, c, v = (pl.col(x) for x in ("open", "high", "low", "close", "volume"))

    diff = c.diff()
    prev_close = c.shift(1)
    true_range = pl.max_horizontal(h - lo, (h - prev_close).abs(), (lo - prev_close).abs())
    hl2 = (h / lo).log() ** 2
    co2 = (c / o).log() ** 2
    upper, middle, lower = _bollinger_exprs(c, BB_PERIOD, BB_K)
    stage1 = [
        *((c / c.shift(k)).log().alias(f"ret_{k}") for k in RETURN_HORIZONS),
        *(c.rolling_mean(n).alias(f"_sma_{n}") for n in SMA_PERIODS),
        *(_ema(c, n).alias(f"_ema_{n}") for n in EMA_PERIODS),
        # talib.MACD starts the fast EMA where the slow one starts, seeded from the fast-period
        # mean ending there, rather than reusing the standalone fast EMA.
        _seeded_ema(c, 2.0 / (MACD_FAST + 1), MACD_SLOW - MACD_FAST, MACD_FAST).alias("_macd_fast"),
        _wilder(diff.clip(lower_bound=0.0), RSI_PERIOD).alias("_avg_gain"),
        _wilder((-diff).clip(lower_bound=0.0), RSI_PERIOD).alias("_avg_loss"),
        _wilder(true_range, ATR_PERIOD).alias("atr_14"),
        upper.alias("_bb_up"),
        middle.alias("_bb_mid"),
        lower.alias("_bb_lo"),
        _range_vol(hl2 / (4.0 * _LN2), hl2).alias("vol_parkinson_20"),
        _range_vol(0.5 * hl2 - (2.0 * _LN2 - 1.0) * co2, hl2).alias("vol_gk_20"),
        # A rolling sum of zeros that follows large volumes is not exactly 0; test the max instead.
        pl.when(v.rolling_max(VOLUME_WINDOW) == 0.0)
        .then(1.0)
        .otherwise(v / v.rolling_mean(VOLUME_WINDOW))
        .alias("volume_ratio_20"),
        (c * v).alias("dollar_volume"),
    ]
    macd = pl.col("_macd_fast") - pl.col(f"_ema_{MACD_SLOW}")
    stage2 = [
        macd.alias("macd"),
        each(_seeded_ema(macd, 2.0 / (MACD_SIGNAL + 1), MACD_SLOW - 1, MACD_SIGNAL)).alias(
            "macd_signal"
        ),
        *(each(pl.col("ret_1").rolling_std(n, ddof=1)).alias(f"vol_{n}") for n in VOL_WINDOWS),
    ]
    gain, loss = pl.col("_avg_gain"), pl.col("_avg_loss")
    up, mid, low_band = pl.col("_bb_up"), pl.col("_bb_mid"), pl.col("_bb_lo")
    ema26 = pl.col("_ema_26").log()
    ts = pl.col("timestamp")
    stage3 = [
        *((c / pl.col(f"_sma_{n}") - 1.0).alias(f"sma_{n}_ratio") for n in SMA_PERIODS),
        *((c / pl.col(f"_ema_{n}") - 1.0).alias(f"ema_{n}_ratio") for n in EMA_PERIODS),
        each((ema26 - ema26.shift(SLOPE_LAG)) / SLOPE_LAG).alias("ema_26_slope"),
        (pl.col("macd") - pl.col("macd_signal")).alias("macd_hist"),
        (pl.col("macd") / c).alias("macd_norm"),
        (pl.col("macd_signal") / c).alias("macd_signal_norm"),
        ((pl.col("macd") - pl.col("macd_signal")) / c).alias("macd_hist_norm"),
        # Neutral 50 when nothing has moved since the start (TA-Lib returns 0 there).
        pl.when(gain + loss == 0.0)
        .then(50.0)
        .otherwise(100.0 * (gain / (gain + loss)))
        .alias("rsi_14"),
        (pl.col("atr_14") / c).alias("atr_14_frac"),
        ((up - low_band) / mid).alias("bb_width"),
        # On a flat window the bands collapse onto the close: call it the middle of the band.
        pl.when(up == low_band)
        .then(0.5)
        .otherwise((c - low_band) / (up - low_band))
        .alias("bb_pctb"),
        ts.dt.hour().alias("hour_of_day"),
        ts.dt.weekday().alias("day_of_week"),
    ]
    names = feature_names(timeframe)
    return (
        bars.lazy()
        .with_columns(each(e) for e in stage1)  # all but dollar_volume depend on row order
        .with_columns(stage2)
        .with_columns(stage3)
        .select(
            *([by] if by is not None else []),
            ts,
            *names,
            each(_row() >= MAX_WARMUP - 1).alias("is_warm"),
        )
    )


def compute_features(bars: pl.DataFrame, timeframe: str, *, by: str | None = None) -> pl.DataFrame:
    """Features of canonical `bars` (one symbol, one timeframe): timestamp, feature_names(timeframe), is_warm.

    Each row uses only its own and earlier rows. A value is null until its window is full (the
    same rows as TA-Lib's lookback); `is_warm` is True from row MAX_WARMUP-1 on, once every
    feature, EMA-type ones included, is past FEATURE_WARMUP. Missing bars are not filled: windows
    count rows, so a window spanning a gap covers more wall-clock time.

    `by`: `bars` stacks several series (e.g. symbols), each one contiguous block of rows in time
    order named by column `by`; every series gets the features it would get alone (one polars
    pass instead of one per series, for bar-close serving), and `by` leads the output. Per group,
    polars sums an EMA's seed (the mean of a series' first rows) in another order, so warm-up rows
    may differ from the series alone in the last bits; from the warm rows on they agree to 1e-12
    (tested).
    """
    # The streaming engine cuts rows into morsels and restarts sliding sums at their edges,
    # so a row's last bits would depend on how long the frame is; the in-memory engine
    # keeps each row a function of its prefix alone (recursive_analysis checks it bitwise).
    return features_plan(bars, timeframe, by=by).collect(engine="in-memory")


def _close_times(timeframe: str, sorted_: bool = True) -> pl.Expr:
    close = pl.col("timestamp") + timeframe_delta(timeframe)
    return close.set_sorted() if sorted_ else close


def multi_timeframe_snapshot(
    base: pl.DataFrame,
    base_timeframe: str,
    higher: dict[str, pl.DataFrame],
    *,
    by: str | None = None,
) -> pl.DataFrame:
    """Base timestamps plus MTF_FEATURES of each higher timeframe (columns mtf_column(tf, f)).

    Each base bar gets the values of the last higher bar whose close (open + its duration) is at
    or before the base bar's close, so a daily value reaches hourly bars only from the 23:00 bar
    of its day on. `higher[tf]` is compute_features output of timeframe tf of the same symbol.
    `by`: every frame stacks several symbols (compute_features(..., by=by) layout); each base
    row takes the higher bars of its own symbol, and `by` leads the output.
    """
    base_seconds = timeframe_seconds(base_timeframe)
    keys = [by] if by is not None else []

    def check(frame: pl.DataFrame, where: str) -> None:
        if by is None:
            _require_increasing(frame["timestamp"], where)
        else:
            _require_increasing_within(frame, by, where)

    _require_columns(base, [*keys, "timestamp"], "multi_timeframe_snapshot(base)")
    check(base, "multi_timeframe_snapshot(base)")
    # stacked close times are sorted within each symbol only
    out = base.select(*keys, "timestamp", _close_times(base_timeframe, by is None).alias("_close"))
    for tf in sorted(higher, key=timeframe_seconds):
        where = f"multi_timeframe_snapshot(higher[{tf!r}])"
        if timeframe_seconds(tf) <= base_seconds:
            raise InvalidTimeframeError(
                f"{where}: {tf} is not coarser than the base timeframe {base_timeframe}"
            )
        frame = higher[tf]
        _require_columns(frame, [*keys, "timestamp", *MTF_FEATURES], where)
        check(frame, where)
        right = frame.select(
            *keys,
            _close_times(tf, by is None).alias("_close_higher"),
            *(pl.col(f).alias(mtf_column(tf, f)) for f in MTF_FEATURES),
        )
        out = out.join_asof(
            right,
            left_on="_close",
            right_on="_close_higher",
            by=by,
            strategy="backward",
            check_sortedness=by is None,
        ).drop("_close_higher")
    return out.drop("_close")


def _percentile_rank(column: str) -> pl.Expr:
    # NaN would rank above every number; treat it as missing like null.
    x = pl.col(column).fill_nan(None)
    n = x.count().over("timestamp")
    rank = x.rank("average").over("timestamp")
    return pl.when(x.is_null()).then(None).when(n == 1).then(0.5).otherwise((rank - 1.0) / (n - 1))


def cross_sectional_ranks(frames: dict[str, pl.DataFrame] | pl.DataFrame) -> pl.DataFrame:
    """Per-timestamp percentile ranks across symbols of features frames of one timeframe.

    `frames`: symbol -> features frame, or the frames stacked in one with a `symbol` column.
    Returns symbol, timestamp, xs_rank_momentum (of ret_20), xs_rank_volume (of volume_ratio_20),
    xs_rank_volatility (of vol_20) and xs_n_symbols (symbols with a row at that timestamp), sorted
    by symbol then timestamp. A rank is (average rank - 1) / (n - 1) among the n symbols whose
    value is not null at that timestamp, 0.5 when n == 1, null where the symbol's value is null.
    """
    sources = list(XS_SOURCES.values())
    if isinstance(frames, pl.DataFrame):
        _require_columns(frames, ["symbol", "timestamp", *sources], "cross_sectional_ranks(frames)")
        stacked = frames.select(pl.col("symbol").cast(pl.String), "timestamp", *sources)
    elif not frames:
        raise DataValidationError("cross_sectional_ranks(frames)", "no symbols given")
    else:
        parts = []
        for symbol, frame in frames.items():
            _require_columns(
                frame, ["timestamp", *sources], f"cross_sectional_ranks(frames[{symbol!r}])"
            )
            parts.append(
                frame.select(pl.lit(symbol, dtype=pl.String).alias("symbol"), "timestamp", *sources)
            )
        stacked = pl.concat(parts)
    return stacked.select(
        "symbol",
        "timestamp",
        *(_percentile_rank(src).alias(name) for name, src in XS_SOURCES.items()),
        pl.len().over("timestamp").alias("xs_n_symbols"),
    ).sort("symbol", "timestamp")
