"""The UI tells the story, on a small real instance: a signal row links to its Dagster run, its
model version, the version's MLflow run, training data and code; no partition grid has a dead
half; the report renders and is posted; a manual promotion and rollback (`quant-assets promote` /
`rollback`, asset backfills run by Dagster's daemon) are runs of `champion` that the UI, the
registry and promotion_log agree on; and a real browser (Debian's chromium, headless, through
Selenium) loads the asset graph, partition metadata and the backfills page without an error banner.

Size: one symbol, one timeframe (1d: no coarser timeframe to build), 6.5 years of daily bars, a 40-tree model and gates every
model passes. The instance is built with the tests' in-process executor (one process, one
`dg.materialize` per stage, the settings of the instance): the CLI's backfill path is tested by
integration/test_backfill_execution.py, and here by the promotion and rollback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import yaml

from quant_assets_tests.defs.conftest import FAST, LENIENT_GATES
from quant_assets_tests.services import require_service

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("quant-assets"))
WEBSERVER = str(Path(sys.executable).with_name("dagster-webserver"))
SYMBOL, TIMEFRAME = "BTCUSDT", "1d"
KEY = f"{SYMBOL}|{TIMEFRAME}"
NAME = f"direction.{SYMBOL}.{TIMEFRAME}"
MLFLOW_UI = "http://mlflow.desk.example:5050"
#: where screenshots go: $QUANT_ASSETS_CI_ARTIFACTS (CI) or artifacts/browser (gitignored)
SCREENSHOTS = Path(
    os.environ.get("QUANT_ASSETS_CI_ARTIFACTS")
    or Path(__file__).resolve().parents[2] / "artifacts" / "browser"
)


#: materialize argv[1] for SYMBOL|TIMEFRAME with the asset Config in the YAML file argv[2]
BUILD = f"""
import sys, yaml, dagster as dg
from quant_assets.definitions import build_defs
from quant_assets.lib.settings import load_settings
from quant_assets_tests.defs.inprocess import execute_plan, plan_runs
defs = build_defs(load_settings())
config = yaml.safe_load(open(sys.argv[2]))
with dg.DagsterInstance.get() as instance:
    plan = plan_runs(defs, sys.argv[1], ["{SYMBOL}"], ["{TIMEFRAME}"])
    outcomes = execute_plan(defs, plan, instance, asset_config=config)
failed = [(o.planned.label, o.error) for o in outcomes if o.status != "success"]
print(failed)
sys.exit(1 if failed else 0)
"""


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@dataclass
class Story:
    workdir: Path
    env: dict[str, str]
    hook: list[dict]
    seconds: dict[str, float] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        started = time.perf_counter()
        done = subprocess.run(
            [CLI, *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.seconds[" ".join(args[:2])] = round(time.perf_counter() - started, 1)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def build(self, selection: str, config: Path) -> None:
        """Materialize `selection` in one process with the instance's settings (BUILD)."""
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", BUILD, selection, str(config)],
            cwd=self.workdir,
            env={**self.env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            capture_output=True,
            text=True,
            timeout=900,
        )
        self.seconds[f"build {selection}"] = round(time.perf_counter() - started, 1)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])

    def tracker(self):
        from quant_assets.lib.tracking import Tracker

        return Tracker(f"sqlite:///{self.workdir / 'artifacts' / 'mlflow' / 'mlflow.db'}")

    def store(self):
        from quant_assets.lib.stores import TradingStore

        return TradingStore(f"sqlite:///{self.workdir / 'artifacts' / 'trading.db'}")

    def metadata(self, asset: str, partition: str | None = KEY) -> dict:
        with self.instance() as instance:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey(asset),
                    asset_partitions=[partition] if partition else None,
                ),
                limit=1,
            ).records
        assert records, f"{asset} [{partition}] was never materialized"
        return dict(records[0].asset_materialization.metadata)

    def materialized_by(self, asset: str, partition: str | None = KEY) -> str:
        """The run id of the latest materialization of `asset` [partition]."""
        with self.instance() as instance:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey(asset),
                    asset_partitions=[partition] if partition else None,
                ),
                limit=1,
            ).records
        return records[0].run_id


def _env(workdir: Path, hook_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("QUANT_ASSETS_", "DAGSTER_", "MLFLOW_"))
    }
    env.update(
        QUANT_ASSETS_TIMEFRAMES=TIMEFRAME,
        QUANT_ASSETS_SYNTHETIC_START="2019-01-01",
        QUANT_ASSETS_SYNTHETIC_END="2025-06-30T00:00:00",
        QUANT_ASSETS_MAX_CONCURRENT_RUNS="2",
        QUANT_ASSETS_ARTIFACTS=str(workdir / "artifacts"),
        QUANT_ASSETS_WATCHLIST=str(workdir / "watchlist.txt"),
        QUANT_ASSETS_MLFLOW_UI_URL=MLFLOW_UI,
        QUANT_ASSETS_ALERT_WEBHOOK_URL=hook_url,
        DAGSTER_HOME=str(workdir / ".dagster_home"),
    )
    return env


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory):
    """One symbol × one timeframe, every asset (the meta layer and the report included)."""
    workdir = tmp_path_factory.mktemp("ui_story")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    story = Story(workdir, _env(workdir, f"http://127.0.0.1:{server.server_port}/hook"), [])
    story.hook = _Hook.received
    (workdir / "fast.yaml").write_text(yaml.safe_dump({**FAST, **LENIENT_GATES}))
    story.cli("symbols", "add", SYMBOL)  # also writes the instance's dagster.yaml
    try:
        story.build("*", workdir / "fast.yaml")
        yield story
    finally:
        server.shutdown()
        print(f"\nui story timings (s): {story.seconds}")


def test_a_signal_row_links_to_its_run_model_version_training_data_and_code(story) -> None:
    signals = story.store().read_signals(symbol=SYMBOL, timeframe=TIMEFRAME)
    assert signals.height > 0
    row = signals.tail(1).row(0, named=True)
    # the SQL row names the Dagster run that wrote it, and that run materialized `signals`
    assert row["dagster_run_id"] == story.materialized_by("signals")
    # ... and the registered version, whose tags name the training run, data and code versions
    tracker = story.tracker()
    version = tracker.client.get_model_version(NAME, row["model_version"])
    assert version.run_id == row["mlflow_run_id"]
    tags = version.tags
    assert {"dagster.run_id", "data_version", "git_commit", "code_version"} <= set(tags)
    training = tracker.client.get_run(version.run_id)
    (dataset,) = training.inputs.dataset_inputs
    assert dataset.dataset.digest == tags["data_version"][:36]
    assert json.loads(dataset.dataset.source)["uri"].endswith(
        f"training_dataset/{SYMBOL}/{TIMEFRAME}.parquet"
    )
    assert training.data.tags["mlflow.note.content"].startswith(f"# Model card: {NAME}")
    # the registry and the experiment describe themselves
    model = tracker.client.get_registered_model(NAME)
    assert SYMBOL in model.description
    assert model.tags == {
        "symbol": SYMBOL,
        "timeframe": TIMEFRAME,
        "kind": "direction",
        "target": "take_profit",
    }
    experiment = tracker.client.get_experiment(training.info.experiment_id)
    assert "challenger_model" in experiment.tags["mlflow.note.content"]
    # Dagster's metadata links to the same version and run in the configured MLflow UI
    metadata = story.metadata("signals")
    assert metadata["model_version"].value == (
        f"{MLFLOW_UI}/#/models/{NAME}/versions/{row['model_version']}"
    )
    assert metadata["mlflow_run"].value.startswith(f"{MLFLOW_UI}/#/experiments/")
    assert metadata["mlflow_run"].value.endswith(row["mlflow_run_id"])
    assert isinstance(metadata["latest_signal"], dg.JsonMetadataValue)
    columns = {c.name for c in metadata["dagster/column_schema"].schema.columns}
    assert {"timestamp", "side", "prob_up", "dagster_run_id"} <= columns
    trained = story.metadata("challenger_model")
    assert {"holdout_ece", "holdout_ece_calibrated"} <= set(trained)
    assert isinstance(trained["holdout_ece_calibrated"], dg.FloatMetadataValue)
    assert trained["mlflow_version"].value.startswith(f"{MLFLOW_UI}/#/models/{NAME}/versions/")


def test_no_partition_grid_has_a_dead_half(story) -> None:
    """Every partitioned asset's grid lists exactly the configured timeframe, and after the build
    every partition of it is materialized (nothing shows as permanently missing). Read by a process
    with the instance's settings, as the webserver loads them."""
    code = (
        "import json, dagster as dg\n"
        "from quant_assets.definitions import defs\n"
        "graph = defs.resolve_asset_graph()\n"
        "with dg.DagsterInstance.get() as instance:\n"
        "    out = {}\n"
        "    for key in graph.get_all_asset_keys():\n"
        "        pdef = graph.get(key).partitions_def\n"
        "        if pdef is not None:\n"
        "            keys = pdef.get_partition_keys(dynamic_partitions_store=instance)\n"
        "            done = instance.get_materialized_partitions(key)\n"
        "            out[key.to_user_string()] = [sorted(keys), sorted(set(keys) - done)]\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=story.workdir,
        env=story.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    grids = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(grids) > 10
    for asset, (keys, missing) in grids.items():
        assert keys in ([KEY], [TIMEFRAME]), (asset, keys)
        assert missing == [], (asset, missing)


def test_the_report_renders_and_is_posted(story) -> None:
    metadata = story.metadata("model_report", partition=None)
    assert metadata["partitions"].value == 1 and metadata["with_champion"].value == 1
    # the build's training and evaluation runs (in-process runs name no asset selection)
    assert metadata["retrain_runs"].value >= 1
    assert metadata["retrain_success_rate"].value == 1.0
    assert f"{SYMBOL}\\|{TIMEFRAME}" in metadata["report"].value  # a markdown table cell
    page = Path(metadata["html_report"].value).read_text()
    assert page.count("data:image/png;base64,") >= 1 and "<script" not in page
    assert metadata["mlflow_run"].value.startswith(f"{MLFLOW_UI}/#/experiments/")
    posted = [p for p in story.hook if p["kind"] == "model_report"]
    assert posted and SYMBOL in posted[0]["details"]["markdown"]
    tracker = story.tracker()
    run_id = metadata["mlflow_run"].value.rsplit("/", 1)[-1]
    names = {a.path for a in tracker.client.list_artifacts(run_id)}
    assert any(n.endswith(".html") for n in names) and any(n.endswith(".md") for n in names)


def test_manual_promotion_and_rollback_are_runs_of_champion(story) -> None:
    first = story.tracker().aliases(NAME)["champion"]
    # a second challenger (another seed) that strict gates reject: the champion stays
    strict = {
        "challenger_model": {**FAST["challenger_model"], "seed": 43},
        "champion_challenger_evaluation": {
            **LENIENT_GATES["champion_challenger_evaluation"],
            "min_sortino": 1e9,
        },
    }
    (story.workdir / "strict.yaml").write_text(yaml.safe_dump(strict))
    # one execution daemon for both CLI invocations (each would start its own), started now so it
    # is up when the retrain is done
    daemon = subprocess.Popen(
        [sys.executable, "-m", "quant_assets.defs.daemon"],
        cwd=story.workdir,
        env=story.env,
        stdout=open(story.workdir / "daemon.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _promote_and_roll_back(story, first)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)


def _promote_and_roll_back(story: Story, first: str) -> None:
    from quant_assets.defs.backfills import backfill_daemon_alive

    tracker, store = story.tracker(), story.store()
    story.build(
        "key:challenger_model or key:champion_challenger_evaluation or key:champion",
        story.workdir / "strict.yaml",
    )
    second = tracker.aliases(NAME)["challenger"]
    assert second != first and tracker.aliases(NAME)["champion"] == first
    deadline = time.monotonic() + 120
    with story.instance() as instance:
        while not backfill_daemon_alive(instance) and time.monotonic() < deadline:
            time.sleep(1)
    assert tracker.version_tags(NAME, second)["decision"] == "reject"

    promoted = story.cli("promote", SYMBOL, TIMEFRAME, "--reason", "desk override")
    assert f"champion is now v{second}" in promoted.stdout
    assert tracker.aliases(NAME)["champion"] == second
    tags = tracker.version_tags(NAME, second)
    assert tags["decision"] == "manual_promote" and tags["gates.decision"] == "reject"
    assert tags["promotion.decided_by"] == "cli"
    log = store.promotion_history(NAME).tail(1).row(0, named=True)
    assert (log["action"], log["reason"]) == ("manual_promote", "desk override")
    with story.instance() as instance:
        run = instance.get_run_by_id(log["dagster_run_id"])
    assert run.tags["quant_assets/decision"] == "promote"
    assert run.tags["quant_assets/reason"] == "desk override"
    assert tags["promotion.dagster_run_id"] == run.run_id
    assert tags["promotion.requested_by"] == run.tags["quant_assets/requested_by"]
    metadata = story.metadata("champion")
    assert metadata["decision"].value == "manual_promote"
    assert metadata["requested_by"].value == tags["promotion.requested_by"]

    story.cli("rollback", SYMBOL, TIMEFRAME, "--reason", "bad fills")
    assert tracker.aliases(NAME)["champion"] == first
    assert story.metadata("champion")["decision"].value == "rollback"
    assert store.promotion_history(NAME)["action"].to_list()[-2:] == ["manual_promote", "rollback"]
    story.cli("doctor")  # promotion_log and the registry aliases agree


# ---------------------------------------------------------------- the browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    """Debian's chromium driven headless through its chromedriver (skipped when absent)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        require_service(
            "chromium and chromedriver (apt-get install chromium chromium-driver)",
            FileNotFoundError("not on PATH"),
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1600,1000")
    return webdriver.Chrome(service=Service(driver_path), options=options)


#: texts of the Dagster UI's error states
ERROR_TEXTS = (
    "Unexpected GraphQL error",
    "An unexpected error",
    "An error occurred",
    "Something went wrong",
    "Error loading",
    "DagsterInvalidDefinitionError",
)


def _page(driver, url: str, expected: list[str], shot: str, timeout: float = 60) -> str:
    """Load `url`, wait until every `expected` text shows, assert no error banner, screenshot."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        # the first visit greets with a "Join the Dagster community" dialog: skip it
        for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            button.click()
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(e in text for e in expected):
            break
        time.sleep(0.5)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{shot}.png"))
    missing = [e for e in expected if e not in text]
    assert not missing, f"{url}: {missing} never showed; the page said:\n{text[:2000]}"
    errors = [e for e in ERROR_TEXTS if e in text]
    assert not errors, f"{url}: error banner {errors}:\n{text[:2000]}"
    return text


def test_the_dagster_ui_renders_in_a_real_browser(story) -> None:
    driver = _browser()
    port = _free_port()
    server = subprocess.Popen(
        [WEBSERVER, "-m", "quant_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=story.workdir,
        env=story.env,
        stdout=open(story.workdir / "webserver.log", "w"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (story.workdir / "webserver.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "dagster-webserver did not come up"
                time.sleep(1)
        started = time.perf_counter()
        _page(
            driver,
            f"{base}/asset-groups",
            ["Global asset lineage", "market_data", "training", "promotion", "monitoring"],
            "graph",
        )
        partition = urllib.request.quote(KEY, safe="")
        text = _page(
            driver,
            f"{base}/assets/signals?view=partitions&partition={partition}",
            ["model_version", "mlflow_run", "latest_signal", MLFLOW_UI],
            "signals_partition",
        )
        assert f"/#/models/{NAME}/versions/" in text
        _page(
            driver,
            f"{base}/assets/champion?view=partitions&partition={partition}",
            ["rollback", "requested_by", "bad fills"],
            "champion_partition",
        )
        # the promotion and the rollback were asset backfills of the CLI
        _page(driver, f"{base}/overview/backfills", ["champion", "Success"], "backfills")
        story.seconds["browser pages"] = round(time.perf_counter() - started, 1)
    finally:
        driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
