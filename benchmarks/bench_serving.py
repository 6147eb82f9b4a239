"""Bar-close serving latency: from "bar closed and its OHLCV stored" to "rows committed".

    python benchmarks/bench_serving.py [--symbols 50 500] [--closes 20] [--backends sqlite postgresql]
        [--modes in-process fresh-process]

For each universe size and trading-store backend: synthetic 1h bars per symbol (and their 4h
resample) are stored as the ohlcv asset stores them; every symbol gets a direction champion
(LightGBM, 50 trees, on the 1h features + 4h snapshot + cross-sectional ranks) and a volatility
champion (GARCH(1,1)) in a fresh MLflow store and the SQL catalog. Then, per bar close: the new
bar of every symbol is written to its Parquet file, and the 4h file rewritten (not timed), and
one `serve_bar_close` Dagster run scores it, regime gate included (from the 4h snapshot: no daily
bars are stored). Every fourth close a 4h bar closes too.

in-process: every run in this process (`execute_in_process` on an ephemeral instance), so the
server keeps its models and histories between closes. Timed: the run from launch to its end, and
inside it the split load models / read the stored bars (the changed Parquet files) / features of
the new bar (with the snapshot and ranks) / regime / score / execute / write; "run start" is the
rest (Dagster's run and step bookkeeping). The first close also loads every model and reads and
computes every history (reported apart, "cold").

fresh-process: what a daemon-launched run does. Each close starts a NEW Python process
(`python bench_serving.py --child`) configured by the settings' environment variables only
(QUANT_ASSETS_ARTIFACTS, MLFLOW_TRACKING_URI, QUANT_ASSETS_TRADING_DB, DAGSTER_HOME) that imports
`quant_assets.definitions` (the code location the daemon loads), takes its `serve_bar_close` job
with the resources built from those settings, and executes one run with `execute_in_process` on
the persistent Dagster instance of DAGSTER_HOME (SQLite run and event storage, as a local
deployment's). Timed from launch to the process's exit; split: interpreter start (launch to the
first line of the script), import of the definitions, then the run's steps as above (load models
now reads the local model cache, read_bars/features/regime read every file and compute every
history again), run start (the rest of the run), exit. The first close fills the model cache
from MLflow (reported apart, "cold"); p50 and p95 are over the next --closes closes.

daemon: what production does. A `python -m quant_assets.defs.daemon` (run queue, monitoring) on a
persistent instance configured as the embedded default (`instance_yaml`: WarmRunLauncher); each
close creates a `serve_bar_close` run the way the schedule does and submits it to the run queue;
the daemon dequeues it (every second) and the launcher hands it to the warm worker
(defs/warm_launcher.py), which executes it in its long-lived process. Timed from the submission
to the run's end (its rows committed before): split dequeue (submission to the launch: the run
queue's 1 s interval), hand-over (launch to the run's start in the worker), the run's steps as
above, run start (the rest). The first
close starts the worker (loads the code and every model: "cold").

The bar (issue 16): p95 <= 5 s for 500 symbols, of which scoring <= 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quant_assets_tests.lib.bars_factory import make_bars  # noqa: E402
from quant_assets_tests.lib.serving_factory import register_champions, store_bars  # noqa: E402

TIMEFRAME, HIGHER, HISTORY = "1h", "4h", 2000


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _split_of(result) -> dict[str, float]:
    """The op's step timings (its output metadata `seconds_*`)."""
    meta = next(
        e.event_specific_data.metadata
        for e in result.all_events
        if e.event_type_value == "STEP_OUTPUT"
    )
    return {
        k.removeprefix("seconds_"): float(v.value)
        for k, v in meta.items()
        if k.startswith("seconds_")
    }


def child() -> None:
    """One close as a daemon-launched run: a fresh process, settings from the environment."""
    started = time.time()
    from quant_assets.definitions import defs

    imported = time.time()
    import dagster as dg

    job = defs.get_job_def("serve_bar_close")
    config = {"ops": {"serve_new_bars": {"config": {"timeframe": TIMEFRAME}}}}
    with dg.DagsterInstance.get() as instance:
        t0 = time.perf_counter()
        result = job.execute_in_process(run_config=config, instance=instance)
        run_s = time.perf_counter() - t0
    output = result.output_for_node("serve_new_bars")
    split = _split_of(result)
    split["run_start"] = run_s - sum(split.values())
    print(
        json.dumps(
            {
                "started": started,
                "imported": imported,
                "ended": time.time(),
                "rows": output["rows"],
                "skipped": list(output["skipped"].items())[:3],
                "split": split,
            }
        )
    )


def _in_process_close(job, config, instance, resources) -> tuple[float, dict, int, list]:
    t0 = time.perf_counter()
    result = job.execute_in_process(run_config=config, instance=instance, resources=resources)
    total = time.perf_counter() - t0
    output = result.output_for_node("serve_new_bars")
    split = _split_of(result)
    split["run_start"] = total - sum(split.values())
    return total, split, output["rows"], list(output["skipped"].items())[:3]


def _fresh_process_close(env: dict[str, str]) -> tuple[float, dict, int, list]:
    launched = time.time()
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True
    )
    total = time.perf_counter() - t0
    exited = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"the serving process failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    split = {
        "process_start": out["started"] - launched,
        "import_definitions": out["imported"] - out["started"],
        **out["split"],
        "exit": exited - out["ended"],
    }
    return total, split, out["rows"], out["skipped"]


@contextlib.contextmanager
def _daemon(home: Path, env: dict[str, str]):
    """A daemon and a code location on the instance in `home`, configured as the embedded
    default (the warm run launcher); the daemon's warm worker leaves with it."""
    import dagster as dg

    from quant_assets.defs.backfills import instance_yaml
    from quant_assets_tests.scheduled_runs import code_location

    (home / "dagster.yaml").write_text(instance_yaml(2, home))
    saved = dict(os.environ)
    os.environ.update(env)  # the code server this process starts reads the settings
    daemon = subprocess.Popen(
        [sys.executable, "-m", "quant_assets.defs.daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            with code_location(instance, str(Path(__file__).resolve().parents[1])) as (ws, loc):
                yield instance, ws, loc
            instance.run_launcher.stop_workers()
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        os.environ.clear()
        os.environ.update(saved)


def _daemon_close(instance, workspace, location, config) -> tuple[float, dict, int, list]:
    import dagster as dg

    from quant_assets_tests.scheduled_runs import submit_run, wait_for_run

    submitted = time.time()
    t0 = time.perf_counter()
    run_id = submit_run(instance, workspace, location, "serve_bar_close", config)
    run = wait_for_run(instance, run_id, timeout=600, poll=0.02)
    total = time.perf_counter() - t0
    if run.status != dg.DagsterRunStatus.SUCCESS:
        raise RuntimeError(f"serving run {run_id} ended {run.status}")
    (event,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_OUTPUT)
    meta = event.dagster_event.event_specific_data.metadata
    split = {k.removeprefix("seconds_"): float(v.value) for k, v in meta.items() if "seconds_" in k}
    (starting,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_STARTING)
    (start,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START)
    split = {
        "dequeue": starting.timestamp - submitted,
        "hand_over": start.timestamp - starting.timestamp,
        **split,
    }
    split["run_start"] = total - sum(split.values())
    skipped = list(json.loads(json.dumps(meta["skipped"].value)).items())[:3]
    return total, split, int(meta["rows"].value), skipped


def run(n_symbols: int, backend: str, closes: int, modes: list[str]) -> list[dict]:
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
        total_closes = len(modes) * (closes + 1)
        bars = {
            s: make_bars(HISTORY + total_closes, TIMEFRAME, seed=i) for i, s in enumerate(symbols)
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
        config = {"ops": {"serve_new_bars": {"config": {"timeframe": TIMEFRAME}}}}
        home = workdir / "dagster_home"
        home.mkdir()
        env = {
            **os.environ,
            "QUANT_ASSETS_ARTIFACTS": str(workdir),
            "MLFLOW_TRACKING_URI": tracking,
            "QUANT_ASSETS_TRADING_DB": url,
            "DAGSTER_HOME": str(home),
            "PYTHONWARNINGS": "ignore",
        }
        results, served = [], 0
        for mode in modes:
            totals, splits, cold = [], [], None
            with contextlib.ExitStack() as stack:
                if mode == "in-process":
                    instance = stack.enter_context(dg.DagsterInstance.ephemeral())
                elif mode == "fresh-process":
                    instance = stack.enter_context(dg.DagsterInstance.from_config(str(home)))
                else:
                    instance, workspace, location = stack.enter_context(_daemon(home, env))
                instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, symbols)
                for k in range(closes + 1):
                    served += 1
                    # the bar closed and its OHLCV is stored
                    store_bars(workdir, bars, HISTORY + served - 1, TIMEFRAME, HIGHER)
                    if mode == "in-process":
                        close = _in_process_close(serve_bar_close, config, instance, resources)
                    elif mode == "fresh-process":
                        close = _fresh_process_close(env)
                    else:
                        close = _daemon_close(instance, workspace, location, config)
                    total, split, rows, skipped = close
                    assert rows == n_symbols, (rows, skipped)
                    if k == 0:
                        cold = (total, split)
                    else:
                        totals.append(total)
                        splits.append(split)
                    print(f"  {mode} close {k}: {total:.2f} s, load average {_loadavg()}")
            results.append(
                {
                    "mode": mode,
                    "symbols": n_symbols,
                    "backend": backend,
                    "setup_s": setup,
                    "cold": cold,
                    "p50": _percentile(totals, 50),
                    "p95": _percentile(totals, 95),
                    "split_p50": {k: _percentile([s[k] for s in splits], 50) for k in splits[0]},
                    "split_p95": {k: _percentile([s[k] for s in splits], 95) for k in splits[0]},
                }
            )
        rows = store.read_signals(timeframe=TIMEFRAME)
        assert rows.height == n_symbols * served
        for r in results:
            r["sides"] = rows["side"].value_counts().sort("side").rows()
            r["gated"] = sum(json.loads(m)["gated"] for m in rows["meta"])
        return results
    finally:
        if pg is not None:
            pg.__exit__(None, None, None)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        child()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--closes", type=int, default=20)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["in-process"],
        choices=["in-process", "fresh-process", "daemon"],
    )
    args = parser.parse_args()
    print(f"bar-close serving, {TIMEFRAME} bars (+{HIGHER} snapshot), {args.closes} closes each")
    print(f"load average at start: {_loadavg()}")
    for backend in args.backends:
        for n in args.symbols:
            for r in run(n, backend, args.closes, args.modes):
                cold_total, cold_split = r["cold"]
                order = list(r["split_p50"])
                print(
                    f"\n{r['mode']:<13} {backend:<10} {n:>4} symbols: p50 {r['p50']:.2f} s, "
                    f"p95 {r['p95']:.2f} s (bar: p95 <= 5 s) | cold first close "
                    f"{cold_total:.2f} s (load models {cold_split['load_models']:.2f} s) | "
                    f"setup {r['setup_s']:.0f} s"
                )
                print("  split p50: " + ", ".join(f"{k} {r['split_p50'][k]:.3f}" for k in order))
                print("  split p95: " + ", ".join(f"{k} {r['split_p95'][k]:.3f}" for k in order))
                print(
                    f"  scoring p95 {r['split_p95']['score']:.3f} s (bar: <= 1 s); sides "
                    f"{r['sides']}; gated rows {r['gated']}; load average {_loadavg()}"
                )


if __name__ == "__main__":
    main()
