"""Metadata that reads well, applied centrally to every materialization (see batching.emit): the
column schema, row count and a small table preview of every frame, floats rounded, numbers typed
(so Dagster's Plots tab charts them across materializations), JSON as JSON and URLs as links."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

import dagster as dg
import numpy as np
import polars as pl

#: significant digits of a float shown as metadata (0.6593428999824426 -> 0.6593)
FLOAT_DIGITS = 4
#: rows and columns of the automatic table preview (a frame of 80 feature columns is not a preview)
PREVIEW_ROWS = 5
PREVIEW_COLUMNS = 12


def rounded(value: float, digits: int = FLOAT_DIGITS) -> float:
    """`value` to `digits` significant digits (integers part kept whole above 10**digits)."""
    if not math.isfinite(value) or value == 0:
        return float(value)
    magnitude = math.floor(math.log10(abs(value)))
    return float(round(value, max(digits - 1 - magnitude, 0)))


def column_type(dtype: pl.DataType) -> str:
    """A short type name for Dagster's column schema."""
    if dtype == pl.Datetime or isinstance(dtype, pl.Datetime):
        zone = getattr(dtype, "time_zone", None)
        return f"datetime[{zone}]" if zone else "datetime"
    return str(dtype).lower()


def column_schema(frame: pl.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, column_type(dtype)) for name, dtype in frame.schema.items()]
    )


def _cell(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return rounded(value) if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def table(frame: pl.DataFrame, max_rows: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """`frame`'s first `max_rows` rows as a Dagster table (rounded floats, readable times)."""
    head = frame.head(max_rows)
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({k: _cell(v) for k, v in row.items()})
            for row in head.iter_rows(named=True)
        ],
        schema=column_schema(head),
    )


def _preview(frame: pl.DataFrame) -> dg.MetadataValue:
    """The latest rows of a frame (most frames are time series: the newest rows are the news)."""
    columns = frame.columns[:PREVIEW_COLUMNS]
    nested = [c for c in columns if frame.schema[c].is_nested()]
    return table(frame.select(c for c in columns if c not in nested).tail(PREVIEW_ROWS))


def _typed(value: Any) -> Any:
    """A metadata value typed for the UI: rounded floats, plain ints, JSON text as JSON, links."""
    if isinstance(value, dg.FloatMetadataValue) and value.value is not None:
        return rounded(value.value)
    if isinstance(value, dg.TextMetadataValue):
        value = value.value  # an Output's metadata arrives normalized: read its text again
    elif isinstance(value, dg.MetadataValue):
        return value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return rounded(float(value))
    if isinstance(value, Mapping | list) and value:
        try:
            return dg.MetadataValue.json(json.loads(json.dumps(value, default=str)))
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("{", "[") and text[-1:] in ("}", "]"):
            try:
                return dg.MetadataValue.json(json.loads(text))
            except ValueError:
                return value
        if text.startswith(("http://", "https://")) and " " not in text:
            return dg.MetadataValue.url(text)
    return value


def readable_metadata(value: Any, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """`metadata` typed for the UI, plus (for a polars frame `value`) `dagster/column_schema`,
    `dagster/row_count` and a table `preview` unless the asset set them itself."""
    out = {key: _typed(item) for key, item in metadata.items()}
    if isinstance(value, pl.DataFrame) and value.width:
        out.setdefault("dagster/column_schema", dg.MetadataValue.table_schema(column_schema(value)))
        out.setdefault("dagster/row_count", value.height)
        if value.height and "preview" not in out:
            out["preview"] = _preview(value)
    return out


def with_code_references(assets: list) -> list:
    """`assets` with a link to the source of each asset's function in the UI. Like Dagster's
    `with_source_code_references`, but through decorators (`each_partition` wraps most asset
    bodies, and the reference must name the asset's module, not the wrapper's)."""
    import inspect
    import os

    def reference(assets_def: dg.AssetsDefinition) -> dg.AssetsDefinition:
        compute = assets_def.op.compute_fn
        fn = inspect.unwrap(getattr(compute, "decorated_fn", compute))
        link = dg.LocalFileCodeReference(
            file_path=os.path.abspath(inspect.getsourcefile(fn) or ""),
            line_number=inspect.getsourcelines(fn)[1],
        )
        return assets_def.map_asset_specs(
            lambda spec: spec.replace_attributes(
                metadata={
                    **spec.metadata,
                    "dagster/code_references": dg.CodeReferencesMetadataValue(
                        code_references=[link]
                    ),
                }
            )
        )

    return [reference(a) if isinstance(a, dg.AssetsDefinition) else a for a in assets]
