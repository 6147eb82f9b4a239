"""How the execution daemon keeps a stage in one set of runs (`defs/daemon.py`,
`split_by_runs_in_flight` and `holding_iteration`): an iteration that would request a stage while a run
of an earlier stage still makes a parent of one of its assets waits for that run, since Dagster
would otherwise run that asset, and everything after it, apart from the stage (the demo's 20-run
outcome). Checked on the project's own asset graph and, through Dagster's own iteration, on a real
backfill of a small graph of the same shape."""

from __future__ import annotations

import logging
import time
import uuid

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset
from dagster._core.definitions.events import AssetKeyPartitionKey
from dagster._core.definitions.partitions.context import partition_loading_context
from dagster._core.execution.backfill import PartitionBackfill
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

from quant_assets.defs.daemon import holding_iteration, split_by_runs_in_flight
from quant_assets.defs.partitions import CONFIGURED_TIMEFRAMES, SYMBOL_PARTITIONS_NAME

SYMBOLS = ("BTCUSDT", "ETHUSDT")
RESEARCH = ("ohlcv", "volatility_model", "features", "regime", "labels", "primary_signals")
META = ("meta_learner", "meta_filter")
TRAINING = (
    "training_dataset",
    "walk_forward_splits",
    "hyperparameter_sweep",
    "challenger_model",
    "champion_challenger_evaluation",
    "champion",
)


def _subset(graph, assets, timeframes) -> AssetGraphSubset:
    """Every symbol's partitions of `assets` in `timeframes` (the timeframes themselves for the
    timeframe-partitioned assets)."""
    partitions = set()
    for name in assets:
        key = dg.AssetKey(name)
        keyed = isinstance(graph.get(key).partitions_def, dg.MultiPartitionsDefinition)
        for timeframe in timeframes:
            for symbol in SYMBOLS if keyed else (None,):
                partition = (
                    dg.MultiPartitionKey({"symbol": symbol, "timeframe": timeframe})
                    if keyed
                    else timeframe
                )
                partitions.add(AssetKeyPartitionKey(key, partition))
    return AssetGraphSubset.from_asset_partition_set(partitions, graph)


def test_a_stage_requested_while_a_parent_is_in_flight_is_found_on_the_project_graph() -> None:
    from quant_assets.definitions import defs

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, list(SYMBOLS))
    view = AssetGraphView.for_test(defs, instance)
    graph = view.asset_graph
    every, late = CONFIGURED_TIMEFRAMES, CONFIGURED_TIMEFRAMES[1:2]
    early = tuple(t for t in every if t not in late)
    with partition_loading_context(dynamic_partitions_store=instance):
        settled = _subset(graph, RESEARCH + META + ("cross_sectional_ranks",), every)
        # one timeframe's meta layer still runs while the training stage is requested for all:
        # the ensemble (and the signals after it) would run apart, a run per timeframe
        going = _subset(graph, META, late)
        found = split_by_runs_in_flight(view, _subset(graph, TRAINING, every), going, settled)
        assert found == ["ensemble_signals with champion: waits for meta_learner"], found
        # the stage requested only for the timeframes whose meta layer is done: nothing is split
        # by the run in flight (what Dagster does with the rest is not for waiting to mend)
        assert split_by_runs_in_flight(view, _subset(graph, TRAINING, early), going, settled) == []
        # the cross-sectional ranks never run with their children (other partitions): no wait
        ranks = _subset(graph, ("cross_sectional_ranks",), every)
        assert split_by_runs_in_flight(view, ranks, going, settled - ranks) == []
        # nothing in flight: nothing to wait for
        empty = AssetGraphSubset.create_empty_subset()
        assert split_by_runs_in_flight(view, _subset(graph, TRAINING, every), empty, settled) == []


# a small graph of the same shape: a research stage (one run per partition), a meta layer in the
# same runs, a cross-sectional asset on every partition, a training stage after it and an
# ensemble that reads both the champion and the meta layer
_PARTS = dg.StaticPartitionsDefinition(["x", "y"])
_EACH = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)


@dg.asset(partitions_def=_PARTS, backfill_policy=_EACH)
def research() -> None:
    return None


@dg.asset(partitions_def=_PARTS, backfill_policy=_EACH, deps=[research])
def meta_layer() -> None:
    return None


@dg.asset(deps=[research])
def ranks() -> None:
    return None


@dg.asset(partitions_def=_PARTS, backfill_policy=_EACH, deps=[research, ranks])
def trained() -> None:
    return None


@dg.asset(partitions_def=_PARTS, backfill_policy=_EACH, deps=[trained])
def champ() -> None:
    return None


@dg.asset(partitions_def=_PARTS, backfill_policy=_EACH, deps=[champ, meta_layer])
def ensemble() -> None:
    return None


_ASSETS = [research, meta_layer, ranks, trained, champ, ensemble]
defs = dg.Definitions(assets=_ASSETS)


@dg.op
def _step() -> None:
    return None


@dg.job
def _in_flight() -> None:
    _step()


def _iterate(context, instance, backfill_id: str, *, hold: bool, log: logging.Logger):
    """One backfill iteration as the execution daemon computes it (Dagster's own computation of
    the runs to request, wrapped by `holding_iteration`), without submitting anything."""
    from dagster._core.asset_graph_view.asset_graph_view import TemporalContext
    from dagster._core.execution.asset_backfill import execute_asset_backfill_iteration_inner
    from dagster._time import datetime_from_timestamp

    graph = context.create_request_context().asset_graph
    backfill = instance.get_backfill(backfill_id)
    view = AssetGraphView(
        temporal_context=TemporalContext(
            effective_dt=datetime_from_timestamp(backfill.backfill_timestamp), last_event_id=None
        ),
        instance=instance,
        asset_graph=graph,
    )
    iteration = holding_iteration(execute_asset_backfill_iteration_inner, lambda: hold)
    return iteration(
        backfill_id=backfill_id,
        asset_backfill_data=backfill.get_asset_backfill_data(graph),
        asset_graph_view=view,
        backfill_start_timestamp=backfill.backfill_timestamp,
        logger=log,
        run_config=None,
    )


def _runs_of(result) -> list[set[str]]:
    return sorted(
        (
            {key.to_user_string() for key in request.asset_selection}
            for request in result.run_requests
        ),
        key=sorted,
    )


def test_an_iteration_that_would_split_a_stage_is_held_until_the_run_in_flight_has_finished(
    tmp_path, caplog
) -> None:
    graph = defs.resolve_asset_graph()
    backfill_id = uuid.uuid4().hex[:8]
    tags = {BACKFILL_ID_TAG: backfill_id}

    def partitions(*pairs) -> AssetGraphSubset:
        return AssetGraphSubset.from_asset_partition_set(
            {AssetKeyPartitionKey(dg.AssetKey(name), key) for name, key in pairs}, graph
        )

    # requested so far: the research stage with its meta layer (x and y), then the ranks; stored
    # by runs of the backfill: all of it but y's meta layer, whose run still goes
    requested = partitions(
        ("research", "x"),
        ("research", "y"),
        ("meta_layer", "x"),
        ("meta_layer", "y"),
        ("ranks", None),
    )
    log = logging.getLogger("quant_assets_tests.backfill_grouping")
    caplog.set_level(logging.INFO, logger=log.name)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        dg.materialize([research, meta_layer], partition_key="x", instance=instance, tags=tags)
        dg.materialize([research], partition_key="y", instance=instance, tags=tags)
        dg.materialize([ranks], instance=instance, tags=tags)
        going = instance.create_run_for_job(
            _in_flight, status=dg.DagsterRunStatus.STARTED, tags=tags
        )
        backfill = PartitionBackfill.from_asset_graph_subset(
            backfill_id=backfill_id,
            asset_graph_subset=AssetGraphSubset.all(graph),
            backfill_timestamp=time.time(),
            tags={},
            dynamic_partitions_store=instance,
            title=None,
            description=None,
            run_config=None,
        )
        data = backfill.get_asset_backfill_data(graph)._replace(
            requested_runs_for_target_roots=True, latest_storage_id=0, requested_subset=requested
        )
        instance.add_backfill(
            backfill.with_asset_backfill_data(
                data, dynamic_partitions_store=instance, asset_graph=graph
            )
        )
        target = InProcessWorkspaceLoadTarget(
            InProcessCodeLocationOrigin(
                LoadableTargetOrigin(python_file=__file__, attribute="defs")
            )
        )
        with create_test_daemon_workspace_context(target, instance) as context:
            # what Dagster alone requests: the training stage, without the ensemble, which
            # would then run apart, in a run of its own per partition
            split = _iterate(context, instance, backfill_id, hold=False, log=log)
            assert _runs_of(split) == [{"champ", "trained"}] * 2, _runs_of(split)
            # the daemon holds it: nothing requested, the reason logged
            held = _iterate(context, instance, backfill_id, hold=True, log=log)
            assert held.run_requests == [] and held.reserved_run_ids == []
            assert held.backfill_data.requested_subset == requested
            assert "ensemble with champ: waits for meta_layer" in caplog.text
            # y's meta layer stored and its run finished: the stage goes in one set of runs
            dg.materialize([meta_layer], partition_key="y", instance=instance, tags=tags)
            instance.report_run_failed(going)  # (finished: how does not matter here)
            whole = _iterate(context, instance, backfill_id, hold=True, log=log)
            assert _runs_of(whole) == [{"champ", "ensemble", "trained"}] * 2, _runs_of(whole)


def test_dagsters_backfill_iteration_calls_the_function_the_daemon_wraps() -> None:
    """The daemon replaces `asset_backfill.execute_asset_backfill_iteration_inner` in its process;
    that holds only while Dagster's iteration calls it through the module, by keyword (a Dagster
    upgrade that calls the inner function another way must fail here, not drop the hold)."""
    import inspect

    import dagster._core.execution.asset_backfill as asset_backfill

    source = inspect.getsource(asset_backfill.execute_asset_backfill_iteration)
    assert "result = execute_asset_backfill_iteration_inner(\n" in source
    for keyword in ("backfill_id=", "asset_backfill_data=", "asset_graph_view=", "logger="):
        assert keyword in source.split("execute_asset_backfill_iteration_inner(", 1)[1][:600]
