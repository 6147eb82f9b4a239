"""Incremental LightGBM training: trees added on top of the champion, fitted only on development rows
labelled after it was trained (never the hold-out, never older rows), deterministic, and refusals."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from lightgbm import Booster, LGBMClassifier, LGBMRegressor

from quant_assets.lib.datasets import TrainingDataset
from quant_assets.lib.splits import SplitPlan, make_splits
from quant_assets.lib.training import (
    ModelConfig,
    ModelConfigError,
    SkippedTraining,
    TrainingResult,
    continue_training,
    incremental_min_child_samples,
    make_model,
    predict_proba,
    train_with_cv,
)

START = datetime(2022, 1, 1, tzinfo=UTC)
BASE_ROWS = 2400
EXTRA = 20


def _plan(ds: TrainingDataset) -> SplitPlan:
    return make_splits("purged_kfold", ds.frame.height, ds.frame["t0"], ds.frame["t1"], n_splits=3)


@pytest.fixture(scope="module")
def champion(ds) -> tuple[TrainingResult, datetime]:
    """The model trained on the first BASE_ROWS rows, and the newest timestamp it was fitted on."""
    head = TrainingDataset(ds.frame.head(BASE_ROWS), ds.feature_columns, ds.counts, ds.target)
    plan = _plan(head)
    result = train_with_cv(head, plan, ModelConfig(params={"n_estimators": 30}))
    return result, head.frame["timestamp"][int(plan.dev_idx.max())]


def _continue(ds: TrainingDataset, champion, **kw) -> TrainingResult | SkippedTraining:
    base, trained_through = champion
    return continue_training(
        ds,
        _plan(ds),
        base.model,
        base.calibrator,
        trained_through,
        feature_columns=base.feature_columns,
        extra_trees=EXTRA,
        **kw,
    )


def _new_rows(ds: TrainingDataset, trained_through: datetime) -> np.ndarray:
    dev = _plan(ds).dev_idx
    return dev[(ds.frame["timestamp"].gather(dev) > trained_through).to_numpy()]


def test_continued_model_adds_trees_on_the_new_rows(ds, champion) -> None:
    base, trained_through = champion
    X_hold = ds.frame.select(base.feature_columns)[_plan(ds).holdout_idx].to_numpy()
    base_before = base.model.predict_proba(X_hold)[:, 1]
    messages: list[str] = []
    result = _continue(ds, champion, log=messages.append)
    assert isinstance(result, TrainingResult) and result.mode == "incremental"
    assert base.mode == "complete" and base.increment is None

    new = _new_rows(ds, trained_through)
    inc = result.increment
    # the base's development rows end at 1913 (hold-out from 1920, 6 rows purged), the new plan's at
    # 2712: the rows in between were the base's hold-out and are the increment
    np.testing.assert_array_equal(new, np.arange(1914, 2713))
    assert inc.n_new_rows == 799
    assert (inc.base_trees, inc.new_trees, inc.total_trees) == (30, EXTRA, 30 + EXTRA)
    assert result.model.booster_.num_trees() == 30 + EXTRA
    assert inc.min_child_samples == incremental_min_child_samples(50, 799) == 50
    assert inc.trained_through == ds.frame["timestamp"][int(new.max())]
    assert result.config.model_params()["n_estimators"] == EXTRA
    assert result.config.seed == 42 and result.config.calibration == "isotonic"
    assert messages == [
        f"incremental: {EXTRA} trees on 30 fitted on 799 rows after {trained_through.isoformat()} "
        f"(min_child_samples 50); hold-out auc {result.holdout_metrics['holdout_roc_auc']:.4f}"
    ]

    # the combined model scores base trees + new trees; the base model itself is untouched
    raw = result.model.booster_.predict(X_hold, raw_score=True)
    base_raw = base.model.booster_.predict(X_hold, raw_score=True)
    new_raw = result.model.booster_.predict(X_hold, raw_score=True, start_iteration=30)
    np.testing.assert_allclose(raw, base_raw + new_raw, rtol=0, atol=1e-12)
    assert np.abs(new_raw).max() > 0.01
    np.testing.assert_array_equal(base.model.predict_proba(X_hold)[:, 1], base_before)
    assert not np.allclose(result.model.predict_proba(X_hold)[:, 1], base_before)

    # the calibrator is the champion's; hold-out scored as train_with_cv scores it
    assert result.calibrator is base.calibrator
    hold = _plan(ds).holdout_idx
    np.testing.assert_array_equal(result.holdout["row"].to_numpy(), hold)
    expected = predict_proba(result.model, base.calibrator, ds.frame[hold], base.feature_columns)
    np.testing.assert_array_equal(result.holdout["prob_cal"].to_numpy(), expected)
    assert set(result.holdout_metrics) == set(base.holdout_metrics)
    assert result.holdout_metrics["holdout_n"] == hold.size
    # no cross-validation: empty frames with the complete training's columns and types
    assert result.oof.is_empty() and result.oof.schema == base.oof.schema
    assert result.fold_metrics.is_empty() and result.fold_metrics.schema == base.fold_metrics.schema
    assert result.overall_metrics == {}
    assert set(result.timings) == {"fit_seconds", "total_seconds"}
    assert sorted(result.feature_importances["feature"]) == sorted(ds.feature_columns)


def _perturbed(ds: TrainingDataset, rows: np.ndarray) -> TrainingDataset:
    """`ds` with labels flipped, features shifted and weights scaled on `rows`."""
    hit = pl.Series(np.isin(np.arange(ds.frame.height), rows))
    frame = ds.frame.with_columns(
        pl.when(hit).then(1 - pl.col("y")).otherwise(pl.col("y")).alias("y"),
        pl.when(hit).then(pl.col("sample_weight") * 3).otherwise(pl.col("sample_weight")),
        *(pl.when(hit).then(pl.col(c) + 1.0).otherwise(pl.col(c)) for c in ds.feature_columns),
    )
    return TrainingDataset(frame, ds.feature_columns, ds.counts, ds.target)


def test_only_new_development_rows_are_fitted(ds, champion) -> None:
    """Perturbing every other row (hold-out, purged, at or before trained_through) leaves the model
    identical to the last bit; perturbing one new row does not."""
    _, trained_through = champion
    dump = _continue(ds, champion).model.booster_.model_to_string()
    new = _new_rows(ds, trained_through)
    others = np.setdiff1d(np.arange(ds.frame.height), new)
    plan = _plan(ds)
    assert np.isin(plan.holdout_idx, others).all() and plan.n_holdout_purged > 0
    assert (ds.frame["timestamp"].gather(others[others < new.min()]) <= trained_through).all()
    assert _continue(_perturbed(ds, others), champion).model.booster_.model_to_string() == dump
    assert _continue(_perturbed(ds, new[:1]), champion).model.booster_.model_to_string() != dump


def test_training_twice_is_identical_and_feature_order_does_not_matter(ds, champion) -> None:
    first, second = _continue(ds, champion), _continue(ds, champion)
    dump = first.model.booster_.model_to_string()
    assert second.model.booster_.model_to_string() == dump
    assert first.holdout.equals(second.holdout)
    assert first.holdout_metrics == second.holdout_metrics
    reordered = TrainingDataset(
        ds.frame.select(reversed(ds.frame.columns)),
        list(reversed(ds.feature_columns)),
        ds.counts,
        ds.target,
    )
    shuffled = _continue(reordered, champion)
    assert shuffled.feature_columns == champion[0].feature_columns
    assert shuffled.model.booster_.model_to_string() == dump


def test_a_registry_booster_continues_like_its_classifier(ds, champion) -> None:
    """The registry stores the bare booster (LightGBM's model text); continuing it gives the same
    trees as continuing the classifier it came from."""
    base, trained_through = champion
    loaded = Booster(model_str=base.model.booster_.model_to_string())
    from_booster = continue_training(
        ds,
        _plan(ds),
        loaded,
        base.calibrator,
        trained_through,
        feature_columns=base.feature_columns,
        extra_trees=EXTRA,
    )
    from_classifier = _continue(ds, champion)
    assert from_booster.increment == from_classifier.increment
    params = make_model(from_booster.config).get_params()
    assert params == make_model(from_classifier.config).get_params()
    assert params["min_child_samples"] == 50 and params["subsample"] == 0.8
    assert trees(from_booster) == trees(from_classifier)
    assert from_booster.holdout.equals(from_classifier.holdout)


def test_a_registry_booster_keeps_its_own_histogram_bins(ds) -> None:
    """A champion registered before the default max_bin changed (LightGBM's 255) continues with
    255 bins, as its classifier would, not with today's default of 63."""
    head = TrainingDataset(ds.frame.head(BASE_ROWS), ds.feature_columns, ds.counts, ds.target)
    plan = _plan(head)
    old = train_with_cv(head, plan, ModelConfig(params={"n_estimators": 30, "max_bin": 255}))
    assert make_model(ModelConfig()).get_params()["max_bin"] == 63
    trained_through = head.frame["timestamp"][int(plan.dev_idx.max())]
    loaded = Booster(model_str=old.model.booster_.model_to_string())
    results = [
        continue_training(
            ds,
            _plan(ds),
            base,
            old.calibrator,
            trained_through,
            feature_columns=old.feature_columns,
            extra_trees=EXTRA,
        )  # fmt: skip
        for base in (loaded, old.model)
    ]
    assert [make_model(r.config).get_params()["max_bin"] for r in results] == [255, 255]
    assert trees(results[0]) == trees(results[1])


def trees(result: TrainingResult) -> str:
    """The model text from the first tree on (the parameter echo after the trees is left out)."""
    text = result.model.booster_.model_to_string()
    return text[text.index("Tree=0") : text.index("end of trees")]


def test_too_few_or_one_class_new_rows_skip_with_a_reason(ds, champion) -> None:
    _, trained_through = champion
    new = _new_rows(ds, trained_through)
    skipped = _continue(ds, champion, min_new_rows=new.size + 1)
    assert isinstance(skipped, SkippedTraining)
    assert skipped.reason == (
        f"799 development rows newer than {trained_through.isoformat()}, fewer than "
        "min_new_rows=800"
    )
    assert (skipped.n_dev, skipped.n_holdout) == (
        _plan(ds).dev_idx.size,
        _plan(ds).holdout_idx.size,
    )
    base = champion[0]
    latest = ds.frame["timestamp"].max()
    nothing_new = continue_training(
        ds, _plan(ds), base.model, base.calibrator, latest, feature_columns=base.feature_columns
    )
    assert nothing_new.reason.startswith("0 development rows newer than")
    zeros = TrainingDataset(
        ds.frame.with_columns(y=pl.lit(0, pl.Int8)), ds.feature_columns, ds.counts, ds.target
    )
    one_class = _continue(zeros, champion)
    assert isinstance(one_class, SkippedTraining)
    assert one_class.reason == (
        f"all 799 development rows newer than {trained_through.isoformat()} have y=0"
    )


def test_min_child_samples_shrinks_with_the_increment() -> None:
    assert [incremental_min_child_samples(50, n) for n in (10, 40, 100, 200, 1000)] == [
        5,
        10,
        25,
        50,
        50,
    ]
    assert incremental_min_child_samples(20, 1000) == 20


def test_bad_base_models_and_inputs_raise(ds, champion) -> None:
    base, trained_through = champion
    plan = _plan(ds)
    forest = make_model(ModelConfig(model_type="random_forest", params={"n_estimators": 3}))
    with pytest.raises(ModelConfigError, match=r"LGBMClassifier or Booster\), got RandomForest"):
        continue_training(ds, plan, forest, None, trained_through)
    with pytest.raises(ModelConfigError, match="got an unfitted LGBMClassifier"):
        continue_training(ds, plan, LGBMClassifier(), None, trained_through)
    X, y = ds.frame.select(base.feature_columns).head(200).to_numpy(), ds.frame["ret"].head(200)
    regressor = LGBMRegressor(n_estimators=2, verbose=-1).fit(X, y.to_numpy())
    with pytest.raises(ModelConfigError, match="objective is 'regression', not 'binary'"):
        continue_training(ds, plan, regressor.booster_, None, trained_through)
    with pytest.raises(ModelConfigError, match="trained_through must be timezone-aware"):
        continue_training(
            ds, plan, base.model, None, datetime(2022, 4, 1), feature_columns=base.feature_columns
        )
    # a model fitted on a numpy array has no feature names to check against
    with pytest.raises(ModelConfigError, match=r"missing from the dataset \['Column_0'.*Column_0"):
        continue_training(ds, plan, base.model, None, trained_through)
    fewer = TrainingDataset(
        ds.frame, [c for c in ds.feature_columns if c != "rsi_14"], ds.counts, ds.target
    )
    with pytest.raises(ModelConfigError, match=r"missing from the dataset \['rsi_14'\], not in"):
        _continue(fewer, champion)
    renamed = [("my_rsi" if c == "rsi_14" else c) for c in base.feature_columns]
    with pytest.raises(ModelConfigError, match=r"\['rsi_14'\], not in the base model \['my_rsi'\]"):
        continue_training(
            TrainingDataset(ds.frame.rename({"rsi_14": "my_rsi"}), renamed, ds.counts, ds.target),
            plan,
            base.model,
            None,
            trained_through,
            feature_columns=base.feature_columns,
        )
    with pytest.raises(
        ModelConfigError,
        match=f"fitted on {len(ds.feature_columns)} features, but feature_columns names 1",
    ):
        continue_training(ds, plan, base.model, None, trained_through, feature_columns=["rsi_14"])
    with pytest.raises(ModelConfigError, match="extra_trees must be a positive integer, got 0"):
        continue_training(ds, plan, base.model, None, trained_through, extra_trees=0)
