"""`wfctl retry EXEC STEP` end to end through the installed `wfctl`.

Every step appends a line to a side-effect file, so "completed steps did not run again"
is counted, not assumed. A step fails the first time and succeeds on retry by testing
for a file that the test creates between the two runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from servers import http_server
from helpers import records, write


# -- helpers ---------------------------------------------------------------------------------
def ran(tmp_path: Path) -> list[str]:
    """The side-effect file: one line per step run, in the order they ran."""
    path = tmp_path / "ran"
    return path.read_text().split() if path.exists() else []


def wait_until(predicate, what: str, timeout: float = 20.0):
    """Poll `predicate` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def spawn(*args) -> subprocess.Popen:
    """The installed `wfctl` in the background (environment from conftest)."""
    return subprocess.Popen(["wfctl", *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running_execution(wfctl_json) -> str:
    def find():
        elements = wfctl_json("executions")["elements"]
        return elements[0]["executionId"] if elements else None

    return wait_until(find, "the execution to be listed")


# A step that says it started, then waits (at most 20 s) for a go file.
HOLD = 'touch "__DIR__/started"; for i in $(seq 400); do [ -e "__DIR__/go" ] && break; sleep 0.05; done; [ -e "__DIR__/go" ]'


def attempt_sections(log: str) -> list[int]:
    return [int(line.split()[2]) for line in log.splitlines() if line.startswith("=== attempt ")]


THREE_STEPS = """\
    name: three-steps
    steps:
      - id: first
        run: echo first >> "__DIR__/ran"; echo '{"n":1}'
        output: one
      - id: second
        input: one
        run: |
          echo second >> "__DIR__/ran"
          [ -e "__DIR__/fixed" ] || { echo "not fixed yet" >&2; exit 1; }
          echo "second saw $WFCTL_INPUT"
        output: two
      - id: third
        input: [one, two]
        run: echo third >> "__DIR__/ran"; printf '%s' "$WFCTL_INPUT"
        output: three
    """


# -- retry of a top-level step ---------------------------------------------------------------
def test_retry_a_failed_step_reuses_every_output_and_runs_on_to_the_end(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, THREE_STEPS, DIR=tmp_path)
    failed = wfctl_json("execute", path, code=1)
    execution_id = failed["executionId"]
    assert [r["status"] for r in failed["steps"]] == ["completed", "failed", "pending"]
    assert ran(tmp_path) == ["first", "second"]

    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", execution_id, "second")
    assert document["executionId"] == execution_id  # one execution, more attempts
    assert document["status"] == "completed"
    assert ran(tmp_path) == ["first", "second", "second", "third"]  # first did not run again
    steps = records(document)
    assert [a["attempt"] for a in steps["first"]["attempts"]] == [1]
    assert [(a["attempt"], a["status"]) for a in steps["second"]["attempts"]] == [(1, "failed"), (2, "completed")]
    assert steps["second"]["output"] == {"two": 'second saw {"one":{"n":1}}'}
    # third got first's output from the first run and second's from the retry
    assert steps["third"]["output"] == {"three": {"one": {"n": 1}, "two": 'second saw {"one":{"n":1}}'}}
    assert "error" not in document
    assert document["progress"]["percentage"] == 100
    # The stored execution, the logs and the trace are those of the one execution.
    assert wfctl_json("execution", execution_id)["status"] == "completed"
    assert attempt_sections(wfctl("logs", execution_id, "second").stdout) == [1, 2]
    traces = wfctl_json("traces", "three-steps")
    assert traces["count"] == 1
    assert traces["elements"][0]["id"] == execution_id
    assert traces["elements"][0]["status"] == "executed"
    trace = wfctl_json("trace", "three-steps", execution_id)
    stages = {stage["node_name"]: stage for stage in trace["response"]["stages"]}
    assert [a["attempt"] for a in stages["second"]["attempts"]] == [1, 2]
    assert stages["third"]["status"] == "SUCCESS"
    assert wfctl_json("executions")["count"] == 1


def test_retry_without_json_prints_the_execution_id_and_exits_0(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, THREE_STEPS, DIR=tmp_path)
    execution_id = wfctl_json("execute", path, code=1)["executionId"]
    (tmp_path / "fixed").touch()
    result = wfctl("retry", execution_id, "second")
    assert result.stdout.strip() == execution_id


def test_attempts_are_numbered_on_across_retries(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: numbered-on
        steps:
          - id: flaky
            run: |
              echo "flaky $WFCTL_ATTEMPT" >> "__DIR__/ran"
              [ -e "__DIR__/fixed" ]
            errorHandling: {strategy: retry, maxRetries: 1, delay: 0.05}
        """, DIR=tmp_path)
    execution_id = wfctl_json("execute", path, code=1)["executionId"]
    assert ran(tmp_path) == ["flaky", "1", "flaky", "2"]
    # a retry that fails again: its own retries are numbered on too, and it exits 1
    again = wfctl_json("retry", execution_id, "flaky", code=1)
    assert again["status"] == "failed"
    assert [a["attempt"] for a in again["steps"][0]["attempts"]] == [1, 2, 3, 4]
    (tmp_path / "fixed").touch()
    done = wfctl_json("retry", execution_id, "flaky")
    assert done["status"] == "completed"
    attempts = done["steps"][0]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4, 5]
    assert [a["status"] for a in attempts] == ["failed"] * 4 + ["completed"]
    assert ran(tmp_path)[-2:] == ["flaky", "5"]
    assert attempt_sections(wfctl("logs", execution_id, "flaky").stdout) == [1, 2, 3, 4, 5]


# -- retry of nested steps -------------------------------------------------------------------
def test_retry_a_failed_parallel_child(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: parallel-retry
        steps:
          - id: build
            type: parallel
            steps:
              - id: backend
                run: echo backend >> "__DIR__/ran"; echo api
                output: backend-out
              - id: frontend
                run: |
                  echo frontend >> "__DIR__/ran"
                  [ -e "__DIR__/fixed" ] || exit 1
                  echo web
                output: frontend-out
              - id: docs
                run: echo docs >> "__DIR__/ran"; echo manual
                output: docs-out
          - id: ship
            input: [backend-out, frontend-out]
            run: echo ship >> "__DIR__/ran"; printf '%s' "$WFCTL_INPUT"
            output: shipped
        """, DIR=tmp_path)
    failed = wfctl_json("execute", path, code=1)
    assert records(failed)["frontend"]["status"] == "failed"
    assert records(failed)["ship"]["status"] == "pending"
    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", failed["executionId"], "frontend")
    assert document["status"] == "completed"
    counts = {name: ran(tmp_path).count(name) for name in ("backend", "frontend", "docs", "ship")}
    assert counts == {"backend": 1, "frontend": 2, "docs": 1, "ship": 1}
    steps = records(document)
    assert steps["build"]["status"] == "completed"
    assert [a["attempt"] for a in steps["frontend"]["attempts"]] == [1, 2]
    assert steps["ship"]["output"] == {"shipped": {"backend-out": "api", "frontend-out": "web"}}


def test_retry_a_failed_loop_iteration(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: loop-retry
        steps:
          - id: list
            run: echo list >> "__DIR__/ran"; echo '[10,20,30,40]'
            output: numbers
          - id: process-all
            type: loop
            items: numbers
            step:
              id: process
              run: |
                echo "process-$WFCTL_INDEX" >> "__DIR__/ran"
                if [ "$WFCTL_INDEX" = 2 ] && [ ! -e "__DIR__/fixed" ]; then exit 1; fi
                echo "{{ item }}"
            output: processed
          - id: total
            input: processed
            run: echo total >> "__DIR__/ran"; printf '%s' "$WFCTL_INPUT"
            output: total
        """, DIR=tmp_path)
    failed = wfctl_json("execute", path, code=1)
    steps = records(failed)
    assert steps["process[2]"]["status"] == "failed"
    assert "process[3]" not in steps or steps["process[3]"]["status"] == "pending"
    assert ran(tmp_path) == ["list", "process-0", "process-1", "process-2"]
    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", failed["executionId"], "process[2]")
    assert document["status"] == "completed"
    assert ran(tmp_path) == ["list", "process-0", "process-1", "process-2", "process-2", "process-3", "total"]
    steps = records(document)
    assert [a["attempt"] for a in steps["process[2]"]["attempts"]] == [1, 2]
    assert [a["attempt"] for a in steps["process[0]"]["attempts"]] == [1]
    assert steps["process-all"]["output"] == {"processed": [10, 20, 30, 40]}
    assert steps["total"]["output"] == {"total": {"processed": [10, 20, 30, 40]}}
    assert attempt_sections(wfctl("logs", failed["executionId"], "process[2]").stdout) == [1, 2]


def test_retry_a_failed_step_inside_a_branch(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: branch-retry
        steps:
          - id: check
            run: echo check >> "__DIR__/ran"; echo '{"ready":true}'
            output: status
          - id: decide
            type: conditional
            condition: status.ready == true
            then:
              - id: prepare
                run: echo prepare >> "__DIR__/ran"; echo prepared
                output: prepared
              - id: release
                input: prepared
                run: |
                  echo release >> "__DIR__/ran"
                  [ -e "__DIR__/fixed" ] || exit 1
                  printf '%s' "$WFCTL_INPUT"
                output: released
            else:
              id: hold
              run: echo hold >> "__DIR__/ran"
        """, DIR=tmp_path)
    failed = wfctl_json("execute", path, code=1)
    assert records(failed)["release"]["status"] == "failed"
    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", failed["executionId"], "release")
    assert document["status"] == "completed"
    assert ran(tmp_path) == ["check", "prepare", "release", "release"]
    steps = records(document)
    assert steps["hold"]["status"] == "skipped"
    assert steps["release"]["output"] == {"released": {"prepared": "prepared"}}


def test_a_continued_failure_is_not_run_again_by_a_retry(wfctl_json, tmp_path):
    # A failure the workflow went past (strategy continue) stays settled on a retry of
    # another step: it does not run again.
    path = write(tmp_path, """\
        name: continued-retry
        steps:
          - id: optional
            run: echo optional >> "__DIR__/ran"; exit 1
            errorHandling: {strategy: continue}
          - id: needed
            run: echo needed >> "__DIR__/ran"; [ -e "__DIR__/fixed" ]
        """, DIR=tmp_path)
    failed = wfctl_json("execute", path, code=1)
    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", failed["executionId"], "needed")
    assert document["status"] == "completed"
    assert ran(tmp_path) == ["optional", "needed", "needed"]
    assert records(document)["optional"]["continued"] is True


def test_a_retried_execution_notifies_where_the_first_run_did(wfctl_json, tmp_path):
    path = write(tmp_path, THREE_STEPS, DIR=tmp_path)
    with http_server() as web:
        failed = wfctl_json("execute", path, "--notify-webhook", web.url + "/hook", code=1)
        [first] = web.wait_for(1)
        (tmp_path / "fixed").touch()
        document = wfctl_json("retry", failed["executionId"], "second")
        requests = web.wait_for(2)
    assert first.json["event"] == "failed"
    assert requests[1].json["event"] == "completed"
    assert requests[1].json["executionId"] == failed["executionId"]
    assert [n["event"] for n in document["notifications"]] == ["failed", "completed"]


# -- which definition ------------------------------------------------------------------------
EDITABLE = """\
    name: edited-later
    steps:
      - id: gate
        run: echo gate >> "__DIR__/ran"; [ -e "__DIR__/fixed" ]
      - id: announce
        run: echo "__WORD__" >> "__DIR__/ran"; echo __WORD__
        output: word
    """


def test_retry_runs_the_definition_the_execution_started_with(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, EDITABLE, DIR=tmp_path, WORD="version-one")
    execution_id = wfctl_json("execute", path, code=1)["executionId"]
    # The workflow changes under the same name after the run started.
    write(tmp_path, EDITABLE, DIR=tmp_path, WORD="version-two")
    wfctl("create", path, "--update")
    assert "version-two" in json.dumps(wfctl_json("show", "edited-later"))
    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", execution_id, "gate")
    assert document["status"] == "completed"
    assert records(document)["announce"]["output"] == {"word": "version-one"}
    assert ran(tmp_path) == ["gate", "gate", "version-one"]


def test_retry_works_after_the_workflow_was_deleted(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, EDITABLE, DIR=tmp_path, WORD="still-here")
    execution_id = wfctl_json("execute", path, code=1)["executionId"]
    wfctl("delete", "edited-later")
    wfctl("show", "edited-later", code=3)
    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", execution_id, "gate")
    assert document["status"] == "completed"
    assert ran(tmp_path) == ["gate", "gate", "still-here"]
    assert wfctl_json("execution", execution_id)["status"] == "completed"


# -- executions that did not fail, steps that did not fail, names that do not exist -----------
def test_retry_of_a_completed_execution_is_refused_with_exit_6(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: all-good
        steps:
          - id: fine
            run: echo fine >> "__DIR__/ran"
        """, DIR=tmp_path)
    execution_id = wfctl_json("execute", path)["executionId"]
    result = wfctl("retry", execution_id, "fine", code=6)
    assert "completed" in result.stderr
    assert "only a failed" in result.stderr
    assert result.stderr.count("\n") == 1  # one sentence
    error = wfctl_json("retry", execution_id, "fine", code=6)
    assert "completed" in error["error"]
    assert ran(tmp_path) == ["fine"]  # nothing ran again


def test_retry_of_a_step_that_completed_is_refused_with_exit_6(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, THREE_STEPS, DIR=tmp_path)
    execution_id = wfctl_json("execute", path, code=1)["executionId"]
    result = wfctl("retry", execution_id, "first", code=6)
    assert "first" in result.stderr and "completed" in result.stderr
    assert ran(tmp_path) == ["first", "second"]  # nothing ran
    assert wfctl_json("execution", execution_id)["status"] == "failed"


def test_retry_of_an_unknown_execution_or_step_is_not_found(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, THREE_STEPS, DIR=tmp_path)
    execution_id = wfctl_json("execute", path, code=1)["executionId"]
    missing = wfctl("retry", "exec_0000000000000000", "second", code=3)
    assert "exec_0000000000000000" in missing.stderr
    unknown = wfctl("retry", execution_id, "no-such-step", code=3)
    assert "no-such-step" in unknown.stderr
    wfctl_json("retry", execution_id, "no-such-step", code=3)
    assert ran(tmp_path) == ["first", "second"]


def test_retry_refuses_ids_that_are_not_ids(wfctl, tmp_path):
    wfctl("retry", "../../etc", "second", code=2)
    wfctl("retry", "exec_0000000000000000", "../x", code=2)


# -- other ends ------------------------------------------------------------------------------
def test_retry_a_timed_out_execution(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: timed-out-then-retried
        timeout: 2
        steps:
          - id: quick
            run: echo quick >> "__DIR__/ran"
          - id: slow
            run: |
              echo slow >> "__DIR__/ran"
              [ -e "__DIR__/fixed" ] || sleep 100
          - id: after
            run: echo after >> "__DIR__/ran"
        """, DIR=tmp_path)
    timed_out = wfctl_json("execute", path, code=5)
    assert timed_out["status"] == "timed_out"
    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", timed_out["executionId"], "slow")
    assert document["status"] == "completed"
    assert ran(tmp_path) == ["quick", "slow", "slow", "after"]
    assert [a["attempt"] for a in records(document)["slow"]["attempts"]] == [1, 2]


def test_retry_of_a_running_execution_is_refused_with_exit_6(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: still-running
        steps:
          - id: hold
            run: |
              echo hold >> "__DIR__/ran"
              __HOLD__
        """, HOLD=HOLD.replace("__DIR__", str(tmp_path)), DIR=tmp_path)
    runner = spawn("execute", path, "-q")
    try:
        wait_until((tmp_path / "started").exists, "the step to start")
        execution_id = running_execution(wfctl_json)
        result = wfctl("retry", execution_id, "hold", code=6)
        assert execution_id in result.stderr
        assert "running" in result.stderr or "being run" in result.stderr
    finally:
        (tmp_path / "go").touch()
        out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    assert ran(tmp_path) == ["hold"]  # the refused retry ran nothing
    assert wfctl_json("execution", execution_id)["status"] == "completed"


def test_retry_an_interrupted_execution(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: interrupted-then-retried
        steps:
          - id: first
            run: echo first >> "__DIR__/ran"
          - id: hold
            run: |
              echo hold >> "__DIR__/ran"
              [ -e "__DIR__/fixed" ] && exit 0
              __HOLD__
          - id: last
            run: echo last >> "__DIR__/ran"
        """, HOLD=HOLD.replace("__DIR__", str(tmp_path)), DIR=tmp_path)
    runner = spawn("execute", path, "-q")
    try:
        wait_until((tmp_path / "started").exists, "the step to start")
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 130
    execution_id = running_execution(wfctl_json)
    assert wfctl_json("execution", execution_id)["status"] == "interrupted"
    assert ran(tmp_path) == ["first", "hold"]
    (tmp_path / "fixed").touch()
    document = wfctl_json("retry", execution_id, "hold")
    assert document["status"] == "completed"
    assert ran(tmp_path) == ["first", "hold", "hold", "last"]
    assert [a["attempt"] for a in records(document)["hold"]["attempts"]] == [1, 2]
