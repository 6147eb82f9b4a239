"""`quant-assets demo` as a new user runs it (the README's first command, in a fresh directory, on the
embedded defaults): it must end with the same champions and their signals in SQL on every machine
and every day. About five minutes, so it runs in CI after the suite (`make test-demo`), not in
`make test`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.demo

CLI = str(Path(sys.executable).with_name("quant-assets"))

#: what the demo ends with (README, "Quick start"): partitions with a champion, and their signals
EXPECTED_CHAMPIONS = {"BTCUSDT|1h", "BTCUSDT|4h", "ETHUSDT|1h", "ETHUSDT|4h"}


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
        # the direction agent trades both sides (BTCUSDT 1h: 152 longs and 48 shorts, measured)
        assert (signals["side"] == -1).any(), "no short signal in the demo"
    finally:
        store.dispose()
