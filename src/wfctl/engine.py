"""The engine: runs one execution of a workflow and emits an event for everything that happens.

A thin façade that wires the units of a run together:

* model.py: the typed workflow (built here from a definition dict when given one);
* runstate.py: what the run shares (settings, the cancel token, the state, `emit`);
* stepscheduler.py: walks lists (in order, or as graphs) and composite steps;
* attempts.py: one leaf step's attempts, retries, fallback and escalation;
* executors/: where an attempt runs (this machine, or a Dask cluster);
* events.py: every event it emits (record.py reads them back).

It knows nothing of files or terminals: the runner wires `emit` to the journal, the
snapshot and the live table; tests can collect the events in a list and inject a clock.

Step keys (model.StepKey): a step's id, plus `[i]` for each enclosing loop iteration,
plus `@member` for a team member's run, e.g. `process[3]` or `team-project@tom`. A key
names one step instance for the whole life of an execution: its log file, its
idempotency key, and, on resume or retry, whether it already completed.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from wfctl import events
from wfctl.attempts import AttemptRunner
from wfctl.model import SYSTEM_CLOCK, Clock, ExecutionStatus, Workflow, build_workflow
from wfctl.runstate import Emit, Frame, Prior, RunContext, Settings
from wfctl.stepscheduler import StepScheduler

__all__ = ["Emit", "Engine", "Prior", "Settings"]


class Engine:
    """Runs one execution of a workflow definition."""

    def __init__(
        self,
        workflow: Workflow | Mapping[str, Any],
        settings: Settings,
        emit: Emit,
        *,
        prior: Prior | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        model = workflow if isinstance(workflow, Workflow) else build_workflow(workflow)
        self.workflow = model
        self.settings = settings
        self.run_context = RunContext(model, settings, emit, prior or Prior({}, {}, {}), clock or SYSTEM_CLOCK, sleep)
        self.attempts = AttemptRunner(self.run_context)
        self.scheduler = StepScheduler(self.run_context, self.attempts)

    # -- control ----------------------------------------------------------------------------
    def cancel(self, reason: str | None = None, status: str = ExecutionStatus.CANCELLED) -> None:
        """Stop: running step processes are terminated, nothing new starts."""
        self.run_context.cancel(reason, status)

    @property
    def cancelled(self) -> bool:
        return self.run_context.cancelled

    @property
    def active(self) -> int:
        """Task steps running right now (pausing waits for them to finish)."""
        return self.run_context.active

    @property
    def escalated(self) -> bool:
        return self.run_context.escalated

    @property
    def state(self) -> dict[str, Any]:
        """The execution's state: the input and every output stored so far."""
        return self.run_context.state

    def set_pause_gate(self, gate: Callable[[], None]) -> None:
        """`gate()` is called before each step starts; it returns when the run may go on."""
        self.run_context.pause_gate = gate

    # -- running ----------------------------------------------------------------------------
    def run(self, input: Mapping[str, Any], *, started: dict | None = None) -> tuple[str, dict | None]:
        """Run every step; returns (final status, error of the step that ended the run).
        `started` may hold the start's time (`at`) and the `estimatedCompletion`."""
        run = self.run_context
        run.input.update(input)
        run.state.update(input)
        started = started or {}
        run.emit(events.execution_started(started.get("at") or run.now(),
                                          estimated_completion=started.get("estimatedCompletion")))
        outcome = self.scheduler.run_list(self.workflow.steps, Frame(run.root), self.workflow.max_concurrency)
        if run.cancelled:
            status = run.cancel_status
        elif outcome.ok:
            status = ExecutionStatus.COMPLETED
        else:
            status = ExecutionStatus.FAILED
        error = reason = None
        if status in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT):
            # Every unsuccessful end says what happened, also when no step failed (a
            # timeout during a backoff wait, a pause, or before any step started).
            run.failure = run.failure or run.stop_error()
            error = run.failure
        if status in (ExecutionStatus.CANCELLED, ExecutionStatus.INTERRUPTED, ExecutionStatus.TIMED_OUT):
            reason = run.cancel_reason or f"cancelled {run.stopped_at[0]}"
        run.emit(events.execution_finished(run.now(), status, error=error, reason=reason))
        return status, run.failure
