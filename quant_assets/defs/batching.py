"""One step, many partitions: how an asset step that covers a batch of partitions (a backfill run
under `BackfillPolicy.multi_run`) reports each partition as if it had run alone.

An asset computes a `PartitionOutput` per partition; `emit` turns them into Dagster events: the
stored frames (a dict key -> frame for the IO manager), each partition's own metadata, and each
partition's own check evaluations. A single-partition run gets exactly what an unbatched asset
would yield (an Output and AssetCheckResults).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from quant_assets.defs.metadata import readable_metadata, table

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN


@dataclass
class PartitionOutput:
    """What one partition of an asset step produced. `value` None stores nothing (skipped)."""

    value: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    checks: list[dg.AssetCheckResult] = field(default_factory=list)
    """One result per check spec of the asset, each with its `check_name`."""
    data_version: str | None = None


#: metadata keys shown per partition in a batch's summary table
SUMMARY_KEYS = ("dagster/row_count", "status", "decision", "version", "reason")


def emit(
    context: dg.AssetExecutionContext, outputs: Mapping[str, PartitionOutput]
) -> Iterator[dg.Output | dg.AssetCheckResult | dg.AssetCheckEvaluation]:
    """The events of a step over `outputs` (partition key -> output)."""
    if len(outputs) == 1 and context.has_partition_key:
        only = next(iter(outputs.values()))
        yield dg.Output(
            only.value,
            metadata=readable_metadata(only.value, only.metadata),
            data_version=dg.DataVersion(only.data_version) if only.data_version else None,
        )
        yield from only.checks
        return
    per_partition = {}
    for key, out in outputs.items():
        metadata = dict(out.metadata)
        if out.data_version:
            metadata["data_version"] = out.data_version
        per_partition[key] = readable_metadata(out.value, metadata)
    add_partition_metadata(context, per_partition)
    yield dg.Output(
        {key: out.value for key, out in outputs.items()},
        metadata={"partitions": len(outputs), "batch": batch_table(outputs)},
    )
    yield from _check_evaluations(context, outputs)


def add_partition_metadata(
    context: dg.AssetExecutionContext, metadata: Mapping[str, Mapping[str, Any]]
) -> None:
    """`context.add_asset_metadata(m, partition_key=key)` for every partition of the step, with
    the step's partitions looked up once. Dagster's call checks that the key is one of the step's
    by listing the partitions of the step's range, and on our dynamic symbol dimension that reads
    every symbol from the instance: one query per call, 10 ms at 500 symbols, so O(symbols) per
    partition and O(symbols²) per backfill (about 0.16 CPU-s per partition at 500 x 3 over the 16
    batched assets). The same check here, against the step's keys read once; then the same
    accumulator Dagster's call feeds (a private attribute: when it is missing, as in another
    Dagster version, every key goes through Dagster's own call)."""
    step = getattr(context.op_execution_context, "_step_execution_context", None)
    accumulator = getattr(step, "_metadata_accumulator", None)
    if not hasattr(accumulator, "with_additional_asset_metadata"):
        for key, partition_metadata in metadata.items():
            context.add_asset_metadata(partition_metadata, partition_key=key)
        return
    targeted = set(context.partition_keys)
    outside = [key for key in metadata if key not in targeted]
    if outside:
        raise dg.DagsterInvariantViolationError(
            f"{context.asset_key.to_user_string()}: metadata for partitions the step does not "
            f"target: {outside}"
        )
    for key, partition_metadata in metadata.items():
        accumulator = accumulator.with_additional_asset_metadata(
            asset_key=context.asset_key, partition_key=key, metadata=partition_metadata
        )
    step._metadata_accumulator = accumulator


def batch_table(outputs: Mapping[str, PartitionOutput]) -> dg.MetadataValue:
    rows = [
        {
            "partition": key,
            **{k: str(_plain(out.metadata[k])) for k in SUMMARY_KEYS if k in out.metadata},
        }
        for key, out in outputs.items()
    ]
    import polars as pl

    return table(pl.DataFrame(rows), max_rows=len(rows))


def _plain(value: Any) -> Any:
    """A metadata value's content (an Output's metadata arrives as MetadataValue objects)."""
    return value.value if isinstance(value, dg.MetadataValue) else value


def _check_evaluations(
    context: dg.AssetExecutionContext, outputs: Mapping[str, PartitionOutput]
) -> Iterator[dg.Output | dg.AssetCheckEvaluation]:
    """Per-partition check evaluations. An AssetCheckResult in a step over several partitions would
    be recorded for no partition; Dagster turns one into exactly an output of the check's step
    output and an evaluation event, so the step emits them per partition. A failed blocking check
    then fails the step (naming the partitions), which keeps downstream steps from reading them."""
    asset_key = context.asset_key
    specs = {spec.name: spec for spec in context.assets_def.check_specs}
    names = dict.fromkeys(check.check_name for out in outputs.values() for check in out.checks)
    blocked: list[str] = []
    targets = _latest_materializations(context, list(outputs)) if names else {}
    for name in names:
        spec = specs[name]
        yield dg.Output(None, output_name=f"{asset_key.to_python_identifier()}_{name}")
        for key, out in outputs.items():
            for check in (c for c in out.checks if c.check_name == name):
                yield dg.AssetCheckEvaluation(
                    asset_key=asset_key,
                    check_name=name,
                    passed=check.passed,
                    metadata=dict(check.metadata),
                    severity=check.severity,
                    description=check.description,
                    blocking=spec.blocking,
                    partition=key,
                    target_materialization_data=targets[key],
                )
                if spec.blocking and not check.passed and check.severity == ERROR:
                    blocked.append(f"{name} [{key}]")
    if blocked:
        raise dg.Failure(
            f"{asset_key.to_user_string()}: blocking checks failed: {', '.join(blocked)}"
        )


def _latest_materializations(context: dg.AssetExecutionContext, keys: list[str]) -> dict[str, Any]:
    """What an AssetCheckResult records as the materialization it checked (the one just made), per
    partition key: the step's newest materializations in one query (each partition of the step
    has just been materialized once, so they are the newest len(keys)); a key without one there
    is looked up alone (None when it has none)."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    def fetch(partitions: list[str]) -> list[Any]:
        return context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=partitions),
            limit=len(partitions),
        ).records

    latest: dict[str, Any] = {}
    for record in fetch(keys):
        latest.setdefault(record.partition_key, record)
    for key in keys:
        if key not in latest:
            latest[key] = next(iter(fetch([key])), None)
    return {
        key: None
        if record is None
        else AssetCheckEvaluationTargetMaterializationData(
            storage_id=record.storage_id,
            run_id=record.event_log_entry.run_id,
            timestamp=record.timestamp,
        )
        for key, record in latest.items()
    }


def inputs_of(value: Any, key: str) -> Any:
    """One partition's input from what the IO manager loaded for a step: a dict key -> frame when
    the step covers several partitions (or mapped several upstream ones), else the frame itself."""
    if isinstance(value, dict):
        if key not in value:
            raise FileNotFoundError(f"upstream partition {key} has not been materialized")
        return value[key]
    return value


def partition_check(asset: str, name: str, description: str, blocking: bool = False):
    """A check spec evaluated per symbol × timeframe partition (so batched steps can report each)."""
    from quant_assets.defs.partitions import symbol_timeframe_partitions

    return dg.AssetCheckSpec(
        name,
        asset=asset,
        blocking=blocking,
        partitions_def=symbol_timeframe_partitions,
        description=description,
    )


class PartitionContext:
    """The step's context seen from one partition of its batch: `partition_key` is that partition,
    everything else (run, log, instance, asset key) is the step's."""

    def __init__(self, context: dg.AssetExecutionContext, key: str) -> None:
        self._context = context
        self.partition_key = key
        self.has_partition_key = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def each_partition(body):
    """Run a single-partition asset body once per partition of the step, and emit the results.

    `body(context, **inputs)` is written as for one partition (it reads `context.partition_key`,
    returns or yields an Output and AssetCheckResults); inputs that the IO manager loaded for the
    whole batch are handed to it as that partition's frame (or, for a dict-annotated input that
    maps several upstream partitions, unchanged)."""
    import functools
    import inspect

    import polars as pl

    signature = inspect.signature(body)
    mapped = {
        name
        for name, param in signature.parameters.items()
        if getattr(param.annotation, "__origin__", param.annotation) is dict
    }

    @functools.wraps(body)
    def wrapper(context: dg.AssetExecutionContext, **kwargs: Any):
        outputs = {}
        for key in context.partition_keys:
            inputs = {
                name: value if name in mapped else _slice(value, key)
                for name, value in kwargs.items()
            }
            result = body(PartitionContext(context, key), **inputs)
            events = list(result) if inspect.isgenerator(result) else [result]
            output = next(e for e in events if isinstance(e, dg.Output))
            outputs[key] = PartitionOutput(
                output.value,
                metadata=dict(output.metadata),
                checks=[e for e in events if isinstance(e, dg.AssetCheckResult)],
                data_version=output.data_version.value if output.data_version else None,
            )
        yield from emit(context, outputs)

    # Dagster reads the inputs from this signature: a frame input arrives as a dict key -> frame
    # (one entry per partition of the batch), and the step's output is the batch's dict
    wrapper.__signature__ = signature.replace(
        parameters=[
            p.replace(annotation=dict[str, pl.DataFrame]) if p.annotation is pl.DataFrame else p
            for p in signature.parameters.values()
        ],
        return_annotation=inspect.Signature.empty,
    )
    return wrapper


def _slice(value: Any, key: str) -> Any:
    """One partition's value of a batch input: by its key, or by its timeframe for an input
    partitioned by timeframe only; resources and Config pass through."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return value
    if key in value:
        return value[key]
    timeframe = key.rsplit("|", 1)[-1]
    if timeframe in value:
        return value[timeframe]
    raise FileNotFoundError(f"upstream partition {key} has not been materialized")
