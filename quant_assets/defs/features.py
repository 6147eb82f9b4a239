"""`features` [symbol × timeframe] with its multi-timeframe snapshot, and `cross_sectional_ranks` [timeframe]."""

import dagster as dg
import polars as pl
import polars.selectors as cs

from quant_assets.defs.batching import PartitionOutput, emit, partition_check
from quant_assets.defs.conditions import FOLLOWS_UPSTREAM
from quant_assets.defs.metadata import table
from quant_assets.defs.partitions import (
    CONFIGURED_TIMEFRAMES,
    PARTITION_BATCH,
    TIMEFRAME_BATCH,
    registered_symbols,
    step_partitions,
    symbol_timeframe_partitions,
    timeframe_partitions,
)
from quant_assets.defs.resources import ArtifactStore
from quant_assets.lib.features import (
    MTF_FEATURES,
    XS_SOURCES,
    compute_features,
    feature_names,
    multi_timeframe_snapshot,
)
from quant_assets.lib.features import (
    cross_sectional_ranks as rank_across_symbols,
)
from quant_assets.lib.leakage import mtf_lookahead_violations, recursive_analysis
from quant_assets.lib.settings import DEFAULT_TIMEFRAMES
from quant_assets.lib.timeframes import timeframe_seconds

# Each timeframe reads its own bars and those of every coarser timeframe of the same symbol.
_SAME_OR_COARSER = dg.StaticPartitionMapping(
    {
        up: [
            down
            for down in CONFIGURED_TIMEFRAMES
            if timeframe_seconds(down) <= timeframe_seconds(up)
        ]
        for up in CONFIGURED_TIMEFRAMES
    }
)
SAME_SYMBOL_COARSER_TIMEFRAMES = dg.MultiPartitionMapping(
    {
        "symbol": dg.DimensionPartitionMapping("symbol", dg.IdentityPartitionMapping()),
        "timeframe": dg.DimensionPartitionMapping("timeframe", _SAME_OR_COARSER),
    }
)


class FeaturesConfig(dg.Config):
    """Launchpad-editable settings of the feature step."""

    snapshot_timeframes: list[str] = list(DEFAULT_TIMEFRAMES)
    """Timeframes whose features are snapshotted onto each finer bar (those coarser than the partition)."""
    leakage_cuts: int = 5
    """History cut points of the recursive look-ahead check."""


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    ins={"ohlcv": dg.AssetIn(partition_mapping=SAME_SYMBOL_COARSER_TIMEFRAMES)},
    group_name="research",
    kinds={"polars"},
    code_version="1",
    backfill_policy=PARTITION_BATCH,
    check_specs=[
        partition_check(
            "features",
            "no_lookahead",
            "Recursive analysis: recomputing on history truncated at several "
            "cut points reproduces every earlier row exactly.",
            blocking=True,
        ),
        partition_check(
            "features",
            "mtf_closed_bars_only",
            "Every multi-timeframe value comes from a higher-timeframe bar "
            "that had closed by the bar's close.",
            blocking=True,
        ),
    ],
)
def features(
    context: dg.AssetExecutionContext, config: FeaturesConfig, ohlcv: dict[str, pl.DataFrame]
):
    """Technical features of each bar (docs/features.md), plus `tf<T>_*` columns holding the
    RSI, EMA slope and ATR fraction of each coarser timeframe as of the last bar of it that had
    closed. Warm-up rows are kept, with nulls and `is_warm = false`; nothing is back-filled."""
    yield from emit(
        context,
        {
            key: _features_of(config, ohlcv, symbol, timeframe)
            for key, symbol, timeframe in step_partitions(context)
        },
    )


def _features_of(
    config: FeaturesConfig, ohlcv: dict[str, pl.DataFrame], symbol: str, timeframe: str
) -> PartitionOutput:
    bars = ohlcv.get(f"{symbol}|{timeframe}")
    if bars is None:
        raise FileNotFoundError(
            f"features {symbol}|{timeframe}: ohlcv {symbol}|{timeframe} is not materialized"
        )
    coarser = [
        t for t in config.snapshot_timeframes if timeframe_seconds(t) > timeframe_seconds(timeframe)
    ]
    missing = [t for t in coarser if f"{symbol}|{t}" not in ohlcv]
    if missing:
        raise FileNotFoundError(
            f"features {symbol}|{timeframe}: the multi-timeframe snapshot needs ohlcv {symbol}|"
            f"{', '.join(missing)}; materialize them first (or drop them from snapshot_timeframes)"
        )
    base = compute_features(bars, timeframe)
    higher = {t: compute_features(ohlcv[f"{symbol}|{t}"], t) for t in coarser}
    snapshot = multi_timeframe_snapshot(base.select("timestamp"), timeframe, higher)
    frame = base.join(snapshot, on="timestamp", how="left", maintain_order="left")

    report = recursive_analysis(
        lambda b: compute_features(b, timeframe), bars, n_cuts=config.leakage_cuts, full=base
    )
    violations = mtf_lookahead_violations(base.select("timestamp"), timeframe, snapshot, higher)
    return PartitionOutput(
        frame,
        metadata={
            "dagster/row_count": frame.height,
            "warm_rows": int(frame["is_warm"].sum()),
            "warmup_rows": int((~frame["is_warm"]).sum()),
            "first_bar": str(frame["timestamp"].min()),
            "last_bar": str(frame["timestamp"].max()),
            "features": len(feature_names(timeframe)),
            "snapshot_timeframes": ", ".join(coarser) or "none (no coarser timeframe)",
            "snapshot_features": ", ".join(MTF_FEATURES),
            "config": dg.MetadataValue.json(config.model_dump()),
            "preview": table(
                frame.filter(pl.col("is_warm"))
                .select(
                    "timestamp",
                    "ret_1",
                    "rsi_14",
                    "atr_14_frac",
                    "bb_pctb",
                    "vol_20",
                    cs.starts_with("tf"),
                )
                .tail(5)
            ),
        },
        checks=[
            dg.AssetCheckResult(
                check_name="no_lookahead",
                passed=report.ok,
                metadata={"cuts": str(list(report.cuts)), "result": report.describe()},
            ),
            dg.AssetCheckResult(
                check_name="mtf_closed_bars_only",
                passed=violations == 0,
                metadata={
                    "violations": violations,
                    "rows": frame.height,
                    "timeframes": ", ".join(coarser) or "none",
                },
            ),
        ],
    )


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=timeframe_partitions,
    deps=[
        dg.AssetDep(
            "features", partition_mapping=dg.MultiToSingleDimensionPartitionMapping("timeframe")
        )
    ],
    group_name="research",
    kinds={"polars"},
    code_version="1",
    backfill_policy=TIMEFRAME_BATCH,
)
def cross_sectional_ranks(context: dg.AssetExecutionContext, artifacts: ArtifactStore):
    """Percentile ranks of momentum (ret_20), volume (volume_ratio_20) and volatility (vol_20)
    across every symbol with a bar at the same timestamp; joined into training data later.
    Reads only the three ranked columns of each symbol's features (column projection), so memory
    grows with symbols × bars × 3, not with the whole feature set."""
    outputs = {}
    for timeframe in context.partition_keys:
        frames = {
            symbol: frame
            for symbol in registered_symbols(context.instance)
            if (frame := artifacts.read_partition("features", symbol, timeframe, RANKED_COLUMNS))
            is not None
        }
        if not frames:
            raise FileNotFoundError(f"cross_sectional_ranks {timeframe}: no features materialized")
        outputs[timeframe] = _ranks_output(frames)
    yield from emit(context, outputs)


#: the columns of `features` that cross-sectional ranks read
RANKED_COLUMNS = ("timestamp", *XS_SOURCES.values())


def _ranks_output(frames: dict[str, pl.DataFrame]) -> PartitionOutput:
    ranks = rank_across_symbols(frames)
    per_ts = ranks.group_by("timestamp").agg(pl.col("xs_n_symbols").first())
    return PartitionOutput(
        ranks,
        metadata={
            "dagster/row_count": ranks.height,
            "symbols": ", ".join(sorted(frames)),
            "timestamps": per_ts.height,
            "mean_symbols_per_timestamp": float(per_ts["xs_n_symbols"].mean()),
            "preview": table(ranks.drop_nulls().tail(5)),
        },
    )
