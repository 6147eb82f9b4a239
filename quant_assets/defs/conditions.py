"""Declarative automation conditions of the assets. Data assets (and `champion`, which records
each evaluation's decision) follow their upstream. Which sensor evaluates them is in automation.py."""

import dagster as dg

#: features, labels, datasets, splits and signals: recompute after any upstream partition updates
#: (and fill partitions that appear, e.g. a new symbol), never while an upstream step is running
FOLLOWS_UPSTREAM = dg.AutomationCondition.eager()

#: ohlcv: build the whole history of a partition that appears (a symbol added to the watchlist);
#: fresh bars afterwards come from each timeframe's refresh schedule
BUILDS_NEW_PARTITIONS = dg.AutomationCondition.on_missing()

#: meta_learner and meta_filter: retrained once a day (02:00 UTC, with the nightly retrain) once
#: their inputs have updated since the previous tick
RETRAINS_NIGHTLY = dg.AutomationCondition.on_cron("0 2 * * *")


class InTimeframes(dg.AutomationCondition):
    """True for the partitions of the timeframes the pipeline runs (setting `timeframes`): the
    timeframe dimension lists every supported timeframe, but a deployment uses a few of them."""

    def __init__(self, timeframes: tuple[str, ...]) -> None:
        self.timeframes = tuple(sorted(timeframes))

    @property
    def name(self) -> str:
        return f"in_timeframes({','.join(self.timeframes)})"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        wanted = set(self.timeframes)
        keys = {
            key
            for key in context.candidate_subset.expensively_compute_partition_keys()
            if str(key).rsplit("|", 1)[-1] in wanted
        }
        view = context.asset_graph_view
        partitions_def = view.asset_graph.get(context.key).partitions_def
        return dg.AutomationResult(
            context,
            true_subset=view.get_subset_from_partition_keys(context.key, partitions_def, keys),
        )


def limited_to_timeframes(assets: list, timeframes: tuple[str, ...]) -> list:
    """`assets` with every automation condition also requiring a configured timeframe, and
    waiting only for upstream partitions of configured timeframes (`features` reads every coarser
    timeframe that exists; one the pipeline does not run is never materialized)."""
    only = InTimeframes(timeframes)
    missing_deps = dg.AutomationCondition.any_deps_match(
        dg.AutomationCondition.missing() & only
    ).with_label("any_deps_missing")

    def restrict(spec: dg.AssetSpec) -> dg.AssetSpec:
        condition = spec.automation_condition
        if condition is None or spec.partitions_def is None:
            return spec
        condition = condition.replace("any_deps_missing", missing_deps)
        return spec.replace_attributes(automation_condition=only & condition)

    return dg.map_asset_specs(restrict, assets)
