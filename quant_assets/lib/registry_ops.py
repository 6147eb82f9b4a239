"""Moving the `champion` alias, with the audit trail MLflow does not keep: version tags and an
append-only promotion_log row for every decision (gates, manual promotion, rollback).

Every move happens under the store's registry lock (`TradingStore.registry_lock`): the aliases are
read, moved and tagged and the log row appended while no other promotion or rollback of the model
runs, so each log row's `prior_version` is the version the row before it made champion, and the
last row names the aliases as they are. `registry_disagreements` checks exactly that.

Rollback semantics: a rollback makes `prior_champion` the champion and keeps the version rolled
back from as `prior_champion`. Rolling back a rollback would re-instate the version just rolled
back from, so it is refused unless asked for explicitly (`again=True`, `quant-assets rollback
--again`); promote a specific version to go anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import sqlalchemy as sa

from quant_assets.lib.catalog import sync_catalog
from quant_assets.lib.errors import PromotionConflictError, QuantAssetsError
from quant_assets.lib.stores import MOVING_ACTIONS, TradingStore, promotion_log
from quant_assets.lib.tracking import ALIAS_CHAMPION, ALIAS_PRIOR_CHAMPION, Tracker


class PromotionError(QuantAssetsError, ValueError):
    """A promotion or rollback cannot be carried out (unknown version, nothing to roll back to)."""


def promote_version(
    tracker: Tracker,
    store: TradingStore,
    name: str,
    version: str,
    *,
    symbol: str,
    timeframe: str,
    action: str,
    decided_by: str,
    reason: str,
    gates: Mapping[str, object] | None = None,
    dagster_run_id: str | None = None,
) -> dict[str, object]:
    """Make `version` the champion, keep the previous champion as `prior_champion`, tag and log it.

    Promoting the version that already is champion changes nothing and logs nothing: the result
    has `changed` False and a `message` saying so.
    """
    version = str(version)
    with store.registry_lock(name) as connection:
        require_version(tracker, name, version)
        previous = tracker.aliases(name).get(ALIAS_CHAMPION)
        if previous == version:
            return {
                "model_name": name,
                "champion": version,
                "prior_champion": tracker.aliases(name).get(ALIAS_PRIOR_CHAMPION),
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
                "changed": False,
                "message": f"{name}: v{version} already is the champion; nothing changed",
            }
        return _move(
            tracker,
            store,
            connection,
            name,
            version,
            previous,
            symbol=symbol,
            timeframe=timeframe,
            action=action,
            decided_by=decided_by,
            reason=reason,
            gates=gates,
            dagster_run_id=dagster_run_id,
        )


def rollback_champion(
    tracker: Tracker,
    store: TradingStore,
    name: str,
    *,
    symbol: str,
    timeframe: str,
    reason: str,
    again: bool = False,
    decided_by: str = "cli",
    dagster_run_id: str | None = None,
) -> dict[str, object]:
    """Restore `prior_champion` as champion; the version rolled back from becomes `prior_champion`.

    Refused (PromotionConflictError) when the champion itself came from a rollback, unless `again`.
    """
    with store.registry_lock(name) as connection:
        prior, current = _rollback_target(tracker, store, name, again, connection)
        return _move(
            tracker,
            store,
            connection,
            name,
            prior,
            current,
            symbol=symbol,
            timeframe=timeframe,
            action="rollback",
            decided_by=decided_by,
            reason=reason,
            dagster_run_id=dagster_run_id,
        )


def check_rollback(tracker: Tracker, store: TradingStore, name: str, again: bool = False) -> str:
    """The version a rollback of `name` would restore, or the PromotionError /
    PromotionConflictError it would be refused with (checked before launching the rollback run)."""
    with store.registry_lock(name) as connection:
        return _rollback_target(tracker, store, name, again, connection)[0]


def _rollback_target(
    tracker: Tracker, store: TradingStore, name: str, again: bool, connection: sa.Connection
) -> tuple[str, str | None]:
    """(prior champion to restore, current champion), or the refusal."""
    aliases = tracker.aliases(name)
    prior, current = aliases.get(ALIAS_PRIOR_CHAMPION), aliases.get(ALIAS_CHAMPION)
    if not prior or prior == current:
        raise PromotionError(
            f"{name} has no prior_champion to roll back to (aliases: {_aliases_text(aliases)})"
        )
    last = store.last_move(name, connection)
    if (
        not again
        and last is not None
        and last["action"] == "rollback"
        and last["version"] == current
    ):
        raise PromotionConflictError(
            f"{name}: v{current} is champion because of a rollback (promotion_log #{last['id']}, "
            f"from v{last['prior_version']}); rolling back again would re-instate "
            f"v{prior}, the version rolled back from. Pass --again to do that, or promote a "
            "specific version with `quant-assets promote --version`"
        )
    return prior, current


def registry_disagreements(tracker: Tracker, store: TradingStore, name: str) -> list[str]:
    """Where promotion_log and the registry aliases of model `name` disagree (empty: they agree).

    Checked under the registry lock: each moving row's prior_version is the version the row before
    made champion; the last row's version is the `champion` alias and its prior_version the
    `prior_champion` alias; a champion alias has a log row behind it.
    """
    with store.registry_lock(name) as connection:
        aliases = tracker.aliases(name)
        log = promotion_log.c
        query = (
            sa.select(log.id, log.version, log.prior_version)
            .where(log.model_name == name, log.action.in_(MOVING_ACTIONS))
            .order_by(log.id)
        )
        rows = [dict(r) for r in connection.execute(query).mappings()]
    problems = []
    for before, row in zip(rows, rows[1:], strict=False):
        if row["prior_version"] != before["version"]:
            problems.append(
                f"{name}: promotion_log #{row['id']} (v{row['version']}) gives the prior champion "
                f"as {_v(row['prior_version'])}, but #{before['id']} had made "
                f"v{before['version']} champion"
            )
    champion, prior = aliases.get(ALIAS_CHAMPION), aliases.get(ALIAS_PRIOR_CHAMPION)
    if not rows:
        if champion:
            problems.append(f"{name}: champion alias v{champion} has no promotion_log row")
        return problems
    last = rows[-1]
    if champion != last["version"]:
        problems.append(
            f"{name}: champion alias is {_v(champion)}, but promotion_log #{last['id']} made "
            f"v{last['version']} champion"
        )
    if last["prior_version"] is not None and prior != last["prior_version"]:
        problems.append(
            f"{name}: prior_champion alias is {_v(prior)}, but promotion_log #{last['id']} "
            f"recorded v{last['prior_version']} as the prior champion"
        )
    return problems


def model_exists(tracker: Tracker, name: str) -> bool:
    """Whether `name` is a registered model."""
    from mlflow.exceptions import MlflowException

    try:
        tracker.client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def champion_model_names(tracker: Tracker) -> list[str]:
    """Registered models that have a `champion` or `prior_champion` alias."""
    names, token = [], None
    while True:
        page = tracker.client.search_registered_models(max_results=200, page_token=token)
        names += [m.name for m in page]
        token = page.token
        if not token:
            break
    return sorted(
        n for n in names if {ALIAS_CHAMPION, ALIAS_PRIOR_CHAMPION} & set(tracker.aliases(n))
    )


def logged_model_names(store: TradingStore) -> list[str]:
    """Registered model names with a champion move in promotion_log."""
    history = store.promotion_history()
    moved = history.filter(history["action"].is_in(list(MOVING_ACTIONS)))
    return sorted(set(moved["model_name"].to_list()))


def _move(
    tracker: Tracker,
    store: TradingStore,
    connection: sa.Connection,
    name: str,
    version: str,
    previous: str | None,
    *,
    symbol: str,
    timeframe: str,
    action: str,
    decided_by: str,
    reason: str,
    gates: Mapping[str, object] | None = None,
    dagster_run_id: str | None = None,
) -> dict[str, object]:
    if previous:
        tracker.set_alias(name, ALIAS_PRIOR_CHAMPION, previous)
    tracker.set_alias(name, ALIAS_CHAMPION, version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    # the version's `decision` is what happened to it; a gate verdict it overrides is kept
    gates_said = tracker.version_tags(name, version).get("decision")
    tracker.set_version_tags(
        name,
        version,
        {
            "decision": action,
            **({"gates.decision": gates_said} if gates_said and gates_said != action else {}),
            "promotion.decision": action,
            "promotion.decided_by": decided_by,
            "promotion.reason": reason,
            "promotion.time": stamp,
            "promotion.dagster_run_id": dagster_run_id or "",
            "promotion.prior_champion": previous or "none",
        },
    )
    store.log_promotion(
        model_name=name,
        symbol=symbol,
        timeframe=timeframe,
        version=version,
        prior_version=previous,
        action=action,
        decided_by=decided_by,
        reason=reason,
        gates=gates,
        dagster_run_id=dagster_run_id,
        connection=connection,
    )
    # the SQL version catalog follows the registry in the same transaction (lib/catalog.py)
    sync_catalog(tracker, store, name, connection)
    verb = "rolled back to" if action == "rollback" else "champion is now"
    return {
        "model_name": name,
        "champion": version,
        "prior_champion": previous,
        "time": stamp,
        "changed": True,
        "message": f"{name}: {verb} v{version} (prior champion: {_v(previous)}); logged",
    }


def require_version(tracker: Tracker, name: str, version: str) -> None:
    try:
        tracker.client.get_model_version(name, version)
    except Exception as exc:  # MlflowException: the registry says what is missing
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PromotionError(f"{name} has no version {version}: {detail}") from None


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def _aliases_text(aliases: dict[str, str]) -> str:
    return ", ".join(f"{k}=v{v}" for k, v in sorted(aliases.items())) or "none"
