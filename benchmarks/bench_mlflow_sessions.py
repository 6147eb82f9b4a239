"""CPU per MLflow run with a logged and registered model, as the pipeline's steps log them.

Each iteration opens a run through `Tracker.run` (tags), logs two parameters, a metric and a JSON
file, logs a scikit-learn logistic model with `Tracker.log_model` (signature, pip requirements,
registration with tags) and sets an alias: what a meta-learner's regime costs in MLflow, and
within a few milliseconds a challenger's or a meta-filter's. Two fresh SQLite stores,
interleaved: the tracker's (connection PRAGMAs set once per connection, `_pragmas_per_connection`)
and MLflow's stock session factory (three PRAGMA statements at the start of every session), the
reference, each in a process of its own. Prints CPU milliseconds per iteration for both, by phase,
and their ratio.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_mlflow_sessions.py            # 40 iterations x 3 rounds
    PYTHONPATH=. .venv/bin/python benchmarks/bench_mlflow_sessions.py --runs 100 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PHASES = ("open run", "params, metric, file", "log + register model", "close run, alias")


def _stock_sessions(tracker) -> None:
    """MLflow's own session factory on both stores (per-session PRAGMAs), as before the trim."""
    import sqlalchemy.orm
    from mlflow.store.db.utils import _get_managed_session_maker

    for store in (tracker.client._tracking_client.store, tracker._sql_registry()):
        store.ManagedSessionMaker = _get_managed_session_maker(
            sqlalchemy.orm.sessionmaker(bind=store.engine), "sqlite"
        )


def _iteration(tracker, model, example: pd.DataFrame, i: int, totals: dict[str, float]) -> None:
    name = f"meta.SYM{i % 8:03d}.1h.bull"
    marks = [time.process_time()]
    with tracker.run("bench_sessions", f"SYM{i % 8:03d}|1h bull", {"regime": "bull"}) as run_id:
        marks.append(time.process_time())
        tracker.log_params(run_id, {"meta.C": 1.0, "regime": "bull"})
        tracker.log_metrics(run_id, {"oof_auc": 0.55})
        tracker.log_dict(run_id, {"features": list(example.columns)}, "feature_list.json")
        marks.append(time.process_time())
        version = tracker.log_model(model, "logistic", example, name, {"regime": "bull"})
        marks.append(time.process_time())
    tracker.set_alias(name, "challenger", version.version)
    marks.append(time.process_time())
    for phase, start, end in zip(PHASES, marks[:-1], marks[1:], strict=True):
        totals[phase] += end - start


def _measure(variant: str, runs: int) -> dict[str, float]:
    """CPU milliseconds per iteration by phase, in this process, on a fresh store."""
    from sklearn.linear_model import LogisticRegression

    from quant_assets.lib.tracking import Tracker

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(2000, 10)), columns=[f"f{i}" for i in range(10)])
    y = (X["f0"] + rng.normal(size=2000) > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    example = X.head(5)
    with tempfile.TemporaryDirectory(prefix="bench_mlflow_sessions_") as tmp:
        tracker = Tracker(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        if variant == "stock":
            _stock_sessions(tracker)
        for i in range(3):  # warm-up: the experiment, the first models, lazy imports
            _iteration(tracker, model, example, i, dict.fromkeys(PHASES, 0.0))
        totals = dict.fromkeys(PHASES, 0.0)
        for i in range(runs):
            _iteration(tracker, model, example, i, totals)
    return {k: v / runs * 1000 for k, v in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="iterations per store and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median shown)")
    parser.add_argument("--variant", choices=("trimmed", "stock"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:  # one measurement, in a process of its own (MLflow's stores are per process)
        print(json.dumps(_measure(args.variant, args.runs)))
        return 0
    results: dict[str, list[dict[str, float]]] = {"trimmed": [], "stock": []}
    for _ in range(args.rounds):
        for variant, rounds in results.items():
            done = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--runs", str(args.runs)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            rounds.append(json.loads(done.stdout.strip().splitlines()[-1]))
    medians = {}
    for variant, rounds in results.items():
        total = statistics.median(sum(r.values()) for r in rounds)
        medians[variant] = total
        phases = ", ".join(
            f"{p} {statistics.median(r[p] for r in rounds):.1f}" for p in PHASES
        )  # fmt: skip
        print(f"{variant:8} {total:6.1f} ms CPU per run with a model ({phases})")
    print(
        f"trimmed / stock: {medians['trimmed'] / medians['stock']:.2f} "
        f"(medians of {args.rounds} interleaved rounds of {args.runs}, a process each)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
