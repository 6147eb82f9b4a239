"""Metadata that reads well: every frame asset's materialization carries its column schema, row
count and a table preview; floats are rounded, JSON is JSON, links are links; every asset has a
description and a code reference to its own module."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import polars as pl

from quant_assets.defs.metadata import readable_metadata, rounded
from quant_assets.defs.ohlcv import ohlcv
from quant_assets.defs.partitions import partition_key
from quant_assets.defs.resources import resources_from_settings
from quant_assets_tests.defs.conftest import register


def test_values_are_typed_for_the_ui() -> None:
    frame = pl.DataFrame({"timestamp": [1, 2], "prob_up": [0.6593428999824426, 0.1]})
    out = readable_metadata(
        frame,
        {
            "ece": 0.6593428999824426,
            "latest_signal": json.dumps({"side": "1", "prob_up": "0.61"}),
            "mlflow_run": "http://mlflow.example:5000/#/experiments/1/runs/abc",
            "reason": "plain text {stays}",
            "n": 3,
            "dsr": dg.MetadataValue.float(0.123456789),
            "normalized": dg.MetadataValue.text('{"a": 1}'),
        },
    )
    assert out["dsr"] == 0.1235
    assert out["normalized"].data == {"a": 1}
    assert out["ece"] == 0.6593
    assert isinstance(out["latest_signal"], dg.JsonMetadataValue)
    assert out["latest_signal"].data == {"side": "1", "prob_up": "0.61"}
    assert isinstance(out["mlflow_run"], dg.UrlMetadataValue)
    assert out["reason"] == "plain text {stays}"
    assert out["dagster/row_count"] == 2
    schema = out["dagster/column_schema"].schema
    assert [(c.name, c.type) for c in schema.columns] == [
        ("timestamp", "int64"),
        ("prob_up", "float64"),
    ]
    preview = out["preview"]
    assert isinstance(preview, dg.TableMetadataValue)
    assert preview.records[0].data == {"timestamp": 1, "prob_up": 0.6593}
    assert rounded(12345.678) == 12346.0 and rounded(-0.000123456) == -0.0001235


def test_a_materialization_carries_schema_row_count_and_preview(
    instance, settings, project_dir: Path
) -> None:
    register(instance, "BTCUSDT")
    result = dg.materialize(
        [ohlcv],
        partition_key=partition_key("BTCUSDT", "1d"),
        instance=instance,
        resources=resources_from_settings(settings),
    )
    metadata = result.asset_materializations_for_node("ohlcv")[0].metadata
    columns = [c.name for c in metadata["dagster/column_schema"].schema.columns]
    assert columns[:6] == ["timestamp", "open", "high", "low", "close", "volume"]
    assert metadata["dagster/row_count"].value > 100
    # stored in the event log as typed values (the UI reads these)
    stored = instance.get_latest_materialization_event(dg.AssetKey("ohlcv")).asset_materialization
    assert isinstance(stored.metadata["dagster/column_schema"], dg.TableSchemaMetadataValue)


def test_every_asset_has_a_description_and_a_link_to_its_module(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    modules = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and len(node.description) > 40, key
        (reference,) = node.metadata["dagster/code_references"].code_references
        assert Path(reference.file_path).is_file() and reference.line_number > 0
        modules[key.to_user_string()] = Path(reference.file_path).name
    # decorated asset bodies link to their own module, not to the decorator's
    assert modules["champion"] == "signals.py" and modules["regime"] == "meta.py"
    assert "batching.py" not in modules.values()
