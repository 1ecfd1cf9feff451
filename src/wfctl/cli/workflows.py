"""validate, create, list, show, delete, schema: workflow files and registered workflows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from wfctl.cli.options import Json
from wfctl.cli.output import emit_json, say, shown_cell, stdout_console


def validate(
    file: Annotated[Path, typer.Argument(help="A workflow file (.yaml, .yml or .json).")],
    skip_agents: Annotated[
        bool, typer.Option("--skip-agents", help="Do not check that agents and teams exist in config.toml.")
    ] = False,
    json: Json = False,
) -> None:
    """Check a workflow file and report every problem with its path and line."""
    from wfctl import api

    problems = api.validate(file, check_agents=not skip_agents)
    warnings = [] if problems else api.warnings(file, check_config=not skip_agents)
    if json:
        emit_json({"file": str(file), "valid": not problems, "problems": [p.to_dict() for p in problems],
                   "warnings": [w.to_dict() for w in warnings]})
    else:
        for problem in problems:
            say(str(problem))
        for warning in warnings:
            say(f"warning: {warning}")
        if not problems:
            say(f"{file}: valid")
        else:
            say(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {file}")
    if problems:
        raise typer.Exit(2)


def create(
    file: Annotated[Path, typer.Argument(help="A workflow file (.yaml, .yml or .json).")],
    update: Annotated[bool, typer.Option("--update", help="If the name exists, make this its next version.")] = False,
    json: Json = False,
) -> None:
    """Validate a workflow file and register it; prints the new workflowId."""
    from wfctl import api

    workflow = api.create(file, update=update)
    if json:
        emit_json(workflow)
    else:
        typer.echo(workflow["workflowId"])
        say(f"registered '{workflow['name']}' as {workflow['workflowId']} (version {workflow['version']}, {workflow['status']})")
    for warning in api.warnings(file, check_config=True):
        say(f"warning: {warning}")


def list_(
    status: Annotated[Optional[str], typer.Option(help="Only workflows with this status: draft or active.")] = None,
    category: Annotated[Optional[str], typer.Option(help="Only workflows of this category.")] = None,
    page: Annotated[Optional[int], typer.Option(help="Page number, from 1 (default 1).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Workflows per page (at most 100; default 50).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="At most this many (instead of --page/--size).")] = None,
    offset: Annotated[Optional[int], typer.Option(help="Skip this many first (with --limit; not with --page/--size).")] = None,
    json: Json = False,
) -> None:
    """List registered workflows."""
    from wfctl import api

    envelope = api.list(status=status, category=category, page=page, size=size, limit=limit, offset=offset)
    if json:
        emit_json(envelope)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("id", "name", "status", "category", "tasks", "created"):
        table.add_column(column, no_wrap=column in ("id", "created"))
    for element in envelope["elements"]:
        table.add_row(
            element["id"],
            shown_cell(element["name"]),
            element["status"],
            shown_cell(element.get("category")),
            str(element["tasks_count"]),
            (element.get("createdAt") or "")[:19],
        )
    stdout_console().print(table)
    pages = envelope["pages"]
    say(f"{envelope['count']} workflow{'s' if envelope['count'] != 1 else ''} · page {pages['current']} of {pages['max']}")


def show(
    workflow: Annotated[str, typer.Argument(help="A workflow id or exact name.")],
    json: Json = False,
) -> None:
    """Show one workflow's definition and metadata."""
    from wfctl import api

    document = api.get(workflow)
    if json:
        emit_json(document)
        return
    import yaml

    header = {k: document.get(k) for k in ("workflowId", "name", "version", "status", "createdAt", "updatedAt", "source")}
    body = {k: v for k, v in document.items() if k not in header and v is not None}
    from wfctl.render import terminal_safe

    # YAML escapes most control characters itself, but not bidi overrides.
    typer.echo(terminal_safe(yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip()))
    typer.echo(terminal_safe(yaml.safe_dump(body, sort_keys=False, allow_unicode=True).rstrip()))


def delete(
    workflow: Annotated[str, typer.Argument(help="A workflow id or exact name.")],
    json: Json = False,
) -> None:
    """Remove a workflow. Its past executions and traces stay readable."""
    from wfctl import api

    document = api.delete(workflow)
    if json:
        emit_json({"deleted": True, "workflowId": document["workflowId"], "name": document["name"]})
    else:
        say(f"deleted {document['workflowId']} ('{document['name']}')")


def schema() -> None:
    """Print the JSON Schema of workflow files (for editors and other tools)."""
    from wfctl.schema import workflow_schema

    emit_json(workflow_schema())


def graph(
    workflow: Annotated[
        str,
        typer.Argument(
            metavar="WORKFLOW_OR_FILE",
            help="A registered workflow's id or exact name, or a workflow file: read as a file only when it "
            "looks like a path (./build, anything with a /, or a .yaml, .yml or .json suffix).",
        ),
    ],
    format: Annotated[str, typer.Option("--format", "-f", help="mermaid or dot.")] = "mermaid",
) -> None:
    """Print the workflow as a Mermaid (default) or Graphviz DOT graph."""
    from wfctl import api
    from wfctl.errors import UsageError
    from wfctl.graph import render

    if format not in ("mermaid", "dot"):
        raise UsageError(f"--format must be mermaid or dot, not '{format}'.")
    typer.echo(render(api.definition_of(workflow), format), nl=False)


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(create)
    app.command("list")(list_)
    app.command()(show)
    app.command()(delete)
    app.command()(schema)
    app.command()(graph)
