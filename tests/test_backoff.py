"""The retry policy: `backoff_delay` and `policy_for` are pure; the engine's waits are
observed by injecting its clock (`Engine(..., sleep=recorder)`), so no test here waits
for a backoff to elapse.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from wfctl.engine import Engine, Settings
from wfctl.record import parse_iso
from wfctl.retry import DEFAULT_DELAY, DEFAULT_MAX_DELAY, DEFAULT_MAX_RETRIES, Policy, backoff_delay, policy_for


def delays(policy: Policy, count: int, rng: random.Random | None = None) -> list[float]:
    return [backoff_delay(policy, retry, rng) for retry in range(1, count + 1)]


# -- backoff_delay ---------------------------------------------------------------------------
def test_exponential_doubles_from_the_first_delay():
    policy = Policy(strategy="retry", max_retries=6, backoff="exponential", delay=1, max_delay=1000)
    assert delays(policy, 6) == [1, 2, 4, 8, 16, 32]


def test_exponential_from_a_fractional_delay():
    policy = Policy(strategy="retry", backoff="exponential", delay=0.25, max_delay=1000)
    assert delays(policy, 4) == [0.25, 0.5, 1.0, 2.0]


def test_linear_grows_by_the_delay_each_retry():
    policy = Policy(strategy="retry", backoff="linear", delay=1.5, max_delay=1000)
    assert delays(policy, 4) == [1.5, 3.0, 4.5, 6.0]


def test_fixed_waits_the_same_every_time():
    policy = Policy(strategy="retry", backoff="fixed", delay=2, max_delay=1000)
    assert delays(policy, 5) == [2, 2, 2, 2, 2]


@pytest.mark.parametrize(
    "backoff, expected",
    [
        ("exponential", [1, 2, 4, 5, 5, 5]),
        ("linear", [1, 2, 3, 4, 5, 5]),
        ("fixed", [1, 1, 1, 1, 1, 1]),
    ],
)
def test_max_delay_caps_every_kind(backoff, expected):
    policy = Policy(strategy="retry", backoff=backoff, delay=1, max_delay=5)
    assert delays(policy, 6) == expected


def test_fixed_delay_above_the_cap_is_capped():
    policy = Policy(strategy="retry", backoff="fixed", delay=30, max_delay=10)
    assert backoff_delay(policy, 1) == 10


def test_a_very_late_retry_is_capped_and_does_not_overflow():
    policy = Policy(strategy="retry", backoff="exponential", delay=1, max_delay=60)
    assert backoff_delay(policy, 10_000) == 60


def test_retry_zero_and_below_never_wait():
    for backoff in ("exponential", "linear", "fixed"):
        policy = Policy(strategy="retry", backoff=backoff, delay=3, max_delay=60, jitter=True)
        assert backoff_delay(policy, 0) == 0.0
        assert backoff_delay(policy, -1) == 0.0


def test_zero_delay_never_waits():
    policy = Policy(strategy="retry", backoff="exponential", delay=0, max_delay=60)
    assert delays(policy, 4) == [0, 0, 0, 0]


def test_jitter_stays_between_zero_and_the_capped_wait():
    policy = Policy(strategy="retry", backoff="exponential", delay=1, max_delay=5, jitter=True)
    plain = Policy(strategy="retry", backoff="exponential", delay=1, max_delay=5)
    rng = random.Random(1234)
    seen = []
    for _ in range(200):
        for retry in range(1, 8):
            wait = backoff_delay(policy, retry, rng)
            assert 0 <= wait <= backoff_delay(plain, retry), (retry, wait)
            seen.append((retry, wait))
    # Really random: the waits of one retry number differ, and some are well below the cap.
    third = [wait for retry, wait in seen if retry == 3]
    assert len(set(third)) > 100
    assert min(third) < 1.0 < max(third)
    capped = [wait for retry, wait in seen if retry == 7]
    assert max(capped) <= 5 and max(capped) > 4


def test_jitter_is_reproducible_with_a_seeded_random():
    policy = Policy(strategy="retry", backoff="linear", delay=2, max_delay=100, jitter=True)
    first = delays(policy, 10, random.Random(42))
    second = delays(policy, 10, random.Random(42))
    other = delays(policy, 10, random.Random(43))
    assert first == second
    assert first != other


def test_backoff_delay_is_pure():
    policy = Policy(strategy="retry", backoff="exponential", delay=1, max_delay=10)
    assert [backoff_delay(policy, 3) for _ in range(5)] == [4, 4, 4, 4, 4]
    assert policy == Policy(strategy="retry", backoff="exponential", delay=1, max_delay=10)


# -- policy_for ------------------------------------------------------------------------------
def test_no_error_handling_means_fail_without_retries():
    policy = policy_for(None, None)
    assert policy.strategy == "fail"
    assert policy.max_retries == 0
    assert policy.attempts == 1
    assert policy.backoff == "exponential"
    assert policy.delay == DEFAULT_DELAY
    assert policy.max_delay == DEFAULT_MAX_DELAY
    assert policy.jitter is False
    assert policy.retry_on == ("failed", "timeout")
    assert policy.max_duration is None
    assert policy.escalate is False and policy.escalate_to is None
    assert policy.notify_on_error is False
    assert policy.fallback is None


def test_strategy_retry_defaults_to_three_retries():
    policy = policy_for({"strategy": "retry"}, None)
    assert policy.max_retries == DEFAULT_MAX_RETRIES == 3
    assert policy.attempts == 4


def test_other_strategies_default_to_no_retries():
    for strategy in ("fallback", "continue", "fail"):
        assert policy_for({"strategy": strategy}, None).max_retries == 0


def test_workflow_policy_is_the_default_of_every_step():
    workflow = {"strategy": "retry", "maxRetries": 5, "backoff": "linear", "delay": 0.5, "maxDelay": 4,
                "jitter": True, "retryOn": ["timeout"], "maxDuration": 30, "escalateOnFailure": True,
                "escalateTo": "lead", "notifyOnError": True}
    policy = policy_for(workflow, None)
    assert policy == Policy(strategy="retry", max_retries=5, backoff="linear", delay=0.5, max_delay=4,
                            jitter=True, retry_on=("timeout",), max_duration=30, escalate=True,
                            escalate_to="lead", notify_on_error=True)
    assert policy_for(workflow, {}) == policy


def test_step_policy_overrides_field_by_field():
    workflow = {"strategy": "retry", "maxRetries": 5, "backoff": "exponential", "delay": 2, "maxDelay": 60,
                "escalateOnFailure": True, "escalateTo": "lead"}
    policy = policy_for(workflow, {"backoff": "fixed", "maxRetries": 1})
    assert policy.strategy == "retry"  # from the workflow
    assert policy.max_retries == 1  # the step's
    assert policy.backoff == "fixed"  # the step's
    assert policy.delay == 2 and policy.max_delay == 60  # from the workflow
    assert policy.escalate is True and policy.escalate_to == "lead"
    # and the workflow's own dict is untouched
    assert workflow["maxRetries"] == 5 and workflow["backoff"] == "exponential"


def test_step_strategy_over_the_workflows():
    workflow = {"strategy": "retry", "delay": 0.1}
    fallback = {"id": "plan-b", "run": "echo b"}
    policy = policy_for(workflow, {"strategy": "fallback", "fallback": fallback})
    assert policy.strategy == "fallback"
    assert policy.fallback == fallback
    assert policy.max_retries == 0  # fallback alone does not retry
    assert policy.delay == 0.1
    assert policy_for(workflow, {"strategy": "continue"}).strategy == "continue"


def test_step_without_strategy_keeps_the_workflow_fallback():
    fallback = {"id": "plan-b", "run": "echo b"}
    policy = policy_for({"strategy": "fallback", "fallback": fallback}, {"maxRetries": 2})
    assert policy.strategy == "fallback" and policy.fallback == fallback and policy.max_retries == 2


def test_a_fallback_that_is_not_a_step_is_ignored():
    assert policy_for({"strategy": "fallback", "fallback": "plan-b"}, None).fallback is None


def test_max_retries_zero_is_kept_not_replaced_by_the_default():
    assert policy_for({"strategy": "retry", "maxRetries": 0}, None).max_retries == 0
    assert policy_for({"strategy": "retry", "maxRetries": 4}, {"maxRetries": 0}).attempts == 1


# -- retry fields without a strategy -----------------------------------------------------------
def test_max_retries_without_a_strategy_means_retry():
    policy = policy_for(None, {"maxRetries": 2})
    assert policy.strategy == "retry" and policy.max_retries == 2 and policy.attempts == 3
    assert policy_for({"maxRetries": 4}, None).max_retries == 4  # at the workflow level too


@pytest.mark.parametrize("field, value", [
    ("backoff", "fixed"), ("delay", 2), ("maxDelay", 5), ("jitter", True),
    ("retryOn", ["timeout"]), ("maxDuration", 60),
])
def test_any_retry_field_without_a_strategy_means_retry_with_the_default_count(field, value):
    policy = policy_for({field: value}, None)
    assert policy.strategy == "retry" and policy.max_retries == DEFAULT_MAX_RETRIES
    assert policy_for(None, {field: value}).max_retries == DEFAULT_MAX_RETRIES


def test_retry_fields_merge_from_workflow_to_step_without_a_strategy():
    # The workflow says how to wait, the step how often: retries, with both.
    policy = policy_for({"backoff": "fixed", "delay": 2}, {"maxRetries": 1})
    assert (policy.strategy, policy.max_retries, policy.backoff, policy.delay) == ("retry", 1, "fixed", 2)
    policy = policy_for({"maxRetries": 2}, {"delay": 0.5})
    assert (policy.strategy, policy.max_retries, policy.delay) == ("retry", 2, 0.5)


def test_max_retries_counts_whatever_the_strategy_says_happens_after():
    assert policy_for({"strategy": "fail", "maxRetries": 2}, None).max_retries == 2
    assert policy_for({"strategy": "fail"}, {"maxRetries": 2}).max_retries == 2
    assert policy_for({"strategy": "continue", "maxRetries": 1}, None).max_retries == 1


def test_a_steps_own_fail_turns_off_the_workflows_retries():
    policy = policy_for({"strategy": "retry", "maxRetries": 3}, {"strategy": "fail"})
    assert policy.strategy == "fail" and policy.max_retries == 0
    assert policy_for({"maxRetries": 3}, {"strategy": "fail", "maxRetries": 1}).max_retries == 1


def test_fields_that_are_not_about_retries_do_not_ask_for_retries():
    for fields in ({"notifyOnError": True}, {"escalateOnFailure": True, "escalateTo": "lead"}, {"maxRetries": 0}, {}):
        policy = policy_for(fields, None)
        assert policy.strategy == "fail" and policy.max_retries == 0, fields


# -- Policy.retries --------------------------------------------------------------------------
def test_default_retry_on_is_failed_and_timeout():
    policy = policy_for({"strategy": "retry"}, None)
    assert policy.retries("failed", 1) is True
    assert policy.retries("failed", None) is True
    assert policy.retries("timeout", None) is True


def test_errors_and_cancellations_are_never_retried():
    policy = policy_for({"strategy": "retry", "retryOn": ["failed", "timeout", "exit:1"]}, None)
    assert policy.retries("error", None) is False
    assert policy.retries("error", 1) is False
    assert policy.retries("cancelled", None) is False


def test_retry_on_narrows_to_timeouts():
    policy = policy_for({"strategy": "retry", "retryOn": ["timeout"]}, None)
    assert policy.retries("timeout", None) is True
    assert policy.retries("failed", 1) is False


def test_retry_on_narrows_to_failures():
    policy = policy_for({"strategy": "retry", "retryOn": ["failed"]}, None)
    assert policy.retries("failed", 3) is True
    assert policy.retries("timeout", None) is False


def test_retry_on_exit_codes():
    policy = policy_for({"strategy": "retry", "retryOn": ["exit:75", "exit:-9"]}, None)
    assert policy.retries("failed", 75) is True
    assert policy.retries("failed", -9) is True  # killed by SIGKILL
    assert policy.retries("failed", 1) is False
    assert policy.retries("failed", 9) is False
    assert policy.retries("failed", None) is False  # an agent without an exit code
    assert policy.retries("timeout", 75) is False  # exit:N is about failures only


def test_retry_on_exit_code_and_timeout_together():
    policy = policy_for({"strategy": "retry", "retryOn": ["exit:2", "timeout"]}, None)
    assert policy.retries("failed", 2) is True
    assert policy.retries("timeout", None) is True
    assert policy.retries("failed", 1) is False


def test_step_retry_on_replaces_the_workflows():
    policy = policy_for({"strategy": "retry", "retryOn": ["exit:2"]}, {"retryOn": ["timeout"]})
    assert policy.retry_on == ("timeout",)


# -- the engine's waits, through an injected clock -------------------------------------------
class Clock:
    """Stands in for the engine's wait: records every wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def engine_for(tmp_path: Path, workflow: dict, clock: Clock) -> tuple[Engine, list[dict]]:
    """An Engine set up the way runner.run_execution sets it up, events into a list."""
    events: list[dict] = []
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    settings = Settings(
        execution_id="exec_0000test0000",
        workflow_id="wf_0000test0000",
        log_dir=run_dir / "logs",
        agents=dict(workflow.get("agents") or {}),
        teams=dict(workflow.get("teams") or {}),
    )
    return Engine(workflow, settings, events.append, sleep=clock), events


def attempt_numbers(events: list[dict], step: str) -> list[int]:
    return [e["attempt"] for e in events if e["type"] == "step.started" and e["step"] == step]


def test_engine_waits_exponentially_capped_at_max_delay(tmp_path):
    counter = tmp_path / "tries"
    workflow = {
        "name": "waits",
        "errorHandling": {"strategy": "retry", "maxRetries": 5, "backoff": "exponential", "delay": 1, "maxDelay": 5},
        "steps": [{"id": "flaky", "run": f"echo x >> '{counter}'; exit 1"}],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    began = time.monotonic()
    status, failure = engine.run({})
    elapsed = time.monotonic() - began
    assert status == "failed"
    assert failure["step"] == "flaky" and failure["kind"] == "failed"
    assert clock.waits == [1, 2, 4, 5, 5]  # 17 s of backoff...
    assert elapsed < 10  # ...that the injected clock never waited
    assert attempt_numbers(events, "flaky") == [1, 2, 3, 4, 5, 6]
    assert len(counter.read_text().splitlines()) == 6
    # Every failed attempt but the last says how long until the next one.
    retry_in = [e["retryIn"] for e in events if e["type"] == "attempt.failed"]
    assert retry_in == [1, 2, 4, 5, 5]


def test_engine_with_max_retries_zero_never_sleeps(tmp_path):
    workflow = {
        "name": "no-retries",
        "errorHandling": {"strategy": "retry", "maxRetries": 0, "delay": 30},
        "steps": [{"id": "once", "run": "exit 1"}],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, _ = engine.run({})
    assert status == "failed"
    assert clock.waits == []
    assert attempt_numbers(events, "once") == [1]
    assert not [e for e in events if e["type"] == "attempt.failed"]


def test_engine_does_not_wait_after_a_success(tmp_path):
    counter = tmp_path / "tries"
    workflow = {
        "name": "second-time-lucky",
        "errorHandling": {"strategy": "retry", "maxRetries": 4, "backoff": "linear", "delay": 3, "maxDelay": 60},
        "steps": [{"id": "flaky", "run": f"echo x >> '{counter}'; [ $(wc -l < '{counter}') -ge 3 ]"}],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, _ = engine.run({})
    assert status == "completed"
    assert clock.waits == [3, 6]
    assert attempt_numbers(events, "flaky") == [1, 2, 3]


def test_engine_never_retries_an_error(tmp_path):
    # A template naming a field the previous output lacks: the engine cannot run the step.
    workflow = {
        "name": "error-kind",
        "errorHandling": {"strategy": "retry", "maxRetries": 3, "delay": 1},
        "steps": [
            {"id": "make", "run": "echo '{\"a\": 1}'", "output": "data"},
            {"id": "use", "input": "data", "run": "echo {{ data.missing }}"},
        ],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, failure = engine.run({})
    assert status == "failed"
    assert failure["step"] == "use" and failure["kind"] == "error"
    assert clock.waits == []
    assert attempt_numbers(events, "use") == [1]


def test_engine_retries_only_the_exit_codes_of_retry_on(tmp_path):
    counter = tmp_path / "tries"
    # exit 75 the first time (retried), exit 3 the second (not retried).
    workflow = {
        "name": "exit-codes",
        "errorHandling": {"strategy": "retry", "maxRetries": 5, "delay": 1, "retryOn": ["exit:75"]},
        "steps": [{"id": "flaky", "run": f"echo x >> '{counter}'; [ $(wc -l < '{counter}') -ge 2 ] && exit 3; exit 75"}],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, failure = engine.run({})
    assert status == "failed"
    assert failure["exitCode"] == 3
    assert clock.waits == [1]
    assert attempt_numbers(events, "flaky") == [1, 2]


def test_engine_jittered_waits_stay_under_the_capped_backoff(tmp_path):
    workflow = {
        "name": "jitter",
        "errorHandling": {"strategy": "retry", "maxRetries": 6, "delay": 1, "maxDelay": 8, "jitter": True},
        "steps": [{"id": "flaky", "run": "exit 1"}],
    }
    clock = Clock()
    engine, _ = engine_for(tmp_path, workflow, clock)
    engine.run({})
    assert len(clock.waits) == 6
    for wait, cap in zip(clock.waits, [1, 2, 4, 8, 8, 8]):
        assert 0 <= wait <= cap


def test_engine_does_not_start_a_retry_whose_wait_would_end_past_max_duration(tmp_path):
    # The first attempt fails at once and the backoff asks for 10 s, but maxDuration is
    # 5 s: the wait would end past it, so there is no wait and no second attempt (the
    # wait is not trimmed to the deadline to squeeze one more attempt in), and the
    # record says why no retry followed.
    workflow = {
        "name": "max-duration",
        "errorHandling": {"strategy": "retry", "maxRetries": 10, "backoff": "fixed", "delay": 10,
                          "maxDelay": 60, "maxDuration": 5},
        "steps": [{"id": "slow", "run": "echo broken >&2; exit 1"}],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, failure = engine.run({})
    assert status == "failed"
    assert clock.waits == []
    assert attempt_numbers(events, "slow") == [1]
    assert failure["kind"] == "failed" and "broken" in failure["message"]  # the last attempt's own error
    [finished] = [e for e in events if e["type"] == "step.finished" and e["step"] == "slow"]
    assert "maxDuration (5s)" in finished["retryStopped"] and "retry 1" in finished["retryStopped"]
    assert not [e for e in events if e["type"] == "attempt.failed"]  # no "retrying in" was announced


def test_engine_retries_only_while_the_next_wait_ends_within_max_duration(tmp_path):
    # Real waits of 0.2 s and a 1 s budget: however long each attempt takes on a busy
    # machine, every retry starts within maxDuration, no wait is trimmed, and the last
    # failure says that the next retry would have started past it.
    workflow = {
        "name": "max-duration-real",
        "errorHandling": {"maxRetries": 50, "backoff": "fixed", "delay": 0.2, "maxDuration": 1},
        "steps": [{"id": "flaky", "run": "exit 1"}],
    }
    events: list[dict] = []
    (tmp_path / "logs").mkdir()
    settings = Settings(execution_id="exec_0000test0000", workflow_id="wf_0000test0000",
                        log_dir=tmp_path / "logs", agents={}, teams={})
    status, _ = Engine(workflow, settings, events.append).run({})
    assert status == "failed"
    starts = [e for e in events if e["type"] == "step.started" and e["step"] == "flaky"]
    assert 2 <= len(starts) <= 6
    first = parse_iso(starts[0]["at"])
    for start in starts[1:]:
        # (a timer may wake a little late on a busy machine; the old trimming was by whole waits)
        assert (parse_iso(start["at"]) - first).total_seconds() <= 1.0 + 0.15
    assert [e["retryIn"] for e in events if e["type"] == "attempt.failed"] == [0.2] * (len(starts) - 1)
    [finished] = [e for e in events if e["type"] == "step.finished"]
    assert f"retry {len(starts)} would start" in finished["retryStopped"]
    assert "past maxDuration (1s)" in finished["retryStopped"]


@pytest.mark.parametrize("workflow_policy, step_policy, attempts", [
    (None, {"maxRetries": 2}, 3),  # the step's own
    ({"maxRetries": 2}, None, 3),  # the workflow's
    ({"delay": 3}, {"maxRetries": 1}, 2),  # through the merge
    ({"backoff": "fixed", "delay": 3}, None, 4),  # retry fields alone: the default 3 retries
    ({"strategy": "fail"}, {"maxRetries": 1}, 2),  # maxRetries counts; fail is what follows the last
    ({"strategy": "retry", "maxRetries": 3}, {"strategy": "fail"}, 1),  # a step's own fail: no retries
])
def test_engine_retries_as_max_retries_says(tmp_path, workflow_policy, step_policy, attempts):
    step = {"id": "flaky", "run": "exit 1"}
    if step_policy is not None:
        step["errorHandling"] = step_policy
    workflow = {"name": "no-strategy", "steps": [step]}
    if workflow_policy is not None:
        workflow["errorHandling"] = workflow_policy
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, _ = engine.run({})
    assert status == "failed"
    assert attempt_numbers(events, "flaky") == list(range(1, attempts + 1))
    assert len(clock.waits) == attempts - 1


def test_a_groups_retry_fields_are_the_default_of_the_steps_inside_it(tmp_path):
    # A parallel, conditional or loop step is never run again itself: its retry
    # fields go down to the steps inside it, nested groups adding their own.
    workflow = {
        "name": "group-retries",
        "steps": [
            {"id": "each", "type": "loop", "items": [1, 2], "errorHandling": {"maxRetries": 2, "delay": 1},
             "step": {"id": "body", "run": "exit 1"}},
        ],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, failure = engine.run({})
    assert status == "failed" and failure["step"] == "body[0]"
    assert attempt_numbers(events, "body[0]") == [1, 2, 3]
    assert clock.waits == [1, 2]

    workflow = {
        "name": "nested-group-retries",
        "errorHandling": {"backoff": "fixed", "delay": 5, "maxRetries": 0},
        "steps": [
            {"id": "checks", "type": "parallel", "errorHandling": {"strategy": "retry", "delay": 2},
             "steps": [
                 {"id": "gate", "type": "conditional", "condition": True, "errorHandling": {"maxRetries": 1},
                  "then": {"id": "inner", "run": "exit 1"}},
                 {"id": "own", "run": "exit 1", "errorHandling": {"maxRetries": 0}},
             ]},
        ],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    engine.run({})
    assert attempt_numbers(events, "inner") == [1, 2]  # the conditional's maxRetries, the parallel's delay
    assert attempt_numbers(events, "own") == [1]  # a step's own maxRetries wins
    assert clock.waits == [2]


def test_a_groups_continue_still_concerns_the_group_while_its_retries_go_inside(tmp_path):
    workflow = {
        "name": "group-continue",
        "steps": [
            {"id": "optional", "type": "parallel", "errorHandling": {"strategy": "continue", "maxRetries": 1, "delay": 0},
             "steps": [{"id": "flaky", "run": "exit 1"}]},
            {"id": "next", "run": "true"},
        ],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, _ = engine.run({})
    assert status == "completed"
    assert attempt_numbers(events, "flaky") == [1, 2]
    [group] = [e for e in events if e["type"] == "step.finished" and e["step"] == "optional"]
    assert group["status"] == "failed" and group["continued"] is True


def test_engine_says_why_a_failure_was_not_retried(tmp_path):
    workflow = {
        "name": "not-retried",
        "errorHandling": {"maxRetries": 3, "retryOn": ["exit:75"]},
        "steps": [{"id": "other-code", "run": "exit 3"}],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    engine.run({})
    [finished] = [e for e in events if e["type"] == "step.finished"]
    assert finished["retryStopped"] == "exit code 3 is not in retryOn (exit:75)."
    assert clock.waits == []


def test_engine_policy_of_a_step_overrides_the_workflows(tmp_path):
    workflow = {
        "name": "override",
        "errorHandling": {"strategy": "retry", "maxRetries": 3, "backoff": "exponential", "delay": 1, "maxDelay": 60},
        "steps": [
            # fallback after its retries: maxRetries 1 is the step's, the backoff the workflow's
            {"id": "short", "run": "exit 1", "output": "short-result",
             "errorHandling": {"strategy": "fallback", "maxRetries": 1,
                               "fallback": {"id": "plan-b", "run": "echo plan-b"}}},
            # retry (the workflow's strategy and maxRetries) with the step's own backoff and delay
            {"id": "fixed", "run": "exit 1", "errorHandling": {"backoff": "fixed", "delay": 2}},
        ],
    }
    clock = Clock()
    engine, events = engine_for(tmp_path, workflow, clock)
    status, failure = engine.run({})
    assert status == "failed" and failure["step"] == "fixed"
    assert attempt_numbers(events, "short") == [1, 2]
    assert attempt_numbers(events, "plan-b") == [1]
    assert engine.state["short-result"] == "plan-b"
    assert attempt_numbers(events, "fixed") == [1, 2, 3, 4]
    assert clock.waits == [1, 2, 2, 2]  # short: the workflow's delay; fixed: its own
