"""What one run of an execution shares between the step scheduler and the attempt runner.

`RunContext` holds the run's settings, its `emit` (the only way events leave the
engine), its clock, the cancel token, the state that steps read and write, and the
first failure. `Frame` says where a step instance runs (its key suffix, its parent,
names local to a loop iteration or a fallback, and the `AbortScope` whose cancel stops
it). Nothing here touches files: the engine can be driven in-process.
"""

from __future__ import annotations

import threading
from collections import ChainMap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

from wfctl.depends import Outcome
from wfctl.executors import Executor, as_executor
from wfctl.executors.local import LocalExecutor
from wfctl.model import Clock, Step, StepStatus, Workflow
from wfctl.retry import Policy, policy_for, retry_fields_inside

Emit = Callable[[dict], None]


@dataclass
class Settings:
    execution_id: str
    workflow_id: str
    log_dir: Path  # step logs and $WFCTL_OUTPUT files
    agents: Mapping[str, dict]
    teams: Mapping[str, dict]
    max_concurrency: int = 4  # a parallel step or team without its own maxConcurrency
    dry_run: bool = False
    # Round-robin teams rotate across runs: the api gives each run its turn number.
    team_turn: Callable[[str], int] = lambda team: 0
    # Environment for every step process (the api puts priority and secrets here).
    extra_env: Mapping[str, str] | None = None
    nice: int = 0  # low-priority runs start their step processes with a higher nice value
    executor: Executor = field(default_factory=LocalExecutor)  # where attempts run
    secrets: Mapping[str, str] | None = None  # NAME → value: env vars of steps, `secrets.NAME`
    masker: Any = None  # masks those values in logs
    fail_fast: bool = False  # a failure cancels the steps running beside it
    # Attempts lost to the infrastructure (a Dask worker that died) are run again this
    # many times, apart from the step's own retry policy (defaults.infrastructure_retries).
    infrastructure_retries: int = 3
    # Told (one sentence, the step key) when a file written for a step (its log) cannot be
    # written: the api stops the run as when the journal cannot be written.
    on_storage_failure: Callable[[str, str], None] | None = None

    def __post_init__(self) -> None:
        # An executor may be given as a plain callable (agent, ctx) -> Outcome, or None.
        self.executor = as_executor(self.executor)


@dataclass
class Prior:
    """What an earlier run of this execution left: the engine continues from it."""

    completed: dict[str, Any]  # key → output of every step instance that completed
    attempts: dict[str, int]  # key → attempts already made (new ones are numbered on)
    members: dict[str, str]  # round-robin team key → the member it chose
    continued: frozenset[str] = frozenset()  # keys among `completed` that failed and were continued
    # Graph steps that failed and are not run again (a retry of another step): key → error.
    frozen: dict[str, dict] = field(default_factory=dict)


class AbortScope:
    """A cancel token for the steps started in one place. A scope is aborted when it or
    any scope above it is: the root is the execution's cancel; a list run under
    `--fail-fast` aborts its own scope when one of its steps fails."""

    __slots__ = ("_event", "parent", "aborted")

    def __init__(self, parent: "AbortScope | None" = None, event: threading.Event | None = None) -> None:
        self.parent = parent
        self._event = event or threading.Event()
        # `aborted()` is asked several times per step: the root's is its event's own check.
        self.aborted: Callable[[], bool] = self._event.is_set if parent is None else self._chain_aborted

    def child(self) -> "AbortScope":
        return AbortScope(self)

    def abort(self) -> None:
        self._event.set()

    def _chain_aborted(self) -> bool:
        return self._event.is_set() or self.parent.aborted()


@dataclass(frozen=True)
class Frame:
    """Where a step instance runs: its key suffix, its parent, and names local to it."""

    scope: AbortScope
    suffix: str = ""
    parent: str | None = None
    locals: dict | None = None  # loop iteration scope (item, index, the body's outputs), `error`
    item: Any = None
    index: int | None = None
    in_loop: bool = False
    in_fallback: bool = False  # inside a fallback the workflow's fallback is not used again
    echoed_item: bool = False  # a dry run's loop over echoed output: `item` decides nothing
    # The retry fields handed down here when they differ from the model's (inside the
    # workflow's fallback, which stands in for steps in many places); None: the model's.
    inherited: Mapping[str, Any] | None = None

    def child(self, parent: str) -> "Frame":
        return replace(self, parent=parent)

    def within(self, scope: AbortScope) -> "Frame":
        return replace(self, scope=scope)

    def iteration(self, scope: AbortScope, suffix: str, parent: str, names: dict, item: Any, index: int,
                  echoed_item: bool) -> "Frame":
        """The frame of one loop iteration (built directly: a loop makes one per item)."""
        return Frame(scope, suffix, parent, names, item, index, True, self.in_fallback, echoed_item, self.inherited)


class Result(NamedTuple):
    """How one step instance ended, for the list it belongs to."""

    ok: bool  # the list goes on (completed, continued, skipped)
    value: Any
    outcome: Outcome


CANCELLED_RESULT = Result(False, None, Outcome.CANCELLED)


class RunContext:
    """The shared state of one run (see the module's docstring)."""

    def __init__(
        self,
        workflow: Workflow,
        settings: Settings,
        emit: Emit,
        prior: Prior,
        clock: Clock,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.workflow = workflow
        self.settings = settings
        self.emit = emit
        self.clock = clock
        self.now: Callable[[], str] = clock.now_iso  # an ISO time for an event
        # Step instances that completed in an earlier run of this execution (resume,
        # retry) are never run again; their outputs are reused.
        self.completed = dict(prior.completed)
        self.continued = prior.continued
        self.frozen = dict(prior.frozen)
        self.attempt_base = dict(prior.attempts)
        self.prior_members = dict(prior.members)
        self.state: dict[str, Any] = {}
        self.input: dict[str, Any] = {}
        self.steps_view: dict[str, dict] = {}
        self.cancel_event = threading.Event()
        self.cancel_status = "cancelled"
        self.cancel_reason: str | None = None
        self.root = AbortScope(event=self.cancel_event)
        self.escalated = False
        self.escalations = 0
        self.failure: dict | None = None  # the error of the step that ended the run
        self.specials: dict[str, Any] = {"input": self.input, "steps": self.steps_view}
        if settings.secrets:
            self.specials["secrets"] = dict(settings.secrets)
        self.pause_gate: Callable[[], None] | None = None
        self._sleep = sleep
        self.active_lock = threading.Lock()
        self.active = 0  # task steps running right now (pausing waits for them to finish)
        self.echoed: set[str] = set()  # in a dry run: output names whose values the echo agent made
        self._policies: dict[tuple[int, int], Policy] = {}
        self._handed_down: dict[tuple[int, int], Mapping[str, Any] | None] = {}
        # Where the run stands, so that a cancel or timeout can say what it interrupted
        # (guarded by active_lock: parallel branches change them).
        self.in_flight: dict[str, None] = {}  # keys of task steps running (attempts and waits)
        self.waiting: dict[str, str] = {}  # key → "the wait before retry N ..." being waited
        self.held_at: str | None = None  # the step whose start the pause gate is holding
        self.began = False  # a step has started in this run
        self.stopped_at: tuple[str, str | None] = ("", None)  # (what was happening, step key) at cancel

    # -- control -----------------------------------------------------------------------------
    def cancel(self, reason: str | None = None, status: str = "cancelled") -> None:
        """Stop: running step processes are terminated, nothing new starts."""
        if not self.cancel_event.is_set():
            self.cancel_status = status
            self.cancel_reason = reason
            self.stopped_at = self.moment()
            self.cancel_event.set()

    def moment(self) -> tuple[str, str | None]:
        """What the run is doing right now, as words that follow "cancelled" or "the
        workflow timed out after 5s", and the key of the step concerned.

        No lock: cancel() also runs in the Ctrl-C handler, on the engine's own thread,
        which may hold active_lock at that moment. Copying a dict is one step for the
        interpreter, so another thread cannot change it halfway.
        """
        waits = list(self.waiting.items())
        running = list(self.in_flight)
        held = self.held_at
        if waits:
            return "during " + "; ".join(label for _key, label in waits), waits[0][0]
        if running:
            names = ", ".join(f"'{key}'" for key in running[:5]) + (", ..." if len(running) > 5 else "")
            verb = "was" if len(running) == 1 else "were"
            return f"while step{'s' if len(running) > 1 else ''} {names} {verb} running", running[0]
        if held is not None:
            return f"while paused, before step '{held}' started", held
        if not self.began:
            return "before any step started", None
        return "between steps", None

    def stop_error(self) -> dict:
        """The execution's error when a cancel (a timeout, a record that cannot be
        written) ended it and no step failure says why."""
        if not self.cancelled:  # every failure records its own error; kept as a guard
            return {"kind": "error", "message": "the execution failed."}
        where, key = self.stopped_at
        reason = self.cancel_reason or self.cancel_status
        error: dict[str, Any] = {"kind": "timeout" if self.cancel_status == "timed_out" else "error"}
        error["message"] = f"{reason} {where}." if where else f"{reason}."
        if key is not None:
            error = {"step": key, **error}
        return error

    def hold(self, key: str) -> None:
        """Pass the pause gate before step `key` starts (it blocks while paused)."""
        assert self.pause_gate is not None
        self.held_at = key
        try:
            self.pause_gate()
        finally:
            self.held_at = None

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def wait(self, seconds: float, scope: AbortScope, key: str, label: str) -> None:
        """Wait between attempts; a cancel (or an abort of the scope) ends the wait at once.
        `label` says what is awaited, for the record of a cancel or timeout that ends it."""
        with self.active_lock:
            self.waiting[key] = label
        try:
            self._wait(seconds, scope)
        finally:
            with self.active_lock:
                self.waiting.pop(key, None)

    def _wait(self, seconds: float, scope: AbortScope) -> None:
        if seconds <= 0:
            return
        if self._sleep is not None:
            self._sleep(seconds)
        elif scope is self.root or scope.parent is None:
            self.cancel_event.wait(seconds)
        else:
            # An abort of an inner scope has no event of the root's: look every 0.1 s.
            deadline = self.clock.monotonic() + seconds
            while not scope.aborted():
                remaining = deadline - self.clock.monotonic()
                if remaining <= 0:
                    return
                self.cancel_event.wait(min(remaining, 0.1))


    # -- state -------------------------------------------------------------------------------
    def scope_of(self, frame: Frame) -> ChainMap:
        """The names a step's expressions and templates see."""
        if frame.locals is not None:
            return ChainMap(frame.locals, self.specials, self.state)
        return ChainMap(self.specials, self.state)

    def policy_of(self, step: Step, frame: Frame) -> Policy:
        """The step's policy where it runs: the model's, unless the retry fields handed
        down here differ (inside the workflow's fallback)."""
        if frame.inherited is None:
            return step.policy
        key = (id(step), id(frame.inherited))
        policy = self._policies.get(key)
        if policy is None:
            policy = policy_for(self.workflow.error_policy, step.raw.get("errorHandling"), frame.inherited)
            self._policies[key] = policy
        return policy

    def inside(self, step: Step, frame: Frame) -> Frame:
        """The frame a parallel, conditional, loop or team step runs its inside in, when
        the retry fields handed down differ from the model's."""
        if frame.inherited is None:
            return frame
        key = (id(step), id(frame.inherited))
        if key not in self._handed_down:
            self._handed_down[key] = retry_fields_inside(frame.inherited, step.raw.get("errorHandling"))
        handed = self._handed_down[key]
        return frame if handed is frame.inherited else replace(frame, inherited=handed)

    def store_output(self, step: Step, frame: Frame, status: str, value: Any) -> None:
        if step.output and status == StepStatus.COMPLETED:
            target = frame.locals if frame.in_loop else self.state
            target[step.output] = value
            if self.settings.dry_run:
                self.echoed.add(step.output)
        self.steps_view[step.id] = {"status": status, "output": value}

    def clear_output(self, step: Step, frame: Frame) -> None:
        """A failure the workflow goes past: later steps get null for its output."""
        if step.output:
            (frame.locals if frame.in_loop else self.state)[step.output] = None
