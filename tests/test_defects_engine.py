"""Issue 11, engine semantics and the live view, end to end through the installed `wfctl`:

- 20: retry fields without a strategy retry; maxDuration stops retrying instead of
  trimming the last wait;
- 24: the live table (execute and watch, on a real terminal) shows every event within
  its refresh interval, and its clocks tick while steps run;
- 25: dry runs are left out of estimates and marked in traces and executions; a dry
  run's conditions and loops never decide on echoed outputs;
- 26: every way a run can end records what happened (a timeout during a retry wait,
  during a pause, a cancel during a backoff or while paused); `currentStep` is the
  top-level step and `currentSteps` lists every running step instance.

Steps hold on files (`Lab`), the test polls with bounds; nothing waits by sleeping.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import pytest

from helpers import records
from wfctl.engine import Engine, Settings
from lifecycle_helpers import (
    detach,
    execution_dir,
    lab_in,
    lock_pid,
    step_record,
    wait_for,
    wait_status,
    wfctl,
    wfctl_json,
)
from terminal import Terminal, row_of, shown_seconds


@pytest.fixture
def lab(tmp_path):
    yield from lab_in(tmp_path)


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- 20: retries without a strategy; maxDuration ------------------------------------------------
def test_max_retries_without_a_strategy_retries_at_workflow_and_step_level(lab):
    # Each step fails twice, then succeeds: with two retries it completes on attempt 3.
    flaky = "{count}; [ $(wc -l < {file}) -ge 3 ]"
    path = lab.workflow(f"""\
        name: retries-without-strategy
        errorHandling: {{delay: 0}}
        steps:
          - id: own
            run: {flaky.format(count=lab.count('own'), file=lab.q('count-own'))}
            errorHandling: {{maxRetries: 2}}
          - id: inherited
            run: {flaky.format(count=lab.count('inherited'), file=lab.q('count-inherited'))}
    """)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    steps = records(document)
    assert [a["status"] for a in steps["own"]["attempts"]] == ["failed", "failed", "completed"]
    # `delay` alone at the workflow level asks for retries: the default three.
    assert [a["status"] for a in steps["inherited"]["attempts"]] == ["failed", "failed", "completed"]
    assert lab.lines("count-own") == ["1", "2", "3"]


def test_retry_fields_on_a_loop_or_parallel_step_retry_the_steps_inside_it(lab):
    path = lab.workflow(f"""\
        name: group-retries
        steps:
          - id: each
            type: loop
            items: [a, b]
            errorHandling: {{maxRetries: 2, delay: 0}}
            step:
              id: body
              run: {lab.count('body-$WFCTL_INDEX')}; [ "$WFCTL_ATTEMPT" -ge 2 ]
          - id: checks
            type: parallel
            errorHandling: {{strategy: retry, delay: 0}}
            steps:
              - id: lint
                run: {lab.count('lint')}; [ "$WFCTL_ATTEMPT" -ge 4 ]
    """)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    steps = records(document)
    assert len(steps["body[0]"]["attempts"]) == 2 and len(steps["body[1]"]["attempts"]) == 2
    assert lab.lines("count-lint") == ["1", "2", "3", "4"]  # strategy retry: the default 3 retries


def test_max_duration_stops_retrying_when_the_next_wait_would_end_past_it(lab):
    path = lab.workflow(f"""\
        name: max-duration
        steps:
          - id: slow-to-fail
            run: {lab.count('slow')}; echo "upstream down" >&2; exit 1
            errorHandling: {{maxRetries: 5, backoff: fixed, delay: 30, maxDuration: 2}}
    """)
    began = time.monotonic()
    document = wfctl_json("execute", path, code=1)
    assert time.monotonic() - began < 20  # no 30 s wait, not even one trimmed to 2 s
    record = step_record(document, "slow-to-fail")
    assert len(record["attempts"]) == 1 and lab.lines("count-slow") == ["1"]
    assert "upstream down" in record["error"]["message"]  # the step fails with its last error
    assert "maxDuration (2s)" in record["retryStopped"] and "retry 1" in record["retryStopped"]
    assert "upstream down" in document["error"]["message"]
    trace = wfctl_json("trace", "max-duration", document["executionId"])
    assert "maxDuration" in trace["response"]["stages"][0]["retryStopped"]


# -- 26: every end says what happened --------------------------------------------------------
def test_a_timeout_during_a_retry_wait_says_which_wait_of_which_step(lab):
    path = lab.workflow(f"""\
        name: timeout-in-backoff
        timeout: 1
        steps:
          - id: keeps-failing
            run: {lab.count('fails')}; exit 1
            errorHandling: {{strategy: retry, maxRetries: 5, delay: 30}}
    """)
    document = wfctl_json("execute", path, code=5)
    assert document["status"] == "timed_out"
    error = document["error"]
    assert error is not None and error["kind"] == "timeout" and error["step"] == "keeps-failing"
    assert "the workflow timed out after 1s during the wait before retry 1 (attempt 2) of step 'keeps-failing'" in error["message"]
    record = step_record(document, "keeps-failing")
    assert record["status"] == "failed" and record["error"]["kind"] == "timeout"
    assert len(record["attempts"]) == 1 and lab.lines("count-fails") == ["1"]
    again = wfctl_json("execution", document["executionId"])
    assert again["error"] == error
    text = wfctl("execution", document["executionId"]).stdout
    assert "error at keeps-failing: the workflow timed out after 1s during the wait before retry 1" in text
    # Without --json the closing line says it too.
    result = wfctl("execute", path, code=5)
    assert "timed_out · 0/1 steps · keeps-failing: the workflow timed out after 1s during the wait" in result.stderr


def test_a_timeout_before_any_step_started_says_so(tmp_path):
    # In-process: the runner's timer can only win this race by chance, so the engine
    # is cancelled the way the timer does it before it runs.
    (tmp_path / "logs").mkdir()
    settings = Settings(execution_id="exec_0000test0000", workflow_id="wf_0000test0000",
                        log_dir=tmp_path / "logs", agents={}, teams={})
    events: list[dict] = []
    engine = Engine({"name": "late", "steps": [{"id": "only", "run": "true"}]}, settings, events.append)
    engine.cancel("the workflow timed out after 0.001s", status="timed_out")
    status, error = engine.run({})
    assert status == "timed_out"
    assert error == {"kind": "timeout", "message": "the workflow timed out after 0.001s before any step started."}
    finished = events[-1]
    assert finished["error"] == error and finished["reason"] == "the workflow timed out after 0.001s"
    assert not [e for e in events if e["type"] == "step.started"]


def test_a_timeout_of_a_step_whose_policy_is_continue_is_still_the_runs_error(lab):
    path = lab.workflow(f"""\
        name: timeout-continue
        timeout: 1
        steps:
          - id: long
            run: {lab.hold('long')}
            errorHandling: {{strategy: continue}}
          - id: after
            run: {lab.count('after')}
    """)
    document = wfctl_json("execute", path, code=5)
    assert document["error"]["kind"] == "timeout" and document["error"]["step"] == "long"
    assert "while step 'long' was running" in document["error"]["message"]
    assert not lab.path("count-after").exists()  # a timeout is not a failure to go past


def pause_after_first(lab, execution_id: str) -> None:
    """Pause while `first` runs (held), let it finish, and wait until the run is paused."""
    lab.wait_started("first")
    lab.spawn("pause", execution_id)
    wait_for((execution_dir(execution_id) / "pause.json").exists, what="the pause request")
    lab.go("first")
    wait_status(execution_id, "paused")


def test_a_timeout_while_paused_says_it_was_paused_before_which_step(lab):
    # The workflow's 10 s leave room to reach the pause on a busy machine; the paused
    # run then times out without anything else happening.
    path = lab.workflow(f"""\
        name: timeout-while-paused
        timeout: 10
        steps:
          - id: first
            run: {lab.hold('first')}
          - id: second
            run: {lab.count('second')}
    """)
    execution_id = detach(path)
    pause_after_first(lab, execution_id)
    document = wait_status(execution_id, "timed_out", timeout=40)
    assert document["error"]["kind"] == "timeout" and document["error"]["step"] == "second"
    assert "timed out after 10s while paused, before step 'second' started" in document["error"]["message"]
    assert not lab.path("count-second").exists()


def test_a_cancel_without_a_reason_while_paused_records_what_happened(lab):
    path = lab.workflow(f"""\
        name: cancel-while-paused
        steps:
          - id: first
            run: {lab.hold('first')}
          - id: second
            run: {lab.count('second')}
    """)
    execution_id = detach(path)
    pause_after_first(lab, execution_id)
    wfctl("cancel", execution_id)
    document = wait_status(execution_id, "cancelled")
    assert document["cancelReason"] == "cancelled while paused, before step 'second' started"
    assert not lab.path("count-second").exists()


def test_a_cancel_during_a_backoff_cancels_the_step_and_says_which_wait(lab):
    path = lab.workflow(f"""\
        name: cancel-in-backoff
        steps:
          - id: flaky
            run: {lab.count('flaky')}; exit 1
            errorHandling: {{maxRetries: 3, delay: 60}}
    """)
    execution_id = detach(path)

    def waiting() -> bool:
        attempts = step_record(wfctl_json("execution", execution_id), "flaky").get("attempts") or []
        return bool(attempts) and attempts[0].get("retryIn") == 60

    wait_for(waiting, what="the first attempt to fail and the 60 s wait to begin")
    began = time.monotonic()
    wfctl("cancel", execution_id)
    document = wait_status(execution_id, "cancelled")
    assert time.monotonic() - began < 20
    assert document["cancelReason"] == "cancelled during the wait before retry 1 (attempt 2) of step 'flaky'"
    record = step_record(document, "flaky")
    assert record["status"] == "cancelled"  # not failed: it was stopped, it did not fail again
    assert "during the wait before retry 1" in record["error"]["message"]
    assert lab.lines("count-flaky") == ["1"]
    # A reason given on the command line is kept as it is.
    execution_id = detach(path)
    wait_for(waiting, what="the wait of the second run")
    wfctl("cancel", execution_id, "--reason", "upstream is down for the day")
    assert wait_status(execution_id, "cancelled")["cancelReason"] == "upstream is down for the day"


def test_ctrl_c_during_a_backoff_says_which_wait_and_resume_goes_on(lab):
    # Fails the first time only; the 60 s wait is cut short by Ctrl-C.
    path = lab.workflow(f"""\
        name: interrupt-in-backoff
        steps:
          - id: flaky
            run: {lab.record('flaky')}; [ -e {lab.q('fixed')} ]
            errorHandling: {{maxRetries: 2, delay: 60}}
    """)
    runner = lab.spawn("execute", path, "-q")
    execution_id = lab.execution_id("flaky")

    def waiting() -> bool:
        attempts = step_record(wfctl_json("execution", execution_id), "flaky").get("attempts") or []
        return bool(attempts) and attempts[0].get("retryIn") == 60

    wait_for(waiting, what="the 60 s wait before retry 1")
    runner.send_signal(signal.SIGINT)
    _, err = runner.communicate(timeout=20)
    assert runner.returncode == 130, err
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "interrupted" and document["cancelReason"] == "interrupted by Ctrl-C"
    record = step_record(document, "flaky")
    assert record["status"] == "cancelled"
    assert record["error"]["message"] == "interrupted by Ctrl-C during the wait before retry 1 (attempt 2) of step 'flaky'."
    lab.path("fixed").touch()
    assert wfctl_json("resume", execution_id)["status"] == "completed"
    assert lab.lines("attempts-flaky") == ["1", "2"]  # resume runs the awaited attempt


# -- 26: currentStep and currentSteps -----------------------------------------------------------
def test_current_step_is_the_top_level_step_and_current_steps_lists_what_runs(lab):
    path = lab.workflow(f"""\
        name: current-steps
        steps:
          - id: checks
            type: parallel
            steps:
              - id: lint
                run: {lab.hold('lint')}
              - id: unit
                run: {lab.hold('unit')}
          - id: each
            type: loop
            items: [a, b]
            step:
              id: visit
              run: {lab.hold('visit')}
    """)
    execution_id = detach(path)
    lab.wait_started("lint")
    lab.wait_started("unit")
    document = wfctl_json("execution", execution_id)
    assert document["currentStep"] == "checks"
    assert sorted(document["currentSteps"]) == ["checks", "lint", "unit"]
    lab.go("lint")
    document = wait_for(lambda: (d := wfctl_json("execution", execution_id))["currentSteps"] == ["checks", "unit"] and d,
                        what="lint to end")
    assert document["currentStep"] == "checks"
    lab.go("unit")
    lab.wait_started("visit")
    document = wfctl_json("execution", execution_id)
    assert document["currentStep"] == "each"
    assert document["currentSteps"] == ["each", "visit[0]"]
    lab.go("visit")
    document = wait_status(execution_id, "completed")
    assert document["currentStep"] is None and document["currentSteps"] == []


def test_an_execution_whose_runner_died_runs_nothing_now(lab):
    path = lab.workflow(f"""\
        name: runner-dies
        steps:
          - id: held
            run: {lab.record('held')}; {lab.hold('held')}
    """)
    execution_id = detach(path)
    lab.wait_started("held")
    assert wfctl_json("execution", execution_id)["currentSteps"] == ["held"]
    os.kill(lock_pid(execution_id), signal.SIGKILL)
    document = wait_status(execution_id, "interrupted")
    assert document["currentStep"] is None and document["currentSteps"] == []
    lab.go("held")
    assert wfctl_json("resume", execution_id)["status"] == "completed"


# -- 25: dry runs ---------------------------------------------------------------------------------
def test_dry_runs_are_left_out_of_estimates_and_marked_in_traces_and_executions(lab):
    path = lab.workflow("""\
        name: estimated
        steps:
          - id: work
            run: sleep 1.5
    """)
    real = wfctl_json("execute", path)
    dry = [wfctl_json("execute", path, "--dry-run") for _ in range(3)]
    assert all(d["dryRun"] is True for d in dry)
    assert all(d["estimatedCompletion"] is None for d in dry)  # echo steps take no time: no estimate
    later = wfctl_json("execute", path)
    # From the real run alone: 1.5 s or more after the start (the dry runs took ~0 s).
    assert at(later["estimatedCompletion"]) - at(later["startedAt"]) >= 1.4

    listed = wfctl_json("traces", "estimated")["elements"]
    marked = {element["id"]: element.get("dryRun") for element in listed}
    assert marked == {real["executionId"]: None, later["executionId"]: None,
                      **{d["executionId"]: True for d in dry}}
    assert wfctl_json("trace", "estimated", dry[0]["executionId"])["dryRun"] is True
    assert "dryRun" not in wfctl_json("trace", "estimated", real["executionId"])
    executions = {e["executionId"]: e.get("dryRun") for e in wfctl_json("executions")["elements"]}
    assert executions[dry[1]["executionId"]] is True and executions[real["executionId"]] is None
    assert "(dry run)" in wfctl("traces", "estimated").stdout


def test_a_dry_run_never_decides_on_an_echoed_output(lab, tmp_path):
    path = lab.workflow("""\
        name: dry-decisions
        inputs:
          target: {type: string, default: staging}
        steps:
          - id: build
            run: |
              echo '{"task": "ship", "files": ["a", "b", "c"]}'
            output: build
          - id: on-echo
            type: conditional
            condition: build.task == "ship"
            then: {id: shipped, run: echo yes}
            else: {id: not-shipped, run: echo no}
          - id: on-status
            type: conditional
            condition: steps.build.status == "completed"
            then: {id: built, run: echo yes}
          - id: on-input
            type: conditional
            condition: input.target == "production"
            then: {id: to-production, run: echo prod}
            else: {id: to-staging, run: echo staging}
          - id: each-file
            type: loop
            items: build.files
            step:
              id: per-file
              type: conditional
              condition: item == "a"
              then: {id: first-file, run: echo a}
    """)
    document = wfctl_json("execute", path, "--dry-run")
    assert document["status"] == "completed"
    steps = records(document)
    # echo made `build` up ({task, input}): a real-looking false from it would show the
    # else branch; the dry run follows `then` and says it cannot decide.
    assert steps["on-echo"]["branch"] == "then" and "build" in steps["on-echo"]["undecided"]
    assert steps["not-shipped"]["status"] == "skipped"
    assert steps["on-status"]["branch"] == "then" and "steps" in steps["on-status"]["undecided"]
    # What --input says is real: decided, no marker.
    assert steps["on-input"]["branch"] == "else" and "undecided" not in steps["on-input"]
    # A loop over echoed items shows its body once, and what reads `item` is undecided.
    assert "build" in steps["each-file"]["undecided"]
    assert [r["id"] for r in steps["each-file"]["steps"]] == ["per-file[0]"]
    assert "item" in steps["per-file[0]"]["undecided"]


# -- 24: the live table on a real terminal --------------------------------------------------------
LIVE = 10.0  # bound for what the screen must show; every held step waits 20 s for its go


def wait_screen(term: Terminal, predicate, what: str):
    """Poll the drawn screen until `predicate(screen)` holds; returns its value."""
    try:
        return wait_for(lambda: predicate(term.screen_text()), timeout=LIVE, interval=0.05, what=what)
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- screen ---\n{term.screen_text()}") from None


def running_time(screen: str, step: str) -> float | None:
    row = row_of(screen, step)
    if row is None or "running" not in row:
        return None
    return shown_seconds(row.split("running", 1)[1])


def footer_time(screen: str, name: str) -> float | None:
    footer = [line for line in screen.splitlines() if f"{name} running" in line]
    if not footer:
        return None
    return shown_seconds(footer[-1].split("steps", 1)[-1].split("· running")[0])


def assert_clocks_tick(term: Terminal, step: str, workflow: str) -> None:
    """The running step's time and the footer's elapsed time both move on while
    nothing happens (no event: the step is held)."""
    first = wait_screen(term, lambda s: running_time(s, step), f"a time on the running row of {step}")
    wait_screen(term, lambda s: (running_time(s, step) or 0) >= first + 1.0, f"{step}'s time to tick on")
    footer = wait_screen(term, lambda s: footer_time(s, workflow), "the footer's elapsed time")
    wait_screen(term, lambda s: (footer_time(s, workflow) or 0) >= footer + 1.0, "the footer's time to tick on")


def test_the_live_table_of_execute_shows_each_event_and_ticks_while_a_step_runs(lab):
    # `quick` ends and `held` starts within a few milliseconds: both must show.
    path = lab.workflow(f"""\
        name: live-execute
        steps:
          - id: quick
            run: "true"
          - id: held
            run: {lab.hold('held')}
          - id: last
            run: "true"
    """)
    term = Terminal(["wfctl", "execute", str(path)])
    try:
        lab.wait_started("held")
        screen = wait_screen(term, lambda s: "running" in (row_of(s, "held") or "") and s, "held to show as running")
        assert "completed" in row_of(screen, "quick")
        assert "pending" in row_of(screen, "last")
        assert_clocks_tick(term, "held", "live-execute")
        assert "running held" in term.screen_text()  # the footer names what runs (currentSteps)
        lab.go("held")
        assert term.wait(timeout=30) == 0
        final = term.screen_text()
        for step in ("quick", "held", "last"):
            assert "completed" in row_of(final, step), final
        assert "live-execute completed 3/3 steps" in final
    finally:
        term.stop()


def test_watch_shows_a_step_that_starts_right_after_another_ends_and_ticks(lab):
    path = lab.workflow(f"""\
        name: live-watch
        steps:
          - id: first
            run: {lab.hold('first')}
          - id: second
            run: {lab.hold('second')}
    """)
    execution_id = detach(path)
    lab.wait_started("first")
    term = Terminal(["wfctl", "watch", execution_id])
    try:
        wait_screen(term, lambda s: "running" in (row_of(s, "first") or ""), "first to show as running")
        assert_clocks_tick(term, "first", "live-watch")
        # `first` ends and `second` starts at once: watch reads both events in one go.
        lab.go("first")
        lab.wait_started("second")
        screen = wait_screen(term, lambda s: "running" in (row_of(s, "second") or "") and s, "second to show as running")
        assert "completed" in row_of(screen, "first")
        assert_clocks_tick(term, "second", "live-watch")
        lab.go("second")
        assert term.wait(timeout=30) == 0
        assert "live-watch completed 2/2 steps" in term.screen_text()
    finally:
        term.stop()
