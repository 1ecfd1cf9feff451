"""loader.py: reading workflow files safely (reliability.md §3.3, catalogue A01-A04, A09, A11-A15, A22-A23)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from wfctl.errors import ExitCode, WorkflowInvalid
from wfctl.loader import MAX_DEPTH, MAX_FILE_BYTES, child_path, load_document, parse_text
from wfctl.validate import validate_document

ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
"""


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def fails(path: Path) -> WorkflowInvalid:
    """Load a file that must be refused; return the error (it always holds exactly one problem)."""
    with pytest.raises(WorkflowInvalid) as info:
        load_document(path)
    err = info.value
    assert err.exit_code == ExitCode.INVALID
    assert len(err.problems) == 1, err.problems
    assert err.problems[0].file == str(path)
    return err


# -- reading the file ---------------------------------------------------------------------------
def test_missing_file(tmp_path):
    err = fails(tmp_path / "nope.yaml")
    assert "does not exist" in err.problems[0].message


def test_missing_parent_is_missing_too(tmp_path):
    write(tmp_path, "plain", "x")
    err = fails(tmp_path / "plain" / "wf.yaml")
    assert "does not exist" in err.problems[0].message


def test_directory(tmp_path):
    (tmp_path / "wf.yaml").mkdir()
    err = fails(tmp_path / "wf.yaml")
    assert "directory" in err.problems[0].message


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "wf.yaml"
    os.mkfifo(fifo)
    outcome: dict = {}

    def load() -> None:
        try:
            load_document(fifo)
        except WorkflowInvalid as err:
            outcome["error"] = err

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=5)
    if thread.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("load_document blocked on a FIFO")
    assert "FIFO" in outcome["error"].problems[0].message
    assert "regular file" in outcome["error"].problems[0].message


def test_huge_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: 50 MiB of NULs that are never read
    started = time.monotonic()
    err = fails(path)
    assert time.monotonic() - started < 1
    assert err.problems[0].message == "the file is 52428800 bytes; workflow files are limited to 1 MiB"


def test_limit_is_exactly_one_mib(tmp_path):
    body = "name: x\nsteps: []\n"
    padding = "#" * (MAX_FILE_BYTES - len(body) - 1) + "\n"
    path = write(tmp_path, "ok.yaml", body + padding)
    assert path.stat().st_size == MAX_FILE_BYTES
    doc, _ = load_document(path)
    assert doc == {"name": "x", "steps": []}
    write(tmp_path, "big.yaml", body + padding + "\n")
    assert "limited to 1 MiB" in fails(tmp_path / "big.yaml").problems[0].message


def test_utf8_bom_is_stripped(tmp_path):
    path = write(tmp_path, "wf.yaml", b"\xef\xbb\xbfname: x\nsteps: []\n")
    doc, lines = load_document(path)
    assert doc == {"name": "x", "steps": []}
    assert lines["steps"] == 2
    json_path = write(tmp_path, "wf.json", b'\xef\xbb\xbf{"name": "x"}')
    assert load_document(json_path)[0] == {"name": "x"}


def test_invalid_utf8_names_the_place(tmp_path):
    path = write(tmp_path, "wf.yaml", b"name: x\ndescription: caf\xe9\n")
    problem = fails(path).problems[0]
    assert problem.line == 2
    assert "not valid UTF-8" in problem.message
    assert "0xe9" in problem.message
    assert "line 2, column 17" in problem.message
    assert "byte offset 24" in problem.message


def test_utf16_is_named(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: x\n".encode("utf-16"))
    assert "UTF-16" in fails(path).problems[0].message


def test_nul_character(tmp_path):
    path = write(tmp_path, "wf.yaml", b"name: x\nsteps: [a\x00]\n")
    problem = fails(path).problems[0]
    assert "NUL" in problem.message
    assert problem.line == 2
    assert "column 10" in problem.message


def test_other_control_characters_in_yaml(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: x\ndescription: a\x07b\n")
    problem = fails(path).problems[0]
    assert "U+0007" in problem.message
    assert problem.line == 2


# -- YAML safety --------------------------------------------------------------------------------
def test_duplicate_yaml_keys_name_both_lines(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: a\nsteps:\n  - id: x\n    run: echo\n    run: other\n")
    problem = fails(path).problems[0]
    assert problem.message == "duplicate key 'run' at line 5; it is already defined at line 4"
    assert problem.path == "steps[0].run"
    assert problem.line == 5


def test_alias_bomb_fails_fast(tmp_path):
    path = write(tmp_path, "bomb.yaml", ALIAS_BOMB)
    started = time.monotonic()
    problem = fails(path).problems[0]
    assert time.monotonic() - started < 1
    assert "YAML aliases are not allowed" in problem.message
    assert problem.line == 1


def test_alias_is_refused(tmp_path):
    # An alias whose anchor was never defined still must not get past the loader.
    path = write(tmp_path, "wf.yaml", "name: x\nsteps: *nothing\n")
    with pytest.raises(WorkflowInvalid) as info:
        load_document(path)
    assert info.value.problems[0].line == 2


def test_anchor_alone_is_refused(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: x\nsteps: &s []\n")
    problem = fails(path).problems[0]
    assert "YAML aliases are not allowed" in problem.message
    assert "&s" in problem.message
    assert problem.path == "steps"


def test_python_tag_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "wf.yaml", 'name: x\nsteps: !!python/object/apply:os.system ["touch pwned"]\n')
    problem = fails(path).problems[0]
    assert "!!python/object/apply:os.system" in problem.message
    assert "not allowed" in problem.message
    assert problem.line == 2
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("value", ["!foo bar", "!!binary aGVsbG8=", "!!set {a, b}", "!!timestamp 2024-01-01"])
def test_other_tags_are_refused(tmp_path, value):
    path = write(tmp_path, "wf.yaml", f"name: x\ndescription: {value}\n")
    problem = fails(path).problems[0]
    assert "YAML tag" in problem.message
    assert problem.path == "description"


def test_standard_tags_are_plain_values(tmp_path):
    path = write(tmp_path, "wf.yaml", 'name: !!str 123\ntimeout: !!float "5"\nx: ! 12\n')
    doc, _ = load_document(path)
    assert doc == {"name": "123", "timeout": 5.0, "x": "12"}


def test_merge_keys_are_refused(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: x\nerrorHandling:\n  <<: {strategy: retry}\n")
    problem = fails(path).problems[0]
    assert "merge keys" in problem.message
    assert problem.line == 3


def test_yaml_1_1_traps_are_not_coerced_back(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: x\nsteps:\n  - id: no\n    run: echo\n")
    doc, lines = load_document(path)
    assert doc["steps"][0]["id"] is False  # the safe resolver's reading, kept as it is
    problems = validate_document(doc, file=str(path), lines=lines)
    assert [(p.path, p.line) for p in problems] == [("steps[0].id", 3)]
    assert "id must be a string, not the boolean false" in problems[0].message
    assert "quotes" in problems[0].message


def test_scalars_use_the_safe_resolver(tmp_path):
    path = write(tmp_path, "wf.yaml", "a: 012\nb: 1.10\nc: ~\nd: yes\ne: '3'\nf: 2024-01-01\n")
    doc, _ = load_document(path)
    assert doc == {"a": 10, "b": 1.1, "c": None, "d": True, "e": "3", "f": "2024-01-01"}


def test_keys_stay_text(tmp_path):
    # `on` would be True under YAML 1.1; notifications.on must stay a string key.
    path = write(tmp_path, "wf.yaml", "notifications:\n  on: [failed]\n  1: x\n")
    doc, _ = load_document(path)
    assert doc == {"notifications": {"on": ["failed"], "1": "x"}}


def test_complex_keys_are_refused(tmp_path):
    path = write(tmp_path, "wf.yaml", "? [a, b]\n: 1\n")
    assert "cannot be a mapping key" in fails(path).problems[0].message


def test_second_document_is_refused(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: a\n---\nname: b\n")
    problem = fails(path).problems[0]
    assert "second YAML document" in problem.message
    assert problem.line == 2


@pytest.mark.parametrize("name", ["deep.yaml", "deep.json"])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path, name):
    path = write(tmp_path, name, "[" * 20000)
    problem = fails(path).problems[0]
    assert "nesting is too deep" in problem.message
    assert problem.line == 1


def test_nesting_up_to_the_limit_loads(tmp_path):
    path = write(tmp_path, "wf.yaml", "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")
    doc, _ = load_document(path)
    depth, value = 0, doc["a"]
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    assert depth == MAX_DEPTH - 1
    write(tmp_path, "over.yaml", "a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n")
    assert "nesting is too deep" in fails(tmp_path / "over.yaml").problems[0].message


def test_unclosed_bracket_gives_line_and_column(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: x\nsteps:\n  - id: a\n    run: [echo, hi\n  - id: b\n")
    problem = fails(path).problems[0]
    assert problem.line == 5
    assert problem.message.startswith("invalid YAML at line 5, column 7:")
    assert "starts at line 4" in problem.message
    assert str(fails(path)).startswith(f"{path}:5: invalid YAML")


def test_tab_indentation(tmp_path):
    path = write(tmp_path, "wf.yaml", "name: x\nsteps:\n\t- id: a\n")
    problem = fails(path).problems[0]
    assert problem.line == 3
    assert "line 3, column 1" in problem.message
    assert "tabs" in problem.message


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n- b\n", "a list"), ("just text\n", "a string"), ("42\n", "a number"), ("~\n", "null")],
)
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    problem = fails(write(tmp_path, "wf.yaml", text)).problems[0]
    assert problem.message == f"the top level must be a mapping with name and steps, not {kind}"


@pytest.mark.parametrize("name", ["empty.yaml", "empty.json"])
def test_empty_file(tmp_path, name):
    problem = fails(write(tmp_path, name, "\n# nothing\n" if name.endswith("yaml") else "  \n")).problems[0]
    assert "empty" in problem.message


# -- JSON ---------------------------------------------------------------------------------------
def test_duplicate_json_keys_name_both_lines(tmp_path):
    path = write(tmp_path, "wf.json", '{\n  "name": "a",\n  "steps": [],\n  "name": "b"\n}\n')
    problem = fails(path).problems[0]
    assert problem.message == "duplicate key 'name' at line 4; it is already defined at line 2"
    assert problem.line == 4


def test_duplicate_json_keys_in_a_nested_object(tmp_path):
    path = write(tmp_path, "wf.json", '{"steps": [{"id": "a",\n "id": "b"}]}')
    problem = fails(path).problems[0]
    assert "duplicate key 'id'" in problem.message
    assert problem.path == "steps[0].id"


def test_json_trailing_garbage(tmp_path):
    path = write(tmp_path, "wf.json", '{"name": "x", "steps": []}\n}garbage')
    problem = fails(path).problems[0]
    assert problem.line == 2
    assert problem.message == "invalid JSON at line 2, column 1: unexpected text after the end of the JSON document"


def test_json_syntax_error_position(tmp_path):
    path = write(tmp_path, "wf.json", '{\n  "name": "x",\n  "steps": [,]\n}')
    problem = fails(path).problems[0]
    assert problem.line == 3
    assert problem.message.startswith("invalid JSON at line 3, column 13:")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_non_finite_constants(tmp_path, constant):
    path = write(tmp_path, "wf.json", '{"name": "x",\n "timeout": %s}' % constant)
    problem = fails(path).problems[0]
    assert f"{constant} is not a valid JSON number" in problem.message
    assert problem.line == 2


def test_json_lines_come_from_the_yaml_reader(tmp_path):
    path = write(tmp_path, "wf.json", '{\n\t"name": "x",\n\t"steps": [\n\t\t{"id": "a", "run": "echo"}\n\t]\n}\n')
    doc, lines = load_document(path)
    assert doc == {"name": "x", "steps": [{"id": "a", "run": "echo"}]}
    assert lines["name"] == 2
    assert lines["steps[0].run"] == 4


def test_json_lines_survive_characters_yaml_reads_differently(tmp_path):
    # U+2028 is a line break to YAML and DEL is not YAML text at all; both are fine raw in
    # JSON strings. The lines must still be JSON's.
    path = write(tmp_path, "wf.json", '{"name": "a\u2028b\x7f",\r\n "steps": [\n  {"id": "s"}]}')
    doc, lines = load_document(path)
    assert doc["name"] == "a\u2028b\x7f"
    assert lines == {"": 1, "name": 1, "steps": 2, "steps[0]": 3, "steps[0].id": 3}


def test_json_lines_fall_back_to_nothing(tmp_path):
    # Valid JSON that YAML cannot read (an implicit key longer than 1024 characters):
    # the document still loads, only without lines.
    path = write(tmp_path, "wf.json", '{"%s": 1,\n "name": "x"}' % ("k" * 2000))
    doc, lines = load_document(path)
    assert doc["name"] == "x"
    assert lines == {}


# -- formats and the line map -------------------------------------------------------------------
def test_format_by_content_for_other_extensions(tmp_path):
    assert load_document(write(tmp_path, "wf.txt", '  {"name": "x"}'))[0] == {"name": "x"}
    assert load_document(write(tmp_path, "wf", "name: x\n"))[0] == {"name": "x"}
    # A .json file is JSON even when it would be valid YAML.
    assert "invalid JSON" in fails(write(tmp_path, "wf2.json", "name: x\n")).problems[0].message


def test_parse_text_formats():
    assert parse_text("name: x\n", "<text>", "yaml")[0] == {"name": "x"}
    assert parse_text('{"name": "x"}', "<text>", "json")[0] == {"name": "x"}
    with pytest.raises(WorkflowInvalid):
        parse_text("name: x\n", "<text>", "json")


def test_line_map_for_nested_paths(tmp_path):
    text = """\
name: lines
agents:
  mira:
    run: python agents/research.py
steps:
  - id: first
    run: echo one
  - id: second
    run: echo two
  - id: check
    type: conditional
    condition: "true"
    then:
      id: deploy
      agent: mira
    else:
      - id: fix
        agent: mira
"""
    doc, lines = load_document(write(tmp_path, "wf.yaml", text))
    assert lines[""] == 1
    assert lines["name"] == 1
    assert lines["agents.mira.run"] == 4
    assert lines["steps"] == 5
    assert lines["steps[2]"] == 10
    assert lines["steps[2].then"] == 13
    assert lines["steps[2].then.agent"] == 15
    assert lines["steps[2].else[0]"] == 17
    assert lines["steps[2].else[0].agent"] == 18
    assert doc["steps"][2]["then"]["agent"] == "mira"


def test_child_path_quotes_unusual_keys():
    assert child_path("", "name") == "name"
    assert child_path("steps", 2) == "steps[2]"
    assert child_path("steps[2]", "then") == "steps[2].then"
    assert child_path("inputs", "a.b") == 'inputs["a.b"]'
    assert child_path("", "$schema") == "$schema"
