"""Small helpers shared by the end-to-end tests: reading execution documents, writing workflows."""

from __future__ import annotations

import textwrap
from pathlib import Path


def walk(records):
    """Every step record of a tree of records, parents before their children."""
    for record in records:
        yield record
        yield from walk(record.get("steps") or [])


def records(document) -> dict[str, dict]:
    """Every step record of an execution document by its key."""
    return {record["id"]: record for record in walk(document["steps"])}


def write(tmp_path: Path, text: str, name: str = "workflow.yaml", **values) -> Path:
    """A workflow file from YAML text; `__NAME__` placeholders become the given values."""
    text = textwrap.dedent(text)
    for key, value in values.items():
        text = text.replace(f"__{key}__", str(value))
    path = tmp_path / name
    path.write_text(text)
    return path
