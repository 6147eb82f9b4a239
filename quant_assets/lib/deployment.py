"""The celery deployment: what every machine must share (checked before anything runs), and the
Celery configuration that the executor and every worker must agree on."""

from __future__ import annotations

from quant_assets.lib.errors import QuantAssetsError
from quant_assets.lib.masking import mask_secrets
from quant_assets.lib.settings import Settings


class DeploymentError(QuantAssetsError, ValueError):
    """The settings cannot run the selected deployment."""


def distributed_store_problems(settings: Settings) -> list[str]:
    """Why these settings cannot run steps on several machines (empty when they can): MLflow must
    be a tracking server (a worker never opens an MLflow SQLite file) and the trading tables must
    be on PostgreSQL. The Parquet root is a path every worker must see; that cannot be checked
    from one machine."""
    problems = []
    if not settings.mlflow_tracking_uri.lower().startswith(("http://", "https://")):
        problems.append(
            "mlflow_tracking_uri (MLFLOW_TRACKING_URI) must be an MLflow tracking server "
            f"(http://host:5000), not {mask_secrets(settings.mlflow_uri)!r}"
        )
    if not settings.trading_db.lower().startswith("postgresql"):
        problems.append(
            "trading_db (QUANT_ASSETS_TRADING_DB) must be a PostgreSQL URL "
            f"(postgresql+psycopg2://user@host/db), not {settings.trading_db or 'SQLite under artifacts'!r}"
        )
    return problems


def check_distributed(settings: Settings) -> None:
    problems = distributed_store_problems(settings)
    if problems:
        raise DeploymentError(
            "deployment = 'celery' runs steps on other machines, which need shared stores: "
            + "; ".join(problems)
        )


def celery_config(settings: Settings) -> dict[str, object]:
    """The `celery_executor` config, which is also the YAML every worker starts from
    (`dagster-celery worker start -y ...`): broker, result backend, and Celery settings.

    A task is acknowledged only after it ran (`task_acks_late`) and handed back to the broker when
    its worker process dies (`task_reject_on_worker_lost`): a step on a lost worker runs again on
    another. A worker reserves one task at a time, so waiting steps go to whichever worker is free.
    """
    return {
        "broker": settings.celery_broker,
        "backend": settings.celery_backend,
        "config_source": {
            "task_default_queue": settings.celery_queue,
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "broker_connection_retry_on_startup": True,
        },
    }


def worker_yaml(settings: Settings) -> str:
    """The YAML file of `dagster-celery worker start -y`: the executor's own config, so workers
    and the executor cannot disagree on the broker, backend or Celery settings."""
    import yaml

    return yaml.safe_dump({"execution": {"config": celery_config(settings)}}, sort_keys=False)


if __name__ == "__main__":  # python -m quant_assets.lib.deployment > celery.yaml
    import sys

    from quant_assets.lib.settings import load_settings

    sys.stdout.write(worker_yaml(load_settings()))
