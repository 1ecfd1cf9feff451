"""execute, execution, executions, logs: running workflows and reading their runs."""

from __future__ import annotations

import json as jsonlib
import sys
from typing import Annotated, Any, Optional

import typer

from wfctl.cli.options import Json
from wfctl.cli.output import emit_json, say, shown_cell, stdout_console
from wfctl.errors import UsageError

MAX_INPUT_BYTES = 1024 * 1024  # as workflow files: --input is read whole, so it is bounded
MAX_INPUT_DEPTH = 64  # levels of nested lists/objects, as workflow files (spec.MAX_VALUE_DEPTH)


def parse_input(text: str | None) -> dict[str, Any]:
    """--input: a JSON object, `@file.json`, or `-` for standard input.

    Untrusted bytes are bounded: at most 1 MiB from any source, a regular file only (a
    FIFO or /dev/zero would be read for ever), at most 64 levels of nesting.
    """
    if text is None:
        return {}
    source, raw = _input_text(text)
    if len(raw) > MAX_INPUT_BYTES:
        raise UsageError(f"{source} is larger than {MAX_INPUT_BYTES} bytes; --input is limited to 1 MiB "
                         "(pass large data through a file that a step reads).")
    _check_input_depth(raw, source)
    try:
        value = jsonlib.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise UsageError(f"{source} is nested too deeply; --input may nest at most {MAX_INPUT_DEPTH} levels.") from None
    except ValueError as err:
        raise UsageError(f"{source} is not valid JSON: {err}.") from err
    if _has_infinity(value):
        raise UsageError(f"{source} has a number too large for JSON.")
    if not isinstance(value, dict):
        from wfctl.spec import describe_value

        raise UsageError(f"{source} must be a JSON object, not {describe_value(value)}.")
    return value


def _input_text(text: str) -> tuple[str, str]:
    """(how to name the source in messages, its text) for the three forms of --input."""
    if text == "-":
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        return "--input from standard input", _decode_input(data, "--input from standard input")
    if text.startswith("@"):
        from wfctl.errors import WorkflowInvalid
        from wfctl.loader import read_bytes

        path = text[1:]
        source = f"--input file {path}"
        try:
            data = read_bytes(path, kind="--input file")
        except WorkflowInvalid as err:
            reason = err.problems[0].message
            hint = "; use --input - to read standard input" if "not a regular file" in reason else ""
            raise UsageError(f"cannot read --input file {path}: {reason}{hint}.") from None
        return source, _decode_input(data, source)
    return "--input", text


def _decode_input(data: bytes, source: str) -> str:
    if len(data) > MAX_INPUT_BYTES:
        raise UsageError(f"{source} is larger than {MAX_INPUT_BYTES} bytes; --input is limited to 1 MiB "
                         "(pass large data through a file that a step reads).")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a BOM is accepted, as in workflow files
    except UnicodeDecodeError as err:
        raise UsageError(f"{source} is not valid UTF-8 (byte offset {err.start}).") from None


def _check_input_depth(raw: str, source: str) -> None:
    """Refuse deep nesting before json.loads (and every later walk) recurses into it."""
    from wfctl.loader import json_too_deep

    offset = json_too_deep(raw, MAX_INPUT_DEPTH)
    if offset is not None:
        raise UsageError(f"{source} is nested more than {MAX_INPUT_DEPTH} levels deep (at character {offset + 1}); "
                         f"--input may nest at most {MAX_INPUT_DEPTH} levels.")


def _unique_keys(pairs: list) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice")
        seen[key] = value
    return seen


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _has_infinity(value: Any) -> bool:
    """A non-finite number anywhere (walked without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def execute(
    workflow: Annotated[
        str,
        typer.Argument(
            metavar="WORKFLOW_OR_FILE",
            help=(
                "A registered workflow's id or exact name, or a workflow file (registered on the way). "
                "A registered name wins over a file of the same name in the current directory: "
                "an argument is read as a file only when it looks like a path (./build, "
                "anything with a /, or a .yaml, .yml or .json suffix)."
            ),
        ),
    ],
    input: Annotated[
        Optional[str], typer.Option("--input", "-i", help="The input: a JSON object, @file.json, or - for stdin.")
    ] = None,
    priority: Annotated[str, typer.Option(help="low, normal or high.")] = "normal",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Replace every agent by echo: show the path a run would take.")] = False,
    notify_email: Annotated[Optional[str], typer.Option("--notify-email", help="Email these addresses (comma-separated) about the run.")] = None,
    notify_slack: Annotated[Optional[str], typer.Option("--notify-slack", help="Post to this Slack channel about the run.")] = None,
    notify_webhook: Annotated[Optional[str], typer.Option("--notify-webhook", help="POST the run's events to this URL.")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Run in the background; print the execution id once it runs.")] = False,
    executor: Annotated[
        Optional[str], typer.Option("--executor", help="Where steps run: local (default) or dask://HOST:PORT.")
    ] = None,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="When a step fails, cancel the steps running beside it (kept for resume and retry).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; a run that does not complete still says why, in one line.")] = False,
    json: Json = False,
) -> None:
    """Run a workflow and show its steps live; the exit code is the execution's."""
    from wfctl import api

    given = parse_input(input)
    notify = {"email": notify_email, "slack": notify_slack, "webhook": notify_webhook}
    execution_id = api.prepare(
        workflow, given, priority=priority, dry_run=dry_run, notify=notify, executor=executor, fail_fast=fail_fast
    )
    if detach:
        document = api.start_detached(execution_id)
        if json:
            emit_json(document)
        else:
            typer.echo(execution_id)
            if not quiet:
                say(f"{execution_id} {document['status']} in the background · follow it with: wfctl watch {execution_id}")
        return
    run_live(lambda **listeners: api.run_prepared(execution_id, **listeners), quiet=quiet, json=json)


def run_detached(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC")],
    resume: Annotated[bool, typer.Option("--resume")] = False,
) -> None:
    """Run a prepared execution here (what `execute --detach` starts in the background)."""
    from wfctl import api

    if resume:
        document = api.resume(execution_id)
    else:
        document = api.run_prepared(execution_id, queue=True)
    raise typer.Exit(int(api.exit_code_for(document)))


def watch(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC", help="An execution id.")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; just wait for the end.")] = False,
    json: Json = False,
) -> None:
    """Show the live table of an execution run elsewhere until it ends; the exit code is the execution's."""
    from wfctl import api

    run_live(lambda **listeners: api.watch(execution_id, **listeners), quiet=quiet, json=json)


def cancel(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC", help="An execution id.")],
    reason: Annotated[Optional[str], typer.Option("--reason", "-r", help="Why; kept in the record as cancelReason.")] = None,
    json: Json = False,
) -> None:
    """Cancel an execution: running step processes are terminated and nothing new starts."""
    from wfctl import api

    document = api.cancel(execution_id, reason)
    if json:
        emit_json(document)
    elif document.get("cancelRequested"):
        say(f"cancel requested: {execution_id} is {document['status']}; its runner stops it")
    else:
        say(f"{execution_id} {document['status']}" + (f": {reason}" if reason else ""))


def pause(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC", help="An execution id.")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Return only once it is paused (exit 6 if it ends or --timeout passes first).")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="With --wait: give up after this many seconds.")] = 300.0,
    json: Json = False,
) -> None:
    """Pause an execution: no new step starts; running steps finish; then it is paused."""
    from wfctl import api

    if timeout <= 0:
        raise UsageError(f"--timeout must be more than 0, not {timeout:g}.")
    document = api.pause(execution_id, wait=wait, timeout=timeout)
    if json:
        emit_json(document)
    elif document["status"] == "paused":
        say(f"{execution_id} paused · continue it with: wfctl resume {execution_id}")
    else:
        say("pause requested: the running step finishes, then the execution pauses"
            f" · continue it with: wfctl resume {execution_id}")


def resume(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC", help="A paused or interrupted execution.")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Continue an interrupted execution in the background.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; a run that does not complete still says why, in one line.")] = False,
    json: Json = False,
) -> None:
    """Continue a paused execution, or one whose runner died (crash, kill, reboot)."""
    from wfctl import api

    if api.runner_alive(execution_id):
        document = api.resume(execution_id)
        if json:
            emit_json(document)
        else:
            say(f"{execution_id} resumed · {document['status']}")
        return
    if detach:
        api.get_execution(execution_id)
        document = api.start_detached(execution_id, resume=True)
        if json:
            emit_json(document)
        else:
            typer.echo(execution_id)
        return
    run_live(lambda **listeners: api.resume(execution_id, **listeners), quiet=quiet, json=json)


def prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Age of the last event, such as 30d, 12h, 90m or 3600s.")],
    status: Annotated[Optional[list[str]], typer.Option("--status", help="Only executions with this status (repeat).")] = None,
    include_interrupted: Annotated[
        bool,
        typer.Option("--include-interrupted", help="Also remove interrupted executions (which `wfctl resume` could continue)."),
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be removed.")] = False,
    json: Json = False,
) -> None:
    """Remove executions that ended before a given age, with their traces."""
    from wfctl import api

    result = api.prune(
        older_than=parse_age(older_than), statuses=status or None, dry_run=dry_run, include_interrupted=include_interrupted
    )
    if json:
        emit_json(result)
    else:
        verb = "would remove" if dry_run else "removed"
        say(f"{verb} {result['count']} execution{'s' if result['count'] != 1 else ''}")


def parse_age(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = text[:-1], text[-1:]
    if unit.isdigit():
        number, unit = text, "s"
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"--older-than must look like 30d, 12h, 90m or 3600s, not '{text}'.") from None
    if unit not in units or value < 0:
        raise UsageError(f"--older-than must look like 30d, 12h, 90m or 3600s, not '{text}'.")
    return value * units[unit]


def run_live(call, *, quiet: bool, json: bool) -> None:
    """Run `call(on_event=…, on_start=…)` (execute, retry, resume, watch) with the live
    display, then print its end and exit with its code."""
    from wfctl.cli.live import progress_display

    display = progress_display(quiet=quiet, json_mode=json)
    with display:
        document = call(on_event=display, on_start=display.start)
    finish(document, json=json, quiet=quiet)


def finish(document: dict, *, json: bool, quiet: bool) -> None:
    """Print the end of a run (execute, retry, resume) and exit with its code."""
    from wfctl import api

    if json:
        emit_json(document)  # the reasons and every notification's result are in it
    else:
        from wfctl.notify import undelivered
        from wfctl.render import summary_text

        typer.echo(document["executionId"])
        # --quiet hides progress, never why a run did not complete.
        if not quiet or document.get("status") != "completed":
            say(summary_text(document))
        for line in undelivered(document):
            say(f"warning: {line}")
    code = api.exit_code_for(document)
    if code:
        raise typer.Exit(int(code))


def retry(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC", help="A failed (or cancelled) execution.")],
    step: Annotated[str, typer.Argument(metavar="STEP", help="The step to run again (a nested one too: process[3], team@tom).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; a run that does not complete still says why, in one line.")] = False,
    json: Json = False,
) -> None:
    """Run a failed step again and continue the execution from there; completed steps do not run again."""
    from wfctl import api

    run_live(lambda **listeners: api.retry_step(execution_id, step, **listeners), quiet=quiet, json=json)


def execution(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC", help="An execution id.")],
    json: Json = False,
) -> None:
    """Show an execution: status, progress, current step, every step with times, attempts and output."""
    from wfctl import api
    from wfctl.render import error_text, execution_table

    document = api.get_execution(execution_id)
    if json:
        emit_json(document)
        return
    from wfctl.notify import undelivered
    from wfctl.render import terminal_safe

    console = stdout_console()
    name = terminal_safe(document.get("workflowName"), keep_newlines=False)
    console.print(f"{document['executionId']} · {name} ({document.get('workflowId')})", markup=False)
    times = f"started {document.get('startedAt')}" if document.get("startedAt") else "not started"
    if document.get("completedAt"):
        times += f" · ended {document['completedAt']}"
    console.print(f"status {document['status']} · {times}", markup=False)
    if document.get("trigger") == "schedule":
        console.print(f"started by the scheduler for {document.get('scheduledAt')}", markup=False)
    if document.get("error"):
        console.print("error" + error_text(document["error"], " at "), markup=False)
    if document.get("cancelReason"):
        console.print(f"cancelled: {terminal_safe(document['cancelReason'], keep_newlines=False)}", markup=False)
    for line in undelivered(document):
        console.print(f"warning: {terminal_safe(line, keep_newlines=False)}", markup=False)
    console.print(execution_table(document))


def executions(
    workflow: Annotated[Optional[str], typer.Option(help="Only runs of this workflow (id or name).")] = None,
    status: Annotated[Optional[str], typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 20,
    json: Json = False,
) -> None:
    """List executions, newest first."""
    from wfctl import api

    envelope = api.list_executions(workflow=workflow, status=status, limit=limit)
    if json:
        emit_json(envelope)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("execution", "workflow", "status", "progress", "started", "trigger"):
        table.add_column(column, no_wrap=True)
    for element in envelope["elements"]:
        progress = element.get("progress") or {}
        table.add_row(
            element["executionId"],
            shown_cell(element.get("workflowName")),
            (element.get("status") or "") + (" (dry run)" if element.get("dryRun") else ""),
            f"{progress.get('completed', 0)}/{progress.get('total', 0)}" if progress else "",
            (element.get("startedAt") or "")[:19],
            element.get("trigger") or "manual",
        )
    stdout_console().print(table)
    for element in envelope["elements"]:
        if element.get("status") == "unreadable":
            say(f"{element['executionId']} cannot be read: {element.get('error')}")


def logs(
    execution_id: Annotated[str, typer.Argument(metavar="EXEC", help="An execution id.")],
    step: Annotated[Optional[str], typer.Argument(help="A step id (all its loop iterations and team members).")] = None,
    json: Json = False,
) -> None:
    """Print the captured output of a step's attempts (every step's without STEP)."""
    from wfctl import api

    document = api.logs(execution_id, step, raw=not json)
    if json:
        emit_json(document)
        return
    out = sys.stdout.buffer  # the exact bytes the steps printed
    for entry in document["logs"]:
        if len(document["logs"]) > 1 or step is None:
            out.write(f"##### {entry['step']}\n".encode())
        out.write(entry["log"])
    out.flush()


def register(app: typer.Typer) -> None:
    app.command()(execute)
    app.command()(retry)
    app.command()(watch)
    app.command()(cancel)
    app.command()(pause)
    app.command()(resume)
    app.command()(prune)
    app.command("_run", hidden=True)(run_detached)
    app.command()(execution)
    app.command()(executions)
    app.command()(logs)
