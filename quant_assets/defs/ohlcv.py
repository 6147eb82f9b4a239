"""`ohlcv` [symbol × timeframe]: normalised bars, fetched incrementally and resampled from the source's base bars."""

from datetime import UTC, datetime

import dagster as dg
import polars as pl

from quant_assets.defs.conditions import BUILDS_NEW_PARTITIONS
from quant_assets.defs.partitions import symbol_and_timeframe, symbol_timeframe_partitions
from quant_assets.defs.resources import ArtifactStore, MarketDataResource
from quant_assets.lib.calendars import infer_calendar
from quant_assets.lib.ingest import refresh_bars
from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.storage import frame_fingerprint
from quant_assets.lib.validation import ohlcv_quality


@dg.asset(
    automation_condition=BUILDS_NEW_PARTITIONS,
    partitions_def=symbol_timeframe_partitions,
    group_name="market_data",
    kinds={"polars", "parquet"},
    code_version="1",
)
def ohlcv(
    context: dg.AssetExecutionContext, market_data: MarketDataResource, artifacts: ArtifactStore
) -> dg.Output[pl.DataFrame]:
    """OHLCV bars (UTC open time, open, high, low, close, volume) of one symbol at one timeframe.

    Timeframes coarser than the source's data are resampled from its base bars (session-aware,
    labelled by open time); finer ones fail. Re-materializing fetches only new bars; data that fails
    validation raises before anything is written, so the stored file keeps its last good version.
    """
    symbol, timeframe = symbol_and_timeframe(context)
    source = market_data.get_source()
    stored = artifacts.read_partition("ohlcv", symbol, timeframe)
    result = refresh_bars(source, symbol, timeframe, stored)
    frame = result.frame
    context.log.info(
        f"{symbol} {timeframe}: {result.reason}; {result.new_rows} new bars, "
        f"{frame.height} in total from {source.description}"
    )
    version = frame_fingerprint(frame)
    return dg.Output(
        frame,
        data_version=dg.DataVersion(version),
        metadata={
            "dagster/row_count": frame.height,
            "first_bar": str(frame["timestamp"].min()),
            "last_bar": str(frame["timestamp"].max()),
            "new_rows": result.new_rows,
            "revised_rows": result.revised_rows,
            "full_reload": result.full_reload,
            "refresh": result.reason,
            "source": source.description,
            "calendar": result.calendar.name,
            "data_version": version,
            "preview": dg.MetadataValue.md(markdown_table(frame.tail(5))),
        },
    )


_CORRUPTION = ("duplicates", "non_increasing", "ohlc_inconsistent", "negative_volume", "bad_prices")


def _quality(frame: pl.DataFrame, timeframe: str) -> dict:
    return ohlcv_quality(frame, timeframe, infer_calendar(frame, timeframe), datetime.now(UTC))


def integrity_result(frame: pl.DataFrame, timeframe: str) -> dg.AssetCheckResult:
    """ERROR when stored bars are corrupted (what downstream steps would read)."""
    report = _quality(frame, timeframe)
    counts = {k: int(report.get(k, 0)) for k in _CORRUPTION}
    problems = [f"{k}: {v}" for k, v in counts.items() if v]
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"rows": frame.height, **counts},
        description="; ".join(problems) or "no corruption",
    )


def gaps_result(frame: pl.DataFrame, timeframe: str) -> dg.AssetCheckResult:
    """WARN when bars are missing against the trading calendar."""
    report = _quality(frame, timeframe)
    missing = int(report["missing_bars"])
    return dg.AssetCheckResult(
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


def freshness_result(frame: pl.DataFrame, timeframe: str) -> dg.AssetCheckResult:
    """WARN when the last bar closed longer ago than 3 bars (or than a market closure)."""
    report = _quality(frame, timeframe)
    return dg.AssetCheckResult(
        passed=not report["stale"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "staleness_hours": float(report["staleness_hours"] or 0.0),
            "stale_threshold_hours": float(report["stale_threshold_hours"] or 0.0),
            "last_bar": str(report["last_bar"]),
        },
    )


def _partitioned_check(result_fn, name: str, blocking: bool = False):
    @dg.asset_check(
        asset=ohlcv,
        name=name,
        partitions_def=symbol_timeframe_partitions,
        blocking=blocking,
        description=(result_fn.__doc__ or "").strip(),
    )
    def _check(context: dg.AssetCheckExecutionContext, ohlcv: pl.DataFrame) -> dg.AssetCheckResult:
        _, timeframe = symbol_and_timeframe(context)
        return result_fn(ohlcv, timeframe)

    return _check


# Checks read the stored partition (not the in-memory value), so corruption on disk is caught too.
ohlcv_checks = [
    _partitioned_check(integrity_result, "ohlcv_integrity", blocking=True),
    _partitioned_check(gaps_result, "ohlcv_gaps"),
    _partitioned_check(freshness_result, "ohlcv_freshness"),
]
