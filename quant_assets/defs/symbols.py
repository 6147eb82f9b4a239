"""The watchlist sensor: keeps the dynamic `symbol` partitions in step with the watchlist file."""

from pathlib import Path

import dagster as dg

from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME, symbol_partitions
from quant_assets.lib.watchlist import read_watchlist


def build_watchlist_sensor(watchlist_path: Path) -> dg.SensorDefinition:
    @dg.sensor(
        name="watchlist_sensor",
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Adds and removes `symbol` partitions to match {watchlist_path}.",
    )
    def watchlist_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        if not watchlist_path.exists():
            return dg.SkipReason(f"no watchlist at {watchlist_path}; partitions left as they are")
        watchlist = read_watchlist(watchlist_path)
        for error in watchlist.errors:
            context.log.error(f"ignored watchlist line: {error}")
        registered = set(context.instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME))
        wanted = set(watchlist.symbols)
        if not wanted and registered:
            return dg.SkipReason(
                f"{watchlist_path} lists no valid symbol; refusing to remove all {len(registered)}"
            )
        to_add = sorted(wanted - registered)
        to_remove = sorted(registered - wanted)
        if not to_add and not to_remove:
            return dg.SkipReason(f"{len(registered)} symbols, in step with {watchlist_path}")
        context.log.info(f"watchlist: adding {to_add}, removing {to_remove}")
        requests = []
        if to_add:
            requests.append(symbol_partitions.build_add_request(to_add))
        if to_remove:
            requests.append(symbol_partitions.build_delete_request(to_remove))
        return dg.SensorResult(dynamic_partitions_requests=requests)

    return watchlist_sensor
