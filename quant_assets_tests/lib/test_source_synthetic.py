"""The synthetic source: deterministic, prefix-stable, calendar-true, fat-tailed, with a weak planted signal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import kurtosis

from quant_assets.lib.calendars import CRYPTO_24_7, US_EQUITY
from quant_assets.lib.errors import InvalidSourceSpecError, InvalidTimeframeError
from quant_assets.lib.settings import DEFAULT_UNIVERSE
from quant_assets.lib.sources import FileSource, SyntheticSource, source_from_spec
from quant_assets.lib.validation import validate_bars

START = datetime(2022, 1, 1, tzinfo=UTC)
ONE_YEAR = datetime(2023, 1, 1, tzinfo=UTC)


def year_of(symbol: str, **options: object) -> pl.DataFrame:
    return SyntheticSource(end=ONE_YEAR, **options).load_bars(symbol, "1h").frame  # type: ignore[arg-type]


def log_returns(frame: pl.DataFrame) -> np.ndarray:
    return np.diff(np.log(frame["close"].to_numpy()))


def test_same_symbol_and_seed_give_the_same_bars_and_others_differ() -> None:
    bars = year_of("BTCUSDT")
    assert bars.equals(year_of("BTCUSDT"))
    assert not bars["close"].equals(year_of("BTCUSDT", seed=8)["close"])
    assert not bars["close"].equals(year_of("ETHUSDT")["close"])
    assert year_of("btc/usdt").equals(bars)


@pytest.mark.parametrize("symbol", ["BTCUSDT", "SPY"])
def test_bars_are_prefix_stable_whatever_the_end(symbol: str) -> None:
    short = SyntheticSource(end=datetime(2022, 3, 7, 15, tzinfo=UTC)).load_bars(symbol, "1h").frame
    long = SyntheticSource(end=datetime(2024, 1, 1, tzinfo=UTC)).load_bars(symbol, "1h").frame
    assert short.height > 300
    assert long.head(short.height).equals(short)


def test_since_returns_the_tail_of_the_same_series() -> None:
    source = SyntheticSource(end=ONE_YEAR)
    since = datetime(2022, 6, 1, 12, 30, tzinfo=UTC)
    tail = source.load_bars("SPY", "1h", since=since).frame
    full = source.load_bars("SPY", "1h").frame
    assert tail.equals(full.filter(pl.col("timestamp") >= since))
    assert tail["timestamp"][0] == datetime(2022, 6, 1, 14, tzinfo=UTC)


def test_crypto_trades_around_the_clock() -> None:
    bars = SyntheticSource(end=ONE_YEAR).load_bars("BTCUSDT", "1h")
    assert bars.calendar == CRYPTO_24_7
    assert bars.frame.height == 365 * 24
    assert (bars.frame["timestamp"].diff().drop_nulls() == timedelta(hours=1)).all()
    assert bars.frame["timestamp"][-1] == ONE_YEAR - timedelta(hours=1)  # closes by `end`


def test_equities_trade_weekday_sessions_only_with_overnight_gaps() -> None:
    bars = SyntheticSource(end=ONE_YEAR).load_bars("SPY", "1h")
    frame = bars.frame
    assert bars.calendar == US_EQUITY
    assert frame["timestamp"].dt.weekday().max() == 5
    assert set(frame["timestamp"].dt.hour()) == set(range(14, 21))
    assert frame.height == 260 * 7  # 2022 has 260 weekdays
    opens_session = frame["timestamp"].dt.hour() == 14
    previous_close = frame["close"].shift(1)
    within = ~opens_session & previous_close.is_not_null()
    assert (frame["open"].filter(within) == previous_close.filter(within)).all()
    assert (
        frame["open"].filter(opens_session).slice(1)
        != previous_close.filter(opens_session).slice(1)
    ).all()


def test_daily_base_timeframe_for_equities_is_labelled_midnight_on_weekdays() -> None:
    frame = SyntheticSource(end=ONE_YEAR, base_timeframe="1d").load_bars("AAPL", "1d").frame
    assert frame.height == 260
    assert set(frame["timestamp"].dt.hour()) == {0}
    assert frame["timestamp"].dt.weekday().max() == 5


def test_ohlc_is_consistent_and_prices_positive() -> None:
    for symbol in DEFAULT_UNIVERSE:
        frame = year_of(symbol)
        validate_bars(frame, symbol, "1h")  # raises on any inconsistency
        body_top = np.maximum(frame["open"].to_numpy(), frame["close"].to_numpy())
        body_bottom = np.minimum(frame["open"].to_numpy(), frame["close"].to_numpy())
        assert (frame["high"].to_numpy() >= body_top).all()
        assert (frame["low"].to_numpy() <= body_bottom).all()
        assert (frame["low"].to_numpy() > 0).all()
        assert (frame["high"].to_numpy() > body_top).mean() > 0.99  # wicks, not flat bars
        assert 20 <= frame["open"][0] <= 50_000


def test_returns_are_fat_tailed_and_volatility_clusters() -> None:
    returns = log_returns(year_of("BTCUSDT"))
    assert kurtosis(returns, fisher=False) > 6  # a normal distribution has 3
    magnitude = np.abs(returns)
    assert np.corrcoef(magnitude[1:], magnitude[:-1])[0, 1] > 0.1


def test_equity_volume_is_u_shaped_over_the_session() -> None:
    frame = year_of("SPY")
    by_hour = dict(
        frame.group_by(pl.col("timestamp").dt.hour()).agg(pl.col("volume").median()).iter_rows()
    )
    assert by_hour[14] > 1.5 * by_hour[17]
    assert by_hour[20] > 1.5 * by_hour[17]


def _signal_correlation(frame: pl.DataFrame) -> float:
    """Correlation of tanh(24-bar return z-score, from past bars) with the next 5-bar return."""
    log_close = np.log(frame["close"].to_numpy())
    vol = pl.Series(np.diff(log_close, prepend=np.nan)).rolling_std(72).to_numpy()
    past = (log_close[24:-5] - log_close[:-29]) / (vol[24:-5] * np.sqrt(24))
    future = (log_close[29:] - log_close[24:-5]) / vol[24:-5]
    ok = np.isfinite(past)
    return float(np.corrcoef(np.tanh(past[ok]), future[ok])[0, 1])


def test_planted_mean_reversion_is_present_and_random_walk_has_none() -> None:
    assert _signal_correlation(year_of("BTCUSDT")) < -0.1
    assert abs(_signal_correlation(year_of("BTCUSDT", random_walk=True))) < 0.05


def test_kappa_sets_the_planted_strength() -> None:
    weak, strong = year_of("BTCUSDT", kappa=-0.1), year_of("BTCUSDT", kappa=-0.4)
    assert (
        _signal_correlation(strong)
        < _signal_correlation(weak)
        < _signal_correlation(year_of("BTCUSDT", kappa=0.0))
    )
    # random_walk ignores kappa; the description names a non-default strength
    assert year_of("BTCUSDT", random_walk=True, kappa=-0.4).equals(
        year_of("BTCUSDT", random_walk=True)
    )
    assert SyntheticSource(kappa=-0.4).description == "synthetic(seed=7, kappa=-0.4)"
    assert SyntheticSource().description == "synthetic(seed=7)"


def test_random_walk_keeps_the_volatility_and_drops_the_drift() -> None:
    structured = log_returns(year_of("ETHUSDT"))
    walk = log_returns(year_of("ETHUSDT", random_walk=True))
    assert walk.std() == pytest.approx(structured.std(), rel=0.05)
    # Driftless: the mean return is within 3 standard errors of zero.
    assert abs(walk.mean()) < 3 * walk.std() / np.sqrt(walk.size)


def test_source_interface() -> None:
    source = SyntheticSource(end=ONE_YEAR)
    assert source.list_symbols() == list(DEFAULT_UNIVERSE)
    assert source.native_timeframes("XYZ") == ["1h"]
    assert source.load_bars("xyz", "1h").symbol == "XYZ"
    with pytest.raises(InvalidTimeframeError, match="generates 1h bars, not 4h"):
        source.load_bars("BTCUSDT", "4h")


def test_end_defaults_to_the_current_hour() -> None:
    now = datetime.now(UTC)
    last = (
        SyntheticSource(start=now - timedelta(days=2))
        .load_bars("BTCUSDT", "1h")
        .frame["timestamp"][-1]
    )
    assert now - timedelta(hours=2) < last + timedelta(hours=1) <= now


def test_source_from_spec(tmp_path: Path) -> None:
    source = source_from_spec("synthetic", seed=3, end=ONE_YEAR)
    assert isinstance(source, SyntheticSource)
    assert source.seed == 3
    files = source_from_spec(f"files:{tmp_path}")
    assert isinstance(files, FileSource)
    assert files.directory == tmp_path
    for bad in ("synthetik", "files:", "s3://bucket", "synthetic:extra"):
        with pytest.raises(
            InvalidSourceSpecError, match="expected 'synthetic', 'files:<directory>'"
        ):
            source_from_spec(bad)
