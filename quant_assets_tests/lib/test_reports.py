"""The daily/weekly report renders what happened in its window only, as Markdown and as one
self-contained HTML page with inline plots."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import polars as pl

from quant_assets.lib.health import health_table
from quant_assets.lib.reports import RUN_COLUMNS, build_report

NOW = datetime(2026, 6, 30, 6, 30, tzinfo=UTC)


def _promotions() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "decided_at": [NOW - timedelta(days=3), NOW - timedelta(hours=5)],
            "model_name": ["direction.BTCUSDT.1h"] * 2,
            "symbol": ["BTCUSDT"] * 2,
            "timeframe": ["1h"] * 2,
            "version": ["1", "2"],
            "prior_version": [None, "1"],
            "action": ["promote", "manual_promote"],
            "decided_by": ["gates", "cli:desk"],
            "reason": ["passed every gate", "desk override"],
        }
    )


def _alerts() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "raised_at": [NOW - timedelta(days=2), NOW - timedelta(hours=1)],
            "severity": ["warning", "error"],
            "kind": ["degradation", "run_failure"],
            "symbol": ["BTCUSDT", None],
            "timeframe": ["1h", None],
            "message": ["live hit rate 20 % below training", "run abc failed"],
        }
    )


def _health() -> pl.DataFrame:
    frame = health_table([], pl.DataFrame(), NOW)
    return pl.concat(
        [
            frame,
            pl.DataFrame(
                [
                    {
                        "partition": "BTCUSDT|1h",
                        "version": "2",
                        "label": "v1.1",
                        "role": "champion",
                        "age_days": 3.2,
                        "hit_rate_train": 0.55,
                        "hit_rate_live": 0.51,
                        "sharpe_train": 0.2,
                        "sharpe_live": 0.1,
                        "live_trades": 31,
                        "retrain": "no",
                        "mode": "",
                        "why": "",
                        "last_promotion": "manual_promote v2",
                    },
                    {
                        "partition": "SPY|1h",
                        "version": "",
                        "label": "",
                        "role": "none",
                        "age_days": None,
                        "hit_rate_train": None,
                        "hit_rate_live": None,
                        "sharpe_train": None,
                        "sharpe_live": None,
                        "live_trades": 0,
                        "retrain": "no_model",
                        "mode": "complete",
                        "why": "no model",
                        "last_promotion": "never",
                    },
                ],
                schema=frame.schema,
            ),
        ]
    )


def test_a_daily_report_shows_the_day_and_a_weekly_one_the_week() -> None:
    runs = pl.DataFrame(
        {
            "run_id": ["a", "b"],
            "status": ["SUCCESS", "FAILURE"],
            "seconds": [30.0, 12.0],
            "kind": ["challenger_model"] * 2,
        },
        schema=RUN_COLUMNS,
    )
    common = dict(health=_health(), promotions=_promotions(), alerts=_alerts(), runs=runs)
    daily = build_report(period="daily", since=NOW - timedelta(days=1), until=NOW, **common)
    weekly = build_report(period="weekly", since=NOW - timedelta(days=7), until=NOW, **common)
    assert daily.summary["decisions"] == 1 and weekly.summary["decisions"] == 2
    assert daily.summary["alerts"] == 1 and weekly.summary["alerts"] == 2
    assert daily.summary["with_champion"] == 1 and daily.summary["needing_retrain"] == 1
    assert daily.summary["retrain_success_rate"] == 0.5
    assert daily.summary["retrain_median_seconds"] == 21.0
    assert "desk override" in daily.markdown and "passed every gate" not in daily.markdown
    assert "passed every gate" in weekly.markdown
    assert "1 of 2 partitions have a champion" in daily.markdown
    # one self-contained page: inline PNGs that decode, no external resource
    assert daily.html.startswith("<!DOCTYPE html>")
    images = [part.split('"', 1)[0] for part in daily.html.split('src="data:image/png;base64,')[1:]]
    assert len(images) == 2
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert "<link" not in daily.html and "<script" not in daily.html


def test_an_empty_instance_still_renders() -> None:
    empty = build_report(
        period="daily",
        since=NOW - timedelta(days=1),
        until=NOW,
        health=health_table([], pl.DataFrame(), NOW),
        promotions=pl.DataFrame(),
        alerts=pl.DataFrame(),
        runs=pl.DataFrame(schema=RUN_COLUMNS),
    )
    assert empty.summary["partitions"] == 0 and empty.summary["retrain_success_rate"] == 1.0
    assert "no partition registered" in empty.markdown and "<img" not in empty.html
