"""`quant-assets`: conveniences that drive Dagster's own APIs on the instance in DAGSTER_HOME."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from quant_assets.lib.errors import DataValidationError, QuantAssetsError
from quant_assets.lib.settings import ENV_VARS, Settings, load_settings

INSTANCE_YAML_HEADER = "# Written by quant-assets"


def prepare_instance_home(settings: Settings) -> Path:
    """Point DAGSTER_HOME at the configured directory, creating it and its dagster.yaml on first
    use (and rewriting a dagster.yaml quant-assets wrote when the settings change it)."""
    from quant_assets.defs.backfills import instance_yaml

    home = settings.dagster_home_path
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    wanted = instance_yaml(settings.run_slots, home)
    if settings.deployment == "celery" and (
        not config.exists() or config.read_text().startswith(INSTANCE_YAML_HEADER)
    ):
        # workers on other machines open the instance the run names: it cannot be local SQLite
        raise QuantAssetsError(
            f"deployment = 'celery' needs the Dagster instance on PostgreSQL: put the top-level "
            f"dagster.yaml in {home} (DAGSTER_HOME), see README.md, 'Scale out'"
        )
    if not (home / "dagster.yml").exists() and (
        not config.exists()
        or (config.read_text().startswith(INSTANCE_YAML_HEADER) and config.read_text() != wanted)
    ):
        tmp = config.with_suffix(".yaml.tmp")
        tmp.write_text(wanted)
        tmp.replace(config)
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


def _refuse_invalid_keys(symbols: list[str]) -> None:
    """Symbol partitions registered from outside the CLI (the UI, GraphQL) that are not valid keys
    (e.g. `../../x`) are refused before anything runs."""
    from quant_assets.lib.errors import InvalidPartitionKeyError
    from quant_assets.lib.symbols import validate_partition_key

    bad = []
    for symbol in symbols:
        try:
            validate_partition_key(symbol)
        except InvalidPartitionKeyError as exc:
            bad.append(str(exc))
    if bad:
        raise QuantAssetsError(
            "; ".join(bad) + "; remove them with: quant-assets symbols remove <key>"
        )


def ensure_mlflow_store(settings: Settings) -> None:
    """Create (migrate) the MLflow store once: `tracking.prepare_tracking_store`, which every
    process using the store calls first (a file lock serializes concurrent creators; once created,
    a marker makes it a file check). The CLI leaves it to the runs: importing MLflow here cost the
    CLI about 7 CPU-s per invocation."""
    from quant_assets.lib.tracking import prepare_tracking_store

    prepare_tracking_store(settings.mlflow_uri)


def run_selection(
    settings: Settings,
    selection: str,
    symbols: list[str] | None,
    timeframes: list[str] | None,
    verbose: bool = False,
    config_file: str | None = None,
    command: str = "materialize",
    asset_config: dict[str, dict] | None = None,
    tags: dict[str, str] | None = None,
) -> int:
    """Submit `selection` × partitions as one asset backfill and follow it to its end
    (`asset_config`: Config per asset, as from `--config`; `tags`: added to the runs)."""
    from quant_assets.definitions import build_defs
    from quant_assets.defs import backfills
    from quant_assets.defs.partitions import CONFIGURED_TIMEFRAMES
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
        _refuse_invalid_keys(symbols)
    if not symbols:
        raise QuantAssetsError(
            "no symbols registered; add some with: quant-assets symbols add BTCUSDT"
        )
    explicit = bool(timeframes)
    timeframes = [check_timeframe(t) for t in (timeframes or settings.timeframes)]
    unconfigured = [t for t in timeframes if t not in CONFIGURED_TIMEFRAMES]
    if unconfigured:
        raise QuantAssetsError(
            f"timeframe(s) {', '.join(unconfigured)} not configured (timeframes = "
            f"{', '.join(CONFIGURED_TIMEFRAMES)}); set QUANT_ASSETS_TIMEFRAMES to add them"
        )
    timeframes = _valid_timeframes(settings, symbols, timeframes, explicit)
    defs = build_defs(settings)
    try:
        subset, keys = backfills.backfill_subset(defs, selection, symbols, timeframes)
    except (backfills.BackfillError, *selection_errors()) as exc:
        raise QuantAssetsError(f"--select {selection!r}: {exc}") from exc
    asset_config = asset_config or load_asset_config(config_file)
    unknown = sorted(set(asset_config) - {k.to_user_string() for k in keys})
    if unknown:
        raise QuantAssetsError(
            f"--config names asset(s) outside the selection: {', '.join(unknown)}"
        )
    for line in backfills.reap_orphaned_runs(instance):
        print(f"housekeeping: {line}", flush=True)

    def log(line: str) -> None:
        print(line, flush=True)

    with backfills.ExecutionDaemon(instance, log, verbose) as daemon:
        backfill_id = backfills.submit_backfill(
            instance,
            subset,
            title=f"{command} {'everything' if selection.strip() == '*' else selection}",
            tags={
                "quant_assets/command": command,
                "quant_assets/selection": selection[:200],
                **(tags or {}),
            },
            run_config={"ops": {k: {"config": v} for k, v in asset_config.items()}}
            if asset_config
            else None,
        )
        print(
            f"backfill {backfill_id}: {selection!r} on {len(symbols)} symbol(s) x "
            f"{len(timeframes)} timeframe(s), {subset.num_partitions_and_non_partitioned_assets} "
            f"asset partitions; runs of {settings.run_slots} at a time on the instance in "
            f"{os.environ['DAGSTER_HOME']} (see it in the UI: quant-assets dev, Backfills)",
            flush=True,
        )
        progress, interrupted = backfills.follow_backfill(instance, backfill_id, daemon, log)
    return _report_backfill(instance, backfill_id, progress, interrupted, verbose)


def selection_errors() -> tuple[type[Exception], ...]:
    """What Dagster raises for an asset selection that does not parse or matches nothing."""
    import dagster as dg

    return (dg.DagsterError, ValueError)


#: promoted partitions the summary names (a 500-symbol backfill promoted 381: one 9 KB line);
#: `quant-assets status` and the UI list them all
PROMOTED_SHOWN = 24


def _first(names: list[str], shown: int) -> str:
    """The first `shown` names, then how many more there are."""
    rest = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {rest} more" if rest > 0 else "")


def _report_backfill(instance, backfill_id: str, progress, interrupted: int | None, verbose: bool):
    import signal

    from quant_assets.defs import backfills
    from quant_assets.lib.reporting import text_table

    reports = backfills.run_reports(instance, backfill_id)
    counts: dict[str, int] = {}
    for report in reports:
        counts[report.status] = counts.get(report.status, 0) + 1
    rows = [
        {"asset": asset, "done": d, "failed": f, "of": t}
        for asset, (d, f, t) in progress.by_asset.items()
    ]
    print()
    print(text_table(rows, ["asset", "done", "failed", "of"]))
    decisions = backfills.check_outcomes(instance, [r.run_id for r in reports], "promotion_gates")
    if decisions:
        promoted = sorted(k for k, (ok, _) in decisions.items() if ok)
        print(
            f"promotion gates: {len(promoted)} of {len(decisions)} challenger(s) promoted"
            + (f" ({_first(promoted, PROMOTED_SHOWN)})" if promoted else "")
        )
    print(
        f"\nbackfill {backfill_id} {progress.status}: "
        + ", ".join(f"{n} run(s) {s.lower()}" for s, n in sorted(counts.items()))
        + f"; {progress.done}/{progress.total} asset partitions done"
    )
    for report in reports:
        if verbose or report.errors:
            print(f"run {report.run_id[:8]} {report.status} [{report.partitions}] {report.assets}")
        for error in report.errors:
            print(f"    {error.splitlines()[0] if not verbose else error}", file=sys.stderr)
    if interrupted is not None:
        name = signal.Signals(interrupted).name
        print(
            f"cancelled by {name}: {progress.done}/{progress.total} asset partitions were done; "
            f"runs cancelled: {counts.get('CANCELED', 0)}",
            file=sys.stderr,
        )
        return 128 + interrupted
    failed = counts.get("FAILURE", 0) + counts.get("CANCELED", 0)
    return 1 if failed or progress.failed or progress.done < progress.total else 0


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


#: What `dataset export` materializes for a partition that is not stored yet: the dataset and
#: everything upstream of it (ohlcv, features, labels, cross_sectional_ranks).
EXPORT_SELECTION = "+key:training_dataset"


def cmd_dataset_export(args: argparse.Namespace, settings: Settings) -> int:
    """Export stored training_dataset rows of symbols x one timeframe within a date range. Partitions
    not stored yet are materialized first by one asset backfill (the path of `materialize`)."""
    import dagster as dg
    import polars as pl

    from quant_assets.defs.io import partition_path
    from quant_assets.lib.export import export_frame, format_of, parse_day, write_export
    from quant_assets.lib.symbols import normalize_symbol
    from quant_assets.lib.timeframes import check_timeframe, timeframe_seconds

    fmt = format_of(args.output, args.format)
    start, end = parse_day(args.start), parse_day(args.end, end=True)
    timeframe = check_timeframe(args.timeframe)
    symbols = list(dict.fromkeys(normalize_symbol(s) for s in args.symbols))
    root = settings.artifacts_path
    key = dg.AssetKey("training_dataset")
    paths = {s: partition_path(root, key, f"{s}|{timeframe}") for s in symbols}
    missing = [s for s, path in paths.items() if not path.exists()]
    if missing:
        # a timeframe's features read the coarser timeframes' bars of the same symbol
        coarser = [
            t for t in settings.timeframes if timeframe_seconds(t) > timeframe_seconds(timeframe)
        ]
        print(f"training_dataset not stored for {', '.join(missing)} at {timeframe}: materializing")
        code = run_selection(
            settings, EXPORT_SELECTION, missing, [timeframe, *coarser], command="dataset export"
        )
        if code != 0:
            print(
                f"error: materializing {', '.join(missing)} failed; nothing exported",
                file=sys.stderr,
            )
            return code
    frame = export_frame({s: pl.read_parquet(path) for s, path in paths.items()}, start, end)
    if frame.is_empty():
        raise QuantAssetsError(
            f"no training_dataset rows of {', '.join(symbols)} at {timeframe} between "
            f"{start.isoformat()} and {end.isoformat()}"
        )
    target = write_export(frame, args.output, fmt)
    print(
        f"exported {frame.height} rows x {frame.width} columns ({', '.join(symbols)} {timeframe}, "
        f"{frame['timestamp'].min()} .. {frame['timestamp'].max()}) to {target} ({fmt})"
    )
    return 0


def cmd_materialize(args: argparse.Namespace, settings: Settings) -> int:
    return run_selection(
        settings, args.select, args.symbols, args.timeframes, args.verbose, args.config
    )


#: the demo's data end: the same bars, models and decisions on every machine and every day
DEMO_SYNTHETIC_END = "2026-06-30T00:00:00"


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    if settings.source != "synthetic" or settings.synthetic_end:
        return _demo(args, settings)
    # the demo's data end is pinned, for this process and the daemon and runs it starts (which
    # read the environment); the live default (the current hour) is left as it was afterwards
    previous = os.environ.get("QUANT_ASSETS_SYNTHETIC_END")
    os.environ["QUANT_ASSETS_SYNTHETIC_END"] = DEMO_SYNTHETIC_END
    try:
        return _demo(args, load_settings())
    finally:
        if previous is None:
            os.environ.pop("QUANT_ASSETS_SYNTHETIC_END", None)
        else:
            os.environ["QUANT_ASSETS_SYNTHETIC_END"] = previous


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from quant_assets.lib.masking import mask_secrets

    instance = _instance(settings)
    added = register_symbols(settings, instance, list(settings.universe))
    print(
        f"quant-assets demo: source {mask_secrets(settings.source)}"
        f"{f' (data up to {settings.synthetic_end})' if settings.synthetic_end else ''}, "
        f"artifacts {settings.artifacts_path}, instance {settings.dagster_home_path}"
    )
    print(
        f"universe: {', '.join(settings.universe)} (newly registered: {', '.join(added) or 'none'})"
    )
    status = run_selection(
        settings, args.select, None, None, args.verbose, args.config, command="demo"
    )
    print()
    cmd_status(args, settings)
    if status == 0:
        print(
            f"\nopen the UI with:  quant-assets dev   (DAGSTER_HOME={settings.dagster_home_path})"
        )
    return status


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """The Dagster UI on the project's instance: dagster-webserver, and beside it the execution
    daemon with every daemon type (`python -m quant_assets.defs.daemon --all`), so that a backfill
    launched from the UI is planned by the same settled, holding backfill daemon as the CLI's, and
    schedules, sensors and automation run. Ctrl-C or SIGTERM stops both."""
    import fcntl
    import signal
    import subprocess
    import time

    from quant_assets.defs.backfills import DAEMON_LOCK, daemon_process_env

    home = prepare_instance_home(settings)
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    webserver = Path(sys.executable).with_name("dagster-webserver")  # the venv's, active or not
    ui = [str(webserver) if webserver.exists() else "dagster-webserver"]
    ui += ["-h", args.host, "-p", str(args.port)]
    ui += ["-w", str(workspace)] if workspace.exists() else ["-m", "quant_assets.definitions"]
    daemon_argv = [sys.executable, "-m", "quant_assets.defs.daemon", "--all"]
    env = daemon_process_env()
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stop.append(signum))
    # each child in its own session: Ctrl-C reaches this process only, which stops each child
    # once (SIGTERM), instead of twice
    children = {"dagster-webserver": subprocess.Popen(ui, env=env, start_new_session=True)}
    print(f"DAGSTER_HOME={home} {' '.join(ui)}  (pid {children['dagster-webserver'].pid})")
    print(f"the UI: http://{args.host}:{args.port}", flush=True)
    # the lock an invocation's execution daemon holds (defs.backfills.ExecutionDaemon): one
    # backfill daemon per instance; while an invocation's runs, it serves the UI's backfills too
    lock = open(home / DAEMON_LOCK, "w")  # noqa: SIM115
    waiting = False
    try:
        while not stop:
            if "daemon" not in children:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not waiting:
                        print(
                            "an invocation's execution daemon runs this instance's backfills "
                            "(the UI's too); the UI's daemons start when it has finished",
                            flush=True,
                        )
                    waiting = True
                else:
                    children["daemon"] = subprocess.Popen(
                        daemon_argv, env=env, start_new_session=True
                    )
                    print(f"{' '.join(daemon_argv)}  (pid {children['daemon'].pid})", flush=True)
            ended = {name: p.returncode for name, p in children.items() if p.poll() is not None}
            if ended:
                name, code = next(iter(ended.items()))
                print(f"{name} exited with code {code}; stopping the rest", file=sys.stderr)
                return code or 1
            time.sleep(1)
        return 0
    finally:
        for process in children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in children.items():
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop within 45 s: killed", file=sys.stderr)
                process.kill()
                process.wait()
        lock.close()


def _registry(settings: Settings):
    from quant_assets.defs.resources import resources_from_settings

    resources = resources_from_settings(settings)
    return resources["mlflow"].get_tracker(), resources["trading_store"].get_store()


def _requested_model(settings: Settings, tracker, raw_symbol: str, raw_timeframe: str):
    """(symbol, timeframe, registered model name) of a promote/rollback request, or a
    QuantAssetsError naming the unregistered symbol, the unknown timeframe or the missing model."""
    from quant_assets.lib.registry_ops import model_exists
    from quant_assets.lib.symbols import normalize_symbol
    from quant_assets.lib.timeframes import check_timeframe
    from quant_assets.lib.tracking import registered_model_name

    symbol, timeframe = normalize_symbol(raw_symbol), check_timeframe(raw_timeframe)
    name = registered_model_name(symbol, timeframe)
    if model_exists(tracker, name):
        return symbol, timeframe, name
    registered = _registered(_instance(settings))
    if symbol not in registered:
        raise QuantAssetsError(
            f"symbol {symbol} is not registered (registered: {', '.join(registered) or 'none'}); "
            f"there is no model {name}"
        )
    if timeframe not in settings.timeframes:
        raise QuantAssetsError(
            f"timeframe {timeframe} is not one of the configured timeframes "
            f"({', '.join(settings.timeframes)}); there is no model {name}"
        )
    raise QuantAssetsError(
        f"no model registered as {name}; train one with: "
        f"quant-assets materialize --symbols {symbol} --timeframes {timeframe}"
    )


def manual_decision(
    settings: Settings, symbol: str, timeframe: str, decision: dict[str, object], command: str
) -> int:
    """A run of `champion` for one partition carrying a person's decision as its Config and tags
    (through the same backfill path as `materialize`), so the Dagster UI, the registry's version
    tags and promotion_log record the same run, person and reason."""
    import getpass

    requested_by = getpass.getuser()
    config = {**decision, "requested_by": requested_by}
    code = run_selection(
        settings,
        "champion",
        [symbol],
        [timeframe],
        command=command,
        asset_config={"champion": config},
        tags={
            "quant_assets/decision": str(decision["manual"]),
            "quant_assets/requested_by": requested_by,
            "quant_assets/reason": str(decision["reason"])[:200],
        },
    )
    if code == 0:
        with _instance(settings) as instance:
            import dagster as dg

            from quant_assets.defs.partitions import partition_key

            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey("champion"),
                    asset_partitions=[partition_key(symbol, timeframe)],
                ),
                limit=1,
            ).records
            if records and "message" in records[0].asset_materialization.metadata:
                print(records[0].asset_materialization.metadata["message"].value)
            print(
                f"served from the next {timeframe} bar on: bar-close serving reads champions "
                "from the SQL catalog, which the move just updated; `signals` on its next run"
            )
    return code


def cmd_promote(args: argparse.Namespace, settings: Settings) -> int:
    from quant_assets.lib.registry_ops import require_version
    from quant_assets.lib.tracking import ALIAS_CHALLENGER, ALIAS_CHAMPION

    tracker, _ = _registry(settings)
    symbol, timeframe, name = _requested_model(settings, tracker, args.symbol, args.timeframe)
    version = args.version or tracker.aliases(name).get(ALIAS_CHALLENGER)
    if not version:
        raise QuantAssetsError(f"{name} has no challenger; train one or pass --version")
    # refused or no-op requests are answered here, without a run (the run re-checks under the lock)
    require_version(tracker, name, str(version))
    if tracker.aliases(name).get(ALIAS_CHAMPION) == str(version):
        print(f"{name}: v{version} already is the champion; nothing changed")
        return 0
    decision = {"manual": "promote", "version": str(version), "reason": args.reason}
    return manual_decision(settings, symbol, timeframe, decision, "promote")


def cmd_rollback(args: argparse.Namespace, settings: Settings) -> int:
    from quant_assets.lib.registry_ops import check_rollback

    tracker, store = _registry(settings)
    symbol, timeframe, name = _requested_model(settings, tracker, args.symbol, args.timeframe)
    check_rollback(tracker, store, name, args.again)  # a refusal needs no run
    decision = {"manual": "rollback", "reason": args.reason, "again": bool(args.again)}
    return manual_decision(settings, symbol, timeframe, decision, "rollback")


def cmd_doctor(args: argparse.Namespace, settings: Settings) -> int:
    """Compare promotion_log with the registry aliases of every model; exit 1 on a disagreement."""
    from quant_assets.lib.registry_ops import (
        champion_model_names,
        logged_model_names,
        registry_disagreements,
    )

    tracker, store = _registry(settings)
    names = sorted(set(logged_model_names(store)) | set(champion_model_names(tracker)))
    problems = 0
    for name in names:
        found = registry_disagreements(tracker, store, name)
        problems += len(found)
        for line in found or [f"{name}: ok"]:
            print(line)
    print(
        f"{len(names)} model(s) checked: "
        + (
            f"{problems} disagreement(s) between promotion_log and the registry"
            if problems
            else "promotion_log agrees with the registry aliases"
        )
    )
    return 1 if problems else 0


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

    from quant_assets.lib.masking import mask_secrets, mask_url_path

    for f in fields(settings):
        if f.name == "origin":
            continue
        value = getattr(settings, f.name)
        shown = mask_url_path(value) if f.name == "alert_webhook_url" else mask_secrets(value)
        var = ENV_VARS.get(f.name, "")
        print(f"{f.name:24} {shown:48} {var}")
    print(f"\nmlflow tracking uri      {mask_secrets(settings.mlflow_uri)}")
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
        "given partitions as ONE asset backfill on the instance (as the UI's 'Materialize all'): "
        "Dagster's backfill daemon plans batched runs stage by stage and the run queue runs them "
        "in parallel (QUANT_ASSETS_MAX_CONCURRENT_RUNS). The CLI starts that daemon for its own "
        "duration when none runs, prints progress, and cancels the backfill on Ctrl-C/SIGTERM "
        "(exit 130/143). Exits 1 when a run fails, printing the failing step's error; 2 for a "
        "wrong request.",
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

    dataset = sub.add_parser("dataset", help="training datasets for notebooks")
    dataset_actions = dataset.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = dataset_actions.add_parser(
        "export",
        help="write training_dataset rows of symbols x timeframe in a date range to Parquet/CSV",
        description="Reads the stored training_dataset partitions (materializing missing ones, and "
        "their upstream assets, by one asset backfill as `materialize` does), keeps the rows whose "
        "bar opened in [--start, --end] (an end date covers its whole day, UTC), and writes them "
        "sorted by timestamp then symbol, with a first `symbol` column, atomically. Columns: "
        "symbol, timestamp, t0, t1, the features, y (y_class for multi_class), sample_weight, the "
        "label outcomes and target (README, 'Research breadth').",
    )
    export.add_argument("--symbols", nargs="+", required=True, metavar="S")
    export.add_argument("--timeframe", required=True)
    export.add_argument("--start", required=True, help="YYYY-MM-DD or ISO timestamp (UTC)")
    export.add_argument("--end", required=True, help="YYYY-MM-DD (whole day) or ISO timestamp")
    export.add_argument("--format", choices=("parquet", "csv"), help="default: from --output")
    export.add_argument("--output", required=True, metavar="FILE")
    export.set_defaults(func=cmd_dataset_export)

    promote = sub.add_parser(
        "promote", help="manually make a version the champion (logged with its reason)"
    )
    promote.add_argument("symbol")
    promote.add_argument("timeframe")
    promote.add_argument("--version", help="registered version (default: the current challenger)")
    promote.add_argument("--reason", default="manual override", help="recorded in promotion_log")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser(
        "rollback",
        help="restore the prior champion (logged); the version rolled back from becomes "
        "prior_champion",
    )
    rollback.add_argument("symbol")
    rollback.add_argument("timeframe")
    rollback.add_argument("--reason", default="manual rollback", help="recorded in promotion_log")
    rollback.add_argument(
        "--again",
        action="store_true",
        help="allow rolling back a rollback (re-instates the version just rolled back from)",
    )
    rollback.set_defaults(func=cmd_rollback)

    doctor = sub.add_parser(
        "doctor",
        help="check that promotion_log agrees with the registry aliases (exit 1 when not)",
    )
    doctor.set_defaults(func=cmd_doctor)

    status = sub.add_parser(
        "status", help="per partition: challenger metrics, gates, champion, latest signal"
    )
    status.set_defaults(func=cmd_status)

    dev = sub.add_parser(
        "dev",
        help="open the Dagster UI on the project's instance: dagster-webserver and the execution "
        "daemon with schedules, sensors and automation (Ctrl-C stops both)",
    )
    dev.add_argument("--host", default="127.0.0.1", help="address the webserver listens on")
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
        from quant_assets.lib.masking import mask_secrets

        print(f"error: {mask_secrets(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
