from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from quant_assets.lib.errors import InvalidSymbolError
from quant_assets.lib.storage import frame_fingerprint, read_parquet, write_parquet_atomic
from quant_assets.lib.symbols import is_crypto_symbol, normalize_symbol
from quant_assets.lib.watchlist import read_watchlist, write_watchlist


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("BTC/USDT", "BTCUSDT"),
        ("btc-usdt", "BTCUSDT"),
        ("eth_usdt", "ETHUSDT"),
        ("BRK.B", "BRKB"),
        ("spy", "SPY"),
    ],
)
def test_normalize_symbol(raw: str, key: str) -> None:
    assert normalize_symbol(raw) == key


@pytest.mark.parametrize(
    ("raw", "char"), [("BTC|USDT", "'|'"), ("A,B", "','"), ("X[1]", "'\\['"), ("BTC USDT", "' '")]
)
def test_forbidden_characters_are_rejected_with_their_position(raw: str, char: str) -> None:
    with pytest.raises(InvalidSymbolError, match=f"contains {char} at position"):
        normalize_symbol(raw)


@pytest.mark.parametrize("raw", ["", "   ", "€URO", "A" * 40])
def test_other_invalid_symbols(raw: str) -> None:
    with pytest.raises(InvalidSymbolError):
        normalize_symbol(raw)


def test_market_kind() -> None:
    assert is_crypto_symbol("BTC/USDT") and is_crypto_symbol("ETHBTC")
    assert not is_crypto_symbol("SPY") and not is_crypto_symbol("USDT")


def test_watchlist_round_trip_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "wl.txt"
    path.write_text("# my list\nbtc/usdt\nSPY  # index\n\nBAD|ONE\nspy\n")
    wl = read_watchlist(path)
    assert wl.symbols == ("BTCUSDT", "SPY")
    assert len(wl.errors) == 1 and f"{path}:5:" in wl.errors[0]
    write_watchlist(path, ["AAPL", "BTCUSDT", "AAPL"])
    assert read_watchlist(path).symbols == ("AAPL", "BTCUSDT")
    assert [p.name for p in tmp_path.iterdir()] == ["wl.txt"]  # no temporary file left behind


def test_atomic_parquet_keeps_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.parquet"
    good = pl.DataFrame({"x": [1.0, 2.0]})
    write_parquet_atomic(good, path)

    class Boom(pl.DataFrame):
        def write_parquet(self, *args, **kwargs):  # type: ignore[override]
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_parquet_atomic(Boom({"x": [9.0]}), path)
    assert read_parquet(path).equals(good)
    assert [p.name for p in path.parent.iterdir()] == ["b.parquet"]


def test_fingerprint_is_stable_and_content_sensitive() -> None:
    a = pl.DataFrame({"t": [1, 2], "v": [0.5, None], "s": ["a", "b"]})
    assert frame_fingerprint(a) == frame_fingerprint(a.clone())
    assert frame_fingerprint(a) != frame_fingerprint(a.with_columns(pl.col("v").fill_null(0.0)))
    assert frame_fingerprint(a) != frame_fingerprint(a.rename({"v": "w"}))
