"""schema/workflow.schema.json is what `wfctl schema` prints, and every example obeys it."""

from __future__ import annotations

import json

import jsonschema
import pytest

from conftest import EXAMPLES, REPO
from wfctl.loader import load_document

SCHEMA_FILE = REPO / "schema" / "workflow.schema.json"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".json"))


def test_committed_schema_is_up_to_date(wfctl):
    printed = json.loads(wfctl("schema").stdout)
    assert json.loads(SCHEMA_FILE.read_text()) == printed, (
        "schema/workflow.schema.json is out of date: regenerate it with `wfctl schema > schema/workflow.schema.json`"
    )


def test_schema_is_a_valid_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_obeys_the_schema(example):
    document, _lines = load_document(example)
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []


@pytest.mark.parametrize("example", [p for p in EXAMPLE_FILES if p.suffix != ".json"], ids=lambda p: p.name)
def test_yaml_examples_name_the_schema_for_editors(example):
    first_line = example.read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=../../schema/workflow.schema.json"


def test_schema_rejects_a_broken_step():
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    broken = {"name": "x", "steps": [{"id": "a", "type": "loop", "items": 3}]}  # loop without `step`
    assert list(validator.iter_errors(broken))
