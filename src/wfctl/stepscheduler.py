"""The step scheduler: walks a workflow's lists of steps and its composite steps.

A list in which no step has `depends` runs as it always has: in order, inline, no
thread (the workflow's steps, a branch), or all at once within `maxConcurrency` (a
parallel step's steps). A list in which some step has `depends` is scheduled as a
graph (`_GraphRun`): every step starts as soon as its condition is true, within the
list's bound (the workflow's `maxConcurrency`, or the parallel step's), and is skipped,
with the reason recorded, as soon as its condition can no longer become true.

When a step fails and stops its list, the steps running beside it finish (or, with
`--fail-fast`, are cancelled) and nothing new starts but the steps whose `depends`
accept the failure; the list fails. Loops and team steps fan out through the same
bounded runner (bounded.py). Leaf attempts are the attempt runner's (attempts.py).
"""

from __future__ import annotations

import heapq
from typing import Any, Callable, Sequence

from wfctl import events
from wfctl.attempts import AttemptRunner
from wfctl.bounded import WAIT, ListSource, run_bounded
from wfctl.depends import Outcome
from wfctl.errors import ExpressionError
from wfctl.model import (
    ConditionalStep,
    LoopStep,
    ParallelStep,
    Step,
    StepList,
    StepStatus,
    TaskStep,
    TeamStep,
)
from wfctl.model import iteration_suffix, named, step_key
from wfctl.runstate import CANCELLED_RESULT, AbortScope, Frame, Result, RunContext

# How a step that ended is seen by the steps that depend on it.
_OK_OUTCOMES = frozenset({Outcome.SUCCEEDED, Outcome.CONTINUED, Outcome.SKIPPED})
_FAILED = {"kind": "failed", "message": "failed."}


class ListRun:
    """How a list of steps ended: ok, and each step's result (None: it never ran)."""

    __slots__ = ("ok", "results")

    def __init__(self, ok: bool, results: list[Result | None]) -> None:
        self.ok = ok
        self.results = results

    def failed_ids(self, steps: StepList) -> list[str]:
        return [step.id for step, result in zip(steps, self.results) if result is not None and not result.ok]


class StepScheduler:
    def __init__(self, run: RunContext, attempts: AttemptRunner) -> None:
        self.run = run
        self.attempts = attempts

    # -- lists -------------------------------------------------------------------------------
    def run_list(self, steps: StepList, frame: Frame, limit: int) -> ListRun:
        """Run the steps of one list; `limit` bounds how many run at once when they can."""
        if steps.graph is not None:
            return _GraphRun(self, steps, frame).run(limit)
        if steps.in_order:
            return self._run_in_order(steps, frame)
        children = steps.steps
        return ListRun(*self._run_many(
            len(children), lambda position, scope: self.run_step(children[position], frame.within(scope)), limit, frame))

    def _run_in_order(self, steps: StepList, frame: Frame) -> ListRun:
        results: list[Result | None] = [None] * len(steps)
        for position, step in enumerate(steps.steps):
            if self.run.cancelled:
                return ListRun(False, results)
            result = self.run_step(step, frame)
            results[position] = result
            if not result.ok:
                return ListRun(False, results)
        return ListRun(True, results)

    def _run_many(self, count: int, run: Callable[[int, AbortScope], Result], limit: int,
                  frame: Frame) -> tuple[bool, list[Result | None]]:
        """Run `run(position, scope)` for `count` positions, at most `limit` at a time.
        After a failure the running ones finish (with --fail-fast they are cancelled)
        and the ones not yet started are not started."""
        scope = frame.scope.child()
        source = ListSource(count, lambda position: run(position, scope))
        run_bounded(source, limit, stopped=lambda: self.run.cancelled,
                    on_failure=self._fail_fast(lambda: scope.abort()), on_crash=self._crashed)
        results: list[Result | None] = source.results
        return all(result is not None and result.ok for result in results), results

    def _fail_fast(self, abort: Callable[[], None]) -> Callable[[Result], None] | None:
        """With --fail-fast, a step that fails and stops its list cancels the ones running
        beside it (a step cancelled that way does not cancel again)."""
        if not self.run.settings.fail_fast:
            return None

        def on_failure(result: Result) -> None:
            if result.outcome is Outcome.FAILED:
                abort()

        return on_failure

    def _crashed(self, err: BaseException) -> Result:
        """A bug in one step must fail it, not leave the run hanging."""
        self.run.failure = self.run.failure or {"kind": "error", "message": f"internal error: {err!r}"}
        return Result(False, None, Outcome.FAILED)

    # -- one step ----------------------------------------------------------------------------
    def run_step(self, step: Step, frame: Frame) -> Result:
        run = self.run
        key = step_key(step.id, frame.suffix)
        if key in run.completed:
            value = self._restore(step, frame)
            return Result(True, value, Outcome.CONTINUED if key in run.continued else Outcome.SUCCEEDED)
        if run.pause_gate is not None:
            run.hold(key)
        if frame.scope.aborted():
            return CANCELLED_RESULT
        run.began = True
        started = run.clock.monotonic()
        # What failures inside this step leave behind is undone if the step recovers.
        before = (run.failure, run.escalations)
        if isinstance(step, TaskStep):
            ok, value, error = self.attempts.run_leaf(step, key, frame, step.agent, step.task)
        else:
            ok, value, error = self._run_composite(step, key, frame)
        if ok:
            run.store_output(step, frame, StepStatus.COMPLETED, value)
            return Result(True, value, Outcome.SUCCEEDED)
        if frame.scope.aborted() and not (error and error.get("kind") == "timeout"):
            run.store_output(step, frame, StepStatus.CANCELLED, None)
            return CANCELLED_RESULT
        return self.attempts.settle(step, key, frame, error or _FAILED, started, before, self.run_step)

    def _restore(self, step: Step, frame: Frame) -> Any:
        """A step that completed in an earlier run: its outputs (and those of the steps
        inside it) become state again, and nothing runs."""
        run = self.run
        key = step_key(step.id, frame.suffix)
        value = run.completed[key]
        inner = frame.child(key)
        for child in () if step.repeats_children else step.children():
            if step_key(child.id, frame.suffix) in run.completed:
                self._restore(child, inner)
        if key in run.continued:
            run.store_output(step, frame, StepStatus.FAILED, None)
            run.clear_output(step, frame)
        else:
            run.store_output(step, frame, StepStatus.COMPLETED, value)
        return value

    def skip(self, step: Step, frame: Frame, reason: str | None = None) -> None:
        """Record a step (and what is inside it) as skipped: it will not run."""
        key = step_key(step.id, frame.suffix)
        self.run.emit(events.skipped(self.run.now(), key, step.kind, parent=frame.parent, reason=reason))
        self.run.steps_view[step.id] = {"status": StepStatus.SKIPPED, "output": None}
        inner = frame.child(key)
        for child in () if step.repeats_children else step.children():
            self.skip(child, inner)

    # -- composite steps ---------------------------------------------------------------------
    def _run_composite(self, step: Step, key: str, frame: Frame) -> tuple[bool, Any, dict | None]:
        run = self.run
        started = run.clock.monotonic()
        total = None
        if isinstance(step, LoopStep):
            try:
                total = len(self._loop_items(step, frame))
            except ExpressionError:
                pass  # reported when the loop runs
        run.emit(events.composite_started(run.now(), key, step.id, step.kind, parent=frame.parent, total=total))
        try:
            ok, value, error, extra = self._composite_body(step, key, run.inside(step, frame))
        except ExpressionError as err:
            ok, value, error, extra = False, None, {"kind": "error", "message": err.message}, {}
        status = StepStatus.COMPLETED if ok else (StepStatus.CANCELLED if frame.scope.aborted() else StepStatus.FAILED)
        event = events.composite_finished(run.now(), key, status, duration=run.clock.monotonic() - started,
                                          parent=frame.parent, extra=extra)
        if ok:
            events.with_output(event, value, step.output)
        elif error:
            event["error"] = error
        if status == StepStatus.FAILED:
            self.attempts.mark_failure(event, run.policy_of(step, frame))
        run.emit(event)
        return ok, value, error

    def _composite_body(self, step: Step, key: str, frame: Frame) -> tuple[bool, Any, dict | None, dict]:
        if isinstance(step, ParallelStep):
            return self._parallel(step, key, frame)
        if isinstance(step, ConditionalStep):
            return self._conditional(step, key, frame)
        if isinstance(step, LoopStep):
            return self._loop(step, key, frame)
        if isinstance(step, TeamStep):
            return self._team(step, key, frame)
        raise AssertionError(f"no runner for a {step.kind} step")  # pragma: no cover

    def _limit(self, own: int | None) -> int:
        return int(own or self.run.settings.max_concurrency)

    def _parallel(self, step: ParallelStep, key: str, frame: Frame):
        outcome = self.run_list(step.steps, frame.child(key), self._limit(step.max_concurrency))
        value = {child.id: result.value for child, result in zip(step.steps, outcome.results)
                 if result is not None and result.outcome is not Outcome.SKIPPED}
        if outcome.ok:
            return True, value, None, {}
        failed = outcome.failed_ids(step.steps)
        return False, value, {"kind": "failed", "message": f"parallel step failed: {', '.join(failed) or 'stopped'}."}, {}

    def _conditional(self, step: ConditionalStep, key: str, frame: Frame):
        from wfctl.expressions import truthy

        extra: dict[str, Any] = {}
        if isinstance(step.condition, bool):
            chosen = step.condition
        else:
            try:
                echoed = self._echoed_name(step.condition, frame)
                if echoed is not None:
                    # A dry run cannot decide on what echo made up: a true or false
                    # from it would show a path a real run may never take.
                    raise ExpressionError(f"the condition reads '{echoed}', an echoed output of this dry run.")
                chosen = truthy(step.condition.evaluate(self.run.scope_of(frame)))
            except ExpressionError as err:
                if not self.run.settings.dry_run:
                    raise
                # A dry run follows `then` and says the condition could not be decided.
                chosen, extra = True, {"undecided": err.message}
        extra["branch"] = "then" if chosen else "else"
        taken, other = (step.then, step.otherwise) if chosen else (step.otherwise, step.then)
        inner = frame.child(key)
        for skipped in other:
            self.skip(skipped, inner)
        if not taken:
            return True, None, None, extra
        outcome = self.run_list(taken, inner, self.run.workflow.max_concurrency)
        if not outcome.ok:
            if self.run.cancelled:
                return False, None, None, extra
            failed = outcome.failed_ids(taken)
            if len(failed) == 1:
                return False, None, {"kind": "failed", "message": f"step '{failed[0]}' failed."}, extra
            return False, None, {"kind": "failed", "message": f"steps {', '.join(map(repr, failed)) or 'of the branch'} failed."}, extra
        last = outcome.results[-1]
        return True, last.value if last is not None else None, None, extra

    def _echoed_name(self, expression: Any, frame: Frame) -> str | None:
        """In a dry run, the first name `expression` reads whose value the echo agent
        made up (a step's output, `steps.*`, the item of a loop over such output)."""
        if not self.run.settings.dry_run:
            return None
        for reference in expression.references():
            root = reference[0]
            if root == "steps" or root in self.run.echoed or (root == "item" and frame.echoed_item):
                return root
        return None

    def _undecided_items(self, step: LoopStep, frame: Frame) -> str | None:
        """In a dry run, why a loop's items cannot be known (they come from echo)."""
        if not self.run.settings.dry_run or isinstance(step.items, (bool, int, list)):
            return None
        echoed = self._echoed_name(step.items, frame)
        if echoed is None:
            return None
        return f"the items read '{echoed}', an echoed output of this dry run: the body is shown once, with item null."

    def _loop_items(self, step: LoopStep, frame: Frame) -> Sequence:
        """What a loop runs over: a list, or a `range` for a count (never built as a list).

        An expression's result is bounded at run time as a literal is at validation: at
        most spec.MAX_LOOP_ITEMS iterations, each of which becomes a record.
        """
        from wfctl.spec import MAX_LOOP_ITEMS, describe_value

        if self._undecided_items(step, frame) is not None:
            return [None]
        items = step.items
        written = step.raw.get("items")
        if isinstance(items, bool):
            raise ExpressionError("loop items must be a list, a count or an expression, not a boolean.")
        if isinstance(items, (int, list)):
            value: Any = items
        else:
            value = items.evaluate(self.run.scope_of(frame))
            if isinstance(value, bool):
                raise ExpressionError(f"loop items '{written}' is a boolean, not a list.")
            if isinstance(value, dict):
                value = [{"key": k, "value": v} for k, v in value.items()]
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
        if isinstance(value, int):
            if value < 0:
                raise ExpressionError(f"loop items '{written}' is {value}; a count cannot be negative.")
            value = range(value)
        if not isinstance(value, (list, range)):
            raise ExpressionError(f"loop items '{written}' is {describe_value(value)}, not a list or a count.")
        if len(value) > MAX_LOOP_ITEMS:
            raise ExpressionError(f"loop items '{written}' has {len(value):,} items; a loop runs at most "
                                  f"{MAX_LOOP_ITEMS:,} (split the work, or loop over batches).")
        return value

    def _loop(self, step: LoopStep, key: str, frame: Frame):
        undecided = self._undecided_items(step, frame)
        items = self._loop_items(step, frame)
        body = step.body

        def iteration(position: int, item: Any, scope: AbortScope) -> Result:
            names = dict(frame.locals or {})
            names.update({"item": item, "index": position})
            child = frame.iteration(scope, iteration_suffix(frame.suffix, position), key, names, item, position,
                                    undecided is not None)
            return self.run_step(body, child)

        ok, results = self._run_many(len(items), lambda position, scope: iteration(position, items[position], scope),
                                     int(step.max_concurrency or 1), frame)
        value = [result.value if result is not None else None for result in results]
        error = None if ok else {"kind": "failed", "message": "a loop iteration failed."}
        return ok, value, error, ({"undecided": undecided} if undecided else {})

    def _team(self, step: TeamStep, key: str, frame: Frame):
        run = self.run
        team = run.workflow.teams.get(step.team_id) or run.settings.teams.get(step.team_id)
        if team is None:
            return False, None, {"kind": "error", "message": f"team '{step.team_id}' is not defined."}, {}
        members = list(team.get("members", []))
        strategy = team.get("strategy", "round-robin")

        def member_run(member: str, scope: AbortScope) -> Result:
            member_key = named(key, member)
            if member_key in run.completed:
                return Result(True, run.completed[member_key], Outcome.SUCCEEDED)
            ok, value, _error = self.attempts.run_leaf(step, member_key, frame.within(scope), member, step.task,
                                                       member_of=key)
            return Result(ok, value, Outcome.SUCCEEDED if ok else Outcome.FAILED)

        if strategy == "all":
            ok, results = self._run_many(len(members), lambda position, scope: member_run(members[position], scope),
                                         self._limit(None), frame)
            value = {m: r.value for m, r in zip(members, results) if r is not None}
            error = None if ok else {"kind": "failed", "message": "a team member failed."}
            return ok, value, error, {}
        if strategy == "first-success":
            for member in members:
                result = member_run(member, frame.scope)
                if result.ok:
                    return True, result.value, None, {"member": member}
                if run.cancelled:
                    break
            return False, None, {"kind": "failed", "message": "every team member failed."}, {}
        # round-robin: one member per run, taking turns across runs of the workflow
        member = run.prior_members.get(key)
        if member is None:
            member = members[run.settings.team_turn(step.team_id) % len(members)]
        result = member_run(member, frame.scope)
        error = None if result.ok else {"kind": "failed", "message": f"team member '{member}' failed."}
        return result.ok, result.value, error, {"member": member}


class _GraphRun:
    """One run of a list scheduled as a graph: a source of ready steps for run_bounded.

    Steps are looked at in document order; a step is looked at again only when one of
    the steps it names ends, so a large graph costs what its edges cost.
    """

    def __init__(self, scheduler: StepScheduler, steps: StepList, frame: Frame) -> None:
        self.scheduler = scheduler
        self.run_context = scheduler.run
        self.steps = steps
        self.graph = steps.graph
        self.frame = frame
        self.ids = [step.id for step in steps]
        self.by_id = {step.id: step for step in steps}
        self.position = {step_id: i for i, step_id in enumerate(self.ids)}
        self.size = len(self.ids)
        self.outcomes: dict[str, Outcome] = {}
        self.results: dict[str, Result] = {}
        self.waiting = set(self.ids)
        self.frozen: dict | None = None  # the first failure kept from an earlier run
        self.scope = frame.scope.child()
        self.candidates = list(range(self.size))  # a heap of positions to look at

    def run(self, limit: int) -> ListRun:
        self._settle_earlier_run()
        fail_fast = self.scheduler._fail_fast(self._abort_running)
        run_bounded(
            self, limit, stopped=lambda: self.run_context.cancelled,
            on_failure=fail_fast, on_crash=self.scheduler._crashed,
        )
        results = [self.results.get(step_id) for step_id in self.ids]
        ok = not self.waiting and self.frozen is None and all(o in _OK_OUTCOMES for o in self.outcomes.values())
        if not ok and self.frozen is not None and self.run_context.failure is None:
            self.run_context.failure = self.frozen
        return ListRun(ok, results)

    def _settle_earlier_run(self) -> None:
        """Steps an earlier run of this execution settled: completed ones are restored,
        failures a retry leaves alone stay failed (their dependents see them so)."""
        run = self.run_context
        for step in self.steps:
            key = step_key(step.id, self.frame.suffix)
            if key in run.frozen:
                self.frozen = self.frozen or {"step": key, **run.frozen[key]}
                self.finished(step.id, Result(False, None, Outcome.FAILED))
            elif key in run.completed:
                self.finished(step.id, self.scheduler.run_step(step, self.frame))

    def _abort_running(self) -> None:
        """--fail-fast: the steps running now are cancelled; a step that starts later
        (one that accepts the failure) gets a new scope."""
        self.scope.abort()
        self.scope = self.frame.scope.child()

    # -- the Source protocol of run_bounded --------------------------------------------------
    def next(self, failed: bool):
        graph = self.graph
        while self.candidates:
            position = heapq.heappop(self.candidates)
            step_id = self.ids[position]
            if step_id not in self.waiting:
                continue
            requirement = graph.requirements.get(step_id)
            verdict = True if requirement is None else requirement.evaluate(self.outcomes)
            if verdict is None:
                continue  # looked at again when a step it names ends
            if verdict is False:
                step = self.by_id[step_id]
                self.scheduler.skip(step, self.frame, requirement.reason(self.outcomes))
                self.finished(step_id, Result(True, None, Outcome.SKIPPED))
                continue
            if failed and (requirement is None or not requirement.accepts_failure(self.outcomes)):
                continue  # stays pending: the list stopped
            self.waiting.discard(step_id)
            step = self.by_id[step_id]
            frame = self.frame.within(self.scope)
            return step_id, lambda: self.scheduler.run_step(step, frame)
        return WAIT if self.waiting else None

    def finished(self, step_id: str, result: Result) -> None:
        self.waiting.discard(step_id)
        self.results[step_id] = result
        self.outcomes[step_id] = result.outcome
        for dependent in self.graph.dependents(step_id):
            if dependent in self.waiting:
                heapq.heappush(self.candidates, self.position[dependent])

