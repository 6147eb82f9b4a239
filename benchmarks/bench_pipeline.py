"""The whole pipeline through the CLI (one asset backfill, Dagster's daemon, batched runs in
parallel) against the same computations called directly from `quant_assets.lib` in one process.

    python benchmarks/bench_pipeline.py [--symbols 4] [--timeframes 1h,4h,1d] [--years 3]
    python benchmarks/bench_pipeline.py --symbols 64 --skip-reference     # the scale run

Pipeline: `quant-assets symbols add` then `quant-assets materialize --select '*'` in a fresh
directory (SQLite instance, MLflow store, synthetic source ending --years after 2023-01-01).
Measured: wall time, CPU-seconds of the whole process tree (CLI, daemon, code server, warm run
workers or run processes; sampled per process every 0.5 s, workers followed after they leave it),
CPU utilization overall and during the training stage (the window in which runs containing
`challenger_model` were running, from /proc/stat: this machine must be otherwise idle), and the
peak summed RSS of the process tree. Reference: per partition, features with the multi-timeframe
snapshot, labels, cross-sectional ranks, training dataset, purged splits, LightGBM with purged CV
and calibration, the hold-out backtest, regimes, primary signals and the per-regime meta-learners,
in one process (CPU time). Prints CPU-s per partition of both, their ratio, and the extrapolation
of the pipeline's wall time to 500 symbols x 3 timeframes, with the cross-sectional steps' memory
estimate at 500 symbols of 1h bars.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

UNIVERSE = [
    "BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "AVAXUSDT",
]  # fmt: skip
EQUITIES = ["SPY", "AAPL", "MSFT", "NVDA", "AMZN", "GOOG", "META", "TSLA"]


def universe(n: int) -> list[str]:
    """n symbols, crypto and equities alternating, numbered past the named ones."""
    names = [s for pair in zip(UNIVERSE, EQUITIES, strict=True) for s in pair]
    extra = [f"SYM{i:03d}USDT" if i % 2 else f"EQ{i:03d}" for i in range(max(0, n - len(names)))]
    return (names + extra)[:n]


class Sampler(threading.Thread):
    """Every 0.5 s: machine-wide busy CPU (from /proc/stat), the summed RSS of a process tree, and
    the CPU time of every process ever seen in it, followed by pid after it leaves the tree (the
    warm run workers outlive the daemon that started them by a second or two and are then
    reparented: `RUSAGE_CHILDREN` never sees their CPU)."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root = root_pid
        self.samples: list[tuple[float, float]] = []  # (time, busy cores since the last sample)
        self.peak_rss = 0
        self.cpu_ticks: dict[int, tuple[float, int]] = {}  # pid -> (start time, utime + stime)
        self.done = threading.Event()

    @staticmethod
    def _cpu() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    def _scan(self) -> int:
        """The tree's summed RSS; records the CPU ticks of its processes and of those seen before."""
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        ticks: dict[int, tuple[float, int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat.rsplit(")", 1)[1].split()
                pages = int(Path(f"/proc/{entry}/statm").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
            pid = int(entry)
            children.setdefault(int(fields[1]), []).append(pid)
            rss[pid] = pages * os.sysconf("SC_PAGE_SIZE")
            # (process start time, utime + stime): the start time tells a reused pid apart
            ticks[pid] = (float(fields[19]), int(fields[11]) + int(fields[12]))
        total, stack = 0, [self.root]
        while stack:
            pid = stack.pop()
            total += rss.get(pid, 0)
            if pid in ticks:
                self.cpu_ticks[pid] = ticks[pid]
            stack.extend(children.get(pid, []))
        for pid, (start, _) in list(self.cpu_ticks.items()):
            if pid in ticks and ticks[pid][0] == start:
                self.cpu_ticks[pid] = ticks[pid]
        return total

    def alive(self) -> int:
        """Processes seen in the tree that still run."""
        count = 0
        for pid, (start, _) in self.cpu_ticks.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            count += float(fields[19]) == start and fields[0] != "Z"
        return count

    def cpu_seconds(self) -> float:
        return sum(t for _, t in self.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")

    def run(self) -> None:
        busy0, total0 = self._cpu()
        while not self.done.wait(0.5):
            busy, total = self._cpu()
            cores = os.cpu_count() or 1
            share = (busy - busy0) / max(total - total0, 1e-9)
            self.samples.append((time.time(), share * cores))
            busy0, total0 = busy, total
            self.peak_rss = max(self.peak_rss, self._scan())
        self._scan()

    def utilization(self, start: float, end: float) -> float:
        inside = [c for t, c in self.samples if start <= t <= end]
        return sum(inside) / len(inside) if inside else float("nan")


def run_pipeline(symbols: list[str], timeframes: list[str], end: str, workdir: Path) -> dict:
    cli = str(Path(sys.executable).with_name("quant-assets"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUANT_ASSETS_", "DAGSTER_"))}
    env.update(
        QUANT_ASSETS_TIMEFRAMES=",".join(timeframes),
        QUANT_ASSETS_SYNTHETIC_END=end,
        QUANT_ASSETS_ARTIFACTS=str(workdir / "artifacts"),
        QUANT_ASSETS_WATCHLIST=str(workdir / "watchlist.txt"),
        DAGSTER_HOME=str(workdir / ".dagster_home"),
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run([cli, "symbols", "add", *symbols], cwd=workdir, env=env, check=True,
                   capture_output=True)  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    process = subprocess.Popen(
        [cli, "materialize", "--select", "*"], cwd=workdir, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    sampler = Sampler(process.pid)
    sampler.start()
    lines = []
    for line in process.stdout:  # the CLI's progress, echoed as it comes (stderr)
        lines.append(line)
        print(f"  | {line}", end="", file=sys.stderr, flush=True)
    process.wait()
    output = "".join(lines)
    wall = time.time() - started
    deadline = time.time() + 30  # the warm workers leave a few seconds after the daemon
    while sampler.alive() and time.time() < deadline:
        time.sleep(0.5)
    sampler.done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        print(output[-4000:])
        raise SystemExit(f"the pipeline failed (exit {process.returncode})")
    waited = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # every process of the tree, sampled (at most 0.5 s of a process that ends between two
    # samples is missed), and never less than what the waited-for children report
    cpu = max(sampler.cpu_seconds(), waited)

    import dagster as dg

    with dg.DagsterInstance.from_config(str(workdir / ".dagster_home")) as instance:
        records = instance.get_run_records()
        training = [
            r
            for r in records
            if r.start_time and "challenger_model" in str(r.dagster_run.asset_selection)
        ]
        window = (
            (min(r.start_time for r in training), max(r.end_time for r in training))
            if training
            else (started, started + wall)
        )
        runs = len(records)
    return {
        "wall": wall,
        "cpu": cpu,
        "runs": runs,
        "util": cpu / wall,
        "util_training": sampler.utilization(*window),
        "training_window": window[1] - window[0],
        "peak_rss": sampler.peak_rss,
        "tail": output.strip().splitlines()[-1],
    }


def run_reference(symbols: list[str], timeframes: list[str], end: datetime) -> float:
    """CPU-seconds of the same computations called directly, in this process."""
    from quant_assets.lib.backtest import run_backtest
    from quant_assets.lib.datasets import build_training_dataset
    from quant_assets.lib.features import (
        compute_features,
        cross_sectional_ranks,
        multi_timeframe_snapshot,
    )
    from quant_assets.lib.labels import build_labels
    from quant_assets.lib.meta import meta_frame, train_meta_learners
    from quant_assets.lib.ohlcv import bars_for_timeframe
    from quant_assets.lib.performance import performance_metrics
    from quant_assets.lib.primary import primary_signals
    from quant_assets.lib.regimes import regimes
    from quant_assets.lib.signals import make_signals, position_changes
    from quant_assets.lib.sources.synthetic import DEFAULT_START, SyntheticSource
    from quant_assets.lib.splits import make_splits
    from quant_assets.lib.training import ModelConfig, predict_proba, train_with_cv

    started = time.process_time()
    source = SyntheticSource(seed=7, start=DEFAULT_START, end=end)
    bars = {(s, t): bars_for_timeframe(source, s, t).frame for s in symbols for t in timeframes}
    feats: dict[tuple[str, str], object] = {}
    for (s, t), frame in bars.items():
        feats[(s, t)] = compute_features(frame, t)
    full = {}
    for (s, t), base in feats.items():
        coarser = {u: feats[(s, u)] for u in timeframes if _secs(u) > _secs(t)}
        snapshot = multi_timeframe_snapshot(base.select("timestamp"), t, coarser)
        full[(s, t)] = base.join(snapshot, on="timestamp", how="left", maintain_order="left")
    ranks = {t: cross_sectional_ranks({s: full[(s, t)] for s in symbols}) for t in timeframes}
    for (s, t), features in full.items():
        labels = build_labels(bars[(s, t)], features["atr_14"], t)
        mine = ranks[t].filter(ranks[t]["symbol"] == s)
        dataset = build_training_dataset(features, labels, mine, symbol=s)
        frame = dataset.frame
        if frame.height < 200:
            continue
        plan = make_splits("purged_kfold", frame.height, frame["t0"], frame["t1"],
                           holdout_fraction=0.2, n_splits=5, embargo=0.01)  # fmt: skip
        result = train_with_cv(dataset, plan, ModelConfig("lightgbm", 42))
        holdout = frame[plan.holdout_idx]
        prob = predict_proba(result.model, result.calibrator, holdout, result.feature_columns)
        priced = (
            holdout.select("timestamp")
            .join(bars[(s, t)], on="timestamp")
            .join(features.select("timestamp", "atr_14"), on="timestamp")
        )
        signals = make_signals(priced["timestamp"], priced["close"], priced["atr_14"], prob)
        window = bars[(s, t)].filter(
            bars[(s, t)]["timestamp"].is_between(
                priced["timestamp"].min(), priced["timestamp"].max()
            )
        )
        backtest = run_backtest(window, position_changes(signals, 5), timeframe=t)
        performance_metrics(backtest, None, 365.0)
        regime = regimes(features)
        primary = primary_signals(bars[(s, t)], features)
        train_meta_learners(meta_frame(bars[(s, t)], features, primary, regime, labels))
    return time.process_time() - started


def _secs(timeframe: str) -> int:
    from quant_assets.lib.timeframes import timeframe_seconds

    return timeframe_seconds(timeframe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--timeframes", default="1h,4h,1d")
    parser.add_argument("--years", type=float, default=3.0)
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    symbols = universe(args.symbols)
    timeframes = args.timeframes.split(",")
    start = datetime(2023, 1, 1, tzinfo=UTC)
    end = datetime.fromtimestamp(start.timestamp() + args.years * 365.25 * 86400, UTC)
    end = end.replace(minute=0, second=0, microsecond=0)
    partitions = len(symbols) * len(timeframes)
    print(f"{len(symbols)} symbols x {len(timeframes)} timeframes = {partitions} partitions; "
          f"synthetic bars {start:%Y-%m-%d} .. {end:%Y-%m-%d}; {os.cpu_count()} cores")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        pipe = run_pipeline(symbols, timeframes, end.isoformat(), Path(tmp))
    print(f"pipeline (CLI -> one backfill -> {pipe['runs']} runs): wall {pipe['wall']:.1f} s, "
          f"CPU {pipe['cpu']:.1f} s = {pipe['cpu'] / partitions:.2f} CPU-s per partition")  # fmt: skip
    print(f"  CPU utilization {pipe['util']:.0%} overall, {pipe['util_training']:.0%} during the "
          f"training stage ({pipe['training_window']:.0f} s); peak RSS of the process tree "
          f"{pipe['peak_rss'] / 2**30:.2f} GiB")  # fmt: skip
    print(f"  {pipe['tail']}")
    if not args.skip_reference:
        ref = run_reference(symbols, timeframes, end)
        print(f"reference (lib called directly, one process): {ref:.1f} CPU-s = "
              f"{ref / partitions:.2f} CPU-s per partition")  # fmt: skip
        print(f"ratio pipeline / reference (CPU-s per partition): {pipe['cpu'] / ref:.2f}")
    scale = 500 / len(symbols)
    print(f"extrapolated to 500 symbols x {len(timeframes)} timeframes: "
          f"{pipe['wall'] * scale / 60:.0f} min wall (linear in symbols)")  # fmt: skip
    hours = args.years * 365.25 * 24
    # cross_sectional_ranks reads timestamp + 3 columns of every symbol, then ranks (about 3 copies)
    estimate = 500 * hours * 8 * 4 * 3 / 2**30
    print(
        f"cross-sectional ranks at 500 symbols of 1h bars: about {estimate:.1f} GiB peak "
        "(4 of the feature columns per symbol; the global model reads at most 20,000 rows each)"
    )


if __name__ == "__main__":
    main()
