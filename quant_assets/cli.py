"""`quant-assets`: conveniences that drive Dagster's own APIs on the instance in DAGSTER_HOME."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from quant_assets.lib.errors import DataValidationError, QuantAssetsError
from quant_assets.lib.settings import ENV_VARS, Settings, load_settings

DEFAULT_INSTANCE_YAML = """\
# Written by quant-assets on first use: the embedded default instance (SQLite under this folder).
# For PostgreSQL storage see the top-level dagster.yaml and README.md ("Instance storage").
telemetry:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 2
"""


def prepare_instance_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME at the configured directory, creating it (and its dagster.yaml) on first use."""
    home = settings.dagster_home_path
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and not (home / "dagster.yml").exists():
        config.write_text(DEFAULT_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _instance(settings: Settings):
    import dagster as dg

    prepare_instance_home(settings)
    return dg.DagsterInstance.get()


# ---------------------------------------------------------------- symbols


def _registered(instance) -> list[str]:
    from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME

    return sorted(instance.get_dynamic_partitions(SYMBOL_PARTITIONS_NAME))


def _watchlist_symbols(settings: Settings) -> list[str]:
    from quant_assets.lib.watchlist import read_watchlist

    path = settings.watchlist_path
    return list(read_watchlist(path).symbols) if path.exists() else []


def register_symbols(settings: Settings, instance, raw: list[str]) -> list[str]:
    """Add symbols to the watchlist file and to the instance's partitions; return the new ones."""
    from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
    from quant_assets.lib.symbols import normalize_symbol
    from quant_assets.lib.watchlist import write_watchlist

    symbols = [normalize_symbol(s) for s in raw]
    listed = _watchlist_symbols(settings)
    write_watchlist(settings.watchlist_path, listed + [s for s in symbols if s not in listed])
    added = [s for s in dict.fromkeys(symbols) if s not in _registered(instance)]
    if added:
        instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, added)
    return added


def cmd_symbols(args: argparse.Namespace, settings: Settings) -> int:
    from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME
    from quant_assets.lib.symbols import normalize_symbol
    from quant_assets.lib.watchlist import write_watchlist

    instance = _instance(settings)
    if args.action == "list":
        registered = _registered(instance)
        listed = set(_watchlist_symbols(settings))
        for symbol in registered:
            note = (
                "" if symbol in listed else "   (not in the watchlist: the sensor will remove it)"
            )
            print(f"{symbol}{note}")
        for symbol in sorted(listed - set(registered)):
            print(f"{symbol}   (in the watchlist, not registered yet)")
        if not registered and not listed:
            print("no symbols registered; add some with: quant-assets symbols add BTCUSDT SPY")
        return 0
    if args.action == "add":
        added = register_symbols(settings, instance, args.symbols)
        already = [normalize_symbol(s) for s in args.symbols if normalize_symbol(s) not in added]
        print(
            f"added: {', '.join(added) or '-'}"
            + (f"; already registered: {', '.join(already)}" if already else "")
        )
        return 0
    symbols = [normalize_symbol(s) for s in args.symbols]
    registered = set(_registered(instance))
    unknown = [s for s in symbols if s not in registered]
    write_watchlist(
        settings.watchlist_path, [s for s in _watchlist_symbols(settings) if s not in symbols]
    )
    for symbol in symbols:
        if symbol in registered:
            instance.delete_dynamic_partition(SYMBOL_PARTITIONS_NAME, symbol)
    print(f"removed: {', '.join(s for s in symbols if s in registered) or '-'}")
    if unknown:
        print(f"not registered (nothing to remove): {', '.join(unknown)}")
    print(
        "stored artifacts are kept; delete them under the artifacts root if you no longer need them"
    )
    return 0


# ---------------------------------------------------------------- materialize


def _valid_timeframes(
    settings: Settings, symbols: list[str], timeframes: list[str], explicit: bool
):
    """Drop (or, when asked for explicitly, refuse) timeframes finer than the source's data."""
    from quant_assets.defs.resources import resources_from_settings
    from quant_assets.lib.timeframes import timeframe_seconds

    source = resources_from_settings(settings)["market_data"].get_source()
    finest: dict[str, str] = {}
    for symbol in symbols:
        try:
            finest[symbol] = min(source.native_timeframes(symbol), key=timeframe_seconds)
        except DataValidationError:
            continue  # bad data fails inside the Dagster run, where the error is recorded
    if not finest:
        return timeframes
    coarse_enough = [
        t
        for t in timeframes
        if all(timeframe_seconds(t) >= timeframe_seconds(f) for f in finest.values())
    ]
    too_fine = [t for t in timeframes if t not in coarse_enough]
    if too_fine:
        worst = max(finest.items(), key=lambda kv: timeframe_seconds(kv[1]))
        message = (
            f"timeframe(s) {', '.join(too_fine)} finer than the source's data "
            f"({worst[0]} starts at {worst[1]} in {source.description}); bars are never invented"
        )
        if explicit:
            raise QuantAssetsError(message)
        print(f"note: skipping {message}")
    return coarse_enough


def run_selection(
    settings: Settings,
    selection: str,
    symbols: list[str] | None,
    timeframes: list[str] | None,
    verbose: bool = False,
    config_file: str | None = None,
) -> int:
    from quant_assets.definitions import build_defs
    from quant_assets.defs.runs import execute_plan, plan_runs
    from quant_assets.lib.reporting import text_table
    from quant_assets.lib.symbols import normalize_symbol
    from quant_assets.lib.timeframes import check_timeframe

    instance = _instance(settings)
    registered = _registered(instance)
    if symbols:
        symbols = [normalize_symbol(s) for s in symbols]
        missing = [s for s in symbols if s not in registered]
        if missing:
            raise QuantAssetsError(
                f"symbol(s) not registered: {', '.join(missing)}; add them with: "
                f"quant-assets symbols add {' '.join(missing)}"
            )
    else:
        symbols = registered
    if not symbols:
        raise QuantAssetsError(
            "no symbols registered; add some with: quant-assets symbols add BTCUSDT"
        )
    explicit = bool(timeframes)
    timeframes = [check_timeframe(t) for t in (timeframes or settings.timeframes)]
    timeframes = _valid_timeframes(settings, symbols, timeframes, explicit)
    defs = build_defs(settings)
    plan = plan_runs(defs, selection, symbols, timeframes)
    print(
        f"materializing {selection!r} for {len(symbols)} symbol(s) x {len(timeframes)} timeframe(s): "
        f"{len(plan)} run(s) on the instance in {os.environ['DAGSTER_HOME']}",
        flush=True,
    )

    def progress(index: int, total: int, outcome) -> None:
        rows = ", ".join(f"{k}={v}" for k, v in outcome.rows.items())
        warn = f"  warn: {', '.join(outcome.warned_checks)}" if outcome.warned_checks else ""
        warn += f"  {', '.join(outcome.decisions)}" if outcome.decisions else ""
        print(
            f"[{index:>{len(str(total))}}/{total}] {outcome.status.upper():8} {outcome.planned.label}"
            f"  {outcome.seconds:5.1f}s  {rows}{warn}",
            flush=True,
        )
        if outcome.error:
            print("    " + outcome.error.replace("\n", "\n    "), file=sys.stderr, flush=True)

    outcomes = execute_plan(
        defs,
        plan,
        instance,
        on_progress=progress,
        log_level="INFO" if verbose else "CRITICAL",
        asset_config=load_asset_config(config_file),
    )
    counts = {s: sum(o.status == s for o in outcomes) for s in ("success", "failed", "skipped")}
    print(
        f"\nsummary: {counts['success']} succeeded, {counts['failed']} failed, {counts['skipped']} skipped"
    )
    bad = [o for o in outcomes if o.status != "success"]
    if bad:
        print(
            text_table(
                [
                    {
                        "run": o.planned.label,
                        "status": o.status,
                        "error": (o.error or "").splitlines()[0],
                    }
                    for o in bad
                ]
            ),
            file=sys.stderr,
        )
        return 1
    return 0


def load_asset_config(path: str | None) -> dict[str, dict]:
    """Asset name -> Config values from a YAML/JSON file (the Launchpad's `ops:` section, or its body)."""
    if not path:
        return {}
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise QuantAssetsError(f"--config {path}: cannot read it: {exc}") from exc
    ops = data.get("ops", data) if isinstance(data, dict) else None
    if not isinstance(ops, dict) or not all(isinstance(v, dict) for v in ops.values()):
        raise QuantAssetsError(
            f"--config {path}: expected a mapping of asset name -> config values"
        )
    return {name: body.get("config", body) for name, body in ops.items()}


def cmd_materialize(args: argparse.Namespace, settings: Settings) -> int:
    return run_selection(
        settings, args.select, args.symbols, args.timeframes, args.verbose, args.config
    )


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    instance = _instance(settings)
    added = register_symbols(settings, instance, list(settings.universe))
    print(
        f"quant-assets demo: source {settings.source}, artifacts {settings.artifacts_path}, "
        f"instance {settings.dagster_home_path}"
    )
    print(
        f"universe: {', '.join(settings.universe)} (newly registered: {', '.join(added) or 'none'})"
    )
    status = run_selection(settings, args.select, None, None, args.verbose, args.config)
    print()
    cmd_status(args, settings)
    if status == 0:
        print(
            f"\nopen the UI with:  quant-assets dev   (DAGSTER_HOME={settings.dagster_home_path})"
        )
    return status


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    prepare_instance_home(settings)
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    dagster = Path(sys.executable).with_name(
        "dagster"
    )  # the venv's, whether or not it is activated
    argv = [str(dagster) if dagster.exists() else "dagster", "dev", "-p", str(args.port)]
    argv += ["-w", str(workspace)] if workspace.exists() else ["-m", "quant_assets.definitions"]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(argv)}", flush=True)
    os.execvp(argv[0], argv)
    return 0  # not reached


def _registry(settings: Settings):
    from quant_assets.defs.resources import resources_from_settings

    resources = resources_from_settings(settings)
    return resources["mlflow"].get_tracker(), resources["trading_store"].get_store()


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    from quant_assets.lib.registry_ops import promote_version
    from quant_assets.lib.symbols import normalize_symbol
    from quant_assets.lib.timeframes import check_timeframe
    from quant_assets.lib.tracking import ALIAS_CHALLENGER, registered_model_name

    symbol, timeframe = normalize_symbol(args.symbol), check_timeframe(args.timeframe)
    tracker, store = _registry(settings)
    name = registered_model_name(symbol, timeframe)
    version = args.version or tracker.aliases(name).get(ALIAS_CHALLENGER)
    if not version:
        raise QuantAssetsError(f"{name} has no challenger; train one or pass --version")
    result = promote_version(
        tracker,
        store,
        name,
        version,
        symbol=symbol,
        timeframe=timeframe,
        action="manual_promote",
        decided_by="cli",
        reason=args.reason,
    )
    print(
        f"{name}: champion is now v{result['champion']} (prior champion: {result['prior_champion'] or 'none'}); logged"
    )
    return 0


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from quant_assets.lib.registry_ops import rollback_champion
    from quant_assets.lib.symbols import normalize_symbol
    from quant_assets.lib.timeframes import check_timeframe
    from quant_assets.lib.tracking import registered_model_name

    symbol, timeframe = normalize_symbol(args.symbol), check_timeframe(args.timeframe)
    tracker, store = _registry(settings)
    name = registered_model_name(symbol, timeframe)
    result = rollback_champion(
        tracker, store, name, symbol=symbol, timeframe=timeframe, reason=args.reason
    )
    print(
        f"{name}: rolled back to v{result['champion']} (v{result['prior_champion']} is now prior_champion); logged"
    )
    return 0


def status_rows(settings: Settings) -> list[dict[str, object]]:
    """Per partition: challenger metrics, gate results, champion version, the meta layer (regimes
    with a meta-learner, whether the ensemble is served and how much of it fell back to voting)
    and the latest signal."""
    import json

    import polars as pl

    from quant_assets.lib.tracking import ALIAS_CHAMPION

    tracker, store = _registry(settings)
    root = settings.artifacts_path
    latest = store.read_signals()
    rows = []
    for path in sorted((root / "challenger_model").glob("*/*.parquet")):
        symbol, timeframe = path.parent.name, path.stem
        record = pl.read_parquet(path).row(0, named=True)
        row: dict[str, object] = {
            "partition": f"{symbol}|{timeframe}",
            "challenger": record["status"],
        }
        if record["status"] == "trained":
            row["challenger"] = f"v{record['version']}"
            row["oof_auc"] = record.get("oof_roc_auc")
            row["holdout_auc"] = record.get("holdout_roc_auc")
            row["champion"] = tracker.aliases(record["model_name"]).get(ALIAS_CHAMPION, "-")
        evaluation = root / "champion_challenger_evaluation" / symbol / f"{timeframe}.parquet"
        if evaluation.exists():
            ev = pl.read_parquet(evaluation).row(0, named=True)
            row["decision"] = ev["decision"]
            gates = json.loads(ev.get("gates_json") or "{}")
            row["gates"] = " ".join(f"{g}:{'ok' if v['passed'] else 'X'}" for g, v in gates.items())
            row["sortino"] = ev.get("challenger_sortino")
            row["trades"] = ev.get("challenger_trade_count")
        learners = root / "meta_learner" / symbol / f"{timeframe}.parquet"
        if learners.exists():
            meta = pl.read_parquet(learners)
            trained = meta.filter(pl.col("status") == "trained")["regime"].to_list()
            row["meta_learners"] = f"{len(trained)}/{meta.height} ({','.join(trained) or '-'})"
        ensemble = root / "ensemble_signals" / symbol / f"{timeframe}.parquet"
        if ensemble.exists():
            ens = pl.read_parquet(ensemble)
            voting = float((ens["source"] == "voting").mean() or 0.0)
            serving = "serving" if ens["serving"][0] else "not serving"
            row["ensemble"] = f"{serving}, {voting:.0%} voting"
        mine = latest.filter((pl.col("symbol") == symbol) & (pl.col("timeframe") == timeframe))
        if mine.height:
            last = mine.sort("timestamp").tail(1).row(0, named=True)
            row["latest_signal"] = (
                f"{last['timestamp']:%Y-%m-%d %H:%M} side {last['side']} p={last['prob_up']:.2f}"
            )
        rows.append(row)
    return rows


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from quant_assets.lib.reporting import text_table

    rows = status_rows(settings)
    columns = [
        "partition",
        "challenger",
        "oof_auc",
        "holdout_auc",
        "sortino",
        "trades",
        "gates",
        "decision",
        "champion",
        "meta_learners",
        "ensemble",
        "latest_signal",
    ]
    print(text_table(rows, columns) if rows else "no trained partitions yet: run quant-assets demo")
    return 0


def cmd_settings(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import fields

    for f in fields(settings):
        if f.name == "origin":
            continue
        value = getattr(settings, f.name)
        var = ENV_VARS.get(f.name, "")
        print(f"{f.name:24} {value!s:48} {var}")
    print(f"\nmlflow tracking uri      {settings.mlflow_uri}")
    print(f"read from: {', '.join(settings.origin)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    env_help = "\n".join(f"  {var:36} {name}" for name, var in ENV_VARS.items())
    parser = argparse.ArgumentParser(
        prog="quant-assets",
        description="Drive the quant-assets Dagster pipeline: register symbols, materialize assets "
        "on symbol x timeframe partitions, run the demo. Runs are recorded in the Dagster instance "
        "in DAGSTER_HOME and show up in the Dagster UI.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="settings (config file quant_assets.toml, overridden by environment):\n" + env_help,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="register the default universe and run the main job on it")
    demo.add_argument("--select", default="*", help="asset selection (default: every asset)")
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="show Dagster's step logs (INFO)"
    )
    demo.add_argument(
        "--config", metavar="FILE", help="YAML/JSON of asset Config (as for `materialize`)"
    )
    demo.set_defaults(func=cmd_demo)

    symbols = sub.add_parser(
        "symbols", help="manage the dynamic symbol partitions and the watchlist"
    )
    actions = symbols.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="register symbols (e.g. BTC/USDT becomes BTCUSDT)")
    add.add_argument("symbols", nargs="+", metavar="SYMBOL")
    remove = actions.add_parser("remove", help="unregister symbols (stored data is kept)")
    remove.add_argument("symbols", nargs="+", metavar="SYMBOL")
    actions.add_parser("list", help="list registered symbols")
    symbols.set_defaults(func=cmd_symbols)

    mat = sub.add_parser(
        "materialize",
        help="materialize an asset selection for symbol x timeframe partitions",
        description="Materialize a Dagster asset selection (e.g. 'ohlcv', 'key:ohlcv+', '*') for the "
        "given partitions, one run per partition, printing progress and a summary. Exits 1 when a "
        "run fails, printing the failing step's error.",
    )
    mat.add_argument("--select", default="*", help="Dagster asset selection (default: every asset)")
    mat.add_argument("--symbols", nargs="+", metavar="S", help="default: every registered symbol")
    mat.add_argument(
        "--timeframes", nargs="+", metavar="T", help="default: the configured timeframes"
    )
    mat.add_argument("-v", "--verbose", action="store_true", help="show Dagster's step logs (INFO)")
    mat.add_argument(
        "--config",
        metavar="FILE",
        help="YAML/JSON of asset Config, e.g. {challenger_model: {model_type: logistic}} "
        "(the Launchpad's `ops:` section also works)",
    )
    mat.set_defaults(func=cmd_materialize)

    promote = sub.add_parser(
        "promote", help="manually make a version the champion (logged with its reason)"
    )
    promote.add_argument("symbol")
    promote.add_argument("timeframe")
    promote.add_argument("--version", help="registered version (default: the current challenger)")
    promote.add_argument("--reason", default="manual override", help="recorded in promotion_log")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", help="restore the prior champion (logged)")
    rollback.add_argument("symbol")
    rollback.add_argument("timeframe")
    rollback.add_argument("--reason", default="manual rollback", help="recorded in promotion_log")
    rollback.set_defaults(func=cmd_rollback)

    status = sub.add_parser(
        "status", help="per partition: challenger metrics, gates, champion, latest signal"
    )
    status.set_defaults(func=cmd_status)

    dev = sub.add_parser("dev", help="open the Dagster UI (dagster dev) on the project's instance")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(func=cmd_dev)

    show = sub.add_parser("settings", help="print the effective settings and where they came from")
    show.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        return args.func(args, settings)
    except QuantAssetsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
