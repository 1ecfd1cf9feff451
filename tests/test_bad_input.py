"""Bad input, end to end through the installed `wfctl` (reliability.md §4 (a), rows A01-A23).

Every row is a workflow file that `wfctl validate FILE`, `wfctl create FILE` and
`wfctl execute FILE` must all refuse the same way:

* exit 2;
* no "Traceback" anywhere;
* stderr is a report in which *every line names the file*:
  - `create`/`execute`, one problem: exactly one line, `wfctl: error: FILE:LINE: path: message`;
  - `create`/`execute`, N > 1 problems: a header `wfctl: error: FILE: N problems:` and N bullet
    lines `  - FILE:LINE: path: message`;
  - `validate`: one line per problem `FILE:LINE: path: message`, then the summary
    `N problem(s) in FILE` (so a single problem is one problem line plus the summary);
* the line is in the report where it is known (`FILE:LINE`);
* stdout is empty, or exactly one JSON document with --json (`{"error": ...}` for create
  and execute; for validate `{"valid": false, "problems": [...]}` and nothing on stderr);
* the data directory is byte-identical before and after, nothing new appears anywhere
  under the test's directory, and the marker file the workflow's first step would
  `touch` does not exist (nothing ran).

The unit-level behaviour of the loader and validator is covered by test_loader.py and
test_validate.py; this file checks what a person at a terminal gets.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from conftest import tree_snapshot

COMMANDS = ("validate", "create", "execute")
MARKER = "MARKER"  # replaced by the path of the side-effect marker file
SIDE = '  - {id: side-effect, run: "touch MARKER"}\n'  # the first step of most rows
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


# -- running wfctl -------------------------------------------------------------------------------
def cli(*args, cwd: Path | None = None, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The installed wfctl (on PATH through the autouse fixture), with a hard timeout."""
    return subprocess.run(
        ["wfctl", *map(str, args)],
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
    )


def listing(root: Path) -> set[str]:
    """Every path under root (files and directories): to prove nothing new appeared."""
    if not root.exists():
        return set()
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def shown(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def check_report(result: subprocess.CompletedProcess, command: str, path: Path, *, json_mode: bool) -> int:
    """The shape every refusal of a workflow file must have; returns the number of problems."""
    assert result.returncode == 2, f"wfctl {command} {path.name}: " + shown(result)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, shown(result)
    assert "internal error" not in result.stderr, shown(result)
    if command == "validate" and json_mode:  # the report is the JSON document; stderr stays empty
        assert result.stderr == "", shown(result)
        document = json.loads(result.stdout)
        assert document["valid"] is False and document["problems"], shown(result)
        assert all(p["message"] and p["file"] == str(path) for p in document["problems"])
        return len(document["problems"])
    lines = result.stderr.splitlines()
    assert lines, shown(result)
    for line in lines:
        assert path.name in line, f"a line of the report does not name the file:\n{line!r}\n" + shown(result)
        assert not _CONTROL.search(line), f"raw control character in the report: {line!r}"
    if command == "validate":
        *problems, summary = lines
        count = len(problems)
        assert count >= 1, shown(result)
        assert summary == f"{count} problem{'s' if count != 1 else ''} in {path}", shown(result)
        assert all(p.startswith(str(path)) for p in problems), shown(result)
    else:
        header = re.fullmatch(r"wfctl: error: .*: (\d+) problems:", lines[0])
        if header:
            count = int(header.group(1))
            assert count > 1 and len(lines) == count + 1, shown(result)
            assert all(line.startswith("  - ") for line in lines[1:]), shown(result)
        else:
            count = 1
            assert len(lines) == 1, "one problem must be one line:\n" + shown(result)
            assert lines[0].startswith("wfctl: error: "), shown(result)
    if json_mode:
        document = json.loads(result.stdout)  # exactly one document
        assert isinstance(document.get("error"), str) and document["error"], shown(result)
        if count > 1:
            assert len(document["problems"]) == count, shown(result)
    else:
        assert result.stdout == "", shown(result)
    return count


@dataclass
class Case:
    """One bad workflow file: its content (text, bytes, or a function that makes the file)."""

    content: str | bytes | Callable[[Path], None]
    contains: tuple[str, ...] = ()
    line: int | None = None
    filename: str = "workflow.yaml"
    commands: tuple[str, ...] = COMMANDS
    timeout: float = 60
    problems: int | None = None  # the exact number of problems, when it matters
    all_json: bool = False  # also run every command with --json


@pytest.fixture
def refuse(tmp_path, wfctl_home):
    """Check that every command refuses a Case the same way and that nothing happened."""

    def run(case: Case) -> dict[str, subprocess.CompletedProcess]:
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        marker = tmp_path / "side-effect-ran"
        path = work / case.filename
        if callable(case.content):
            case.content(path)
        elif isinstance(case.content, bytes):
            path.write_bytes(case.content.replace(MARKER.encode(), str(marker).encode()))
        else:
            path.write_text(textwrap.dedent(case.content).replace(MARKER, str(marker)), encoding="utf-8")
        home_before = tree_snapshot(wfctl_home)
        names_before = listing(tmp_path)
        runs = [(command, False) for command in case.commands]
        runs += [(command, True) for command in case.commands if case.all_json]

        def one(run_spec):
            command, json_mode = run_spec
            args = [command, path, *(["--json"] if json_mode else [])]
            if command == "execute":
                args.append("--quiet")
            return run_spec, cli(*args, cwd=work, timeout=case.timeout)

        with ThreadPoolExecutor(max_workers=2) as pool:
            results = dict(pool.map(one, runs))
        counts = {}
        for (command, json_mode), result in results.items():
            counts[(command, json_mode)] = check_report(result, command, path, json_mode=json_mode)
            report = result.stderr
            if command == "validate" and json_mode:  # the same lines, from the JSON problems
                report = "\n".join(f"{p['file']}:{p['line']}: {p['path']}: {p['message']}"
                                   for p in json.loads(result.stdout)["problems"])
            for text in case.contains:
                assert text in report, f"wfctl {command}: {text!r} is not in the report\n" + shown(result)
            if case.line is not None:
                assert re.search(rf"{re.escape(path.name)}:{case.line}\b", report), (
                    f"wfctl {command}: the report does not give line {case.line}\n" + shown(result)
                )
        if case.problems is not None:
            assert set(counts.values()) == {case.problems}, counts
        assert not marker.exists(), "a step ran"
        assert tree_snapshot(wfctl_home) == home_before, (
            f"the data directory changed: {sorted(listing(wfctl_home))}"
        )
        assert listing(tmp_path) == names_before, f"new files: {sorted(listing(tmp_path) - names_before)}"
        return {f"{c}{' --json' if j else ''}": r for (c, j), r in results.items()}

    return run


def wf(body: str, *, side: bool = True, name: str = "bad") -> str:
    """A workflow: `name`, then `steps:` with the side-effect step first, then `body`."""
    return f"name: {name}\nsteps:\n" + (SIDE if side else "") + textwrap.indent(textwrap.dedent(body), "  ")


def json_wf(steps: list, **top) -> str:
    return json.dumps({"name": "bad", **top, "steps": [{"id": "side-effect", "run": "touch MARKER"}, *steps]},
                      indent=1)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _big_file(path: Path) -> None:
    """50 MB: a valid head, then a comment that never ends (written in 1 MiB blocks)."""
    with open(path, "wb") as handle:
        handle.write(b"name: big\nsteps:\n" + SIDE.encode() + b"# ")
        block = b"x" * (1 << 20)
        for _ in range(50):
            handle.write(block)
        handle.write(b"\n")


def _big_string(path: Path) -> None:
    """A 5 MB single string (a description)."""
    path.write_bytes(b"name: big\ndescription: \"" + b"a" * (5 * 1000 * 1000) + b"\"\nsteps:\n" + SIDE.encode())


ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
"""


def _nested_parallel_json(depth: int) -> str:
    """Parallel steps nested `depth` deep, written as text (json.dumps would recurse)."""
    head = "".join(f'{{"id": "p{level}", "type": "parallel", "steps": [' for level in range(depth))
    return '{"name": "deep", "steps": [' + head + '{"id": "leaf", "run": "touch MARKER"}' + "]}" * depth + "]}"


def _nested_loops_yaml(depth: int) -> str:
    """Loops nested `depth` deep: few document levels (one per loop), many step levels."""
    step: dict = {"id": "leaf", "run": "touch MARKER"}
    for level in range(depth):
        step = {"id": f"l{level}", "type": "loop", "items": [1], "step": step}
    return json.dumps({"name": "deep", "steps": [step]})


LONG_ID = "a" * 65

CASES = [
    # A01 malformed YAML/JSON: line and column from the parser's mark.
    pytest.param(Case('name: x\nsteps: [\n  {id: side-effect, run: "touch MARKER"}\n',
                      ("invalid YAML at line 4, column 1",), line=4), id="A01-unclosed-bracket"),
    pytest.param(Case("name: x\nsteps:\n\t- {id: side-effect, run: 'touch MARKER'}\n",
                      ("invalid YAML at line 3", "tabs"), line=3), id="A01-tab-indentation"),
    pytest.param(Case('name: "x\nsteps:\n' + SIDE, ("invalid YAML",)), id="A01-unclosed-quote"),
    pytest.param(Case('{"name": "x",\n "steps": [\n  {"id": "side-effect", "run": "touch MARKER"},\n ]\n}\n',
                      ("invalid JSON at line 4, column 2",), line=4, filename="workflow.json"),
                 id="A01-json-trailing-comma"),
    # A02 nothing to run.
    pytest.param(Case("", ("the file is empty",)), id="A02-empty-file"),
    pytest.param(Case("\n  \n# only a comment\n", ("the file is empty",)), id="A02-only-comments"),
    pytest.param(Case("   \n", ("the file is empty",), filename="workflow.json"), id="A02-empty-json"),
    pytest.param(Case("{}\n", ("the workflow has no steps", "the workflow has no name"), problems=2),
                 id="A02-empty-mapping"),
    pytest.param(Case("name: x\nsteps: []\n", ("the workflow has no steps",), line=2), id="A02-empty-steps"),
    # A03 the wrong shape at the top.
    pytest.param(Case("- name: x\n- steps: []\n", ("the top level must be a mapping", "not a list")),
                 id="A03-top-level-list"),
    pytest.param(Case("hello\n", ("the top level must be a mapping", "not a string")), id="A03-top-level-scalar"),
    pytest.param(Case('{"name": "x", "steps": [{"id": "a", "run": "touch MARKER"}]}\ntrailing garbage\n',
                      ("unexpected text after the end of the JSON document",), line=2, filename="workflow.json"),
                 id="A03-json-trailing-garbage"),
    # A04 duplicates: both places are named.
    pytest.param(Case(wf("""\
        - {id: a, run: "true"}
        - {id: a, run: "true"}
        """), ("duplicate step id 'a'", "steps[1]", "line 4"), line=5, problems=1), id="A04-duplicate-step-ids"),
    pytest.param(Case(wf("""\
        - id: p
          type: parallel
          steps:
            - {id: a, run: "true"}
            - id: c
              type: conditional
              condition: "true"
              then: {id: a, run: "true"}
        """), ("duplicate step id 'a'", "line 7"), line=11), id="A04-duplicate-nested-step-ids"),
    pytest.param(Case(wf("""\
        - id: a
          run: "true"
          id: b
        """), ("duplicate key 'id' at line 6", "already defined at line 4"), line=6), id="A04-duplicate-yaml-keys"),
    pytest.param(Case("name: x\nsteps:\n" + SIDE + "name: y\n", ("duplicate key 'name' at line 4", "line 1"), line=4),
                 id="A04-duplicate-top-level-key"),
    # A05 references to steps, names and fields that do not exist: refused before anything runs.
    pytest.param(Case(wf("""\
        - {id: c, type: conditional, condition: 'steps.nope.status == "completed"', then: {id: t, run: "true"}}
        """), ("there is no step with the id 'nope'",), line=4), id="A05-condition-unknown-step"),
    pytest.param(Case(wf("""\
        - {id: a, run: 'echo {{ steps.nope.output.x }}'}
        """), ("there is no step with the id 'nope'",), line=4), id="A05-template-unknown-step"),
    pytest.param(Case(wf("""\
        - {id: c, type: conditional, condition: nope.passed === true, then: {id: t, run: "true"}}
        """), ("unknown name 'nope'",), line=4), id="A05-condition-unknown-name"),
    pytest.param(Case(wf("""\
        - {id: c, type: conditional, condition: 'steps.side-effect.bogus == 1', then: {id: t, run: "true"}}
        """), ("bogus",), line=4), id="A05-condition-unknown-field-of-steps"),
    # A06 names that are not guaranteed to exist yet.
    pytest.param(Case(wf("""\
        - id: p
          type: parallel
          steps:
            - {id: a, run: "echo 1", output: first}
            - {id: b, run: "true", input: first}
        """), ("'first' is produced by step 'a', which does not always run before 'b'",), line=8),
        id="A06-parallel-sibling-input"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", input: later}
        - {id: b, run: "echo 1", output: later}
        """), ("'later' is produced by step 'b', which does not always run before 'a'",), line=4),
        id="A06-later-step-input"),
    pytest.param(Case(wf("""\
        - {id: c, type: conditional, condition: later.ok == true, then: {id: t, run: "true"}}
        - {id: b, run: "echo 1", output: later}
        """), ("does not always run before",), line=4), id="A06-later-step-in-condition"),
    pytest.param(Case(wf("""\
        - {id: c, type: conditional, condition: 'steps.b.status == "completed"', then: {id: t, run: "true"}}
        - {id: b, run: "true"}
        """), ("'b'",), line=4), id="A06-later-step-by-steps-id"),
    pytest.param(Case(wf("""\
        - id: p
          type: parallel
          steps:
            - {id: a, run: "true"}
            - {id: c, type: conditional, condition: 'steps.a.status == "completed"', then: {id: t, run: "true"}}
        """), ("'a'",), line=8), id="A06-parallel-sibling-by-steps-id"),
    # A07 a cycle cannot be written down: it always reads an output that comes later.
    pytest.param(Case(wf("""\
        - {id: a, run: "true", input: from-b, output: from-a}
        - {id: b, run: "true", input: from-a, output: from-b}
        """), ("'from-b' is produced by step 'b', which does not always run before 'a'",), line=4, problems=1),
        id="A07-two-step-cycle"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", input: mine, output: mine}
        """), ("only produced by step 'a' itself",), line=4), id="A07-self-loop"),
    pytest.param(Case(wf("""\
        - id: l
          type: loop
          items: [1, 2]
          output: results
          step: {id: body, run: "true", input: results}
        """), ("'results' is produced by step 'l', which does not always run before 'body'",), line=8),
        id="A07-cycle-through-loop-body"),
    # A08 wrong types: path, expected type and what was found.
    pytest.param(Case(wf("""\
        - {id: a, run: "true", errorHandling: {strategy: retry, maxRetries: "3"}}
        """), ("steps[1].errorHandling.maxRetries", "non-negative integer", "the string '3'"), line=4),
        id="A08-retries-string"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", errorHandling: {strategy: retry, maxRetries: -1}}
        """), ("steps[1].errorHandling.maxRetries", "the number -1"), line=4), id="A08-retries-negative"),
    pytest.param(Case('{"name": "bad", "steps": [\n {"id": "a", "run": "touch MARKER", "timeout": 1e309}\n]}\n',
                      ("steps[0].timeout", "positive number, not infinity"), line=2, filename="workflow.json"),
                 id="A08-timeout-1e309-json"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", timeout: 1e309}
        """), ("steps[1].timeout", "positive number", "'1e309'"), line=4), id="A08-timeout-1e309-yaml"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", timeout: .inf}
        """), ("steps[1].timeout",), line=4), id="A08-timeout-inf"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", errorHandling: {strategy: retry, delay: .nan}}
        """), ("steps[1].errorHandling.delay", "NaN"), line=4), id="A08-backoff-delay-nan"),
    pytest.param(Case(wf("""\
        - {id: p, type: parallel, steps: {}}
        """), ("steps[1].steps", "non-empty list of steps", "not a mapping"), line=4), id="A08-parallel-steps-mapping"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", timeout: 0}
        """), ("steps[1].timeout", "positive"), line=4), id="A08-timeout-zero"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", timeout: 10s}
        """), ("steps[1].timeout", "the string '10s'"), line=4), id="A08-timeout-with-unit"),
    # A09 YAML 1.1 traps are reported, never coerced.
    pytest.param(Case(wf("""\
        - {id: no, run: "true"}
        """), ("id must be a string, not the boolean false", "quotes"), line=4), id="A09-id-no"),
    pytest.param(Case(wf("""\
        - {id: 012, run: "true"}
        """), ("id must be a string, not the number 10", "quotes"), line=4), id="A09-id-012"),
    pytest.param(Case(wf("""\
        - {id: on, run: "true"}
        """), ("id must be a string, not the boolean true",), line=4), id="A09-id-on"),
    pytest.param(Case("name: 1.10\nsteps:\n" + SIDE, ("name must be a non-empty string, not the number 1.1",), line=1),
                 id="A09-name-1.10"),
    # A10 typos, with a suggestion.
    pytest.param(Case(wf("""\
        - {id: a, run: "true", tiemout: 3}
        """), ("unknown key 'tiemout'", "did you mean 'timeout'?"), line=4), id="A10-step-key-typo"),
    pytest.param(Case(wf("""\
        - {id: a, run: "true", errorHandling: {strategy: retry, maxRetires: 3}}
        """), ("unknown key 'maxRetires'", "did you mean 'maxRetries'?"), line=4), id="A10-retries-typo"),
    pytest.param(Case(wf("""\
        - {id: a, type: paralel, steps: [{id: b, run: "true"}]}
        """), ("unknown step type 'paralel'", "did you mean 'parallel'?"), line=4), id="A10-type-typo"),
    pytest.param(Case("name: x\nstep:\n" + SIDE, ("unknown key 'step'", "did you mean 'steps'?")), id="A10-top-key-typo"),
    # A11 size limits, checked before parsing.
    pytest.param(Case(_big_file, ("limited to 1 MiB",)), id="A11-50MB-file"),
    pytest.param(Case(_big_string, ("limited to 1 MiB",)), id="A11-5MB-string"),
    # A12 the alias bomb: refused at the first anchor, before anything traverses it.
    pytest.param(Case(ALIAS_BOMB, ("YAML aliases are not allowed",), line=1, timeout=10), id="A12-alias-bomb"),
    pytest.param(Case(wf("""\
        - {id: a, run: &cmd "true"}
        - {id: b, run: *cmd}
        """), ("YAML aliases are not allowed",), line=4, timeout=10), id="A12-single-alias"),
    # A13 tags that would construct objects.
    pytest.param(Case(wf("""\
        - {id: a, run: !!python/object/apply:os.system ["touch pwned"]}
        """), ("the YAML tag '!!python/object/apply:os.system'", "not allowed"), line=4), id="A13-python-tag-in-step"),
    pytest.param(Case('!!python/object/apply:os.system ["touch pwned"]\n', ("not allowed",), line=1),
                 id="A13-python-tag-document"),
    pytest.param(Case("name: !!python/name:os.system x\nsteps:\n" + SIDE, ("not allowed",), line=1),
                 id="A13-python-name-tag"),
    # A14 nesting.
    pytest.param(Case("[" * 20000, ("nesting is too deep",)), id="A14-20000-brackets-yaml"),
    pytest.param(Case("[" * 20000, ("nesting is too deep",), filename="workflow.json"), id="A14-20000-brackets-json"),
    pytest.param(Case(_nested_parallel_json(1000), ("nesting is too deep",), filename="workflow.json"),
                 id="A14-parallel-1000-deep"),
    pytest.param(Case(_nested_loops_yaml(40), ("nested more than 32 levels deep",)), id="A14-loops-40-deep"),
    # A15 bytes and characters.
    pytest.param(Case(b"name: x\nsteps:\n  - {id: a\xff, run: 'touch MARKER'}\n", ("not valid UTF-8", "line 3"), line=3),
                 id="A15-invalid-utf8"),
    pytest.param(Case(b"name: x\x00\nsteps:\n" + SIDE.encode(), ("NUL character",), line=1), id="A15-nul"),
    pytest.param(Case(("name: x\nsteps:\n" + SIDE).encode("utf-16"), ("UTF-16",), line=1), id="A15-utf16"),
    pytest.param(Case(wf("""\
        - {id: "abc\u202egpj.exe", run: "true"}
        """), ("steps[1].id", "may only contain"), line=4), id="A15-rtl-override-in-id"),
    pytest.param(Case(wf("""\
        - {id: "a\u200bb", run: "true"}
        """), ("steps[1].id", "may only contain"), line=4), id="A15-zero-width-in-id"),
    pytest.param(Case(wf("""\
        - {id: "cafe\u0301", run: "true"}
        """), ("steps[1].id", "may only contain"), line=4), id="A15-nfd-lookalike-in-id"),
    pytest.param(Case(wf("""\
        - {id: "\\x1b[31mred", run: "true"}
        """), ("steps[1].id", "may only contain"), line=4), id="A15-escape-sequence-in-id"),
    pytest.param(Case("name: x\nsteps:\n  - {id: a\x1b[31m, run: 'true'}\n", ("control character U+001B",), line=3),
                 id="A15-raw-escape-character"),
    # A16 ids that would be paths.
    *[
        pytest.param(Case(wf(f"""\
            - {{id: {json.dumps(bad)}, run: "true"}}
            """), ("steps[1].id", "may only contain"), line=4), id=f"A16-step-id-{label}")
        for label, bad in [("dotdot-slash", "../../x"), ("slash", "a/b"), ("dot", "."), ("dotdot", ".."),
                           ("absolute", "/abs"), ("windows", "C:\\x"), ("65-chars", LONG_ID), ("empty", ""),
                           ("space", "a b"), ("control", "a\x01b"), ("newline", "a\nb")]
    ],
    pytest.param(Case(wf("""\
        - {id: a, run: "true", output: ../x}
        """), ("steps[1].output",), line=4), id="A16-output-name-path"),
    pytest.param(Case("name: x\nagents:\n  ../x: {run: 'true'}\nsteps:\n" + SIDE, ("agents",), line=3),
                 id="A16-agent-name-path"),
    pytest.param(Case("name: x\nteams:\n  a/b: {members: [echo]}\nsteps:\n" + SIDE, ("teams",), line=3),
                 id="A16-team-name-path"),
    # A18 expressions that are not expressions of the language.
    *[
        pytest.param(Case(wf(f"""\
            - {{id: c, type: conditional, condition: {json.dumps(source)}, then: {{id: t, run: "true"}}}}
            """), ("steps[1].condition", "invalid expression in condition", *words), line=4), id=f"A18-{label}")
        for label, source, words in [
            ("dangling-operator", "a.b ===", ("unexpected end",)),
            ("lone-paren", "(", ()),
            ("unbalanced", "((ok)", ("unbalanced",)),
            ("import", '__import__("os").system("touch MARKER")', ("unknown function '__import__'",)),
            ("dunder-field", "ok.__class__", ("reserved",)),
            ("arithmetic", "1+" * 10000 + "1", ("too long",)),
            ("100KB", "ok == '" + "x" * 100_000 + "'", ("too long",)),
            ("deep-parens", "(" * 200 + "ok" + ")" * 200, ("nest",)),
            ("python-lambda", "lambda: 1", ()),
            ("semicolon", "ok; touch", ()),
        ]
    ],
    pytest.param(Case(wf("""\
        - {id: a, run: 'echo {{ __import__("os").system("touch MARKER") }}'}
        """), ("steps[1].run", "invalid template", "__import__"), line=4), id="A18-template-import"),
    pytest.param(Case(wf("""\
        - {id: a, run: 'echo {{ unclosed'}
        """), ("steps[1].run", "unclosed"), line=4), id="A18-template-unclosed"),
    pytest.param(Case(wf("""\
        - {id: a, run: 'echo {{ }}'}
        """), ("steps[1].run", "empty"), line=4), id="A18-template-empty"),
    # A20 two steps writing the same state name.
    pytest.param(Case(wf("""\
        - {id: a, run: "echo 1", output: result}
        - {id: b, run: "echo 2", output: result}
        """), ("colliding output names", "'result'"), line=5, problems=1), id="A20-same-output-twice"),
    pytest.param(Case(wf("""\
        - id: p
          type: parallel
          steps:
            - {id: a, run: "echo 1", output: result}
            - {id: b, run: "echo 2", output: result}
        """), ("colliding output names",), line=8), id="A20-parallel-siblings-same-output"),
    # A21 unknown agents and teams (create registers a workflow whose agents may be added
    # later, so only validate and execute refuse it).
    pytest.param(Case(wf("""\
        - {id: a, agent: nobody, task: hi}
        """), ("unknown agent 'nobody'", "echo"), line=4, commands=("validate", "execute")), id="A21-unknown-agent"),
    pytest.param(Case(wf("""\
        - {id: a, agent: ech, task: hi}
        """), ("unknown agent 'ech'", "did you mean 'echo'?"), line=4, commands=("validate", "execute")),
        id="A21-unknown-agent-typo"),
    pytest.param(Case(wf("""\
        - {id: a, type: team, teamId: ghosts, task: hi}
        """), ("unknown team 'ghosts'",), line=4, commands=("validate", "execute")), id="A21-unknown-team"),
    pytest.param(Case(wf("""\
        - {id: a, run: "false", errorHandling: {escalateOnFailure: true, escalateTo: nobody}}
        """), ("unknown agent 'nobody'",), line=4, commands=("validate", "execute")), id="A21-unknown-escalation-agent"),
    pytest.param(Case("name: x\nteams:\n  t: {members: [echo, nobody]}\nsteps:\n" + SIDE
                      + "  - {id: a, type: team, teamId: t, task: hi}\n",
                      ("unknown agent 'nobody'",), line=3, commands=("validate", "execute")),
                 id="A21-unknown-team-member"),
    # A22 not a readable regular file.
    pytest.param(Case(lambda path: None, ("does not exist",)), id="A22-missing-file"),
    pytest.param(Case(lambda path: None, ("does not exist",), filename="no-such-dir/workflow.yaml"),
                 id="A22-missing-directory"),
    pytest.param(Case(_directory, ("directory",)), id="A22-directory"),
    pytest.param(Case(_fifo, ("FIFO",), timeout=10), id="A22-fifo"),
    # A23 duplicate JSON keys: both lines.
    pytest.param(Case('{\n "name": "a",\n "steps": [{"id": "s", "run": "touch MARKER"}],\n "name": "b"\n}\n',
                      ("duplicate key 'name'", "line 2"), line=4, filename="workflow.json"), id="A23-duplicate-json-key"),
    pytest.param(Case('{"name": "a", "steps": [\n {"id": "s",\n  "run": "touch MARKER",\n  "id": "t"}\n]}\n',
                      ("duplicate key 'id'", "line 2"), line=4, filename="workflow.json"),
                 id="A23-duplicate-json-key-nested"),
    pytest.param(Case('{"name": "a", "steps": [{"id": "s", "run": "touch MARKER", "timeout": NaN}]}\n',
                      ("NaN is not a valid JSON number",), line=1, filename="workflow.json"), id="A23-json-nan"),
]


def _json_for_first_of_each_row(cases: list) -> list:
    """The first case of each catalogue row checks --json with every command, the others
    with none (each wfctl run costs a process start)."""
    seen: set[str] = set()
    for param in cases:
        row = param.id.split("-", 1)[0]
        param.values[0].all_json = row not in seen
        seen.add(row)
    return cases


@pytest.mark.parametrize("case", _json_for_first_of_each_row(CASES))
def test_bad_workflow_file_is_refused_by_every_command(case, refuse):
    refuse(case)


# -- rows that need more than the common check --------------------------------------------------
def test_A11_size_limit_keeps_memory_bounded(tmp_path):
    """The 50 MB file is refused from its size: the process never grows by the file's size."""
    path = tmp_path / "big.yaml"
    _big_file(path)
    probe = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(['wfctl', 'validate', sys.argv[1]], capture_output=True)\n"
        "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True, timeout=60)
    code, max_rss_kib = map(int, out.stdout.split())
    assert code == 2
    assert max_rss_kib < 40 * 1024 + 60 * 1024, f"wfctl validate used {max_rss_kib} KiB for a 50 MB file"


def test_A13_python_tag_runs_nothing(tmp_path):
    """`!!python/object/apply:os.system ["touch pwned"]` is refused and runs nothing (cwd = tmp_path)."""
    path = tmp_path / "pwn.yaml"
    path.write_text('name: x\nsteps:\n  - id: a\n    run: !!python/object/apply:os.system ["touch pwned"]\n')
    for command in COMMANDS:
        result = cli(command, path, cwd=tmp_path)
        assert result.returncode == 2, shown(result)
        assert not (tmp_path / "pwned").exists()


def test_A15_bom_is_accepted(tmp_path, wfctl_home):
    """A UTF-8 BOM is not an error: the file validates and runs."""
    marker = tmp_path / "ran"
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: bom\nsteps:\n  - {id: a, run: 'touch " + str(marker).encode() + b"'}\n")
    assert cli("validate", path).returncode == 0
    result = cli("execute", path, "--quiet")
    assert result.returncode == 0, shown(result)
    assert marker.exists()


def test_A15_non_ascii_text_round_trips_unchanged(tmp_path, wfctl_home):
    """Descriptions, names, tasks and inputs in any script come back byte for byte in
    `show --json`, the execution and the trace (no escaping, no normalisation)."""
    description = "Grüße — 日本語 — cafe\u0301 vs caf\u00e9 — \u202eabc\u202c — zero\u200bwidth — 🎉 — עברית"
    task = "tâche ✓ \u202e 🚀 e\u0301"
    document = {
        "name": "unicode ✓ عربى",
        "description": description,
        "category": "catégorie",
        "steps": [
            {"id": "a", "description": description, "task": task, "run": "printf '%s' \"$WFCTL_TASK\"", "output": "o"},
        ],
    }
    path = tmp_path / "unicode.json"
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    given = {"note": "ünïcödé ✓ \u202e 🎉 e\u0301"}
    result = cli("execute", path, "--json", "--input", json.dumps(given, ensure_ascii=False))
    assert result.returncode == 0, shown(result)
    execution = json.loads(result.stdout)
    assert execution["steps"][0]["output"] == {"o": task}
    assert execution["input"] == given
    shown_wf = json.loads(cli("show", document["name"], "--json").stdout)
    assert shown_wf["name"] == document["name"]
    assert shown_wf["description"] == description
    assert shown_wf["category"] == "catégorie"
    assert shown_wf["steps"][0]["description"] == description
    assert shown_wf["steps"][0]["task"] == task
    trace = json.loads(cli("trace", document["name"], execution["executionId"], "--json").stdout)
    assert trace["response"]["input"] == given
    assert trace["response"]["stages"][0]["output"] == {"o": task}
    # The files on disk hold the characters themselves (UTF-8), as jq would show them.
    raw = b"".join(p.read_bytes() for p in wfctl_home.rglob("*.json"))
    assert description.encode() in raw and task.encode() in raw


def test_A19_missing_field_at_run_time_fails_the_step_naming_the_field(tmp_path, wfctl_home):
    """A condition on a field the step did not output: the step errors (exit 1), never false."""
    then_marker, else_marker = tmp_path / "then-ran", tmp_path / "else-ran"
    path = tmp_path / "runtime.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: runtime
        steps:
          - {{id: tests, run: "echo '{{\\"other\\": 1}}'", output: test-results}}
          - id: gate
            type: conditional
            condition: test-results.passed === true
            then: {{id: deploy, run: "touch {then_marker}"}}
            else: {{id: fix, run: "touch {else_marker}"}}
        """))
    assert cli("validate", path).returncode == 0
    result = cli("execute", path, "--json")
    assert result.returncode == 1, shown(result)
    assert "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    assert document["status"] == "failed"
    gate = document["steps"][1]
    assert gate["status"] == "failed"
    assert "passed" in gate["error"]["message"]
    assert "test-results" in gate["error"]["message"]
    assert document["error"]["step"] == "gate"
    assert not then_marker.exists() and not else_marker.exists()
    human = cli("execute", path)
    assert human.returncode == 1
    assert "'passed'" in human.stderr and "Traceback" not in human.stderr


def test_A20_similar_output_names_stay_distinct(tmp_path):
    """`a-b` and `a_b` do not collide: outputs never become environment variable names
    (templates use WFCTL_T_n), so both values arrive intact."""
    path = tmp_path / "names.yaml"
    path.write_text(textwrap.dedent("""\
        name: names
        steps:
          - {id: a, run: "echo one", output: a-b}
          - {id: b, run: "echo two", output: a_b}
          - {id: c, run: 'printf "%s %s" "{{ a-b }}" "{{ a_b }}"', output: both}
        """))
    result = cli("execute", path, "--json")
    assert result.returncode == 0, shown(result)
    assert json.loads(result.stdout)["steps"][2]["output"] == {"both": "one two"}


def test_A21_python_agent_that_fails_to_import_is_an_error_of_the_step(tmp_path):
    """A python agent whose module raises on import: the step errors at run time, naming the agent."""
    (tmp_path / "badmod.py").write_text('raise RuntimeError("boom at import")\n')
    path = tmp_path / "pyagent.yaml"
    path.write_text(textwrap.dedent("""\
        name: pyagent
        agents:
          importer: {python: "badmod:run"}
        steps:
          - {id: a, agent: importer, task: hi}
        """))
    assert cli("validate", path, cwd=tmp_path).returncode == 0
    result = cli("execute", path, "--json", cwd=tmp_path)
    assert result.returncode == 1, shown(result)
    assert "Traceback" not in result.stderr
    document = json.loads(result.stdout)
    error = document["steps"][0]["error"]
    assert error["kind"] == "error"
    assert "boom at import" in error["message"]
    assert "importer" in error["message"], f"the agent's name is not in {error['message']!r}"


# -- A17: bad ids on the command line -------------------------------------------------------------
BAD_IDS = {
    "dotdot": "../../etc",
    "slash": "a/b",
    "dot": ".",
    "dotdot-only": "..",
    "absolute": "/etc/passwd",
    "control": "exec_\x01abcd",
    "escape-sequence": "exec_\x1b[31mred",
    "rtl-override": "exec_\u202eabcd",
    "too-long": "exec_" + "a" * 300,
    "empty": "",
    "newline": "exec_abcd\nexec_efgh",
}


@pytest.fixture
def one_execution(tmp_path):
    """A finished execution (and its workflow) to aim bad STEP and TRACE arguments at."""
    path = tmp_path / "one.yaml"
    path.write_text("name: one\nsteps:\n  - {id: only, run: 'false'}\n")
    result = cli("execute", path, "--json")
    assert result.returncode == 1, shown(result)
    return json.loads(result.stdout)


def _a17_commands(bad: str, good_exec: str) -> list[tuple[list[str], tuple[int, ...]]]:
    """(arguments, accepted exit codes). Execution and step ids have a fixed form
    (exit 2); a workflow may be named by any text, so a bad one is simply not found (3);
    a trace is found by its id or its uuid, and any other text is a trace not found (3)."""
    return [
        (["execution", bad], (2,)),
        (["logs", bad], (2,)),
        (["logs", good_exec, bad], (2,)),
        (["cancel", bad], (2,)),
        (["pause", bad], (2,)),
        (["resume", bad], (2,)),
        (["retry", bad, "only"], (2,)),
        (["retry", good_exec, bad], (2,)),
        (["watch", bad], (2,)),
        (["trace", "one", bad], (3,)),
        (["trace", bad, good_exec], (2, 3)),
        (["traces", bad], (2, 3)),
        (["show", bad], (2, 3)),
        (["delete", bad], (2, 3)),
        (["executions", "--workflow", bad], (2, 3)),
    ]


@pytest.mark.parametrize("label", list(BAD_IDS))
def test_A17_bad_ids_on_the_command_line(label, tmp_path, wfctl_home, one_execution):
    """Every command taking EXEC, WF, STEP or TRACE: exit 2 (3 for a workflow name, which
    may be any text), one line that does not echo control characters raw, nothing written
    in the data directory, nothing created anywhere under or beside the test directory."""
    bad = BAD_IDS[label]
    cwd = tmp_path / "a" / "b"  # so `../../etc` would land inside tmp_path
    cwd.mkdir(parents=True)
    home_before = tree_snapshot(wfctl_home)
    names_before = listing(tmp_path)
    outside_before = set(os.listdir(tmp_path.parent))
    runs = [
        (args, codes, json_mode)
        for args, codes in _a17_commands(bad, one_execution["executionId"])
        for json_mode in ((False, True) if label in ("dotdot", "control") else (False,))
    ]

    def one(run_spec):
        args, codes, json_mode = run_spec
        full = [*args, *(["--json"] if json_mode else [])]
        return run_spec, full, cli(*full, cwd=cwd, timeout=30)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, runs))
    for (args, codes, json_mode), full, result in results:
        where = f"wfctl {' '.join(map(repr, full))}: "
        assert result.returncode in codes, where + shown(result)
        assert "Traceback" not in result.stderr + result.stdout, where + shown(result)
        assert not _CONTROL.search(result.stderr), where + f"raw control character echoed: {result.stderr!r}"
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("wfctl: error: "), where + shown(result)
        if json_mode:
            assert "error" in json.loads(result.stdout), where + shown(result)
        else:
            assert result.stdout == "", where + shown(result)
    assert tree_snapshot(wfctl_home) == home_before
    assert listing(tmp_path) == names_before
    assert set(os.listdir(tmp_path.parent)) == outside_before


def _without_locks(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in snapshot.items() if not k.endswith("lock")}


def test_A17_well_formed_unknown_ids_are_not_found(tmp_path, wfctl_home, one_execution):
    """exit 3, one line. (`retry EXEC unknown-step` rewrites the execution's lock file with
    its own pid while it looks: lock files are left out of the comparison.)"""
    unknown = "exec_0000000000000000"
    home_before = tree_snapshot(wfctl_home)
    for args in (["execution", unknown], ["logs", unknown], ["cancel", unknown], ["pause", unknown],
                 ["resume", unknown], ["retry", unknown, "only"], ["watch", unknown], ["trace", "one", unknown],
                 ["show", "wf_0000000000000000"], ["traces", "wf_0000000000000000"],
                 ["delete", "wf_0000000000000000"], ["logs", one_execution["executionId"], "no-such-step"],
                 ["retry", one_execution["executionId"], "no-such-step"]):
        result = cli(*args, timeout=30)
        assert result.returncode == 3, f"wfctl {' '.join(args)}: " + shown(result)
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert _without_locks(tree_snapshot(wfctl_home)) == _without_locks(home_before)
    assert set(tree_snapshot(wfctl_home)) == set(home_before)


# -- --input and option values ----------------------------------------------------------------------
INPUT_WORKFLOW = """\
name: typed
inputs:
  count: {type: integer, required: true}
steps:
  - {id: side-effect, run: "touch MARKER"}
"""

BAD_INPUTS = {
    "not-json": ("{count: 1}", "--input is not valid JSON"),
    "not-an-object": ("[1, 2]", "must be a JSON object"),
    "a-string": ('"count"', "must be a JSON object"),
    "wrong-type": ('{"count": "three"}', "input 'count' must be an integer"),
    "missing-required": ("{}", "input 'count'"),
    "undeclared": ('{"count": 1, "cuont": 2}', "'cuont' is not declared"),
    "missing-file": ("@does-not-exist.json", "cannot read --input file"),
}


@pytest.mark.parametrize("by_name", [False, True], ids=["file", "registered-name"])
@pytest.mark.parametrize("label", list(BAD_INPUTS))
def test_bad_input_option_is_refused(label, by_name, tmp_path, wfctl_home):
    """exit 2 before anything is written or run, for a file and for a registered workflow."""
    given, words = BAD_INPUTS[label]
    marker = tmp_path / "side-effect-ran"
    path = tmp_path / "typed.yaml"
    path.write_text(INPUT_WORKFLOW.replace(MARKER, str(marker)))
    if by_name:
        assert cli("create", path).returncode == 0
    target = "typed" if by_name else path
    home_before = tree_snapshot(wfctl_home)
    for json_mode in (False, True):
        result = cli("execute", target, "--input", given, "--quiet", *(["--json"] if json_mode else []), cwd=tmp_path)
        assert result.returncode == 2, shown(result)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.splitlines()) == 1, shown(result)
        assert words in result.stderr, shown(result)
        if json_mode:
            assert "error" in json.loads(result.stdout)
        else:
            assert result.stdout == ""
    assert not marker.exists()
    assert tree_snapshot(wfctl_home) == home_before, f"written: {sorted(listing(wfctl_home))}"


@pytest.mark.parametrize(
    "given",
    ['{"x": NaN}', '{"x": Infinity}', '{"x": -Infinity}', '{"x": 1e999}', '{"x": [1, {"y": NaN}]}',
     '{"x": 1, "x": 2}'],
    ids=["nan", "infinity", "minus-infinity", "overflow-1e999", "nested-nan", "duplicate-key"],
)
def test_input_that_is_not_plain_json_is_refused(given, tmp_path, wfctl_home):
    """--input is JSON in the strict sense, like workflow files (A23): no NaN/Infinity (which
    would be written into execution.json as invalid JSON that jq refuses) and no duplicate keys."""
    marker = tmp_path / "ran"
    path = tmp_path / "untyped.yaml"
    path.write_text(f"name: untyped\nsteps:\n  - {{id: a, input: x, run: 'touch {marker}'}}\n")
    home_before = tree_snapshot(wfctl_home)
    result = cli("execute", path, "--input", given, "--quiet")
    assert result.returncode == 2, shown(result)
    assert len(result.stderr.splitlines()) == 1 and "--input" in result.stderr, shown(result)
    assert not marker.exists()
    assert tree_snapshot(wfctl_home) == home_before


def test_input_from_stdin_that_is_not_json(tmp_path, wfctl_home):
    path = tmp_path / "typed.yaml"
    path.write_text(INPUT_WORKFLOW.replace(MARKER, str(tmp_path / "ran")))
    result = cli("execute", path, "--input", "-", stdin="not json at all")
    assert result.returncode == 2, shown(result)
    assert "standard input is not valid JSON" in result.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["execute", "{wf}", "--priority", "urgent"], "--priority must be one of low, normal, high"),
        (["list", "--size", "0"], "--size must be between 1 and 100"),
        (["list", "--size", "101"], "--size must be between 1 and 100"),
        (["list", "--page", "0"], "--page starts at 1"),
        (["list", "--limit", "0"], "--limit must be between 1 and 100"),
        (["list", "--limit", "5", "--offset", "-1"], "--offset must be 0 or more"),
        (["list", "--status", "bogus"], "--status must be one of draft, active"),
        (["traces", "opts", "--size", "0"], "--size must be between 1 and 100"),
        (["executions", "--limit", "0"], "--limit must be 1 or more"),
        (["prune", "--older-than", "soon"], "--older-than must look like"),
        (["graph", "opts", "--format", "png"], "--format must be mermaid or dot"),
    ],
    ids=["priority-urgent", "size-0", "size-101", "page-0", "limit-0", "offset-negative", "status-bogus",
         "traces-size-0", "executions-limit-0", "prune-age", "graph-format"],
)
def test_bad_option_values_exit_2(args, words, tmp_path, wfctl_home):
    marker = tmp_path / "ran"
    path = tmp_path / "opts.yaml"
    path.write_text(f"name: opts\nsteps:\n  - {{id: a, run: 'touch {marker}'}}\n")
    assert cli("create", path).returncode == 0
    home_before = tree_snapshot(wfctl_home)
    result = cli(*[str(path) if a == "{wf}" else a for a in args])
    assert result.returncode == 2, shown(result)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1 and words in result.stderr, shown(result)
    assert result.stdout == ""
    assert not marker.exists()
    assert tree_snapshot(wfctl_home) == home_before
