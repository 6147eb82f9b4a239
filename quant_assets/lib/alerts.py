"""Operational alerts (failed runs, degraded models, ensemble fallbacks): one record shaped like the
trading store's alerts table, and its delivery to a webhook with retries that never raise."""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from quant_assets.lib.errors import QuantAssetsError

#: severities of an alert (the alerts table's check constraint lists the same)
ALERT_SEVERITIES = ("info", "warning", "error", "critical")
#: HTTP statuses worth another attempt: the receiver is overloaded or briefly broken.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_USER_AGENT = "quant-assets-alerts/1"


class WebhookURLError(QuantAssetsError, ValueError):
    """A webhook URL is not an absolute http(s) URL."""


def _json_safe(value: Any) -> Any:
    """`value` as plain JSON types: NaN/inf become None (strict JSON has no such numbers), numpy
    scalars their Python value, datetimes ISO text, anything else its str()."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        return [_json_safe(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class Alert:
    """One alert. kind says what happened ("run_failure", "degradation", "ensemble_fallback", ...),
    subject what it is about (a partition key, asset key or run id); symbol and timeframe, when it
    concerns one partition, fill the alerts table's columns of the same names. details is stored
    JSON-safe (see `_json_safe`); created_at (the table's raised_at) defaults to now, kept in UTC."""

    kind: str
    severity: str
    subject: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)
    symbol: str | None = None
    timeframe: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.severity not in ALERT_SEVERITIES:
            raise ValueError(f"alert severity {self.severity!r} is not one of {ALERT_SEVERITIES}")
        for name in ("kind", "subject", "message"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Alert.{name} must be a non-empty string, got {value!r}")
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError(f"Alert.created_at must be timezone-aware, got {self.created_at!r}")
        object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))
        object.__setattr__(self, "details", _json_safe(dict(self.details)))

    def to_payload(self) -> dict[str, Any]:
        """The webhook body: the alerts table's columns (raised_at = created_at in ISO 8601 UTC,
        details as an object rather than details_json) plus subject."""
        return {
            "raised_at": self.created_at.isoformat(),
            "severity": self.severity,
            "kind": self.kind,
            "subject": self.subject,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "message": self.message,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class WebhookResult:
    """How a delivery went: ok on a 2xx answer, the attempts made, the last HTTP status (None when
    no answer came) and the last error in words (None when ok)."""

    ok: bool
    attempts: int
    status: int | None
    error: str | None


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        # .port raises ValueError on a port that is not a number in 0-65535
        valid = (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and (parts.port is None or parts.port > 0)
        )
    except (TypeError, ValueError, AttributeError):
        valid = False
    if not valid:
        raise WebhookURLError(
            f"webhook URL must be an absolute http:// or https:// URL with a host, got {url!r}"
        )


def _error_text(exc: urllib.error.HTTPError) -> str:
    """The failure as HTTP <code> <reason>, then the start of the answer's body if readable."""
    try:
        body = exc.read(200).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        body = ""
    return f"HTTP {exc.code} {exc.reason}" + (f": {body}" if body else "")


def _attempt(request: urllib.request.Request, timeout: float) -> tuple[int | None, str | None]:
    """(HTTP status or None, error text or None) of one POST."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, _error_text(exc)
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            return None, f"timeout after {timeout:g} s ({reason or 'no answer'})"
        return None, f"{type(reason).__name__}: {reason}"


def post_webhook(
    url: str,
    alert: Alert,
    *,
    timeout: float = 5.0,
    retries: int = 3,
    backoff: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> WebhookResult:
    """POST `alert.to_payload()` as JSON to `url`; never raises on delivery failure.

    A connection error, a timeout (`timeout` seconds per attempt) or an answer in RETRY_STATUSES is
    tried again, up to `retries` more times, after sleeping backoff, 2 x backoff, 4 x backoff, ...
    Any other non-2xx answer is final. Raises WebhookURLError, before any attempt, when `url` is not
    an absolute http(s) URL.
    """
    _check_url(url)
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ValueError(
            f"post_webhook needs retries >= 0, timeout > 0 and backoff >= 0, got {retries}, "
            f"{timeout} and {backoff}"
        )
    body = json.dumps(alert.to_payload(), allow_nan=False, sort_keys=True).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": _USER_AGENT},
    )
    attempt = 0
    while True:
        attempt += 1
        status, error = _attempt(request, timeout)
        if status is not None and 200 <= status < 300:
            return WebhookResult(True, attempt, status, None)
        retryable = status is None or status in RETRY_STATUSES
        if not retryable or attempt > retries:
            return WebhookResult(False, attempt, status, error)
        sleep(backoff * 2 ** (attempt - 1))
