"""config.toml: agents, teams and defaults of one user.

Read with tomllib, written with tomli-w, atomically. `$WFCTL_CONFIG` names the file;
otherwise it is `config.toml` in the platformdirs config directory.

    [defaults]
    max_concurrency = 4          # parallel children at once when a step says nothing

    [agents.mira]
    run = "python agents/research.py"

    [teams.engineering]
    members = ["tom", "rae"]
    strategy = "round-robin"
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from wfctl.errors import NotFound, UsageError

DEFAULTS: dict[str, Any] = {
    "max_concurrency": 4,
}

AGENT_KINDS = ("run", "python", "http")
TEAM_STRATEGIES = ("round-robin", "all", "first-success")


def config_path() -> Path:
    """`$WFCTL_CONFIG`, else config.toml in the per-user config directory: the config
    of a Workspace made without one. Resolved per call, never at import."""
    explicit = os.environ.get("WFCTL_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("wfctl", appauthor=False)) / "config.toml"


class Config:
    """The parsed config file at `path` (a Workspace's); `save()` writes it back atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.data: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise UsageError(f"cannot read config file {self.path}: {err.strerror or err}.") from err
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"config file {self.path} is not valid TOML: {err}.") from err

    def save(self) -> None:
        import tomli_w

        from wfctl.store import write_bytes_atomic

        write_bytes_atomic(self.path, tomli_w.dumps(self.data).encode("utf-8"))

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
        self.data.setdefault("agents", {})[name] = definition
        self.save()

    def remove_agent(self, name: str) -> None:
        if name not in self.agents:
            raise NotFound(f"no agent named '{name}' in {self.path}.")
        del self.data["agents"][name]
        self.save()

    def add_team(self, name: str, members: list[str], strategy: str) -> None:
        _check_name(name, "team")
        if strategy not in TEAM_STRATEGIES:
            raise UsageError(f"team strategy must be one of {', '.join(TEAM_STRATEGIES)}, not '{strategy}'.")
        if not members:
            raise UsageError("a team needs at least one --member.")
        self.data.setdefault("teams", {})[name] = {"members": list(members), "strategy": strategy}
        self.save()

    def remove_team(self, name: str) -> None:
        if name not in self.teams:
            raise NotFound(f"no team named '{name}' in {self.path}.")
        del self.data["teams"][name]
        self.save()

    # -- dotted keys for `wfctl config get/set` -------------------------------------------
    def get(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if key.startswith("defaults.") and key.count(".") == 1 and key[9:] in DEFAULTS:
                    return DEFAULTS[key[9:]]
                raise NotFound(f"'{key}' is not set in {self.path}.")
            node = node[part]
        return node

    def set(self, key: str, value: Any) -> None:
        parts = key.split(".")
        if not all(parts):
            raise UsageError(f"'{key}' is not a config key (use dotted names like defaults.max_concurrency).")
        node = self.data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"'{part}' in '{key}' is a value, not a section.")
            node = child
        node[parts[-1]] = value
        self.save()


def parse_config_value(text: str) -> Any:
    """A TOML value when the text is one (`4`, `true`, `["a"]`), else the text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _check_name(name: str, what: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}", name):
        raise UsageError(
            f"'{name}' is not a valid {what} name (letters, digits, '-', '_' and '.', at most 64)."
        )
