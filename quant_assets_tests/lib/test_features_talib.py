"""Numeric agreement of the TA-style features with TA-Lib, and the documented differences."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import talib

from quant_assets.lib.features import bollinger_bands, compute_features
from quant_assets_tests.lib.bars_factory import make_bars

BURN_IN = 250
RSI_ATOL = 1e-6  # RSI lives on 0..100
PRICE_RTOL = 1e-9  # price-scale values: |ours - talib| <= 1e-9 * close

PATHS = {
    "fat_tails": dict(seed=21),
    "gaps_and_flat": dict(seed=22, gaps=True, flat=True),
    "high_price": dict(seed=23, price=30_000.0, gaps=True),
    "tiny_price": dict(seed=27, price=1e-5, flat=True),
}


@pytest.fixture(scope="module", params=list(PATHS))
def path(request) -> tuple[pl.DataFrame, pl.DataFrame]:
    bars = make_bars(3000, "1h", **PATHS[request.param])
    return bars, compute_features(bars, "1h")


def _np(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Float64).fill_null(np.nan).to_numpy()


def _assert_matches(ours: np.ndarray, ref: np.ndarray, atol: float | np.ndarray) -> None:
    """Same undefined rows as TA-Lib, and within `atol` on every defined row (burn-in included)."""
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    defined = ~np.isnan(ref)
    atol = np.broadcast_to(atol, ref.shape)
    err = np.abs(ours[defined] - ref[defined])
    assert (err <= atol[defined]).all(), f"max error {err.max():.3e}"
    assert defined[BURN_IN:].all()


def test_rsi_matches_talib(path):
    bars, f = path
    _assert_matches(_np(f["rsi_14"]), talib.RSI(bars["close"].to_numpy(), 14), RSI_ATOL)


def test_atr_matches_talib(path):
    bars, f = path
    h, lo, c = (bars[x].to_numpy() for x in ("high", "low", "close"))
    _assert_matches(_np(f["atr_14"]), talib.ATR(h, lo, c, 14), PRICE_RTOL * c)
    _assert_matches(_np(f["atr_14_frac"]), talib.NATR(h, lo, c, 14) / 100.0, PRICE_RTOL)


def test_macd_matches_talib(path):
    bars, f = path
    c = bars["close"].to_numpy()
    line, signal, hist = talib.MACD(c, 12, 26, 9)
    _assert_matches(_np(f["macd_signal"]), signal, PRICE_RTOL * c)
    _assert_matches(_np(f["macd_hist"]), hist, PRICE_RTOL * c)
    _assert_matches(_np(f["macd_hist_norm"]), hist / c, PRICE_RTOL)
    # TA-Lib withholds the line until the signal exists (row 33); ours starts where its
    # 26-bar window is full (row 25) and is identical from row 33 on.
    ours = _np(f["macd"])
    assert np.isnan(ours[:25]).all() and not np.isnan(ours[25:]).any()
    _assert_matches(np.where(np.isnan(line), np.nan, ours), line, PRICE_RTOL * c)


def test_bollinger_bands_match_talib(path):
    bars, f = path
    c = bars["close"].to_numpy()
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    bands = bollinger_bands(bars["close"], 20, 2.0)
    _assert_matches(_np(bands["bb_upper"]), upper, PRICE_RTOL * c)
    _assert_matches(_np(bands["bb_middle"]), middle, PRICE_RTOL * c)
    _assert_matches(_np(bands["bb_lower"]), lower, PRICE_RTOL * c)
    _assert_matches(_np(f["bb_width"]), (upper - lower) / middle, 1e-9)
    width = upper - lower
    pctb = np.divide(c - lower, width, out=np.full_like(c, 0.5), where=width > 0)
    pctb[np.isnan(width)] = np.nan
    _assert_matches(_np(f["bb_pctb"]), pctb, 1e-6)


def test_ema_and_sma_match_talib(path):
    bars, f = path
    c = bars["close"].to_numpy()
    for n in (12, 26):
        _assert_matches(c / (1.0 + _np(f[f"ema_{n}_ratio"])), talib.EMA(c, n), PRICE_RTOL * c)
    for n in (20, 50, 200):
        _assert_matches(c / (1.0 + _np(f[f"sma_{n}_ratio"])), talib.SMA(c, n), PRICE_RTOL * c)


def test_talib_macd_fast_ema_differs_from_standalone_ema_then_converges():
    bars = make_bars(3000, seed=24)
    c = bars["close"].to_numpy()
    line = _np(compute_features(bars, "1h")["macd"])
    naive = talib.EMA(c, 12) - talib.EMA(c, 26)
    gap = np.abs(line - naive)
    assert gap[25] > 1e-4 * c[25]  # a visibly different seed
    assert gap[BURN_IN:].max() < 1e-6


def test_rsi_when_nothing_moved_is_neutral_not_talibs_zero():
    c = np.full(60, 42.0)
    bars = make_bars(60, seed=0).with_columns(
        open=pl.Series(c), high=pl.Series(c), low=pl.Series(c), close=pl.Series(c)
    )
    ours = _np(compute_features(bars, "1h")["rsi_14"])
    ref = talib.RSI(c, 14)
    assert (ref[14:] == 0.0).all()
    assert (ours[14:] == 50.0).all()


def test_rsi_holds_its_value_through_a_long_flat_stretch_like_talib():
    moving = make_bars(300, seed=25)["close"].to_numpy()
    c = np.r_[moving, np.full(1000, moving[-1])]
    bars = make_bars(c.size, seed=0).with_columns(
        open=pl.Series(c), high=pl.Series(c), low=pl.Series(c), close=pl.Series(c)
    )
    ours = _np(compute_features(bars, "1h")["rsi_14"])
    ref = talib.RSI(c, 14)
    _assert_matches(ours, ref, RSI_ATOL)
    # Average gain and loss decay by the same 13/14 per bar: their ratio, the RSI, stays put.
    np.testing.assert_allclose(ours[300:], ours[299], rtol=1e-9)
    assert 0.0 < ours[299] < 100.0
