"""False promotions and power of the full promotion gate stack, without Dagster.

    python benchmarks/bench_false_promotion.py [--null 200] [--planted 40] [--jobs 2]

Each partition-trial runs what the pipeline runs for one symbol x timeframe, as plain library calls:
synthetic bars (2023-01-01 .. the demo's pinned end, 2026-06-30), features with the coarser
timeframes' snapshot, triple-barrier labels, the training dataset, purged 5-fold splits with the
latest 20 % held out, LightGBM with cross-validation and calibration on out-of-fold predictions,
the long and short decision thresholds chosen on out-of-fold predictions, then the evaluation:
every trial (threshold grid point) backtested on the out-of-fold window, per-fold metrics, DSR, PBO,
the volatility-targeted hold-out backtest, MinTRL, and `evaluate_gates` with the default GateConfig
(no champion). Every backtest trades both sides as the pipeline serves them (`TradeRules`).

Null partition-trials are random walks (`random_walk=True`: no planted edge, no regime drift):
crypto-like 4h and 1d bars, and equity-like (15-40 % annual volatility, session calendar) 1h and 1d
bars, each with its own seed. Planted partition-trials use the synthetic source's planted
mean reversion at several strengths (kappa), the demo's among them, on crypto-like 1h and 4h bars
(the power), plus equity-like 1h/4h ones at the demo's strength (reported apart). Prints the false
promotion rate, the power per strength, and for each gate how often it failed, and how often it
was the only gate that failed (what the stack would let through without it). Exit status 1 when
the false promotion rate exceeds 1 % or the power at the demo's strength is below 50 %.

LightGBM here has 100 trees at learning rate 0.1 (the pipeline's default is 200 at 0.05) to keep
the run within a few minutes; the gates see the same kind of model.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from quant_assets.lib.calendars import annualization_kind
from quant_assets.lib.datasets import TrainingDataset, build_training_dataset
from quant_assets.lib.features import (
    compute_features,
    cross_sectional_ranks,
    multi_timeframe_snapshot,
)
from quant_assets.lib.labels import build_labels
from quant_assets.lib.ohlcv import bars_for_timeframe
from quant_assets.lib.performance import annualization
from quant_assets.lib.promotion import GateConfig, evaluate_gates
from quant_assets.lib.signals import choose_long_threshold
from quant_assets.lib.sources.synthetic import KAPPA, SyntheticSource
from quant_assets.lib.splits import SplitConfig, make_splits
from quant_assets.lib.training import ModelConfig, TrainingResult, train_with_cv
from quant_assets.lib.trials import (
    ConfigTrials,
    TradeRules,
    holdout_scores,
    selection_evidence,
    selection_stats,
    training_trial_record,
)

START = datetime(2023, 1, 1, tzinfo=UTC)
DEMO_END = datetime(2026, 6, 30, tzinfo=UTC)
HIGHER = {"1h": ("4h", "1d"), "4h": ("1d",), "1d": ()}
SPLITS = SplitConfig(scheme="purged_kfold", holdout_fraction=0.2, n_splits=5, embargo=0.01)
MODEL = ModelConfig(params={"n_estimators": 100, "learning_rate": 0.1})
#: (symbol, timeframe) kinds of the null trials: crypto-like and equity-like (session) series
NULL_KINDS = (("BTCUSDT", "4h"), ("ETHUSDT", "1d"), ("SPY", "1h"), ("AAPL", "1d"))
#: planted partitions whose edge clears costs at the demo's strength: crypto-like 1h and 4h bars
PLANTED_KINDS = (("BTCUSDT", "4h"), ("ETHUSDT", "4h"), ("ETHUSDT", "1h"), ("BTCUSDT", "1h"))
#: equity-like planted partitions (the session calendar's overnight gaps drown most of the planted
#: edge): reported at the demo's strength, not counted in the power
EQUITY_KINDS = (("SPY", "1h"), ("AAPL", "4h"))


def _features(source: SyntheticSource, symbol: str, timeframe: str) -> tuple[pl.DataFrame, ...]:
    """Bars and features (with the coarser timeframes' snapshot) of one partition."""
    bars = bars_for_timeframe(source, symbol, timeframe).frame
    base = compute_features(bars, timeframe)
    higher = {
        tf: compute_features(bars_for_timeframe(source, symbol, tf).frame, tf)
        for tf in HIGHER[timeframe]
    }
    snapshot = multi_timeframe_snapshot(base.select("timestamp"), timeframe, higher)
    return bars, base.join(snapshot, on="timestamp", how="left", maintain_order="left")


def partition_trial(
    symbol: str, timeframe: str, seed: int, random_walk: bool, kappa: float
) -> dict[str, Any]:
    """One partition through training, evaluation and the gates; its decision and gate results."""
    source = SyntheticSource(
        seed=seed, start=START, end=DEMO_END, random_walk=random_walk, kappa=kappa
    )
    bars, features = _features(source, symbol, timeframe)
    dataset = build_training_dataset(features, build_labels(bars, features["atr_14"], timeframe))
    row = {"symbol": symbol, "timeframe": timeframe, "seed": seed, "kappa": kappa}
    return row | gated_decision(bars, features, dataset, timeframe, MODEL)


def gated_decision(
    bars: pl.DataFrame,
    features: pl.DataFrame,
    dataset: TrainingDataset,
    timeframe: str,
    model: ModelConfig,
) -> dict[str, Any]:
    """Train, evaluate and gate one partition's dataset as the pipeline does."""
    frame = dataset.frame
    plan = make_splits(
        SPLITS.scheme,
        frame.height,
        frame["t0"],
        frame["t1"],
        holdout_fraction=SPLITS.holdout_fraction,
        **SPLITS.scheme_params(),
    )
    result = train_with_cv(dataset, plan, model)
    if not isinstance(result, TrainingResult):
        return {"promote": False, "failed": ["skipped"]}
    oof_ret = frame["ret"].gather(result.oof["row"]).to_numpy()
    prob = result.oof["prob_cal"].to_numpy()
    threshold = choose_long_threshold(prob, oof_ret)
    record = training_trial_record("bench", {}, prob, oof_ret, threshold)
    ppy = annualization(timeframe, annualization_kind(bars, timeframe))
    rules = TradeRules()
    atr = features.select("timestamp", "atr_14")
    trials = ConfigTrials(
        "bench",
        "lightgbm",
        result.oof.select("timestamp", "fold", pl.col("prob_cal").alias("prob")),
        record["eligible_thresholds"],
        threshold,
        record["chosen_threshold_short"],
    )
    evidence = selection_evidence(trials, [], bars, atr, timeframe, ppy, rules)
    priced = result.holdout.select("timestamp").join(
        bars.select("timestamp", "close").join(atr, on="timestamp"), on="timestamp"
    )
    holdout = result.holdout.join(priced.select("timestamp"), on="timestamp")
    metrics, backtest = holdout_scores(
        holdout["y"].to_numpy(),
        holdout["prob_cal"].to_numpy(),
        priced,
        bars,
        threshold,
        timeframe,
        ppy,
        rules,
        evidence.n_trials,
        evidence.trials_variance,
        threshold_short=rules.short_threshold(trials.short, threshold),
    )
    config = GateConfig()
    stats = selection_stats(evidence, backtest, ppy, config)
    decision = evaluate_gates(metrics, None, config, selection=stats)
    return {
        "promote": decision.promote,
        "failed": [g.name for g in decision.gates if not g.passed],
        "n_trials": evidence.n_trials,
        "dsr": evidence.dsr,
        "pbo": stats.pbo if stats.pbo is not None else math.nan,
        "folds": evidence.profitable_fold_share,
        "holdout_sharpe": metrics["sharpe"],
        "min_trl": stats.min_track_record,
        "track": stats.track_record,
        "max_dd": metrics["max_drawdown"],
        "sortino": metrics["sortino"],
        "trades": metrics["trade_count"],
        "short_trades": metrics["short_trades"],
    }


DEMO_SYMBOLS, DEMO_TIMEFRAMES = ("BTCUSDT", "ETHUSDT", "SPY", "AAPL"), ("1h", "4h", "1d")


def demo_decisions() -> pl.DataFrame:
    """The demo's 12 partitions (seed 7, 2023-01-01 .. the pinned end, the pipeline's default
    LightGBM, cross-sectional ranks included) through the same gates: what `quant-assets demo`
    should decide."""
    source = SyntheticSource(seed=7, start=START, end=DEMO_END)
    rows = []
    for timeframe in DEMO_TIMEFRAMES:
        built = {s: _features(source, s, timeframe) for s in DEMO_SYMBOLS}
        ranks = cross_sectional_ranks({s: f for s, (_, f) in built.items()})
        for symbol, (bars, features) in built.items():
            labels = build_labels(bars, features["atr_14"], timeframe)
            dataset = build_training_dataset(features, labels, ranks, symbol=symbol)
            decided = gated_decision(bars, features, dataset, timeframe, ModelConfig())
            rows.append(
                {
                    "partition": f"{symbol}|{timeframe}",
                    "promote": decided["promote"],
                    "failed": ", ".join(decided["failed"]),
                    **{
                        k: round(float(decided[k]), 3)
                        for k in ("n_trials", "dsr", "pbo", "folds", "holdout_sharpe", "max_dd")
                        if k in decided
                    },
                }
            )
    return pl.DataFrame(rows)


def _run(args: tuple) -> dict[str, Any]:
    return partition_trial(*args)


def _gate_table(rows: list[dict[str, Any]]) -> str:
    failed = Counter(g for r in rows for g in r["failed"])
    only = Counter(r["failed"][0] for r in rows if len(r["failed"]) == 1)
    names = sorted(failed, key=lambda g: -failed[g])
    lines = [f"    {'gate':<18} {'failed':>8} {'only gate failed':>17}"]
    lines += [f"    {g:<18} {failed[g]:>8} {only.get(g, 0):>17}" for g in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--null", type=int, default=200, help="random-walk partition-trials")
    parser.add_argument("--planted", type=int, default=24, help="partition-trials per strength")
    parser.add_argument(
        "--kappas", type=float, nargs="+", default=[-0.15, KAPPA, -0.35], help="planted strengths"
    )
    parser.add_argument("--equity", type=int, default=12, help="equity-like planted trials")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="print every partition-trial")
    parser.add_argument(
        "--demo", action="store_true", help="only the demo's 12 partitions at the pinned end"
    )
    args = parser.parse_args(argv)
    if args.demo:
        table = demo_decisions()
        with pl.Config(tbl_rows=20, fmt_str_lengths=60, tbl_width_chars=160):
            print(table)
        print(f"{int(table['promote'].sum())} of {table.height} promoted")
        return 0 if table["promote"].any() else 1
    kappas = list(dict.fromkeys(args.kappas))
    null_jobs = [(*NULL_KINDS[i % len(NULL_KINDS)], 1000 + i, True, 0.0) for i in range(args.null)]
    planted_jobs = [
        (*PLANTED_KINDS[i % len(PLANTED_KINDS)], 2000 + i, False, kappa)
        for kappa in kappas
        for i in range(args.planted)
    ]
    equity_jobs = [
        (*EQUITY_KINDS[i % len(EQUITY_KINDS)], 3000 + i, False, KAPPA) for i in range(args.equity)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(_run, null_jobs + planted_jobs + equity_jobs, chunksize=2))
    elapsed = time.perf_counter() - started
    null = rows[: len(null_jobs)]
    planted = rows[len(null_jobs) : len(null_jobs) + len(planted_jobs)]
    equity = rows[len(null_jobs) + len(planted_jobs) :]
    false = sum(r["promote"] for r in null)
    print(f"{len(rows)} partition-trials in {elapsed:.0f} s ({args.jobs} processes)\n")
    print(
        f"random walks: {false} of {len(null)} promoted, false promotion rate "
        f"{false / max(len(null), 1):.2%} (bar <= 1 %)"
    )
    for kind in NULL_KINDS:
        some = [r for r in null if (r["symbol"], r["timeframe"]) == kind]
        print(f"  {kind[0]} {kind[1]}: {sum(r['promote'] for r in some)} of {len(some)}")
    print(_gate_table(null))
    for kappa in kappas:
        some = [r for r in planted if r["kappa"] == kappa]
        if not some:  # --planted 0: the false promotion rate alone
            continue
        won = sum(r["promote"] for r in some)
        demo = " (the demo's strength)" if kappa == KAPPA else ""
        print(f"\nplanted kappa {kappa}{demo}: power {won} of {len(some)} = {won / len(some):.0%}")
        for kind in PLANTED_KINDS:
            part = [r for r in some if (r["symbol"], r["timeframe"]) == kind]
            print(f"  {kind[0]} {kind[1]}: {sum(r['promote'] for r in part)} of {len(part)}")
        print(_gate_table(some))
    if equity:
        won = sum(r["promote"] for r in equity)
        print(
            f"\nequity-like planted at kappa {KAPPA} (not in the power): {won} of {len(equity)} "
            "promoted"
        )
        print(_gate_table(equity))
    if args.verbose:
        print(pl.DataFrame([{k: v for k, v in r.items() if k != "failed"} for r in rows]))
    demo_power = [r["promote"] for r in planted if r["kappa"] == KAPPA]
    ok = false / max(len(null), 1) <= 0.01 and (not demo_power or np.mean(demo_power) >= 0.5)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
