"""The execution daemon's stop watchdog: a daemon that does not stop after SIGTERM says where its
threads are and exits, so the CLI (which waits 30 s) and supervisors are never held up."""

from __future__ import annotations

import subprocess
import sys
import time

from quant_assets.defs.daemon import STOP_GRACE_SECONDS


def test_a_stop_that_hangs_dumps_the_threads_and_exits() -> None:
    code = (
        "import threading, time\n"
        "from quant_assets.defs.daemon import _stop_watchdog\n"
        "def stuck_daemon_thread():\n"
        "    time.sleep(60)\n"
        "threading.Thread(target=stuck_daemon_thread, name='stuck').start()\n"
        "_stop_watchdog(1.0)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert time.monotonic() - started < 20
    assert done.returncode == 3
    out = done.stdout + done.stderr
    assert "the daemon did not stop within 1 s of SIGTERM" in out
    assert "stuck_daemon_thread" in out  # the stack of the thread that held it
    # shorter than the 30 s the CLI waits before it kills the daemon's process group
    assert STOP_GRACE_SECONDS < 30
