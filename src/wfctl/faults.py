"""Named fault points, for tests that prove nothing is lost when things go wrong.

`WFCTL_FAULT=POINT` (or `POINT:N`, the N-th time the point is reached; several
separated by commas) makes the runner fail there:

    after-step      exit hard right after a step's process ended, before it is journaled
    mid-append      exit hard in the middle of a journal append (half a line on disk)
    before-rename   exit hard after a snapshot's temp file is written, before the rename
    enospc-journal  the journal append fails with "No space left on device"
    enospc-snapshot the snapshot write fails with "No space left on device"
    eio-fsync       fsync of the journal fails with an I/O error
    eio-rename      the snapshot rename fails with an I/O error
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
