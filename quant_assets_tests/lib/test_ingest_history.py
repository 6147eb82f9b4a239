"""History protection of `refresh_bars`: every stored bar compared with the source's, refusals that
name the symbol, timestamp and values, and the explicit rewrite option."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from quant_assets.lib.calendars import CRYPTO_24_7
from quant_assets.lib.errors import HistoryConflictError
from quant_assets.lib.ingest import REWRITE_HINT, history_conflict, refresh_bars
from quant_assets.lib.ohlcv import resample_bars
from quant_assets.lib.sources import FileSource
from quant_assets.lib.sources.synthetic import synthetic_bars

START = datetime(2024, 1, 1, tzinfo=UTC)
END = START + timedelta(days=20)
NOW = END + timedelta(hours=1)
BARS = synthetic_bars("BTCUSDT", 3, START, END, "1h")


def source_with(directory: Path, frame: pl.DataFrame) -> FileSource:
    frame.write_parquet(directory / "BTCUSDT_1h.parquet")
    return FileSource(directory)


def test_unchanged_source_is_incremental_and_idempotent(tmp_path: Path) -> None:
    stored = BARS.head(400)
    result = refresh_bars(source_with(tmp_path, BARS), "BTCUSDT", "1h", stored, now=NOW)
    assert result.frame.equals(BARS)
    assert (result.new_rows, result.revised_rows, result.filled_rows) == (BARS.height - 400, 0, 0)
    assert not result.full_reload and result.reason == "incremental" and not result.history_rewrite
    again = refresh_bars(source_with(tmp_path, BARS), "BTCUSDT", "1h", result.frame, now=NOW)
    assert again.frame.equals(BARS) and again.new_rows == 0


def test_only_the_last_stored_bar_may_be_revised(tmp_path: Path) -> None:
    stored = BARS.head(400).with_columns(
        pl.when(pl.int_range(pl.len()) == 399)
        .then(pl.col("volume") / 2)
        .otherwise(pl.col("volume"))
        .alias("volume")
    )
    result = refresh_bars(source_with(tmp_path, BARS), "BTCUSDT", "1h", stored, now=NOW)
    assert result.revised_rows == 1 and result.frame.equals(BARS)


def test_a_rewritten_bar_deep_in_history_is_refused_with_both_values(tmp_path: Path) -> None:
    edited = BARS.with_columns(
        pl.when(pl.int_range(pl.len()) == 37)
        .then(pl.col("volume") * 3)
        .otherwise(pl.col("volume"))
        .alias("volume")
    )
    stored = BARS.head(400)
    when = BARS["timestamp"][37]
    old, new = BARS["volume"][37], edited["volume"][37]
    with pytest.raises(HistoryConflictError) as caught:
        refresh_bars(source_with(tmp_path, edited), "BTCUSDT", "1h", stored, now=NOW)
    message = str(caught.value)
    assert message.startswith(
        f"BTCUSDT 1h: the source rewrote 1 stored bar(s), first {when.isoformat()}: "
        f"volume stored {old!r}, new {new!r}"
    )
    assert "stored partition is kept" in message and REWRITE_HINT in message


def test_allowed_rewrite_reloads_in_full_and_records_it(tmp_path: Path) -> None:
    scaled = BARS.with_columns(pl.col(c) * 2 for c in ("open", "high", "low", "close"))
    result = refresh_bars(
        source_with(tmp_path, scaled), "BTCUSDT", "1h", BARS.head(400), allow_rewrite=True, now=NOW
    )
    assert result.full_reload and result.frame.equals(scaled)
    assert result.history_rewrite.startswith("BTCUSDT 1h: the source rewrote 399 stored bar(s)")
    assert result.reason.startswith("history rewrite allowed: ")


def test_shrunk_history_is_refused_naming_the_first_missing_bar(tmp_path: Path) -> None:
    stored = BARS.head(400)
    for kept in (300, 2):
        with pytest.raises(HistoryConflictError) as caught:
            refresh_bars(source_with(tmp_path, BARS.head(kept)), "BTCUSDT", "1h", stored, now=NOW)
        first_missing = BARS["timestamp"][kept]
        assert str(caught.value).startswith(
            f"BTCUSDT 1h: the source no longer has {400 - kept} stored bar(s), first "
            f"{first_missing.isoformat()} (stored open={BARS['open'][kept]!r}"
        )
        assert f"source {kept} bars" in str(caught.value)
    # a hole in the middle is shrinking too
    holed = BARS.filter(pl.int_range(pl.len()) != 100)
    with pytest.raises(HistoryConflictError, match=r"no longer has 1 stored bar\(s\)"):
        refresh_bars(source_with(tmp_path, holed), "BTCUSDT", "1h", stored, now=NOW)


def test_filled_gaps_and_older_history_are_taken(tmp_path: Path) -> None:
    stored = BARS.slice(50, 350).filter(pl.int_range(pl.len()) != 10)
    result = refresh_bars(source_with(tmp_path, BARS), "BTCUSDT", "1h", stored, now=NOW)
    assert result.frame.equals(BARS) and not result.full_reload
    assert result.filled_rows == 51 and result.new_rows == BARS.height - 400
    assert "51 earlier bar(s) filled in" in result.reason


def test_bars_beyond_the_present_are_refused_even_on_a_first_load(tmp_path: Path) -> None:
    source = source_with(tmp_path, BARS)
    last = BARS["timestamp"][-1]
    # the current bar, and one bar of clock skew, are fine
    assert refresh_bars(source, "BTCUSDT", "1h", None, now=last).frame.equals(BARS)
    assert refresh_bars(source, "BTCUSDT", "1h", None, now=last - timedelta(hours=1)).new_rows
    with pytest.raises(HistoryConflictError) as caught:
        refresh_bars(source, "BTCUSDT", "1h", BARS.head(10), now=last - timedelta(hours=2))
    assert str(caught.value) == (
        f"BTCUSDT 1h: 1 bar(s) dated after the present, first at row {BARS.height - 1}: "
        f"{last.isoformat()} (open={BARS['open'][-1]!r}, high={BARS['high'][-1]!r}, "
        f"low={BARS['low'][-1]!r}, close={BARS['close'][-1]!r}, volume={BARS['volume'][-1]!r}) "
        f"opens more than one bar after {(last - timedelta(hours=2)).isoformat()}; "
        "the stored partition is kept"
    )
    # allow_rewrite never lets future bars in
    with pytest.raises(HistoryConflictError, match="dated after the present"):
        refresh_bars(
            source, "BTCUSDT", "1h", None, allow_rewrite=True, now=last - timedelta(days=1)
        )


def test_resampled_partition_with_a_partial_last_window(tmp_path: Path) -> None:
    """A 4h partition stored while its last window was partial (a source serving the bar in
    progress) is revised, not a rewrite."""
    partial = BARS.head(402)  # 402 hours: the last 4h window holds 2 of its 4 hours
    stored = resample_bars(partial, "1h", "4h", CRYPTO_24_7, as_of=NOW)
    assert stored.height == 101
    result = refresh_bars(source_with(tmp_path, BARS), "BTCUSDT", "4h", stored, now=NOW)
    assert result.revised_rows == 1 and not result.full_reload
    assert result.frame.equals(resample_bars(BARS, "1h", "4h", CRYPTO_24_7))


def test_history_conflict_is_none_for_identical_frames() -> None:
    assert history_conflict(BARS, BARS) is None
    assert history_conflict(BARS.head(5), BARS) is None
