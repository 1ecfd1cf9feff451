"""Secrets (reliability.md §3.6, B26): `secrets:` names values taken from environment
variables or files; steps get them as environment variables; every value, and its
JSON-escaped and Base64 forms, is masked as *** wherever wfctl writes or shows it.

The proof is a scan of every byte under WFCTL_HOME after the run (what `grep -r`
would find), plus what wfctl printed on stdout and stderr, on a pipe and on a terminal.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import pty
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import tree_snapshot
from lifecycle_helpers import execution_dir, journal_events, wfctl, wfctl_json

# A `"` and a `\` make the JSON-escaped form differ from the value.
TOKEN = 's3cr"et\\val-XYZ-42'
FILE_TOKEN = "file-secret-Zq9-7"


def forms(value: str) -> list[bytes]:
    """The value as bytes, JSON-escaped (as a JSON string's inside), and Base64."""
    return [
        value.encode(),
        json.dumps(value)[1:-1].encode(),
        json.dumps(value, ensure_ascii=False)[1:-1].encode(),
        base64.b64encode(value.encode()).rstrip(b"="),
    ]


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def home() -> Path:
    return Path(os.environ["WFCTL_HOME"])


def assert_nowhere(data: bytes, where: str, *values: str) -> None:
    for value in values:
        for form in forms(value):
            assert form not in data, f"{where} contains the secret {value!r} as {form!r}"


def assert_not_in_data_dir(*values: str) -> dict[str, bytes]:
    """`grep -r` of the data directory: no form of any value in any file. Returns the files."""
    files = {str(p): p.read_bytes() for p in home().rglob("*") if p.is_file()}
    assert files
    for name, data in files.items():
        assert_nowhere(data, name, *values)
    return files


@pytest.fixture
def lab(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "lab"
    path.mkdir()
    monkeypatch.setenv("LAB", str(path))
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    return path


def secret_workflow(tmp_path: Path) -> Path:
    """In its own directory with the secret file next to it (a relative `file:`)."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "token.txt").write_text(FILE_TOKEN + "\n")
    path = folder / "secrets.yaml"
    path.write_text(textwrap.dedent("""\
        name: secretive
        secrets:
          TOKEN: {env: MY_TOKEN}
          FILETOK: {file: token.txt}
        steps:
          - id: receive
            run: |
              printf %s "$TOKEN" | sha256sum > "$LAB/token.sha"
              printf %s "$FILETOK" | sha256sum > "$LAB/file.sha"
          - id: plain
            run: |
              printf 'out %s\\n' "$TOKEN"
              printf 'err %s\\n' "$TOKEN" >&2
              printf 'file %s\\n' "$FILETOK"
              printf 'file err %s\\n' "$FILETOK" >&2
          - id: escaped
            run: |
              python3 -c 'import json, os; print(json.dumps({"t": os.environ["TOKEN"], "f": os.environ["FILETOK"]}))'
          - id: split
            run: |
              python3 -c '
              import os, sys, time
              for value in (os.environ["TOKEN"], os.environ["FILETOK"]):
                  half = len(value) // 2
                  sys.stdout.write(value[:half]); sys.stdout.flush()
                  time.sleep(0.1)
                  sys.stdout.write(value[half:] + "\\n"); sys.stdout.flush()
                  sys.stderr.write(value[:half]); sys.stderr.flush()
                  time.sleep(0.1)
                  sys.stderr.write(value[half:] + "\\n"); sys.stderr.flush()
              '
          - id: encoded
            run: |
              printf %s "$TOKEN" | base64
              printf %s "$FILETOK" | base64 >&2
          - id: templated
            task: "use {{ secrets.TOKEN }} please"
            run: printf '%s|%s\\n' {{ secrets.TOKEN }} "$WFCTL_TASK"
          - id: output-file
            run: |
              printf '{"token": "%s"}' "$FILETOK" > "$WFCTL_OUTPUT"
    """))
    return path


def test_secrets_reach_steps_as_environment_variables_and_are_masked_everywhere(tmp_path, lab):
    path = secret_workflow(tmp_path)
    result = subprocess.run(
        ["wfctl", "execute", str(path)], capture_output=True, timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr.decode()
    # The plain progress lines (stderr is not a terminal) and the summary.
    assert b"receive" in result.stderr and b"completed" in result.stderr
    assert_nowhere(result.stdout + result.stderr, "wfctl execute's output", TOKEN, FILE_TOKEN)

    # The steps got the values themselves (env var NAME, the file resolved next to the workflow).
    assert (lab / "token.sha").read_text().split()[0] == sha256(TOKEN)
    assert (lab / "file.sha").read_text().split()[0] == sha256(FILE_TOKEN)

    execution_id = wfctl_json("executions")["elements"][0]["executionId"]
    files = assert_not_in_data_dir(TOKEN, FILE_TOKEN)
    exec_dir = execution_dir(execution_id)
    logs = {key: (exec_dir / "logs" / f"{key}.log").read_bytes() for key in ("plain", "escaped", "split", "encoded", "templated")}
    assert logs["plain"].count(b"***") == 4
    for line in (b"out ***\n", b"err ***\n", b"file ***\n", b"file err ***\n"):
        assert line in logs["plain"]
    assert b'{"t": "***", "f": "***"}' in logs["escaped"]
    assert logs["split"].count(b"***\n") == 4  # stdout and stderr, each value split in two writes
    assert logs["encoded"].count(b"***") == 2
    assert b"***|use *** please" in logs["templated"]
    # The execution record, the journal and the trace say *** where the values were.
    document = wfctl_json("execution", execution_id)
    steps = {s["id"]: s for s in document["steps"]}
    assert steps["plain"]["output"] == "out ***\nfile ***"
    assert steps["escaped"]["output"] == {"t": "***", "f": "***"}
    assert steps["split"]["output"] == "***\n***"
    assert steps["templated"]["output"] == "***|use *** please"
    assert steps["output-file"]["output"] == {"token": "***"}
    assert b"***" in (exec_dir / "execution.json").read_bytes()
    assert b"***" in (exec_dir / "events.jsonl").read_bytes()
    traces = [name for name in files if "/traces/" in name]
    assert len(traces) == 1 and b"***" in files[traces[0]]
    journal_events(execution_id)

    # What wfctl shows about the run.
    workflow_id = document["workflowId"]
    for args in (
        ("execution", execution_id), ("execution", execution_id, "--json"),
        ("logs", execution_id), ("logs", execution_id, "--json"),
        ("traces", workflow_id, "--json"), ("show", workflow_id, "--json"),
        ("executions",), ("watch", execution_id),
    ):
        shown = subprocess.run(["wfctl", *args], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        assert shown.returncode == 0, (args, shown.stderr)
        assert_nowhere(shown.stdout + shown.stderr, f"wfctl {' '.join(args)}", TOKEN, FILE_TOKEN)
    assert b"***" in subprocess.run(["wfctl", "logs", execution_id], capture_output=True, timeout=60).stdout


def test_a_failing_step_that_prints_its_secret_is_masked_in_the_error_everywhere(tmp_path, lab):
    path = tmp_path / "failing.yaml"
    path.write_text(textwrap.dedent("""\
        name: failing
        secrets:
          TOKEN: {env: MY_TOKEN}
        steps:
          - id: leaky
            run: printf 'login failed for %s\\n' "$TOKEN" >&2; printf 'denied %s\\n' "$TOKEN"; exit 3
    """))
    result = subprocess.run(["wfctl", "execute", str(path)], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    # The failure is reported with stderr's last line (issue 11, item 21), masked.
    assert b"exited with code 3: login failed for ***" in result.stderr
    assert_nowhere(result.stdout + result.stderr, "wfctl execute's output", TOKEN)
    execution_id = wfctl_json("executions")["elements"][0]["executionId"]
    document = wfctl_json("execution", execution_id, code=0)
    assert document["status"] == "failed"
    assert "***" in json.dumps(document["error"])
    assert_not_in_data_dir(TOKEN)


def run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, bytes]:
    """Run wfctl with stderr on a pseudo-terminal (the live table); returns (code, screen bytes)."""
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        ["wfctl", *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, cwd=cwd, env=env
    )
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError as err:  # EIO: every holder of the terminal has closed it
            assert err.errno == errno.EIO
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    return proc.wait(timeout=60), screen


def test_the_live_table_on_a_terminal_never_shows_a_secret(tmp_path, lab):
    path = tmp_path / "live.yaml"
    path.write_text(textwrap.dedent("""\
        name: live
        secrets:
          TOKEN: {env: MY_TOKEN}
        steps:
          - id: shows
            task: "task {{ secrets.TOKEN }}"
            run: printf '%s\\n' "$TOKEN"; printf '%s\\n' "$TOKEN" >&2
          - id: fails
            run: printf 'bad %s\\n' "$TOKEN"; exit 1
    """))
    code, screen = run_on_a_terminal(["execute", str(path)], tmp_path)
    assert code == 1
    assert b"shows" in screen and b"fails" in screen  # the table was drawn
    assert b"\x1b[" in screen  # on a terminal: the live (Rich) display, not plain lines
    assert_nowhere(screen, "the live table", TOKEN)
    assert_not_in_data_dir(TOKEN)


def test_a_python_agent_receives_the_secrets_in_its_context(tmp_path, lab):
    (tmp_path / "secret_agent.py").write_text(textwrap.dedent("""\
        import hashlib, os

        def run(context):
            value = context["secrets"]["TOKEN"]
            with open(os.path.join(os.environ["LAB"], "agent.sha"), "w") as handle:
                handle.write(hashlib.sha256(value.encode()).hexdigest())
            return {"echo": value, "names": sorted(context["secrets"])}
    """))
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent("""\
        name: agentive
        secrets:
          TOKEN: {env: MY_TOKEN}
        agents:
          keeper: {python: "secret_agent:run"}
        steps:
          - id: ask
            agent: keeper
            task: look
    """))
    result = subprocess.run(
        ["wfctl", "execute", str(path), "--json"], capture_output=True, timeout=60, cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert (lab / "agent.sha").read_text() == sha256(TOKEN)
    document = json.loads(result.stdout)
    assert document["steps"][0]["output"] == {"echo": "***", "names": ["TOKEN"]}
    assert_nowhere(result.stdout + result.stderr, "wfctl execute --json", TOKEN)
    assert_not_in_data_dir(TOKEN)


# -- secrets that cannot be had: exit 2, one sentence, nothing written ---------------------------
BAD = [
    ("missing-env", "TOKEN: {env: WFCTL_TEST_UNSET_VARIABLE}", "WFCTL_TEST_UNSET_VARIABLE"),
    ("missing-file", "TOKEN: {file: no-such-token.txt}", "no-such-token.txt"),
    ("too-short", "TOKEN: {env: SHORT_TOKEN}", "shorter than 4 characters"),
    ("too-short-file", "TOKEN: {file: short.txt}", "shorter than 4 characters"),
    # Files that are not one value: never blocked on, never read without a bound.
    ("fifo-file", "TOKEN: {file: token.fifo}", "it is a FIFO, not a regular file"),
    ("device-file", "TOKEN: {file: /dev/zero}", "it is a character device, not a regular file"),
    ("huge-file", "TOKEN: {file: huge.txt}", "larger than 64 KiB"),
]


@pytest.mark.parametrize("case, source, said", BAD, ids=[b[0] for b in BAD])
def test_a_secret_that_cannot_be_had_stops_before_anything_is_written(tmp_path, lab, monkeypatch, case, source, said):
    monkeypatch.delenv("WFCTL_TEST_UNSET_VARIABLE", raising=False)
    monkeypatch.setenv("SHORT_TOKEN", "abc")
    (tmp_path / "short.txt").write_text("abc\n")
    os.mkfifo(tmp_path / "token.fifo")
    (tmp_path / "huge.txt").write_text("k" * (65 * 1024))
    # A data directory with history in it, to show that nothing is added or changed.
    wfctl("execute", _write(tmp_path, "before.yaml", "name: before\nsteps:\n  - id: a\n    run: echo hi\n"), "-q")
    before = tree_snapshot(home())
    path = _write(tmp_path, "bad.yaml", textwrap.dedent(f"""\
        name: bad-secret
        secrets:
          {source}
        steps:
          - id: never
            run: touch "$LAB/ran"
    """))
    result = subprocess.run(["wfctl", "execute", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wfctl: error: "), result.stderr
    assert "'TOKEN'" in lines[0] and said in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (lab / "ran").exists()
    assert tree_snapshot(home()) == before


def test_resume_without_the_secret_exits_2_and_runs_nothing(tmp_path, lab, monkeypatch):
    path = _write(tmp_path, "resumable.yaml", textwrap.dedent("""\
        name: resumable
        secrets:
          TOKEN: {env: MY_TOKEN}
        steps:
          - id: first
            run: echo "first" >> "$LAB/ran"
          - id: second
            run: printf '%s\\n' "$TOKEN"; echo "second" >> "$LAB/ran"
    """))
    crashed = subprocess.run(
        ["wfctl", "execute", str(path), "-q"], env={**os.environ, "WFCTL_FAULT": "after-step:1"},
        capture_output=True, timeout=60,
    )
    assert crashed.returncode == 137
    execution_id = wfctl_json("executions")["elements"][0]["executionId"]
    monkeypatch.delenv("MY_TOKEN")
    before = {k: v for k, v in tree_snapshot(home()).items() if not k.endswith("/lock")}
    result = wfctl("resume", execution_id, code=2)
    assert "MY_TOKEN" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (lab / "ran").read_text().split() == ["first"]
    assert {k: v for k, v in tree_snapshot(home()).items() if not k.endswith("/lock")} == before
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    wfctl("resume", execution_id, "-q")
    assert (lab / "ran").read_text().split() == ["first", "first", "second"]
    assert wfctl_json("execution", execution_id)["steps"][1]["output"] == "***"
    assert_not_in_data_dir(TOKEN)


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path
