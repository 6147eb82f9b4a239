"""The whole pipeline through the CLI (one asset backfill, Dagster's daemon, batched runs in
parallel) against the same computations called directly from `quant_assets.lib` in one process.

    python benchmarks/bench_pipeline.py [--symbols 4] [--timeframes 1h,4h,1d] [--years 3]
    python benchmarks/bench_pipeline.py --symbols 64 --skip-reference     # the scale run
    python benchmarks/bench_pipeline.py --reference-only                  # the references alone

Pipeline: `quant-assets symbols add` then `quant-assets materialize --select '*'` in a fresh
directory (SQLite instance, MLflow store, synthetic source from 2023-01-01 to --years after it).
Measured: wall time, CPU-seconds of the whole process tree (CLI, daemon, code server, warm run
workers or run processes; sampled per process every 0.5 s, workers followed after they leave it),
CPU utilization overall and during the training stage (the window in which runs containing
`challenger_model` were running, from /proc/stat: this machine must be otherwise idle), and the
peak summed RSS of the process tree.

Two references, each the CPU time (`time.process_time`, every thread) of one process calling
`quant_assets.lib` directly on the pipeline's bars (same source, seed and window); imports are
done before either is timed, and they run with one native math thread (OpenBLAS, OpenMP), as the
pipeline's run processes do (lib.processes.run_process_env).

- core (the list the issue named): per partition, features with the multi-timeframe snapshot,
  labels, cross-sectional ranks, training dataset, purged splits, LightGBM with purged CV and
  calibration, one hold-out backtest (default thresholds), regimes, primary signals and the
  per-regime meta-learners. Nothing else: no checks, no coarser features recomputed per
  partition, no label benchmark, no decision thresholds, no evaluation, no other model.
- full (every asset's computation): each asset of `--select '*'` as its code in
  `quant_assets/defs` computes it, with the default Config of the asset (the Config classes are
  imported from there): ohlcv (refresh_bars and the quality report of its checks), features
  (coarser timeframes' features recomputed per partition as the asset does, snapshot, the
  recursive look-ahead and closed-bar checks), cross_sectional_ranks (the ranked columns only),
  labels (with the SPY benchmark when SPY is a symbol, label_summary and the look-ahead check),
  training_dataset, walk_forward_splits, challenger_model (train_with_cv, the long/short decision
  thresholds and the trial record that training logs, the training signal quality),
  global_challenger_model (per timeframe: the latest rows_per_symbol(S) rows of each symbol,
  build_global_dataset, purged splits, train_with_cv, per-symbol calibrators, thresholds),
  volatility_model (GARCH walk-forward evaluate_out_of_fold and fit_garch), regime (with its
  truncated-history check), primary_signals, meta_learner, meta_filter (train_meta_filter,
  filter_report), champion_challenger_evaluation (every trial backtested on the out-of-fold
  window: selection_evidence with DSR and PBO; the hold-out scored and backtested; selection
  stats with MinTRL; the gates), ensemble_signals (meta_frame, both ensemble modes, voting, the
  variants' backtests with the champion's sides when it was promoted, compared_selection DSR,
  gates) and signals (when the challenger was promoted: the champion's predictions on the latest
  bars, the regime gate, the volatility champion's sigma when GARCH beat the naive forecast, the
  ensemble's sides when it is served, agent_rows). As on a fresh store: no champion before the
  evaluation, no sweep trials (hyperparameter_sweep is disabled by default and computes nothing),
  and models and artifacts the pipeline would load from MLflow are the in-memory objects of the
  earlier step (a LightGBM model as the Booster MLflow stores).
  Left out, as the overhead the benchmark measures: MLflow runs, logging, registration and
  loading, registry aliases, the SQL catalog, promotion_log and agent_preds/agent_signals writes,
  plots and model cards, Dagster metadata and data-version fingerprints, Parquet reads and
  writes, alerts; `champion` (a registry alias move and a promotion_log row), model_health and
  model_report (tables of registry and store state) compute nothing beyond that.

Prints CPU-s per partition of the pipeline and of both references (the full one per asset),
the pipeline's ratio to each, and the extrapolation of the pipeline's wall time to 500 symbols x
3 timeframes, with the cross-sectional steps' memory estimate at 500 symbols of 1h bars.
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
from collections.abc import Iterator
from contextlib import contextmanager
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
        self.kinds: dict[int, str] = {}  # pid -> what the process is (cli, daemon, code server...)
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
                if self.kinds.get(pid) in (None, "execution daemon", "CLI", "other"):
                    self.kinds[pid] = self._kind(pid)  # (a child is seen before its exec)
            stack.extend(children.get(pid, []))
        for pid, (start, _) in list(self.cpu_ticks.items()):
            if pid in ticks and ticks[pid][0] == start:
                self.cpu_ticks[pid] = ticks[pid]
        return total

    @staticmethod
    def _kind(pid: int) -> str:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return "other"
        for needle, kind in (
            ("warm_worker", "warm run workers"),
            ("api grpc", "code servers"),
            ("defs.daemon", "execution daemon"),
            ("materialize", "CLI"),
            ("watch_orphans", "run orphan watchers"),
            ("execute_run", "run processes"),
        ):
            if needle in cmd:
                return kind
        return "other"

    def cpu_by_kind(self) -> dict[str, tuple[int, float]]:
        """(processes, CPU-s) per kind of process."""
        out: dict[str, tuple[int, float]] = {}
        for pid, (_, t) in self.cpu_ticks.items():
            kind = self.kinds.get(pid, "other")
            count, seconds = out.get(kind, (0, 0.0))
            out[kind] = (count + 1, seconds + t / os.sysconf("SC_CLK_TCK"))
        return out

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
        steps: dict[str, float] = {}
        for record in records:
            for stat in instance.get_run_step_stats(record.dagster_run.run_id):
                if stat.start_time and stat.end_time:
                    steps[stat.step_key] = steps.get(stat.step_key, 0.0) + (
                        stat.end_time - stat.start_time
                    )
    return {
        "steps": steps,
        "by_kind": sampler.cpu_by_kind(),
        "wall": wall,
        "cpu": cpu,
        "runs": runs,
        "util": cpu / wall,
        "util_training": sampler.utilization(*window),
        "training_window": window[1] - window[0],
        "peak_rss": sampler.peak_rss,
        "tail": output.strip().splitlines()[-1],
    }


def run_reference(
    symbols: list[str], timeframes: list[str], start: datetime, end: datetime
) -> float:
    """CPU-seconds of the core reference (the issue's list of computations), in this process."""
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
    from quant_assets.lib.sources.synthetic import SyntheticSource
    from quant_assets.lib.splits import make_splits
    from quant_assets.lib.training import ModelConfig, predict_proba, train_with_cv

    started = time.process_time()
    # the pipeline's source: seed 7 from its first bar (Settings.synthetic_start), not the
    # source's own default start a year earlier
    source = SyntheticSource(seed=7, start=start, end=end)
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


def _warm_imports() -> None:
    """Import what `quant_assets.lib` imports lazily, so neither reference is timed importing it."""
    import arch  # noqa: F401
    import lightgbm  # noqa: F401
    import scipy.signal  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.isotonic  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401

    import quant_assets.defs.evaluation  # noqa: F401  (the Config classes of the full reference)
    import quant_assets.defs.features  # noqa: F401
    import quant_assets.defs.labels  # noqa: F401
    import quant_assets.defs.meta  # noqa: F401
    import quant_assets.defs.models  # noqa: F401
    import quant_assets.defs.signals  # noqa: F401
    import quant_assets.defs.volatility  # noqa: F401


class CpuClock:
    """CPU-seconds of this process (every thread: `time.process_time`) summed per asset."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, asset: str) -> Iterator[None]:
        started = time.process_time()
        try:
            yield
        finally:
            elapsed = time.process_time() - started
            self.seconds[asset] = self.seconds.get(asset, 0.0) + elapsed


def run_full_reference(
    symbols: list[str], timeframes: list[str], start: datetime, end: datetime
) -> dict[str, float]:
    """CPU-seconds per asset of every asset's computation (module docstring, "full"), as the asset
    computes it with its default Config on a fresh store, without tracking, plots or storage."""
    import functools
    import math

    import numpy as np
    import polars as pl

    from quant_assets.defs.evaluation import EvaluationConfig
    from quant_assets.defs.features import FeaturesConfig
    from quant_assets.defs.labels import LabelsConfig
    from quant_assets.defs.meta import (
        EnsembleAssetConfig,
        MetaFilterAssetConfig,
        MetaLearnerConfig,
        RegimeAssetConfig,
    )
    from quant_assets.defs.models import (
        DatasetConfig,
        GlobalTrainingConfig,
        ModelTrainingConfig,
        SplitsConfig,
    )
    from quant_assets.defs.signals import SignalsConfig
    from quant_assets.defs.volatility import VolatilityConfig
    from quant_assets.lib.calendars import annualization_kind, infer_calendar
    from quant_assets.lib.datasets import (
        EXCLUDED_FEATURES,
        build_global_dataset,
        build_training_dataset,
        dataset_from_frame,
    )
    from quant_assets.lib.errors import SplitConfigError
    from quant_assets.lib.execution import ExecutionRules
    from quant_assets.lib.features import (
        XS_SOURCES,
        compute_features,
        cross_sectional_ranks,
        multi_timeframe_snapshot,
    )
    from quant_assets.lib.health import PER_SIGNAL
    from quant_assets.lib.ingest import refresh_bars
    from quant_assets.lib.labels import build_labels, label_summary
    from quant_assets.lib.leakage import (
        label_lookahead_report,
        mtf_lookahead_violations,
        recursive_analysis,
    )
    from quant_assets.lib.live import training_signal_quality
    from quant_assets.lib.lookback import lookback_start_row, shifted_plan
    from quant_assets.lib.meta import (
        BacktestSettings,
        EnsembleConfig,
        MetaConfig,
        MetaFilterConfig,
        compare_ensembles,
        degenerate_filter_input,
        degenerate_meta_input,
        filter_report,
        meta_frame,
        primary_side,
        train_meta_filter,
        train_meta_learners,
        voting,
    )
    from quant_assets.lib.meta import ensemble_signals as combine_signals
    from quant_assets.lib.performance import annualization
    from quant_assets.lib.primary import PrimaryConfig
    from quant_assets.lib.primary import primary_signals as primary_signal_frame
    from quant_assets.lib.promotion import (
        GateConfig,
        SelectionStats,
        ensemble_calibration,
        evaluate_gates,
    )
    from quant_assets.lib.regimes import RegimeConfig, regimes
    from quant_assets.lib.serving import ServedVersions, agent_rows
    from quant_assets.lib.signals import (
        choose_long_threshold,
        choose_short_threshold,
        resolve_long_threshold,
        resolve_short_threshold,
    )
    from quant_assets.lib.sources.synthetic import SyntheticSource
    from quant_assets.lib.splits import make_splits
    from quant_assets.lib.tracking import LoadedModel, registered_model_name
    from quant_assets.lib.training import (
        SkippedTraining,
        fit_per_symbol_calibrators,
        train_with_cv,
    )
    from quant_assets.lib.trials import (
        ConfigTrials,
        compared_selection,
        holdout_scores,
        model_config_id,
        oof_predictions_frame,
        selection_evidence,
        selection_stats,
        training_trial_record,
    )
    from quant_assets.lib.validation import ohlcv_quality
    from quant_assets.lib.volatility import (
        VolatilityFitError,
        evaluate_out_of_fold,
        fit_garch,
        log_returns,
        volatility_frame,
    )

    cpu = CpuClock()
    keys = [(s, t) for s in symbols for t in timeframes]

    def split_plan(split, frame):  # defs.models._split_plan
        return make_splits(
            split.scheme,
            frame.height,
            frame["t0"],
            frame["t1"],
            holdout_fraction=split.holdout_fraction,
            **split.scheme_params(),
        )

    def decision_thresholds(dataset, result):
        """What log_training_run computes before logging: the long threshold chosen on the
        out-of-fold predictions, the trial record (trials.json), the short threshold; returns
        (the version tags the evaluation and signals read, the trial record)."""
        frame, oof = dataset.frame, result.oof
        oof_ret = frame["ret"].gather(oof["row"]).to_numpy() if "ret" in frame.columns else None
        searched = oof_ret is not None and dataset.target == "take_profit"
        prob = oof["prob_cal"].to_numpy() if not oof.is_empty() else np.empty(0)
        threshold = choose_long_threshold(prob, oof_ret) if searched and prob.size else 0.5
        config = result.config
        config_id = model_config_id(
            config.model_type,
            config.model_params(),
            config.seed,
            config.calibration,
            dataset.target,
        )
        trials = training_trial_record(
            config_id,
            {"model_type": config.model_type, "params": config.model_params()},
            prob,
            oof_ret if searched and prob.size else None,
            threshold,
        )
        tags = {"decision_threshold": f"{threshold:.2f}", "config_id": config_id}
        if searched and prob.size:
            short = choose_short_threshold(prob, oof_ret)
            tags["decision_threshold_short"] = "" if short is None else f"{short:.2f}"
        return tags, trials

    def labels_of(bars, features, timeframe, benchmark, params):  # defs.labels._labels_of
        def compute(cut: pl.DataFrame) -> pl.DataFrame:
            known = None
            if benchmark is not None and cut.height:
                known = benchmark.filter(pl.col("timestamp") <= cut["timestamp"][-1])
            return build_labels(
                cut, features["atr_14"].head(cut.height), timeframe, benchmark=known, **params
            )

        frame = compute(bars)
        label_summary(frame)  # the class_balance check
        label_lookahead_report(compute, bars, timeframe)  # the labels_known_after_entry check
        return frame

    # ohlcv: the source's bars (a fresh store: the initial load) and the checks' quality report
    ohlcv: dict[tuple[str, str], pl.DataFrame] = {}
    with cpu("ohlcv"):
        source = SyntheticSource(seed=7, start=start, end=end)
        now = datetime.now(UTC)
        for s, t in keys:
            frame = refresh_bars(source, s, t, None).frame
            ohlcv_quality(frame, t, infer_calendar(frame, t), now)
            ohlcv[(s, t)] = frame

    # features: each partition computes its coarser timeframes' features itself
    features = {}
    config = FeaturesConfig()
    with cpu("features"):
        for s, t in keys:
            bars = ohlcv[(s, t)]
            coarser = [
                u for u in config.snapshot_timeframes if u in timeframes and _secs(u) > _secs(t)
            ]
            base = compute_features(bars, t)
            higher = {u: compute_features(ohlcv[(s, u)], u) for u in coarser}
            snapshot = multi_timeframe_snapshot(base.select("timestamp"), t, higher)
            features[(s, t)] = base.join(
                snapshot, on="timestamp", how="left", maintain_order="left"
            )
            recursive_analysis(
                functools.partial(compute_features, timeframe=t), bars, n_cuts=config.leakage_cuts
            )
            mtf_lookahead_violations(base.select("timestamp"), t, snapshot, higher)

    ranks = {}
    with cpu("cross_sectional_ranks"):
        columns = ("timestamp", *XS_SOURCES.values())  # what the asset reads of each symbol
        for t in timeframes:
            ranks[t] = cross_sectional_ranks({s: features[(s, t)].select(columns) for s in symbols})

    labels = {}
    config = LabelsConfig()
    with cpu("labels"):
        params = config.model_dump(exclude={"benchmark_symbol"})
        for s, t in keys:
            benchmark = ohlcv.get((config.benchmark_symbol, t))
            if benchmark is not None:
                benchmark = benchmark.select("timestamp", "close")
            labels[(s, t)] = labels_of(ohlcv[(s, t)], features[(s, t)], t, benchmark, params)

    stored = {}  # what training_dataset stores
    config = DatasetConfig()
    with cpu("training_dataset"):
        for s, t in keys:
            mine = ranks[t].filter(pl.col("symbol") == s)
            dataset = build_training_dataset(
                features[(s, t)], labels[(s, t)], mine, target=config.target, symbol=s
            )
            stored[(s, t)] = dataset.frame.with_columns(pl.lit(config.target).alias("target"))

    plans = {}
    config = SplitsConfig()
    with cpu("walk_forward_splits"):
        for s, t in keys:
            frame = stored[(s, t)]
            first = lookback_start_row(frame["timestamp"], config.lookback(t))
            window = frame.slice(first)
            try:
                plan = split_plan(config.split_config(window.height), window)
                plans[(s, t)] = shifted_plan(plan, first)
            except SplitConfigError:  # no folds: training skips the partition
                plans[(s, t)] = None

    trained = {}
    config = ModelTrainingConfig()
    with cpu("challenger_model"):
        for s, t in keys:
            if plans[(s, t)] is None:
                continue
            frame = stored[(s, t)]
            dataset = dataset_from_frame(frame, symbol=s)
            result = train_with_cv(
                dataset, plans[(s, t)], config.to_model_config(), min_rows=config.min_rows
            )
            if isinstance(result, SkippedTraining):
                continue
            if "ret" in frame.columns and not result.oof.is_empty():  # _training_quality
                prob = result.oof["prob_cal"].to_numpy()
                ret = frame["ret"].gather(result.oof["row"]).to_numpy()
                training_signal_quality(prob, ret, choose_long_threshold(prob, ret), PER_SIGNAL)
            tags, trials = decision_thresholds(dataset, result)
            oof = oof_predictions_frame(result.oof) if not result.oof.is_empty() else None
            trained[(s, t)] = (result, tags, trials, oof)

    config = GlobalTrainingConfig()
    with cpu("global_challenger_model"):
        for t in timeframes:
            datasets = {
                s: dataset_from_frame(
                    stored[(s, t)].tail(config.rows_per_symbol(len(symbols))), symbol=s
                )
                for s in symbols
                if stored[(s, t)].height
            }
            if not datasets:
                continue
            dataset = build_global_dataset(datasets)
            try:
                plan = split_plan(config.splits.split_config(dataset.frame.height), dataset.frame)
            except SplitConfigError:
                continue
            result = train_with_cv(
                dataset, plan, config.to_model_config(), min_rows=config.min_rows
            )
            if isinstance(result, SkippedTraining):
                continue
            method = config.calibration if config.calibration != "none" else "isotonic"
            fit_per_symbol_calibrators(result.oof, method, pooled=result.calibrator)
            decision_thresholds(dataset, result)

    vol_champions = {}  # promoted when GARCH's out-of-fold QLIKE beats the naive forecast's
    config = VolatilityConfig()
    with cpu("volatility_model"):
        for s, t in keys:
            close = ohlcv[(s, t)]["close"]
            try:
                evaluation = evaluate_out_of_fold(
                    close, config.horizon, folds=config.folds, min_train=config.min_train
                )
                model = fit_garch(
                    log_returns(close.to_numpy()),
                    config.horizon,
                    where=registered_model_name(s, t, "volatility"),
                )
            except VolatilityFitError:
                continue
            evaluation.as_metrics()
            if evaluation.beats_naive:
                vol_champions[(s, t)] = model

    regime = {}
    config = RegimeAssetConfig()
    with cpu("regime"):
        for s, t in keys:
            feats = features[(s, t)]
            train_end = None
            if config.method == "kmeans":
                warm = feats.filter(pl.col("is_warm"))["timestamp"]
                train_end = warm[int((warm.len() - 1) * config.train_fraction)]
            regime_config = RegimeConfig(
                method=config.method,
                quantile_window=config.quantile_window,
                train_end=train_end,
                n_clusters=config.n_clusters,
                seed=config.seed,
            )
            frame = regimes(feats, regime_config)
            cuts = [int(frame.height * q) for q in (0.5, 0.75, 0.9)]
            if train_end is not None:
                end_row = int(feats["timestamp"].search_sorted(train_end, side="right"))
                cuts = [max(c, end_row + 1) for c in cuts]
            for cut in cuts:  # the regime_no_lookahead check
                regimes(feats.head(cut), regime_config).equals(frame.head(cut))
            regime[(s, t)] = frame

    primary = {}
    with cpu("primary_signals"):
        for s, t in keys:
            bars = ohlcv[(s, t)].join(
                features[(s, t)].select("timestamp"), on="timestamp", how="semi"
            )
            primary[(s, t)] = primary_signal_frame(bars, features[(s, t)], PrimaryConfig())

    def meta_input(key):
        return meta_frame(ohlcv[key], features[key], primary[key], regime[key], labels[key])

    learners = {}  # (meta-learner per regime, hold-out start)
    config = MetaLearnerConfig()
    with cpu("meta_learner"):
        meta_config = MetaConfig(
            model_type=config.model_type,
            lookback_bars=config.lookback_bars,
            min_samples_per_regime=config.min_samples_per_regime,
            max_ece=config.max_ece,
            seed=config.seed,
        )
        for key in keys:
            frame = meta_input(key)
            if degenerate_meta_input(frame, meta_config):
                continue
            report = train_meta_learners(frame, meta_config)
            holdout_start = report.data["timestamp"][int(report.plan.holdout_idx[0])]
            learners[key] = (report.models, holdout_start)

    config = MetaFilterAssetConfig()
    with cpu("meta_filter"):
        for s, t in keys:
            frame = meta_input((s, t))
            filter_config = MetaFilterConfig(
                threshold=config.threshold,
                model_type=config.model_type,
                min_events=config.min_events,
                backtest=BacktestSettings(calendar_kind=annualization_kind(ohlcv[(s, t)], t)),
            )
            if degenerate_filter_input(frame, config.primary, filter_config):
                continue
            result = train_meta_filter(frame, config.primary, filter_config, timeframe=t)
            if result is not None and result.model is not None:
                filter_report(frame, result)

    champions = {}  # the challenger, where the gates promoted it (`champion` moves the alias)
    config = EvaluationConfig()
    with cpu("champion_challenger_evaluation"):
        gate_config = config.gate_config()
        for s, t in keys:
            if (s, t) not in trained:
                continue
            result, tags, trials, oof = trained[(s, t)]
            name = registered_model_name(s, t)
            model = LoadedModel(
                name=name,
                version="1",
                run_id="",
                model_type=result.config.model_type,
                # what MLflow stores and loads of a LightGBM model: its Booster
                model=result.model.booster_
                if result.config.model_type == "lightgbm"
                else result.model,
                calibrator=result.calibrator,
                feature_columns=list(result.feature_columns),
                tags=tags,
            )
            bars = ohlcv[(s, t)]
            holdout = stored[(s, t)][plans[(s, t)].holdout_idx]
            atr = features[(s, t)].select("timestamp", "atr_14")
            ppy = annualization(t, annualization_kind(bars, t))
            evidence = None
            if oof is not None:  # partition_trials: the challenger's trials, no others yet
                tagged = tags.get("decision_threshold_short")
                if tagged is None:
                    short = trials.get("chosen_threshold_short")
                else:
                    short = float(tagged) if tagged else None
                challenger = ConfigTrials(
                    trials["config_id"],
                    f"{model.model_type} v1",
                    oof,
                    trials["eligible_thresholds"],
                    float(trials["chosen_threshold"]),
                    short,
                )
                evidence = selection_evidence(
                    challenger,
                    [],
                    bars,
                    atr,
                    t,
                    ppy,
                    config.trade_rules(),
                    pbo_blocks=config.pbo_blocks,
                    pbo_min_trials=config.pbo_min_trials,
                )
            n_trials = evidence.n_trials if evidence is not None else 1
            variance = evidence.trials_variance if evidence is not None else None
            # score_on_holdout
            scored = holdout.select("timestamp", "y").with_columns(
                pl.Series("prob", model.predict_proba(holdout))
            )
            priced = scored.join(bars.select("timestamp", "close"), on="timestamp").join(
                atr, on="timestamp"
            )
            metrics, backtest = holdout_scores(
                priced["y"].to_numpy(),
                priced["prob"].to_numpy(),
                priced,
                bars,
                config.long_threshold(model),
                t,
                ppy,
                config.trade_rules(),
                n_trials,
                variance,
                threshold_short=config.short_threshold(model),
            )
            if evidence is not None:
                selection = selection_stats(evidence, backtest, ppy, gate_config)
                evidence.as_metrics(ppy)
            else:
                nan = math.nan
                selection = SelectionStats(
                    dsr=nan,
                    n_trials=0,
                    trials_variance=nan,
                    track_record=nan,
                    min_track_record=nan,
                    profitable_fold_share=nan,
                    n_folds=0,
                    pbo=None,
                    pbo_reason="no out-of-fold predictions",
                )
            decision = evaluate_gates(metrics, None, gate_config, selection=selection)
            if decision.promote:
                champions[(s, t)] = model

    ensembles = {}  # the ensemble's stored signals, where it is served
    config = EnsembleAssetConfig()
    with cpu("ensemble_signals"):
        gates = GateConfig(
            min_sortino=config.min_sortino,
            min_profit_factor=config.min_profit_factor,
            max_drawdown=config.max_drawdown,
            max_ece=config.max_ece,
            min_trades=config.min_trades,
            min_dsr=config.min_dsr,
            min_trl_confidence=config.min_trl_confidence,
            min_trl_benchmark_sharpe=config.min_trl_benchmark_sharpe,
        )
        for s, t in keys:
            if (s, t) not in learners:  # meta-learners skipped: so is the ensemble
                continue
            models, holdout_start = learners[(s, t)]
            bars = ohlcv[(s, t)]
            frame = meta_input((s, t))
            other = "weighted" if config.mode == "filter" else "filter"
            modes = {
                mode: combine_signals(
                    frame,
                    models,
                    EnsembleConfig(
                        mode=mode, max_ece=config.max_ece, min_confidence=config.min_confidence
                    ),
                )
                for mode in (config.mode, other)
            }
            combined = modes[config.mode]
            reasons = dict(combined.fallbacks)
            in_holdout = frame["timestamp"] >= holdout_start
            hold = frame.filter(in_holdout)
            votes = voting(hold, combined.config.min_agreement)
            variants = {
                "primary_trend": primary_side(hold, "trend").select("side"),
                "voting": votes.select(pl.col("vote_side").alias("side")),
                **{
                    f"meta_{mode}": result.signals.filter(in_holdout).select("side", "size")
                    for mode, result in modes.items()
                },
            }
            champion = champions.get((s, t))
            if champion is not None:  # _champion_sides
                rows = (
                    hold.select("timestamp")
                    .join(features[(s, t)], on="timestamp", how="left")
                    .join(
                        ranks[t].filter(pl.col("symbol") == s).drop("symbol", "xs_n_symbols"),
                        on="timestamp",
                        how="left",
                    )
                )
                prob = champion.predict_proba(
                    rows.with_columns(pl.col(champion.feature_columns).fill_null(np.nan))
                )
                threshold = resolve_long_threshold(
                    None, champion.decision_threshold, 1.75, 1.0, 0.05
                )
                sides = np.where(np.isfinite(prob) & (prob >= threshold), 1, 0).astype(np.int8)
                variants["champion"] = pl.Series("side", sides)
            settings = BacktestSettings(calendar_kind=annualization_kind(bars, t))
            comparison = compare_ensembles(hold, bars, variants, t, settings)
            metrics = {row["variant"]: row for row in comparison.summary.iter_rows(named=True)}
            ppy = settings.periods_per_year(t)
            selection = compared_selection(
                {name: f["net_ret"].to_numpy() for name, f in comparison.per_bar.items()},
                f"meta_{config.mode}",
                ppy,
                gates,
            )
            used = [m.ece for r, m in models.items() if m is not None and r not in reasons]
            ece, not_applicable = ensemble_calibration(used)
            decision = evaluate_gates(
                {**metrics[f"meta_{config.mode}"], "ece": ece},
                metrics.get("champion"),
                gates,
                selection=selection.stats(),
                not_applicable=not_applicable,
            )
            selection.as_metrics(ppy)
            if decision.promote:
                ensembles[(s, t)] = combined.signals.tail(config.lookback_bars)

    config = SignalsConfig()
    with cpu("signals"):
        for s, t in keys:
            model = champions.get((s, t))
            if model is None:  # no champion: the asset records that and scores nothing
                continue
            bars, feats = ohlcv[(s, t)], features[(s, t)]
            mine = ranks[t].filter(pl.col("symbol") == s).drop("symbol", "xs_n_symbols")
            recent = (
                feats.filter(pl.col("is_warm"))
                .drop(EXCLUDED_FEATURES, strict=False)
                .join(mine, on="timestamp", how="left")
                .join(bars.select("timestamp", "close"), on="timestamp")
                .join(feats.select("timestamp", "atr_14"), on="timestamp")
                .tail(config.lookback_bars)
                .drop_nulls(model.feature_columns)
            )
            prob = model.predict_proba(recent)
            threshold_long = resolve_long_threshold(
                config.threshold_long,
                model.decision_threshold,
                config.tp_mult,
                config.sl_mult,
                config.edge,
            )
            rules = ExecutionRules(
                threshold_long=threshold_long,
                threshold_short=resolve_short_threshold(
                    config.threshold_short, model.decision_threshold_short, threshold_long
                )
                if config.shorts
                else None,
                sl_mult=config.sl_mult,
                tp_mult=config.tp_mult,
                horizon=config.horizon,
                periods_per_year=annualization(t, annualization_kind(bars, t)),
                target_vol=config.target_vol,
                use_regime_gate=config.use_regime_gate,
            )
            rows = recent.select("timestamp", "close", "atr_14").with_columns(
                pl.Series("prob_up", prob)
            )
            # _other_agents: the regime agent, and the volatility champion's sigma
            rows = rows.join(
                regime[(s, t)].select("timestamp", "regime", "gate"), on="timestamp", how="left"
            )
            if (s, t) in vol_champions:
                sigma = volatility_frame(bars["timestamp"], bars["close"], vol_champions[(s, t)])
                rows = rows.join(sigma, on="timestamp", how="left")
            if (s, t) in ensembles:  # the served ensemble decides the side
                rows = rows.join(
                    ensembles[(s, t)].select(
                        "timestamp",
                        pl.col("side").alias("ensemble_side"),
                        pl.col("size").alias("ensemble_size"),
                    ),
                    on="timestamp",
                    how="left",
                )
            served = ServedVersions(
                symbol=s,
                timeframe=t,
                model_name=model.name,
                model_version=model.version,
                mlflow_run_id="",
                agent_version_id=None,
                vol_version_id=None,
                dagster_run_id="",
                data_version="",
                horizon=config.horizon,
            )
            agent_rows(rows, rules, served)
    return cpu.seconds


def _secs(timeframe: str) -> int:
    from quant_assets.lib.timeframes import timeframe_seconds

    return timeframe_seconds(timeframe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--timeframes", default="1h,4h,1d")
    parser.add_argument("--years", type=float, default=3.0)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip-reference", action="store_true")
    which.add_argument(
        "--reference-only", action="store_true", help="the two references alone, no pipeline run"
    )
    parser.add_argument(
        "--keep", type=Path, help="run in this directory and keep it (instance, MLflow store)"
    )
    args = parser.parse_args()
    # the references, like the pipeline's run processes, with one native math thread (before NumPy
    # loads): on a shared core OpenBLAS's and OpenMP's waiting threads would count as their CPU
    from quant_assets.lib.processes import run_process_env

    os.environ.update(run_process_env())
    symbols = universe(args.symbols)
    timeframes = args.timeframes.split(",")
    start = datetime(2023, 1, 1, tzinfo=UTC)
    end = datetime.fromtimestamp(start.timestamp() + args.years * 365.25 * 86400, UTC)
    end = end.replace(minute=0, second=0, microsecond=0)
    partitions = len(symbols) * len(timeframes)
    print(f"{len(symbols)} symbols x {len(timeframes)} timeframes = {partitions} partitions; "
          f"synthetic bars {start:%Y-%m-%d} .. {end:%Y-%m-%d}; {os.cpu_count()} cores")  # fmt: skip
    pipe = None if args.reference_only else pipeline_part(args, symbols, timeframes, end)
    if not args.skip_reference:
        _warm_imports()
        core = run_reference(symbols, timeframes, start, end)
        print(f"reference, core (the issue's list: features, labels, ranks, dataset, splits, "
              f"training with CV and calibration, hold-out backtest, meta layer): {core:.1f} "
              f"CPU-s = {core / partitions:.2f} CPU-s per partition")  # fmt: skip
        per_asset = run_full_reference(symbols, timeframes, start, end)
        full = sum(per_asset.values())
        print(f"reference, full (every asset's computation, no tracking/plots/storage): "
              f"{full:.1f} CPU-s = {full / partitions:.2f} CPU-s per partition")  # fmt: skip
        for asset, seconds in sorted(per_asset.items(), key=lambda kv: -kv[1]):
            print(
                f"    {asset:<32} {seconds:7.1f} CPU-s  {seconds / partitions:6.2f} per partition"
            )
        if pipe is not None:
            print(
                f"ratio pipeline / reference core (CPU-s per partition): {pipe['cpu'] / core:.2f}"
            )
            print(
                f"ratio pipeline / reference full (CPU-s per partition): {pipe['cpu'] / full:.2f}"
            )
    if pipe is None:
        return
    scale = 500 / len(symbols)
    print(f"extrapolated to 500 symbols x {len(timeframes)} timeframes: "
          f"{pipe['wall'] * scale / 60:.0f} min wall (linear in symbols)")  # fmt: skip
    hours = args.years * 365.25 * 24
    # cross_sectional_ranks reads timestamp + 3 columns of every symbol, then ranks (about 3 copies)
    estimate = 500 * hours * 8 * 4 * 3 / 2**30
    print(
        f"cross-sectional ranks at 500 symbols of 1h bars: about {estimate:.1f} GiB peak "
        "(4 of the feature columns per symbol; the global model reads at most 400,000 rows in "
        "all: max_rows, 20,000 per symbol up to 20 symbols)"
    )


def pipeline_part(
    args: argparse.Namespace, symbols: list[str], timeframes: list[str], end: datetime
) -> dict:
    """The pipeline run and its lines."""
    partitions = len(symbols) * len(timeframes)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=False)
        pipe = run_pipeline(symbols, timeframes, end.isoformat(), args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
            pipe = run_pipeline(symbols, timeframes, end.isoformat(), Path(tmp))
    print(f"pipeline (CLI -> one backfill -> {pipe['runs']} runs): wall {pipe['wall']:.1f} s, "
          f"CPU {pipe['cpu']:.1f} s = {pipe['cpu'] / partitions:.2f} CPU-s per partition")  # fmt: skip
    print(f"  CPU utilization {pipe['util']:.0%} overall, {pipe['util_training']:.0%} during the "
          f"training stage ({pipe['training_window']:.0f} s); peak RSS of the process tree "
          f"{pipe['peak_rss'] / 2**30:.2f} GiB")  # fmt: skip
    print(f"  {pipe['tail']}")
    print("  CPU by process (a process started and ended between two samples is missed):")
    for kind, (count, seconds) in sorted(pipe["by_kind"].items(), key=lambda kv: -kv[1][1]):
        print(f"    {kind:<28} {seconds:7.1f} CPU-s in {count} process(es)")
    print("  step wall time summed over runs (concurrent steps overlap), largest first:")
    for step, seconds in sorted(pipe["steps"].items(), key=lambda kv: -kv[1]):
        print(f"    {step:<28} {seconds:7.1f} s  {seconds / partitions:6.2f} s per partition")
    return pipe


if __name__ == "__main__":
    main()
