"""A runner that dies (SIGKILL), a torn or corrupt journal, and two runners for one
execution (reliability.md B01, B03, B04, B08; design.md §4).

The runner is a real `wfctl execute` process killed with SIGKILL in the middle of a
step; its step processes are orphaned, so the test kills them itself (from the pid
files they wrote) before resuming.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from lifecycle_helpers import (
    detach,
    execution_dir,
    journal,
    journal_events,
    kill_group,
    lab_in,
    lock_pid,
    pid_alive,
    status_of,
    step_record,
    wait_for,
    wait_status,
    wfctl,
    wfctl_json,
)


@pytest.fixture
def lab(tmp_path):
    """Scratch files shared with the steps; held steps are released at the end."""
    yield from lab_in(tmp_path)


def three_steps(lab, name: str = "crashable"):
    """one → two (held on `go-two-<attempt>`) → three, each counting its runs."""
    return lab.workflow(f"""\
        name: {name}
        steps:
          - id: one
            run: {lab.count('one')}; echo first
            output: first
          - id: two
            input: first
            run: {lab.record('two')}; {lab.count('two')}; {lab.hold('two-$WFCTL_ATTEMPT')}; echo "second after $WFCTL_INPUT"
            output: second
          - id: three
            input: second
            run: {lab.count('three')}; echo "$WFCTL_INPUT"
    """, f"{name}.yaml")


def killed_mid_step(lab, name: str = "crashable") -> str:
    """Run `three_steps` in the foreground and SIGKILL the runner while `two` runs.
    Leaves an interrupted execution whose orphaned step processes are killed too."""
    runner = lab.spawn("execute", three_steps(lab, name), "-q")
    lab.wait_started("two-1")
    execution_id = lab.execution_id("two")
    assert lock_pid(execution_id) == runner.pid  # the lock names the process that runs it
    os.kill(runner.pid, signal.SIGKILL)
    assert runner.wait(timeout=10) == -signal.SIGKILL
    step_pid = lab.pid("two")
    assert pid_alive(step_pid)  # orphaned, still holding
    kill_group(step_pid)
    wait_for(lambda: not pid_alive(step_pid), timeout=10, what="the orphaned step to end")
    return execution_id


def test_sigkill_mid_step_then_resume_runs_only_the_in_flight_step_again(lab):
    execution_id = killed_mid_step(lab)
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "interrupted"  # not running: no process holds it
    assert step_record(document, "one")["status"] == "completed"
    text = wfctl("execution", execution_id).stdout
    assert "status interrupted" in text

    lab.go("two-2")
    result = wfctl("resume", execution_id, "-q")
    assert result.stdout.strip() == execution_id
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    assert document["progress"] == {"completed": 3, "total": 3, "percentage": 100}

    # Completed steps ran exactly once; the in-flight one ran again as attempt 2.
    assert lab.lines("count-one") == ["1"]
    assert lab.lines("count-two") == ["1", "2"]
    assert lab.lines("count-three") == ["1"]
    two = step_record(document, "two")
    assert [a["status"] for a in two["attempts"]] == ["interrupted", "completed"]
    assert [a["attempt"] for a in two["attempts"]] == [1, 2]
    assert lab.lines("attempts-two") == ["1", "2"]  # WFCTL_ATTEMPT
    keys = lab.lines("keys-two")  # WFCTL_IDEMPOTENCY_KEY: the same in both attempts
    assert len(keys) == 2 and keys[0] == keys[1] and execution_id in keys[0]
    # The output of `one` (from before the crash) reached `two` and `three`.
    assert step_record(document, "three")["output"] == {"second": 'second after {"first":"first"}'}
    events = journal_events(execution_id)
    assert [e["status"] for e in events if e["type"] == "execution.finished"] == ["completed"]
    assert sum(1 for e in events if e["type"] == "step.started" and e["step"] == "one") == 1
    assert status_of(execution_id) == "completed"
    wfctl("resume", execution_id, code=6)  # nothing left to resume


def test_executions_shows_a_running_execution_as_running_and_a_dead_one_as_interrupted(lab):
    dead = killed_mid_step(lab, "dies")
    held = lab.workflow(f"""\
        name: lives
        steps:
          - id: only
            run: {lab.hold('lives')}
    """, "lives.yaml")
    alive = detach(held)
    lab.wait_started("lives")

    listing = {e["executionId"]: e["status"] for e in wfctl_json("executions")["elements"]}
    assert listing == {alive: "running", dead: "interrupted"}
    assert [e["executionId"] for e in wfctl_json("executions", "--status", "interrupted")["elements"]] == [dead]
    rows = {line.split()[0]: line for line in wfctl("executions").stdout.splitlines() if line.startswith("exec_")}
    assert "running" in rows[alive] and "interrupted" in rows[dead]
    assert "\x1b" not in wfctl("executions").stdout

    lab.go("lives")
    wait_status(alive, "completed")
    assert status_of(dead) == "interrupted"


# -- the journal -----------------------------------------------------------------------------
TORN = b'{"type":"step.started","at":"2026-01-01T00:00:00.000Z","st'


def test_torn_tail_after_a_completed_run_is_ignored(lab):
    path = lab.workflow("""\
        name: torn-done
        steps:
          - id: only
            run: echo fine
    """)
    execution_id = wfctl("execute", path, "-q").stdout.strip()
    with open(journal(execution_id), "ab") as handle:
        handle.write(TORN)
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    assert step_record(document, "only")["output"] == "fine"
    assert "completed" in wfctl("execution", execution_id).stdout
    assert wfctl_json("executions")["elements"][0]["status"] == "completed"
    assert wfctl("watch", execution_id, "-q").stdout.strip() == execution_id
    wfctl("logs", execution_id, "only")


def test_torn_tail_of_an_interrupted_run_is_cut_off_by_resume(lab):
    execution_id = killed_mid_step(lab)
    with open(journal(execution_id), "ab") as handle:
        handle.write(TORN)
    assert status_of(execution_id) == "interrupted"
    lab.go("two-2")
    wfctl("resume", execution_id, "-q")
    events = journal_events(execution_id)  # every line parses, no torn line left
    assert events[-1]["type"] == "execution.finished" and events[-1]["status"] == "completed"
    assert not any(e.get("at", "").startswith("2026-01-01T00:00:00") for e in events)
    assert lab.lines("count-one") == ["1"] and lab.lines("count-three") == ["1"]
    assert status_of(execution_id) == "completed"


def test_corrupt_line_in_the_middle_of_the_journal_stops_resume_but_not_the_others(lab):
    healthy = wfctl("execute", lab.workflow("""\
        name: healthy
        steps:
          - id: only
            run: echo fine
    """, "healthy.yaml"), "-q").stdout.strip()
    execution_id = killed_mid_step(lab)
    lines = journal(execution_id).read_bytes().split(b"\n")
    assert len(lines) >= 5, lines  # started, one started, one finished, two started, ""
    lines[2] = b"\x00\x00\x00garbage{not json"
    journal(execution_id).write_bytes(b"\n".join(lines))
    # Make the snapshot send readers to the start of the journal.
    snapshot_path = execution_dir(execution_id) / "execution.json"
    snapshot = json.loads(snapshot_path.read_text())
    assert snapshot["status"] == "running"
    snapshot["journalOffset"] = 0
    temporary = snapshot_path.with_name("execution.json.test-tmp")
    temporary.write_text(json.dumps(snapshot))
    os.replace(temporary, snapshot_path)

    lab.go("two-2")
    result = wfctl("resume", execution_id, "-q", code=None)
    assert result.returncode not in (0, 130), result
    assert "line 3" in result.stderr, result.stderr
    assert lab.lines("count-two") == ["1"]  # nothing ran
    assert lab.lines("count-three") == []
    refused = wfctl_json("resume", execution_id, code=None)
    assert "line 3" in refused["error"]

    # The other executions are still listed and readable.
    listing = wfctl_json("executions")
    assert healthy in [e["executionId"] for e in listing["elements"]]
    assert wfctl_json("execution", healthy)["status"] == "completed"
    wfctl("executions")


# -- one runner per execution ----------------------------------------------------------------
def test_a_second_resume_while_one_runs_exits_6_naming_the_pid_that_holds_it(lab):
    execution_id = killed_mid_step(lab)
    resumer = lab.spawn("resume", execution_id, "-q")
    lab.wait_started("two-2")
    assert lock_pid(execution_id) == resumer.pid
    began = time.monotonic()
    second = wfctl("resume", execution_id, code=6)
    assert time.monotonic() - began < 5  # at once, not after the first one ends
    assert str(resumer.pid) in second.stderr, second.stderr
    assert resumer.poll() is None
    lab.go("two-2")
    assert resumer.wait(timeout=20) == 0
    assert lab.lines("count-two") == ["1", "2"]  # the refused resume ran nothing
    assert lab.lines("count-three") == ["1"]
    journal_events(execution_id)


def test_a_retry_while_a_resume_runs_exits_6_naming_the_pid_that_holds_it(lab):
    execution_id = killed_mid_step(lab)
    resumer = lab.spawn("resume", execution_id, "-q")
    lab.wait_started("two-2")
    began = time.monotonic()
    second = wfctl("retry", execution_id, "two", code=6)
    assert time.monotonic() - began < 5
    assert str(resumer.pid) in second.stderr, second.stderr
    lab.go("two-2")
    assert resumer.wait(timeout=20) == 0
    assert lab.lines("count-two") == ["1", "2"]
    assert lab.lines("count-three") == ["1"]
    journal_events(execution_id)
    assert status_of(execution_id) == "completed"


def test_resume_detach_continues_an_interrupted_execution_in_the_background(lab):
    execution_id = killed_mid_step(lab)
    result = wfctl("resume", execution_id, "--detach")
    assert result.stdout.strip() == execution_id
    lab.wait_started("two-2")
    assert status_of(execution_id) == "running"
    assert lock_pid(execution_id) != os.getpid()
    lab.go("two-2")
    assert wfctl("watch", execution_id, "-q").stdout.strip() == execution_id
    assert lab.lines("count-one") == ["1"]
    assert lab.lines("count-two") == ["1", "2"]
    assert lab.lines("count-three") == ["1"]
    journal_events(execution_id)
