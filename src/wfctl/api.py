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
from pathlib import Path
from typing import Any, Callable, Mapping

from wfctl.config import Config
from wfctl.errors import (
    Conflict,
    ExitCode,
    NotYetSupported,
    Problem,
    StepNotFound,
    UsageError,
    WorkflowInvalid,
)
from wfctl.record import ExecutionState, new_document, read_journal, walk
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
    notify: Mapping[str, str] | None = None,
    on_event: Listener | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> dict:
    """Run a workflow to its end in this process; returns the execution document.

    `on_event(event, state)` sees every engine event as it happens (the live table);
    `notify` holds command-line notification targets (email, slack, webhook).
    """
    from wfctl.runner import runner_lock, run_execution
    from wfctl.store import write_json_atomic
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
    run_input = check_execution_input(definition, dict(input or {}), file=name)

    execution_id = new_id("exec")
    exec_dir = store.create_execution_dir(execution_id)
    options = {"dryRun": dry_run, "notify": {k: v for k, v in (notify or {}).items() if v is not None}}
    write_json_atomic(
        exec_dir / "workflow.json",
        {
            "workflowId": record["workflowId"],
            "version": record.get("version", 1),
            "options": options,
            "definition": definition,
        },
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
    with runner_lock(store, execution_id):
        run_execution(
            store, execution_id, definition, state, run_input,
            _run_options(config, options, on_event=on_event, on_start=on_start),
        )
    if not dry_run:
        Registry(store).mark_active(record["workflowId"])
    return public_document(state.document)


def _run_options(config: Config, options: dict, **listeners: Any):
    from wfctl.runner import RunOptions

    return RunOptions(
        dry_run=bool(options.get("dryRun")),
        notify=dict(options.get("notify") or {}),
        max_concurrency=int(config.default("max_concurrency") or 4),
        agents=dict(config.agents),
        teams=dict(config.teams),
        config=config.data,
        **listeners,
    )


RETRYABLE_EXECUTIONS = ("failed", "cancelled", "timed_out", "interrupted")
RETRYABLE_STEPS = ("failed", "cancelled", "pending")


def retry_step(
    execution_id: str,
    step: str,
    *,
    on_event: Listener | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> dict:
    """Run a failed step again and continue the execution from there to its end.

    Every step that completed keeps its output and is not run again; the new attempt
    is numbered on from the earlier ones; the exact definition the execution started
    with is used, even if the workflow was edited or deleted since.
    """
    from wfctl.runner import runner_lock

    store = _store()
    check_execution_id(execution_id)
    check_step_key(step)
    load_execution(execution_id)  # not found → exit 3 before anything else
    with runner_lock(store, execution_id):
        state, intact = load_execution_state(execution_id)
        document = state.document
        status = document.get("status")
        if status not in RETRYABLE_EXECUTIONS:
            reason = "is still running" if status in ("running", "pending", "paused") else f"is {status}"
            raise Conflict(f"execution {execution_id} {reason}; only a failed, cancelled, timed-out or interrupted execution can be retried.")
        record = state.record(step)
        if record is None:
            raise StepNotFound(f"execution {execution_id} has no step '{step}'.")
        if record.get("status") not in RETRYABLE_STEPS and not record.get("continued"):
            raise Conflict(f"step '{step}' {record.get('status')}; only a step that failed or did not run can be retried.")
        return _continue(store, execution_id, state, intact, on_event=on_event, on_start=on_start, rerun=step)


def _continue(
    store: Store,
    execution_id: str,
    state: ExecutionState,
    intact: int,
    *,
    on_event: Listener | None,
    on_start: Callable[[dict], None] | None,
    rerun: str | None = None,
) -> dict:
    """Run an execution on from where its record stands (retry, resume)."""
    from wfctl.runner import run_execution

    frozen = store.load_frozen_workflow(execution_id)
    definition = frozen["definition"]
    prior = prior_from(state, definition, rerun=rerun)
    config = Config()
    options = _run_options(config, frozen.get("options") or {}, on_event=on_event, on_start=on_start)
    run_execution(
        store, execution_id, definition, state, dict(state.document.get("input") or {}), options,
        prior=prior, intact=intact,
    )
    return public_document(state.document)


def prior_from(state: ExecutionState, definition: dict, *, rerun: str | None = None):
    """What an execution's record says is done: completed steps and their outputs,
    attempts made so far, and the member each round-robin team step chose."""
    from wfctl.engine import Prior
    from wfctl.record import definitions_by_id, output_value

    definitions = definitions_by_id(definition)
    completed: dict[str, Any] = {}
    attempts: dict[str, int] = {}
    members: dict[str, str] = {}
    for record in walk(state.document["steps"]):
        key = record["id"]
        if record.get("attempts"):
            attempts[key] = len(record["attempts"])
        base = key.split("@", 1)[0].split("[", 1)[0]
        step = definitions.get(base, {})
        if record.get("status") == "completed":
            completed[key] = record.get("output") if "@" in key else output_value(record, step)
        elif record.get("status") == "failed" and record.get("continued") and key != rerun:
            completed[key] = None  # a failure the workflow chose to go past stays settled
        if record.get("type") == "team" and record.get("steps"):
            if (definition.get("teams") or {}).get(step.get("teamId"), {}).get("strategy", "round-robin") == "round-robin":
                members[key] = record.get("member") or record["steps"][0]["id"].split("@", 1)[1]
    return Prior(completed=completed, attempts=attempts, members=members)


def public_document(document: dict) -> dict:
    shown = dict(document)
    shown.pop("journalOffset", None)
    return shown


def load_execution_state(execution_id: str) -> tuple[ExecutionState, int]:
    """The current state of an execution, live: the snapshot plus the journal after it,
    and `interrupted` when its status says running but no runner holds it. Also returns
    the length of the journal's intact part (a torn last line is left out)."""
    from wfctl.runner import runner_alive

    store = _store()
    check_execution_id(execution_id)
    snapshot = store.load_snapshot(execution_id)
    state = ExecutionState(snapshot)
    journal = store.journal_path(execution_id)
    offset = int(snapshot.get("journalOffset") or 0)
    try:
        with open(journal, "rb") as handle:
            handle.seek(offset)
            tail = handle.read()
    except FileNotFoundError:
        tail = b""
    events, intact = read_journal(tail, source=str(journal), first_line=_line_at(journal, offset))
    for event in events:
        state.apply(event)
    if state.document.get("status") in ("pending", "running", "paused") and not runner_alive(store, execution_id):
        state.document["status"] = "interrupted"
    return state, offset + intact


def _line_at(path: Path, offset: int) -> int:
    """The 1-based number of the journal line that starts at byte `offset`."""
    if offset <= 0:
        return 1
    with open(path, "rb") as handle:
        return handle.read(offset).count(b"\n") + 1


def load_execution(execution_id: str) -> ExecutionState:
    return load_execution_state(execution_id)[0]


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
