"""`labels` [symbol × timeframe]: triple-barrier and fixed-horizon labels with sample weights."""

import dagster as dg
import polars as pl

from quant_assets.defs.conditions import FOLLOWS_UPSTREAM
from quant_assets.defs.partitions import symbol_and_timeframe, symbol_timeframe_partitions
from quant_assets.lib.labels import MINORITY_CLASS_WARN_FRACTION, build_labels, label_summary
from quant_assets.lib.leakage import label_lookahead_report
from quant_assets.lib.reporting import markdown_table


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


@dg.asset(
    automation_condition=FOLLOWS_UPSTREAM,
    partitions_def=symbol_timeframe_partitions,
    group_name="research",
    kinds={"numpy", "polars"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            "class_balance",
            asset="labels",
            description=f"Warns when a class holds under {MINORITY_CLASS_WARN_FRACTION:.0%} of labelled rows.",
        ),
        dg.AssetCheckSpec(
            "labels_known_after_entry",
            asset="labels",
            blocking=True,
            description="Every outcome is known after its entry bar closed and by the end of the "
            "data; labels computed on truncated history never change.",
        ),
    ],
)
def labels(
    context: dg.AssetExecutionContext,
    config: LabelsConfig,
    ohlcv: pl.DataFrame,
    features: pl.DataFrame,
):
    """Triple-barrier labels (take-profit `tp_mult`·ATR, stop-loss `sl_mult`·ATR, vertical after
    `horizon` bars; touches on each following bar's high/low; a bar touching both is a stop-loss),
    the fixed-horizon `label_fh`, and average-uniqueness sample weights. Rows whose horizon runs
    past the data are unlabelled (null)."""
    _, timeframe = symbol_and_timeframe(context)
    if not ohlcv["timestamp"].equals(features["timestamp"]):
        raise ValueError(
            f"labels {context.partition_key}: ohlcv and features have different bars; re-materialize features"
        )
    frame = build_labels(ohlcv, features["atr_14"], timeframe, **config.model_dump())
    summary = label_summary(frame)
    fh = label_summary(frame.select("label_fh"))
    yield dg.Output(
        frame,
        metadata={
            "dagster/row_count": frame.height,
            "labelled_rows": summary["labelled"],
            "coverage": summary["coverage"],
            "class_fractions": dg.MetadataValue.json(summary["class_fractions"]),
            "tp_rate": summary["class_fractions"]["1"],
            "mean_holding_bars": summary["mean_holding_bars"],
            "fixed_horizon_positive_rate": fh["class_fractions"]["1"],
            "mean_sample_weight": float(frame["sample_weight"].mean() or 0.0),
            "config": dg.MetadataValue.json(config.model_dump()),
            "preview": dg.MetadataValue.md(markdown_table(frame.drop_nulls("label").tail(5))),
        },
    )
    yield dg.AssetCheckResult(
        check_name="class_balance",
        passed=summary["minority_class_fraction"] >= MINORITY_CLASS_WARN_FRACTION,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "minority_class": str(summary["minority_class"]),
            "minority_class_fraction": summary["minority_class_fraction"],
            "class_counts": dg.MetadataValue.json(summary["class_counts"]),
        },
    )
    report = label_lookahead_report(
        lambda b: build_labels(
            b, features["atr_14"].head(b.height), timeframe, **config.model_dump()
        ),
        ohlcv,
        timeframe,
    )
    yield dg.AssetCheckResult(
        check_name="labels_known_after_entry",
        passed=report.ok,
        metadata={"result": report.describe(), "cuts": str(list(report.cuts))},
    )
