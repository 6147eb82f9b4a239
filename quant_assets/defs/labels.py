"""`labels` [symbol × timeframe]: triple-barrier, fixed-horizon, multi-class and outperformance
labels with sample weights."""

import dagster as dg
import polars as pl

from quant_assets.defs.batching import PartitionOutput, emit, inputs_of, partition_check
from quant_assets.defs.conditions import FOLLOWS_UPSTREAM
from quant_assets.defs.metadata import table
from quant_assets.defs.partitions import (
    PARTITION_BATCH,
    step_partitions,
    symbol_timeframe_partitions,
)
from quant_assets.defs.resources import ArtifactStore
from quant_assets.lib.labels import MINORITY_CLASS_WARN_FRACTION, build_labels, label_summary
from quant_assets.lib.leakage import label_lookahead_report


class LabelsConfig(dg.Config):
    """Label parameters (editable in the Launchpad; recorded on every materialization)."""

    horizon: int = 5
    """Vertical barrier: bars after entry."""
    tp_mult: float = 1.75
    """Take-profit distance in ATR(14) at entry."""
    sl_mult: float = 1.0
    """Stop-loss distance in ATR(14) at entry."""
    fixed_horizon: int = 5
    """Horizon (bars) of the fixed-horizon label `label_fh`."""
    fixed_threshold: float = 0.02
    """Return over `fixed_horizon` bars that makes `label_fh` = 1."""
    weight_decay: float = 1.0
    """Recency decay of sample weights: the oldest label is scaled by it (1 = none)."""
    benchmark_symbol: str = "SPY"
    """Benchmark of `label_out` (binary_outperformance target): its stored `ohlcv` bars of the same
    timeframe, as of each instant. Not materialized: `label_out` is null, and the metadata says so."""
    outperformance_horizon: int = 5
    """Bars over which the symbol's return is compared with the benchmark's."""
    multi_class_horizon: int = 5
    """Bars of the return whose bucket is `label_mc` (multi_class target)."""
    multi_class_classes: int = 5
    """Quantile buckets (5: strong sell, sell, hold, buy, strong buy) when no thresholds are given."""
    multi_class_thresholds: list[float] = []
    """Fixed increasing return edges of the buckets (classes = edges + 1); empty: causal quantiles."""
    multi_class_window: int = 1000
    """Known past horizon returns the quantile edges are taken over (at least half of them)."""


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    group_name="research",
    kinds={"numpy", "polars"},
    code_version="1",
    backfill_policy=PARTITION_BATCH,
    check_specs=[
        partition_check(
            "labels",
            "class_balance",
            f"Warns when a class holds under {MINORITY_CLASS_WARN_FRACTION:.0%} of labelled rows.",
        ),
        partition_check(
            "labels",
            "labels_known_after_entry",
            "Every outcome is known after its entry bar closed and by the end of the "
            "data; labels computed on truncated history never change.",
            blocking=True,
        ),
    ],
)
def labels(
    context: dg.AssetExecutionContext,
    config: LabelsConfig,
    artifacts: ArtifactStore,
    ohlcv: dict[str, pl.DataFrame],
    features: dict[str, pl.DataFrame],
):
    """Triple-barrier labels (take-profit `tp_mult`·ATR, stop-loss `sl_mult`·ATR, vertical after
    `horizon` bars; touches on each following bar's high/low; a bar touching both is a stop-loss),
    the fixed-horizon `label_fh`, the multi-class `label_mc` (return buckets), `label_out` (beat
    the benchmark symbol's stored bars) and average-uniqueness sample weights. Rows whose horizon
    runs past the data are unlabelled (null)."""
    yield from emit(
        context,
        {
            key: _labels_of(
                config,
                inputs_of(ohlcv, key),
                inputs_of(features, key),
                key,
                timeframe,
                artifacts.read_partition(
                    "ohlcv", config.benchmark_symbol, timeframe, columns=("timestamp", "close")
                ),
            )
            for key, _, timeframe in step_partitions(context)
        },
    )


def _labels_of(
    config: LabelsConfig,
    ohlcv: pl.DataFrame,
    features: pl.DataFrame,
    key: str,
    timeframe: str,
    benchmark: pl.DataFrame | None,
) -> PartitionOutput:
    if not ohlcv["timestamp"].equals(features["timestamp"]):
        raise ValueError(
            f"labels {key}: ohlcv and features have different bars; re-materialize features"
        )
    params = config.model_dump(exclude={"benchmark_symbol"})

    def compute(bars: pl.DataFrame) -> pl.DataFrame:
        # the benchmark as known when `bars` end: its bars closed by the last bar's close
        known = None
        if benchmark is not None and bars.height:
            known = benchmark.filter(pl.col("timestamp") <= bars["timestamp"][-1])
        return build_labels(
            bars, features["atr_14"].head(bars.height), timeframe, benchmark=known, **params
        )

    frame = compute(ohlcv)
    summary = label_summary(frame)
    fh = label_summary(frame.select("label_fh"))
    report = label_lookahead_report(compute, ohlcv, timeframe, full=frame)
    return PartitionOutput(
        frame,
        metadata={
            "dagster/row_count": frame.height,
            "labelled_rows": summary["labelled"],
            "coverage": summary["coverage"],
            "class_fractions": dg.MetadataValue.json(summary["class_fractions"]),
            "tp_rate": summary["class_fractions"]["1"],
            "mean_holding_bars": summary["mean_holding_bars"],
            "fixed_horizon_positive_rate": fh["class_fractions"]["1"],
            "outperformance_rate": float(frame["label_out"].mean() or 0.0),
            "outperformance_labelled": int(frame["label_out"].is_not_null().sum()),
            "benchmark": config.benchmark_symbol
            if benchmark is not None
            else f"{config.benchmark_symbol} (no stored ohlcv: label_out is null)",
            "multi_class_fractions": dg.MetadataValue.json(
                {
                    str(k): round(v, 4)
                    for k, v in frame["label_mc"]
                    .drop_nulls()
                    .value_counts(normalize=True)
                    .sort("label_mc")
                    .iter_rows()
                }
            ),
            "mean_sample_weight": float(frame["sample_weight"].mean() or 0.0),
            "config": dg.MetadataValue.json(config.model_dump()),
            "preview": table(frame.drop_nulls("label").tail(5)),
        },
        checks=[
            dg.AssetCheckResult(
                check_name="class_balance",
                passed=summary["minority_class_fraction"] >= MINORITY_CLASS_WARN_FRACTION,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "minority_class": str(summary["minority_class"]),
                    "minority_class_fraction": summary["minority_class_fraction"],
                    "class_counts": dg.MetadataValue.json(summary["class_counts"]),
                },
            ),
            dg.AssetCheckResult(
                check_name="labels_known_after_entry",
                passed=report.ok,
                metadata={"result": report.describe(), "cuts": str(list(report.cuts))},
            ),
        ],
    )
