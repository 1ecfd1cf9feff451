"""Steps that misbehave with their process or their output (reliability.md B11, B13, B14,
C04, C05): one that ignores SIGTERM, one whose grandchild keeps stdout open, 10 MB of
output, binary and invalid UTF-8 output, a 10 MB `$WFCTL_OUTPUT`.

No hang (every wfctl run has a subprocess timeout), bounded memory, the whole output in
the step's log, and a capped copy with an explicit marker in the execution record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifecycle_helpers import execution_dir, journal_events, ours, pid_alive, wait_for, wfctl, wfctl_json

MIB = 1024 * 1024
INLINE_LIMIT = 256 * 1024
MARKER = "[output truncated: 10485760 bytes in all; see wfctl logs]"


@pytest.fixture
def lab(tmp_path, monkeypatch) -> Path:
    """A scratch directory the steps know as $LAB; leftover step processes are killed."""
    path = tmp_path / "lab"
    path.mkdir()
    monkeypatch.setenv("LAB", str(path))
    yield path
    for pid_file in path.glob("*pid*"):
        for word in pid_file.read_text().split():
            if word.isdigit() and ours(int(word)):  # still running, and started by this test
                try:
                    os.kill(int(word), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def write(tmp_path: Path, text: str, name: str = "workflow.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def timed(*args, timeout: float, code: int | None = 0) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    result = wfctl(*args, code=code, timeout=timeout)
    return result, time.monotonic() - began


def step(document: dict, key: str) -> dict:
    return next(s for s in document["steps"] if s["id"] == key)


def log_bytes(execution_id: str, key: str) -> bytes:
    return (execution_dir(execution_id) / "logs" / f"{key}.log").read_bytes()


# -- processes ------------------------------------------------------------------------------------
def test_a_step_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path, lab):
    path = write(tmp_path, """\
name: stubborn
steps:
  - id: stubborn
    timeout: 1
    run: |
      trap '' TERM
      echo $$ > "$LAB/pid"
      sleep 100 &
      echo $! > "$LAB/child-pid"
      wait
""")
    result, elapsed = timed("execute", path, "--json", timeout=30, code=1)
    document = json.loads(result.stdout)
    assert document["status"] == "failed"
    record = step(document, "stubborn")
    assert record["status"] == "failed"
    assert record["attempts"][-1]["error"]["kind"] == "timeout"
    assert "timed out after 1s" in record["attempts"][-1]["error"]["message"]
    # 1 s timeout + 2 s between SIGTERM and SIGKILL, plus start-up: well under the bound.
    assert elapsed < 15, elapsed
    print(f"\nSIGTERM-ignoring step with timeout 1: wfctl ended after {elapsed:.2f}s")
    for name in ("pid", "child-pid"):
        pid = int((lab / name).read_text())
        wait_for(lambda: not pid_alive(pid), timeout=10, what=f"{name} {pid} to be killed")


@pytest.mark.parametrize(
    "command, secrets",
    [
        # A subshell puts sleep in the background and exits: sleep's parent is gone.
        ("""sh -c '( sleep 100 & echo $! > "$LAB/gpid" ); echo done'""", False),
        # The step's own shell starts it in the background and exits, stdout inherited.
        ("""sleep 100 & echo $! > "$LAB/gpid"; echo done""", False),
        # With secrets stderr is piped through wfctl too: both pipes stay open.
        ("""sleep 100 & echo $! > "$LAB/gpid"; echo done""", True),
    ],
    ids=["subshell", "background", "background-stderr-piped"],
)
def test_a_grandchild_holding_stdout_open_does_not_hang_the_step(tmp_path, lab, monkeypatch, command, secrets):
    text = "name: holder\n"
    if secrets:
        monkeypatch.setenv("HOLD_TOKEN", "hold-the-secret")
        text += "secrets:\n  TOKEN: {env: HOLD_TOKEN}\n"
    path = write(tmp_path, text + "steps:\n  - id: holder\n    run: " + json.dumps(command) + "\n")
    result, elapsed = timed("execute", path, "--json", timeout=20)
    document = json.loads(result.stdout)
    assert document["status"] == "completed"
    assert step(document, "holder")["output"] == "done"
    assert elapsed < 10, elapsed  # not the grandchild's 100 s
    print(f"\ngrandchild holding stdout ({command[:24]}..., secrets={secrets}): wfctl ended after {elapsed:.2f}s")
    pid = int((lab / "gpid").read_text())
    wait_for(lambda: not pid_alive(pid), timeout=10, what=f"the grandchild {pid} to be gone")


# -- output ---------------------------------------------------------------------------------------
RSS_HELPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"  # KiB on Linux
    "sys.exit(code)\n"
)


@pytest.mark.parametrize("secrets", [False, True], ids=["plain", "masked"])
def test_ten_megabytes_of_stdout_stay_in_the_log_and_are_capped_in_the_record(tmp_path, monkeypatch, secrets):
    # With a secret, stdout goes through the stream masker: same result, also bounded.
    monkeypatch.setenv("CHATTY_TOKEN", "not-in-the-output")
    path = write(tmp_path, """\
name: chatty
""" + ("secrets:\n  TOKEN: {env: CHATTY_TOKEN}\n" if secrets else "") + """\
steps:
  - id: big
    run: "head -c 10485760 /dev/zero | tr '\\\\0' a"
  - id: after
    run: echo fine
""")
    began = time.monotonic()
    helper = subprocess.run(
        [sys.executable, "-c", RSS_HELPER, "wfctl", "execute", str(path), "-q"],
        capture_output=True, text=True, timeout=120,
    )
    elapsed = time.monotonic() - began
    assert helper.returncode == 0, helper.stderr
    peak_mib = int(helper.stdout.strip()) / 1024
    print(f"\n10 MB of stdout (secrets={secrets}): wfctl took {elapsed:.2f}s, peak RSS {peak_mib:.1f} MiB")
    assert peak_mib < 200, peak_mib

    execution_id = wfctl_json("executions")["elements"][0]["executionId"]
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    output = step(document, "big")["output"]
    assert output.startswith("a" * 1000)
    assert output.endswith(MARKER)
    assert output == "a" * INLINE_LIMIT + "\n" + MARKER
    assert len(output.encode()) <= 300_000
    assert step(document, "after")["output"] == "fine"

    # All of it is in the log, and `wfctl logs` gives it back.
    log = log_bytes(execution_id, "big")
    body = log.split(b"\n", 1)[1]
    assert body == b"a" * (10 * MIB) + b"=== exit 0\n"
    shown = wfctl("logs", execution_id, "big").stdout
    assert shown.count("a" * 1024) >= 10 * 1024 - 1 and "a" * (10 * MIB) in shown

    # The record files stay small: the capped copy, not 10 MB.
    exec_dir = execution_dir(execution_id)
    for name in ("execution.json", "events.jsonl"):
        assert (exec_dir / name).stat().st_size < 1_000_000, name
    traces = list((Path(os.environ["WFCTL_HOME"]) / "traces").rglob("*.json"))
    assert traces and all(t.stat().st_size < 1_000_000 for t in traces)


def test_binary_and_invalid_utf8_output_is_kept_byte_for_byte_in_the_log(tmp_path, lab):
    path = write(tmp_path, """\
name: bytes
steps:
  - id: binary
    run: head -c 4096 /dev/urandom | tee "$LAB/binary"
  - id: invalid
    run: printf '\\377\\376abc'
  - id: nul
    run: printf 'a\\000b\\n'
""")
    result = wfctl("execute", path, "--json")
    document = json.loads(result.stdout)
    assert document["status"] == "completed"
    execution_id = document["executionId"]
    assert step(document, "invalid")["output"] == "\ufffd\ufffdabc"
    assert step(document, "nul")["output"] == "a\x00b"
    assert isinstance(step(document, "binary")["output"], str)

    expected = (lab / "binary").read_bytes()
    assert len(expected) == 4096
    assert log_bytes(execution_id, "binary").endswith(b"\n" + expected + b"=== exit 0\n")
    assert log_bytes(execution_id, "invalid").endswith(b"\n\xff\xfeabc=== exit 0\n")
    assert log_bytes(execution_id, "nul").endswith(b"\na\x00b\n=== exit 0\n")

    # Every JSON document of the data directory still parses.
    home = Path(os.environ["WFCTL_HOME"])
    for path in home.rglob("*.json"):
        json.loads(path.read_bytes())
    journal_events(execution_id)
    assert wfctl_json("execution", execution_id)["status"] == "completed"
    wfctl("execution", execution_id)
    wfctl_json("logs", execution_id)


def test_wfctl_logs_gives_back_the_exact_bytes_a_step_printed(tmp_path):
    path = write(tmp_path, """\
name: raw
steps:
  - id: invalid
    run: printf '\\377\\376abc'
""")
    execution_id = json.loads(wfctl("execute", path, "--json").stdout)["executionId"]
    shown = subprocess.run(["wfctl", "logs", execution_id, "invalid"], capture_output=True, timeout=30)
    assert shown.returncode == 0
    assert b"\xff\xfeabc" in shown.stdout, shown.stdout  # not U+FFFD replacement characters


def test_a_ten_megabyte_output_file_is_capped_with_its_marker(tmp_path):
    path = write(tmp_path, """\
name: outfile
steps:
  - id: big
    run: "head -c 10485760 /dev/zero | tr '\\\\0' b > \\"$WFCTL_OUTPUT\\""
""")
    result = wfctl("execute", path, "--json", timeout=60)
    document = json.loads(result.stdout)
    assert document["status"] == "completed"
    output = step(document, "big")["output"]
    assert output.startswith("b" * 1000)
    assert output.endswith("[output truncated: more than 262144 bytes were written to $WFCTL_OUTPUT]")
    assert len(output.encode()) <= 300_000
    logs_dir = execution_dir(document["executionId"]) / "logs"
    assert not list(logs_dir.glob("*.out"))  # the output file is not kept in the data directory
