"""Tests' in-process executor: an asset selection over symbol × timeframe partitions as one
`dg.materialize` per partition, in stage order, on a real instance (Dagster University's way of
testing assets). The product path (the CLI, the UI) is an asset backfill: defs/backfills.py.

A selection is planned as stages: consecutive layers of the asset graph that share a partitions
definition run together, one run per partition (per symbol|timeframe, or per timeframe).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dagster as dg

from quant_assets.defs.automation import innermost_message
from quant_assets.defs.partitions import symbol_timeframe_partitions, timeframe_partitions

# checks that encode a decision (a rejected challenger), not a data problem
DECISION_CHECKS = frozenset({"promotion_gates"})


@dataclass(frozen=True)
class PlannedRun:
    stage: int
    asset_keys: tuple[dg.AssetKey, ...]
    partition_key: str | None  # "SYMBOL|tf", "tf", or None for unpartitioned assets
    symbol: str | None
    timeframe: str | None

    @property
    def label(self) -> str:
        names = ",".join(k.to_user_string() for k in self.asset_keys)
        return f"{names} [{self.partition_key or 'unpartitioned'}]"


@dataclass
class RunOutcome:
    planned: PlannedRun
    status: str  # "success" | "failed" | "skipped"
    seconds: float = 0.0
    run_id: str | None = None
    error: str | None = None
    failed_checks: list[str] = field(default_factory=list)
    warned_checks: list[str] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


def _partition_kind(graph: dg.AssetGraph, key: dg.AssetKey) -> str:  # type: ignore[name-defined]
    pdef = graph.get(key).partitions_def
    if pdef is None:
        return "none"
    if pdef == symbol_timeframe_partitions:
        return "symbol_timeframe"
    if pdef == timeframe_partitions:
        return "timeframe"
    raise ValueError(f"{key.to_user_string()}: unsupported partitions definition {pdef}")


def plan_runs(
    defs: dg.Definitions,
    selection: str | dg.AssetSelection,
    symbols: Sequence[str],
    timeframes: Sequence[str],
) -> list[PlannedRun]:
    """The runs that materialize `selection` for every symbol × timeframe asked for, in order."""
    graph = defs.resolve_asset_graph()
    if isinstance(selection, str):
        selection = dg.AssetSelection.from_string(selection)
    selected = selection.resolve(graph)
    if not selected:
        raise ValueError(f"asset selection {selection} matches no asset")
    stage_of: dict[dg.AssetKey, int] = {}
    for key in graph.toposorted_asset_keys:
        if key not in selected:
            continue
        stage = 0
        node = graph.get(key)
        for parent in node.parent_keys:
            if parent in stage_of:
                # a step reading other partitions of its parent (another timeframe, every symbol)
                # must wait until the parent's whole stage has run
                mapping = node.partition_mappings.get(parent)
                bump = _partition_kind(graph, parent) != _partition_kind(graph, key) or not (
                    mapping is None or isinstance(mapping, dg.IdentityPartitionMapping)
                )
                stage = max(stage, stage_of[parent] + int(bump))
        stage_of[key] = stage
    groups: dict[tuple[int, str], list[dg.AssetKey]] = {}
    for key, stage in stage_of.items():
        groups.setdefault((stage, _partition_kind(graph, key)), []).append(key)
    plan: list[PlannedRun] = []
    for (stage, kind), keys in sorted(groups.items()):
        if kind == "symbol_timeframe":
            targets = [(f"{s}|{t}", s, t) for s in symbols for t in timeframes]
        elif kind == "timeframe":
            targets = [(t, None, t) for t in timeframes]
        else:
            targets = [(None, None, None)]
        plan.extend(PlannedRun(stage, tuple(keys), pk, s, t) for pk, s, t in targets)
    return plan


def _blocked_by(run: PlannedRun, failures: Iterable[PlannedRun]) -> PlannedRun | None:
    """An earlier failed run this run may read: one of the same symbol (any timeframe, since
    features read coarser timeframes), or a cross-sectional run of the same timeframe."""
    for failed in failures:
        if failed.stage >= run.stage:
            continue
        if failed.symbol is not None and run.symbol is not None:
            if failed.symbol == run.symbol:
                return failed
        elif failed.timeframe is None or run.timeframe is None or failed.timeframe == run.timeframe:
            return failed
    return None


def _step_error(result: dg.ExecuteInProcessResult) -> str:
    messages = [
        f"step {event.step_key}: {innermost_message(event.step_failure_data.error)}"
        for event in result.get_step_failure_events()
    ]
    return (
        "\n".join(messages) or "run failed without a step failure (see the run in the Dagster UI)"
    )


def _only_decisions_failed(result: dg.ExecuteInProcessResult) -> bool:
    """True when the run failed only because a decision check (promotion gate) blocked it."""
    failures = result.get_step_failure_events()
    if not failures:
        return False
    failed_checks = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed}
    blocked = all("DagsterAssetCheckFailedError" in _step_error_of(e) for e in failures)
    return (
        blocked and bool(failed_checks) and failed_checks <= DECISION_CHECKS | _warn_checks(result)
    )


def _warn_checks(result: dg.ExecuteInProcessResult) -> set[str]:
    return {
        e.check_name
        for e in result.get_asset_check_evaluations()
        if e.severity == dg.AssetCheckSeverity.WARN
    }


def _step_error_of(event) -> str:
    error = event.step_failure_data.error
    return f"{error.cls_name}: {error.message}" if error else ""


def execute_plan(
    defs: dg.Definitions,
    plan: Sequence[PlannedRun],
    instance: dg.DagsterInstance,
    on_progress: Callable[[int, int, RunOutcome], None] | None = None,
    tags: dict[str, str] | None = None,
    log_level: str = "WARNING",
    asset_config: dict[str, dict] | None = None,
) -> list[RunOutcome]:
    """Run the plan in order; a run whose inputs failed earlier is skipped, the rest go on.

    `asset_config` maps an asset name to its Config values (as in the Launchpad's `ops:` section);
    each run gets the entries of the assets it materializes.
    """
    assets = list(defs.assets or [])
    resources = dict(defs.resources or {})
    outcomes: list[RunOutcome] = []
    failures: list[PlannedRun] = []
    for index, planned in enumerate(plan, start=1):
        blocker = _blocked_by(planned, failures)
        if blocker is not None:
            outcome = RunOutcome(planned, "skipped", error=f"upstream failed: {blocker.label}")
            failures.append(planned)
        else:
            outcome = _run_one(
                assets, resources, planned, instance, tags or {}, log_level, asset_config or {}
            )
            if outcome.status != "success":
                failures.append(planned)
        outcomes.append(outcome)
        if on_progress:
            on_progress(index, len(plan), outcome)
    return outcomes


def _run_one(
    assets, resources, planned: PlannedRun, instance, tags, log_level, asset_config
) -> RunOutcome:
    started = time.perf_counter()
    names = {k.to_user_string() for k in planned.asset_keys}
    ops = {name: {"config": cfg} for name, cfg in asset_config.items() if name in names}
    result = dg.materialize(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}, "ops": ops},
        assets=assets,
        selection=dg.AssetSelection.assets(*planned.asset_keys),
        partition_key=planned.partition_key,
        instance=instance,
        resources=resources,
        raise_on_error=False,
        tags={"quant_assets/launched_by": "cli", **tags},
    )
    outcome = RunOutcome(planned, "success" if result.success else "failed", run_id=result.run_id)
    outcome.seconds = time.perf_counter() - started
    if not result.success and not _only_decisions_failed(result):
        outcome.error = _step_error(result)
    elif not result.success:
        outcome.status = "success"  # a rejected challenger: the gate did its job
    for evaluation in result.get_asset_check_evaluations():
        name = f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}"
        if evaluation.check_name in DECISION_CHECKS:
            outcome.decisions.append(
                f"{evaluation.check_name}: {'pass' if evaluation.passed else 'fail'}"
            )
            continue
        if evaluation.passed:
            continue
        if evaluation.severity == dg.AssetCheckSeverity.ERROR:
            outcome.failed_checks.append(name)
        else:
            outcome.warned_checks.append(name)
    if outcome.failed_checks and outcome.status == "success":
        outcome.status = "failed"
        outcome.error = "blocking checks failed: " + ", ".join(outcome.failed_checks)
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        count = mat.metadata.get("dagster/row_count")
        if count is not None:
            outcome.rows[mat.asset_key.to_user_string()] = int(count.value)
    return outcome
