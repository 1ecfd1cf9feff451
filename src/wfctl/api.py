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
    Problem,
    StepNotFound,
    UsageError,
    WorkflowInvalid,
)
from wfctl.record import TERMINAL_STATUSES, ExecutionState, new_document, read_journal, walk
from wfctl.registry import Registry, paginate, present
from wfctl.store import Store, check_execution_id, check_step_key, new_id, read_bytes_nofollow

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


def warnings(source: str | os.PathLike | Mapping, *, check_config: bool = True) -> list[Problem]:
    """What a valid workflow asks for but cannot have (an escalation without escalateTo,
    notifyOnError without a target, a Slack or email target config.toml cannot serve).
    Never raises for a file `validate` accepts; config.toml is left out when it cannot be read."""
    from wfctl.errors import WfctlError
    from wfctl.loader import load_document
    from wfctl.validate import workflow_warnings

    if isinstance(source, Mapping):
        doc, lines, file = dict(source), {}, "<api>"
    else:
        doc, lines = load_document(source)
        file = os.fspath(source)
    config_data = None
    if check_config:
        try:
            config_data = Config().data
        except WfctlError:
            config_data = None  # its problems are reported by the commands that use it
    return workflow_warnings(doc, file=file, lines=lines, config=config_data)


def _known(config: Config) -> tuple[set[str], dict[str, dict]]:
    """The agents of config.toml, and its teams with their definitions (whose members a
    workflow that uses them must be able to reach)."""
    return set(config.agents), dict(config.teams)


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
    page: int | None = None,
    size: int | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> dict:
    return Registry(_store()).list(status=status, category=category, page=page, size=size, limit=limit, offset=offset)


def _looks_like_file(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml", ".json")) or os.sep in ref or Path(ref).is_file()


def _names_a_file(registry: Registry, ref: str) -> bool:
    """Does `ref` name a workflow file? An existing file does; so does something that
    looks like a path (a separator, a .yaml/.yml/.json suffix) and is no workflow's
    name, so that a missing file is reported as such (exit 2), not as not found."""
    if not _looks_like_file(ref):
        return False
    if Path(ref).exists():
        return True
    return registry.find_by_name(ref) is None


def resolve_workflow(ref: str) -> dict:
    """A workflow by id, name, or file path (a file is registered on the way, its name
    updating the workflow of that name rather than adding another)."""
    registry = Registry(_store())
    if _names_a_file(registry, ref):
        definition, path = _load_definition(ref)
        record, _ = registry.register(definition, source=path, update=True)
        return record
    return registry.resolve(ref)


def definition_of(ref: str) -> dict:
    """The definition of a registered workflow, or of a workflow file (not registered)."""
    registry = Registry(_store())
    if _names_a_file(registry, ref):
        return _load_definition(ref)[0]
    return registry.resolve(ref)["definition"]


# -- executions -----------------------------------------------------------------------------
def execute(
    workflow: str,
    input: Mapping[str, Any] | None = None,
    *,
    priority: str = "normal",
    dry_run: bool = False,
    notify: Mapping[str, str] | None = None,
    executor: str | None = None,
    on_event: Listener | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> dict:
    """Run a workflow to its end in this process; returns the execution document.

    `on_event(event, state)` sees every engine event as it happens (the live table);
    `notify` holds command-line notification targets (email, slack, webhook).
    """
    execution_id = prepare(workflow, input, priority=priority, dry_run=dry_run, notify=notify, executor=executor)
    return run_prepared(execution_id, on_event=on_event, on_start=on_start)


def prepare(
    workflow: str,
    input: Mapping[str, Any] | None = None,
    *,
    priority: str = "normal",
    dry_run: bool = False,
    notify: Mapping[str, str] | None = None,
    executor: str | None = None,
) -> str:
    """Check everything and write a new execution, `pending`; returns its id.

    Nothing is written when the workflow, its agents, the input or the executor
    (`local`, or `dask://HOST:PORT`; default: `executor` in config.toml) are wrong.
    """
    from wfctl.runner import open_executor
    from wfctl.store import write_json_atomic
    from wfctl.validate import check_agents_and_teams, check_execution_input, load_workflow

    if priority not in PRIORITIES:
        raise UsageError(f"--priority must be one of {', '.join(PRIORITIES)}, not '{priority}'.")
    if input is not None and not isinstance(input, Mapping):
        raise UsageError("--input must be a JSON object.")
    store = _store()
    registry = Registry(store)
    config = Config()
    known_agents, known_teams = _known(config) if not dry_run else (None, None)
    source: Path | None = None
    record = None if _names_a_file(registry, workflow) else registry.resolve(workflow)
    if record is None:
        # A file: checked whole (its agents and teams too, with lines), and registered
        # only once everything below has been checked as well.
        definition, _lines = load_workflow(Path(workflow), known_agents=known_agents, known_teams=known_teams)
        source = Path(workflow).resolve()
    else:
        definition = record["definition"]
    name = definition.get("name") or workflow
    if record is not None and not dry_run:
        # Validated whole when it was registered; the agents and teams of config.toml
        # may have changed since.
        problems = check_agents_and_teams(definition, file=name, known_agents=known_agents, known_teams=known_teams)
        if problems:
            raise WorkflowInvalid(problems)
    run_input = check_execution_input(definition, dict(input or {}), file=name)
    address = executor or config.data.get("executor") or "local"
    probe = open_executor(address)  # an executor that cannot be reached: exit 2, nothing written
    if probe is not None:
        probe.close()
    from wfctl.masking import resolve

    origin = source or (record or {}).get("source")
    base_dir = str(Path(origin).parent) if origin else os.getcwd()
    resolve(definition.get("secrets"), base=Path(base_dir))  # a missing secret: exit 2, nothing written
    if record is None:
        record, _ = registry.register(definition, source=source, update=True)

    execution_id = new_id("exec")
    exec_dir = store.create_execution_dir(execution_id)
    options = {
        "dryRun": dry_run,
        "notify": {k: v for k, v in (notify or {}).items() if v is not None},
        "executor": address,
        "baseDir": base_dir,
    }
    write_json_atomic(
        exec_dir / "workflow.json",
        {
            "workflowId": record["workflowId"],
            "version": record.get("version", 1),
            "options": options,
            "definition": definition,
        },
        compact=True,
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
    try:
        store.save_snapshot(execution_id, document)
    except Exception:
        import shutil

        shutil.rmtree(exec_dir, ignore_errors=True)  # no half-made execution is left behind
        raise
    return execution_id


def run_prepared(
    execution_id: str,
    *,
    on_event: Listener | None = None,
    on_start: Callable[[dict], None] | None = None,
    queue: bool = False,
) -> dict:
    """Run a prepared (`pending`) execution in this process, to its end.

    With `queue`, it first waits for a free slot when `defaults.max_running`
    executions are already running (high priority first, then oldest).
    """
    from wfctl.runner import run_execution, runner_lock, run_slot

    store = _store()
    with runner_lock(store, execution_id):
        state, intact = load_execution_state(execution_id)
        if state.document.get("status") not in ("pending", "interrupted") or state.document.get("startedAt"):
            raise Conflict(f"execution {execution_id} has already started; use `wfctl resume` to continue it.")
        frozen = store.load_frozen_workflow(execution_id)
        config = Config()
        with run_slot(store, config, state.document, wait=queue):
            run_execution(
                store, execution_id, frozen["definition"], state, dict(state.document.get("input") or {}),
                _run_options(config, frozen.get("options") or {}, state.document, on_event=on_event, on_start=on_start),
                intact=intact,
            )
    if not state.document.get("dryRun"):
        Registry(store).mark_active(state.document["workflowId"])
    return public_document(state.document)


def start_detached(execution_id: str, *, wait: float = 30.0, resume: bool = False) -> dict:
    """Run a prepared execution in a background process that outlives the terminal.

    Returns once that process holds the execution (running, or queued for a slot).
    """
    import subprocess
    import sys

    from wfctl.control import wait_until
    from wfctl.errors import StoreError
    from wfctl.runner import runner_alive

    from wfctl.store import open_append

    store = _store()
    exec_dir = store.execution_dir(execution_id)
    # A resumed execution has started before: it counts as started again once its
    # status is running and the new runner has written (the journal grows).
    before = get_execution(execution_id).get("startedAt") if not resume else object()
    with open_append(exec_dir / "runner.log") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "wfctl", "_run", execution_id, *(["--resume"] if resume else [])],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # no SIGHUP when the terminal closes
            close_fds=True,
        )
    journal = store.journal_path(execution_id)
    queued = exec_dir / "queued"

    def started() -> bool:
        """The child exited, or holds the execution and has started it (or queued it)."""
        if child.poll() is not None:
            return True
        if not runner_alive(store, execution_id):
            return False
        if queued.exists():
            return True
        try:
            document = get_execution(execution_id)
        except Exception:  # the snapshot is being replaced right now; look again
            return False
        return document.get("status") in ("running", "paused") and (document.get("startedAt") != before)

    wait_until(started, wait)
    if child.poll() is not None and child.returncode != 0 and not journal.exists():
        detail = (exec_dir / "runner.log").read_text(errors="replace").strip().splitlines()
        raise StoreError(f"the background run of {execution_id} did not start: {detail[-1] if detail else 'no output'}")
    return get_execution(execution_id)


NICE_FOR_PRIORITY = {"low": 10, "normal": 0, "high": 0}


def _run_options(config: Config, options: dict, document: dict, **listeners: Any):
    from wfctl.runner import RunOptions

    return RunOptions(
        executor=str(options.get("executor") or "local"),
        base_dir=Path(options["baseDir"]) if options.get("baseDir") else None,
        nice=NICE_FOR_PRIORITY.get(document.get("priority") or "normal", 0),
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

    from wfctl.record import now_iso

    frozen = store.load_frozen_workflow(execution_id)
    definition = frozen["definition"]
    prior = prior_from(state, definition, rerun=rerun)
    # Steps in flight when a runner died run again, as a new attempt.
    preamble = [
        {"type": "step.reset", "at": now_iso(), "step": record["id"], "status": "pending", "attempt": "interrupted"}
        for record in walk(state.document["steps"])
        if record.get("status") == "running"
    ]
    config = Config()
    options = _run_options(config, frozen.get("options") or {}, state.document, on_event=on_event, on_start=on_start)
    run_execution(
        store, execution_id, definition, state, dict(state.document.get("input") or {}), options,
        prior=prior, intact=intact, preamble=preamble,
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
        tail = read_bytes_nofollow(journal, offset=offset)
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
    return read_bytes_nofollow(path, limit=offset).count(b"\n") + 1


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


def logs(execution_id: str, step: str | None = None, *, raw: bool = False) -> dict:
    """The captured output of a step's attempts (every step's when `step` is None).

    Each entry's `log` is text (invalid UTF-8 replaced); with `raw`, it is the exact bytes.
    """
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
            data = read_bytes_nofollow(path)
        except FileNotFoundError:
            if step is None:
                continue
            data = b""
        entries.append({"step": key, "log": data if raw else data.decode("utf-8", "replace")})
    return {"executionId": execution_id, "logs": entries}


FINISHED = TERMINAL_STATUSES


def cancel(execution_id: str, reason: str | None = None, *, wait: float = 30.0) -> dict:
    """Cancel an execution: its runner terminates the running step processes and
    starts nothing new. An interrupted execution (no runner) is marked cancelled here.
    Returns the execution document once it has ended (or after `wait` seconds)."""
    from wfctl.control import Control, wait_until
    from wfctl.runner import runner_alive, runner_lock

    store = _store()
    state = load_execution(execution_id)
    status = state.document.get("status")
    if status in FINISHED:
        raise Conflict(f"execution {execution_id} is already {status}; there is nothing to cancel.")
    control = Control(store.execution_dir(execution_id))
    control.request_cancel(reason)
    if not runner_alive(store, execution_id):
        try:
            with runner_lock(store, execution_id):
                _finish_without_runner(store, execution_id, "cancelled", reason)
        except Conflict:
            pass  # a runner took it meanwhile: it will see the request
    wait_until(lambda: get_execution(execution_id).get("status") in FINISHED or not runner_alive(store, execution_id), wait)
    wait_until(lambda: not runner_alive(store, execution_id), 5.0)
    return get_execution(execution_id)


def _finish_without_runner(store: Store, execution_id: str, status: str, reason: str | None) -> None:
    """End an execution that no process runs (interrupted) by appending to its journal."""
    from wfctl.control import Control
    from wfctl.record import now_iso
    from wfctl.runner import Recorder, write_trace

    state, intact = load_execution_state(execution_id)
    recorder = Recorder(store, execution_id, state, intact=intact)
    for record in walk(state.document["steps"]):
        if record.get("status") == "running":
            recorder({"type": "step.reset", "at": now_iso(), "step": record["id"], "status": "cancelled", "attempt": "interrupted"})
    recorder({"type": "execution.finished", "at": now_iso(), "status": status, "reason": reason})
    recorder.close()
    Control(store.execution_dir(execution_id)).clear_cancel()
    write_trace(store, state.document, store.load_frozen_workflow(execution_id)["definition"])


def pause(execution_id: str, *, wait: float = 30.0) -> dict:
    """Pause a running execution: no new step starts; running steps finish; then
    its status is `paused`. Returns the document once paused (or after `wait`)."""
    from wfctl.control import Control, wait_until
    from wfctl.runner import runner_alive

    store = _store()
    document = get_execution(execution_id)
    status = document.get("status")
    if status == "paused":
        return document
    if status not in ("running", "pending") or not runner_alive(store, execution_id):
        raise Conflict(f"execution {execution_id} is {status}; only a running execution can be paused.")
    control = Control(store.execution_dir(execution_id))
    control.request_pause()
    wait_until(lambda: get_execution(execution_id).get("status") != "running", wait)
    document = get_execution(execution_id)
    if document.get("status") in FINISHED:
        control.clear_pause()
        raise Conflict(f"execution {execution_id} {document['status']} before it could pause.")
    return document


def resume(
    execution_id: str,
    *,
    on_event: Listener | None = None,
    on_start: Callable[[dict], None] | None = None,
) -> dict:
    """Continue a paused execution, or an interrupted one whose runner died.

    A paused execution's runner carries on (this returns at once); an interrupted one
    is run on here from its journal: completed steps keep their outputs and are never
    run again, steps that were in flight run again as a new attempt.
    """
    from wfctl.control import Control
    from wfctl.runner import runner_alive, runner_lock

    store = _store()
    document = get_execution(execution_id)
    status = document.get("status")
    control = Control(store.execution_dir(execution_id))
    if runner_alive(store, execution_id):
        if control.clear_pause() or status == "paused":
            return get_execution(execution_id)
        from wfctl.runner import lock_holder

        raise Conflict(
            f"execution {execution_id} is already being run by process {lock_holder(store, execution_id)} "
            "and is not paused; there is nothing to resume."
        )
    if status not in ("interrupted", "paused"):
        raise Conflict(
            f"execution {execution_id} is {status}; only a paused or interrupted execution can be resumed"
            + (" (use `wfctl retry EXEC STEP` to run a failed step again)." if status == "failed" else ".")
        )
    control.clear_pause()
    with runner_lock(store, execution_id):
        state, intact = load_execution_state(execution_id)
        return _continue(store, execution_id, state, intact, on_event=on_event, on_start=on_start)


def watch(
    execution_id: str,
    *,
    on_event: Listener | None = None,
    on_start: Callable[[dict], None] | None = None,
    poll: float = 0.1,
) -> dict:
    """Follow an execution run by another process, from its journal, until it ends.

    Returns the final document; an execution whose runner dies ends as `interrupted`.
    """
    import time

    from wfctl.runner import runner_alive

    store = _store()
    state, offset = load_execution_state(execution_id)
    if on_start is not None:
        on_start(state.document)
    journal = store.journal_path(execution_id)
    buffer = b""
    while state.document.get("status") not in FINISHED | {"interrupted"}:
        alive = runner_alive(store, execution_id)
        try:
            chunk = read_bytes_nofollow(journal, offset=offset)
        except FileNotFoundError:
            chunk = b""
        offset += len(chunk)
        buffer += chunk
        complete, _, buffer = buffer.rpartition(b"\n")
        if complete:
            events, _ = read_journal(complete + b"\n", source=str(journal))
            for event in events:
                state.apply(event)
                if on_event is not None:
                    on_event(event, state)
        if not chunk and not alive:
            if state.document.get("status") not in FINISHED:
                state.document["status"] = "interrupted"
            break
        if not chunk:
            time.sleep(poll)
    return public_document(state.document)


def prune(*, older_than: float, statuses: list[str] | None = None, dry_run: bool = False) -> dict:
    """Remove executions that ended more than `older_than` seconds ago, and their traces.

    Running executions are never removed. Each removal is atomic: the directory is
    renamed out of the way first, so a reader sees the whole execution or none of it.
    """
    import shutil
    import time

    from wfctl.record import parse_iso
    from wfctl.runner import runner_alive

    store = _store()
    cutoff = time.time() - older_than
    removed = []
    for execution_id in store.execution_ids():
        try:
            document = get_execution(execution_id)
        except Exception:  # unreadable executions are left for a person to look at
            continue
        status = document.get("status")
        if statuses and status not in statuses:
            continue
        if status not in FINISHED and status != "interrupted":
            continue
        ended = document.get("completedAt") or document.get("startedAt")
        if not ended or parse_iso(ended).timestamp() > cutoff or runner_alive(store, execution_id):
            continue
        removed.append({"executionId": execution_id, "workflowId": document.get("workflowId"), "status": status})
        if dry_run:
            continue
        trash = store.executions_dir / f".trash-{execution_id}"
        os.rename(store.execution_dir(execution_id), trash)
        try:
            os.unlink(store.trace_path(document["workflowId"], execution_id))
        except (FileNotFoundError, UsageError):
            pass
        shutil.rmtree(trash, ignore_errors=True)
    return {"removed": removed, "count": len(removed), "dryRun": dry_run}


# -- traces ---------------------------------------------------------------------------------
def traces(workflow: str, *, page: int = 1, size: int | None = None) -> dict:
    """The seed 000 trace list of a workflow (by id or name), newest first."""
    store = _store()
    workflow_id = Registry(store).resolve(workflow)["workflowId"]
    elements = []
    for trace_id in store.trace_ids(workflow_id):
        try:
            trace = store.trace_summary(workflow_id, trace_id)
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
