"""`model_report`: the daily (and weekly) report of model health and trading, rendered by
lib/reports.py as Markdown and self-contained HTML, attached to the materialization and to MLflow,
and posted to the alert webhook when one is configured; with its two schedules."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import dagster as dg
import polars as pl

from quant_assets.defs.metadata import readable_metadata
from quant_assets.defs.resources import (
    AlertResource,
    ArtifactStore,
    MlflowResource,
    RetrainRulesResource,
    TradingStoreResource,
)

DAILY_CRON = "30 6 * * *"
WEEKLY_CRON = "0 7 * * 1"
PERIODS = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}
#: assets whose runs are retrains (their success rate and time are reported)
RETRAIN_ASSETS = ("challenger_model", "global_challenger_model", "champion_challenger_evaluation")


class ReportConfig(dg.Config):
    period: Literal["daily", "weekly"] = "daily"
    """The report's window: the last day or the last seven days."""
    post_to_webhook: bool = True
    """Post the summary and the Markdown to the alert webhook when one is configured."""


def retrain_runs(instance: dg.DagsterInstance, since: datetime) -> pl.DataFrame:
    """One row per run since `since` that targeted (a backfill's or a sensor's run) or
    materialized (any run) a retrain asset: status and seconds."""
    from quant_assets.lib.reports import RUN_COLUMNS

    materialized: dict[str, set[str]] = {}
    for asset in RETRAIN_ASSETS:
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_timestamp=since.timestamp()),
            limit=5000,
        ).records
        for event in found:
            materialized.setdefault(event.run_id, set()).add(asset)
    records = instance.get_run_records(
        dg.RunsFilter(created_after=since.replace(tzinfo=None)), limit=5000
    )
    rows = []
    for record in records:
        run = record.dagster_run
        keys = {k.to_user_string() for k in (run.asset_selection or ())}
        keys |= materialized.get(run.run_id, set())
        if not keys & set(RETRAIN_ASSETS):
            continue
        start, end = record.start_time, record.end_time
        rows.append(
            {
                "run_id": run.run_id,
                "status": run.status.value,
                "seconds": (end - start) if start and end else None,
                "kind": ",".join(sorted(keys & set(RETRAIN_ASSETS))),
            }
        )
    return pl.DataFrame(rows, schema=RUN_COLUMNS)


@dg.asset(
    group_name="monitoring",
    kinds={"mlflow", "sql", "html"},
    code_version="1",
    deps=["model_health"],
)
def model_report(
    context: dg.AssetExecutionContext,
    config: ReportConfig,
    mlflow: MlflowResource,
    trading_store: TradingStoreResource,
    artifacts: ArtifactStore,
    retrain_rules: RetrainRulesResource,
    alerts: AlertResource,
) -> dg.Output[pl.DataFrame]:
    """The desk's daily (or weekly) report: per symbol|timeframe the model in service, its age,
    hit rate and Sharpe at training against live, what the retrain rules say; the promotion
    decisions and alerts of the period; the retrain runs' success rate and durations. Markdown and
    a self-contained HTML file (inline plots) under `<artifacts>/reports/`, attached here and to an
    MLflow run (experiment `model_report`), and posted to the alert webhook when configured."""
    from quant_assets.defs.health import partition_statuses
    from quant_assets.lib.health import health_table
    from quant_assets.lib.reports import build_report

    until = datetime.now(UTC)
    since = until - PERIODS[config.period]
    tracker, store = mlflow.get_tracker(), trading_store.get_store()
    statuses = partition_statuses(context.instance, tracker, store, artifacts, retrain_rules, until)
    promotions = store.promotion_history()
    health = health_table(statuses, promotions, until)
    runs = retrain_runs(context.instance, since)
    experiment = tracker.experiment_id("model_report")
    report = build_report(
        period=config.period,
        since=since,
        until=until,
        health=health,
        promotions=promotions,
        alerts=store.alerts(),
        runs=runs,
        links={"MLflow experiment model_report": f"{tracker.ui_url}/#/experiments/{experiment}"},
    )
    folder = Path(artifacts.root) / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"model_report_{config.period}_{until:%Y%m%dT%H%M}"
    md_path, html_path = folder / f"{stem}.md", folder / f"{stem}.html"
    md_path.write_text(report.markdown)
    html_path.write_text(report.html)
    with tracker.run("model_report", stem, {"period": config.period}) as run_id:
        tracker.log_metrics(run_id, {k: float(v) for k, v in report.summary.items()})
        tracker.log_file(run_id, md_path)
        tracker.log_file(run_id, html_path)
        tracker.describe_run(run_id, report.markdown[:5000])
    delivered = "no webhook configured"
    if alerts.webhook_url and config.post_to_webhook:
        delivered = _post(alerts, report)
    context.log.info(f"{config.period} report: {html_path} (webhook: {delivered})")
    return dg.Output(
        health,
        metadata=readable_metadata(
            health,
            {
                **report.summary,
                "period": config.period,
                "report": dg.MetadataValue.md(report.markdown),
                "html_report": dg.MetadataValue.path(str(html_path)),
                "mlflow_run": dg.MetadataValue.url(tracker.run_url(run_id)),
                "webhook": delivered,
            },
        ),
    )


def _post(alerts: AlertResource, report) -> str:
    from quant_assets.lib.alerts import Alert, post_webhook

    message = report.markdown.split("\n\n", 2)[1] if "\n\n" in report.markdown else report.period
    result = post_webhook(
        alerts.webhook_url,
        Alert(
            kind="model_report",
            severity="info",
            subject=f"{report.period} report",
            message=message,
            details={"summary": report.summary, "markdown": report.markdown},
        ),
        timeout=alerts.webhook_timeout_seconds,
        retries=alerts.webhook_retries,
    )
    return "posted" if result.ok else f"not delivered: {result.error}"


model_report_job = dg.define_asset_job(
    "model_report_job",
    selection=[model_report.key],
    description="The model health and trading report (daily by default; weekly by config).",
)
daily_report = dg.ScheduleDefinition(
    name="daily_model_report",
    job=model_report_job,
    cron_schedule=DAILY_CRON,
    execution_timezone="UTC",
    run_config={"ops": {"model_report": {"config": {"period": "daily"}}}},
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"The daily model report at `{DAILY_CRON}` (UTC).",
)
weekly_report = dg.ScheduleDefinition(
    name="weekly_model_report",
    job=model_report_job,
    cron_schedule=WEEKLY_CRON,
    execution_timezone="UTC",
    run_config={"ops": {"model_report": {"config": {"period": "weekly"}}}},
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"The weekly summary at `{WEEKLY_CRON}` (UTC, Mondays): the last seven days.",
)
