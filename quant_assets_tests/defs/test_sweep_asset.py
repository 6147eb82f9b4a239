"""The hyperparameter_sweep asset through real Dagster runs: a 3-trial study when enabled for a
partition (stored in the trading database), and challenger_model trains with the study's best parameters."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from quant_assets.lib.storage import read_parquet
from quant_assets.lib.sweeps import SWEEP_EXPERIMENT, TAG_PARENT
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.defs.conftest import register
from quant_assets_tests.defs.test_models import _build, _record

pytestmark = pytest.mark.slow


def test_sweep_then_challenger_with_the_best_parameters(
    instance, project_dir: Path, mlflow_uri: str, monkeypatch
) -> None:
    monkeypatch.setenv("QUANT_ASSETS_SYNTHETIC_START", "2024-01-01")  # ~3 years of 1d bars
    register(instance, "BTCUSDT")
    _build(instance, "*walk_forward_splits", ["BTCUSDT"], timeframes=("1d",), config={})
    sweep = {"enabled": True, "only": ["BTCUSDT|1d"], "n_trials": 3, "timeout_seconds": 300}
    _build(instance, "hyperparameter_sweep", ["BTCUSDT"], timeframes=("1d",),
           config={"hyperparameter_sweep": sweep})  # fmt: skip
    record = read_parquet(
        project_dir / "artifacts" / "hyperparameter_sweep" / "BTCUSDT" / "1d.parquet"
    ).row(0, named=True)
    assert record["status"] == "swept" and record["trials_in_study"] == 3
    best = json.loads(record["best_params"])
    client = Tracker(mlflow_uri).client
    experiment = client.get_experiment_by_name(SWEEP_EXPERIMENT)
    nested = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_PARENT}` = '{record['parent_run_id']}'",
    )
    assert len(nested) == 3
    # the study lives in the trading store's database
    with sqlite3.connect(project_dir / "artifacts" / "trading.db") as db:
        (study,) = db.execute("select study_name from studies").fetchone()
        finished = db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()
    assert study == record["study_name"] and finished == (3,)

    _build(instance, "challenger_model", ["BTCUSDT"], timeframes=("1d",), config={})
    trained = _record(project_dir, "BTCUSDT", "1d")
    params = client.get_run(trained["run_id"]).data.params
    for name in ("num_leaves", "min_child_samples", "n_estimators"):
        assert params[f"model.params.{name}"] == str(best[name])
