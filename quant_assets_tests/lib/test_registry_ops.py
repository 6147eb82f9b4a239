"""Promotion, rollback and promotion_log as one consistent step: no-op promotions, refused double
rollbacks, `doctor`, concurrent promoters on SQLite and PostgreSQL stores, and the CLI's requests."""

from __future__ import annotations

import contextlib
import random
import threading
from pathlib import Path

import pytest

from quant_assets.cli import main
from quant_assets.lib.errors import PromotionConflictError
from quant_assets.lib.registry_ops import (
    PromotionError,
    champion_model_names,
    logged_model_names,
    promote_version,
    registry_disagreements,
    rollback_champion,
)
from quant_assets.lib.stores import MOVING_ACTIONS, TradingStore, sql_url_for
from quant_assets.lib.tracking import Tracker
from quant_assets_tests.services import temporary_postgres_database

NAME = "direction.BTCUSDT.4h"
WHERE = {"symbol": "BTCUSDT", "timeframe": "4h"}


def register_versions(tracker: Tracker, name: str, count: int) -> list[str]:
    """`count` registered versions of `name` (registry entries only: promotion never loads them)."""
    tracker.client.create_registered_model(name)
    return [
        tracker.client.create_model_version(name, source="/nonexistent/model").version
        for _ in range(count)
    ]


def promote(tracker: Tracker, store: TradingStore, version: str, name: str = NAME) -> dict:
    return promote_version(
        tracker,
        store,
        name,
        version,
        action="manual_promote",
        decided_by="cli",
        reason="test",
        **WHERE,
    )


@pytest.fixture
def registry(mlflow_uri: str, project_dir: Path) -> tuple[Tracker, TradingStore]:
    tracker = Tracker(mlflow_uri)
    register_versions(tracker, NAME, 3)
    return tracker, TradingStore(sql_url_for("", project_dir / "artifacts"))


def moves(store: TradingStore, name: str = NAME) -> list[tuple[str, str | None, str]]:
    log = store.promotion_history(name)
    log = log.filter(log["action"].is_in(list(MOVING_ACTIONS)))
    return list(zip(log["version"], log["prior_version"], log["action"], strict=True))


def test_promote_rollback_and_their_log(registry) -> None:
    tracker, store = registry
    assert promote(tracker, store, "1")["changed"] is True
    second = promote(tracker, store, "2")
    assert second["message"] == f"{NAME}: champion is now v2 (prior champion: v1); logged"
    assert tracker.aliases(NAME) == {"champion": "2", "prior_champion": "1"}

    # promoting the champion again changes nothing and logs nothing
    same = promote(tracker, store, "2")
    assert same["changed"] is False
    assert same["message"] == f"{NAME}: v2 already is the champion; nothing changed"
    assert moves(store) == [("1", None, "manual_promote"), ("2", "1", "manual_promote")]

    back = rollback_champion(tracker, store, NAME, reason="bad fills", **WHERE)
    assert back["message"] == f"{NAME}: rolled back to v1 (prior champion: v2); logged"
    assert tracker.aliases(NAME) == {"champion": "1", "prior_champion": "2"}
    # rolling back the rollback is refused unless asked for
    with pytest.raises(PromotionConflictError, match=r"v1 is champion because of a rollback"):
        rollback_champion(tracker, store, NAME, reason="again", **WHERE)
    rollback_champion(tracker, store, NAME, reason="again", again=True, **WHERE)
    assert tracker.aliases(NAME) == {"champion": "2", "prior_champion": "1"}
    assert moves(store)[-2:] == [("1", "2", "rollback"), ("2", "1", "rollback")]
    assert registry_disagreements(tracker, store, NAME) == []

    with pytest.raises(PromotionError, match=f"{NAME} has no version 9"):
        promote(tracker, store, "9")
    fresh = "direction.SPY.1d"
    register_versions(tracker, fresh, 1)
    with pytest.raises(PromotionError, match="has no prior_champion to roll back to"):
        rollback_champion(tracker, store, fresh, reason="x", symbol="SPY", timeframe="1d")


def test_doctor_reports_aliases_moved_behind_the_log(registry, capsys) -> None:
    tracker, store = registry
    promote(tracker, store, "1")
    promote(tracker, store, "2")
    assert main(["doctor"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{NAME}: ok",
        "1 model(s) checked: promotion_log agrees with the registry aliases",
    ]
    # moved by hand in the MLflow UI: neither alias matches the log any more
    tracker.set_alias(NAME, "champion", "3")
    tracker.delete_alias(NAME, "prior_champion")
    other = "direction.ETHUSDT.1h"
    register_versions(tracker, other, 1)
    tracker.set_alias(other, "champion", "1")
    assert champion_model_names(tracker) == [NAME, other]
    assert logged_model_names(store) == [NAME]
    assert main(["doctor"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{NAME}: champion alias is v3, but promotion_log #2 made v2 champion",
        f"{NAME}: prior_champion alias is none, but promotion_log #2 recorded v1 as the prior "
        "champion",
        f"{other}: champion alias v1 has no promotion_log row",
        "2 model(s) checked: 3 disagreement(s) between promotion_log and the registry",
    ]
    # a log that does not chain (a row written around the lock)
    store.log_promotion(
        model_name=NAME,
        version="1",
        prior_version="1",
        action="rollback",
        decided_by="cli",
        **WHERE,
    )
    assert registry_disagreements(tracker, store, NAME)[0] == (
        f"{NAME}: promotion_log #3 (v1) gives the prior champion as v1, but #2 had made v2 champion"
    )


def race(tracker_uri: str, store_url: str, name: str, versions: list[str]) -> None:
    """Four threads, each with its own tracker and store (as separate processes would have),
    promoting and rolling back at random; afterwards the log chains and ends at the aliases."""
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        tracker, store = Tracker(tracker_uri), TradingStore(store_url)
        try:
            for _ in range(6):
                if rng.random() < 0.4:
                    with contextlib.suppress(PromotionError):  # nothing to roll back to yet
                        rollback_champion(
                            tracker, store, name, reason=f"t{seed}", again=True, **WHERE
                        )
                else:
                    promote(tracker, store, rng.choice(versions), name)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            store.dispose()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    tracker, store = Tracker(tracker_uri), TradingStore(store_url)
    logged = moves(store, name)
    assert len(logged) >= 6
    for (before, _, _), (_, prior, _) in zip(logged, logged[1:], strict=False):
        assert prior == before
    assert registry_disagreements(tracker, store, name) == []
    aliases = tracker.aliases(name)
    assert (aliases["champion"], aliases.get("prior_champion")) == logged[-1][:2]


def test_concurrent_promotions_and_rollbacks_on_sqlite(registry, mlflow_uri, project_dir) -> None:
    tracker, store = registry
    race(mlflow_uri, store.url, NAME, ["1", "2", "3"])


@pytest.mark.postgres
def test_concurrent_promotions_and_rollbacks_on_postgres(mlflow_uri) -> None:
    tracker = Tracker(mlflow_uri)
    versions = register_versions(tracker, NAME, 3)
    with temporary_postgres_database("qa_test_promotions") as url:
        race(mlflow_uri, sql_url_for(url, Path(".")), NAME, versions)


def test_cli_names_the_unregistered_symbol_and_the_unknown_timeframe(
    registry, instance, capsys
) -> None:
    from quant_assets.defs.partitions import SYMBOL_PARTITIONS_NAME

    instance.add_dynamic_partitions(SYMBOL_PARTITIONS_NAME, ["BTCUSDT"])
    assert main(["promote", "NOPE", "4h"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: symbol NOPE is not registered (registered: BTCUSDT); "
        "there is no model direction.NOPE.4h"
    )
    assert main(["promote", "BTCUSDT", "5m"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: timeframe 5m is not one of the configured timeframes (1h, 4h, 1d); "
        "there is no model direction.BTCUSDT.5m"
    )
    assert main(["rollback", "BTCUSDT", "2w"]) == 2
    assert "unknown timeframe '2w'" in capsys.readouterr().err
    assert main(["promote", "BTC USDT", "4h"]) == 2
    assert "contains ' ' at position 3" in capsys.readouterr().err

    # a move the CLI makes is a run of `champion` (tested end to end in
    # integration/test_ui_story.py); requests it refuses or that change nothing need no run
    tracker, store = registry
    assert main(["promote", "BTCUSDT", "4h", "--version", "9"]) == 2
    assert "has no version 9" in capsys.readouterr().err
    promote(tracker, store, "2")
    assert main(["promote", "BTCUSDT", "4h", "--version", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{NAME}: v2 already is the champion; nothing changed"
    promote(tracker, store, "3")
    rollback_champion(tracker, store, NAME, reason="test", **WHERE)
    assert main(["rollback", "BTCUSDT", "4h"]) == 2
    assert "Pass --again to do that" in capsys.readouterr().err
    assert main(["doctor"]) == 0
