"""The Typer application: the commands of each group live in their own module."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from wfctl import __version__

app = typer.Typer(
    name="wfctl",
    help="A local-first workflow engine: register workflow files, run them, steer them, read their history.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wfctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """wfctl runs workflow files locally and keeps every run as JSON files.

    Exit codes: 0 completed, 1 failed, 2 usage or validation error, 3 not found,
    4 cancelled, 5 timed out, 6 does not fit the execution's state, 130 interrupted.
    """


from wfctl.cli import executions, schedules, settings, traces, workflows  # noqa: E402

workflows.register(app)
executions.register(app)
traces.register(app)
settings.register(app)
schedules.register(app)
