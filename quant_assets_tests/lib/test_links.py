"""MLflow links point at the configured UI, never at a hard-coded address."""

from __future__ import annotations

from quant_assets.lib.settings import Settings, load_settings


def test_the_mlflow_ui_is_the_setting_else_the_server_else_mlflow_ui_default(monkeypatch) -> None:
    assert Settings(mlflow_ui_url="https://mlflow.desk.example/").mlflow_ui == (
        "https://mlflow.desk.example"
    )
    assert Settings(mlflow_tracking_uri="http://tracking:5000").mlflow_ui == "http://tracking:5000"
    assert Settings(mlflow_tracking_uri="sqlite:///x.db").mlflow_ui == "http://127.0.0.1:5000"
    monkeypatch.setenv("QUANT_ASSETS_MLFLOW_UI_URL", "http://ui.example:8080")
    assert load_settings().mlflow_ui == "http://ui.example:8080"


def test_run_and_version_links_use_the_ui_url(mlflow_uri) -> None:
    from quant_assets.lib.tracking import Tracker

    tracker = Tracker(mlflow_uri, "http://ui.example:8080/")
    with tracker.run("challenger_model", "r", {}) as run_id:
        pass
    experiment = tracker.client.get_run(run_id).info.experiment_id
    assert tracker.run_url(run_id) == (
        f"http://ui.example:8080/#/experiments/{experiment}/runs/{run_id}"
    )
    # a run opened by another tracker (another step) is looked up: the same link
    assert Tracker(mlflow_uri, "http://ui.example:8080/").run_url(run_id) == tracker.run_url(run_id)
    assert tracker.version_url("direction.BTCUSDT.1h", "3") == (
        "http://ui.example:8080/#/models/direction.BTCUSDT.1h/versions/3"
    )
    # a new experiment describes itself in the MLflow UI
    tags = tracker.client.get_experiment(experiment).tags
    assert "challenger_model" in tags["mlflow.note.content"]
    assert Tracker(mlflow_uri).ui_url == "http://127.0.0.1:5000"
