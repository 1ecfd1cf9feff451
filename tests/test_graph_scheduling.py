"""`depends`: lists of steps scheduled as graphs, end to end through the installed `wfctl`.

Steps write their own timestamps (`date +%s%N`) and coordinate with the test through
files (tests/lifecycle_helpers.py `Lab`): a step that must overlap with others waits,
bounded, until they have started too, so "they ran at the same time" is observed from
the steps' own clocks and never assumed from a sleep. Semantics without processes are in
tests/test_model.py.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import EXAMPLES, tree_snapshot
from helpers import records
from lifecycle_helpers import (
    WAIT,
    detach,
    execution_dir,
    holds_for,
    journal_events,
    kill_group,
    lab_in,
    pid_alive,
    step_record,
    wait_for,
    wait_status,
    wfctl,
    wfctl_json,
)


@pytest.fixture
def lab(tmp_path):
    yield from lab_in(tmp_path)


def stamp(lab, name: str) -> str:
    """Shell: append the current time in nanoseconds to `time-<name>`."""
    return f"date +%s%N >> {lab.q('time-' + name)}"


def times(lab, name: str) -> list[int]:
    return [int(word) for word in lab.lines("time-" + name)]


def workflow(lab, name: str, steps: list[dict], **top) -> str:
    """A workflow file written as JSON (shell text needs no YAML quoting there)."""
    return lab.workflow(json.dumps({"name": name, **top, "steps": steps}), f"{name}.json")


def barrier(lab, name: str, others: list[str]) -> str:
    """Shell: say `name` started, then wait (bounded) until every one of `others` has."""
    waits = " && ".join(f"[ -e {lab.q('started-' + other)} ]" for other in others)
    return (f"{lab.started(name)}; i=0; until {waits}; do [ $i -ge 400 ] && break; sleep 0.05; i=$((i+1)); done")


# -- the diamond ---------------------------------------------------------------------------
def test_a_diamonds_middle_steps_overlap_and_its_join_waits_for_all_of_them(lab):
    middle = ["lint", "unit", "integration"]
    path = workflow(lab, "diamond-times", [
        {"id": "fetch", "run": f"{stamp(lab, 'fetch')}; {stamp(lab, 'fetch')}"},
        *({"id": name, "depends": ["fetch"],
           "run": f"{stamp(lab, name)}; {barrier(lab, name, [m for m in middle if m != name])}; {stamp(lab, name)}"}
          for name in middle),
        {"id": "package", "depends": "lint && unit && integration", "run": stamp(lab, "package")},
    ], maxConcurrency=3)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    fetch_end = times(lab, "fetch")[1]
    starts = {name: times(lab, name)[0] for name in middle}
    ends = {name: times(lab, name)[1] for name in middle}
    assert min(starts.values()) >= fetch_end  # the middle waits for fetch
    assert max(starts.values()) < min(ends.values())  # all three ran at the same time
    assert times(lab, "package")[0] >= max(ends.values())  # the join starts after all of them
    assert records(document)["package"]["dependsOn"] == "lint && unit && integration"
    assert records(document)["lint"]["dependsOn"] == ["fetch"]


def test_the_diamond_example_reports_after_a_failure_and_skips_the_package(wfctl_json, wfctl, tmp_path):
    path = EXAMPLES / "diamond.yaml"
    result = wfctl("execute", path, "--input", '{"broken": "unit"}', "--json", code=1, cwd=tmp_path)
    document = json.loads(result.stdout)
    steps = records(document)
    assert document["status"] == "failed" and document["error"]["step"] == "unit"
    assert {key: steps[key]["status"] for key in steps} == {
        "fetch": "completed", "lint": "completed", "unit": "failed", "integration": "completed",
        "package": "skipped", "report": "completed"}
    assert steps["package"]["skipReason"] == "dependency not met: lint && unit && integration (unit failed)"
    assert steps["report"]["output"] == {"report": "lint completed, unit failed, integration completed"}
    # the report started after the failure (it depends on it), as the journal shows
    events = journal_events(document["executionId"])
    unit_end = next(i for i, e in enumerate(events) if e["type"] == "step.finished" and e["step"] == "unit")
    report_start = next(i for i, e in enumerate(events) if e["type"] == "step.started" and e["step"] == "report")
    assert report_start > unit_end


def test_after_a_failure_running_steps_finish_and_only_accepting_steps_start(lab):
    """`slow` runs beside `fails`; once `fails` has failed, `slow` finishes, `after-slow`
    (ready only later, and not accepting the failure) stays pending, `cleanup` runs."""
    path = lab.workflow(f"""\
        name: stop-on-failure
        maxConcurrency: 4
        steps:
          - id: slow
            depends: []
            run: {lab.hold('slow')}; {lab.count('slow')}
          - id: fails
            depends: []
            run: {lab.started('fails')}; exit 4
          - id: after-slow
            depends: [slow]
            run: {lab.count('after-slow')}
          - id: cleanup
            depends: fails.failed
            run: {lab.count('cleanup')}
    """)
    runner = lab.spawn("execute", path, "--json")
    lab.wait_started("slow")
    lab.wait_started("fails")
    wait_for(lambda: lab.lines("count-cleanup"), what="cleanup to run after the failure")
    assert lab.lines("count-slow") == []  # still running: a failure does not stop it
    lab.go("slow")
    out, err = runner.communicate(timeout=WAIT)
    assert runner.returncode == 1, err
    document = json.loads(out)
    steps = records(document)
    assert {key: steps[key]["status"] for key in steps} == {
        "slow": "completed", "fails": "failed", "after-slow": "pending", "cleanup": "completed"}
    assert lab.lines("count-after-slow") == []
    assert document["error"]["step"] == "fails" and document["error"]["exitCode"] == 4


def test_fail_fast_cancels_the_running_steps_and_retry_keeps_it(lab):
    path = lab.workflow(f"""\
        name: fail-fast
        maxConcurrency: 4
        steps:
          - id: slow
            depends: []
            run: {lab.record('slow')}; {lab.hold('slow-$WFCTL_ATTEMPT')}; {lab.count('slow')}
          - id: fails
            depends: []
            run: {barrier(lab, 'fails', ['slow-$WFCTL_ATTEMPT'])}; exit 4
          - id: cleanup
            depends: fails.completed
            run: {lab.count('cleanup')}
    """)
    result = wfctl("execute", path, "--fail-fast", "--json", code=1)
    document = json.loads(result.stdout)
    execution_id = document["executionId"]
    steps = records(document)
    assert (steps["slow"]["status"], steps["fails"]["status"], steps["cleanup"]["status"]) == (
        "cancelled", "failed", "completed")
    assert lab.lines("count-slow") == []  # its process was terminated before it could count
    frozen = json.loads((execution_dir(execution_id) / "workflow.json").read_text())
    assert frozen["options"]["failFast"] is True

    # The retry runs with --fail-fast again: `slow` (cancelled, not failed) runs again and
    # is cancelled again when `fails` fails again.
    wfctl("retry", execution_id, "fails", "-q", code=1)
    document = wfctl_json("execution", execution_id)
    steps = records(document)
    assert steps["slow"]["status"] == "cancelled" and [a["status"] for a in steps["slow"]["attempts"]] == [
        "failed", "failed"]
    assert lab.lines("attempts-slow") == ["1", "2"] and lab.lines("count-slow") == []
    assert lab.lines("count-cleanup") == ["1"]  # completed: not run again


def test_without_fail_fast_nothing_is_recorded_and_steps_finish(lab):
    path = lab.workflow("""\
        name: no-fail-fast
        steps:
          - {id: a, run: "true"}
    """)
    document = wfctl_json("execute", path)
    frozen = json.loads((execution_dir(document["executionId"]) / "workflow.json").read_text())
    assert frozen["options"]["failFast"] is False


# -- bounds --------------------------------------------------------------------------------
def test_max_concurrency_bounds_a_graph(lab):
    path = workflow(lab, "bounded", [{"id": f"s{i}", "depends": [], "run": lab.hold(f"s{i}")} for i in range(4)],
                    maxConcurrency=2)
    runner = lab.spawn("execute", path, "-q")
    lab.wait_started("s0")
    lab.wait_started("s1")
    assert holds_for(lambda: not lab.path("started-s2").exists() and not lab.path("started-s3").exists())
    lab.go("s0")
    lab.wait_started("s2")  # a slot freed: the next step in document order starts
    assert not lab.path("started-s3").exists()
    for name in ("s1", "s2", "s3"):
        lab.go(name)
    assert runner.wait(timeout=WAIT) == 0


# -- crash and resume, retry ---------------------------------------------------------------
def test_kill_9_in_the_middle_of_a_graph_then_resume_runs_no_completed_step_again(lab):
    path = workflow(lab, "crash-graph", [
        {"id": "fetch", "run": f"{lab.count('fetch')}; echo '{{\"rev\": 7}}'", "output": "source"},
        {"id": "quick", "depends": ["fetch"], "input": "source", "run": f"{lab.count('quick')}; echo quick",
         "output": "quick-out"},
        {"id": "held", "depends": ["fetch"], "output": "held-out",
         "run": f"{lab.record('held')}; {lab.count('held')}; {lab.hold('held-$WFCTL_ATTEMPT')}; echo held"},
        {"id": "join", "depends": "quick && held", "input": ["source", "quick-out", "held-out"],
         "run": f"{lab.count('join')}; printf '%s' \"$WFCTL_INPUT\""},
    ], maxConcurrency=3)
    runner = lab.spawn("execute", path, "-q")
    lab.wait_started("held-1")
    execution_id = lab.execution_id("held")
    wait_for(lambda: step_record(wfctl_json("execution", execution_id), "quick")["status"] == "completed",
             what="quick to complete")
    os.kill(runner.pid, signal.SIGKILL)
    assert runner.wait(timeout=10) == -signal.SIGKILL
    step_pid = lab.pid("held")
    kill_group(step_pid)
    wait_for(lambda: not pid_alive(step_pid), timeout=10, what="the orphaned step to end")
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "interrupted"
    assert step_record(document, "join")["status"] == "pending"

    lab.go("held-2")
    wfctl("resume", execution_id, "-q")
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    assert lab.lines("count-fetch") == ["1"] and lab.lines("count-quick") == ["1"]  # not run again
    assert lab.lines("count-held") == ["1", "2"]  # the step in flight ran again
    assert lab.lines("count-join") == ["1"]
    assert step_record(document, "join")["output"] == {
        "source": {"rev": 7}, "quick-out": "quick", "held-out": "held"}


def test_retry_of_a_failed_graph_step_reruns_it_and_its_downstream_only(lab):
    path = lab.workflow(f"""\
        name: retry-graph
        maxConcurrency: 4
        steps:
          - id: fetch
            run: {lab.count('fetch')}
          - id: a
            depends: [fetch]
            run: {lab.count('a')}; {barrier(lab, 'a', ['b'])}; [ -e {lab.q('fixed-a')} ]
          - id: after-a
            depends: [a]
            run: {lab.count('after-a')}
          - id: b
            depends: [fetch]
            run: {lab.count('b')}; {barrier(lab, 'b', ['a'])}; [ -e {lab.q('fixed-b')} ]
          - id: after-b
            depends: [b]
            run: {lab.count('after-b')}
          - id: side
            depends: [fetch]
            run: {lab.count('side')}
    """)
    result = wfctl("execute", path, "--json", code=1)
    execution_id = json.loads(result.stdout)["executionId"]
    steps = records(wfctl_json("execution", execution_id))
    assert (steps["a"]["status"], steps["b"]["status"]) == ("failed", "failed")
    assert steps["after-a"]["status"] == "skipped" and steps["after-b"]["status"] == "skipped"
    assert steps["after-a"]["skipReason"] == "dependency not met: a (a failed)"

    lab.path("fixed-a").touch()
    lab.path("fixed-b").touch()  # b would succeed now, but it is not what is retried
    result = wfctl("retry", execution_id, "a", "--json", code=1)
    document = json.loads(result.stdout)
    steps = records(document)
    assert steps["a"]["status"] == "completed" and steps["after-a"]["status"] == "completed"
    assert steps["b"]["status"] == "failed" and steps["after-b"]["status"] == "skipped"
    assert document["status"] == "failed" and document["error"]["step"] == "b"
    assert lab.lines("count-a") == ["1", "2"] and lab.lines("count-after-a") == ["1"]
    assert lab.lines("count-b") == ["1"] and lab.lines("count-fetch") == ["1"] and lab.lines("count-side") == ["1"]

    document = wfctl_json("retry", execution_id, "b")  # now the other one, and its downstream
    assert document["status"] == "completed"
    assert lab.lines("count-b") == ["1", "2"] and lab.lines("count-after-b") == ["1"]
    assert lab.lines("count-a") == ["1", "2"] and lab.lines("count-fetch") == ["1"]


def test_pause_holds_a_graph_between_steps_and_resume_continues_it(lab):
    path = workflow(lab, "pause-graph", [
        {"id": "a", "depends": [], "run": lab.hold("a")},
        {"id": "b", "depends": [], "run": lab.hold("b")},
        {"id": "join", "depends": ["a", "b"], "run": lab.count("join")},
    ], maxConcurrency=2)
    execution_id = detach(path)
    lab.wait_started("a")
    lab.wait_started("b")
    pauser = lab.spawn("pause", execution_id)
    wait_for((execution_dir(execution_id) / "pause.json").exists, what="the pause request")
    lab.go("a")
    lab.go("b")  # both running steps finish; the join does not start
    document = wait_status(execution_id, "paused")
    assert pauser.wait(timeout=WAIT) == 0
    assert [step_record(document, key)["status"] for key in ("a", "b", "join")] == ["completed", "completed", "pending"]
    assert lab.lines("count-join") == []
    wfctl("resume", execution_id)
    wait_status(execution_id, "completed")
    assert lab.lines("count-join") == ["1"]


def test_cancel_stops_every_running_step_of_a_graph(lab):
    path = workflow(lab, "cancel-graph", [
        {"id": "a", "depends": [], "run": f"{lab.record('a')}; {lab.hold('a')}"},
        {"id": "b", "depends": [], "run": f"{lab.record('b')}; {lab.hold('b')}"},
        {"id": "join", "depends": ["a", "b"], "run": lab.count("join")},
    ], maxConcurrency=2)
    execution_id = detach(path)
    lab.wait_started("a")
    lab.wait_started("b")
    pids = [lab.pid("a"), lab.pid("b")]
    document = wfctl_json("cancel", execution_id, "--reason", "enough")
    assert document["status"] == "cancelled" and document["cancelReason"] == "enough"
    assert [step_record(document, key)["status"] for key in ("a", "b", "join")] == ["cancelled", "cancelled", "pending"]
    for pid in pids:
        wait_for(lambda pid=pid: not pid_alive(pid), what=f"step process {pid} to be terminated")
    assert lab.lines("count-join") == []


# -- what people see -----------------------------------------------------------------------
def test_pending_steps_show_what_they_wait_for(lab):
    path = lab.workflow(f"""\
        name: waiting
        steps:
          - id: first
            depends: []
            run: {lab.hold('first')}
          - id: second
            depends: first.succeeded || first.failed
            run: "true"
    """)
    execution_id = detach(path)
    lab.wait_started("first")
    text = wfctl("execution", execution_id).stdout
    line = next(line for line in text.splitlines() if "second" in line)
    assert "pending" in line and "waits for first" in line
    document = wfctl_json("execution", execution_id)
    assert step_record(document, "second")["dependsOn"] == "first.succeeded || first.failed"
    lab.go("first")
    wait_status(execution_id, "completed")
    assert "waits for" not in wfctl("execution", execution_id).stdout


def test_graph_draws_real_edges_with_conditions(wfctl):
    text = wfctl("graph", EXAMPLES / "diamond.yaml").stdout
    for edge in ("n_fetch --> n_lint", "n_fetch --> n_unit", "n_fetch --> n_integration",
                 "n_lint --> n_package", "n_unit --> n_package", "n_integration --> n_package",
                 "n_unit -->|completed| n_report", "n_package --> wf_end", "n_report --> wf_end",
                 "wf_start --> n_fetch"):
        assert f"    {edge}\n" in text, edge
    assert "n_lint --> n_unit" not in text  # no chain: the checks are side by side
    dot = wfctl("graph", EXAMPLES / "diamond.yaml", "--format", "dot").stdout
    assert 'n_unit -> n_report [label="completed"];' in dot and "n_unit -> n_package;" in dot


def test_a_dry_run_walks_the_graph(wfctl_json):
    document = wfctl_json("execute", EXAMPLES / "diamond.yaml", "--dry-run")
    assert document["status"] == "completed"
    events = journal_events(document["executionId"])
    order = [e["step"] for e in events if e["type"] == "step.finished"]
    assert order[0] == "fetch" and set(order[1:4]) == {"lint", "unit", "integration"}
    assert set(order[4:]) == {"package", "report"}


# -- refused before anything runs ----------------------------------------------------------
def test_a_cycle_is_refused_with_exit_2_and_nothing_written(wfctl, workflow_file, wfctl_home):
    path = workflow_file("""\
        name: cyclic
        steps:
          - id: a
            run: "true"
            depends: [c]
          - id: b
            run: "true"
            depends: [a]
          - id: c
            run: "true"
            depends: b.succeeded
    """)
    before = tree_snapshot(wfctl_home)
    result = wfctl("execute", path, code=2)
    assert f"{path}:5: steps[0].depends: steps depend on each other in a cycle: a → b → c → a" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree_snapshot(wfctl_home) == before
    assert wfctl("validate", path, code=2).stderr.count("depend on each other") == 1


def test_an_input_from_a_step_that_is_not_an_ancestor_is_refused(wfctl, workflow_file, wfctl_home):
    path = workflow_file("""\
        name: not-an-ancestor
        steps:
          - id: make
            run: echo made
            output: made
          - id: use
            depends: []
            input: made
            run: echo "$WFCTL_INPUT"
    """)
    before = tree_snapshot(wfctl_home)
    result = wfctl("execute", path, code=2)
    assert (f"{path}:8: steps[1].input: 'made' is produced by step 'make', which is not sure to have succeeded "
            "when 'use' starts") in result.stderr
    assert tree_snapshot(wfctl_home) == before


def test_depends_problems_are_one_sentence_each_with_path_and_line(wfctl_json, workflow_file):
    path = workflow_file("""\
        name: bad-depends
        steps:
          - id: build
            run: "true"
          - id: group
            type: parallel
            steps:
              - id: inner
                run: "true"
                depends: [buidl]
          - id: test
            run: "true"
            depends: build && (inner.succeeded || test)
          - id: deploy
            run: "true"
            depends: build &&
    """)
    document = wfctl_json("validate", path, code=2)
    found = sorted((p["path"], p["line"], p["message"]) for p in document["problems"])
    assert found == [
        ("steps[1].steps[0].depends", 10, "depends names 'buidl', but no step has that id"),
        ("steps[2].depends", 13, "depends names 'inner', which is in another list: depends may only name steps "
                                 "of the same list"),
        ("steps[2].depends", 13, "step 'test' depends on itself"),
        ("steps[3].depends", 16, "invalid depends expression: the expression ends where a step id was expected "
                                 "(at character 9)"),
    ]
