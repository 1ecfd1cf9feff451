"""A Workspace: one data directory and one config file, and every library operation on them.

    from wfctl.api import Workspace

    here = Workspace(home="/tmp/wf-home", config="/tmp/wf-config.toml")
    workflow = here.create("examples/workflows/hello.yaml", update=True)
    execution = here.execute(workflow["workflowId"], input={"name": "Ada"})

Without `home` (or `config`) a Workspace uses `$WFCTL_HOME` (`$WFCTL_CONFIG`), else the
per-user directory, resolved when it is made. Nothing below it looks at the
environment: two Workspaces in one process never mix, and a detached runner gets the
home and config of the Workspace that started it. Results are plain dicts in the seed's
JSON shapes; failures are `wfctl.errors.WfctlError` subclasses carrying an exit code.
The module-level functions of `wfctl.api` are these methods on a default Workspace.
"""

from __future__ import annotations

import os
import re
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from wfctl import faults
from wfctl.config import Config, config_path
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
from wfctl.execution_dir import ExecutionHandle, RunSlots
from wfctl.model import (
    ENDED,
    LIVE,
    RETRYABLE_STEPS,
    TERMINAL,
    Action,
    StepKey,
    TeamStep,
    Workflow,
    allows,
    build_workflow,
    now_iso,
)
from wfctl.record import ExecutionState, new_document, walk
from wfctl.registry import Registry, paginate, present
from wfctl.store import (
    Store,
    check_execution_id,
    check_step_key,
    data_dir,
    is_execution_id,
    new_id,
    printable,
)

PRIORITIES = ("low", "normal", "high")
EXIT_FOR_STATUS = {
    "completed": ExitCode.OK,
    "failed": ExitCode.FAILED,
    "cancelled": ExitCode.CANCELLED,
    "timed_out": ExitCode.TIMED_OUT,
    "interrupted": ExitCode.INTERRUPTED,
}
FINISHED = TERMINAL  # the model's terminal statuses (the name api has always exported)
NICE_FOR_PRIORITY = {"low": 10, "normal": 0, "high": 0}
PAUSE_WAIT = 300.0  # the default bound of `pause --wait`, in seconds
RESUME_ACK_WAIT = 10.0  # seconds a runner gets to say it carries on after a resume
WORKFLOW_FILE_SUFFIXES = (".yaml", ".yml", ".json")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")

if TYPE_CHECKING:
    from wfctl.runner import RunOptions

Listener = Callable[[dict, ExecutionState], None]


class Workspace:
    """A data directory (`home`) and a config file (`config`), and what wfctl does with them."""

    def __init__(self, home: str | os.PathLike | None = None, config: str | os.PathLike | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else data_dir()
        self.config_path = Path(config).expanduser() if config is not None else config_path()

    def __repr__(self) -> str:
        return f"Workspace(home={str(self.home)!r}, config={str(self.config_path)!r})"

    @cached_property
    def store(self) -> Store:
        """The data directory, checked (ours, private) when first used: a Workspace that
        only reads its config never touches it."""
        return Store(self.home)

    def load_config(self, *, check: bool = True) -> Config:
        """config.toml as it is now: read per operation, so an edit counts at once (with
        `check`, a file with problems is refused: exit 2 naming them)."""
        return Config(self.config_path, check=check)

    def registry(self) -> Registry:
        return Registry(self.store)

    def handle(self, execution_id: str) -> ExecutionHandle:
        """The directory of one execution (the id is checked: exit 2 when it is not one)."""
        return ExecutionHandle(self.store, execution_id)

    def environment(self) -> dict[str, str]:
        """The variables that make a wfctl process started from here (a detached runner)
        use this Workspace's data directory and config."""
        return {"WFCTL_HOME": str(self.home), "WFCTL_CONFIG": str(self.config_path)}

    # -- validation -------------------------------------------------------------------------
    def validate(self, path: str | os.PathLike, *, check_agents: bool = False) -> list[Problem]:
        """Every problem of a workflow file; an empty list means it is valid."""
        from wfctl.validate import load_workflow

        known_agents, known_teams = _known(self.load_config()) if check_agents else (None, None)
        try:
            load_workflow(Path(path), known_agents=known_agents, known_teams=known_teams)
        except WorkflowInvalid as err:
            return err.problems
        return []

    def warnings(self, source: str | os.PathLike | Mapping, *, check_config: bool = True) -> list[Problem]:
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
                config_data = self.load_config().data
            except WfctlError:
                config_data = None  # its problems are reported by the commands that use it
        return workflow_warnings(doc, file=file, lines=lines, config=config_data)

    # -- workflows --------------------------------------------------------------------------
    def create(self, source: str | os.PathLike | Mapping, *, update: bool = False) -> dict:
        """Validate and register a workflow (a file path or a definition dict)."""
        definition, path = _load_definition(source)
        record, _created = self.registry().register(definition, source=path, update=update)
        return present(record)

    def get(self, workflow: str) -> dict:
        """A registered workflow, by id or name."""
        return present(self.registry().resolve(workflow))

    def delete(self, workflow: str) -> dict:
        """Remove a workflow; its executions and traces stay readable."""
        return present(self.registry().delete(workflow))

    def list(  # the seed's SDK calls it list
        self,
        *,
        status: str | None = None,
        category: str | None = None,
        page: int | None = None,
        size: int | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> dict:
        """Registered workflows, a page at a time, as an envelope like the seed's."""
        return self.registry().list(
            status=status, category=category, page=page, size=size, limit=limit, offset=offset
        )

    def resolve_workflow(self, ref: str) -> dict:
        """A workflow by id, name, or file path (a file is registered on the way, its name
        updating the workflow of that name rather than adding another)."""
        registry = self.registry()
        if _names_a_file(registry, ref):
            definition, path = _load_definition(ref)
            record, _ = registry.register(definition, source=path, update=True)
            return record
        return _registered(registry, ref)

    def definition_of(self, ref: str) -> dict:
        """The definition of a registered workflow, or of a workflow file (not registered)."""
        registry = self.registry()
        if _names_a_file(registry, ref):
            return _load_definition(ref)[0]
        return _registered(registry, ref)["definition"]

    # -- running ----------------------------------------------------------------------------
    def execute(
        self,
        workflow: str,
        input: Mapping[str, Any] | None = None,
        *,
        priority: str = "normal",
        dry_run: bool = False,
        notify: Mapping[str, str] | None = None,
        executor: str | None = None,
        fail_fast: bool = False,
        on_event: Listener | None = None,
        on_start: Callable[[dict], None] | None = None,
    ) -> dict:
        """Run a workflow to its end in this process; returns the execution document.

        `on_event(event, state)` sees every engine event as it happens (the live table);
        `notify` holds command-line notification targets (email, slack, webhook);
        `fail_fast`: a failure cancels the steps running beside it.
        """
        execution_id = self.prepare(
            workflow, input, priority=priority, dry_run=dry_run, notify=notify, executor=executor, fail_fast=fail_fast
        )
        return self.run_prepared(execution_id, on_event=on_event, on_start=on_start)

    def prepare(
        self,
        workflow: str,
        input: Mapping[str, Any] | None = None,
        *,
        priority: str = "normal",
        dry_run: bool = False,
        notify: Mapping[str, str] | None = None,
        executor: str | None = None,
        fail_fast: bool = False,
        trigger: str = "manual",
        scheduled_at: str | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Check everything and write a new execution, `pending`; returns its id.

        Nothing is written when the workflow, its agents, the input or the executor
        (`local`, or `dask://HOST:PORT`; default: `executor` in config.toml) are wrong.
        The options (dry run, notifications, executor, fail-fast) are kept with the
        execution, so that resume and retry run it the same way. `trigger` and
        `scheduled_at` record who started it (the scheduler passes "schedule" and the run
        time); the scheduler also chooses the id beforehand, so that it can tell after a
        crash whether the execution was made.
        """
        from wfctl.executors import open_executor
        from wfctl.masking import resolve
        from wfctl.validate import (
            check_agents_and_teams,
            check_execution_input,
            load_workflow,
        )

        if priority not in PRIORITIES:
            raise UsageError(f"--priority must be one of {', '.join(PRIORITIES)}, not '{priority}'.")
        if input is not None and not isinstance(input, Mapping):
            raise UsageError("--input must be a JSON object.")
        registry = self.registry()
        config = self.load_config()
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
        open_executor(address).close()  # an executor that cannot be reached: exit 2, nothing written
        origin = source or (record or {}).get("source")
        base_dir = str(Path(origin).parent) if origin else os.getcwd()
        resolve(definition.get("secrets"), base=Path(base_dir))  # a missing secret: exit 2, nothing written
        model = build_workflow(definition)
        if record is None:
            record, _ = registry.register(definition, source=source, update=True, workflow=model)

        execution_id = check_execution_id(execution_id) if execution_id else new_id("exec")
        options = {
            "dryRun": dry_run,
            "notify": {k: v for k, v in (notify or {}).items() if v is not None},
            "executor": address,
            "baseDir": base_dir,
            "failFast": fail_fast,
        }
        frozen = {
            "workflowId": record["workflowId"],
            "version": record.get("version", 1),
            "options": options,
            "definition": definition,
        }
        document = new_document(
            execution_id=execution_id,
            workflow=model,
            workflow_id=record["workflowId"],
            input=run_input,
            priority=priority,
            trigger=trigger,
            scheduled_at=scheduled_at,
        )
        if dry_run:
            document["dryRun"] = True
        self.handle(execution_id).create(frozen, document)
        return execution_id

    def run_prepared(
        self,
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
        from wfctl.runner import run_execution

        handle = self.handle(execution_id)
        with handle.runner_lock():
            state, intact = handle.read_state()
            if state.document.get("status") in TERMINAL and not state.document.get("startedAt"):
                return public_document(state.document)  # cancelled before its runner got to it
            if state.document.get("status") not in ("pending", "interrupted") or state.document.get("startedAt"):
                raise Conflict(f"execution {execution_id} has already started; use `wfctl resume` to continue it.")
            frozen = handle.load_frozen_workflow()
            config = self.load_config()
            slots = RunSlots(self.store, config.default("max_running"))

            def cancel_requested() -> bool:
                """A cancel while queued ends the wait: the run then ends at once, no step started."""
                return handle.requests.cancel_request() is not None

            with slots.hold(handle, state.document.get("priority"), wait=queue, give_up=cancel_requested):
                run_execution(
                    handle, build_workflow(frozen["definition"]), state, dict(state.document.get("input") or {}),
                    _run_options(config, frozen.get("options") or {}, state.document, on_event=on_event, on_start=on_start),
                    intact=intact,
                )
        if not state.document.get("dryRun"):
            self.registry().mark_active(state.document["workflowId"])
        return public_document(state.document)

    def start_detached(self, execution_id: str, *, wait: float = 30.0, resume: bool = False) -> dict:
        """Run a prepared execution in a background process that outlives the terminal,
        with this Workspace's data directory and config.

        Returns once that process holds the execution (running, or queued for a slot).
        """
        import subprocess
        import sys

        from wfctl.control import wait_until

        handle = self.handle(execution_id)
        # A resumed execution has started before: it counts as started again once its
        # status is running and the new runner has written (the journal grows).
        before = current_document(handle).get("startedAt") if not resume else object()
        log = _open_runner_log(handle.runner_log_path)
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "wfctl", "_run", execution_id, *(["--resume"] if resume else [])],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **self.environment()},
                start_new_session=True,  # no SIGHUP when the terminal closes
                close_fds=True,
            )
        finally:
            os.close(log)

        def started() -> bool:
            """The child exited, or holds the execution and has started it (or queued it)."""
            if child.poll() is not None:
                return True
            if not handle.runner_alive():
                return False
            if handle.is_queued():
                return True
            try:
                document = current_document(handle)
            except Exception:  # the snapshot is being replaced right now; look again
                return False
            return document.get("status") in ("running", "paused") and (document.get("startedAt") != before)

        wait_until(started, wait)  # bounded: the runner is never waited for past `wait`
        if child.poll() is not None and child.returncode != 0 and not handle.journal_path.exists():
            detail = handle.runner_output().strip().splitlines()
            raise StoreError(f"the background run of {execution_id} did not start: {detail[-1] if detail else 'no output'}")
        return current_document(handle)

    def retry_step(
        self,
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
        handle = self.handle(execution_id)
        check_step_key(step)
        handle.read_state()  # not found → exit 3 before anything else
        with handle.runner_lock():
            state, intact = handle.read_state()
            document = state.document
            status = document.get("status")
            if not allows(status, Action.RETRY):
                reason = "is still running" if status in LIVE else f"is {status}"
                raise Conflict(f"execution {execution_id} {reason}; only a failed, cancelled, timed-out or interrupted execution can be retried.")
            record = state.record(step)
            if record is None:
                raise StepNotFound(f"execution {execution_id} has no step '{step}'.")
            if record.get("status") not in RETRYABLE_STEPS and not record.get("continued"):
                raise Conflict(f"step '{step}' {record.get('status')}; only a step that failed or did not run can be retried.")
            return self._continue(handle, state, intact, on_event=on_event, on_start=on_start, rerun=step)

    def _continue(
        self,
        handle: ExecutionHandle,
        state: ExecutionState,
        intact: int,
        *,
        on_event: Listener | None,
        on_start: Callable[[dict], None] | None,
        rerun: str | None = None,
    ) -> dict:
        """Run an execution on from where its record stands (retry, resume); the caller
        holds its runner lock."""
        from wfctl.events import step_reset
        from wfctl.runner import run_execution

        frozen = handle.load_frozen_workflow()
        workflow = build_workflow(frozen["definition"])
        prior = prior_from(state, workflow, rerun=rerun)
        # Steps in flight when a runner died run again, as a new attempt.
        preamble = [step_reset(now_iso(), record["id"]) for record in walk(state.document["steps"])
                    if record.get("status") == "running"]
        options = _run_options(
            self.load_config(), frozen.get("options") or {}, state.document, on_event=on_event, on_start=on_start
        )
        run_execution(
            handle, workflow, state, dict(state.document.get("input") or {}), options,
            prior=prior, intact=intact, preamble=preamble,
        )
        return public_document(state.document)

    # -- reading executions -----------------------------------------------------------------
    def load_execution_state(self, execution_id: str) -> tuple[ExecutionState, int]:
        """The current state of an execution, live (snapshot plus journal; `interrupted`
        when its status says running but no runner holds it), and the length of the
        journal's intact part."""
        return self.handle(execution_id).read_state()

    def load_execution(self, execution_id: str) -> ExecutionState:
        return self.handle(execution_id).read_state()[0]

    def get_execution(self, execution_id: str) -> dict:
        return current_document(self.handle(execution_id))

    def list_executions(self, *, workflow: str | None = None, status: str | None = None, limit: int = 20) -> dict:
        """Executions newest first, as an envelope like the seed's lists.

        An execution that cannot be read is listed all the same, with its id, the status
        `unreadable` and the error: a list never hides what it counts.
        """
        if limit < 1:
            raise UsageError("--limit must be 1 or more.")
        workflow_id = None
        if workflow is not None:
            workflow_id = self.registry().resolve_history(workflow)
        ids = self.store.execution_ids()
        unfiltered = workflow_id is None and status is None
        elements = []
        count = 0
        gone = 0
        for execution_id in ids:
            if unfiltered and len(elements) >= limit:
                break
            try:
                element = summary(self.get_execution(execution_id))
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

    def logs(self, execution_id: str, step: str | None = None, *, raw: bool = False) -> dict:
        """The captured output of a step's attempts (every step's when `step` is None).

        Each entry's `log` is text (invalid UTF-8 replaced); with `raw`, it is the exact bytes.
        """
        handle = self.handle(execution_id)
        state, _ = handle.read_state()
        keys = [record["id"] for record in walk(state.document["steps"])]
        if step is not None:
            check_step_key(step)
            wanted = [k for k in keys if k == step or k.startswith(step + "[") or k.startswith(step + "@")]
            if not wanted:
                raise StepNotFound(f"execution {execution_id} has no step '{step}'.")
            keys = wanted
        entries = []
        for key in keys:
            data = handle.read_log(key)
            if data is None:
                if step is None:
                    continue
                data = b""
            entries.append({"step": key, "log": data if raw else data.decode("utf-8", "replace")})
        return {"executionId": execution_id, "logs": entries}

    def watch(
        self,
        execution_id: str,
        *,
        on_event: Listener | None = None,
        on_start: Callable[[dict], None] | None = None,
        poll: float = 0.1,
    ) -> dict:
        """Follow an execution run by another process, from its journal, until it ends.

        Returns the final document; an execution whose runner dies ends as `interrupted`.
        """
        handle = self.handle(execution_id)
        state, intact = handle.read_state()
        if on_start is not None:
            on_start(state.document)
        reader = handle.journal_reader(intact)
        while state.document.get("status") not in ENDED:
            alive = handle.runner_alive()  # before reading: a runner gone now wrote all it will
            read_before = reader.position
            reader.apply(state, on_event)
            if reader.position == read_before:
                if not alive:
                    if state.document.get("status") not in TERMINAL:
                        state.mark_interrupted()
                    break
                time.sleep(poll)
        return public_document(state.document)

    # -- steering ---------------------------------------------------------------------------
    def cancel(self, execution_id: str, reason: str | None = None, *, wait: float = 30.0) -> dict:
        """Cancel an execution: its runner terminates the running step processes and
        starts nothing new; a queued or starting run ends before its first step; an
        execution that no process runs (interrupted, or prepared and not yet picked up)
        is marked cancelled here. Returns the execution document once it has ended (or
        after `wait` seconds, with `cancelRequested`); an execution that ended otherwise
        before the cancel could take effect is a Conflict (exit 6)."""
        handle = self.handle(execution_id)
        status = current_document(handle).get("status")
        # A finished execution whose runner is still there is being retried (or is writing
        # its last records): the request is made, and the wait below tells which.
        if status in TERMINAL and not handle.runner_alive():
            raise Conflict(f"execution {execution_id} is already {status}; there is nothing to cancel.")
        request = handle.requests.request_cancel(reason)
        if _asked_from_inside(handle):
            # One of its own steps asks: its runner stops it once that step is stopped.
            return {**current_document(handle), "cancelRequested": True}
        _await_cancel(handle, reason, wait)
        document = current_document(handle)
        status = document.get("status")
        if status == "cancelled" or (status in TERMINAL and not handle.runner_alive()):
            handle.requests.withdraw_cancel(request)  # answered, or left unapplied: no run may inherit it
        if status == "cancelled":
            return document
        if status in TERMINAL and not handle.runner_alive():
            raise Conflict(f"execution {execution_id} {status} before the cancel could take effect.")
        return {**document, "cancelRequested": True}  # still being stopped: its runner applies the request

    def pause(self, execution_id: str, *, wait: bool = False, timeout: float = PAUSE_WAIT) -> dict:
        """Ask a running execution to pause: no new step starts; running steps finish;
        then its status is `paused`. Returns at once with `pauseRequested: true`; with
        `wait`, once it is paused (a Conflict when it ends first or `timeout` passes).

        An execution that has not started yet (queued, or about to be picked up) pauses
        as soon as it starts. Asked from inside the execution itself, it never waits.
        """
        handle = self.handle(execution_id)
        document = current_document(handle)
        status = document.get("status")
        alive = handle.runner_alive()
        not_started = not document.get("startedAt") and status not in TERMINAL
        if status != "paused" and not (alive and status in ("running", "pending")) and not not_started:
            raise Conflict(f"execution {execution_id} is {status}; only a running execution can be paused.")
        handle.requests.request_pause()
        if wait and not _asked_from_inside(handle):
            document = _await_pause(handle, timeout)
        else:
            document = current_document(handle)
        return {**document, "pauseRequested": True}

    def resume(
        self,
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
        handle = self.handle(execution_id)
        status = current_document(handle).get("status")
        if handle.runner_alive():
            if handle.requests.clear_pause() or status == "paused":
                return _await_unpaused(handle)
            raise Conflict(
                f"execution {execution_id} is already being run by process {handle.lock_holder()} "
                "and is not paused; there is nothing to resume."
            )
        if not allows(status, Action.RESUME):
            raise Conflict(
                f"execution {execution_id} is {status}; only a paused or interrupted execution can be resumed"
                + (" (use `wfctl retry EXEC STEP` to run a failed step again)." if status == "failed" else ".")
            )
        handle.requests.clear_pause()
        with handle.runner_lock():
            state, intact = handle.read_state()
            return self._continue(handle, state, intact, on_event=on_event, on_start=on_start)

    def runner_alive(self, execution_id: str) -> bool:
        """Does a process run this execution right now (a paused one's runner waits)?"""
        return self.handle(execution_id).runner_alive()

    # -- housekeeping -----------------------------------------------------------------------
    def prune(
        self,
        *,
        older_than: float,
        statuses: list[str] | None = None,
        dry_run: bool = False,
        include_interrupted: bool = False,
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
        cutoff = time.time() - older_than
        include_interrupted = include_interrupted or "interrupted" in (statuses or ())

        def qualifies(handle: ExecutionHandle, document: dict) -> bool:
            return _prunable(handle, document, cutoff, statuses, include_interrupted)

        removed = []
        for execution_id in self.store.execution_ids():
            handle = self.handle(execution_id)
            try:
                document = current_document(handle)
            except Exception:  # unreadable executions are left for a person to look at
                continue
            if not qualifies(handle, document):
                continue
            if not dry_run:
                document = _remove_execution(handle, qualifies)
                if document is None:
                    continue
            removed.append({"executionId": execution_id, "workflowId": document.get("workflowId"), "status": document.get("status")})
        return {"removed": removed, "count": len(removed), "dryRun": dry_run}

    # -- traces -----------------------------------------------------------------------------
    def traces(self, workflow: str, *, page: int = 1, size: int | None = None) -> dict:
        """The seed 000 trace list of a workflow (by id or name, deleted ones too), newest first."""
        store = self.store
        workflow_id = self.registry().resolve_history(workflow)
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

    def trace(self, workflow: str, trace_id: str) -> dict:
        """One trace of a workflow (deleted ones too), by its id (the execution id of the
        run) or its `uuid`; any other text is a trace that is not found (exit 3)."""
        store = self.store
        workflow_id = self.registry().resolve_history(workflow)
        if is_execution_id(trace_id):
            try:
                return store.load_trace(workflow_id, trace_id)
            except TraceNotFound:
                pass
        elif _UUID.fullmatch(trace_id):
            found = _trace_by_uuid(store, workflow_id, trace_id.lower())
            if found is not None:
                return found
        raise TraceNotFound(
            f"{TraceNotFound.seed_message} Workflow {workflow_id} has no trace '{printable(trace_id)}' "
            f"(see `wfctl traces {workflow_id}`)."
        )


# -- results ----------------------------------------------------------------------------------
def exit_code_for(document: dict) -> ExitCode:
    """The exit code of a run, from its final status (one place for the whole CLI)."""
    return EXIT_FOR_STATUS.get(document.get("status", ""), ExitCode.FAILED)


def public_document(document: dict) -> dict:
    shown = dict(document)
    shown.pop("journalOffset", None)
    return shown


def current_document(handle: ExecutionHandle) -> dict:
    """An execution's document as it is now (what `get_execution` returns)."""
    return public_document(handle.read_state()[0].document)


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


# -- workflows: files and names ---------------------------------------------------------------
def _known(config: Config) -> tuple[set[str], dict[str, dict]]:
    """The agents of config.toml, and its teams with their definitions (whose members a
    workflow that uses them must be able to reach)."""
    return set(config.agents), dict(config.teams)


def _open_runner_log(path: Path) -> int:
    """The detached runner's log (0600, appended): only a regular file, opened without
    blocking, so a FIFO put in its place cannot hang `execute --detach` or `resume`."""
    from wfctl.stepfiles import NotRegularFile, describe_error, open_regular
    from wfctl.store import ensure_dir

    ensure_dir(path.parent)
    try:
        return open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except NotRegularFile as err:
        raise StoreError(f"{path} is {err.kind}, not a regular file; wfctl does not write its runner's log there.") from None
    except OSError as err:
        raise StoreError(f"cannot open {path}: {describe_error(err)}.") from None


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
            shown = printable(ref)
            raise WorkflowNotFound(
                f"{err.message.rstrip('.')}; a name without a / is a registered workflow's: "
                f"to run the file '{shown}', write ./{shown}."
            ) from None
        raise


# -- running ------------------------------------------------------------------------------------
def _run_options(config: Config, options: dict, document: dict, **listeners: Any) -> RunOptions:
    """How a run of an execution is driven: the options it was prepared with (kept in
    workflow.json, so that resume and retry run it the same way) and config.toml."""
    from wfctl.runner import RunOptions

    return RunOptions(
        executor=str(options.get("executor") or "local"),
        base_dir=Path(options["baseDir"]) if options.get("baseDir") else None,
        nice=NICE_FOR_PRIORITY.get(document.get("priority") or "normal", 0),
        dry_run=bool(options.get("dryRun")),
        fail_fast=bool(options.get("failFast")),
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


def prior_from(state: ExecutionState, workflow: Workflow, *, rerun: str | None = None):
    """What an execution's record says is done: completed steps and their outputs,
    attempts made so far, and the member each round-robin team step chose.

    With `rerun` (a retry of that step): a failed step of a graph that is neither that
    step, nor a step it is inside, nor downstream of those, stays failed (frozen): a
    retry reruns a step and what depends on it, not every failure of the execution.
    """
    from wfctl.record import output_value
    from wfctl.runstate import Prior

    rerun_ids = rerun_set(workflow, rerun) if rerun is not None else None
    completed: dict[str, Any] = {}
    continued: set[str] = set()
    frozen: dict[str, dict] = {}
    attempts: dict[str, int] = {}
    members: dict[str, str] = {}
    for record in walk(state.document["steps"]):
        key = record["id"]
        if record.get("attempts"):
            attempts[key] = len(record["attempts"])
        parsed = StepKey.parse(key)
        step = workflow.by_id.get(parsed.step_id)
        status = record.get("status")
        if status == "completed":
            completed[key] = record.get("output") if "@" in key else output_value(record, step)
        elif status == "failed" and record.get("continued") and key != rerun:
            completed[key] = None  # a failure the workflow chose to go past stays settled
            continued.add(key)
        elif status == "failed" and rerun_ids is not None and _stays_failed(workflow, parsed.step_id, rerun_ids):
            frozen[key] = dict(record.get("error") or {"kind": "failed", "message": "failed."})
        if record.get("type") == "team" and record.get("steps") and isinstance(step, TeamStep):
            if (workflow.teams.get(step.team_id) or {}).get("strategy", "round-robin") == "round-robin":
                members[key] = record.get("member") or StepKey.parse(record["steps"][0]["id"]).member
    return Prior(completed=completed, attempts=attempts, members=members, continued=frozenset(continued),
                 frozen=frozen)


def rerun_set(workflow: Workflow, key: str) -> set[str]:
    """The ids a retry of `key` runs again: the step and everything inside it, the
    steps it is inside, and whatever is downstream of any of these in its graph."""
    target = workflow.by_id.get(StepKey.parse(key).step_id)
    if target is None:
        return set()
    ids = {inner.id for inner in target.walk()}
    step: Any = target
    while step is not None:
        ids.add(step.id)
        steps = workflow.list_of(step.id)
        if steps is not None and steps.graph is not None:
            for downstream in steps.graph.downstream(step.id):
                ids.update(inner.id for inner in workflow.by_id[downstream].walk())
        step = workflow.parent_of(step.id)
    return ids


def _stays_failed(workflow: Workflow, step_id: str, rerun_ids: set[str]) -> bool:
    steps = workflow.list_of(step_id)
    return steps is not None and steps.graph is not None and step_id not in rerun_ids


# -- steering -----------------------------------------------------------------------------------
def _asked_from_inside(handle: ExecutionHandle) -> bool:
    """Does the request come from the execution itself: one of its command steps
    (WFCTL_EXECUTION_ID), or an in-process step of the process that runs it? Waiting
    there for the execution to pause or end would wait for itself."""
    return os.environ.get("WFCTL_EXECUTION_ID") == handle.execution_id or handle.runs_here()


def _await_cancel(handle: ExecutionHandle, reason: str | None, wait: float) -> None:
    """Wait (at most `wait` seconds) until the execution has ended and no runner holds
    it; end it here when no runner does (and none takes it meanwhile)."""
    from wfctl.control import WATCH_SECONDS

    deadline = time.monotonic() + wait
    ended_at: float | None = None
    while True:
        if not handle.runner_alive():
            if current_document(handle).get("status") in TERMINAL:
                return
            if _cancel_without_runner(handle, reason):
                return
        elif ended_at is None and current_document(handle).get("status") in TERMINAL:
            # Ended: its runner has its last records to write (trace, notifications).
            ended_at = time.monotonic()
            deadline = min(deadline, ended_at + 5.0)
        if time.monotonic() >= deadline:
            return
        time.sleep(WATCH_SECONDS / 2)


def _cancel_without_runner(handle: ExecutionHandle, reason: str | None) -> bool:
    """Cancel an execution that no process runs, holding its lock; False when a runner
    took it meanwhile (that runner applies the request)."""
    try:
        with handle.runner_lock():
            state, intact = handle.read_state()
            if state.document.get("status") not in TERMINAL:
                _finish_without_runner(handle, state, intact, "cancelled", reason)
    except Conflict:
        return False
    return True


def _finish_without_runner(
    handle: ExecutionHandle, state: ExecutionState, intact: int, status: str, reason: str | None
) -> None:
    """End an execution that no process runs by appending to its journal (the caller
    holds its runner lock); the cancel request it answers goes once that is durable."""
    from wfctl import events
    from wfctl.runner import Recorder, settle_requests, write_trace

    recorder = Recorder(handle, state, intact=intact)
    for record in walk(state.document["steps"]):
        if record.get("status") == "running":
            recorder(events.step_reset(now_iso(), record["id"], status="cancelled"))
    recorder(events.execution_finished(now_iso(), status, reason=reason, with_reason=True))
    recorder.close()
    if recorder.broken:
        raise StoreError(f"{recorder.broken}; the execution was not cancelled.")
    settle_requests(handle.requests, state.document)
    write_trace(handle.store, state.document, build_workflow(handle.load_frozen_workflow()["definition"]))


def _await_pause(handle: ExecutionHandle, timeout: float) -> dict:
    """Wait until the execution is paused; a Conflict when it ends, loses its runner or
    is still running after `timeout` seconds."""
    from wfctl.control import WATCH_SECONDS

    execution_id = handle.execution_id
    deadline = time.monotonic() + timeout
    while True:
        document = current_document(handle)
        status = document.get("status")
        if status == "paused":
            return document
        if status in TERMINAL:
            handle.requests.clear_pause()
            raise Conflict(f"execution {execution_id} {status} before it could pause.")
        if status == "interrupted" and document.get("startedAt"):
            raise Conflict(f"execution {execution_id} lost its runner before it could pause; `wfctl resume` continues it.")
        if time.monotonic() >= deadline:
            raise Conflict(
                f"execution {execution_id} is still {status} after {timeout:g}s (a step is still running); "
                "the pause stays requested."
            )
        time.sleep(WATCH_SECONDS / 2)


def _await_unpaused(handle: ExecutionHandle) -> dict:
    """The document once the runner has acknowledged the resume (its status is no
    longer `paused`), so that what `resume` reports is not the state it just ended;
    bounded, and at once when the runner goes away."""
    from wfctl.control import WATCH_SECONDS

    deadline = time.monotonic() + RESUME_ACK_WAIT
    while True:
        document = current_document(handle)
        if document.get("status") != "paused" or time.monotonic() >= deadline:
            return document
        if not handle.runner_alive():
            return current_document(handle)
        time.sleep(WATCH_SECONDS / 2)


# -- prune --------------------------------------------------------------------------------------
def _prunable(
    handle: ExecutionHandle, document: dict, cutoff: float, statuses: list[str] | None, include_interrupted: bool
) -> bool:
    status = document.get("status")
    if statuses and status not in statuses:
        return False
    if status not in TERMINAL and not (status == "interrupted" and include_interrupted):
        return False
    last = _last_event_time(handle, document)
    return last is not None and last <= cutoff


def _last_event_time(handle: ExecutionHandle, document: dict) -> float | None:
    """When an execution last did something (epoch seconds): when it ended, or for
    one that did not end, the latest write to its journal or snapshot (each event is
    appended as it happens), else when it started."""
    from wfctl.record import parse_iso

    if document.get("status") in TERMINAL and document.get("completedAt"):
        return parse_iso(document["completedAt"]).timestamp()
    written = handle.last_written()
    if written is not None:
        return written
    if document.get("startedAt"):
        return parse_iso(document["startedAt"]).timestamp()
    return None


def _remove_execution(handle: ExecutionHandle, qualifies: Callable[[ExecutionHandle, dict], bool]) -> dict | None:
    """Remove one execution and its trace while holding its runner lock; None when it
    is being run, was removed meanwhile, or no longer qualifies once locked."""
    try:
        with handle.runner_lock():
            document = _document_while_locked(handle)
            if not qualifies(handle, document):
                return None
            faults.stall("stall-prune")
            handle.remove(document.get("workflowId"))
    except (Conflict, ExecutionNotFound):
        return None  # a runner holds it, or it is already gone
    return document


def _document_while_locked(handle: ExecutionHandle) -> dict:
    """The execution document read by the holder of its runner lock: no other process
    runs it, so a status that says it runs means its runner died."""
    document = current_document(handle)
    if document.get("status") in LIVE:
        document["status"] = "interrupted"
    return document


# -- traces -------------------------------------------------------------------------------------
def _trace_by_uuid(store: Store, workflow_id: str, uuid: str) -> dict | None:
    """The trace whose `uuid` field is `uuid` (read from each trace's head)."""
    for candidate in store.trace_ids(workflow_id):
        try:
            if store.trace_summary(workflow_id, candidate).get("uuid") == uuid:
                return store.load_trace(workflow_id, candidate)
        except (TraceNotFound, StoreError):
            continue  # removed meanwhile, or unreadable: not the one
    return None
