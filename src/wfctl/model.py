"""The typed workflow model: what every layer above the loader works on.

Validation (validate.py) checks the raw document and reports every problem with its
path and line; once a document is valid, `build_workflow` turns it into a frozen tree:
a `Workflow` with one `Step` per kind (`TaskStep`, `ParallelStep`, `ConditionalStep`,
`LoopStep`, `TeamStep`), each with its resolved error-handling policy, its parsed
expressions and templates and its parsed `depends`. The raw document stays on the
Workflow (`raw`) for `show` and `--json` only. An execution builds its model from the
frozen definition in its workflow.json (cheap, so nothing is cached on disk).

Also here, in one place each: the statuses (`StrEnum`s, so `"completed" ==
StepStatus.COMPLETED` and JSON stays strings) with their sets and the table of what
each execution status allows; the step-key rule; the clock.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from wfctl.depends import Depends, ListGraph, after, parse_depends
from wfctl.retry import Policy, policy_for, retry_fields_inside


# -- statuses ------------------------------------------------------------------------------
class StepKind(StrEnum):
    TASK = "task"
    PARALLEL = "parallel"
    CONDITIONAL = "conditional"
    LOOP = "loop"
    TEAM = "team"


COMPOSITE_KINDS = frozenset({StepKind.PARALLEL, StepKind.CONDITIONAL, StepKind.LOOP, StepKind.TEAM})


class ExecutionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"  # its runner died; `resume` continues it


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


TERMINAL = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT})
LIVE = frozenset({ExecutionStatus.PENDING, ExecutionStatus.RUNNING, ExecutionStatus.PAUSED})
ENDED = TERMINAL | {ExecutionStatus.INTERRUPTED}
STEP_ENDED = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED})


class Action(StrEnum):
    RETRY = "retry"
    RESUME = "resume"
    PAUSE = "pause"
    CANCEL = "cancel"


# The one table of which execution status allows which request.
ALLOWED: Mapping[Action, frozenset[ExecutionStatus]] = MappingProxyType({
    Action.RETRY: frozenset({ExecutionStatus.FAILED, ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT,
                             ExecutionStatus.INTERRUPTED}),
    Action.RESUME: frozenset({ExecutionStatus.PAUSED, ExecutionStatus.INTERRUPTED}),
    Action.PAUSE: frozenset({ExecutionStatus.PENDING, ExecutionStatus.RUNNING}),
    Action.CANCEL: frozenset(ExecutionStatus) - TERMINAL,
})
# A step that `retry` may run again (besides a failure that was continued).
RETRYABLE_STEPS = frozenset({StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.PENDING})


def allows(status: str | None, action: Action) -> bool:
    return status in ALLOWED[action]


# -- step keys -----------------------------------------------------------------------------
# A key names one step instance for the life of an execution (its record, its log file,
# its idempotency key): the step's id, then `[i]` per enclosing loop iteration and
# `@name` per team member or shared fallback, in order: `process[3]`, `review@tom`,
# `use-cache@fetch`, `inner[1][0]`.
@dataclass(frozen=True)
class StepKey:
    step_id: str
    suffix: str = ""  # the `[i]` and `@name` parts after the id

    def __str__(self) -> str:
        return self.step_id + self.suffix

    @classmethod
    def parse(cls, key: str) -> "StepKey":
        cut = len(key)
        for mark in ("[", "@"):
            found = key.find(mark)
            if found != -1:
                cut = min(cut, found)
        return cls(key[:cut], key[cut:])

    @property
    def member(self) -> str | None:
        """The name after the last `@` (a team member), if any."""
        head, at, name = self.suffix.rpartition("@")
        return name if at and "[" not in name else None

    def indexed(self, index: int) -> "StepKey":
        return StepKey(self.step_id, f"{self.suffix}[{index}]")

    def at(self, name: str) -> "StepKey":
        return StepKey(self.step_id, f"{self.suffix}@{name}")


# The hot path builds keys as plain strings, with these (the same rule as StepKey).
def step_key(step_id: str, suffix: str = "") -> str:
    """The key of a step instance: its id and the suffix of where it runs."""
    return step_id + suffix


def iteration_suffix(suffix: str, index: int) -> str:
    """The suffix inside loop iteration `index`."""
    return f"{suffix}[{index}]"


def named(key_or_suffix: str, name: str) -> str:
    """`key@name`: a team member's run, a shared fallback's stand-in, an escalation."""
    return f"{key_or_suffix}@{name}"


def step_id_of(key: str) -> str:
    return StepKey.parse(key).step_id


def suffix_of(key: str) -> str:
    return StepKey.parse(key).suffix


# -- the clock -----------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Clock:
    """Wall time for records (`now_iso`), monotonic time for durations (`monotonic`).
    Tests inject their own; this one is the system's (plain functions: a step reads the
    clock a few times, so no layer is added)."""

    now_iso = staticmethod(now_iso)
    monotonic = staticmethod(time.monotonic)


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


SYSTEM_CLOCK = Clock()


# -- steps ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class Step:
    """What every kind of step has. Frozen; compared by identity."""

    id: str
    kind: StepKind
    path: str  # where it is in the document: steps[2].then[0]
    inputs: tuple[str, ...] = ()  # the state names it receives
    output: str | None = None
    timeout: float | None = None
    env: tuple[tuple[str, Any], ...] = ()  # (name, Template for text | plain text)
    cwd: str | None = None
    # The workflow's errorHandling, under the retry fields the steps it is inside hand
    # down (`inherited`), under its own (retry.policy_for).
    policy: Policy = field(default_factory=Policy)
    inherited: Mapping[str, Any] | None = None
    fallback: "Step | None" = None  # its own errorHandling.fallback (the workflow's is on Workflow)
    depends: Depends | None = None  # as written; None when it has no depends
    raw: Mapping[str, Any] = field(default_factory=dict)  # the definition, for traces and show

    def children(self) -> tuple["Step", ...]:
        """The steps written inside this one (not fallbacks)."""
        return ()

    @property
    def repeats_children(self) -> bool:
        """True when its children run once per item (a loop): their records are made as
        they run, not known in advance."""
        return False

    @property
    def agent_label(self) -> str | None:
        """What the record shows in its agent column."""
        return None

    def walk(self, *, fallbacks: bool = True) -> Iterator["Step"]:
        """This step and every step inside it, parents first (own fallbacks included)."""
        stack: list[Step] = [self]
        while stack:
            step = stack.pop()
            yield step
            nested = list(step.children())
            if fallbacks and step.fallback is not None:
                nested.insert(0, step.fallback)
            stack.extend(reversed(nested))


@dataclass(frozen=True)
class StepList:
    """The steps of one list (the workflow's, a parallel's, a branch's) and their graph.

    `graph` is None when no step of the list has `depends`: the list then runs as it
    always has (in order, or all at once for a parallel step's steps).
    """

    steps: tuple[Step, ...]
    in_order: bool  # a step without depends waits for the one before it (not in a parallel)
    graph: ListGraph | None = None

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __bool__(self) -> bool:
        return bool(self.steps)


@dataclass(frozen=True, eq=False, kw_only=True)
class TaskStep(Step):
    agent: str | None = None  # None: the inline command `run`
    run: str | list | None = None
    task: Any = None  # a Template, or None

    @property
    def agent_label(self) -> str | None:
        if self.agent:
            return self.agent
        return "run" if self.run is not None else None


@dataclass(frozen=True, eq=False, kw_only=True)
class ParallelStep(Step):
    steps: StepList
    max_concurrency: int | None = None

    def children(self) -> tuple[Step, ...]:
        return self.steps.steps


@dataclass(frozen=True, eq=False, kw_only=True)
class ConditionalStep(Step):
    condition: Any  # an Expression, or a bool written as such
    then: StepList
    otherwise: StepList  # `else`

    def children(self) -> tuple[Step, ...]:
        return self.then.steps + self.otherwise.steps


@dataclass(frozen=True, eq=False, kw_only=True)
class LoopStep(Step):
    items: Any  # a literal list, a count (int), an Expression, or a bool (an error when it runs)
    body: Step
    max_concurrency: int | None = None

    def children(self) -> tuple[Step, ...]:
        return (self.body,)

    @property
    def repeats_children(self) -> bool:
        return True


@dataclass(frozen=True, eq=False, kw_only=True)
class TeamStep(Step):
    team_id: str
    task: Any = None  # a Template, or None

    @property
    def agent_label(self) -> str | None:
        return self.team_id


# -- the workflow --------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, kw_only=True)
class Workflow:
    name: str
    description: str | None
    steps: StepList
    by_id: Mapping[str, Step]  # every step, nested and fallback ones included
    agents: Mapping[str, dict]
    teams: Mapping[str, dict]
    inputs: Mapping[str, dict] | None
    timeout: float | None
    notifications: Mapping[str, Any] | None
    secrets: Mapping[str, dict] | None
    max_concurrency: int  # how many steps of a graph run at once
    error_policy: Mapping[str, Any]  # the workflow's errorHandling, as written
    fallback: Step | None  # the workflow's errorHandling.fallback: stands in for any step
    raw: Mapping[str, Any]  # the document, for show and --json only
    _parents: Mapping[str, str | None] = field(default_factory=dict, repr=False)
    _lists: Mapping[str, StepList] = field(default_factory=dict, repr=False)

    def walk(self, *, fallbacks: bool = True) -> Iterator[Step]:
        """Every step, in document order, parents first."""
        if fallbacks and self.fallback is not None:
            yield from self.fallback.walk()
        for step in self.steps:
            yield from step.walk(fallbacks=fallbacks)

    def parent_of(self, step_id: str) -> Step | None:
        """The step this one is written inside (None at the top or for a fallback)."""
        parent = self._parents.get(step_id)
        return self.by_id.get(parent) if parent is not None else None

    def list_of(self, step_id: str) -> StepList | None:
        """The list this step belongs to (None for a loop body or a fallback)."""
        return self._lists.get(step_id)

    def count_tasks(self) -> int:
        """Steps that do work (tasks and team steps), however deeply nested."""
        return sum(1 for step in self.walk(fallbacks=False) if step.kind in (StepKind.TASK, StepKind.TEAM))


def default_max_concurrency() -> int:
    return os.cpu_count() or 1


def build_workflow(document: Mapping[str, Any]) -> Workflow:
    """The model of a valid workflow document (validate it first: this does not report)."""
    return _Builder(document).build()


class _Builder:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.workflow_policy = document.get("errorHandling") or {}
        self.policies: dict[tuple[int, int], Policy] = {}
        # (id of a group's errorHandling, id of what it inherited) → what it hands down;
        # one dict per distinct pair, so that steps with the same context share a policy.
        self.handed_down: dict[tuple[int, int], Mapping[str, Any] | None] = {}
        self.by_id: dict[str, Step] = {}
        self.parents: dict[str, str | None] = {}
        self.lists: dict[str, StepList] = {}

    def build(self) -> Workflow:
        doc = self.document
        fallback = None
        if isinstance(self.workflow_policy.get("fallback"), dict):
            fallback = self.step(self.workflow_policy["fallback"], "errorHandling.fallback", None, None)
        steps = self.step_list(doc.get("steps") or [], "steps", None, None, in_order=True)
        return Workflow(
            name=doc.get("name"),
            description=doc.get("description"),
            steps=steps,
            by_id=MappingProxyType(self.by_id),
            agents=MappingProxyType(dict(doc.get("agents") or {})),
            teams=MappingProxyType(dict(doc.get("teams") or {})),
            inputs=doc.get("inputs"),
            timeout=float(doc["timeout"]) if doc.get("timeout") else None,
            notifications=doc.get("notifications"),
            secrets=doc.get("secrets"),
            max_concurrency=int(doc.get("maxConcurrency") or default_max_concurrency()),
            error_policy=self.workflow_policy,
            fallback=fallback,
            raw=doc,
            _parents=MappingProxyType(self.parents),
            _lists=MappingProxyType(self.lists),
        )

    def policy(self, own: Mapping | None, inherited: Mapping | None) -> Policy:
        # Keyed by the step's errorHandling object and what the steps it is inside hand
        # down: every step without either shares one policy.
        key = (id(own), id(inherited))
        policy = self.policies.get(key)
        if policy is None:
            policy = policy_for(self.workflow_policy, own, inherited)
            self.policies[key] = policy
        return policy

    def inside(self, own: Mapping | None, inherited: Mapping | None) -> Mapping | None:
        """What a parallel, conditional, loop or team step hands down to the steps inside it."""
        key = (id(own), id(inherited))
        if key not in self.handed_down:
            self.handed_down[key] = retry_fields_inside(inherited, own)
        return self.handed_down[key]

    def step_list(self, raw_steps: Any, path: str, parent: str | None, inherited: Mapping | None, *,
                  in_order: bool) -> StepList:
        if isinstance(raw_steps, dict):  # a branch written as one step
            raw_steps, paths = [raw_steps], [path]
        else:
            paths = [f"{path}[{i}]" for i in range(len(raw_steps))]
        steps = tuple(self.step(raw, where, parent, inherited) for raw, where in zip(raw_steps, paths))
        graph = None
        if any(step.depends is not None for step in steps):
            ids = tuple(step.id for step in steps)
            known = frozenset(ids)
            requirements: dict[str, Depends | None] = {}
            for position, step in enumerate(steps):
                if step.depends is not None:
                    requirements[step.id] = step.depends.resolve(known)
                elif in_order and position > 0:
                    requirements[step.id] = after(steps[position - 1].id)
                else:
                    requirements[step.id] = None
            graph = ListGraph(ids, MappingProxyType(requirements))
        built = StepList(steps, in_order, graph)
        for step in steps:
            self.lists[step.id] = built
        return built

    def step(self, raw: Mapping[str, Any], path: str, parent: str | None, inherited: Mapping | None) -> Step:
        kind = StepKind(raw.get("type") or StepKind.TASK)
        own_policy = raw.get("errorHandling")
        own_fallback = (own_policy or {}).get("fallback")
        names = raw.get("input")
        common: dict[str, Any] = dict(
            id=raw["id"],
            kind=kind,
            path=path,
            inputs=tuple([names] if isinstance(names, str) else names or ()),
            output=raw.get("output"),
            timeout=raw.get("timeout"),
            env=tuple((str(k), _env_value(v)) for k, v in (raw.get("env") or {}).items()),
            cwd=raw.get("cwd"),
            policy=self.policy(own_policy, inherited),
            inherited=inherited,
            # Its own fallback stands where it stands: it inherits what the step inherits.
            fallback=(self.step(own_fallback, f"{path}.errorHandling.fallback", None, inherited)
                      if isinstance(own_fallback, dict) else None),
            depends=parse_depends(raw["depends"]) if "depends" in raw else None,
            raw=raw,
        )
        self.parents[raw["id"]] = parent
        me = raw["id"]
        inside = self.inside(own_policy, inherited) if kind in COMPOSITE_KINDS else inherited
        if kind == StepKind.TASK:
            step: Step = TaskStep(agent=raw.get("agent"), run=raw.get("run"), task=_template(raw.get("task")), **common)
        elif kind == StepKind.PARALLEL:
            children = self.step_list(raw.get("steps") or [], f"{path}.steps", me, inside, in_order=False)
            step = ParallelStep(steps=children, max_concurrency=raw.get("maxConcurrency"), **common)
        elif kind == StepKind.CONDITIONAL:
            then = self.branch(raw.get("then"), f"{path}.then", me, inside)
            otherwise = self.branch(raw.get("else"), f"{path}.else", me, inside)
            step = ConditionalStep(condition=_condition(raw.get("condition")), then=then, otherwise=otherwise, **common)
        elif kind == StepKind.LOOP:
            body = self.step(raw["step"], f"{path}.step", me, inside)
            step = LoopStep(items=_items(raw.get("items")), body=body, max_concurrency=raw.get("maxConcurrency"),
                            **common)
        else:
            step = TeamStep(team_id=raw["teamId"], task=_template(raw.get("task")), **common)
        self.by_id[me] = step
        return step

    def branch(self, value: Any, path: str, parent: str, inherited: Mapping | None) -> StepList:
        if value is None:
            return StepList((), True)
        return self.step_list(value, path, parent, inherited, in_order=True)


def _template(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    from wfctl.expressions import parse_template

    return parse_template(text)


def _env_value(value: Any) -> Any:
    if isinstance(value, str):
        return _template(value)
    from wfctl.agents import plain_text

    return plain_text(value)


def _condition(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    from wfctl.expressions import parse

    return parse(str(value))


def _items(value: Any) -> Any:
    """A loop's items: a literal list or count as written, or a parsed expression."""
    if isinstance(value, (bool, int, list)):
        return value
    from wfctl.expressions import parse

    return parse(str(value))
