"""Named fault points (reliability.md §2, B02, B03, B05, B06): a runner that dies at a
bad moment, and a disk that fails on write, fsync or rename.

Every run goes through the installed `wfctl` with `WFCTL_FAULT` in its environment
(faults.py); `resume` runs without it. The workflow has four steps, each appending
`<step> <attempt>` to a counter file, so the counter shows how often each step ran;
the journal shows how often each completion was recorded.

Crash points (`os._exit(137)`): the promise is at-least-once execution, exactly-once
recorded completion. I/O faults: the run stops starting steps, says where in one
sentence, the previous snapshot stays intact, no temp file is left, and the execution
can be resumed once the disk is fine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from lifecycle_helpers import execution_dir, journal, journal_events, wfctl, wfctl_json

STEPS = ("s1", "s2", "s3", "s4")


def four_steps(tmp_path: Path, s2_extra: str = "") -> Path:
    """s1 → s2 → s3 → s4; every step appends `<id> <attempt>` to $COUNTER. `s2_extra`
    runs after s2's append (a sleep, so that a timed snapshot or fsync falls on s2's end)."""
    lines = ["name: faulty", "steps:"]
    for step in STEPS:
        command = f'echo "{step} $WFCTL_ATTEMPT" >> "$COUNTER"'
        if step == "s2" and s2_extra:
            command += f"; {s2_extra}"
        lines += [f"  - id: {step}", f"    run: '{command}'"]
    path = tmp_path / "faulty.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def counter(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "counter"
    monkeypatch.setenv("COUNTER", str(path))  # steps inherit wfctl's environment
    return path


def runs(counter: Path) -> Counter:
    """How many times each step ran."""
    if not counter.exists():
        return Counter()
    return Counter(line.split()[0] for line in counter.read_text().splitlines() if line.strip())


def home() -> Path:
    return Path(os.environ["WFCTL_HOME"])


def execute_with_fault(workflow: Path, fault: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WFCTL_FAULT": fault}
    return subprocess.run(
        ["wfctl", "execute", str(workflow), "-q"],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def the_execution() -> str:
    ids = [p.name for p in (home() / "executions").iterdir() if p.name.startswith("exec_")]
    assert len(ids) == 1, ids
    return ids[0]


def temp_files() -> list[Path]:
    return sorted(p for p in home().rglob("*") if p.name.endswith(".tmp"))


def completions(execution_id: str) -> Counter:
    """step key → number of `step.finished` events with status completed in the journal."""
    return Counter(
        e["step"] for e in journal_events(execution_id) if e["type"] == "step.finished" and e["status"] == "completed"
    )


def starts(execution_id: str) -> list[str]:
    return [e["step"] for e in journal_events(execution_id) if e["type"] == "step.started"]


def resume_completes(execution_id: str, *, temp_left_ok: bool = False) -> dict:
    """`wfctl resume` without the fault finishes the run; returns the final document."""
    result = wfctl("resume", execution_id, "-q")
    assert result.stdout.strip() == execution_id
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    assert document["progress"] == {"completed": 4, "total": 4, "percentage": 100}
    assert completions(execution_id) == Counter(STEPS)  # exactly once each, whatever ran twice
    events = journal_events(execution_id)  # every line parses; no torn line left
    assert [e["status"] for e in events if e["type"] == "execution.finished"] == ["completed"]
    if not temp_left_ok:
        assert temp_files() == []
    return document


def attempts(document: dict, step: str) -> list[str]:
    record = next(s for s in document["steps"] if s["id"] == step)
    return [a["status"] for a in record.get("attempts", [])]


# -- crash points: the runner dies --------------------------------------------------------------
def test_crash_right_after_a_step_ends_runs_that_step_again_on_resume(tmp_path, counter):
    # after-step:2 — s2's process ran and ended; the runner died before journaling its end.
    result = execute_with_fault(four_steps(tmp_path), "after-step:2")
    assert result.returncode == 137, result
    execution_id = the_execution()
    assert runs(counter) == Counter({"s1": 1, "s2": 1})
    assert starts(execution_id) == ["s1", "s2"]
    assert completions(execution_id) == Counter({"s1": 1})  # s2's end was never recorded
    assert wfctl_json("execution", execution_id)["status"] == "interrupted"
    assert "status interrupted" in wfctl("execution", execution_id).stdout

    document = resume_completes(execution_id)
    # At least once: s2 ran again (its completion was not known); nothing else did.
    assert runs(counter) == Counter({"s1": 1, "s2": 2, "s3": 1, "s4": 1})
    assert counter.read_text().splitlines() == ["s1 1", "s2 1", "s2 2", "s3 1", "s4 1"]
    assert attempts(document, "s2") == ["interrupted", "completed"]
    assert attempts(document, "s1") == ["completed"]


def test_crash_in_the_middle_of_a_journal_append_leaves_a_torn_line_that_resume_cuts_off(tmp_path, counter):
    # Appends: execution.started, s1 started, s1 finished, s2 started, s2 finished (the 5th).
    result = execute_with_fault(four_steps(tmp_path), "mid-append:5")
    assert result.returncode == 137, result
    execution_id = the_execution()
    assert runs(counter) == Counter({"s1": 1, "s2": 1})
    data = journal(execution_id).read_bytes()
    assert not data.endswith(b"\n")  # half a line on disk
    torn = data.rsplit(b"\n", 1)[1]
    assert torn.startswith(b'{"type":"step.finished"') and b'"s2"' in torn
    with pytest.raises(ValueError):
        json.loads(torn)
    # Readers ignore the torn tail: s2 is still running as far as the record goes.
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "interrupted"
    assert attempts(document, "s1") == ["completed"]
    assert attempts(document, "s2") == ["running"]

    document = resume_completes(execution_id)
    assert torn not in journal(execution_id).read_bytes()  # cut off, not glued to the next line
    assert runs(counter) == Counter({"s1": 1, "s2": 2, "s3": 1, "s4": 1})
    assert attempts(document, "s2") == ["interrupted", "completed"]


def test_crash_before_a_snapshot_rename_loses_nothing_and_reruns_nothing(tmp_path, counter):
    # Snapshot writes: prepare (1), execution.started (2), then one at most every second:
    # s2 sleeps 1.5 s, so the 3rd is the one made when s2's end is journaled.
    result = execute_with_fault(four_steps(tmp_path, "sleep 1.5"), "before-rename:3")
    assert result.returncode == 137, result
    execution_id = the_execution()
    assert runs(counter) == Counter({"s1": 1, "s2": 1})
    events = journal_events(execution_id)  # the journal is whole: the crash came after the append
    assert events[-1]["type"] == "step.finished" and events[-1]["step"] == "s2"
    # The snapshot on disk is the previous one, whole; the new one never replaced it.
    snapshot = json.loads((execution_dir(execution_id) / "execution.json").read_text())
    assert snapshot["executionId"] == execution_id and snapshot["status"] == "running"
    assert [p.name.startswith(".execution.json.") for p in temp_files()] == [True]  # the crash left it
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "interrupted"
    assert attempts(document, "s2") == ["completed"]  # from the journal

    resume_completes(execution_id, temp_left_ok=True)
    # s2's completion was recorded before the crash: it is not run again.
    assert runs(counter) == Counter({"s1": 1, "s2": 1, "s3": 1, "s4": 1})
    # The temp file of the dead runner is cleaned up by the next run of the execution.
    assert temp_files() == [], "the temp file of the crashed snapshot write outlived the resume"


# -- I/O faults: the disk fails -------------------------------------------------------------------
# (fault, what s2 does after its append, file named, error text, steps that ran, the step
#  the run stopped at (None: before any step), how often s2 runs in all once resumed)
IO_FAULTS = [
    # The 4th append is s2's step.started: s2 must not start, since its start cannot be kept.
    ("enospc-journal:4", "", "events.jsonl", "No space left on device", ["s1"], "s2", 1),
    # The 5th append is s2's step.finished: s2 ran, its end is lost, it runs again.
    ("enospc-journal:5", "", "events.jsonl", "No space left on device", ["s1", "s2"], "s2", 2),
    # A short write: half of s2's step.started reaches the disk, then the disk is full.
    # s2 must not start; the half line is cut off, not glued to a later event.
    ("short-journal:4", "", "events.jsonl", "No space left on device", ["s1"], "s2", 1),
    # Half of s2's step.finished: s2 ran, its end is lost, it runs again.
    ("short-journal:5", "", "events.jsonl", "No space left on device", ["s1", "s2"], "s2", 2),
    # Snapshot 2 is the one at execution.started: nothing runs.
    ("enospc-snapshot:2", "", "execution.json", "No space left on device", [], None, 1),
    # Snapshot 3 is the timed one when s2's end is journaled (s2 takes 1.5 s).
    ("enospc-snapshot:3", "sleep 1.5", "execution.json", "No space left on device", ["s1", "s2"], "s2", 1),
    # The first journal fsync comes 0.2 s after the run starts, at s2's end (s2 takes 0.5 s).
    ("eio-fsync:1", "sleep 0.5", "events.jsonl", "Input/output error", ["s1", "s2"], "s2", 1),
    ("eio-rename:2", "", "execution.json", "Input/output error", [], None, 1),
    ("eio-rename:3", "sleep 1.5", "execution.json", "Input/output error", ["s1", "s2"], "s2", 1),
]


@pytest.mark.parametrize(
    "fault, s2_extra, filename, strerror, ran, stopped_at, s2_total", IO_FAULTS, ids=[f[0] for f in IO_FAULTS]
)
def test_a_disk_error_stops_the_run_keeps_the_record_and_can_be_resumed(
    tmp_path, counter, fault, s2_extra, filename, strerror, ran, stopped_at, s2_total
):
    result = execute_with_fault(four_steps(tmp_path, s2_extra), fault)
    assert result.returncode == 1, result
    execution_id = the_execution()
    exec_dir = execution_dir(execution_id)

    # One sentence on stderr naming the file, the error and where the run stopped; no traceback.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    message = lines[0]
    assert message.startswith("wfctl: error: ") and "Traceback" not in result.stderr
    assert str(exec_dir / filename) in message, message
    assert strerror in message, message
    assert "stopped" in message, message

    # No step started after the failure: not run, not even spawned (no log).
    assert sorted(runs(counter)) == ran, counter.read_text() if counter.exists() else "(no counter)"
    for step in STEPS:
        if step not in ran:
            assert not (exec_dir / "logs" / f"{step}.log").exists(), f"{step} was started after the disk error"
    # The previous snapshot is intact; no temp file anywhere.
    snapshot = json.loads((exec_dir / "execution.json").read_text())
    assert snapshot["executionId"] == execution_id
    assert snapshot["status"] in ("pending", "running")
    assert temp_files() == []
    # What was recorded still reads; the run is resumable.
    journal_events(execution_id)
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "interrupted"
    assert document["progress"]["completed"] < 4

    resume_completes(execution_id)
    expected = Counter({"s1": 1, "s2": s2_total, "s3": 1, "s4": 1})
    assert runs(counter) == expected

    # Last (the rest holds either way): the sentence names the step the run stopped at.
    if stopped_at is not None:
        words = message.replace(str(exec_dir / filename), "")
        assert re.search(rf"\b{stopped_at}\b", words), f"the message does not say the run stopped at {stopped_at}: {message}"


def test_a_disk_error_on_the_very_first_snapshot_leaves_no_half_made_execution(tmp_path, counter):
    # Snapshot 1 is written by `prepare`, before the run: nothing has happened yet.
    result = execute_with_fault(four_steps(tmp_path), "enospc-snapshot:1")
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "execution.json" in lines[0] and "No space left on device" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not counter.exists()
    assert temp_files() == []
    assert wfctl_json("executions")["elements"] == []
    # No directory that no command can show, resume or prune is left behind.
    leftovers = sorted(p.name for p in (home() / "executions").iterdir() if p.name.startswith("exec_"))
    assert leftovers == [], f"an execution directory without a snapshot was left: {leftovers}"


def test_an_interrupted_execution_reads_cleanly(tmp_path, counter):
    execute_with_fault(four_steps(tmp_path), "after-step:2")
    text = wfctl("execution", the_execution()).stdout
    assert "status interrupted" in text
    assert "None" not in text, text  # e.g. "completed None" for an execution that has not completed


# -- the disk fills while a step prints (issue 11, item 11) ---------------------------------------
# s2 records its pid, then (first attempt only) prints a line every 0.05 s for 20 s.
PRINTING_S2 = (
    'echo $$ > "$COUNTER.s2-pid"; '
    'if [ "$WFCTL_ATTEMPT" = 1 ]; then i=0; while [ $i -lt 400 ]; do echo "line $i"; sleep 0.05; i=$((i+1)); done; fi'
)
# Log writes: s1's header (1) and footer (2, s1 prints nothing), s2's header (3), s2's
# first line (4). (fault, the step the run stops at, whether that step's process started)
LOG_FAULTS = [("enospc-log:4", "s2", True), ("enospc-log:3", "s2", False), ("enospc-log:1", "s1", False)]


@pytest.mark.parametrize("fault, stopped_at, spawned", LOG_FAULTS, ids=[f[0] for f in LOG_FAULTS])
def test_a_step_log_that_cannot_be_written_stops_the_run_and_its_process(tmp_path, counter, fault, stopped_at, spawned):
    import time

    from lifecycle_helpers import pid_alive, wait_for

    began = time.monotonic()
    result = execute_with_fault(four_steps(tmp_path, PRINTING_S2), fault)
    elapsed = time.monotonic() - began
    assert result.returncode == 1, result
    execution_id = the_execution()
    exec_dir = execution_dir(execution_id)
    log = exec_dir / "logs" / f"{stopped_at}.log"

    # One sentence: the file, the error, where the run stopped, how to go on.
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    message = lines[0]
    assert message.startswith("wfctl: error: ") and "internal error" not in message, message
    assert "Traceback" not in result.stderr
    assert str(log) in message and "No space left on device" in message, message
    assert re.search(rf"stopped at step {stopped_at}\b", message.replace(str(log), "")), message
    assert "wfctl resume" in message, message

    # The printing step did not run on: its process group was terminated, not waited for.
    assert elapsed < 15, f"wfctl took {elapsed:.1f}s: it waited for the step"
    pid_file = Path(str(counter) + ".s2-pid")
    if spawned:
        pid = int(pid_file.read_text())
        wait_for(lambda: not pid_alive(pid), timeout=10, what=f"s2's process {pid} to be gone")
    else:
        assert not pid_file.exists(), "the step started although its log could not be written"
    # No step started after it; the record reads; the run is resumable.
    ran = ["s1", "s2"] if spawned else (["s1"] if stopped_at == "s2" else [])
    assert sorted(runs(counter)) == ran
    for step in STEPS[STEPS.index(stopped_at) + 1:]:
        assert not (exec_dir / "logs" / f"{step}.log").exists(), f"{step} started after the disk error"
    journal_events(execution_id)
    assert wfctl_json("execution", execution_id)["status"] == "interrupted"

    resume_completes(execution_id)
    assert runs(counter) == Counter({"s1": 1, "s2": 2 if spawned else 1, "s3": 1, "s4": 1})
