"""Tests of the vectorized backtest: hand-worked bars, stops, costs, trade list, no look-ahead, speed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from quant_assets.lib.backtest import (
    EXIT_REASON_DTYPE,
    BacktestInputError,
    run_backtest,
)
from quant_assets.lib.errors import InvalidTimeframeError
from quant_assets.lib.sources.base import OHLCV_SCHEMA
from quant_assets_tests.lib.bars_factory import make_bars

T0 = datetime(2024, 1, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
RATE = 7e-4  # default fee 5 bps + slippage 2 bps, per unit of turnover


def _bars(rows: list[tuple[float, float, float, float]]) -> pl.DataFrame:
    o, h, lo, c = (list(col) for col in zip(*rows, strict=True))
    return pl.DataFrame(
        {
            "timestamp": [T0 + i * HOUR for i in range(len(rows))],
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": [1.0] * len(rows),
        },
        schema=OHLCV_SCHEMA,
    )


def _signals(at: list[int], side: list[int], **columns: list) -> pl.DataFrame:
    return pl.DataFrame(
        {"timestamp": [T0 + i * HOUR for i in at], "side": side, **columns}
    ).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))


def _run(bars: pl.DataFrame, signals: pl.DataFrame, **kw):
    return run_backtest(bars, signals, timeframe="1h", **kw)


# open, high, low, close
SIX_BARS = [
    (100.0, 101.0, 99.0, 100.0),
    (100.0, 102.0, 99.0, 101.0),
    (102.0, 105.0, 101.0, 104.0),
    (104.5, 107.0, 103.0, 106.0),
    (105.0, 106.0, 103.0, 104.0),
    (104.0, 105.0, 102.0, 103.0),
]


def test_signal_is_executed_at_the_next_open_and_held_close_to_close():
    # long decided at bar 1's close, flat decided at bar 3's close
    out = _run(_bars(SIX_BARS), _signals([1, 3], [1, 0]))
    pb = out.per_bar
    assert pb["position"].to_list() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    expected_gross = [
        0.0,
        0.0,  # the signal's own bar earns nothing (close 101 > open 100 notwithstanding)
        104 / 102 - 1,  # entry at bar 2's open 102, not at bar 1's close 101
        106 / 104 - 1,  # held close-to-close: the gap to 104.5 and the bar itself
        105 / 106 - 1,  # exited at bar 4's open: only the gap 106 -> 105
        0.0,
    ]
    np.testing.assert_allclose(pb["gross_ret"].to_numpy(), expected_gross, rtol=1e-14)
    np.testing.assert_allclose(pb["cost"].to_numpy(), [0, 0, RATE, 0, RATE, 0], rtol=1e-14)
    net = np.array(expected_gross) - np.array([0, 0, RATE, 0, RATE, 0])
    np.testing.assert_allclose(pb["net_ret"].to_numpy(), net, rtol=1e-14, atol=1e-17)
    np.testing.assert_allclose(pb["equity"].to_numpy(), np.cumprod(1 + net), rtol=1e-14)
    assert out.equity.columns == ["timestamp", "equity"]
    trade = out.trades.row(0, named=True)
    assert out.trades.height == 1
    assert trade["entry_time"] == T0 + 2 * HOUR
    assert trade["exit_time"] == T0 + 4 * HOUR
    assert (trade["side"], trade["size"], trade["bars_held"]) == (1, 1.0, 2)
    assert (trade["entry_price"], trade["exit_price"], trade["exit_reason"]) == (102, 105, "signal")
    assert trade["ret"] == pytest.approx(105 / 102 - 1 - 2 * RATE, rel=1e-14)


def test_longer_delay_shifts_execution():
    out = _run(_bars(SIX_BARS), _signals([1, 3], [1, 0]), delay=2)
    assert out.per_bar["position"].to_list() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    expected = [0, 0, 0, 106 / 104.5 - 1, 104 / 106 - 1, 104 / 104 - 1]
    np.testing.assert_allclose(out.per_bar["gross_ret"].to_numpy(), expected, rtol=1e-14)
    assert out.trades["entry_price"].to_list() == [104.5]


def test_flip_pays_twice_the_size_and_trades_split():
    out = _run(_bars(SIX_BARS), _signals([0, 2], [1, -1]))
    pb = out.per_bar
    assert pb["position"].to_list() == [0.0, 1.0, 1.0, -1.0, -1.0, -1.0]
    np.testing.assert_allclose(pb["cost"].to_numpy(), [0, RATE, 0, 2 * RATE, 0, 0], rtol=1e-14)
    # bar 3: the long rides the gap 104 -> 104.5, then the short the bar 104.5 -> 106
    assert pb["gross_ret"][3] == pytest.approx((104.5 / 104) * (1 - (106 / 104.5 - 1)) - 1)
    # bars 4, 5: a carried short earns minus the bar return
    assert pb["gross_ret"][4] == pytest.approx(-(104 / 106 - 1), rel=1e-14)
    trades = out.trades
    assert trades["side"].to_list() == [1, -1]
    assert trades["entry_price"].to_list() == [100.0, 104.5]
    assert trades["exit_price"].to_list() == [104.5, 103.0]
    assert trades["exit_reason"].to_list() == ["signal", "end"]
    assert trades["bars_held"].to_list() == [2, 3]
    np.testing.assert_allclose(
        trades["ret"].to_numpy(),
        [104.5 / 100 - 1 - 2 * RATE, -(103 / 104.5 - 1) - RATE],  # "end" pays entry cost only
        rtol=1e-14,
    )


def test_fractional_size_flip_and_resize_cost_turnover():
    out = _run(
        _bars(SIX_BARS),
        _signals([0, 2, 3], [1, -1, -1], size=[0.5, 0.5, 0.2]),
        fee_bps=10.0,
        slippage_bps=0.0,
    )
    assert out.per_bar["position"].to_list() == [0.0, 0.5, 0.5, -0.5, -0.2, -0.2]
    # turnover 0.5, 1.0 (flip of 0.5), 0.3 (resize) at 10 bps
    np.testing.assert_allclose(
        out.per_bar["cost"].to_numpy(), [0, 5e-4, 0, 1e-3, 3e-4, 0], rtol=1e-12
    )
    assert out.per_bar["gross_ret"][1] == pytest.approx(0.5 * (101 / 100 - 1), rel=1e-14)
    # a resize keeping the side does not split the short
    assert out.trades["size"].to_list() == [0.5, 0.5]
    assert out.trades["bars_held"].to_list() == [2, 3]
    assert out.trades["ret"][0] == pytest.approx(0.5 * (104.5 / 100 - 1 - 2e-3), rel=1e-14)


def test_equity_compounds_to_the_price_ratio_without_costs():
    bars = make_bars(50, seed=3)
    out = _run(bars, _signals([0], [1]), fee_bps=0.0, slippage_bps=0.0)
    # held from bar 1's open to the last close, gap and bars alike
    expected = bars["close"][-1] / bars["open"][1]
    assert out.per_bar["equity"][-1] == pytest.approx(expected, rel=1e-12)
    assert out.trades["exit_reason"].to_list() == ["end"]
    assert out.trades["ret"][0] == pytest.approx(expected - 1, rel=1e-12)


# Long from bar 1 (signal at bar 0: stop-loss 98, take-profit 110); bar 2 varies.
STOP_BARS = [
    (100.0, 101.0, 99.0, 100.0),
    (100.0, 101.0, 99.0, 100.5),
    None,
    (99.0, 100.0, 98.5, 99.5),
    (99.5, 100.5, 99.0, 100.0),
]


@pytest.mark.parametrize(
    ("bar2", "reason", "exit_price"),
    [
        ((100.5, 101.0, 97.5, 99.0), "sl", 98.0),  # low 97.5 touches 98: out at the level
        ((97.0, 97.5, 96.0, 97.2), "sl", 97.0),  # opened below 98: out at the open
        ((100.5, 111.0, 97.5, 105.0), "sl", 98.0),  # both touched: the stop-loss
        ((100.5, 111.0, 100.0, 105.0), "tp", 110.0),  # high touches 110
        ((112.0, 113.0, 111.0, 112.5), "tp", 112.0),  # opened above 110
    ],
)
def test_long_stop_and_take_profit_exits(bar2, reason, exit_price):
    bars = _bars([*STOP_BARS[:2], bar2, *STOP_BARS[3:]])
    out = _run(bars, _signals([0], [1], stop_loss=[98.0], take_profit=[110.0]))
    pb = out.per_bar
    # the signal is still in force after the exit, but a stopped position stays flat
    assert pb["position"].to_list() == [0.0, 1.0, 1.0, 0.0, 0.0]
    # bar 2: carried over the gap from 100.5 to the open, then to the exit price
    assert pb["gross_ret"][2] == pytest.approx(exit_price / 100.5 - 1, rel=1e-14)
    np.testing.assert_allclose(pb["cost"].to_numpy(), [0, RATE, RATE, 0, 0], rtol=1e-14)
    assert pb["gross_ret"][3] == 0.0
    trade = out.trades.row(0, named=True)
    assert out.trades.height == 1
    assert (trade["exit_reason"], trade["exit_price"], trade["bars_held"]) == (
        reason,
        exit_price,
        2,
    )
    assert trade["exit_time"] == T0 + 2 * HOUR
    assert trade["ret"] == pytest.approx(exit_price / 100 - 1 - 2 * RATE, rel=1e-14)


@pytest.mark.parametrize(
    ("bar2", "reason", "exit_price"),
    [
        ((100.5, 103.0, 100.0, 101.0), "sl", 102.0),  # high touches 102
        ((104.0, 105.0, 103.0, 104.0), "sl", 104.0),  # opened above 102
        ((100.5, 103.0, 94.0, 99.0), "sl", 102.0),  # both touched
        ((100.5, 101.0, 94.0, 96.0), "tp", 95.0),  # low touches 95
        ((93.0, 94.0, 92.0, 93.5), "tp", 93.0),  # opened below 95
    ],
)
def test_short_stop_and_take_profit_exits(bar2, reason, exit_price):
    bars = _bars([*STOP_BARS[:2], bar2, *STOP_BARS[3:]])
    out = _run(bars, _signals([0], [-1], stop_loss=[102.0], take_profit=[95.0]))
    assert out.per_bar["position"].to_list() == [0.0, -1.0, -1.0, 0.0, 0.0]
    # the short carried over the gap, then to the exit: (1 - gap) (1 - intrabar)
    open2 = bar2[0]
    expected = (1 - (open2 / 100.5 - 1)) * (1 - (exit_price / open2 - 1)) - 1
    assert out.per_bar["gross_ret"][2] == pytest.approx(expected, rel=1e-14)
    trade = out.trades.row(0, named=True)
    assert (trade["side"], trade["exit_reason"], trade["exit_price"]) == (-1, reason, exit_price)
    assert trade["ret"] == pytest.approx(-(exit_price / 100 - 1) - 2 * RATE, rel=1e-14)


def test_next_signal_row_re_enters_after_a_stop():
    bars = _bars([*STOP_BARS[:2], (100.5, 101.0, 97.5, 99.0), *STOP_BARS[3:]])
    signals = _signals([0, 1, 2, 3], [1, 1, 1, 1], stop_loss=[98.0] * 4)
    out = _run(bars, signals)
    # stopped in bar 2; bar 2's own signal re-enters at bar 3's open 99 (low 98.5 stays above 98)
    assert out.per_bar["position"].to_list() == [0.0, 1.0, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(out.per_bar["cost"].to_numpy(), [0, RATE, RATE, RATE, 0])
    assert out.per_bar["gross_ret"][3] == pytest.approx(99.5 / 99 - 1, rel=1e-14)
    assert out.trades["exit_reason"].to_list() == ["sl", "end"]
    assert out.trades["entry_price"].to_list() == [100.0, 99.0]


def test_stop_level_of_the_latest_row_applies():
    bars = _bars([*STOP_BARS[:2], (100.5, 101.0, 99.0, 100.0), *STOP_BARS[3:]])
    # same side, stop raised from 95 to 99.5 at bar 1: bar 2 (low 99) stops at 99.5
    out = _run(bars, _signals([0, 1], [1, 1], stop_loss=[95.0, 99.5]))
    assert out.trades["entry_price"].to_list() == [100.0]
    assert out.trades["exit_reason"].to_list() == ["sl"]
    assert out.trades["exit_price"].to_list() == [99.5]


def test_use_stops_false_ignores_levels():
    bars = _bars([*STOP_BARS[:2], (100.5, 101.0, 97.5, 99.0), *STOP_BARS[3:]])
    out = _run(bars, _signals([0], [1], stop_loss=[98.0]), use_stops=False)
    assert out.per_bar["position"].to_list() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert out.trades["exit_reason"].to_list() == ["end"]


def _random_signals(bars: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Signals on about a third of the bars, random sides and sizes, ATR-like stops."""
    rng = np.random.default_rng(seed)
    at = np.sort(rng.choice(bars.height, bars.height // 3, replace=False))
    close = bars["close"].to_numpy()[at]
    side = rng.choice([-1, 0, 1], at.size)
    return pl.DataFrame(
        {
            "timestamp": bars["timestamp"].gather(at),
            "side": side,
            "size": rng.choice([0.25, 0.5, 1.0], at.size),
            "stop_loss": close * (1 - side * 0.012),
            "take_profit": close * (1 + side * 0.02),
        }
    ).with_columns(
        pl.when(pl.col("side") != 0).then(pl.col(c)).alias(c) for c in ("stop_loss", "take_profit")
    )


@pytest.mark.parametrize("delay", [1, 3])
def test_truncated_data_reproduces_the_prefix(delay):
    # recursive analysis: a backtest on the first `cut` bars equals the first `cut` rows of the
    # full one, so no bar uses a later price or signal
    bars = make_bars(400, seed=11, gaps=True)
    signals = _random_signals(bars, seed=5)
    full = _run(bars, signals, delay=delay)
    assert {"sl", "tp", "signal"} <= set(full.trades["exit_reason"].to_list())
    for cut in (37, 150, 299, 399):
        head = bars.head(cut)
        part = _run(head, signals.filter(pl.col("timestamp") <= head["timestamp"][-1]), delay=delay)
        assert_frame_equal(part.per_bar, full.per_bar.head(cut))
        closed = part.trades.filter(pl.col("exit_reason") != "end")
        assert_frame_equal(closed, full.trades.head(closed.height))
        if part.trades.height > closed.height:  # the open trade started where the full one did
            assert part.trades["entry_time"][-1] == full.trades["entry_time"][closed.height]


@pytest.mark.parametrize("delay", [1, 3])
def test_changing_a_signal_changes_nothing_before_its_execution(delay):
    bars = make_bars(200, seed=2)
    signals = _random_signals(bars, seed=8).with_columns(side=pl.lit(1), size=pl.lit(1.0))
    signals = signals.drop("stop_loss", "take_profit")
    row = 40
    t = int(np.searchsorted(bars["timestamp"].to_numpy(), signals["timestamp"].to_numpy()[row]))
    flipped = signals.with_columns(
        side=pl.when(pl.int_range(pl.len()) == row).then(-1).otherwise(pl.col("side"))
    )
    base, changed = _run(bars, signals, delay=delay), _run(bars, flipped, delay=delay)
    assert_frame_equal(base.per_bar.head(t + delay), changed.per_bar.head(t + delay))
    assert base.per_bar["position"][t + delay] == 1.0
    assert changed.per_bar["position"][t + delay] == -1.0


def test_trade_list_accounts_for_every_held_bar():
    bars = make_bars(500, seed=4)
    out = _run(bars, _random_signals(bars, seed=1))
    pb, trades = out.per_bar, out.trades
    assert trades.schema["exit_reason"] == EXIT_REASON_DTYPE
    assert int(trades["bars_held"].sum()) == int((pb["position"] != 0).sum())
    bar_of = {t: i for i, t in enumerate(pb["timestamp"].to_list())}
    position = pb["position"].to_numpy()
    opens = bars["open"].to_numpy()
    for trade in trades.iter_rows(named=True):  # a few hundred trades: checking, not computing
        first = bar_of[trade["entry_time"]]
        held = position[first : first + trade["bars_held"]]
        assert (np.sign(held) == trade["side"]).all()
        assert trade["entry_price"] == opens[first]
        last_or_exit = bar_of[trade["exit_time"]]
        offset = 0 if trade["exit_reason"] == "signal" else 1
        assert last_or_exit == first + trade["bars_held"] - offset


def test_validation_names_the_bad_row():
    bars = _bars(SIX_BARS)
    with pytest.raises(BacktestInputError, match="delay must be an integer >= 1"):
        _run(bars, _signals([1], [1]), delay=0)
    with pytest.raises(InvalidTimeframeError, match="unknown timeframe '2h'"):
        run_backtest(bars, _signals([1], [1]), timeframe="2h")
    off_grid = pl.DataFrame(
        {"timestamp": [T0, T0 + HOUR / 2], "side": [1, 1]},
        schema={"timestamp": pl.Datetime("us", "UTC"), "side": pl.Int64},
    )
    with pytest.raises(BacktestInputError, match=r"signals.timestamp at row 1 .* not one of"):
        _run(bars, off_grid)
    with pytest.raises(BacktestInputError, match="signals.side at row 1 is 2.0"):
        _run(bars, _signals([0, 1], [1, 2]))
    with pytest.raises(BacktestInputError, match="signals.side is null at row 0"):
        _run(bars, _signals([0], [None]))
    with pytest.raises(BacktestInputError, match="signals.size at row 0 is 1.5"):
        _run(bars, _signals([0], [1], size=[1.5]))
    with pytest.raises(BacktestInputError, match="not strictly increasing at row 1"):
        _run(bars, _signals([2, 1], [1, 1]))
    with pytest.raises(BacktestInputError, match="signals row 0 .* swapped"):
        _run(bars, _signals([0], [1], stop_loss=[110.0], take_profit=[98.0]))
    with pytest.raises(BacktestInputError, match="bars.low at row 2"):
        _run(
            bars.with_columns(low=pl.Series([1.0, 1.0, float("nan"), 1, 1, 1])), _signals([0], [1])
        )


def test_million_bars_with_half_a_million_trades():
    n = 1_000_000
    bars = make_bars(n, timeframe="1m", seed=7)
    rng = np.random.default_rng(0)
    close = bars["close"].to_numpy()
    # a signal on every bar with random sides: ~500k trades, the worst case for the trade list
    side = rng.choice([-1, 0, 1], n)
    signals = pl.DataFrame(
        {
            "timestamp": bars["timestamp"],
            "side": side,
            "size": rng.random(n),
            "stop_loss": close * (1 - side * 0.01),
            "take_profit": close * (1 + side * 0.02),
        }
    )
    out = run_backtest(bars, signals, timeframe="1m")  # timed in benchmarks/bench_backtest.py
    assert out.per_bar.height == n
    assert out.trades.height > 100_000
    assert out.per_bar["equity"].is_finite().all()
