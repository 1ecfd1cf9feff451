"""The data directory (reliability.md §3.5, §3.8, B07, B27): one that others can write to
or that belongs to someone else is refused; files stay 0600 and directories 0700 under
any umask; symlinks planted inside it are never followed, for reading or for writing.

Each test plants its trap with plain file operations, then drives the installed `wfctl`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import tree_snapshot
from lifecycle_helpers import execution_dir, wfctl, wfctl_json

OTHER_UID = 12345


def home() -> Path:
    return Path(os.environ["WFCTL_HOME"])


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def counter(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "counter"
    monkeypatch.setenv("COUNTER", str(path))
    return path


def two_steps(tmp_path: Path) -> Path:
    return write(tmp_path, "two.yaml", """\
name: two
steps:
  - id: s1
    run: echo s1 >> "$COUNTER"
  - id: s2
    run: |
      echo s2 >> "$COUNTER"; echo '{"n": 1}' > "$WFCTL_OUTPUT"
""")


def one_sentence(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wfctl: error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return lines[0]


def interrupted_execution(tmp_path: Path) -> str:
    """An execution whose runner died right after s1 ended (s1 to run again on resume)."""
    crashed = subprocess.run(
        ["wfctl", "execute", str(two_steps(tmp_path)), "-q"], env={**os.environ, "WFCTL_FAULT": "after-step:1"},
        capture_output=True, text=True, timeout=60,
    )
    assert crashed.returncode == 137, crashed
    execution_id = wfctl_json("executions")["elements"][0]["executionId"]
    assert wfctl_json("execution", execution_id)["status"] == "interrupted"
    return execution_id


def without_lock(tree: dict[str, bytes]) -> dict[str, bytes]:
    """The tree minus execution lock files (a refused resume may take the lock, writing its pid)."""
    return {name: data for name, data in tree.items() if not name.endswith("/lock")}


# -- a data directory that is not private -----------------------------------------------------
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=["0777", "0770", "0702"])
def test_a_data_directory_others_can_write_to_is_refused(tmp_path, counter, mode):
    home().mkdir()
    os.chmod(home(), mode)
    workflow = two_steps(tmp_path)
    for args in (("list",), ("executions",), ("execute", workflow), ("create", workflow)):
        result = wfctl(*args, code=2)
        message = one_sentence(result)
        assert str(home()) in message and "written by others" in message, message
        assert f"chmod 700 {home()}" in message, message  # how to fix it
    assert not counter.exists()  # nothing ran
    assert list(home().iterdir()) == []  # nothing written
    os.chmod(home(), 0o700)
    wfctl("list")


def test_a_data_directory_owned_by_another_user_is_refused(tmp_path, counter):
    assert os.geteuid() == 0, "this test chowns a directory to another uid"
    home().mkdir(mode=0o700)
    os.chown(home(), OTHER_UID, OTHER_UID)
    workflow = two_steps(tmp_path)
    for args in (("list",), ("execute", workflow)):
        message = one_sentence(wfctl(*args, code=2))
        assert str(home()) in message and "another user" in message and str(OTHER_UID) in message, message
    assert not counter.exists()
    assert list(home().iterdir()) == []


# -- permissions under any umask --------------------------------------------------------------
def test_files_are_0600_and_directories_0700_under_umask_000(tmp_path, counter):
    workflow = two_steps(tmp_path)
    for command in (
        f'exec wfctl execute "{workflow}" -q',
        'exec wfctl create "{0}" --update'.format(workflow),
    ):
        result = subprocess.run(["/bin/sh", "-c", f"umask 000; {command}"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result
    # and an interrupted run, resumed, under the same umask
    crashed = subprocess.run(
        ["/bin/sh", "-c", f'umask 000; exec wfctl execute "{workflow}" -q'],
        env={**os.environ, "WFCTL_FAULT": "after-step:2"}, capture_output=True, timeout=60,
    )
    assert crashed.returncode == 137
    latest = wfctl_json("executions")["elements"][0]["executionId"]
    result = subprocess.run(["/bin/sh", "-c", f"umask 000; exec wfctl resume {latest} -q"], capture_output=True, timeout=60)
    assert result.returncode == 0, result
    assert counter.read_text().split() == ["s1", "s2", "s1", "s2", "s2"]

    seen = {"file": 0, "dir": 0}
    for path in [home(), *home().rglob("*")]:
        info = path.lstat()
        assert not stat.S_ISLNK(info.st_mode), path
        if stat.S_ISDIR(info.st_mode):
            assert stat.S_IMODE(info.st_mode) == 0o700, f"{path} is {oct(stat.S_IMODE(info.st_mode))}"
            seen["dir"] += 1
        else:
            assert stat.S_IMODE(info.st_mode) == 0o600, f"{path} is {oct(stat.S_IMODE(info.st_mode))}"
            seen["file"] += 1
    assert seen["file"] >= 10 and seen["dir"] >= 6, seen


# -- symlinks planted in the data directory -------------------------------------------------------
def plant(link: Path, target: Path) -> None:
    """Replace `link` (a file or directory of the data directory) with a symlink to `target`."""
    if link.is_dir() and not link.is_symlink():
        for child in link.iterdir():
            child.unlink()
        link.rmdir()
    elif link.exists():
        link.unlink()
    os.symlink(target, link)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory outside the data directory, the target of planted links."""
    path = tmp_path / "outside"
    path.mkdir()
    return path


def test_a_symlinked_snapshot_is_refused_and_its_target_untouched(tmp_path, outside):
    execution_id = json.loads(wfctl("execute", two_steps(tmp_path), "--json").stdout)["executionId"]
    target = outside / "victim.json"
    forged = json.loads((execution_dir(execution_id) / "execution.json").read_text())
    forged["workflowName"] = "forged"
    target.write_text(json.dumps(forged))
    before = target.read_bytes()
    plant(execution_dir(execution_id) / "execution.json", target)

    for args in (("execution", execution_id), ("resume", execution_id), ("logs", execution_id)):
        result = wfctl(*args, code=None)
        assert result.returncode not in (0, 2), result
        message = one_sentence(result)
        assert "symbolic link" in message and "execution.json" in message, message
        assert "forged" not in result.stdout
    assert target.read_bytes() == before
    assert os.stat(target).st_mode & 0o777 == 0o644
    # The listing skips it rather than showing what the link points to.
    listing = wfctl("executions")
    assert "forged" not in listing.stdout
    assert "forged" not in wfctl("executions", "--json").stdout


def test_resume_refuses_a_symlinked_logs_directory_and_writes_nothing_through_it(tmp_path, outside, counter):
    execution_id = interrupted_execution(tmp_path)
    (outside / "s1.log").write_text("not wfctl's\n")
    plant(execution_dir(execution_id) / "logs", outside)
    before = without_lock(tree_snapshot(home()))
    result = wfctl("resume", execution_id, code=None)
    assert result.returncode not in (0, 2), result
    message = one_sentence(result)
    assert "symbolic link" in message and "logs" in message, message
    assert sorted(p.name for p in outside.iterdir()) == ["s1.log"]
    assert (outside / "s1.log").read_text() == "not wfctl's\n"
    assert counter.read_text().split() == ["s1"]  # nothing ran
    assert without_lock(tree_snapshot(home())) == before


def test_resume_refuses_a_symlinked_journal_without_appending_to_its_target(tmp_path, outside, counter):
    execution_id = interrupted_execution(tmp_path)
    journal = execution_dir(execution_id) / "events.jsonl"
    target = outside / "bashrc"
    target.write_bytes(journal.read_bytes())
    before = target.read_bytes()
    plant(journal, target)
    result = wfctl("resume", execution_id, code=None)
    assert result.returncode not in (0, 2), result
    assert target.read_bytes() == before
    assert counter.read_text().split() == ["s1"]
    message = one_sentence(result)
    assert "symbolic link" in message and "events.jsonl" in message, message


def test_a_symlinked_journal_is_not_read(tmp_path, outside):
    """A journal planted as a link to a forged one must not decide what `execution` says."""
    execution_id = interrupted_execution(tmp_path)
    journal = execution_dir(execution_id) / "events.jsonl"
    forged = journal.read_bytes() + b'{"type":"execution.finished","at":"2030-01-01T00:00:00.000Z","status":"completed"}\n'
    (outside / "forged.jsonl").write_bytes(forged)
    plant(journal, outside / "forged.jsonl")
    result = wfctl("execution", execution_id, "--json", code=None)
    if result.returncode == 0:
        status = json.loads(result.stdout)["status"]
        assert status != "completed", "the status came from a forged journal read through a symlink"
    assert result.returncode not in (0, 2), result
    assert "symbolic link" in one_sentence(result)


def test_a_symlinked_lock_is_refused_in_one_sentence(tmp_path, outside):
    execution_id = interrupted_execution(tmp_path)
    target = outside / "lock"
    target.write_text("precious\n")
    plant(execution_dir(execution_id) / "lock", target)
    for args in (("resume", execution_id), ("execution", execution_id)):
        result = wfctl(*args, code=None)
        assert result.returncode not in (0, 2), result
        message = one_sentence(result)
        assert "symbolic link" in message and "lock" in message, message
    assert target.read_text() == "precious\n"


def test_wfctl_logs_does_not_follow_a_symlinked_log(tmp_path, outside):
    execution_id = json.loads(wfctl("execute", two_steps(tmp_path), "--json").stdout)["executionId"]
    (outside / "id_rsa").write_text("PRIVATE KEY MATERIAL\n")
    plant(execution_dir(execution_id) / "logs" / "s1.log", outside / "id_rsa")
    for args in (("logs", execution_id, "s1"), ("logs", execution_id), ("logs", execution_id, "--json")):
        result = wfctl(*args, code=None)
        assert "PRIVATE KEY" not in result.stdout, (args, result.stdout)
        assert result.returncode not in (0, 2), (args, result)
        assert "symbolic link" in one_sentence(result)


def test_a_symlinked_workflow_record_is_skipped_by_list_and_refused_by_show(tmp_path, outside):
    real = json.loads(wfctl("create", write(tmp_path, "real.yaml", "name: real\nsteps:\n  - id: a\n    run: echo a\n"), "--json").stdout)
    planted = json.loads(wfctl("create", write(tmp_path, "planted.yaml", "name: planted\nsteps:\n  - id: a\n    run: echo a\n"), "--json").stdout)
    record = home() / "workflows" / f"{planted['workflowId']}.json"
    forged = json.loads(record.read_text())
    forged["name"] = "forged-through-a-link"
    (outside / "wf.json").write_text(json.dumps(forged))
    before = (outside / "wf.json").read_bytes()
    plant(record, outside / "wf.json")

    listing = wfctl_json("list")
    names = [e["name"] for e in listing["elements"]]
    assert names == ["real"], names
    assert "forged" not in wfctl("list").stdout
    result = wfctl("show", planted["workflowId"], code=None)
    assert result.returncode not in (0, 2), result
    assert "forged" not in result.stdout
    message = one_sentence(result)
    assert "symbolic link" in message and planted["workflowId"] in message, message
    wfctl("show", real["workflowId"])
    assert (outside / "wf.json").read_bytes() == before
