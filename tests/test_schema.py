"""schema.py: the JSON Schema of workflow files, generated from spec.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from wfctl import spec
from wfctl.schema import workflow_schema

DATA = Path(__file__).parent / "data" / "workflows"


@pytest.fixture(scope="module")
def schema() -> dict:
    return workflow_schema()


def resolve(node: dict, root: dict) -> dict:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/$defs/"), ref
        node = root["$defs"][ref[len("#/$defs/"):]]
    return node


def walk(node: Any, path: str = "#"):
    """Every (path, sub-schema) pair of a schema."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def test_is_json_and_a_2020_12_schema(schema):
    text = json.dumps(schema, indent=2, sort_keys=True)
    assert json.loads(text) == schema
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == spec.SCHEMA_ID
    assert schema["title"]
    assert schema["type"] == "object"
    assert schema["required"] == ["name", "steps"]


def test_every_ref_resolves(schema):
    refs = [node["$ref"] for _, node in walk(schema) if "$ref" in node]
    assert refs
    for ref in refs:
        name = ref[len("#/$defs/"):]
        assert ref.startswith("#/$defs/") and name in schema["$defs"], ref


def test_objects_are_closed_and_described(schema):
    for path, node in walk(schema):
        if "properties" in node and isinstance(node["properties"], dict) and not path.endswith("/properties"):
            assert node.get("additionalProperties") is False, path
            for key, prop in node["properties"].items():
                assert prop.get("description"), f"{path}/properties/{key} has no description"


def test_patterns_compile(schema):
    import re

    for path, node in walk(schema):
        if isinstance(node.get("pattern"), str):
            re.compile(node["pattern"])


@pytest.mark.parametrize("step_type", spec.STEP_TYPES)
def test_every_step_type_and_field(schema, step_type):
    variants = [resolve(v, schema) for v in schema["$defs"]["step"]["oneOf"]]
    matching = [v for v in variants if v["properties"]["type"].get("const") == step_type]
    assert len(matching) == 1
    variant = matching[0]
    expected = [f.name for f in spec.STEP_COMMON] + [f.name for f in spec.STEP_TYPE_BLOCKS[step_type].fields]
    assert sorted(variant["properties"]) == sorted(expected)
    for field in spec.STEP_TYPE_BLOCKS[step_type].fields:
        assert variant["properties"][field.name]["description"] == field.description
    required = set(variant.get("required", []))
    assert "id" in required
    assert ("type" in required) == (step_type != "task")  # a step without type is a task
    for field in spec.STEP_TYPE_BLOCKS[step_type].fields:
        assert (field.name in required) == field.required


def test_blocks_match_spec(schema):
    for name, block in spec.BLOCKS.items():
        node = schema if block is spec.WORKFLOW else schema["$defs"][name]
        assert sorted(node["properties"]) == sorted(block.keys()), name
        for field in block.fields:
            assert node["properties"][field.name]["description"] == field.description
        if block.exactly_one_of:
            assert node["oneOf"] == [{"required": [k]} for k in block.exactly_one_of]


def test_constraints_come_from_spec(schema):
    handling = schema["$defs"]["errorHandling"]["properties"]
    assert handling["strategy"]["enum"] == list(spec.ERROR_STRATEGIES)
    assert handling["backoff"]["enum"] == list(spec.BACKOFFS)
    assert handling["maxRetries"] == {
        "type": "integer", "minimum": 0, "description": handling["maxRetries"]["description"]
    }
    assert handling["fallback"]["$ref"] == "#/$defs/step"
    assert schema["properties"]["timeout"]["exclusiveMinimum"] == 0
    assert schema["properties"]["steps"]["minItems"] == 1
    task = schema["$defs"]["taskStep"]
    assert task["anyOf"] == [{"required": ["agent"]}, {"required": ["run"]}]
    assert task["properties"]["id"]["pattern"] == spec.STEP_ID_PATTERN
    team = schema["$defs"]["team"]["properties"]
    assert team["strategy"]["enum"] == list(spec.TEAM_STRATEGIES)
    assert schema["$defs"]["inputDeclaration"]["properties"]["type"]["enum"] == list(spec.INPUT_TYPES)


# A tiny structural check, enough to follow a document through the schema without a dependency.
def undescribed_keys(doc: Any, node: dict, root: dict, path: str = "") -> list[str]:
    node = resolve(node, root)
    if "oneOf" in node and isinstance(doc, dict) and "properties" not in node:  # the step union
        variants = [resolve(v, root) for v in node["oneOf"]]
        kind = doc.get("type", spec.DEFAULT_STEP_TYPE)
        node = next(v for v in variants if v["properties"]["type"]["const"] == kind)
    if "anyOf" in node and "properties" not in node:
        wanted = "object" if isinstance(doc, dict) else "array" if isinstance(doc, list) else None
        for option in node["anyOf"]:
            option = resolve(option, root)
            if option.get("type") == wanted or (wanted == "object" and "oneOf" in option):
                node = option
                break
    missing: list[str] = []
    if isinstance(doc, dict):
        properties = node.get("properties")
        for key, value in doc.items():
            key_path = f"{path}.{key}" if path else key
            if properties is not None:
                if key not in properties or not properties[key].get("description"):
                    missing.append(key_path)
                    continue
                missing += undescribed_keys(value, properties[key], root, key_path)
            elif isinstance(node.get("additionalProperties"), dict):
                missing += undescribed_keys(value, node["additionalProperties"], root, key_path)
    elif isinstance(doc, list) and isinstance(node.get("items"), dict):
        for i, value in enumerate(doc):
            missing += undescribed_keys(value, node["items"], root, f"{path}[{i}]")
    return missing


def test_every_key_of_the_seed_is_described(schema):
    seed = json.loads((DATA / "seed-create.json").read_text(encoding="utf-8"))
    assert undescribed_keys(seed, schema, schema) == []


def test_the_walker_finds_undescribed_keys(schema):
    doc = {
        "name": "x",
        "stesp": [],
        "steps": [{"id": "a", "type": "loop", "stpe": {}, "step": {"id": "b", "agnet": 1}}],
    }
    assert undescribed_keys(doc, schema, schema) == ["stesp", "steps[0].stpe", "steps[0].step.agnet"]
