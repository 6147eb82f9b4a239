"""Complete against incremental retraining of one symbol's model after new bars arrive.

    python benchmarks/bench_retrain.py [--days 730] [--new-days 7] [--extra-trees 20]

Builds the training dataset of synthetic BTCUSDT 1h bars (features, 4h/1d snapshot, default
triple-barrier labels, as the pipeline's assets do) over --days days, trains the champion with
`train_with_cv` (LightGBM defaults, 5 purged folds, 1% embargo, last 20% held out), then rebuilds
the dataset with --new-days more days of bars and times a complete retrain (`train_with_cv` again)
against an incremental one (`continue_training` of the champion, --extra-trees trees). Best of
--repeat runs. Prints the times, their ratio, and the hold-out AUC / ECE of every model on the
new hold-out (the champion as it was, too), which no model was fitted on.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Any

from bench_features_labels import best_of  # run as a script: benchmarks/ is on sys.path

from quant_assets.lib.datasets import TrainingDataset, build_training_dataset
from quant_assets.lib.features import compute_features, multi_timeframe_snapshot
from quant_assets.lib.labels import build_labels
from quant_assets.lib.metrics import classification_metrics
from quant_assets.lib.ohlcv import bars_for_timeframe
from quant_assets.lib.sources.synthetic import DEFAULT_START, SyntheticSource
from quant_assets.lib.splits import SplitConfig, SplitPlan, make_splits
from quant_assets.lib.training import (
    ModelConfig,
    TrainingResult,
    continue_training,
    predict_proba,
    train_with_cv,
)

SYMBOL, TIMEFRAME, HIGHER = "BTCUSDT", "1h", ("4h", "1d")
# the pipeline's defaults (defs/models.py SplitsConfig)
SPLITS = SplitConfig(scheme="purged_kfold", holdout_fraction=0.2, n_splits=5, embargo=0.01)


def training_dataset(days: float, seed: int) -> TrainingDataset:
    """The training dataset of the synthetic source's first `days` days of 1h bars."""
    source = SyntheticSource(
        seed=seed, start=DEFAULT_START, end=DEFAULT_START + timedelta(days=days)
    )
    bars = bars_for_timeframe(source, SYMBOL, TIMEFRAME).frame
    base = compute_features(bars, TIMEFRAME)
    higher = {
        tf: compute_features(bars_for_timeframe(source, SYMBOL, tf).frame, tf) for tf in HIGHER
    }
    snapshot = multi_timeframe_snapshot(base.select("timestamp"), TIMEFRAME, higher)
    features = base.join(snapshot, on="timestamp", how="left", maintain_order="left")
    return build_training_dataset(features, build_labels(bars, base["atr_14"], TIMEFRAME))


def split_plan(dataset: TrainingDataset) -> SplitPlan:
    frame = dataset.frame
    return make_splits(
        SPLITS.scheme,
        frame.height,
        frame["t0"],
        frame["t1"],
        holdout_fraction=SPLITS.holdout_fraction,
        **SPLITS.scheme_params(),
    )


def trained(result: Any, what: str) -> TrainingResult:
    if not isinstance(result, TrainingResult):
        raise SystemExit(f"{what} was skipped: {result.reason}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=float, default=730, help="days of bars of the champion")
    parser.add_argument("--new-days", type=float, default=7, help="days of bars added after it")
    parser.add_argument(
        "--extra-trees", type=int, default=5, help="trees the incremental retrain adds"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per step (best is kept)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    config = ModelConfig()  # LightGBM, DEFAULT_PARAMS, isotonic calibration
    old = training_dataset(args.days, args.seed)
    new = training_dataset(args.days + args.new_days, args.seed)
    old_plan, new_plan = split_plan(old), split_plan(new)
    print(
        f"{SYMBOL} {TIMEFRAME}: champion on {args.days:g} days ({old.frame.height:,} rows, "
        f"{old_plan.dev_idx.size:,} development), then {args.new_days:g} more days "
        f"({new.frame.height - old.frame.height:,} rows); LightGBM "
        f"{config.model_params()['n_estimators']} trees, {SPLITS.n_splits} purged folds; "
        f"best of {args.repeat}\n"
    )

    champion_seconds, champion = best_of(lambda: train_with_cv(old, old_plan, config), args.repeat)
    champion = trained(champion, "the champion's training")
    trained_through = old.frame["timestamp"].gather(old_plan.dev_idx).max()
    complete_seconds, complete = best_of(lambda: train_with_cv(new, new_plan, config), args.repeat)
    complete = trained(complete, "the complete retrain")
    incremental_seconds, incremental = best_of(
        lambda: continue_training(
            new,
            new_plan,
            champion.model,
            champion.calibrator,
            trained_through,
            feature_columns=champion.feature_columns,
            extra_trees=args.extra_trees,
        ),
        args.repeat,
    )
    incremental = trained(incremental, "the incremental retrain")

    hold = new_plan.holdout_idx
    y_hold = new.frame["y"].gather(hold).to_numpy()
    held_out = new.frame[hold]
    as_was = {
        f"holdout_{k}{suffix}": v
        for calibrator, suffix in ((None, ""), (champion.calibrator, "_calibrated"))
        for k, v in classification_metrics(
            y_hold, predict_proba(champion.model, calibrator, held_out, champion.feature_columns)
        ).items()
    }
    assert incremental.increment is not None  # continue_training sets it
    rows = [
        ("champion, not retrained", None, "-", champion.model.booster_.num_trees(), as_was),
        (
            "complete (train_with_cv)",
            complete_seconds,
            f"{complete.n_dev:,}",
            complete.model.booster_.num_trees(),
            complete.holdout_metrics,
        ),
        (
            "incremental (continue)",
            incremental_seconds,
            f"{incremental.increment.n_new_rows:,}",
            incremental.increment.total_trees,
            incremental.holdout_metrics,
        ),
    ]
    print(f"champion (train_with_cv on {old.frame.height:,} rows): {champion_seconds:.2f} s\n")
    print(
        f"hold-out: the last {hold.size:,} rows "
        f"({new.frame['timestamp'][int(hold[0])]:%Y-%m-%d %H:%M} on), fitted by no model"
    )
    print(
        f"  {'model':<26}{'best (s)':>9}{'rows fitted':>12}{'trees':>7}{'AUC':>8}"
        f"{'ECE raw':>9}{'ECE cal':>9}"
    )
    for name, seconds, fitted, trees, m in rows:
        shown = "-" if seconds is None else f"{seconds:.2f}"
        print(
            f"  {name:<26}{shown:>9}{fitted:>12}{trees:>7}{m['holdout_roc_auc']:>8.4f}"
            f"{m['holdout_ece']:>9.4f}{m['holdout_ece_calibrated']:>9.4f}"
        )
    print(
        f"\ncomplete / incremental time: {complete_seconds / incremental_seconds:,.1f}x\n"
        f"the increment fits the development rows after {trained_through:%Y-%m-%d %H:%M} (the "
        "champion's last one):\nthe hold-out moved forward with the new bars, so these were the "
        "champion's first hold-out rows;\nthe increment keeps the champion's calibrator"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
