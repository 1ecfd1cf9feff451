"""Checking a workflow document: every problem at once, each with its path and line.

Driven by the tables of `spec.py` (types, required keys, constraints, descriptions), plus
the checks no schema can express: unique step ids across the whole tree, expressions and
templates that parse, names that something produces before they are read (design.md §1
"Data between steps"), colliding output names, and agents/teams that exist.

Data flow. The walk goes through the steps in order and keeps the set of state names that
are *always* produced before the current step: a sequence accumulates; the children of a
parallel step see only what existed before it (not their siblings) and after it all of
their outputs exist; the branches of a conditional see what existed before it (plus earlier
steps of the same branch) and after it only names produced by both branches exist; a loop
body sees `item` and `index`; after a loop only its own `output` exists; a fallback step
sees `error`. A step's own `output` exists after it. A name read through `input:` that no
step produces at all is an *external input* that must come from `--input` — unless the
workflow declares `inputs:`, in which case it must be declared there.

Public functions: `validate_document`, `validate_mapping`, `validate_text`, `load_workflow`,
`external_inputs`, `check_execution_input`.
"""

from __future__ import annotations

import copy
import math
import os
import re
from typing import Any, Iterable, Mapping

from wfctl import spec
from wfctl.depends import Depends, DependsError, Outcome, after, find_cycles, parse_depends, topological_order
from wfctl.errors import ExpressionError, Problem, WorkflowInvalid
from wfctl.loader import child_path
from wfctl.spec import Block, Field, describe_value, did_you_mean, is_number

_NAME_RE = re.compile(spec.NAME_PATTERN)
_BARE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_EXPRESSION_KEYWORDS = frozenset({"true", "false", "null", "and", "or", "not", "in"})
_STEP_CHILD_KEYS = ("steps", "then", "else", "step", "errorHandling")
_MAX_LISTED = 20  # names listed in a message before "..."
_STEP_ID_RE = re.compile(spec.STEP_ID_PATTERN)


# -- public API ----------------------------------------------------------------------------------
def validate_document(
    doc: Any,
    *,
    file: str,
    lines: dict[str, int] | None = None,
    known_agents: Iterable[str] | None = None,
    known_teams: Iterable[str] | None = None,
) -> list[Problem]:
    """Every problem of a parsed workflow document, in document order; [] when it is valid.

    `known_agents`/`known_teams` (names from config.toml) turn on the check that every agent,
    escalation target, team member and team exists; None skips it. Never raises.
    """
    return _Validator(file, lines or {}, known_agents, known_teams).run(doc)


def validate_mapping(
    doc: Any,
    *,
    file: str = "<api>",
    known_agents: Iterable[str] | None = None,
    known_teams: Iterable[str] | None = None,
) -> list[Problem]:
    """`validate_document` for a definition given as a dict (the library API); no lines."""
    return validate_document(doc, file=file, lines=None, known_agents=known_agents, known_teams=known_teams)


def check_agents_and_teams(
    doc: dict, *, file: str, known_agents: Iterable[str], known_teams: Iterable[str]
) -> list[Problem]:
    """Only the agent and team names of an already valid definition (a registered one,
    whose agents in config.toml may have changed): much cheaper than a whole validation."""
    from wfctl.model import TaskStep, TeamStep, build_workflow

    workflow = build_workflow(doc)
    checker = _Validator(file, {}, known_agents, known_teams)
    checker.workflow_agents = set(workflow.agents)
    checker.workflow_teams = set(workflow.teams)
    for name, team in workflow.teams.items():
        for i, member in enumerate((team or {}).get("members") or []):
            checker.check_agent(member, child_path(child_path(child_path("teams", name), "members"), i), "team member")
    handlers = [("", workflow.error_policy)] + [(step.path, step.raw.get("errorHandling") or {})
                                                for step in workflow.walk()]
    for path, handling in handlers:
        if isinstance(handling.get("escalateTo"), str):
            checker.check_agent(handling["escalateTo"], child_path(child_path(path, "errorHandling"), "escalateTo"),
                                "escalateTo")
    for step in workflow.walk():
        if isinstance(step, TaskStep) and step.agent:
            checker.check_agent(step.agent, child_path(step.path, "agent"), "agent")
        elif isinstance(step, TeamStep):
            checker.check_team(step.team_id, child_path(step.path, "teamId"))
    return sorted(checker.problems, key=lambda p: p.path)


def validate_config(doc: Any, *, file: str, lines: dict[str, int] | None = None) -> list[Problem]:
    """Every problem of a parsed config.toml (spec.CONFIG), in document order; [] when valid.

    The same checks as a workflow's own `agents:` and `teams:` (names that become parts of
    file names, exactly one of run/python/http, templates that parse, non-empty member lists),
    plus the types of `defaults`, `executor`, `[slack]` and `[smtp]`, and unknown keys.
    """
    checker = _Validator(file, lines or {}, None, None)
    checker.block(spec.CONFIG, doc if isinstance(doc, dict) else {}, "", _Scope(), None)
    return checker.problems


def workflow_warnings(
    doc: Any, *, file: str, lines: dict[str, int] | None = None, config: dict | None = None
) -> list[Problem]:
    """What a valid workflow asks for but cannot have: an escalation or a failure notice
    with nowhere to go. Warnings, not problems: the workflow runs, but nobody would hear.

    `config` (config.toml's data) adds the transports it lacks: `notifications.slack`
    without `slack.webhook`, `notifications.email` without `smtp.host`.
    """
    if not isinstance(doc, dict):
        return []
    checker = _Validator(file, lines or {}, None, None)
    workflow_handling = doc.get("errorHandling") if isinstance(doc.get("errorHandling"), dict) else {}
    targets = _notification_targets(doc.get("notifications"))
    for handling, path in _error_handlings(doc):
        inherited = {} if handling is workflow_handling else workflow_handling
        if handling.get("escalateOnFailure") is True and not (handling.get("escalateTo") or inherited.get("escalateTo")):
            checker.report(child_path(path, "escalateOnFailure"),
                           "escalateOnFailure is true, but no escalateTo names an agent (here or in the workflow's "
                           "errorHandling): a failure would be marked escalated and reach nobody; add escalateTo: AGENT")
        if handling.get("notifyOnError") is True and not targets:
            checker.report(child_path(path, "notifyOnError"),
                           "notifyOnError is true, but notifications names no webhook, slack, email or command: step "
                           "failures reach nobody unless `wfctl execute` is given --notify-email, --notify-slack or "
                           "--notify-webhook")
    if config is not None:
        slack = config.get("slack") if isinstance(config.get("slack"), dict) else {}
        smtp = config.get("smtp") if isinstance(config.get("smtp"), dict) else {}
        if "slack" in targets and not slack.get("webhook"):
            checker.report("notifications.slack", "notifications go to a Slack channel, but config.toml has no "
                                                  "slack.webhook; set it with `wfctl config set slack.webhook URL`")
        if "email" in targets and not smtp.get("host"):
            checker.report("notifications.email", "notifications go to email, but config.toml has no smtp.host; "
                                                  "set it with `wfctl config set smtp.host HOST`")
    return sorted(checker.problems, key=lambda p: (p.line or 0, p.path))


def _notification_targets(block: Any) -> set[str]:
    """The transports a notifications block names (non-empty values only)."""
    if not isinstance(block, dict):
        return set()
    return {name for name in ("webhook", "slack", "email", "command") if block.get(name)}


def _error_handlings(doc: dict) -> list[tuple[dict, str]]:
    """Every errorHandling mapping of a workflow (its own and every step's) with its path."""
    found: list[tuple[dict, str]] = []
    stack: list[tuple[Any, str]] = [(step, child_path("steps", i)) for i, step in enumerate(doc.get("steps") or [])]
    if isinstance(doc.get("errorHandling"), dict):
        found.append((doc["errorHandling"], "errorHandling"))
        stack.append((doc["errorHandling"].get("fallback"), "errorHandling.fallback"))
    while stack:
        node, path = stack.pop()
        if not isinstance(node, dict):
            continue
        handling = node.get("errorHandling")
        if isinstance(handling, dict):
            found.append((handling, child_path(path, "errorHandling")))
            stack.append((handling.get("fallback"), child_path(child_path(path, "errorHandling"), "fallback")))
        for key in ("steps", "then", "else"):
            value = node.get(key)
            if isinstance(value, list):
                stack += [(child, child_path(child_path(path, key), i)) for i, child in enumerate(value)]
            elif isinstance(value, dict):
                stack.append((value, child_path(path, key)))
        if isinstance(node.get("step"), dict):
            stack.append((node["step"], child_path(path, "step")))
    return found


def path_name_problems(definition: Any, *, file: str) -> list[Problem]:
    """The names of a stored definition that become parts of file names (step ids, team
    members), checked again where a record on disk is read: a record edited or damaged
    outside wfctl must not lead a step's log out of its execution's directory."""
    if not isinstance(definition, dict):
        return [Problem(file, "definition", "the stored definition is not a mapping")]
    id_pattern = re.compile(spec.STEP_ID_PATTERN)
    member_pattern = re.compile(spec.AGENT_NAME_PATTERN)
    problems: list[Problem] = []
    teams = definition.get("teams")
    for team, body in (teams.items() if isinstance(teams, dict) else ()):
        members = body.get("members") if isinstance(body, dict) else None
        for i, member in enumerate(members if isinstance(members, list) else ()):
            if not isinstance(member, str) or not member_pattern.fullmatch(member):
                problems.append(Problem(file, f"definition.teams.{team}.members[{i}]",
                                        f"the team member {describe_value(member)} is not a valid agent name"))
    stack: list[tuple[Any, str]] = [(definition.get("errorHandling"), "definition.errorHandling")]
    stack += [(step, f"definition.steps[{i}]") for i, step in enumerate(definition.get("steps") or [])]
    while stack:
        node, where = stack.pop()
        if not isinstance(node, dict):
            continue
        if "id" in node and not (isinstance(node["id"], str) and id_pattern.fullmatch(node["id"])):
            problems.append(Problem(file, f"{where}.id", f"the step id {describe_value(node['id'])} "
                                                         f"{spec.STEP_ID_HELP}"))
        for key in ("steps", "then", "else"):
            value = node.get(key)
            if isinstance(value, list):
                stack += [(child, f"{where}.{key}[{i}]") for i, child in enumerate(value)]
            elif isinstance(value, dict):
                stack.append((value, f"{where}.{key}"))
        for key in ("step", "errorHandling", "fallback"):
            if isinstance(node.get(key), dict):
                stack.append((node[key], f"{where}.{key}"))
    return problems


def load_workflow(
    path: str | os.PathLike,
    *,
    known_agents: Iterable[str] | None = None,
    known_teams: Iterable[str] | None = None,
) -> tuple[dict, dict[str, int]]:
    """Read, parse and validate a workflow file; returns (document, lines).

    Raises `WorkflowInvalid` with every problem (or the one that stopped parsing).
    """
    from wfctl.loader import load_document

    doc, lines = load_document(path)
    problems = validate_document(doc, file=os.fspath(path), lines=lines,
                                 known_agents=known_agents, known_teams=known_teams)
    if problems:
        raise WorkflowInvalid(problems)
    return doc, lines


def validate_text(
    text: str,
    filename: str,
    *,
    fmt: str | None = None,
    known_agents: Iterable[str] | None = None,
    known_teams: Iterable[str] | None = None,
) -> tuple[dict, dict[str, int]]:
    """`load_workflow` for text in memory ("yaml"/"json"; None decides from the name and text)."""
    from wfctl.loader import parse_text

    doc, lines = parse_text(text, filename, fmt)
    problems = validate_document(doc, file=filename, lines=lines,
                                 known_agents=known_agents, known_teams=known_teams)
    if problems:
        raise WorkflowInvalid(problems)
    return doc, lines


def external_inputs(doc: dict) -> list[str]:
    """The input names that must come from --input, sorted.

    Without an `inputs:` section: the names steps read (`input:`, or a bare name in a loop's
    `items`) that no step produces. With one: the declared inputs that are required and have
    no default.
    """
    if not isinstance(doc, dict):
        return []
    declared = doc.get("inputs")
    if isinstance(declared, dict):
        return sorted(
            name for name, decl in declared.items()
            if isinstance(name, str) and isinstance(decl, dict)
            and decl.get("required") is True and "default" not in decl
        )
    return sorted(_Tree(doc).external)


def check_execution_input(doc: dict, given: Any, *, file: str) -> dict:
    """The execution input with declared defaults filled in (a new dict).

    Raises `WorkflowInvalid` listing every problem: `given` is not an object, a required
    declared input or an external input is missing, a value does not have its declared
    type, or a name is not declared (when the workflow declares `inputs:`).
    """
    problems: list[Problem] = []
    if not isinstance(given, dict):
        raise WorkflowInvalid([Problem(file, "input", f"--input must be a JSON object, not {describe_value(given)}")])
    result = dict(given)
    declared = doc.get("inputs") if isinstance(doc, dict) else None
    if isinstance(declared, dict):
        for name, decl in declared.items():
            decl = decl if isinstance(decl, dict) else {}
            if name not in given:
                if "default" in decl:
                    result[name] = copy.deepcopy(decl["default"])
                elif decl.get("required") is True:
                    about = f" ({decl['description']})" if isinstance(decl.get("description"), str) else ""
                    problems.append(Problem(file, f"input.{name}",
                                            f"input '{name}'{about} is required, but --input does not give it"))
                continue
            wanted = decl.get("type")
            if isinstance(wanted, str) and not _has_input_type(given[name], wanted):
                problems.append(Problem(file, f"input.{name}", f"input '{name}' must be "
                                        f"{_INPUT_TYPE_WORDS.get(wanted, wanted)}, not {describe_value(given[name])}"))
        for name in given:
            if name not in declared:
                problems.append(Problem(file, f"input.{name}", f"input '{name}' is not declared in the workflow's "
                                        f"inputs{did_you_mean(name, declared)}"))
    else:
        tree = _Tree(doc) if isinstance(doc, dict) else None
        for name in sorted(tree.external if tree else ()):
            if name not in given:
                reader = tree.consumers.get(name) if tree else None
                by = f" by step '{reader}'" if reader else ""
                problems.append(Problem(file, f"input.{name}", f"input '{name}' is needed{by} and no step produces "
                                        "it, but --input does not give it"))
    if problems:
        raise WorkflowInvalid(problems)
    return result


_INPUT_TYPE_WORDS = {
    "string": "a string", "number": "a number", "integer": "an integer", "boolean": "true or false",
    "object": "an object", "array": "a list",
}


def _has_input_type(value: Any, wanted: str) -> bool:
    if wanted == "string":
        return isinstance(value, str)
    if wanted == "number":
        return is_number(value) and math.isfinite(value)
    if wanted == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if wanted == "boolean":
        return isinstance(value, bool)
    if wanted == "object":
        return isinstance(value, dict)
    if wanted == "array":
        return isinstance(value, list)
    return True


# -- the tree of steps, gathered once (iteratively) ----------------------------------------------
_FINISHED = "\0finished:"  # prefix of the names that mark a step as behind


def _subtree_ids(step: dict) -> list[str]:
    """The ids of a step and of every step inside it."""
    found: list[str] = []
    stack = [step]
    while stack:
        current = stack.pop()
        if not isinstance(current, dict):
            continue
        if isinstance(current.get("id"), str):
            found.append(current["id"])
        for key in ("steps", "then", "else"):
            value = current.get(key)
            if isinstance(value, list):
                stack.extend(value)
            elif isinstance(value, dict):
                stack.append(value)
        if isinstance(current.get("step"), dict):
            stack.append(current["step"])
    return found


_LOOP_SCOPE = frozenset({"item", "index"})
_FALLBACK_SCOPE = frozenset({"error"})


class _Tree:
    """Facts about the whole step tree that the in-order walk needs ahead of time.

    Built without recursion and stopping early, so a 1000-deep or 1,000,000-step document
    costs little: `too_many`/`too_deep` then say why the walk must not happen.
    """

    def __init__(self, doc: dict) -> None:
        self.ids: set[str] = set()
        self.producers: dict[str, list[tuple[str, str]]] = {}  # output name → [(step id, path)]
        self.consumers: dict[str, str] = {}  # name read by `input:` → first reader's id
        self.count = 0
        self.too_many = False
        self.too_deep: str | None = None  # path of the first step nested too deep
        # Each entry: (step, path, depth, names in scope there: item/index in a loop
        # body, error in a fallback), so those names are not taken for --input ones.
        roots: list[tuple[Any, str, int, frozenset]] = []
        handling = doc.get("errorHandling")
        if isinstance(handling, dict) and "fallback" in handling:
            roots.append((handling["fallback"], "errorHandling.fallback", 1, _FALLBACK_SCOPE))
        steps = doc.get("steps")
        if isinstance(steps, list):
            roots.extend((s, child_path("steps", i), 1, frozenset()) for i, s in enumerate(steps))
        stack = list(reversed(roots))
        inputs_read: list[str] = []
        while stack:
            step, path, depth, scoped = stack.pop()
            self.count += 1
            if self.count > spec.MAX_STEPS:
                self.too_many = True
                break
            if depth > spec.MAX_STEP_DEPTH:
                self.too_deep = path
                break
            if not isinstance(step, dict):
                continue
            sid = step.get("id")
            label = sid if isinstance(sid, str) else path
            if isinstance(sid, str):
                self.ids.add(sid)
            out = step.get("output")
            if isinstance(out, str):
                self.producers.setdefault(out, []).append((label, path))
            names = step.get("input")
            for name in names if isinstance(names, list) else [names]:
                if isinstance(name, str) and name not in scoped:
                    inputs_read.append(name)
                    self.consumers.setdefault(name, label)
            items = step.get("items")
            if isinstance(items, str) and _is_bare_name(items) and items.strip() not in scoped:
                inputs_read.append(items.strip())
                self.consumers.setdefault(items.strip(), label)
            children: list[tuple[Any, str, int, frozenset]] = []
            for key in step:
                value = step[key]
                key_path = child_path(path, key) if isinstance(key, str) else path
                if key == "steps" and isinstance(value, list):
                    children.extend((c, child_path(key_path, i), depth + 1, scoped) for i, c in enumerate(value))
                elif key in ("then", "else"):
                    if isinstance(value, list):
                        children.extend((c, child_path(key_path, i), depth + 1, scoped) for i, c in enumerate(value))
                    elif isinstance(value, dict):
                        children.append((value, key_path, depth + 1, scoped))
                elif key == "step" and isinstance(value, dict):
                    children.append((value, key_path, depth + 1, scoped | _LOOP_SCOPE))
                elif key == "errorHandling" and isinstance(value, dict) and "fallback" in value:
                    fallback_path = child_path(key_path, "fallback")
                    children.append((value["fallback"], fallback_path, depth + 1, scoped | _FALLBACK_SCOPE))
            stack.extend(reversed(children))
        self.external: set[str] = {n for n in inputs_read if n not in self.producers}


def _has_depends(steps: Any) -> bool:
    """Is this list scheduled as a graph (some step of it has depends)?"""
    return isinstance(steps, list) and any(isinstance(step, dict) and "depends" in step for step in steps)


def _is_bare_name(text: str) -> bool:
    """`items: data-array`: a plain state name rather than an expression."""
    stripped = text.strip()
    return bool(_BARE_NAME_RE.match(stripped)) and stripped not in _EXPRESSION_KEYWORDS and not stripped.endswith("-")


# -- the walk ------------------------------------------------------------------------------------
class _Scope:
    """Where a step sits: names in scope besides state (item, index, error), and its branch."""

    __slots__ = ("extras", "branch", "in_loop", "in_fallback")

    def __init__(self, extras: frozenset[str] = frozenset(), branch: tuple = (), in_loop: bool = False,
                 in_fallback: bool = False) -> None:
        self.extras = extras
        self.branch = branch  # ((conditional path, "then"|"else"|"fallback"), ...) from the root
        self.in_loop = in_loop
        self.in_fallback = in_fallback

    def inside(self, *, extras: Iterable[str] = (), branch: tuple | None = None, loop: bool = False,
               fallback: bool = False) -> "_Scope":
        return _Scope(self.extras | frozenset(extras), self.branch + ((branch,) if branch else ()),
                      self.in_loop or loop, self.in_fallback or fallback)


class _Validator:
    def __init__(self, file: str, lines: dict[str, int], known_agents: Iterable[str] | None,
                 known_teams: Iterable[str] | None) -> None:
        self.file = file
        self.lines = lines
        self.known_agents = set(known_agents) if known_agents is not None else None
        self.known_teams = set(known_teams) if known_teams is not None else None
        # Teams from config.toml given with their definitions: their members are checked
        # where a workflow uses them, as a workflow's own teams' members are.
        self.config_teams: dict = dict(known_teams) if isinstance(known_teams, Mapping) else {}
        self.problems: list[Problem] = []
        # Data flow: the names always produced so far, with an undo log for scoped walks.
        self.avail: set[str] = set()
        self.log: list[str] = []
        self.seen_ids: dict[str, str] = {}  # step id → path of its first use
        self.outputs: dict[str, list[tuple[str, str, tuple]]] = {}  # name → [(id, path, branch)]
        # The graphs being walked, innermost last.
        self.graphs: list[_Graph] = []

    # -- reporting ---------------------------------------------------------------------------
    def line(self, path: str) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = _parent(path)

    def report(self, path: str, message: str, *, line_of: str | None = None) -> None:
        """A problem at `path`; its line is that of `line_of` (default: the path itself)."""
        self.problems.append(Problem(self.file, path, message, self.line(path if line_of is None else line_of)))

    def missing(self, parent: str, key: str, message: str) -> None:
        self.report(child_path(parent, key), message, line_of=parent)

    # -- entry -------------------------------------------------------------------------------
    def run(self, doc: Any) -> list[Problem]:
        if not isinstance(doc, dict):
            self.report("", f"the top level must be a mapping with name and steps, not {describe_value(doc)}")
            return self.problems
        tree = _Tree(doc)
        if tree.too_many:
            self.report("steps", f"the workflow has more than {spec.MAX_STEPS} steps (nested and fallback steps "
                                 "included); split it into smaller workflows")
            return self.problems
        if tree.too_deep is not None:
            self.report(tree.too_deep, f"steps are nested more than {spec.MAX_STEP_DEPTH} levels deep; "
                                       "flatten the workflow")
            return self.problems
        self.tree = tree
        self.doc = doc
        inputs = doc.get("inputs")
        self.declared: dict | None = inputs if isinstance(inputs, dict) else None
        agents = doc.get("agents")
        self.workflow_agents = _names(agents)
        teams = doc.get("teams")
        self.workflow_teams = _names(teams)
        secrets = doc.get("secrets")
        self.secrets: set[str] | None = _names(secrets) if isinstance(secrets, dict) else None
        self.external = tree.external if self.declared is None else set()
        handling = doc.get("errorHandling")
        self.workflow_fallback = isinstance(handling, dict) and "fallback" in handling

        block = spec.WORKFLOW
        for name in block.required():
            if name not in doc:
                if name == "steps":
                    self.missing("", name, "the workflow has no steps; add a steps list with at least one step")
                else:
                    self.missing("", name, f"the workflow has no {name}; add {name}: ...")
        top = _Scope()
        for key, value in doc.items():
            path = child_path("", key) if isinstance(key, str) else ""
            field = block.by_name.get(key) if isinstance(key, str) else None
            if field is None:
                self.unknown_key(path, key, block.keys(), "in a workflow")
                continue
            if key == "steps":
                if isinstance(value, list) and not value:
                    self.report(path, "the workflow has no steps; steps must list at least one step")
                    continue
                if not self.check_type(field, value, path):
                    continue
                self.sequence(value, path, top)
            elif key == "errorHandling":
                # The workflow's fallback may stand in for any step, so it sees only the start state.
                saved = (self.avail, self.log, self.graphs)
                self.avail, self.log, self.graphs = set(), [], []
                self.field(field, value, path, top, None)
                self.avail, self.log, self.graphs = saved
            else:
                self.field(field, value, path, top, None)
        return self.problems

    # -- keys and values ---------------------------------------------------------------------
    def unknown_key(self, path: str, key: Any, allowed: Iterable[str], where: str) -> None:
        if not isinstance(key, str):
            self.report(path, f"keys must be strings, not {describe_value(key)}")
            return
        self.report(path, f"unknown key {key!r} {where}{did_you_mean(key, list(allowed))}")

    def check_type(self, field: Field, value: Any, path: str) -> bool:
        """The field's shape (type and constraints, list items and map entries); True if it fits."""
        return self.check_shape(field.shape, value, path, field.name)

    def check_shape(self, shape: spec.Shape, value: Any, path: str, label: str) -> bool:
        clause = shape.problem(value)
        if clause is not None:
            self.report(path, f"{label} {clause}")
            return False
        if isinstance(shape, spec.Union):
            shape = shape.branch(value)
        ok = True
        if isinstance(shape, spec.List):
            for i, item in enumerate(value):
                ok = self.check_shape(shape.item, item, child_path(path, i), f"{label}[{i}]") and ok
        elif isinstance(shape, spec.Map):
            for key, item in value.items():
                if not isinstance(key, str):
                    self.report(path, f"{label} keys must be strings, not {describe_value(key)}")
                    ok = False
                    continue
                item_path = child_path(path, key)
                if shape.key_pattern and not re.fullmatch(shape.key_pattern, key):
                    self.report(item_path, f"the name {key!r} in {label} {shape.key_help}")
                    ok = False
                ok = self.check_shape(shape.value, item, item_path, f"{label}.{key}") and ok
        elif isinstance(shape, spec.Ref):
            self.block(spec.block_named(shape.block), value, path, _Scope(), None)
        elif isinstance(shape, spec.AnyValue):
            ok = self.check_json_value(value, path, label)
        return ok

    def check_json_value(self, value: Any, path: str, label: str) -> bool:
        """Any value must still be plain JSON: finite numbers, string keys, at most 64 levels."""
        stack: list[tuple[Any, int]] = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > spec.MAX_VALUE_DEPTH:
                self.report(path, f"{label} is nested more than {spec.MAX_VALUE_DEPTH} levels deep")
                return False
            if isinstance(item, float) and not math.isfinite(item):
                self.report(path, f"{label} contains {describe_value(item)}; numbers must be finite")
                return False
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        self.report(path, f"{label} has a key that is not a string: {describe_value(key)}")
                        return False
                    stack.append((sub, depth + 1))
            elif isinstance(item, list):
                stack.extend((sub, depth + 1) for sub in item)
            elif spec.json_type(item) is None:
                self.report(path, f"{label} contains {describe_value(item)}, which is not a JSON value")
                return False
        return True

    def block(self, block: Block, value: dict, path: str, scope: _Scope, step: "_StepInfo | None") -> None:
        """A mapping with fixed keys (errorHandling, agent, team, input declaration, ...)."""
        for name in block.required():
            if name not in value:
                self.missing(path, name, f"{block.title.lower()} has no {name}")
        if block.exactly_one_of:
            present = [k for k in block.exactly_one_of if k in value]
            if len(present) != 1:
                options = ", ".join(block.exactly_one_of[:-1]) + f" or {block.exactly_one_of[-1]}"
                found = "none of them" if not present else "both " + " and ".join(present) if len(present) == 2 \
                    else ", ".join(present)
                self.report(path, f"{block.title.lower()} needs exactly one of {options}; it has {found}")
        where = {"errorHandling": "in errorHandling", "agent": "in an agent", "team": "in a team",
                 "inputDeclaration": "in an input declaration", "secret": "in a secret",
                 "notifications": "in notifications", "scheduleEntry": "in a schedule entry",
                 "config": f"in {os.path.basename(self.file)}",
                 "configDefaults": "in [defaults]", "slackConfig": "in [slack]",
                 "smtpConfig": "in [smtp]"}.get(block.name, f"in {block.name}")
        for key, item in value.items():
            item_path = child_path(path, key) if isinstance(key, str) else path
            field = block.by_name.get(key) if isinstance(key, str) else None
            if field is None:
                self.unknown_key(item_path, key, block.keys(), where)
                continue
            self.field(field, item, item_path, scope, step)
        if block is spec.AGENT and "headers" in value and "http" not in value:
            self.report(child_path(path, "headers"), "headers are only sent by http agents; this agent has no http")
        if block is spec.ERROR_HANDLING:
            self.error_handling_extra(value, path)
        if block is spec.INPUT_DECLARATION and "default" in value:
            wanted = value.get("type")
            if isinstance(wanted, str) and wanted in spec.INPUT_TYPES and not _has_input_type(value["default"], wanted):
                self.report(child_path(path, "default"), f"default must be {_INPUT_TYPE_WORDS[wanted]} (the declared "
                                                         f"type), not {describe_value(value['default'])}")

    def error_handling_extra(self, value: dict, path: str) -> None:
        delay, max_delay = value.get("delay"), value.get("maxDelay")
        if is_number(delay) and is_number(max_delay) and math.isfinite(delay) and math.isfinite(max_delay) \
                and max_delay < delay:
            self.report(child_path(path, "maxDelay"), f"maxDelay ({max_delay:g}) is less than delay ({delay:g})")
        if value.get("strategy") == "fallback" and "fallback" not in value and not self.workflow_fallback:
            self.report(child_path(path, "strategy"), "strategy is fallback, but there is no fallback step; "
                                                      "add errorHandling.fallback")

    def field(self, field: Field, value: Any, path: str, scope: _Scope, step: "_StepInfo | None") -> None:
        """One key: its type, then what its role asks for."""
        role = field.role
        if role in ("steps", "step", "branch", "fallback"):
            if not self.check_type(field, value, path):
                return
            self.children(field, value, path, scope, step)
            return
        if not self.check_type(field, value, path):
            return
        if role == "agent":
            self.check_agent(value, path, field.name)
        elif role == "agent-list":
            for i, name in enumerate(value):
                self.check_agent(name, child_path(path, i), "team member")
        elif role == "team":
            self.check_team(value, path)
        elif role == "input-names" and step is not None:
            for i, name in enumerate(value if isinstance(value, list) else [value]):
                name_path = child_path(path, i) if isinstance(value, list) else path
                self.check_state_name(name, name_path, scope, step)
        elif role == "expression" and step is not None and isinstance(value, str):
            self.check_expression(value, path, scope, step, "condition")
        elif role == "items" and step is not None and isinstance(value, str):
            if _is_bare_name(value):
                self.check_state_name(value.strip(), path, scope, step)
            else:
                self.check_expression(value, path, scope, step, "items")
        elif role == "template" and step is not None:
            for i, text in enumerate(value if isinstance(value, list) else [value]):
                text_path = child_path(path, i) if isinstance(value, list) else path
                self.check_template(text, text_path, scope, step, field.name, allow_task=field.name == "run")
        elif role == "env-templates" and step is not None:
            for key, text in value.items():
                if isinstance(text, str):
                    self.check_template(text, child_path(path, key), scope, step, f"env {key}", allow_task=False)
        elif role == "schedule":
            self.check_schedule(value, path)
        elif role == "agent-template":
            for i, text in enumerate(value if isinstance(value, list) else [value]):
                text_path = child_path(path, i) if isinstance(value, list) else path
                self.check_template(text, text_path, scope, None, "run", allow_task=True)

    def check_schedule(self, value: Any, path: str) -> None:
        """What the shapes of `schedule:` cannot say: cron syntax, zones that exist, bounds,
        and an input that the workflow's inputs accept (schedules.py)."""
        from wfctl.schedules import entry_problems, input_problems

        entries = value if isinstance(value, list) else [value]
        for i, entry in enumerate(entries):
            entry_path = child_path(path, i) if isinstance(value, list) else path
            if not isinstance(entry, dict):
                continue
            for key, message in entry_problems(entry):
                self.report(child_path(entry_path, key), message)
            given = entry.get("input", {})
            if isinstance(given, dict):
                input_path = child_path(entry_path, "input")
                for name, message in input_problems(self.doc, given):
                    self.report(child_path(input_path, name) if name else input_path, message)

    # -- steps -------------------------------------------------------------------------------
    def sequence(self, steps: list, path: str, scope: _Scope) -> None:
        if _has_depends(steps):
            self.graph_list(steps, path, scope, True)
            return
        for i, step in enumerate(steps):
            self.step(step, child_path(path, i), scope)

    # -- lists whose steps have depends ------------------------------------------------------
    def graph_list(self, steps: list, path: str, scope: _Scope, in_order: bool) -> None:
        """A list scheduled as a graph: its depends checked (ids of this list, no cycle),
        and each step walked seeing what the steps it depends on are sure to have
        produced. After the list: what the steps that always run produce, and every
        step's status."""
        entries = [(i, step, child_path(path, i)) for i, step in enumerate(steps)]
        ids = {step["id"]: i for i, step, _ in entries if isinstance(step, dict) and isinstance(step.get("id"), str)}
        requirements = self.list_requirements(entries, ids, in_order)
        if requirements is None:  # a depends problem was reported: walk it as written
            self.walk_as_written(entries, scope, in_order)
            return
        graph = _Graph(entries)
        # Per position, as bit masks over positions (a long chain stays linear): the
        # steps sure to have succeeded before it, and those sure to have ended.
        succeeded: dict[int, int] = {}
        ended: dict[int, int] = {}
        produced: dict[int, list[str]] = {}
        order = topological_order(range(len(entries)), {i: [ids[d] for d in r.ids()] if r else []
                                                         for i, r in requirements.items()})
        self.graphs.append(graph)
        try:
            for position in order:
                requirement = requirements[position]
                ok = [ids[d] for d in requirement.must_succeed()] if requirement else []
                done = [ids[d] for d in requirement.must_end()] if requirement else []
                succeeded[position] = _mask(ok, succeeded)
                ended[position] = _mask(done, {}) | succeeded[position] | _mask([], ended, ok)
                graph.succeeded, graph.ended = succeeded[position], ended[position]
                _, step, step_path = entries[position]
                mark = len(self.log)
                self.step(step, step_path, scope)
                produced[position] = self.log[mark:]
                self.undo(mark)
                for name in produced[position]:
                    graph.producer.setdefault(name, position)
        finally:
            self.graphs.pop()
        outcomes: dict[str, Outcome] = {}
        for position in order:
            requirement = requirements[position]
            if requirement is None or requirement.evaluate(outcomes) is True:  # it always runs
                step = entries[position][1]
                if isinstance(step.get("id"), str):
                    outcomes[step["id"]] = Outcome.SUCCEEDED
                for name in produced[position]:
                    self.produce(name)
        for _, step, _ in entries:
            for finished in _subtree_ids(step):
                self.produce(_FINISHED + finished)

    def available(self, name: str) -> bool:
        """Is a state name (or a `_FINISHED` mark) sure to exist here?"""
        return name in self.avail or any(graph.promises(name) for graph in self.graphs)

    def list_requirements(self, entries: list, ids: dict[str, int],
                          in_order: bool) -> dict[int, Depends | None] | None:
        """What each step of a list waits for; None when a depends is wrong (reported)."""
        requirements: dict[int, Depends | None] = {}
        sound = True
        for i, step, step_path in entries:
            if not isinstance(step, dict):
                sound = False
                continue
            if "depends" not in step:
                previous = entries[i - 1][1] if i > 0 else None
                own_previous = previous.get("id") if isinstance(previous, dict) else None
                requirements[i] = after(own_previous) if in_order and isinstance(own_previous, str) else None
                continue
            requirement = self.step_depends(step, child_path(step_path, "depends"), ids)
            if requirement is None:
                sound = False
            requirements[i] = requirement
        if not sound:
            return None
        cycles = find_cycles(range(len(entries)),
                             {i: [ids[d] for d in r.ids()] if r else [] for i, r in requirements.items()})
        for cycle in cycles:
            names = [str(entries[i][1].get("id")) for i in cycle]
            first = min((i for i in cycle if "depends" in entries[i][1]), default=cycle[0])
            self.report(child_path(entries[first][2], "depends"),
                        f"steps depend on each other in a cycle: {' → '.join(names)}")
        return None if cycles else requirements

    def step_depends(self, step: dict, path: str, ids: dict[str, int]) -> Depends | None:
        """A step's depends, parsed and checked against the ids of its list; None when
        it is wrong (reported here, or its type by the field check)."""
        value = step["depends"]
        if not (isinstance(value, str) and value) and not (isinstance(value, list) and all(
                isinstance(item, str) and _STEP_ID_RE.match(item) for item in value)):
            return None  # its type or an item is reported by the field check
        try:
            requirement = parse_depends(value).resolve(ids)
        except DependsError as err:
            where = f" (at character {err.position + 1})" if err.position is not None else ""
            self.report(path, f"invalid depends expression: {err.message}{where}")
            return None
        own = step.get("id")
        sound = True
        for target in requirement.ids():
            if target == own:
                self.report(path, f"step {own!r} depends on itself")
            elif target not in ids:
                self.report(path, self.unknown_dependency(target, ids))
            else:
                continue
            sound = False
        return requirement if sound else None

    def unknown_dependency(self, target: str, ids: dict[str, int]) -> str:
        head, _, prop = target.rpartition(".")
        if head in ids:
            return (f"depends names '{target}': '{prop}' is not a property of a step; use .succeeded, .failed, "
                    ".skipped or .completed")
        if target in self.tree.ids:
            return f"depends names '{target}', which is in another list: depends may only name steps of the same list"
        return f"depends names '{target}', but no step has that id{_suggest(target, ids)}"

    def walk_as_written(self, entries: list, scope: _Scope, in_order: bool) -> None:
        """A list whose depends are wrong: its steps are still checked, in order."""
        for _, step, step_path in entries:
            if in_order:
                self.step(step, step_path, scope)
            else:
                self.scoped(self.step, step, step_path, scope)

    def lone_depends(self, step: Any, path: str) -> None:
        """A step that is not in a list (a loop's step, a fallback, a branch written as
        one step) can only depend on nothing."""
        if isinstance(step, dict) and "depends" in step and isinstance(step.get("id"), str):
            self.step_depends(step, child_path(path, "depends"), {step["id"]: 0})

    def undo(self, mark: int) -> None:
        """Forget the names produced since `mark`."""
        added = self.log[mark:]
        del self.log[mark:]
        for name in added:
            self.avail.discard(name)

    def scoped(self, walk, *args) -> list[str]:
        """Run a walk whose new names must not outlive it; returns the names it produced."""
        mark = len(self.log)
        walk(*args)
        added = self.log[mark:]
        self.undo(mark)
        return added

    def produce(self, name: str) -> None:
        if name not in self.avail:
            self.avail.add(name)
            self.log.append(name)

    def children(self, field: Field, value: Any, path: str, scope: _Scope, step: "_StepInfo | None") -> None:
        role = field.role
        if role == "fallback":
            owner = step.path if step is not None else ""
            inner = scope.inside(extras=("error",), branch=(owner, "fallback"), fallback=True)
            self.lone_depends(value, path)
            self.scoped(self.step, value, path, inner)
            return
        if step is None:  # pragma: no cover - only steps own steps
            return
        if role == "steps":  # a parallel step's children: none sees its siblings (unless it depends on them)
            if _has_depends(value):
                step.pending.extend(self.scoped(self.graph_list, value, path, scope, False))
            else:
                for i, child in enumerate(value):
                    step.pending.extend(self.scoped(self.step, child, child_path(path, i), scope))
        elif role == "step":  # a loop body
            self.lone_depends(value, path)
            self.scoped(self.step, value, path, scope.inside(extras=("item", "index"), loop=True))
        elif role == "branch":
            inner = scope.inside(branch=(step.path, field.name))
            if isinstance(value, list):
                produced = self.scoped(self.sequence, value, path, inner)
            else:
                self.lone_depends(value, path)
                produced = self.scoped(self.step, value, path, inner)
            step.branches[field.name] = produced

    def step(self, step: Any, path: str, scope: _Scope) -> None:
        if not isinstance(step, dict):
            self.report(path, f"a step must be a mapping with at least an id, not {describe_value(step)}")
            return
        info = _StepInfo(path, step)
        raw_type = step.get("type", spec.DEFAULT_STEP_TYPE)
        known_type = isinstance(raw_type, str) and raw_type in spec.STEP_TYPES
        fields = spec.step_fields(raw_type) if known_type else None
        label = f"step '{info.id}'" if info.id else "this step"
        # Missing keys first: they belong to the step's own line.
        if "id" not in step:
            self.missing(path, "id", "this step has no id; every step needs a unique id")
        if known_type:
            type_block = spec.STEP_TYPE_BLOCKS[raw_type]
            for name in type_block.required():
                if name not in step:
                    self.missing(path, name, f"{label} has no {name}; a {raw_type} step needs {name}")
            if type_block.at_least_one_of and not any(k in step for k in type_block.at_least_one_of):
                self.report(path, f"{label} has neither agent nor run; a task step needs an agent "
                                  "(or a run command)")
        for key, value in step.items():
            key_path = child_path(path, key) if isinstance(key, str) else path
            if not isinstance(key, str):
                self.unknown_key(key_path, key, (), "in a step")
                continue
            if key == "id":
                self.step_id(value, key_path)
                continue
            if key == "type":
                if not known_type:
                    if isinstance(value, str):
                        self.report(key_path, f"unknown step type {value!r}{did_you_mean(value, spec.STEP_TYPES)} "
                                              f"(the types are {', '.join(spec.STEP_TYPES)})")
                    else:
                        self.report(key_path, f"type must be one of {', '.join(spec.STEP_TYPES)}, "
                                              f"not {describe_value(value)}")
                continue
            if fields is not None:
                field = fields.get(key)
            else:  # unknown type: check what can be checked, complain only about unknown keys
                owners = spec.FIELD_OWNERS.get(key)
                field = (spec.step_fields("task").get(key) if key in spec.COMMON_STEP_KEYS
                         else spec.step_fields(owners[0])[key] if owners else None)
            if field is None:
                owners = spec.FIELD_OWNERS.get(key)
                if owners:
                    if len(owners) == 1:
                        self.report(key_path, f"{key!r} is a {owners[0]} field; this step's type is {raw_type!r}")
                    else:
                        kinds = " and ".join(owners)
                        self.report(key_path, f"{key!r} is a field of {kinds} steps; this step's type is {raw_type!r}")
                elif key in spec.ERROR_HANDLING.by_name:
                    self.report(key_path, f"{key!r} is an errorHandling key; put it under errorHandling: in this "
                                          "step (or the workflow)")
                else:
                    allowed = list(fields) if fields is not None else sorted(spec.ALL_STEP_KEYS)
                    self.unknown_key(key_path, key, allowed, f"in a {raw_type} step" if known_type else "in a step")
                continue
            if key == "errorHandling" and isinstance(value, dict):
                self.block(spec.ERROR_HANDLING, value, key_path, scope, info)
                continue
            self.field(field, value, key_path, scope, info)
        # After the step: what it leaves behind for the steps that follow.
        if raw_type == "conditional" and known_type:
            then_names = info.branches.get("then", [])
            else_names = set(info.branches.get("else", []))
            for name in then_names:
                if name in else_names:
                    self.produce(name)
        for name in info.pending:
            self.produce(name)
        output = step.get("output")
        if isinstance(output, str) and _NAME_RE.fullmatch(output):
            self.register_output(output, path, info, scope)
            self.produce(output)
        # `steps.<id>` is readable once the step (and everything inside it: run or
        # skipped) is behind: a name no output can have marks it.
        for finished in _subtree_ids(step):
            self.produce(_FINISHED + finished)

    def step_id(self, value: Any, path: str) -> None:
        field = spec.STEP_COMMON[0]
        if not self.check_type(field, value, path):
            return
        first = self.seen_ids.get(value)
        if first is not None:
            where = f" (line {self.line(first)})" if self.line(first) is not None else ""
            self.report(path, f"duplicate step id {value!r}; it is already used by the step at {first}{where}")
        else:
            self.seen_ids[value] = _parent(path)

    def register_output(self, name: str, path: str, info: "_StepInfo", scope: _Scope) -> None:
        earlier = self.outputs.setdefault(name, [])
        for other_id, other_path, other_branch in earlier:
            if not _exclusive(scope.branch, path, other_branch, other_path):
                self.report(child_path(path, "output"), f"colliding output names: step {info.label!r} and step "
                                                         f"{other_id!r} ({other_path}) both produce {name!r}; "
                                                         "give one of them another output name")
                return
        earlier.append((info.label, path, scope.branch))

    # -- names -------------------------------------------------------------------------------
    def check_state_name(self, name: Any, path: str, scope: _Scope, step: "_StepInfo") -> None:
        """A name the step reads from state (`input:`, a bare `items`)."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            return  # already reported by the type check
        if self.available(name) or name in scope.extras:
            return
        if self.declared is not None and name in self.declared:
            return
        problem = self.not_yet(name, step)
        if problem:
            self.report(path, problem)
        elif self.declared is not None:
            candidates = set(self.avail) | set(self.declared) | scope.extras
            self.report(path, f"'{name}' is not produced by any step and is not a declared input"
                              f"{_suggest(name, candidates)}")
        # else: an external input, which must come from --input

    def not_yet(self, name: str, step: "_StepInfo") -> str | None:
        """When some step produces `name` but not always before `step`: say which."""
        producers = self.tree.producers.get(name)
        if not producers:
            return None
        for producer_id, _ in producers:
            if producer_id != step.label:
                for graph in reversed(self.graphs):
                    siblings = graph.sibling_of
                    if producer_id in siblings and siblings.get(step.label) != siblings[producer_id]:
                        return f"'{name}' is produced by step '{producer_id}', which is not sure to have " \
                               f"succeeded when '{step.label}' starts: a step reads what the steps it depends " \
                               "on produce (name it in depends)"
                return f"'{name}' is produced by step '{producer_id}', which does not always run before " \
                       f"'{step.label}'"
        return f"'{name}' is only produced by step '{step.label}' itself, which cannot read its own output"

    def check_expression(self, source: str, path: str, scope: _Scope, step: "_StepInfo", what: str) -> None:
        from wfctl.expressions import parse

        try:
            expression = parse(source)
        except ExpressionError as err:
            self.report(path, f"invalid expression in {what}: {_expression_message(err)}")
            return
        self.check_references(expression.references(), path, scope, step, what, allow_task=False)

    def check_template(self, text: str, path: str, scope: _Scope, step: "_StepInfo | None", what: str,
                       *, allow_task: bool) -> None:
        if "{{" not in text and "}}" not in text:
            return
        from wfctl.expressions import parse_template

        try:
            template = parse_template(text)
        except ExpressionError as err:
            self.report(path, f"invalid template in {what}: {_expression_message(err)}")
            return
        if step is not None:
            self.check_references(template.references(), path, scope, step, what, allow_task=allow_task)

    def check_references(self, refs: list[tuple], path: str, scope: _Scope, step: "_StepInfo", what: str,
                         *, allow_task: bool) -> None:
        done: set[Any] = set()
        for ref in refs:
            if not ref:
                continue
            root = ref[0]
            second = ref[1] if len(ref) > 1 else None
            if root in scope.extras or (allow_task and root == "task"):
                continue
            if root == "input":
                if self.declared is not None and isinstance(second, str) and second not in self.declared \
                        and ("input", second) not in done:
                    done.add(("input", second))
                    self.report(path, f"'input.{second}' in {what}: '{second}' is not a declared input"
                                      f"{did_you_mean(second, self.declared)}")
                continue
            if root == "steps":
                if not isinstance(second, str) or ("steps", second) in done:
                    continue
                done.add(("steps", second))
                third = ref[2] if len(ref) > 2 else None
                if second not in self.tree.ids:
                    self.report(path, f"'steps.{second}' in {what}: there is no step with the id '{second}'"
                                      f"{_suggest(second, self.tree.ids)}")
                elif third is not None and third not in ("status", "output"):
                    self.report(path, f"'steps.{second}.{third}' in {what}: a step has only status and output"
                                      f"{did_you_mean(str(third), ('status', 'output'))}")
                elif not self.available(_FINISHED + second):
                    self.report(path, f"'steps.{second}' in {what}: step '{second}' does not always run "
                                      f"before this one, so its status and output may not exist yet")
                continue
            if root == "secrets" and self.secrets is not None:
                if isinstance(second, str) and second not in self.secrets and ("secrets", second) not in done:
                    done.add(("secrets", second))
                    self.report(path, f"'secrets.{second}' in {what}: there is no secret named '{second}'"
                                      f"{did_you_mean(second, self.secrets)}")
                continue
            if self.available(root) or root in self.external:
                continue
            if self.declared is not None and root in self.declared:
                continue
            if root in done:
                continue
            done.add(root)
            self.report(path, self.unknown_name(root, what, scope, step))

    def unknown_name(self, root: str, what: str, scope: _Scope, step: "_StepInfo") -> str:
        later = self.not_yet(root, step)
        if later:
            return f"{later} (in {what})"
        if root in ("item", "index"):
            return f"'{root}' in {what} only exists inside a loop's step"
        if root == "error":
            return f"'error' in {what} only exists inside an errorHandling fallback step"
        if root == "secrets":
            return f"'secrets' in {what} is used, but the workflow has no secrets section"
        candidates = set(self.avail) | scope.extras | {"input", "steps"} | set(self.declared or ())
        return f"unknown name '{root}' in {what}; no earlier step produces it{_suggest(root, candidates)}"

    # -- agents and teams --------------------------------------------------------------------
    def check_agent(self, name: str, path: str, what: str) -> None:
        if self.known_agents is None:
            return
        if name in self.workflow_agents or name in self.known_agents or name in spec.BUILTIN_AGENTS:
            return
        existing = sorted(self.workflow_agents | self.known_agents | set(spec.BUILTIN_AGENTS))
        self.report(path, f"unknown agent {name!r}{_aside(did_you_mean(name, existing))}; the agents that exist are "
                          f"{_listing(existing)}; `wfctl agent add {name} --run CMD` adds one")

    def check_team(self, name: str, path: str) -> None:
        if self.known_teams is None:
            return
        if name in self.workflow_teams:
            return
        if name in self.known_teams:
            self.check_config_team_members(name, path)
            return
        existing = sorted(self.workflow_teams | self.known_teams)
        teams = _listing(existing) if existing else "none"
        self.report(path, f"unknown team {name!r}{_aside(did_you_mean(name, existing))}; the teams that exist are "
                          f"{teams}; add it under teams: or with "
                          f"`wfctl team add {name} --member AGENT --strategy round-robin`")

    def check_config_team_members(self, name: str, path: str) -> None:
        team = self.config_teams.get(name)
        members = team.get("members") if isinstance(team, dict) else None
        if self.known_agents is None or not isinstance(members, list):
            return
        known = self.workflow_agents | self.known_agents | set(spec.BUILTIN_AGENTS)
        for member in members:
            if isinstance(member, str) and member not in known:
                self.report(path, f"team {name!r} (from config.toml) has the member {member!r}, which is not an "
                                  f"agent{_aside(did_you_mean(member, sorted(known)))}; the agents that exist are "
                                  f"{_listing(sorted(known))}")


class _Graph:
    """A list being walked as a graph: which step of it produced each name, and what the
    step being walked is sure of (bit masks over the list's positions)."""

    __slots__ = ("producer", "sibling_of", "succeeded", "ended")

    def __init__(self, entries: list) -> None:
        self.producer: dict[str, int] = {}  # name (or _FINISHED mark) → position of its step
        # the id of every step inside the list → the position of its step in the list
        self.sibling_of = {sub: i for i, step, _ in entries if isinstance(step, dict) for sub in _subtree_ids(step)}
        self.succeeded = 0
        self.ended = 0

    def promises(self, name: str) -> bool:
        position = self.producer.get(name)
        if position is None:
            return False
        mask = self.ended if name.startswith(_FINISHED) else self.succeeded
        return bool(mask >> position & 1)


def _mask(positions: list[int], below: dict[int, int], through: list[int] = ()) -> int:
    """The bits of `positions` and of `below[p]` for each of them; with `through`, only
    `below[p]` for the positions in `through`."""
    mask = 0
    for position in positions:
        mask |= 1 << position | below.get(position, 0)
    for position in through:
        mask |= below.get(position, 0)
    return mask


class _StepInfo:
    """What the walk learns about one step while going through its keys."""

    __slots__ = ("path", "id", "label", "pending", "branches")

    def __init__(self, path: str, step: dict) -> None:
        sid = step.get("id")
        self.path = path
        self.id = sid if isinstance(sid, str) else None
        self.label = self.id or path
        self.pending: list[str] = []  # names its children produce (parallel), added after it
        self.branches: dict[str, list[str]] = {}  # conditional: names each branch produces


# -- helpers -------------------------------------------------------------------------------------
def _names(section: Any) -> set[str]:
    """The string keys of a section (agents, teams, secrets); anything else is reported elsewhere."""
    return {k for k in section if isinstance(k, str)} if isinstance(section, dict) else set()


def _parent(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rfind("[")]
    cut = path.rfind(".")
    return path[:cut] if cut >= 0 else ""


def _exclusive(branch_a: tuple, path_a: str, branch_b: tuple, path_b: str) -> bool:
    """Can two producers never both run? Across the branches of one conditional, or a step
    and its own fallback."""
    for (cond_a, side_a), (cond_b, side_b) in zip(branch_a, branch_b):
        if cond_a != cond_b:
            return False
        if side_a != side_b:
            return True
    shorter, longer, shorter_path = ((branch_a, branch_b, path_a) if len(branch_a) < len(branch_b)
                                     else (branch_b, branch_a, path_b))
    if len(longer) > len(shorter):
        owner, side = longer[len(shorter)]
        return side == "fallback" and owner == shorter_path
    return False


def _suggest(word: str, candidates: Iterable[str]) -> str:
    """did_you_mean over a possibly large set: prefilter to similar names first."""
    options = [c for c in candidates if isinstance(c, str)]
    if len(options) > 200:
        lowered = word.lower()
        options = [c for c in options if c[:1].lower() == lowered[:1] and abs(len(c) - len(word)) <= 3][:200]
    return did_you_mean(word, options)


def _aside(suggestion: str) -> str:
    """"; did you mean 'x'?" → " (did you mean 'x'?)", for the middle of a sentence."""
    return f" ({suggestion[2:]})" if suggestion else ""


def _listing(names: list[str]) -> str:
    if len(names) > _MAX_LISTED:
        return ", ".join(names[:_MAX_LISTED]) + f" and {len(names) - _MAX_LISTED} more"
    return ", ".join(names)


def _expression_message(err: ExpressionError) -> str:
    message = err.message.rstrip(".")
    if err.position is not None and "position" not in message:
        message += f" (at character {err.position + 1})"
    return message
