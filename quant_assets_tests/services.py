"""Test access to external services: skip when one is down, unless QUANT_ASSETS_REQUIRE_SERVICES=1."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

REQUIRE_SERVICES_VAR = "QUANT_ASSETS_REQUIRE_SERVICES"
PG_URL_VAR = "QUANT_ASSETS_TEST_PG_URL"
DEFAULT_PG_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def require_service(name: str, error: Exception) -> NoReturn:
    """Skip the test because `name` is unreachable, or fail it when services are required (CI)."""
    message = f"{name} not reachable: {type(error).__name__}: {error}".strip()
    if os.environ.get(REQUIRE_SERVICES_VAR) == "1":
        pytest.fail(f"{message} ({REQUIRE_SERVICES_VAR}=1)")
    pytest.skip(message)


def postgres_admin_url() -> str:
    """URL of a database on the test server whose user may create and drop databases."""
    return os.environ.get(PG_URL_VAR, DEFAULT_PG_ADMIN_URL)


@contextmanager
def temporary_postgres_database(prefix: str = "qa_test") -> Iterator[str]:
    """Create a uniquely named database on the test server, yield its URL, drop it afterwards.

    Skips (or fails, see `require_service`) when the server cannot be reached.
    """
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,30}", prefix):
        raise ValueError(f"database prefix {prefix!r} must be a short lowercase identifier")
    admin_url = make_url(postgres_admin_url())
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    # CREATE/DROP DATABASE cannot run inside a transaction.
    admin = sa.create_engine(
        admin_url,
        isolation_level="AUTOCOMMIT",
        poolclass=sa.pool.NullPool,
        connect_args={"connect_timeout": 5},
    )
    where = f"PostgreSQL at {admin_url.host}:{admin_url.port or 5432} (from {PG_URL_VAR} or its default)"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as error:
        admin.dispose()
        require_service(where, error.orig if isinstance(error.orig, Exception) else error)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
