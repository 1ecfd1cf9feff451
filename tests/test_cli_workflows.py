"""validate, create, list, show, delete and schema through the installed `wfctl`."""

from __future__ import annotations

import json

from conftest import EXAMPLES, tree_snapshot

HELLO = EXAMPLES / "hello.yaml"

BROKEN = """\
name: broken
steps:
  - id: one
    agent: echo
    ouptut: result
  - id: one
    type: paralel
    timeout: -1
"""


def test_validate_accepts_the_example(wfctl):
    result = wfctl("validate", HELLO)
    assert "valid" in result.stderr
    assert result.stdout == ""


def test_validate_reports_every_problem_with_path_and_line(wfctl_json, workflow_file, wfctl_home):
    path = workflow_file(BROKEN)
    before = tree_snapshot(wfctl_home)
    document = wfctl_json("validate", path, code=2)
    assert document["valid"] is False
    by_path = {p["path"]: p for p in document["problems"]}
    assert "did you mean 'output'" in by_path["steps[0].ouptut"]["message"]
    assert by_path["steps[0].ouptut"]["line"] == 5
    assert any("duplicate" in p["message"] for p in document["problems"])
    assert any(p["path"].startswith("steps[1].type") and "parallel" in p["message"] for p in document["problems"])
    assert all(p["file"] == str(path) for p in document["problems"])
    assert tree_snapshot(wfctl_home) == before


def test_validate_human_output_names_file_and_line(wfctl, workflow_file):
    path = workflow_file(BROKEN)
    result = wfctl("validate", path, code=2)
    assert f"{path}:5: steps[0].ouptut" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_validate_missing_file_is_a_usage_error(wfctl, tmp_path):
    result = wfctl("validate", tmp_path / "nope.yaml", code=2)
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_create_prints_the_id_and_registers_a_draft(wfctl, wfctl_json):
    result = wfctl("create", HELLO)
    workflow_id = result.stdout.strip()
    assert workflow_id.startswith("wf_")
    shown = wfctl_json("show", workflow_id)
    for key in ("workflowId", "name", "description", "steps", "status", "createdAt", "category", "errorHandling", "timeout"):
        assert key in shown
    assert shown["workflowId"] == workflow_id
    assert shown["status"] == "draft"
    assert [s["id"] for s in shown["steps"]] == ["greet", "machine", "report"]
    # a workflow is named by its id or its exact name
    assert wfctl_json("show", "hello")["workflowId"] == workflow_id


def test_create_json_is_the_seed_data_object(wfctl_json):
    created = wfctl_json("create", HELLO)
    assert created["name"] == "hello"
    assert created["status"] == "draft"
    assert created["createdAt"].endswith("Z")


def test_create_of_a_taken_name_is_a_conflict_unless_update(wfctl, wfctl_json, workflow_file):
    first = wfctl_json("create", HELLO)
    result = wfctl("create", HELLO, code=6)
    assert "already exists" in result.stderr
    changed = workflow_file(HELLO.read_text().replace("Greet someone", "Greet anyone"), "hello2.yaml")
    updated = wfctl_json("create", changed, "--update")
    assert updated["workflowId"] == first["workflowId"]
    assert updated["version"] == 2
    assert updated["description"].startswith("Greet anyone")


def test_create_invalid_file_writes_nothing(wfctl, workflow_file, wfctl_home):
    before = tree_snapshot(wfctl_home)
    wfctl("create", workflow_file(BROKEN), code=2)
    assert tree_snapshot(wfctl_home) == before


def test_list_envelope_filters_and_pages(wfctl_json, workflow_file):
    for number in range(5):
        category = "even" if number % 2 == 0 else "odd"
        wfctl_json("create", workflow_file(f"name: wf{number}\ncategory: {category}\nsteps:\n  - id: a\n    agent: echo\n", f"w{number}.yaml"))
    everything = wfctl_json("list")
    assert everything["entities"] == "Workflow"
    assert everything["count"] == 5
    assert everything["pages"] == {"current": 1, "max": 1}
    element = everything["elements"][0]
    assert set(element) >= {"id", "name", "active", "tasks_count", "description"}
    assert element["tasks_count"] == 1 and element["active"] is False
    assert wfctl_json("list", "--category", "even")["count"] == 3
    assert wfctl_json("list", "--status", "active")["count"] == 0
    page = wfctl_json("list", "--size", "2", "--page", "3")
    assert page["per_page"] == 2 and page["pages"] == {"current": 3, "max": 3}
    assert [e["name"] for e in page["elements"]] == ["wf4"]
    window = wfctl_json("list", "--limit", "2", "--offset", "1")
    assert [e["name"] for e in window["elements"]] == ["wf1", "wf2"]


def test_list_rejects_a_size_over_100(wfctl):
    result = wfctl("list", "--size", "101", code=2)
    assert "between 1 and 100" in result.stderr


def test_list_plain_output_has_no_escape_codes(wfctl):
    wfctl("create", HELLO)
    result = wfctl("list")
    assert "hello" in result.stdout
    assert "\x1b[" not in result.stdout + result.stderr


def test_not_found_uses_the_seed_error_document(wfctl):
    result = wfctl("show", "wf_doesnotexist0", "--json", code=3)
    assert json.loads(result.stdout)["error"] == "This workflow does not exists"
    assert "wf_doesnotexist0" in result.stderr


def test_delete_removes_the_workflow(wfctl, wfctl_json):
    created = wfctl_json("create", HELLO)
    wfctl("delete", created["workflowId"])
    wfctl("show", created["workflowId"], code=3)
    wfctl("delete", created["workflowId"], code=3)


def test_schema_prints_the_json_schema(wfctl):
    schema = json.loads(wfctl("schema").stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert "steps" in schema["properties"]
