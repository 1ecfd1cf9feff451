"""The attempt runner: one leaf step (a task, or one team member's share of a team
step) from its first attempt to its last, and what follows a final failure.

Per attempt: resolve the agent, render the inputs, task and environment, hand the
attempt to the executor, record it. Between attempts: the retry policy decides, and
the backoff wait is interruptible. After the last one (`settle`, for any kind of step):
the fallback step stands in, or the failure is continued, or it stops the list (and is
escalated once, by the innermost step that failed).
"""

from __future__ import annotations

import threading
from collections import ChainMap
from dataclasses import replace
from typing import Any, Callable, Mapping

from wfctl import events, faults
from wfctl.agents import AttemptContext, Outcome, failure
from wfctl.depends import Outcome as ListOutcome
from wfctl.errors import ExpressionError
from wfctl.model import Step, StepStatus, named, step_key
from wfctl.results import settle
from wfctl.retry import Policy, backoff_delay
from wfctl.runstate import Frame, Result, RunContext

RunStep = Callable[[Step, Frame], Result]

FDS_PER_COMMAND = 6  # pipes, the log, and what the child holds while it starts
FDS_RESERVED = 64  # the journal, snapshots, locks, Python's own


class AttemptRunner:
    def __init__(self, run: RunContext) -> None:
        self.run = run
        self._spawn_slots = threading.BoundedSemaphore(_command_slots())

    # -- one leaf step, all its attempts -----------------------------------------------------
    def run_leaf(
        self,
        step: Step,
        key: str,
        frame: Frame,
        agent_name: str | None,
        task: Any,
        *,
        member_of: str | None = None,
    ) -> tuple[bool, Any, dict | None]:
        """Run one task (or one team member's share of a team step) with its retries.
        Returns (ok, output, error)."""
        run = self.run
        with run.active_lock:
            run.active += 1
            run.in_flight[key] = None
        try:
            return self._attempts(step, key, frame, agent_name, task, member_of)
        finally:
            with run.active_lock:
                run.active -= 1
                run.in_flight.pop(key, None)

    def _attempts(
        self, step: Step, key: str, frame: Frame, agent_name: str | None, task: Any, member_of: str | None
    ) -> tuple[bool, Any, dict | None]:
        run = self.run
        clock = run.clock
        policy = run.policy_of(step, frame)
        parent = member_of or frame.parent
        resolved = self.agent_for(agent_name, step)
        label = agent_name or "run"
        started = clock.monotonic()
        attempt = run.attempt_base.get(key, 0)
        first_attempt = attempt + 1
        outcome: Outcome | None = None
        scope = run.scope_of(frame)
        attempt_started = started
        # An in-process call that succeeds at once is journaled as one event, not two:
        # its start is folded into its end (half the journal cost of a python step). A
        # runner that dies during the call leaves it pending, and it runs again, as it
        # would after a recorded start.
        fold = resolved is not None and "python" in resolved[1] and run.settings.executor.runs_in_process
        deferred: dict | None = None
        retry_stopped: str | None = None  # why a failed attempt was not retried, when the policy allowed more
        awaited = ""  # the retry being waited for, in words
        lost = 0  # attempts lost to the infrastructure and run again
        while True:
            if frame.scope.aborted():
                if outcome is None:
                    outcome = failure("cancelled", "cancelled before it started.")
                else:  # the cancel or timeout came between two attempts
                    outcome = self._stopped_outcome(awaited, outcome.exit_code)
                break
            attempt += 1
            event = events.attempt_started(run.now(), key, step.id, attempt, label, parent=parent)
            if fold:
                deferred = event
            else:
                run.emit(event)
            attempt_started = clock.monotonic()
            if frame.scope.aborted():  # e.g. the start could not be recorded: do not run it
                outcome = failure("cancelled", "cancelled before it started.")
                break
            if resolved is None:
                outcome = failure("error", f"agent '{agent_name}' is not defined.")
            else:
                outcome = self._attempt(step, key, frame, resolved[1], task, attempt, scope)
                faults.crash("after-step")  # tests: the step ran, its end is not recorded yet
            if not outcome.ok and outcome.error and outcome.error["kind"] == "cancelled" and run.cancel_status == "timed_out":
                reason = run.cancel_reason or "the workflow timed out"
                outcome = failure("timeout", f"{reason} while step '{key}' was running.", outcome.exit_code)
            if outcome.ok:
                break
            if deferred is not None:
                run.emit(deferred)  # a failed attempt is recorded in full
                deferred = None
            if self._retries_infrastructure(outcome, lost, frame):
                # The cluster lost the attempt, the step did not fail: run it again at
                # once (the scheduler places it on a live worker), not counting it
                # against the step's own retry policy.
                lost += 1
                self._attempt_failed(key, attempt, outcome, attempt_started, 0.0)
                continue
            kind = outcome.error["kind"] if outcome.error else "failed"
            tries = attempt - first_attempt + 1 - lost  # the attempts the policy counts
            if frame.scope.aborted() or kind == "cancelled" or tries >= policy.attempts:
                break
            wait = backoff_delay(policy, tries)
            retry_stopped = why_no_retry(policy, kind, outcome.exit_code, tries, clock.monotonic() - started, wait)
            if retry_stopped is not None:
                break
            self._attempt_failed(key, attempt, outcome, attempt_started, wait)
            awaited = f"the wait before retry {tries} (attempt {attempt + 1}) of step '{key}'"
            run.wait(wait, frame.scope, key, awaited)
        return self._finish(step, key, policy, outcome, attempt, parent, member_of, started, attempt_started,
                            deferred, retry_stopped)

    def _finish(
        self, step: Step, key: str, policy: Policy, outcome: Outcome, attempt: int, parent: str | None,
        member_of: str | None, started: float, attempt_started: float, deferred: dict | None,
        retry_stopped: str | None,
    ) -> tuple[bool, Any, dict | None]:
        """The step's end event, after its last attempt."""
        run = self.run
        ok = outcome.ok
        kind = outcome.error["kind"] if outcome.error else None
        if ok:
            status = StepStatus.COMPLETED
        elif kind == "cancelled":
            status = StepStatus.CANCELLED
        else:
            status = StepStatus.FAILED
        now = run.clock.monotonic()
        event = events.task_finished(
            run.now(), key, status, duration=now - started, attempt_duration=now - attempt_started,
            exit_code=outcome.exit_code, parent=parent,
        )
        if deferred is not None:
            if ok:
                events.folded_start(event, deferred)
            else:
                run.emit(deferred)
        if ok:
            events.with_output(event, outcome.output, step.output if member_of is None else None)
        else:
            event["error"] = outcome.error
            if retry_stopped is not None:
                event["retryStopped"] = retry_stopped
            if status == StepStatus.FAILED:
                self.mark_failure(event, policy)
        if outcome.worker:
            event["worker"] = outcome.worker
        run.emit(event)
        if ok:
            return True, outcome.output, None
        error = dict(outcome.error or {})
        error["attempts"] = attempt
        return False, None, error

    def _retries_infrastructure(self, outcome: Outcome, lost: int, frame: Frame) -> bool:
        """Is this failed attempt one the infrastructure lost (a Dask worker died under
        it), to be run again? At most settings.infrastructure_retries times per step."""
        if frame.scope.aborted() or not outcome.error or not outcome.error.get("infrastructure"):
            return False
        return lost < self.run.settings.infrastructure_retries

    def _attempt_failed(self, key: str, attempt: int, outcome: Outcome, attempt_started: float, wait: float) -> None:
        """A failed attempt that another one follows, `wait` seconds later."""
        run = self.run
        run.emit(events.attempt_failed(
            run.now(), key, attempt, exit_code=outcome.exit_code, error=outcome.error,
            attempt_duration=run.clock.monotonic() - attempt_started, retry_in=wait, worker=outcome.worker,
        ))

    @staticmethod
    def mark_failure(event: dict, policy: Policy) -> None:
        """Failure events say what happens next, for the record and for notifications."""
        events.with_error(event, None, continued=policy.strategy == "continue", notify=policy.notify_on_error)

    def _stopped_outcome(self, awaited: str, exit_code: int | None) -> Outcome:
        """How a step ends when a cancel or timeout comes while it waits for a retry:
        a timeout fails it (kind timeout), any other stop cancels it; either way the
        error says which wait was cut short."""
        run = self.run
        if run.cancel_status == "timed_out":
            return failure("timeout", f"{run.cancel_reason} during {awaited}.", exit_code)
        what = "cancelled" if run.cancel_status == "cancelled" else (run.cancel_reason or run.cancel_status)
        return failure("cancelled", f"{what} during {awaited}.", exit_code)

    # -- one attempt -------------------------------------------------------------------------
    def agent_for(self, name: str | None, step: Step) -> tuple[str, dict] | None:
        settings = self.run.settings
        if settings.dry_run:
            return (name or "run"), {}
        if name is None:
            return "run", {"run": getattr(step, "run", None)}
        if name in settings.agents:
            return name, settings.agents[name]
        if name == "echo":
            return name, {}
        return None

    def _attempt(self, step: Step, key: str, frame: Frame, agent: dict, task: Any, attempt: int,
                 scope: Mapping) -> Outcome:
        try:
            inputs = self.inputs(step, scope)
            task_text = render(task, scope)
            env = {name: render(value, scope) if not isinstance(value, str) else value for name, value in step.env}
        except ExpressionError as err:
            return failure("error", err.message)
        ctx = self.context(step, key, frame, task_text, inputs, attempt, ChainMap({"task": task_text}, scope))
        ctx.env.update(env)
        ctx.agent_name = getattr(step, "agent", None)
        executor = self.run.settings.executor
        if "run" not in agent:
            return settle(executor.run(agent, ctx), ctx, agent)
        # Each running command holds a few file descriptors: however high maxConcurrency
        # is, no more start at once than the descriptor limit allows.
        with self._spawn_slots:
            outcome = executor.run(agent, ctx)
        # The result becomes the state and the record's: checked and capped here, for every kind.
        return settle(outcome, ctx, agent)

    def context(self, step: Step, key: str, frame: Frame, task: str | None, inputs: dict, attempt: int,
                scope: Mapping) -> AttemptContext:
        run = self.run
        settings = run.settings
        aborted = frame.scope.aborted
        return AttemptContext(
            step_key=key,
            step_id=step.id,
            task=task,
            inputs=inputs,
            execution_id=settings.execution_id,
            workflow_id=settings.workflow_id,
            attempt=attempt,
            scope=scope,
            log_dir=settings.log_dir,
            item=frame.item,
            index=frame.index,
            in_loop=frame.in_loop,
            env={**(settings.extra_env or {}), **(settings.secrets or {})},
            masker=settings.masker,
            secrets=settings.secrets,
            cwd=step.cwd,
            timeout=step.timeout,
            cancelled=aborted,
            nice=settings.nice,
            storage_failed=self._storage_failed(key),
        )

    def _storage_failed(self, key: str) -> Callable[[str], None]:
        report = self.run.settings.on_storage_failure
        if report is None:
            return lambda message: None
        return lambda message: report(message, key)

    @staticmethod
    def inputs(step: Step, scope: Mapping) -> dict:
        values = {}
        for name in step.inputs:
            if name not in scope:
                raise ExpressionError(
                    f"input '{name}' is not available: no earlier step produced it and --input does not have it."
                )
            values[name] = scope[name]
        return values

    # -- after the last attempt --------------------------------------------------------------
    def settle(
        self, step: Step, key: str, frame: Frame, error: dict, started: float, before: tuple, run_step: RunStep
    ) -> Result:
        """A step failed for good (after its retries): fallback, continue, or fail."""
        run = self.run
        policy = run.policy_of(step, frame)
        failure_before, escalations_before = before
        # Inside a fallback the workflow's fallback is not used again: it would stand in
        # for itself without end.
        fallback = step.fallback or (None if frame.in_fallback else run.workflow.fallback)
        if policy.strategy == "fallback" and fallback is not None and not run.cancelled:
            # The workflow's fallback stands in for many steps: each gets its own record.
            suffix = frame.suffix if step.fallback is not None else named(frame.suffix, step.id)
            names = dict(frame.locals or {})
            names["error"] = {
                "message": error.get("message"),
                "kind": error.get("kind"),
                "exitCode": error.get("exitCode"),
                "attempts": error.get("attempts", 1),
                "step": key,
            }
            # The workflow's fallback inherits the retry fields handed down to the step it
            # stands in for; a step's own fallback already has them in the model.
            inherited = frame.inherited if step.fallback is not None else (frame.inherited or step.inherited)
            inner = replace(frame, suffix=suffix, parent=key, locals=names, in_fallback=True, inherited=inherited)
            result = run_step(fallback, inner)
            if result.ok:
                run.failure = failure_before
                # The fallback's result stands in for the step's; the record keeps the error.
                run.emit(events.recovered(
                    run.now(), key, output=result.value, output_name=step.output,
                    recovered_by=step_key(fallback.id, suffix), duration=run.clock.monotonic() - started,
                ))
                run.store_output(step, frame, StepStatus.COMPLETED, result.value)
                return Result(True, result.value, ListOutcome.SUCCEEDED)
        run.store_output(step, frame, StepStatus.FAILED, None)
        if policy.strategy == "continue" and not run.cancelled:
            # Recorded as failed; the run goes on, and later steps get null for its output.
            run.failure = failure_before
            run.clear_output(step, frame)
            return Result(True, None, ListOutcome.CONTINUED)
        if run.failure is None:
            run.failure = {"step": key, **{k: v for k, v in error.items() if k != "attempts"}}
        if policy.escalate and run.escalations == escalations_before:
            # Escalated once, by the innermost step that failed, not again by its parents.
            self.escalate(step, key, frame, policy, error)
        return Result(False, None, ListOutcome.FAILED)

    def escalate(self, step: Step, key: str, frame: Frame, policy: Policy, error: dict) -> None:
        """Hand a final failure to the escalation agent; the execution is marked escalated."""
        run = self.run
        run.escalated = True
        run.escalations += 1
        target = policy.escalate_to
        if not target:
            run.emit(events.execution_escalated(run.now(), key, target))
            return
        resolved = self.agent_for(target, step)
        scope = run.scope_of(frame)
        try:
            inputs = self.inputs(step, scope)
        except ExpressionError:
            inputs = {}
        context_inputs = {"step": key, "error": error, "attempts": error.get("attempts", 1), "inputs": inputs}
        task = f"Step '{key}' of workflow '{run.workflow.name}' failed: {error.get('message')}"
        if resolved is None:
            outcome = failure("error", f"escalation agent '{target}' is not defined.")
        else:
            ctx = self.context(step, named(key, "escalation"), frame, task, context_inputs, 1,
                               ChainMap({"task": task}, scope))
            outcome = settle(run.settings.executor.run(resolved[1], ctx), ctx, resolved[1])
        run.emit(events.execution_escalated(run.now(), key, target, ok=outcome.ok, output=outcome.output,
                                            error=outcome.error))


def why_no_retry(policy: Policy, kind: str, exit_code: int | None, tries: int, elapsed: float,
                 wait: float) -> str | None:
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


def render(template: Any, scope: Mapping) -> Any:
    """A parsed template's text in `scope` (None stays None; static text as written)."""
    if template is None:
        return None
    if template.is_static:
        return template.source
    return template.render(scope)


def _command_slots() -> int:
    """How many commands may run at once under this process's open-file limit."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(1, (soft - FDS_RESERVED) // FDS_PER_COMMAND)
