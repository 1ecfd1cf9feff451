"""Every example workflow validates and runs to completion through the installed `wfctl`."""

from __future__ import annotations

import json

import pytest

from conftest import EXAMPLES
from helpers import walk

# The --input each example needs (or shows off); examples not listed run without one.
INPUTS = {
    "hello.yaml": {"name": "Ada"},
    "saas-launch.json": {"productName": "CloudSync Pro", "targetMarket": "SMB businesses", "budget": 100000},
    "conditional.yaml": {},
    "loop.yaml": {"cities": ["Quito", "Hanoi", "Accra"]},
}

EXAMPLE_FILES = sorted(path for path in EXAMPLES.iterdir() if path.suffix in (".yaml", ".yml", ".json"))
SCHEMA_LINE = "# yaml-language-server: $schema=../../schema/workflow.schema.json"


def test_the_examples_are_all_here():
    names = {path.name for path in EXAMPLE_FILES}
    assert {"hello.yaml", "saas-launch.json", "conditional.yaml", "loop.yaml", "teams.yaml", "parallel.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_validates(wfctl_json, path):
    document = wfctl_json("validate", path)
    assert document["valid"] is True, document["problems"]
    assert document["problems"] == []


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_example_runs_to_completion(wfctl_json, path, tmp_path):
    args = ["execute", path]
    if path.name in INPUTS:
        args += ["--input", json.dumps(INPUTS[path.name])]
    # From another directory: an example must not depend on the current directory.
    document = wfctl_json(*args, cwd=tmp_path)
    assert document["status"] == "completed", document.get("error")
    assert document["progress"]["percentage"] == 100
    assert all(record["status"] in ("completed", "skipped") for record in document["steps"])
    # Inside, only a first-success team's members may fail (teams.yaml shows one).
    failed = [record["id"] for record in walk(document["steps"]) if record["status"] not in ("completed", "skipped")]
    assert all("@" in key for key in failed), failed


@pytest.mark.parametrize("path", [p for p in EXAMPLE_FILES if p.suffix != ".json"], ids=lambda path: path.name)
def test_yaml_examples_start_with_the_schema_line_and_say_how_to_run_them(path):
    lines = path.read_text().splitlines()
    if path.name != "hello.yaml":  # the first example predates the schema line
        assert lines[0] == SCHEMA_LINE
    header = []
    for line in lines:
        if not line.startswith("#"):
            break
        header.append(line)
    assert any(f"wfctl execute examples/workflows/{path.name}" in line for line in header), header


def test_saas_launch_is_the_seed_request_body_plus_agents():
    document = json.loads((EXAMPLES / "saas-launch.json").read_text())
    assert list(document) == ["name", "description", "steps", "errorHandling", "timeout", "agents"]
    assert document["name"] == "SaaS Product Launch Workflow"
    assert [step["id"] for step in document["steps"]] == [
        "market-research", "product-strategy", "parallel-development", "testing", "deploy"]
    assert document["errorHandling"] == {"strategy": "retry", "maxRetries": 3, "escalateOnFailure": True}
    assert document["timeout"] == 604800
    assert set(document["agents"]) == {"mira", "priya", "tom", "rae", "quinn", "dev"}


def test_saas_launch_outputs(wfctl_json):
    document = wfctl_json("execute", EXAMPLES / "saas-launch.json", "--input",
                          json.dumps(INPUTS["saas-launch.json"]))
    steps = {record["id"]: record for record in walk(document["steps"])}
    assert steps["market-research"]["output"]["research-data"]["product"] == "CloudSync Pro"
    assert steps["product-strategy"]["output"]["strategy-doc"]["positioning"].endswith("SMB businesses")
    assert steps["backend-dev"]["output"]["backend-code"]["service"] == "cloudsync-pro-api"
    assert steps["frontend-dev"]["output"]["frontend-code"]["app"] == "cloudsync-pro-web"
    assert steps["testing"]["output"]["test-results"]["passed"] is True
    assert steps["deploy"]["output"]["deployment-url"]["url"] == "https://cloudsync-pro.example.com"


def test_conditional_example_takes_the_else_branch_when_tests_fail(wfctl_json):
    document = wfctl_json("execute", EXAMPLES / "conditional.yaml", "--input", '{"failing": 2}')
    assert document["status"] == "completed"
    steps = {record["id"]: record for record in walk(document["steps"])}
    assert steps["deploy"]["status"] == "skipped"
    assert steps["fix"]["output"]["fix-ticket"]["title"] == "Fix 2 failing tests"
    assert steps["summary"]["output"] == {"summary": "deploy: skipped, fix: completed"}


def test_teams_example_rotates_its_round_robin_team(wfctl_json):
    first = wfctl_json("execute", EXAMPLES / "teams.yaml")
    second = wfctl_json("execute", EXAMPLES / "teams.yaml")
    assert first["steps"][0]["member"] != second["steps"][0]["member"]
    triage = first["steps"][2]
    assert triage["member"] == "cy"
    assert [(r["id"], r["status"]) for r in triage["steps"]] == [
        ("triage-issue@flaky-bot", "failed"), ("triage-issue@cy", "completed")]
    assert set(first["steps"][1]["output"]["reviews"]) == {"ana", "ben", "cy"}
