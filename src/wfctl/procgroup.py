"""Stopping a step's whole process group: SIGTERM, a grace period, then SIGKILL.

Every step command starts in its own session (`start_new_session=True`), so its pid
is also its process group's id and one signal reaches everything it started,
grandchildren included. Used on this machine (agents.py) and on Dask workers
(executors/dask.py): this module uses the standard library only, and the Dask
executor ships it to workers by value, so workers need no wfctl.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Callable

KILL_GRACE_SECONDS = 2.0


def signal_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group `pid` leads; a group that is gone is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_leftovers(proc: subprocess.Popen) -> None:
    """SIGKILL what is left in the step's group: nothing it started outlives the step."""
    signal_group(proc.pid, signal.SIGKILL)


def terminate_group(
    proc: subprocess.Popen,
    grace: float = KILL_GRACE_SECONDS,
    *,
    exited: Callable[[float | None], object] | None = None,
) -> None:
    """SIGTERM the step's process group, SIGKILL what is left after `grace` seconds,
    then wait for the leader.

    `exited(timeout)` waits for the leader's exit (default: `proc.wait`); a caller
    whose own thread already waits on the process passes that thread's event.
    """
    wait = exited or _waiter(proc)
    signal_group(proc.pid, signal.SIGTERM)
    wait(grace)
    kill_leftovers(proc)
    wait(None)


def _waiter(proc: subprocess.Popen) -> Callable[[float | None], object]:
    def wait(timeout: float | None) -> object:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    return wait
