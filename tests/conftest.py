"""Shared fixtures: every test gets its own data directory and config file."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "workflows"


@pytest.fixture(autouse=True)
def wfctl_home(tmp_path, monkeypatch) -> Path:
    """A private WFCTL_HOME and WFCTL_CONFIG; subprocesses inherit them."""
    home = tmp_path / "home"
    monkeypatch.setenv("WFCTL_HOME", str(home))
    monkeypatch.setenv("WFCTL_CONFIG", str(tmp_path / "config" / "config.toml"))
    monkeypatch.delenv("WFCTL_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    # The installed `wfctl` script sits next to this interpreter, activated venv or not.
    bin_dir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ.get("PATH", ""))
    return home


@pytest.fixture
def workflow_file(tmp_path):
    """Write inline YAML (dedented) to a file and return its path."""

    def write(text: str, name: str = "workflow.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def wfctl(script_runner):
    """Run the installed `wfctl` script; assert the exit code, show output when it differs."""

    def run(*args, code: int = 0, stdin: str | None = None, cwd: Path | None = None):
        kwargs = {}
        if stdin is not None:
            kwargs["stdin"] = __import__("io").StringIO(stdin)
        if cwd is not None:
            kwargs["cwd"] = str(cwd)
        result = script_runner.run(["wfctl", *map(str, args)], **kwargs)
        assert result.returncode == code, (
            f"wfctl {' '.join(map(str, args))} exited {result.returncode}, expected {code}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
        return result

    return run


@pytest.fixture
def wfctl_json(wfctl):
    """Run wfctl with --json and return the parsed document (stdout must be exactly one)."""

    def run(*args, code: int = 0, **kwargs):
        result = wfctl(*args, "--json", code=code, **kwargs)
        return json.loads(result.stdout)

    return run


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its content: to prove that nothing was written."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }
