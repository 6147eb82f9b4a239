"""Alerts: payloads shaped like the alerts table, and webhook delivery against a real local HTTP
server (success, retried 5xx/429, final 4xx, timeouts, refused connections) with recorded backoff."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from quant_assets.lib.alerts import Alert, WebhookURLError, post_webhook
from quant_assets.lib.stores import TradingStore, alerts_table

RAISED = datetime(2026, 5, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))


def _alert(**kw) -> Alert:
    base = dict(
        kind="degradation",
        severity="warning",
        subject="BTCUSDT|1h",
        message="live sharpe 0.4 vs 1.2 at training",
        details={"live_sharpe": np.float64(0.4), "n": np.int64(12), "psr": math.nan},
        symbol="BTCUSDT",
        timeframe="1h",
        created_at=RAISED,
    )
    return Alert(**(base | kw))


class _Server(ThreadingHTTPServer):
    """Answers each POST with the next (status, seconds to wait first) of `script`, then 200."""

    daemon_threads = True

    def __init__(self, script: list[tuple[int, float]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = list(script)
        self.received: list[tuple[str, dict]] = []
        self.release = threading.Event()

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out has hung up: writing its answer fails, as expected


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Content-Type"], json.loads(body)))
        status, wait = self.server.script.pop(0) if self.server.script else (200, 0.0)
        if wait:
            self.server.release.wait(wait)
        answer = b"bad payload" if status == 400 else b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def serve() -> Iterator:
    servers: list[_Server] = []

    def start(*script: tuple[int, float]) -> tuple[_Server, str]:
        server = _Server(list(script))
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/hook"

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


class _Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_payload_matches_the_alerts_table_and_is_strict_json() -> None:
    alert = _alert()
    payload = alert.to_payload()
    table = {c.name for c in alerts_table.columns} - {"id", "details_json"}
    assert set(payload) == table | {"details", "subject"}
    assert payload["raised_at"] == "2026-05-01T10:30:00+00:00"
    assert payload["details"] == {"live_sharpe": 0.4, "n": 12, "psr": None}
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload
    assert alert.created_at.tzinfo is UTC
    # what the store keeps of it, it gives back
    store = TradingStore("sqlite://")
    store.record_alert(
        **{k: payload[k] for k in ("severity", "kind", "symbol", "timeframe", "message")},
        details=alert.details,
        raised_at=alert.created_at,
    )
    row = store.alerts().row(0, named=True)
    store.dispose()
    assert row["raised_at"].isoformat() == payload["raised_at"]
    assert json.loads(row["details_json"]) == payload["details"]


def test_alert_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="alert severity 'fatal' is not one of"):
        _alert(severity="fatal")
    with pytest.raises(ValueError, match="Alert.created_at must be timezone-aware"):
        _alert(created_at=datetime(2026, 5, 1))
    with pytest.raises(ValueError, match="Alert.kind must be a non-empty string"):
        _alert(kind=" ")
    fresh = Alert("run_failure", "error", "run 42", "step train failed")
    assert fresh.details == {} and fresh.symbol is None
    assert abs(fresh.created_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_delivered_on_the_first_attempt(serve) -> None:
    server, url = serve((200, 0.0))
    sleeps = _Sleeps()
    result = post_webhook(url, _alert(), sleep=sleeps)
    assert (result.ok, result.attempts, result.status, result.error) == (True, 1, 200, None)
    assert sleeps == []
    assert server.received == [("application/json", _alert().to_payload())]


def test_server_errors_and_throttling_are_retried_with_exponential_backoff(serve) -> None:
    server, url = serve((500, 0.0), (503, 0.0), (200, 0.0))
    sleeps = _Sleeps()
    result = post_webhook(url, _alert(), backoff=0.25, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (True, 3, 200)
    assert sleeps == [0.25, 0.5] and len(server.received) == 3

    server, url = serve((429, 0.0), (200, 0.0))
    assert post_webhook(url, _alert(), sleep=_Sleeps()).attempts == 2

    server, url = serve(*[(500, 0.0)] * 4)
    sleeps = _Sleeps()
    result = post_webhook(url, _alert(), retries=3, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 4, 500)
    assert result.error == "HTTP 500 Internal Server Error: ok"
    assert sleeps == [0.5, 1.0, 2.0]


def test_a_client_error_is_final(serve) -> None:
    server, url = serve((400, 0.0))
    sleeps = _Sleeps()
    result = post_webhook(url, _alert(), sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 1, 400)
    assert result.error == "HTTP 400 Bad Request: bad payload"
    assert sleeps == [] and len(server.received) == 1


def test_timeouts_are_retried_then_reported(serve) -> None:
    server, url = serve(*[(200, 2.0)] * 3)
    sleeps = _Sleeps()
    result = post_webhook(url, _alert(), timeout=0.2, retries=2, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 3, None)
    assert result.error.startswith("timeout after 0.2 s")
    assert sleeps == [0.5, 1.0] and len(server.received) == 3


def test_a_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = _Sleeps()
    result = post_webhook(f"http://127.0.0.1:{port}/hook", _alert(), retries=2, sleep=sleeps)
    assert (result.ok, result.attempts, result.status) == (False, 3, None)
    assert result.error.startswith("ConnectionRefusedError")
    assert sleeps == [0.5, 1.0]


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "example.com/hook", "http://", ""])
def test_urls_other_than_http_are_refused_before_any_attempt(url) -> None:
    sleeps = _Sleeps()
    with pytest.raises(WebhookURLError, match="absolute http:// or https:// URL"):
        post_webhook(url, _alert(), sleep=sleeps)
    assert sleeps == []
