"""The library under the command line: everything `wfctl` does, callable from Python.

It matches the seed's SDK (create, list, get, execute, get_execution, cancel,
retry_step) and never prints or exits: results are plain dicts in the seed's JSON
shapes, and failures are `wfctl.errors.WfctlError` subclasses carrying an exit code.

    from wfctl import api
    workflow = api.create("examples/workflows/hello.yaml")
    execution = api.execute(workflow["workflowId"], input={"name": "Ada"})
    print(execution["status"])
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping

from wfctl.config import Config
from wfctl.errors import (
    ExitCode,
    NotYetSupported,
    Problem,
    StepNotFound,
    UsageError,
    WorkflowInvalid,
)
from wfctl.record import TERMINAL_STATUSES, ExecutionState, new_document, now_iso, parse_iso, read_journal, walk
from wfctl.registry import Registry, paginate, present
from wfctl.store import Store, check_execution_id, check_step_key, new_id

PRIORITIES = ("low", "normal", "high")
EXIT_FOR_STATUS = {
    "completed": ExitCode.OK,
    "failed": ExitCode.FAILED,
    "cancelled": ExitCode.CANCELLED,
    "timed_out": ExitCode.TIMED_OUT,
    "interrupted": ExitCode.INTERRUPTED,
}

Listener = Callable[[dict, ExecutionState], None]


def exit_code_for(document: dict) -> ExitCode:
    """The exit code of a run, from its final status (one place for the whole CLI)."""
    return EXIT_FOR_STATUS.get(document.get("status", ""), ExitCode.FAILED)


def _store() -> Store:
    return Store()


# -- validation -----------------------------------------------------------------------------
def validate(path: str | os.PathLike, *, check_agents: bool = False) -> list[Problem]:
    """Every problem of a workflow file; an empty list means it is valid."""
    from wfctl.validate import load_workflow

    known_agents, known_teams = _known(Config()) if check_agents else (None, None)
    try:
        load_workflow(Path(path), known_agents=known_agents, known_teams=known_teams)
    except WorkflowInvalid as err:
        return err.problems
    return []


def _known(config: Config) -> tuple[set[str], set[str]]:
    return set(config.agents), set(config.teams)


def _load_definition(source: str | os.PathLike | Mapping) -> tuple[dict, Path | None]:
    from wfctl.validate import load_workflow, validate_mapping

    if isinstance(source, Mapping):
        definition = dict(source)
        problems = validate_mapping(definition, file="<api>")
        if problems:
            raise WorkflowInvalid(problems)
        return definition, None
    path = Path(source)
    definition, _lines = load_workflow(path)
    return definition, path.resolve()


# -- workflows ------------------------------------------------------------------------------
def create(source: str | os.PathLike | Mapping, *, update: bool = False) -> dict:
    """Validate and register a workflow (a file path or a definition dict)."""
    definition, path = _load_definition(source)
    record, _created = Registry(_store()).register(definition, source=path, update=update)
    return present(record)


def get(workflow: str) -> dict:
    return present(Registry(_store()).resolve(workflow))


def delete(workflow: str) -> dict:
    """Remove a workflow; its executions and traces stay readable."""
    return present(Registry(_store()).delete(workflow))


def list(  # noqa: A001 - the seed's SDK calls it list
    *,
    status: str | None = None,
    category: str | None = None,
    page: int = 1,
    size: int | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> dict:
    return Registry(_store()).list(status=status, category=category, page=page, size=size, limit=limit, offset=offset)


def _looks_like_file(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml", ".json")) or os.sep in ref or Path(ref).is_file()


def resolve_workflow(ref: str) -> dict:
    """A workflow by id, name, or file path (a file is registered on the way, its name
    updating the workflow of that name rather than adding another)."""
    registry = Registry(_store())
    if _looks_like_file(ref) and Path(ref).exists():
        definition, path = _load_definition(ref)
        record, _ = registry.register(definition, source=path, update=True)
        return record
    return registry.resolve(ref)


def definition_of(ref: str) -> dict:
    """The definition of a registered workflow, or of a workflow file (not registered)."""
    if _looks_like_file(ref) and Path(ref).exists():
        return _load_definition(ref)[0]
    return Registry(_store()).resolve(ref)["definition"]


# -- executions -----------------------------------------------------------------------------
def execute(
    workflow: str,
    input: Mapping[str, Any] | None = None,
    *,
    priority: str = "normal",
    dry_run: bool = False,
    on_event: Listener | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> dict:
    """Run a workflow to its end in this process; returns the execution document.

    `on_event(event, state)` sees every engine event as it happens (the live table).
    """
    from wfctl.engine import Engine, Settings
    from wfctl.runner import Recorder, estimate_duration, interrupt_handlers, runner_lock, write_trace
    from wfctl.validate import check_execution_input, validate_mapping

    if priority not in PRIORITIES:
        raise UsageError(f"--priority must be one of {', '.join(PRIORITIES)}, not '{priority}'.")
    if input is not None and not isinstance(input, Mapping):
        raise UsageError("--input must be a JSON object.")
    store = _store()
    record = resolve_workflow(workflow)
    definition = record["definition"]
    config = Config()
    name = definition.get("name", record["workflowId"])
    if not dry_run:
        known_agents, known_teams = _known(config)
        problems = validate_mapping(definition, file=name, known_agents=known_agents, known_teams=known_teams)
        if problems:
            raise WorkflowInvalid(problems)
    given = dict(input or {})
    run_input = check_execution_input(definition, given, file=name)

    execution_id = new_id("exec")
    exec_dir = store.create_execution_dir(execution_id)
    from wfctl.store import write_json_atomic

    write_json_atomic(
        exec_dir / "workflow.json",
        {"workflowId": record["workflowId"], "version": record.get("version", 1), "definition": definition},
    )
    document = new_document(
        execution_id=execution_id,
        workflow=definition,
        workflow_id=record["workflowId"],
        input=run_input,
        priority=priority,
    )
    if dry_run:
        document["dryRun"] = True
    store.save_snapshot(execution_id, document)
    state = ExecutionState(document)
    registry = Registry(store)
    with runner_lock(store, execution_id):
        recorder = Recorder(store, execution_id, state)
        if on_event is not None:
            recorder.listeners.append(on_event)
        settings = Settings(
            execution_id=execution_id,
            workflow_id=record["workflowId"],
            log_dir=exec_dir / "logs",
            output_dir=exec_dir / "logs",
            agents={**config.agents, **(definition.get("agents") or {})},
            teams={**config.teams, **(definition.get("teams") or {})},
            max_concurrency=int(config.default("max_concurrency") or 4),
            dry_run=dry_run,
            team_turn=lambda team: store.next_team_turn(record["workflowId"], team),
        )
        engine = Engine(definition, settings, recorder)
        estimate = estimate_duration(store, record["workflowId"])
        started = {}
        if estimate is not None:
            started["estimatedCompletion"] = _iso_after(now_iso(), estimate)
        if on_start is not None:
            on_start(state.document)
        try:
            with interrupt_handlers(lambda: engine.cancel("interrupted by Ctrl-C", status="interrupted")):
                engine.run(run_input, started=started)
        finally:
            recorder.close()
        if not dry_run:
            registry.mark_active(record["workflowId"])
        write_trace(store, state.document, definition)
    return public_document(state.document)


def _iso_after(start: str, seconds: float) -> str:
    moment = parse_iso(start) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def public_document(document: dict) -> dict:
    shown = dict(document)
    shown.pop("journalOffset", None)
    return shown


def load_execution(execution_id: str) -> ExecutionState:
    """The current state of an execution, live: the snapshot plus the journal after it,
    and `interrupted` when its status says running but no runner holds it."""
    from wfctl.runner import runner_alive

    store = _store()
    check_execution_id(execution_id)
    snapshot = store.load_snapshot(execution_id)
    state = ExecutionState(snapshot)
    if snapshot.get("status") not in TERMINAL_STATUSES:
        offset = int(snapshot.get("journalOffset") or 0)
        try:
            with open(store.journal_path(execution_id), "rb") as handle:
                handle.seek(offset)
                tail = handle.read()
        except FileNotFoundError:
            tail = b""
        events, _ = read_journal(tail, source=str(store.journal_path(execution_id)))
        for event in events:
            state.apply(event)
        if state.document.get("status") in ("pending", "running", "paused") and not runner_alive(store, execution_id):
            state.document["status"] = "interrupted"
    return state


def get_execution(execution_id: str) -> dict:
    return public_document(load_execution(execution_id).document)


def list_executions(*, workflow: str | None = None, status: str | None = None, limit: int = 20) -> dict:
    """Executions newest first, as an envelope like the seed's lists."""
    if limit < 1:
        raise UsageError("--limit must be 1 or more.")
    store = _store()
    workflow_id = None
    if workflow is not None:
        workflow_id = Registry(store).resolve(workflow)["workflowId"]
    ids = store.execution_ids()
    unfiltered = workflow_id is None and status is None
    elements = []
    count = 0
    for execution_id in ids:
        if unfiltered and len(elements) >= limit:
            break
        try:
            document = get_execution(execution_id)
        except Exception:  # one unreadable execution must not hide the others
            continue
        if workflow_id is not None and document.get("workflowId") != workflow_id:
            continue
        if status is not None and document.get("status") != status:
            continue
        count += 1
        if len(elements) < limit:
            elements.append(summary(document))
    if unfiltered:
        count = len(ids)
    return {"entities": "Execution", "count": count, "elements": elements}


def summary(document: dict) -> dict:
    return {
        "executionId": document["executionId"],
        "workflowId": document.get("workflowId"),
        "workflowName": document.get("workflowName"),
        "status": document.get("status"),
        "progress": document.get("progress"),
        "priority": document.get("priority"),
        "startedAt": document.get("startedAt"),
        "completedAt": document.get("completedAt"),
    }


def logs(execution_id: str, step: str | None = None) -> dict:
    """The captured output of a step's attempts (every step's when `step` is None)."""
    store = _store()
    state = load_execution(execution_id)
    keys = [record["id"] for record in walk(state.document["steps"])]
    if step is not None:
        check_step_key(step)
        wanted = [k for k in keys if k == step or k.startswith(step + "[") or k.startswith(step + "@")]
        if not wanted:
            raise StepNotFound(f"execution {execution_id} has no step '{step}'.")
        keys = wanted
    entries = []
    for key in keys:
        path = store.log_path(execution_id, key)
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            if step is None:
                continue
            text = ""
        entries.append({"step": key, "log": text})
    return {"executionId": execution_id, "logs": entries}


def cancel(execution_id: str, reason: str | None = None) -> dict:
    """Cancel a running execution (arrives with the lifecycle release)."""
    get_execution(execution_id)
    raise NotYetSupported("cancelling an execution from another process is not supported yet.")


def retry_step(execution_id: str, step: str) -> dict:
    """Run a failed step again and continue from there (arrives with failure handling)."""
    get_execution(execution_id)
    raise NotYetSupported("retrying a step is not supported yet.")


# -- traces ---------------------------------------------------------------------------------
def traces(workflow: str, *, page: int = 1, size: int | None = None) -> dict:
    """The seed 000 trace list of a workflow (by id or name), newest first."""
    store = _store()
    workflow_id = Registry(store).resolve(workflow)["workflowId"]
    elements = []
    for trace_id in store.trace_ids(workflow_id):
        try:
            trace = store.load_trace(workflow_id, trace_id)
        except Exception:  # a trace removed meanwhile is left out
            continue
        elements.append(
            {key: trace.get(key) for key in ("id", "workflow_id", "uuid", "run_date", "status")}
        )
    return paginate("WorkflowTrace", elements, page=page, size=size, default_size=50)


def trace(workflow: str, trace_id: str) -> dict:
    store = _store()
    workflow_id = Registry(store).resolve(workflow)["workflowId"]
    return store.load_trace(workflow_id, trace_id)
