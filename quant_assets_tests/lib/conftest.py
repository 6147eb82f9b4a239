"""Fixtures shared by library test modules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from quant_assets.lib.datasets import TrainingDataset, build_training_dataset
from quant_assets.lib.sources.synthetic import SyntheticSource
from quant_assets_tests.lib.test_datasets import pipeline_frames

#: start of the incremental-training data (test_incremental.py, test_xgboost.py)
INCREMENTAL_START = datetime(2022, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ds() -> TrainingDataset:
    """BTCUSDT 1h, ~150 days of the synthetic source (about 3,300 usable rows)."""
    source = SyntheticSource(
        seed=7, start=INCREMENTAL_START, end=INCREMENTAL_START + timedelta(days=150)
    )
    return build_training_dataset(*pipeline_frames(source, "BTCUSDT", higher=("4h",)))
