"""quant-assets: a Dagster data-asset pipeline for machine-learning trading signals."""

import os as _os

# MLflow sends usage telemetry from every process that imports it (a client and its threads start
# at `import mlflow`) unless told not to; Dagster's is off in the instance's dagster.yaml. Off for
# every process of the project (CLI, daemon, code server, warm workers, tests), unless the
# environment already says otherwise.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
