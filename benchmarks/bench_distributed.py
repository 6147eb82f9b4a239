"""The celery deployment with 1 and with 2 workers against the local deployment, on the same workload.

    python benchmarks/bench_distributed.py [--symbols 16] [--timeframes 1d] [--years 1.5]
                                           [--select '*challenger_model'] [--workers 1,2]

Each configuration starts from nothing: `quant-assets symbols add` then `quant-assets materialize
--select SELECTION` in a fresh directory, timed from the materialize command's start to its exit
(one asset backfill, `max_concurrent_runs` = 2, partitions spread over two runs per stage).
- local: the embedded default (SQLite instance and MLflow store, runs in-process, two at a time:
  the multiprocess figure).
- celery, N workers: fresh PostgreSQL databases (instance, MLflow, trading tables), a fresh
  `mlflow server`, N `dagster-celery` workers of one process each (each in its own directory), on
  the RabbitMQ broker; setting these up is not timed.
Needs RabbitMQ and PostgreSQL (see quant_assets_tests/distributed.py for the URLs). Prints wall
time per configuration and the speed-up of N workers over one worker and over local.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # quant_assets_tests

from bench_pipeline import universe  # noqa: E402

from quant_assets_tests.distributed import (  # noqa: E402
    BIN,
    celery_cluster,
    clean_env,
    stop_group,
)

START = "2025-01-01"


def _settings(symbols: int, timeframes: str, years: float) -> dict[str, str]:
    from datetime import datetime, timedelta

    end = datetime.fromisoformat(START) + timedelta(days=round(365.25 * years))
    return {
        "QUANT_ASSETS_TIMEFRAMES": timeframes,
        "QUANT_ASSETS_SYNTHETIC_START": START,
        "QUANT_ASSETS_SYNTHETIC_END": end.isoformat(),
        "QUANT_ASSETS_MAX_CONCURRENT_RUNS": "2",
        "QUANT_ASSETS_SYMBOLS_PER_RUN": str(max(1, symbols // 2)),
    }


def _materialize(cwd: Path, env: dict[str, str], symbols: list[str], selection: str) -> float:
    cli = str(BIN / "quant-assets")
    subprocess.run([cli, "symbols", "add", *symbols], cwd=cwd, env=env, check=True,
                   capture_output=True)  # fmt: skip
    start = time.perf_counter()
    with (cwd / "materialize.log").open("w") as log:
        # its own session: on an interrupt the CLI and the daemon it started are stopped together
        process = subprocess.Popen(
            [cli, "materialize", "--select", selection],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        code = process.wait()
    finally:
        stop_group(process, timeout=60)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(
            f"materialize failed in {cwd}:\n{(cwd / 'materialize.log').read_text()[-4000:]}"
        )
    return wall


def run_local(root: Path, settings: dict[str, str], symbols: list[str], selection: str) -> float:
    cwd = root / "local"
    cwd.mkdir(parents=True)
    env = {
        **clean_env(),
        **settings,
        "QUANT_ASSETS_ARTIFACTS": str(cwd / "artifacts"),
        "QUANT_ASSETS_WATCHLIST": str(cwd / "watchlist.txt"),
        "DAGSTER_HOME": str(cwd / ".dagster_home"),
        "DAGSTER_GRPC_TIMEOUT_SECONDS": "300",  # as the celery configurations (a loaded machine)
    }
    return _materialize(cwd, env, symbols, selection)


def run_celery(
    root: Path, settings: dict[str, str], symbols: list[str], selection: str, workers: int
) -> float:
    with celery_cluster(root / f"celery_{workers}", **settings) as cluster:
        for i in range(workers):
            cluster.start_worker(f"worker{i + 1}")
        cluster.wait_workers_ready()
        cwd, env = cluster.machine("scheduler")
        return _materialize(cwd, env, symbols, selection)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=16)
    parser.add_argument("--timeframes", default="1d")
    parser.add_argument("--years", type=float, default=1.5)
    parser.add_argument("--select", default="*challenger_model")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    symbols = universe(args.symbols)
    settings = _settings(args.symbols, args.timeframes, args.years)
    partitions = len(symbols) * len(args.timeframes.split(","))
    print(
        f"workload: --select {args.select!r}, {len(symbols)} symbols x {args.timeframes} = "
        f"{partitions} partitions, synthetic {START} to {settings['QUANT_ASSETS_SYNTHETIC_END']}, "
        f"2 runs at a time, {settings['QUANT_ASSETS_SYMBOLS_PER_RUN']} partitions a run",
        flush=True,
    )
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as tmp:
        root = Path(tmp)
        if not args.skip_local:
            walls["local (in-process runs, 2 at a time)"] = run_local(
                root, settings, symbols, args.select
            )
            print(f"local: {walls['local (in-process runs, 2 at a time)']:.1f} s", flush=True)
        for n in (int(w) for w in args.workers.split(",")):
            walls[f"celery, {n} worker(s)"] = run_celery(root, settings, symbols, args.select, n)
            print(f"celery {n}: {walls[f'celery, {n} worker(s)']:.1f} s", flush=True)
    one = walls.get("celery, 1 worker(s)")
    local = walls.get("local (in-process runs, 2 at a time)")
    print(f"\n{'configuration':<40} {'wall s':>8} {'vs 1 worker':>12} {'vs local':>9}")
    for name, wall in walls.items():
        vs_one = f"{one / wall:.2f}x" if one else "-"
        vs_local = f"{local / wall:.2f}x" if local else "-"
        print(f"{name:<40} {wall:>8.1f} {vs_one:>12} {vs_local:>9}")


if __name__ == "__main__":
    main()
