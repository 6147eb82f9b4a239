"""The model card: sections in order, the key numbers where a reader looks for them, and the risks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from quant_assets.lib.datasets import TrainingDataset, build_training_dataset
from quant_assets.lib.model_card import render_model_card
from quant_assets.lib.sources.synthetic import SyntheticSource
from quant_assets.lib.splits import fold_table, make_splits
from quant_assets.lib.training import ModelConfig, TrainingResult, train_with_cv
from quant_assets_tests.lib.test_datasets import pipeline_frames

START = datetime(2022, 1, 9, 7, tzinfo=UTC)
END = datetime(2023, 12, 31, 23, tzinfo=UTC)
COUNTS = {
    "rows_in": 17520,
    "dropped_warmup": 199,
    "dropped_unlabelled": 5,
    "dropped_missing_features": 544,
    "rows_out": 16772,
    "positive_rate": 0.173861,
}
RAW = {"roc_auc": 0.5628, "brier": 0.14683, "log_loss": 0.46021, "accuracy": 0.8213, "ece": 0.0463}
CAL = {"roc_auc": 0.5551, "brier": 0.14021, "log_loss": 0.44112, "accuracy": 0.8262, "ece": 0.0050}


def _metrics(prefix: str, n: float, auc: float = RAW["roc_auc"]) -> dict[str, float]:
    return {
        **{f"{prefix}_{k}": v for k, v in RAW.items()},
        f"{prefix}_roc_auc": auc,
        **{f"{prefix}_{k}_calibrated": v for k, v in CAL.items()},
        f"{prefix}_n": n,
        f"{prefix}_positive_rate": 0.17,
    }


def _card(**overrides) -> str:
    timestamps = pl.datetime_range(START, START + timedelta(hours=99), "1h", eager=True)
    plan = make_splits(
        "purged_kfold", 100, list(range(100)), [i + 3 for i in range(100)], n_splits=4
    )
    kwargs = {
        "name": "BTCUSDT-1h-take_profit",
        "symbol": "BTCUSDT",
        "timeframe": "1h",
        "dataset_counts": COUNTS,
        "split_summary": fold_table(plan.folds, timestamps),
        "config": ModelConfig(params={"n_estimators": 100}),
        "overall_metrics": _metrics("oof", 13413.0),
        "holdout_metrics": _metrics("holdout", 3355.0, auc=0.573),
        "feature_importances": pl.DataFrame(
            {"feature": ["vol_60", "rsi_14", "ret_1"], "importance": [3.0, 2.0, 1.0]}
        ),
        "data_window": (START, END),
        "code_version": "a0a7a27",
        "data_version": "9f2c1e0b7d6a5f43",
    }
    return render_model_card(**(kwargs | overrides))


def _section(card: str, heading: str) -> str:
    after = card.split(f"\n{heading}\n", 1)[1]
    return after.split("\n## ", 1)[0]


def test_sections_come_in_order() -> None:
    headings = [line for line in _card().splitlines() if line.startswith("#")]
    assert headings == [
        "# Model card: BTCUSDT-1h-take_profit",
        "## Data",
        "## Split",
        "## Hyperparameters",
        "## Metrics",
        "## Top features",
        "## Known risks",
        "## Where to use it",
    ]
    with_folds = _card(fold_metrics=pl.DataFrame({"fold": [0, 1], "roc_auc": [0.58281, 0.54634]}))
    metrics = _section(with_folds, "## Metrics")
    assert "### Per fold" in metrics
    assert "| 0 | 0.5828 |" in metrics and "| 1 | 0.5463 |" in metrics


def test_key_numbers_are_in_their_sections() -> None:
    card = _card()
    data = _section(card, "## Data")
    assert "2022-01-09 07:00 UTC to 2023-12-31 23:00 UTC" in data
    assert "`9f2c1e0b7d6a5f43`" in data and "`a0a7a27`" in data
    assert "| rows_out | 16772 |" in data and "| dropped_missing_features | 544 |" in data
    assert "| positive_rate | 0.1739 |" in data
    split = _section(card, "## Split")
    assert "4 folds" in split and "hold-out (3355 rows)" in split
    assert sum(line.startswith("| ") for line in split.splitlines()) == 1 + 4  # header + folds
    # 77 dev rows (rows 77-79 purged against the hold-out); fold 0 tests rows 0-19 and purges
    # rows 20-22, whose spans start by row 19's end (t1 = row + 3)
    assert (
        "| 0 | 2022-01-10 06:00 | 2022-01-12 11:00 | 2022-01-09 07:00 | 2022-01-10 02:00 "
        "| 54 | 20 | 3 | 0 |"
    ) in split
    hyper = _section(card, "## Hyperparameters")
    assert "| n_estimators | 100 |" in hyper and "| num_leaves | 15 |" in hyper
    assert "| model_type | lightgbm |" in hyper and "| calibration | isotonic |" in hyper
    metrics = _section(card, "## Metrics")
    assert "| metric | OOF raw | OOF calibrated | hold-out raw | hold-out calibrated |" in metrics
    assert "| roc_auc | 0.5628 | 0.5551 | 0.573 | 0.5551 |" in metrics
    assert "| ece | 0.0463 | 0.005 | 0.0463 | 0.005 |" in metrics
    top = _section(card, "## Top features")
    assert "| 1 | vol_60 | 3 | 0.5 |" in top and "| 3 | ret_1 | 1 | 0.1667 |" in top


def test_default_and_given_risks() -> None:
    risks = _section(_card(known_risks=["Funding rates are ignored."]), "## Known risks")
    bullets = [line for line in risks.splitlines() if line.startswith("- ")]
    assert bullets[-1] == "- Funding rates are ignored."
    assert any("Regime change" in b and "2023-12-31 23:00 UTC" in b for b in bullets)
    assert any("Costs are not in these metrics" in b for b in bullets)
    assert any("AUC is not direction" in b for b in bullets)
    assert any("isotonic calibrator was fitted on the 13413 out-of-fold" in b for b in bullets)
    assert any("one contiguous period of 3355 rows" in b for b in bullets)
    assert not any("synthetic data" in b or "Weak or no edge" in b for b in bullets)

    weak = _section(
        _card(overall_metrics=_metrics("oof", 500.0, auc=0.51), data_source="synthetic(seed=7)"),
        "## Known risks",
    )
    assert "Trained and evaluated on synthetic data (synthetic(seed=7))" in weak
    assert "Weak or no edge: OOF AUC 0.51, hold-out AUC 0.573." in weak


def test_a_global_model_without_hold_out_or_calibration() -> None:
    card = _card(
        symbol=None,
        holdout_metrics={},
        config=ModelConfig(model_type="logistic", calibration="none"),
    )
    assert "A logistic classifier for every symbol's 1h bars." in card
    assert "| roc_auc | 0.5628 | 0.5551 |  |  |" in card
    risks = _section(card, "## Known risks")
    assert "There is no hold-out" in risks and "calibrator" not in risks
    assert "| C | 1.0 |" in _section(card, "## Hyperparameters")


@pytest.fixture(scope="module")
def trained() -> tuple[TrainingResult, TrainingDataset, pl.DataFrame]:
    source = SyntheticSource(seed=7, start=START, end=START + timedelta(days=150))
    ds = build_training_dataset(*pipeline_frames(source, "BTCUSDT", higher=("4h",)))
    plan = make_splits("purged_kfold", ds.frame.height, ds.frame["t0"], ds.frame["t1"], n_splits=3)
    result = train_with_cv(ds, plan, ModelConfig(params={"n_estimators": 30}))
    return result, ds, fold_table(plan.folds, ds.frame["timestamp"])


def test_a_card_of_a_real_training_run_shows_its_numbers(trained) -> None:
    result, ds, folds = trained
    card = render_model_card(
        name="btc",
        symbol="BTCUSDT",
        timeframe="1h",
        dataset_counts=ds.counts,
        split_summary=folds,
        config=result.config,
        overall_metrics=result.overall_metrics,
        holdout_metrics=result.holdout_metrics,
        feature_importances=result.feature_importances,
        data_window=(ds.frame["timestamp"].min(), ds.frame["timestamp"].max()),
        code_version="dev",
        data_version="x",
        fold_metrics=result.fold_metrics,
        data_source="synthetic(seed=7)",
    )
    m, h = result.overall_metrics, result.holdout_metrics
    row = (
        f"| roc_auc | {m['oof_roc_auc']:.4g} | {m['oof_roc_auc_calibrated']:.4g} | "
        f"{h['holdout_roc_auc']:.4g} | {h['holdout_roc_auc_calibrated']:.4g} |"
    )
    assert row in card
    assert f"| rows_out | {ds.counts['rows_out']} |" in card
    assert f"| 1 | {result.feature_importances['feature'][0]} |" in card
    assert f"fitted on the {result.oof.height} out-of-fold predictions" in card
    per_fold = card.split("### Per fold", 1)[1].split("## Top features", 1)[0]
    assert sum(line.startswith("| ") for line in per_fold.splitlines()) == 1 + 3  # header + folds


def test_the_hold_out_row_of_a_stored_plan_is_not_counted_as_a_fold() -> None:
    """`walk_forward_splits` stores the plan with its hold-out as row `fold = -1`."""
    from quant_assets.lib.splits import split_plan_frame

    timestamps = pl.datetime_range(START, START + timedelta(hours=99), "1h", eager=True)
    plan = make_splits(
        "purged_kfold", 100, list(range(100)), [i + 3 for i in range(100)], n_splits=4
    )
    stored = split_plan_frame(plan, timestamps).drop("train_rows", "test_rows", "scheme")
    assert stored.height == 5
    assert "4 folds over the development rows" in _section(_card(split_summary=stored), "## Split")
