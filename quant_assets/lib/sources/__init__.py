"""Market data sources (synthetic, files, PostgreSQL) and `source_from_spec` to pick one by a string."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from quant_assets.lib.errors import InvalidSourceSpecError
from quant_assets.lib.masking import mask_secrets
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
    "source_identity",
    "source_mismatch",
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
    raise InvalidSourceSpecError(
        f"unknown market data source {mask_secrets(spec)!r}; expected {SPEC_FORMS}"
    )


def source_identity(description: str, **options: object) -> str:
    """What identifies the data a model was trained on, safe to record (password masked): the
    source description plus the options that select its data (e.g. `table=`), in a stable order.

    `postgres:postgresql://u:pw@db/x` with table=t -> `postgres:postgresql://u:***@db/x table=t`.
    """
    text = " ".join(description.split())
    extra = " ".join(f"{k}={v}" for k, v in sorted(options.items()) if v not in (None, ""))
    return mask_secrets(f"{text} {extra}".strip())


def source_mismatch(challenger: str | None, champion: str | None) -> str | None:
    """Why a challenger cannot be compared with a champion trained on another data source, or None.

    Both are `source_identity` strings (the `data_source` tag of each version); a champion without
    the tag (registered before it was recorded) is not compared.
    """
    if not champion or not challenger:
        return None
    if mask_secrets(challenger) == mask_secrets(champion):
        return None
    return (
        f"challenger trained on {mask_secrets(challenger)!r} but the champion on "
        f"{mask_secrets(champion)!r}: models from different data sources are not compared; "
        "retrain on one source, or promote by hand with `quant-assets promote`"
    )
