"""The Tracker's registry reads and writes on a SQL store (one transaction, no whole-model read per
call) give what MLflow's own client gives: aliases, descriptions and tags, and a registered model
loaded back with its calibrator and feature list, its artifact hash checked; a run's metrics written
in one batch, those logged before its model linked to the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression

from quant_assets.lib.calibration import fit_calibrator
from quant_assets.lib.errors import ModelIntegrityError
from quant_assets.lib.tracking import ARTIFACT_HASH_TAG, Tracker

NAME = "meta.BTCUSDT.1h.trend"


@pytest.fixture
def tracker(mlflow_uri: str) -> Tracker:
    tracker = Tracker(mlflow_uri)
    assert tracker._sql_registry() is not None  # the fast paths are what this file tests
    return tracker


def test_aliases_match_the_client(tracker: Tracker) -> None:
    assert tracker.aliases("no.such.model") == {}
    tracker.client.create_registered_model(NAME)
    for _ in range(3):
        tracker.client.create_model_version(NAME, source="/nonexistent/model")
    assert tracker.aliases(NAME) == {}
    tracker.set_alias(NAME, "challenger", "3")
    tracker.set_alias(NAME, "champion", "2")
    tracker.set_alias(NAME, "challenger", "1")  # moved, not added
    expected = {a: str(v) for a, v in tracker.client.get_registered_model(NAME).aliases.items()}
    assert tracker.aliases(NAME) == expected == {"challenger": "1", "champion": "2"}
    tracker.delete_alias(NAME, "champion")
    assert tracker.aliases(NAME) == {"challenger": "1"}
    with pytest.raises(Exception, match="(?i)version"):  # the store validates like the client
        tracker.set_alias(NAME, "champion", "9")
    with pytest.raises(Exception, match="(?i)reserved|alias"):
        tracker.set_alias(NAME, "latest", "1")


def test_describe_writes_only_differences(tracker: Tracker) -> None:
    tracker.client.create_registered_model(NAME)
    tracker.describe_registered_model(NAME, "first", {"symbol": "BTCUSDT", "timeframe": "1h"})
    model = tracker.client.get_registered_model(NAME)
    assert model.description == "first"
    assert model.tags == {"symbol": "BTCUSDT", "timeframe": "1h"}
    stamp = model.last_updated_timestamp
    tracker.describe_registered_model(NAME, "first", {"symbol": "BTCUSDT", "timeframe": "1h"})
    assert tracker.client.get_registered_model(NAME).last_updated_timestamp == stamp  # no write
    tracker.describe_registered_model(NAME, "second", {"timeframe": "4h", "kind": "meta"})
    model = tracker.client.get_registered_model(NAME)
    assert model.description == "second"
    assert model.tags == {"symbol": "BTCUSDT", "timeframe": "4h", "kind": "meta"}
    with pytest.raises(Exception, match="(?i)not found|does not exist"):
        tracker.describe_registered_model("no.such.model", "x")


def test_load_model_reads_what_was_logged(tracker: Tracker, tmp_path) -> None:
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    y = (X["a"] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    model = LogisticRegression().fit(X.to_numpy(), y)
    calibrator = fit_calibrator(model.predict_proba(X.to_numpy())[:, 1], y.to_numpy(), "sigmoid")
    with tracker.run("tests", "logistic", {}) as run_id:
        tracker.log_dict(run_id, {"features": ["a", "b", "c"]}, "feature_list.json")
        tracker.log_dict(run_id, calibrator.to_dict(), "calibrator.json")
        tracker.log_metrics(run_id, {"oof_auc": 0.61, "skipped": float("nan")})
        tracker.log_metric_steps(run_id, {1: {"fold_auc": 0.6}, 2: {"fold_auc": 0.62}})
        version = tracker.log_model(model, "logistic", X, NAME, {"model_type": "logistic"})
        tracker.log_metrics(run_id, {"late": 1.0})
    # every metric reached the run; the ones logged before the model (step 0) are linked to it, as
    # MLflow links them itself
    run = tracker.client.get_run(run_id)
    assert run.data.metrics == {"oof_auc": 0.61, "fold_auc": 0.62, "late": 1.0}
    history = tracker.client.get_metric_history(run_id, "fold_auc")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.6), (2, 0.62)]
    (output,) = run.outputs.model_outputs
    model_id = output.model_id
    linked = {m.key: m.value for m in tracker.client.get_logged_model(model_id).metrics}
    assert linked == {"oof_auc": 0.61}
    loaded = tracker.load_model(NAME, version.version)
    assert (loaded.run_id, loaded.model_type, loaded.feature_columns) == (
        run_id, "logistic", ["a", "b", "c"],
    )  # fmt: skip
    assert loaded.calibrator is not None
    # the version as load_model reads it in one session is what the client reads
    mv = tracker.client.get_model_version(NAME, version.version)
    record = tracker._sql_version_record(NAME, version.version)
    assert record is not None and loaded.tags == dict(mv.tags) == record.tags
    assert (record.run_id, record.location, record.artifact_uri) == (
        mv.run_id,
        tracker.client.get_model_version_download_uri(NAME, version.version),
        run.info.artifact_uri,
    )
    from mlflow.exceptions import MlflowException

    for missing in (lambda: tracker.load_model(NAME, "9"),
                    lambda: tracker.client.get_model_version(NAME, "9")):  # fmt: skip
        with pytest.raises(MlflowException) as raised:
            missing()
        assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    np.testing.assert_allclose(
        loaded.predict_proba(pl.from_pandas(X)),
        calibrator.predict(model.predict_proba(X.to_numpy())[:, 1]),
    )
    # the hash recorded at logging (read in place from the local store) is that of a downloaded copy
    import mlflow

    from quant_assets.lib.tracking import directory_digest

    (tmp_path / "copy").mkdir()
    copy = mlflow.artifacts.download_artifacts(
        artifact_uri=version.model_uri,
        dst_path=str(tmp_path / "copy"),
        tracking_uri=tracker.tracking_uri,
    )
    recorded = tracker.version_tags(NAME, version.version)[ARTIFACT_HASH_TAG]
    assert recorded == directory_digest(copy)
    # a version whose recorded hash differs from its files is refused
    tracker.client.set_model_version_tag(NAME, version.version, ARTIFACT_HASH_TAG, "0" * 64)
    with pytest.raises(ModelIntegrityError):
        tracker.load_model(NAME, version.version)


def test_run_artifacts_are_written_without_reading_the_run_back(tracker: Tracker, tmp_path) -> None:
    """Inside `run`, files go to the repository of the run `start_run` returned (the client reads
    the whole run back to find it); they land where the client puts them, directories under their
    own name; outside `run` the client's own path is taken."""
    import mlflow

    service = tracker.client._tracking_client
    reads: list[str] = []
    get_run = service.get_run
    service.get_run = lambda run_id: reads.append(run_id) or get_run(run_id)
    table = tmp_path / "table.csv"
    table.write_text("a\n1\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inner.txt").write_text("inside")
    try:
        with tracker.run("tests", "artifacts", {}) as run_id:
            tracker.log_text(run_id, "trained", "status.txt")
            tracker.log_dict(run_id, {"b": 1, "a": [1, 2]}, "nested/config.json")
            tracker.log_frame(run_id, pl.DataFrame({"x": [1, 2]}), "frames/x.csv")
            tracker.log_file(run_id, table)
            tracker.log_file(run_id, table, "copies")
            tracker.log_file(run_id, tmp_path / "folder", "dirs")
        assert reads == []
        tracker.log_text(run_id, "after the run", "late.txt")  # through the client
        assert reads == [run_id]
    finally:
        service.get_run = get_run
    copy = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, dst_path=str(tmp_path / "copy"), tracking_uri=tracker.tracking_uri
        )
    )
    files = {
        str(p.relative_to(copy)): p.read_text() for p in sorted(copy.rglob("*")) if p.is_file()
    }
    assert files == {
        "status.txt": "trained",
        "nested/config.json": '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}',
        "frames/x.csv": "x\n1\n2\n",
        "table.csv": "a\n1\n",
        "copies/table.csv": "a\n1\n",
        "dirs/folder/inner.txt": "inside",
        "late.txt": "after the run",
    }


def test_a_model_logged_outside_tracker_run_leaves_later_metrics_written(tracker: Tracker) -> None:
    """Only runs opened by `Tracker.run` hold metrics back; a model logged in a run opened another
    way must not start holding them (they would never be written)."""
    import mlflow

    rng = np.random.default_rng(1)
    X = pd.DataFrame(rng.normal(size=(200, 2)), columns=["a", "b"])
    model = LogisticRegression().fit(X.to_numpy(), (X["a"] > 0).astype(int))
    with mlflow.start_run(experiment_id=tracker.experiment_id("tests")) as run:
        tracker.log_model(model, "logistic", X, NAME, {"model_type": "logistic"})
        tracker.log_metrics(run.info.run_id, {"after": 1.0})
    assert tracker.client.get_run(run.info.run_id).data.metrics == {"after": 1.0}


def test_pip_requirements_pin_the_loaded_versions_and_are_a_fresh_list_each_time() -> None:
    from importlib.metadata import version

    import xgboost

    from quant_assets.lib.tracking import pip_requirements

    first = pip_requirements("lightgbm")
    assert first == [
        f"{p}=={version(p)}" for p in ("lightgbm", "scikit-learn", "numpy", "pandas", "scipy")
    ]
    first.append("something-else==1")  # a caller adding its own does not change the next model's
    assert pip_requirements("logistic") == first[:-1]
    assert pip_requirements("xgboost") == first[:-1] + [f"xgboost=={xgboost.__version__}"]


def test_mlflow_checks_each_requirement_list_once_per_process(caplog) -> None:
    """MLflow compares a model's requirements with the installed packages at every `log_model`;
    ours are read from the installed versions, so each distinct list is checked once, and a
    mismatch is still reported (once)."""
    import logging

    import mlflow.utils.environment as environment

    from quant_assets.lib.tracking import _check_requirements_once

    _check_requirements_once()
    check = environment.warn_dependency_requirement_mismatches
    assert check.__name__ == "once"
    wrong = ["numpy==0.0.1"]
    with caplog.at_level(logging.WARNING, logger="mlflow.utils.requirements_utils"):
        check(wrong)
        check(list(wrong))
        check(["numpy==0.0.1", "scipy==0.0.1"])
    warned = [r.getMessage() for r in caplog.records if "mismatches" in r.getMessage()]
    assert len(warned) == 2 and "numpy" in warned[0] and "scipy" in warned[1]


def test_mlflow_telemetry_is_off_unless_the_environment_says_otherwise() -> None:
    """Importing the project before MLflow turns MLflow's usage telemetry off (no client, no
    thread); a value already in the environment is kept."""
    import os
    import subprocess
    import sys

    probe = (
        "import os, quant_assets, mlflow\n"
        "from mlflow.telemetry import get_telemetry_client\n"
        "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], get_telemetry_client() is None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["true", "True"]
    env["MLFLOW_DISABLE_TELEMETRY"] = "false"
    script = "import os, quant_assets; print(os.environ['MLFLOW_DISABLE_TELEMETRY'])"
    kept = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert kept.stdout.strip() == "false"


def test_registry_view_answers_as_the_tracker_does(tracker: Tracker) -> None:
    """`registry_view` reads aliases, newest versions and the champion's and newest version's tags
    of many models at once; every answer equals the tracker's own read, deleted versions and
    models without versions or aliases included, and reads it did not prefetch fall through."""
    names = [f"direction.SYM{i}.1h" for i in range(4)]
    for i, name in enumerate(names[:3]):
        tracker.client.create_registered_model(name)
        for v in range(1, i + 3):  # 2, 3 and 4 versions
            tracker.client.create_model_version(
                name, source="/nonexistent/model", tags={"n": str(v), "trained_at": f"t{v}"}
            )
    tracker.set_alias(names[0], "champion", "1")
    tracker.set_alias(names[1], "challenger", "3")
    tracker.client.delete_model_version(names[2], "4")  # the newest is 3 now
    tracker.set_version_tags(names[1], "2", {"extra": "x"})

    view = tracker.registry_view([*names, names[0]])
    for name in names:  # the fourth is not registered at all
        assert view.aliases(name) == tracker.aliases(name)
        assert view.latest_version(name) == tracker.latest_version(name)
        latest = tracker.latest_version(name)
        if latest:
            assert view.version_tags(name, latest) == tracker.version_tags(name, latest)
    assert view.latest_version(names[2]) == "3" and view.latest_version(names[3]) is None
    # the version list read in one query is the client's search, deleted versions left out
    for name in names:
        searched = sorted(
            tracker.client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
        )
        assert [
            (v.version, v.source, v.run_id, v.creation_timestamp) for v in tracker.versions(name)
        ] == [(str(v.version), v.source, v.run_id, v.creation_timestamp) for v in searched]
        assert tracker.version_count(name) == len(searched)
    assert [v.version for v in tracker.versions(names[2])] == ["1", "2", "3"]
    assert view.version_tags(names[0], "1") == {"n": "1", "trained_at": "t1"}  # the champion
    # not prefetched: an older version, another model
    assert view.version_tags(names[1], "2") == tracker.version_tags(names[1], "2")
    assert view.version_tags(names[1], "2")["extra"] == "x"
    assert view.aliases("meta.SYM0.1h.trend") == {}
    # what the view hands out is a copy: changing it changes nothing stored or prefetched
    view.version_tags(names[0], "1")["n"] = "changed"
    assert view.version_tags(names[0], "1")["n"] == "1"
    # the reads are bulk: a view of the four models costs the same queries as one of one model
    from sqlalchemy import event

    engine = tracker._sql_registry().engine
    statements: list[str] = []

    def count(*args) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        tracker.registry_view(names[:1])
        one = len(statements)
        statements.clear()
        tracker.registry_view(names)
        assert len(statements) == one
    finally:
        event.remove(engine, "before_cursor_execute", count)


def test_git_commit_is_read_once_per_directory_and_process(tmp_path, monkeypatch) -> None:
    """The commit recorded on every MLflow run is that of the code the process runs: git is asked
    once per directory, not twice per run; another directory is asked on its own."""
    import subprocess

    from quant_assets.lib import tracking

    tracking._git_commit.cache_clear()
    calls: list[list[str]] = []
    real = subprocess.run

    def counting(args, **kwargs):
        calls.append(list(args))
        return real(args, **kwargs)

    monkeypatch.setattr(tracking.subprocess, "run", counting)
    here = tracking.Path(tracking.__file__).parent
    first = tracking.git_commit(here)
    assert tracking.git_commit(here) == tracking.git_commit(here / ".." / "lib") == first
    assert len(calls) in (1, 2)  # rev-parse, then status when rev-parse succeeded
    assert first == "unknown" or len(first.removesuffix("-dirty")) == 40
    assert tracking.git_commit(tmp_path) == "unknown"  # not a repository: asked on its own
    assert len(calls) in (2, 3)
    tracking._git_commit.cache_clear()


def test_sqlite_sessions_run_no_pragmas_and_connections_keep_mlflow_settings(
    tracker: Tracker,
) -> None:
    """MLflow's SQL stores execute three PRAGMAs at the start of every session on SQLite; the
    tracker's stores set them once per connection instead (with `synchronous=NORMAL` in WAL mode):
    a run with a parameter issues no PRAGMA, a new connection has MLflow's settings, and a store
    error still reaches the caller as MLflow's exception with its error code."""
    from mlflow.exceptions import MlflowException
    from sqlalchemy import event

    stores = [tracker.client._tracking_client.store, tracker._sql_registry()]
    statements: list[str] = []

    def record(*args) -> None:
        statements.append(args[2])

    for store in stores:
        event.listen(store.engine, "before_cursor_execute", record)
    try:
        with tracker.run("pragmas", "r", {"k": "v"}) as run_id:
            tracker.log_params(run_id, {"a": 1})
            tracker.log_metrics(run_id, {"m": 0.5})
        tracker.client.create_registered_model(NAME)
        tracker.set_alias(
            NAME, "challenger", tracker.client.create_model_version(NAME, "/x").version
        )
    finally:
        for store in stores:
            event.remove(store.engine, "before_cursor_execute", record)
    assert len(statements) > 10  # the run, its parameter and metric, the registry writes
    assert not [s for s in statements if "PRAGMA" in s.upper()]
    for store in stores:
        with store.engine.connect() as connection:  # a pooled or new connection: the same
            raw = connection.connection.dbapi_connection
            assert raw.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 20000
            assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
            assert raw.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert raw.execute("SELECT 'a' LIKE 'A'").fetchone()[0] == 0  # case_sensitive_like
    with pytest.raises(MlflowException) as error:
        tracker.client.create_registered_model(NAME)
    assert error.value.error_code == "RESOURCE_ALREADY_EXISTS"
    assert tracker.client.search_registered_models(f"name LIKE '{NAME.upper()}'") == []
    assert [m.name for m in tracker.client.search_registered_models(f"name LIKE '{NAME}'")] == [
        NAME
    ]
