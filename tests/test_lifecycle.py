"""Lifecycle of an execution from the command line: detach, watch, cancel, pause, resume,
Ctrl-C, prune, priority and the run queue (design.md §2; reliability.md B10, B15, B21).

Real `wfctl` processes and real step processes; steps hold on `go-<name>` files the
test creates, and the test waits on files and statuses with bounded polling.
"""

from __future__ import annotations

import json
import signal

import pytest

from lifecycle_helpers import (
    detach,
    execution_dir,
    home,
    holds_for,
    lab_in,
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


# -- execute --detach and watch --------------------------------------------------------------
def test_detach_returns_once_running_and_watch_follows_it_to_the_end(lab, tmp_path):
    path = lab.workflow(f"""\
        name: detached
        steps:
          - id: first
            run: {lab.log()}; {lab.count('first')}; {lab.hold('first')}
          - id: second
            run: {lab.log()}; {lab.count('second')}; echo done
    """)
    result = wfctl("execute", path, "--detach")
    execution_id = result.stdout.strip()
    assert execution_id.startswith("exec_") and "\n" not in execution_id
    # Returned only once the run had really started: the background runner holds it.
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "running"
    lab.wait_started("first")
    assert step_record(document, "second")["status"] == "pending"

    # `watch` from another process; it announces itself on stderr before it follows.
    stderr_path = tmp_path / "watch.stderr"
    with open(stderr_path, "w") as stderr:
        watcher = lab.spawn("watch", execution_id, stderr=stderr)
    wait_for(lambda: "started" in stderr_path.read_text(), what="watch to start following")
    assert watcher.poll() is None  # still following: the run is held
    lab.go("first")
    out, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0
    assert out.strip() == execution_id
    shown = stderr_path.read_text()
    assert "\x1b" not in shown  # not a terminal: plain lines, no escape codes
    for line in ("first completed", "second started", "second completed", "execution completed"):
        assert line in shown, f"{line!r} not in watch output:\n{shown}"
    assert wfctl_json("execution", execution_id)["status"] == "completed"
    assert lab.lines("starts.log") == ["first", "second"]
    assert lab.lines("count-first") == ["1"] and lab.lines("count-second") == ["1"]


def test_detach_json_prints_the_running_document(lab):
    # Ten at once: the document each prints is read when the command returns, so a
    # return before the run has really started shows up as `pending`.
    path = lab.workflow(f"""\
        name: detached-json
        steps:
          - id: only
            run: {lab.hold('only')}
    """)
    starters = [lab.spawn("execute", path, "--detach", "--json", "--priority", "high") for _ in range(10)]
    documents = []
    for starter in starters:
        out, err = starter.communicate(timeout=60)
        assert starter.returncode == 0, err
        documents.append(json.loads(out))
    lab.wait_started("only")
    lab.go("only")
    ids = {d["executionId"] for d in documents}
    assert len(ids) == 10
    wait_for(
        lambda: {e["executionId"]: e["status"] for e in wfctl_json("executions")["elements"]}
        == dict.fromkeys(ids, "completed"),
        interval=0.2, what="the ten runs to complete",
    )
    assert all(d["priority"] == "high" and d["workflowName"] == "detached-json" for d in documents)
    statuses = [d["status"] for d in documents]
    assert statuses == ["running"] * 10, f"`execute --detach --json` returned before the run started: {statuses}"


def test_watch_exits_with_the_code_of_a_failing_execution(lab, tmp_path):
    path = lab.workflow(f"""\
        name: detached-fails
        steps:
          - id: doomed
            run: {lab.hold('doomed')}; echo it went wrong >&2; exit 3
          - id: never
            run: {lab.count('never')}
    """)
    execution_id = detach(path)
    lab.wait_started("doomed")
    stderr_path = tmp_path / "watch.stderr"
    with open(stderr_path, "w") as stderr:
        watcher = lab.spawn("watch", execution_id, stderr=stderr)
    wait_for(lambda: "started" in stderr_path.read_text(), what="watch to start following")
    lab.go("doomed")
    watcher.communicate(timeout=30)
    assert watcher.returncode == 1
    shown = stderr_path.read_text()
    assert "doomed failed" in shown and "execution failed" in shown, shown
    assert "\x1b" not in shown
    assert status_of(execution_id) == "failed"
    assert not lab.path("count-never").exists()
    # Watching a finished execution reports it and exits with its code at once.
    assert wfctl("watch", execution_id, code=1).stdout.strip() == execution_id


# -- cancel ----------------------------------------------------------------------------------
def test_cancel_during_a_parallel_step_stops_every_branch_group(lab):
    branches = [f"b{n}" for n in range(1, 6)]
    children = "\n".join(
        f"""\
              - id: {name}
                run: {lab.record(name)}; sleep 100 & echo $! > {lab.q('gpid-' + name)}; {lab.started(name)}; sleep 100"""
        for name in branches
    )
    path = lab.workflow(f"""\
        name: fan-out
        steps:
          - id: before
            run: {lab.count('before')}
          - id: fan
            type: parallel
            maxConcurrency: 5
            steps:
{children}
          - id: after
            run: {lab.count('after')}
    """)
    runner = lab.spawn("execute", path, "-q")
    for name in branches:
        lab.wait_started(name)
    execution_id = lab.execution_id("b1")
    pids = [lab.pid(name) for name in branches]
    grandchildren = [int(lab.path("gpid-" + name).read_text()) for name in branches]
    assert all(pid_alive(pid) for pid in pids + grandchildren)
    assert status_of(execution_id) == "running"

    result = wfctl("cancel", execution_id, "--reason", "release blocked")
    assert execution_id in result.stderr
    wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=10, what="every branch process to end")
    wait_for(lambda: not any(pid_alive(pid) for pid in grandchildren), timeout=10, what="every grandchild to end")
    assert runner.wait(timeout=20) == 4  # the runner's exit code: cancelled

    document = wfctl_json("execution", execution_id)
    assert document["status"] == "cancelled"
    assert document["cancelReason"] == "release blocked"
    assert not lab.path("count-after").exists()  # nothing new started
    assert step_record(document, "after")["status"] in ("pending", "cancelled")
    assert step_record(document, "before")["status"] == "completed"
    for name in branches:
        assert step_record(document, name)["status"] == "cancelled"
    assert lab.lines("count-before") == ["1"]

    again = wfctl("cancel", execution_id, code=6)
    assert "cancelled" in again.stderr
    assert wfctl_json("execution", execution_id)["cancelReason"] == "release blocked"


def test_cancel_of_a_finished_or_unknown_execution(lab):
    path = lab.workflow("""\
        name: quick
        steps:
          - id: only
            run: echo ok
    """)
    execution_id = wfctl("execute", path, "-q").stdout.strip()
    result = wfctl("cancel", execution_id, "--reason", "too late", code=6)
    assert "completed" in result.stderr
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed" and "cancelReason" not in document
    assert "error" in wfctl_json("cancel", "exec_0000000000000000", code=3)
    wfctl("cancel", "exec_0000000000000000", code=3)


# -- pause and resume ------------------------------------------------------------------------
def test_pause_lets_the_running_step_finish_and_starts_nothing_until_resume(lab):
    # `first` holds until the test says go, then runs on for 0.5 s: the runner looks for
    # control requests every 0.1 s, so the pause request is seen while `first` runs.
    path = lab.workflow(f"""\
        name: pausable
        steps:
          - id: first
            run: {lab.log()}; {lab.count('first')}; {lab.hold('first')}; sleep 0.5
          - id: second
            run: {lab.log()}; {lab.count('second')}
          - id: third
            run: {lab.log()}; {lab.count('third')}
    """)
    execution_id = detach(path)
    lab.wait_started("first")
    pauser = lab.spawn("pause", execution_id, "--wait")
    wait_for((execution_dir(execution_id) / "pause.json").exists, what="the pause request")
    assert holds_for(lambda: pauser.poll() is None, seconds=0.5)  # --wait waits for the running step
    lab.go("first")
    _, err = pauser.communicate(timeout=30)
    assert pauser.returncode == 0, err
    assert "paused" in err

    document = wfctl_json("execution", execution_id)
    assert document["status"] == "paused"
    assert step_record(document, "first")["status"] == "completed"
    assert step_record(document, "second")["status"] == "pending"

    def still_paused() -> bool:
        return lab.lines("starts.log") == ["first"] and status_of(execution_id) == "paused"

    assert holds_for(still_paused, seconds=1.0)
    assert wfctl_json("pause", execution_id)["status"] == "paused"  # pausing twice is harmless

    wfctl("resume", execution_id)
    wait_status(execution_id, "completed")
    assert lab.lines("starts.log") == ["first", "second", "third"]
    for name in ("first", "second", "third"):
        assert lab.lines("count-" + name) == ["1"], name


def test_a_pause_requested_while_a_step_runs_holds_the_very_next_step(lab):
    # `first` ends as soon as the pause request exists, well within the runner's 0.1 s
    # look at its control files: the request was made while `first` ran, so `second`
    # must not start. Three executions, so that a lucky timing cannot hide a miss.
    log = lab.q("starts-$WFCTL_EXECUTION_ID")
    request = '"$WFCTL_HOME/executions/$WFCTL_EXECUTION_ID/pause.json"'
    path = lab.workflow(f"""\
        name: pause-at-the-boundary
        steps:
          - id: first
            run: echo first >> {log}; i=0; while [ ! -e {request} ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
          - id: second
            run: echo second >> {log}
    """)
    executions = [detach(path) for _ in range(3)]
    pausers = {execution_id: lab.spawn("pause", execution_id, "--wait") for execution_id in executions}
    said = {e: (pauser.communicate(timeout=30)[1], pauser.returncode) for e, pauser in pausers.items()}
    started = {e: lab.lines(f"starts-{e}") for e in executions}
    statuses = {e: status_of(e) for e in executions}
    for execution_id in executions:
        if statuses[execution_id] == "paused":
            wfctl("resume", execution_id)
    for execution_id in executions:
        wait_status(execution_id, "completed")
    assert all(lab.lines(f"starts-{e}") == ["first", "second"] for e in executions)
    assert started == {e: ["first"] for e in executions}, (
        f"a step started after the pause was requested: {started}; statuses {statuses}; pause said {said}"
    )
    assert statuses == {e: "paused" for e in executions}
    assert {code for _, code in said.values()} == {0}


def test_pause_of_a_finished_execution_exits_6(lab):
    path = lab.workflow("""\
        name: quick
        steps:
          - id: only
            run: echo ok
    """)
    execution_id = wfctl("execute", path, "-q").stdout.strip()
    result = wfctl("pause", execution_id, code=6)
    assert "completed" in result.stderr
    wfctl("resume", execution_id, code=6)
    wfctl("pause", "exec_0000000000000000", code=3)
    assert status_of(execution_id) == "completed"


# -- Ctrl-C ----------------------------------------------------------------------------------
def test_ctrl_c_interrupts_the_run_and_resume_completes_it(lab):
    path = lab.workflow(f"""\
        name: interruptible
        steps:
          - id: one
            run: {lab.count('one')}
          - id: two
            run: {lab.record('two')}; {lab.count('two')}; sleep 100 & echo $! > {lab.q('gpid-two')}; {lab.hold('two')}
          - id: three
            run: {lab.count('three')}
    """)
    runner = lab.spawn("execute", path)
    lab.wait_started("two")
    execution_id = lab.execution_id("two")
    step_pid = lab.pid("two")
    grandchild = int(lab.path("gpid-two").read_text())
    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=20)
    assert runner.returncode == 130, err
    assert out.strip() == execution_id
    wait_for(lambda: not pid_alive(step_pid) and not pid_alive(grandchild), timeout=10,
             what="the step's process group to end")
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "interrupted"
    assert step_record(document, "one")["status"] == "completed"
    assert not lab.path("count-three").exists()

    lab.go("two")
    wfctl("resume", execution_id, "-q")
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    assert lab.lines("count-one") == ["1"]  # completed steps do not run again
    assert lab.lines("count-two") == ["1", "2"]  # the interrupted one runs again, attempt 2
    assert lab.lines("count-three") == ["1"]


# -- prune -----------------------------------------------------------------------------------
def test_prune_removes_finished_executions_and_their_traces_but_not_running_ones(lab):
    good = lab.workflow("""\
        name: prune-good
        steps:
          - id: only
            run: echo ok
    """, "good.yaml")
    bad = lab.workflow("""\
        name: prune-bad
        steps:
          - id: only
            run: exit 1
    """, "bad.yaml")
    held = lab.workflow(f"""\
        name: prune-held
        steps:
          - id: only
            run: {lab.hold('held')}
    """, "held.yaml")
    completed = [wfctl("execute", good, "-q").stdout.strip() for _ in range(2)]
    failed = wfctl("execute", bad, "-q", code=1).stdout.strip()
    running = detach(held)
    lab.wait_started("held")
    finished = completed + [failed]
    traces = {e: home() / "traces" / wfctl_json("execution", e)["workflowId"] / f"{e}.json" for e in finished}
    assert all(path.exists() for path in traces.values())

    wfctl("prune", "--older-than", "banana", code=2)
    wfctl("prune", "--older-than", "-3d", code=2)
    assert wfctl_json("prune", "--older-than", "1d")["count"] == 0

    dry = wfctl_json("prune", "--older-than", "0s", "--dry-run")
    assert dry["dryRun"] is True
    assert sorted(r["executionId"] for r in dry["removed"]) == sorted(finished)
    assert all(execution_dir(e).exists() for e in finished + [running])
    assert all(path.exists() for path in traces.values())

    only_failed = wfctl_json("prune", "--older-than", "0s", "--status", "failed")
    assert [r["executionId"] for r in only_failed["removed"]] == [failed]
    assert not execution_dir(failed).exists() and not traces[failed].exists()
    wfctl("execution", failed, code=3)
    assert all(execution_dir(e).exists() for e in completed)

    result = wfctl("prune", "--older-than", "0s")
    assert "removed 2 executions" in result.stderr
    for execution_id in completed:
        assert not execution_dir(execution_id).exists()
        assert not traces[execution_id].exists()
        wfctl("execution", execution_id, code=3)
    listing = wfctl_json("executions")
    assert [e["executionId"] for e in listing["elements"]] == [running]
    assert not list((home() / "executions").glob(".trash-*"))

    # The running one was kept, and is unharmed.
    assert status_of(running) == "running"
    lab.go("held")
    assert wfctl("watch", running, "-q").returncode == 0
    assert wfctl_json("traces", "prune-held")["count"] == 1
    assert wfctl_json("traces", "prune-good")["count"] == 0


# -- priority and the run queue --------------------------------------------------------------
def test_low_priority_runs_its_step_processes_with_a_higher_nice_value(lab):
    # Each of 20 loop iterations reads its shell's nice value as its very first command
    # (a step runs at its priority from its first instruction, not from some time later),
    # and a child of that shell reads its own.
    path = lab.workflow(f"""\
        name: niceness
        steps:
          - id: probe
            type: loop
            items: 20
            maxConcurrency: 4
            step:
              id: probe-one
              run: |
                read -r stat < /proc/$$/stat
                set -- ${{stat##*) }}
                shift 16
                echo "$1" > {lab.q('nice-shell-$WFCTL_PRIORITY-$WFCTL_INDEX')}
                cut -d' ' -f19 /proc/self/stat > {lab.q('nice-child-$WFCTL_PRIORITY-$WFCTL_INDEX')}
    """)
    runs = {}
    for priority in ("normal", "low", "high"):
        document = wfctl_json("execute", path, "--priority", priority)
        assert document["status"] == "completed"
        assert document["priority"] == priority
        assert wfctl_json("execution", document["executionId"])["priority"] == priority
        runs[priority] = {
            who: sorted(int(lab.path(f"nice-{who}-{priority}-{n}").read_text()) for n in range(20))
            for who in ("shell", "child")
        }
    normal = max(runs["normal"]["shell"] + runs["normal"]["child"])
    assert min(runs["low"]["child"]) > normal, runs
    assert min(runs["low"]["shell"]) > normal, f"a low-priority step ran at the normal nice value first: {runs}"
    assert runs["high"] == runs["normal"], runs
    listing = {e["executionId"]: e["priority"] for e in wfctl_json("executions")["elements"]}
    assert sorted(listing.values()) == ["high", "low", "normal"]


def test_queue_serves_high_priority_before_low_when_max_running_is_reached(lab):
    wfctl("config", "set", "defaults.max_running", "1")
    holder = lab.workflow(f"""\
        name: queue-holder
        steps:
          - id: first
            run: echo holder >> {lab.q('order')}; {lab.hold('holder')}
    """, "holder.yaml")
    queued = lab.workflow(f"""\
        name: queue-waiter
        steps:
          - id: first
            run: echo "{{{{ input.who }}}}" >> {lab.q('order')}
          - id: second
            run: echo ok
    """, "queued.yaml")
    first = detach(holder)
    lab.wait_started("holder")
    low = detach(queued, "--priority", "low", "--input", '{"who": "low"}')
    high = detach(queued, "--priority", "high", "--input", '{"who": "high"}')
    # Both wait for the one slot: neither has started a step.
    assert lab.lines("order") == ["holder"]
    assert status_of(low) == "pending" and status_of(high) == "pending"
    assert holds_for(lambda: lab.lines("order") == ["holder"], seconds=0.5)

    lab.go("holder")
    for execution_id in (first, high, low):
        wait_status(execution_id, "completed")
    assert lab.lines("order") == ["holder", "high", "low"]
    for execution_id, priority in ((first, "normal"), (high, "high"), (low, "low")):
        assert wfctl_json("execution", execution_id)["priority"] == priority
