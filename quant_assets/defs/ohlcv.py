"""`ohlcv` [symbol × timeframe]: normalised bars, fetched incrementally and resampled from the source's base bars."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from quant_assets.defs.batching import PartitionOutput, emit, partition_check
from quant_assets.defs.conditions import BUILDS_NEW_PARTITIONS
from quant_assets.defs.metadata import table
from quant_assets.defs.partitions import (
    PARTITION_BATCH,
    step_partitions,
    symbol_timeframe_partitions,
)
from quant_assets.defs.resources import ArtifactStore, MarketDataResource
from quant_assets.lib.calendars import infer_calendar
from quant_assets.lib.ingest import refresh_bars
from quant_assets.lib.storage import frame_fingerprint
from quant_assets.lib.validation import ohlcv_quality


@dg.asset(
    automation_condition=BUILDS_NEW_PARTITIONS,
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=PARTITION_BATCH,
    group_name="market_data",
    kinds={"polars", "parquet"},
    code_version="1",
    check_specs=[
        partition_check(
            "ohlcv",
            "ohlcv_integrity",
            "ERROR when stored bars are corrupted: duplicates, order, OHLC consistency, prices, volume.",
            blocking=True,
        ),
        partition_check("ohlcv", "ohlcv_gaps", "WARN when bars are missing against the calendar."),
        partition_check(
            "ohlcv", "ohlcv_freshness", "WARN when the last bar closed longer ago than 3 bars."
        ),
    ],
)
def ohlcv(
    context: dg.AssetExecutionContext, market_data: MarketDataResource, artifacts: ArtifactStore
):
    """OHLCV bars (UTC open time, open, high, low, close, volume) of one symbol at one timeframe.

    Timeframes coarser than the source's data are resampled from its base bars (session-aware,
    labelled by open time); finer ones fail. Re-materializing fetches only new bars; data that fails
    validation raises before anything is written, so the stored file keeps its last good version.
    """
    source = market_data.get_source()
    outputs = {
        key: _refresh_partition(context, market_data, source, artifacts, symbol, timeframe)
        for key, symbol, timeframe in step_partitions(context)
    }
    yield from emit(context, outputs)


def _refresh_partition(
    context, market_data: MarketDataResource, source, artifacts: ArtifactStore, symbol, timeframe
):
    stored = artifacts.read_partition("ohlcv", symbol, timeframe)
    result = refresh_bars(
        source, symbol, timeframe, stored, allow_rewrite=market_data.allow_history_rewrite
    )
    if result.history_rewrite:
        context.log.warning(f"{symbol} {timeframe}: history rewritten: {result.history_rewrite}")
    frame = result.frame
    context.log.info(
        f"{symbol} {timeframe}: {result.reason}; {result.new_rows} new bars, "
        f"{frame.height} in total from {source.description}"
    )
    version = frame_fingerprint(frame)
    report = _quality(frame, timeframe)
    return PartitionOutput(
        frame,
        data_version=version,
        metadata={
            "dagster/row_count": frame.height,
            "first_bar": str(frame["timestamp"].min()),
            "last_bar": str(frame["timestamp"].max()),
            "new_rows": result.new_rows,
            "revised_rows": result.revised_rows,
            "full_reload": result.full_reload,
            "filled_rows": result.filled_rows,
            "history_rewrite": result.history_rewrite or "none",
            "refresh": result.reason,
            "source": source.description,
            "calendar": result.calendar.name,
            "data_version": version,
            "preview": table(frame.tail(5)),
        },
        checks=[fn(frame, timeframe, report) for fn in CHECKS],
    )


_CORRUPTION = ("duplicates", "non_increasing", "ohlc_inconsistent", "negative_volume", "bad_prices")


def _quality(frame: pl.DataFrame, timeframe: str) -> dict:
    return ohlcv_quality(frame, timeframe, infer_calendar(frame, timeframe), datetime.now(UTC))


def integrity_result(
    frame: pl.DataFrame, timeframe: str, report: dict | None = None
) -> dg.AssetCheckResult:
    """ERROR when stored bars are corrupted (what downstream steps would read)."""
    report = report or _quality(frame, timeframe)
    counts = {k: int(report.get(k, 0)) for k in _CORRUPTION}
    problems = [f"{k}: {v}" for k, v in counts.items() if v]
    return dg.AssetCheckResult(
        check_name="ohlcv_integrity",
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": frame.height, **counts},
        description="; ".join(problems) or "no corruption",
    )


def gaps_result(
    frame: pl.DataFrame, timeframe: str, report: dict | None = None
) -> dg.AssetCheckResult:
    """WARN when bars are missing against the trading calendar."""
    report = report or _quality(frame, timeframe)
    missing = int(report["missing_bars"])
    return dg.AssetCheckResult(
        check_name="ohlcv_gaps",
        passed=missing == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "missing_bars": missing,
            "expected_bars": int(report["expected_bars"]),
            "first_missing": ", ".join(report["first_missing"]) or "none",
            "unexpected_bars": int(report["unexpected_bars"]),
            "largest_gap_bars": int(report["largest_gap_bars"]),
        },
    )


def freshness_result(
    frame: pl.DataFrame, timeframe: str, report: dict | None = None
) -> dg.AssetCheckResult:
    """WARN when the last bar closed longer ago than 3 bars (or than a market closure)."""
    report = report or _quality(frame, timeframe)
    return dg.AssetCheckResult(
        check_name="ohlcv_freshness",
        passed=not report["stale"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "staleness_hours": float(report["staleness_hours"] or 0.0),
            "stale_threshold_hours": float(report["stale_threshold_hours"] or 0.0),
            "last_bar": str(report["last_bar"]),
        },
    )


#: every check of a stored partition, in the order of the asset's check specs
CHECKS = (integrity_result, gaps_result, freshness_result)
