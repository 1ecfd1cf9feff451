"""The execution document and how engine events change it.

One reducer, `ExecutionState.apply`, turns the journal (the events of events.py) into
the execution document of design.md §3 (the seed's "Get Execution Status" shape). The
runner uses it to keep its snapshot, `wfctl execution` and `watch` use it to read a live
run from the journal, and `resume` uses it to learn which steps already completed.
`new_document` makes the pending document from the model (a step with `depends` shows
`dependsOn`); `build_trace` turns a finished document into the seed 000 trace.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Iterable, Iterator

from wfctl.errors import StoreError
from wfctl.model import (
    COMPOSITE_KINDS,
    TERMINAL,
    Step,
    StepStatus,
    Workflow,
    now_iso,
    parse_iso,
    step_id_of,
)

__all__ = ["ExecutionState", "build_trace", "new_document", "now_iso", "parse_iso", "read_journal", "walk"]

JOURNAL_MAX_DEPTH = 512  # levels a journal line may nest (wfctl writes at most ~200)
TERMINAL_STATUSES = TERMINAL
STEP_DONE = frozenset({StepStatus.COMPLETED, StepStatus.SKIPPED})

TRACE_STATUS = {
    "completed": "executed",
    "failed": "failed",
    "cancelled": "cancelled",
    "timed_out": "timed_out",
    "interrupted": "interrupted",
}
STAGE_STATUS = {
    "completed": "SUCCESS",
    "failed": "FAILED",
    "skipped": "SKIPPED",
    "cancelled": "CANCELLED",
    "pending": "PENDING",
    "running": "RUNNING",
}


def skeleton_step(step: Step) -> dict:
    """The pending record of a step and its statically known children."""
    record: dict[str, Any] = {"id": step.id, "type": str(step.kind), "status": "pending"}
    agent = step.agent_label
    if agent is not None:
        record["agent"] = agent
    if step.depends is not None:
        record["dependsOn"] = step.depends.shown()
    if step.kind in COMPOSITE_KINDS:
        children = () if step.repeats_children else step.children()
        record["steps"] = [skeleton_step(child) for child in children]
    return record


def new_document(
    *,
    execution_id: str,
    workflow: Workflow | dict,
    workflow_id: str,
    input: dict,
    priority: str,
    trigger: str = "manual",
    scheduled_at: str | None = None,
) -> dict:
    """The pending document of a new execution. `trigger` says who started it: "manual"
    (a person or a script) or "schedule" (`wfctl scheduler`, which also records the run
    time it was due at as `scheduledAt`)."""
    if not isinstance(workflow, Workflow):  # a valid definition: its model
        from wfctl.model import build_workflow

        workflow = build_workflow(workflow)
    steps = [skeleton_step(step) for step in workflow.steps]
    document = {
        "executionId": execution_id,
        "workflowId": workflow_id,
        "workflowName": workflow.name,
        "status": "pending",
        "currentStep": None,
        "currentSteps": [],
        "progress": {"completed": 0, "total": len(steps), "percentage": 0},
        "steps": steps,
        "startedAt": None,
        "completedAt": None,
        "estimatedCompletion": None,
        "priority": priority,
        "input": input,
        "trigger": trigger,
    }
    if scheduled_at is not None:
        document["scheduledAt"] = scheduled_at
    return document


def index_steps(steps: Iterable[dict], parent: str | None = None, index: dict | None = None) -> dict:
    """key → (record, parent key) for every record in the tree."""
    index = {} if index is None else index
    for record in steps:
        index[record["id"]] = (record, parent)
        if "steps" in record:
            index_steps(record["steps"], record["id"], index)
    return index


def walk(steps: Iterable[dict]) -> Iterator[dict]:
    for record in steps:
        yield record
        if "steps" in record:
            yield from walk(record["steps"])


class ExecutionState:
    """An execution document with an index of its step records, changed by events."""

    def __init__(self, document: dict) -> None:
        self.document = document
        self.index = index_steps(document["steps"])
        self.top_level = {record["id"] for record in document["steps"]}
        self.events = 0
        # Top-level steps that are done, kept up to date per event (not recounted: a
        # recount per step would make a long run quadratic).
        self._done = {r["id"] for r in document["steps"] if _is_done(r)}
        # Keys of the step instances running now, in the order they started.
        self._running: dict[str, None] = dict.fromkeys(document.setdefault("currentSteps", []))

    def apply(self, event: dict) -> None:
        self.events += 1
        kind = event["type"]
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, event)

    def record(self, key: str) -> dict | None:
        entry = self.index.get(key)
        return entry[0] if entry else None

    def _record_for(self, event: dict) -> dict:
        key = event["step"]
        entry = self.index.get(key)
        if entry is not None:
            return entry[0]
        # Loop iterations and team members are only known once they start.
        record = {"id": key, "type": event.get("stepType", "task"), "status": "pending"}
        if event.get("stepType") in ("parallel", "conditional", "loop", "team"):
            record["steps"] = []
        parent_key = event.get("parent")
        parent_entry = self.index.get(parent_key) if parent_key else None
        if parent_entry is None:
            self.document["steps"].append(record)
        else:
            parent_entry[0].setdefault("steps", []).append(record)
        self.index[key] = (record, parent_key)
        return record

    def top_level_of(self, key: str) -> str:
        """The top-level step that contains step instance `key` (itself at the top)."""
        seen = 0
        while True:
            entry = self.index.get(key)
            if entry is None or entry[1] is None or seen > MAX_DEPTH:
                return key
            key, seen = entry[1], seen + 1

    def _set_running(self, key: str, running: bool) -> None:
        """Keep currentSteps (every running step instance) and currentStep (the
        top-level step that contains what runs) in step with a start or an end."""
        if running:
            self._running[key] = None
        elif key in self._running:
            del self._running[key]
        else:
            return  # it was not running (a skipped step, an in-process call folded into one event)
        self._show_running()

    def mark_interrupted(self) -> None:
        """No process runs the execution any more (its runner died): nothing runs now,
        whatever its last events said. Its step records keep what they say."""
        self.document["status"] = "interrupted"
        self._clear_running()

    def _clear_running(self) -> None:
        self._running.clear()
        self._show_running()

    def _show_running(self) -> None:
        doc = self.document
        doc["currentSteps"] = list(self._running)
        latest = next(reversed(self._running), None)
        doc["currentStep"] = self.top_level_of(latest) if latest is not None else None

    def _progress(self, key: str | None = None) -> None:
        if key is not None:
            record = self.record(key)
            if record is not None and _is_done(record):
                self._done.add(key)
            else:
                self._done.discard(key)
        done = len(self._done)
        total = len(self.document["steps"])
        self.document["progress"] = {
            "completed": done,
            "total": total,
            "percentage": int(done * 100 / total) if total else 100,
        }


MAX_DEPTH = 256  # parent links followed at most (steps nest at most 32 deep; loops and teams add a few)


def _is_done(record: dict) -> bool:
    return record["status"] in STEP_DONE or bool(record.get("continued"))


def _execution_started(state: ExecutionState, event: dict) -> None:
    doc = state.document
    doc["status"] = "running"
    if not doc.get("startedAt"):
        doc["startedAt"] = event["at"]
    doc["completedAt"] = None
    doc.pop("cancelReason", None)
    doc.pop("error", None)
    if event.get("estimatedCompletion") is not None:
        doc["estimatedCompletion"] = event["estimatedCompletion"]


def _execution_finished(state: ExecutionState, event: dict) -> None:
    doc = state.document
    doc["status"] = event["status"]
    doc["completedAt"] = event["at"]
    state._clear_running()
    if event.get("error"):
        doc["error"] = event["error"]
    if event.get("reason") is not None:
        doc["cancelReason"] = event["reason"]
    state._progress()


def _step_started(state: ExecutionState, event: dict) -> None:
    record = state._record_for(event)
    record["status"] = "running"
    record.setdefault("startedAt", event["at"])
    for stale in ("completedAt", "duration", "error", "retryStopped"):
        record.pop(stale, None)
    if event.get("agent") is not None:
        record["agent"] = event["agent"]
    if "attempt" in event:
        attempts = record.setdefault("attempts", [])
        attempts.append({"attempt": event["attempt"], "status": "running", "startedAt": event["at"]})
    if "total" in event:
        record["total"] = event["total"]
    state._set_running(event["step"], True)
    if event["step"] in state.top_level:
        state._progress(event["step"])


def _attempt_end(record: dict, event: dict, status: str) -> None:
    attempts = record.get("attempts")
    if not attempts or attempts[-1]["status"] != "running":
        return
    attempt = attempts[-1]
    attempt["status"] = status
    attempt["completedAt"] = event["at"]
    if event.get("attemptDuration") is not None:
        attempt["duration"] = event["attemptDuration"]
    if event.get("exitCode") is not None:
        attempt["exitCode"] = event["exitCode"]
    if event.get("error"):
        attempt["error"] = event["error"]
    if event.get("worker"):
        attempt["worker"] = event["worker"]


def _attempt_failed(state: ExecutionState, event: dict) -> None:
    record = state.record(event["step"])
    if record is not None:
        _attempt_end(record, event, "failed")
        if event.get("retryIn") is not None:
            record["attempts"][-1]["retryIn"] = event["retryIn"]


def _step_finished(state: ExecutionState, event: dict) -> None:
    record = state._record_for(event)
    status = event["status"]
    if "startedAt" in event:  # a start folded into this event (an in-process call)
        record.setdefault("startedAt", event["startedAt"])
        record["agent"] = event.get("agent")
        record.setdefault("attempts", []).append(
            {"attempt": event["attempt"], "status": "running", "startedAt": event["startedAt"]}
        )
    record["status"] = status
    if status != "skipped" or "startedAt" in record:
        record["completedAt"] = event["at"]
    if event.get("duration") is not None:
        record["duration"] = event["duration"]
    if "output" in event:
        output = event["output"]
        name = event.get("outputName")
        # The seed keys a step's output by its output name: {"research-data": ...}.
        record["output"] = {name: output} if name else output
    if event.get("error"):
        record["error"] = event["error"]
    for key in ("member", "branch", "undecided", "recoveredBy", "continued", "retryStopped", "skipReason"):
        if event.get(key) is not None:
            record[key] = event[key]
    _attempt_end(record, event, "completed" if status == "completed" else "failed")
    state._set_running(event["step"], False)
    if event["step"] in state.top_level:
        state._progress(event["step"])


def _step_reset(state: ExecutionState, event: dict) -> None:
    """A step made pending again (retry of a failed step, resume of an interrupted one)."""
    record = state.record(event["step"])
    if record is None:
        return
    record["status"] = event.get("status", "pending")
    for stale in ("completedAt", "duration", "error", "output", "retryStopped"):
        record.pop(stale, None)
    attempts = record.get("attempts")
    if attempts and attempts[-1].get("status") == "running":
        attempts[-1]["status"] = event.get("attempt", "interrupted")
    state._set_running(event["step"], False)
    state._progress(event["step"])


def _execution_status(state: ExecutionState, event: dict) -> None:
    state.document["status"] = event["status"]
    if event.get("reason") is not None:
        state.document["cancelReason"] = event["reason"]


def _escalated(state: ExecutionState, event: dict) -> None:
    state.document["escalated"] = True
    state.document["escalation"] = {k: v for k, v in event.items() if k != "type"}


def _notification(state: ExecutionState, event: dict) -> None:
    state.document.setdefault("notifications", []).append({k: v for k, v in event.items() if k != "type"})


_HANDLERS = {
    "execution.escalated": _escalated,
    "notification.sent": _notification,
    "execution.started": _execution_started,
    "execution.finished": _execution_finished,
    "execution.status": _execution_status,
    "step.started": _step_started,
    "step.finished": _step_finished,
    "attempt.failed": _attempt_failed,
    "step.reset": _step_reset,
}


def output_value(record: dict, step: Step | None) -> Any:
    """The raw result of a completed step, undoing the seed's {name: value} wrapping."""
    output = record.get("output")
    name = step.output if step is not None else None
    if name and isinstance(output, dict) and set(output) == {name}:
        return output[name]
    return output


# -- journal ------------------------------------------------------------------------------
def read_journal(data: bytes, *, source: str = "events.jsonl", first_line: int = 1) -> tuple[list[dict], int]:
    """Parse journal bytes into events; returns (events, length of the intact part).

    A torn last line (a runner killed in the middle of an append) is ignored; a line
    that does not parse anywhere else means the journal is corrupt.
    """
    events: list[dict] = []
    position = 0
    length = len(data)
    line_number = first_line - 1
    while position < length:
        end = data.find(b"\n", position)
        line_number += 1
        if end == -1:
            break  # torn tail: no newline yet
        events.append(_journal_event(data[position:end], source, line_number))
        position = end + 1
    return events, position


def _journal_event(line: bytes, source: str, line_number: int) -> dict:
    """One journal line as an event, or StoreError naming the file and the line."""
    from wfctl.values import nests_deeper_than

    # wfctl never writes lines this deep (results are bounded to values.MAX_DEPTH); a
    # deeper one would make every reader recurse that deep (Python's stack is finite).
    if nests_deeper_than(line, JOURNAL_MAX_DEPTH):
        raise StoreError(f"{source} is corrupt at line {line_number}: it nests deeper than {JOURNAL_MAX_DEPTH} levels.")
    try:
        event = json.loads(line)
    except RecursionError:
        raise StoreError(f"{source} is corrupt at line {line_number}: it nests too deeply to be read.") from None
    except ValueError:
        raise StoreError(f"{source} is corrupt at line {line_number}.") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise StoreError(f"{source} is corrupt at line {line_number}: it is not an event.")
    return event


def apply_events(
    state: ExecutionState,
    events: Iterable[dict],
    *,
    source: str,
    line_of: Callable[[int], int] = lambda index: index + 1,
    on_event: Callable[[dict, ExecutionState], None] | None = None,
) -> None:
    """Apply journal events in order (and tell `on_event` of each); an event the reducer
    cannot apply (a field missing or of the wrong type) is reported with its file and line
    (`line_of(index)`, asked only then), never as a crash."""
    for index, event in enumerate(events):
        try:
            state.apply(event)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as err:
            raise StoreError(
                f"{source} has an event wfctl cannot read at line {line_of(index)} ({type(err).__name__}: {err})."
            ) from None
        if on_event is not None:
            on_event(event, state)


def state_from_snapshot(document: Any, *, source: str) -> ExecutionState:
    """The state of an execution from its snapshot, or StoreError naming the file."""
    try:
        if not isinstance(document, dict) or not isinstance(document.get("steps"), list):
            raise TypeError("it is not an execution document")
        return ExecutionState(document)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as err:
        raise StoreError(f"{source} is not an execution record wfctl can read ({err}).") from None


def build_trace(document: dict, workflow: Workflow) -> dict:
    """The seed 000 trace of one finished run."""
    stages = []
    for record in walk(document["steps"]):
        definition = workflow.by_id.get(step_id_of(record["id"]))
        stage: dict[str, Any] = {
            "node_name": record["id"],
            "status": STAGE_STATUS.get(record["status"], record["status"].upper()),
            "duration": record.get("duration", 0.0),
            "type": record.get("type", "task"),
            "input": definition.raw.get("input") if definition is not None else None,
            "output": record.get("output"),
            "attempts": record.get("attempts", []),
        }
        if record.get("agent"):
            stage["agent"] = record["agent"]
        if record.get("error"):
            stage["error"] = record["error"]
        if record.get("retryStopped"):
            stage["retryStopped"] = record["retryStopped"]
        stages.append(stage)
    status = TRACE_STATUS.get(document["status"], document["status"])
    trace: dict[str, Any] = {
        "id": document["executionId"],
        "workflow_id": document["workflowId"],
        "uuid": str(uuid.uuid4()),
        "run_date": (document.get("startedAt") or now_iso()).replace("Z", "+00:00"),
        "status": status,
        "execution_id": document["executionId"],
        "duration": _duration(document),
        **_trace_trigger(document),
    }
    if document.get("dryRun"):
        # Before `response`: trace summaries (lists, estimates) read only the file's head.
        trace["dryRun"] = True
    trace["response"] = {
        "input": document.get("input", {}),
        "result": {"workflow_status": status},
        "stages": stages,
    }
    return trace


def _trace_trigger(document: dict) -> dict:
    """Who started the run, in the trace's words: `trigger` (executions from before
    schedules existed have none: they were manual) and, for scheduled runs, `scheduled_at`."""
    fields = {"trigger": document.get("trigger") or "manual"}
    if document.get("scheduledAt"):
        fields["scheduled_at"] = document["scheduledAt"]
    return fields


def _duration(document: dict) -> float | None:
    if document.get("startedAt") and document.get("completedAt"):
        delta = parse_iso(document["completedAt"]) - parse_iso(document["startedAt"])
        return round(delta.total_seconds(), 4)
    return None
