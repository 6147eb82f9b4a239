"""Market data sources (synthetic, files, PostgreSQL) and `source_from_spec` to pick one by a string."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from quant_assets.lib.errors import InvalidSourceSpecError
from quant_assets.lib.sources.base import Bars, MarketDataSource

if TYPE_CHECKING:
    from quant_assets.lib.sources.files import FileSource
    from quant_assets.lib.sources.postgres import PostgresSource
    from quant_assets.lib.sources.synthetic import SyntheticSource

__all__ = [
    "Bars",
    "FileSource",
    "MarketDataSource",
    "PostgresSource",
    "SyntheticSource",
    "source_from_spec",
]

# Imported on first use: the sources import validation, which imports `base` from this package, so
# eager imports here would be circular (and every user of `base` would pay for SQLAlchemy).
_LAZY = {
    "SyntheticSource": "quant_assets.lib.sources.synthetic",
    "FileSource": "quant_assets.lib.sources.files",
    "PostgresSource": "quant_assets.lib.sources.postgres",
}

SPEC_FORMS = "'synthetic', 'files:<directory>' or 'postgres:<database url>'"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def source_from_spec(spec: str, **options: Any) -> MarketDataSource:
    """The source a spec string names: `synthetic`, `files:<dir>` or `postgres:<url>`.

    `options` go to the source's constructor (e.g. `seed=3` for synthetic, `table=` for postgres).
    """
    kind, _, argument = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic" and not argument:
        return __getattr__("SyntheticSource")(**options)
    if kind == "files" and argument.strip():
        return __getattr__("FileSource")(argument.strip(), **options)
    if kind == "postgres" and argument.strip():
        return __getattr__("PostgresSource")(argument.strip(), **options)
    raise InvalidSourceSpecError(f"unknown market data source {spec!r}; expected {SPEC_FORMS}")
