"""pid liveness (a zombie is not alive), the one-line JSON messages of the warm worker, and the
one-native-thread environment of run processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from quant_assets.lib.processes import (
    NATIVE_THREAD_VARIABLES,
    pid_alive,
    read_message,
    run_process_env,
    send_message,
)


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


_POOLS = (
    "import json, numpy, sklearn.linear_model, lightgbm; from threadpoolctl import threadpool_info; "
    "print(json.dumps(sorted({(p['internal_api'], p['num_threads']) for p in threadpool_info()})))"
)


def test_run_processes_get_one_native_math_thread_unless_the_user_set_one() -> None:
    bare = {k: v for k, v in os.environ.items() if k not in NATIVE_THREAD_VARIABLES}
    env = run_process_env(bare)
    assert {name: env[name] for name in NATIVE_THREAD_VARIABLES} == dict.fromkeys(
        NATIVE_THREAD_VARIABLES, "1"
    )
    # what the libraries a run loads then use: OpenBLAS (NumPy, SciPy) and OpenMP (scikit-learn,
    # LightGBM) at one thread each
    out = subprocess.run(
        [sys.executable, "-c", _POOLS], env=env, capture_output=True, text=True, check=True
    )
    pools = {api: threads for api, threads in json.loads(out.stdout)}
    assert {"openblas", "openmp"} <= set(pools), pools
    assert set(pools.values()) == {1}, pools
    # a value the user chose is kept
    mine = run_process_env({**bare, "OMP_NUM_THREADS": "2"})
    assert mine["OMP_NUM_THREADS"] == "2" and mine["OPENBLAS_NUM_THREADS"] == "1"
    assert run_process_env(bare) is not bare and "OMP_NUM_THREADS" not in bare
