"""The `quant-assets` command end to end in a temporary directory, as a user would run it.

Most calls go through `cli.main` in-process (the same code the console script runs, without paying
Dagster's import per call); one test runs the installed console script itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from quant_assets.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with no quant-assets environment: defaults apply."""
    monkeypatch.setenv(
        "DAGSTER_HOME", "unset"
    )  # the CLI sets it; monkeypatch restores it afterwards
    for var in list(os.environ):
        if var.startswith(("QUANT_ASSETS_", "DAGSTER_")) and var != "QUANT_ASSETS_REQUIRE_SERVICES":
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_console_script_help() -> None:
    script = shutil.which("quant-assets") or str(Path(os.sys.executable).parent / "quant-assets")
    out = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for word in ("demo", "symbols", "materialize", "QUANT_ASSETS_SOURCE", "DAGSTER_HOME"):
        assert word in out.stdout
    out = subprocess.run(
        [script, "materialize", "--help"], capture_output=True, text=True, timeout=120
    )
    assert "--select" in out.stdout and "--timeframes" in out.stdout


def test_symbols_and_materialize_on_the_synthetic_source(user_dir: Path, capsys) -> None:
    code, out, _ = _run(capsys, "symbols", "list")
    assert code == 0 and out.startswith("no symbols registered")
    code, out, _ = _run(capsys, "symbols", "add", "btc/usdt", "SPY")
    assert code == 0 and "added: BTCUSDT, SPY" in out
    code, _, err = _run(capsys, "symbols", "add", "BTC|USDT")
    assert code == 2 and "'|'" in err
    assert (user_dir / "watchlist.txt").read_text().splitlines()[1:] == ["BTCUSDT", "SPY"]

    code, out, err = _run(
        capsys, "materialize", "--select", "ohlcv", "--symbols", "BTCUSDT", "--timeframes", "1h"
    )
    assert code == 0, err
    assert "COMPLETED_SUCCESS: 1 run(s) success; 1/1 asset partitions done" in out
    assert (user_dir / "artifacts" / "ohlcv" / "BTCUSDT" / "1h.parquet").exists()

    code, _, err = _run(capsys, "materialize", "--select", "ohlcv", "--timeframes", "5m")
    assert code == 2 and "5m not configured" in err
    code, _, err = _run(capsys, "materialize", "--select", "bogus_asset")
    assert code == 2 and "bogus_asset" in err and "Traceback" not in err
    code, _, err = _run(capsys, "materialize", "--symbols", "DOGEUSDT")
    assert code == 2 and "quant-assets symbols add DOGEUSDT" in err

    code, out, _ = _run(capsys, "symbols", "remove", "SPY")
    assert "removed: SPY" in out
    code, out, _ = _run(capsys, "symbols", "list")
    assert out.split() == ["BTCUSDT"]

    # runs went to the project-local instance (created on first use), where the UI finds them
    home = user_dir / ".dagster_home"
    assert (home / "dagster.yaml").exists()
    assert os.environ["DAGSTER_HOME"] == str(home)
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].is_success
        # a backfill run of one partition, tagged with the invocation (the backfill)
        tags = runs[0].tags
        assert tags["dagster/asset_partition_range_start"] == "BTCUSDT|1h"
        assert tags["dagster/asset_partition_range_end"] == "BTCUSDT|1h"
        assert runs[0].tags["quant_assets/invocation"] == runs[0].tags["dagster/backfill"]


def test_files_source_good_then_broken_csv(user_dir: Path, capsys, monkeypatch) -> None:
    data = user_dir / "data"
    data.mkdir()
    weekdays = [d for d in range(3, 29) if d not in (8, 9, 15, 16, 22, 23)]  # March 2025
    rows = "".join(
        f"2025-03-{d:02d},{100 + d},{102 + d},{99 + d},{101 + d},{101 + d},{10_000 + d}\n"
        for d in weekdays
    )
    header = "Date,Open,High,Low,Close,Adj Close,Volume\n"
    (data / "SPY.csv").write_text(header + rows)
    monkeypatch.setenv("QUANT_ASSETS_SOURCE", f"files:{data}")
    assert _run(capsys, "symbols", "add", "SPY")[0] == 0
    code, out, err = _run(capsys, "materialize", "--select", "ohlcv", "--timeframes", "1d")
    assert code == 0, out + err
    parquet = user_dir / "artifacts" / "ohlcv" / "SPY" / "1d.parquet"
    before = parquet.read_bytes()

    (data / "SPY.csv").write_text(header + rows + "2025-03-31,105,106,104,not-a-price,105,9000\n")
    code, out, err = _run(capsys, "materialize", "--select", "ohlcv", "--timeframes", "1d")
    assert code == 1
    assert "SPY.csv" in err and "'Close'" in err and "not-a-price" in err
    assert "1 run(s) failure" in out
    assert parquet.read_bytes() == before


def test_materialize_config_file_reaches_the_asset(user_dir: Path, capsys) -> None:
    """Asset Config from --config (Launchpad style): labels computed with a custom horizon."""
    (user_dir / "run.yaml").write_text("ops:\n  labels:\n    config:\n      horizon: 3\n")
    assert _run(capsys, "symbols", "add", "ETHUSDT")[0] == 0
    code, out, err = _run(
        capsys, "materialize", "--select", "*labels", "--timeframes", "1d", "--config", "run.yaml"
    )
    assert code == 0, out + err
    import polars as pl

    labels = pl.read_parquet(user_dir / "artifacts" / "labels" / "ETHUSDT" / "1d.parquet")
    assert labels["holding_bars"].max() == 3
    (user_dir / "bad.yaml").write_text("- just a list\n")
    code, _, err = _run(capsys, "materialize", "--select", "labels", "--config", "bad.yaml")
    assert code == 2 and "bad.yaml" in err


def test_demo_command_runs_with_its_documented_options(user_dir: Path, capsys, monkeypatch) -> None:
    """`make demo` runs `quant-assets demo`: every option it documents must parse and run."""
    monkeypatch.setenv("QUANT_ASSETS_UNIVERSE", "BTCUSDT")
    monkeypatch.setenv("QUANT_ASSETS_TIMEFRAMES", "1d")
    config = user_dir / "demo.yaml"
    config.write_text("ohlcv: {}\n")
    code, out, err = _run(capsys, "demo", "--select", "ohlcv", "--config", str(config))
    assert code == 0, err
    assert "1/1 asset partitions done" in out
    assert (user_dir / "artifacts" / "ohlcv" / "BTCUSDT" / "1d.parquet").exists()


def test_a_partition_key_registered_from_outside_cannot_escape_the_artifacts(
    user_dir: Path, capsys
) -> None:
    """A symbol added through the UI or GraphQL skips the CLI's normalisation: the CLI refuses to
    run it (exit 2, naming it), and a step given it fails before building any path."""
    assert _run(capsys, "symbols", "add", "BTCUSDT")[0] == 0
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions("quant_assets__symbol", ["../../../escape"])
    code, _, err = _run(capsys, "materialize", "--select", "ohlcv", "--timeframes", "1d")
    assert code == 2 and "../../../escape" in err and "symbols remove" in err
    from quant_assets.defs.partitions import split_key
    from quant_assets.lib.errors import InvalidPartitionKeyError

    with pytest.raises(InvalidPartitionKeyError, match="escape"):
        split_key("../../../escape|1d")
    assert not list(user_dir.parent.glob("escape*"))


def test_the_summary_names_the_first_promoted_partitions_and_counts_the_rest() -> None:
    from quant_assets.cli import PROMOTED_SHOWN, _first

    names = [f"SYM{i:03d}USDT|1h" for i in range(PROMOTED_SHOWN + 357)]
    line = _first(names, PROMOTED_SHOWN)
    assert line.startswith("SYM000USDT|1h, SYM001USDT|1h")
    assert line.count("|1h") == PROMOTED_SHOWN and line.endswith(" and 357 more")
    assert _first(names[:3], PROMOTED_SHOWN) == "SYM000USDT|1h, SYM001USDT|1h, SYM002USDT|1h"
