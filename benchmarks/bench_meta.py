"""Meta-layer speed on synthetic bars: `regimes` (rules and k-means), `primary_signals` and the
per-regime meta-learners, with per-row Python loops as references for the rule regime and the
breakout signal.

    python benchmarks/bench_meta.py [--bars 1000000] [--reference-bars 20000] [--meta-bars 30000]

Inputs are synthetic 1h BTCUSDT bars (`synthetic_bars`, fixed seed), `compute_features` and the
4h/1d `multi_timeframe_snapshot` (so the regime reads the daily slope and volatility, as the
pipeline does). Best of --repeat runs per step. The references run on the first --reference-bars
bars; the script exits with status 1 unless they match the vectorized output exactly there, and
prints the speed-up per bar against the vectorized time on --bars bars.
"""

from __future__ import annotations

import argparse
import bisect
import math
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import polars as pl
from bench_features_labels import best_of  # run as a script: benchmarks/ is on sys.path

from quant_assets.lib.calendars import calendar_for_symbol
from quant_assets.lib.features import compute_features, multi_timeframe_snapshot
from quant_assets.lib.labels import build_labels
from quant_assets.lib.meta import MetaConfig, meta_frame, train_meta_learners
from quant_assets.lib.ohlcv import resample_bars
from quant_assets.lib.primary import PrimaryConfig, primary_signals
from quant_assets.lib.regimes import RegimeConfig, regime_columns, regimes
from quant_assets.lib.sources.synthetic import DEFAULT_START, synthetic_bars

SYMBOL, TIMEFRAME, HIGHER = "BTCUSDT", "1h", ("4h", "1d")


def market_frames(n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(bars, features joined with the 4h/1d snapshot) of `n` synthetic hourly bars."""
    bars = synthetic_bars(
        SYMBOL, seed, DEFAULT_START, DEFAULT_START + timedelta(hours=n), TIMEFRAME
    )
    base = compute_features(bars, TIMEFRAME)
    calendar = calendar_for_symbol(SYMBOL)
    higher = {
        tf: compute_features(resample_bars(bars, TIMEFRAME, tf, calendar), tf) for tf in HIGHER
    }
    snapshot = multi_timeframe_snapshot(base.select("timestamp"), TIMEFRAME, higher)
    return bars, base.join(snapshot, on="timestamp", how="left", maintain_order="left")


def _quantile(ordered: list[float], q: float, min_history: int) -> float | None:
    """Linear-interpolation quantile of sorted values; None below min_history values."""
    n = len(ordered)
    if n < min_history:
        return None
    position = q * (n - 1)
    below = math.floor(position)
    fraction = position - below
    if fraction == 0.0:
        return ordered[below]
    return ordered[below] + (ordered[below + 1] - ordered[below]) * fraction


def _known(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def reference_rule_regimes(frame: pl.DataFrame, config: RegimeConfig) -> pl.DataFrame:
    """Rule regimes row by row (docs/meta_layer.md "Regimes"): expanding quantiles kept as sorted
    lists of the values seen so far (bisect.insort per row, no re-sort), then the rules."""
    slope_col, vol_col = regime_columns(frame, config)
    slopes, vols = frame[slope_col].to_list(), frame[vol_col].to_list()
    warm_flags = frame["is_warm"].to_list()
    seen_vol: list[float] = []
    seen_abs_slope: list[float] = []
    rows = []
    for raw_slope, raw_vol, is_warm in zip(slopes, vols, warm_flags, strict=True):
        slope, vol = _known(raw_slope), _known(raw_vol)
        if vol is not None:
            bisect.insort(seen_vol, vol)
        if slope is not None:
            bisect.insort(seen_abs_slope, abs(slope))
        low = _quantile(seen_vol, config.vol_low_quantile, config.min_history)
        high = _quantile(seen_vol, config.vol_high_quantile, config.min_history)
        scale = _quantile(seen_abs_slope, 0.5, config.min_history)
        bucket = None
        if vol is not None and low is not None:
            bucket = "low" if vol < low else "high" if vol > high else "mid"
        warm = bool(is_warm) and slope is not None and scale is not None and bucket is not None
        regime = "neutral"
        if warm:
            if scale == 0.0:  # 0/0 is no trend, x/0 an infinitely strong one
                z = 0.0 if slope == 0.0 else math.copysign(math.inf, slope)
            else:
                z = slope / scale
            k = config.high_vol_trend_k if bucket == "high" else config.trend_k
            if z > k:
                regime = "bull"
            elif z < -k:
                regime = "bear"
            elif abs(z) < config.range_k and bucket != "high":
                regime = "range"
        gate = warm and not (regime == "neutral" and bucket == "high")
        rows.append((regime, bucket, gate))
    regime, bucket, gate = zip(*rows, strict=True)
    return pl.DataFrame({"regime": regime, "vol_bucket": bucket, "gate": gate})


def reference_breakout(
    bars: pl.DataFrame, features: pl.DataFrame, config: PrimaryConfig
) -> pl.DataFrame:
    """The breakout primary row by row (docs/meta_layer.md "Primary signals"): close against the
    max high / min low of the `breakout_window` bars before, conf tanh(distance / atr / scale)."""
    high, low, close = bars["high"].to_list(), bars["low"].to_list(), bars["close"].to_list()
    atr = features["atr_14"].to_list()
    window = config.breakout_window
    sides, confs = [], []
    for i in range(len(close)):
        side, conf = 0, 0.0
        if i >= config.warmup - 1:
            top, bottom = max(high[i - window : i]), min(low[i - window : i])
            distance = close[i] - top if close[i] > top else bottom - close[i]
            side = 1 if close[i] > top else -1 if close[i] < bottom else 0
            if side:
                conf = (
                    1.0 if atr[i] == 0.0 else math.tanh(distance / atr[i] / config.breakout_scale)
                )
        sides.append(side)
        confs.append(conf)
    return pl.DataFrame(
        {"breakout_side": sides, "breakout_conf": confs},
        schema={"breakout_side": pl.Int8, "breakout_conf": pl.Float64},
    )


def _counts(column: pl.Series) -> str:
    counts = column.cast(pl.String).value_counts().sort(column.name).iter_rows()
    return ", ".join(f"{k}={v:,}" for k, v in counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bars", type=int, default=1_000_000, help="1h bars timed")
    parser.add_argument(
        "--reference-bars", type=int, default=20_000, help="first bars run by the references"
    )
    parser.add_argument(
        "--meta-bars", type=int, default=30_000, help="1h bars of the meta-learners' frame"
    )
    parser.add_argument(
        "--kmeans-train", type=float, default=0.7, help="k-means train_end, as a fraction of bars"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per step (best is kept)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    bars, frame = market_frames(args.bars, args.seed)
    print(
        f"{SYMBOL} {TIMEFRAME}: {bars.height:,} synthetic bars, features + {'/'.join(HIGHER)} "
        f"snapshot built in {time.perf_counter() - start:.2f} s; best of {args.repeat}\n"
    )
    train_end = frame["timestamp"][int(frame.height * args.kmeans_train)]
    rules, kmeans = RegimeConfig(), RegimeConfig(method="kmeans", train_end=train_end)
    primary_config = PrimaryConfig()
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("regimes (rules)", lambda: regimes(frame, rules)),
        (f"regimes (kmeans, {args.kmeans_train:.0%})", lambda: regimes(frame, kmeans)),
        ("primary_signals", lambda: primary_signals(bars, frame, primary_config)),
    ]
    print(f"{'bars':>10}  {'step':<26}{'best (s)':>10}{'bars/s':>14}")
    seconds: dict[str, float] = {}
    for name, fn in steps:
        seconds[name], _ = best_of(fn, args.repeat)
        print(
            f"{bars.height:>10,}  {name:<26}{seconds[name]:>10.3f}"
            f"{bars.height / seconds[name]:>14,.0f}"
        )

    n_ref = min(args.reference_bars, bars.height)
    sample_bars, sample = bars.head(n_ref), frame.head(n_ref)
    print(f"\nper-row Python references on the first {n_ref:,} bars")
    checks = [
        (
            "regimes (rules)",
            lambda: reference_rule_regimes(sample, rules),
            lambda: regimes(sample, rules).select("regime", "vol_bucket", "gate"),
        ),
        (
            "primary_signals",
            lambda: reference_breakout(sample_bars, sample, primary_config),
            lambda: primary_signals(sample_bars, sample, primary_config).select(
                "breakout_side", "breakout_conf"
            ),
        ),
    ]
    print(
        f"  {'step':<18}{'reference':>11}{'vectorized':>12}{'vectorized':>12}{'speed-up':>10}"
        f"\n  {'(us per bar)':<18}{f'{n_ref:,}':>11}{f'{n_ref:,}':>12}{f'{bars.height:,}':>12}"
        f"{f'{bars.height:,}':>10}  check"
    )
    agree = True
    for name, reference_fn, fast_fn in checks:
        ref_seconds, reference = best_of(reference_fn, 1)
        sample_seconds, fast = best_of(fast_fn, args.repeat)
        same = reference.cast(fast.schema).equals(fast)
        agree &= same
        per_ref, per_fast = ref_seconds / n_ref, seconds[name] / bars.height
        print(
            f"  {name:<18}{per_ref * 1e6:>11.2f}{sample_seconds / n_ref * 1e6:>12.3f}"
            f"{per_fast * 1e6:>12.3f}{per_ref / per_fast:>9,.1f}x"
            f"  {'identical' if same else 'DIFFERENT'} ({_counts(fast[fast.columns[0]])})"
        )
    print(
        "  rules: the reference does the whole rule classification (regime, vol_bucket, gate);\n"
        "  primary_signals: the reference does the breakout only, the vectorized time includes\n"
        "  trend and meanrev too; insort's cost per row grows with the history, so extrapolating\n"
        "  the reference per bar from the slice understates its cost on the full series"
    )

    n_meta = min(args.meta_bars, bars.height)
    meta_bars, meta_features = bars.head(n_meta), frame.head(n_meta)
    labels = build_labels(meta_bars, meta_features["atr_14"], TIMEFRAME)
    meta_input = meta_frame(
        meta_bars,
        meta_features,
        primary_signals(meta_bars, meta_features, primary_config),
        regimes(meta_features, rules),
        labels,
    )
    meta_config = MetaConfig(model_type="logistic")
    meta_seconds, report = best_of(
        lambda: train_meta_learners(meta_input, meta_config), args.repeat
    )
    print(
        f"\ntrain_meta_learners ({meta_config.model_type}, {meta_config.splits.n_splits} "
        f"{meta_config.splits.scheme} folds, {meta_config.calibration} calibration) on "
        f"{n_meta:,} bars ({report.data.height:,} usable rows): {meta_seconds:.2f} s; "
        "metrics of calibrated probabilities"
    )
    print(
        f"  {'regime':<9}{'status':<9}{'dev rows':>9}{'hold-out':>9}{'oof AUC':>9}"
        f"{'hold AUC':>9}{'oof ECE':>9}"
    )
    for row in report.summary.iter_rows(named=True):
        print(
            f"  {row['regime']:<9}{row['status']:<9}{row['n_dev']:>9,}{row['n_holdout']:>9,}"
            f"{row['oof_roc_auc']:>9.3f}{row['holdout_roc_auc']:>9.3f}{row['oof_ece']:>9.3f}"
        )
    agree &= platt_against_scikit_learn(args.repeat, args.seed)
    return 0 if agree else 1


def platt_against_scikit_learn(repeat: int, seed: int) -> bool:
    """Platt scaling as fit_calibrator does it (Newton in numpy) against scikit-learn's
    LogisticRegression(C=inf) on logit(p), which it used before: time per fit, and the largest
    relative difference of the parameters from scikit-learn's solved to tol=1e-10 (its default
    tol=1e-4 stops up to 1 % away from the maximum), at the sizes a meta-learner's folds
    calibrate on."""
    from sklearn.linear_model import LogisticRegression

    from quant_assets.lib.calibration import _logit, platt_parameters

    print(f"\nPlatt scaling (two parameters), best of {max(repeat, 20)} fits")
    print(f"  {'rows':>8}{'numpy (ms)':>12}{'sklearn (ms)':>14}{'ratio':>8}{'max rel diff':>14}")
    rng = np.random.default_rng(seed)
    same = True
    for n in (300, 3_000, 30_000):
        true_logit = rng.normal(0.0, 1.2, n)
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-true_logit))).astype(float)
        x = _logit(1.0 / (1.0 + np.exp(-2.0 * true_logit)))  # twice too confident
        ours, (slope, intercept) = best_of(lambda x=x, y=y: platt_parameters(x, y), max(repeat, 20))
        theirs, _ = best_of(
            lambda x=x, y=y: LogisticRegression(C=np.inf).fit(x[:, None], y), max(repeat, 20)
        )
        exact = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x[:, None], y)
        reference = np.array([exact.coef_[0, 0], exact.intercept_[0]])
        diff = float(np.max(np.abs(np.array([slope, intercept]) - reference) / np.abs(reference)))
        same &= diff < 1e-5
        print(
            f"  {n:>8,}{ours * 1e3:>12.2f}{theirs * 1e3:>14.2f}{theirs / ours:>7.1f}x{diff:>14.1e}"
        )
    return same


if __name__ == "__main__":
    sys.exit(main())
