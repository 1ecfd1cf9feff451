"""The engine: walks a workflow's step tree and emits an event for everything that happens.

It knows nothing of files or terminals. `emit` receives plain dict events (see
record.py for how they change the execution document); the api wires them to the
journal, the snapshot and the live table.

Step keys: a step's id, plus `[i]` for each enclosing loop iteration, plus `@member`
for a team member's run, e.g. `process[3]` or `team-project@tom`. A key names one
step instance for the whole life of an execution: its log file, its idempotency key,
and, on resume or retry, whether it already completed.
"""

from __future__ import annotations

import threading
import time
from collections import ChainMap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from wfctl import faults
from wfctl.agents import AttemptContext, Outcome, failure, plain_text, run_agent
from wfctl.errors import ExpressionError
from wfctl.record import branch_steps, now_iso, step_type
from wfctl.results import settle
from wfctl.retry import Policy, backoff_delay, policy_for, retry_fields_inside

Emit = Callable[[dict], None]
COMPOSITE_TYPES = ("parallel", "conditional", "loop", "team")


@dataclass(frozen=True)
class Frame:
    """Where a step runs: its key suffix, its parent, and names local to it."""

    suffix: str = ""
    parent: str | None = None
    locals: dict | None = None  # loop iteration scope (item, index, the body's outputs), `error`
    item: Any = None
    index: int | None = None
    in_loop: bool = False
    echoed_item: bool = False  # a dry run's loop over echoed output: `item` decides nothing
    retry_defaults: dict | None = None  # retry fields handed down by the enclosing steps

    def child(self, parent: str) -> "Frame":
        return replace(self, parent=parent)


@dataclass
class Settings:
    execution_id: str
    workflow_id: str
    log_dir: Path  # step logs and $WFCTL_OUTPUT files
    agents: Mapping[str, dict]
    teams: Mapping[str, dict]
    max_concurrency: int = 4
    dry_run: bool = False
    # Round-robin teams rotate across runs: the api gives each run its turn number.
    team_turn: Callable[[str], int] = lambda team: 0
    # Environment for every step process (the api puts priority and secrets here).
    extra_env: Mapping[str, str] | None = None
    nice: int = 0  # low-priority runs start their step processes with a higher nice value
    # Where attempts run: None is this machine; an executor (e.g. a Dask cluster) is a
    # callable (agent, ctx) -> Outcome that runs command and python agents elsewhere.
    executor: Callable[[dict, AttemptContext], Outcome] | None = None
    secrets: Mapping[str, str] | None = None  # NAME → value: env vars of steps, `secrets.NAME`
    masker: Any = None  # masks those values in logs
    # Attempts lost to the infrastructure (a Dask worker that died) are run again this
    # many times, apart from the step's own retry policy (defaults.infrastructure_retries).
    infrastructure_retries: int = 3
    # Told (one sentence, the step key) when a file written for a step (its log) cannot be
    # written: the api stops the run as when the journal cannot be written.
    on_storage_failure: Callable[[str, str], None] | None = None


@dataclass
class Prior:
    """What an earlier run of this execution left: the engine continues from it."""

    completed: dict[str, Any]  # key → output of every step instance that completed
    attempts: dict[str, int]  # key → attempts already made (new ones are numbered on)
    members: dict[str, str]  # round-robin team key → the member it chose


class Engine:
    """Runs one execution of a workflow definition."""

    def __init__(
        self,
        workflow: dict,
        settings: Settings,
        emit: Emit,
        *,
        prior: Prior | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.workflow = workflow
        self.settings = settings
        self.emit = emit
        prior = prior or Prior({}, {}, {})
        # Step instances that completed in an earlier run of this execution (resume,
        # retry) are never run again; their outputs are reused.
        self.completed = dict(prior.completed)
        self.attempt_base = dict(prior.attempts)
        self.prior_members = dict(prior.members)
        self.state: dict[str, Any] = {}
        self.input: dict[str, Any] = {}
        self.steps_view: dict[str, dict] = {}
        self.cancel_event = threading.Event()
        self.cancel_status = "cancelled"
        self.cancel_reason: str | None = None
        self.escalated = False
        self._escalations = 0
        self._failure: dict | None = None
        self._sleep = sleep
        self._specials = {"input": self.input, "steps": self.steps_view}
        self._echoed: set[str] = set()  # in a dry run: output names whose values the echo agent made
        if settings.secrets:
            self._specials["secrets"] = dict(settings.secrets)
        self._workflow_policy = workflow.get("errorHandling") or {}
        self._policies: dict[tuple[int, int], Policy] = {}
        # (id of a group's errorHandling, id of what it inherited) → what it hands down;
        # kept for the run, so that the ids used as keys are never reused.
        self._handed_down: dict[tuple[int, int], dict | None] = {}
        self._pause_gate: Callable[[], None] | None = None
        self._active_lock = threading.Lock()
        self._spawn_slots = threading.BoundedSemaphore(_command_slots())
        self.active = 0  # task steps running right now (pausing waits for them to finish)
        # Where the run stands, so that a cancel or timeout can say what it interrupted
        # (guarded by _active_lock: parallel branches change them).
        self._in_flight: dict[str, None] = {}  # keys of task steps running (attempts and waits)
        self._waiting: dict[str, str] = {}  # key → "the wait before retry N ..." being waited
        self._held_at: str | None = None  # the step whose start the pause gate is holding
        self._began = False  # a step has started in this run
        self._stopped_at: tuple[str, str | None] = ("", None)  # (what was happening, step key) at cancel

    # -- control ----------------------------------------------------------------------------
    def cancel(self, reason: str | None = None, status: str = "cancelled") -> None:
        """Stop: running step processes are terminated, nothing new starts."""
        if not self.cancel_event.is_set():
            self.cancel_status = status
            self.cancel_reason = reason
            self._stopped_at = self._moment()
            self.cancel_event.set()

    def _moment(self) -> tuple[str, str | None]:
        """What the run is doing right now, as words that follow "cancelled" or "the
        workflow timed out after 5s", and the key of the step concerned.

        No lock: cancel() also runs in the Ctrl-C handler, on the engine's own thread,
        which may hold _active_lock at that moment. Copying a dict is one step for the
        interpreter, so another thread cannot change it halfway.
        """
        waits = list(self._waiting.items())
        running = list(self._in_flight)
        held = self._held_at
        began = self._began
        if waits:
            return "during " + "; ".join(label for _key, label in waits), waits[0][0]
        if running:
            names = ", ".join(f"'{key}'" for key in running[:5]) + (", ..." if len(running) > 5 else "")
            verb = "was" if len(running) == 1 else "were"
            return f"while step{'s' if len(running) > 1 else ''} {names} {verb} running", running[0]
        if held is not None:
            return f"while paused, before step '{held}' started", held
        if not began:
            return "before any step started", None
        return "between steps", None

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def set_pause_gate(self, gate: Callable[[], None]) -> None:
        """`gate()` is called before each step starts; it returns when the run may go on."""
        self._pause_gate = gate

    def _wait(self, key: str, label: str, seconds: float) -> None:
        """Wait between attempts; a cancel ends the wait at once. `label` says what is
        awaited, for the record of a cancel or timeout that ends the wait."""
        with self._active_lock:
            self._waiting[key] = label
        try:
            if seconds <= 0:
                return
            if self._sleep is not None:
                self._sleep(seconds)
            else:
                self.cancel_event.wait(seconds)
        finally:
            with self._active_lock:
                self._waiting.pop(key, None)

    def _policy(self, step: dict, frame: Frame) -> Policy:
        # Keyed by the step's errorHandling object and what the enclosing steps hand
        # down: every step without either shares one policy.
        own = step.get("errorHandling")
        key = (id(own), id(frame.retry_defaults))
        policy = self._policies.get(key)
        if policy is None:
            policy = policy_for(self._workflow_policy, own, frame.retry_defaults)
            self._policies[key] = policy
        return policy

    def _inside(self, step: dict, frame: Frame) -> Frame:
        """The frame a parallel, conditional, loop or team step runs its inside in:
        with the retry fields it hands down to the steps inside it."""
        own = step.get("errorHandling")
        key = (id(own), id(frame.retry_defaults))
        if key not in self._handed_down:
            self._handed_down[key] = retry_fields_inside(frame.retry_defaults, own)
        handed = self._handed_down[key]
        return frame if handed is frame.retry_defaults else replace(frame, retry_defaults=handed)

    # -- running ----------------------------------------------------------------------------
    def run(self, input: Mapping[str, Any], *, started: dict | None = None) -> tuple[str, dict | None]:
        """Run every step; returns (final status, error of the step that ended the run)."""
        self.input.update(input)
        self.state.update(input)
        self.emit({"type": "execution.started", "at": now_iso(), **(started or {})})
        ok = self._run_sequence(self.workflow["steps"], Frame())
        if self.cancelled:
            status = self.cancel_status
        elif ok:
            status = "completed"
        else:
            status = "failed"
        event = {"type": "execution.finished", "at": now_iso(), "status": status}
        if status in ("failed", "timed_out"):
            # Every unsuccessful end says what happened, also when no step failed (a
            # timeout during a backoff wait, a pause, or before any step started).
            self._failure = self._failure or self._stop_error()
            event["error"] = self._failure
        if status in ("cancelled", "interrupted", "timed_out"):
            event["reason"] = self.cancel_reason or f"cancelled {self._stopped_at[0]}"
        self.emit(event)
        return status, self._failure

    def _stop_error(self) -> dict:
        """The execution's error when a cancel (a timeout, a record that cannot be
        written) ended it and no step failure says why."""
        if not self.cancelled:  # every failure records its own error; kept as a guard
            return {"kind": "error", "message": "the execution failed."}
        where, key = self._stopped_at
        reason = self.cancel_reason or self.cancel_status
        error: dict[str, Any] = {"kind": "timeout" if self.cancel_status == "timed_out" else "error"}
        error["message"] = f"{reason} {where}." if where else f"{reason}."
        if key is not None:
            error = {"step": key, **error}
        return error

    def _run_sequence(self, steps: list[dict], frame: Frame) -> bool:
        for step in steps:
            if self.cancelled:
                return False
            ok, _ = self._run_step(step, frame)
            if not ok:
                return False
        return True

    def _scope(self, frame: Frame) -> ChainMap:
        if frame.locals is not None:
            return ChainMap(frame.locals, self._specials, self.state)
        return ChainMap(self._specials, self.state)

    def _store_output(self, step: dict, frame: Frame, status: str, value: Any) -> None:
        name = step.get("output")
        if name and status == "completed":
            target = frame.locals if frame.in_loop else self.state
            target[name] = value
            if self.settings.dry_run:
                self._echoed.add(name)
        self.steps_view[step["id"]] = {"status": status, "output": value}

    def _restore(self, step: dict, frame: Frame) -> Any:
        """A step that completed in an earlier run: its outputs (and those of the steps
        inside it) become state again, and nothing runs."""
        key = step["id"] + frame.suffix
        value = self.completed[key]
        inner = frame.child(key)
        kind = step_type(step)
        if kind == "parallel":
            children = step.get("steps", [])
        elif kind == "conditional":
            children = branch_steps(step.get("then")) + branch_steps(step.get("else"))
        else:
            children = []
        for child in children:
            if child["id"] + frame.suffix in self.completed:
                self._restore(child, inner)
        self._store_output(step, frame, "completed", value)
        return value

    def _run_step(self, step: dict, frame: Frame) -> tuple[bool, Any]:
        key = step["id"] + frame.suffix
        if key in self.completed:
            return True, self._restore(step, frame)
        if self._pause_gate is not None:
            self._hold(key)
        if self.cancelled:
            return False, None
        self._began = True
        policy = self._policy(step, frame)
        kind = step_type(step)
        started = time.monotonic()
        # What failures inside this step leave behind is undone if the step recovers.
        before = (self._failure, self._escalations)
        if kind == "task":
            ok, value, error = self._run_leaf(step, key, frame, step.get("agent"), step.get("task"), policy=policy)
        else:
            ok, value, error = self._run_composite(step, key, frame, kind, policy)
        if ok:
            self._store_output(step, frame, "completed", value)
            return True, value
        if self.cancelled and not (error and error.get("kind") == "timeout"):
            self._store_output(step, frame, "cancelled", None)
            return False, None
        return self._after_failure(
            step, key, frame, policy, error or {"kind": "failed", "message": "failed."}, started, before
        )

    def _hold(self, key: str) -> None:
        """Pass the pause gate before step `key` starts (it blocks while paused)."""
        assert self._pause_gate is not None
        self._held_at = key
        try:
            self._pause_gate()
        finally:
            self._held_at = None

    def _after_failure(
        self, step: dict, key: str, frame: Frame, policy: Policy, error: dict, started: float, before: tuple
    ) -> tuple[bool, Any]:
        """A step failed for good (after its retries): fallback, continue, or fail."""
        failure_before, escalations_before = before
        if policy.strategy == "fallback" and policy.fallback is not None and not self.cancelled:
            fallback = policy.fallback
            # The workflow's fallback stands in for many steps: each gets its own record.
            own = (step.get("errorHandling") or {}).get("fallback") is fallback
            suffix = frame.suffix if own else f"{frame.suffix}@{step['id']}"
            scope = dict(frame.locals or {})
            scope["error"] = {
                "message": error.get("message"),
                "kind": error.get("kind"),
                "exitCode": error.get("exitCode"),
                "attempts": error.get("attempts", 1),
                "step": key,
            }
            inner = replace(frame, suffix=suffix, parent=key, locals=scope)
            ok, value = self._run_step(fallback, inner)
            if ok:
                self._failure = failure_before
                # The fallback's result stands in for the step's; the record keeps the error.
                event = {
                    "type": "step.finished",
                    "at": now_iso(),
                    "step": key,
                    "status": "completed",
                    "output": value,
                    "recoveredBy": fallback["id"] + suffix,
                    "duration": round(time.monotonic() - started, 6),
                }
                if step.get("output"):
                    event["outputName"] = step["output"]
                self.emit(event)
                self._store_output(step, frame, "completed", value)
                return True, value
        self._store_output(step, frame, "failed", None)
        if policy.strategy == "continue" and not self.cancelled:
            # Recorded as failed; the run goes on, and later steps get null for its output.
            self._failure = failure_before
            if step.get("output"):
                (frame.locals if frame.in_loop else self.state)[step["output"]] = None
            return True, None
        if self._failure is None:
            self._failure = {"step": key, **{k: v for k, v in error.items() if k != "attempts"}}
        if policy.escalate and self._escalations == escalations_before:
            # Escalated once, by the innermost step that failed, not again by its parents.
            self._escalate(step, key, frame, policy, error)
        return False, None

    def _escalate(self, step: dict, key: str, frame: Frame, policy: Policy, error: dict) -> None:
        """Hand a final failure to the escalation agent; the execution is marked escalated."""
        self.escalated = True
        self._escalations += 1
        event: dict[str, Any] = {"type": "execution.escalated", "at": now_iso(), "step": key, "agent": policy.escalate_to}
        if policy.escalate_to:
            resolved = self._agent_for(policy.escalate_to, step)
            scope = self._scope(frame)
            try:
                inputs = self._inputs(step, scope)
            except ExpressionError:
                inputs = {}
            context_inputs = {"step": key, "error": error, "attempts": error.get("attempts", 1), "inputs": inputs}
            task = f"Step '{key}' of workflow '{self.workflow.get('name')}' failed: {error.get('message')}"
            if resolved is None:
                outcome = failure("error", f"escalation agent '{policy.escalate_to}' is not defined.")
            else:
                ctx = self._context(step, f"{key}@escalation", frame, task, context_inputs, 1, ChainMap({"task": task}, scope))
                outcome = settle((self.settings.executor or run_agent)(resolved[1], ctx), ctx, resolved[1])
            event["ok"] = outcome.ok
            if outcome.ok:
                event["output"] = outcome.output
            else:
                event["error"] = outcome.error
        self.emit(event)

    # -- task steps -------------------------------------------------------------------------
    def _agent_for(self, name: str | None, step: dict) -> tuple[str, dict] | None:
        if self.settings.dry_run:
            return (name or "run"), {}
        if name is None:
            return "run", {"run": step["run"]}
        if name in self.settings.agents:
            return name, self.settings.agents[name]
        if name == "echo":
            return name, {}
        return None

    def _run_leaf(
        self,
        step: dict,
        key: str,
        frame: Frame,
        agent_name: str | None,
        task: str | None,
        *,
        policy: Policy,
        member_of: str | None = None,
    ) -> tuple[bool, Any, dict | None]:
        """Run one task (or one team member's share of a team step) with its retries.
        Returns (ok, output, error)."""
        with self._active_lock:
            self.active += 1
            self._in_flight[key] = None
        try:
            return self._run_attempts(step, key, frame, agent_name, task, policy, member_of)
        finally:
            with self._active_lock:
                self.active -= 1
                self._in_flight.pop(key, None)

    def _run_attempts(
        self,
        step: dict,
        key: str,
        frame: Frame,
        agent_name: str | None,
        task: str | None,
        policy: Policy,
        member_of: str | None,
    ) -> tuple[bool, Any, dict | None]:
        parent = member_of or frame.parent
        resolved = self._agent_for(agent_name, step)
        label = agent_name or "run"
        started = time.monotonic()
        attempt = self.attempt_base.get(key, 0)
        first_attempt = attempt + 1
        outcome: Outcome | None = None
        scope = self._scope(frame)
        attempt_started = started
        # An in-process call that succeeds at once is journaled as one event, not two:
        # its start is folded into its end (half the journal cost of a python step). A
        # runner that dies during the call leaves it pending, and it runs again, as it
        # would after a recorded start.
        fold = resolved is not None and "python" in resolved[1] and self.settings.executor is None
        deferred: dict | None = None
        retry_stopped: str | None = None  # why a failed attempt was not retried, when the policy allowed more
        awaited = ""  # the retry being waited for, in words
        lost = 0  # attempts lost to the infrastructure and run again
        while True:
            if self.cancelled:
                if outcome is None:
                    outcome = failure("cancelled", "cancelled before it started.")
                else:  # the cancel or timeout came between two attempts
                    outcome = self._stopped_outcome(awaited, outcome.exit_code)
                break
            attempt += 1
            event = {"type": "step.started", "at": now_iso(), "step": key, "id": step["id"], "attempt": attempt, "agent": label}
            if parent is not None:
                event["parent"] = parent
            if fold:
                deferred = event
            else:
                self.emit(event)
            attempt_started = time.monotonic()
            if self.cancelled:  # e.g. the start could not be recorded: do not run it
                outcome = failure("cancelled", "cancelled before it started.")
                break
            if resolved is None:
                outcome = failure("error", f"agent '{agent_name}' is not defined.")
            else:
                outcome = self._attempt(step, key, frame, resolved[1], task, attempt, scope)
                faults.crash("after-step")  # tests: the step ran, its end is not recorded yet
            if not outcome.ok and outcome.error and outcome.error["kind"] == "cancelled" and self.cancel_status == "timed_out":
                reason = self.cancel_reason or "the workflow timed out"
                outcome = failure("timeout", f"{reason} while step '{key}' was running.", outcome.exit_code)
            if outcome.ok:
                break
            if deferred is not None:
                self.emit(deferred)  # a failed attempt is recorded in full
                deferred = None
            if self._retries_infrastructure(outcome, lost):
                # The cluster lost the attempt, the step did not fail: run it again at
                # once (the scheduler places it on a live worker), not counting it
                # against the step's own retry policy.
                lost += 1
                self._emit_attempt_failed(key, attempt, outcome, attempt_started, 0.0)
                continue
            kind = outcome.error["kind"] if outcome.error else "failed"
            tries = attempt - first_attempt + 1 - lost  # the attempts the policy counts
            if self.cancelled or kind == "cancelled" or tries >= policy.attempts:
                break
            wait = backoff_delay(policy, tries)
            retry_stopped = _why_no_retry(policy, kind, outcome.exit_code, tries, time.monotonic() - started, wait)
            if retry_stopped is not None:
                break
            self._emit_attempt_failed(key, attempt, outcome, attempt_started, wait)
            awaited = f"the wait before retry {tries} (attempt {attempt + 1}) of step '{key}'"
            self._wait(key, awaited, wait)
        ok = outcome.ok
        kind = outcome.error["kind"] if outcome.error else None
        if ok:
            status = "completed"
        elif kind == "cancelled":
            status = "cancelled"
        else:
            status = "failed"
        event = {
            "type": "step.finished",
            "at": now_iso(),
            "step": key,
            "status": status,
            "duration": round(time.monotonic() - started, 6),
            "attemptDuration": round(time.monotonic() - attempt_started, 6),
            "exitCode": outcome.exit_code,
        }
        if parent is not None:
            event["parent"] = parent
        if deferred is not None:
            if ok:
                event.update(id=step["id"], attempt=attempt, agent=label, startedAt=deferred["at"])
            else:
                self.emit(deferred)
        if ok:
            event["output"] = outcome.output
            if step.get("output") and member_of is None:
                event["outputName"] = step["output"]
        else:
            event["error"] = outcome.error
            if retry_stopped is not None:
                event["retryStopped"] = retry_stopped
            if status == "failed":
                self._mark_failure(event, policy)
        if outcome.worker:
            event["worker"] = outcome.worker
        self.emit(event)
        if ok:
            return True, outcome.output, None
        error = dict(outcome.error or {})
        error["attempts"] = attempt
        return False, None, error

    def _retries_infrastructure(self, outcome: Outcome, lost: int) -> bool:
        """Is this failed attempt one the infrastructure lost (a Dask worker died under
        it), to be run again? At most settings.infrastructure_retries times per step."""
        if self.cancelled or not outcome.error or not outcome.error.get("infrastructure"):
            return False
        return lost < self.settings.infrastructure_retries

    def _emit_attempt_failed(self, key: str, attempt: int, outcome: Outcome, attempt_started: float, wait: float) -> None:
        """A failed attempt that another one follows, `wait` seconds later."""
        self.emit(
            {
                "type": "attempt.failed",
                "at": now_iso(),
                "step": key,
                "attempt": attempt,
                "exitCode": outcome.exit_code,
                "error": outcome.error,
                "attemptDuration": round(time.monotonic() - attempt_started, 6),
                "retryIn": round(wait, 3),
                **({"worker": outcome.worker} if outcome.worker else {}),
            }
        )

    def _mark_failure(self, event: dict, policy: Policy) -> None:
        """Failure events say what happens next, for the record and for notifications."""
        if policy.strategy == "continue":
            event["continued"] = True
        if policy.notify_on_error:
            event["notify"] = True

    def _stopped_outcome(self, awaited: str, exit_code: int | None) -> Outcome:
        """How a step ends when a cancel or timeout comes while it waits for a retry:
        a timeout fails it (kind timeout), any other stop cancels it; either way the
        error says which wait was cut short."""
        if self.cancel_status == "timed_out":
            return failure("timeout", f"{self.cancel_reason} during {awaited}.", exit_code)
        what = "cancelled" if self.cancel_status == "cancelled" else (self.cancel_reason or self.cancel_status)
        return failure("cancelled", f"{what} during {awaited}.", exit_code)

    def _attempt(
        self, step: dict, key: str, frame: Frame, agent: dict, task: str | None, attempt: int, scope: Mapping
    ) -> Outcome:
        try:
            inputs = self._inputs(step, scope)
            task_text = _render(task, scope) if task else task
            env = {
                str(k): _render(v, scope) if isinstance(v, str) else plain_text(v)
                for k, v in (step.get("env") or {}).items()
            }
        except ExpressionError as err:
            return failure("error", err.message)
        ctx = self._context(step, key, frame, task_text, inputs, attempt, ChainMap({"task": task_text}, scope))
        ctx.env.update(env)
        ctx.agent_name = step.get("agent")
        if "run" not in agent:
            return settle((self.settings.executor or run_agent)(agent, ctx), ctx, agent)
        # Each running command holds a few file descriptors: however high maxConcurrency
        # is, no more start at once than the descriptor limit allows.
        with self._spawn_slots:
            outcome = (self.settings.executor or run_agent)(agent, ctx)
        # The result becomes the state and the record's: checked and capped here, for every kind.
        return settle(outcome, ctx, agent)

    def _context(
        self, step: dict, key: str, frame: Frame, task: str | None, inputs: dict, attempt: int, scope: Mapping
    ) -> AttemptContext:
        return AttemptContext(
            step_key=key,
            step_id=step["id"],
            task=task,
            inputs=inputs,
            execution_id=self.settings.execution_id,
            workflow_id=self.settings.workflow_id,
            attempt=attempt,
            scope=scope,
            log_dir=self.settings.log_dir,
            item=frame.item,
            index=frame.index,
            in_loop=frame.in_loop,
            env={**(self.settings.extra_env or {}), **(self.settings.secrets or {})},
            masker=self.settings.masker,
            secrets=self.settings.secrets,
            cwd=step.get("cwd"),
            timeout=step.get("timeout"),
            cancelled=self.cancel_event.is_set,
            nice=self.settings.nice,
            storage_failed=self._storage_failed(key),
        )

    def _storage_failed(self, key: str) -> Callable[[str], None]:
        report = self.settings.on_storage_failure
        if report is None:
            return lambda message: None
        return lambda message: report(message, key)

    def _inputs(self, step: dict, scope: Mapping) -> dict:
        names = step.get("input")
        if names is None:
            return {}
        if isinstance(names, str):
            names = [names]
        values = {}
        for name in names:
            if name not in scope:
                raise ExpressionError(
                    f"input '{name}' is not available: no earlier step produced it and --input does not have it."
                )
            values[name] = scope[name]
        return values

    # -- control-flow steps -----------------------------------------------------------------
    def _run_composite(self, step: dict, key: str, frame: Frame, kind: str, policy: Policy):
        runner = {
            "parallel": self._run_parallel,
            "conditional": self._run_conditional,
            "loop": self._run_loop,
            "team": self._run_team,
        }[kind]
        started = time.monotonic()
        start_event = {"type": "step.started", "at": now_iso(), "step": key, "id": step["id"], "stepType": kind}
        if frame.parent is not None:
            start_event["parent"] = frame.parent
        if kind == "loop":
            try:
                start_event["total"] = len(self._loop_items(step, frame))
            except ExpressionError:
                pass  # reported when the loop runs
        self.emit(start_event)
        try:
            ok, value, error, extra = runner(step, key, self._inside(step, frame))
        except ExpressionError as err:
            ok, value, error, extra = False, None, {"kind": "error", "message": err.message}, {}
        status = "completed" if ok else ("cancelled" if self.cancelled else "failed")
        event = {
            "type": "step.finished",
            "at": now_iso(),
            "step": key,
            "status": status,
            "duration": round(time.monotonic() - started, 6),
            **extra,
        }
        if frame.parent is not None:
            event["parent"] = frame.parent
        if ok:
            event["output"] = value
            if step.get("output"):
                event["outputName"] = step["output"]
        elif error:
            event["error"] = error
        if status == "failed":
            self._mark_failure(event, policy)
        self.emit(event)
        return ok, value, error

    def _run_many(self, thunks: list[Callable[[], tuple[bool, Any]]], limit: int) -> list[tuple[bool, Any] | None]:
        """Run thunks at most `limit` at a time. After a failure the running ones finish
        and the ones not yet started are not started."""
        results: list[tuple[bool, Any] | None] = [None] * len(thunks)
        if limit <= 1 or len(thunks) <= 1:
            for position, thunk in enumerate(thunks):
                if self.cancelled:
                    break
                result = thunk()
                results[position] = result
                if not result[0]:
                    break
            return results
        lock = threading.Lock()
        next_position = [0]
        failed = [False]

        def worker() -> None:
            while True:
                with lock:
                    if failed[0] or self.cancelled or next_position[0] >= len(thunks):
                        return
                    position = next_position[0]
                    next_position[0] += 1
                try:
                    result = thunks[position]()
                except Exception as err:  # a bug must fail one step, not leave the run hanging
                    self._failure = self._failure or {"kind": "error", "message": f"internal error: {err!r}"}
                    result = (False, None)
                results[position] = result
                if not result[0]:
                    with lock:
                        failed[0] = True

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(limit, len(thunks)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def _limit(self, step: dict) -> int:
        return int(step.get("maxConcurrency") or self.settings.max_concurrency)

    def _run_parallel(self, step: dict, key: str, frame: Frame):
        children = step.get("steps", [])
        inner = frame.child(key)
        thunks = [lambda child=child: self._run_step(child, inner) for child in children]
        results = self._run_many(thunks, self._limit(step))
        ok = all(result is not None and result[0] for result in results)
        value = {child["id"]: result[1] for child, result in zip(children, results) if result is not None}
        failed = [child["id"] for child, result in zip(children, results) if result is not None and not result[0]]
        error = None if ok else {"kind": "failed", "message": f"parallel step failed: {', '.join(failed) or 'stopped'}."}
        return ok, value, error, {}

    def _run_conditional(self, step: dict, key: str, frame: Frame):
        from wfctl.expressions import parse, truthy

        condition = step.get("condition")
        extra: dict[str, Any] = {}
        if isinstance(condition, bool):
            chosen = condition
        else:
            try:
                expression = parse(str(condition))
                echoed = self._echoed_name(expression, frame)
                if echoed is not None:
                    # A dry run cannot decide on what echo made up: a true or false
                    # from it would show a path a real run may never take.
                    raise ExpressionError(f"the condition reads '{echoed}', an echoed output of this dry run.")
                chosen = truthy(expression.evaluate(self._scope(frame)))
            except ExpressionError as err:
                if not self.settings.dry_run:
                    raise
                # A dry run follows `then` and says the condition could not be decided.
                chosen, extra = True, {"undecided": err.message}
        branch = "then" if chosen else "else"
        extra["branch"] = branch
        taken = branch_steps(step.get("then") if chosen else step.get("else"))
        skipped = branch_steps(step.get("else") if chosen else step.get("then"))
        inner = frame.child(key)
        for other in skipped:
            self._skip(other, inner)
        value = None
        for child in taken:
            if self.cancelled:
                return False, None, None, extra
            ok, value = self._run_step(child, inner)
            if not ok:
                return False, None, {"kind": "failed", "message": f"step '{child['id']}' failed."}, extra
        return True, value, None, extra

    def _skip(self, step: dict, frame: Frame) -> None:
        key = step["id"] + frame.suffix
        event = {"type": "step.finished", "at": now_iso(), "step": key, "status": "skipped", "stepType": step_type(step)}
        if frame.parent is not None:
            event["parent"] = frame.parent
        self.emit(event)
        self.steps_view[step["id"]] = {"status": "skipped", "output": None}
        kind = step_type(step)
        inner = frame.child(key)
        if kind == "parallel":
            for child in step.get("steps", []):
                self._skip(child, inner)
        elif kind == "conditional":
            for child in branch_steps(step.get("then")) + branch_steps(step.get("else")):
                self._skip(child, inner)

    def _echoed_name(self, expression: Any, frame: Frame) -> str | None:
        """In a dry run, the first name `expression` reads whose value the echo agent
        made up (a step's output, `steps.*`, the item of a loop over such output)."""
        if not self.settings.dry_run:
            return None
        for reference in expression.references():
            root = reference[0]
            if root == "steps" or root in self._echoed or (root == "item" and frame.echoed_item):
                return root
        return None

    def _undecided_items(self, step: dict, frame: Frame) -> str | None:
        """In a dry run, why a loop's items cannot be known (they come from echo)."""
        from wfctl.expressions import parse

        items = step.get("items")
        if not self.settings.dry_run or not isinstance(items, str):
            return None
        echoed = self._echoed_name(parse(items), frame)
        if echoed is None:
            return None
        return f"the items read '{echoed}', an echoed output of this dry run: the body is shown once, with item null."

    def _loop_items(self, step: dict, frame: Frame) -> Sequence:
        """What a loop runs over: a list, or a `range` for a count (never built as a list).

        An expression's result is bounded at run time as a literal is at validation: at
        most spec.MAX_LOOP_ITEMS iterations, each of which becomes a record.
        """
        from wfctl.expressions import parse
        from wfctl.spec import MAX_LOOP_ITEMS, describe_value

        if self._undecided_items(step, frame) is not None:
            return [None]
        items = step.get("items")
        if isinstance(items, bool):
            raise ExpressionError("loop items must be a list, a count or an expression, not a boolean.")
        if isinstance(items, (int, list)):
            value: Any = items
        else:
            value = parse(str(items)).evaluate(self._scope(frame))
            if isinstance(value, bool):
                raise ExpressionError(f"loop items '{items}' is a boolean, not a list.")
            if isinstance(value, dict):
                value = [{"key": k, "value": v} for k, v in value.items()]
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
        if isinstance(value, int):
            if value < 0:
                raise ExpressionError(f"loop items '{items}' is {value}; a count cannot be negative.")
            value = range(value)
        if not isinstance(value, (list, range)):
            raise ExpressionError(f"loop items '{items}' is {describe_value(value)}, not a list or a count.")
        if len(value) > MAX_LOOP_ITEMS:
            raise ExpressionError(f"loop items '{items}' has {len(value):,} items; a loop runs at most "
                                  f"{MAX_LOOP_ITEMS:,} (split the work, or loop over batches).")
        return value

    def _run_loop(self, step: dict, key: str, frame: Frame):
        undecided = self._undecided_items(step, frame)
        items = self._loop_items(step, frame)
        body = step["step"]

        def iteration(position: int, item: Any):
            scope = dict(frame.locals or {})
            scope.update({"item": item, "index": position})
            child = replace(
                frame, suffix=f"{frame.suffix}[{position}]", parent=key, locals=scope, item=item, index=position,
                in_loop=True, echoed_item=undecided is not None,
            )
            return self._run_step(body, child)

        thunks = _Thunks(items, iteration)  # made one at a time, as iterations start
        limit = int(step.get("maxConcurrency") or 1)
        results = self._run_many(thunks, limit)
        ok = all(result is not None and result[0] for result in results)
        value = [result[1] if result is not None else None for result in results]
        error = None if ok else {"kind": "failed", "message": "a loop iteration failed."}
        return ok, value, error, ({"undecided": undecided} if undecided else {})

    def _run_team(self, step: dict, key: str, frame: Frame):
        team_name = step["teamId"]
        team = (self.workflow.get("teams") or {}).get(team_name) or self.settings.teams.get(team_name)
        if team is None:
            return False, None, {"kind": "error", "message": f"team '{team_name}' is not defined."}, {}
        members = list(team.get("members", []))
        strategy = team.get("strategy", "round-robin")
        task = step.get("task")
        policy = self._policy(step, frame)

        def member_run(member: str) -> tuple[bool, Any]:
            member_key = f"{key}@{member}"
            if member_key in self.completed:
                return True, self.completed[member_key]
            ok, value, _error = self._run_leaf(step, member_key, frame, member, task, policy=policy, member_of=key)
            return ok, value

        if strategy == "all":
            thunks = [lambda m=m: member_run(m) for m in members]
            results = self._run_many(thunks, self._limit(step))
            ok = all(result is not None and result[0] for result in results)
            value = {m: r[1] for m, r in zip(members, results) if r is not None}
            error = None if ok else {"kind": "failed", "message": "a team member failed."}
            return ok, value, error, {}
        if strategy == "first-success":
            for member in members:
                ok, value = member_run(member)
                if ok:
                    return True, value, None, {"member": member}
                if self.cancelled:
                    break
            return False, None, {"kind": "failed", "message": "every team member failed."}, {}
        # round-robin: one member per run, taking turns across runs of the workflow
        member = self.prior_members.get(key)
        if member is None:
            member = members[self.settings.team_turn(team_name) % len(members)]
        ok, value = member_run(member)
        error = None if ok else {"kind": "failed", "message": f"team member '{member}' failed."}
        return ok, value, error, {"member": member}


def _why_no_retry(policy: Policy, kind: str, exit_code: int | None, tries: int, elapsed: float, wait: float) -> str | None:
    """None when retry number `tries` follows a failed attempt; otherwise why not, for
    the step's record (the policy allows more attempts, so the reason is worth saying)."""
    if kind not in ("failed", "timeout"):
        return "errors (wfctl could not run the step) are never retried."
    if not policy.retries(kind, exit_code):
        what = "a timeout" if kind == "timeout" else (f"exit code {exit_code}" if exit_code is not None else "this failure")
        return f"{what} is not in retryOn ({', '.join(policy.retry_on)})."
    if policy.max_duration is not None and elapsed + wait > policy.max_duration:
        return (
            f"retry {tries} would start {elapsed + wait:.1f}s into the step ({elapsed:.1f}s so far, then a "
            f"{wait:.3g}s wait), past maxDuration ({policy.max_duration:g}s)."
        )
    return None


FDS_PER_COMMAND = 6  # pipes, the log, and what the child holds while it starts
FDS_RESERVED = 64  # the journal, snapshots, locks, Python's own


def _command_slots() -> int:
    """How many commands may run at once under this process's open-file limit."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(1, (soft - FDS_RESERVED) // FDS_PER_COMMAND)


def _render(text: str, scope: Mapping) -> str:
    from wfctl.expressions import parse_template

    template = parse_template(text)
    if template.is_static:
        return text
    return template.render(scope)


class _Thunks(Sequence):
    """The iterations of a loop as a sequence of thunks, each made when it is taken: a loop
    over a large count holds no list of a million closures before its first item runs."""

    def __init__(self, items: Sequence, run: Callable[[int, Any], tuple[bool, Any]]) -> None:
        self._items = items
        self._run = run

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, position):  # type: ignore[override]
        item = self._items[position]
        return lambda: self._run(position, item)
