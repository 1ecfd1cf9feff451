"""validate.py: every problem of a workflow at once, with its path and line."""

from __future__ import annotations

import datetime
import json
import textwrap
import time
from pathlib import Path

import pytest

from wfctl.errors import ExitCode, Problem, WorkflowInvalid
from wfctl.loader import load_document
from wfctl.spec import MAX_STEP_DEPTH, MAX_STEPS
from wfctl.validate import (
    check_execution_input,
    external_inputs,
    load_workflow,
    validate_document,
    validate_mapping,
    validate_text,
)

DATA = Path(__file__).parent / "data" / "workflows"


def check(tmp_path: Path, text: str, name: str = "wf.yaml", **known) -> list[Problem]:
    """Write the workflow to a real file, load it and return its problems."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    doc, lines = load_document(path)
    problems = validate_document(doc, file=str(path), lines=lines, **known)
    for problem in problems:
        assert problem.file == str(path)
    return problems


def at(problems: list[Problem], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, f"expected one problem at {path!r}, got {problems}"
    return found[0]


# -- the seed ------------------------------------------------------------------------------------
def test_seed_create_request_is_valid():
    path = DATA / "seed-create.json"
    doc, lines = load_workflow(path)
    assert doc["name"] == "SaaS Product Launch Workflow"
    assert [s["id"] for s in doc["steps"]] == [
        "market-research", "product-strategy", "parallel-development", "testing", "deploy"
    ]
    assert validate_document(doc, file=str(path), lines=lines) == []
    assert external_inputs(doc) == []
    assert lines["steps[2].steps[1].agent"] == 33


def test_seed_step_type_examples_are_valid(tmp_path):
    # The seed's "Workflow Step Types" fragments, assembled into one workflow.
    problems = check(tmp_path, """\
        name: step types
        teams:
          engineering: {members: [tom, rae], strategy: round-robin}
        steps:
          - {id: analysis, type: task, agent: amy, task: Analyze data, input: raw-data, output: analysis-results}
          - id: parallel-work
            type: parallel
            steps:
              - { id: task1, agent: tom, task: "..." }
              - { id: task2, agent: rae, task: "..." }
          - {id: tests, agent: quinn, task: test, output: test-results}
          - id: conditional
            type: conditional
            condition: "test-results.passed === true"
            then: {id: deploy, agent: dev, task: Deploy to production}
            else: {id: fix, agent: tom, task: Fix failing tests}
          - id: process-items
            type: loop
            items: data-array
            step: {id: process, agent: amy, task: Process item}
          - {id: team-project, type: team, teamId: engineering, task: Build feature, input: requirements,
             output: completed-feature}
        """, known_agents={"amy", "tom", "rae", "quinn", "dev"}, known_teams=set())
    assert problems == []


# -- A02 / A03: shape of the document -------------------------------------------------------------
def test_missing_name_and_steps_use_the_parent_line(tmp_path):
    problems = check(tmp_path, """\
        # a comment first
        description: nothing else
        """)
    assert [(p.path, p.line) for p in problems] == [("name", 2), ("steps", 2)]
    assert "no name" in problems[0].message
    assert "the workflow has no steps" in problems[1].message


def test_empty_steps(tmp_path):
    problems = check(tmp_path, "name: x\nsteps: []\n")
    assert [(p.path, p.line) for p in problems] == [("steps", 2)]
    assert "the workflow has no steps" in problems[0].message


def test_empty_mapping(tmp_path):
    problems = check(tmp_path, "{}\n")
    assert [p.path for p in problems] == ["name", "steps"]


def test_top_level_not_a_mapping():
    problems = validate_mapping(["a"], file="<api>")
    assert [p.message for p in problems] == ["the top level must be a mapping with name and steps, not a list"]


def test_step_not_a_mapping(tmp_path):
    problems = check(tmp_path, "name: x\nsteps:\n  - just-a-string\n")
    assert at(problems, "steps[0]").message == (
        "a step must be a mapping with at least an id, not the string 'just-a-string'"
    )
    assert at(problems, "steps[0]").line == 3


# -- A04 / A16: ids -------------------------------------------------------------------------------
def test_duplicate_ids_anywhere_in_the_tree(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - id: build
            run: make
          - id: par
            type: parallel
            steps:
              - id: build
                run: make again
          - id: loop
            type: loop
            items: 3
            step:
              id: par
              run: echo
              errorHandling:
                strategy: fallback
                fallback: {id: build, run: echo fallback}
        """)
    assert [(p.path, p.line) for p in problems] == [
        ("steps[1].steps[0].id", 8), ("steps[2].step.id", 14), ("steps[2].step.errorHandling.fallback.id", 18)
    ]
    assert problems[0].message == "duplicate step id 'build'; it is already used by the step at steps[0] (line 3)"
    assert problems[1].message == "duplicate step id 'par'; it is already used by the step at steps[1] (line 5)"
    assert "steps[0] (line 3)" in problems[2].message


@pytest.mark.parametrize("bad", ["../../x", "a/b", ".", "..", "/abs", "C:\\x", "a b", "x" * 65, "é", ""])
def test_bad_id_characters(tmp_path, bad):
    problems = check(tmp_path, f"name: x\nsteps:\n  - id: {json.dumps(bad)}\n    run: echo\n")
    problem = at(problems, "steps[0].id")
    assert problem.line == 3
    assert "letters, digits" in problem.message


@pytest.mark.parametrize("good", ["a", "a.b", "..a", "A-1_b", "x" * 64, "1st"])
def test_good_ids(tmp_path, good):
    assert check(tmp_path, f"name: x\nsteps:\n  - id: {json.dumps(good)}\n    run: echo\n") == []


def test_missing_id(tmp_path):
    problems = check(tmp_path, "name: x\nsteps:\n  - run: echo\n")
    assert [(p.path, p.line) for p in problems] == [("steps[0].id", 3)]


@pytest.mark.parametrize(
    ("raw", "found"), [("012", "the number 10"), ("no", "the boolean false"), ("1.10", "the number 1.1")]
)
def test_yaml_1_1_ids(tmp_path, raw, found):
    problems = check(tmp_path, f"name: x\nsteps:\n  - id: {raw}\n    run: echo\n")
    assert at(problems, "steps[0].id").message.startswith(f"id must be a string, not {found}")


# -- types and keys (A08, A10) --------------------------------------------------------------------
def test_unknown_step_type_with_suggestion(tmp_path):
    problems = check(tmp_path, "name: x\nsteps:\n  - id: a\n    type: paralel\n    steps: [{id: b, run: echo}]\n")
    problem = at(problems, "steps[0].type")
    assert problem.line == 4
    assert "unknown step type 'paralel'; did you mean 'parallel'?" in problem.message
    assert len(problems) == 1  # its fields are still understood


def test_wrong_types_say_what_was_expected_and_found(tmp_path):
    problems = check(tmp_path, """\
        name: x
        timeout: 0
        errorHandling:
          maxRetries: true
          delay: -1
          backoff: .nan
          retryOn: [failed, exit:x]
        steps:
          - id: a
            run: echo
            timeout: "3"
          - id: b
            type: parallel
            steps: {}
            maxConcurrency: 0
        """)
    expected = [
        ("timeout", 2, "timeout must be a positive number, not the number 0"),
        ("errorHandling.maxRetries", 4, "maxRetries must be a non-negative integer, not the boolean true"),
        ("errorHandling.delay", 5, "delay must be a non-negative number, not the number -1"),
        ("errorHandling.backoff", 6, "backoff must be one of exponential, linear, fixed, not NaN (not a number)"),
        ("errorHandling.retryOn[1]", 7,
         "retryOn[1] must be 'failed', 'timeout' or 'exit:N' (an exit code), not 'exit:x'"),
        ("steps[0].timeout", 11, "timeout must be a positive number, not the string '3'"),
        ("steps[1].steps", 14, "steps must be a non-empty list of steps, not a mapping"),
        ("steps[1].maxConcurrency", 15, "maxConcurrency must be a positive integer, not the number 0"),
    ]
    assert [(p.path, p.line, p.message) for p in problems] == expected


@pytest.mark.parametrize(("value", "found"), [("1e309", "infinity"), ("-1e309", "minus infinity")])
def test_non_finite_timeouts_from_json(tmp_path, value, found):
    # json.loads reads 1e309 as float('inf'); the loader keeps it and the validator refuses it.
    problems = check(tmp_path, '{"name": "x",\n "timeout": %s,\n "steps": [{"id": "a", "run": "echo"}]}' % value,
                     name="wf.json")
    problem = at(problems, "timeout")
    assert problem.line == 2
    assert problem.message == f"timeout must be a positive number, not {found}"


def test_yaml_inf_timeout(tmp_path):
    problems = check(tmp_path, "name: x\ntimeout: .inf\nsteps: [{id: a, run: echo}]\n")
    assert at(problems, "timeout").message == "timeout must be a positive number, not infinity"


def test_unknown_keys_with_did_you_mean(tmp_path):
    problems = check(tmp_path, """\
        name: x
        errorHandling:
          retires: 3
        stpes: []
        steps:
          - id: a
            agnet: mira
            run: echo
          - id: b
            run: echo
            maxRetries: 2
        """)
    assert [(p.path, p.line) for p in problems] == [
        ("errorHandling.retires", 3), ("stpes", 4), ("steps[0].agnet", 7), ("steps[1].maxRetries", 11)
    ]
    assert problems[0].message == "unknown key 'retires' in errorHandling; did you mean 'maxRetries'?"
    assert problems[1].message == "unknown key 'stpes' in a workflow; did you mean 'steps'?"
    assert problems[2].message == "unknown key 'agnet' in a task step; did you mean 'agent'?"
    assert "errorHandling" in problems[3].message


def test_case_only_typo(tmp_path):
    problems = check(tmp_path, "name: x\nerrorHandling: {maxretries: 1}\nsteps: [{id: a, run: echo}]\n")
    assert problems[0].message.endswith("did you mean 'maxRetries'?")


def test_field_of_another_step_type(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - id: a
            run: echo
            items: [1, 2]
            maxConcurrency: 2
        """)
    assert at(problems, "steps[0].items").message == "'items' is a loop field; this step's type is 'task'"
    assert at(problems, "steps[0].maxConcurrency").message == (
        "'maxConcurrency' is a field of parallel and loop steps; this step's type is 'task'"
    )


def test_task_without_agent_or_run(tmp_path):
    problems = check(tmp_path, "name: x\nsteps:\n  - id: a\n    task: do it\n")
    problem = at(problems, "steps[0]")
    assert problem.line == 3
    assert "neither agent nor run" in problem.message


def test_required_fields_of_step_types(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: c, type: conditional}
          - {id: l, type: loop}
          - {id: t, type: team}
          - {id: p, type: parallel}
        """)
    assert [(p.path, p.line) for p in problems] == [
        ("steps[0].condition", 3), ("steps[0].then", 3), ("steps[1].items", 4), ("steps[1].step", 4),
        ("steps[2].teamId", 5), ("steps[3].steps", 6),
    ]
    assert problems[2].message == "step 'l' has no items; a loop step needs items"


@pytest.mark.parametrize("timeout", ["0", "-5", "'10'", "true", "[1]"])
def test_non_positive_or_wrong_timeouts(tmp_path, timeout):
    problems = check(tmp_path, f"name: x\nsteps:\n  - id: a\n    run: echo\n    timeout: {timeout}\n")
    problem = at(problems, "steps[0].timeout")
    assert problem.line == 5
    assert problem.message.startswith("timeout must be a positive number, not ")


def test_loop_items_forms(tmp_path):
    ok = check(tmp_path, """\
        name: x
        steps:
          - {id: a, run: echo, output: things}
          - {id: l1, type: loop, items: things, step: {id: b1, run: echo}}
          - {id: l2, type: loop, items: [1, "two", {three: 3}], step: {id: b2, run: echo}}
          - {id: l3, type: loop, items: 0, step: {id: b3, run: echo}}
          - {id: l4, type: loop, items: "len(things) > 0", step: {id: b4, run: echo}}
        """)
    assert ok == []
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: l1, type: loop, items: -1, step: {id: b1, run: echo}}
          - {id: l2, type: loop, items: 2.5, step: {id: b2, run: echo}}
          - {id: l3, type: loop, items: true, step: {id: b3, run: echo}}
          - {id: l4, type: loop, items: [1, .inf], step: {id: b4, run: echo}}
        """)
    assert [p.path for p in problems] == ["steps[0].items", "steps[1].items", "steps[2].items", "steps[3].items[1]"]
    assert problems[0].message == "items must be a non-negative integer, not the number -1"


def test_agents_teams_inputs_secrets_sections(tmp_path):
    problems = check(tmp_path, """\
        name: x
        inputs:
          budget: {type: money}
          1bad: {type: string}
        agents:
          a1: {run: echo, http: "https://x"}
          a2: {description: nothing}
          a3: {python: "not a target"}
          a4: {run: echo, headers: {X: y}}
        teams:
          t1: {members: [], strategy: everyone}
        secrets:
          TOKEN: {env: TOKEN, file: /x}
        notifications:
          on: [failed, exploded]
          webhook: ftp://x
        steps: [{id: a, run: echo}]
        """)
    assert [(p.path, p.line) for p in problems] == [
        ("inputs.budget.type", 3), ("inputs.1bad", 4), ("agents.a1", 6), ("agents.a2", 7), ("agents.a3.python", 8),
        ("agents.a4.headers", 9), ("teams.t1.members", 11), ("teams.t1.strategy", 11), ("secrets.TOKEN", 13),
        ("notifications.on[1]", 15), ("notifications.webhook", 16),
    ]
    assert problems[2].message == "agent needs exactly one of run, python or http; it has both run and http"
    assert problems[3].message == "agent needs exactly one of run, python or http; it has none of them"


def test_input_declaration_default_must_match_type(tmp_path):
    problems = check(tmp_path, """\
        name: x
        inputs:
          budget: {type: number, default: lots}
          count: {type: integer, default: 3}
        steps: [{id: a, run: echo, input: [budget, count]}]
        """)
    assert [(p.path, p.line, p.message) for p in problems] == [
        ("inputs.budget.default", 3, "default must be a number (the declared type), not the string 'lots'")
    ]


# -- expressions and templates (A05, A18) ---------------------------------------------------------
def test_expression_syntax_errors_everywhere(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - id: produce
            run: echo
            output: data
          - id: c
            type: conditional
            condition: "data.ok ==="
            then: {id: t, run: echo}
          - id: l
            type: loop
            items: "data.list["
            step: {id: b, run: echo}
          - id: task-template
            agent: echo
            task: "Use {{ data.x"
          - id: run-list
            run: [echo, "{{ }}"]
          - id: env
            run: echo
            env:
              GOOD: "{{ data.x }}"
              BAD: "{{ data ( }}"
        """)
    assert [(p.path, p.line) for p in problems] == [
        ("steps[1].condition", 8), ("steps[2].items", 12), ("steps[3].task", 16), ("steps[4].run[1]", 18),
        ("steps[5].env.BAD", 23),
    ]
    assert problems[0].message.startswith("invalid expression in condition: ")
    assert problems[1].message.startswith("invalid expression in items: ")
    assert problems[2].message.startswith("invalid template in task: ")
    assert problems[3].message.startswith("invalid template in run: ")
    assert problems[4].message.startswith("invalid template in env BAD: ")


def test_unknown_names_in_expressions_with_suggestion(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: tests, run: echo, output: test-results}
          - id: c
            type: conditional
            condition: "test-result.passed === true"
            then: {id: t, run: "echo {{ test-results.passed }} {{ steps.tests.status }} {{ input.anything }}"}
          - {id: u, run: "echo {{ steps.tets.output }}"}
        """)
    assert [(p.path, p.line) for p in problems] == [("steps[1].condition", 6), ("steps[2].run", 8)]
    assert problems[0].message == (
        "unknown name 'test-result' in condition; no earlier step produces it; did you mean 'test-results'?"
    )
    assert problems[1].message == "'steps.tets' in run: there is no step with the id 'tets'; did you mean 'tests'?"


def test_special_names_only_where_they_exist(tmp_path):
    problems = check(tmp_path, """\
        name: x
        secrets:
          TOKEN: {env: API_TOKEN}
        steps:
          - id: l
            type: loop
            items: 3
            step:
              id: body
              run: "echo {{ item }} {{ index }} {{ secrets.TOKEN }}"
              errorHandling:
                strategy: fallback
                fallback: {id: fb, run: "echo {{ error.message }} {{ item }}"}
          - {id: outside, run: "echo {{ item }} {{ error }} {{ secrets.TOKN }}"}
        """)
    assert [p.path for p in problems] == ["steps[1].run"] * 3
    messages = [p.message for p in problems]
    assert "'item' in run only exists inside a loop's step" in messages
    assert "'error' in run only exists inside an errorHandling fallback step" in messages
    assert "'secrets.TOKN' in run: there is no secret named 'TOKN'; did you mean 'TOKEN'?" in messages


def test_secrets_without_a_section(tmp_path):
    problems = check(tmp_path, "name: x\nsteps: [{id: a, run: 'echo {{ secrets.X }}'}]\n")
    assert problems[0].message == "'secrets' in run is used, but the workflow has no secrets section"


def test_task_is_in_scope_in_run_only(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: a, run: "cat {{ task }}", task: hello, env: {T: "{{ task }}"}}
        """)
    assert [p.path for p in problems] == ["steps[0].env.T"]


def test_declared_inputs_in_expressions(tmp_path):
    problems = check(tmp_path, """\
        name: x
        inputs:
          budget: {type: number}
        steps:
          - {id: a, run: "echo {{ budget }} {{ input.budget }} {{ input.budgte }}"}
        """)
    assert [p.message for p in problems] == [
        "'input.budgte' in run: 'budgte' is not a declared input; did you mean 'budget'?"
    ]


# -- data flow (A06) ------------------------------------------------------------------------------
def test_later_step_output_is_not_available(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: first, run: echo, input: report}
          - {id: second, run: echo, output: report}
        """)
    assert at(problems, "steps[0].input").message == (
        "'report' is produced by step 'second', which does not always run before 'first'"
    )
    assert at(problems, "steps[0].input").line == 3


def test_parallel_siblings_do_not_see_each_other(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: start, run: echo, output: base}
          - id: par
            type: parallel
            steps:
              - {id: left, run: echo, input: base, output: l}
              - {id: right, run: "echo {{ l }}", input: [base, l], output: r}
          - {id: after, run: "echo {{ l }} {{ r }}", input: [l, r]}
        """)
    assert [(p.path, p.line) for p in problems] == [("steps[1].steps[1].run", 8), ("steps[1].steps[1].input[1]", 8)]
    assert problems[1].message == "'l' is produced by step 'left', which does not always run before 'right'"


def test_one_branch_only(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - id: c
            type: conditional
            condition: true
            then:
              - {id: t1, run: echo, output: both}
              - {id: t2, run: echo, input: both, output: then-only}
            else:
              - {id: e1, run: echo, output: both}
          - {id: after, run: echo, input: [both, then-only]}
          - id: c2
            type: conditional
            condition: false
            then: {id: t3, run: echo, output: no-else}
          - {id: after2, run: echo, input: no-else}
        """)
    assert [(p.path, p.line) for p in problems] == [("steps[1].input[1]", 11), ("steps[3].input", 16)]
    assert problems[0].message == "'then-only' is produced by step 't2', which does not always run before 'after'"
    assert problems[1].message == "'no-else' is produced by step 't3', which does not always run before 'after2'"


def test_branches_do_not_see_each_other(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - id: c
            type: conditional
            condition: "true"
            then: {id: t, run: echo, output: from-then}
            else: {id: e, run: echo, input: from-then}
        """)
    assert [p.path for p in problems] == ["steps[0].else.input"]


def test_loop_scope(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: make, run: echo, output: things}
          - id: each
            type: loop
            items: things
            output: results
            step: {id: body, run: "echo {{ item }} {{ index }} {{ things }}", input: item, output: one}
          - {id: after, run: echo, input: [results, one]}
        """)
    assert [(p.path, p.message) for p in problems] == [
        ("steps[2].input[1]", "'one' is produced by step 'body', which does not always run before 'after'")
    ]


def test_step_cannot_read_its_own_output(tmp_path):
    problems = check(tmp_path, "name: x\nsteps:\n  - {id: a, run: echo, input: x, output: x}\n")
    assert "only produced by step 'a' itself" in problems[0].message


def test_external_inputs(tmp_path):
    text = """\
        name: x
        steps:
          - {id: a, run: echo, input: [productName, targetMarket], output: plan}
          - {id: b, run: echo, input: plan}
          - {id: l, type: loop, items: customer-list, step: {id: each, run: echo}}
        """
    assert check(tmp_path, text) == []
    doc, _ = load_document(tmp_path / "wf.yaml")
    assert external_inputs(doc) == ["customer-list", "productName", "targetMarket"]


def test_external_inputs_in_expressions(tmp_path):
    # A name that comes from --input (because a step reads it) may be used in conditions too.
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: a, run: echo, input: settings}
          - {id: c, type: conditional, condition: "settings.deploy", then: {id: d, run: echo}}
          - {id: e, type: conditional, condition: "other.deploy", then: {id: f, run: echo}}
        """)
    assert [p.path for p in problems] == ["steps[2].condition"]


def test_declared_inputs_replace_external_ones(tmp_path):
    text = """\
        name: x
        inputs:
          productName: {type: string, required: true}
          budget: {type: number, default: 1000}
          note: {type: string}
        steps:
          - {id: a, run: echo, input: [productName, budget, targetMarket]}
        """
    problems = check(tmp_path, text)
    assert [(p.path, p.line, p.message) for p in problems] == [
        ("steps[0].input[2]", 7, "'targetMarket' is not produced by any step and is not a declared input")
    ]
    doc, _ = load_document(tmp_path / "wf.yaml")
    assert external_inputs(doc) == ["productName"]


def test_input_name_suggestion_with_declared_inputs(tmp_path):
    problems = check(tmp_path, """\
        name: x
        inputs: {budget: {type: number}}
        steps: [{id: a, run: echo, input: budgte}]
        """)
    assert problems[0].message.endswith("did you mean 'budget'?")


def test_workflow_fallback_sees_only_the_start(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: a, run: echo, output: made}
        errorHandling:
          strategy: fallback
          fallback: {id: rescue, run: "echo {{ error.message }} {{ made }}"}
        """)
    assert [p.path for p in problems] == ["errorHandling.fallback.run"]
    assert "'made' is produced by step 'a', which does not always run before 'rescue'" in problems[0].message


def test_strategy_fallback_needs_a_fallback(tmp_path):
    problems = check(tmp_path, "name: x\nsteps:\n  - {id: a, run: echo, errorHandling: {strategy: fallback}}\n")
    assert at(problems, "steps[0].errorHandling.strategy").line == 3


# -- outputs (A20) --------------------------------------------------------------------------------
def test_colliding_output_names(tmp_path):
    problems = check(tmp_path, """\
        name: x
        steps:
          - {id: a, run: echo, output: report}
          - {id: b, run: echo, output: report}
          - id: c
            type: conditional
            condition: true
            then: {id: t, run: echo, output: choice}
            else: {id: e, run: echo, output: choice}
          - id: d
            run: echo
            output: safe
            errorHandling: {strategy: fallback, fallback: {id: f, run: echo, output: safe}}
          - {id: g, run: echo, output: "bad name"}
        """)
    assert [(p.path, p.line) for p in problems] == [("steps[1].output", 4), ("steps[4].output", 14)]
    assert problems[0].message == (
        "colliding output names: step 'b' and step 'a' (steps[0]) both produce 'report'; give one of them another "
        "output name"
    )


# -- agents and teams (A21) -----------------------------------------------------------------------
def test_unknown_agents_and_teams(tmp_path):
    problems = check(tmp_path, """\
        name: x
        agents:
          local: {run: ./agent.sh}
        teams:
          crew: {members: [local, ghost]}
        errorHandling: {escalateTo: nobody}
        steps:
          - {id: a, agent: mira}
          - {id: b, agent: local}
          - {id: c, agent: echo}
          - {id: d, agent: mria}
          - {id: e, type: team, teamId: crew}
          - {id: f, type: team, teamId: engineerin}
        """, known_agents={"mira"}, known_teams={"engineering"})
    assert [(p.path, p.line) for p in problems] == [
        ("teams.crew.members[1]", 5), ("errorHandling.escalateTo", 6), ("steps[3].agent", 11), ("steps[5].teamId", 13)
    ]
    assert problems[2].message == (
        "unknown agent 'mria' (did you mean 'mira'?); the agents that exist are echo, local, mira; "
        "`wfctl agent add mria --run CMD` adds one"
    )
    assert "did you mean 'engineering'?" in problems[3].message
    # Without the config's names nothing is checked.
    assert check(tmp_path, "name: x\nsteps: [{id: a, agent: anyone}]\n") == []


# -- everything at once, in order -----------------------------------------------------------------
def test_many_problems_at_once_in_document_order(tmp_path):
    problems = check(tmp_path, """\
        name: 42
        timeout: -1
        steps:
          - id: a
            run: echo
            timeout: "3"
          - id: a
            type: loop
            step: {id: inner, run: echo}
          - id: c
            typo: 1
        """)
    assert len(problems) == 7
    lines = [p.line for p in problems]
    assert lines == sorted(lines)
    assert [p.path for p in problems] == [
        "name", "timeout", "steps[0].timeout", "steps[1].items", "steps[1].id", "steps[2]", "steps[2].typo"
    ]
    with pytest.raises(WorkflowInvalid) as info:
        load_workflow(tmp_path / "wf.yaml")
    assert info.value.problems == problems
    assert info.value.exit_code == ExitCode.INVALID
    assert "7 problems" in str(info.value)


def test_validate_text_and_mapping():
    doc, lines = validate_text("name: x\nsteps: [{id: a, run: echo}]\n", "inline.yaml")
    assert doc == {"name": "x", "steps": [{"id": "a", "run": "echo"}]}
    assert lines["steps[0]"] == 2
    with pytest.raises(WorkflowInvalid) as info:
        validate_text('{"name": "x", "steps": []}', "<stdin>", fmt="json")
    assert info.value.problems[0].line == 1
    assert validate_mapping({"name": "x", "steps": [{"id": "a", "run": "echo"}]}) == []
    problems = validate_mapping({"name": "x", "steps": [{"id": "a", "run": "echo", "timeout": float("inf")}]})
    assert [(p.file, p.path, p.line) for p in problems] == [("<api>", "steps[0].timeout", None)]


def test_mapping_with_non_json_values():
    problems = validate_mapping({
        "name": "x",
        "inputs": {"when": {"default": datetime.date(2024, 1, 1)}, "n": {"default": [1, float("nan")]}},
        "steps": [{"id": "a", "run": "echo", 3: "x"}],
    })
    assert [p.path for p in problems] == ["inputs.when.default", "inputs.n.default", "steps[0]"]
    assert "not a JSON value" in problems[0].message
    assert "must be finite" in problems[1].message


def test_self_referencing_mapping_does_not_recurse():
    step: dict = {"id": "a", "type": "loop", "items": 2}
    step["step"] = step
    problems = validate_mapping({"name": "x", "steps": [step]})
    assert len(problems) == 1
    assert "nested more than 32 levels" in problems[0].message


# -- limits ---------------------------------------------------------------------------------------
def chain(count: int) -> dict:
    steps = [{"id": "s0", "agent": "echo", "task": "start", "output": "o0"}]
    for i in range(1, count):
        steps.append({"id": f"s{i}", "agent": "echo", "task": f"use {{{{ o{i - 1} }}}}", "input": f"o{i - 1}",
                      "output": f"o{i}"})
    return {"name": "big", "steps": steps}


def test_ten_thousand_steps_validate_fast():
    doc = chain(MAX_STEPS)
    started = time.perf_counter()
    problems = validate_mapping(doc, known_agents=set())
    elapsed = time.perf_counter() - started
    assert problems == []
    assert elapsed < 1.0, elapsed


def test_ten_thousand_steps_file_loads_and_validates_fast(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps(chain(6000), indent=1), encoding="utf-8")
    assert path.stat().st_size < 1024 * 1024
    started = time.perf_counter()
    load_workflow(path)
    assert time.perf_counter() - started < 2.0


def test_too_many_steps_is_one_problem():
    doc = {"name": "x", "steps": [{"id": "p", "type": "parallel",
                                   "steps": [{"id": f"c{i}", "run": "echo"} for i in range(MAX_STEPS)]}]}
    problems = validate_mapping(doc)
    assert len(problems) == 1
    assert f"more than {MAX_STEPS} steps" in problems[0].message


def test_too_deep_nesting_is_one_problem():
    inner: dict = {"id": "leaf", "run": "echo"}
    for level in range(1000):
        inner = {"id": f"l{level}", "type": "parallel", "steps": [inner]}
    problems = validate_mapping({"name": "x", "steps": [inner]})
    assert len(problems) == 1
    assert f"nested more than {MAX_STEP_DEPTH} levels" in problems[0].message


def test_nesting_at_the_limit_is_fine():
    inner: dict = {"id": "leaf", "run": "echo"}
    for level in range(MAX_STEP_DEPTH - 1):
        inner = {"id": f"l{level}", "type": "parallel", "steps": [inner]}
    assert validate_mapping({"name": "x", "steps": [inner]}) == []


# -- check_execution_input ------------------------------------------------------------------------
DECLARED = {
    "name": "x",
    "inputs": {
        "productName": {"type": "string", "required": True, "description": "what we launch"},
        "budget": {"type": "number", "default": 1000},
        "count": {"type": "integer"},
        "tags": {"type": "array", "default": ["a"]},
    },
    "steps": [{"id": "a", "run": "echo", "input": ["productName", "budget"]}],
}


def test_execution_input_defaults_are_filled():
    given = {"productName": "CloudSync Pro"}
    result = check_execution_input(DECLARED, given, file="--input")
    assert result == {"productName": "CloudSync Pro", "budget": 1000, "tags": ["a"]}
    assert given == {"productName": "CloudSync Pro"}  # not modified
    result["tags"].append("b")
    assert DECLARED["inputs"]["tags"]["default"] == ["a"]  # defaults are copied


def test_execution_input_problems_all_at_once():
    with pytest.raises(WorkflowInvalid) as info:
        check_execution_input(DECLARED, {"budget": "x", "count": 1.5, "budgte": 3}, file="--input")
    messages = [p.message for p in info.value.problems]
    assert messages == [
        "input 'productName' (what we launch) is required, but --input does not give it",
        "input 'budget' must be a number, not the string 'x'",
        "input 'count' must be an integer, not the number 1.5",
        "input 'budgte' is not declared in the workflow's inputs; did you mean 'budget'?",
    ]


def test_execution_input_external_names():
    doc = {"name": "x", "steps": [{"id": "a", "run": "echo", "input": ["productName", "targetMarket"]}]}
    assert check_execution_input(doc, {"productName": "p", "targetMarket": "SMB", "extra": 1}, file="--input") == {
        "productName": "p", "targetMarket": "SMB", "extra": 1
    }
    with pytest.raises(WorkflowInvalid) as info:
        check_execution_input(doc, {"productName": "p"}, file="--input")
    assert [p.message for p in info.value.problems] == [
        "input 'targetMarket' is needed by step 'a' and no step produces it, but --input does not give it"
    ]


def test_execution_input_must_be_an_object():
    with pytest.raises(WorkflowInvalid) as info:
        check_execution_input(DECLARED, ["x"], file="--input")
    assert "--input must be a JSON object" in info.value.problems[0].message


def test_seed_runs_without_input():
    doc = json.loads((DATA / "seed-create.json").read_text(encoding="utf-8"))
    assert check_execution_input(doc, {}, file="seed") == {}
