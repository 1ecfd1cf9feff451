"""config.toml: agents, teams and defaults of one user.

Read with tomllib, written with tomli-w, atomically. `$WFCTL_CONFIG` names the file;
otherwise it is `config.toml` in the platformdirs config directory.

    [defaults]
    max_concurrency = 4          # parallel children at once when a step says nothing
    infrastructure_retries = 3   # re-runs of an attempt lost with a Dask worker

    [agents.mira]
    run = "python agents/research.py"

    [teams.engineering]
    members = ["tom", "rae"]
    strategy = "round-robin"

The file is checked like a workflow file (spec.CONFIG, validate.validate_config) whenever it
is read: a value of the wrong type, an unknown key or a name that could become a path outside
the data directory is refused in one sentence naming the file, the key and its line (exit 2),
before anything is written or run. Commands that change the file refuse a change that would
add a problem, and still let a person repair a file that has some.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from wfctl.errors import NotFound, Problem, UsageError, WorkflowInvalid

DEFAULTS: dict[str, Any] = {
    "max_concurrency": 4,
    # Attempts a Dask worker's death cost a step are run again this many times, apart
    # from the step's own retry policy.
    "infrastructure_retries": 3,
}

AGENT_KINDS = ("run", "python", "http")
TEAM_STRATEGIES = ("round-robin", "all", "first-success")


class ConfigInvalid(WorkflowInvalid):
    """config.toml has problems: each names the file, the key and its line (exit 2)."""


def config_path() -> Path:
    """`$WFCTL_CONFIG`, else config.toml in the per-user config directory: the config
    of a Workspace made without one. Resolved per call, never at import."""
    explicit = os.environ.get("WFCTL_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("wfctl", appauthor=False)) / "config.toml"


class Config:
    """The parsed config file at `path` (a Workspace's); `save()` writes it back atomically.

    With `check` (the default) a file with problems raises `ConfigInvalid`; commands that
    repair the file read it with `check=False` and are held to "no new problem" by `save()`.
    """

    def __init__(self, path: Path, *, check: bool = True) -> None:
        self.path = Path(path)
        self.text = ""
        self.data: dict[str, Any] = self._read()
        self.problems_at_read = self.problems(lines=True)
        if check and self.problems_at_read:
            raise ConfigInvalid(self.problems_at_read)

    def _read(self) -> dict[str, Any]:
        from wfctl.loader import read_bytes

        if not os.path.exists(self.path):
            return {}
        try:
            # Bounded, and never a FIFO or a device: WFCTL_CONFIG=/dev/zero must not hang.
            raw = read_bytes(os.fspath(self.path), kind="config file")
        except WorkflowInvalid as err:
            raise UsageError(f"cannot read config file {self.path}: {err.problems[0].message}.") from None
        try:
            self.text = raw.decode("utf-8")
            return tomllib.loads(self.text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"config file {self.path} is not valid TOML: {err}.") from err

    def problems(self, *, lines: bool) -> list[Problem]:
        """What is wrong with the data as it stands (`lines`: with the lines of the file read)."""
        from wfctl.validate import validate_config

        return validate_config(self.data, file=str(self.path), lines=toml_lines(self.text) if lines else None)

    def save(self) -> None:
        """Write the data back, unless the change made something wrong that was right before."""
        import tomli_w

        from wfctl.store import write_bytes_atomic

        before = {(p.path, p.message) for p in self.problems_at_read}
        new = [p for p in self.problems(lines=False) if (p.path, p.message) not in before]
        if new:
            raise ConfigInvalid([Problem(p.file, p.path, f"{p.message}; the file was not changed") for p in new])
        write_bytes_atomic(self.path, tomli_w.dumps(self.data).encode("utf-8"))

    def remaining_problems(self) -> list[Problem]:
        """Problems the file still has after a change (a repair may leave some for later)."""
        return self.problems(lines=False)

    # -- agents and teams ----------------------------------------------------------------
    @property
    def agents(self) -> dict[str, dict]:
        agents = self.data.get("agents", {})
        return agents if isinstance(agents, dict) else {}

    @property
    def teams(self) -> dict[str, dict]:
        teams = self.data.get("teams", {})
        return teams if isinstance(teams, dict) else {}

    def default(self, key: str) -> Any:
        section = self.data.get("defaults", {})
        if isinstance(section, dict) and key in section:
            return section[key]
        return DEFAULTS.get(key)

    def add_agent(self, name: str, definition: dict) -> None:
        _check_name(name, "agent")
        self._section("agents")[name] = definition
        self.save()

    def remove_agent(self, name: str) -> None:
        if name not in self.agents:
            raise NotFound(f"no agent named '{_shown(name)}' in {self.path}.")
        del self.data["agents"][name]
        self.save()

    def add_team(self, name: str, members: list[str], strategy: str) -> None:
        _check_name(name, "team")
        if strategy not in TEAM_STRATEGIES:
            raise UsageError(f"team strategy must be one of {', '.join(TEAM_STRATEGIES)}, not '{_shown(strategy)}'.")
        if not members:
            raise UsageError("a team needs at least one --member.")
        for member in members:
            _check_name(member, "agent")  # a member's name becomes part of its log file's name
        self._section("teams")[name] = {"members": list(members), "strategy": strategy}
        self.save()

    def remove_team(self, name: str) -> None:
        if name not in self.teams:
            raise NotFound(f"no team named '{_shown(name)}' in {self.path}.")
        del self.data["teams"][name]
        self.save()

    def _section(self, name: str) -> dict:
        section = self.data.setdefault(name, {})
        if not isinstance(section, dict):
            raise UsageError(f"'{name}' in {self.path} is a value, not a table; fix it by hand first.")
        return section

    # -- dotted keys for `wfctl config get/set/unset` -------------------------------------
    def get(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if key.startswith("defaults.") and key.count(".") == 1 and key[9:] in DEFAULTS:
                    return DEFAULTS[key[9:]]
                raise NotFound(f"'{_shown(key)}' is not set in {self.path}.")
            node = node[part]
        return node

    def set(self, key: str, value: Any) -> None:
        """Set a dotted key; a value of the wrong type for a known key is refused (exit 2)."""
        parts = _key_parts(key)
        node = self.data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"'{_shown(part)}' in '{_shown(key)}' is a value, not a section.")
            node = child
        node[parts[-1]] = value
        self.save()

    def unset(self, key: str) -> None:
        """Remove a dotted key, and the sections that it leaves empty."""
        parts = _key_parts(key)
        sections: list[dict] = [self.data]
        for part in parts[:-1]:
            child = sections[-1].get(part)
            if not isinstance(child, dict):
                raise NotFound(f"'{_shown(key)}' is not set in {self.path}.")
            sections.append(child)
        if parts[-1] not in sections[-1]:
            raise NotFound(f"'{_shown(key)}' is not set in {self.path}.")
        del sections[-1][parts[-1]]
        for depth in range(len(parts) - 1, 0, -1):
            if not sections[depth]:
                del sections[depth - 1][parts[depth - 1]]
        self.save()


def _key_parts(key: str) -> list[str]:
    parts = key.split(".")
    if not all(parts):
        raise UsageError(f"'{_shown(key)}' is not a config key (use dotted names like defaults.max_concurrency).")
    return parts


def parse_config_value(text: str) -> Any:
    """A TOML value when the text is one (`4`, `true`, `["a"]`), else the text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check_name(name: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}", name):
        raise UsageError(
            f"'{_shown(name)}' is not a valid {what} name (letters, digits, '-', '_' and '.', at most 64)."
        )


def _shown(text: str) -> str:
    from wfctl.store import printable

    return printable(text)


# -- lines of keys ----------------------------------------------------------------------------
# tomllib gives no positions, so the lines of keys come from a scan of the text that knows
# just enough TOML: table headers, `key = value` lines with dotted and quoted keys, and
# multi-line strings and arrays, whose inner lines hold no keys.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HEADER = re.compile(r"\s*\[(\[)?(?P<key>[^\]]*)\]\]?\s*(#.*)?$")


def toml_lines(text: str) -> dict[str, int]:
    """Document paths (as validate.py writes them: `agents.mira.run`, `teams["a b"]`) → line."""
    from wfctl.loader import child_path

    lines: dict[str, int] = {}
    table: list[str] = []
    pending_close: str | None = None  # the closing quotes of a multi-line string
    depth = 0  # open brackets of a multi-line array or inline table
    for number, line in enumerate(text.splitlines(), start=1):
        if pending_close is not None:
            if pending_close in line:
                pending_close = None
            continue
        if depth > 0:
            depth = max(0, depth + _bracket_balance(line))
            continue
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group("key")) or []
            _record(lines, table, number, child_path)
            continue
        key_text, sep, rest = line.partition("=")
        keys = _split_key(key_text) if sep else None
        if not keys:
            continue
        _record(lines, table + keys, number, child_path)
        pending_close = _open_multiline_string(rest)
        if pending_close is None:
            depth = max(0, _bracket_balance(rest))
    return lines


def _record(lines: dict[str, int], parts: list[str], number: int, child_path) -> None:
    path = ""
    for part in parts:
        path = child_path(path, part)
        lines.setdefault(path, number)


def _split_key(text: str) -> list[str] | None:
    """`a."b.c".d` → ["a", "b.c", "d"]; None when the text is not a TOML key."""
    parts: list[str] = []
    rest = text.strip()
    while True:
        if rest[:1] in ('"', "'"):
            quote = rest[0]
            end = rest.find(quote, 1)
            while quote == '"' and end > 0 and rest[end - 1] == "\\":
                end = rest.find(quote, end + 1)
            if end < 0:
                return None
            raw = rest[1:end]
            parts.append(_unescape(raw) if quote == '"' else raw)
            rest = rest[end + 1:].strip()
        else:
            match = _BARE_KEY.match(rest)
            if not match:
                return None
            parts.append(match.group())
            rest = rest[match.end():].strip()
        if not rest:
            return parts
        if rest[0] != ".":
            return None
        rest = rest[1:].strip()


def _unescape(raw: str) -> str:
    try:
        return tomllib.loads(f'k = "{raw}"')["k"]
    except tomllib.TOMLDecodeError:
        return raw


def _open_multiline_string(value: str) -> str | None:
    """The closing quotes when a value opens a multi-line string that the line does not close."""
    stripped = value.strip()
    for quotes in ('"""', "'''"):
        if stripped.startswith(quotes) and stripped.count(quotes) == 1:
            return quotes
    return None


def _bracket_balance(text: str) -> int:
    """Opened minus closed brackets and braces outside strings and comments."""
    balance = 0
    quote: str | None = None
    escaped = False
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            break
        elif char in "[{":
            balance += 1
        elif char in "]}":
            balance -= 1
    return balance
