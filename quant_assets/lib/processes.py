"""Local process helpers shared by the CLI's run reaper, the execution daemon and the warm run
worker: whether a pid is alive (a zombie is not), one newline-terminated JSON message over a
socket, and the environment of a process that executes runs."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path

#: native thread pools of the math libraries (OpenMP: LightGBM, scikit-learn; OpenBLAS/MKL: NumPy,
#: SciPy), read once when each library loads
NATIVE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run_process_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that executes runs (a warm worker, the daemon whose code
    server starts run processes): one native math thread each, unless the environment already
    sets a variable (the user's value wins). The run slots are the parallelism: two run processes
    on two cores, each with OpenBLAS's and OpenMP's default of one thread per core, spend CPU in
    their waiting threads (a Platt calibration: 8.1 ms of CPU for 4.1 ms of wall, 2.1 ms with one
    thread; docs/field-notes.md)."""
    env = dict(os.environ if environ is None else environ)
    for name in NATIVE_THREAD_VARIABLES:
        env.setdefault(name, "1")
    return env


def pid_alive(pid: int) -> bool:
    """`pid` exists and is not a zombie (an exited child of this process is reaped here)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited process stays a zombie until the process that started it reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_message(conn: socket.socket) -> dict | None:
    """One JSON message terminated by a newline; None when the peer closed without one."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return json.loads(data) if data else None


def send_message(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())
