"""Named fault points, for tests that prove nothing is lost when things go wrong.

`WFCTL_FAULT=POINT` (or `POINT:N`, the N-th time the point is reached; several
separated by commas) makes the runner fail there:

    after-step      exit hard right after a step's process ended, before it is journaled
    mid-append      exit hard in the middle of a journal append (half a line on disk)
    before-rename   exit hard after a snapshot's temp file is written, before the rename
    enospc-journal  the journal append fails with "No space left on device"
    short-journal   the journal append writes half its line, then fails with "No space
                    left on device" (a disk that fills up in the middle of a write)
    enospc-snapshot the snapshot write fails with "No space left on device"
    eio-fsync       fsync of the journal fails with an I/O error
    eio-rename      the snapshot rename fails with an I/O error
    stall-prune     `prune` stops between deciding to remove an execution and removing
                    it: it creates `stall-prune.reached` in $WFCTL_FAULT_DIR and waits
                    (at most 60 s) for `stall-prune.go` there, as a process descheduled
                    at the worst moment would
    enospc-scheduler the scheduler's state file write fails with "No space left on device"
    scheduler-after-intent   the scheduler exits hard right after writing down a run, before making it
    scheduler-after-prepare  the scheduler exits hard after making a run's execution, before starting it
    enospc-log      a write to a step's log fails with "No space left on device" (each
                    write counts: the attempt's header line, every chunk of output, the
                    footer line; an http agent's header line and body chunks)
    enospc-scratch  writing a value passed to a step through a file (WFCTL_INPUT_FILE,
                    WFCTL_ITEM_FILE, a large template value) fails with "No space left on device"

Unset (always, outside tests) this costs one dict lookup per point.
"""

from __future__ import annotations

import errno
import os
import threading
import time

_SPEC = os.environ.get("WFCTL_FAULT", "")
_ARMED: dict[str, int] = {}
for _item in filter(None, (part.strip() for part in _SPEC.split(","))):
    _name, _, _count = _item.partition(":")
    _ARMED[_name] = int(_count) if _count.isdigit() else 1
_lock = threading.Lock()
_ERRORS = {
    "enospc": (errno.ENOSPC, "No space left on device"),
    "eio": (errno.EIO, "Input/output error"),
}


def reached(point: str) -> bool:
    """True when the fault armed at `point` fires now."""
    if point not in _ARMED:
        return False
    with _lock:
        _ARMED[point] -= 1
        return _ARMED[point] == 0


def crash(point: str) -> None:
    """Exit at once, like a kill -9, when `point` is armed and reached."""
    if reached(point):
        os._exit(137)


def io_error(point: str) -> None:
    """Raise the OSError armed at `point` (enospc-… or eio-…) when reached."""
    if reached(point):
        code, text = _ERRORS[point.split("-", 1)[0]]
        raise OSError(code, text)


def short_write(point: str, fd: int, data: bytes | memoryview) -> None:
    """When the fault armed at `point` fires: write the first half of `data` to `fd`,
    then fail with ENOSPC, as a disk that fills up in the middle of a write does."""
    if reached(point):
        os.write(fd, data[: len(data) // 2])
        code, text = _ERRORS["enospc"]
        raise OSError(code, text)


STALL_LIMIT = 60.0  # seconds a stalled process waits for its go file at most


def stall(point: str) -> None:
    """When the fault armed at `point` fires: say so with `<point>.reached` in
    $WFCTL_FAULT_DIR, then wait (bounded) until the test creates `<point>.go` there."""
    if not reached(point):
        return
    folder = os.environ.get("WFCTL_FAULT_DIR") or "."
    with open(os.path.join(folder, f"{point}.reached"), "w"):
        pass
    go = os.path.join(folder, f"{point}.go")
    deadline = time.monotonic() + STALL_LIMIT
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
