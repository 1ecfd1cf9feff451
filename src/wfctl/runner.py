"""Running one execution: the engine's events go to the journal, the snapshot and the screen.

The journal (`events.jsonl`) is the record: every event is written to the OS before
the engine goes on, so a killed runner loses nothing that happened. The snapshot
(`execution.json`) is refreshed at bounded intervals and at the end, not on every
event (rewriting it whole per event would make a long run quadratic); readers of a
live run apply the journal after the snapshot's offset.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from wfctl.errors import Conflict
from wfctl.record import ExecutionState, build_trace, parse_iso
from wfctl.store import FileLock, Store, open_append

SNAPSHOT_INTERVAL = 1.0  # seconds between snapshot refreshes during a run
JOURNAL_SYNC_INTERVAL = 0.2  # group commit: at most this long between journal fsyncs

Listener = Callable[[dict, ExecutionState], None]


class Recorder:
    """The single consumer of engine events: journal line, document, listeners."""

    def __init__(self, store: Store, execution_id: str, state: ExecutionState) -> None:
        self.store = store
        self.execution_id = execution_id
        self.state = state
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._journal = open_append(store.journal_path(execution_id))
        self._offset = self._journal.seek(0, os.SEEK_END)
        self._last_snapshot = time.monotonic()
        self._last_sync = time.monotonic()

    def __call__(self, event: dict) -> None:
        line = json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8") + b"\n"
        with self._lock:
            self._journal.write(line)  # unbuffered: in the OS before the engine goes on
            self._offset += len(line)
            self.state.apply(event)
            now = time.monotonic()
            if now - self._last_sync >= JOURNAL_SYNC_INTERVAL:
                os.fsync(self._journal.fileno())
                self._last_sync = now
            if now - self._last_snapshot >= SNAPSHOT_INTERVAL or event["type"].startswith("execution."):
                self._snapshot(sync=False)
            for listener in self.listeners:
                listener(event, self.state)

    def _snapshot(self, *, sync: bool) -> None:
        document = dict(self.state.document)
        document["journalOffset"] = self._offset
        self.store.save_snapshot(self.execution_id, document, sync=sync)
        self._last_snapshot = time.monotonic()

    def close(self) -> None:
        with self._lock:
            os.fsync(self._journal.fileno())
            self._snapshot(sync=True)
            self._journal.close()


@contextmanager
def runner_lock(store: Store, execution_id: str) -> Iterator[None]:
    """Held by the process that runs an execution, for its whole life.

    A lock that can be taken means no live runner: that is how a crashed run is told
    from a running one, whatever its last written status says.
    """
    path = store.execution_dir(execution_id) / "lock"
    lock = FileLock(path, blocking=False)
    if not lock.acquire():
        holder = _lock_holder(path)
        raise Conflict(f"execution {execution_id} is already being run by process {holder}.")
    try:
        os.ftruncate(lock.fd, 0)
        os.pwrite(lock.fd, json.dumps({"pid": os.getpid(), "startedAt": time.time()}).encode(), 0)
        yield
    finally:
        lock.release()


def _lock_holder(path: Path) -> str:
    try:
        return str(json.loads(path.read_text()).get("pid", "?"))
    except (OSError, ValueError):
        return "?"


def runner_alive(store: Store, execution_id: str) -> bool:
    path = store.execution_dir(execution_id) / "lock"
    if not path.exists():
        return False
    lock = FileLock(path, blocking=False)
    if lock.acquire():
        lock.release()
        return False
    return True


@contextmanager
def interrupt_handlers(on_interrupt: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C (and SIGTERM) stop the run like a cancel and leave it resumable.

    A second Ctrl-C falls back to Python's default and stops at once.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        on_interrupt()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def estimate_duration(store: Store, workflow_id: str, samples: int = 10) -> float | None:
    """Mean duration of the latest completed runs of a workflow, from their traces."""
    durations = []
    for trace_id in store.trace_ids(workflow_id)[: samples * 3]:
        try:
            trace = store.load_trace(workflow_id, trace_id)
        except Exception:  # a trace being written or removed right now is just skipped
            continue
        if trace.get("status") == "executed" and isinstance(trace.get("duration"), (int, float)):
            durations.append(float(trace["duration"]))
            if len(durations) >= samples:
                break
    if not durations:
        return None
    return sum(durations) / len(durations)


def write_trace(store: Store, document: dict, workflow: dict) -> dict:
    trace = build_trace(document, workflow)
    store.save_trace(document["workflowId"], trace)
    return trace


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (parse_iso(end) - parse_iso(start)).total_seconds()
