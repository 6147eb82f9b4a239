"""The executor, chosen by the `deployment` setting: each run in one process (local, the embedded
default), or its steps on Celery workers (`dagster-celery`, imported only then)."""

from __future__ import annotations

import dagster as dg

from quant_assets.lib.deployment import celery_config, check_distributed
from quant_assets.lib.settings import Settings


def executor_from_settings(settings: Settings) -> dg.ExecutorDefinition:
    if settings.deployment == "local":
        return dg.in_process_executor
    check_distributed(settings)
    from dagster_celery import celery_executor

    return celery_executor.configured(celery_config(settings), name="celery")
