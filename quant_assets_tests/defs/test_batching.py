"""A batched step's per-partition metadata, through real runs over a partition range."""

import dagster as dg
import pytest

from quant_assets.defs.batching import add_partition_metadata, each_partition, partition_check
from quant_assets.defs.partitions import partition_key, symbol_timeframe_partitions
from quant_assets_tests.defs.conftest import register

SYMBOLS = [f"SYM{i:02d}USDT" for i in range(8)]


@dg.asset(
    partitions_def=symbol_timeframe_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(64),
    io_manager_key="mem",
    check_specs=[partition_check("toy", "toy_ok", "always passes")],
)
@each_partition
def toy(context: dg.AssetExecutionContext):
    yield dg.Output(len(context.partition_key), metadata={"which": context.partition_key})
    yield dg.AssetCheckResult(check_name="toy_ok", passed=True)


def _run(instance: dg.DagsterInstance, asset, first: str, last: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [asset],
        instance=instance,
        resources={"mem": dg.InMemoryIOManager()},
        tags={
            "dagster/asset_partition_range_start": partition_key(first, "1h"),
            "dagster/asset_partition_range_end": partition_key(last, "1h"),
        },
        raise_on_error=False,
    )


def test_each_partition_of_a_batch_gets_its_own_metadata_with_one_lookup_of_the_symbols(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's add_asset_metadata read every symbol from the instance for each partition (O(N²)
    over a backfill); the step's partitions are now looked up a fixed number of times, whatever
    the batch's size."""
    register(instance, *SYMBOLS)
    calls = []
    real = instance.get_dynamic_partitions

    def counted(*args, **kwargs):
        calls.append(args or kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(instance, "get_dynamic_partitions", counted)
    lookups = {}
    for last in (SYMBOLS[1], SYMBOLS[-1]):
        calls.clear()
        result = _run(instance, toy, SYMBOLS[0], last)
        assert result.success
        keys = [partition_key(s, "1h") for s in SYMBOLS[: SYMBOLS.index(last) + 1]]
        materializations = result.asset_materializations_for_node("toy")
        assert sorted(m.partition for m in materializations) == sorted(keys)
        for m in materializations:
            assert m.metadata["which"].value == m.partition
        lookups[len(keys)] = len(calls)
        # each partition's check evaluation points at that partition's new materialization
        stored = {
            r.partition_key: r.storage_id
            for r in instance.fetch_materializations(dg.AssetKey("toy"), limit=100).records
            if r.run_id == result.run_id
        }
        evaluations = result.get_asset_check_evaluations()
        assert sorted(e.partition for e in evaluations) == sorted(keys)
        for e in evaluations:
            assert e.target_materialization_data.storage_id == stored[e.partition]
            assert e.target_materialization_data.run_id == result.run_id
    assert lookups[8] == lookups[2], lookups  # not one more per partition


def test_metadata_for_a_partition_outside_the_step_fails_naming_it(
    instance: dg.DagsterInstance,
) -> None:
    register(instance, *SYMBOLS)

    @dg.asset(
        name="stray",
        partitions_def=symbol_timeframe_partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(64),
        io_manager_key="mem",
    )
    def stray(context: dg.AssetExecutionContext):
        add_partition_metadata(context, {partition_key(SYMBOLS[-1], "1h"): {"n": 1}})
        return dg.Output(dict.fromkeys(context.partition_keys, 0))

    result = _run(instance, stray, SYMBOLS[0], SYMBOLS[1])
    assert not result.success
    message = str(result.get_step_failure_events()[0].event_specific_data.error)
    assert "does not target" in message and f"{SYMBOLS[-1]}|1h" in message
