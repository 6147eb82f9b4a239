"""A partition-aware IO manager: one Parquet file per asset partition under the artifacts root."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl

from quant_assets.lib.storage import read_parquet, safe_artifact_path, write_parquet_atomic
from quant_assets.lib.symbols import validate_partition_key


def partition_path(root: str | Path, asset_key: dg.AssetKey, partition_key: str | None) -> Path:
    """`<root>/<asset>/<symbol>/<timeframe>.parquet` for symbol|timeframe partitions,
    `<root>/<asset>/<key>.parquet` for single-dimension ones, `<root>/<asset>.parquet` otherwise.

    The key is validated (a key added from the UI or GraphQL never passed the CLI) and the path is
    resolved and checked to stay under `root`: InvalidPartitionKeyError otherwise."""
    if partition_key is None:
        *parents, name = asset_key.path
        return safe_artifact_path(root, *parents, f"{name}.parquet")
    symbol, timeframe = validate_partition_key(partition_key)
    if timeframe is not None:
        return safe_artifact_path(root, *asset_key.path, symbol, f"{timeframe}.parquet")
    return safe_artifact_path(root, *asset_key.path, f"{symbol}.parquet")


class ParquetIOManager(dg.ConfigurableIOManager):
    """Stores polars frames as Parquet, atomically; loads one partition as a frame, several as a dict.
    A step over several partitions (a batched backfill run) returns a dict partition key -> frame."""

    root: str

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | None) -> None:
        if obj is None:  # an asset that skipped its partition (e.g. too little data) stores nothing
            return
        if isinstance(obj, dict):  # a step over several partitions (a batched backfill run)
            self._write_batch(context, obj)
            return
        if not isinstance(obj, pl.DataFrame):
            raise TypeError(
                f"{context.asset_key.to_user_string()}: ParquetIOManager stores polars DataFrames, "
                f"got {type(obj).__name__}"
            )
        key = context.partition_key if context.has_partition_key else None
        path = write_parquet_atomic(obj, partition_path(self.root, context.asset_key, key))
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def _write_batch(self, context: dg.OutputContext, frames: dict) -> None:
        expected = {str(k) for k in context.asset_partition_keys}
        unknown = sorted(set(frames) - expected)
        if unknown:
            raise ValueError(
                f"{context.asset_key.to_user_string()}: the step returned partitions {unknown} "
                f"outside the ones it covers ({sorted(expected)})"
            )
        for key, frame in frames.items():
            if frame is not None:
                write_parquet_atomic(frame, partition_path(self.root, context.asset_key, key))

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | dict[str, pl.DataFrame]:
        asset_key = context.asset_key
        if not context.has_asset_partitions:
            return self._read(partition_path(self.root, asset_key, None), asset_key, None)
        keys = list(context.asset_partition_keys)
        if len(keys) == 1 and not self._wants_mapping(context):
            return self._read(partition_path(self.root, asset_key, keys[0]), asset_key, keys[0])
        frames: dict[str, pl.DataFrame] = {}
        for key in keys:
            path = partition_path(self.root, asset_key, key)
            if path.exists():  # partitions that were skipped upstream are simply absent
                frames[key] = read_parquet(path)
        return frames

    @staticmethod
    def _wants_mapping(context: dg.InputContext) -> bool:
        annotation = getattr(context.dagster_type, "typing_type", None)
        return annotation is not None and getattr(annotation, "__origin__", annotation) is dict

    @staticmethod
    def _read(path: Path, asset_key: dg.AssetKey, key: str | None) -> pl.DataFrame:
        if not path.exists():
            where = f" partition {key}" if key else ""
            raise FileNotFoundError(
                f"{asset_key.to_user_string()}{where} has not been materialized (no file at {path})"
            )
        return read_parquet(path)
