"""Features of several symbols stacked in one frame (`by`), as bar-close serving computes them:
each symbol gets what it gets alone (warm rows to 1e-12, the rest of the frame exactly), and the
stacked snapshot and cross-sectional ranks equal the per-symbol ones."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.features import (
    compute_features,
    cross_sectional_ranks,
    multi_timeframe_snapshot,
)
from quant_assets_tests.lib.bars_factory import make_bars, resample_bars


@pytest.fixture(scope="module")
def bars() -> dict[str, pl.DataFrame]:
    """Symbols of different lengths (one shorter than the warm-up), with gaps and flat bars."""
    return {
        f"S{i}": make_bars(n, "1h", seed=i, gaps=i % 2 == 0, flat=i % 3 == 0)
        for i, n in enumerate((150, 420, 777, 1300, 640))
    }


def _stacked(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    return pl.concat([f.select(pl.lit(s).alias("symbol"), pl.all()) for s, f in frames.items()])


def test_stacked_features_equal_each_symbols_own(bars) -> None:
    stacked = compute_features(_stacked(bars), "1h", by="symbol")
    assert stacked.columns == ["symbol", *compute_features(bars["S0"], "1h").columns]
    for symbol, frame in bars.items():
        alone = compute_features(frame, "1h")
        got = stacked.filter(pl.col("symbol") == symbol).drop("symbol")
        assert got.height == alone.height
        for column in alone.columns:
            a, b = got[column], alone[column]
            assert a.is_null().equals(b.is_null()), (symbol, column)
            if b.dtype != pl.Float64:
                assert a.equals(b), (symbol, column)
                continue
            warm = alone["is_warm"].to_numpy()
            x, y = a.fill_null(np.nan).to_numpy(), b.fill_null(np.nan).to_numpy()
            # an EMA seed summed per group may differ in its last bits until it has decayed
            np.testing.assert_allclose(x[warm], y[warm], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_stacked_series_must_be_contiguous_and_in_time_order(bars) -> None:
    two = _stacked({"A": bars["S1"].head(30), "B": bars["S2"].head(30)})
    with pytest.raises(DataValidationError, match="contiguous"):
        compute_features(
            pl.concat([two.head(10), two.tail(30), two.slice(10, 20)]), "1h", by="symbol"
        )
    with pytest.raises(DataValidationError, match="strictly increasing"):
        compute_features(
            pl.concat([two.slice(1, 29), two.head(1), two.tail(30)]), "1h", by="symbol"
        )
    # a new symbol may start earlier than the previous one ended
    compute_features(
        _stacked({"A": bars["S1"].head(30), "B": bars["S1"].head(30)}), "1h", by="symbol"
    )


def test_stacked_snapshot_and_ranks_equal_the_per_symbol_ones(bars) -> None:
    features = {s: compute_features(f, "1h") for s, f in bars.items()}
    higher = {s: compute_features(resample_bars(f, "4h").head(-1), "4h") for s, f in bars.items()}
    stacked = multi_timeframe_snapshot(
        _stacked({s: f.select("timestamp") for s, f in features.items()}),
        "1h",
        {"4h": _stacked(higher)},
        by="symbol",
    )
    for symbol, frame in features.items():
        alone = multi_timeframe_snapshot(frame.select("timestamp"), "1h", {"4h": higher[symbol]})
        assert stacked.filter(pl.col("symbol") == symbol).drop("symbol").equals(alone)
    # a symbol without coarser bars gets nulls, not another symbol's values
    lonely = multi_timeframe_snapshot(
        _stacked({"X": features["S1"].select("timestamp")}),
        "1h",
        {"4h": _stacked({"S1": higher["S1"]})},
        by="symbol",
    )
    assert lonely.drop("symbol", "timestamp").null_count().row(0) == (lonely.height,) * 3
    assert cross_sectional_ranks(_stacked(features)).equals(cross_sectional_ranks(features))
