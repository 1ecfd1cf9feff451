"""`depends`: which steps of the same list a step waits for, and on what condition.

Two forms, in the style of Argo's enhanced depends:

* a list of step ids: every one of them must be done without stopping the run;
* an expression over ids with `&&`, `||`, `!` and parentheses, where an id may carry a
  property: `build && (test.succeeded || test.failed)`.

| written          | true when the step ...                                             |
| ---------------- | ------------------------------------------------------------------ |
| `id` (bare)      | succeeded, or failed under `strategy: continue`                    |
| `id.succeeded`   | completed (a fallback recovery included)                           |
| `id.failed`      | failed (a continued failure included)                              |
| `id.skipped`     | was skipped                                                        |
| `id.completed`   | ended in any way: completed, failed, skipped or cancelled          |

Evaluation is three-valued: a property of a step that has not ended is unknown, `&&`
and `||` decide as soon as one side decides (Kleene logic), so a step starts as soon as
its condition is true and is skipped as soon as it can no longer become true.

Ids may contain `-` and `.`, so this is a small language of its own, not the general
expression language: a word is an id, and its last `.word` is a property when it is
one of the four above (`resolve` undoes that for an id that itself ends so).

This module is pure: parsing, evaluating and the graph of one list (order, cycles,
what is downstream of a step). The validator, the model and the scheduler use it.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Container, Iterable, Iterator, Mapping, Union

PROPERTIES = ("succeeded", "failed", "skipped", "completed")
MAX_SOURCE_LENGTH = 4096
MAX_NESTING = 32

_WORD = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)


class DependsError(ValueError):
    """A depends value that cannot be parsed; `position` is 0-based when known."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


class Outcome(StrEnum):
    """How a step of a list ended, as far as the steps that depend on it care."""

    SUCCEEDED = "succeeded"  # completed, a fallback recovery included
    CONTINUED = "continued"  # failed under strategy: continue (the run went on)
    FAILED = "failed"  # failed and stopped its list
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


_TRUE_FOR: dict[str | None, frozenset[Outcome]] = {
    None: frozenset({Outcome.SUCCEEDED, Outcome.CONTINUED}),
    "succeeded": frozenset({Outcome.SUCCEEDED}),
    "failed": frozenset({Outcome.FAILED, Outcome.CONTINUED}),
    "skipped": frozenset({Outcome.SKIPPED}),
    "completed": frozenset(Outcome),
}
# How an outcome is named in a skip reason ("test failed").
_OUTCOME_WORDS = {
    Outcome.SUCCEEDED: "completed",
    Outcome.CONTINUED: "failed and was continued",
    Outcome.FAILED: "failed",
    Outcome.SKIPPED: "was skipped",
    Outcome.CANCELLED: "was cancelled",
}

Verdict = Union[bool, None]  # None: not decided yet


# -- the condition tree --------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    """One step id, with an optional property (None: the bare id)."""

    step: str
    prop: str | None = None

    def evaluate(self, outcomes: Mapping[str, Outcome]) -> Verdict:
        outcome = outcomes.get(self.step)
        if outcome is None:
            return None
        return outcome in _TRUE_FOR[self.prop]

    def refs(self) -> Iterator["Ref"]:
        yield self

    def text(self) -> str:
        return f"{self.step}.{self.prop}" if self.prop else self.step


@dataclass(frozen=True)
class Not:
    operand: "Node"

    def evaluate(self, outcomes: Mapping[str, Outcome]) -> Verdict:
        value = self.operand.evaluate(outcomes)
        return None if value is None else not value

    def refs(self) -> Iterator[Ref]:
        yield from self.operand.refs()

    def text(self) -> str:
        return f"!{_wrapped(self.operand)}"


@dataclass(frozen=True)
class All:
    """`&&`: false as soon as one side is false."""

    operands: tuple["Node", ...]

    def evaluate(self, outcomes: Mapping[str, Outcome]) -> Verdict:
        unknown = False
        for operand in self.operands:
            value = operand.evaluate(outcomes)
            if value is False:
                return False
            if value is None:
                unknown = True
        return None if unknown else True

    def refs(self) -> Iterator[Ref]:
        for operand in self.operands:
            yield from operand.refs()

    def text(self) -> str:
        return " && ".join(_wrapped(o) for o in self.operands)


@dataclass(frozen=True)
class Any_:
    """`||`: true as soon as one side is true."""

    operands: tuple["Node", ...]

    def evaluate(self, outcomes: Mapping[str, Outcome]) -> Verdict:
        unknown = False
        for operand in self.operands:
            value = operand.evaluate(outcomes)
            if value is True:
                return True
            if value is None:
                unknown = True
        return None if unknown else False

    def refs(self) -> Iterator[Ref]:
        for operand in self.operands:
            yield from operand.refs()

    def text(self) -> str:
        return " || ".join(_wrapped(o) for o in self.operands)


Node = Union[Ref, Not, All, Any_]


def _wrapped(node: Node) -> str:
    return f"({node.text()})" if isinstance(node, (All, Any_)) else node.text()


# -- a parsed depends value ----------------------------------------------------------------
@dataclass(frozen=True)
class Depends:
    """A step's dependencies: the condition, and how they were written (for records)."""

    condition: Node
    written: str | tuple[str, ...]  # the expression text, or the ids of the list form

    def evaluate(self, outcomes: Mapping[str, Outcome]) -> Verdict:
        return self.condition.evaluate(outcomes)

    def refs(self) -> list[Ref]:
        return list(self.condition.refs())

    def ids(self) -> tuple[str, ...]:
        """The step ids it names, each once, in the order written."""
        return tuple(dict.fromkeys(ref.step for ref in self.condition.refs()))

    def shown(self) -> str | list[str]:
        """How a record shows it (`dependsOn`): the expression, or the list of ids."""
        return self.written if isinstance(self.written, str) else list(self.written)

    def accepts_failure(self, outcomes: Mapping[str, Outcome]) -> bool:
        """Does it explicitly accept a failure that stopped the list: a step that failed,
        named with `.failed` or `.completed`?"""
        return any(
            ref.prop in ("failed", "completed") and outcomes.get(ref.step) is Outcome.FAILED
            for ref in self.condition.refs()
        )

    def must_succeed(self) -> frozenset[str]:
        """The ids that have certainly succeeded (or continued) when the condition is
        true: their outputs exist for the step (an `&&` adds, an `||` keeps only what
        both sides have, a `!` promises nothing)."""
        return _must_succeed(self.condition)

    def must_end(self) -> frozenset[str]:
        """The ids that have certainly ended when the condition is true."""
        return _must_end(self.condition, True)

    def reason(self, outcomes: Mapping[str, Outcome]) -> str:
        """Why it can no longer become true: "dependency not met: test.succeeded (test failed)"."""
        shown = self.written if isinstance(self.written, str) else ", ".join(self.written)
        ended = [step for step in self.ids() if step in outcomes]
        # The steps that did not succeed say why; when all did (`a.failed`), all of them.
        named = [step for step in ended if outcomes[step] is not Outcome.SUCCEEDED] or ended
        states = ", ".join(f"{step} {_OUTCOME_WORDS[outcomes[step]]}" for step in named)
        return f"dependency not met: {shown}" + (f" ({states})" if states else "")

    def resolve(self, known: Container[str]) -> "Depends":
        """`a.failed` where `a.failed` is itself a step id (and `a` is not) names that step.
        `known` is looked into, not copied: a set or a mapping of the list's ids."""
        return Depends(_resolve(self.condition, known), self.written)


def _must_succeed(node: Node) -> frozenset[str]:
    if isinstance(node, Ref):
        return frozenset({node.step}) if node.prop in (None, "succeeded") else frozenset()
    if isinstance(node, All):
        return frozenset().union(*(_must_succeed(o) for o in node.operands))
    if isinstance(node, Any_):
        return frozenset.intersection(*(_must_succeed(o) for o in node.operands))
    return frozenset()


def _must_end(node: Node, value: bool) -> frozenset[str]:
    """Ids certainly ended when `node` evaluates to `value` (a decided ref has ended)."""
    if isinstance(node, Ref):
        return frozenset({node.step})
    if isinstance(node, Not):
        return _must_end(node.operand, not value)
    parts = [_must_end(o, value) for o in node.operands]
    # A decided && (true) or || (false) needs every side decided; otherwise one side.
    every = (isinstance(node, All) and value) or (isinstance(node, Any_) and not value)
    return frozenset().union(*parts) if every else frozenset.intersection(*parts)


def _resolve(node: Node, known: Container[str]) -> Node:
    if isinstance(node, Ref):
        if node.prop and node.step not in known and f"{node.step}.{node.prop}" in known:
            return Ref(f"{node.step}.{node.prop}")
        return node
    if isinstance(node, Not):
        return Not(_resolve(node.operand, known))
    return type(node)(tuple(_resolve(o, known) for o in node.operands))


def after(step_id: str) -> Depends:
    """The dependency of a step without `depends` in a list run in order: the step before it."""
    return Depends(Ref(step_id), (step_id,))


# -- parsing -------------------------------------------------------------------------------
def parse_depends(value: object) -> Depends:
    """A `depends` value (a list of ids or an expression string) → Depends.

    Raises DependsError with one sentence; the validator adds the path and line.
    """
    if isinstance(value, list):
        ids: list[str] = []
        for position, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise DependsError(f"item {position} of the list is not a step id")
            ids.append(item)
        if not ids:
            return Depends(All(()), ())
        refs = tuple(Ref(step) for step in dict.fromkeys(ids))
        return Depends(refs[0] if len(refs) == 1 else All(refs), tuple(dict.fromkeys(ids)))
    if not isinstance(value, str):
        raise DependsError("depends must be a list of step ids or an expression string")
    return Depends(_Parser(value).parse(), value)


def _tokens(source: str) -> list[tuple[str, str, int]]:
    """(kind, text, position): kind is "word", an operator, a parenthesis, or "end"."""
    if len(source) > MAX_SOURCE_LENGTH:
        raise DependsError(f"the expression is longer than {MAX_SOURCE_LENGTH} characters")
    found: list[tuple[str, str, int]] = []
    i = 0
    while i < len(source):
        char = source[i]
        if char.isspace():
            i += 1
        elif source.startswith(("&&", "||"), i):
            found.append((source[i : i + 2], source[i : i + 2], i))
            i += 2
        elif char in "!()":
            found.append((char, char, i))
            i += 1
        else:
            match = _WORD.match(source, i)
            if match is None:
                shown = "'&'" if char == "&" else "'|'" if char == "|" else repr(char)
                hint = " (use && and ||)" if char in "&|" else ""
                raise DependsError(f"unexpected character {shown}{hint}", i)
            found.append(("word", match.group(), i))
            i = match.end()
    found.append(("end", "", len(source)))
    return found


class _Parser:
    """or := and ('||' and)* ; and := unary ('&&' unary)* ; unary := '!' unary | '(' or ')' | word"""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokens(source)
        self.position = 0
        self.depth = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.position]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def parse(self) -> Node:
        if self.peek()[0] == "end":
            raise DependsError("the expression is empty", 0)
        node = self.parse_or()
        kind, text, position = self.peek()
        if kind != "end":
            raise DependsError(f"unexpected {text!r}; expected && or ||", position)
        return node

    def parse_or(self) -> Node:
        operands = [self.parse_and()]
        while self.peek()[0] == "||":
            self.take()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else Any_(tuple(operands))

    def parse_and(self) -> Node:
        operands = [self.parse_unary()]
        while self.peek()[0] == "&&":
            self.take()
            operands.append(self.parse_unary())
        return operands[0] if len(operands) == 1 else All(tuple(operands))

    def parse_unary(self) -> Node:
        kind, text, position = self.take()
        if kind == "!":
            return Not(self.nested(position, self.parse_unary))
        if kind == "(":
            node = self.nested(position, self.parse_or)
            closing = self.take()
            if closing[0] != ")":
                raise DependsError(f"missing ')' for the '(' at character {position + 1}", closing[2])
            return node
        if kind == "word":
            return _ref(text, position)
        if kind == "end":
            raise DependsError("the expression ends where a step id was expected", position)
        raise DependsError(f"unexpected {text!r} where a step id was expected", position)

    def nested(self, position: int, parse):
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise DependsError(f"the expression is nested more than {MAX_NESTING} levels deep", position)
        try:
            return parse()
        finally:
            self.depth -= 1


def _ref(word: str, position: int) -> Ref:
    head, dot, last = word.rpartition(".")
    if dot and last in PROPERTIES:
        if not head:
            raise DependsError(f"'{word}' has a property but no step id", position)
        return Ref(head, last)
    return Ref(word)


# -- the graph of one list -----------------------------------------------------------------
@dataclass(frozen=True)
class ListGraph:
    """The dependencies between the steps of one list (ids in document order).

    `requirements` holds what each step waits for: its own `depends`, or for a step
    without one in a list run in order, the step before it; a step that waits for
    nothing has None.
    """

    ids: tuple[str, ...]
    requirements: Mapping[str, Depends | None]
    _dependents: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dependents: dict[str, list[str]] = {step: [] for step in self.ids}
        for step in self.ids:
            requirement = self.requirements.get(step)
            for dependency in requirement.ids() if requirement else ():
                if dependency in dependents:
                    dependents[dependency].append(step)
        object.__setattr__(self, "_dependents", {k: tuple(v) for k, v in dependents.items()})

    def dependencies(self, step: str) -> tuple[str, ...]:
        requirement = self.requirements.get(step)
        return requirement.ids() if requirement else ()

    def dependents(self, step: str) -> tuple[str, ...]:
        return self._dependents.get(step, ())

    def downstream(self, step: str) -> set[str]:
        """Every step that depends on `step`, directly or through others."""
        found: set[str] = set()
        stack = list(self.dependents(step))
        while stack:
            current = stack.pop()
            if current not in found:
                found.add(current)
                stack.extend(self.dependents(current))
        return found

    def order(self) -> list[str]:
        """A topological order, document order among steps that are ready together."""
        return topological_order(self.ids, {step: self.dependencies(step) for step in self.ids})


def topological_order(ids: Iterable[str], dependencies: Mapping[str, Iterable[str]]) -> list[str]:
    """Kahn's algorithm with document order as the tie-break; steps in a cycle are left out."""
    ids = list(ids)
    position = {step: i for i, step in enumerate(ids)}
    waiting = {step: {d for d in dependencies.get(step, ()) if d in position} for step in ids}
    dependents: dict[str, list[str]] = {step: [] for step in ids}
    for step, needs in waiting.items():
        for dependency in needs:
            dependents[dependency].append(step)
    ready = [position[step] for step in ids if not waiting[step]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        step = ids[heapq.heappop(ready)]
        order.append(step)
        for dependent in dependents[step]:
            waiting[dependent].discard(step)
            if not waiting[dependent]:
                heapq.heappush(ready, position[dependent])
    return order


def find_cycles(ids: Iterable[str], dependencies: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Cycles among the steps (each as [a, b, c, a], starting at its first step in
    document order), found without recursion; at most one per strongly connected part."""
    ids = list(ids)
    position = {step: i for i, step in enumerate(ids)}
    edges = {step: [d for d in dependencies.get(step, ()) if d in position] for step in ids}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []
    seen_in_cycle: set[str] = set()
    for root in ids:
        if state.get(root):
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(edges[root]))]
        state[root] = 1
        path.append(root)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            if state.get(child) == 1:
                loop = path[path.index(child):]
                if not seen_in_cycle.intersection(loop):
                    seen_in_cycle.update(loop)
                    # The path follows "waits for"; shown in the order the steps would run.
                    ordered = list(reversed(loop))
                    first = min(range(len(ordered)), key=lambda i: position[ordered[i]])
                    ordered = ordered[first:] + ordered[:first]
                    cycles.append(ordered + [ordered[0]])
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(edges[child])))
    return cycles
