"""Model-ready training data: features (own, multi-timeframe and cross-sectional) joined with a
binary target, its label span and sample weight, one row per usable bar; and the per-timeframe
union of symbols a global model trains on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import polars as pl

from quant_assets.lib.errors import DataValidationError
from quant_assets.lib.storage import frame_fingerprint

Target = Literal["take_profit", "fixed_horizon", "binary_outperformance", "multi_class"]
TARGETS: tuple[str, ...] = ("take_profit", "fixed_horizon", "binary_outperformance", "multi_class")

#: Features whose level is in price (or price x volume) units: their scale drifts with the price, so a
#: model would learn the price level of the training years. Their scale-free versions stay in
#: (atr_14_frac, macd_norm, macd_signal_norm, macd_hist_norm, volume_ratio_20).
EXCLUDED_FEATURES: tuple[str, ...] = ("atr_14", "macd", "macd_signal", "macd_hist", "dollar_volume")

#: Outcome columns of the labels frame kept next to the target, for backtests of the predictions.
OUTCOME_COLUMNS: tuple[str, ...] = (
    "label",
    "barrier",
    "exit_price",
    "ret",
    "holding_bars",
    "label_fh",
    "ret_fh",
    "label_out",
    "ret_out",
    "label_mc",
    "ret_mc",
)
_LABEL_FRAME_COLUMNS = frozenset(
    {*OUTCOME_COLUMNS, "t1", "t1_fh", "t1_out", "t1_mc", "sample_weight"}
)
# (label column, span-end column) of each target
_TARGET_COLUMNS: dict[str, tuple[str, str]] = {
    "take_profit": ("label", "t1"),
    "fixed_horizon": ("label_fh", "t1_fh"),
    "binary_outperformance": ("label_out", "t1_out"),
    "multi_class": ("label_mc", "t1_mc"),
}
XS_RANK_PREFIX = "xs_rank_"
#: The class (0 .. K-1) of a multi_class dataset's rows; its y is 1 for the classes above the middle.
CLASS_COLUMN = "y_class"


@dataclass(frozen=True)
class TrainingDataset:
    """Rows a model can train and be evaluated on, sorted by timestamp (then symbol, if global).

    frame: timestamp, [symbol,] t0 (= timestamp, the bar open: the label's information starts with
    the bar its features describe), t1 (when the target's outcome is known), the feature columns,
    y (Int8 0/1), sample_weight, and the OUTCOME_COLUMNS present in the labels.
    counts: rows_in, dropped_warmup, dropped_unlabelled, dropped_missing_features, rows_out (ints)
    and positive_rate (mean of y; 0.0 when no rows are left).
    """

    frame: pl.DataFrame
    feature_columns: list[str]
    counts: dict[str, int | float]
    target: Target
    symbol: str | None = None


def _require(frame: pl.DataFrame, columns: list[str] | tuple[str, ...], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataValidationError(
            where, f"missing columns {missing}", detail=f"has {frame.columns}"
        )


def _require_unique_timestamps(frame: pl.DataFrame, where: str) -> None:
    repeated = frame.get_column("timestamp").is_duplicated().arg_true()
    if len(repeated):
        raise DataValidationError(
            where,
            "timestamps must be unique (a join on them would duplicate rows)",
            row=int(repeated[0]),
        )


def _symbol_ranks(xs_ranks: pl.DataFrame, symbol: str | None) -> pl.DataFrame:
    where = "build_training_dataset(xs_ranks)"
    if symbol is None:
        raise DataValidationError(
            where, "cross-sectional ranks are per symbol: pass symbol= to pick this one's rows"
        )
    _require(xs_ranks, ["symbol", "timestamp"], where)
    rank_columns = [c for c in xs_ranks.columns if c.startswith(XS_RANK_PREFIX)]
    if not rank_columns:
        raise DataValidationError(
            where, f"no {XS_RANK_PREFIX}* columns", detail=f"has {xs_ranks.columns}"
        )
    ranks = xs_ranks.filter(pl.col("symbol") == symbol).select("timestamp", *rank_columns)
    if ranks.is_empty():
        raise DataValidationError(
            where,
            f"no rows for symbol {symbol!r}",
            detail=f"symbols present: {sorted(xs_ranks.get_column('symbol').unique().to_list())}",
        )
    _require_unique_timestamps(ranks, f"{where} of {symbol!r}")
    return ranks


def build_training_dataset(
    features: pl.DataFrame,
    labels: pl.DataFrame,
    xs_ranks: pl.DataFrame | None = None,
    *,
    target: Target = "take_profit",
    symbol: str | None = None,
) -> TrainingDataset:
    """Join `features`, `labels` and (if given) this `symbol`'s rows of `xs_ranks` on timestamp.

    target "take_profit": y = 1 where the triple-barrier label is +1 (take-profit hit first), else 0,
    with t1 the triple-barrier outcome time; "fixed_horizon": y = label_fh, t1 = t1_fh;
    "binary_outperformance": y = label_out (beat the benchmark), t1 = t1_out; "multi_class":
    y_class = label_mc (0 .. K-1, return buckets; K = the labels' largest class + 1), y = 1 for
    the classes above the middle one (buy, strong buy of 5), t1 = t1_mc. Rows are
    dropped, and counted, in this order: warm-up rows (is_warm false), rows without the target label
    (or with a null sample_weight: the pipeline's weights are triple-barrier uniquenesses, null where
    that label is), then rows with a null or non-finite feature (e.g. a multi-timeframe column before
    the first higher bar closed, or a timestamp with no cross-sectional rank). Without a
    sample_weight column every row weighs 1.0.

    Feature columns are every column of `features` but timestamp, is_warm and EXCLUDED_FEATURES,
    then the xs_rank_* columns (xs_n_symbols describes the universe, not the bar, and is left out).
    """
    if target not in _TARGET_COLUMNS:
        raise DataValidationError(
            "build_training_dataset", f"unknown target {target!r}; expected one of {TARGETS}"
        )
    label_col, t1_col = _TARGET_COLUMNS[target]
    _require(features, ["timestamp", "is_warm"], "build_training_dataset(features)")
    _require(
        labels, ["timestamp", label_col, t1_col], f"build_training_dataset(labels) for {target}"
    )
    unordered = (features.get_column("timestamp").diff() <= timedelta(0)).arg_true()
    if len(unordered):
        raise DataValidationError(
            "build_training_dataset(features)",
            "timestamps must be strictly increasing",
            row=int(unordered[0]),
        )
    _require_unique_timestamps(labels, "build_training_dataset(labels)")
    clash = sorted(_LABEL_FRAME_COLUMNS.intersection(features.columns))
    if clash:
        raise DataValidationError(
            "build_training_dataset(features)", f"holds label columns {clash}; pass them in labels"
        )
    feature_columns = [
        c for c in features.columns if c not in ("timestamp", "is_warm", *EXCLUDED_FEATURES)
    ]
    frame = features
    if xs_ranks is not None:
        ranks = _symbol_ranks(xs_ranks, symbol)
        rank_columns = ranks.columns[1:]
        frame = frame.join(ranks, on="timestamp", how="left", maintain_order="left")
        feature_columns += rank_columns
    not_numeric = [c for c in feature_columns if not frame.schema[c].is_numeric()]
    if not_numeric:
        raise DataValidationError(
            "build_training_dataset(features)",
            f"feature columns {not_numeric} are not numeric",
            detail=", ".join(f"{c}: {frame.schema[c]}" for c in not_numeric),
        )

    outcomes = [c for c in OUTCOME_COLUMNS if c in labels.columns]
    weight = pl.col("sample_weight") if "sample_weight" in labels.columns else pl.lit(1.0)
    label_part = labels.select(
        "timestamp",
        pl.col(t1_col).alias("_t1"),
        pl.col(label_col).alias("_target"),
        weight.cast(pl.Float64).alias("_weight"),
        *(pl.col(c).alias(f"_out_{c}") for c in outcomes),
    )
    frame = frame.join(label_part, on="timestamp", how="left", maintain_order="left")

    warm = pl.col("is_warm").fill_null(False)
    labelled = pl.col("_target").is_not_null() & pl.col("_weight").is_not_null()
    complete = pl.all_horizontal(
        [pl.col(c).is_finite().fill_null(False) for c in feature_columns] or [pl.lit(True)]
    )
    flags = frame.select(
        warm.alias("w"), (warm & labelled).alias("wl"), (warm & labelled & complete).alias("keep")
    )
    n_warm, n_labelled, n_kept = (int(flags.get_column(c).sum()) for c in ("w", "wl", "keep"))

    target_y = (pl.col("_target") == 1) if target == "take_profit" else pl.col("_target")
    by_class = []
    if target == "multi_class":
        # y is the "up" side (a class above the middle one) that signals and evaluation trade;
        # the classes themselves are y_class, what a multi-class model is fitted on
        n_classes = int(labels.get_column(label_col).max() or 0) + 1
        target_y = pl.col("_target") * 2 > n_classes - 1
        by_class = [pl.col("_target").cast(pl.Int8).alias(CLASS_COLUMN)]
    out = frame.filter(flags.get_column("keep")).select(
        "timestamp",
        pl.col("timestamp").alias("t0"),
        pl.col("_t1").alias("t1"),
        *feature_columns,
        target_y.cast(pl.Int8).alias("y"),
        *by_class,
        pl.col("_weight").alias("sample_weight"),
        *(pl.col(f"_out_{c}").alias(c) for c in outcomes),
    )
    counts: dict[str, int | float] = {
        "rows_in": frame.height,
        "dropped_warmup": frame.height - n_warm,
        "dropped_unlabelled": n_warm - n_labelled,
        "dropped_missing_features": n_labelled - n_kept,
        "rows_out": n_kept,
        "positive_rate": float(out.get_column("y").mean() or 0.0),
    }
    return TrainingDataset(out, feature_columns, counts, target, symbol)


def build_global_dataset(datasets: dict[str, TrainingDataset]) -> TrainingDataset:
    """The union of several symbols' datasets (same target and feature columns), with a `symbol`
    column after timestamp, sorted by timestamp then symbol.

    The symbol is not a feature: the global model learns one mapping from scale-free features to
    outcomes, shared by every symbol. Because rows are in time order, make_splits on this frame holds
    out the latest period of every symbol at once, and purges by time across symbols: a row of one
    symbol whose label span overlaps a test span of another is purged too. That is conservative, and
    right for correlated assets, whose outcomes over the same hours are not independent.
    Counts are summed over symbols (positive_rate recomputed) and `symbols` is their number.
    """
    where = "build_global_dataset"
    if not datasets:
        raise DataValidationError(where, "no datasets given")
    items = list(datasets.items())
    first_symbol, first = items[0]
    for symbol, ds in items[1:]:
        if ds.target != first.target:
            raise DataValidationError(
                where,
                f"symbol {symbol!r} has target {ds.target!r} but {first_symbol!r} has {first.target!r}",
            )
        if set(ds.feature_columns) != set(first.feature_columns):
            extra = sorted(set(ds.feature_columns) - set(first.feature_columns))
            lacking = sorted(set(first.feature_columns) - set(ds.feature_columns))
            raise DataValidationError(
                where,
                f"symbol {symbol!r} has different feature columns than {first_symbol!r}",
                detail=f"extra {extra}, missing {lacking}",
            )
    for symbol, ds in items:
        if "symbol" in ds.frame.columns:
            raise DataValidationError(where, f"dataset {symbol!r} already has a symbol column")
    columns = first.frame.columns
    frame = pl.concat(
        [
            ds.frame.select(columns[0], pl.lit(s, dtype=pl.String).alias("symbol"), *columns[1:])
            for s, ds in items
        ]
    ).sort("timestamp", "symbol", maintain_order=True)
    counts: dict[str, int | float] = {
        key: sum(int(ds.counts[key]) for _, ds in items)
        for key in ("rows_in", "dropped_warmup", "dropped_unlabelled", "dropped_missing_features")
    }
    counts["rows_out"] = frame.height
    counts["positive_rate"] = float(frame.get_column("y").mean() or 0.0)
    counts["symbols"] = len(items)
    return TrainingDataset(frame, list(first.feature_columns), counts, first.target, None)


def dataset_fingerprint(frame: pl.DataFrame) -> str:
    """A short content hash of a dataset frame (schema and values): its data version."""
    return frame_fingerprint(frame)


def dataset_from_frame(frame: pl.DataFrame, *, symbol: str | None = None) -> TrainingDataset:
    """The TrainingDataset of a stored `training_dataset` frame (feature columns recovered from its
    columns, the target from its constant `target` column; counts describe the stored rows only)."""
    reserved = {
        "timestamp",
        "symbol",
        "t0",
        "t1",
        "y",
        CLASS_COLUMN,
        "sample_weight",
        "target",
        *OUTCOME_COLUMNS,
    }
    features = [c for c in frame.columns if c not in reserved]
    target: Target = (
        frame["target"][0] if "target" in frame.columns and frame.height else "take_profit"
    )
    positive = float(frame["y"].mean()) if frame.height else 0.0
    counts: dict[str, int | float] = {
        "rows_in": frame.height,
        "dropped_warmup": 0,
        "dropped_unlabelled": 0,
        "dropped_missing_features": 0,
        "rows_out": frame.height,
        "positive_rate": positive,
    }
    return TrainingDataset(frame, features, counts, target, symbol)
