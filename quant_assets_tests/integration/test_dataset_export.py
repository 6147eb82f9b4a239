"""`quant-assets dataset export` end to end: a partition not stored yet is materialized through the
CLI's backfill path, and the exported rows are the stored training_dataset rows of the range."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from quant_assets.cli import main
from quant_assets.defs.io import partition_path

pytestmark = pytest.mark.slow


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", "unset")  # the CLI sets it; monkeypatch restores it
    for var in list(os.environ):
        if var.startswith(("QUANT_ASSETS_", "DAGSTER_")) and var != "QUANT_ASSETS_REQUIRE_SERVICES":
            monkeypatch.delenv(var)
    monkeypatch.setenv("QUANT_ASSETS_TIMEFRAMES", "1d")
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_END", "2025-06-30T00:00:00")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_export_materializes_what_is_missing_and_writes_the_assets_rows(
    user_dir: Path, capsys
) -> None:
    assert main(["symbols", "add", "BTCUSDT", "ETHUSDT"]) == 0
    out_file = user_dir / "exports" / "btc_eth_1d.parquet"
    argv = ["dataset", "export", "--symbols", "BTCUSDT", "ETHUSDT", "--timeframe", "1d",
            "--start", "2024-01-01", "--end", "2024-12-31"]  # fmt: skip
    code = main([*argv, "--output", str(out_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "training_dataset not stored for BTCUSDT, ETHUSDT at 1d: materializing" in out
    exported = pl.read_parquet(out_file)
    assert exported.columns[0] == "symbol"
    assert exported["timestamp"].is_sorted()

    for symbol in ("BTCUSDT", "ETHUSDT"):
        stored = pl.read_parquet(
            partition_path(user_dir / "artifacts", dg.AssetKey("training_dataset"), f"{symbol}|1d")
        )
        in_range = stored.filter(
            pl.col("timestamp").dt.year() == 2024
        )  # [2024-01-01, 2024-12-31 23:59:59.999999]
        mine = exported.filter(pl.col("symbol") == symbol).drop("symbol")
        assert mine.height == in_range.height > 200
        assert mine.equals(in_range.select(mine.columns))
        assert set(mine.columns) == set(stored.columns)

    # stored now: a CSV export reads them without materializing; no temporary file is left
    csv_file = user_dir / "exports" / "btc_1d.csv"
    code = main(["dataset", "export", "--symbols", "BTCUSDT", "--timeframe", "1d",
                 "--start", "2024-03-01", "--end", "2024-03-31", "--output", str(csv_file)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "materializing" not in out
    assert "exported 31 rows" in out  # BTCUSDT trades every day
    csv = pl.read_csv(csv_file, try_parse_dates=True)
    assert (
        csv["y"].to_list()
        == exported.filter((pl.col("symbol") == "BTCUSDT") & (pl.col("timestamp").dt.month() == 3))[
            "y"
        ].to_list()
    )
    assert sorted(p.name for p in (user_dir / "exports").iterdir()) == [
        "btc_1d.csv",
        "btc_eth_1d.parquet",
    ]
    code = main(["dataset", "export", "--symbols", "BTCUSDT", "--timeframe", "1d",
                 "--start", "2030-01-01", "--end", "2030-02-01", "--output", str(csv_file)])  # fmt: skip
    assert code == 2 and "no training_dataset rows" in capsys.readouterr().err
