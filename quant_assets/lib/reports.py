"""Daily and weekly reports of model health and trading, for a desk that should not need to open a
UI: per partition the model in service, its age, live against training quality, the decisions and
alerts of the period and the retrain runs' success rate and time; rendered as Markdown and as one
self-contained HTML file (plots inlined as base64 PNG). Pure: frames in, text out."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import datetime

import polars as pl

from quant_assets.lib.reporting import markdown_table

#: columns of the per-partition table a report shows (from lib.health.health_table)
PARTITION_COLUMNS = (
    "partition",
    "role",
    "version",
    "label",
    "age_days",
    "hit_rate_train",
    "hit_rate_live",
    "sharpe_train",
    "sharpe_live",
    "live_trades",
    "retrain",
    "last_promotion",
)
#: what one row of `runs` holds: a run of a retrain (training or evaluation) in the period
RUN_COLUMNS = {"run_id": pl.String, "status": pl.String, "seconds": pl.Float64, "kind": pl.String}


@dataclass(frozen=True)
class Report:
    period: str
    since: datetime
    until: datetime
    summary: dict[str, float | int]
    markdown: str
    html: str


def _within(frame: pl.DataFrame, column: str, since: datetime, until: datetime) -> pl.DataFrame:
    if frame.is_empty() or column not in frame.columns:
        return frame.clear()
    return frame.filter((pl.col(column) > since) & (pl.col(column) <= until))


def run_summary(runs: pl.DataFrame) -> dict[str, float | int]:
    """Retrain runs of the period: how many, the share that succeeded, median and max duration."""
    finished = runs.filter(pl.col("status").is_in(["SUCCESS", "FAILURE", "CANCELED"]))
    ok = int((finished["status"] == "SUCCESS").sum()) if finished.height else 0
    seconds = finished["seconds"].drop_nulls() if finished.height else pl.Series([], dtype=float)
    return {
        "retrain_runs": int(runs.height),
        "retrain_runs_succeeded": ok,
        "retrain_success_rate": round(ok / finished.height, 3) if finished.height else 1.0,
        "retrain_median_seconds": round(float(seconds.median()), 1) if seconds.len() else 0.0,
        "retrain_max_seconds": round(float(seconds.max()), 1) if seconds.len() else 0.0,
    }


def build_report(
    *,
    period: str,
    since: datetime,
    until: datetime,
    health: pl.DataFrame,
    promotions: pl.DataFrame,
    alerts: pl.DataFrame,
    runs: pl.DataFrame,
    links: dict[str, str] | None = None,
) -> Report:
    """The report of `period` ("daily" or "weekly") over (since, until].

    health: lib.health.health_table rows; promotions: promotion_log rows; alerts: the alerts table;
    runs: one row per retrain run of the period (RUN_COLUMNS). links: name -> URL listed at the end
    (the Dagster asset, the MLflow experiment)."""
    decisions = _within(promotions, "decided_at", since, until)
    raised = _within(alerts, "raised_at", since, until)
    health = health.select([c for c in PARTITION_COLUMNS if c in health.columns])
    roles = health["role"] if health.height else pl.Series([], dtype=pl.String)
    summary: dict[str, float | int] = {
        "partitions": int(health.height),
        "with_champion": int((roles == "champion").sum()),
        "without_model": int((roles == "none").sum()),
        "needing_retrain": int((health["retrain"] != "no").sum()) if health.height else 0,
        "decisions": int(decisions.height),
        "promotions": int(
            decisions["action"].is_in(["promote", "manual_promote", "rollback"]).sum()
        )
        if decisions.height
        else 0,
        "alerts": int(raised.height),
        **run_summary(runs),
    }
    title = f"quant-assets {period} report, {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC"
    decision_view = (
        decisions.select(
            "decided_at", "model_name", "version", "prior_version", "action", "decided_by", "reason"
        )
        if decisions.height
        else decisions
    )
    alert_view = (
        raised.select("raised_at", "severity", "kind", "symbol", "timeframe", "message")
        if raised.height
        else raised
    )
    sections = [
        ("Partitions", health, "no partition registered"),
        ("Decisions", decision_view, "no promotion decision in the period"),
        ("Alerts", alert_view, "no alert in the period"),
        ("Retrain runs", runs, "no retrain run in the period"),
    ]
    markdown = _markdown(title, summary, sections, links or {})
    plots = _plots(health, runs)
    page = _html(title, summary, sections, plots, links or {})
    return Report(period, since, until, summary, markdown, page)


def _markdown(title, summary, sections, links) -> str:
    lines = [f"# {title}", "", _summary_line(summary), ""]
    for heading, frame, empty in sections:
        lines += [f"## {heading}", ""]
        lines.append(markdown_table(frame, max_rows=200, float_digits=4) if frame.height else empty)
        lines.append("")
    if links:
        lines += ["## Links", "", *(f"- [{name}]({url})" for name, url in links.items()), ""]
    return "\n".join(lines)


def _summary_line(summary: dict[str, float | int]) -> str:
    return (
        f"{summary['with_champion']} of {summary['partitions']} partitions have a champion, "
        f"{summary['needing_retrain']} need a retrain; {summary['decisions']} decisions "
        f"({summary['promotions']} moved a champion), {summary['alerts']} alerts; "
        f"{summary['retrain_runs']} retrain runs, "
        f"{summary['retrain_success_rate']:.0%} succeeded "
        f"(median {summary['retrain_median_seconds']:.0f} s)."
    )


def _html_table(frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    rows = []
    for row in frame.head(200).iter_rows():
        cells = []
        for value in row:
            if value is None:
                text = ""
            elif isinstance(value, float):
                text = f"{value:.4g}"
            elif isinstance(value, datetime):
                text = f"{value:%Y-%m-%d %H:%M}"
            else:
                text = str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f2f2f2}"
    "img{max-width:100%}"
)


def _html(title, summary, sections, plots, links) -> str:
    parts = [
        "<!DOCTYPE html>",
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>',
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(_summary_line(summary))}</p>",
    ]
    for alt, png in plots:
        encoded = base64.b64encode(png).decode()
        parts.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">')
    for heading, frame, empty in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(_html_table(frame) if frame.height else f"<p>{html.escape(empty)}</p>")
    if links:
        items = "".join(
            f'<li><a href="{html.escape(url)}">{html.escape(name)}</a></li>'
            for name, url in links.items()
        )
        parts.append(f"<h2>Links</h2><ul>{items}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _plots(health: pl.DataFrame, runs: pl.DataFrame) -> list[tuple[str, bytes]]:
    """(alt text, PNG bytes): hit rate and Sharpe at training against live per partition, and the
    retrain runs' durations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = []
    modelled = health.filter(pl.col("role") != "none") if health.height else health
    if modelled.height:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.2 + 0.15 * modelled.height))
        y = np.arange(modelled.height)
        for ax, metric in zip(axes, ("hit_rate", "sharpe"), strict=True):
            train = modelled[f"{metric}_train"].fill_null(np.nan).to_numpy()
            live = modelled[f"{metric}_live"].fill_null(np.nan).to_numpy()
            ax.barh(y - 0.2, train, height=0.4, label="training (OOF)")
            ax.barh(y + 0.2, live, height=0.4, label="live")
            ax.set_yticks(y, modelled["partition"].to_list())
            ax.set_title(metric.replace("_", " "))
            ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(("training vs live quality per partition", _png(fig)))
    if runs.height:
        fig, ax = plt.subplots(figsize=(6, 2.8))
        colours = ["tab:green" if s == "SUCCESS" else "tab:red" for s in runs["status"]]
        ax.bar(np.arange(runs.height), runs["seconds"].fill_null(0).to_numpy(), color=colours)
        ax.set_ylabel("seconds")
        ax.set_title("retrain runs (green: succeeded)")
        fig.tight_layout()
        out.append(("retrain run durations", _png(fig)))
    return out


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    from quant_assets.lib.plots import save_png

    buffer = io.BytesIO()
    save_png(fig, buffer, dpi=80)
    plt.close(fig)
    return buffer.getvalue()
