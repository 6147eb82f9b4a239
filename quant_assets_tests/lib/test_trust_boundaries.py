"""Trust boundaries: partition keys checked where they enter and paths kept under the artifacts
root; secrets masked in every text this package produces; source identities for model tags."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from quant_assets.cli import main
from quant_assets.defs.io import partition_path
from quant_assets.lib.errors import InvalidPartitionKeyError, InvalidSourceSpecError
from quant_assets.lib.masking import mask_secrets, mask_url_path
from quant_assets.lib.sources import source_from_spec, source_identity, source_mismatch
from quant_assets.lib.sources.postgres import engine_url
from quant_assets.lib.storage import safe_artifact_path
from quant_assets.lib.symbols import validate_partition_key

SECRET = "S3cretPW"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            f"postgres:postgresql://postgres:{SECRET}@db.example:5432/market",
            "postgres:postgresql://postgres:***@db.example:5432/market",
        ),
        (
            f"postgresql+psycopg2://u:{SECRET}@h/db?sslmode=require&password={SECRET}",
            "postgresql+psycopg2://u:***@h/db?sslmode=require&password=***",
        ),
        (f"host=h user=u password={SECRET} dbname=d", "host=h user=u password=*** dbname=d"),
        (f"https://api.example/x?token={SECRET}&a=1", "https://api.example/x?token=***&a=1"),
        (
            f"mlflow at http://ml:{SECRET}@host:5000 failed",
            "mlflow at http://ml:***@host:5000 failed",
        ),
        ("postgresql://postgres@127.0.0.1/db", "postgresql://postgres@127.0.0.1/db"),
        ("files:/data/bars", "files:/data/bars"),
        ("synthetic", "synthetic"),
    ],
)
def test_mask_secrets(text: str, masked: str) -> None:
    assert mask_secrets(text) == masked


def test_mask_url_path_keeps_only_scheme_and_host() -> None:
    assert mask_url_path(f"https://hooks.example.com/services/T0/B0/{SECRET}") == (
        "https://hooks.example.com/***"
    )
    assert mask_url_path("https://alerts.example.com") == "https://alerts.example.com"
    assert mask_url_path("") == ""


def test_error_messages_about_sources_never_carry_the_password() -> None:
    with pytest.raises(InvalidSourceSpecError) as caught:
        source_from_spec(f"postgress:postgresql://u:{SECRET}@h/db")
    assert SECRET not in str(caught.value) and "postgresql://u:***@h/db" in str(caught.value)
    with pytest.raises(InvalidSourceSpecError) as caught:
        engine_url(f"u:{SECRET}@h/db")
    assert SECRET not in str(caught.value)


def test_settings_output_is_masked(project_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("QUANT_ASSETS_SOURCE", f"postgres:postgresql://postgres:{SECRET}@db/market")
    monkeypatch.setenv("QUANT_ASSETS_TRADING_DB", f"postgresql://trader:{SECRET}@db/trading")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://ml:{SECRET}@db/mlflow")
    monkeypatch.setenv("QUANT_ASSETS_ALERT_WEBHOOK_URL", f"https://hooks.example.com/T/B/{SECRET}")
    monkeypatch.setenv("QUANT_ASSETS_ALLOW_HISTORY_REWRITE", "yes")
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert SECRET not in out
    assert "postgres:postgresql://postgres:***@db/market" in out
    assert "postgresql://trader:***@db/trading" in out
    assert "mlflow tracking uri      postgresql://ml:***@db/mlflow" in out
    assert "https://hooks.example.com/***" in out
    assert [line.split()[:2] for line in out.splitlines() if "allow_history" in line] == [
        ["allow_history_rewrite", "True"]
    ]


def test_source_identity_and_mismatch() -> None:
    url = f"postgres:postgresql://u:{SECRET}@db:5432/market"
    identity = source_identity(url, table="trading.bars")
    assert identity == "postgres:postgresql://u:***@db:5432/market table=trading.bars"
    assert source_identity("synthetic(seed=7, start=2023-01-01)") == (
        "synthetic(seed=7, start=2023-01-01)"
    )
    assert source_mismatch(identity, identity) is None
    assert source_mismatch(identity, None) is None  # a champion registered before the tag
    reason = source_mismatch("synthetic(seed=7, random walk)", identity)
    assert reason is not None and SECRET not in reason
    assert reason.startswith(
        "challenger trained on 'synthetic(seed=7, random walk)' but the champion on "
        "'postgres:postgresql://u:***@db:5432/market table=trading.bars'"
    )


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("../../../escape|1h", "symbol '../../../escape' is not a normalised partition key"),
        ("..|1d", "symbol '..' normalises to '', which is not 1-32 letters and digits"),
        ("btc/usdt|1h", "symbol 'btc/usdt' is not a normalised partition key ('BTCUSDT')"),
        ("BTCUSDT|../../x", "unknown timeframe '../../x'"),
        ("BTCUSDT|2h", "unknown timeframe '2h'"),
        ("BTC USDT|1h", "contains ' ' at position 3"),
        ("/etc/passwd", "'/etc/passwd' is not a normalised partition key"),
        ("", "empty symbol"),
    ],
)
def test_bad_partition_keys_are_refused_before_a_path_is_built(
    tmp_path: Path, key: str, message: str
) -> None:
    with pytest.raises(
        InvalidPartitionKeyError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        validate_partition_key(key)
    with pytest.raises(InvalidPartitionKeyError):
        partition_path(tmp_path, dg.AssetKey("ohlcv"), key)
    assert list(tmp_path.iterdir()) == []


def test_good_keys_map_under_the_root(tmp_path: Path) -> None:
    assert validate_partition_key("BTCUSDT|1h") == ("BTCUSDT", "1h")
    assert validate_partition_key("4h") == ("4h", None)
    root = tmp_path.resolve()
    assert partition_path(tmp_path, dg.AssetKey("ohlcv"), "BTCUSDT|1h") == (
        root / "ohlcv" / "BTCUSDT" / "1h.parquet"
    )
    assert partition_path(tmp_path, dg.AssetKey("global_model"), "1d") == (
        root / "global_model" / "1d.parquet"
    )


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "artifacts", tmp_path / "elsewhere"
    (root / "ohlcv").mkdir(parents=True)
    outside.mkdir()
    (root / "ohlcv" / "SPY").symlink_to(outside)
    with pytest.raises(InvalidPartitionKeyError, match="outside the artifacts root"):
        partition_path(root, dg.AssetKey("ohlcv"), "SPY|1d")
    with pytest.raises(InvalidPartitionKeyError, match="outside the artifacts root"):
        safe_artifact_path(root, "..", "x.parquet")
