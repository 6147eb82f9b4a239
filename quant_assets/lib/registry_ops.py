"""Moving the `champion` alias, with the audit trail MLflow does not keep: version tags and an
append-only promotion_log row for every decision (gates, manual promotion, rollback)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from quant_assets.lib.errors import QuantAssetsError
from quant_assets.lib.stores import TradingStore
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
) -> dict[str, str | None]:
    """Make `version` the champion, keep the previous champion as `prior_champion`, tag and log it."""
    version = str(version)
    try:
        tracker.client.get_model_version(name, version)
    except Exception as exc:  # MlflowException: the registry says what is missing
        raise PromotionError(f"{name} has no version {version}: {exc}") from exc
    previous = tracker.aliases(name).get(ALIAS_CHAMPION)
    if previous and previous != version:
        tracker.set_alias(name, ALIAS_PRIOR_CHAMPION, previous)
    tracker.set_alias(name, ALIAS_CHAMPION, version)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    tracker.set_version_tags(
        name,
        version,
        {
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
    )
    return {"model_name": name, "champion": version, "prior_champion": previous, "time": stamp}


def rollback_champion(
    tracker: Tracker, store: TradingStore, name: str, *, symbol: str, timeframe: str, reason: str
) -> dict[str, str | None]:
    """Restore `prior_champion` as champion; the version rolled back from becomes `prior_champion`."""
    aliases = tracker.aliases(name)
    prior = aliases.get(ALIAS_PRIOR_CHAMPION)
    if not prior:
        raise PromotionError(
            f"{name} has no prior_champion to roll back to (aliases: {aliases or 'none'})"
        )
    return promote_version(
        tracker,
        store,
        name,
        prior,
        symbol=symbol,
        timeframe=timeframe,
        action="rollback",
        decided_by="cli",
        reason=reason,
    )
