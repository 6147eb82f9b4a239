"""The Dagster code location: every asset, check, resource, job and sensor of quant-assets, from
Settings. Runs execute in one process each (`in_process_executor`): parallelism comes from the run
queue, which runs `max_concurrent_runs` batched runs at once (see README, "Execution"); with
`deployment = "celery"` their steps run on Celery workers (README, "Scale out")."""

from __future__ import annotations

import dagster as dg

from quant_assets.defs.automation import Clock, build_automation, wall_clock
from quant_assets.defs.conditions import limited_to_timeframes
from quant_assets.defs.evaluation import champion_challenger_evaluation
from quant_assets.defs.executor import executor_from_settings
from quant_assets.defs.features import cross_sectional_ranks, features
from quant_assets.defs.health import model_health
from quant_assets.defs.jobs import PIPELINE_JOBS
from quant_assets.defs.labels import labels
from quant_assets.defs.meta import META_ASSETS
from quant_assets.defs.metadata import with_code_references
from quant_assets.defs.models import (
    challenger_model,
    global_challenger_model,
    training_dataset,
    walk_forward_splits,
)
from quant_assets.defs.ohlcv import ohlcv
from quant_assets.defs.report import daily_report, model_report, weekly_report
from quant_assets.defs.resources import resources_from_settings
from quant_assets.defs.serving import build_serving_automation
from quant_assets.defs.signals import champion, signals
from quant_assets.defs.sweeps import hyperparameter_sweep
from quant_assets.defs.symbols import build_watchlist_sensor
from quant_assets.defs.volatility import volatility_model
from quant_assets.lib.settings import Settings, load_settings

ASSETS = [
    ohlcv,
    features,
    cross_sectional_ranks,
    labels,
    training_dataset,
    walk_forward_splits,
    hyperparameter_sweep,
    challenger_model,
    global_challenger_model,
    champion_challenger_evaluation,
    champion,
    signals,
    volatility_model,
    model_health,
    model_report,
    *META_ASSETS,
]


def build_defs(settings: Settings, clock: Clock = wall_clock) -> dg.Definitions:
    """Everything Dagster loads; `clock` is the time the retrain sensors see (tests move it)."""
    automation = build_automation(settings, clock)
    serving = build_serving_automation(settings)
    return dg.Definitions(
        # code references: every asset links to its source file and line in the UI
        assets=with_code_references(limited_to_timeframes(ASSETS, settings.timeframes)),
        resources={**resources_from_settings(settings), **serving["resources"]},
        schedules=[*automation["schedules"], *serving["schedules"], daily_report, weekly_report],
        sensors=[build_watchlist_sensor(settings.watchlist_path), *automation["sensors"]],
        jobs=[*automation["jobs"], *PIPELINE_JOBS, *serving["jobs"]],
        executor=executor_from_settings(settings),
    )


defs = build_defs(load_settings())
