"""The execution daemon the CLI starts for the length of an invocation: Dagster's own backfill,
run-queue and run-monitoring daemons (no schedules or sensors, so nothing but the requested backfill
runs), on the instance in DAGSTER_HOME, loading the code location from `quant_assets.definitions`.

    python -m quant_assets.defs.daemon        # stops cleanly on SIGINT / SIGTERM
    kill -USR1 <pid>                          # prints every thread's stack to its log

The backfill daemon normally looks for work every 30 s; a backfill of a pipeline waits for that
between every stage, so this process runs the loop every `BACKFILL_LOOP_SECONDS` (the constant the
loop reads is Dagster's `DEFAULT_DAEMON_INTERVAL_SECONDS`, read when the loop starts).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys

#: seconds between two iterations of the backfill daemon in this process
BACKFILL_LOOP_SECONDS = 1
#: the daemons this process runs
DAEMON_TYPES = ("BACKFILL", "QUEUED_RUN_COORDINATOR", "MONITORING")
#: seconds a call to the code server (StartRun) may take: Dagster's 60 s default fails runs at
#: launch on a machine saturated by the runs themselves (measured at load average 20 on 2 cores).
#: Dagster reads it when its gRPC client is imported, so the CLI sets it in this process's
#: environment (ExecutionDaemon).
GRPC_TIMEOUT_SECONDS = "300"
#: seconds the daemon may take to stop after SIGTERM: Dagster joins each daemon thread for up to
#: 30 s and then shuts the code server down; past this, every thread's stack goes to the log and
#: the process exits (code 3). Its state is in the instance: runs it left are for run monitoring.
STOP_GRACE_SECONDS = 25.0


def _stop_watchdog(grace: float) -> None:
    """After `grace` seconds, dump every thread's stack and exit the process."""
    import threading

    def expire() -> None:
        print(f"the daemon did not stop within {grace:.0f} s of SIGTERM; its threads:", flush=True)
        faulthandler.dump_traceback(all_threads=True)
        sys.stdout.flush()
        os._exit(3)

    timer = threading.Timer(grace, expire)
    timer.daemon = True
    timer.start()


def _on_sigterm(*_) -> None:
    _stop_watchdog(STOP_GRACE_SECONDS)
    os.kill(os.getpid(), signal.SIGINT)


def main() -> int:
    import dagster._daemon.controller as controller
    from dagster import DagsterInstance
    from dagster._core.workspace.load_target import ModuleTarget
    from dagster._daemon.controller import create_daemon_of_type, daemon_controller_from_instance
    from dagster._utils.interrupts import capture_interrupts

    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = BACKFILL_LOOP_SECONDS
    # a daemon that does not stop can say where each of its threads is
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # SIGTERM (from the CLI or a supervisor) stops the daemon like Ctrl-C: threads wind down,
    # the code server is shut down, heartbeats stop
    signal.signal(signal.SIGTERM, _on_sigterm)
    target = ModuleTarget(
        module_name="quant_assets.definitions",
        attribute="defs",
        working_directory=os.getcwd(),
        location_name="quant_assets",
    )

    def daemons(instance: DagsterInstance):
        wanted = set(DAEMON_TYPES) & set(instance.get_required_daemon_types())
        return [create_daemon_of_type(kind, instance) for kind in DAEMON_TYPES if kind in wanted]

    try:
        with (
            capture_interrupts(),
            DagsterInstance.get() as instance,
            daemon_controller_from_instance(
                instance,
                workspace_load_target=target,
                gen_daemons=daemons,
                log_level=os.environ.get("QUANT_ASSETS_DAEMON_LOG_LEVEL", "warning"),
                code_server_log_level="warning",
            ) as daemon,
        ):
            daemon.check_daemon_loop()
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
