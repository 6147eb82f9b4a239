"""CPU cost of tracking one trained model in MLflow, the way every model asset does it: a run with
params and metrics, two JSON artifacts, the model logged and registered, an alias and the
registered model's description and tags; then loading the version back. `Tracker` (our path)
against the same work through MLflow's public client and fluent API (the reference).

    python benchmarks/bench_tracking.py [--models 12]

Prints CPU milliseconds per model for both and their ratio. A fresh SQLite store in a temporary
directory; scikit-learn logistic regression on 2,000 x 12 rows (a meta-learner's size).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=12, help="models timed per path")
    args = parser.parse_args()

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    from quant_assets.lib.tracking import Tracker, pip_requirements

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(2000, 12)), columns=[f"f{i}" for i in range(12)])
    y = (X["f0"] + rng.normal(scale=0.5, size=2000) > 0).astype(int)
    model = LogisticRegression().fit(X.to_numpy(), y)
    params = {f"meta.param{k}": k for k in range(8)}
    metrics = {f"holdout_metric{k}": k / 10 for k in range(20)}

    def ours(tracker: Tracker, i: int) -> None:
        name = f"meta.SYM{i}.1h.trend"
        with tracker.run("bench_tracking", name, {"regime": "trend"}) as run_id:
            tracker.log_params(run_id, params)
            tracker.log_metrics(run_id, metrics)
            tracker.log_dict(run_id, {"features": list(X.columns)}, "feature_list.json")
            tracker.log_text(run_id, "trained", "status.txt")
            version = tracker.log_model(
                model, "logistic", X.head(5), name, {"model_type": "logistic"}
            )
        tracker.set_alias(name, "challenger", version.version)
        tracker.describe_registered_model(name, "a meta-learner", {"symbol": f"SYM{i}"})
        tracker.load_model(name, version.version)

    def reference(client: mlflow.MlflowClient, i: int) -> None:
        name = f"ref.SYM{i}.1h.trend"
        with mlflow.start_run(run_name=name, tags={"regime": "trend"}) as run:
            mlflow.log_params(params)
            mlflow.log_metrics(metrics)
            mlflow.log_dict({"features": list(X.columns)}, "feature_list.json")
            mlflow.log_text("trained", "status.txt")
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(X.head(5), np.full(5, 0.5)),
                input_example=X.head(5),
                pip_requirements=pip_requirements("logistic"),
                serialization_format="cloudpickle",
            )
            version = mlflow.register_model(
                info.model_uri, name, tags={"model_type": "logistic"}
            ).version
        client.set_registered_model_alias(name, "challenger", version)
        client.update_registered_model(name, description="a meta-learner")
        client.set_registered_model_tag(name, "symbol", f"SYM{i}")
        mlflow.sklearn.load_model(f"models:/{name}@challenger")
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="feature_list.json"
        )
        json.loads(Path(local).read_text())

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        tracker = Tracker(uri)  # creates the store; the reference shares it
        client = mlflow.MlflowClient(uri)
        # artifacts under the temporary directory (a new experiment's default is ./mlruns)
        reference_id = client.create_experiment(
            "bench_tracking_reference", artifact_location=Path(tmp, "reference").as_uri()
        )
        mlflow.set_experiment(experiment_id=reference_id)
        results = {}
        for label, step in (
            ("quant_assets Tracker", lambda i: ours(tracker, i)),
            ("MLflow client and fluent API (reference)", lambda i: reference(client, i)),
        ):
            step(0)  # first use: imports, experiment creation
            started = time.process_time()
            for i in range(1, args.models + 1):
                step(i)
            results[label] = (time.process_time() - started) / args.models * 1000
            print(f"{label}: {results[label]:.0f} ms CPU per model (run, model, registry, load)")
        ours_ms, ref_ms = results.values()
        print(f"ratio Tracker / reference: {ours_ms / ref_ms:.2f}")


if __name__ == "__main__":
    main()
