"""Failure handling end to end through the installed `wfctl`: retry with backoff, fallback,
continue, fail, escalation, error kinds, timeouts and notifications.

Steps are real shell commands; a step that must fail a given number of times counts its
own attempts in a file, and every side effect is counted from files, never guessed from
timing. Backoff delays are tiny (0.05 s) so the whole file runs in seconds; the exact
sequence of waits is proven without waiting in test_backoff.py.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from datetime import datetime
from pathlib import Path

from servers import http_server, smtp_server
from helpers import records, write


# -- helpers ---------------------------------------------------------------------------------
def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def attempt_sections(log: str) -> list[int]:
    """The attempt numbers of the `=== attempt N` sections of a step's log, in order."""
    return [int(line.split()[2]) for line in log.splitlines() if line.startswith("=== attempt ")]


def pid_gone(pid: int, within: float = 10.0) -> bool:
    """True once no process has this pid (polls: reaping may lag the kill a little)."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # someone else's process reused the pid: ours is gone
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def read_pid(path: Path, within: float = 10.0) -> int:
    deadline = time.monotonic() + within
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.05)
    return int(path.read_text().strip())


# A step that fails until its attempt number reaches N (WFCTL_ATTEMPT counts from 1).
def fails_until(n: int, counter: Path, code: int = 1) -> str:
    return (f'echo "attempt $WFCTL_ATTEMPT" >> "{counter}"; echo "try $WFCTL_ATTEMPT"; '
            f'[ "$WFCTL_ATTEMPT" -ge {n} ] || {{ echo "not yet" >&2; exit {code}; }}')


# -- retry -----------------------------------------------------------------------------------
def test_workflow_error_handling_is_the_default_and_a_step_overrides_it_field_by_field(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: defaults-and-overrides
        errorHandling: {strategy: retry, maxRetries: 2, backoff: exponential, delay: 0.05, maxDelay: 0.2}
        steps:
          - id: inherits
            run: __A__
          - id: own-backoff
            run: __B__
            errorHandling: {backoff: fixed, maxRetries: 3}
          - id: fewer-retries
            run: __C__
            errorHandling: {maxRetries: 1}
          - id: never
            run: echo never >> "__DIR__/never"
        """, A=repr(fails_until(3, tmp_path / "a")), B=repr(fails_until(4, tmp_path / "b")),
        C=repr(fails_until(99, tmp_path / "c")), DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    steps = records(document)
    # inherits everything: 2 retries, exponential from 0.05
    assert [a["status"] for a in steps["inherits"]["attempts"]] == ["failed", "failed", "completed"]
    assert [a.get("retryIn") for a in steps["inherits"]["attempts"]] == [0.05, 0.1, None]
    assert steps["inherits"]["status"] == "completed"
    # its own backoff and maxRetries, the workflow's delay
    assert [a.get("retryIn") for a in steps["own-backoff"]["attempts"]] == [0.05, 0.05, 0.05, None]
    assert steps["own-backoff"]["status"] == "completed"
    # its own maxRetries, the workflow's strategy: fails the run after 2 attempts
    assert len(steps["fewer-retries"]["attempts"]) == 2
    assert steps["fewer-retries"]["status"] == "failed"
    assert document["status"] == "failed"
    assert document["error"]["step"] == "fewer-retries"
    assert steps["never"]["status"] == "pending"
    assert lines(tmp_path / "a") == ["attempt 1", "attempt 2", "attempt 3"]
    assert len(lines(tmp_path / "b")) == 4
    assert len(lines(tmp_path / "c")) == 2
    assert not (tmp_path / "never").exists()


def test_every_attempt_is_in_the_execution_the_logs_and_the_trace(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: attempts-everywhere
        steps:
          - id: flaky
            run: __RUN__
            output: result
            errorHandling: {strategy: retry, maxRetries: 3, delay: 0.05, maxDelay: 0.2}
        """, RUN=repr(fails_until(3, tmp_path / "count", code=4)))
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    execution_id = document["executionId"]
    shown = wfctl_json("execution", execution_id)
    [step] = shown["steps"]
    attempts = step["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["status"] for a in attempts] == ["failed", "failed", "completed"]
    assert [a["exitCode"] for a in attempts] == [4, 4, 0]
    for attempt in attempts:
        assert attempt["startedAt"] <= attempt["completedAt"]
    assert attempts[0]["completedAt"] <= attempts[1]["startedAt"] <= attempts[1]["completedAt"] <= attempts[2]["startedAt"]
    for failed in attempts[:2]:
        assert failed["error"]["kind"] == "failed"
        assert "exited with code 4" in failed["error"]["message"]
    assert "error" not in attempts[2]
    assert step["output"] == {"result": "try 3"}
    # The step's log: one section per attempt, each with what that attempt printed.
    log = wfctl("logs", execution_id, "flaky").stdout
    assert attempt_sections(log) == [1, 2, 3]
    assert log.count("\nnot yet\n") == 2  # stderr of attempts 1 and 2
    assert log.index("try 1") < log.index("try 2") < log.index("try 3")
    # The trace of the run has the same attempts.
    trace = wfctl_json("trace", "attempts-everywhere", execution_id)
    [stage] = trace["response"]["stages"]
    assert stage["node_name"] == "flaky" and stage["status"] == "SUCCESS"
    assert stage["attempts"] == attempts


def test_every_attempt_of_a_python_agent_has_its_log_section(wfctl, wfctl_json, tmp_path):
    (tmp_path / "wfctl_test_cold_agent.py").write_text(textwrap.dedent("""\
        def run(context):
            if context["attempt"] < 3:
                raise RuntimeError(f"cold start {context['attempt']}")
            return {"warm": context["attempt"]}
        """))
    path = write(tmp_path, """\
        name: python-attempts
        agents:
          cold: {python: "wfctl_test_cold_agent:run"}
        steps:
          - id: warm-up
            agent: cold
            task: warm up
            errorHandling: {strategy: retry, maxRetries: 3, delay: 0.05}
        """)
    document = wfctl_json("execute", path, cwd=tmp_path)
    [step] = document["steps"]
    assert [a["status"] for a in step["attempts"]] == ["failed", "failed", "completed"]
    assert step["attempts"][0]["error"]["message"] == "RuntimeError: cold start 1"
    assert step["output"] == {"warm": 3}
    log = wfctl("logs", document["executionId"], "warm-up").stdout
    assert "cold start 1" in log and "cold start 2" in log
    assert attempt_sections(log) == [1, 2, 3]


def test_every_attempt_of_an_http_agent_has_its_log_section(wfctl, wfctl_json, tmp_path):
    with http_server(status=503, body="busy") as web:
        path = write(tmp_path, """\
            name: http-attempts
            agents:
              remote: {http: "__URL__/agent"}
            steps:
              - id: call
                agent: remote
                task: hello
                errorHandling: {strategy: retry, maxRetries: 2, delay: 0.05}
            """, URL=web.url)
        document = wfctl_json("execute", path, code=1)
        assert len(web.wait_for(3)) == 3
    [step] = document["steps"]
    assert [a["status"] for a in step["attempts"]] == ["failed"] * 3
    assert step["error"]["kind"] == "failed"
    log = wfctl("logs", document["executionId"], "call").stdout
    assert attempt_sections(log) == [1, 2, 3]
    assert log.count("busy") == 3


def test_an_unreachable_http_agent_attempt_still_has_its_log_section(wfctl, wfctl_json, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = write(tmp_path, """\
        name: http-unreachable
        agents:
          remote: {http: "http://127.0.0.1:__PORT__/agent"}
        steps:
          - id: call
            agent: remote
            task: hello
        """, PORT=port)
    document = wfctl_json("execute", path, code=1)
    [step] = document["steps"]
    assert len(step["attempts"]) == 1
    assert "cannot reach" in step["error"]["message"]
    log = wfctl("logs", document["executionId"], "call").stdout
    assert attempt_sections(log) == [1]
    assert "cannot reach" in log


def test_max_retries_zero_runs_once_and_never_waits(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: no-retries
        steps:
          - id: once
            run: echo x >> "__DIR__/count"; exit 1
            errorHandling: {strategy: retry, maxRetries: 0, delay: 30, maxDelay: 60}
        """, DIR=tmp_path)
    began = time.monotonic()
    document = wfctl_json("execute", path, code=1)
    assert time.monotonic() - began < 20  # a 30 s backoff was not waited
    [attempt] = document["steps"][0]["attempts"]
    assert "retryIn" not in attempt
    assert lines(tmp_path / "count") == ["x"]


def test_retry_on_exit_code_retries_only_that_code(wfctl_json, tmp_path):
    # exit 75 ("try again") on attempt 1, exit 3 on attempt 2: only 75 is retried.
    path = write(tmp_path, """\
        name: retry-on-exit
        steps:
          - id: picky
            run: echo x >> "__DIR__/count"; [ "$WFCTL_ATTEMPT" = 1 ] && exit 75; exit 3
            errorHandling: {strategy: retry, maxRetries: 5, delay: 0.05, retryOn: ["exit:75"]}
        """, DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    attempts = document["steps"][0]["attempts"]
    assert [a["exitCode"] for a in attempts] == [75, 3]
    assert document["error"]["exitCode"] == 3
    assert len(lines(tmp_path / "count")) == 2


def test_retry_on_timeout_does_not_retry_a_failure(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: retry-on-timeout
        steps:
          - id: fails
            run: echo x >> "__DIR__/count"; exit 1
            errorHandling: {strategy: retry, maxRetries: 3, delay: 0.05, retryOn: [timeout]}
        """, DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    assert len(document["steps"][0]["attempts"]) == 1
    assert len(lines(tmp_path / "count")) == 1


def test_a_timed_out_attempt_is_retried_by_default(wfctl_json, tmp_path):
    # attempt 1 hangs past its 1 s timeout; attempt 2 answers at once
    path = write(tmp_path, """\
        name: retry-timeout
        steps:
          - id: hangs-once
            timeout: 1
            run: echo x >> "__DIR__/count"; [ "$WFCTL_ATTEMPT" = 1 ] && sleep 100; echo fine
            output: answer
            errorHandling: {strategy: retry, maxRetries: 2, delay: 0.05}
        """, DIR=tmp_path)
    document = wfctl_json("execute", path)
    [step] = document["steps"]
    assert step["status"] == "completed"
    assert [a["status"] for a in step["attempts"]] == ["failed", "completed"]
    assert step["attempts"][0]["error"]["kind"] == "timeout"
    assert step["output"] == {"answer": "fine"}
    assert len(lines(tmp_path / "count")) == 2


def test_max_duration_caps_the_time_spent_on_one_step(wfctl_json, tmp_path):
    # Every attempt takes at least 0.3 s; with maxDuration 1.5 no retry starts after 1.5 s,
    # so at most 1.5/0.3 + 1 attempts run, far from the 51 that maxRetries allows.
    path = write(tmp_path, """\
        name: max-duration
        steps:
          - id: slow
            run: echo x >> "__DIR__/count"; sleep 0.3; exit 1
            errorHandling: {strategy: retry, maxRetries: 50, backoff: fixed, delay: 0.05, maxDuration: 1.5}
        """, DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    [step] = document["steps"]
    tries = len(step["attempts"])
    assert 2 <= tries <= 6
    assert len(lines(tmp_path / "count")) == tries
    # no attempt started after the 1.5 s were up
    first = datetime.fromisoformat(step["attempts"][0]["startedAt"].replace("Z", "+00:00"))
    last = datetime.fromisoformat(step["attempts"][-1]["startedAt"].replace("Z", "+00:00"))
    assert (last - first).total_seconds() <= 1.5 + 0.25  # (+ the time to record a failure)


def test_an_error_is_attempted_once_even_with_retries(wfctl_json, tmp_path):
    # `data.missing`: the engine cannot render the command (a missing field is an error of
    # the step); `cwd` that does not exist: the engine cannot start it. Neither is retried.
    path = write(tmp_path, """\
        name: errors-are-not-retried
        errorHandling: {strategy: retry, maxRetries: 3, delay: 0.05}
        steps:
          - id: make
            run: echo '{"present":1}'
            output: data
          - id: bad-template
            input: data
            run: echo "{{ data.missing }}" >> "__DIR__/count"
            errorHandling: {strategy: continue}
          - id: bad-cwd
            cwd: __DIR__/no-such-directory
            run: echo ran >> "__DIR__/count"
        """, DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    steps = records(document)
    for key in ("bad-template", "bad-cwd"):
        assert steps[key]["status"] == "failed", key
        assert len(steps[key]["attempts"]) == 1, key
        assert steps[key]["error"]["kind"] == "error", key
    assert "missing" in steps["bad-template"]["error"]["message"]
    assert document["error"]["step"] == "bad-cwd" and document["error"]["kind"] == "error"
    assert not (tmp_path / "count").exists()


def test_failure_kinds_failed_timeout_error(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: kinds
        errorHandling: {strategy: continue}
        steps:
          - id: reports-failure
            run: exit 2
          - id: too-slow
            timeout: 0.5
            run: sleep 100
          - id: cannot-run
            run: echo "{{ input.nothing.deeper }}"
        """)
    document = wfctl_json("execute", path)
    steps = records(document)
    assert steps["reports-failure"]["error"]["kind"] == "failed"
    assert steps["reports-failure"]["error"]["exitCode"] == 2
    assert steps["too-slow"]["error"]["kind"] == "timeout"
    assert steps["cannot-run"]["error"]["kind"] == "error"


# -- fallback --------------------------------------------------------------------------------
def test_fallback_stands_in_for_a_failed_step_with_the_error_in_scope(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: with-fallback
        steps:
          - id: fetch
            run: echo x >> "__DIR__/fetch"; echo "upstream is down" >&2; exit 7
            output: prices
            errorHandling:
              strategy: fallback
              maxRetries: 1
              delay: 0.05
              fallback:
                id: cached-prices
                run: |
                  echo x >> "__DIR__/fallback"
                  printf '{"source": "cache", "message": "%s", "kind": "%s", "exitCode": %s, "attempts": %s}' \\
                    "{{ error.message }}" "{{ error.kind }}" "{{ error.exitCode }}" "{{ error.attempts }}"
          - id: report
            input: prices
            run: printf '%s' "$WFCTL_INPUT"
            output: report
        """, DIR=tmp_path)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    steps = records(document)
    fetch = steps["fetch"]
    recovered = {"source": "cache", "message": "exited with code 7: upstream is down", "kind": "failed",
                 "exitCode": 7, "attempts": 2}
    # The step: its attempts and its error, and the fallback's result as its output.
    assert len(fetch["attempts"]) == 2
    assert fetch["error"]["kind"] == "failed" and fetch["error"]["exitCode"] == 7
    assert fetch["recoveredBy"] == "cached-prices"
    assert fetch["output"] == {"prices": recovered}
    # The fallback's own record, as a child of the step.
    [child] = fetch["steps"]
    assert child["id"] == "cached-prices"
    assert child["status"] == "completed"
    assert child["output"] == recovered
    assert len(child["attempts"]) == 1
    # A later step gets the fallback's result under the step's output name.
    assert steps["report"]["output"] == {"report": {"prices": recovered}}
    assert len(lines(tmp_path / "fetch")) == 2
    assert len(lines(tmp_path / "fallback")) == 1
    trace = wfctl_json("trace", "with-fallback", document["executionId"])
    stages = {stage["node_name"]: stage for stage in trace["response"]["stages"]}
    assert stages["fetch"]["error"]["exitCode"] == 7
    assert stages["cached-prices"]["status"] == "SUCCESS"
    assert "cached-prices" in wfctl("logs", document["executionId"]).stdout


def test_fallback_without_max_retries_runs_after_one_attempt(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: fallback-once
        steps:
          - id: primary
            run: echo x >> "__DIR__/primary"; exit 1
            output: value
            errorHandling:
              strategy: fallback
              fallback: {id: secondary, run: "echo plan-b"}
        """, DIR=tmp_path)
    document = wfctl_json("execute", path)
    [step] = document["steps"]
    assert len(step["attempts"]) == 1
    assert step["output"] == {"value": "plan-b"}
    assert lines(tmp_path / "primary") == ["x"]


def test_a_failing_fallback_fails_the_execution(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: fallback-fails-too
        steps:
          - id: primary
            run: exit 1
            errorHandling:
              strategy: fallback
              fallback: {id: secondary, run: "exit 2"}
          - id: after
            run: echo ran >> "__DIR__/after"
        """, DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    steps = records(document)
    assert steps["primary"]["status"] == "failed"
    assert steps["secondary"]["status"] == "failed"
    assert steps["after"]["status"] == "pending"
    assert not (tmp_path / "after").exists()


def test_the_workflows_fallback_stands_in_for_each_failed_step_separately(wfctl_json, tmp_path):
    # The workflow-level errorHandling is every step's default, its fallback included: each
    # failed step gets its own run of the fallback, with its own error, in its own record.
    path = write(tmp_path, """\
        name: workflow-fallback
        errorHandling:
          strategy: fallback
          fallback:
            id: stand-in
            run: echo "stand-in for {{ error.step }}"
        steps:
          - id: first
            run: exit 1
            output: one
          - id: second
            run: exit 2
            output: two
          - id: both
            input: [one, two]
            run: printf '%s' "$WFCTL_INPUT"
            output: both
        """)
    document = wfctl_json("execute", path)
    top = {record["id"]: record for record in document["steps"]}
    assert top["first"]["output"] == {"one": "stand-in for first"}
    assert top["second"]["output"] == {"two": "stand-in for second"}
    assert top["both"]["output"] == {"both": {"one": "stand-in for first", "two": "stand-in for second"}}
    for key in ("first", "second"):
        [child] = top[key].get("steps") or [None]
        assert child is not None, f"{key} has no fallback record"
        assert len(child["attempts"]) == 1, child
        assert child["output"] == f"stand-in for {key}", child


def test_fallback_of_a_loop_iteration_sees_its_item_and_the_error(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: loop-fallback
        steps:
          - id: each
            type: loop
            items: [1, 2, 3]
            step:
              id: body
              run: '[ "{{ item }}" != 2 ] && echo "item {{ item }}"'
              errorHandling:
                strategy: fallback
                fallback: {id: body-fallback, run: 'echo "fallback for {{ item }} after {{ error.kind }}"'}
            output: results
        """)
    document = wfctl_json("execute", path)
    steps = records(document)
    assert steps["each"]["output"] == {"results": ["item 1", "fallback for 2 after failed", "item 3"]}
    assert steps["body[1]"]["recoveredBy"] == "body-fallback[1]"
    assert [child["id"] for child in steps["body[1]"]["steps"]] == ["body-fallback[1]"]
    assert "steps" not in steps["body[0]"] or steps["body[0]"]["steps"] == []


# -- continue and fail -----------------------------------------------------------------------
def test_continue_records_the_failure_and_the_execution_goes_on(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: keep-going
        steps:
          - id: optional
            run: echo "lint warnings" >&2; exit 3
            errorHandling: {strategy: continue}
          - id: next
            run: echo ran >> "__DIR__/next"
        """, DIR=tmp_path)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    steps = records(document)
    assert steps["optional"]["status"] == "failed"
    assert steps["optional"]["continued"] is True
    assert steps["optional"]["error"]["exitCode"] == 3
    assert steps["next"]["status"] == "completed"
    assert lines(tmp_path / "next") == ["ran"]
    assert "error" not in document
    assert document["progress"]["percentage"] == 100
    trace = wfctl_json("trace", "keep-going", document["executionId"])
    assert trace["status"] == "executed"
    assert trace["response"]["stages"][0]["status"] == "FAILED"


def test_continue_gives_a_later_step_null_for_the_failed_steps_output(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: keep-going-with-null
        steps:
          - id: enrich
            run: exit 1
            output: extra
            errorHandling: {strategy: continue}
          - id: use
            input: extra
            run: printf '%s' "$WFCTL_INPUT"
            output: seen
        """)
    document = wfctl_json("execute", path)
    steps = records(document)
    assert steps["enrich"]["status"] == "failed" and steps["enrich"]["continued"] is True
    assert steps["use"]["status"] == "completed", steps["use"].get("error")
    assert steps["use"]["output"] == {"seen": {"extra": None}}
    assert document["status"] == "completed"


def test_a_failure_the_workflow_went_past_is_not_the_executions_error(wfctl_json, tmp_path):
    # A child of a `continue` group fails (and is gone past); later `required` fails the
    # run: the execution's error is required's, not the child's.
    path = write(tmp_path, """\
        name: error-of-the-run
        steps:
          - id: optional-group
            type: parallel
            errorHandling: {strategy: continue}
            steps:
              - id: nice-to-have
                run: exit 3
          - id: required
            run: exit 4
        """)
    document = wfctl_json("execute", path, code=1)
    steps = records(document)
    assert steps["optional-group"]["continued"] is True
    assert steps["required"]["status"] == "failed"
    assert document["error"]["step"] == "required"
    assert document["error"]["exitCode"] == 4


def test_a_failure_a_fallback_recovered_is_not_the_executions_error(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: error-after-recovery
        steps:
          - id: group
            type: parallel
            errorHandling:
              strategy: fallback
              fallback: {id: group-fallback, run: echo recovered}
            steps:
              - id: inner
                run: exit 3
                errorHandling: {strategy: fail}
          - id: required
            run: exit 4
        """)
    document = wfctl_json("execute", path, code=1)
    steps = records(document)
    assert steps["group"]["recoveredBy"] == "group-fallback"
    assert document["error"]["step"] == "required"
    assert document["error"]["exitCode"] == 4


def test_fail_is_the_default_and_stops_the_execution(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: plain-failure
        steps:
          - id: ok
            run: echo ok
          - id: breaks
            run: echo x >> "__DIR__/breaks"; exit 1
          - id: after
            run: echo ran >> "__DIR__/after"
        """, DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    assert document["status"] == "failed"
    assert [r["status"] for r in document["steps"]] == ["completed", "failed", "pending"]
    assert document["error"]["step"] == "breaks"
    assert "escalated" not in document
    assert lines(tmp_path / "breaks") == ["x"]  # no retries by default
    assert not (tmp_path / "after").exists()
    # explicit `strategy: fail` is the same, and the plain output says why
    path = write(tmp_path, """\
        name: plain-failure
        errorHandling: {strategy: fail}
        steps:
          - id: breaks
            run: exit 1
        """, name="explicit.yaml")
    result = wfctl("execute", path, code=1)
    assert "breaks" in result.stderr


# -- escalation ------------------------------------------------------------------------------
def test_escalation_hands_the_failure_to_the_agent(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: escalates
        agents:
          lead:
            run: |
              cat > "__DIR__/escalation.json"; echo '{"ticket": "OPS-1"}'
        steps:
          - id: make
            run: echo '{"size":3}'
            output: batch
          - id: deploy
            input: batch
            run: echo "disk full" >&2; exit 5
            errorHandling: {strategy: retry, maxRetries: 1, delay: 0.05, escalateOnFailure: true, escalateTo: lead}
          - id: after
            run: echo never
        """, DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    assert document["status"] == "failed"
    assert document["escalated"] is True
    escalation = document["escalation"]
    assert escalation["step"] == "deploy"
    assert escalation["agent"] == "lead"
    assert escalation["ok"] is True
    assert escalation["output"] == {"ticket": "OPS-1"}
    received = json.loads((tmp_path / "escalation.json").read_text())
    assert "deploy" in received["task"] and "disk full" in received["task"]
    assert received["input"]["step"] == "deploy"
    assert received["input"]["attempts"] == 2
    assert received["input"]["error"]["kind"] == "failed"
    assert received["input"]["error"]["exitCode"] == 5
    assert "disk full" in received["input"]["error"]["message"]
    assert received["input"]["inputs"] == {"batch": {"size": 3}}
    assert records(document)["after"]["status"] == "pending"


def test_a_failing_escalation_is_recorded_and_the_execution_still_fails(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: escalation-fails
        agents:
          pager: {run: "echo pager down >&2; exit 1"}
        errorHandling: {escalateOnFailure: true, escalateTo: pager}
        steps:
          - id: breaks
            run: exit 1
        """)
    document = wfctl_json("execute", path, code=1)
    assert document["escalated"] is True
    assert document["escalation"]["ok"] is False
    assert document["escalation"]["agent"] == "pager"
    assert document["error"]["step"] == "breaks"


def test_a_step_that_recovers_is_not_escalated(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: no-escalation
        agents:
          lead: {run: 'echo called >> "__DIR__/lead"'}
        errorHandling: {strategy: retry, maxRetries: 2, delay: 0.05, escalateOnFailure: true, escalateTo: lead}
        steps:
          - id: flaky
            run: '[ "$WFCTL_ATTEMPT" -ge 2 ]'
        """, DIR=tmp_path)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    assert "escalated" not in document
    assert not (tmp_path / "lead").exists()


def test_a_nested_failure_is_escalated_once_naming_the_step_that_failed(wfctl_json, tmp_path):
    # The workflow's escalateOnFailure is every step's default, the parallel step's too: the
    # child's failure also fails its parent, but it is one failure and one escalation.
    path = write(tmp_path, """\
        name: nested-escalation
        agents:
          lead:
            run: |
              cat >> "__DIR__/escalations"; echo >> "__DIR__/escalations"
        errorHandling: {escalateOnFailure: true, escalateTo: lead}
        steps:
          - id: group
            type: parallel
            steps:
              - id: fine
                run: echo fine
              - id: broken
                run: exit 1
        """, DIR=tmp_path)
    document = wfctl_json("execute", path, code=1)
    assert document["error"]["step"] == "broken"
    received = [json.loads(line) for line in lines(tmp_path / "escalations") if line.strip()]
    assert [r["input"]["step"] for r in received] == ["broken"]
    assert document["escalation"]["step"] == "broken"


# -- timeouts --------------------------------------------------------------------------------
def test_a_step_timeout_terminates_its_whole_process_group(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: kills-the-tree
        steps:
          - id: tree
            timeout: 1
            run: sh -c 'sleep 100 & echo $! > "__DIR__/child.pid"; sleep 100'
        """, DIR=tmp_path)
    began = time.monotonic()
    document = wfctl_json("execute", path, code=1)
    assert time.monotonic() - began < 30
    [step] = document["steps"]
    assert step["status"] == "failed"
    assert step["error"]["kind"] == "timeout"
    assert document["error"]["kind"] == "timeout"
    grandchild = read_pid(tmp_path / "child.pid")
    assert pid_gone(grandchild), f"the grandchild {grandchild} outlived its step"


def test_a_step_that_traps_term_is_still_killed(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: stubborn
        steps:
          - id: ignores-term
            timeout: 1
            run: |
              trap 'echo got-term >> "__DIR__/terms"' TERM
              echo $$ > "__DIR__/shell.pid"
              while true; do sleep 0.1; done
        """, DIR=tmp_path)
    began = time.monotonic()
    document = wfctl_json("execute", path, code=1)
    assert time.monotonic() - began < 30
    [step] = document["steps"]
    assert step["error"]["kind"] == "timeout"
    assert step["attempts"][0]["exitCode"] == -9  # SIGKILL after the grace
    assert (tmp_path / "terms").exists()  # it did get the TERM first
    assert pid_gone(read_pid(tmp_path / "shell.pid"))


def test_a_workflow_timeout_ends_the_execution_timed_out(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: too-long
        timeout: 1
        errorHandling: {strategy: retry, maxRetries: 3, delay: 0.05}
        steps:
          - id: quick
            run: echo quick
          - id: slow
            run: echo x >> "__DIR__/slow"; echo $$ > "__DIR__/slow.pid"; sleep 100
          - id: after
            run: echo ran >> "__DIR__/after"
        """, DIR=tmp_path)
    began = time.monotonic()
    document = wfctl_json("execute", path, code=5)
    assert time.monotonic() - began < 30
    assert document["status"] == "timed_out"
    steps = records(document)
    assert steps["quick"]["status"] == "completed"
    assert steps["slow"]["status"] == "failed"
    assert steps["slow"]["error"]["kind"] == "timeout"
    assert len(steps["slow"]["attempts"]) == 1  # a workflow timeout is not retried
    assert lines(tmp_path / "slow") == ["x"]
    assert steps["after"]["status"] == "pending"
    assert not (tmp_path / "after").exists()
    assert pid_gone(read_pid(tmp_path / "slow.pid"))
    assert wfctl_json("execution", document["executionId"])["status"] == "timed_out"
    trace = wfctl_json("trace", "too-long", document["executionId"])
    assert trace["status"] == "timed_out"
    # without --json the exit code is the same
    wfctl("execute", path, "-q", code=5)


def test_a_workflow_timeout_cuts_a_backoff_wait_short(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: timeout-during-backoff
        timeout: 1
        steps:
          - id: keeps-failing
            run: echo x >> "__DIR__/count"; exit 1
            errorHandling: {strategy: retry, maxRetries: 5, delay: 30, maxDelay: 60}
        """, DIR=tmp_path)
    began = time.monotonic()
    document = wfctl_json("execute", path, code=5)
    assert time.monotonic() - began < 20  # the 30 s wait ended with the workflow's time
    assert document["status"] == "timed_out"
    assert "timed out" in document["cancelReason"]
    assert lines(tmp_path / "count") == ["x"]  # no retry started after the timeout


# -- notifications ---------------------------------------------------------------------------
def test_webhook_is_told_when_an_execution_fails(wfctl_json, tmp_path):
    with http_server() as web:
        path = write(tmp_path, """\
            name: notifies-failure
            notifications: {webhook: "__URL__/hook"}
            steps:
              - id: breaks
                run: echo broken >&2; exit 1
            """, URL=web.url)
        document = wfctl_json("execute", path, code=1)
        [request] = web.wait_for(1)
    assert request.method == "POST" and request.path == "/hook"
    event = request.json
    assert event["event"] == "failed"
    assert event["executionId"] == document["executionId"]
    assert event["workflowName"] == "notifies-failure"
    assert event["status"] == "failed"
    assert event["step"] == "breaks"
    assert "broken" in event["error"]["message"]
    assert document["notifications"][0]["transport"] == "webhook"
    assert document["notifications"][0]["ok"] is True
    assert document["notifications"][0]["event"] == "failed"


def test_notify_webhook_option_reports_a_completed_run(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: notifies-completion
        steps:
          - id: fine
            run: echo fine
        """)
    with http_server() as web:
        document = wfctl_json("execute", path, "--notify-webhook", web.url + "/done")
        [request] = web.wait_for(1)
    assert request.path == "/done"
    assert request.json["event"] == "completed"
    assert request.json["status"] == "completed"
    assert request.json["executionId"] == document["executionId"]
    assert [n["ok"] for n in document["notifications"]] == [True]


def test_on_limits_the_events_that_are_sent(wfctl_json, tmp_path):
    with http_server() as web:
        path = write(tmp_path, """\
            name: only-failures
            notifications: {webhook: "__URL__/hook", on: [failed]}
            steps:
              - id: fine
                run: echo fine
            """, URL=web.url)
        document = wfctl_json("execute", path)
        # delivery is done before execute exits: nothing means nothing was sent
        assert web.requests == []
    assert not document.get("notifications")


def test_notify_on_error_sends_step_failed_for_every_failed_step(wfctl_json, tmp_path):
    with http_server() as web:
        path = write(tmp_path, """\
            name: step-failures
            notifications: {webhook: "__URL__/hook"}
            errorHandling: {strategy: continue, notifyOnError: true}
            steps:
              - id: one
                run: exit 1
              - id: fine
                run: echo fine
              - id: two
                run: exit 2
            """, URL=web.url)
        document = wfctl_json("execute", path)
        requests = web.wait_for(3)
    events = [r.json for r in requests]
    assert sorted(e["step"] for e in events if e["event"] == "step_failed") == ["one", "two"]
    assert {e["error"]["exitCode"] for e in events if e["event"] == "step_failed"} == {1, 2}
    assert events[-1]["event"] == "completed"
    assert len(events) == 3
    assert sorted(n["event"] for n in document["notifications"]) == ["completed", "step_failed", "step_failed"]


def test_email_goes_through_the_configured_smtp_server(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: mails-failure
        steps:
          - id: breaks
            run: exit 1
        """)
    with smtp_server() as mail:
        wfctl("config", "set", "smtp.host", "127.0.0.1")
        wfctl("config", "set", "smtp.port", str(mail.port))
        document = wfctl_json("execute", path, "--notify-email", "ops@example.com", code=1)
        [message] = mail.wait_for(1)
    assert message.recipients == ["ops@example.com"]
    assert "mails-failure" in message.subject and "failed" in message.subject
    assert document["executionId"] in message.text
    [result] = document["notifications"]
    assert result["transport"] == "email" and result["ok"] is True


def test_slack_channel_goes_through_the_configured_slack_webhook(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: tells-slack
        steps:
          - id: fine
            run: echo fine
        """)
    with http_server() as web:
        wfctl("config", "set", "slack.webhook", web.url + "/services/T0/B0/secret")
        document = wfctl_json("execute", path, "--notify-slack", "#launches")
        [request] = web.wait_for(1)
    assert request.path == "/services/T0/B0/secret"
    assert request.json["channel"] == "#launches"
    assert "tells-slack" in request.json["text"] and "completed" in request.json["text"]
    [result] = document["notifications"]
    assert result["transport"] == "slack" and result["ok"] is True


def test_slack_in_the_notifications_block(wfctl, wfctl_json, tmp_path):
    with http_server() as web:
        wfctl("config", "set", "slack.webhook", web.url + "/slack")
        path = write(tmp_path, """\
            name: tells-slack-from-file
            notifications: {slack: "#ops"}
            steps:
              - id: breaks
                run: exit 1
            """)
        wfctl_json("execute", path, code=1)
        [request] = web.wait_for(1)
    assert request.json["channel"] == "#ops"
    assert "failed" in request.json["text"]


def test_command_notification_gets_the_event_on_stdin(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: runs-a-command
        notifications:
          command: cat > "__DIR__/event.json"; echo "$WFCTL_EVENT" > "__DIR__/event-name"
        steps:
          - id: fine
            run: echo fine
        """, DIR=tmp_path)
    document = wfctl_json("execute", path)
    event = json.loads((tmp_path / "event.json").read_text())
    assert event["event"] == "completed"
    assert event["executionId"] == document["executionId"]
    assert (tmp_path / "event-name").read_text().strip() == "completed"
    assert document["notifications"][0]["transport"] == "command"
    assert document["notifications"][0]["ok"] is True


def test_a_failing_notification_is_recorded_and_never_fails_the_workflow(wfctl, wfctl_json, tmp_path):
    with http_server(status=500, body="broken hook") as web:
        path = write(tmp_path, """\
            name: bad-notifications
            notifications:
              webhook: "__URL__/hook"
              slack: "#nobody-configured-slack"
              command: exit 4
            steps:
              - id: fine
                run: echo fine
            """, URL=web.url)
        document = wfctl_json("execute", path)
        web.wait_for(1)
    assert document["status"] == "completed"
    results = {n["transport"]: n for n in document["notifications"]}
    assert set(results) == {"webhook", "slack", "command"}
    assert all(n["ok"] is False for n in results.values())
    assert "500" in results["webhook"]["error"]
    assert "slack.webhook" in results["slack"]["error"]
    assert "code 4" in results["command"]["error"]
    # recorded for good: the stored execution shows them too
    stored = wfctl_json("execution", document["executionId"])
    assert [n["ok"] for n in stored["notifications"]] == [False, False, False]
    # an unreachable SMTP server does not fail a run either
    wfctl("config", "set", "smtp.host", "127.0.0.1")
    wfctl("config", "set", "smtp.port", "1")
    document = wfctl_json("execute", path, "--notify-email", "ops@example.com", "--notify-webhook", "")
    assert document["status"] == "completed"
    email = [n for n in document["notifications"] if n["transport"] == "email"]
    assert email and email[0]["ok"] is False


def test_escalation_is_notified(wfctl_json, tmp_path):
    with http_server() as web:
        path = write(tmp_path, """\
            name: escalation-notice
            notifications: {webhook: "__URL__/hook"}
            agents:
              lead: {run: "echo noted"}
            steps:
              - id: breaks
                run: exit 1
                errorHandling: {escalateOnFailure: true, escalateTo: lead}
            """, URL=web.url)
        wfctl_json("execute", path, code=1)
        requests = web.wait_for(2)
    names = [r.json["event"] for r in requests]
    assert sorted(names) == ["escalated", "failed"]
    escalated = next(r.json for r in requests if r.json["event"] == "escalated")
    assert escalated["step"] == "breaks"


def test_a_workflow_timeout_is_notified(wfctl_json, tmp_path):
    with http_server() as web:
        path = write(tmp_path, """\
            name: timeout-notice
            timeout: 1
            notifications: {webhook: "__URL__/hook", on: [timed_out]}
            steps:
              - id: slow
                run: sleep 100
            """, URL=web.url)
        wfctl_json("execute", path, code=5)
        [request] = web.wait_for(1)
    assert request.json["event"] == "timed_out"
    assert request.json["status"] == "timed_out"


# -- the example -----------------------------------------------------------------------------
def test_the_resilient_example_retries_falls_back_and_goes_on(wfctl_json, tmp_path, monkeypatch):
    from conftest import EXAMPLES

    example = EXAMPLES / "resilient.yaml"
    document = wfctl_json("execute", example, cwd=tmp_path)
    assert document["status"] == "completed"
    steps = records(document)
    warm = steps["warm-up"]["attempts"]
    assert [(a["status"], a.get("exitCode")) for a in warm] == [("failed", 75), ("completed", 0)]
    assert 0 <= warm[0]["retryIn"] <= 0.2  # jittered share of the first 0.2 s delay
    assert steps["fetch-rates"]["recoveredBy"] == "cached-rates"
    assert steps["fetch-rates"]["error"]["kind"] == "failed"
    assert steps["report"]["output"] == {"report": {"warmedOnAttempt": 2, "EUR": 0.92, "source": "cache"}}
    # The optional step's failure is recorded and the run still completes.
    monkeypatch.setenv("RESILIENT_ANNOUNCE_FAIL", "1")
    document = wfctl_json("execute", example, cwd=tmp_path)
    assert document["status"] == "completed"
    announce = records(document)["announce"]
    assert announce["status"] == "failed" and announce["continued"] is True
    assert records(document)["report"]["status"] == "completed"
