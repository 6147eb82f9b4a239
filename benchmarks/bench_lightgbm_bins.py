"""LightGBM histogram bins: CPU of the challenger's training against its out-of-fold quality.

    PYTHONPATH=. python benchmarks/bench_lightgbm_bins.py [--symbols 8] [--bins 255,127,63]

Builds the pipeline's training datasets on the synthetic source (the benchmark universe, 1h, 4h
and 1d, three years; features with their multi-timeframe snapshot, cross-sectional ranks,
triple-barrier labels, purged 5-fold with a 20 % hold-out, as `bench_pipeline.py`'s reference),
then runs `lib.training.train_with_cv` with LightGBM at each `max_bin`, everything else at
`DEFAULT_PARAMS`. Each setting is timed twice and the second pass kept (the first warms caches).
Prints per setting the CPU-seconds of cross-validation plus the final fit, the mean out-of-fold
and hold-out AUC and log loss, and per timeframe; then each setting's paired difference in AUC
from the first one (mean and standard deviation over the partitions).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def datasets(n_symbols: int, timeframes: list[str]) -> dict[tuple[str, str], tuple]:
    """(dataset, split plan) per symbol and timeframe, built as the pipeline builds them."""
    from bench_pipeline import _secs, universe

    from quant_assets.lib.datasets import build_training_dataset
    from quant_assets.lib.features import (
        compute_features,
        cross_sectional_ranks,
        multi_timeframe_snapshot,
    )
    from quant_assets.lib.labels import build_labels
    from quant_assets.lib.ohlcv import bars_for_timeframe
    from quant_assets.lib.sources.synthetic import SyntheticSource
    from quant_assets.lib.splits import make_splits

    symbols = universe(n_symbols)
    source = SyntheticSource(
        seed=7, start=datetime(2023, 1, 1, tzinfo=UTC), end=datetime(2025, 12, 31, tzinfo=UTC)
    )
    bars = {(s, t): bars_for_timeframe(source, s, t).frame for s in symbols for t in timeframes}
    own = {key: compute_features(frame, key[1]) for key, frame in bars.items()}
    full = {}
    for (s, t), base in own.items():
        coarser = {u: own[(s, u)] for u in timeframes if _secs(u) > _secs(t)}
        snapshot = multi_timeframe_snapshot(base.select("timestamp"), t, coarser)
        full[(s, t)] = base.join(snapshot, on="timestamp", how="left", maintain_order="left")
    ranks = {t: cross_sectional_ranks({s: full[(s, t)] for s in symbols}) for t in timeframes}
    out = {}
    for (s, t), features in full.items():
        labels = build_labels(bars[(s, t)], features["atr_14"], t)
        mine = ranks[t].filter(ranks[t]["symbol"] == s)
        dataset = build_training_dataset(features, labels, mine, symbol=s)
        frame = dataset.frame
        plan = make_splits("purged_kfold", frame.height, frame["t0"], frame["t1"],
                           holdout_fraction=0.2, n_splits=5, embargo=0.01)  # fmt: skip
        out[(s, t)] = (dataset, plan)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=8)
    parser.add_argument("--timeframes", default="1h,4h,1d")
    parser.add_argument("--bins", default="255,127,63", help="max_bin settings, first = baseline")
    args = parser.parse_args()
    from quant_assets.lib.processes import run_process_env

    os.environ.update(run_process_env())  # one native math thread, as the run processes
    from quant_assets.lib.training import ModelConfig, train_with_cv

    timeframes = args.timeframes.split(",")
    data = datasets(args.symbols, timeframes)
    bins = [int(b) for b in args.bins.split(",")]
    print(f"{len(data)} partitions ({args.symbols} symbols x {', '.join(timeframes)}); "
          "purged 5-fold + final fit per partition, LightGBM one thread")  # fmt: skip
    rows: dict[int, list[tuple]] = {}
    for _attempt in range(2):  # the second pass is kept
        for b in bins:
            rows[b] = []
            for key, (dataset, plan) in data.items():
                started = time.process_time()
                result = train_with_cv(
                    dataset, plan, ModelConfig("lightgbm", 42, params={"max_bin": b})
                )
                seconds = time.process_time() - started
                m, h = result.overall_metrics, result.holdout_metrics
                rows[b].append((key[1], seconds, m["oof_roc_auc"], m["oof_log_loss"],
                                h.get("holdout_roc_auc", np.nan), h.get("holdout_log_loss", np.nan)))  # fmt: skip
    print(f"{'max_bin':>7}  {'CPU-s':>6}  {'oof AUC':>7}  {'oof logloss':>11}  "
          f"{'hold-out AUC':>12}  {'hold-out logloss':>16}")  # fmt: skip
    for b in bins:
        a = np.array([r[1:] for r in rows[b]], dtype=float)
        print(f"{b:>7}  {a[:, 0].sum():6.1f}  {a[:, 1].mean():7.4f}  {a[:, 2].mean():11.4f}  "
              f"{np.nanmean(a[:, 3]):12.4f}  {np.nanmean(a[:, 4]):16.4f}")  # fmt: skip
        for t in timeframes:
            c = np.array([r[1:] for r in rows[b] if r[0] == t], dtype=float)
            print(f"{t:>7}  {c[:, 0].sum():6.1f}  {c[:, 1].mean():7.4f}  {c[:, 2].mean():11.4f}  "
                  f"{np.nanmean(c[:, 3]):12.4f}  {np.nanmean(c[:, 4]):16.4f}")  # fmt: skip
    base = np.array([r[1:] for r in rows[bins[0]]], dtype=float)
    for b in bins[1:]:
        a = np.array([r[1:] for r in rows[b]], dtype=float)
        oof, hold = a[:, 1] - base[:, 1], a[:, 3] - base[:, 3]
        print(f"max_bin {b} against {bins[0]}: CPU {a[:, 0].sum() / base[:, 0].sum() - 1:+.0%}; "
              f"oof AUC {oof.mean():+.4f} (sd {oof.std():.4f}), hold-out AUC "
              f"{np.nanmean(hold):+.4f} (sd {np.nanstd(hold):.4f}) over {len(oof)} partitions")  # fmt: skip


if __name__ == "__main__":
    main()
