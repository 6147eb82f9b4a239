"""The watchlist sensor evaluated with real ticks on a real instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
from quant_assets.defs.symbols import build_watchlist_sensor


def _tick(sensor, instance):
    context = dg.build_sensor_context(instance=instance)
    result = sensor(context)
    if isinstance(result, dg.SensorResult):
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(
                    request.partitions_def_name, list(request.partition_keys)
                )
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
    return result


def test_sensor_adds_and_removes_symbols(instance, project_dir: Path) -> None:
    path = project_dir / "wl.txt"
    sensor = build_watchlist_sensor(path)
    assert isinstance(_tick(sensor, instance), dg.SkipReason)  # no file: nothing touched

    path.write_text("btc/usdt\nSPY\nbad|symbol\n")
    result = _tick(sensor, instance)
    assert isinstance(result, dg.SensorResult)
    assert sorted(instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME)) == ["BTCUSDT", "SPY"]

    skip = _tick(sensor, instance)
    assert isinstance(skip, dg.SkipReason) and "in step" in skip.skip_message

    path.write_text("SPY\nAAPL\n")
    _tick(sensor, instance)
    assert sorted(instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME)) == ["AAPL", "SPY"]

    path.write_text("# emptied by mistake\n")
    skip = _tick(sensor, instance)
    assert isinstance(skip, dg.SkipReason) and "refusing to remove all 2" in skip.skip_message
    assert sorted(instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME)) == ["AAPL", "SPY"]
