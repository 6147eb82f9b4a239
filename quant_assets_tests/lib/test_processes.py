"""pid liveness (a zombie is not alive) and the one-line JSON messages of the warm worker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from quant_assets.lib.processes import pid_alive, read_message, send_message


def test_a_zombie_child_is_not_alive_and_a_running_one_is() -> None:
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(running.pid)
    finally:
        running.kill()
        running.wait()
    assert not pid_alive(running.pid)
    assert pid_alive(os.getpid())
    # an exited child not yet waited for: a zombie to `kill -0`, dead to pid_alive
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    stat = Path(f"/proc/{exited.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    os.kill(exited.pid, 0)  # does not raise
    assert not pid_alive(exited.pid)


def test_messages_round_trip_and_a_closed_peer_reads_none() -> None:
    left, right = socket.socketpair()
    with left, right:
        send_message(left, {"op": "launch", "run_id": "abc", "n": [1, 2]})
        assert read_message(right) == {"op": "launch", "run_id": "abc", "n": [1, 2]}
        left.shutdown(socket.SHUT_WR)
        assert read_message(right) is None
