"""Step types and data between steps, end to end through the installed `wfctl`.

Concurrency is observed from the steps themselves, never from timing luck: a child that
must run at the same time as another waits (with a generous bound) for the other's
marker file, so the test can only pass if both really ran at once, and a limit is
checked by every child registering itself in a directory while it runs.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from conftest import EXAMPLES
from helpers import walk, records, write

SEED = EXAMPLES / "saas-launch.json"
SEED_INPUT = '{"productName":"CloudSync Pro","targetMarket":"SMB businesses","budget":100000}'


# -- helpers ---------------------------------------------------------------------------------
def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_for(path: str) -> str:
    """sh: wait (at most 20 s) until `path` exists; fails the command if it never does."""
    return f'for i in $(seq 200); do [ -e "{path}" ] && break; sleep 0.1; done; [ -e "{path}" ]'


def counts(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


# -- parallel ----------------------------------------------------------------------------------
def test_seed_example_runs_its_parallel_children_at_the_same_time(wfctl, wfctl_json):
    execution_id = wfctl("execute", SEED, "--input", SEED_INPUT, "--quiet").stdout.strip()
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    assert [record["id"] for record in document["steps"]] == [
        "market-research", "product-strategy", "parallel-development", "testing", "deploy"]
    assert document["progress"] == {"completed": 5, "total": 5, "percentage": 100}
    parallel = document["steps"][2]
    assert parallel["type"] == "parallel" and parallel["status"] == "completed"
    children = {record["id"]: record for record in parallel["steps"]}
    assert set(children) == {"backend-dev", "frontend-dev"}
    assert children["backend-dev"]["agent"] == "tom"
    assert children["frontend-dev"]["agent"] == "rae"
    for child in children.values():
        assert child["status"] == "completed"
        assert child["startedAt"] and child["completedAt"]
    backend, frontend = children["backend-dev"], children["frontend-dev"]
    # Both take about 0.5 s: their intervals overlap only if they ran at the same time.
    assert max(when(backend["startedAt"]), when(frontend["startedAt"])) < min(
        when(backend["completedAt"]), when(frontend["completedAt"]))
    assert children["backend-dev"]["output"]["backend-code"]["build"] == execution_id
    assert document["steps"][4]["output"]["deployment-url"]["url"].startswith("https://")


def test_parallel_children_really_run_at_the_same_time(wfctl_json, tmp_path):
    # Each child announces itself, then waits for the other: both can only succeed together.
    path = write(tmp_path, """\
        name: rendezvous
        steps:
          - id: both
            type: parallel
            steps:
              - id: left
                run: |
                  touch "__D__/left.started"
                  __WAIT_RIGHT__
              - id: right
                run: |
                  touch "__D__/right.started"
                  __WAIT_LEFT__
        """, D=tmp_path, WAIT_RIGHT=wait_for(f"{tmp_path}/right.started"),
        WAIT_LEFT=wait_for(f"{tmp_path}/left.started"))
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    assert [(r["id"], r["status"]) for r in document["steps"][0]["steps"]] == [
        ("left", "completed"), ("right", "completed")]


def bounded_children(tmp_path: Path, count: int) -> str:
    """YAML (indented for `steps:` of a top-level step) of `count` children that register in
    tmp_path/slots while they run. The first two wait for each other, so two of them are
    certainly registered at the same moment: the bound is reached, not just respected."""
    (tmp_path / "slots").mkdir()
    children = []
    for n in range(count):
        lines = [
            f'mkdir "{tmp_path}/slots/c{n}"',
            f'touch "{tmp_path}/c{n}.started"',
        ]
        if n < 2:
            lines.append(wait_for(f"{tmp_path}/c{1 - n}.started") + " || exit 1")
        lines += [
            f'ls "{tmp_path}/slots" | wc -l >> "{tmp_path}/counts"',
            "sleep 0.1",
            f'rmdir "{tmp_path}/slots/c{n}"',
        ]
        body = "".join(f"          {line}\n" for line in lines)
        children.append(f"      - id: c{n}\n        run: |\n{body}")
    return "".join(children)


def test_parallel_max_concurrency_is_never_exceeded(wfctl_json, tmp_path):
    path = tmp_path / "workflow.yaml"
    path.write_text(
        "name: bounded\n"
        "steps:\n"
        "  - id: eight\n"
        "    type: parallel\n"
        "    maxConcurrency: 2\n"
        "    steps:\n" + bounded_children(tmp_path, 8)
    )
    document = wfctl_json("execute", path)
    assert document["status"] == "completed", document.get("error")
    assert all(r["status"] == "completed" for r in document["steps"][0]["steps"])
    seen = counts(tmp_path / "counts")
    assert len(seen) == 8  # every child ran once
    assert max(seen) == 2  # the bound was reached (the barrier makes sure) and never exceeded


def test_failing_parallel_child_fails_the_run_and_starts_nothing_new(wfctl_json, tmp_path):
    # maxConcurrency 2: `slow` and `bad` start; `bad` fails; `slow` finishes what it was
    # doing (it waits until the journal records bad's failure), and `later-*` never start.
    journal = "$WFCTL_HOME/executions/$WFCTL_EXECUTION_ID/events.jsonl"
    failed_bad = (f"grep '\"step.finished\"' \"{journal}\" | grep '\"step\": *\"bad\"' "
                  f"| grep -q '\"status\": *\"failed\"'")
    wait_failed = f"for i in $(seq 200); do {failed_bad} && break; sleep 0.1; done; {failed_bad}"
    path = write(tmp_path, """\
        name: parallel-failure
        steps:
          - id: work
            type: parallel
            maxConcurrency: 2
            steps:
              - id: slow
                run: |
                  touch "__D__/slow.started"
                  __WAIT_BAD__
                  touch "__D__/slow.done"
                  echo slow-result
              - id: bad
                run: |
                  touch "__D__/bad.started"
                  echo broken >&2; exit 5
              - id: later-1
                run: touch "__D__/later-1.started"
              - id: later-2
                run: touch "__D__/later-2.started"
          - id: after
            run: touch "__D__/after.started"
        """, D=tmp_path, WAIT_BAD=wait_failed)
    document = wfctl_json("execute", path, code=1)
    assert document["status"] == "failed"
    assert document["error"]["step"] == "bad"
    work = document["steps"][0]
    assert work["status"] == "failed"
    children = {r["id"]: r for r in work["steps"]}
    assert children["slow"]["status"] == "completed"
    assert children["slow"]["output"] == "slow-result"
    assert children["bad"]["status"] == "failed"
    assert "code 5" in children["bad"]["error"]["message"]
    assert children["later-1"]["status"] == "pending"
    assert children["later-2"]["status"] == "pending"
    assert document["steps"][1]["status"] == "pending"
    assert (tmp_path / "slow.done").exists()
    for name in ("later-1", "later-2", "after"):
        assert not (tmp_path / f"{name}.started").exists(), name


def test_parallel_children_of_any_type(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: nested
        agents:
          ann: {run: "echo ann"}
          bob: {run: "echo bob"}
        teams:
          pair: {members: [ann, bob], strategy: all}
        steps:
          - id: fan-out
            type: parallel
            maxConcurrency: 3
            steps:
              - id: each
                type: loop
                items: [x, y]
                step:
                  id: each-item
                  run: echo "got {{ item }}"
                output: letters
              - id: choose
                type: conditional
                condition: "true"
                then:
                  id: chosen
                  run: echo chosen
                else:
                  id: not-chosen
                  run: touch "__D__/not-chosen"
              - id: inner
                type: parallel
                steps:
                  - {id: inner-a, run: echo a}
                  - {id: inner-b, run: echo b}
              - id: crew
                type: team
                teamId: pair
                task: wave
          - id: use
            input: letters
            run: printf '%s' "$WFCTL_INPUT"
            output: used
        """, D=tmp_path)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed", document.get("error")
    steps = records(document)
    fan_out = document["steps"][0]
    assert [r["id"] for r in fan_out["steps"]] == ["each", "choose", "inner", "crew"]
    assert [r["id"] for r in steps["each"]["steps"]] == ["each-item[0]", "each-item[1]"]
    assert steps["each"]["output"] == {"letters": ["got x", "got y"]}
    assert steps["chosen"]["status"] == "completed"
    assert steps["not-chosen"]["status"] == "skipped"
    assert not (tmp_path / "not-chosen").exists()
    assert {r["id"] for r in steps["inner"]["steps"]} == {"inner-a", "inner-b"}
    assert steps["crew"]["output"] == {"ann": "ann", "bob": "bob"}
    assert steps["use"]["output"] == {"used": {"letters": ["got x", "got y"]}}


# -- conditional -----------------------------------------------------------------------------
BRANCH_FORMS = {
    "single": lambda prefix: f"\n      id: {prefix}1\n      run: touch \"__D__/{prefix}1\"",
    "list": lambda prefix: (f"\n      - id: {prefix}1\n        run: touch \"__D__/{prefix}1\""
                            f"\n      - id: {prefix}2\n        run: touch \"__D__/{prefix}2\""),
}


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("then_form,else_form", [("single", "list"), ("list", "single")])
def test_conditional_takes_one_branch_and_skips_the_other(wfctl_json, tmp_path, flag, then_form, else_form):
    text = (
        "name: branches\n"
        "inputs:\n"
        "  flag: {type: boolean, required: true}\n"
        "steps:\n"
        "  - id: decide\n"
        "    type: conditional\n"
        "    condition: flag === true\n"
        "    then:" + BRANCH_FORMS[then_form]("t") + "\n"
        "    else:" + BRANCH_FORMS[else_form]("e") + "\n"
    )
    path = write(tmp_path, text, D=tmp_path)
    document = wfctl_json("execute", path, "--input", json.dumps({"flag": flag}))
    assert document["status"] == "completed"
    decide = document["steps"][0]
    assert decide["status"] == "completed"
    assert decide["branch"] == ("then" if flag else "else")
    then_ids = ["t1"] if then_form == "single" else ["t1", "t2"]
    else_ids = ["e1"] if else_form == "single" else ["e1", "e2"]
    assert sorted(r["id"] for r in decide["steps"]) == sorted(then_ids + else_ids)
    taken, skipped = (then_ids, else_ids) if flag else (else_ids, then_ids)
    steps = records(document)
    for key in taken:
        assert steps[key]["status"] == "completed", key
        assert (tmp_path / key).exists(), key
    for key in skipped:
        assert steps[key]["status"] == "skipped", key
        assert not (tmp_path / key).exists(), key


def test_conditional_without_else_skips_its_then_steps_when_false(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: no-else
        steps:
          - id: count
            run: echo 3
            output: n
          - id: only-if-big
            type: conditional
            condition: n > 10
            then:
              - id: big-1
                run: touch "__D__/big-1"
              - id: big-2
                run: touch "__D__/big-2"
          - id: after
            run: echo after
        """, D=tmp_path)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    steps = records(document)
    assert steps["only-if-big"]["status"] == "completed"
    assert steps["big-1"]["status"] == "skipped"
    assert steps["big-2"]["status"] == "skipped"
    assert steps["after"]["status"] == "completed"
    assert not (tmp_path / "big-1").exists() and not (tmp_path / "big-2").exists()


@pytest.mark.parametrize("passed", [True, False])
def test_seed_condition_on_a_previous_steps_output(wfctl_json, tmp_path, passed):
    path = write(tmp_path, """\
        name: seed-condition
        inputs:
          ok: {type: boolean, required: true}
        steps:
          - id: testing
            run: |
              printf '{"passed": %s, "total": 12}' "{{ input.ok }}"
            output: test-results
          - id: conditional
            type: conditional
            condition: test-results.passed === true
            then:
              id: deploy
              input: test-results
              run: printf '%s' "$WFCTL_INPUT" > "__D__/deploy"
            else:
              id: fix
              task: Fix failing tests
              run: printf '%s' "$WFCTL_TASK" > "__D__/fix"
        """, D=tmp_path)
    document = wfctl_json("execute", path, "--input", json.dumps({"ok": passed}))
    assert document["status"] == "completed"
    steps = records(document)
    if passed:
        assert json.loads((tmp_path / "deploy").read_text()) == {"test-results": {"passed": True, "total": 12}}
        assert steps["fix"]["status"] == "skipped" and not (tmp_path / "fix").exists()
    else:
        assert (tmp_path / "fix").read_text() == "Fix failing tests"
        assert steps["deploy"]["status"] == "skipped" and not (tmp_path / "deploy").exists()


def test_condition_on_a_field_the_step_did_not_output_fails_the_step(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: missing-field
        steps:
          - id: testing
            run: |
              echo '{"total": 12, "failures": 0}'
            output: test-results
          - id: gate
            type: conditional
            condition: test-results.passed === true
            then:
              id: deploy
              run: touch "__D__/deploy"
            else:
              id: fix
              run: touch "__D__/fix"
          - id: after
            run: touch "__D__/after"
        """, D=tmp_path)
    document = wfctl_json("execute", path, code=1)
    assert document["status"] == "failed"
    gate = records(document)["gate"]
    assert gate["status"] == "failed"
    assert "passed" in gate["error"]["message"]
    assert document["error"]["step"] == "gate"
    assert "passed" in document["error"]["message"]
    for name in ("deploy", "fix", "after"):
        assert not (tmp_path / name).exists(), name
    assert records(document)["after"]["status"] == "pending"


def test_condition_on_steps_status(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: step-status
        steps:
          - id: build
            run: echo built
          - id: maybe
            type: conditional
            condition: "false"
            then:
              id: never
              run: touch "__D__/never"
          - id: check
            type: conditional
            condition: >-
              steps.build.status === "completed" && steps.build.output == "built"
              && steps.never.status == "skipped"
            then:
              id: good
              run: touch "__D__/good"
            else:
              id: bad
              run: touch "__D__/bad"
        """, D=tmp_path)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    assert (tmp_path / "good").exists()
    assert not (tmp_path / "bad").exists() and not (tmp_path / "never").exists()
    assert records(document)["bad"]["status"] == "skipped"


# -- loop --------------------------------------------------------------------------------------
ECHO_ITEM = """printf '%s|%s|%s|%s' "{{ item }}" "{{ index }}" "$WFCTL_ITEM" "$WFCTL_INDEX\""""


def test_loop_items_from_a_name_an_expression_a_list_and_a_count(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: loop-sources
        steps:
          - id: from-input
            type: loop
            items: things
            step:
              id: a
              run: __ECHO__
            output: from-input
          - id: listing
            run: |
              echo '{"files": ["x.txt", "y z.txt"]}'
            output: listing
          - id: from-expression
            type: loop
            items: listing.files
            step:
              id: b
              run: __ECHO__
            output: from-expression
          - id: from-literal
            type: loop
            items: [red, {"k": 1}]
            step:
              id: c
              run: __ECHO__
            output: from-literal
          - id: from-count
            type: loop
            items: 3
            step:
              id: d
              run: __ECHO__
            output: from-count
        """, ECHO=ECHO_ITEM)
    document = wfctl_json("execute", path, "--input", '{"things": ["one", "two words"]}')
    assert document["status"] == "completed", document.get("error")
    steps = records(document)
    assert steps["from-input"]["output"] == {"from-input": ["one|0|one|0", "two words|1|two words|1"]}
    assert steps["from-expression"]["output"] == {"from-expression": ["x.txt|0|x.txt|0", "y z.txt|1|y z.txt|1"]}
    assert steps["from-literal"]["output"] == {"from-literal": ["red|0|red|0", '{"k":1}|1|{"k":1}|1']}
    assert steps["from-count"]["output"] == {"from-count": ["0|0|0|0", "1|1|1|1", "2|2|2|2"]}


def test_loop_output_is_in_item_order_when_iterations_finish_out_of_order(wfctl_json, tmp_path):
    # Iteration 0 waits until iteration 1 has finished its work: completion order is 1, 0.
    path = write(tmp_path, """\
        name: out-of-order
        steps:
          - id: process-items
            type: loop
            items: [first, second]
            maxConcurrency: 2
            step:
              id: process
              run: |
                if [ "$WFCTL_INDEX" = 0 ]; then
                  __WAIT__ || exit 1
                fi
                echo "$WFCTL_INDEX" >> "__D__/order"
                [ "$WFCTL_INDEX" = 1 ] && touch "__D__/done-1"
                echo "result of {{ item }}"
            output: results
        """, D=tmp_path, WAIT=wait_for(f"{tmp_path}/done-1"))
    document = wfctl_json("execute", path)
    assert document["status"] == "completed", document.get("error")
    assert (tmp_path / "order").read_text().split() == ["1", "0"]
    assert document["steps"][0]["output"] == {"results": ["result of first", "result of second"]}


def test_loop_iterations_in_the_execution_and_the_trace(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: iterations
        steps:
          - id: process-items
            type: loop
            items: data-array
            step:
              id: process
              agent: echo
              task: "Process {{ item }}"
            output: processed
        """)
    document = wfctl_json("execute", path, "--input", '{"data-array": ["a", "b", "c"]}')
    execution = wfctl_json("execution", document["executionId"])
    loop = execution["steps"][0]
    assert loop["id"] == "process-items" and loop["type"] == "loop"
    assert [r["id"] for r in loop["steps"]] == ["process[0]", "process[1]", "process[2]"]
    assert all(r["status"] == "completed" for r in loop["steps"])
    assert [r["output"]["task"] for r in loop["steps"]] == ["Process a", "Process b", "Process c"]
    assert [v["task"] for v in loop["output"]["processed"]] == ["Process a", "Process b", "Process c"]
    trace = wfctl_json("trace", "iterations", document["executionId"])
    stages = [stage["node_name"] for stage in trace["response"]["stages"]]
    assert stages == ["process-items", "process[0]", "process[1]", "process[2]"]
    assert all(stage["status"] == "SUCCESS" for stage in trace["response"]["stages"])


def test_loop_max_concurrency_is_never_exceeded(wfctl_json, tmp_path):
    (tmp_path / "slots").mkdir()
    path = write(tmp_path, """\
        name: loop-bound
        steps:
          - id: many
            type: loop
            items: 6
            maxConcurrency: 2
            step:
              id: one
              run: |
                mkdir "__D__/slots/$WFCTL_INDEX"
                touch "__D__/started-$WFCTL_INDEX"
                if [ "$WFCTL_INDEX" -lt 2 ]; then
                  other=$((1 - WFCTL_INDEX))
                  __WAIT__ || exit 1
                fi
                ls "__D__/slots" | wc -l >> "__D__/counts"
                sleep 0.1
                rmdir "__D__/slots/$WFCTL_INDEX"
                echo "$WFCTL_INDEX"
            output: done
        """, D=tmp_path, WAIT=wait_for(f"{tmp_path}/started-$other"))
    document = wfctl_json("execute", path)
    assert document["status"] == "completed", document.get("error")
    assert document["steps"][0]["output"] == {"done": [0, 1, 2, 3, 4, 5]}
    seen = counts(tmp_path / "counts")
    assert len(seen) == 6
    assert max(seen) == 2


def test_failing_iteration_fails_the_loop_and_starts_no_more_iterations(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: loop-failure
        steps:
          - id: process-items
            type: loop
            items: 5
            step:
              id: process
              run: |
                touch "__D__/ran-$WFCTL_INDEX"
                [ "$WFCTL_INDEX" != 2 ] || exit 9
                echo "ok $WFCTL_INDEX"
            output: results
          - id: after
            run: touch "__D__/after"
        """, D=tmp_path)
    document = wfctl_json("execute", path, code=1)
    assert document["status"] == "failed"
    assert document["error"]["step"] == "process[2]"
    loop = document["steps"][0]
    assert loop["status"] == "failed"
    assert [(r["id"], r["status"]) for r in loop["steps"]] == [
        ("process[0]", "completed"), ("process[1]", "completed"), ("process[2]", "failed")]
    assert sorted(p.name for p in tmp_path.glob("ran-*")) == ["ran-0", "ran-1", "ran-2"]
    assert not (tmp_path / "after").exists()
    assert document["steps"][1]["status"] == "pending"


def test_nested_loop_over_the_outer_item(wfctl, wfctl_json, tmp_path):
    # `items: item` in an inner loop names the outer loop's item, not an --input value.
    path = write(tmp_path, """\
        name: nested-loops
        steps:
          - id: rows
            type: loop
            items: [[1, 2], [3]]
            step:
              id: cells
              type: loop
              items: item
              step:
                id: cell
                run: echo "{{ item }}"
            output: grid
        """)
    assert wfctl_json("validate", path)["valid"] is True
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    assert document["steps"][0]["output"] == {"grid": [[1, 2], [3]]}
    assert [r["id"] for r in records(document)["cells[0]"]["steps"]] == ["cell[0][0]", "cell[0][1]"]


# -- team --------------------------------------------------------------------------------------
TEAM_AGENTS = """\
agents:
  ana: {run: "echo ana-did-{{ task }}"}
  ben: {run: "echo ben-did-{{ task }}"}
  cy: {run: "echo cy-did-{{ task }}"}
"""


def test_round_robin_team_rotates_across_runs(wfctl_json, tmp_path):
    path = write(tmp_path, "name: rotation\n" + TEAM_AGENTS + """\
teams:
  crew: {members: [ana, ben, cy], strategy: round-robin}
steps:
  - id: on-call
    type: team
    teamId: crew
    task: page
    output: answer
""")
    members = []
    for _ in range(3):
        document = wfctl_json("execute", path)
        assert document["status"] == "completed"
        step = document["steps"][0]
        member = step["member"]
        members.append(member)
        assert [r["id"] for r in step["steps"]] == [f"on-call@{member}"]
        assert step["output"] == {"answer": f"{member}-did-page"}
    assert sorted(members) == ["ana", "ben", "cy"]  # one member per run, each in turn


def test_all_team_output_maps_member_to_result(wfctl_json, tmp_path):
    path = write(tmp_path, "name: everyone\n" + TEAM_AGENTS + """\
teams:
  crew: {members: [ana, ben, cy], strategy: all}
steps:
  - id: review
    type: team
    teamId: crew
    task: review
    output: reviews
""")
    document = wfctl_json("execute", path)
    step = document["steps"][0]
    assert step["output"] == {"reviews": {"ana": "ana-did-review", "ben": "ben-did-review", "cy": "cy-did-review"}}
    assert sorted(r["id"] for r in step["steps"]) == ["review@ana", "review@ben", "review@cy"]
    assert all(r["status"] == "completed" for r in step["steps"])


def test_first_success_team_tries_members_in_order(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: first-success
        agents:
          bad-1: {run: "touch __D__/bad-1; exit 1"}
          bad-2: {run: "touch __D__/bad-2; exit 2"}
          good: {run: "touch __D__/good; echo good-result"}
          never: {run: "touch __D__/never"}
        teams:
          chain: {members: [bad-1, bad-2, good, never], strategy: first-success}
        steps:
          - id: triage
            type: team
            teamId: chain
            task: triage
            output: triaged
          - id: later
            input: triaged
            run: printf '%s' "$WFCTL_INPUT"
            output: seen
        """, D=tmp_path)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    step = document["steps"][0]
    assert step["status"] == "completed"
    assert step["member"] == "good"
    assert step["output"] == {"triaged": "good-result"}
    assert [(r["id"], r["status"]) for r in step["steps"]] == [
        ("triage@bad-1", "failed"), ("triage@bad-2", "failed"), ("triage@good", "completed")]
    assert (tmp_path / "bad-1").exists() and (tmp_path / "bad-2").exists() and (tmp_path / "good").exists()
    assert not (tmp_path / "never").exists()
    assert document["steps"][1]["output"] == {"seen": {"triaged": "good-result"}}


def test_a_first_success_members_failure_is_not_the_execution_error(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: error-step
        agents:
          bad: {run: "exit 4"}
          good: {run: "echo ok"}
        teams:
          chain: {members: [bad, good], strategy: first-success}
        steps:
          - id: triage
            type: team
            teamId: chain
            task: triage
          - id: broken
            run: echo really broken >&2; exit 7
        """)
    document = wfctl_json("execute", path, code=1)
    assert document["steps"][0]["status"] == "completed"
    assert document["error"]["step"] == "broken"
    assert "code 7" in document["error"]["message"]


def test_team_from_config_toml(wfctl, wfctl_json, tmp_path):
    wfctl("agent", "add", "a", "--run", "echo from-a")
    wfctl("agent", "add", "b", "--run", "echo from-b")
    wfctl("team", "add", "crew", "--member", "a", "--member", "b", "--strategy", "all")
    assert "crew" in wfctl("team", "list").stdout
    path = write(tmp_path, """\
        name: config-team
        steps:
          - id: together
            type: team
            teamId: crew
            task: build
            output: built
        """)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    assert document["steps"][0]["output"] == {"built": {"a": "from-a", "b": "from-b"}}


def test_unknown_team_is_a_validation_error_and_nothing_runs(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: ghost-team
        steps:
          - id: first
            run: touch "__D__/first"
          - id: ask
            type: team
            teamId: ghosts
            task: haunt
        """, D=tmp_path)
    result = wfctl("execute", path, code=2)
    assert "ghosts" in result.stderr
    assert "steps[1].teamId" in result.stderr
    assert not (tmp_path / "first").exists()
    assert wfctl_json("executions")["count"] == 0


# -- expressions and templates -----------------------------------------------------------------
PAYLOADS = {
    "semicolon": '"; touch pwned; "',
    "dollar": "$(touch pwned)",
    "backtick": "`touch pwned`",
    "newline": "harmless\ntouch pwned",
    "quote": "'; touch pwned; '",
    "trailing": "touch pwned\n",
}


def test_values_never_become_shell_code(wfctl_json, tmp_path):
    (tmp_path / "payloads.json").write_text(json.dumps(PAYLOADS))
    got = tmp_path / "got"
    got.mkdir()
    steps = []
    for name in PAYLOADS:
        steps.append(
            f"  - id: use-{name}\n"
            f'    task: "{{{{ payloads.{name} }}}}"\n'
            f"    env:\n"
            f'      VALUE: "{{{{ payloads.{name} }}}}"\n'
            f"    run: |\n"
            f"      printf '%s' {{{{ payloads.{name} }}}} > \"{got}/{name}.bare\"\n"
            f"      printf '%s' '{{{{ payloads.{name} }}}}' > \"{got}/{name}.single\"\n"
            f"      printf '%s' \"{{{{ payloads.{name} }}}}\" > \"{got}/{name}.double\"\n"
            f"      printf '%s' \"$WFCTL_TASK\" > \"{got}/{name}.task\"\n"
            f"      printf '%s' \"$VALUE\" > \"{got}/{name}.env\"\n"
        )
    path = tmp_path / "inject.yaml"
    path.write_text(
        "name: injection\n"
        "steps:\n"
        "  - id: produce\n"
        "    run: cat payloads.json\n"
        "    output: payloads\n" + "".join(steps)
    )
    document = wfctl_json("execute", path, cwd=tmp_path)
    assert document["status"] == "completed", document.get("error")
    for name, payload in PAYLOADS.items():
        for where in ("bare", "single", "double", "task", "env"):
            assert (got / f"{name}.{where}").read_bytes() == payload.encode(), (name, where)
    assert list(tmp_path.rglob("pwned")) == []


def test_template_inside_command_substitution_keeps_the_value(wfctl_json, tmp_path):
    # `x="$(cmd "{{ v }}")"` is everyday shell: the inner quotes are a new quoting context.
    (tmp_path / "decoy-1").write_text("")
    path = write(tmp_path, """\
        name: substitution
        steps:
          - id: value
            run: |
              echo '{"v": "a  b *"}'
            output: value
          - id: use
            run: |
              out="$(printf '%s' "{{ value.v }}")"
              printf '%s' "$out" > "__D__/got"
        """, D=tmp_path)
    document = wfctl_json("execute", path, cwd=tmp_path)
    assert document["status"] == "completed"
    assert (tmp_path / "got").read_text() == "a  b *"


def test_template_after_an_apostrophe_in_a_comment_keeps_the_value(wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: comment
        steps:
          - id: value
            run: echo hello
            output: value
          - id: use
            run: |
              # don't quote the template: wfctl does it
              printf '%s' {{ value }} > "__D__/got"
        """, D=tmp_path)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    assert (tmp_path / "got").read_text() == "hello"


def test_bad_expressions_are_validation_errors_naming_the_step_path(wfctl, wfctl_json, tmp_path):
    path = write(tmp_path, """\
        name: bad-expressions
        steps:
          - id: build
            run: touch "__D__/build"
            output: build
          - id: syntax
            type: conditional
            condition: build.ok ===
            then:
              id: a
              run: echo a
          - id: unknown
            type: conditional
            condition: nothing-makes-this.passed === true
            then:
              id: b
              run: echo b
          - id: loop-unknown
            type: loop
            items: ghost.list
            step:
              id: c
              run: echo c
          - id: template-unknown
            run: echo "{{ phantom }}"
        """, D=tmp_path)
    document = wfctl_json("validate", path, code=2)
    assert document["valid"] is False
    problems = {problem["path"]: problem["message"] for problem in document["problems"]}
    assert "steps[1].condition" in problems
    assert "steps[2].condition" in problems
    assert "nothing-makes-this" in problems["steps[2].condition"]
    assert "steps[3].items" in problems
    assert "ghost" in problems["steps[3].items"]
    assert "steps[4].run" in problems
    assert "phantom" in problems["steps[4].run"]
    text = wfctl("validate", path, code=2).stderr
    assert "steps[1].condition" in text and "steps[2].condition" in text
    wfctl("execute", path, code=2)
    assert not (tmp_path / "build").exists()


# -- dry run -----------------------------------------------------------------------------------
def test_dry_run_of_the_seed_example_runs_no_agent(wfctl_json, tmp_path):
    seed = json.loads(SEED.read_text())
    seed["agents"] = {name: {"run": f"touch {tmp_path}/ran-{name}"} for name in seed["agents"]}
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))
    document = wfctl_json("execute", path, "--input", SEED_INPUT, "--dry-run")
    assert document["status"] == "completed"
    definitions = {}
    for step in seed["steps"]:
        definitions[step["id"]] = step
        for child in step.get("steps", []):
            definitions[child["id"]] = child
    tasks = [r for r in walk(document["steps"]) if r.get("type", "task") == "task"]
    assert {r["id"] for r in tasks} == {"market-research", "product-strategy", "backend-dev", "frontend-dev",
                                        "testing", "deploy"}
    for record in tasks:
        step = definitions[record["id"]]
        assert record["status"] == "completed"
        assert record["agent"] == step["agent"]
        output = record["output"][step["output"]]
        assert set(output) == {"task", "input"}
        assert output["task"] == step["task"]
        names = step.get("input") or []
        names = [names] if isinstance(names, str) else names
        assert sorted(output["input"]) == sorted(names)
    assert list(tmp_path.glob("ran-*")) == []
    # The real example too: echo outputs all the way down.
    document = wfctl_json("execute", SEED, "--dry-run")
    deploy = document["steps"][4]["output"]["deployment-url"]
    assert deploy["task"] == "Deploy to production"
    assert deploy["input"]["test-results"]["task"] == "Run comprehensive tests"
