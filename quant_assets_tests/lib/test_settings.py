from __future__ import annotations

from pathlib import Path

import pytest

from quant_assets.lib.settings import DEFAULT_UNIVERSE, Settings, SettingsError, load_settings


def test_defaults_without_file_or_environment(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("QUANT_ASSETS_ARTIFACTS", "QUANT_ASSETS_WATCHLIST", "DAGSTER_HOME"):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings()
    assert settings == Settings()
    assert settings.universe == DEFAULT_UNIVERSE
    assert settings.timeframes == ("1h", "4h", "1d")
    assert settings.artifacts_path == project_dir / "artifacts"
    assert settings.mlflow_uri == f"sqlite:///{project_dir / 'artifacts' / 'mlflow' / 'mlflow.db'}"


def test_file_then_environment_precedence(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project_dir / "quant_assets.toml").write_text(
        '[quant_assets]\nsource = "files:/data"\nuniverse = ["btc/usdt", "spy"]\ntimeframes = "1d"\n'
    )
    settings = load_settings()
    assert settings.source == "files:/data"
    assert settings.universe == ("BTCUSDT", "SPY")
    assert settings.timeframes == ("1d",)
    monkeypatch.setenv("QUANT_ASSETS_SOURCE", "synthetic")
    monkeypatch.setenv("QUANT_ASSETS_TIMEFRAMES", "4h, 1d")
    settings = load_settings()
    assert settings.source == "synthetic"
    assert settings.timeframes == ("4h", "1d")
    assert {"QUANT_ASSETS_SOURCE", "QUANT_ASSETS_TIMEFRAMES"} <= set(settings.origin)


def test_bad_values_name_their_origin(project_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANT_ASSETS_TIMEFRAMES", "1h,2h")
    with pytest.raises(SettingsError, match="QUANT_ASSETS_TIMEFRAMES.*2h"):
        load_settings()
    monkeypatch.delenv("QUANT_ASSETS_TIMEFRAMES")
    (project_dir / "quant_assets.toml").write_text("[quant_assets]\nsorce = 'x'\n")
    with pytest.raises(SettingsError, match=r"quant_assets.toml: unknown settings \['sorce'\]"):
        load_settings()
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(project_dir / "missing.toml")
