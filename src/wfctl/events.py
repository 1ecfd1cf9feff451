"""Every event of the journal, built in one place: one function per event type.

The engine, the control watcher, the runner and the api emit these; record.py's
reducer (`ExecutionState.apply`) reads them back into the execution document. The
shapes are the journal's format: keep them stable (old journals must still replay).

Each builder takes `at` (an ISO time from the run's clock) first and returns a plain
dict; optional fields are left out when they have no value, as the journal always had.
"""

from __future__ import annotations

from typing import Any


# -- the execution -------------------------------------------------------------------------
def execution_started(at: str, *, estimated_completion: str | None = None) -> dict:
    event: dict[str, Any] = {"type": "execution.started", "at": at}
    if estimated_completion is not None:
        event["estimatedCompletion"] = estimated_completion
    return event


def execution_finished(at: str, status: str, *, error: dict | None = None, reason: str | None = None,
                       with_reason: bool = False) -> dict:
    """The end of a run. `with_reason` keeps a null reason (an ending made without a runner)."""
    event: dict[str, Any] = {"type": "execution.finished", "at": at, "status": status}
    if error:
        event["error"] = error
    if reason is not None or with_reason:
        event["reason"] = reason
    return event


def execution_status(at: str, status: str) -> dict:
    """paused / running again (pause and resume while a runner holds the execution)."""
    return {"type": "execution.status", "at": at, "status": status}


def execution_escalated(at: str, step: str, agent: str | None, *, ok: bool | None = None,
                        output: Any = None, error: dict | None = None) -> dict:
    event: dict[str, Any] = {"type": "execution.escalated", "at": at, "step": step, "agent": agent}
    if ok is not None:
        event["ok"] = ok
        if ok:
            event["output"] = output
        else:
            event["error"] = error
    return event


def notification_sent(at: str, name: str, result: dict) -> dict:
    return {"type": "notification.sent", "at": at, "event": name, **result}


# -- steps ---------------------------------------------------------------------------------
def attempt_started(at: str, key: str, step_id: str, attempt: int, agent: str, *, parent: str | None = None) -> dict:
    """One attempt of a task (or of a team member's share) begins."""
    event: dict[str, Any] = {"type": "step.started", "at": at, "step": key, "id": step_id, "attempt": attempt,
                             "agent": agent}
    if parent is not None:
        event["parent"] = parent
    return event


def composite_started(at: str, key: str, step_id: str, kind: str, *, parent: str | None = None,
                      total: int | None = None) -> dict:
    """A parallel, conditional, loop or team step begins (`total`: a loop's item count)."""
    event: dict[str, Any] = {"type": "step.started", "at": at, "step": key, "id": step_id, "stepType": kind}
    if parent is not None:
        event["parent"] = parent
    if total is not None:
        event["total"] = total
    return event


def attempt_failed(at: str, key: str, attempt: int, *, exit_code: int | None, error: dict | None,
                   attempt_duration: float, retry_in: float, worker: str | None = None) -> dict:
    """An attempt failed and another follows after `retry_in` seconds."""
    event: dict[str, Any] = {
        "type": "attempt.failed",
        "at": at,
        "step": key,
        "attempt": attempt,
        "exitCode": exit_code,
        "error": error,
        "attemptDuration": round(attempt_duration, 6),
        "retryIn": round(retry_in, 3),
    }
    if worker:
        event["worker"] = worker
    return event


def task_finished(at: str, key: str, status: str, *, duration: float, attempt_duration: float,
                  exit_code: int | None, parent: str | None = None) -> dict:
    """The end of a task (or member) step, after its last attempt; the caller adds the
    result (`with_output` / `with_error`) and, for a folded start, `folded_start`."""
    event: dict[str, Any] = {
        "type": "step.finished",
        "at": at,
        "step": key,
        "status": status,
        "duration": round(duration, 6),
        "attemptDuration": round(attempt_duration, 6),
        "exitCode": exit_code,
    }
    if parent is not None:
        event["parent"] = parent
    return event


def folded_start(event: dict, start: dict) -> dict:
    """An in-process call that succeeded at once is journaled as one event: its start
    (an `attempt_started` event never written) is folded into its end."""
    event.update(id=start["id"], attempt=start["attempt"], agent=start["agent"], startedAt=start["at"])
    return event


def composite_finished(at: str, key: str, status: str, *, duration: float, parent: str | None = None,
                       extra: dict | None = None) -> dict:
    """The end of a composite step; `extra` holds what its kind records (branch, member, ...)."""
    event: dict[str, Any] = {"type": "step.finished", "at": at, "step": key, "status": status,
                             "duration": round(duration, 6), **(extra or {})}
    if parent is not None:
        event["parent"] = parent
    return event


def recovered(at: str, key: str, *, output: Any, output_name: str | None, recovered_by: str,
              duration: float) -> dict:
    """A failed step whose fallback succeeded: completed, with the fallback's output."""
    event: dict[str, Any] = {
        "type": "step.finished",
        "at": at,
        "step": key,
        "status": "completed",
        "output": output,
        "recoveredBy": recovered_by,
        "duration": round(duration, 6),
    }
    if output_name:
        event["outputName"] = output_name
    return event


def skipped(at: str, key: str, kind: str, *, parent: str | None = None, reason: str | None = None) -> dict:
    """A step that does not run: the other branch of a conditional, or a step whose
    dependencies can no longer be met (`reason` says which)."""
    event: dict[str, Any] = {"type": "step.finished", "at": at, "step": key, "status": "skipped", "stepType": kind}
    if parent is not None:
        event["parent"] = parent
    if reason is not None:
        event["skipReason"] = reason
    return event


def with_output(event: dict, output: Any, output_name: str | None) -> dict:
    event["output"] = output
    if output_name:
        event["outputName"] = output_name
    return event


def with_error(event: dict, error: dict | None, *, continued: bool = False, notify: bool = False) -> dict:
    """A failure's error; `continued` and `notify` say what happens next (for the record
    and for notifications)."""
    if error:
        event["error"] = error
    if continued:
        event["continued"] = True
    if notify:
        event["notify"] = True
    return event


def step_reset(at: str, key: str, *, status: str = "pending", attempt: str = "interrupted") -> dict:
    """A step made pending again (its runner died while it ran), or cancelled for good."""
    return {"type": "step.reset", "at": at, "step": key, "status": status, "attempt": attempt}
