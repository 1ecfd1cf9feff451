"""The JSON Schema (draft 2020-12) of workflow files, generated from `spec.py`.

Printed by `wfctl schema`; editors use it through
`# yaml-language-server: $schema=<file or URL>` (YAML) or a `"$schema"` key (JSON).
Because it comes from the same tables as the validator, the two cannot drift apart. The
schema checks shapes only; data flow, unique ids, expressions and agents are the
validator's (`wfctl validate`).
"""

from __future__ import annotations

from typing import Any

from wfctl import spec
from wfctl.spec import Block, Field


def _property(field: Field) -> dict[str, Any]:
    schema = dict(field.shape.json_schema())
    schema["description"] = field.description
    if field.default is not None:
        schema["default"] = field.default
    return schema


def _object(block: Block, *, extra_properties: dict[str, Any] | None = None,
            extra_required: tuple[str, ...] = ()) -> dict[str, Any]:
    properties = {f.name: _property(f) for f in block.fields}
    if extra_properties:
        properties = {**extra_properties, **properties}
    required = [*extra_required, *block.required()]
    schema: dict[str, Any] = {
        "title": block.title,
        "description": block.description,
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(dict.fromkeys(required))
    if block.exactly_one_of:
        schema["oneOf"] = [{"required": [name]} for name in block.exactly_one_of]
    if block.at_least_one_of:
        schema["anyOf"] = [{"required": [name]} for name in block.at_least_one_of]
    return schema


def _step_variant(step_type: str, block: Block) -> dict[str, Any]:
    common = {f.name: _property(f) for f in spec.STEP_COMMON}
    type_property = dict(common["type"])
    type_property.pop("enum", None)
    type_property["const"] = step_type
    if step_type == spec.DEFAULT_STEP_TYPE:
        type_property["default"] = step_type
    else:
        type_property.pop("default", None)
    common["type"] = type_property
    required = [f.name for f in spec.STEP_COMMON if f.required]
    if step_type != spec.DEFAULT_STEP_TYPE:
        required.append("type")
    schema = _object(block, extra_properties=common, extra_required=tuple(required))
    return schema


def workflow_schema() -> dict:
    """The schema as a plain dict (`json.dumps` it to print or save it)."""
    defs: dict[str, Any] = {}
    for name, block in spec.BLOCKS.items():
        if block is spec.WORKFLOW:
            continue
        defs[name] = _object(block)
    variants = []
    for step_type, block in spec.STEP_TYPE_BLOCKS.items():
        key = f"{step_type}Step"
        defs[key] = _step_variant(step_type, block)
        variants.append({"$ref": f"#/$defs/{key}"})
    defs["step"] = {
        "title": "Step",
        "description": "One step; `type` chooses its kind (default task). Ids are unique in the whole workflow.",
        "oneOf": variants,
    }
    top = _object(spec.WORKFLOW)
    return {
        "$schema": spec.SCHEMA_DIALECT,
        "$id": spec.SCHEMA_ID,
        **top,
        "$defs": defs,
    }
