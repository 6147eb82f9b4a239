"""Training datasets exported for a notebook: the stored `training_dataset` rows of several symbols
of one timeframe within a date range, one file (Parquet or CSV), written atomically."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import polars as pl

from quant_assets.lib.errors import QuantAssetsError
from quant_assets.lib.storage import write_atomic, write_parquet_atomic

ExportFormat = Literal["parquet", "csv"]
EXPORT_FORMATS: tuple[str, ...] = ("parquet", "csv")

#: What each exported column holds (also in README "Research breadth").
EXPORT_COLUMNS: dict[str, str] = {
    "symbol": "the partition's symbol (first column)",
    "timestamp": "bar open time, UTC; rows sorted by timestamp, then symbol",
    "t0": "start of the label's information span (= timestamp)",
    "t1": "when the target's outcome is known (label exit time)",
    "<features>": "every feature of docs/features.md, the tf<T>_* multi-timeframe snapshot and the "
    "xs_rank_* cross-sectional ranks, as the model sees them",
    "y": "the target (0/1; for multi_class 1 = a class above the middle one)",
    "y_class": "multi_class only: the class 0 .. K-1 (strong sell .. strong buy)",
    "sample_weight": "average label uniqueness (x recency decay) used in every fit",
    "label, barrier, exit_price, ret, holding_bars": "triple-barrier outcome of the bar",
    "label_fh, ret_fh, label_out, ret_out, label_mc, ret_mc": "fixed-horizon, outperformance and "
    "multi-class outcomes (null where that label is unknown)",
    "target": "the dataset's target name (take_profit, fixed_horizon, binary_outperformance, "
    "multi_class)",
}


class ExportError(QuantAssetsError, ValueError):
    """An export request that cannot be met (bad range, format, or no rows)."""


def parse_day(value: str, *, end: bool = False) -> datetime:
    """A UTC instant from 'YYYY-MM-DD' (an end date covers its whole day) or an ISO timestamp."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ExportError(f"{value!r} is not a date (YYYY-MM-DD) or ISO timestamp") from exc
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if end and len(value) == 10:
        parsed = parsed.replace(hour=23, minute=59, second=59, microsecond=999_999)
    return parsed.astimezone(UTC)


def export_frame(frames: dict[str, pl.DataFrame], start: datetime, end: datetime) -> pl.DataFrame:
    """The rows of each symbol's training_dataset frame with start <= timestamp <= end, a `symbol`
    column first, sorted by timestamp then symbol. Symbols' feature columns must agree (they are
    built by the same code); a column one symbol lacks is null for it (diagonal concatenation)."""
    if end < start:
        raise ExportError(f"--end {end.isoformat()} is before --start {start.isoformat()}")
    parts = [
        frame.filter(pl.col("timestamp").is_between(start, end)).select(
            pl.lit(symbol).alias("symbol"), pl.exclude("symbol")
        )
        for symbol, frame in frames.items()
    ]
    if not parts:
        raise ExportError("no symbols to export")
    return pl.concat(parts, how="diagonal_relaxed").sort(["timestamp", "symbol"])


def write_export(frame: pl.DataFrame, path: str | os.PathLike[str], fmt: ExportFormat) -> Path:
    """Write `frame` as Parquet or CSV so a reader never sees half a file (temporary file in the
    same directory, fsync, rename)."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of {EXPORT_FORMATS}")
    if fmt == "parquet":
        return write_parquet_atomic(frame, path)
    return write_atomic(path, frame.write_csv)


def format_of(path: str, fmt: str | None) -> ExportFormat:
    """The export format: `fmt` if given, else from the file's suffix (.parquet / .csv)."""
    if fmt:
        if fmt not in EXPORT_FORMATS:
            raise ExportError(f"--format {fmt!r}; expected one of {EXPORT_FORMATS}")
        return fmt  # type: ignore[return-value]
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in EXPORT_FORMATS:
        return suffix  # type: ignore[return-value]
    raise ExportError(f"cannot tell the format of {path!r}; pass --format parquet or csv")
