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
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from wfctl import faults
from wfctl.config import Config
from wfctl.errors import (
    Conflict,
    ExecutionNotFound,
    ExitCode,
    Problem,
    StepNotFound,
    StoreError,
    TraceNotFound,
    UsageError,
    WorkflowInvalid,
    WorkflowNotFound,
)
from wfctl.record import (
    TERMINAL_STATUSES,
    ExecutionState,
    apply_events,
    new_document,
    read_journal,
    state_from_snapshot,
    walk,
)
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


WORKFLOW_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def looks_like_path(ref: str) -> bool:
    """Is WORKFLOW_OR_FILE written as a path: `./build`, anything with a `/`, or a
    workflow file suffix? Anything else is a registered workflow's id or name, even
    when a file of that name happens to be in the current directory."""
    return "/" in ref or os.sep in ref or ref.endswith(WORKFLOW_FILE_SUFFIXES)


def _names_a_file(registry: Registry, ref: str) -> bool:
    """Does `ref` name a workflow file? Only what looks like a path can: an existing
    file, or a missing one (exit 2, not "not found") unless a workflow has exactly
    that name."""
    if not looks_like_path(ref):
        return False
    if Path(ref).exists():
        return True
    return registry.find_by_name(ref) is None


def _registered(registry: Registry, ref: str) -> dict:
    """A registered workflow by id or name; when there is none but a file of that name
    is here, the error says how to run the file."""
    try:
        return registry.resolve(ref)
    except WorkflowNotFound as err:
        if Path(ref).is_file():
            from wfctl.store import printable

            shown = printable(ref)
            raise WorkflowNotFound(
                f"{err.message.rstrip('.')}; a name without a / is a registered workflow's: "
                f"to run the file '{shown}', write ./{shown}."
            ) from None
        raise


def resolve_workflow(ref: str) -> dict:
    """A workflow by id, name, or file path (a file is registered on the way, its name
    updating the workflow of that name rather than adding another)."""
    registry = Registry(_store())
    if _names_a_file(registry, ref):
        definition, path = _load_definition(ref)
        record, _ = registry.register(definition, source=path, update=True)
        return record
    return _registered(registry, ref)


def definition_of(ref: str) -> dict:
    """The definition of a registered workflow, or of a workflow file (not registered)."""
    registry = Registry(_store())
    if _names_a_file(registry, ref):
        return _load_definition(ref)[0]
    return _registered(registry, ref)["definition"]


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
    trigger: str = "manual",
    scheduled_at: str | None = None,
    execution_id: str | None = None,
) -> str:
    """Check everything and write a new execution, `pending`; returns its id.

    Nothing is written when the workflow, its agents, the input or the executor
    (`local`, or `dask://HOST:PORT`; default: `executor` in config.toml) are wrong.
    `trigger` and `scheduled_at` record who started it (the scheduler passes
    "schedule" and the run time); the scheduler also chooses the id beforehand, so
    that it can tell after a crash whether the execution was made.
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
    record = None if _names_a_file(registry, workflow) else _registered(registry, workflow)
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
    infrastructure_retries(config)  # a wrong value: exit 2, nothing written
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

    execution_id = check_execution_id(execution_id) if execution_id else new_id("exec")
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
        trigger=trigger,
        scheduled_at=scheduled_at,
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
    from wfctl.control import Control
    from wfctl.runner import run_execution, runner_lock, run_slot

    store = _store()
    with runner_lock(store, execution_id):
        state, intact = load_execution_state(execution_id)
        if state.document.get("status") in FINISHED and not state.document.get("startedAt"):
            return public_document(state.document)  # cancelled before its runner got to it
        if state.document.get("status") not in ("pending", "interrupted") or state.document.get("startedAt"):
            raise Conflict(f"execution {execution_id} has already started; use `wfctl resume` to continue it.")
        frozen = store.load_frozen_workflow(execution_id)
        config = Config()
        control = Control(store.execution_dir(execution_id))
        # A cancel while queued ends the wait: the run then ends at once, no step started.
        with run_slot(store, config, state.document, wait=queue, give_up=lambda: control.cancel_request() is not None):
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

    store = _store()
    exec_dir = store.execution_dir(execution_id)
    # A resumed execution has started before: it counts as started again once its
    # status is running and the new runner has written (the journal grows).
    before = get_execution(execution_id).get("startedAt") if not resume else object()
    log = _open_runner_log(exec_dir / "runner.log")
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "wfctl", "_run", execution_id, *(["--resume"] if resume else [])],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,  # no SIGHUP when the terminal closes
            close_fds=True,
        )
    finally:
        os.close(log)
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

    wait_until(started, wait)  # bounded: the runner is never waited for past `wait`
    if child.poll() is not None and child.returncode != 0 and not journal.exists():
        detail = _runner_log_tail(exec_dir / "runner.log").strip().splitlines()
        raise StoreError(f"the background run of {execution_id} did not start: {detail[-1] if detail else 'no output'}")
    return get_execution(execution_id)


def _open_runner_log(path: Path) -> int:
    """The detached runner's log (0600, appended): only a regular file, opened without
    blocking, so a FIFO put in its place cannot hang `execute --detach` or `resume`."""
    from wfctl.errors import StoreError
    from wfctl.stepfiles import NotRegularFile, describe_error, open_regular
    from wfctl.store import ensure_dir

    ensure_dir(path.parent)
    try:
        return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except NotRegularFile as err:
        raise StoreError(f"{path} is {err.kind}, not a regular file; wfctl does not write its runner's log there.") from None
    except OSError as err:
        raise StoreError(f"cannot open {path}: {describe_error(err)}.") from None


def _runner_log_tail(path: Path) -> str:
    from wfctl.stepfiles import read_tail

    try:
        return read_tail(path, 4096).decode("utf-8", "replace")
    except OSError:
        return ""


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
        infrastructure_retries=infrastructure_retries(config),
        agents=dict(config.agents),
        teams=dict(config.teams),
        config=config.data,
        **listeners,
    )


def infrastructure_retries(config: Config) -> int:
    """`defaults.infrastructure_retries`: how often an attempt a Dask worker's death cost
    is run again (0 or more; config.toml's validation has checked its type)."""
    return int(config.default("infrastructure_retries"))


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
    state = state_from_snapshot(snapshot, source=str(store.execution_dir(execution_id) / "execution.json"))
    journal = store.journal_path(execution_id)
    offset = _journal_offset(snapshot, journal)
    try:
        tail = read_bytes_nofollow(journal, offset=offset)
    except FileNotFoundError:
        tail = b""
    first_line = _line_at(journal, offset)
    events, intact = read_journal(tail, source=str(journal), first_line=first_line)
    apply_events(state, events, source=str(journal), first_line=first_line)
    if state.document.get("status") in ("pending", "running", "paused") and not runner_alive(store, execution_id):
        state.mark_interrupted()
    return state, offset + intact


def _journal_offset(snapshot: dict, journal: Path) -> int:
    """Where the journal goes on after the snapshot (a whole number), or StoreError."""
    offset = snapshot.get("journalOffset") or 0
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise StoreError(f"the snapshot next to {journal} has no usable journalOffset ({offset!r}).")
    return offset


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
    """Executions newest first, as an envelope like the seed's lists.

    An execution that cannot be read is listed all the same, with its id, the status
    `unreadable` and the error: a list never hides what it counts.
    """
    if limit < 1:
        raise UsageError("--limit must be 1 or more.")
    store = _store()
    workflow_id = None
    if workflow is not None:
        workflow_id = Registry(store).resolve_history(workflow)
    ids = store.execution_ids()
    unfiltered = workflow_id is None and status is None
    elements = []
    count = 0
    gone = 0
    for execution_id in ids:
        if unfiltered and len(elements) >= limit:
            break
        try:
            element = summary(get_execution(execution_id))
        except ExecutionNotFound:
            gone += 1  # removed (pruned) since the directory was listed
            continue
        except Exception as err:  # one unreadable execution must not hide the others
            element = unreadable(execution_id, err)
        if workflow_id is not None and element.get("workflowId") != workflow_id:
            continue
        if status is not None and element.get("status") != status:
            continue
        count += 1
        if len(elements) < limit:
            elements.append(element)
    if unfiltered:
        count = len(ids) - gone
    return {"entities": "Execution", "count": count, "elements": elements}


def unreadable(execution_id: str, err: Exception) -> dict:
    """The list element of an execution that cannot be read, saying why."""
    message = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
    return {
        "executionId": execution_id,
        "workflowId": None,
        "workflowName": None,
        "status": "unreadable",
        "progress": None,
        "priority": None,
        "startedAt": None,
        "completedAt": None,
        "error": message,
    }


def summary(document: dict) -> dict:
    element = {
        "executionId": document["executionId"],
        "workflowId": document.get("workflowId"),
        "workflowName": document.get("workflowName"),
        "status": document.get("status"),
        "progress": document.get("progress"),
        "priority": document.get("priority"),
        "startedAt": document.get("startedAt"),
        "completedAt": document.get("completedAt"),
        # Executions from before schedules existed have no trigger: they were manual.
        "trigger": document.get("trigger") or "manual",
    }
    if document.get("scheduledAt"):
        element["scheduledAt"] = document["scheduledAt"]
    if document.get("dryRun"):
        element["dryRun"] = True
    return element


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
    starts nothing new; a queued or starting run ends before its first step; an
    execution that no process runs (interrupted, or prepared and not yet picked up)
    is marked cancelled here. Returns the execution document once it has ended (or
    after `wait` seconds, with `cancelRequested`); an execution that ended otherwise
    before the cancel could take effect is a Conflict (exit 6)."""
    from wfctl.control import Control
    from wfctl.runner import runner_alive

    store = _store()
    status = get_execution(execution_id).get("status")
    # A finished execution whose runner is still there is being retried (or is writing
    # its last records): the request is made, and the wait below tells which.
    if status in FINISHED and not runner_alive(store, execution_id):
        raise Conflict(f"execution {execution_id} is already {status}; there is nothing to cancel.")
    control = Control(store.execution_dir(execution_id))
    request = control.request_cancel(reason)
    if _asked_from_inside(store, execution_id):
        # One of its own steps asks: its runner stops it once that step is stopped.
        return {**get_execution(execution_id), "cancelRequested": True}
    _await_cancel(store, execution_id, reason, wait)
    document = get_execution(execution_id)
    status = document.get("status")
    if status == "cancelled" or (status in FINISHED and not runner_alive(store, execution_id)):
        control.withdraw_cancel(request)  # answered, or left unapplied: no run may inherit it
    if status == "cancelled":
        return document
    if status in FINISHED and not runner_alive(store, execution_id):
        raise Conflict(f"execution {execution_id} {status} before the cancel could take effect.")
    return {**document, "cancelRequested": True}  # still being stopped: its runner applies the request


def _await_cancel(store: Store, execution_id: str, reason: str | None, wait: float) -> None:
    """Wait (at most `wait` seconds) until the execution has ended and no runner holds
    it; end it here when no runner does (and none takes it meanwhile)."""
    import time

    from wfctl.control import WATCH_SECONDS
    from wfctl.runner import runner_alive

    deadline = time.monotonic() + wait
    ended_at: float | None = None
    while True:
        if not runner_alive(store, execution_id):
            if get_execution(execution_id).get("status") in FINISHED:
                return
            if _cancel_without_runner(store, execution_id, reason):
                return
        elif ended_at is None and get_execution(execution_id).get("status") in FINISHED:
            # Ended: its runner has its last records to write (trace, notifications).
            ended_at = time.monotonic()
            deadline = min(deadline, ended_at + 5.0)
        if time.monotonic() >= deadline:
            return
        time.sleep(WATCH_SECONDS / 2)


def _cancel_without_runner(store: Store, execution_id: str, reason: str | None) -> bool:
    """Cancel an execution that no process runs, holding its lock; False when a runner
    took it meanwhile (that runner applies the request)."""
    from wfctl.runner import runner_lock

    try:
        with runner_lock(store, execution_id):
            state, intact = load_execution_state(execution_id)
            if state.document.get("status") not in FINISHED:
                _finish_without_runner(store, execution_id, state, intact, "cancelled", reason)
    except Conflict:
        return False
    return True


def _asked_from_inside(store: Store, execution_id: str) -> bool:
    """Does the request come from the execution itself: one of its command steps
    (WFCTL_EXECUTION_ID), or an in-process step of the process that runs it? Waiting
    there for the execution to pause or end would wait for itself."""
    from wfctl.runner import runs_here

    return os.environ.get("WFCTL_EXECUTION_ID") == execution_id or runs_here(store, execution_id)


def _finish_without_runner(
    store: Store, execution_id: str, state: ExecutionState, intact: int, status: str, reason: str | None
) -> None:
    """End an execution that no process runs by appending to its journal (the caller
    holds its runner lock); the cancel request it answers goes once that is durable."""
    from wfctl.control import Control
    from wfctl.record import now_iso
    from wfctl.runner import Recorder, settle_requests, write_trace

    recorder = Recorder(store, execution_id, state, intact=intact)
    for record in walk(state.document["steps"]):
        if record.get("status") == "running":
            recorder({"type": "step.reset", "at": now_iso(), "step": record["id"], "status": "cancelled", "attempt": "interrupted"})
    recorder({"type": "execution.finished", "at": now_iso(), "status": status, "reason": reason})
    recorder.close()
    if recorder.broken:
        raise StoreError(f"{recorder.broken}; the execution was not cancelled.")
    settle_requests(Control(store.execution_dir(execution_id)), state.document)
    write_trace(store, state.document, store.load_frozen_workflow(execution_id)["definition"])


PAUSE_WAIT = 300.0  # the default bound of `pause --wait`, in seconds


def pause(execution_id: str, *, wait: bool = False, timeout: float = PAUSE_WAIT) -> dict:
    """Ask a running execution to pause: no new step starts; running steps finish;
    then its status is `paused`. Returns at once with `pauseRequested: true`; with
    `wait`, once it is paused (a Conflict when it ends first or `timeout` passes).

    An execution that has not started yet (queued, or about to be picked up) pauses
    as soon as it starts. Asked from inside the execution itself, it never waits.
    """
    from wfctl.control import Control
    from wfctl.runner import runner_alive

    store = _store()
    document = get_execution(execution_id)
    status = document.get("status")
    alive = runner_alive(store, execution_id)
    not_started = not document.get("startedAt") and status not in FINISHED
    if status != "paused" and not (alive and status in ("running", "pending")) and not not_started:
        raise Conflict(f"execution {execution_id} is {status}; only a running execution can be paused.")
    control = Control(store.execution_dir(execution_id))
    control.request_pause()
    if wait and not _asked_from_inside(store, execution_id):
        document = _await_pause(store, execution_id, control, timeout)
    else:
        document = get_execution(execution_id)
    return {**document, "pauseRequested": True}


def _await_pause(store: Store, execution_id: str, control: Any, timeout: float) -> dict:
    """Wait until the execution is paused; a Conflict when it ends, loses its runner or
    is still running after `timeout` seconds."""
    import time

    from wfctl.control import WATCH_SECONDS

    deadline = time.monotonic() + timeout
    while True:
        document = get_execution(execution_id)
        status = document.get("status")
        if status == "paused":
            return document
        if status in FINISHED:
            control.clear_pause()
            raise Conflict(f"execution {execution_id} {status} before it could pause.")
        if status == "interrupted" and document.get("startedAt"):
            raise Conflict(f"execution {execution_id} lost its runner before it could pause; `wfctl resume` continues it.")
        if time.monotonic() >= deadline:
            raise Conflict(
                f"execution {execution_id} is still {status} after {timeout:g}s (a step is still running); "
                "the pause stays requested."
            )
        time.sleep(WATCH_SECONDS / 2)


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
            return _await_unpaused(store, execution_id)
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


RESUME_ACK_WAIT = 10.0  # seconds a runner gets to say it carries on after a resume


def _await_unpaused(store: Store, execution_id: str) -> dict:
    """The document once the runner has acknowledged the resume (its status is no
    longer `paused`), so that what `resume` reports is not the state it just ended;
    bounded, and at once when the runner goes away."""
    import time

    from wfctl.control import WATCH_SECONDS
    from wfctl.runner import runner_alive

    deadline = time.monotonic() + RESUME_ACK_WAIT
    while True:
        document = get_execution(execution_id)
        if document.get("status") != "paused" or time.monotonic() >= deadline:
            return document
        if not runner_alive(store, execution_id):
            return get_execution(execution_id)
        time.sleep(WATCH_SECONDS / 2)


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
    line = _line_at(journal, offset)  # of the next whole line, for messages
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
            events, _ = read_journal(complete + b"\n", source=str(journal), first_line=line)
            for number, event in enumerate(events, start=line):
                apply_events(state, [event], source=str(journal), first_line=number)
                if on_event is not None:
                    on_event(event, state)
            line += len(events)
        if not chunk and not alive:
            if state.document.get("status") not in FINISHED:
                state.mark_interrupted()
            break
        if not chunk:
            time.sleep(poll)
    return public_document(state.document)


def prune(
    *, older_than: float, statuses: list[str] | None = None, dry_run: bool = False, include_interrupted: bool = False
) -> dict:
    """Remove executions whose last event is more than `older_than` seconds old, and
    their traces.

    Age counts from an execution's last event: when it ended, or, for an interrupted
    one, the last thing its journal or snapshot recorded. Interrupted executions can
    still be resumed, so they are kept unless `include_interrupted` (or `interrupted`
    is one of `statuses`). Running executions are never removed: each removal holds
    the execution's runner lock from the last look to the rename, so a `resume` or
    `retry` cannot start in between; the directory is renamed out of the way first,
    so a reader sees the whole execution or none of it.
    """
    import time

    store = _store()
    cutoff = time.time() - older_than
    include_interrupted = include_interrupted or "interrupted" in (statuses or ())
    removed = []
    for execution_id in store.execution_ids():
        try:
            document = get_execution(execution_id)
        except Exception:  # unreadable executions are left for a person to look at
            continue
        if not _prunable(store, document, cutoff, statuses, include_interrupted):
            continue
        if not dry_run:
            document = _remove_execution(store, execution_id, cutoff, statuses, include_interrupted)
            if document is None:
                continue
        removed.append({"executionId": execution_id, "workflowId": document.get("workflowId"), "status": document.get("status")})
    return {"removed": removed, "count": len(removed), "dryRun": dry_run}


def _prunable(store: Store, document: dict, cutoff: float, statuses: list[str] | None, include_interrupted: bool) -> bool:
    status = document.get("status")
    if statuses and status not in statuses:
        return False
    if status not in FINISHED and not (status == "interrupted" and include_interrupted):
        return False
    last = _last_event_time(store, document)
    return last is not None and last <= cutoff


def _last_event_time(store: Store, document: dict) -> float | None:
    """When an execution last did something (epoch seconds): when it ended, or for
    one that did not end, the latest write to its journal or snapshot (each event is
    appended as it happens), else when it started."""
    from wfctl.record import parse_iso

    if document.get("status") in FINISHED and document.get("completedAt"):
        return parse_iso(document["completedAt"]).timestamp()
    exec_dir = store.execution_dir(document["executionId"])
    times = []
    for name in ("events.jsonl", "execution.json"):
        try:
            times.append(os.stat(exec_dir / name, follow_symlinks=False).st_mtime)
        except FileNotFoundError:
            pass
    if not times and document.get("startedAt"):
        times.append(parse_iso(document["startedAt"]).timestamp())
    return max(times) if times else None


def _remove_execution(
    store: Store, execution_id: str, cutoff: float, statuses: list[str] | None, include_interrupted: bool
) -> dict | None:
    """Remove one execution and its trace while holding its runner lock; None when it
    is being run, was removed meanwhile, or no longer qualifies once locked."""
    import shutil

    from wfctl.runner import runner_lock

    try:
        with runner_lock(store, execution_id):
            document = _document_while_locked(execution_id)
            if not _prunable(store, document, cutoff, statuses, include_interrupted):
                return None
            faults.stall("stall-prune")
            trash = store.executions_dir / f".trash-{execution_id}"
            os.rename(store.execution_dir(execution_id), trash)
            try:
                os.unlink(store.trace_path(document["workflowId"], execution_id))
            except (FileNotFoundError, UsageError):
                pass
            shutil.rmtree(trash, ignore_errors=True)
    except (Conflict, ExecutionNotFound):
        return None  # a runner holds it, or it is already gone
    return document


def _document_while_locked(execution_id: str) -> dict:
    """The execution document read by the holder of its runner lock: no other process
    runs it, so a status that says it runs means its runner died."""
    document = public_document(load_execution(execution_id).document)
    if document.get("status") in ("pending", "running", "paused"):
        document["status"] = "interrupted"
    return document


# -- traces ---------------------------------------------------------------------------------
def traces(workflow: str, *, page: int = 1, size: int | None = None) -> dict:
    """The seed 000 trace list of a workflow (by id or name, deleted ones too), newest first."""
    store = _store()
    workflow_id = Registry(store).resolve_history(workflow)
    elements = []
    for trace_id in store.trace_ids(workflow_id):
        try:
            trace = store.trace_summary(workflow_id, trace_id)
        except Exception:  # a trace removed meanwhile is left out
            continue
        element = {key: trace.get(key) for key in ("id", "workflow_id", "uuid", "run_date", "status")}
        if trace.get("dryRun"):
            element["dryRun"] = True
        if trace.get("trigger") == "schedule":  # manual runs keep the seed's exact shape
            element.update(trigger="schedule", scheduled_at=trace.get("scheduled_at"))
        elements.append(element)
    return paginate("WorkflowTrace", elements, page=page, size=size, default_size=50)


def trace(workflow: str, trace_id: str) -> dict:
    """One trace of a workflow (deleted ones too), by its id (the execution id of the
    run) or its `uuid`; any other text is a trace that is not found (exit 3)."""
    from wfctl.store import is_execution_id

    store = _store()
    workflow_id = Registry(store).resolve_history(workflow)
    if is_execution_id(trace_id):
        try:
            return store.load_trace(workflow_id, trace_id)
        except TraceNotFound:
            pass
    elif _UUID.fullmatch(trace_id):
        found = _trace_by_uuid(store, workflow_id, trace_id.lower())
        if found is not None:
            return found
    from wfctl.store import printable

    raise TraceNotFound(
        f"{TraceNotFound.seed_message} Workflow {workflow_id} has no trace '{printable(trace_id)}' "
        f"(see `wfctl traces {workflow_id}`)."
    )


_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _trace_by_uuid(store: Store, workflow_id: str, uuid: str) -> dict | None:
    """The trace whose `uuid` field is `uuid` (read from each trace's head)."""
    for candidate in store.trace_ids(workflow_id):
        try:
            if store.trace_summary(workflow_id, candidate).get("uuid") == uuid:
                return store.load_trace(workflow_id, candidate)
        except (TraceNotFound, StoreError):
            continue  # removed meanwhile, or unreadable: not the one
    return None
