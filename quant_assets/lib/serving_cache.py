"""A local disk cache of the champions bar-close serving loads, so a fresh process (one per
scheduled run) does not download and verify every model from MLflow again.

An entry holds only data, never code (no pickle): a LightGBM booster as its model string, an
XGBoost classifier as its JSON, the calibrator as its dict, the feature list and the version's
tags (decision thresholds), a GARCH volatility model as its parameters. Models of other types
(scikit-learn, cloudpickle) are not cached. One file per registered name,
`<artifacts>/serving_cache/<name>.json`: a header line (format, SHA-256 of the body) and the body
(JSON: the entry's key and the model). An entry is written after the version was loaded from
MLflow and verified against the artifact hash recorded at registration, and is used only when
its key equals the champion the SQL catalog names (registered name, version, artifact URI and
registration time: a version deleted and registered again gets another time); a body whose hash
differs (corrupted, edited) is ignored with a warning and reloaded from MLflow. Files are
replaced atomically (lib/storage.py), so a concurrent reader sees an old or a new entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quant_assets.lib.storage import safe_artifact_path, write_atomic

CACHE_FOLDER = "serving_cache"
CACHE_FORMAT = 1
#: model types whose servable parts are data (a model string, JSON); others are not cached
CACHED_MODEL_TYPES = ("lightgbm", "xgboost")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogVersion:
    """A version as the SQL catalog (agent_versions) names it: what a cache entry must match."""

    name: str
    version: str
    id: int
    artifact_uri: str
    registered_at: str  # ISO time of the registration in MLflow ("" when unknown)


@dataclass(frozen=True)
class EntryKey:
    """What a cache entry was loaded from: the catalog's version and the artifact hash recorded at
    registration (tag artifact_sha256) that the MLflow load verified."""

    name: str
    version: str
    artifact_uri: str
    registered_at: str
    artifact_sha256: str

    def matches(self, champion: CatalogVersion) -> bool:
        return (self.name, self.version, self.artifact_uri, self.registered_at) == (
            champion.name,
            champion.version,
            champion.artifact_uri,
            champion.registered_at,
        )


class ServingCache:
    """Champions' servable parts under `folder`, one verified JSON file per registered name."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    @classmethod
    def under(cls, artifacts_root: str | os.PathLike[str]) -> ServingCache:
        """The cache of an artifacts root (`<root>/serving_cache`)."""
        return cls(Path(artifacts_root) / CACHE_FOLDER)

    def path(self, name: str) -> Path:
        return safe_artifact_path(self.folder, f"{name}.json")

    def load(self, champion: CatalogVersion, kind: str) -> Any | None:
        """The cached model of `champion` (a LoadedModel for kind "direction", a GarchForecaster
        for "volatility"), or None when there is no entry for this version or it fails its
        hash check (with a warning)."""
        path = self.path(champion.name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        header, _, body = raw.partition(b"\n")
        try:
            meta = json.loads(header)
            if meta.get("format") != CACHE_FORMAT:
                return None
            if hashlib.sha256(body).hexdigest() != meta.get("sha256"):
                log.warning(
                    "serving cache entry %s does not match its content hash (corrupted or "
                    "edited); ignored, the model is loaded from MLflow",
                    path,
                )
                return None
            entry = json.loads(body)
            if entry["kind"] != kind or not EntryKey(**entry["key"]).matches(champion):
                return None  # another version (a promotion or rollback since)
            return _model_from_entry(entry)
        except (ValueError, KeyError, TypeError) as error:
            log.warning("serving cache entry %s is unreadable (%s); ignored", path, error)
            return None

    def store(self, champion: CatalogVersion, kind: str, model: Any, artifact_sha256: str) -> bool:
        """Write the entry of a model just loaded and verified from MLflow (atomically); False
        when its type is not cached."""
        payload = _entry_model(kind, model)
        if payload is None:
            return False
        key = EntryKey(
            champion.name,
            champion.version,
            champion.artifact_uri,
            champion.registered_at,
            artifact_sha256,
        )
        body = json.dumps(
            {"key": asdict(key), "kind": kind, "model": payload}, sort_keys=True
        ).encode()
        header = json.dumps({"format": CACHE_FORMAT, "sha256": hashlib.sha256(body).hexdigest()})
        write_atomic(
            self.path(champion.name), lambda handle: handle.write(header.encode() + b"\n" + body)
        )
        return True


def _entry_model(kind: str, model: Any) -> dict[str, Any] | None:
    if kind == "volatility":
        return model.to_dict()
    if model.model_type not in CACHED_MODEL_TYPES:
        return None
    if model.model_type == "lightgbm":
        serialized = model.model.model_to_string()
    else:  # XGBoost's JSON, as the classifier saves it (with its scikit-learn attributes)
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "model.json"
            model.model.save_model(file)
            serialized = file.read_text()
    return {
        "name": model.name,
        "version": model.version,
        "run_id": model.run_id,
        "model_type": model.model_type,
        "model": serialized,
        "calibrator": model.calibrator.to_dict() if model.calibrator is not None else None,
        "feature_columns": list(model.feature_columns),
        "tags": dict(model.tags),
    }


def _model_from_entry(entry: dict[str, Any]) -> Any:
    data = entry["model"]
    if entry["kind"] == "volatility":
        from quant_assets.lib.volatility import GarchForecaster

        return GarchForecaster.from_dict(data)
    from quant_assets.lib.calibration import Calibrator
    from quant_assets.lib.tracking import LoadedModel

    if data["model_type"] == "lightgbm":
        import lightgbm

        booster = lightgbm.Booster(model_str=data["model"])
    elif data["model_type"] == "xgboost":
        import xgboost

        booster = xgboost.XGBClassifier()
        booster.load_model(bytearray(data["model"].encode()))
    else:
        raise ValueError(f"model type {data['model_type']!r} is not cached")
    calibrator = Calibrator.from_dict(data["calibrator"]) if data["calibrator"] else None
    return LoadedModel(
        data["name"],
        data["version"],
        data["run_id"],
        data["model_type"],
        booster,
        calibrator,
        list(data["feature_columns"]),
        dict(data["tags"]),
    )
