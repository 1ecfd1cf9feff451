"""config, agent and team: the user's config.toml, written with tomli-w, read with tomllib."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


def config_file() -> Path:
    return Path(os.environ["WFCTL_CONFIG"])


def test_config_path_set_get(wfctl, wfctl_json):
    assert wfctl("config", "path").stdout.strip() == str(config_file())
    assert wfctl("config", "get", "defaults.max_concurrency").stdout.strip() == "4"  # built-in default
    wfctl("config", "set", "defaults.max_concurrency", "8")
    wfctl("config", "set", "slack.webhook", "https://hooks.example/x")
    assert wfctl_json("config", "get", "defaults.max_concurrency") == {"key": "defaults.max_concurrency", "value": 8}
    data = tomllib.loads(config_file().read_text())
    assert data == {"defaults": {"max_concurrency": 8}, "slack": {"webhook": "https://hooks.example/x"}}
    assert oct(config_file().stat().st_mode & 0o777) == "0o600"
    result = wfctl("config", "get", "nothing.here", code=3)
    assert "nothing.here" in result.stderr


def test_agent_add_list_remove(wfctl, wfctl_json):
    wfctl("agent", "add", "mira", "--run", "python agents/research.py")
    wfctl("agent", "add", "amy", "--python", "pkg.mod:fn")
    assert wfctl_json("agent", "list") == {"amy": {"python": "pkg.mod:fn"}, "mira": {"run": "python agents/research.py"}}
    wfctl("agent", "remove", "mira")
    assert set(wfctl_json("agent", "list")) == {"amy"}
    wfctl("agent", "remove", "mira", code=3)
    result = wfctl("agent", "add", "both", "--run", "x", "--python", "a:b", code=2)
    assert "exactly one" in result.stderr
    wfctl("agent", "add", "../evil", "--run", "x", code=2)


def test_team_add_list_remove(wfctl, wfctl_json):
    wfctl("team", "add", "engineering", "--member", "tom", "--member", "rae", "--strategy", "all")
    assert wfctl_json("team", "list") == {"engineering": {"members": ["tom", "rae"], "strategy": "all"}}
    wfctl("team", "add", "bad", "--member", "x", "--strategy", "random", code=2)
    wfctl("team", "remove", "engineering")
    assert wfctl_json("team", "list") == {}


def test_broken_config_is_one_clear_sentence(wfctl, workflow_file):
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text("[agents\nbroken")
    result = wfctl("agent", "list", code=2)
    assert "not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr
