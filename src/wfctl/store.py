"""The data directory: workflows, executions, journals, logs and traces as plain files.

Layout (design.md §4):

    workflows/<wf_id>.json                definition + metadata
    workflows/deleted/<wf_id>.json        what a deleted workflow was (its history stays reachable)
    executions/<exec_id>/                 one execution: see wfctl.execution_dir
    traces/<wf_id>/<exec_id>.json         the seed 000 trace of one run
    teams/<wf_id>.json                    round-robin turns of a workflow's teams
    slots/, queue/                        run slots and their queue (execution_dir.RunSlots)

Every id is checked against an allow-list before it becomes part of a path, every
write of a whole file is atomic (temp file in the same directory, fsync, rename),
directories are 0700 and files 0600 whatever the umask.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from wfctl import faults
from wfctl.errors import StoreError, TraceNotFound, UsageError, WorkflowNotFound

SCHEMA_VERSION = 1
DIR_MODE = 0o700
FILE_MODE = 0o600

_WORKFLOW_ID = re.compile(r"wf_[0-9a-z]{4,40}")
_EXECUTION_ID = re.compile(r"exec_[0-9a-z]{4,40}")
# Step keys name log files: step ids plus loop indices and team members, e.g. process[3].
_STEP_KEY = re.compile(r"[A-Za-z0-9_.\-\[\]@]{1,200}")


def data_dir() -> Path:
    """`$WFCTL_HOME`, else the per-user data directory: the home of a Workspace made
    without one. Resolved per call, never at import."""
    home = os.environ.get("WFCTL_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("wfctl", appauthor=False))


def new_id(prefix: str) -> str:
    """A time-sortable id: milliseconds since the epoch in base 36, then 8 random chars."""
    millis = int(time.time() * 1000)
    return f"{prefix}_{_base36(millis):0>9}{secrets.token_hex(4)}"


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out or "0"


def is_workflow_id(text: str) -> bool:
    return bool(_WORKFLOW_ID.fullmatch(text))


def is_execution_id(text: str) -> bool:
    return bool(_EXECUTION_ID.fullmatch(text))


def check_execution_id(text: str) -> str:
    if not _EXECUTION_ID.fullmatch(text):
        raise UsageError(
            f"'{printable(text)}' is not an execution id (they look like exec_0mhx3k2a1b2c3d4e)."
        )
    return text


def check_workflow_id(text: str) -> str:
    if not _WORKFLOW_ID.fullmatch(text):
        raise UsageError(f"'{printable(text)}' is not a workflow id (they look like wf_0mhx3k2a1b2c3d4e).")
    return text


def check_step_key(text: str) -> str:
    if not _STEP_KEY.fullmatch(text) or text in {".", ".."}:
        raise UsageError(f"'{printable(text)}' is not a step id.")
    return text


def step_file(logs_dir: Path, step_key: str, suffix: str) -> Path:
    """`<logs_dir>/<step key><suffix>`: the one place a step key becomes a file name.

    The key is checked against the allow-list (no '/', not '.' or '..'), whatever its
    source (a step id, a team member from config.toml, a record on disk), so the path
    never leaves the execution's logs directory.
    """
    name = check_step_key(step_key) + suffix
    path = logs_dir / name
    if path.parent != logs_dir or os.path.basename(name) != name:  # belt and braces
        raise UsageError(f"'{printable(step_key)}' is not a step id.")
    return path


def printable(text: str) -> str:
    """Text from outside, safe in a one-line message: escapes instead of control
    characters, newlines or bidi overrides, and at most 80 characters."""
    shown = text if len(text) <= 80 else text[:77] + "..."
    return shown.encode("unicode_escape").decode("ascii")


def ensure_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700 directories; an existing one is left as it is."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create {path}: {err.strerror or err}.") from err
    return path


def write_bytes_atomic(path: Path, data: bytes, *, sync: bool = True, fault: str | None = None) -> None:
    """Replace `path` with `data` so a reader sees the old file or the new one, never half.

    The temp file lives in the same directory (rename is only atomic within a file
    system); it is removed again when anything fails, so no temp file is left behind.
    """
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            if fault:
                faults.io_error(f"enospc-{fault}")
            write_all(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if fault:
            faults.crash("before-rename")
            faults.io_error("eio-rename")
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StoreError(f"cannot write {path}: {err.strerror or err}.") from err


def write_all(fd: int, data: bytes, *, fault: str | None = None) -> None:
    """Write every byte of `data` to `fd`, or raise.

    `os.write` may write less than it was given (a disk that fills up, a signal): a
    short write is not a write, so the rest is written until nothing is left, and a
    write that makes no progress is an error rather than a loop.
    """
    view = memoryview(data)
    while view:
        if fault:
            faults.short_write(fault, fd, view)
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        view = view[written:]


class AppendFile(io.FileIO):
    """A file opened for appending whose `write` writes everything it is given or raises
    (a raw file's `write` returns how much it wrote, and callers forget to look)."""

    def write(self, data: bytes) -> int:  # type: ignore[override]
        write_all(self.fileno(), data)
        return len(data)


def write_json_atomic(
    path: Path, document: Any, *, sync: bool = True, compact: bool = False, fault: str | None = None
) -> None:
    """Write a JSON document atomically. `compact` documents (snapshots, traces) skip the
    indentation: Python's fast C encoder only runs without it, and they can be large."""
    if compact:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)
    else:
        text = json.dumps(document, indent=2, ensure_ascii=False, default=str)
    write_bytes_atomic(path, text.encode("utf-8") + b"\n", sync=sync, fault=fault)


def read_json(path: Path) -> Any:
    # O_NOFOLLOW: a symlink planted in the data directory is never followed.
    data = read_bytes_nofollow(path)
    try:
        return json.loads(data)
    except ValueError as err:
        raise StoreError(f"{path} is not valid JSON ({err}).") from err
    except RecursionError:
        raise StoreError(f"{path} cannot be read: it nests too deeply.") from None


def open_append(path: Path):
    """Open a file for appending, created 0600, never through a symlink."""
    ensure_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
    except OSError as err:
        raise _store_error(path, err) from err
    return AppendFile(fd, "ab")


def read_bytes_nofollow(path: Path, *, offset: int = 0, limit: int = -1) -> bytes:
    """A file's bytes (from `offset`), refusing a symlink planted in its place, and a FIFO
    or a device (a step can put one at its log's path): opened without blocking, checked."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise _store_error(path, err) from err
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise StoreError(f"{path} is not a regular file (mode {stat.filemode(mode)}); wfctl does not read it.")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as handle:
        if offset:
            handle.seek(offset)
        return handle.read(limit)


def _store_error(path: Path, err: OSError) -> StoreError:
    import errno

    if err.errno == errno.ELOOP:
        return StoreError(f"{path} is a symbolic link; wfctl does not follow links inside its data directory.")
    return StoreError(f"cannot open {path}: {err.strerror or err}.")


def check_private(root: Path) -> None:
    """Refuse a data directory that others could write to: its records would not be ours."""
    try:
        info = os.stat(root)
    except FileNotFoundError:
        return
    except OSError as err:
        raise StoreError(f"cannot use the data directory {root}: {err.strerror or err}.") from err
    if info.st_uid != os.getuid():
        raise UsageError(
            f"the data directory {root} belongs to another user (uid {info.st_uid}); "
            "set WFCTL_HOME to a directory of your own."
        )
    if info.st_mode & 0o022:
        raise UsageError(
            f"the data directory {root} can be written by others (mode {oct(info.st_mode & 0o777)}); "
            f"make it private with: chmod 700 {root}"
        )


class Store:
    """All file access to one data directory, given by whoever holds it (a Workspace):
    the store never looks at the environment. The files of one execution are its
    `ExecutionHandle`'s (wfctl.execution_dir)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        check_private(self.root)

    # -- paths ---------------------------------------------------------------------------
    @property
    def workflows_dir(self) -> Path:
        return self.root / "workflows"

    @property
    def executions_dir(self) -> Path:
        return self.root / "executions"

    @property
    def traces_dir(self) -> Path:
        return self.root / "traces"

    def workflow_path(self, workflow_id: str) -> Path:
        return self.workflows_dir / f"{check_workflow_id(workflow_id)}.json"

    def execution_dir(self, execution_id: str) -> Path:
        return self.executions_dir / check_execution_id(execution_id)

    def trace_path(self, workflow_id: str, trace_id: str) -> Path:
        return self.traces_dir / check_workflow_id(workflow_id) / f"{check_execution_id(trace_id)}.json"

    def init(self) -> None:
        ensure_dir(self.root)
        for sub in (self.workflows_dir, self.executions_dir, self.traces_dir):
            ensure_dir(sub)

    # -- workflows -----------------------------------------------------------------------
    def save_workflow(self, record: dict) -> None:
        self.init()
        write_json_atomic(self.workflow_path(record["workflowId"]), record, compact=True)

    def load_workflow(self, workflow_id: str) -> dict:
        try:
            return read_json(self.workflow_path(workflow_id))
        except FileNotFoundError:
            raise WorkflowNotFound(f"no workflow with id {workflow_id}.") from None

    def delete_workflow(self, workflow_id: str) -> None:
        try:
            os.unlink(self.workflow_path(workflow_id))
        except FileNotFoundError:
            raise WorkflowNotFound(f"no workflow with id {workflow_id}.") from None

    def iter_workflows(self) -> Iterator[dict]:
        yield from _iter_records(self.workflows_dir)

    # -- deleted workflows: their executions and traces stay reachable --------------------
    @property
    def deleted_dir(self) -> Path:
        return self.workflows_dir / "deleted"

    def save_tombstone(self, record: dict) -> None:
        """Keep what a deleted workflow was (id, name, definition, deletedAt)."""
        ensure_dir(self.deleted_dir)
        write_json_atomic(self.deleted_dir / f"{check_workflow_id(record['workflowId'])}.json", record, compact=True)

    def iter_tombstones(self) -> Iterator[dict]:
        yield from _iter_records(self.deleted_dir)

    def has_history(self, workflow_id: str) -> bool:
        """Did a workflow with this id exist: a deleted one's record, or its traces
        (a workflow deleted before deletions were recorded)?"""
        check_workflow_id(workflow_id)
        return (self.deleted_dir / f"{workflow_id}.json").is_file() or (self.traces_dir / workflow_id).is_dir()

    def workflow_lock(self):
        """An exclusive lock over the workflow registry (name uniqueness on create)."""
        self.init()
        return FileLock(self.workflows_dir / ".lock")

    def next_team_turn(self, workflow_id: str, team: str) -> int:
        """The turn number of a round-robin team in this run: 0, 1, 2, ... across runs."""
        path = self.root / "teams" / f"{check_workflow_id(workflow_id)}.json"
        ensure_dir(path.parent)
        with FileLock(self.root / "teams" / ".lock"):
            try:
                turns = read_json(path)
            except (FileNotFoundError, StoreError):
                turns = {}
            turn = int(turns.get(team, 0))
            turns[team] = turn + 1
            write_json_atomic(path, turns)
        return turn

    # -- executions ----------------------------------------------------------------------
    def execution_ids(self) -> list[str]:
        """Execution ids, newest first (ids sort by creation time)."""
        try:
            names = os.listdir(self.executions_dir)
        except FileNotFoundError:
            return []
        return sorted((n for n in names if _EXECUTION_ID.fullmatch(n)), reverse=True)

    # -- traces --------------------------------------------------------------------------
    def save_trace(self, workflow_id: str, trace: dict) -> None:
        path = self.trace_path(workflow_id, trace["id"])
        write_json_atomic(path, trace, compact=True)

    def load_trace(self, workflow_id: str, trace_id: str) -> dict:
        try:
            return read_json(self.trace_path(workflow_id, trace_id))
        except FileNotFoundError:
            raise TraceNotFound(f"no trace {trace_id} for workflow {workflow_id}.") from None

    def remove_trace(self, workflow_id: str, trace_id: str) -> None:
        """Remove a trace, if there is one."""
        try:
            os.unlink(self.trace_path(workflow_id, trace_id))
        except (FileNotFoundError, UsageError):
            pass

    def trace_summary(self, workflow_id: str, trace_id: str) -> dict:
        """A trace's fields before `response` (id, status, run_date, duration, ...),
        read from the start of its file: traces of long runs are megabytes."""
        path = self.trace_path(workflow_id, trace_id)
        try:
            head = read_bytes_nofollow(path, limit=4096)
        except FileNotFoundError:
            raise TraceNotFound(f"no trace {trace_id} for workflow {workflow_id}.") from None
        cut = head.find(b',"response":')
        if cut > 0:
            try:
                return json.loads(head[:cut] + b"}")
            except (ValueError, RecursionError):
                pass  # not the head wfctl writes: the whole file says what it is
        trace = self.load_trace(workflow_id, trace_id)
        trace.pop("response", None)
        return trace

    def trace_ids(self, workflow_id: str) -> list[str]:
        """Trace ids of one workflow, newest first."""
        try:
            names = os.listdir(self.traces_dir / check_workflow_id(workflow_id))
        except FileNotFoundError:
            return []
        ids = [n[:-5] for n in names if n.endswith(".json") and _EXECUTION_ID.fullmatch(n[:-5])]
        return sorted(ids, reverse=True)


def _iter_records(directory: Path) -> Iterator[dict]:
    """The `<wf_id>.json` records of a directory, by id."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".json") and is_workflow_id(name[:-5]):
            try:
                yield read_json(directory / name)
            except (FileNotFoundError, StoreError):
                continue  # deleted meanwhile, or not ours: a listing skips it


def lock_is_held(path: Path) -> bool:
    """Does some process hold the flock on `path` right now?

    Read-only, so that a read-only data directory (a backup, a read-only mount) can
    be read: the file is opened O_RDONLY and never created (a missing lock file means
    nobody holds it), and the probe takes a shared lock for an instant, which never
    stops another probe.
    """
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise _store_error(path, err) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor drops the probe's lock
    return False


class FileLock:
    """An exclusive flock on a file, held for the life of a `with` block."""

    def __init__(self, path: Path, *, blocking: bool = True) -> None:
        self.path = path
        self.blocking = blocking
        self.fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        except OSError as err:
            raise _store_error(self.path, err) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
