"""Keeping the pipeline fresh by itself: each timeframe's `ohlcv` refresh schedule, the data and
model automation sensors (declarative conditions, kept apart so retrains never ride along with
ingestion), the retrain sensor and the nightly / weekly retrain backfills, and alerts."""

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import dagster as dg

# The latest tick of a cron string at a given time; Dagster has no public API for it.
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.execution.backfill import BulkActionStatus
from dagster._utils.schedules import cron_string_iterator

from quant_assets.defs.evaluation import champion_challenger_evaluation
from quant_assets.defs.features import cross_sectional_ranks, features
from quant_assets.defs.labels import labels
from quant_assets.defs.meta import (
    ensemble_signals,
    meta_filter,
    meta_learner,
    primary_signals,
    regime,
)
from quant_assets.defs.models import challenger_model, training_dataset, walk_forward_splits
from quant_assets.defs.ohlcv import ohlcv
from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME, partition_key
from quant_assets.defs.resources import (
    AlertResource,
    ArtifactStore,
    MlflowResource,
    RetrainRulesResource,
)
from quant_assets.defs.signals import champion, signals
from quant_assets.lib.alerts import Alert
from quant_assets.lib.health import (
    RUN_TAG_MODE,
    RUN_TAG_REASONS,
    PartitionStatus,
    partition_status,
)
from quant_assets.lib.retrain import RetrainReason, unseen_reasons
from quant_assets.lib.settings import Settings
from quant_assets.lib.timeframes import refresh_cron
from quant_assets.lib.tracking import registered_model_name

Clock = Callable[[], datetime]

TAG_TRIGGER = "quant_assets/retrain_trigger"
TAG_DETAIL = "quant_assets/retrain_detail"
#: reasons the retrain sensor acts on at once; the others wait for the nightly batch
URGENT_REASONS = frozenset({"no_model", "degradation"})
#: the cursor remembers at most this many reason keys (each names a model, so old ones go stale)
MAX_SEEN_KEYS = 20_000

DATA_ASSETS = [
    ohlcv,
    features,
    cross_sectional_ranks,
    labels,
    training_dataset,
    walk_forward_splits,
    signals,
    regime,
    primary_signals,
    ensemble_signals,
]
RETRAIN_ASSETS = [challenger_model, champion_challenger_evaluation]
RETRAIN_SELECTION = dg.AssetSelection.assets(*RETRAIN_ASSETS)


def wall_clock() -> datetime:
    return datetime.now(UTC)


def statuses(
    context: dg.SensorEvaluationContext,
    mlflow: MlflowResource,
    alerts: AlertResource,
    artifacts: ArtifactStore,
    retrain_rules: RetrainRulesResource,
    now: datetime,
) -> Iterator[PartitionStatus]:
    """The retrain status of every symbol|timeframe partition the rules watch."""
    tracker, store, policy = mlflow.get_tracker(), alerts.get_store(), retrain_rules.policy()
    partitions = [
        (symbol, timeframe)
        for symbol in sorted(context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME))
        for timeframe in retrain_rules.timeframes
    ]
    registry = tracker.registry_view([registered_model_name(s, t) for s, t in partitions])
    for symbol, timeframe in partitions:
        labels = artifacts.read_partition("labels", symbol, timeframe)
        yield partition_status(registry, store, labels, symbol, timeframe, now, policy)


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def retrains_in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Partition keys that a queued or running retrain (a run or a backfill of the retrain sensors)
    already covers: requesting them again would train twice on the same data."""
    busy = {
        run.tags["dagster/partition"]
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_FLIGHT))
        if TAG_TRIGGER in run.tags and "dagster/partition" in run.tags
    }
    for backfill in instance.get_backfills(status=BulkActionStatus.REQUESTED):
        if TAG_TRIGGER in backfill.tags and backfill.asset_backfill_data is not None:
            target = backfill.asset_backfill_data.target_subset
            busy |= {str(k.partition_key) for k in target.iterate_asset_partitions()}
    return busy


def _retrain_tags(trigger: str, mode: str, reasons: list[RetrainReason]) -> dict[str, str]:
    detail = "; ".join(r.detail for r in reasons)
    return {
        TAG_TRIGGER: trigger,
        RUN_TAG_MODE: mode,
        RUN_TAG_REASONS: ",".join(dict.fromkeys(r.code for r in reasons)) or "scheduled",
        # Dagster caps tag values; the full text is in the sensor's log and the model's tags
        TAG_DETAIL: detail[:1000],
    }


def raise_alert(alerts: AlertResource, log, alert: Alert) -> None:
    """Record an alert in the alerts table, the Dagster log and (if configured) the webhook."""
    result = alerts.send(alert)
    line = f"ALERT [{alert.severity}] {alert.kind} {alert.subject}: {alert.message}"
    (log.error if alert.severity == "error" else log.warning)(line)
    if result is not None and not result.ok:
        log.warning(f"alert webhook failed after {result.attempts} attempts: {result.error}")


def build_retrain_sensor(settings: Settings, clock: Clock = wall_clock) -> dg.SensorDefinition:
    @dg.sensor(
        name="retrain_sensor",
        minimum_interval_seconds=settings.retrain_sensor_hours * 3600,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=RETRAIN_SELECTION,
        description=(
            "Evaluates the retrain rules on every partition; requests a retrain at once for a "
            "partition without a model or whose champion degraded (the other reasons wait for the "
            "nightly batch), with the reasons as run tags. Each reason triggers once (cursor)."
        ),
    )
    def retrain_sensor(
        context: dg.SensorEvaluationContext,
        mlflow: MlflowResource,
        artifacts: ArtifactStore,
        alerts: AlertResource,
        retrain_rules: RetrainRulesResource,
    ) -> dg.SensorResult:
        now = clock()
        seen = set(json.loads(context.cursor)["seen"]) if context.cursor else set()
        requests, newly_seen, waiting = [], [], []
        busy = retrains_in_flight(context.instance)
        for status in statuses(context, mlflow, alerts, artifacts, retrain_rules, now):
            symbol, timeframe = status.symbol, status.timeframe
            if status.key in busy:
                continue  # its queued or running retrain decides; the rules run again after it
            keyed = [
                RetrainReason(r.code, r.detail, f"{status.key}::{r.key}") for r in status.reasons
            ]
            fresh = unseen_reasons(keyed, seen)
            urgent = [r for r in fresh if r.code in URGENT_REASONS]
            waiting += [f"{status.key} ({r.code})" for r in fresh if r.code not in URGENT_REASONS]
            for reason in urgent:
                if reason.code == "degradation":
                    raise_alert(
                        alerts,
                        context.log,
                        Alert(
                            kind="degradation",
                            severity="warning",
                            subject=status.key,
                            message=f"{status.model_name} v{status.version}: {reason.detail}",
                            details={"model": status.model_name, "version": status.version},
                            symbol=symbol,
                            timeframe=timeframe,
                            created_at=now,
                        ),
                    )
            if urgent:
                newly_seen += [r.key for r in urgent]
                context.log.info(
                    f"{status.key}: retrain ({status.mode}): " + "; ".join(r.detail for r in urgent)
                )
                requests.append(
                    dg.RunRequest(
                        run_key="|".join(r.key for r in urgent),
                        partition_key=partition_key(symbol, timeframe),
                        asset_selection=[a.key for a in RETRAIN_ASSETS],
                        tags=_retrain_tags("retrain_sensor", status.mode, urgent),
                    )
                )
        if waiting:
            context.log.info(f"left for the nightly retrain: {', '.join(waiting)}")
        cursor = [*seen, *newly_seen][-MAX_SEEN_KEYS:]
        return dg.SensorResult(
            run_requests=requests,
            cursor=json.dumps({"seen": sorted(cursor)}),
            skip_reason=None if requests else "no partition needs an urgent retrain",
        )

    return retrain_sensor


def latest_cron_tick(cron: str, now: datetime) -> datetime:
    return next(cron_string_iterator(now.timestamp(), cron, "UTC", ascending=False))


def build_cron_retrain_sensor(
    name: str, cron: str, settings: Settings, *, complete: bool, clock: Clock = wall_clock
) -> dg.SensorDefinition:
    """A sensor that, once per tick of `cron`, launches ONE backfill of the retrain assets over the
    partitions to retrain (every partition when `complete`, else those the rules flag), batched by
    the assets' BackfillPolicy.multi_run. A sensor, because schedules cannot launch backfills."""
    what = "every partition, from scratch" if complete else "every partition the rules flag"

    @dg.sensor(
        name=name,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        asset_selection=RETRAIN_SELECTION,
        description=f"At `{cron}` (UTC): one backfill retraining {what}, then evaluating it.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        mlflow: MlflowResource,
        artifacts: ArtifactStore,
        alerts: AlertResource,
        retrain_rules: RetrainRulesResource,
    ) -> dg.SensorResult | dg.SkipReason:
        now = clock()
        tick = latest_cron_tick(cron, now)
        if context.cursor is None:
            return dg.SensorResult(
                cursor=tick.isoformat(),
                skip_reason=f"started; first retrain at the tick after {tick.isoformat()}",
            )
        if tick <= datetime.fromisoformat(context.cursor):
            return dg.SkipReason(f"next retrain after the tick following {context.cursor}")
        chosen: list[tuple[str, str, str]] = []
        all_reasons: list[RetrainReason] = []
        busy = retrains_in_flight(context.instance)
        for status in statuses(context, mlflow, alerts, artifacts, retrain_rules, now):
            if status.key in busy:
                context.log.info(f"{status.key}: a retrain is already queued or running")
            elif complete or status.reasons:
                all_reasons += status.reasons
                why = "; ".join(r.detail for r in status.reasons) or "no rule fired"
                chosen.append((status.symbol, status.timeframe, why))
        for symbol, timeframe, why in chosen:
            context.log.info(f"{symbol}|{timeframe}: {why}")
        if not chosen:
            return dg.SensorResult(
                cursor=tick.isoformat(), skip_reason=f"{tick.isoformat()}: no partition to retrain"
            )
        graph = context.repository_def.asset_graph
        subset = AssetGraphSubset.from_asset_partition_set(
            {
                AssetKeyPartitionKey(asset.key, partition_key(symbol, timeframe))
                for asset in RETRAIN_ASSETS
                for symbol, timeframe, _ in chosen
            },
            graph,
        )
        tags = _retrain_tags(name, "complete" if complete else "auto", all_reasons)
        tags["quant_assets/retrain_partitions"] = str(len(chosen))
        tags["quant_assets/retrain_tick"] = tick.isoformat()
        return dg.SensorResult(
            run_requests=[dg.RunRequest.for_asset_graph_subset(subset, tags=tags)],
            cursor=tick.isoformat(),
        )

    return _sensor


def innermost_message(error) -> str:
    """The message of a step failure's innermost cause: user code errors arrive wrapped in
    Dagster's own (`Error occurred while executing op ...`), and the cause is the real one."""
    if error is None:
        return "unknown error"
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


@dg.run_failure_sensor(
    name="run_failure_alerts",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Records an alert (alerts table, log, webhook) for every failed run.",
)
def run_failure_alerts(context: dg.RunFailureSensorContext, alerts: AlertResource) -> None:
    run = context.dagster_run
    partition = run.tags.get("dagster/partition")
    symbol, timeframe = partition.split("|", 1) if partition and "|" in partition else (None, None)
    steps = [
        f"{e.step_key}: {innermost_message(e.step_failure_data.error)[:500]}"
        for e in context.get_step_failure_events()
    ]
    raise_alert(
        alerts,
        context.log,
        Alert(
            kind="run_failure",
            severity="error",
            subject=f"run {run.run_id[:8]} ({run.job_name}{' ' + partition if partition else ''})",
            message=context.failure_event.message or "run failed",
            details={
                "run_id": run.run_id,
                "job": run.job_name,
                "partition": partition,
                "failed_steps": steps,
                "trigger": run.tags.get(TAG_TRIGGER, run.tags.get("dagster/sensor_name", "manual")),
            },
            symbol=symbol,
            timeframe=timeframe,
            created_at=wall_clock(),
        ),
    )


ohlcv_refresh_job = dg.define_asset_job(
    "ohlcv_refresh",
    selection=dg.AssetSelection.assets(ohlcv),
    description="Fetch new bars for one symbol|timeframe (only bars after the stored ones).",
)


def build_ohlcv_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    """One schedule per timeframe, a few minutes after each of its bars closes, requesting the
    `ohlcv` refresh of every symbol at that timeframe."""
    schedules = []
    for timeframe in settings.timeframes:
        cron = settings.ohlcv_refresh_cron or refresh_cron(
            timeframe, settings.ohlcv_refresh_delay_minutes
        )

        @dg.schedule(
            name=f"ohlcv_refresh_{timeframe}",
            cron_schedule=cron,
            execution_timezone="UTC",
            job=ohlcv_refresh_job,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Fresh {timeframe} bars for every symbol at `{cron}` (UTC).",
        )
        def _schedule(context: dg.ScheduleEvaluationContext, timeframe: str = timeframe):
            symbols = sorted(context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME))
            if not symbols:
                return dg.SkipReason("no symbol partitions yet (the watchlist sensor adds them)")
            tick = context.scheduled_execution_time.isoformat()
            return [
                dg.RunRequest(
                    run_key=f"{symbol}|{timeframe}@{tick}",
                    partition_key=partition_key(symbol, timeframe),
                    tags={"quant_assets/trigger": f"ohlcv_refresh_{timeframe}"},
                )
                for symbol in symbols
            ]

        schedules.append(_schedule)
    return schedules


data_automation_sensor = dg.AutomationConditionSensorDefinition(
    "data_automation",
    target=dg.AssetSelection.assets(*DATA_ASSETS),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Market data, features, labels, datasets and signals follow their upstream.",
)


def build_automation(settings: Settings, clock: Clock = wall_clock) -> dict[str, list]:
    """Schedules, sensors and jobs of the automation, for Definitions."""
    from quant_assets.defs.health import model_health
    from quant_assets.defs.volatility import volatility_model

    model_automation_sensor = dg.AutomationConditionSensorDefinition(
        "model_automation",
        target=dg.AssetSelection.assets(
            champion, model_health, meta_learner, meta_filter, volatility_model
        ),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Promotions after passed gates, the nightly meta-learners, filter and "
        "volatility models, and the hourly model-health view.",
    )
    return {
        "schedules": build_ohlcv_schedules(settings),
        "sensors": [
            data_automation_sensor,
            model_automation_sensor,
            build_retrain_sensor(settings, clock),
            build_cron_retrain_sensor(
                "nightly_retrain",
                settings.nightly_retrain_cron,
                settings,
                complete=False,
                clock=clock,
            ),
            build_cron_retrain_sensor(
                "weekly_complete_retrain",
                settings.weekly_retrain_cron,
                settings,
                complete=True,
                clock=clock,
            ),
            run_failure_alerts,
        ],
        "jobs": [ohlcv_refresh_job],
    }
