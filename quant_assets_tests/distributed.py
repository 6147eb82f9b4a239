"""Real servers for the celery deployment, shared by its tests and benchmark: PostgreSQL databases,
an `mlflow server` on PostgreSQL, Celery workers (`dagster-celery worker start`) each in its own
working directory and environment, as separate machines would run them. Every process started here
is stopped (its whole process group) when its context ends."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import yaml

from quant_assets.lib.deployment import worker_yaml
from quant_assets.lib.settings import load_settings
from quant_assets_tests.services import require_service, temporary_postgres_database

BIN = Path(sys.executable).parent
BROKER_VAR = "QUANT_ASSETS_TEST_BROKER"
DEFAULT_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_broker() -> str:
    """The RabbitMQ broker of the tests (skip, or fail under CI, when it is not reachable)."""
    url = os.environ.get(BROKER_VAR, DEFAULT_BROKER)
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:  # noqa: BLE001 - any failure to connect means "not reachable"
        require_service(
            f"RabbitMQ at {urlparse(url).hostname} (from {BROKER_VAR} or its default)", error
        )
    return url


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a process started with `start_new_session=True` and everything it started."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    else:  # the leader is gone; children of the group may not be
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def mlflow_server(backend_url: str, artifacts: Path, log: Path) -> Iterator[str]:
    """`mlflow server` on a PostgreSQL backend store, serving artifacts from `artifacts`."""
    port = free_port()
    with log.open("w") as sink:
        server = subprocess.Popen(
            [
                str(BIN / "mlflow"), "server", "--backend-store-uri", backend_url,
                "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1",
            ],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if server.poll() is not None:
                raise AssertionError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError as error:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"mlflow server not healthy:\n{log.read_text()[-3000:]}"
                    ) from error
                time.sleep(0.5)
        yield url
    finally:
        stop_group(server)


def postgres_dagster_yaml(url: str) -> str:
    """The instance configuration of every machine: the top-level dagster.yaml's PostgreSQL
    storage, here with the values inline (the top-level file reads them from DAGSTER_PG_*)."""
    parts = urlparse(url.replace("+psycopg2", ""))
    return yaml.safe_dump(
        {
            "storage": {
                "postgres": {
                    "postgres_db": {
                        "hostname": parts.hostname or "127.0.0.1",
                        "port": parts.port or 5432,
                        "username": parts.username or "postgres",
                        "password": parts.password or "",
                        "db_name": parts.path.lstrip("/"),
                        "scheme": "postgresql+psycopg2",
                    }
                }
            },
            "run_queue": {"dequeue_interval_seconds": 1},
            "run_monitoring": {"enabled": True, "poll_interval_seconds": 5},
            "telemetry": {"enabled": False},
        }
    )


@dataclass
class Cluster:
    """The shared pieces of one celery deployment and the environment every machine gets."""

    root: Path
    env: dict[str, str]
    dagster_yaml: str
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        return self.env["QUANT_ASSETS_CELERY_QUEUE"]

    def machine(self, name: str) -> tuple[Path, dict[str, str]]:
        """A machine's own working directory and environment (its own DAGSTER_HOME holding the
        same PostgreSQL instance configuration)."""
        cwd = self.root / name
        home = cwd / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text(self.dagster_yaml)
        env = {
            **self.env,
            "DAGSTER_HOME": str(home),
            "QUANT_ASSETS_WATCHLIST": str(cwd / "watchlist.txt"),
        }
        return cwd, env

    def start_worker(self, name: str, concurrency: int = 1) -> subprocess.Popen:
        """`dagster-celery worker start` on the cluster's queue, from the YAML every worker reads."""
        cwd, env = self.machine(name)
        config = cwd / "celery.yaml"
        config.write_text(worker_yaml(load_settings_from(env)))
        with (cwd / "worker.log").open("w") as log:
            process = subprocess.Popen(
                [
                    str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
                    "-y", str(config), "-q", self.queue, "-n", name, "--",
                    "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
                ],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.workers[name] = process
        return process

    def wait_workers_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.workers)
        while pending:
            for name in list(pending):
                process = self.workers[name]
                log = (self.root / name / "worker.log").read_text()
                if process.poll() is not None:
                    raise AssertionError(f"worker {name} exited:\n{log[-3000:]}")
                if " ready." in log:
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"workers {sorted(pending)} not ready after {timeout} s")
            time.sleep(0.5)

    def stop_workers(self) -> None:
        for process in self.workers.values():
            stop_group(process)


def load_settings_from(env: dict[str, str]):
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def clean_env() -> dict[str, str]:
    """This process's environment without any quant-assets, Dagster or MLflow setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QUANT_ASSETS_", "DAGSTER_", "MLFLOW_"))
    }
    # `dagster-celery worker start` runs `celery` from PATH
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@contextmanager
def celery_cluster(root: Path, **settings: str) -> Iterator[Cluster]:
    """PostgreSQL databases (instance, MLflow, trading tables), an MLflow server and a unique
    Celery queue on the RabbitMQ broker; workers are started with `Cluster.start_worker`."""
    broker = test_broker()
    with ExitStack() as stack:
        instance_db = stack.enter_context(temporary_postgres_database("qa_cel_dagster"))
        mlflow_db = stack.enter_context(temporary_postgres_database("qa_cel_mlflow"))
        trading_db = stack.enter_context(temporary_postgres_database("qa_cel_trading"))
        shared = root / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        tracking = stack.enter_context(
            mlflow_server(mlflow_db, shared / "mlartifacts", root / "mlflow_server.log")
        )
        env = {
            **clean_env(),
            "QUANT_ASSETS_DEPLOYMENT": "celery",
            "QUANT_ASSETS_CELERY_BROKER": broker,
            # a queue of its own: no other worker on the broker can take this cluster's steps
            "QUANT_ASSETS_CELERY_QUEUE": f"qa_test_{os.getpid()}_{secrets.token_hex(4)}",
            "QUANT_ASSETS_ARTIFACTS": str(shared / "artifacts"),
            "MLFLOW_TRACKING_URI": tracking,
            "QUANT_ASSETS_TRADING_DB": trading_db,
            # Dagster's default 60 s for a code-server call (launching a run) was exceeded on a
            # saturated 2-core machine, failing the run before it started
            "DAGSTER_GRPC_TIMEOUT_SECONDS": "300",
            **settings,
        }
        cluster = Cluster(root=root, env=env, dagster_yaml=postgres_dagster_yaml(instance_db))
        try:
            yield cluster
        finally:
            cluster.stop_workers()
