"""`quant-assets demo` as a new user runs it (the README's first command, in a fresh directory, on the
embedded defaults): it must end with the same champions and their signals in SQL on every machine
and every day. The demo is also the suite's test of the CLI's execution path on many partitions:
one backfill executed by Dagster's daemon, batched runs (a partition range per run), two runs at a
time, and rejected challengers that are successful runs with a WARN gate result and a `champion`
partition that keeps (no failed partition). The longest test (about two minutes on an idle
machine): it is scheduled first (conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.demo

CLI = str(Path(sys.executable).with_name("quant-assets"))

#: what the demo ends with (README, "Quick start"): partitions with a champion, and their signals
EXPECTED_CHAMPIONS = {"BTCUSDT|1h", "BTCUSDT|4h", "ETHUSDT|1h"}
PARTITIONS = {
    f"{s}|{tf}" for s in ("BTCUSDT", "ETHUSDT", "SPY", "AAPL") for tf in ("1h", "4h", "1d")
}


def _loading_span(log: Path) -> tuple[float, float]:
    """(started, ready) of a warm worker from its log line `<time> warm worker <pid> INFO loaded
    the code location in <seconds> s`: the time the line was written, less the load time (which
    leaves out the interpreter's own start, so `started` is a little late)."""
    from datetime import datetime

    for line in log.read_text().splitlines():
        if " INFO loaded the code location in " in line:
            ready = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            return ready - float(line.rsplit(" in ", 1)[1].removesuffix(" s")), ready
    raise AssertionError(f"{log} has no load line:\n{log.read_text()[-2000:]}")


def _check_the_execution(home: Path) -> None:
    """One backfill, batched and parallel runs that all succeed, rejections that are decisions."""
    from quant_assets.defs.backfills import check_outcomes

    with dg.DagsterInstance.from_config(str(home)) as instance:
        (backfill,) = instance.get_backfills()
        assert backfill.status.value == "COMPLETED_SUCCESS"
        assert backfill.tags["quant_assets/command"] == "demo"
        records = instance.get_run_records(dg.RunsFilter.for_backfill(backfill.backfill_id))
        runs = [r.dagster_run for r in records]
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        # batched: far fewer runs than asset partitions (16 assets x 12 + 2 x 3 + 2), at most
        # the 16: 3 + 3 + 1 + 3 + 3 + 1 = 14 when each stage is requested whole (README
        # "Execution"). 20 when the training stage was requested while one timeframe's meta layer
        # still ran, and Dagster ran the ensemble and the signals apart, a run per timeframe each:
        # the daemon now holds such a request until that run has finished (`holding_iteration`);
        # 55 unbatched
        assert len(runs) <= 16, [
            sorted(k.to_user_string() for k in r.asset_selection) for r in runs
        ]
        assert any("dagster/asset_partition_range_start" in run.tags for run in runs)
        # both cores: at least two runs overlapped in time
        spans = sorted((r.start_time, r.end_time) for r in records if r.start_time)
        assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
    # and the two pipeline workers loaded side by side (the launcher starts the second with the
    # first), not the second only once the first had taken its run
    loading = sorted(_loading_span(log) for log in (home / "warm_workers").glob("*-p[0-9].log"))
    assert len(loading) == 2, loading
    assert loading[1][0] < loading[0][1], f"the second worker started after the first: {loading}"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # every challenger judged once; a rejection is a WARN result in a successful run, and
        # `champion` is materialized for every partition (promote or keep), none failed
        gates = check_outcomes(instance, [run.run_id for run in runs], "promotion_gates")
        assert set(gates) == PARTITIONS
        assert {p for p, (passed, _) in gates.items() if passed} == EXPECTED_CHAMPIONS
        assert instance.get_materialized_partitions(dg.AssetKey("champion")) == PARTITIONS


def test_the_demo_ends_with_champions_and_their_signals_in_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QUANT_ASSETS_", "DAGSTER_", "MLFLOW_"))
    }
    done = subprocess.run(
        [CLI, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "COMPLETED_SUCCESS" in done.stdout, done.stdout[-4000:]
    # the CLI's summary tells the decisions the UI shows (gate results below)
    assert "promotion gates: 3 of 12 challenger(s) promoted" in done.stdout, done.stdout[-4000:]

    # read what the demo stored, through the same settings a user's shell would resolve there
    for var in [v for v in os.environ if v.startswith(("QUANT_ASSETS_", "DAGSTER_", "MLFLOW_"))]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    from quant_assets.cli import DEMO_SYNTHETIC_END, _registry
    from quant_assets.lib.registry_ops import model_exists
    from quant_assets.lib.settings import load_settings
    from quant_assets.lib.tracking import registered_model_name

    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_END", DEMO_SYNTHETIC_END)
    settings = load_settings()
    _check_the_execution(settings.dagster_home_path)
    tracker, store = _registry(settings)
    try:
        champions = set()
        for symbol in settings.universe:
            for timeframe in settings.timeframes:
                name = registered_model_name(symbol, timeframe)
                if model_exists(tracker, name) and "champion" in tracker.aliases(name):
                    champions.add(f"{symbol}|{timeframe}")
        assert champions == EXPECTED_CHAMPIONS, done.stdout[-4000:]
        signals = store.read_signals()
        for partition in sorted(champions):
            symbol, timeframe = partition.split("|")
            rows = signals.filter(
                (signals["symbol"] == symbol) & (signals["timeframe"] == timeframe)
            )
            # the champion's signals over the latest 500 bars, one row per bar
            assert rows.height == 500, f"{partition}: {rows.height} rows in agent_signals"
            assert rows["timestamp"].n_unique() == rows.height
            assert set(rows["side"].unique().to_list()) <= {-1, 0, 1}
            assert (rows["side"] == 1).any(), f"{partition}: the champion never goes long"
            assert rows["agent_version_id"].is_not_null().all()
        # the direction agent trades both sides (BTCUSDT 1h: 53 longs and 34 shorts, measured)
        assert (signals["side"] == -1).any(), "no short signal in the demo"
    finally:
        store.dispose()
