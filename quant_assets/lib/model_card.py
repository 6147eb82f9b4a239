"""Markdown model card of a trained model: its data, split, hyperparameters, metrics, top features,
known risks and intended use, for the MLflow run and the Dagster UI."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import polars as pl

from quant_assets.lib.reporting import markdown_table
from quant_assets.lib.training import METRIC_NAMES, ModelConfig

TARGET_DESCRIPTIONS: dict[str, str] = {
    "take_profit": "the probability that the take-profit barrier is hit before the stop-loss "
    "and within the vertical barrier (triple-barrier label +1)",
    "fixed_horizon": "the probability that the return over the fixed horizon reaches the "
    "threshold (label_fh = 1)",
}
COUNT_KEYS: tuple[str, ...] = (
    "rows_in",
    "dropped_warmup",
    "dropped_unlabelled",
    "dropped_missing_features",
    "rows_out",
    "positive_rate",
    "symbols",
)
# OOF AUC this close to 0.5 is within what a few thousand rows of pure noise can produce.
WEAK_EDGE_AUC = 0.52


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M %Z").strip()
    return str(value)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metrics_table(overall: Mapping[str, float], holdout: Mapping[str, float]) -> str:
    def column(metrics: Mapping[str, float], prefix: str, suffix: str) -> list[float | None]:
        return [metrics.get(f"{prefix}_{m}{suffix}") for m in METRIC_NAMES]

    table = pl.DataFrame(
        {
            "metric": list(METRIC_NAMES),
            "OOF raw": column(overall, "oof", ""),
            "OOF calibrated": column(overall, "oof", "_calibrated"),
            "hold-out raw": column(holdout, "holdout", ""),
            "hold-out calibrated": column(holdout, "holdout", "_calibrated"),
        },
        schema_overrides=dict.fromkeys(
            ("OOF raw", "OOF calibrated", "hold-out raw", "hold-out calibrated"), pl.Float64
        ),
    )
    return markdown_table(table, max_rows=len(METRIC_NAMES), float_digits=4)


def _default_risks(
    data_source: str | None,
    data_window: tuple[Any, Any],
    config: ModelConfig,
    overall: Mapping[str, float],
    holdout: Mapping[str, float],
) -> list[str]:
    risks = []
    if data_source and "synthetic" in data_source.lower():
        risks.append(
            f"Trained and evaluated on synthetic data ({data_source}): the metrics show the pipeline "
            "finds planted structure, not that any market is predictable."
        )
    start, end = (_when(v) for v in data_window)
    risks.append(
        f"Regime change: everything was learned and measured between {start} and {end}; a market "
        "regime absent from that window (crash, volatility shift, liquidity change) can break it."
    )
    risks.append(
        "Costs are not in these metrics: fees, spread and slippage decide whether an edge in AUC "
        "is a profitable strategy; only a cost-aware backtest can say so."
    )
    risks.append(
        "AUC is not direction: part of it comes from predicting volatility (whether a barrier or "
        "the threshold is reached in time at all); a driftless synthetic random walk already "
        "scores above 0.5 on these targets."
    )
    oof_n = overall.get("oof_n")
    if config.calibration != "none" and oof_n is not None:
        risks.append(
            f"The {config.calibration} calibrator was fitted on the {int(oof_n)} out-of-fold "
            "predictions only; calibrated probabilities in ranges those rows rarely reached are "
            "least reliable."
        )
    auc = overall.get("oof_roc_auc", math.nan)
    holdout_auc = holdout.get("holdout_roc_auc", math.nan)
    if not auc > WEAK_EDGE_AUC or holdout_auc < 0.5:
        risks.append(
            f"Weak or no edge: OOF AUC {_number(auc)}, hold-out AUC {_number(holdout_auc)}."
        )
    if "holdout_n" in holdout:
        risks.append(
            f"The hold-out is one contiguous period of {int(holdout['holdout_n'])} rows at the end "
            "of the data: a single draw, not a distribution of outcomes."
        )
    else:
        risks.append("There is no hold-out: only out-of-fold metrics describe this model.")
    return risks


def _fold_count(split_summary: pl.DataFrame) -> int:
    """Cross-validation folds of a split table; its hold-out row (`fold` -1) is not a fold."""
    if "fold" not in split_summary.columns:
        return split_summary.height
    return int((split_summary["fold"] >= 0).sum())


def render_model_card(
    *,
    name: str,
    symbol: str | None,
    timeframe: str,
    dataset_counts: Mapping[str, int | float],
    split_summary: pl.DataFrame,
    config: ModelConfig,
    overall_metrics: Mapping[str, float],
    holdout_metrics: Mapping[str, float],
    feature_importances: pl.DataFrame,
    data_window: tuple[Any, Any],
    code_version: str,
    data_version: str,
    known_risks: Sequence[str] | None = None,
    fold_metrics: pl.DataFrame | None = None,
    target: str = "take_profit",
    data_source: str | None = None,
    top_features: int = 15,
) -> str:
    """The model card as markdown.

    split_summary is splits.fold_table of the plan; fold_metrics, if given, TrainingResult.fold_metrics;
    overall_metrics and holdout_metrics are TrainingResult's (keys oof_*/holdout_*, raw and
    *_calibrated). symbol None means a global model over several symbols. known_risks are listed
    after the default ones (synthetic data when data_source says so, regime change, costs,
    calibration sample, weak edge, single-period hold-out).
    """
    subject = f"{symbol} {timeframe}" if symbol else f"every symbol's {timeframe}"
    start, end = (_when(v) for v in data_window)
    target_text = TARGET_DESCRIPTIONS.get(target, f"target {target!r}")
    counts = pl.DataFrame(
        {
            "count": [k for k in COUNT_KEYS if k in dataset_counts],
            "value": [_number(dataset_counts[k]) for k in COUNT_KEYS if k in dataset_counts],
        }
    )
    params = config.model_params()
    hyper = pl.DataFrame(
        {
            "parameter": ["model_type", "seed", "calibration", "n_bins", *params],
            "value": [
                config.model_type,
                str(config.seed),
                config.calibration,
                str(config.n_bins),
                *(str(v) for v in params.values()),
            ],
        }
    )
    total = float(feature_importances.get_column("importance").sum())
    top = (
        feature_importances.head(top_features)
        .with_row_index("rank", offset=1)
        .with_columns(
            (pl.col("importance") / total if total > 0 else pl.lit(None, pl.Float64)).alias("share")
        )
    )
    risks = _default_risks(data_source, data_window, config, overall_metrics, holdout_metrics)
    risks += list(known_risks or [])

    lines = [
        f"# Model card: {name}",
        "",
        f"A {config.model_type} classifier for {subject} bars. It predicts {target_text}.",
        "",
        "## Data",
        "",
        f"- Window (bar open times): {start} to {end}",
        f"- Source: {data_source or 'not recorded'}",
        f"- Data version: `{data_version}`",
        f"- Code version: `{code_version}`",
        "",
        markdown_table(counts, max_rows=len(COUNT_KEYS)),
        "",
        "## Split",
        "",
        f"{_fold_count(split_summary)} folds over the development rows; the hold-out "
        f"({int(holdout_metrics['holdout_n']) if 'holdout_n' in holdout_metrics else 'no'} rows) "
        "is the latest data, never used for fitting.",
        "",
        markdown_table(split_summary, max_rows=max(split_summary.height, 1)),
        "",
        "## Hyperparameters",
        "",
        markdown_table(hyper, max_rows=hyper.height),
        "",
        "## Metrics",
        "",
        "Out-of-fold (OOF) predictions come from models that did not train on the rows they "
        "scored; calibrated OOF values are cross-fitted. Hold-out values are the final model's.",
        "",
        _metrics_table(overall_metrics, holdout_metrics),
        "",
    ]
    if fold_metrics is not None:
        lines += [
            "### Per fold",
            "",
            markdown_table(fold_metrics, max_rows=max(fold_metrics.height, 1), float_digits=4),
            "",
        ]
    lines += [
        "## Top features",
        "",
        markdown_table(top, max_rows=top_features, float_digits=4),
        "",
        "## Known risks",
        "",
        *(f"- {r}" for r in risks),
        "",
        "## Where to use it",
        "",
        f"Score {subject} bars after {end} with the calibrated probability, on features built "
        "exactly as for training (same code version and feature columns), as one input to a "
        "signal threshold or position size chosen on a cost-aware backtest. Not for symbols or "
        "timeframes it was not trained on, not for bars inside the training window (in-sample), "
        "and not as a return forecast: it predicts the label, not the profit.",
        "",
    ]
    return "\n".join(lines)


#: the sections of a model card that a run's description shows (the full card is an artifact)
SUMMARY_SECTIONS = ("## Metrics", "## Known risks")


def model_card_summary(card: str) -> str:
    """The card's title, metrics and known risks: the description of its MLflow run."""
    lines = card.splitlines()
    out = [lines[0], ""] if lines else []
    keep = False
    for line in lines[1:]:
        if line.startswith("## "):
            keep = line.strip() in SUMMARY_SECTIONS
        if keep:
            out.append(line)
    out += ["", "The full model card is the run's `model_card.md` artifact."]
    return "\n".join(out)
