"""traces, trace: the seed 000 traces of a workflow's runs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from wfctl.cli.options import Json
from wfctl.cli.output import emit_json, say, stdout_console


def traces(
    workflow: Annotated[str, typer.Argument(metavar="WF", help="A workflow id or exact name (a deleted workflow's too).")],
    page: Annotated[int, typer.Option(help="Page number, from 1.")] = 1,
    size: Annotated[Optional[int], typer.Option(help="Traces per page (default 50, at most 100).")] = None,
    json: Json = False,
) -> None:
    """List the traces of a workflow's runs, newest first."""
    from wfctl import api

    envelope = api.traces(workflow, page=page, size=size)
    if json:
        emit_json(envelope)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("trace", "status", "run date", "trigger"):
        table.add_column(column, no_wrap=True)
    for element in envelope["elements"]:
        status = element["status"] + (" (dry run)" if element.get("dryRun") else "")
        table.add_row(element["id"], status, element["run_date"][:19], element.get("trigger") or "manual")
    stdout_console().print(table)
    pages = envelope["pages"]
    say(f"{envelope['count']} trace{'s' if envelope['count'] != 1 else ''} · page {pages['current']} of {pages['max']}")


def trace(
    workflow: Annotated[str, typer.Argument(metavar="WF", help="A workflow id or exact name (a deleted workflow's too).")],
    trace_id: Annotated[str, typer.Argument(metavar="TRACE", help="A trace id (the execution id of the run) or the trace's uuid.")],
    json: Json = False,
) -> None:
    """Show one full trace: input, result, and every stage with its status and duration."""
    from wfctl import api
    from wfctl.render import format_duration

    document = api.trace(workflow, trace_id)
    if json:
        emit_json(document)
        return
    from rich.table import Table

    console = stdout_console()
    dry = " (dry run)" if document.get("dryRun") else ""
    console.print(f"trace {document['id']} · {document['status']}{dry} · {document['run_date']}", markup=False)
    if document.get("trigger") == "schedule":
        console.print(f"started by the scheduler for {document.get('scheduled_at')}", markup=False)
    table = Table(box=None, pad_edge=False)
    for column in ("stage", "status", "duration", "attempts"):
        table.add_column(column, no_wrap=True)
    for stage in document["response"]["stages"]:
        table.add_row(stage["node_name"], stage["status"], format_duration(stage.get("duration")), str(len(stage.get("attempts") or [])))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command()(traces)
    app.command()(trace)
