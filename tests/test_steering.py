"""Steering requests that must never be dropped or block (issue 11, items 1, 19, 26):
a cancel of a queued, not-yet-picked-up or resuming run, `pause` that returns at once,
`pause --wait` (also from inside the execution's own step), and `resume` that reports
the state the runner acknowledged.

Real `wfctl` processes and real step processes; steps hold on `go-<name>` files the
test creates, and the test waits on files and statuses with bounded polling.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time

import pytest

from lifecycle_helpers import (
    WAIT,
    detach,
    execution_dir,
    holds_for,
    journal_events,
    kill_group,
    lab_in,
    pid_alive,
    status_of,
    step_record,
    wait_for,
    wait_status,
    wfctl,
    wfctl_json,
)

PAUSE_REQUESTED = "pause requested: the running step finishes, then the execution pauses"


@pytest.fixture
def lab(tmp_path):
    """Scratch files shared with the steps; held steps are released at the end."""
    yield from lab_in(tmp_path)


def started_steps(execution_id: str) -> list[str]:
    return [e["step"] for e in journal_events(execution_id) if e["type"] == "step.started"]


# -- cancel: a request is applied by whichever run comes next, never dropped -----------------
def test_cancel_of_a_queued_run_ends_it_at_once_and_no_step_of_it_runs(lab):
    wfctl("config", "set", "defaults.max_running", "1")
    holder = lab.workflow(f"""\
        name: slot-holder
        steps:
          - id: hold
            run: {lab.hold('holder')}
    """, "holder.yaml")
    deploy = lab.workflow(f"""\
        name: deploy
        steps:
          - id: build
            run: {lab.count('build')}
          - id: ship
            run: {lab.count('ship')}
    """, "deploy.yaml")
    first = detach(holder)
    lab.wait_started("holder")
    queued = detach(deploy)
    assert status_of(queued) == "pending"  # waiting for the one slot

    began = time.monotonic()
    result = wfctl("cancel", queued, "--reason", "do not deploy", timeout=WAIT)
    took = time.monotonic() - began
    assert f"{queued} cancelled: do not deploy" in result.stderr
    assert took < 10, f"cancel of a queued run waited {took:.1f}s (for the slot?)"
    document = wfctl_json("execution", queued)
    assert document["status"] == "cancelled"
    assert document["cancelReason"] == "do not deploy"
    assert all(step["status"] in ("pending", "cancelled") for step in document["steps"])
    assert status_of(first) == "running"  # the slot holder is untouched

    # The slot frees up: the cancelled run must not run after all.
    lab.go("holder")
    wait_status(first, "completed")
    assert holds_for(lambda: not lab.path("count-build").exists(), seconds=1.0)
    assert started_steps(queued) == []
    assert status_of(queued) == "cancelled"
    assert not (execution_dir(queued) / "cancel.json").exists()  # consumed by the run that applied it
    assert wfctl_json("trace", "deploy", queued)["status"] == "cancelled"


def test_cancel_before_a_runner_picks_the_run_up_is_kept_by_that_runner(lab):
    # The moment between `prepare` and the runner taking the execution's lock: here the
    # background runner (`wfctl _run`, what `execute --detach` starts) comes after the cancel.
    from wfctl import api

    path = lab.workflow(f"""\
        name: prepared
        steps:
          - id: only
            run: {lab.count('only')}
    """)
    execution_id = api.prepare(str(path))
    result = wfctl("cancel", execution_id, "--reason", "changed my mind")
    assert f"{execution_id} cancelled: changed my mind" in result.stderr
    runner = wfctl("_run", execution_id, code=4)  # the run ends cancelled, not "already started"
    assert "Traceback" not in runner.stderr
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "cancelled" and document["cancelReason"] == "changed my mind"
    assert not lab.path("count-only").exists()


def test_a_cancel_left_by_a_killed_canceller_is_applied_by_the_resume(lab):
    # A runner dies mid-step; `wfctl cancel` is made while something holds the execution
    # (here: the test, as a runner that is just starting would) and is killed before it
    # could finish the job. The request stays: the next run of the execution applies it.
    path = lab.workflow(f"""\
        name: resumable
        steps:
          - id: one
            run: {lab.count('one')}
          - id: two
            run: {lab.record('two')}; {lab.count('two')}; {lab.hold('two-$WFCTL_ATTEMPT')}
          - id: three
            run: {lab.count('three')}
    """)
    runner = lab.spawn("execute", path, "-q")
    lab.wait_started("two-1")
    execution_id = lab.execution_id("two")
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(timeout=10)
    step_pid = lab.pid("two")
    kill_group(step_pid)  # the orphaned step
    wait_for(lambda: not pid_alive(step_pid), timeout=10, what="the orphaned step to end")
    assert status_of(execution_id) == "interrupted"

    lock = os.open(execution_dir(execution_id) / "lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        canceller = lab.spawn("cancel", execution_id, "--reason", "stop it")
        wait_for((execution_dir(execution_id) / "cancel.json").exists, what="the cancel request")
        canceller.send_signal(signal.SIGKILL)
        canceller.wait(timeout=10)
    finally:
        os.close(lock)

    result = wfctl("resume", execution_id, "-q", code=4)
    assert result.stdout.strip() == execution_id
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "cancelled" and document["cancelReason"] == "stop it"
    assert lab.lines("count-two") == ["1"]  # the resume started no step
    assert not lab.path("count-three").exists()
    assert not (execution_dir(execution_id) / "cancel.json").exists()


# -- pause: returns at once; --wait blocks (bounded) -----------------------------------------
def test_pause_returns_at_once_and_wait_blocks_until_the_running_step_has_finished(lab):
    path = lab.workflow(f"""\
        name: long-step
        steps:
          - id: long
            run: {lab.count('long')}; {lab.hold('long')}
          - id: next
            run: {lab.count('next')}; {lab.hold('next')}
    """)
    execution_id = detach(path)
    lab.wait_started("long")

    began = time.monotonic()
    result = wfctl("pause", execution_id, timeout=WAIT)
    assert time.monotonic() - began < 10
    assert PAUSE_REQUESTED in result.stderr
    assert "running ·" not in result.stderr
    document = wfctl_json("pause", execution_id, timeout=WAIT)
    assert document["pauseRequested"] is True and document["status"] == "running"

    # --wait gives up after --timeout while the step runs, says so and exits 6; the
    # request stays.
    waited = wfctl("pause", execution_id, "--wait", "--timeout", "1", code=6, timeout=WAIT)
    assert "still running after 1s" in waited.stderr
    assert status_of(execution_id) == "running"
    wfctl("pause", execution_id, "--wait", "--timeout", "0", code=2)

    pauser = lab.spawn("pause", execution_id, "--wait", "--json")
    assert holds_for(lambda: pauser.poll() is None, seconds=0.5)
    lab.go("long")
    out, err = pauser.communicate(timeout=WAIT)
    assert pauser.returncode == 0, err
    assert json.loads(out)["status"] == "paused"
    assert holds_for(lambda: not lab.path("count-next").exists(), seconds=0.5)

    # resume reports what the runner acknowledged, not the state it just ended.
    resumed = wfctl_json("resume", execution_id)
    assert resumed["status"] == "running", resumed["status"]
    lab.wait_started("next")
    lab.go("next")
    wait_status(execution_id, "completed")
    assert lab.lines("count-long") == ["1"] and lab.lines("count-next") == ["1"]


def test_pause_wait_from_inside_its_own_step_returns_and_the_execution_pauses_after_it(lab):
    path = lab.workflow(f"""\
        name: pauses-itself
        steps:
          - id: ask
            timeout: 60
            run: wfctl pause "$WFCTL_EXECUTION_ID" --wait --timeout 60 2> {lab.q('said')}; echo $? > {lab.q('code')}
          - id: after
            run: {lab.count('after')}
    """)
    execution_id = detach(path)
    code = wait_for(lambda: lab.path("code").exists() and lab.path("code").read_text().strip(), timeout=WAIT,
                    what="pause --wait inside the step to return")
    assert code == "0", lab.path("said").read_text()
    assert PAUSE_REQUESTED in lab.path("said").read_text()
    document = wait_status(execution_id, "paused")
    assert step_record(document, "ask")["status"] == "completed"
    assert not lab.path("count-after").exists()
    wfctl("resume", execution_id)
    wait_status(execution_id, "completed")
    assert lab.lines("count-after") == ["1"]


def test_pause_wait_from_an_in_process_step_of_its_own_runner_returns(lab):
    # A python agent runs inside the runner's process: waiting there would wait for itself.
    lab.path("selfpause.py").write_text(
        "import time\n"
        "from wfctl import api\n"
        "def run(context):\n"
        "    began = time.monotonic()\n"
        "    document = api.pause(context['executionId'], wait=True, timeout=60)\n"
        "    return {'took': time.monotonic() - began, 'requested': document['pauseRequested']}\n"
    )
    path = lab.workflow(f"""\
        name: pauses-itself-in-process
        agents:
          me: {{python: "selfpause:run"}}
        steps:
          - id: ask
            agent: me
            output: asked
          - id: after
            run: {lab.count('after')}
    """)
    # Python agents are imported from the current directory: the lab.
    runner = subprocess.Popen(
        ["wfctl", "execute", str(path), "-q", "--json"], cwd=lab.root,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lab.processes.append(runner)
    execution_id = wait_for(lambda: [e["executionId"] for e in wfctl_json("executions")["elements"]],
                            what="the execution")[0]
    document = wait_status(execution_id, "paused")
    output = step_record(document, "ask")["output"]["asked"]
    assert output["requested"] is True and output["took"] < 5, output
    assert not lab.path("count-after").exists()
    wfctl("resume", execution_id)
    out, _ = runner.communicate(timeout=WAIT)
    assert runner.returncode == 0
    assert json.loads(out)["status"] == "completed"
    assert lab.lines("count-after") == ["1"]


def test_a_pause_before_the_runner_picks_the_run_up_holds_its_first_step(lab):
    from wfctl import api

    path = lab.workflow(f"""\
        name: paused-early
        steps:
          - id: only
            run: {lab.count('only')}
    """)
    execution_id = api.prepare(str(path))
    result = wfctl("pause", execution_id)
    assert PAUSE_REQUESTED in result.stderr
    runner = lab.spawn("_run", execution_id)  # what `execute --detach` starts in the background
    document = wait_status(execution_id, "paused")
    assert document["steps"][0]["status"] == "pending"
    assert holds_for(lambda: not lab.path("count-only").exists(), seconds=0.5)
    wfctl("resume", execution_id)
    runner.communicate(timeout=WAIT)
    assert runner.returncode == 0
    assert status_of(execution_id) == "completed"
    assert lab.lines("count-only") == ["1"]
