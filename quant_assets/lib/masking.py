"""Masking of secrets (passwords in URLs and connection strings, webhook tokens) before any text
reaches a sink: CLI output, logs, Dagster metadata, MLflow tags and params, model cards."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"

# scheme://user:password@host -> scheme://user:***@host (the password may hold anything but "@",
# "/" and whitespace once percent-encoded, as URLs require)
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^@\s/]+)@"
)
# user:password@host without a scheme (a malformed URL echoed in an error message)
_BARE_USERINFO = re.compile(
    r"(?P<head>(?:^|(?<=[\s'\"(=]))[A-Za-z0-9_.\-]+):(?P<secret>[^@\s/:]+)@(?=[A-Za-z0-9\[])"
)
# password=..., pwd=..., token=..., api_key=... in query strings and libpq key/value strings
_KEY_VALUE = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key)\s*[=:]\s*)"
    r"(?P<secret>'[^']*'|\"[^\"]*\"|[^\s&;,'\"]+)",
    re.IGNORECASE,
)


def mask_secrets(text: object) -> str:
    """`text` with URL passwords and `password=`-style values replaced by `***`:
    `postgres:postgresql://postgres:S3cret@db:5432/x` -> `postgres:postgresql://postgres:***@db:5432/x`.
    """
    masked = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", str(text))
    masked = _BARE_USERINFO.sub(rf"\g<head>:{MASK}@", masked)
    return _KEY_VALUE.sub(rf"\g<head>{MASK}", masked)


def mask_url_path(url: str) -> str:
    """A URL whose path and query may carry a token (a webhook) reduced to scheme and host:
    `https://hooks.example.com/services/T0/B0/XyZ` -> `https://hooks.example.com/***`."""
    if not url:
        return url
    parts = urlsplit(mask_secrets(url))
    if not parts.scheme or not parts.netloc:
        return MASK
    tail = f"/{MASK}" if (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{parts.netloc}{tail}"
