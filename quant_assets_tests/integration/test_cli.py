"""The `quant-assets` command end to end in a temporary directory, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

pytestmark = pytest.mark.slow


def _cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("QUANT_ASSETS_", "DAGSTER_"))
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "quant_assets.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_help_lists_commands_and_settings(tmp_path: Path) -> None:
    out = _cli(tmp_path, "--help")
    assert out.returncode == 0
    for word in ("demo", "symbols", "materialize", "QUANT_ASSETS_SOURCE", "DAGSTER_HOME"):
        assert word in out.stdout
    out = _cli(tmp_path, "materialize", "--help")
    assert "--select" in out.stdout and "--timeframes" in out.stdout


def test_symbols_and_materialize_on_the_synthetic_source(tmp_path: Path) -> None:
    assert _cli(tmp_path, "symbols", "list").stdout.startswith("no symbols registered")
    out = _cli(tmp_path, "symbols", "add", "btc/usdt", "SPY")
    assert out.returncode == 0 and "added: BTCUSDT, SPY" in out.stdout
    bad = _cli(tmp_path, "symbols", "add", "BTC|USDT")
    assert bad.returncode == 2 and "'|'" in bad.stderr
    assert (tmp_path / "watchlist.txt").read_text().splitlines()[1:] == ["BTCUSDT", "SPY"]

    out = _cli(
        tmp_path, "materialize", "--select", "ohlcv", "--symbols", "BTCUSDT", "--timeframes", "1h"
    )
    assert out.returncode == 0, out.stderr
    assert "[1/1] SUCCESS  ohlcv [BTCUSDT|1h]" in out.stdout
    assert "summary: 1 succeeded, 0 failed, 0 skipped" in out.stdout
    assert (tmp_path / "artifacts" / "ohlcv" / "BTCUSDT" / "1h.parquet").exists()

    too_fine = _cli(tmp_path, "materialize", "--select", "ohlcv", "--timeframes", "5m")
    assert too_fine.returncode == 2 and "finer than the source's data" in too_fine.stderr
    unknown = _cli(tmp_path, "materialize", "--symbols", "DOGEUSDT")
    assert unknown.returncode == 2 and "quant-assets symbols add DOGEUSDT" in unknown.stderr

    out = _cli(tmp_path, "symbols", "remove", "SPY")
    assert "removed: SPY" in out.stdout
    assert _cli(tmp_path, "symbols", "list").stdout.split() == ["BTCUSDT"]

    # runs went to the project-local instance, visible to the UI
    os.environ["DAGSTER_HOME"] = str(tmp_path / ".dagster_home")
    try:
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs()
            assert len(runs) == 1 and runs[0].is_success
            assert runs[0].tags["dagster/partition"] == "BTCUSDT|1h"
    finally:
        del os.environ["DAGSTER_HOME"]


def test_files_source_good_then_broken_csv(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(
        f"2025-03-{d:02d},{100 + d},{102 + d},{99 + d},{101 + d},{101 + d},{10_000 + d}\n"
        for d in range(3, 29)
        if d not in (8, 9, 15, 16, 22, 23)
    )
    header = "Date,Open,High,Low,Close,Adj Close,Volume\n"
    (data / "SPY.csv").write_text(header + rows)
    env = {"QUANT_ASSETS_SOURCE": f"files:{data}"}
    assert _cli(tmp_path, "symbols", "add", "SPY", env=env).returncode == 0
    out = _cli(tmp_path, "materialize", "--select", "ohlcv", "--timeframes", "1d", env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    parquet = tmp_path / "artifacts" / "ohlcv" / "SPY" / "1d.parquet"
    before = parquet.read_bytes()

    (data / "SPY.csv").write_text(header + rows + "2025-03-31,105,106,104,not-a-price,105,9000\n")
    out = _cli(tmp_path, "materialize", "--select", "ohlcv", "--timeframes", "1d", env=env)
    assert out.returncode == 1
    assert "SPY.csv" in out.stderr and "close" in out.stderr.lower()
    assert "summary: 0 succeeded, 1 failed" in out.stdout
    assert parquet.read_bytes() == before
