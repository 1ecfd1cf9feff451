"""schedules, schedule pause/resume/next, scheduler: running workflows on a schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Optional

import typer

from wfctl.cli.options import Json
from wfctl.cli.output import emit_json, say, stdout_console
from wfctl.errors import UsageError

schedule_app = typer.Typer(help="Pause, resume and check the schedules of a workflow.", no_args_is_help=True)
scheduler_app = typer.Typer(invoke_without_command=True)


def moment_option(text: str | None, option: str) -> datetime | None:
    """An ISO 8601 time from the command line (UTC when it has no offset)."""
    if text is None:
        return None
    from wfctl.schedules import parse_moment

    try:
        return parse_moment(text)
    except ValueError:
        raise UsageError(f"{option} must be an ISO 8601 time such as 2026-03-29T01:00:00Z, not '{text}'.") from None


def schedules(json: Json = False) -> None:
    """List every schedule: next run, last run and its status, paused or not."""
    from wfctl.scheduler import list_schedules

    listing = list_schedules()
    if json:
        emit_json(listing)
        return
    from rich.table import Table

    from wfctl.schedules import local_zone, parse_moment

    table = Table(box=None, pad_edge=False)
    for column in ("workflow", "schedule", "next run", "last run", "status", "paused"):
        table.add_column(column, no_wrap=column != "schedule")
    for element in listing["elements"]:
        if "error" in element:
            table.add_row(element["workflowId"], element["error"], "", "", "error", "")
            continue
        zone = local_zone()[1] if "every" in element["schedule"] else _zone(element["schedule"])
        last = element.get("lastRun") or {}
        table.add_row(
            element["workflowName"] or element["workflowId"],
            _rule(element["schedule"]),
            _local(element["nextRunAt"], zone, parse_moment) if element["nextRunAt"] else "-",
            _local(last["scheduledAt"], zone, parse_moment) if last else "-",
            last.get("status") or "-",
            "paused" if element["paused"] else "",
        )
    stdout_console().print(table)
    scheduler = listing["scheduler"]
    if scheduler["running"]:
        say(f"{listing['count']} schedule{'s' if listing['count'] != 1 else ''} · scheduler running (pid {scheduler['pid']})")
    else:
        say(f"{listing['count']} schedule{'s' if listing['count'] != 1 else ''} · no scheduler is running: "
            "start one with `wfctl scheduler` (or at boot: `wfctl scheduler install`)")


def _zone(schedule: dict):
    from wfctl.schedules import zone_named

    try:
        return zone_named(schedule.get("timezone") or "UTC")
    except ValueError:  # the machine's zone ("localtime" read from a file) is shown in UTC
        from wfctl.schedules import UTC

        return UTC


def _rule(schedule: dict) -> str:
    if "cron" in schedule:
        return f"cron {schedule['cron']} ({schedule['timezone']})"
    return f"every {schedule['every']}"


def _local(text: str, zone, parse) -> str:
    return parse(text).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z")


@schedule_app.command("pause")
def schedule_pause(
    workflow: Annotated[str, typer.Argument(metavar="WF", help="A workflow id or exact name.")],
    json: Json = False,
) -> None:
    """Pause a workflow's schedules: due runs are skipped until resume (runs already started go on)."""
    from wfctl.scheduler import pause

    result = pause(workflow)
    if json:
        emit_json(result)
    else:
        state = "paused" if result["changed"] else "was already paused"
        say(f"schedules of '{result['workflowName']}' ({result['workflowId']}) {state} · "
            f"resume them with: wfctl schedule resume {result['workflowId']}")


@schedule_app.command("resume")
def schedule_resume(
    workflow: Annotated[str, typer.Argument(metavar="WF", help="A workflow id or exact name.")],
    json: Json = False,
) -> None:
    """Resume a workflow's schedules from now (runs missed while paused are not caught up)."""
    from wfctl.scheduler import resume

    result = resume(workflow)
    if json:
        emit_json(result)
    else:
        state = "resumed" if result["changed"] else "were not paused"
        say(f"schedules of '{result['workflowName']}' ({result['workflowId']}) {state}")


@schedule_app.command("next")
def schedule_next(
    workflow: Annotated[str, typer.Argument(metavar="WF", help="A workflow id, exact name, or workflow file.")],
    count: Annotated[int, typer.Option("--count", "-n", help="How many run times per schedule.")] = 5,
    start: Annotated[Optional[str], typer.Option("--from", help="Count from this ISO 8601 time instead of now.")] = None,
    json: Json = False,
) -> None:
    """Print the next run times of a workflow's schedules, in their time zones (to check a cron expression)."""
    from wfctl.scheduler import next_runs

    result = next_runs(workflow, count=count, start=moment_option(start, "--from"))
    if json:
        emit_json(result)
        return
    for shown in result["schedules"]:
        if len(result["schedules"]) > 1:
            typer.echo(f"# {_rule(shown['schedule'])}")
        for moment in shown["localTimes"]:
            typer.echo(moment)


@scheduler_app.callback()
def scheduler(
    context: typer.Context,
    now: Annotated[Optional[str], typer.Option("--now", hidden=True, help="Start the clock at this time (tests).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", hidden=True, help="Stop when the clock reaches this time.")] = None,
    once: Annotated[bool, typer.Option("--once", hidden=True, help="Look at every schedule once, then stop.")] = False,
) -> None:
    """Start scheduled runs on time until SIGTERM or Ctrl-C; `install` starts it at boot.

    Each run is a normal background execution (trigger: schedule); what the scheduler
    does is logged on stderr. One scheduler per data directory: a second one is refused.
    """
    if context.invoked_subcommand is not None:
        return
    from wfctl.scheduler import run_scheduler

    run_scheduler(now=moment_option(now, "--now"), until=moment_option(until, "--until"), once=once)


@scheduler_app.command("install")
def scheduler_install(
    write: Annotated[bool, typer.Option("--write", help="Write the systemd user unit (it is not enabled).")] = False,
    kind: Annotated[str, typer.Option("--kind", help="auto, systemd or cron.")] = "auto",
    json: Json = False,
) -> None:
    """Print (or write) a systemd user unit that runs the scheduler, or a crontab line without systemd."""
    from wfctl.scheduler import install

    result = install(kind=kind, write=write)
    if json:
        emit_json(result)
        return
    if result["kind"] == "cron":
        typer.echo(result["line"])
        say("no systemd here: add this line with `crontab -e` to start the scheduler at boot "
            "(run it once now by hand: wfctl scheduler)")
        return
    if result["written"]:
        say(f"wrote {result['path']}; enable and start it with:")
    else:
        typer.echo(result["unit"], nl=False)
        say(f"write it to {result['path']} with --write, then enable and start it with:")
    for command in result["commands"]:
        say(f"  {command}")
    say("(and `loginctl enable-linger` to keep it running while you are logged out)")


def register(app: typer.Typer) -> None:
    app.command()(schedules)
    app.add_typer(schedule_app, name="schedule")
    app.add_typer(scheduler_app, name="scheduler")
