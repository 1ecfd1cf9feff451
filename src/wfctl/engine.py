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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from wfctl.agents import AttemptContext, Outcome, failure, run_agent
from wfctl.errors import ExpressionError
from wfctl.record import branch_steps, now_iso, step_type
from wfctl.retry import Policy, backoff_delay, policy_for

Emit = Callable[[dict], None]


@dataclass
class Frame:
    """Where a step runs: its key suffix, its parent, and loop-local names."""

    suffix: str = ""
    parent: str | None = None
    locals: dict | None = None  # loop iteration scope: item, index, the body's outputs
    item: Any = None
    index: int | None = None

    @property
    def in_loop(self) -> bool:
        return self.locals is not None


@dataclass
class Settings:
    execution_id: str
    workflow_id: str
    log_dir: Path
    output_dir: Path
    agents: Mapping[str, dict]
    teams: Mapping[str, dict]
    max_concurrency: int = 4
    dry_run: bool = False
    # Round-robin teams rotate across runs: the api gives each run its turn number.
    team_turn: Callable[[str], int] = lambda team: 0


class Engine:
    """Runs one execution of a workflow definition."""

    def __init__(
        self,
        workflow: dict,
        settings: Settings,
        emit: Emit,
        *,
        completed: Mapping[str, Any] | None = None,
        members: Mapping[str, list[str]] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.workflow = workflow
        self.settings = settings
        self.emit = emit
        # Step instances that completed in an earlier run of this execution (resume,
        # retry): key → output. They are never run again; their outputs are reused.
        self.completed = dict(completed or {})
        self.prior_members = dict(members or {})
        self.state: dict[str, Any] = {}
        self.input: dict[str, Any] = {}
        self.steps_view: dict[str, dict] = {}
        self.cancel_event = threading.Event()
        self.cancel_status = "cancelled"
        self.cancel_reason: str | None = None
        self._sleep = sleep
        self._specials = {"input": self.input, "steps": self.steps_view}
        self._workflow_policy = workflow.get("errorHandling") or {}

    # -- control ----------------------------------------------------------------------------
    def cancel(self, reason: str | None = None, status: str = "cancelled") -> None:
        """Stop: running step processes are terminated, nothing new starts."""
        if not self.cancel_event.is_set():
            self.cancel_status = status
            self.cancel_reason = reason
            self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def _wait(self, seconds: float) -> None:
        """Wait between attempts; a cancel ends the wait at once."""
        if seconds <= 0:
            return
        if self._sleep is not None:
            self._sleep(seconds)
        else:
            self.cancel_event.wait(seconds)

    # -- running ----------------------------------------------------------------------------
    def run(self, input: Mapping[str, Any], *, started: dict | None = None) -> tuple[str, dict | None]:
        """Run every step; returns (final status, error of the step that ended the run)."""
        self.input.update(input)
        self.state.update(input)
        self.emit({"type": "execution.started", "at": now_iso(), **(started or {})})
        self._failure: dict | None = None
        ok = self._run_sequence(self.workflow["steps"], Frame())
        if self.cancelled:
            status = self.cancel_status
        elif ok:
            status = "completed"
        else:
            status = "failed"
        event = {"type": "execution.finished", "at": now_iso(), "status": status}
        if status == "failed" and self._failure:
            event["error"] = self._failure
        if status in ("cancelled", "interrupted") and self.cancel_reason is not None:
            event["reason"] = self.cancel_reason
        self.emit(event)
        return status, self._failure

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

    def _restore(self, step: dict, frame: Frame) -> Any:
        """A step that completed in an earlier run: its outputs (and those of the steps
        inside it) become state again, and nothing runs."""
        key = step["id"] + frame.suffix
        value = self.completed[key]
        inner = Frame(frame.suffix, key, frame.locals, frame.item, frame.index)
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
        self._store_output(step, frame, key, "completed", value)
        return value

    def _store_output(self, step: dict, frame: Frame, key: str, status: str, value: Any) -> None:
        name = step.get("output")
        if name and status == "completed":
            target = frame.locals if frame.locals is not None else self.state
            target[name] = value
        self.steps_view[step["id"]] = {"status": status, "output": value}

    def _run_step(self, step: dict, frame: Frame) -> tuple[bool, Any]:
        key = step["id"] + frame.suffix
        if key in self.completed:
            return True, self._restore(step, frame)
        kind = step_type(step)
        if kind == "task":
            return self._run_task(step, key, frame)
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
        self._emit_started(start_event, step, frame)
        try:
            ok, value, error, extra = runner(step, key, frame)
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
            self._failure = self._failure or {"step": key, **error}
        self.emit(event)
        self._store_output(step, frame, key, status, value)
        return ok, value

    # -- task steps -------------------------------------------------------------------------
    def _agent_for(self, name: str | None, step: dict) -> tuple[str, dict] | None:
        if self.settings.dry_run:
            return (name or "run"), {}
        if name is None:
            return "run", {"run": step["run"], **({"cwd": step["cwd"]} if step.get("cwd") else {})}
        if name in self.settings.agents:
            return name, self.settings.agents[name]
        if name == "echo":
            return name, {}
        return None

    def _run_task(self, step: dict, key: str, frame: Frame) -> tuple[bool, Any]:
        return self._run_leaf(step, key, frame, step.get("agent"), step.get("task"))

    def _run_leaf(
        self,
        step: dict,
        key: str,
        frame: Frame,
        agent_name: str | None,
        task: str | None,
        *,
        member_of: str | None = None,
    ) -> tuple[bool, Any]:
        """Run one task (or one team member's share of a team step), with its retries."""
        parent = member_of or frame.parent
        resolved = self._agent_for(agent_name, step)
        label = agent_name or "run"
        policy = policy_for(self._workflow_policy, step.get("errorHandling"))
        started = time.monotonic()
        attempt = 0
        outcome: Outcome | None = None
        scope = self._scope(frame)
        while True:
            if self.cancelled:
                outcome = outcome or failure("cancelled", "cancelled before it started.")
                break
            attempt += 1
            event = {
                "type": "step.started",
                "at": now_iso(),
                "step": key,
                "id": step["id"],
                "attempt": attempt,
                "agent": label,
            }
            if parent is not None:
                event["parent"] = parent
            self.emit(event)
            attempt_started = time.monotonic()
            if resolved is None:
                outcome = failure("error", f"agent '{agent_name}' is not defined.")
            else:
                outcome = self._attempt(step, key, frame, resolved[1], task, attempt, scope)
            if outcome.ok:
                break
            kind = outcome.error["kind"] if outcome.error else "failed"
            if not self._should_retry(policy, kind, outcome, attempt, started):
                break
            wait = backoff_delay(policy, attempt)
            if policy.max_duration is not None:
                wait = min(wait, max(0.0, policy.max_duration - (time.monotonic() - started)))
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
                }
            )
            self._wait(wait)
        ok = outcome.ok
        kind = outcome.error["kind"] if outcome.error else None
        if ok:
            status = "completed"
        elif kind == "cancelled" or self.cancelled:
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
        if ok:
            event["output"] = outcome.output
            if step.get("output") and member_of is None:
                event["outputName"] = step["output"]
        else:
            event["error"] = outcome.error
        if outcome.worker:
            event["worker"] = outcome.worker
        self.emit(event)
        if not ok and status == "failed":
            if policy.strategy == "continue":
                # The failure is recorded; the run goes on with a null output.
                self._store_output(step, frame, key, "failed", None)
                return True, None
            self._failure = self._failure or {"step": key, **(outcome.error or {})}
        if member_of is None:
            self._store_output(step, frame, key, status, outcome.output if ok else None)
        return ok, outcome.output if ok else None

    def _should_retry(self, policy: Policy, kind: str, outcome: Outcome, attempt: int, started: float) -> bool:
        if self.cancelled or policy.strategy not in ("retry", "fallback") or attempt >= policy.attempts:
            return False
        if not policy.retries(kind, outcome.exit_code):
            return False
        if policy.max_duration is not None and time.monotonic() - started >= policy.max_duration:
            return False
        return True

    def _attempt(
        self, step: dict, key: str, frame: Frame, agent: dict, task: str | None, attempt: int, scope: Mapping
    ) -> Outcome:
        try:
            inputs = self._inputs(step, scope)
            task_text = _render(task, scope) if task else task
            env = {str(k): _render(str(v), scope) if isinstance(v, str) else _plain(v) for k, v in (step.get("env") or {}).items()}
        except ExpressionError as err:
            return failure("error", err.message)
        task_scope = ChainMap({"task": task_text}, scope)
        ctx = AttemptContext(
            step_key=key,
            step_id=step["id"],
            task=task_text,
            inputs=inputs,
            execution_id=self.settings.execution_id,
            workflow_id=self.settings.workflow_id,
            attempt=attempt,
            scope=task_scope,
            log_path=self.settings.log_dir / f"{key}.log",
            output_path=self.settings.output_dir / f"{key}.out",
            item=frame.item,
            index=frame.index,
            in_loop=frame.in_loop,
            env=env,
            cwd=step.get("cwd"),
            timeout=step.get("timeout"),
            cancelled=self.cancel_event.is_set,
        )
        return run_agent(agent, ctx)

    def _inputs(self, step: dict, scope: Mapping) -> dict:
        names = step.get("input")
        if names is None:
            return {}
        if isinstance(names, str):
            names = [names]
        values = {}
        for name in names:
            if name not in scope:
                raise ExpressionError(f"input '{name}' is not available: no earlier step produced it and --input does not have it.")
            values[name] = scope[name]
        return values

    # -- control-flow steps -----------------------------------------------------------------
    def _run_many(self, thunks: list[Callable[[], tuple[bool, Any]]], limit: int) -> list[tuple[bool, Any] | None]:
        """Run thunks at most `limit` at a time. After a failure the running ones finish
        and the ones not yet started are not started."""
        results: list[tuple[bool, Any] | None] = [None] * len(thunks)
        if limit <= 1 or len(thunks) <= 1:
            for position, thunk in enumerate(thunks):
                if self.cancelled:
                    break
                results[position] = thunk()
                if not results[position][0]:
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
                result = thunks[position]()
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
        child_frame = Frame(frame.suffix, key, frame.locals, frame.item, frame.index)
        thunks = [lambda child=child: self._run_step(child, child_frame) for child in children]
        results = self._run_many(thunks, self._limit(step))
        ok = all(result is not None and result[0] for result in results)
        value = {child["id"]: result[1] for child, result in zip(children, results) if result is not None}
        error = None if ok else {"kind": "failed", "message": "a parallel child failed."}
        return ok, value, error, {}

    def _run_conditional(self, step: dict, key: str, frame: Frame):
        from wfctl.expressions import parse, truthy

        condition = step.get("condition")
        if isinstance(condition, bool):
            chosen = condition
        else:
            chosen = truthy(parse(str(condition)).evaluate(self._scope(frame)))
        taken = branch_steps(step.get("then") if chosen else step.get("else"))
        skipped = branch_steps(step.get("else") if chosen else step.get("then"))
        child_frame = Frame(frame.suffix, key, frame.locals, frame.item, frame.index)
        for other in skipped:
            self._skip(other, child_frame)
        value = None
        for child in taken:
            if self.cancelled:
                return False, None, None, {"branch": "then" if chosen else "else"}
            ok, value = self._run_step(child, child_frame)
            if not ok:
                return False, None, {"kind": "failed", "message": f"step '{child['id']}' failed."}, {"branch": "then" if chosen else "else"}
        return True, value, None, {"branch": "then" if chosen else "else"}

    def _skip(self, step: dict, frame: Frame) -> None:
        key = step["id"] + frame.suffix
        event = {"type": "step.finished", "at": now_iso(), "step": key, "status": "skipped", "stepType": step_type(step)}
        if frame.parent is not None:
            event["parent"] = frame.parent
        self.emit(event)
        self.steps_view[step["id"]] = {"status": "skipped", "output": None}
        kind = step_type(step)
        inner = Frame(frame.suffix, key, frame.locals, frame.item, frame.index)
        if kind == "parallel":
            for child in step.get("steps", []):
                self._skip(child, inner)
        elif kind == "conditional":
            for child in branch_steps(step.get("then")) + branch_steps(step.get("else")):
                self._skip(child, inner)

    def _loop_items(self, step: dict, frame: Frame) -> list:
        from wfctl.expressions import parse

        items = step.get("items")
        if isinstance(items, bool):
            raise ExpressionError("loop items must be a list, a count or an expression, not a boolean.")
        if isinstance(items, int):
            return list(range(items))
        if isinstance(items, list):
            return items
        value = parse(str(items)).evaluate(self._scope(frame))
        if isinstance(value, bool):
            raise ExpressionError(f"loop items '{items}' is a boolean, not a list.")
        if isinstance(value, int):
            return list(range(value))
        if isinstance(value, dict):
            return [{"key": k, "value": v} for k, v in value.items()]
        if not isinstance(value, list):
            raise ExpressionError(f"loop items '{items}' is {type(value).__name__}, not a list.")
        return value

    def _emit_started(self, event: dict, step: dict, frame: Frame) -> None:
        if step_type(step) == "loop":
            try:
                event["total"] = len(self._loop_items(step, frame))
            except ExpressionError:
                pass
        self.emit(event)

    def _run_loop(self, step: dict, key: str, frame: Frame):
        items = self._loop_items(step, frame)
        body = step["step"]

        def iteration(position: int, item: Any):
            locals_ = dict(frame.locals or {})
            locals_.update({"item": item, "index": position})
            child = Frame(f"{frame.suffix}[{position}]", key, locals_, item, position)
            return self._run_step(body, child)

        thunks = [lambda p=p, i=i: iteration(p, i) for p, i in enumerate(items)]
        limit = int(step.get("maxConcurrency") or 1)
        results = self._run_many(thunks, limit)
        ok = all(result is not None and result[0] for result in results)
        value = [result[1] if result is not None else None for result in results]
        error = None if ok else {"kind": "failed", "message": "a loop iteration failed."}
        return ok, value, error, {}

    def _run_team(self, step: dict, key: str, frame: Frame):
        team_name = step["teamId"]
        team = self.workflow.get("teams", {}).get(team_name) or self.settings.teams.get(team_name)
        if team is None:
            return False, None, {"kind": "error", "message": f"team '{team_name}' is not defined."}, {}
        members = list(team.get("members", []))
        strategy = team.get("strategy", "round-robin")
        task = step.get("task")

        def member_run(member: str):
            return self._run_leaf(step, f"{key}@{member}", frame, member, task, member_of=key)

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
        prior = self.prior_members.get(key)
        member = prior[0] if prior else members[self.settings.team_turn(team_name) % len(members)]
        ok, value = member_run(member)
        error = None if ok else {"kind": "failed", "message": f"team member '{member}' failed."}
        return ok, value, error, {"member": member}


def _plain(value: Any) -> str:
    import json

    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _render(text: str, scope: Mapping) -> str:
    from wfctl.expressions import parse_template

    template = parse_template(text)
    if template.is_static:
        return text
    return template.render(scope)
