"""Bar-close serving latency: from "bar closed and its OHLCV stored" to "rows committed".

    python benchmarks/bench_serving.py [--symbols 50 500] [--closes 20] [--backends sqlite postgresql]

For each universe size and trading-store backend: synthetic 1h bars per symbol (and their 4h
resample) are stored as the ohlcv asset stores them; every symbol gets a direction champion
(LightGBM, 50 trees, on the 1h features + 4h snapshot + cross-sectional ranks) and a volatility
champion (GARCH(1,1)) in a fresh MLflow store and the SQL catalog. Then, per bar close: the new
bar of every symbol is written to its Parquet file, and the 4h file rewritten (not timed), and
one `serve_bar_close` Dagster run (in-process, on an ephemeral instance) scores it, regime gate
included (from the 4h snapshot: no daily bars are stored). Timed: the run from launch to its end
(everything up to the committed rows), and inside it the split load models / read the stored bars
(the changed Parquet files) / features of the new bar (with the snapshot and ranks) / regime /
score / execute / write; "run start" is the rest (Dagster's run and step bookkeeping). Every
fourth close a 4h bar closes too. The first close also loads every model and reads and computes
every history (reported apart, "cold"); p50 and p95 are over the next --closes closes.
The bar (issue 16): p95 <= 5 s for 500 symbols, of which scoring <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_assets.lib.bar_close import TIMING_STEPS  # noqa: E402
from quant_assets_tests.lib.bars_factory import make_bars  # noqa: E402
from quant_assets_tests.lib.serving_factory import register_champions, store_bars  # noqa: E402

TIMEFRAME, HIGHER, HISTORY = "1h", "4h", 2000


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(n_symbols: int, backend: str, closes: int) -> dict:
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=UserWarning)

    from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
    from quant_assets.defs.resources import ArtifactStore, MlflowResource, TradingStoreResource
    from quant_assets.defs.serving import RESULTS_IN_MEMORY, serve_bar_close
    from quant_assets.lib.stores import TradingStore
    from quant_assets.lib.tracking import Tracker

    workdir = Path(tempfile.mkdtemp(prefix="qa_bench_serving_"))
    pg = None
    try:
        if backend == "postgresql":
            from quant_assets_tests.services import temporary_postgres_database

            pg = temporary_postgres_database("qa_bench_serving")
            url = pg.__enter__()
        else:
            url = f"sqlite:///{workdir / 'trading.db'}"
        symbols = [f"S{i:04d}" for i in range(n_symbols)]
        bars = {
            s: make_bars(HISTORY + closes + 1, TIMEFRAME, seed=i) for i, s in enumerate(symbols)
        }
        tracking = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
        tracker = Tracker(tracking)
        store = TradingStore(url)
        started = time.perf_counter()
        register_champions(tracker, store, symbols, bars[symbols[0]], TIMEFRAME, HIGHER)
        setup = time.perf_counter() - started
        resources = {
            "mlflow": MlflowResource(tracking_uri=tracking),
            "trading_store": TradingStoreResource(url=url),
            "artifacts": ArtifactStore(root=str(workdir)),
            **RESULTS_IN_MEMORY,
        }
        job = serve_bar_close
        config = {"ops": {"serve_new_bars": {"config": {"timeframe": TIMEFRAME}}}}
        totals, splits, cold = [], [], None
        with dg.DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, symbols)
            for k in range(closes + 1):
                store_bars(
                    workdir, bars, HISTORY + k, TIMEFRAME, HIGHER
                )  # the bar closed and its OHLCV is stored
                t0 = time.perf_counter()
                result = job.execute_in_process(
                    run_config=config, instance=instance, resources=resources
                )
                total = time.perf_counter() - t0
                output = result.output_for_node("serve_new_bars")
                assert output["rows"] == n_symbols, (
                    output["rows"],
                    list(output["skipped"].items())[:3],
                )
                meta = next(
                    e.event_specific_data.metadata
                    for e in result.all_events
                    if e.event_type_value == "STEP_OUTPUT"
                )
                split = {
                    k.removeprefix("seconds_"): float(v.value)
                    for k, v in meta.items()
                    if k.startswith("seconds_")
                }
                split["run_start"] = total - sum(split.values())
                if k == 0:
                    cold = (total, split)
                else:
                    totals.append(total)
                    splits.append(split)
        rows = store.read_signals(timeframe=TIMEFRAME)
        assert rows.height == n_symbols * (closes + 1)
        return {
            "symbols": n_symbols,
            "backend": backend,
            "setup_s": setup,
            "cold": cold,
            "p50": _percentile(totals, 50),
            "p95": _percentile(totals, 95),
            "split_p50": {k: _percentile([s[k] for s in splits], 50) for k in splits[0]},
            "split_p95": {k: _percentile([s[k] for s in splits], 95) for k in splits[0]},
            "sides": rows["side"].value_counts().sort("side").rows(),
            "gated": sum(json.loads(m)["gated"] for m in rows["meta"]),
        }
    finally:
        if pg is not None:
            pg.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--closes", type=int, default=20)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    order = (*TIMING_STEPS, "run_start")
    print(f"bar-close serving, {TIMEFRAME} bars (+{HIGHER} snapshot), {args.closes} closes each")
    print(f"load average at start: {_loadavg()}")
    for backend in args.backends:
        for n in args.symbols:
            r = run(n, backend, args.closes)
            cold_total, cold_split = r["cold"]
            print(
                f"\n{backend:<10} {n:>4} symbols: p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s "
                f"(bar: p95 <= 5 s) | cold first close {cold_total:.2f} s "
                f"(load models {cold_split['load_models']:.2f} s) | setup {r['setup_s']:.0f} s"
            )
            print("  split p50: " + ", ".join(f"{k} {r['split_p50'][k]:.3f}" for k in order))
            print("  split p95: " + ", ".join(f"{k} {r['split_p95'][k]:.3f}" for k in order))
            print(
                f"  scoring p95 {r['split_p95']['score']:.3f} s (bar: <= 1 s); sides {r['sides']}; "
                f"gated rows {r['gated']}; load average {_loadavg()}"
            )


if __name__ == "__main__":
    main()
