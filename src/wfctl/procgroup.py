"""Stopping a step's whole process group: SIGTERM, a grace period, then SIGKILL.

Every step command starts in its own session (`start_new_session=True`), so its pid
is also its process group's id and one signal reaches everything it started,
grandchildren included. After SIGKILL a process is reaped with a bound too: one stuck
in the kernel is given up on, never waited for forever.

Used on this machine (processes.py, for agents and notification hooks) and on Dask
workers (executors/dask.py): this module uses the standard library only, and the Dask
executor ships it to workers by value, so workers need no wfctl.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Callable

KILL_GRACE_SECONDS = 2.0  # SIGTERM, then SIGKILL after this long
REAP_SECONDS = 5.0  # after SIGKILL, how long its exit is waited for at most


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group `proc` leads; a group that is gone is fine."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left in the step's group: nothing it started outlives the step."""
    signal_group(proc, signal.SIGKILL)


def wait_exit(proc: subprocess.Popen, seconds: float) -> bool:
    """Reap the process if it exits within `seconds`; False when it has not."""
    try:
        proc.wait(timeout=max(0.0, seconds))
        return True
    except subprocess.TimeoutExpired:
        return False


def terminate_group(
    proc: subprocess.Popen,
    grace: float = KILL_GRACE_SECONDS,
    *,
    exited: Callable[[float], object] | None = None,
    reap: float = REAP_SECONDS,
) -> None:
    """SIGTERM the step's process group, SIGKILL what is left after `grace` seconds,
    then wait for the leader's exit at most `reap` seconds.

    `exited(timeout)` waits for the leader's exit (default: reaping it here); a caller
    whose own thread already waits on the process passes that thread's event.
    """
    wait = exited or (lambda seconds: wait_exit(proc, seconds))
    signal_group(proc, signal.SIGTERM)
    wait(grace)
    kill_group(proc)
    wait(reap)
