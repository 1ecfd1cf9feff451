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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from wfctl import events, faults
from wfctl.errors import Conflict, ExecutionNotFound, StoreError
from wfctl.executors import Executor, open_executor
from wfctl.model import TERMINAL
from wfctl.record import ExecutionState, build_trace
from wfctl.store import FileLock, Store, lock_is_held, open_append, write_all

if TYPE_CHECKING:
    from wfctl.model import Workflow
    from wfctl.runstate import Prior

LOCK_TRIES = 10
SNAPSHOT_INTERVAL = 1.0  # seconds between snapshot refreshes during a run
JOURNAL_SYNC_INTERVAL = 0.2  # group commit: at most this long between journal fsyncs

Listener = Callable[[dict, ExecutionState], None]


class Recorder:
    """The single consumer of engine events: journal line, document, listeners."""

    def __init__(
        self, store: Store, execution_id: str, state: ExecutionState, *, intact: int | None = None, masker: Any = None
    ) -> None:
        self.store = store
        self.execution_id = execution_id
        self.state = state
        self.masker = masker
        self.listeners: list[Listener] = []
        # Set when the record cannot be written: the run must stop starting steps.
        self.broken: str | None = None
        self.broken_at: str | None = None  # the step whose event could not be written
        self.on_broken: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        path = store.journal_path(execution_id)
        if intact is not None and path.exists() and path.stat().st_size > intact:
            # A torn last line (a runner killed mid-append) goes before anything is added.
            os.truncate(path, intact)
        self._journal = open_append(path)
        self._offset = self._journal.seek(0, os.SEEK_END)
        self._last_snapshot = time.monotonic()
        self._last_sync = time.monotonic()

    def __call__(self, event: dict) -> None:
        text, event = encode_event(event)
        if self.masker:
            masked = self.masker.text(text)
            if masked != text:  # what is kept and shown is what the journal says
                text, event = masked, json.loads(masked)
        line = text.encode("utf-8") + b"\n"
        with self._lock:
            if self.broken is None:
                try:
                    self._append(line)
                except (OSError, StoreError) as err:
                    self._break(err, event)
            self.state.apply(event)
            if self.broken is None:
                try:
                    now = time.monotonic()
                    if now - self._last_sync >= JOURNAL_SYNC_INTERVAL:
                        self._sync()
                        self._last_sync = now
                    if now - self._last_snapshot >= SNAPSHOT_INTERVAL or event["type"].startswith("execution."):
                        self._snapshot(sync=False)
                except (OSError, StoreError) as err:
                    self._break(err, event)
            for listener in self.listeners:
                listener(event, self.state)

    def _append(self, line: bytes) -> None:
        faults.io_error("enospc-journal")
        if faults.reached("mid-append"):
            self._journal.write(line[: len(line) // 2])
            os._exit(137)
        try:
            # Unbuffered: in the OS before the engine goes on; every byte, or an error.
            write_all(self._journal.fileno(), line, fault="short-journal")
        except OSError:
            self._cut_back()
            raise
        self._offset += len(line)

    def _cut_back(self) -> None:
        """A failed append may have left part of its line on disk: the journal must end
        at its last whole line, where the next append (or a resume) starts."""
        try:
            os.ftruncate(self._journal.fileno(), self._offset)
        except OSError:
            pass  # the append's own error is reported; a resume cuts a torn tail off too

    def _sync(self) -> None:
        faults.io_error("eio-fsync")
        os.fsync(self._journal.fileno())

    def _break(self, err: Exception, event: dict | None = None) -> None:
        """The record cannot be written: say where, once, and stop the run. An fsync
        error is not retried: after one, what reached the disk is unknown."""
        message = getattr(err, "message", None) or f"cannot write {self.store.journal_path(self.execution_id)}: {getattr(err, 'strerror', None) or err}"
        self.broken = message.rstrip(".")
        self.broken_at = (event or {}).get("step") or self.state.document.get("currentStep")
        if self.on_broken is not None:
            self.on_broken(self.broken)

    def storage_failed(self, message: str, step: str | None) -> None:
        """A file the run writes besides the record (a step's log) could not be written:
        the run stops as when the journal fails, and what was recorded stays resumable."""
        with self._lock:
            if self.broken is None:
                self._break(StoreError(message), {"step": step})

    def _snapshot(self, *, sync: bool) -> None:
        document = dict(self.state.document)
        document["journalOffset"] = self._offset
        self.store.save_snapshot(self.execution_id, document, sync=sync)
        self._last_snapshot = time.monotonic()

    def close(self) -> None:
        with self._lock:
            try:
                if self.broken is None:
                    self._sync()
                    self._snapshot(sync=True)
            except (OSError, StoreError) as err:
                self._break(err, None)
            finally:
                self._journal.close()


def encode_event(event: dict) -> tuple[str, dict]:
    """An event's journal line (without its newline), and the event as that line says it.

    Results were checked before they became events (results.settle). Anything else
    that is not JSON data (NaN, a cycle, a lone surrogate, an object whose str() fails)
    is written as text saying what it was: one line every reader can read, always,
    never a runner that dies in the middle of a record.
    """
    try:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)
        if not text.isascii():
            text.encode("utf-8")  # a lone surrogate cannot be written as UTF-8
        return text, event
    except Exception:  # anything json.dumps or a str() of someone else's object can raise
        from wfctl.values import writable

        event = writable(event)
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False), event


@contextmanager
def runner_lock(store: Store, execution_id: str) -> Iterator[None]:
    """Held by the process that runs an execution, for its whole life.

    A lock that can be taken means no live runner: that is how a crashed run is told
    from a running one, whatever its last written status says.
    """
    path = store.execution_dir(execution_id) / "lock"
    if not path.parent.is_dir():
        raise ExecutionNotFound(f"no execution with id {execution_id}.")
    lock = FileLock(path, blocking=False)
    # Readers probe liveness by taking the lock for an instant: a few quick tries tell
    # such a probe from a runner that really holds it.
    for _ in range(LOCK_TRIES):
        if lock.acquire():
            break
        time.sleep(0.02)
    else:
        holder = _lock_holder(path)
        raise Conflict(f"execution {execution_id} is already being run by process {holder}.")
    try:
        if not _still_in_place(lock.fd, path):
            # `prune` removed the execution while this process waited for its lock.
            raise ExecutionNotFound(f"no execution with id {execution_id} (it was just removed).")
        os.ftruncate(lock.fd, 0)
        os.lseek(lock.fd, 0, os.SEEK_SET)
        write_all(lock.fd, json.dumps({"pid": os.getpid(), "startedAt": time.time()}).encode())
        yield
    finally:
        lock.release()


def _still_in_place(fd: int, path: Path) -> bool:
    """Is the file open on `fd` still the one at `path` (not moved or removed)?"""
    try:
        found = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def lock_holder(store: Store, execution_id: str) -> str:
    """The pid recorded by the process that holds (or last held) an execution."""
    return _lock_holder(store.execution_dir(execution_id) / "lock")


def _lock_holder(path: Path) -> str:
    try:
        return str(json.loads(path.read_text()).get("pid", "?"))
    except (OSError, ValueError):
        return "?"


def runner_alive(store: Store, execution_id: str) -> bool:
    """Does a process run this execution (hold its lock) right now? Works read-only."""
    return lock_is_held(store.execution_dir(execution_id) / "lock")


def runs_here(store: Store, execution_id: str) -> bool:
    """Is this very process the execution's runner (an in-process step asking)?"""
    return lock_holder(store, execution_id) == str(os.getpid()) and runner_alive(store, execution_id)


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
    """Mean duration of the latest completed runs of a workflow, from their traces.

    Dry runs are left out: echo steps take no time, so they would pull the estimate
    of a real run towards its own start."""
    durations = []
    for trace_id in store.trace_ids(workflow_id)[: samples * 3]:
        try:
            trace = store.trace_summary(workflow_id, trace_id)
        except Exception:  # a trace being written or removed right now is just skipped
            continue
        if trace.get("dryRun"):
            continue
        if trace.get("status") == "executed" and isinstance(trace.get("duration"), (int, float)):
            durations.append(float(trace["duration"]))
            if len(durations) >= samples:
                break
    if not durations:
        return None
    return sum(durations) / len(durations)


def write_trace(store: Store, document: dict, workflow: "Workflow") -> dict:
    trace = build_trace(document, workflow)
    store.save_trace(document["workflowId"], trace)
    return trace



@dataclass
class RunOptions:
    """How one run of an execution (execute, retry, resume) is driven."""

    dry_run: bool = False
    on_event: Listener | None = None
    on_start: Callable[[dict], None] | None = None
    notify: dict = field(default_factory=dict)  # command-line overrides: email, slack, webhook
    max_concurrency: int = 4
    agents: dict = field(default_factory=dict)
    teams: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    extra_env: dict = field(default_factory=dict)
    nice: int = 0
    executor: str = "local"  # "local", or "dask://HOST:PORT"
    infrastructure_retries: int = 3  # re-runs of an attempt the infrastructure lost
    base_dir: Path | None = None  # where relative secret files are found (the workflow file's directory)
    fail_fast: bool = False  # a failure cancels the steps running beside it


def run_execution(
    store: Store,
    execution_id: str,
    workflow: "Workflow",
    state: ExecutionState,
    run_input: dict,
    options: RunOptions,
    *,
    prior: "Prior | None" = None,
    intact: int | None = None,
    preamble: list[dict] | None = None,
) -> dict:
    """Drive the engine for one execution while holding its runner lock.

    The caller holds `runner_lock`. Returns the final execution document.
    """
    executor = open_executor(options.executor)
    try:
        return _run_with(store, execution_id, workflow, state, run_input, options, prior, intact, preamble, executor)
    finally:
        executor.close()


def _run_with(
    store: Store,
    execution_id: str,
    workflow: "Workflow",
    state: ExecutionState,
    run_input: dict,
    options: RunOptions,
    prior: "Prior | None",
    intact: int | None,
    preamble: list[dict] | None,
    executor: Executor,
) -> dict:
    from wfctl.engine import Engine, Settings
    from wfctl.notify import build_event, send, targets_from, wanted

    from wfctl.masking import Masker, resolve

    document = state.document
    workflow_id = document["workflowId"]
    exec_dir = store.execution_dir(execution_id)
    check_not_symlinks(exec_dir, exec_dir / "logs", exec_dir / "events.jsonl")
    for leftover in exec_dir.glob(".execution.json.*.tmp"):
        leftover.unlink(missing_ok=True)  # a snapshot a crashed runner never renamed
    secrets = resolve(workflow.secrets, base=options.base_dir)
    masker = Masker(secrets.values()) if secrets else None
    recorder = Recorder(store, execution_id, state, intact=intact, masker=masker)
    for event in preamble or ():
        recorder(event)
    if options.on_event is not None:
        recorder.listeners.append(options.on_event)
    targets = targets_from(
        workflow.notifications,
        email=options.notify.get("email"),
        slack=options.notify.get("slack"),
        webhook=options.notify.get("webhook"),
    )
    pending_sends: list[threading.Thread] = []

    def deliver(name: str, step: str | None = None, error: dict | None = None, on_error: bool = False) -> None:
        if not wanted(targets, name, notify_on_error=on_error):
            return
        event = build_event(name, state.document, step=step, error=error)
        for result in send(targets, event, options.config, cwd=os.getcwd()):
            recorder(events.notification_sent(event["at"], name, result))

    def on_step_failure(event: dict, _state: ExecutionState) -> None:
        if event["type"] == "step.finished" and event.get("status") == "failed" and event.get("notify"):
            sender = threading.Thread(
                target=deliver, args=("step_failed", event["step"], event.get("error"), True), daemon=True
            )
            pending_sends.append(sender)
            sender.start()

    recorder.listeners.append(on_step_failure)
    settings = Settings(
        execution_id=execution_id,
        workflow_id=workflow_id,
        log_dir=exec_dir / "logs",
        agents={**options.agents, **workflow.agents},
        teams={**options.teams, **workflow.teams},
        max_concurrency=options.max_concurrency,
        dry_run=options.dry_run,
        team_turn=lambda team: store.next_team_turn(workflow_id, team),
        extra_env={**options.extra_env, "WFCTL_PRIORITY": str(document.get("priority") or "normal")},
        nice=options.nice,
        executor=executor,
        secrets=secrets,
        masker=masker,
        fail_fast=options.fail_fast,
        infrastructure_retries=options.infrastructure_retries,
        on_storage_failure=recorder.storage_failed,
    )
    engine = Engine(workflow, settings, recorder, prior=prior)
    # A record that cannot be written stops the run: no step starts that could not be kept.
    recorder.on_broken = lambda message: engine.cancel(message, status="failed")
    from wfctl.control import Control, Watcher

    control = Control(exec_dir)
    control.drop_applied_cancel(state.document)
    watcher = Watcher(control, engine, recorder)
    # A cancel made before this run began (while it was queued, starting, or resuming)
    # ends it before its first step: requests are never cleared unread.
    watcher.check_cancel()
    started: dict[str, Any] = {}
    # A dry run takes no time of its own: an estimate from real runs would only mislead.
    estimate = None if options.dry_run else estimate_duration(store, workflow_id)
    if estimate is not None:
        # The start and the estimate are taken at one instant, to the millisecond: an
        # estimate can never come before the start it is counted from.
        began = time.time()
        started["at"] = iso_after(began, 0)
        started["estimatedCompletion"] = iso_after(began, estimate)
    timer = None
    if workflow.timeout:
        limit = workflow.timeout
        timer = threading.Timer(
            limit, engine.cancel, kwargs={"reason": f"the workflow timed out after {limit:g}s", "status": "timed_out"}
        )
        timer.daemon = True
    if options.on_start is not None:
        options.on_start(state.document)
    try:
        if timer is not None:
            timer.start()
        watcher.start()
        with interrupt_handlers(lambda: engine.cancel("interrupted by Ctrl-C", status="interrupted")):
            status, failure = engine.run(run_input, started=started)
        watcher.stop()
        if timer is not None:
            timer.cancel()
        for sender in pending_sends:
            sender.join()
        if engine.escalated:
            escalation = state.document.get("escalation") or {}
            deliver("escalated", escalation.get("step"), failure)
        if status in TERMINAL:
            deliver(status, (failure or {}).get("step"), failure)
    finally:
        watcher.stop()
        if timer is not None:
            timer.cancel()
        recorder.close()
    if recorder.broken:
        if state.document.get("status") == "completed":
            outcome = "the execution completed, but its record could not be made durable"
        elif recorder.broken_at:
            outcome = f"the execution stopped at step {recorder.broken_at}"
        else:
            outcome = "the execution stopped before its first step"
        try:
            write_trace(store, state.document, workflow)
        except (OSError, StoreError):
            pass  # the disk that failed the journal may fail this too; the error below says so
        raise StoreError(f"{recorder.broken}; {outcome}. What was recorded stays readable; `wfctl resume` continues it.")
    settle_requests(control, state.document)  # only now: what they asked for is on disk
    write_trace(store, state.document, workflow)
    return state.document


def settle_requests(control: Any, document: dict) -> None:
    """Remove the requests this run answered, once its record is durable: the cancel
    it applied, and a pause that an execution which has ended no longer needs. A
    request the run did not answer (a cancel that came too late) stays for whoever
    made it to see and withdraw."""
    status = document.get("status")
    if status == "cancelled":
        control.clear_cancel()
    if status in TERMINAL:
        control.clear_pause()


def check_not_symlinks(*paths: Path) -> None:
    """A symlink planted in the data directory is refused, never followed."""
    for path in paths:
        if path.is_symlink():
            raise StoreError(f"{path} is a symbolic link; wfctl does not follow links inside its data directory.")


def iso_after(epoch: float, seconds: float) -> str:
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(epoch + seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


@contextmanager
def run_slot(
    store: Store, config: Any, document: dict, *, wait: bool, give_up: Callable[[], bool] = lambda: False
) -> Iterator[None]:
    """One of `defaults.max_running` run slots (flock'd files), when a limit is set.

    Without `wait` (a foreground run) the run goes ahead even when every slot is taken.
    With it (a detached run), the run waits in a queue served by priority, then age:
    each waiter has a file in `queue/` named by its rank, and only the first live
    waiter may take a free slot. A waiter stops waiting as soon as `give_up()` holds
    (it was cancelled) and goes ahead without a slot: it starts no step.
    """
    limit = config.default("max_running")
    if not limit:
        yield
        return
    slots_dir = store.root / "slots"
    queue_dir = store.root / "queue"
    from wfctl.store import ensure_dir

    ensure_dir(slots_dir)
    ensure_dir(queue_dir)
    execution_id = document["executionId"]
    rank = f"{PRIORITY_RANK.get(document.get('priority') or 'normal', 1)}-{execution_id}"
    entry = queue_dir / rank
    held: FileLock | None = None
    marker = store.execution_dir(execution_id) / "queued"
    try:
        if wait:
            entry.touch(mode=0o600)
            marker.touch(mode=0o600)
        while True:
            if not wait or _first_in_queue(store, queue_dir, rank):
                for number in range(int(limit)):
                    lock = FileLock(slots_dir / f"{number}.lock", blocking=False)
                    if lock.acquire():
                        held = lock
                        break
            if held is not None or not wait or give_up():
                break
            time.sleep(0.1)
        for path in (entry, marker):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        yield
    finally:
        for path in (entry, marker):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        if held is not None:
            held.release()


def _first_in_queue(store: Store, queue_dir: Path, rank: str) -> bool:
    """Is `rank` the first waiter whose runner is alive? Dead waiters are removed."""
    for name in sorted(os.listdir(queue_dir)):
        if name == rank:
            return True
        execution_id = name.split("-", 1)[-1]
        try:
            alive = runner_alive(store, execution_id)
        except Exception:  # a name that is not an execution id is not a waiter
            alive = False
        if alive:
            return False
        try:
            os.unlink(queue_dir / name)
        except FileNotFoundError:
            pass
    return True
