"""The CLI's run planner: stage order follows the asset graph and its partition mappings."""

from __future__ import annotations

import dagster as dg
import pytest

from quant_assets.defs.runs import PlannedRun, _blocked_by, plan_runs


def test_plan_orders_stages_by_partition_mappings(defs: dg.Definitions) -> None:
    plan = plan_runs(defs, "*labels", ["BTCUSDT", "SPY"], ["1h", "1d"])
    stages = [(p.stage, p.asset_keys, p.partition_key) for p in plan]
    # every ohlcv partition first (features read the coarser timeframes' bars), then per partition
    # features and labels together in one run
    assert [s[2] for s in stages[:4]] == ["BTCUSDT|1h", "BTCUSDT|1d", "SPY|1h", "SPY|1d"]
    assert all(s[1] == (dg.AssetKey("ohlcv"),) and s[0] == 0 for s in stages[:4])
    assert {s[1] for s in stages[4:]} == {(dg.AssetKey("features"), dg.AssetKey("labels"))}
    assert all(s[0] == 1 for s in stages[4:])


def test_cross_sectional_assets_run_once_per_timeframe_after_all_symbols(
    defs: dg.Definitions,
) -> None:
    plan = plan_runs(defs, "key:cross_sectional_ranks", ["BTCUSDT", "SPY"], ["1h", "4h"])
    assert [(p.partition_key, p.symbol, p.timeframe) for p in plan] == [
        ("1h", None, "1h"),
        ("4h", None, "4h"),
    ]
    full = plan_runs(defs, "*cross_sectional_ranks", ["BTCUSDT", "SPY"], ["1h"])
    last = full[-1]
    assert last.asset_keys == (dg.AssetKey("cross_sectional_ranks"),)
    assert last.stage > max(p.stage for p in full[:-1])


def test_failed_partition_blocks_only_what_reads_it() -> None:
    ohlcv = (dg.AssetKey("ohlcv"),)
    failed = PlannedRun(0, ohlcv, "BTCUSDT|1h", "BTCUSDT", "1h")
    same = PlannedRun(1, (dg.AssetKey("features"),), "BTCUSDT|1h", "BTCUSDT", "1h")
    other = PlannedRun(1, (dg.AssetKey("features"),), "SPY|1h", "SPY", "1h")
    ranks = PlannedRun(2, (dg.AssetKey("cross_sectional_ranks"),), "1h", None, "1h")
    ranks_1d = PlannedRun(2, (dg.AssetKey("cross_sectional_ranks"),), "1d", None, "1d")
    coarser_reader = PlannedRun(1, (dg.AssetKey("features"),), "BTCUSDT|1m", "BTCUSDT", "1m")
    assert _blocked_by(same, [failed]) is failed
    assert _blocked_by(coarser_reader, [failed]) is failed
    assert _blocked_by(other, [failed]) is None
    assert _blocked_by(ranks, [failed]) is failed
    assert _blocked_by(ranks_1d, [failed]) is None


def test_unknown_selection_is_an_error(defs: dg.Definitions) -> None:
    with pytest.raises(Exception, match="nope"):
        plan_runs(defs, "key:nope", ["BTCUSDT"], ["1h"])


def test_a_selection_of_only_runs_last_assets_plans_them(defs: dg.Definitions) -> None:
    """`materialize --select signals` alone: no other stage to run after."""
    plan = plan_runs(defs, "signals", ["BTCUSDT"], ["4h"])
    assert [(p.stage, p.asset_keys, p.partition_key) for p in plan] == [
        (0, (dg.AssetKey("signals"),), "BTCUSDT|4h")
    ]
