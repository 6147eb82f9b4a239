"""Vectorized bar backtest: positions from signals with an execution delay, turnover costs,
stop-loss/take-profit exits, per-bar returns, an equity curve and a trade list."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from quant_assets.lib.errors import QuantAssetsError
from quant_assets.lib.timeframes import check_timeframe

EXIT_REASONS: tuple[str, ...] = ("signal", "sl", "tp", "end")
EXIT_REASON_DTYPE = pl.Enum(EXIT_REASONS)
_PRICES: tuple[str, ...] = ("open", "high", "low", "close")
_BPS = 1e-4


class BacktestInputError(QuantAssetsError, ValueError):
    """Bars, signals or parameters of a backtest are inconsistent (names the column and row)."""


@dataclass(frozen=True)
class BacktestResult:
    """Outcome of `run_backtest`.

    per_bar: one row per bar: timestamp, position (held from the bar's open), gross_ret, cost,
    net_ret, equity (compounded net, 1.0 before the first bar). trades: entry_time, exit_time, side,
    size, entry_price, exit_price, bars_held, ret, exit_reason. See `run_backtest` for conventions.
    """

    per_bar: pl.DataFrame
    trades: pl.DataFrame
    timeframe: str
    delay: int
    fee_bps: float
    slippage_bps: float

    @property
    def equity(self) -> pl.DataFrame:
        """The equity curve: timestamp, equity (value at the bar's close)."""
        return self.per_bar.select("timestamp", "equity")


def run_backtest(
    bars: pl.DataFrame,
    signals: pl.DataFrame,
    *,
    timeframe: str,
    delay: int = 1,
    fee_bps: float = 5.0,
    slippage_bps: float = 2.0,
    use_stops: bool = True,
) -> BacktestResult:
    """Backtest `signals` on canonical OHLCV `bars`, without a loop over bars.

    signals: timestamp (a subset of the bar timestamps, strictly increasing), side (-1/0/+1),
    optional size in [0, 1] (default 1.0), optional stop_loss / take_profit (absolute prices, null
    for none). A signal row is the target position side x size from its effect bar until the next
    signal row takes effect (rows need not exist for every bar).

    Timing (delay >= 1; 0 would trade on the bar that produced the signal and is refused):
    - The signal of bar t, known at its close, is executed at the OPEN of bar t + delay and held
      from there: that bar earns close/open - 1, later bars close-to-close.
    - Positions are fractions of equity, re-marked at every close (the usual vectorized
      constant-fraction convention). With p_j the position held from open j, q_{j-1} the one
      carried over the close j-1 -> open j gap, and x_j the close of bar j (or the exit price
      when a stop fired in it): gross_ret = p_j (x_j / close_{j-1} - 1) when p_j = q_{j-1};
      when the open trades, the old position earns the gap and the new one the rest of the bar:
      gross_ret = (1 + q_{j-1} (open_j / close_{j-1} - 1)) (1 + p_j (x_j / open_j - 1)) - 1.
    - cost = turnover x (fee_bps + slippage_bps) / 1e4 with turnover = |p_j - q_{j-1}|, plus |p_j|
      when a stop exit fired in bar j: a flip from +1 to -1 pays twice. net_ret = gross_ret - cost;
      equity = cumprod(1 + net_ret). An open position at the end pays no closing cost.

    Stops (use_stops, levels of the signal row in force): a long exits in bar j when low_j <=
    stop_loss or high_j >= take_profit (mirrored for a short), at the level, or at open_j when the
    bar opened beyond it (a gap through, also on the entry bar). A bar touching both is a stop-loss,
    as in labels.triple_barrier_labels. After a stop the position is flat until the next signal row
    takes effect, even when that row repeats the same side.

    Trades: a trade is a run of bars holding the same side; it ends when the side changes or goes
    to 0 (exit_reason "signal", exit at the open of the bar where the new position starts), at a
    stop ("sl"/"tp", exit in the bar that touched), or at the last bar ("end", marked at its close).
    entry_time and exit_time are the timestamps of the bars whose open / exit price filled;
    bars_held counts the bars the position was held, partial stop bars included. size is the size
    at entry; a resize keeping the side does not split a trade (its cost shows in per_bar only).
    ret = size x (side x (exit_price / entry_price - 1) - legs x (fee_bps + slippage_bps) / 1e4),
    legs being 2, or 1 for an "end" trade.
    """
    check_timeframe(timeframe)
    _check_parameters(delay, fee_bps, slippage_bps)
    ts, o, h, lo, c = _bar_arrays(bars)
    sig_bar, target, sl, tp = _signal_arrays(signals, ts, use_stops)

    rate = (fee_bps + slippage_bps) * _BPS
    position, stopped, sl_hit, exit_px = _positions(
        sig_bar + delay, target, sl, tp, o, h, lo, c, use_stops
    )
    stop_rows = np.flatnonzero(stopped)
    carried_before, gross, cost, net = _bar_returns(o, c, position, exit_px, stop_rows, rate)
    timestamps = bars.get_column("timestamp")
    equity = net + 1.0
    np.cumprod(equity, out=equity)
    per_bar = pl.DataFrame(
        {
            "timestamp": timestamps,
            "position": position,
            "gross_ret": gross,
            "cost": cost,
            "net_ret": net,
            "equity": equity,
        }
    )
    trades = _trades_frame(timestamps, o, exit_px, position, carried_before, stopped, sl_hit, rate)
    return BacktestResult(per_bar, trades, timeframe, delay, float(fee_bps), float(slippage_bps))


def _positions(
    effect: np.ndarray,
    target: np.ndarray,
    sl: np.ndarray,
    tp: np.ndarray,
    o: np.ndarray,
    h: np.ndarray,
    lo: np.ndarray,
    c: np.ndarray,
    use_stops: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per bar: position held from the open, whether a stop exit fired in the bar, whether that
    was (or would be) the stop-loss, and the exit price of the bar (its close unless stopped).

    `effect` holds the bar where each signal row takes effect (increasing).
    """
    n = o.size
    effect = effect[effect < n]
    k = effect.size
    # segment[j] is the signal row in force at bar j; -1 (before the first) picks the appended
    # flat sentinel of every per-signal array
    segment = np.zeros(n, dtype=np.int32)
    segment[effect] = 1
    np.cumsum(segment, out=segment)
    segment -= 1
    position = np.append(target[:k], 0.0).take(segment)
    exit_px = c.copy()
    if not use_stops or (np.isnan(sl[:k]).all() and np.isnan(tp[:k]).all()):
        no_stop = np.zeros(n, dtype=bool)
        return position, no_stop, no_stop, exit_px
    long, short = position > 0, position < 0
    sl_j = np.append(sl[:k], np.nan).take(segment)
    tp_j = np.append(tp[:k], np.nan).take(segment)
    # NaN levels compare False: no level, no exit
    sl_hit = (long & (lo <= sl_j)) | (short & (h >= sl_j))
    hit = sl_hit | (long & (h >= tp_j)) | (short & (lo <= tp_j))
    hits_before = np.cumsum(hit, dtype=np.int32)
    hits_before -= hit
    # a bar is live while no earlier bar of its segment has touched a level
    live = hits_before == np.append(hits_before[effect], 0).take(segment)
    np.copyto(position, 0.0, where=~live)
    stopped = live & hit
    rows = np.flatnonzero(stopped)
    is_sl = sl_hit[rows]
    level = np.where(is_sl, sl_j[rows], tp_j[rows])
    below = long[rows] == is_sl  # a long's stop-loss and a short's take-profit sit below the price
    opened = o[rows]
    # a bar that opened beyond the level fills at its open
    exit_px[rows] = np.where(below, np.minimum(opened, level), np.maximum(opened, level))
    return position, stopped, sl_hit, exit_px


def _bar_returns(
    o: np.ndarray,
    c: np.ndarray,
    position: np.ndarray,
    exit_px: np.ndarray,
    stop_rows: np.ndarray,
    rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per bar: position carried into the bar over the gap, gross return, cost and net return
    (formulas in run_backtest)."""
    n = o.size
    before = np.empty(n)
    before[0] = 0.0
    before[1:] = position[:-1]
    after_stop = stop_rows + 1
    before[after_stop[after_stop < n]] = 0.0
    prev_close = np.empty(n)
    prev_close[0] = o[0]  # nothing is carried into the first bar
    prev_close[1:] = c[:-1]
    # a position kept through the open earns close-to-close (or to its stop fill)
    gross = exit_px / prev_close
    gross -= 1.0
    gross *= position
    # where the open trades, the old position earns the gap and the new one the rest of the bar
    traded = np.flatnonzero(position != before)
    q = before[traded]
    p = position[traded]
    opened = o[traded]
    gross[traded] = (1.0 + q * (opened / prev_close[traded] - 1.0)) * (
        1.0 + p * (exit_px[traded] / opened - 1.0)
    ) - 1.0
    cost = np.abs(position - before)
    cost[stop_rows] += np.abs(position[stop_rows])
    cost *= rate
    return before, gross, cost, gross - cost


def _trades_frame(
    timestamps: pl.Series,
    o: np.ndarray,
    exit_px: np.ndarray,
    position: np.ndarray,
    before: np.ndarray,
    stopped: np.ndarray,
    sl_hit: np.ndarray,
    rate: float,
) -> pl.DataFrame:
    """One row per run of bars holding the same side (see run_backtest)."""
    n = position.size
    side = (position > 0).view(np.int8) - (position < 0).view(np.int8)
    held = side != 0
    side_before = (before > 0).view(np.int8) - (before < 0).view(np.int8)
    entries = np.flatnonzero(held & (side != side_before))
    run_ends = stopped.copy()
    run_ends[-1] = True
    run_ends[:-1] |= side[1:] != side[:-1]
    exits = np.flatnonzero(held & run_ends)
    stop_exit = stopped[exits]
    on_signal = ~stop_exit & (exits < n - 1)
    # index into EXIT_REASONS: signal 0, sl 1, tp 2, end 3
    reason = np.full(exits.size, 3, dtype=np.int8)
    reason[on_signal] = 0
    reason[stop_exit] = 2 - sl_hit[exits][stop_exit]
    exit_bar = exits + on_signal
    exit_price = np.where(on_signal, o[exit_bar], exit_px[exits])
    entry_price = o[entries]
    trade_side = side[entries]
    size = np.abs(position[entries])
    legs = 2.0 - (reason == 3)
    ret = size * (trade_side * (exit_price / entry_price - 1.0) - legs * rate)
    return pl.DataFrame(
        {
            "entry_time": timestamps.gather(pl.Series(entries)),
            "exit_time": timestamps.gather(pl.Series(exit_bar)),
            "side": pl.Series(trade_side, dtype=pl.Int8),
            "size": size,
            "entry_price": entry_price,
            "exit_price": exit_price,
            "bars_held": pl.Series(exits - entries + 1, dtype=pl.Int32),
            "ret": ret,
            "exit_reason": pl.Series(EXIT_REASONS, dtype=EXIT_REASON_DTYPE).gather(
                pl.Series(reason, dtype=pl.UInt32)
            ),
        }
    )


def _check_parameters(delay: int, fee_bps: float, slippage_bps: float) -> None:
    if isinstance(delay, bool) or not isinstance(delay, int | np.integer) or delay < 1:
        raise BacktestInputError(
            f"run_backtest: delay must be an integer >= 1 (bars between a signal's bar and its "
            f"execution), got {delay!r}; delay=0 would trade on the bar that produced the signal"
        )
    for name, value in (("fee_bps", fee_bps), ("slippage_bps", slippage_bps)):
        if not (np.isfinite(value) and value >= 0):
            raise BacktestInputError(
                f"run_backtest: {name} must be a finite number >= 0, got {value!r}"
            )


def _bar_arrays(bars: pl.DataFrame) -> tuple[np.ndarray, ...]:
    """Bar open times (int64 epoch microseconds) and open, high, low, close as float64 arrays."""
    missing = [col for col in ("timestamp", *_PRICES) if col not in bars.columns]
    if missing:
        raise BacktestInputError(f"run_backtest: bars lack column(s) {missing}; got {bars.columns}")
    if bars.height == 0:
        raise BacktestInputError("run_backtest: bars are empty")
    ts = _epoch_us(bars.get_column("timestamp"), "bars")
    prices = []
    for name in _PRICES:
        values = bars.get_column(name).cast(pl.Float64).to_numpy()
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise BacktestInputError(
                f"run_backtest: bars.{name} at row {row} is {float(values[row])}; prices must be "
                "finite and positive"
            )
        prices.append(np.ascontiguousarray(values))
    return (ts, *prices)


def _epoch_us(column: pl.Series, frame: str) -> np.ndarray:
    """A Datetime column as int64 microseconds, non-null and strictly increasing."""
    if not isinstance(column.dtype, pl.Datetime):
        raise BacktestInputError(
            f"run_backtest: {frame}.timestamp must be Datetime, got {column.dtype}"
        )
    if column.null_count():
        row = int(column.is_null().arg_max())
        raise BacktestInputError(f"run_backtest: {frame}.timestamp is null at row {row}")
    us = column.dt.epoch("us").to_numpy().astype(np.int64, copy=False)
    not_increasing = np.flatnonzero(np.diff(us) <= 0)
    if not_increasing.size:
        raise BacktestInputError(
            f"run_backtest: {frame}.timestamp not strictly increasing at row "
            f"{int(not_increasing[0]) + 1}"
        )
    return us


def _signal_arrays(
    signals: pl.DataFrame, bar_us: np.ndarray, use_stops: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per signal row: its bar index, target position side x size, stop-loss and take-profit
    levels (NaN for none)."""
    missing = [col for col in ("timestamp", "side") if col not in signals.columns]
    if missing:
        raise BacktestInputError(
            f"run_backtest: signals lack column(s) {missing}; got {signals.columns}"
        )
    sig_us = _epoch_us(signals.get_column("timestamp"), "signals")
    if np.array_equal(sig_us, bar_us):  # a signal on every bar: skip the search
        bar = np.arange(sig_us.size)
    else:
        bar = np.searchsorted(bar_us, sig_us)
    unknown = (bar >= bar_us.size) | (bar_us[np.minimum(bar, bar_us.size - 1)] != sig_us)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise BacktestInputError(
            f"run_backtest: signals.timestamp at row {row} "
            f"({signals.get_column('timestamp')[row]}) is not one of the bar timestamps"
        )
    side = _float_column(signals, "side")
    bad = (side != 1) & (side != -1) & (side != 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise BacktestInputError(
            f"run_backtest: signals.side at row {row} is {float(side[row])}; expected -1, 0 or 1"
        )
    size = np.ones(side.size)
    if "size" in signals.columns:
        size = _float_column(signals, "size")
        bad = ~((size >= 0) & (size <= 1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise BacktestInputError(
                f"run_backtest: signals.size at row {row} is {float(size[row])}; expected [0, 1]"
            )
    levels = []
    for name in ("stop_loss", "take_profit"):
        level = np.full(side.size, np.nan)
        if use_stops and name in signals.columns:
            level = signals.get_column(name).cast(pl.Float64).fill_null(np.nan).to_numpy()
            bad = ~np.isnan(level) & ~(np.isfinite(level) & (level > 0))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise BacktestInputError(
                    f"run_backtest: signals.{name} at row {row} is {float(level[row])}; expected a "
                    "positive price or null"
                )
        levels.append(level)
    sl, tp = levels
    crossed = (side != 0) & (side * (tp - sl) <= 0)  # NaN compares False: one level is fine
    if crossed.any():
        row = int(np.flatnonzero(crossed)[0])
        raise BacktestInputError(
            f"run_backtest: signals row {row} (side {side[row]:+.0f}) has stop_loss {sl[row]} on "
            f"the take_profit side of take_profit {tp[row]}; swapped columns?"
        )
    return bar, side * size + 0.0, sl, tp  # + 0.0 turns -0.0 (short of size 0) into 0.0


def _float_column(signals: pl.DataFrame, name: str) -> np.ndarray:
    column = signals.get_column(name)
    if column.null_count():
        row = int(column.is_null().arg_max())
        raise BacktestInputError(
            f"run_backtest: signals.{name} is null at row {row}; a flat signal is side 0"
        )
    return column.cast(pl.Float64).to_numpy()
