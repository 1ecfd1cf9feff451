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

from wfctl import events
from wfctl.errors import StoreError
from wfctl.execution_dir import ExecutionHandle, Requests
from wfctl.executors import Executor, open_executor
from wfctl.model import TERMINAL
from wfctl.record import ExecutionState, build_trace
from wfctl.store import Store

if TYPE_CHECKING:
    from wfctl.model import Workflow
    from wfctl.runstate import Prior

SNAPSHOT_INTERVAL = 1.0  # seconds between snapshot refreshes during a run

Listener = Callable[[dict, ExecutionState], None]


class Recorder:
    """The single consumer of engine events: journal line, document, listeners."""

    def __init__(
        self, handle: ExecutionHandle, state: ExecutionState, *, intact: int | None = None, masker: Any = None
    ) -> None:
        self.handle = handle
        self.state = state
        self.masker = masker
        self.listeners: list[Listener] = []
        # Set when the record cannot be written: the run must stop starting steps.
        self.broken: str | None = None
        self.broken_at: str | None = None  # the step whose event could not be written
        self.on_broken: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._journal = handle.open_journal(intact)
        self._last_snapshot = time.monotonic()

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
                    # In the OS before the engine goes on; every byte, or an error.
                    self._journal.append(line)
                except (OSError, StoreError) as err:
                    self._break(err, event)
            self.state.apply(event)
            if self.broken is None:
                try:
                    self._journal.commit()
                    if time.monotonic() - self._last_snapshot >= SNAPSHOT_INTERVAL or event["type"].startswith("execution."):
                        self._snapshot(sync=False)
                except (OSError, StoreError) as err:
                    self._break(err, event)
            for listener in self.listeners:
                listener(event, self.state)

    def _break(self, err: Exception, event: dict | None = None) -> None:
        """The record cannot be written: say where, once, and stop the run. An fsync
        error is not retried: after one, what reached the disk is unknown."""
        message = getattr(err, "message", None) or f"cannot write {self.handle.journal_path}: {getattr(err, 'strerror', None) or err}"
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
        document["journalOffset"] = self._journal.offset  # readers apply the journal after it
        self.handle.save_snapshot(document, sync=sync)
        self._last_snapshot = time.monotonic()

    def close(self) -> None:
        with self._lock:
            try:
                if self.broken is None:
                    self._journal.sync()
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
    handle: ExecutionHandle,
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

    The caller holds the handle's runner lock. Returns the final execution document.
    """
    executor = open_executor(options.executor)
    try:
        return _run_with(handle, workflow, state, run_input, options, prior, intact, preamble, executor)
    finally:
        executor.close()


def _run_with(
    handle: ExecutionHandle,
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
    store = handle.store
    handle.prepare_for_run()
    secrets = resolve(workflow.secrets, base=options.base_dir)
    masker = Masker(secrets.values()) if secrets else None
    recorder = Recorder(handle, state, intact=intact, masker=masker)
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
        execution_id=handle.execution_id,
        workflow_id=workflow_id,
        log_dir=handle.logs_dir,
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
    from wfctl.control import Watcher

    control = handle.requests
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


def settle_requests(control: Requests, document: dict) -> None:
    """Remove the requests this run answered, once its record is durable: the cancel
    it applied, and a pause that an execution which has ended no longer needs. A
    request the run did not answer (a cancel that came too late) stays for whoever
    made it to see and withdraw."""
    status = document.get("status")
    if status == "cancelled":
        control.clear_cancel()
    if status in TERMINAL:
        control.clear_pause()


def iso_after(epoch: float, seconds: float) -> str:
    from datetime import datetime, timezone

    moment = datetime.fromtimestamp(epoch + seconds, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
