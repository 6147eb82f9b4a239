"""Times compute_features and triple_barrier_labels on synthetic bars, and checks the labels against
the per-event pandas reference on a sample (exit status 1 if they differ)."""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

from quant_assets.lib.features import compute_features
from quant_assets.lib.labels import BARRIER_DTYPE, triple_barrier_labels
from quant_assets.lib.reference_labels import reference_triple_barrier_labels
from quant_assets.lib.sources.base import OHLCV_SCHEMA

TIMEFRAME = "1h"


def synthetic_bars(n: int, seed: int) -> pl.DataFrame:
    """Hourly random-walk bars in the canonical schema (fixed seed, so runs are comparable)."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate(([100.0], close[:-1])) * np.exp(rng.normal(0.0, 0.001, n))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0.0, 0.004, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0.0, 0.004, n)))
    start = np.datetime64("2000-01-01T00:00", "us")
    return pl.DataFrame(
        {
            "timestamp": start + np.arange(n) * np.timedelta64(3600, "s"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.lognormal(10.0, 1.0, n),
        }
    ).cast(OHLCV_SCHEMA)


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Fastest wall time of `repeat` calls, and the last result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def python_peak_mib(fn: Callable[[], Any]) -> float:
    """Peak of memory traced by tracemalloc during one call (numpy buffers count, polars' Rust
    allocations do not)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def label_inputs(bars: pl.DataFrame, features: pl.DataFrame) -> dict[str, Any]:
    return {
        "timestamps": bars["timestamp"],
        "open_": bars["open"].to_numpy(),
        "high": bars["high"].to_numpy(),
        "low": bars["low"].to_numpy(),
        "close": bars["close"].to_numpy(),
        "atr": features["atr_14"].to_numpy(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="bars per series"
    )
    parser.add_argument("--horizon", type=int, default=20, help="vertical barrier, in bars")
    parser.add_argument(
        "--reference-sample", type=int, default=2000, help="events checked against the reference"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per step (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    print(f"timeframe {TIMEFRAME}, horizon {args.horizon}, best of {args.repeat}\n")
    print(f"{'bars':>10}  {'step':<22}{'best (s)':>10}{'bars/s':>14}{'py peak MiB':>13}")

    def report(n: int, name: str, fn: Callable[[], Any]) -> tuple[float, Any]:
        seconds, result = best_of(fn, args.repeat)
        print(
            f"{n:>10,}  {name:<22}{seconds:>10.3f}{n / seconds:>14,.0f}{python_peak_mib(fn):>13.1f}"
        )
        return seconds, result

    checked: tuple[dict[str, Any], pl.DataFrame] | None = None
    for n in args.sizes:
        bars = synthetic_bars(n, args.seed)
        _, features = report(n, "compute_features", partial(compute_features, bars, TIMEFRAME))
        inputs = label_inputs(bars, features)
        label_fn = partial(
            triple_barrier_labels, **inputs, timeframe=TIMEFRAME, horizon=args.horizon
        )
        seconds, labels = report(n, "triple_barrier_labels", label_fn)
        per_event_fast = seconds / n
        if checked is None:
            checked = inputs, labels

    inputs, labels = checked
    sample_n = min(args.reference_sample, labels.height)
    fast = labels.head(sample_n)
    start = time.perf_counter()
    reference = reference_triple_barrier_labels(
        **{k: v.to_numpy() if isinstance(v, pl.Series) else v for k, v in inputs.items()},
        timeframe=TIMEFRAME,
        horizon=args.horizon,
        events=range(sample_n),
    )
    per_event_ref = (time.perf_counter() - start) / sample_n
    reference_pl = pl.from_pandas(reference).with_columns(pl.col("barrier").cast(BARRIER_DTYPE))
    print(f"\nreference check: first {sample_n:,} events of the {args.sizes[0]:,}-bar series")
    try:
        assert_frame_equal(fast, reference_pl, check_exact=True)
    except AssertionError as err:
        print(f"  MISMATCH with the per-event reference:\n{err}")
        return 1
    counts = dict(fast["barrier"].value_counts().sort("barrier").iter_rows())
    print(f"  identical labels ({', '.join(f'{k}={v}' for k, v in counts.items())})")
    print(f"  reference per event   {per_event_ref * 1e6:>10.1f} us")
    print(f"  vectorized per event  {per_event_fast * 1e6:>10.3f} us  ({args.sizes[-1]:,} bars)")
    print(f"  speed-up per event    {per_event_ref / per_event_fast:>10,.0f} x")
    maxrss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"\nprocess max RSS (getrusage): {maxrss_mib:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
