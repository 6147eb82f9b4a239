"""A test harness standing in for the Dagster daemon: it ticks the real schedules, sensors and
automation conditions at a clock the test moves, and executes what they request as real runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

import dagster as dg

from quant_assets.definitions import build_defs
from quant_assets.defs.ohlcv import ohlcv
from quant_assets.lib.settings import Settings
from quant_assets_tests.defs.inprocess import _only_decisions_failed, execute_plan, plan_runs

DATA_SENSOR = "data_automation"
MODEL_SENSOR = "model_automation"


@dataclass
class Harness:
    settings: Settings
    instance: dg.DagsterInstance
    now: datetime
    asset_config: dict[str, dict] = field(default_factory=dict)
    cursors: dict[str, str | None] = field(default_factory=dict)
    condition_cursors: dict[str, object] = field(default_factory=dict)
    launched: list[dict] = field(default_factory=list)

    @property
    def defs(self) -> dg.Definitions:
        """Definitions as the code server would build them now: data up to the clock."""
        settings = dataclasses.replace(self.settings, synthetic_end=self.now.isoformat())
        return build_defs(settings, clock=lambda: self.now)

    def run_schedule(self, name: str) -> list[dg.RunRequest]:
        defs = self.defs
        schedule = defs.get_schedule_def(name)
        context = dg.build_schedule_context(
            instance=self.instance,
            scheduled_execution_time=self.now,
            repository_def=defs.get_repository_def(),
        )
        with dg.partition_loading_context(dynamic_partitions_store=self.instance):
            result = schedule.evaluate_tick(context)
        requests = list(result.run_requests or [])
        for request in requests:
            self.execute(defs, [ohlcv.key], request.partition_key, request.tags, name)
        return requests

    def tick_sensor(self, name: str) -> dg.SensorResult | list[dg.RunRequest]:
        defs = self.defs
        sensor = defs.get_sensor_def(name)
        # the daemon validates requested partition keys against the instance's dynamic partitions
        with (
            dg.build_sensor_context(
                instance=self.instance,
                cursor=self.cursors.get(name),
                definitions=defs,
                resources=defs.resources,
            ) as context,
            dg.partition_loading_context(dynamic_partitions_store=self.instance),
        ):
            data = sensor.evaluate_tick(context)
        self.cursors[name] = data.cursor
        requests = list(data.run_requests or [])
        for request in requests:
            if request.asset_graph_subset is not None:
                partitions = sorted(
                    {
                        str(p.partition_key)
                        for p in request.asset_graph_subset.iterate_asset_partitions()
                    }
                )
                keys = sorted(request.asset_graph_subset.asset_keys, key=lambda k: k.path)
                for partition in partitions:
                    self.execute(defs, keys, partition, request.tags, name)
            else:
                self.execute(
                    defs, list(request.asset_selection), request.partition_key, request.tags, name
                )
        return requests

    def automate(self, sensor_name: str) -> dict[str, set[str]]:
        """One tick of an AutomationConditionSensorDefinition's conditions; executes the requests."""
        defs = self.defs
        sensor = defs.get_sensor_def(sensor_name)
        result = dg.evaluate_automation_conditions(
            defs=defs,
            instance=self.instance,
            asset_selection=sensor.asset_selection,
            evaluation_time=self.now,
            cursor=self.condition_cursors.get(sensor_name),
        )
        self.condition_cursors[sensor_name] = result.cursor
        requested: dict[str, set[str]] = {}
        for key in sensor.asset_selection.resolve(defs.resolve_asset_graph()):
            partitions = result.get_requested_partitions(key)
            if partitions:
                requested[key.to_user_string()] = {str(p) for p in partitions}
        if requested:
            symbols = sorted({p.split("|")[0] for ps in requested.values() for p in ps if "|" in p})
            timeframes = sorted(
                {p.split("|")[-1] for ps in requested.values() for p in ps if p != "None"}
            )
            plan = plan_runs(
                defs,
                dg.AssetSelection.assets(*requested),
                symbols or list(self.settings.universe),
                timeframes,
            )
            # as the daemon's requests: each run materializes only the assets requested for its
            # partition (co-requested assets of other partitions do not ride along)
            wanted = []
            for run in plan:
                keys = tuple(
                    k
                    for k in run.asset_keys
                    if run.partition_key is None
                    or run.partition_key in requested[k.to_user_string()]
                )
                if keys:
                    wanted.append(dataclasses.replace(run, asset_keys=keys))
            outcomes = execute_plan(
                defs,
                wanted,
                self.instance,
                tags={"dagster/sensor_name": sensor_name},
                asset_config=self.asset_config,
            )
            for outcome in outcomes:
                self.launched.append(
                    {
                        "by": sensor_name,
                        "at": self.now,
                        "assets": [k.to_user_string() for k in outcome.planned.asset_keys],
                        "partition": outcome.planned.partition_key,
                        "status": outcome.status,
                        "error": outcome.error,
                    }
                )
        return requested

    def execute(self, defs, keys, partition, tags, by: str) -> dg.ExecuteInProcessResult:
        names = {k.to_user_string() for k in keys}
        ops = {n: {"config": c} for n, c in self.asset_config.items() if n in names}
        result = dg.materialize(
            assets=list(defs.assets),
            selection=dg.AssetSelection.assets(*keys),
            partition_key=partition,
            instance=self.instance,
            resources=defs.resources,
            tags=dict(tags or {}),
            run_config={"ops": ops},
            raise_on_error=False,
        )
        self.launched.append(
            {
                "by": by,
                "at": self.now,
                "assets": sorted(names),
                "partition": partition,
                # a run stopped by a rejected promotion gate made a decision; it is not an error
                "status": "success"
                if result.success
                else ("decision" if _only_decisions_failed(result) else "failed"),
                "tags": dict(tags or {}),
            }
        )
        return result
