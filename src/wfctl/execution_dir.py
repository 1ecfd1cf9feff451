"""One execution's directory, `executions/<id>/`, and everything done to it.

    execution.json   snapshot, replaced atomically (with the journal offset it covers)
    workflow.json    the exact definition the execution runs, with its run options
    events.jsonl     append-only journal (wfctl.journal)
    logs/<step>.log  captured output of every attempt
    lock             flock'd by the process that runs the execution, for its whole life
    cancel.json      a cancel request, until a run has applied it
    pause.json       a pause request, until the execution is resumed or ends
    queued           present while a detached run waits for a run slot
    runner.log       what a detached runner printed

`ExecutionHandle` owns these paths and every operation on them: the library (`api`)
and the runner reach the files of an execution only through it. The run slots that
`defaults.max_running` limits are the store's (`slots/`, `queue/`): `RunSlots`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from wfctl.errors import Conflict, ExecutionNotFound, StoreError
from wfctl.journal import JournalReader, JournalWriter
from wfctl.model import LIVE, now_iso
from wfctl.record import ExecutionState, state_from_snapshot
from wfctl.store import (
    DIR_MODE,
    FileLock,
    Store,
    check_execution_id,
    step_file,
    ensure_dir,
    lock_is_held,
    read_bytes_nofollow,
    read_json,
    write_all,
    write_json_atomic,
)

LOCK_TRIES = 10
LIVE_STATUSES = LIVE  # what a status says while a runner should hold it


class ExecutionHandle:
    """The directory of one execution of a store; the id is checked before it becomes a path."""

    def __init__(self, store: Store, execution_id: str) -> None:
        self.store = store
        self.execution_id = check_execution_id(execution_id)
        self.path = store.execution_dir(execution_id)
        self.requests = Requests(self.path)
        self._held: FileLock | None = None  # the runner lock, while this handle holds it

    # -- its files ---------------------------------------------------------------------------
    @property
    def snapshot_path(self) -> Path:
        return self.path / "execution.json"

    @property
    def frozen_workflow_path(self) -> Path:
        return self.path / "workflow.json"

    @property
    def journal_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def logs_dir(self) -> Path:
        return self.path / "logs"

    @property
    def lock_path(self) -> Path:
        return self.path / "lock"

    @property
    def queued_path(self) -> Path:
        return self.path / "queued"

    @property
    def runner_log_path(self) -> Path:
        return self.path / "runner.log"

    def log_path(self, step_key: str) -> Path:
        return step_file(self.logs_dir, step_key, ".log")

    def not_found(self, detail: str = "") -> ExecutionNotFound:
        return ExecutionNotFound(f"no execution with id {self.execution_id}{detail}.")

    # -- creating ----------------------------------------------------------------------------
    def create(self, frozen_workflow: dict, document: dict) -> None:
        """Write a new execution: its directory, the definition it runs and its first
        snapshot. All of it, or nothing: a failure removes what was made."""
        self.store.init()
        try:
            self.path.mkdir(mode=DIR_MODE)
        except FileExistsError:
            raise StoreError(f"execution {self.execution_id} already exists.") from None
        try:
            ensure_dir(self.logs_dir)
            write_json_atomic(self.frozen_workflow_path, frozen_workflow, compact=True)
            self.save_snapshot(document)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)  # no half-made execution is left behind
            raise

    # -- reading -----------------------------------------------------------------------------
    def load_snapshot(self) -> dict:
        try:
            return read_json(self.snapshot_path)
        except FileNotFoundError:
            raise self.not_found() from None

    def load_frozen_workflow(self) -> dict:
        """`workflow.json`: {workflowId, version, options, definition}."""
        from wfctl.errors import WorkflowInvalid
        from wfctl.validate import path_name_problems

        try:
            frozen = read_json(self.frozen_workflow_path)
        except FileNotFoundError:
            raise self.not_found() from None
        # Its step ids and team members become log file names: checked where they are read.
        definition = frozen.get("definition") if isinstance(frozen, dict) else None
        problems = path_name_problems(definition, file=str(self.frozen_workflow_path))
        if problems:
            raise WorkflowInvalid(problems)
        return frozen

    def read_state(self) -> tuple[ExecutionState, int]:
        """The execution as it is now: the snapshot plus the journal after it, and
        `interrupted` when its status says it runs but no runner holds it. Also the
        length of the journal's intact part (a torn last line is left out), where the
        next runner appends."""
        snapshot = self.load_snapshot()
        state = state_from_snapshot(snapshot, source=str(self.snapshot_path))
        reader = self.journal_reader(self._journal_offset(snapshot))
        reader.apply(state)
        if state.document.get("status") in LIVE_STATUSES and not self.runner_alive():
            state.mark_interrupted()
        return state, reader.offset

    def _journal_offset(self, snapshot: dict) -> int:
        """Where the journal goes on after the snapshot (a whole number), or StoreError."""
        offset = snapshot.get("journalOffset") or 0
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise StoreError(f"the snapshot next to {self.journal_path} has no usable journalOffset ({offset!r}).")
        return offset

    def journal_reader(self, offset: int = 0) -> JournalReader:
        """A reader of the journal from byte `offset` (the start of a line)."""
        return JournalReader(self.journal_path, offset)

    def read_log(self, step_key: str) -> bytes | None:
        """The captured output of a step's attempts; None when it has none."""
        try:
            return read_bytes_nofollow(self.log_path(step_key))
        except FileNotFoundError:
            return None

    def runner_output(self) -> str:
        """The end of what a detached runner of this execution printed (runner.log): its
        last 4 KiB, read without blocking from a regular file only."""
        from wfctl.stepfiles import read_tail

        try:
            return read_tail(self.runner_log_path, 4096).decode("utf-8", "replace")
        except OSError:
            return ""

    def last_written(self) -> float | None:
        """When the journal or the snapshot was last written (epoch seconds), if ever."""
        times = []
        for path in (self.journal_path, self.snapshot_path):
            try:
                times.append(os.stat(path, follow_symlinks=False).st_mtime)
            except FileNotFoundError:
                pass
        return max(times) if times else None

    # -- writing: the runner -----------------------------------------------------------------
    def prepare_for_run(self) -> None:
        """Refuse planted symlinks, and remove a snapshot temp file that a crashed runner
        never renamed, before a run writes here."""
        for path in (self.path, self.logs_dir, self.journal_path):
            if path.is_symlink():
                raise StoreError(f"{path} is a symbolic link; wfctl does not follow links inside its data directory.")
        for leftover in self.path.glob(".execution.json.*.tmp"):
            leftover.unlink(missing_ok=True)

    def open_journal(self, intact: int | None = None) -> JournalWriter:
        """The journal, for appending after its first `intact` bytes (a torn tail is cut off)."""
        return JournalWriter(self.journal_path, intact=intact)

    def save_snapshot(self, document: dict, *, sync: bool = True) -> None:
        write_json_atomic(self.snapshot_path, document, sync=sync, compact=True, fault="snapshot")

    # -- the runner lock ---------------------------------------------------------------------
    @contextmanager
    def runner_lock(self) -> Iterator[None]:
        """Held by the process that runs the execution, for its whole life (and by
        whoever changes the record of one that no process runs: cancel, prune).

        A lock that can be taken means no live runner: that is how a crashed run is
        told from a running one, whatever its last written status says.
        """
        if not self.path.is_dir():
            raise self.not_found()
        lock = FileLock(self.lock_path, blocking=False)
        # Readers probe liveness by taking the lock for an instant: a few quick tries
        # tell such a probe from a runner that really holds it.
        for _ in range(LOCK_TRIES):
            if lock.acquire():
                break
            time.sleep(0.02)
        else:
            raise Conflict(f"execution {self.execution_id} is already being run by process {self.lock_holder()}.")
        try:
            if not _still_in_place(lock.fd, self.lock_path):
                # `prune` removed the execution while this process waited for its lock.
                raise self.not_found(" (it was just removed)")
            os.ftruncate(lock.fd, 0)
            os.lseek(lock.fd, 0, os.SEEK_SET)
            write_all(lock.fd, json.dumps({"pid": os.getpid(), "startedAt": time.time()}).encode())
            self._held = lock
            yield
        finally:
            self._held = None
            lock.release()

    def runner_alive(self) -> bool:
        """Does a process run this execution (hold its lock) right now? Works read-only."""
        return lock_is_held(self.lock_path)

    def lock_holder(self) -> str:
        """The pid recorded by the process that holds (or last held) the lock."""
        try:
            return str(json.loads(self.lock_path.read_text()).get("pid", "?"))
        except (OSError, ValueError):
            return "?"

    def runs_here(self) -> bool:
        """Is this very process the execution's runner (an in-process step asking)?"""
        return self.lock_holder() == str(os.getpid()) and self.runner_alive()

    # -- the queue marker --------------------------------------------------------------------
    def mark_queued(self) -> None:
        self.queued_path.touch(mode=0o600)

    def unmark_queued(self) -> None:
        _unlink(self.queued_path)

    def is_queued(self) -> bool:
        """Is a detached run of this execution waiting for a run slot?"""
        return self.queued_path.exists()

    # -- removing ----------------------------------------------------------------------------
    def remove(self, workflow_id: str | None) -> None:
        """Remove the execution and its trace (a run of `workflow_id`); the caller holds
        the runner lock, so no run can start meanwhile. The directory is renamed out of
        the way first, so a reader sees the whole execution or none of it."""
        if self._held is None:
            raise RuntimeError(f"removing {self.execution_id} needs its runner lock")
        trash = self.store.executions_dir / f".trash-{self.execution_id}"
        os.rename(self.path, trash)
        if workflow_id:
            self.store.remove_trace(workflow_id, self.execution_id)
        shutil.rmtree(trash, ignore_errors=True)


def _still_in_place(fd: int | None, path: Path) -> bool:
    """Is the file open on `fd` still the one at `path` (not moved or removed)?"""
    try:
        found = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd) if fd is not None else None
    return held is not None and (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Requests:
    """The cancel and pause requests of one execution directory (`cancel.json`,
    `pause.json`): how `wfctl cancel` and `wfctl pause` reach the process that runs it.

    A request is never cleared unread: a cancel request is removed only once a run has
    applied it and its record says so (the runner, or `cancel` itself for an execution
    that no process runs), or by the `cancel` that made it when the execution ended
    before anything applied it (and that `cancel` says so).
    """

    def __init__(self, directory: Path) -> None:
        self.cancel_path = directory / "cancel.json"
        self.pause_path = directory / "pause.json"

    def request_cancel(self, reason: str | None) -> dict:
        """Ask for a cancel; returns the request (its `id` lets its maker withdraw it)."""
        request = {"reason": reason, "at": now_iso(), "pid": os.getpid(), "id": secrets.token_hex(8)}
        write_json_atomic(self.cancel_path, request)
        return request

    def withdraw_cancel(self, request: dict) -> bool:
        """Remove `request` if it is still there, never applied (the execution ended
        first); True if it was. Another process's newer request is left alone."""
        current = self.cancel_request()
        if current is None or current.get("id") != request.get("id"):
            return False
        self.clear_cancel()
        return True

    def drop_applied_cancel(self, document: dict) -> None:
        """A request that the record shows applied is no request for a new run: the
        runner that applied it died between recording the cancel and removing it."""
        request = self.cancel_request()
        if (
            request is not None
            and document.get("status") == "cancelled"
            and request.get("reason") == document.get("cancelReason")
            and str(request.get("at") or "") <= str(document.get("completedAt") or "")
        ):
            self.clear_cancel()

    def request_pause(self) -> None:
        write_json_atomic(self.pause_path, {"at": now_iso(), "pid": os.getpid()})

    def clear_pause(self) -> bool:
        try:
            os.unlink(self.pause_path)
            return True
        except FileNotFoundError:
            return False

    def clear_cancel(self) -> None:
        _unlink(self.cancel_path)

    def cancel_request(self) -> dict | None:
        if not os.path.exists(self.cancel_path):  # the common case, checked before every step
            return None
        try:
            request = read_json(self.cancel_path)
        except FileNotFoundError:
            return None
        except Exception:  # a request being written right now is read on the next look
            return None
        return request if isinstance(request, dict) else {"reason": None}

    def pause_requested(self) -> bool:
        return self.pause_path.exists()


PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
QUEUE_POLL = 0.1  # seconds between a waiting run's looks at the queue


class RunSlots:
    """The `defaults.max_running` run slots of a store (flock'd files in `slots/`) and
    the queue of detached runs waiting for one (a file per waiter in `queue/`, named
    by its rank: priority, then age)."""

    def __init__(self, store: Store, limit: int | None) -> None:
        self.store = store
        self.limit = int(limit or 0)  # 0: no limit
        self.slots_dir = store.root / "slots"
        self.queue_dir = store.root / "queue"

    @contextmanager
    def hold(
        self, handle: ExecutionHandle, priority: str | None, *, wait: bool, give_up: Callable[[], bool] = lambda: False
    ) -> Iterator[None]:
        """A slot for `handle`'s run while the block runs (when a limit is set).

        Without `wait` (a foreground run) the run goes ahead even when every slot is
        taken. With it (a detached run), the run waits in the queue, marked `queued`,
        and only the first live waiter may take a free slot. A waiter stops waiting as
        soon as `give_up()` holds (it was cancelled) and goes ahead without a slot: it
        starts no step.
        """
        if not self.limit:
            yield
            return
        ensure_dir(self.slots_dir)
        ensure_dir(self.queue_dir)
        rank = f"{PRIORITY_RANK.get(priority or 'normal', 1)}-{handle.execution_id}"
        entry = self.queue_dir / rank
        held: FileLock | None = None
        try:
            if wait:
                entry.touch(mode=0o600)
                handle.mark_queued()
            while True:
                if not wait or self._first_in_queue(rank):
                    held = self._take_free_slot()
                if held is not None or not wait or give_up():
                    break
                time.sleep(QUEUE_POLL)
            _unlink(entry)
            handle.unmark_queued()
            yield
        finally:
            _unlink(entry)
            handle.unmark_queued()
            if held is not None:
                held.release()

    def _take_free_slot(self) -> FileLock | None:
        for number in range(self.limit):
            lock = FileLock(self.slots_dir / f"{number}.lock", blocking=False)
            if lock.acquire():
                return lock
        return None

    def _first_in_queue(self, rank: str) -> bool:
        """Is `rank` the first waiter whose runner is alive? Dead waiters are removed."""
        for name in sorted(os.listdir(self.queue_dir)):
            if name == rank:
                return True
            try:
                alive = ExecutionHandle(self.store, name.split("-", 1)[-1]).runner_alive()
            except Exception:  # a name that is not an execution id is not a waiter
                alive = False
            if alive:
                return False
            _unlink(self.queue_dir / name)
        return True
