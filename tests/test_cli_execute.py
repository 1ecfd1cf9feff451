"""execute, execution, executions, logs, traces and trace through the installed `wfctl`."""

from __future__ import annotations

import json
import os
import stat

from conftest import EXAMPLES, tree_snapshot

HELLO = EXAMPLES / "hello.yaml"


def test_hello_example_runs_end_to_end(wfctl, wfctl_json):
    result = wfctl("execute", HELLO, "--input", '{"name": "Ada"}')
    execution_id = result.stdout.strip()
    assert execution_id.startswith("exec_")
    assert "completed" in result.stderr
    assert "\x1b[" not in result.stderr  # not a terminal: plain lines
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    assert document["progress"] == {"completed": 3, "total": 3, "percentage": 100}
    report = document["steps"][2]["output"]["report"]
    assert report["greeting"] == "Hello, Ada!"
    assert set(report["machine"]) == {"kernel", "cpus", "date"}


def test_execute_json_has_the_seed_execution_shape(wfctl_json):
    document = wfctl_json("execute", HELLO, "--priority", "high")
    for key in ("executionId", "workflowId", "workflowName", "status", "currentStep", "progress", "steps",
                "startedAt", "completedAt", "estimatedCompletion", "priority", "input"):
        assert key in document, key
    assert document["priority"] == "high"
    assert document["input"] == {"name": "world"}  # the declared default
    step = document["steps"][0]
    for key in ("id", "status", "agent", "startedAt", "completedAt", "duration", "output", "attempts"):
        assert key in step, key
    assert step["output"] == {"greeting": "Hello, world!"}
    assert step["attempts"][0]["exitCode"] == 0


def test_execute_registers_a_file_once_by_name(wfctl, wfctl_json):
    wfctl("execute", HELLO, "-q")
    wfctl("execute", HELLO, "-q")
    listing = wfctl_json("list")
    assert listing["count"] == 1
    assert listing["elements"][0]["active"] is True
    assert wfctl_json("traces", "hello")["count"] == 2


def test_failed_step_fails_the_execution_and_leaves_the_rest_pending(wfctl, wfctl_json, workflow_file, tmp_path):
    marker = tmp_path / "ran-third"
    path = workflow_file(f"""\
        name: fails
        steps:
          - id: first
            run: echo one
          - id: second
            run: echo about to fail >&2; exit 3
          - id: third
            run: touch {marker}
        """)
    document = wfctl_json("execute", path, code=1)
    assert document["status"] == "failed"
    assert [s["status"] for s in document["steps"]] == ["completed", "failed", "pending"]
    assert document["steps"][1]["error"]["kind"] == "failed"
    assert "code 3" in document["steps"][1]["error"]["message"]
    assert document["error"]["step"] == "second"
    assert not marker.exists()
    logs = wfctl_json("logs", document["executionId"], "second")
    assert "about to fail" in logs["logs"][0]["log"]


def test_command_output_from_stdout_and_from_wfctl_output(wfctl_json, workflow_file):
    path = workflow_file("""\
        name: outputs
        steps:
          - id: from-stdout
            run: |
              echo '{"n": 1}'
            output: a
          - id: from-file
            run: |
              echo ignored; echo '{"n": 2}' > "$WFCTL_OUTPUT"
            output: b
          - id: text
            run: printf 'plain text\\n'
            output: c
          - id: sees-inputs
            input: [a, b, c]
            run: cat
            output: d
        """)
    document = wfctl_json("execute", path)
    outputs = [step["output"] for step in document["steps"]]
    assert outputs[0] == {"a": {"n": 1}}
    assert outputs[1] == {"b": {"n": 2}}
    assert outputs[2] == {"c": "plain text"}
    context = outputs[3]["d"]  # `cat` echoes the context JSON it got on stdin
    assert context["input"] == {"a": {"n": 1}, "b": {"n": 2}, "c": "plain text"}
    assert context["step"] == "sees-inputs"
    assert context["executionId"] == document["executionId"]


def test_step_environment(wfctl_json, workflow_file):
    path = workflow_file("""\
        name: envs
        steps:
          - id: show
            task: say hi
            env: {GREETING: "hi {{ input.who }}"}
            run: >-
              printf '{"task":"%s","step":"%s","wf":"%s","exec":"%s","attempt":"%s","greeting":"%s"}'
              "$WFCTL_TASK" "$WFCTL_STEP" "$WFCTL_WORKFLOW_ID" "$WFCTL_EXECUTION_ID" "$WFCTL_ATTEMPT" "$GREETING"
        """)
    document = wfctl_json("execute", path, "--input", '{"who": "you"}')
    output = document["steps"][0]["output"]
    assert output == {
        "task": "say hi",
        "step": "show",
        "wf": document["workflowId"],
        "exec": document["executionId"],
        "attempt": "1",
        "greeting": "hi you",
    }


def test_agents_from_workflow_and_config(wfctl, wfctl_json, workflow_file, tmp_path):
    module = tmp_path / "myagents.py"
    module.write_text("def shout(context):\n    return {'loud': context['task'].upper(), 'input': context['input']}\n")
    wfctl("agent", "add", "shouter", "--python", "myagents:shout")
    wfctl("agent", "add", "lister", "--run", "echo '{{ task }}' | wc -w")
    path = workflow_file("""\
        name: agents
        agents:
          local: {run: "echo local:{{ task }}"}
        steps:
          - id: a
            agent: local
            task: one two
            output: a
          - id: b
            agent: lister
            task: one two three
            output: b
          - id: c
            agent: shouter
            task: quiet
            input: a
          - id: d
            agent: echo
            task: hello
            input: b
        """)
    document = wfctl_json("execute", path, cwd=tmp_path)
    outputs = [step.get("output") for step in document["steps"]]
    assert outputs[0] == {"a": "local:one two"}
    assert outputs[1] == {"b": 3}
    assert outputs[2] == {"loud": "QUIET", "input": {"a": "local:one two"}}
    assert outputs[3] == {"task": "hello", "input": {"b": 3}}


def test_unknown_agent_stops_before_anything_runs(wfctl, workflow_file, tmp_path, wfctl_home):
    marker = tmp_path / "ran"
    path = workflow_file(f"""\
        name: unknown-agent
        steps:
          - id: first
            run: touch {marker}
          - id: second
            agent: nobody
        """)
    result = wfctl("execute", path, code=2)
    assert "nobody" in result.stderr
    assert "wfctl agent add" in result.stderr
    assert not marker.exists()
    assert not (wfctl_home / "executions").exists() or not any((wfctl_home / "executions").iterdir())


def test_missing_external_input_stops_before_anything_runs(wfctl, workflow_file, tmp_path):
    marker = tmp_path / "ran"
    path = workflow_file(f"""\
        name: needs-input
        steps:
          - id: first
            run: touch {marker}
          - id: second
            input: data
            run: cat
        """)
    result = wfctl("execute", path, code=2)
    assert "data" in result.stderr
    assert not marker.exists()
    wfctl("execute", path, "--input", '{"data": 1}', "-q")
    assert marker.exists()


def test_input_from_file_and_stdin(wfctl_json, tmp_path):
    data = tmp_path / "in.json"
    data.write_text('{"name": "File"}')
    from_file = wfctl_json("execute", HELLO, "--input", f"@{data}")
    assert from_file["steps"][0]["output"] == {"greeting": "Hello, File!"}
    from_stdin = wfctl_json("execute", HELLO, "--input", "-", stdin='{"name": "Stdin"}')
    assert from_stdin["steps"][0]["output"] == {"greeting": "Hello, Stdin!"}


def test_bad_input_is_a_usage_error_and_writes_nothing(wfctl, wfctl_home):
    wfctl("create", HELLO)
    before = tree_snapshot(wfctl_home)
    for bad in ("{not json", "[1, 2]", "@/does/not/exist.json"):
        result = wfctl("execute", "hello", "--input", bad, code=2)
        assert "--input" in result.stderr
        assert "Traceback" not in result.stderr
    result = wfctl("execute", "hello", "--input", '{"name": 5}', code=2)
    assert "name" in result.stderr
    assert tree_snapshot(wfctl_home) == before


def test_unknown_workflow_is_not_found(wfctl):
    result = wfctl("execute", "no-such-workflow", "--json", code=3)
    assert json.loads(result.stdout) == {"error": "This workflow does not exists", "detail": result.stderr.split("error: ", 1)[1].strip()}


def test_dry_run_uses_echo_everywhere(wfctl_json, workflow_file, tmp_path):
    marker = tmp_path / "ran"
    path = workflow_file(f"""\
        name: dry
        steps:
          - id: would-touch
            run: touch {marker}
            task: make a file
          - id: undefined-agent-is-fine
            agent: not-configured
        """)
    document = wfctl_json("execute", path, "--dry-run")
    assert document["status"] == "completed"
    assert document["dryRun"] is True
    assert document["steps"][0]["output"] == {"task": "make a file", "input": {}}
    assert not marker.exists()


def test_execution_executions_and_not_found(wfctl, wfctl_json):
    first = wfctl_json("execute", HELLO)
    second = wfctl_json("execute", HELLO)
    listing = wfctl_json("executions")
    assert listing["count"] == 2
    assert [e["executionId"] for e in listing["elements"]] == [second["executionId"], first["executionId"]]
    assert wfctl_json("executions", "--limit", "1")["elements"][0]["executionId"] == second["executionId"]
    assert wfctl_json("executions", "--status", "failed")["count"] == 0
    human = wfctl("execution", first["executionId"])
    assert "greet" in human.stdout and "completed" in human.stdout
    wfctl("execution", "exec_000000000missing", code=3)


def test_ids_with_path_characters_are_refused(wfctl, wfctl_home):
    for bad in ("../../etc", "exec_../x", "a/b"):
        result = wfctl("execution", bad, code=2)
        assert "not an execution id" in result.stderr
        wfctl("logs", bad, code=2)


def test_traces_and_trace_have_the_seed_shapes(wfctl_json):
    document = wfctl_json("execute", HELLO)
    listing = wfctl_json("traces", document["workflowId"])
    assert listing["entities"] == "WorkflowTrace"
    assert listing["count"] == 1 and listing["per_page"] == 50
    element = listing["elements"][0]
    assert set(element) == {"id", "workflow_id", "uuid", "run_date", "status"}
    assert element["status"] == "executed"
    trace = wfctl_json("trace", "hello", element["id"])
    assert trace["workflow_id"] == document["workflowId"]
    assert trace["response"]["input"] == {"name": "world"}
    assert trace["response"]["result"] == {"workflow_status": "executed"}
    stages = trace["response"]["stages"]
    assert [s["node_name"] for s in stages] == ["greet", "machine", "report"]
    assert all(s["status"] == "SUCCESS" and isinstance(s["duration"], float) for s in stages)
    assert stages[2]["input"] == ["greeting", "machine"]


def test_trace_not_found_uses_the_seed_error(wfctl, wfctl_json):
    document = wfctl_json("execute", HELLO)
    result = wfctl("trace", document["workflowId"], "exec_000000000missing", "--json", code=3)
    assert json.loads(result.stdout)["error"] == "Trace not found for this workflow."


def test_data_directory_permissions(wfctl, wfctl_home):
    wfctl("execute", HELLO, "-q")
    for path in [wfctl_home, *wfctl_home.rglob("*")]:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.is_file():
            assert mode == 0o600, path
    journal = next(wfctl_home.glob("executions/*/events.jsonl"))
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    assert events[0]["type"] == "execution.started"
    assert events[-1] == {**events[-1], "type": "execution.finished", "status": "completed"}
