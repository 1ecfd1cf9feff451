"""The typed model (model.py), the depends language (depends.py), and the engine driven
in-process on them: events collected in a list, a fake clock, no `wfctl` process.

The end-to-end graph tests (exit codes, crashes, resume, retry) are in
tests/test_graph_scheduling.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wfctl.depends import DependsError, ListGraph, Outcome, find_cycles, parse_depends, topological_order
from wfctl.engine import Engine, Prior, Settings
from wfctl.model import (
    ALLOWED,
    ENDED,
    LIVE,
    TERMINAL,
    Action,
    ConditionalStep,
    ExecutionStatus,
    LoopStep,
    ParallelStep,
    StepKey,
    StepKind,
    StepStatus,
    TaskStep,
    TeamStep,
    allows,
    build_workflow,
)
from wfctl.record import ExecutionState, new_document
from wfctl.validate import validate_mapping


# -- statuses ------------------------------------------------------------------------------
def test_statuses_are_strings_that_stay_strings_in_json():
    assert StepStatus.COMPLETED == "completed" and "timed_out" == ExecutionStatus.TIMED_OUT
    assert json.dumps({"s": StepStatus.SKIPPED, "k": StepKind.LOOP}) == '{"s": "skipped", "k": "loop"}'
    assert TERMINAL == {"completed", "failed", "cancelled", "timed_out"}
    assert LIVE == {"pending", "running", "paused"}
    assert ENDED == TERMINAL | {"interrupted"}


def test_one_table_says_what_each_execution_status_allows():
    assert ALLOWED[Action.RETRY] == {"failed", "cancelled", "timed_out", "interrupted"}
    assert ALLOWED[Action.RESUME] == {"paused", "interrupted"}
    assert ALLOWED[Action.PAUSE] == {"pending", "running"}
    assert ALLOWED[Action.CANCEL] == {"pending", "running", "paused", "interrupted"}
    assert allows("failed", Action.RETRY) and not allows("completed", Action.RETRY)
    assert not allows(None, Action.CANCEL)


# -- step keys -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "step_id", "suffix", "member"),
    [
        ("build", "build", "", None),
        ("process[3]", "process", "[3]", None),
        ("inner[1][0]", "inner", "[1][0]", None),
        ("review@tom", "review", "@tom", "tom"),
        ("review[2]@rae", "review", "[2]@rae", "rae"),
        ("use-cache@fetch", "use-cache", "@fetch", "fetch"),
        ("my.step[0]", "my.step", "[0]", None),
    ],
)
def test_step_keys_parse_and_format_in_one_place(key, step_id, suffix, member):
    parsed = StepKey.parse(key)
    assert (parsed.step_id, parsed.suffix, parsed.member) == (step_id, suffix, member)
    assert str(parsed) == key
    assert str(StepKey("loop").indexed(2).at("amy")) == "loop[2]@amy"


# -- the model -----------------------------------------------------------------------------
TREE = {
    "name": "tree",
    "maxConcurrency": 3,
    "errorHandling": {"strategy": "retry", "maxRetries": 2, "fallback": {"id": "shared", "run": "echo shared"}},
    "teams": {"crew": {"members": ["echo"], "strategy": "all"}},
    "steps": [
        {"id": "a", "run": "echo a", "output": "a-out", "env": {"N": 3, "T": "{{ input.x }}"}},
        {"id": "p", "type": "parallel", "steps": [
            {"id": "p1", "agent": "echo", "task": "hello {{ a-out }}", "input": "a-out"},
            {"id": "p2", "run": "echo p2", "errorHandling": {"strategy": "continue",
                                                             "fallback": {"id": "own", "run": "echo own"}}},
        ]},
        {"id": "c", "type": "conditional", "condition": "a-out == 'a'",
         "then": {"id": "t", "run": "echo t"}, "else": [{"id": "e1", "run": "echo e1"}, {"id": "e2", "run": "x"}]},
        {"id": "l", "type": "loop", "items": "[1, 2]", "step": {"id": "body", "run": "echo {{ item }}"}},
        {"id": "crew-step", "type": "team", "teamId": "crew", "task": "review"},
    ],
}


def test_build_workflow_makes_one_typed_step_per_kind():
    workflow = build_workflow(TREE)
    kinds = {step.id: type(step) for step in workflow.walk()}
    assert kinds == {
        "shared": TaskStep, "a": TaskStep, "p": ParallelStep, "p1": TaskStep, "p2": TaskStep, "own": TaskStep,
        "c": ConditionalStep, "t": TaskStep, "e1": TaskStep, "e2": TaskStep, "l": LoopStep, "body": TaskStep,
        "crew-step": TeamStep,
    }
    assert set(workflow.by_id) == set(kinds)
    assert [s.id for s in workflow.by_id["c"].children()] == ["t", "e1", "e2"]
    assert workflow.by_id["l"].children()[0].id == "body" and workflow.by_id["l"].repeats_children
    assert [s.id for s in workflow.by_id["p"].walk()] == ["p", "p1", "p2", "own"]
    assert workflow.count_tasks() == 8  # tasks and team steps, fallbacks not counted
    assert workflow.max_concurrency == 3
    assert workflow.by_id["p1"].path == "steps[1].steps[0]" and workflow.by_id["e2"].path == "steps[2].else[1]"
    assert workflow.parent_of("p1").id == "p" and workflow.parent_of("a") is None
    assert workflow.list_of("e2").steps[0].id == "e1"


def test_the_policy_is_resolved_and_templates_and_expressions_are_parsed():
    workflow = build_workflow(TREE)
    a, p2 = workflow.by_id["a"], workflow.by_id["p2"]
    assert (a.policy.strategy, a.policy.max_retries) == ("retry", 2)
    assert (p2.policy.strategy, p2.policy.max_retries) == ("continue", 2)  # merged key by key
    assert p2.fallback.id == "own" and a.fallback is None and workflow.fallback.id == "shared"
    assert workflow.by_id["p1"].task.render({"a-out": "x"}) == "hello x"
    assert dict(a.env)["N"] == "3" and dict(a.env)["T"].render({"input": {"x": 1}}) == "1"
    assert workflow.by_id["c"].condition.evaluate({"a-out": "a"}) is True
    assert workflow.by_id["l"].items.evaluate({}) == [1, 2]
    assert workflow.by_id["p1"].inputs == ("a-out",)
    assert workflow.raw is TREE  # kept for show and --json only


def test_skeleton_records_come_from_the_model_with_depends_on():
    doc = {"name": "g", "steps": [
        {"id": "a", "run": "true"},
        {"id": "b", "run": "true", "depends": ["a"]},
        {"id": "c", "run": "true", "depends": "a.failed || b"},
        {"id": "p", "type": "parallel", "steps": [{"id": "x", "run": "true"}]},
    ]}
    document = new_document(execution_id="exec_1", workflow=build_workflow(doc), workflow_id="wf_1",
                            input={}, priority="normal")
    assert [(r["id"], r.get("dependsOn")) for r in document["steps"]] == [
        ("a", None), ("b", ["a"]), ("c", "a.failed || b"), ("p", None)]
    assert document["steps"][3]["steps"] == [{"id": "x", "type": "task", "status": "pending", "agent": "run"}]


# -- depends -------------------------------------------------------------------------------
def test_depends_lists_and_expressions_parse():
    assert parse_depends(["a", "b", "a"]).ids() == ("a", "b")
    expression = parse_depends("build && (test.succeeded || test.failed) && !lint.skipped")
    assert expression.ids() == ("build", "test", "lint")
    assert [r.text() for r in expression.refs()] == ["build", "test.succeeded", "test.failed", "lint.skipped"]
    assert parse_depends("a || b && c").condition.text() == "a || (b && c)"  # && binds tighter
    assert parse_depends("my-step.v2.completed").refs()[0].step == "my-step.v2"
    assert parse_depends("x.failed").resolve(["x.failed"]).refs()[0].text() == "x.failed"  # an id ending so
    assert parse_depends("x.failed").resolve(["x"]).refs()[0].prop == "failed"


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("", "the expression is empty", 0),
        ("a &&", "the expression ends where a step id was expected", 4),
        ("a & b", "unexpected character '&' (use && and ||)", 2),
        ("(a || b", "missing ')' for the '(' at character 1", 7),
        ("a b", "unexpected 'b'; expected && or ||", 2),
        (".failed", "'.failed' has a property but no step id", 0),
        ("a == b", "unexpected character '='", 2),
        ("(" * 40 + "a" + ")" * 40, "the expression is nested more than 32 levels deep", 32),
    ],
)
def test_bad_depends_expressions_say_what_and_where(text, message, position):
    with pytest.raises(DependsError) as caught:
        parse_depends(text)
    assert (caught.value.message, caught.value.position) == (message, position)


S, C, F, K, X = Outcome.SUCCEEDED, Outcome.CONTINUED, Outcome.FAILED, Outcome.SKIPPED, Outcome.CANCELLED


@pytest.mark.parametrize(
    ("text", "outcomes", "verdict"),
    [
        ("a", {}, None),
        ("a", {"a": S}, True),
        ("a", {"a": C}, True),  # a continued failure does not stop what depends on it
        ("a", {"a": F}, False),
        ("a", {"a": K}, False),
        ("a.succeeded", {"a": C}, False),
        ("a.failed", {"a": C}, True),
        ("a.failed", {"a": F}, True),
        ("a.failed", {"a": S}, False),
        ("a.skipped", {"a": K}, True),
        ("a.completed", {"a": X}, True),
        ("a.completed", {"a": F}, True),
        ("a || b", {"a": S}, True),  # decided before b ends
        ("a && b", {"a": F}, False),  # can no longer become true
        ("a && b", {"a": S}, None),
        ("!a.failed", {}, None),
        ("!a.failed", {"a": S}, True),
    ],
)
def test_depends_evaluate_in_three_values(text, outcomes, verdict):
    assert parse_depends(text).evaluate(outcomes) is verdict


def test_what_a_condition_promises_and_accepts():
    depends = parse_depends("build && (test.succeeded || test.failed) && docs.completed")
    assert depends.must_succeed() == {"build"}
    assert depends.must_end() == {"build", "test", "docs"}
    assert parse_depends("a || b").must_succeed() == frozenset()
    assert parse_depends("a.completed").accepts_failure({"a": F})
    assert not parse_depends("a.completed").accepts_failure({"a": S})
    assert not parse_depends("a || b.failed").accepts_failure({"a": F, "b": S})
    assert parse_depends(["t"]).reason({"t": F}) == "dependency not met: t (t failed)"
    assert (parse_depends("t.failed").reason({"t": S})
            == "dependency not met: t.failed (t completed)")


def test_graph_order_downstream_and_cycles():
    graph = ListGraph(("fetch", "lint", "unit", "package", "side"), {
        "fetch": None, "lint": parse_depends(["fetch"]), "unit": parse_depends(["fetch"]),
        "package": parse_depends("lint && unit"), "side": parse_depends([]),
    })
    assert graph.order() == ["fetch", "lint", "unit", "package", "side"]
    assert graph.downstream("fetch") == {"lint", "unit", "package"}
    assert graph.downstream("unit") == {"package"} and graph.dependents("side") == ()
    assert topological_order(["a", "b"], {"a": ["b"]}) == ["b", "a"]
    assert find_cycles(["a", "b", "c", "d"], {"a": ["c"], "b": ["a"], "c": ["b"], "d": []}) == [["a", "b", "c", "a"]]


def test_a_list_with_depends_is_a_graph_and_steps_without_depends_follow_the_one_before():
    workflow = build_workflow({"name": "g", "steps": [
        {"id": "a", "run": "true"}, {"id": "b", "run": "true"},
        {"id": "c", "run": "true", "depends": []},
        {"id": "p", "type": "parallel", "steps": [
            {"id": "p1", "run": "true"}, {"id": "p2", "run": "true", "depends": ["p1"]}, {"id": "p3", "run": "true"}]},
    ]})
    graph = workflow.steps.graph
    assert graph.dependencies("a") == () and graph.dependencies("b") == ("a",) and graph.dependencies("c") == ()
    assert graph.dependencies("p") == ("c",)
    inner = workflow.by_id["p"].steps.graph
    assert inner.dependencies("p3") == () and inner.dependencies("p2") == ("p1",)  # in a parallel: nothing
    assert build_workflow({"name": "plain", "steps": [{"id": "a", "run": "true"}]}).steps.graph is None


# -- validation of depends (in-process; end to end in test_graph_scheduling.py) ------------
def problems_of(steps: list, **top) -> list[str]:
    return [f"{p.path}: {p.message}" for p in validate_mapping({"name": "v", "steps": steps, **top})]


def test_depends_names_steps_of_the_same_list():
    assert problems_of([{"id": "build", "run": "true"}, {"id": "test", "run": "true", "depends": ["biuld"]}]) == [
        "steps[1].depends: depends names 'biuld', but no step has that id; did you mean 'build'?"]
    assert problems_of([
        {"id": "p", "type": "parallel", "steps": [{"id": "inner", "run": "true"}]},
        {"id": "after", "run": "true", "depends": "inner.succeeded"},
    ]) == ["steps[1].depends: depends names 'inner', which is in another list: depends may only name steps "
           "of the same list"]
    assert problems_of([{"id": "me", "run": "true", "depends": ["me"]}]) == [
        "steps[0].depends: step 'me' depends on itself"]
    assert problems_of([{"id": "a", "run": "true"}, {"id": "b", "run": "true", "depends": "a.passed"}]) == [
        "steps[1].depends: depends names 'a.passed': 'passed' is not a property of a step; use .succeeded, "
        ".failed, .skipped or .completed"]
    assert problems_of([{"id": "a", "run": "true"}, {"id": "b", "run": "true", "depends": "a &&"}]) == [
        "steps[1].depends: invalid depends expression: the expression ends where a step id was expected "
        "(at character 5)"]
    assert problems_of([{"id": "l", "type": "loop", "items": 2, "step": {"id": "s", "run": "true", "depends": ["l"]}}]) == [
        "steps[0].step.depends: depends names 'l', which is in another list: depends may only name steps of the "
        "same list"]


def test_a_cycle_is_printed_in_the_order_it_would_run():
    assert problems_of([
        {"id": "a", "run": "true", "depends": ["c"]},
        {"id": "b", "run": "true", "depends": ["a"]},
        {"id": "c", "run": "true", "depends": ["b"]},
    ]) == ["steps[0].depends: steps depend on each other in a cycle: a → b → c → a"]
    # a step without depends follows the one before it: that edge can close a cycle too
    assert problems_of([{"id": "a", "run": "true", "depends": ["b"]}, {"id": "b", "run": "true"}]) == [
        "steps[0].depends: steps depend on each other in a cycle: a → b → a"]


def test_data_flow_follows_the_graph():
    ok = [
        {"id": "fetch", "run": "echo 1", "output": "src"},
        {"id": "lint", "run": "true", "depends": ["fetch"], "input": "src", "output": "lint-out"},
        {"id": "unit", "run": "true", "depends": ["fetch"], "input": "src"},
        {"id": "package", "run": "true", "depends": "lint && unit", "input": ["src", "lint-out"]},
        {"id": "report", "run": "echo {{ steps.unit.status }}", "depends": "unit.completed"},
    ]
    assert problems_of(ok) == []
    # written earlier, but not an ancestor: refused
    not_ancestor = [
        {"id": "fetch", "run": "echo 1", "output": "src"},
        {"id": "lint", "run": "true", "depends": [], "input": "src"},
    ]
    assert problems_of(not_ancestor) == [
        "steps[1].input: 'src' is produced by step 'fetch', which is not sure to have succeeded when 'lint' "
        "starts: a step reads what the steps it depends on produce (name it in depends)"]
    # an ancestor that may have failed (`.completed`) does not promise its output
    maybe = [{"id": "a", "run": "echo", "output": "x"}, {"id": "b", "run": "true", "depends": "a.completed", "input": "x"}]
    assert len(problems_of(maybe)) == 1
    # written later, but an ancestor: fine
    assert problems_of([
        {"id": "use", "run": "true", "depends": ["make"], "input": "made"},
        {"id": "make", "run": "echo", "output": "made", "depends": []},
    ]) == []


# -- the engine, in-process ----------------------------------------------------------------
class FakeClock:
    """Time that moves only when asked: each reading is 1 ms after the last."""

    def __init__(self) -> None:
        self.ticks = 0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        self.ticks += 1
        return self.ticks / 1000

    def now_iso(self) -> str:
        self.ticks += 1
        return f"2026-01-01T00:00:{self.ticks // 1000:02d}.{self.ticks % 1000:03d}Z"

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def run_in_process(tmp_path: Path, workflow: dict, *, prior: Prior | None = None, fail_fast: bool = False):
    """Run a workflow with the engine alone; returns (status, failure, events, document)."""
    events: list[dict] = []
    model = build_workflow(workflow)
    (tmp_path / "logs").mkdir(exist_ok=True)
    settings = Settings(execution_id="exec_0000test0000", workflow_id="wf_0000test0000", log_dir=tmp_path / "logs",
                        agents=dict(model.agents), teams=dict(model.teams), fail_fast=fail_fast)
    clock = FakeClock()
    engine = Engine(model, settings, events.append, prior=prior, sleep=clock.sleep, clock=clock)
    state = ExecutionState(new_document(execution_id="exec_0000test0000", workflow=model,
                                        workflow_id="wf_0000test0000", input={}, priority="normal"))
    status, failure = engine.run({})
    for event in events:
        state.apply(event)
    return status, failure, events, state.document


def statuses(document: dict) -> dict[str, str]:
    found = {}

    def walk(records):
        for record in records:
            found[record["id"]] = record["status"]
            walk(record.get("steps") or [])

    walk(document["steps"])
    return found


def started(events: list[dict]) -> list[str]:
    return [e["step"] for e in events if e["type"] == "step.started" or (e["type"] == "step.finished" and "startedAt" in e)]


DIAMOND = {
    "name": "diamond",
    "maxConcurrency": 1,  # one at a time: the order is the scheduler's, not the threads'
    "steps": [
        {"id": "fetch", "agent": "echo", "task": "fetch"},
        {"id": "lint", "agent": "echo", "depends": ["fetch"]},
        {"id": "integration", "agent": "echo", "depends": ["fetch"]},
        {"id": "unit", "run": "exit 3", "depends": ["fetch"]},
        {"id": "package", "agent": "echo", "depends": "lint && unit && integration"},
        {"id": "report", "agent": "echo", "depends": "lint.completed && unit.completed && integration.completed"},
        {"id": "independent", "agent": "echo", "depends": ["lint"]},
    ],
}


def test_a_failure_skips_what_needs_it_runs_what_accepts_it_and_starts_nothing_else(tmp_path):
    status, failure, events, document = run_in_process(tmp_path, DIAMOND)
    assert status == "failed" and failure["step"] == "unit"
    assert statuses(document) == {"fetch": "completed", "lint": "completed", "unit": "failed",
                                  "integration": "completed", "package": "skipped", "report": "completed",
                                  "independent": "pending"}  # ready, but the list stopped
    package = next(r for r in document["steps"] if r["id"] == "package")
    assert package["skipReason"] == "dependency not met: lint && unit && integration (unit failed)"
    assert started(events) == ["fetch", "lint", "integration", "unit", "report"]


def test_a_graph_that_succeeds_runs_every_step_once_in_dependency_order(tmp_path):
    workflow = {"name": "ok", "maxConcurrency": 1, "steps": [
        {"id": "join", "agent": "echo", "depends": "left && right"},
        {"id": "left", "agent": "echo", "depends": ["root"]},
        {"id": "root", "agent": "echo", "depends": []},
        {"id": "right", "agent": "echo", "depends": ["root"]},
        {"id": "after-failure", "agent": "echo", "depends": "left.failed"},
    ]}
    status, _, events, document = run_in_process(tmp_path, workflow)
    assert status == "completed"
    assert started(events) == ["root", "left", "right", "join"]
    assert statuses(document)["after-failure"] == "skipped"
    assert document["progress"] == {"completed": 5, "total": 5, "percentage": 100}


def test_a_continued_failure_counts_as_done_for_a_bare_dependency(tmp_path):
    workflow = {"name": "cont", "steps": [
        {"id": "flaky", "run": "exit 1", "errorHandling": {"strategy": "continue"}},
        {"id": "next", "agent": "echo", "depends": ["flaky"]},
        {"id": "only-on-success", "agent": "echo", "depends": "flaky.succeeded"},
    ]}
    status, _, _, document = run_in_process(tmp_path, workflow)
    assert status == "completed"
    assert statuses(document) == {"flaky": "failed", "next": "completed", "only-on-success": "skipped"}


def test_a_parallel_steps_children_may_depend_on_each_other(tmp_path):
    workflow = {"name": "par", "steps": [{"id": "p", "type": "parallel", "maxConcurrency": 1, "steps": [
        {"id": "second", "agent": "echo", "depends": ["first"]},
        {"id": "first", "agent": "echo"},
    ]}]}
    status, _, events, document = run_in_process(tmp_path, workflow)
    assert status == "completed"
    assert started(events) == ["p", "first", "second"]
    assert set(next(r for r in document["steps"])["output"]) == {"first", "second"}


def test_retry_keeps_a_failure_outside_the_retried_steps_downstream(tmp_path):
    """Prior.frozen: a failed graph step that a retry leaves alone stays failed; what
    depends on it sees the failure; the run fails with its error."""
    workflow = {"name": "frozen", "steps": [
        {"id": "a", "agent": "echo", "depends": []},
        {"id": "b", "run": "exit 1", "depends": []},
        {"id": "after-b", "agent": "echo", "depends": ["b"]},
        {"id": "cleanup", "agent": "echo", "depends": "b.failed"},
    ]}
    prior = Prior(completed={}, attempts={"b": 1}, members={}, frozen={"b": {"kind": "failed", "message": "no."}})
    status, failure, events, document = run_in_process(tmp_path, workflow, prior=prior)
    assert status == "failed" and failure == {"step": "b", "kind": "failed", "message": "no."}
    assert "b" not in started(events)  # not run again
    assert statuses(document) == {"a": "completed", "b": "pending", "after-b": "skipped", "cleanup": "completed"}


def test_a_fallback_that_fails_does_not_fall_back_to_itself(tmp_path):
    workflow = {"name": "fb", "errorHandling": {"strategy": "fallback", "fallback": {"id": "fb", "run": "exit 2"}},
                "steps": [{"id": "a", "run": "exit 1"}]}
    status, failure, events, _ = run_in_process(tmp_path, workflow)
    assert status == "failed"
    assert started(events) == ["a", "fb@a"]  # once, not fb@a@fb@fb...
    assert failure["step"] == "fb@a"


def test_fail_fast_cancels_a_running_sibling_in_a_parallel_step_too(tmp_path):
    started = tmp_path / "slow-started"
    wait = f'i=0; until [ -e "{started}" ]; do [ $i -ge 400 ] && break; sleep 0.05; i=$((i+1)); done'
    workflow = {"name": "ff", "steps": [{"id": "p", "type": "parallel", "steps": [
        {"id": "slow", "run": f'touch "{started}"; sleep 30; echo finished'},
        {"id": "fails", "run": f"{wait}; exit 5"},
    ]}]}
    status, failure, _, document = run_in_process(tmp_path, workflow, fail_fast=True)
    assert status == "failed" and failure["step"] == "fails"
    assert statuses(document) == {"p": "failed", "slow": "cancelled", "fails": "failed"}
    slow = next(r for r in document["steps"][0]["steps"] if r["id"] == "slow")
    assert slow["error"]["kind"] == "cancelled"


def test_retry_fields_a_group_hands_down_are_resolved_in_the_model():
    workflow = build_workflow({"name": "handed", "steps": [
        {"id": "p", "type": "parallel", "errorHandling": {"maxRetries": 2, "delay": 5}, "steps": [
            {"id": "c", "run": "true"},
            {"id": "d", "run": "true", "errorHandling": {"strategy": "fail"}},
            {"id": "l", "type": "loop", "items": 2, "errorHandling": {"backoff": "fixed"},
             "step": {"id": "body", "run": "true"}},
        ]},
        {"id": "outside", "run": "true"},
    ]})
    c, d, body = (workflow.by_id[key].policy for key in ("c", "d", "body"))
    assert (c.strategy, c.max_retries, c.delay) == ("retry", 2, 5.0)
    assert (d.strategy, d.max_retries) == ("fail", 0)  # its own strategy: fail
    assert (body.max_retries, body.delay, body.backoff) == (2, 5.0, "fixed")  # through two groups
    assert workflow.by_id["outside"].policy.max_retries == 0
    assert workflow.by_id["c"].inherited == {"maxRetries": 2, "delay": 5}


def test_the_workflows_fallback_inherits_the_retry_fields_where_it_stands_in(tmp_path):
    """The shared fallback has one model, but stands in for steps in many places: inside
    a group that hands down retries, its attempts follow them."""
    tries = tmp_path / "tries"
    workflow = {
        "name": "shared-fallback",
        "errorHandling": {"strategy": "fallback",
                          "fallback": {"id": "rescue", "run": f'echo x >> "{tries}"; [ $(wc -l < "{tries}") -ge 2 ]'}},
        "steps": [
            {"id": "group", "type": "parallel", "errorHandling": {"maxRetries": 1, "delay": 0},
             "steps": [{"id": "inner", "run": "exit 1", "errorHandling": {"maxRetries": 0}}]},
        ],
    }
    status, _, events, document = run_in_process(tmp_path, workflow)
    assert status == "completed"
    assert [e["attempt"] for e in events if e["type"] == "step.started" and e["step"] == "rescue@inner"] == [1, 2]
    inner = next(r for r in document["steps"][0]["steps"] if r["id"] == "inner")
    assert inner["status"] == "completed" and inner["recoveredBy"] == "rescue@inner"
