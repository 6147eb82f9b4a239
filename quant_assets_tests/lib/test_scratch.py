"""Scratch directories disappear with the process that made them, a multiprocessing child
(how Dagster runs steps) included."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

from quant_assets.lib.scratch import scratch_dir


def _child(queue) -> None:
    path = scratch_dir("qa_test_") / "plot.png"
    path.write_bytes(b"png")
    queue.put(str(path))


def test_a_process_removes_its_scratch_files_when_it_exits() -> None:
    code = (
        "from quant_assets.lib.scratch import scratch_dir\n"
        "p = scratch_dir('qa_test_') / 'plot.png'\n"
        "p.write_bytes(b'png')\n"
        "print(p)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    written = Path(done.stdout.strip())
    assert written.name == "plot.png" and written.parent.name.startswith("qa_test_")
    assert not written.parent.parent.exists()


def test_a_spawned_child_removes_its_scratch_files() -> None:
    context = multiprocessing.get_context("spawn")  # as Dagster's code server starts runs
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    written = Path(queue.get(timeout=120))
    child.join(timeout=120)
    assert child.exitcode == 0
    assert not written.parent.parent.exists()


def test_scratch_directories_are_distinct_and_usable_in_process() -> None:
    first, second = scratch_dir("qa_a_"), scratch_dir("qa_b_")
    assert first != second and first.parent == second.parent
    (first / "x.csv").write_text("a\n1\n")
    assert (first / "x.csv").read_text() == "a\n1\n"
