"""XGBoost as a model type: incremental continuation (xgb_model=) on the new development rows only,
deterministic, and the same through an MLflow registry round trip as from the fitted classifier.
Cross-validated training, calibration, determinism and importances of XGBoost are covered by the
model-type parametrized tests of test_training.py."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quant_assets.lib.datasets import TrainingDataset
from quant_assets.lib.tracking import Tracker
from quant_assets.lib.training import (
    XGB_PARAMS_ATTR,
    ModelConfig,
    ModelConfigError,
    TrainingResult,
    continue_training,
    train_with_cv,
)

# `ds` (lib/conftest.py) and the split plan are the LightGBM incremental tests'
from quant_assets_tests.lib.test_incremental import BASE_ROWS, EXTRA, _perturbed, _plan


@pytest.fixture(scope="module")
def champion(ds) -> tuple[TrainingResult, datetime]:
    head = TrainingDataset(ds.frame.head(BASE_ROWS), ds.feature_columns, ds.counts, ds.target)
    plan = _plan(head)
    config = ModelConfig(model_type="xgboost", params={"n_estimators": 30})
    result = train_with_cv(head, plan, config)
    return result, head.frame["timestamp"][int(plan.dev_idx.max())]


def _continue(ds: TrainingDataset, base_model, champion) -> TrainingResult:
    base, trained_through = champion
    result = continue_training(
        ds,
        _plan(ds),
        base_model,
        base.calibrator,
        trained_through,
        feature_columns=base.feature_columns,
        extra_trees=EXTRA,
    )
    assert isinstance(result, TrainingResult)
    return result


def _margin(model, X: np.ndarray, **kw) -> np.ndarray:
    return model.get_booster().inplace_predict(X, predict_type="margin", **kw)


def test_xgboost_continues_its_trees_on_the_new_rows_only(ds, champion) -> None:
    base, trained_through = champion
    result = _continue(ds, base.model, champion)
    inc = result.increment
    assert result.mode == "incremental" and result.config.model_type == "xgboost"
    assert (inc.base_trees, inc.new_trees, inc.total_trees) == (30, EXTRA, 30 + EXTRA)
    assert inc.n_new_rows == 799 and inc.min_child_samples == 0
    assert result.config.model_params()["n_estimators"] == EXTRA
    assert result.config.model_params()["max_depth"] == 4  # the base's parameters, kept
    assert result.calibrator is base.calibrator
    # the continued model's margin is the base trees' margin plus the new trees'
    X = ds.frame.select(base.feature_columns)[_plan(ds).holdout_idx].to_numpy()
    full = _margin(result.model, X)
    base_part = _margin(result.model, X, iteration_range=(0, 30))
    np.testing.assert_allclose(base_part, _margin(base.model, X), rtol=0, atol=1e-6)
    assert np.abs(full - base_part).max() > 0.01
    # deterministic; perturbing rows other than the new development rows changes nothing
    dump = bytes(result.model.get_booster().save_raw("json"))
    assert bytes(_continue(ds, base.model, champion).model.get_booster().save_raw("json")) == dump
    dev = _plan(ds).dev_idx
    new = dev[(ds.frame["timestamp"].gather(dev) > trained_through).to_numpy()]
    others = np.setdiff1d(np.arange(ds.frame.height), new)
    unchanged = _continue(_perturbed(ds, others), base.model, champion)
    np.testing.assert_array_equal(_margin(unchanged.model, X), full)
    changed = _continue(_perturbed(ds, new[:1]), base.model, champion)
    assert not np.array_equal(_margin(changed.model, X), full)


def test_a_registry_copy_continues_like_the_fitted_model(
    ds, champion, mlflow_uri: str, project_dir: Path
) -> None:
    base, _ = champion
    tracker = Tracker(mlflow_uri)
    example = pd.DataFrame(
        ds.frame.select(base.feature_columns).head(5).to_numpy(), columns=base.feature_columns
    )
    with tracker.run("test", "xgboost", {}) as run_id:
        tracker.log_dict(run_id, {"features": base.feature_columns}, "feature_list.json")
        tracker.log_dict(run_id, base.calibrator.to_dict(), "calibrator.json")
        version = tracker.log_model(
            base.model, "xgboost", example, "direction.BTCUSDT.1h", {"model_type": "xgboost"}
        ).version
    loaded = tracker.load_model("direction.BTCUSDT.1h", version)
    assert type(loaded.model).__name__ == "XGBClassifier"
    hold = ds.frame[_plan(ds).holdout_idx]
    expected = base.calibrator.predict(
        base.model.predict_proba(hold.select(base.feature_columns).to_numpy())[:, 1]
    )
    np.testing.assert_allclose(loaded.predict_proba(hold), expected, rtol=0, atol=1e-7)
    from_registry = _continue(ds, loaded.model, champion)
    from_memory = _continue(ds, base.model, champion)
    assert from_registry.increment == from_memory.increment
    assert from_registry.holdout.equals(from_memory.holdout)


def test_an_xgboost_model_without_recorded_parameters_is_refused(ds, champion) -> None:
    from xgboost import XGBClassifier

    base, trained_through = champion
    X = ds.frame.select(base.feature_columns).head(300).to_numpy()
    plain = XGBClassifier(n_estimators=2).fit(X, ds.frame["y"].head(300).to_numpy())
    assert plain.get_booster().attr(XGB_PARAMS_ATTR) is None
    with pytest.raises(ModelConfigError, match="does not record its parameters"):
        continue_training(
            ds, _plan(ds), plain, None, trained_through, feature_columns=base.feature_columns
        )
