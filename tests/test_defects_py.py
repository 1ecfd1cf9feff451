"""Issue 11, the python-agent, decoding and cap group: what steps hand back is untrusted.

- item 9: deeply nested JSON output (and every other place untrusted bytes are decoded)
  never crashes the runner or leaves a record that wfctl cannot read; a record that
  cannot be read is reported in one sentence with its file and line, and hides nothing;
- item 15 (and the third way of item 14): an in-process python agent's exit, prints and
  result are its step's business: SystemExit fails the attempt, prints go to the step's
  log (masked), never to wfctl's stdout, stderr or a detached runner's runner.log, and a
  result that is not JSON data fails the step naming where (`$.a[2]`);
- item 4 (the cap half): one inline cap for every agent kind, and the state holds what
  the record holds, so `retry` and `resume` give the next steps what they saw the first time.

Everything runs through the installed `wfctl`; the pure functions of `wfctl.values`
are checked in-process at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import tree_snapshot
from helpers import records
from lifecycle_helpers import detach, execution_dir, journal_events, wait_status
from servers import http_server

DEPTH = 980  # as in the issue: deeper than Python's decoder can go in a deep stack
INLINE_LIMIT = 256 * 1024
SECRET = "s3cret-Token-4242"


def deep_json(depth: int = DEPTH) -> str:
    return "[" * depth + "]" * depth


def strict_json(line: bytes | str):
    """Parse as JSON the way jq does: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def assert_readable(wfctl, wfctl_json, execution_id: str) -> dict:
    """The execution reads back everywhere: execution, executions, trace, every journal line."""
    document = wfctl_json("execution", execution_id)
    assert document["executionId"] == execution_id
    listed = wfctl_json("executions")
    assert execution_id in [e["executionId"] for e in listed["elements"]]
    assert [e for e in listed["elements"] if e["executionId"] == execution_id][0]["status"] == document["status"]
    for event in journal_events(execution_id):
        strict_json(json.dumps(event, allow_nan=False))
    for path in (execution_dir(execution_id) / "execution.json",):
        strict_json(path.read_bytes())
    if document["status"] not in ("running", "pending", "interrupted"):
        trace = wfctl_json("trace", document["workflowId"], execution_id)
        assert trace["id"] == execution_id
    return document


def python_module(tmp_path: Path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))


# -- item 9: deeply nested output ----------------------------------------------------------------
@pytest.mark.parametrize("where", ["stdout", "output-file"])
def test_deeply_nested_json_output_stays_text_and_the_execution_stays_readable(wfctl, wfctl_json, workflow_file, tmp_path, where):
    (tmp_path / "deep.json").write_text(deep_json())
    emit = f"cat {tmp_path / 'deep.json'}" + (' > "$WFCTL_OUTPUT"' if where == "output-file" else "")
    path = workflow_file(f"""\
        name: deep-{where}
        steps:
          - id: api
            run: '{emit}'
            output: answer
          - id: after
            input: answer
            run: printf '%s' "$WFCTL_INPUT" | head -c 40
    """)
    result = wfctl("execute", path, "--json")
    document = json.loads(result.stdout)
    assert document["status"] == "completed", result.stderr
    steps = records(document)
    # Past the depth bound the output is kept as the text it was, whole.
    assert steps["api"]["output"] == {"answer": deep_json()}
    assert steps["after"]["output"] == '{"answer":"' + "[" * 29
    assert_readable(wfctl, wfctl_json, document["executionId"])
    wfctl("resume", document["executionId"], code=6)  # a clear conflict, not a RecursionError


def test_json_within_the_depth_bound_is_still_decoded(wfctl_json, workflow_file):
    nested = "[" * 100 + "1" + "]" * 100
    path = workflow_file(f"""\
        name: nested-ok
        steps:
          - id: api
            run: echo '{nested}'
    """)
    output = wfctl_json("execute", path)["steps"][0]["output"]
    for _ in range(100):
        assert isinstance(output, list) and len(output) == 1
        output = output[0]
    assert output == 1


def test_infinite_numbers_in_output_stay_text(wfctl, wfctl_json, workflow_file):
    path = workflow_file("""\
        name: huge-number
        steps:
          - id: big
            run: |
              echo '{"x": 1e400, "y": [1]}'
    """)
    document = wfctl_json("execute", path)
    assert document["steps"][0]["output"] == '{"x": 1e400, "y": [1]}'
    assert_readable(wfctl, wfctl_json, document["executionId"])


def test_a_deep_http_answer_stays_text(wfctl, wfctl_json, workflow_file):
    with http_server(status=200, body=deep_json().encode()) as web:
        path = workflow_file(f"""\
            name: deep-http
            agents:
              api: {{http: "{web.url}/agent"}}
            steps:
              - id: call
                agent: api
                task: ask
        """)
        document = wfctl_json("execute", path)
    assert document["steps"][0]["output"] == deep_json()
    assert_readable(wfctl, wfctl_json, document["executionId"])


def test_from_json_of_a_deep_output_is_an_error_of_the_step_not_a_crash(wfctl, wfctl_json, workflow_file, tmp_path):
    (tmp_path / "deep.json").write_text(deep_json())
    path = workflow_file(f"""\
        name: deep-from-json
        steps:
          - id: api
            run: cat {tmp_path / 'deep.json'}
            output: answer
          - id: each
            type: loop
            items: fromJSON(answer)
            step: {{id: item, run: echo "$WFCTL_ITEM"}}
    """)
    result = wfctl("execute", path, "--json", code=1)
    document = json.loads(result.stdout)
    assert "fromJSON() got JSON nested deeper than 128 levels" in records(document)["each"]["error"]["message"]
    assert "internal error" not in result.stderr
    assert_readable(wfctl, wfctl_json, document["executionId"])


# -- item 9: records that cannot be read ----------------------------------------------------------
def two_runs(wfctl_json, workflow_file) -> tuple[str, str]:
    path = workflow_file("""\
        name: plain
        steps:
          - id: only
            run: echo hi
    """)
    first = wfctl_json("execute", path)["executionId"]
    second = wfctl_json("execute", path)["executionId"]
    return first, second


def rewrite_journal(execution_id: str, line_number: int, line: str) -> Path:
    """Put `line` at `line_number` of the journal, and make the snapshot read the whole journal."""
    journal = execution_dir(execution_id) / "events.jsonl"
    lines = journal.read_text().splitlines()
    lines.insert(line_number - 1, line)
    journal.write_text("\n".join(lines) + "\n")
    snapshot = execution_dir(execution_id) / "execution.json"
    document = json.loads(snapshot.read_text())
    document["journalOffset"] = 0
    snapshot.write_text(json.dumps(document))
    return journal


@pytest.mark.parametrize(
    "line, why",
    [
        ('{"type":"step.started","at":"x","step":"only","deep":' + deep_json(3000) + "}", "nests deeper than 512 levels"),
        ('{"type":"step.finished","at":"x","step":"only","status":"completed","deep":' + deep_json(900) + "}", "nests deeper than 512 levels"),
        ("[1, 2, 3]", "it is not an event"),
        ('{"type": "step.finished", "at": "x"}', "cannot read at line 2"),
        ('{"type": "step.started", "at": "x", "step": ["only"]}', "cannot read at line 2"),
    ],
    ids=["3000-deep", "900-deep", "not-an-event", "no-step", "step-not-a-name"],
)
def test_a_journal_line_that_cannot_be_read_is_one_sentence_and_hides_nothing(wfctl, wfctl_json, workflow_file, line, why):
    first, second = two_runs(wfctl_json, workflow_file)
    journal = rewrite_journal(second, 2, line)
    for command in (["execution", second], ["resume", second], ["cancel", second], ["watch", second]):
        result = wfctl(*command, code=1)
        message = result.stderr.strip()
        assert message.startswith(f"wfctl: error: {journal} ") and why in message, message
        assert "line 2" in message and "internal error" not in message and "Traceback" not in message
        assert len(message.splitlines()) == 1
    listed = wfctl_json("executions")
    assert listed["count"] == 2
    by_id = {element["executionId"]: element for element in listed["elements"]}
    assert by_id[first]["status"] == "completed"  # the other execution is not hidden
    assert by_id[second]["status"] == "unreadable" and why in by_id[second]["error"]
    assert by_id[second]["error"].startswith(f"{journal} ")
    table = wfctl("executions")
    assert first in table.stdout and second in table.stdout and "unreadable" in table.stdout
    assert f"{second} cannot be read: {journal}" in table.stderr


@pytest.mark.parametrize(
    "content, why",
    [(deep_json(5000), "nests too deeply"), ("[1, 2]", "is not an execution record"), ('{"steps": 5}', "is not an execution record")],
    ids=["deep", "a-list", "steps-not-a-list"],
)
def test_a_snapshot_that_cannot_be_read_is_one_sentence_and_hides_nothing(wfctl, wfctl_json, workflow_file, content, why):
    first, second = two_runs(wfctl_json, workflow_file)
    snapshot = execution_dir(second) / "execution.json"
    snapshot.write_text(content)
    result = wfctl("execution", second, code=1)
    assert result.stderr.startswith(f"wfctl: error: {snapshot} ") and why in result.stderr, result.stderr
    assert "internal error" not in result.stderr
    listed = wfctl_json("executions")
    assert {e["executionId"]: e["status"] for e in listed["elements"]} == {first: "completed", second: "unreadable"}


def test_a_trace_that_cannot_be_read_is_one_sentence(wfctl, wfctl_json, workflow_file, wfctl_home):
    first, second = two_runs(wfctl_json, workflow_file)
    workflow_id = wfctl_json("execution", second)["workflowId"]
    trace = wfctl_home / "traces" / workflow_id / f"{second}.json"
    trace.write_text(deep_json(5000))
    result = wfctl("trace", workflow_id, second, code=1)
    assert result.stderr.startswith(f"wfctl: error: {trace} cannot be read: it nests too deeply"), result.stderr
    listed = wfctl_json("traces", workflow_id)
    assert first in [element["id"] for element in listed["elements"]]


# -- item 15: in-process python agents --------------------------------------------------------------
AGENTS = """\
    import sys, threading, time

    def bye(context):
        print("about to leave")
        sys.exit(3)

    def bye_quietly(context):
        sys.exit()

    def interrupt(context):
        raise KeyboardInterrupt

    def chatty(context):
        print("to stdout", context["task"])
        print("to stderr", file=sys.stderr)
        sys.stdout.write("a secret: " + context["secrets"]["TOKEN"][:9])
        sys.stdout.write(context["secrets"]["TOKEN"][9:] + "\\n")  # split across writes
        sys.stdout.buffer.write(b"raw bytes\\n")
        return {"said": "hello"}

    def tuple_key(context):
        return {"ok": [1, {(1, 2): "pair"}]}

    def int_key(context):
        return {"counts": {1: "one"}}

    def cycle(context):
        value = {"a": [1, 2]}
        value["a"].append(value)
        return value

    def an_object(context):
        return {"when": threading.Lock()}

    def nan(context):
        return {"a": [0, 1, float("nan")]}

    def infinity(context):
        return {"limit": float("inf")}

    def surrogate(context):
        return {"text": "bad \\ud800 text"}

    def deep(context):
        value = 1
        for _ in range(980):
            value = [value]
        return value

    def tuples(context):
        return {"pair": (1, 2), "nested": [(3, (4,))]}
"""


def python_workflow(workflow_file, function: str, *, detach_secret: bool = False) -> Path:
    return workflow_file(f"""\
        name: py-{function.replace('_', '-')}
        secrets:
          TOKEN: {{env: PY_TOKEN}}
        agents:
          py: {{python: "wfctl_test_py_agents:{function}"}}
        steps:
          - id: call
            agent: py
            task: "say hi"
            output: said
          - id: after
            run: echo after
    """)


@pytest.fixture
def agents(tmp_path, monkeypatch):
    python_module(tmp_path, "wfctl_test_py_agents", AGENTS)
    monkeypatch.setenv("PY_TOKEN", SECRET)
    return tmp_path


def run_json(wfctl, *args, code: int, cwd: Path) -> tuple[dict, subprocess.CompletedProcess]:
    """`wfctl ... --json`: stdout must be exactly one JSON document."""
    result = wfctl(*args, "--json", code=code, cwd=cwd)
    return strict_json(result.stdout), result


@pytest.mark.parametrize(
    "function, message",
    [
        ("bye", "SystemExit: the agent called sys.exit(3)"),
        ("bye_quietly", "SystemExit: the agent called sys.exit()"),
        ("interrupt", "KeyboardInterrupt: raised by the agent"),
    ],
)
def test_an_agent_that_exits_fails_its_attempt_and_wfctl_goes_on(wfctl, wfctl_json, workflow_file, agents, function, message):
    path = python_workflow(workflow_file, function)
    document, result = run_json(wfctl, "execute", path, code=1, cwd=agents)
    steps = records(document)
    assert document["status"] == "failed"
    assert steps["call"]["status"] == "failed" and steps["call"]["error"]["message"] == message
    assert steps["call"]["error"]["kind"] == "failed"
    assert steps["after"]["status"] == "pending"
    assert "about to leave" not in result.stdout + result.stderr
    log = wfctl("logs", document["executionId"], "call").stdout
    assert message in log
    if function == "bye":
        assert "about to leave" in log
    assert_readable(wfctl, wfctl_json, document["executionId"])


def test_what_an_agent_prints_goes_to_its_log_masked_never_to_wfctls_streams(wfctl, wfctl_json, workflow_file, agents):
    path = python_workflow(workflow_file, "chatty")
    document, result = run_json(wfctl, "execute", path, code=0, cwd=agents)
    assert records(document)["call"]["output"] == {"said": {"said": "hello"}}
    assert "to stdout" not in result.stdout + result.stderr and "raw bytes" not in result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr
    log = (execution_dir(document["executionId"]) / "logs" / "call.log").read_text()
    assert log.splitlines() == [
        "=== attempt 1 · python wfctl_test_py_agents:chatty",
        "to stdout say hi",
        "to stderr",
        "a secret: ***",
        "raw bytes",
        "completed",
    ]
    # Without --json, stdout is the execution id alone.
    plain = wfctl("execute", path, "-q", cwd=agents)
    assert plain.stdout.strip().startswith("exec_") and len(plain.stdout.split()) == 1
    assert "to stdout" not in plain.stderr


def test_parallel_agents_printing_at_once_each_print_to_their_own_log(wfctl, workflow_file, tmp_path):
    python_module(tmp_path, "wfctl_test_printers", """\
        import threading, time
        started = threading.Barrier(4, timeout=20)  # all four agents print at the same time

        def shout(context):
            started.wait()
            for number in range(200):
                print(f"{context['step']} line {number}")
            return context["step"]
    """)
    path = workflow_file("""\
        name: printers
        agents:
          shout: {python: "wfctl_test_printers:shout"}
        steps:
          - id: all
            type: parallel
            maxConcurrency: 4
            steps:
              - {id: p1, agent: shout, task: x}
              - {id: p2, agent: shout, task: x}
              - {id: p3, agent: shout, task: x}
              - {id: p4, agent: shout, task: x}
    """)
    document, result = run_json(wfctl, "execute", path, code=0, cwd=tmp_path)
    assert "line" not in result.stdout + result.stderr
    for key in ("p1", "p2", "p3", "p4"):
        lines = (execution_dir(document["executionId"]) / "logs" / f"{key}.log").read_text().splitlines()
        assert lines[1:-1] == [f"{key} line {number}" for number in range(200)], key
        assert records(document)[key]["output"] == key


def test_a_detached_run_keeps_an_agents_prints_out_of_runner_log(wfctl, workflow_file, agents, monkeypatch):
    monkeypatch.chdir(agents)
    path = python_workflow(workflow_file, "chatty")
    execution_id = detach(path)
    wait_status(execution_id, "completed")
    runner_log = execution_dir(execution_id) / "runner.log"
    assert "to stdout" not in runner_log.read_text() and SECRET not in runner_log.read_text()
    log = (execution_dir(execution_id) / "logs" / "call.log").read_text()
    assert "to stdout say hi" in log and "a secret: ***" in log and SECRET not in log


NOT_JSON = [
    ("tuple_key", "$.ok[1] has the key (1, 2) (a tuple); JSON keys are strings"),
    ("int_key", "$.counts has the key 1 (an int); JSON keys are strings"),
    ("cycle", "$.a[2] contains itself (a cycle)"),
    ("an_object", "$.when is a lock, which is not JSON data"),
    ("nan", "$.a[2] is NaN, which is not a JSON number"),
    ("infinity", "$.limit is Infinity, which is not a JSON number"),
    ("surrogate", "$.text is a string with a lone surrogate, which is not UTF-8 text"),
    ("deep", "nests deeper than 128 levels"),
]


@pytest.mark.parametrize("function, problem", NOT_JSON, ids=[case[0] for case in NOT_JSON])
def test_a_result_that_is_not_json_data_fails_the_step_naming_where(wfctl, wfctl_json, workflow_file, agents, function, problem):
    path = python_workflow(workflow_file, function)
    document, result = run_json(wfctl, "execute", path, code=1, cwd=agents)
    assert "internal error" not in result.stderr
    call = records(document)["call"]
    assert call["status"] == "failed" and call["error"]["kind"] == "failed"
    message = call["error"]["message"]
    assert message.startswith(f"python agent 'py' (wfctl_test_py_agents:{function}) returned a value that is not JSON data: ")
    assert problem in message, message
    # The execution ended (failed), readable; `retry` runs the step again, `resume` says there is nothing to resume.
    assert_readable(wfctl, wfctl_json, document["executionId"])
    wfctl("resume", document["executionId"], code=6, cwd=agents)
    again = strict_json(wfctl("retry", document["executionId"], "call", "--json", code=1, cwd=agents).stdout)
    assert [a["status"] for a in records(again)["call"]["attempts"]] == ["failed", "failed"]


def test_an_agent_changing_what_it_returned_changes_neither_the_record_nor_the_next_steps(wfctl, workflow_file, tmp_path):
    python_module(tmp_path, "wfctl_test_keeper", """\
        SEEN = []

        def collect(context):
            SEEN.append(context["index"])
            return SEEN  # the same list every time, changed by the next call
    """)
    path = workflow_file("""\
        name: keeper
        agents:
          keep: {python: "wfctl_test_keeper:collect"}
        steps:
          - id: each
            type: loop
            items: 3
            step: {id: collect, agent: keep, task: t}
            output: collected
          - id: check
            type: conditional
            condition: collected == [[0], [0, 1], [0, 1, 2]]
            then: {id: same, run: echo same}
            else: {id: different, run: echo different}
    """)
    document, _ = run_json(wfctl, "execute", path, code=0, cwd=tmp_path)
    steps = records(document)
    assert [steps[f"collect[{n}]"]["output"] for n in range(3)] == [[0], [0, 1], [0, 1, 2]]
    assert steps["each"]["output"] == {"collected": [[0], [0, 1], [0, 1, 2]]}
    assert steps["check"]["branch"] == "then"  # the state saw what the record holds


def test_json_text_with_a_lone_surrogate_stays_text(wfctl, wfctl_json, workflow_file):
    path = workflow_file("""\
        name: surrogate
        steps:
          - id: odd
            run: |
              printf '%s' '{"text": "\\ud800 alone", "pair": "\\ud83d\\ude00"}'
    """)
    document = wfctl_json("execute", path)
    assert document["steps"][0]["output"] == '{"text": "\\ud800 alone", "pair": "\\ud83d\\ude00"}'
    assert_readable(wfctl, wfctl_json, document["executionId"])


def test_tuples_become_lists_in_the_state_as_in_the_record(wfctl, workflow_file, agents):
    path = workflow_file("""\
        name: py-tuples
        agents:
          py: {python: "wfctl_test_py_agents:tuples"}
        steps:
          - id: call
            agent: py
            task: t
            output: pair
          - id: check
            type: conditional
            condition: pair.pair == [1, 2] && pair.nested == [[3, [4]]]
            then: {id: same, run: echo same}
            else: {id: different, run: echo different}
    """)
    document, _ = run_json(wfctl, "execute", path, code=0, cwd=agents)
    steps = records(document)
    assert steps["call"]["output"] == {"pair": {"pair": [1, 2], "nested": [[3, [4]]]}}
    assert steps["check"]["branch"] == "then"


# -- item 4: one cap for every agent kind, the state as the record ---------------------------------
BIG = """\
    import json, os

    def big(context):
        return {"rows": [{"n": n, "text": "x" * 90} for n in range(10_000)]}

    def consume(context):
        # What this step receives, once per attempt; it fails until the test allows it.
        with open(os.environ["SEEN"], "a") as handle:
            handle.write(json.dumps(context["input"], separators=(",", ":"), ensure_ascii=False) + "\\n")
        if not os.path.exists(os.environ["ALLOWED"]):
            raise RuntimeError("not yet")
        return "consumed"
"""


def test_a_large_python_result_is_capped_like_command_output_and_flows_on_as_recorded(
    wfctl, wfctl_json, workflow_file, tmp_path, monkeypatch
):
    python_module(tmp_path, "wfctl_test_big", BIG)
    seen = tmp_path / "seen"
    allowed = tmp_path / "allowed"
    monkeypatch.setenv("SEEN", str(seen))
    monkeypatch.setenv("ALLOWED", str(allowed))
    path = workflow_file("""\
        name: big-python
        agents:
          big: {python: "wfctl_test_big:big"}
          consume: {python: "wfctl_test_big:consume"}
        steps:
          - id: produce
            agent: big
            task: t
            output: rows
          - id: consume
            agent: consume
            task: t
            input: rows
    """)
    document, _ = run_json(wfctl, "execute", path, code=1, cwd=tmp_path)
    full = json.dumps({"rows": [{"n": n, "text": "x" * 90} for n in range(10_000)]}, separators=(",", ":"))
    output = records(document)["produce"]["output"]["rows"]
    assert output == full[:INLINE_LIMIT] + f"\n[output truncated: {len(full)} bytes in all; see wfctl logs]"
    log = wfctl("logs", document["executionId"], "produce").stdout
    assert full in log  # the whole result is in the step's log, as command output is
    # `retry` restores the state from the record: the step gets exactly what it got the first time.
    allowed.touch()
    wfctl("retry", document["executionId"], "consume", "-q", cwd=tmp_path)
    first, second = seen.read_text().splitlines()
    assert first == second == json.dumps({"rows": output}, separators=(",", ":"), ensure_ascii=False)


def test_a_large_http_result_is_capped_with_the_same_marker(wfctl_json, workflow_file):
    body = json.dumps({"items": ["y" * 100] * 5000}).encode()
    with http_server(status=200, body=body) as web:
        path = workflow_file(f"""\
            name: big-http
            agents:
              api: {{http: "{web.url}/agent"}}
            steps:
              - id: call
                agent: api
                task: ask
        """)
        document = wfctl_json("execute", path)
    output = document["steps"][0]["output"]
    assert isinstance(output, str) and len(output.encode()) < INLINE_LIMIT + 200
    # The body is kept as the server sent it (its first 256 KiB), as command output is.
    assert output.startswith('{"items": ["yyy') and output.endswith("bytes in all; see wfctl logs]")


def test_a_large_echo_result_is_capped_in_a_dry_run(wfctl, wfctl_json, workflow_file, tmp_path):
    (tmp_path / "input.json").write_text(json.dumps({"blob": "z" * 400_000}))
    path = workflow_file("""\
        name: big-echo
        steps:
          - id: tell
            input: blob
            run: echo never
    """)
    document = wfctl_json("execute", path, "--dry-run", "--input", f"@{tmp_path / 'input.json'}")
    output = document["steps"][0]["output"]
    assert output.startswith('{"task":null,"input":{"blob":"zzz')
    assert output.endswith("bytes in all; see wfctl logs]") and len(output.encode()) < INLINE_LIMIT + 200
    assert "z" * 400_000 in wfctl("logs", document["executionId"], "tell").stdout


# -- the record never holds what readers cannot read -----------------------------------------------
def test_the_journal_holds_no_bare_nan_whatever_the_agents_return(wfctl, workflow_file, agents):
    for function in ("nan", "infinity", "tuple_key", "cycle"):
        path = python_workflow(workflow_file, function)
        document, _ = run_json(wfctl, "execute", path, code=1, cwd=agents)
        raw = (execution_dir(document["executionId"]) / "events.jsonl").read_bytes()
        for line in raw.splitlines():
            strict_json(line)
        assert b"NaN" not in raw.replace(b"is NaN,", b"") and b"Infinity" not in raw.replace(b"is Infinity,", b"")


def test_nothing_is_written_for_a_bad_infrastructure_retries_setting(wfctl, workflow_file, wfctl_home):
    path = workflow_file("""\
        name: plain
        steps:
          - id: only
            run: echo hi
    """)
    config = Path(os.environ["WFCTL_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[defaults]\ninfrastructure_retries = -1\n")
    before = tree_snapshot(wfctl_home)
    result = wfctl("execute", path, code=2)
    assert "config.toml:2: defaults.infrastructure_retries" in result.stderr
    assert "must be a non-negative integer, not the number -1" in result.stderr
    assert tree_snapshot(wfctl_home) == before


# -- wfctl.values in-process: the bounds themselves -------------------------------------------------
def test_decode_keeps_text_past_the_bounds():
    from wfctl.values import MAX_DEPTH, decode

    assert decode('{"a": [1, 2]}') == {"a": [1, 2]}
    assert decode("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert decode("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)) == "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    # Brackets inside strings do not count.
    assert decode(json.dumps(["[" * 1000])) == ["[" * 1000]
    for text in ("NaN", "[Infinity]", "-Infinity", '{"x": 1e999}', "1" * 5000):
        assert decode(text) == text
    assert decode('"\\ud83d\\ude00"') == "\U0001F600"  # a surrogate pair is one character
    assert decode('["\\ud800"]') == '["\\ud800"]'  # a lone one is no UTF-8 text: stays text
    assert decode("  \n") is None
    assert decode(" plain words\n") == "plain words"


def test_check_walks_without_recursion_and_shared_parts_are_not_cycles():
    import sys

    from wfctl.values import NotJSON, bound, check

    shared = {"k": [1, 2]}
    assert bound([shared, shared]).value == [{"k": [1, 2]}, {"k": [1, 2]}]
    deep = 1
    for _ in range(sys.getrecursionlimit() * 3):
        deep = [deep]
    with pytest.raises(NotJSON, match="nests deeper than 128 levels"):
        check(deep)
    bomb: list = []
    for _ in range(60):  # 2**60 parts once written out
        bomb = [bomb, bomb]
    capped = bound(bomb).value
    assert isinstance(capped, str) and capped.startswith("[[[[") and len(capped.encode()) < INLINE_LIMIT + 200


# -- item 5 in-process: the retry decision for attempts the infrastructure lost ----------------------
class LossyCluster:
    """An executor (Settings.executor: (agent, ctx) -> Outcome) standing for a cluster whose
    workers die: it plays a script of outcomes, one per attempt ("lost", "fail", "ok").
    The real Dask cluster is in tests/test_dask.py; this one makes the counting exact."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.attempts: list[int] = []

    def __call__(self, agent: dict, ctx) -> object:
        from wfctl.agents import Outcome, failure

        self.attempts.append(ctx.attempt)
        what = self.script.pop(0)
        if what == "lost":
            outcome = failure("failed", f"worker tcp://w{ctx.attempt} died while running the step (infrastructure error).")
            outcome.error["infrastructure"] = True
            outcome.worker = f"tcp://w{ctx.attempt}"
            return outcome
        if what == "fail":
            return failure("failed", "exited with code 1.", 1)
        return Outcome(ok=True, output=f"done on attempt {ctx.attempt}", exit_code=0)


def run_on(tmp_path: Path, cluster: LossyCluster, error_handling: dict | None = None, **settings) -> tuple[str, list[dict], list[float]]:
    from wfctl.engine import Engine, Settings

    step = {"id": "work", "run": "true", **({"errorHandling": error_handling} if error_handling else {})}
    (tmp_path / "logs").mkdir(exist_ok=True)
    events: list[dict] = []
    waits: list[float] = []
    engine = Engine(
        {"name": "lossy", "steps": [step]},
        Settings(execution_id="exec_0000lossy000", workflow_id="wf_0000lossy000", log_dir=tmp_path / "logs",
                 agents={}, teams={}, executor=cluster, **settings),
        events.append,
        sleep=waits.append,
    )
    status, _ = engine.run({})
    return status, events, waits


@pytest.mark.parametrize(
    "script, error_handling, bound, status, retry_in",
    [
        (["lost", "lost", "ok"], None, 3, "completed", [0, 0]),  # no policy: lost attempts are run again anyway
        (["lost", "lost", "lost", "lost"], None, 3, "failed", [0, 0, 0]),  # 3 runs again, then the step fails as before
        (["lost"], None, 0, "failed", []),  # 0 turns it off
        # maxRetries: 1 is one retry for the step's own failures, whatever the cluster lost
        (["lost", "fail", "lost", "ok"], {"strategy": "retry", "maxRetries": 1, "delay": 5}, 3, "completed", [0, 5, 0]),
        (["fail", "fail"], {"strategy": "retry", "maxRetries": 1, "delay": 5}, 3, "failed", [5]),
        # once the bound is spent, a lost attempt is the policy's like any failure
        (["lost", "lost", "ok"], {"strategy": "retry", "maxRetries": 1, "delay": 5}, 1, "completed", [0, 5]),
    ],
    ids=["no-policy", "bound-spent", "turned-off", "apart-from-policy", "policy-alone", "then-the-policy"],
)
def test_attempts_the_infrastructure_lost_are_run_again_apart_from_the_retry_policy(
    tmp_path, script, error_handling, bound, status, retry_in
):
    cluster = LossyCluster(script)
    final, events, waits = run_on(tmp_path, cluster, error_handling, infrastructure_retries=bound)
    assert final == status
    assert cluster.attempts == list(range(1, len(script) + 1))  # every scripted attempt ran, no more
    failed = [e for e in events if e["type"] == "attempt.failed"]
    # A lost attempt is run again at once; the policy's backoff is for the step's own failures.
    assert [e["retryIn"] for e in failed] == retry_in
    assert waits == [wait for wait in retry_in if wait]
    for event in failed:
        if event["error"].get("infrastructure"):
            assert event["worker"] == f"tcp://w{event['attempt']}"  # each lost attempt keeps its worker
    finished = [e for e in events if e["type"] == "step.finished"][-1]
    assert finished["status"] == status
    if status == "failed":  # the step fails with its last attempt's error, as before
        last = len(script)
        expected = {
            "lost": f"worker tcp://w{last} died while running the step (infrastructure error).",
            "fail": "exited with code 1.",
        }[script[-1]]
        assert finished["error"]["message"] == expected


def test_an_agent_with_a_timeout_prints_to_its_log_and_an_overrun_is_dropped_after(wfctl, workflow_file, tmp_path, monkeypatch):
    release, done = tmp_path / "release", tmp_path / "done"
    monkeypatch.setenv("RELEASE", str(release))
    monkeypatch.setenv("DONE", str(done))
    python_module(tmp_path, "wfctl_test_slow", """\
        import os, time

        def quick(context):
            print("quick and timed")  # runs in a thread of its own (the step has a timeout)
            return "quick"

        def slow(context):
            print("before the timeout")
            for _ in range(400):  # bounded: at most 20 s
                if os.path.exists(os.environ["RELEASE"]):
                    break
                time.sleep(0.05)
            print("after the timeout")  # the attempt is over: dropped
            open(os.environ["DONE"], "w").close()
            return "late"
    """)
    path = workflow_file("""\
        name: timed-python
        agents:
          quick: {python: "wfctl_test_slow:quick"}
          slow: {python: "wfctl_test_slow:slow"}
        steps:
          - {id: quick, agent: quick, task: t, timeout: 20}
          - {id: slow, agent: slow, task: t, timeout: 1, errorHandling: {strategy: continue}}
          - id: finish
            run: |
              touch "$RELEASE"
              i=0; while [ ! -e "$DONE" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
              test -e "$DONE"
    """)
    document, result = run_json(wfctl, "execute", path, code=0, cwd=tmp_path)
    steps = records(document)
    assert steps["quick"]["output"] == "quick" and steps["slow"]["error"]["message"] == "timed out after 1s."
    assert steps["finish"]["status"] == "completed"  # the abandoned call printed after its attempt ended
    assert "before the timeout" not in result.stdout + result.stderr
    assert "after the timeout" not in result.stdout + result.stderr
    logs = execution_dir(document["executionId"]) / "logs"
    assert (logs / "quick.log").read_text().splitlines() == [
        "=== attempt 1 · python wfctl_test_slow:quick", "quick and timed", "completed",
    ]
    assert (logs / "slow.log").read_text().splitlines() == [
        "=== attempt 1 · python wfctl_test_slow:slow", "before the timeout", "timed out after 1s.",
    ]
