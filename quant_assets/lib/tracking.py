"""MLflow as the system of record: tracking-store preparation, runs, model logging and the registry.

No dagster here; `defs/resources.py` wraps `Tracker` in a ConfigurableResource. Model logging always
passes explicit pip requirements: letting MLflow infer them starts a subprocess per model (~3 s).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import posixpath
import sqlite3
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from quant_assets.lib.masking import mask_secrets
from quant_assets.lib.sqlite_pragmas import synchronous_normal_in_wal

ALIAS_CHALLENGER = "challenger"
#: descriptions of the experiments (one per Dagster asset that logs runs), shown in the MLflow UI
EXPERIMENT_DESCRIPTIONS: dict[str, str] = {
    "challenger_model": "One run per training of a symbol|timeframe direction model "
    "(`challenger_model` asset): purged cross-validation, out-of-fold calibration, hold-out "
    "metrics, model card; the model is registered as `direction.<SYMBOL>.<tf>`.",
    "global_challenger_model": "One run per training of a timeframe's global model over every "
    "symbol (`global_challenger_model`), registered as `direction_global.<tf>`.",
    "champion_challenger_evaluation": "Champion and challenger on the same hold-out and "
    "backtest, with the promotion gates' results (`champion_challenger_evaluation`).",
    "meta_learner": "Per-regime meta-learners (`meta_learner`), registered as "
    "`meta.<SYMBOL>.<tf>.<regime>`.",
    "meta_filter": "Meta-labelling filter of the primary strategies' trades (`meta_filter`).",
    "ensemble_signals": "Ensemble against primaries and the champion on the hold-out "
    "(`ensemble_signals`); served when it passes the promotion gates.",
    "model_report": "Daily and weekly reports of model health and trading (`model_report`).",
}
ALIAS_CHAMPION = "champion"
ALIAS_PRIOR_CHAMPION = "prior_champion"
#: model-version tag holding the SHA-256 of the model's artifact files, recorded at registration
ARTIFACT_HASH_TAG = "artifact_sha256"


# written by MLflow's client into a `models:/name/version` download, not stored with the model
_DOWNLOAD_ONLY_FILES = frozenset({"registered_model_meta"})


def directory_digest(path: str | Path) -> str:
    """SHA-256 over every file under `path` (except the files MLflow's client adds to a download):
    its relative name, size and bytes, in name order."""
    import hashlib

    root = Path(path)
    digest = hashlib.sha256()
    files = (p for p in root.rglob("*") if p.is_file() and p.name not in _DOWNLOAD_ONLY_FILES)
    for file in sorted(files):
        data = file.read_bytes()
        digest.update(f"{file.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def verify_model_artifact(name: str, version: str, recorded: str | None, local: str | Path) -> None:
    """ModelIntegrityError when the artifact files at `local` do not hash to `recorded` (versions
    registered before hashes were recorded have none and are not checked)."""
    from quant_assets.lib.errors import ModelIntegrityError

    if not recorded:
        return
    actual = directory_digest(local)
    if actual != recorded:
        raise ModelIntegrityError(
            f"{name} v{version}: the model artifact's SHA-256 is {actual[:16]}..., but "
            f"{recorded[:16]}... was recorded at registration (tag {ARTIFACT_HASH_TAG}); the "
            "stored model was changed or corrupted after it was registered and is not loaded"
        )


def pip_requirements(model_type: str = "lightgbm") -> list[str]:
    """What a loaded model needs, pinned to the versions that trained it (XGBoost is installed
    from the `xgboost-cpu` distribution here; a loader may use either)."""
    return list(_pinned_requirements(model_type == "xgboost"))


@functools.cache
def _pinned_requirements(with_xgboost: bool) -> tuple[str, ...]:
    """Read once per process: each `importlib.metadata.version` parses a METADATA file (a few ms,
    for every model a worker logs), and the versions a process trains with are those it loaded."""
    packages = ("lightgbm", "scikit-learn", "numpy", "pandas", "scipy")
    pinned = [f"{p}=={version(p)}" for p in packages]
    if with_xgboost:
        import xgboost

        pinned.append(f"xgboost=={xgboost.__version__}")
    return tuple(pinned)


@functools.cache
def _check_requirements_once() -> None:
    """MLflow checks a model's pip requirements against the installed packages at every
    `log_model` (an `importlib.metadata` lookup per requirement: about 5 ms a model, 1 % of a
    pipeline's CPU). The requirements logged here are read from the installed versions
    (`_pinned_requirements`), so a process checks each distinct list once: the warning MLflow
    prints for a mismatch still appears, once. A no-op when MLflow no longer has the function."""
    import mlflow.utils.environment as environment

    check = getattr(environment, "warn_dependency_requirement_mismatches", None)
    if check is None:
        return
    checked: set[tuple[str, ...]] = set()

    def once(requirements: list[str]) -> None:
        key = tuple(requirements)
        if key not in checked:
            checked.add(key)
            check(requirements)

    environment.warn_dependency_requirement_mismatches = once


#: what MLflow's SQL stores execute on SQLite at the start of every session
#: (`mlflow.store.db.utils._get_managed_session_maker`): connection settings, run here once per
#: connection instead (`_pragmas_per_connection`)
SQLITE_SESSION_PRAGMAS = (
    "PRAGMA foreign_keys = ON",
    "PRAGMA busy_timeout = 20000",
    "PRAGMA case_sensitive_like = true",
)


def _pragmas_per_connection(store: Any) -> None:
    """Make a SQLite-backed MLflow store set its connection PRAGMAs when a connection opens, not
    in every session, and commit with `synchronous=NORMAL` (the store is in WAL mode,
    `prepare_tracking_store`; `lib/sqlite_pragmas`).

    MLflow runs three PRAGMA statements at the start of each of its sessions: about 50 sessions
    and 150 of the 170 SQL statements per model a step logs and registers, for settings that
    belong to the connection and stay on it (pooled connections are reused). The sessions keep
    MLflow's own commit, rollback and error translation (its session factory, told the database
    is not SQLite so that it skips the PRAGMAs). With SQLite's default `synchronous=FULL` each
    commit also waits for a disk sync, stalling the step and the other worker waiting for the
    write lock; in WAL mode NORMAL cannot corrupt the database, and a power loss (not a killed
    process) may lose the last transactions (as for Dagster's SQLite storage,
    `defs/storage.py`). Once per store object (MLflow keeps one per URI and process); stores on
    other databases, or with a read replica, are left as they are."""
    if getattr(store, "_quant_assets_pragmas", False) or getattr(store, "db_type", "") != "sqlite":
        return
    if getattr(store, "read_engine", None) is not None:
        return
    import sqlalchemy.orm
    from mlflow.store.db.utils import _get_managed_session_maker
    from sqlalchemy import event

    engine = store.engine
    if not event.contains(engine, "connect", _connection_pragmas):
        event.listen(engine, "connect", _connection_pragmas)
        engine.dispose()  # connections opened before the listener close; new ones get it
    store.ManagedSessionMaker = _get_managed_session_maker(
        sqlalchemy.orm.sessionmaker(bind=engine), "sqlite (PRAGMAs per connection)"
    )
    store._quant_assets_pragmas = True


def _connection_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for statement in SQLITE_SESSION_PRAGMAS:
            cursor.execute(statement)
    finally:
        cursor.close()
    synchronous_normal_in_wal(dbapi_connection)


def registered_model_name(symbol: str, timeframe: str, kind: str = "direction") -> str:
    """`direction.BTCUSDT.1h` per partition; `direction_global.1h` for a timeframe's global model."""
    return f"{kind}.{symbol}.{timeframe}" if symbol else f"{kind}.{timeframe}"


def sqlite_path(tracking_uri: str) -> Path | None:
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///"))
    return None


@functools.cache
def _mlflow_version() -> str:
    """The installed MLflow's version, read once per process (importlib.metadata reads the
    package's metadata files at every call; every tracker asked for it)."""
    from importlib.metadata import version

    return version("mlflow")


def prepare_tracking_store(tracking_uri: str) -> None:
    """Create a SQLite store once, whichever process gets there first, and switch it to WAL.

    Two processes creating the same fresh store at once fail (`table ... already exists`): the
    first creates it (MLflow's migrations) under a file lock beside it and leaves a marker naming
    the MLflow version; every later call sees the marker and returns at once. WAL lets readers and
    one writer proceed together; with MLflow's busy timeout, parallel training steps then queue for
    the write lock instead of failing with "database is locked". The journal mode is stored in the
    database file, so doing this once is enough.
    """
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    marker = path.parent / f".{path.name}.created-by-mlflow-{_mlflow_version()}"
    if path.exists() and marker.exists():
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / ".create.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and marker.exists():
            return
        with sqlite3.connect(path, timeout=60) as connection:
            mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
            if mode.lower() != "wal":
                connection.execute("PRAGMA journal_mode=WAL")
        import mlflow

        # the tracking store creates (or checks) the schema, registry tables included
        mlflow.MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
        marker.touch()


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store live beside it; a server decides for itself (None)."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    return (path.parent / "artifacts" / experiment).resolve().as_uri()


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit (with `-dirty` when the tree has changes), or `unknown`: read once
    per directory and process. A process runs the code it imported, which later commits or edits
    do not change (a run worker or code server started after them runs them), so the first reading
    stands for the process's runs. It was two git processes per MLflow run: about six per
    partition, 1-2 % of the pipeline's CPU."""
    return _git_commit(str(Path(cwd).resolve()) if cwd is not None else None)


@functools.lru_cache(maxsize=16)
def _git_commit(cwd: str | None) -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class VersionSummary:
    """A registered version as `Tracker.versions` lists it."""

    version: str
    source: str | None
    run_id: str | None
    creation_timestamp: int | None
    """Milliseconds since the epoch, as MLflow stores it."""


@dataclass(frozen=True)
class _VersionRecord:
    """A registered version as `Tracker.load_model` reads it."""

    run_id: str
    location: str
    tags: dict[str, str]
    artifact_uri: str
    run_model_type: str | None


@dataclass(frozen=True)
class LoadedModel:
    """A registered version ready to score: the model, its calibrator and its feature list."""

    name: str
    version: str
    run_id: str
    model_type: str
    model: Any
    calibrator: Any  # quant_assets.lib.calibration.Calibrator | None
    feature_columns: list[str]
    tags: dict[str, str]

    @property
    def decision_threshold(self) -> float | None:
        """The long threshold chosen on this model's out-of-fold predictions, if recorded."""
        value = self.tags.get("decision_threshold")
        return float(value) if value else None

    @property
    def decision_threshold_short(self) -> float | None:
        """The short threshold chosen on this model's out-of-fold predictions (tag
        `decision_threshold_short`); None when none showed a downside edge (no shorts)."""
        value = self.tags.get("decision_threshold_short")
        return float(value) if value else None

    def predict_proba(self, frame: Any) -> np.ndarray:
        """Calibrated probability of the positive class for each row of a polars frame."""
        import polars as pl

        missing = [c for c in self.feature_columns if c not in frame.columns]
        if missing:
            raise KeyError(f"{self.name} v{self.version} needs feature columns {missing}")
        return self.predict_matrix(
            frame.select(pl.col(self.feature_columns).cast(pl.Float64)).to_numpy()
        )

    def predict_matrix(self, X: np.ndarray) -> np.ndarray:
        """predict_proba of a float feature matrix whose columns are `feature_columns`, in order
        (bar-close serving scores many symbols' rows without a frame per model)."""
        from quant_assets.lib.metrics import up_probability

        # a multi-class model's positive class is "up": its classes above the middle one
        if self.model_type == "lightgbm":
            # one thread: scoring a few rows at a bar close, OpenMP's thread start-up costs more
            # than the trees (about 15 ms a call on a loaded 2-core machine)
            raw = up_probability(self.model.predict(X, num_threads=1))
        else:
            raw = up_probability(self.model.predict_proba(X), self.model.classes_)
        return self.calibrator.predict(raw) if self.calibrator is not None else raw


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    model_uri: str


class Tracker:
    """A thin, explicit wrapper over MlflowClient and the model flavours we log."""

    def __init__(self, tracking_uri: str, ui_url: str = "") -> None:
        """`ui_url`: base URL of the MLflow UI for links; empty = the tracking URI when it is a
        server, else `mlflow ui`'s default address."""
        import mlflow

        # MLflow prints registration notices and a pip-version warning per model at INFO/WARNING
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        prepare_tracking_store(tracking_uri)
        self.tracking_uri = tracking_uri
        if not ui_url and tracking_uri.startswith(("http://", "https://")):
            ui_url = tracking_uri
        self.ui_url = (ui_url or "http://127.0.0.1:5000").rstrip("/")
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if sqlite_path(tracking_uri) is not None:
            _pragmas_per_connection(self.client._tracking_client.store)
            _pragmas_per_connection(self.client._get_registry_client().store)
        #: metrics of the runs opened by `run`, written when a model is logged (linked to it, as
        #: MLflow links the metrics a run holds when its model is logged) or when the run ends
        self._pending_metrics: dict[str, dict[int, dict[str, float]]] = {}
        #: experiment id of each run opened by `run` (for its URL)
        self._run_experiments: dict[str, str] = {}
        #: experiment ids by name, looked up once per tracker (a step's batch opens a run per
        #: partition, meta-learners one per regime)
        self._experiment_ids: dict[str, str] = {}
        #: artifact repository of each run open in `run`, from the run `start_run` returned: the
        #: client resolves a run's repository by reading the whole run back (every parameter,
        #: tag, dataset and model input and output) at the run's first artifact
        self._run_repos: dict[str, Any] = {}

    def experiment_id(self, name: str) -> str:
        if name not in self._experiment_ids:
            self._experiment_ids[name] = self._experiment_id(name)
        return self._experiment_ids[name]

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(
                name,
                artifact_location=default_artifact_location(self.tracking_uri, name),
                # the description the MLflow UI shows above the runs, and what produced them
                tags={
                    "mlflow.note.content": EXPERIMENT_DESCRIPTIONS.get(
                        name, f"Runs of the Dagster asset `{name}` (quant-assets)."
                    ),
                    "dagster.asset_key": name,
                    "project": "quant-assets",
                },
            )
        except MlflowException:  # created meanwhile by a parallel step
            return self.client.get_experiment_by_name(name).experiment_id

    def describe_registered_model(
        self, name: str, description: str, tags: dict[str, str] | None = None
    ) -> None:
        """The registered model's description and tags (symbol, timeframe, kind) in the registry;
        only what differs is written. On a SQL store, one transaction reading the model's row and
        tags (MLflow's client reads the whole registered model, versions included, once per call
        and again per tag to check it is not a prompt)."""
        wanted = {key: str(value) for key, value in (tags or {}).items()}
        store = self._sql_registry()
        if store is None:  # a tracking server
            current = self.client.get_registered_model(name)
            if current.description != description:
                self.client.update_registered_model(name, description=description)
            for key, value in wanted.items():
                if current.tags.get(key) != value:
                    self.client.set_registered_model_tag(name, key, value)
            return
        from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelTag
        from mlflow.utils.time import get_current_time_millis
        from mlflow.utils.validation import _validate_registered_model_tag

        for key, value in wanted.items():
            _validate_registered_model_tag(key, value)
        with store.ManagedSessionMaker(read_only=False) as session:
            row = store._get_registered_model(session, name)
            current = {tag.key: tag.value for tag in row.registered_model_tags}
            if row.description != description:
                row.description = description
                row.last_updated_time = get_current_time_millis()
            for key, value in wanted.items():
                if current.get(key) != value:
                    session.merge(
                        SqlRegisteredModelTag(
                            workspace=row.workspace, name=name, key=key, value=value
                        )
                    )

    def describe_run(self, run_id: str, text: str) -> None:
        """The run's description (markdown) in the MLflow UI."""
        self.client.set_tag(run_id, "mlflow.note.content", text)

    def log_dataset(
        self, run_id: str, path: str | Path, name: str, digest: str, columns: dict[str, str]
    ) -> None:
        """Record the Parquet file a run trained on as the run's input dataset: its location, its
        data version (digest) and its columns, without copying the data."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.types.schema import ColSpec, Schema

        def spec(column: str, dtype: str) -> ColSpec:
            kind = dtype.lower()
            if kind.startswith(("float", "decimal")):
                return ColSpec("double", column)
            if kind.startswith(("int", "uint")):
                return ColSpec("long", column)
            if kind.startswith("bool"):
                return ColSpec("boolean", column)
            if kind.startswith("datetime"):
                return ColSpec("datetime", column)
            return ColSpec("string", column)

        with warnings.catch_warnings():  # MLflow registers two local sources that both match
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(Path(path).resolve().as_uri())
        dataset = MetaDataset(
            source=source,
            name=name,
            digest=digest[:36],
            schema=Schema([spec(c, t) for c, t in columns.items()]),
        )
        self.client.log_inputs(
            run_id,
            [
                DatasetInput(
                    dataset._to_mlflow_entity(),
                    tags=[InputTag("mlflow.data.context", "training")],
                )
            ],
        )

    @contextmanager
    def run(self, experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[str]:
        """An active MLflow run (fluent API, so model flavours log into it); yields its id."""
        import mlflow

        # the fluent API logs and registers the run's model in MLflow's process-wide stores: this
        # tracker's, also when another tracker was made since
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        # a connection string in a tag (the data source) never carries its password
        tags = {k: mask_secrets(str(v)) for k, v in tags.items()}
        experiment_id = self.experiment_id(experiment)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as active:
            run_id = active.info.run_id
            self._run_experiments[run_id] = experiment_id
            self._pending_metrics[run_id] = {}
            self._run_repos[run_id] = self.run_artifacts(active.info.artifact_uri)
            try:
                yield run_id
            except BaseException:
                with contextlib.suppress(Exception):  # the run's error is the one to report
                    self._flush_metrics(run_id)
                raise
            finally:
                self._run_repos.pop(run_id, None)
            self._flush_metrics(run_id)

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI (`ui_url`); a run this tracker opened is not read back."""
        experiment_id = self._run_experiments.get(run_id)
        if experiment_id is None:
            experiment_id = self.client.get_run(run_id).info.experiment_id
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, name: str, version: str) -> str:
        """A registered model version's page in the MLflow UI (`ui_url`)."""
        from urllib.parse import quote

        return f"{self.ui_url}/#/models/{quote(name, safe='')}/versions/{version}"

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow caps a param value at 6000 characters; long lists are logged as artifacts too
        items = [Param(k, mask_secrets(str(v))[:6000]) for k, v in sorted(params.items())]
        for batch in chunks(items, 100):
            self.client.log_batch(run_id, params=batch)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.log_metric_steps(run_id, {step: metrics})

    def log_metric_steps(self, run_id: str, by_step: dict[int, dict[str, float]]) -> None:
        """Metrics of several steps (e.g. one per fold); None and non-finite values are left out.

        In a run opened by `run` they are written in one batch when the run's model is logged or
        the run ends (a key logged twice at one step keeps its last value); otherwise at once.
        Each batch costs a transaction, and MLflow links a logged model to the metrics its run
        holds by reading each metric's history back (one query per metric: 100 for a challenger),
        so the model is logged first and its metrics are written with its id."""
        clean = {
            step: {k: float(v) for k, v in metrics.items() if v is not None and np.isfinite(v)}
            for step, metrics in by_step.items()
        }
        pending = self._pending_metrics.get(run_id)
        if pending is None:
            self._write_metrics(run_id, clean)
            return
        for step, metrics in clean.items():
            pending.setdefault(step, {}).update(metrics)

    def _flush_metrics(self, run_id: str, model_id: str | None = None) -> None:
        """Write the run's pending metrics; those of step 0 linked to `model_id` (MLflow links the
        metrics of the step its model is logged at, 0)."""
        pending = self._pending_metrics.pop(run_id, None)
        if pending:
            self._write_metrics(run_id, pending, model_id)
        if pending is not None and model_id is not None:
            self._pending_metrics[run_id] = {}  # later metrics of the run wait for its end again

    def _write_metrics(
        self, run_id: str, by_step: dict[int, dict[str, float]], model_id: str | None = None
    ) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [
            Metric(k, v, stamp, step, model_id=model_id if step == 0 else None)
            for step, metrics in sorted(by_step.items())
            for k, v in sorted(metrics.items())
        ]
        for batch in chunks(items, 500):
            self.client.log_batch(run_id, metrics=batch)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._log_written(run_id, artifact_file, lambda path: path.write_text(text))

    def log_dict(self, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
        self.log_text(
            run_id, json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file
        )

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """A local file into the run's artifacts (under `artifact_path`)."""
        repo = self._run_repos.get(run_id)
        if repo is None:  # a run not open in `run`: the client resolves its repository
            self.client.log_artifact(run_id, str(path), artifact_path)
        elif Path(path).is_dir():  # as the client logs a directory: under its own name
            repo.log_artifacts(str(path), posixpath.join(artifact_path or "", Path(path).name))
        else:
            repo.log_artifact(str(path), artifact_path)

    def log_frame(self, run_id: str, frame: Any, artifact_file: str) -> None:
        """A polars frame as CSV (readable in the MLflow UI)."""
        self._log_written(run_id, artifact_file, frame.write_csv)

    def _log_written(self, run_id: str, artifact_file: str, write: Any) -> None:
        """The file `write(path)` writes, logged as the run's `artifact_file` (a run-relative
        POSIX path), as the client's `log_text` logs it."""
        relative = posixpath.normpath(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / posixpath.basename(relative)
            write(path)
            self.log_file(run_id, path, posixpath.dirname(relative) or None)

    def log_model(
        self,
        model: Any,
        model_type: str,
        example: pd.DataFrame,
        registered_name: str,
        tags: dict[str, str],
    ) -> RegisteredVersion:
        """Log the model in its native format inside the active run and register a new version,
        created with every tag (identity and artifact hash) in one registry write: a step killed
        after registering leaves a version that a retry recognizes and reuses
        (`trials.reusable_version`), never one without its identity.

        LightGBM: the native booster (LightGBM's own text model format). XGBoost: the classifier in
        XGBoost's JSON format (its booster carries the fitted parameters). scikit-learn estimators:
        cloudpickle, stated explicitly (skops cannot load every pipeline we train without a list
        of trusted types); load them only from a registry you trust.
        """
        import mlflow
        from mlflow.models import infer_signature

        # the signature (column names and types) from the example rows, not the rows themselves:
        # with an input example MLflow loads every model back and predicts it at registration
        # (about a third of the cost of logging a meta-learner)
        signature = infer_signature(example, np.full(len(example), 0.5))
        _check_requirements_once()
        common = dict(
            name="model", signature=signature, pip_requirements=pip_requirements(model_type)
        )
        # registration notices are printed straight to stderr; the asset's metadata says it better
        with contextlib.redirect_stderr(io.StringIO()):
            if model_type == "lightgbm":
                info = mlflow.lightgbm.log_model(model.booster_, **common)
            elif model_type == "xgboost":
                # the classifier in XGBoost's own JSON format; loads back as an XGBClassifier
                info = mlflow.xgboost.log_model(model, model_format="json", **common)
            else:
                info = mlflow.sklearn.log_model(model, serialization_format="cloudpickle", **common)
        active = mlflow.active_run()
        # the run's metrics so far, linked to the model, before a version can exist
        self._flush_metrics(active.info.run_id, model_id=info.model_id)
        tags = {**tags, ARTIFACT_HASH_TAG: self._logged_digest(info)}
        with contextlib.redirect_stderr(io.StringIO()):
            registered = mlflow.register_model(
                info.model_uri,
                registered_name,
                await_registration_for=0,
                tags={key: str(value) for key, value in tags.items()},
            )
        version = str(registered.version)
        return RegisteredVersion(
            registered_name, version, active.info.run_id, f"models:/{registered_name}/{version}"
        )

    def _logged_digest(self, info: Any) -> str:
        """`directory_digest` of a model just logged: read in place when its artifact store is a
        local directory, else from a downloaded copy (the same files: a download only adds
        MLflow's `registered_model_meta`, which the digest skips). The copy cost about as much
        CPU as the hash, through MLflow's download thread pool, for every model a step logs."""
        from urllib.parse import urlparse

        import mlflow

        location = urlparse(str(info.artifact_path or ""))
        local = Path(location.path)
        if location.scheme in ("", "file") and local.is_absolute() and local.is_dir():
            return directory_digest(local)
        with tempfile.TemporaryDirectory() as tmp:
            copy = mlflow.artifacts.download_artifacts(
                artifact_uri=info.model_uri, dst_path=tmp, tracking_uri=self.tracking_uri
            )
            return directory_digest(copy)

    def load_model(self, name: str, version: str) -> LoadedModel:
        """Load a registered version with the calibrator and feature list logged beside it, after
        checking its artifact against the hash recorded at registration (ModelIntegrityError).

        The version's files are copied from its storage location, and the run's JSON files from
        the run's artifact repository, each looked up once (through `models:/` and `runs:/` URIs
        MLflow resolved the registry entry and the run again for every file)."""
        import mlflow

        from quant_assets.lib.calibration import Calibrator

        version = str(version)
        record = self._sql_version_record(name, version)
        if record is None:  # a tracking server
            mv = self.client.get_model_version(name, version)
            run = self.client.get_run(mv.run_id)
            record = _VersionRecord(
                mv.run_id,
                self.client.get_model_version_download_uri(name, version),
                dict(mv.tags),
                run.info.artifact_uri,
                run.data.tags.get("model_type"),
            )
        model_type = record.tags.get("model_type") or record.run_model_type or "lightgbm"
        mlflow.set_registry_uri(self.tracking_uri)
        run_files = self.run_artifacts(record.artifact_uri)
        with tempfile.TemporaryDirectory() as tmp:
            for sub in ("model", "run"):
                (Path(tmp) / sub).mkdir()
            # verified and loaded from the same local copy, so what is loaded is what was checked
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=record.location, dst_path=str(Path(tmp) / "model"),
                tracking_uri=self.tracking_uri,
            )  # fmt: skip
            verify_model_artifact(name, version, record.tags.get(ARTIFACT_HASH_TAG), local)
            flavors = {"lightgbm": mlflow.lightgbm, "xgboost": mlflow.xgboost}
            flavor = flavors.get(model_type, mlflow.sklearn)
            model = flavor.load_model(local)

            def json_file(path: str) -> dict[str, Any]:
                copied = run_files.download_artifacts(path, dst_path=str(Path(tmp) / "run"))
                return json.loads(Path(copied).read_text())

            present = {a.path for a in run_files.list_artifacts()}
            calibrator = None
            if "calibrator.json" in present:
                calibrator = Calibrator.from_dict(json_file("calibrator.json"))
            features = json_file("feature_list.json")["features"]
        return LoadedModel(
            name, version, record.run_id, model_type, model, calibrator, features, record.tags
        )

    def _sql_version_record(self, name: str, version: str) -> _VersionRecord | None:
        """What `load_model` needs of a version, read in one session of a SQL store (None on a
        tracking server): its run, storage location and tags, and the run's artifact root. The
        client's `get_model_version` also reads the aliases, and `get_run` every parameter, metric,
        tag, dataset and model input and output of the run: about 40 % of a load's CPU when the
        ensemble loads its meta-learners. The same validation and errors as the client (a missing
        or deleted version raises RESOURCE_DOES_NOT_EXIST)."""
        store = self._sql_registry()
        if store is None:
            return None
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersionTag
        from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag

        with store.ManagedSessionMaker() as session:
            row = store._get_sql_model_version(session, name, version)
            tags = {
                tag.key: tag.value
                for tag in session.query(SqlModelVersionTag).filter(
                    SqlModelVersionTag.name == row.name,
                    SqlModelVersionTag.version == row.version,
                )
            }
            artifact_uri = (
                session.query(SqlRun.artifact_uri).filter(SqlRun.run_uuid == row.run_id).scalar()
            )
            run_model_type = None
            if "model_type" not in tags:
                run_model_type = (
                    session.query(SqlTag.value)
                    .filter(SqlTag.run_uuid == row.run_id, SqlTag.key == "model_type")
                    .scalar()
                )
            return _VersionRecord(
                row.run_id, row.storage_location or row.source, tags, artifact_uri, run_model_type
            )

    def run_artifacts(self, artifact_uri: str) -> Any:
        """The artifact repository of a run (its `info.artifact_uri`), to list and copy several of
        its files with one lookup: `download_artifacts(run_id=...)` and `runs:/` URIs read the run
        again for every file. `mlflow-artifacts:` URIs resolve through this tracker's server."""
        import mlflow
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        mlflow.set_tracking_uri(self.tracking_uri)
        return get_artifact_repository(artifact_uri)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(name, str(version)).tags)

    def latest_version(self, name: str) -> str | None:
        """The newest registered version of `name`, or None when it has none (or does not exist)."""
        return max((v.version for v in self.versions(name)), key=int, default=None)

    def versions(self, name: str) -> list[VersionSummary]:
        """Every registered version of `name` (none when the model does not exist), as
        `search_model_versions` lists them, oldest first. On a SQL store one query of four
        columns: the client's search also reads every version's tags and aliases, and a model
        retrained nightly gains a version a night while the catalog lists them at every
        registration."""
        store = self._sql_registry()
        if store is None:
            found = self.client.search_model_versions(f"name = '{name}'")
            summaries = [
                VersionSummary(str(v.version), v.source, v.run_id, v.creation_timestamp)
                for v in found
            ]
            return sorted(summaries, key=lambda v: int(v.version))
        from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersion

        with store.ManagedSessionMaker() as session:
            rows = (
                session.query(
                    SqlModelVersion.version,
                    SqlModelVersion.source,
                    SqlModelVersion.run_id,
                    SqlModelVersion.creation_time,
                )
                .filter(
                    SqlModelVersion.name == name,
                    SqlModelVersion.current_stage != STAGE_DELETED_INTERNAL,
                )
                .order_by(SqlModelVersion.version)
                .all()
            )
        return [
            VersionSummary(str(v), source, run_id, created) for v, source, run_id, created in rows
        ]

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Every tag on the version. On a SQL store in one transaction (MLflow's client writes one
        tag per transaction, each looking the version up again: an evaluation's 15 tags were 15
        transactions); the same validation and rows as `set_model_version_tag`."""
        items = {key: str(value) for key, value in tags.items()}
        if not items:
            return
        store = self._sql_registry()
        if store is None:  # a tracking server: one call per tag
            for key, value in items.items():
                self.client.set_model_version_tag(name, str(version), key, value)
            return
        from mlflow.store.model_registry.dbmodels.models import SqlModelVersionTag
        from mlflow.utils.validation import _validate_model_version_tag

        for key, value in items.items():
            _validate_model_version_tag(key, value)
        with store.ManagedSessionMaker(read_only=False) as session:
            row = store._get_sql_model_version(session, name, int(version))
            for key, value in items.items():
                session.merge(
                    SqlModelVersionTag(
                        workspace=row.workspace, name=name, version=int(version), key=key,
                        value=value,
                    )
                )  # fmt: skip

    def delete_alias(self, name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(name, alias)

    def version_count(self, name: str) -> int:
        """How many versions were registered (the trials behind a deflated Sharpe ratio)."""
        return len(self.versions(name))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        store = self._sql_registry()
        if store is None:
            self.client.set_registered_model_alias(name, alias, version)
        else:  # the store validates as the client does, without reading the whole model first
            store.set_registered_model_alias(name, alias, str(version))

    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version (empty when the model does not exist). Read from the registered model
        (on SQL stores, model-version searches return empty aliases: MLflow issue #16734); on a SQL
        store from the alias rows alone."""
        store = self._sql_registry()
        if store is not None:
            from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModelAlias

            with store.ManagedSessionMaker() as session:
                rows = (
                    store._get_query(session, SqlRegisteredModelAlias)
                    .filter(SqlRegisteredModelAlias.name == name)
                    .all()
                )
                return {row.alias: str(row.version) for row in rows}
        from mlflow.exceptions import MlflowException

        try:
            return {
                alias: str(v) for alias, v in self.client.get_registered_model(name).aliases.items()
            }
        except MlflowException:
            return {}

    def registry_view(self, names: list[str]) -> RegistryView:
        """The aliases, newest version and the tags of the champion and newest versions of every
        model in `names`, read together: on a SQL store three queries per 500 names instead of
        three to four per model (model_health and model_report read every partition's model: 1,500
        at 500 symbols x 3 timeframes). Anything not read here (another model, an older version, a
        tracking server) is asked of this tracker as before."""
        store = self._sql_registry()
        if store is None or not names:
            return RegistryView(self, {}, {}, {})
        from mlflow.entities.model_registry.model_version_stages import STAGE_DELETED_INTERNAL
        from mlflow.store.model_registry.dbmodels.models import (
            SqlModelVersion,
            SqlModelVersionTag,
            SqlRegisteredModelAlias,
        )
        from sqlalchemy import func, tuple_

        unique = sorted(set(names))
        aliases: dict[str, dict[str, str]] = {name: {} for name in unique}
        newest: dict[str, str | None] = dict.fromkeys(unique)
        tags: dict[tuple[str, str], dict[str, str]] = {}
        with store.ManagedSessionMaker() as session:
            for chunk in chunks(unique, 500):
                for row in session.query(SqlRegisteredModelAlias).filter(
                    SqlRegisteredModelAlias.name.in_(chunk)
                ):
                    aliases[row.name][row.alias] = str(row.version)
                # as search_model_versions: deleted versions are not versions
                for name, number in (
                    session.query(SqlModelVersion.name, func.max(SqlModelVersion.version))
                    .filter(
                        SqlModelVersion.name.in_(chunk),
                        SqlModelVersion.current_stage != STAGE_DELETED_INTERNAL,
                    )
                    .group_by(SqlModelVersion.name)
                ):
                    newest[name] = str(number)
            wanted = sorted(
                {
                    (name, int(v))
                    for name in unique
                    for v in (aliases[name].get(ALIAS_CHAMPION), newest[name])
                    if v is not None
                }
            )
            for pair in wanted:
                tags[(pair[0], str(pair[1]))] = {}
            for chunk in chunks(wanted, 400):
                for row in session.query(SqlModelVersionTag).filter(
                    tuple_(SqlModelVersionTag.name, SqlModelVersionTag.version).in_(chunk)
                ):
                    tags[(row.name, str(row.version))][row.key] = row.value
        return RegistryView(self, aliases, newest, tags)

    def _sql_registry(self):
        """The registry's SqlAlchemyStore, or None for a tracking server (MLflow is pinned in
        uv.lock; the SQL fast paths are tested against the client's results on both kinds)."""
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

        store = self.client._get_registry_client().store
        return store if isinstance(store, SqlAlchemyStore) else None


def chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of at most `size` items (SQL IN lists, MLflow batches)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class RegistryView:
    """`Tracker.registry_view`: the registry reads of `aliases`, `latest_version` and
    `version_tags` answered from what was read in bulk, the rest from the tracker."""

    def __init__(
        self,
        tracker: Tracker,
        aliases: dict[str, dict[str, str]],
        newest: dict[str, str | None],
        tags: dict[tuple[str, str], dict[str, str]],
    ) -> None:
        self._tracker = tracker
        self._aliases = aliases
        self._newest = newest
        self._tags = tags

    def aliases(self, name: str) -> dict[str, str]:
        if name in self._aliases:
            return dict(self._aliases[name])
        return self._tracker.aliases(name)

    def latest_version(self, name: str) -> str | None:
        if name in self._newest:
            return self._newest[name]
        return self._tracker.latest_version(name)

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        found = self._tags.get((name, str(version)))
        if found is not None:
            return dict(found)
        return self._tracker.version_tags(name, version)
