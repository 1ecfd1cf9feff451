"""Issue 11, the bad-configuration, bad-input and CLI items (6, 16, 17, 18, 22, 23, 26).

End to end through the installed `wfctl` (exit codes, the one sentence, nothing written),
plus the library layer where the semantics are (config validation, the step file path, loop
bounds). Every refusal checks: exit 2, no traceback and no `internal error`, the sentence
naming its source (and the key and line where known), and a data directory left as it was.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import tree_snapshot

WAIT = 60  # the bound of every wfctl run here; a hang fails the test instead of stalling it


# -- helpers ---------------------------------------------------------------------------------------
def cli(*args, stdin: str | bytes = b"", timeout: float = WAIT, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed wfctl with a hard bound (a hang is a failure, not a stalled suite)."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(["wfctl", *map(str, args)], input=data, capture_output=True, timeout=timeout, env=env)


def text_of(result: subprocess.CompletedProcess) -> tuple[str, str]:
    return result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace")


def shown(result: subprocess.CompletedProcess) -> str:
    out, err = text_of(result)
    return f"exit {result.returncode}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"


def refused(result: subprocess.CompletedProcess, *words: str, lines: int | None = 1) -> str:
    """A refusal of bad input: exit 2, one sentence (or `lines` lines), no traceback; returns stderr."""
    _out, err = text_of(result)
    assert result.returncode == 2, shown(result)
    assert "Traceback" not in err and "internal error" not in err, shown(result)
    if lines is not None:
        assert len(err.splitlines()) == lines, shown(result)
    for word in words:
        assert word in err, f"{word!r} not in the message\n" + shown(result)
    return err


def config_file() -> Path:
    return Path(os.environ["WFCTL_CONFIG"])


def write_config(text: str) -> Path:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def marker_workflow(tmp_path: Path, marker: Path, extra_steps: str = "", name: str = "wf.yaml") -> Path:
    """A workflow whose first step touches `marker`: proof that something ran."""
    return write(tmp_path / name, f"""\
        name: marked
        steps:
          - {{id: first, run: "touch {marker}"}}
        {extra_steps}""")


# -- 6. names from config.toml that would become paths outside the data directory ---------------
def _relative_escape(wfctl_home: Path, target: Path) -> str:
    """A team member name that, as `logs/s@<member>.log`, lands on `target`.log: the
    execution's logs directory is WFCTL_HOME/executions/<id>/logs."""
    logs = wfctl_home / "executions" / "exec_x" / "logs"
    return os.path.relpath(target, logs / "s@x").replace(os.sep, "/")


def test_6_team_member_with_a_path_in_config_is_refused_and_touches_nothing(tmp_path, wfctl_home):
    victim = tmp_path / "victim"
    (tmp_path / "victim.out").write_text("precious")
    member = _relative_escape(wfctl_home, victim)
    assert member.startswith("../")
    config = write_config(f"""\
        [agents.ok]
        run = "echo hi"

        [teams.t]
        members = ["ok", "{member}"]
        strategy = "all"
        """)
    flow = write(tmp_path / "team.yaml", """\
        name: team
        steps:
          - {id: s, type: team, teamId: t, task: hi}
        """)
    before = tree_snapshot(wfctl_home)
    for command in (["validate", flow], ["execute", flow], ["team", "list"]):
        err = refused(cli(*command), str(config), "teams.t.members[1]", f"{config}:5:")
    assert (tmp_path / "victim.out").read_text() == "precious"
    assert not (tmp_path / "victim.log").exists()
    assert tree_snapshot(wfctl_home) == before
    assert "letters, digits" in err


def test_6_agent_name_with_a_path_in_config_is_refused(tmp_path, wfctl_home):
    config = write_config("""\
        [agents."../../../x"]
        run = "echo hi"
        """)
    flow = write(tmp_path / "wf.yaml", "name: a\nsteps:\n  - {id: s, agent: echo, task: hi}\n")
    before = tree_snapshot(wfctl_home)
    refused(cli("execute", flow), f"{config}:1:", 'agents["../../../x"]', "letters, digits")
    refused(cli("agent", "list"), f"{config}:1:")
    assert tree_snapshot(wfctl_home) == before


def test_6_team_add_refuses_a_member_name_that_is_a_path(wfctl_home):
    result = cli("team", "add", "t", "--member", "../../evil", "--strategy", "all")
    refused(result, "'../../evil' is not a valid agent name")
    assert not config_file().exists()


def test_6_a_record_changed_on_disk_cannot_lead_a_log_out_of_the_data_dir(tmp_path, wfctl_home):
    """The frozen definition of an execution is a record on disk: its team members are
    checked where it is read (retry), not trusted."""
    flow = write(tmp_path / "team.yaml", """\
        name: team
        agents:
          bad: {run: "exit 1"}
        teams:
          t: {members: [bad], strategy: all}
        steps:
          - {id: s, type: team, teamId: t, task: hi}
        """)
    result = cli("execute", flow, "--quiet")
    assert result.returncode == 1, shown(result)
    execution_id = text_of(result)[0].strip()
    frozen_path = wfctl_home / "executions" / execution_id / "workflow.json"
    frozen = json.loads(frozen_path.read_text())
    victim = tmp_path / "victim"
    frozen["definition"]["teams"]["t"]["members"] = [_relative_escape(wfctl_home, victim)]
    frozen["definition"]["agents"] = {}
    frozen_path.write_text(json.dumps(frozen))
    err = refused(cli("retry", execution_id, "s", "--quiet"), str(frozen_path), "definition.teams.t.members[0]")
    assert "is not a valid agent name" in err
    assert not (tmp_path / "victim.log").exists() and not (tmp_path / "victim.out").exists()


def test_6_step_files_are_built_in_one_place_that_refuses_to_leave_the_logs_dir(tmp_path):
    from wfctl.agents import AttemptContext
    from wfctl.errors import UsageError
    from wfctl.store import step_file

    logs = tmp_path / "logs"
    assert step_file(logs, "process[3]", ".log") == logs / "process[3].log"
    assert step_file(logs, "review@amy", ".out") == logs / "review@amy.out"
    for bad in ("../x", "s@../../x", "a/b", ".", "..", "", "x\n", "s@/etc/passwd"):
        with pytest.raises(UsageError):
            step_file(logs, bad, ".log")
    context = AttemptContext(step_key="s@../../../victim", step_id="s", task=None, inputs={}, execution_id="exec_x",
                             workflow_id="wf_x", attempt=1, scope={}, log_dir=logs)
    for attribute in ("log_path", "output_path"):
        with pytest.raises(UsageError):
            getattr(context, attribute)


def test_6_a_step_id_with_a_trailing_newline_is_refused(tmp_path, wfctl_home):
    """`$` in a pattern matches before a final newline: ids are matched whole."""
    flow = tmp_path / "nl.yaml"
    flow.write_text("name: nl\nsteps:\n  - id: |\n      abc\n    run: echo hi\n")
    before = tree_snapshot(wfctl_home)
    refused(cli("validate", flow), "steps[0].id", lines=2)
    refused(cli("execute", flow), "steps[0].id")
    assert tree_snapshot(wfctl_home) == before


# -- 16. config.toml values of the wrong type ------------------------------------------------------
CONFIG_CASES = {
    "max-running-string": ('[defaults]\nmax_running = "x"\n', "defaults.max_running", 2,
                           "must be a positive integer, not the string 'x'"),
    "executor-number": ("executor = 5\n", "executor", 1, "local or dask://HOST:PORT"),
    "executor-unknown": ('executor = "k8s://x"\n', "executor", 1, "must be local or dask://HOST:PORT"),
    "agent-as-string": ('[agents]\nworker = "echo hi"\n', "agents.worker", 2, "must be a table"),
    "agent-env-number": ('[agents.worker]\nrun = "echo hi"\nenv = 5\n', "agents.worker.env", 3, "not the number 5"),
    "agent-without-kind": ('[agents.worker]\ndescription = "x"\n', "agents.worker", 1, "exactly one of run, python or http"),
    "team-no-members": ('[teams.crew]\nmembers = []\n', "teams.crew.members", 2, "non-empty list"),
    "team-bad-strategy": ('[teams.crew]\nmembers = ["echo"]\nstrategy = "random"\n', "teams.crew.strategy", 3,
                          "round-robin"),
    "unknown-key": ("[defaults]\nmax_concurency = 2\n", "defaults.max_concurency", 2, "did you mean 'max_concurrency'"),
    "unknown-section": ("[slak]\nwebhook = 'https://hooks.example/x'\n", "slak", 1, "unknown key 'slak'"),
    "smtp-port-string": ('[smtp]\nhost = "mail"\nport = "x"\n', "smtp.port", 3, "not the string 'x'"),
    "slack-webhook-not-url": ('[slack]\nwebhook = "nope"\n', "slack.webhook", 2, "http:// or https:// URL"),
    "max-running-a-time": ("[defaults]\nmax_running = 07:32:00\n", "defaults.max_running", 2,
                           "not the date/time 07:32:00"),
    "max-concurrency-zero": ("[defaults]\nmax_concurrency = 0\n", "defaults.max_concurrency", 2, "not the number 0"),
    # 17: a limit that no execution can ever meet used to hang every execute.
    "max-running-zero": ("[defaults]\nmax_running = 0\n", "defaults.max_running", 2, "not the number 0"),
    "max-running-negative": ("[defaults]\nmax_running = -1\n", "defaults.max_running", 2, "not the number -1"),
}


@pytest.mark.parametrize("label", list(CONFIG_CASES))
def test_16_17_bad_config_is_refused_before_anything_is_written(label, tmp_path, wfctl_home):
    text, key, line, words = CONFIG_CASES[label]
    config = write_config(text)
    marker = tmp_path / "ran"
    flow = marker_workflow(tmp_path, marker, "  - {id: work, agent: worker, task: hi}\n"
                           if "worker" in text else "")
    before = tree_snapshot(wfctl_home)
    for json_mode in (False, True):
        result = cli("execute", flow, "--quiet", *(["--json"] if json_mode else []))
        err = refused(result, f"{config}:{line}: {key}: ", words)
        if json_mode:
            document = json.loads(text_of(result)[0])
            assert document["problems"][0]["line"] == line and document["problems"][0]["path"] == key
    assert not marker.exists()
    assert tree_snapshot(wfctl_home) == before, "an execution was written"
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["validate", "{flow}"], ["agent", "list"], ["team", "list"],
                                     ["config", "get", "defaults.max_running"]])
def test_16_every_command_that_uses_the_config_checks_it(command, tmp_path):
    config = write_config('[defaults]\nmax_running = "x"\n')
    flow = marker_workflow(tmp_path, tmp_path / "ran")
    refused(cli(*[flow if a == "{flow}" else a for a in command]), f"{config}:2: defaults.max_running: ")


@pytest.mark.parametrize(
    "key, value, words",
    [("defaults.max_running", "x", "max_running must be a positive integer, not the string 'x'"),
     ("defaults.max_running", "0", "not the number 0"),
     ("defaults.max_concurrency", "-3", "not the number -3"),
     ("executor", "5", "local or dask://HOST:PORT"),
     ("slack.webhook", "not-a-url", "http:// or https:// URL"),
     ("smtp.starttls", "maybe", "true or false"),
     ("agents.mira", "echo", "must be a table"),
     ("defaults.max_runing", "2", "did you mean 'max_running'")],
)
def test_16_config_set_refuses_wrong_types_and_changes_nothing(key, value, words):
    config = write_config("[defaults]\nmax_concurrency = 4\n")
    before = config.read_bytes()
    err = refused(cli("config", "set", "--", key, value), key, words, "the file was not changed")
    assert config.read_bytes() == before
    assert "Traceback" not in err


def test_16_a_broken_config_can_be_repaired_with_wfctl(tmp_path, wfctl_home):
    """The commands that change config.toml refuse to make it worse, not to make it better."""
    config = write_config("""\
        colour = "red"
        [defaults]
        max_running = "x"
        [agents]
        worker = "echo hi"
        """)
    flow = marker_workflow(tmp_path, tmp_path / "ran")
    refused(cli("execute", flow, "--quiet"), lines=4)
    result = cli("config", "set", "defaults.max_running", "2")
    assert result.returncode == 0, shown(result)
    assert "warning:" in text_of(result)[1] and "colour" in text_of(result)[1]
    assert cli("agent", "remove", "worker").returncode == 0
    assert cli("config", "unset", "colour").returncode == 0
    assert text_of(cli("config", "get", "defaults.max_running"))[0].strip() == "2"
    result = cli("execute", flow, "--quiet")
    assert result.returncode == 0, shown(result)
    assert (tmp_path / "ran").exists()
    assert "colour" not in config.read_text()


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_16_config_that_is_not_a_regular_file_never_blocks(kind, tmp_path):
    path = tmp_path / "config.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    env = {**os.environ, "WFCTL_CONFIG": str(path)}
    refused(cli("agent", "list", env=env, timeout=20), "config file", "regular file" if kind != "directory"
            else "directory")


def test_16_a_config_team_member_that_is_no_agent_stops_the_run_before_it_starts(tmp_path, wfctl_home):
    """As for a workflow's own team (A21): the members of a config.toml team a workflow uses
    must be agents, checked before the first step, not when the team step comes."""
    write_config("""\
        [teams.crew]
        members = ["echo", "nobdy"]
        """)
    marker = tmp_path / "ran"
    flow = marker_workflow(tmp_path, marker, "  - {id: together, type: team, teamId: crew, task: hi}\n")
    before = tree_snapshot(wfctl_home)
    refused(cli("validate", flow), "steps[1].teamId", "member 'nobdy', which is not an agent", lines=2)
    refused(cli("execute", flow, "--quiet"), "member 'nobdy'")
    assert not marker.exists() and tree_snapshot(wfctl_home) == before
    assert cli("create", flow).returncode == 0  # registered, then run by name: checked again
    refused(cli("execute", "marked", "--quiet"), "member 'nobdy'")
    assert not marker.exists()


# -- 18. --input: bounded, a regular file, shallow, and what it is called -------------------------
@pytest.fixture
def input_flow(tmp_path):
    marker = tmp_path / "ran"
    return write(tmp_path / "in.yaml", f"""\
        name: takes-input
        steps:
          - {{id: first, run: "touch {marker}"}}
        """), marker


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "directory", "too-large"])
def test_18_input_file_is_checked_like_a_workflow_file(kind, input_flow, tmp_path, wfctl_home):
    flow, marker = input_flow
    if kind == "dev-zero":
        source, words = "/dev/zero", "a device, not a regular file"
    elif kind == "fifo":
        source, words = str(tmp_path / "pipe.json"), "named pipe (FIFO)"
        os.mkfifo(source)
    elif kind == "directory":
        source, words = str(tmp_path), "directory"
    else:
        source, words = str(tmp_path / "big.json"), "limited to 1 MiB"
        Path(source).write_text('{"x": "' + "a" * (1024 * 1024) + '"}')
    before = tree_snapshot(wfctl_home)
    refused(cli("execute", flow, "--input", f"@{source}", "--quiet", timeout=20), "--input file", words)
    assert not marker.exists() and tree_snapshot(wfctl_home) == before


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_18_secret_files_are_read_like_workflow_files(kind, tmp_path, wfctl_home):
    """The same class as --input @FILE: a file a workflow names is never read for ever."""
    source = "/dev/zero" if kind == "dev-zero" else str(tmp_path / "token.pipe")
    if kind == "fifo":
        os.mkfifo(source)
    marker = tmp_path / "ran"
    flow = write(tmp_path / "secret.yaml", f"""\
        name: secretive
        secrets:
          TOKEN: {{file: {source}}}
        steps:
          - {{id: first, run: "touch {marker}"}}
        """)
    before = tree_snapshot(wfctl_home)
    refused(cli("execute", flow, "--quiet", timeout=20), "secret 'TOKEN' cannot be read", "not a regular file")
    assert not marker.exists() and tree_snapshot(wfctl_home) == before


def test_18_input_from_stdin_is_bounded(input_flow, wfctl_home):
    flow, marker = input_flow
    before = tree_snapshot(wfctl_home)
    big = b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    refused(cli("execute", flow, "--input", "-", "--quiet", stdin=big), "standard input", "limited to 1 MiB")
    with open("/dev/zero", "rb") as zero:
        result = subprocess.run(["wfctl", "execute", flow, "--input", "-", "--quiet"], stdin=zero,
                                capture_output=True, timeout=20)
    refused(result, "standard input")
    assert not marker.exists() and tree_snapshot(wfctl_home) == before


def test_18_json_scans_stay_linear_on_long_escaped_strings(input_flow, tmp_path, wfctl_home):
    """The nesting check scans strings first: a long unterminated string of escaped quotes
    made that scan quadratic (hours for a 1 MiB file); it is refused in seconds now."""
    flow, marker = input_flow
    text = '{"name": "' + '\\"' * 400_000
    workflow = tmp_path / "slow.json"
    workflow.write_text(text)
    refused(cli("validate", workflow, timeout=30), "invalid JSON", lines=2)
    refused(cli("execute", flow, "--input", f"@{workflow}", "--quiet", timeout=30), "is not valid JSON")
    assert not marker.exists()


@pytest.mark.parametrize("depth", [65, 400, 100_000])
def test_18_deeply_nested_input_is_a_usage_error(depth, input_flow, tmp_path, wfctl_home):
    flow, marker = input_flow
    nested = '{"x": ' + "[" * depth + "]" * depth + "}"
    path = tmp_path / "deep.json"
    path.write_text(nested)
    before = tree_snapshot(wfctl_home)
    refused(cli("execute", flow, "--input", f"@{path}", "--quiet"), "nested more than 64 levels")
    if depth < 1000:  # the command line itself holds it
        refused(cli("execute", flow, "--input", nested, "--quiet"), "--input is nested more than 64 levels")
    assert not marker.exists() and tree_snapshot(wfctl_home) == before


def test_18_input_of_64_levels_is_accepted(input_flow, wfctl_home):
    flow, marker = input_flow
    nested = '{"x": ' + "[" * 63 + "]" * 63 + "}"
    result = cli("execute", flow, "--input", nested, "--quiet")
    assert result.returncode == 0, shown(result)
    assert marker.exists()


@pytest.mark.parametrize(
    "given, words",
    [("null", "must be a JSON object, not null"), ("[1]", "not a list"), ('"text"', "not the string 'text'"),
     ("5", "not the number 5"), ("true", "not the boolean true")],
)
def test_26_input_that_is_not_an_object_is_named_in_json_words(given, words, input_flow):
    flow, _ = input_flow
    err = refused(cli("execute", flow, "--input", given, "--quiet"), words)
    assert not any(name in err for name in ("NoneType", "not list", "not str", "not int", "not bool"))


@pytest.mark.parametrize("items", ["100000000", "1000001"])
def test_18_loop_counts_are_bounded_at_validation(items, tmp_path, wfctl_home):
    flow = write(tmp_path / "loop.yaml", f"""\
        name: big-loop
        steps:
          - id: each
            type: loop
            items: {items}
            step: {{id: body, run: "true"}}
        """)
    before = tree_snapshot(wfctl_home)
    err = refused(cli("validate", flow), "steps[0].items", "at most 1,000,000", lines=2)
    assert f"{flow}:5:" in err
    refused(cli("execute", flow, "--quiet"), "at most 1,000,000")
    assert tree_snapshot(wfctl_home) == before


def test_18_literal_loop_lists_are_bounded_at_validation():
    from wfctl.spec import MAX_LOOP_ITEMS
    from wfctl.validate import validate_mapping

    definition = {"name": "x", "steps": [{"id": "each", "type": "loop", "items": [0] * (MAX_LOOP_ITEMS + 1),
                                          "step": {"id": "body", "run": "true"}}]}
    problems = validate_mapping(definition)
    assert [p.path for p in problems] == ["steps[0].items"]
    assert "at most 1,000,000 items" in problems[0].message
    definition["steps"][0]["items"] = [0] * 3
    assert validate_mapping(definition) == []


def test_18_loop_items_from_an_expression_are_bounded_at_run_time(tmp_path, wfctl_home):
    """A count that only exists at run time: the step fails with a clear error at once,
    instead of building a list of every index (MemoryError) and running for ever."""
    marker = tmp_path / "body-ran"
    flow = write(tmp_path / "loop.yaml", f"""\
        name: runtime-loop
        steps:
          - id: each
            type: loop
            items: "n"
            step: {{id: body, run: "touch {marker}"}}
        """)
    result = cli("execute", flow, "--input", '{"n": 2000000}', timeout=WAIT)
    _out, err = text_of(result)
    assert result.returncode == 1, shown(result)
    assert "a loop runs at most 1,000,000" in err and "2,000,000 items" in err, shown(result)
    assert not marker.exists()


def test_18_26_loop_items_of_the_wrong_kind_are_named_in_json_words(tmp_path):
    flow = write(tmp_path / "loop.yaml", """\
        name: text-loop
        steps:
          - id: each
            type: loop
            items: "n"
            step: {id: body, run: "true"}
        """)
    result = cli("execute", flow, "--input", '{"n": "abc"}', "--json")
    document = json.loads(text_of(result)[0])
    assert result.returncode == 1
    assert "is the string 'abc', not a list or a count" in document["error"]["message"]


def test_18_count_loops_iterate_lazily():
    """A count is iterated as a range, never first built as a list of every index."""
    from wfctl.engine import Engine, Settings
    from wfctl.runstate import Frame

    events: list[dict] = []
    loop = {"id": "each", "type": "loop", "items": 1_000_000, "step": {"id": "body", "agent": "echo"}}
    engine = Engine({"name": "x", "steps": [loop]}, Settings("exec_x", "wf_x", Path("/nonexistent"), {}, {}), events.append)
    # The loop's items are the step scheduler's (the engine is a façade over it since issue 12).
    items = engine.scheduler._loop_items(engine.workflow.by_id["each"], Frame(engine.run_context.root))
    assert isinstance(items, range) and len(items) == 1_000_000 and items[-1] == 999_999


def test_18_control_characters_in_names_are_refused(tmp_path, wfctl_home):
    flow = tmp_path / "esc.yaml"
    flow.write_text('name: "evil\\e[2J\\u0000"\nsteps:\n  - {id: s, name: "a\\u202eb", run: "true"}\n')
    before = tree_snapshot(wfctl_home)
    for command in ("validate", "create", "execute"):
        result = cli(command, flow)
        err = refused(result, "control characters", lines=None)
        assert "\x1b" not in err and "\x00" not in err and "\u202e" not in err
    assert "name" in err and "steps[0].name" in err
    assert tree_snapshot(wfctl_home) == before


def test_18_control_characters_in_shown_text_are_escaped(tmp_path, wfctl_home):
    """Descriptions, categories, step output in messages: shown escaped, never sent raw."""
    flow = write(tmp_path / "shown.yaml", r"""
        name: shown
        description: "clears \e[2J the screen \u202e reversed"
        category: "cat\e]0;title\a"
        steps:
          - id: s
            run: printf 'boom \033[2J\033[31m red\r\n' ; exit 1
        """)
    result = cli("create", flow)
    assert result.returncode == 0, shown(result)
    listed = cli("list")
    assert listed.returncode == 0 and b"\x1b" not in listed.stdout + listed.stderr, shown(listed)
    assert b"\\x1b" in listed.stdout  # escaped, still there to see
    definition = cli("show", "shown")
    assert definition.returncode == 0, shown(definition)
    assert b"\x1b" not in definition.stdout and "\u202e".encode() not in definition.stdout, shown(definition)
    result = cli("execute", "shown")
    assert result.returncode == 1, shown(result)
    assert b"\x1b" not in result.stderr and b"\r" not in result.stderr, shown(result)
    assert b"boom \\x1b[2J" in result.stderr, shown(result)
    execution_id = result.stdout.decode().strip()
    details = cli("execution", execution_id)
    assert details.returncode == 0 and b"\x1b" not in details.stdout, shown(details)
    assert b"boom \\x1b[2J" in details.stdout


# -- 22. --quiet still says why a run did not complete --------------------------------------------
def test_22_quiet_failed_run_says_which_step_failed_and_why(tmp_path):
    flow = write(tmp_path / "fail.yaml", """\
        name: failing
        steps:
          - {id: fine, run: "true"}
          - {id: broken, run: "echo disk is full >&2; exit 3"}
        """)
    result = cli("execute", flow, "--quiet")
    out, err = text_of(result)
    assert result.returncode == 1, shown(result)
    lines = err.splitlines()
    assert len(lines) == 1, shown(result)
    assert "failed" in lines[0] and "broken" in lines[0] and "exited with code 3" in lines[0], shown(result)
    assert out.strip().startswith("exec_")


def test_22_quiet_timed_out_run_says_so(tmp_path):
    flow = write(tmp_path / "slow.yaml", """\
        name: slow
        timeout: 0.5
        steps:
          - {id: wait, run: "sleep 30"}
        """)
    result = cli("execute", flow, "--quiet")
    _out, err = text_of(result)
    assert result.returncode == 5, shown(result)
    assert len(err.splitlines()) == 1 and "timed_out" in err and "wait" in err and "timed out after" in err, shown(result)


def test_22_quiet_completed_run_prints_nothing_on_stderr(tmp_path):
    flow = write(tmp_path / "ok.yaml", "name: ok\nsteps:\n  - {id: a, run: 'true'}\n")
    result = cli("execute", flow, "--quiet")
    assert result.returncode == 0 and text_of(result)[1] == "", shown(result)


# -- 23. notifications and escalations that reach nobody -------------------------------------------
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_23_undelivered_notifications_and_escalations_are_said_on_stderr_and_in_execution(tmp_path):
    port = _closed_port()
    flow = write(tmp_path / "notify.yaml", f"""\
        name: noisy
        notifications:
          slack: "#ops"
          email: ops@example.com
          webhook: http://127.0.0.1:{port}/hook
          on: [failed]
        steps:
          - id: broken
            run: "exit 1"
            errorHandling: {{escalateOnFailure: true}}
        """)
    result = cli("execute", flow)
    out, err = text_of(result)
    assert result.returncode == 1, shown(result)
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 4, shown(result)
    assert any("slack #ops" in w and "no Slack webhook is configured" in w for w in warnings)
    assert any("email ops@example.com" in w and "no SMTP server is configured" in w for w in warnings)
    assert any(f"127.0.0.1:{port}" in w and "connection refused" in w for w in warnings)
    assert any("broken was escalated" in w and "no escalateTo" in w for w in warnings)
    quiet = cli("execute", flow, "--quiet")
    assert len([line for line in text_of(quiet)[1].splitlines() if line.startswith("warning: ")]) == 4, shown(quiet)
    execution_id = out.strip()
    details = cli("execution", execution_id)
    shown_out = text_of(details)[0]
    assert details.returncode == 0, shown(details)
    assert "no Slack webhook is configured" in shown_out and "nobody received the escalation" in shown_out
    as_json = cli("execute", flow, "--json")
    assert text_of(as_json)[1] == "", "with --json the results are in the document: " + shown(as_json)


def test_23_failing_escalation_agent_is_reported(tmp_path):
    flow = write(tmp_path / "esc.yaml", """\
        name: escalating
        agents:
          lead: {run: "echo lead is away >&2; exit 9"}
        steps:
          - id: broken
            run: "exit 1"
            errorHandling: {escalateOnFailure: true, escalateTo: lead}
        """)
    result = cli("execute", flow, "--quiet")
    err = text_of(result)[1]
    assert result.returncode == 1, shown(result)
    assert "warning: the escalation of step broken to agent 'lead' failed: exited with code 9" in err, shown(result)


def test_23_validate_and_create_warn_about_escalations_and_notices_with_nowhere_to_go(tmp_path, wfctl_home):
    flow = write(tmp_path / "quiet.yaml", """\
        name: nowhere
        notifications:
          slack: "#ops"
        errorHandling:
          notifyOnError: true
        steps:
          - id: a
            run: "true"
            errorHandling: {escalateOnFailure: true}
          - id: b
            run: "true"
            errorHandling: {notifyOnError: true}
        """)
    result = cli("validate", flow)
    _out, err = text_of(result)
    assert result.returncode == 0, shown(result)
    assert f"warning: {flow}:9: steps[0].errorHandling.escalateOnFailure: escalateOnFailure is true, but no " \
           "escalateTo" in err, shown(result)
    assert f"warning: {flow}:3: notifications.slack: notifications go to a Slack channel, but config.toml has no " \
           "slack.webhook" in err, shown(result)
    assert err.splitlines()[-1] == f"{flow}: valid"
    document = json.loads(text_of(cli("validate", flow, "--json"))[0])
    assert document["valid"] is True
    assert [w["path"] for w in document["warnings"]] == ["notifications.slack", "steps[0].errorHandling.escalateOnFailure"]
    no_target = write(tmp_path / "none.yaml", """\
        name: no-target
        errorHandling: {notifyOnError: true}
        steps:
          - {id: a, run: "true"}
        """)
    err = text_of(cli("validate", no_target))[1]
    assert "errorHandling.notifyOnError: notifyOnError is true, but notifications names no" in err
    result = cli("create", flow)
    assert result.returncode == 0, shown(result)
    assert text_of(result)[1].count("warning: ") == 2, shown(result)


# -- 26. pagination options that would be dropped --------------------------------------------------
@pytest.mark.parametrize(
    "options, words",
    [(["--page", "2", "--limit", "5"], "--page cannot be combined with --limit"),
     (["--size", "5", "--offset", "1"], "--size cannot be combined with --offset"),
     (["--page", "1", "--size", "5", "--limit", "5", "--offset", "0"],
      "--page and --size cannot be combined with --limit and --offset")],
)
def test_26_mixing_page_and_limit_is_refused(options, words, tmp_path, wfctl_home):
    flow = write(tmp_path / "one.yaml", "name: one\nsteps:\n  - {id: a, run: 'true'}\n")
    assert cli("create", flow).returncode == 0
    for json_mode in (False, True):
        result = cli("list", *options, *(["--json"] if json_mode else []))
        refused(result, words)
        if json_mode:
            assert "error" in json.loads(text_of(result)[0])
    assert cli("list", "--limit", "5", "--offset", "0").returncode == 0
    assert cli("list", "--page", "1", "--size", "5").returncode == 0


# -- the library layer: config validation and its lines --------------------------------------------
def test_config_problems_name_the_key_and_its_line():
    from wfctl.config import toml_lines
    from wfctl.validate import validate_config

    text = textwrap.dedent("""\
        # a comment
        [defaults]
        max_running = "x"

        [agents.mira]
        run = '''
        a = 1
        '''
        env = 5
        [agents."a b"]
        run = "x"
        [teams]
        crew.members = [
          "x",
        ]
        crew.strategy = "random"
        """)
    import tomllib

    problems = validate_config(tomllib.loads(text), file="config.toml", lines=toml_lines(text))
    found = {(p.path, p.line) for p in problems}
    assert found == {("defaults.max_running", 3), ("agents.mira.env", 9), ('agents["a b"]', 10),
                     ("teams.crew.strategy", 16)}, problems
    assert validate_config({"defaults": {"max_running": 2}, "agents": {"a": {"run": "x"}},
                            "teams": {"t": {"members": ["a"]}}, "executor": "dask://h:8786",
                            "smtp": {"host": "m", "port": 587, "ssl": False}, "slack": {"webhook": "https://x"}},
                           file="config.toml") == []
