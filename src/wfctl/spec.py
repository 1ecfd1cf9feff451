"""The one definition of the workflow file format.

Every key a workflow file may hold is described here once: its accepted JSON types, whether it
is required, its constraints and its description. `validate.py` checks documents against these
tables and `schema.py` turns the same tables into the JSON Schema of `wfctl schema`, so the
validator and the schema cannot drift apart.

Vocabulary: a *shape* says what JSON value a key accepts (`String`, `Number`, `Boolean`,
`AnyValue`, `List`, `Map`, `Ref` to a named block, `StepRef`/`StepList` for steps, `Union`);
a *role* tells the validator what the value means beyond its type (an expression, a template,
an agent name, ...), which the schema cannot express.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

# -- names and limits ----------------------------------------------------------------------------
SCHEMA_ID = "https://wfctl.dev/schemas/workflow.schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

STEP_TYPES = ("task", "parallel", "conditional", "loop", "team")
DEFAULT_STEP_TYPE = "task"
ERROR_STRATEGIES = ("retry", "fallback", "fail", "continue")
BACKOFFS = ("exponential", "linear", "fixed")
TEAM_STRATEGIES = ("round-robin", "all", "first-success")
INPUT_TYPES = ("string", "number", "integer", "boolean", "object", "array")
NOTIFY_EVENTS = ("failed", "completed", "escalated", "cancelled", "timed_out")
SCHEDULE_OVERLAPS = ("skip", "queue", "allow")
SCHEDULE_CATCHUPS = ("none", "latest", "all")

# Step ids become parts of file names: letters, digits, '-', '_' and '.', 1-64 chars, not '.'/'..'.
STEP_ID_PATTERN = r"^(?!\.\.?$)[A-Za-z0-9_.-]{1,64}$"
STEP_ID_HELP = "may only contain letters, digits, '-', '_' and '.' (1 to 64 characters, not '.' or '..')"
# State names (`output`, `input`, declared inputs).
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
NAME_HELP = "must start with a letter or '_' and contain only letters, digits, '_', '-' and '.'"
# Agent and team names: the same rule as `wfctl agent add NAME` (config.py).
AGENT_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
AGENT_NAME_HELP = "may only contain letters, digits, '-', '_' and '.' (at most 64 characters)"
# Environment variable names (step/agent `env`, secret names).
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
ENV_NAME_HELP = "must be an environment variable name (letters, digits and '_', not starting with a digit)"
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
PYTHON_TARGET_PATTERN = rf"^{_DOTTED}:{_DOTTED}$"
PYTHON_TARGET_HELP = "must look like 'package.module:function'"
URL_PATTERN = r"^https?://[^\s]+$"
URL_HELP = "must be an http:// or https:// URL"
RETRY_ON_PATTERN = r"^(failed|timeout|exit:-?[0-9]{1,3})$"
RETRY_ON_HELP = "must be 'failed', 'timeout' or 'exit:N' (an exit code)"
# Schedules (schedules.py checks what a pattern cannot: cron syntax, zones that exist, bounds).
EVERY_PATTERN = r"^[0-9]{1,9}(\.[0-9]{1,6})?[smhd]$"
EVERY_HELP = "must be a duration such as 30s, 15m, 2h or 1d"
# IANA zone names; they become paths under the system's zoneinfo directory, so no '..' or '/' at the start.
TIMEZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,3}$"
TIMEZONE_HELP = "must be an IANA time zone name such as Europe/Paris or UTC"
# Names people read on a terminal (a workflow's or a step's name): no control characters,
# which could move the cursor or rewrite the screen, and no bidi overrides, which reorder text.
SHOWN_NAME_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f\\u202a-\\u202e\\u2066-\\u2069]*$"
SHOWN_NAME_HELP = "must not contain control characters (newlines, tabs, escape sequences, NUL) or bidi overrides"
EXECUTOR_PATTERN = r"^(local|(dask|tcp)://[^\s/]+)$"
EXECUTOR_HELP = "must be local or dask://HOST:PORT"

MAX_STEPS = 10_000  # steps in the whole tree, nested and fallback steps included
MAX_STEP_DEPTH = 32  # levels of step nesting
MAX_VALUE_DEPTH = 64  # levels of nested lists/mappings anywhere in a document (loader.MAX_DEPTH)
# Iterations of one loop, whether a count, a literal list or what an expression gives at run
# time: every iteration is a record, so an unbounded loop would exhaust memory and disk.
MAX_LOOP_ITEMS = 1_000_000

BUILTIN_AGENTS = ("echo",)


# -- shapes --------------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    """A JSON number: int or float, never bool (bool is a subclass of int in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe_value(value: Any) -> str:
    """What was found, for messages: "the string '3'", "the boolean false", "a list"."""
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN (not a number)"
        if math.isinf(value):
            return "infinity" if value > 0 else "minus infinity"
        return f"the number {value:g}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    import datetime

    if isinstance(value, (datetime.date, datetime.time)):  # TOML has dates and times
        return f"the date/time {value.isoformat()}"
    return "a value that is not JSON"


def json_type(value: Any) -> str | None:
    """The JSON type name of a Python value, or None when it is not a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


class Shape:
    """What JSON value a key accepts."""

    def describe(self) -> str:  # "a positive number"
        raise NotImplementedError

    def accepts_type(self, value: Any) -> bool:
        """True when the value has the right JSON type (constraints are checked separately)."""
        raise NotImplementedError

    def constraint_problem(self, value: Any) -> str | None:
        """For a value of the right type: a clause such as "must be at least 1, not 0"."""
        return None

    def problem(self, value: Any) -> str | None:
        """None when the value fits; else a clause to put after the key's name."""
        if not self.accepts_type(value):
            return f"must be {self.describe()}, not {describe_value(value)}{quote_hint(self, value)}"
        return self.constraint_problem(value)

    def json_schema(self) -> dict:
        raise NotImplementedError


def quote_hint(shape: Shape, value: Any) -> str:
    """YAML 1.1 reads unquoted no/yes/on/off as booleans and 012 as a number: say how to fix it."""
    wants_string = isinstance(shape, String) or (
        isinstance(shape, Union) and any(isinstance(s, String) for s in shape.shapes)
    )
    if wants_string and (isinstance(value, bool) or (is_number(value) and math.isfinite(value))):
        return " (put the value in quotes to make it a string)"
    return ""


@dataclass(frozen=True)
class String(Shape):
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    pattern_help: str | None = None
    min_length: int = 0
    max_length: int | None = None
    format: str | None = None
    what: str = "a string"

    def describe(self) -> str:
        if self.enum:
            return "one of " + ", ".join(self.enum)
        if self.min_length:
            return "a non-empty string"
        return self.what

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, str)

    def constraint_problem(self, value: Any) -> str | None:
        if self.enum is not None and value not in self.enum:
            return f"must be one of {', '.join(self.enum)}, not {value!r}{did_you_mean(value, self.enum)}"
        if len(value) < self.min_length:
            return "must not be empty"
        if self.max_length is not None and len(value) > self.max_length:
            return f"must be at most {self.max_length} characters, not {len(value)}"
        # fullmatch: `$` alone would let a trailing newline through ("abc\n" as a step id).
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"{self.pattern_help or 'has the wrong form'}, not {value!r}"
        return None

    def json_schema(self) -> dict:
        schema: dict[str, Any] = {"type": "string"}
        if self.enum:
            schema["enum"] = list(self.enum)
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        if self.pattern:
            schema["pattern"] = self.pattern
        if self.format:
            schema["format"] = self.format
        return schema


@dataclass(frozen=True)
class Number(Shape):
    integer: bool = False
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None

    def describe(self) -> str:
        noun = "integer" if self.integer else "number"
        if self.exclusive_minimum == 0 or (self.integer and self.minimum == 1):
            return f"a positive {noun}"
        if self.minimum == 0:
            return f"a non-negative {noun}"
        if self.minimum is not None:
            return f"{'an' if self.integer else 'a'} {noun} of at least {self.minimum:g}"
        return f"an {noun}" if self.integer else f"a {noun}"

    def accepts_type(self, value: Any) -> bool:
        if not is_number(value):
            return False
        if self.integer and not isinstance(value, int):
            return False
        return not (isinstance(value, float) and not math.isfinite(value))

    def constraint_problem(self, value: Any) -> str | None:
        if self.exclusive_minimum is not None and value <= self.exclusive_minimum:
            return f"must be {self.describe()}, not {describe_value(value)}"
        if self.minimum is not None and value < self.minimum:
            return f"must be {self.describe()}, not {describe_value(value)}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum:,}, not {value:,}"
        return None

    def json_schema(self) -> dict:
        schema: dict[str, Any] = {"type": "integer" if self.integer else "number"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.exclusive_minimum is not None:
            schema["exclusiveMinimum"] = self.exclusive_minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@dataclass(frozen=True)
class Boolean(Shape):
    def describe(self) -> str:
        return "true or false"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, bool)

    def json_schema(self) -> dict:
        return {"type": "boolean"}


@dataclass(frozen=True)
class AnyValue(Shape):
    """Any JSON value (numbers must be finite; checked document-wide by the validator)."""

    def describe(self) -> str:
        return "any JSON value"

    def accepts_type(self, value: Any) -> bool:
        return True

    def json_schema(self) -> dict:
        return {}


@dataclass(frozen=True)
class List(Shape):
    item: Shape
    min_items: int = 0
    max_items: int | None = None
    what: str | None = None

    def describe(self) -> str:
        if self.what:
            return self.what
        inner = self.item.describe()
        plural = _plural(inner)
        return f"a non-empty list of {plural}" if self.min_items else f"a list of {plural}"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, list)

    def constraint_problem(self, value: Any) -> str | None:
        if len(value) < self.min_items:
            return f"must be {self.describe()}, not an empty list"
        if self.max_items is not None and len(value) > self.max_items:
            return f"must have at most {self.max_items:,} items, not {len(value):,}"
        return None

    def json_schema(self) -> dict:
        schema: dict[str, Any] = {"type": "array", "items": self.item.json_schema()}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.max_items is not None:
            schema["maxItems"] = self.max_items
        return schema


@dataclass(frozen=True)
class Map(Shape):
    """A mapping with free keys (names chosen by the author) and values of one shape."""

    value: Shape
    key_pattern: str | None = None
    key_help: str | None = None
    what: str = "a mapping"

    def describe(self) -> str:
        return self.what

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, dict)

    def json_schema(self) -> dict:
        schema: dict[str, Any] = {"type": "object", "additionalProperties": self.value.json_schema()}
        if self.key_pattern:
            schema["propertyNames"] = {"pattern": self.key_pattern}
        return schema


@dataclass(frozen=True)
class Ref(Shape):
    """A mapping described by one of the blocks below (errorHandling, agent, team, ...)."""

    block: str
    what: str = "a mapping"

    def describe(self) -> str:
        return self.what

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, dict)

    def json_schema(self) -> dict:
        return {"$ref": f"#/$defs/{self.block}"}


@dataclass(frozen=True)
class StepRef(Shape):
    """One step (a mapping with at least an id)."""

    def describe(self) -> str:
        return "a step (a mapping with an id)"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, dict)

    def json_schema(self) -> dict:
        return {"$ref": "#/$defs/step"}


@dataclass(frozen=True)
class StepList(Shape):
    min_items: int = 1

    def describe(self) -> str:
        return "a non-empty list of steps" if self.min_items else "a list of steps"

    def accepts_type(self, value: Any) -> bool:
        return isinstance(value, list)

    def constraint_problem(self, value: Any) -> str | None:
        if len(value) < self.min_items:
            return f"must be {self.describe()}, not an empty list"
        return None

    def json_schema(self) -> dict:
        schema: dict[str, Any] = {"type": "array", "items": {"$ref": "#/$defs/step"}}
        if self.min_items:
            schema["minItems"] = self.min_items
        return schema


@dataclass(frozen=True)
class Union(Shape):
    """One of several shapes; the value's JSON type picks the branch."""

    shapes: tuple[Shape, ...]
    what: str | None = None

    def describe(self) -> str:
        if self.what:
            return self.what
        return " or ".join(s.describe() for s in self.shapes)

    def branch(self, value: Any) -> Shape | None:
        for shape in self.shapes:
            if shape.accepts_type(value):
                return shape
        return None

    def accepts_type(self, value: Any) -> bool:
        return self.branch(value) is not None

    def constraint_problem(self, value: Any) -> str | None:
        shape = self.branch(value)
        return shape.constraint_problem(value) if shape is not None else None

    def json_schema(self) -> dict:
        return {"anyOf": [s.json_schema() for s in self.shapes]}


def _plural(description: str) -> str:
    for article in ("a ", "an "):
        if description.startswith(article):
            noun = description[len(article):]
            if noun.startswith("step ("):
                return "steps"
            head, _, rest = noun.partition(" (")
            plural = head + "s"
            return plural + (f" ({rest}" if rest else "")
    return description


def did_you_mean(word: Any, candidates: Any) -> str:
    """"; did you mean 'maxRetries'?" or "" (case-insensitive first, then difflib)."""
    import difflib

    if not isinstance(word, str) or not word:
        return ""
    options = [c for c in candidates if isinstance(c, str)]
    lowered = {c.lower(): c for c in options}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f"; did you mean {lowered[word.lower()]!r}?"
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not match:
        match = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
        match = [lowered[m] for m in match]
    return f"; did you mean {match[0]!r}?" if match else ""


# -- fields and blocks ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """One key of a mapping in a workflow file."""

    name: str
    shape: Shape
    description: str
    required: bool = False
    role: str | None = None  # what the validator checks beyond the type (see validate.py)
    default: Any = None


@dataclass(frozen=True)
class Block:
    """A mapping with fixed keys: the workflow itself, errorHandling, an agent, a step type, ..."""

    name: str
    title: str
    description: str
    fields: tuple[Field, ...]
    exactly_one_of: tuple[str, ...] = ()
    at_least_one_of: tuple[str, ...] = ()
    by_name: dict[str, Field] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    def keys(self) -> list[str]:
        return [f.name for f in self.fields]

    def required(self) -> list[str]:
        return [f.name for f in self.fields if f.required]


_STR = String()
_STR_OR_ARGV = Union((String(), List(String(), min_items=1, what="a non-empty list of strings (argv)")),
                     what="a string or a non-empty list of strings")
_ENV_VALUE = Union((String(), Number(), Boolean()), what="a string, number or boolean")
_ENV_MAP = Map(_ENV_VALUE, key_pattern=ENV_NAME_PATTERN, key_help=ENV_NAME_HELP,
               what="a mapping of environment variable names to strings, numbers or booleans")
_POSITIVE_SECONDS = Number(exclusive_minimum=0)

ERROR_HANDLING = Block(
    "errorHandling",
    "Error handling",
    "What happens when a step fails. At the workflow level it is the default for every step; "
    "a step's own errorHandling overrides it key by key. On a parallel, conditional or loop step, "
    "its retry fields are the default of the steps inside it.",
    (
        Field("strategy", String(enum=ERROR_STRATEGIES),
              "What follows the last failed attempt. retry: retry (3 times unless maxRetries says), then fail; "
              "fallback: run the fallback step instead; fail: fail the execution; continue: record the failure "
              "and go on. Without a strategy, a policy that sets a retry field (maxRetries, backoff, delay, "
              "maxDelay, jitter, retryOn, maxDuration) is retry."),
        Field("maxRetries", Number(integer=True, minimum=0), "Retries after the first attempt (0 = none), whatever the strategy."),
        Field("backoff", String(enum=BACKOFFS), "How the wait between attempts grows."),
        Field("delay", Number(minimum=0), "Seconds to wait before the first retry."),
        Field("maxDelay", _POSITIVE_SECONDS, "Upper bound, in seconds, of the wait between attempts."),
        Field("jitter", Boolean(), "Randomise each wait a little so retries do not arrive together."),
        Field("retryOn", List(String(pattern=RETRY_ON_PATTERN, pattern_help=RETRY_ON_HELP)),
              "Which failures are retried: 'failed', 'timeout' or 'exit:N' (default: all)."),
        Field("maxDuration", _POSITIVE_SECONDS,
              "Seconds from the step's first attempt: no retry follows when its wait would end later."),
        Field("escalateOnFailure", Boolean(), "When the step finally fails, escalate it."),
        Field("escalateTo", String(pattern=AGENT_NAME_PATTERN, pattern_help=AGENT_NAME_HELP),
              "The agent that receives escalations.", role="agent"),
        Field("notifyOnError", Boolean(), "Send a notification (see notifications) when a step fails."),
        Field("fallback", StepRef(),
              "The step run in place of a failed one (strategy: fallback); `error` is in scope there. "
              "Its id must be unique in the workflow like any other step's.", role="fallback"),
    ),
)

NOTIFICATIONS = Block(
    "notifications",
    "Notifications",
    "Where failures, completions and escalations are reported.",
    (
        Field("webhook", String(pattern=URL_PATTERN, pattern_help=URL_HELP, format="uri"),
              "A URL that receives the event as a JSON POST (a Slack incoming webhook works as is)."),
        Field("slack", String(min_length=1),
              "A Slack channel, sent through the Slack webhook configured in config.toml."),
        Field("email", String(min_length=1), "An email address, sent through the SMTP server in config.toml."),
        Field("command", String(min_length=1), "A command that receives the event JSON on stdin."),
        Field("on", List(String(enum=NOTIFY_EVENTS),
                         what="a list of events (failed, completed, escalated, cancelled, timed_out)"),
              "The events that are reported: failed, completed, escalated, cancelled, timed_out (default: all)."),
    ),
)

AGENT = Block(
    "agent",
    "Agent",
    "A named worker: exactly one of run (a command), python (a function) or http (a URL).",
    (
        Field("run", _STR_OR_ARGV,
              "A shell command (a string, `{{ task }}` templates allowed) or an argv list run without a shell.",
              role="agent-template"),
        Field("python", String(pattern=PYTHON_TARGET_PATTERN, pattern_help=PYTHON_TARGET_HELP),
              "A Python function 'package.module:function' called in-process with the context."),
        Field("http", String(pattern=URL_PATTERN, pattern_help=URL_HELP, format="uri"),
              "A URL that receives the context as a JSON POST."),
        Field("headers", Map(_STR, what="a mapping of header names to strings"),
              "HTTP headers sent with every request (http agents only)."),
        Field("env", _ENV_MAP, "Environment variables for the agent's command."),
        Field("cwd", _STR, "Working directory of the agent's command."),
        Field("description", _STR, "What this agent does."),
    ),
    exactly_one_of=("run", "python", "http"),
)

TEAM = Block(
    "team",
    "Team",
    "A named group of agents that a team step gives its task to.",
    (
        Field("members",
              List(String(pattern=AGENT_NAME_PATTERN, pattern_help=AGENT_NAME_HELP), min_items=1,
                   what="a non-empty list of agent names"),
              "The agents of the team, in order.", required=True, role="agent-list"),
        Field("strategy", String(enum=TEAM_STRATEGIES),
              "round-robin: one member per task in turn; all: every member (output is a map "
              "member → result); first-success: members in order until one succeeds.",
              default="round-robin"),
        Field("description", _STR, "What this team does."),
    ),
)

INPUT_DECLARATION = Block(
    "inputDeclaration",
    "Input declaration",
    "One value the execution expects in --input.",
    (
        Field("type", String(enum=INPUT_TYPES), "The JSON type the value must have."),
        Field("required", Boolean(), "The execution refuses to start without it (default false).",
              default=False),
        Field("default", AnyValue(), "The value used when --input does not give one."),
        Field("description", _STR, "What the value is."),
    ),
)

SECRET = Block(
    "secret",
    "Secret",
    "Where a secret's value comes from: exactly one of env (an environment variable) or file (a path). "
    "Secret values are masked in logs and traces.",
    (
        Field("env", String(pattern=ENV_NAME_PATTERN, pattern_help=ENV_NAME_HELP),
              "The environment variable that holds the value."),
        Field("file", String(min_length=1), "A file whose content is the value."),
    ),
    exactly_one_of=("env", "file"),
)

SCHEDULE_ENTRY = Block(
    "scheduleEntry",
    "Schedule entry",
    "When `wfctl scheduler` starts a run of this workflow: exactly one of cron or every, "
    "and what to do with runs that overlap or were missed.",
    (
        Field("cron", String(min_length=1, max_length=200),
              "A cron expression with 5 fields (minute hour day-of-month month day-of-week) or an alias "
              "(@yearly, @monthly, @weekly, @daily, @hourly), in `timezone`.", role="cron"),
        Field("every", String(pattern=EVERY_PATTERN, pattern_help=EVERY_HELP, max_length=20,
                              what="a duration such as 30s, 15m, 2h or 1d"),
              "An interval (s, m, h, d; at least 1s), counted from 1970-01-01T00:00Z: 15m runs at :00, :15, "
              ":30 and :45."),
        Field("timezone", String(pattern=TIMEZONE_PATTERN, pattern_help=TIMEZONE_HELP, max_length=64),
              "The IANA time zone of a cron expression (default: the machine's); runs follow its daylight "
              "saving time."),
        Field("input", Map(AnyValue(), what="a mapping of input names to values"),
              "The --input of the scheduled runs; checked against the workflow's inputs."),
        Field("overlap", String(enum=SCHEDULE_OVERLAPS),
              "When a run is due while an earlier scheduled run is still going: skip it (recorded as "
              "skipped), queue it until the earlier one ends, or allow both at once.", default="skip"),
        Field("catchup", String(enum=SCHEDULE_CATCHUPS),
              "Runs missed while the scheduler was not running: none, the latest one, or all of them "
              "(at most maxCatchup, one after another).", default="latest"),
        Field("maxCatchup", Number(integer=True, minimum=1),
              "With catchup: all, at most this many missed runs are started, the latest ones (default 10)."),
        Field("jitter", Number(minimum=0),
              "Start each run up to this many seconds late (at most 86400), to spread runs that share a time."),
    ),
    exactly_one_of=("cron", "every"),
)

WORKFLOW = Block(
    "workflow",
    "wfctl workflow",
    "A workflow file of wfctl (YAML or JSON). The request body of the Workflows API's "
    "'Create Workflow' is a valid workflow file.",
    (
        Field("$schema", _STR, "The URL of this schema, for editors; ignored by wfctl."),
        Field("name", String(min_length=1, pattern=SHOWN_NAME_PATTERN, pattern_help=SHOWN_NAME_HELP),
              "The workflow's name, unique among registered workflows.", required=True),
        Field("description", _STR, "What the workflow does."),
        Field("category", _STR, "A free category, used by `wfctl list --category`."),
        Field("timeout", _POSITIVE_SECONDS, "Seconds the whole execution may take."),
        Field("inputs",
              Map(Ref("inputDeclaration"), key_pattern=NAME_PATTERN, key_help=NAME_HELP,
                  what="a mapping of input names to declarations"),
              "Declares the values of --input; undeclared names are then refused.", role="inputs"),
        Field("errorHandling", Ref("errorHandling"), "The default error handling of every step."),
        Field("notifications", Ref("notifications"), "Where failures and completions are reported."),
        Field("agents",
              Map(Ref("agent"), key_pattern=AGENT_NAME_PATTERN, key_help=AGENT_NAME_HELP,
                  what="a mapping of agent names to definitions"),
              "Agents defined by this workflow; they win over the agents in config.toml."),
        Field("teams",
              Map(Ref("team"), key_pattern=AGENT_NAME_PATTERN, key_help=AGENT_NAME_HELP,
                  what="a mapping of team names to definitions"),
              "Teams defined by this workflow; they win over the teams in config.toml."),
        Field("secrets",
              Map(Ref("secret"), key_pattern=ENV_NAME_PATTERN, key_help=ENV_NAME_HELP,
                  what="a mapping of secret names to sources"),
              "Secrets available to templates as `secrets.NAME`."),
        Field("maxConcurrency", Number(integer=True, minimum=1),
              "At most this many steps of a list whose steps have depends run at once "
              "(default: the machine's CPU count)."),
        Field("schedule",
              Union((Ref("scheduleEntry"),
                     List(Ref("scheduleEntry"), min_items=1, what="a non-empty list of schedule entries")),
                    what="a schedule entry or a non-empty list of them"),
              "When `wfctl scheduler` runs this workflow: one entry or a list of entries.", role="schedule"),
        Field("steps", StepList(min_items=1), "The steps, run in order.", required=True, role="steps"),
    ),
)

# Fields every step has.
STEP_COMMON: tuple[Field, ...] = (
    Field("id", String(pattern=STEP_ID_PATTERN, pattern_help=STEP_ID_HELP),
          "The step's id, unique in the whole workflow (nested and fallback steps included).",
          required=True, role="id"),
    Field("type", String(enum=STEP_TYPES), "The kind of step (default task).", default=DEFAULT_STEP_TYPE),
    Field("name", String(pattern=SHOWN_NAME_PATTERN, pattern_help=SHOWN_NAME_HELP), "A human-readable name."),
    Field("description", _STR, "What the step does."),
    Field("input",
          Union((String(pattern=NAME_PATTERN, pattern_help=NAME_HELP),
                 List(String(pattern=NAME_PATTERN, pattern_help=NAME_HELP), what="a list of names")),
                what="a name or a list of names"),
          "The state values the step receives: outputs of earlier steps or execution inputs.",
          role="input-names"),
    Field("output", String(pattern=NAME_PATTERN, pattern_help=NAME_HELP),
          "The name under which the step's result is stored in the execution's state.", role="output-name"),
    Field("timeout", _POSITIVE_SECONDS, "Seconds one attempt of the step may take."),
    Field("errorHandling", Ref("errorHandling"), "Overrides the workflow's errorHandling for this step."),
    Field("env", _ENV_MAP, "Environment variables for the step (`{{ }}` templates allowed in values).",
          role="env-templates"),
    Field("cwd", _STR, "Working directory of the step's command."),
    Field("depends",
          Union((String(min_length=1),
                 List(String(pattern=STEP_ID_PATTERN, pattern_help=STEP_ID_HELP), what="a list of step ids")),
                what="a list of step ids or an expression string"),
          "The steps of the same list this one waits for: a list of ids (each must succeed, or fail "
          "under strategy continue), or an expression such as `build && (test.succeeded || test.failed)` "
          "with the properties .succeeded, .failed, .skipped and .completed. Without it a step waits for "
          "the step before it (in a parallel step: for nothing); [] starts it at once.",
          role="depends"),
)

STEP_TYPE_BLOCKS: dict[str, Block] = {
    "task": Block(
        "task", "Task step", "Runs one agent, or the shell command `run`.",
        (
            Field("agent", String(pattern=AGENT_NAME_PATTERN, pattern_help=AGENT_NAME_HELP),
                  "The agent that does the task.", role="agent"),
            Field("run", _STR_OR_ARGV,
                  "A command run in place of an agent: a shell string (templates become environment "
                  "variables, never shell text) or an argv list.", role="template"),
            Field("task", _STR, "The task given to the agent (`{{ }}` templates allowed).", role="template"),
        ),
        at_least_one_of=("agent", "run"),
    ),
    "parallel": Block(
        "parallel", "Parallel step", "Runs its steps at the same time.",
        (
            Field("steps", StepList(min_items=1), "The steps run at the same time.", required=True,
                  role="steps"),
            Field("maxConcurrency", Number(integer=True, minimum=1), "At most this many steps at once."),
        ),
    ),
    "conditional": Block(
        "conditional", "Conditional step", "Evaluates the condition and runs one branch.",
        (
            Field("condition", Union((String(min_length=1), Boolean()), what="an expression string or a boolean"),
                  "An expression, e.g. `test-results.passed === true`.", required=True, role="expression"),
            Field("then", Union((StepRef(), StepList(min_items=1)), what="a step or a non-empty list of steps"),
                  "What runs when the condition is true.", required=True, role="branch"),
            Field("else", Union((StepRef(), StepList(min_items=0)), what="a step or a list of steps"),
                  "What runs when the condition is false.", role="branch"),
        ),
    ),
    "loop": Block(
        "loop", "Loop step", "Runs `step` once per item; `item` and `index` are in scope.",
        (
            Field("items",
                  Union((String(min_length=1), List(AnyValue(), max_items=MAX_LOOP_ITEMS),
                         Number(integer=True, minimum=0, maximum=MAX_LOOP_ITEMS)),
                        what="a state name or expression, a list, or a non-negative count"),
                  f"What to loop over: a state name or expression, a literal list, or a count "
                  f"(at most {MAX_LOOP_ITEMS:,} items).",
                  required=True, role="items"),
            Field("step", StepRef(), "The step run for each item.", required=True, role="step"),
            Field("maxConcurrency", Number(integer=True, minimum=1), "Items run at once (default 1)."),
        ),
    ),
    "team": Block(
        "team", "Team step", "Gives the task to a team; the team's strategy decides who does it.",
        (
            Field("teamId", String(pattern=AGENT_NAME_PATTERN, pattern_help=AGENT_NAME_HELP),
                  "The team (from the workflow's teams or config.toml).", required=True, role="team"),
            Field("task", _STR, "The task given to the team (`{{ }}` templates allowed).", role="template"),
        ),
    ),
}

BLOCKS: dict[str, Block] = {
    b.name: b for b in (WORKFLOW, ERROR_HANDLING, NOTIFICATIONS, AGENT, TEAM, INPUT_DECLARATION, SECRET, SCHEDULE_ENTRY)
}

COMMON_STEP_KEYS = frozenset(f.name for f in STEP_COMMON)


# -- config.toml ---------------------------------------------------------------------------------
_TABLE = "a table"
# The user's config file is checked with the same machinery as workflow files (validate.py's
# `validate_config`); these blocks are not part of the workflow schema.
CONFIG_DEFAULTS = Block(
    "configDefaults",
    "Defaults",
    "Defaults that apply when a workflow says nothing.",
    (
        Field("max_concurrency", Number(integer=True, minimum=1),
              "Children of a parallel step, or team members, run at once when the step says nothing.",
              default=4),
        Field("max_running", Number(integer=True, minimum=1),
              "At most this many executions run at once; detached runs wait for a slot."),
        Field("infrastructure_retries", Number(integer=True, minimum=0),
              "Attempts lost to the infrastructure (a dead worker) that are run again, apart from the "
              "step's own retries."),
    ),
)

SLACK_CONFIG = Block(
    "slackConfig",
    "Slack",
    "How `notifications.slack` reaches Slack.",
    (
        Field("webhook", String(pattern=URL_PATTERN, pattern_help=URL_HELP, format="uri"),
              "The Slack incoming webhook URL."),
    ),
)

SMTP_CONFIG = Block(
    "smtpConfig",
    "SMTP",
    "The mail server that `notifications.email` goes through.",
    (
        Field("host", String(min_length=1), "The SMTP server's host name."),
        Field("port", Number(integer=True, minimum=1, maximum=65535), "Its port (default 25, or 465 with ssl)."),
        Field("sender", String(min_length=1), "The From address (default wfctl@<hostname>)."),
        Field("username", _STR, "Login name (with password)."),
        Field("password", _STR, "Login password (with username)."),
        Field("starttls", Boolean(), "Upgrade the connection with STARTTLS."),
        Field("ssl", Boolean(), "Connect with TLS from the start."),
    ),
)

CONFIG = Block(
    "config",
    "config.toml",
    "The user's configuration: agents, teams, defaults and notification transports.",
    (
        Field("defaults", Ref("configDefaults", what=_TABLE), "Defaults that apply when a workflow says nothing."),
        Field("executor", String(pattern=EXECUTOR_PATTERN, pattern_help=EXECUTOR_HELP,
                                 what="a string: local or dask://HOST:PORT"),
              "Where steps run: local, or a Dask scheduler dask://HOST:PORT."),
        Field("agents",
              Map(Ref("agent", what="a table (with run, python or http)"), key_pattern=AGENT_NAME_PATTERN,
                  key_help=AGENT_NAME_HELP, what="a table of agent names to definitions"),
              "Agents every workflow can use."),
        Field("teams",
              Map(Ref("team", what="a table (with members and strategy)"), key_pattern=AGENT_NAME_PATTERN,
                  key_help=AGENT_NAME_HELP, what="a table of team names to definitions"),
              "Teams every workflow can use."),
        Field("slack", Ref("slackConfig", what=_TABLE), "The Slack webhook of `notifications.slack`."),
        Field("smtp", Ref("smtpConfig", what=_TABLE), "The mail server of `notifications.email`."),
    ),
)

CONFIG_BLOCKS: dict[str, Block] = {b.name: b for b in (CONFIG, CONFIG_DEFAULTS, SLACK_CONFIG, SMTP_CONFIG)}


def block_named(name: str) -> Block:
    """The block a `Ref` names, in workflow files or in config.toml."""
    return BLOCKS.get(name) or CONFIG_BLOCKS[name]


def step_fields(step_type: str) -> dict[str, Field]:
    """Every field a step of this type may have (common ones first)."""
    return _STEP_FIELDS[step_type]


_STEP_FIELDS: dict[str, dict[str, Field]] = {
    t: {**{f.name: f for f in STEP_COMMON}, **block.by_name} for t, block in STEP_TYPE_BLOCKS.items()
}

# Which step types own a key that is not common: {"items": ("loop",), "maxConcurrency": ("parallel", "loop")}
FIELD_OWNERS: dict[str, tuple[str, ...]] = {}
for _type, _block in STEP_TYPE_BLOCKS.items():
    for _f in _block.fields:
        FIELD_OWNERS[_f.name] = FIELD_OWNERS.get(_f.name, ()) + (_type,)
ALL_STEP_KEYS = frozenset(COMMON_STEP_KEYS | FIELD_OWNERS.keys())
