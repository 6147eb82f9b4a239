"""The registry records a hash of each model artifact at registration; loading verifies it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from lightgbm import LGBMClassifier

from quant_assets.lib.errors import ModelIntegrityError
from quant_assets.lib.tracking import ARTIFACT_HASH_TAG, Tracker, directory_digest

NAME = "direction.BTCUSDT.1h"


def register_lightgbm(tracker: Tracker) -> str:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    y = (X["a"] + rng.normal(scale=0.5, size=200) > 0).astype(int)
    model = LGBMClassifier(n_estimators=5, verbose=-1).fit(X.to_numpy(), y)
    with tracker.run("test", "integrity", {}) as run_id:
        tracker.log_dict(run_id, {"features": ["a", "b", "c"]}, "feature_list.json")
        registered = tracker.log_model(model, "lightgbm", X, NAME, {"model_type": "lightgbm"})
    return registered.version


def test_hash_recorded_at_registration_and_a_changed_artifact_refused(
    mlflow_uri: str, project_dir: Path
) -> None:
    tracker = Tracker(mlflow_uri)
    version = register_lightgbm(tracker)
    recorded = tracker.version_tags(NAME, version)[ARTIFACT_HASH_TAG]
    assert len(recorded) == 64
    loaded = tracker.load_model(NAME, version)
    assert loaded.predict_proba(pl.DataFrame({"a": [1.0], "b": [0.0], "c": [0.0]})).shape == (1,)

    # the stored booster edited after registration (a replaced file, bit rot, tampering)
    [booster] = (project_dir / "artifacts" / "mlflow").rglob("model.lgb")
    booster.write_text(booster.read_text().replace("num_leaves", "num_leaves ", 1))
    with pytest.raises(ModelIntegrityError) as caught:
        tracker.load_model(NAME, version)
    message = str(caught.value)
    assert message.startswith(f"{NAME} v{version}: the model artifact's SHA-256 is ")
    assert f"but {recorded[:16]}... was recorded at registration (tag {ARTIFACT_HASH_TAG})" in (
        message
    )
    assert directory_digest(booster.parent) != recorded


def test_digest_covers_names_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"12")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"3")
    first = directory_digest(tmp_path)
    (tmp_path / "sub" / "b").rename(tmp_path / "sub" / "c")
    assert directory_digest(tmp_path) != first
    (tmp_path / "sub" / "c").rename(tmp_path / "sub" / "b")
    assert directory_digest(tmp_path) == first
