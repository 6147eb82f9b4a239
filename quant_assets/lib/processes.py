"""Local process helpers shared by the CLI's run reaper and the warm run worker: whether a pid is
alive (a zombie is not), and one newline-terminated JSON message over a socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path


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
