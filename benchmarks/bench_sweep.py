"""A 50-trial Optuna TPE sweep on one 1h partition of three years, against the default parameters.

    python benchmarks/bench_sweep.py [--days 1095] [--trials 50] [--model-type lightgbm]
                                     [--objective oof_log_loss] [--timeout SECONDS]

Builds the training dataset of synthetic BTCUSDT 1h bars over --days days (features, 4h/1d
snapshot, default triple-barrier labels, as the assets do; no lookback window: the whole three
years), the pipeline's default split plan (5 purged folds, 1 % embargo, latest 20 % held out),
then runs `lib.sweeps.run_sweep` with --trials trials in an SQLite Optuna storage (as the pipeline
stores studies beside its trading tables). Prints the wall time per trial (min / median / max) and
in total, the objective of the best trial against the default parameters' (same plan, same
objective), and both models' hold-out log loss and AUC, which no trial was scored on: the
selection's gain out of sample, not only on the folds it was chosen on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_retrain import split_plan, trained, training_dataset  # benchmarks/ is on sys.path

from quant_assets.lib.sweeps import objective_value, run_sweep
from quant_assets.lib.training import ModelConfig, train_with_cv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=3 * 365)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--model-type", default="lightgbm")
    parser.add_argument(
        "--objective", default="oof_log_loss", choices=("oof_log_loss", "oof_sharpe")
    )
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    dataset = training_dataset(args.days, args.seed)
    plan = split_plan(dataset)
    ret = dataset.frame["ret"].to_numpy()
    print(
        f"dataset: {dataset.frame.height} rows x {len(dataset.feature_columns)} features "
        f"({args.days:g} days of {dataset.symbol or 'BTCUSDT'} 1h), {len(plan.folds)} folds, "
        f"{plan.holdout_idx.size} hold-out rows; built in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    t1 = time.perf_counter()
    default = trained(
        train_with_cv(dataset, plan, ModelConfig(model_type=args.model_type)), "defaults"
    )
    default_seconds = time.perf_counter() - t1
    default_value, _ = objective_value(default, ret[default.oof["row"].to_numpy()], args.objective)
    print(f"defaults: {args.objective} {default_value:.5f} in {default_seconds:.1f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{Path(tmp) / 'trading.db'}"
        done = []

        def progress(trial) -> None:
            done.append(trial)
            print(
                f"  trial {trial.number:2d}: {args.objective} {trial.value:.5f} "
                f"({trial.seconds:.1f} s)",
                flush=True,
            )

        result = run_sweep(
            dataset, plan, model_type=args.model_type, objective=args.objective,
            n_trials=args.trials, timeout=args.timeout, study_name="bench", storage_url=storage,
            on_trial=progress,
        )  # fmt: skip
    seconds = [t.seconds for t in result.trials]
    best = trained(
        train_with_cv(
            dataset, plan, ModelConfig(model_type=args.model_type, params=result.best_params)
        ),
        "best",
    )
    sign = -1 if result.direction == "minimize" else 1
    print()
    print(
        f"{len(result.trials)} trials in {result.seconds:.0f} s: per trial min "
        f"{min(seconds):.1f} s, median {statistics.median(seconds):.1f} s, max {max(seconds):.1f} s"
    )
    print(
        f"best trial {result.best_number}: {args.objective} {result.best_value:.5f} vs defaults "
        f"{default_value:.5f} (better by {sign * (result.best_value - default_value):+.5f})"
    )
    for name, r in (("defaults", default), ("best", best)):
        h = r.holdout_metrics
        print(
            f"hold-out {name:8s}: log loss {h['holdout_log_loss_calibrated']:.5f}, "
            f"auc {h['holdout_roc_auc']:.4f}, ece {h['holdout_ece_calibrated']:.4f}"
        )
    print(f"best parameters: {dict(sorted(result.best_params.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
