"""config, agent, team: the user's config.toml."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from wfctl.cli.options import Json
from wfctl.cli.output import emit_json, say, shown_cell, stdout_console
from wfctl.errors import UsageError

if TYPE_CHECKING:
    from wfctl.api import Workspace
    from wfctl.config import Config

config_app = typer.Typer(help="Read and change config.toml (defaults, SMTP, Slack webhook, executor).", no_args_is_help=True)
agent_app = typer.Typer(help="Agents in config.toml: named workers that task steps use.", no_args_is_help=True)
team_app = typer.Typer(help="Teams in config.toml: groups of agents that team steps use.", no_args_is_help=True)


def _workspace() -> Workspace:
    """The default Workspace: its config is `$WFCTL_CONFIG`, else the per-user one."""
    from wfctl.api import Workspace

    return Workspace()


def _config(*, check: bool = True) -> Config:
    """config.toml of the default Workspace, as it is now (`check=False`: a file with
    problems, for the commands that repair it)."""
    return _workspace().load_config(check=check)


@config_app.command("path")
def config_path(json: Json = False) -> None:
    """Print where config.toml is."""
    path = _workspace().config_path
    if json:
        emit_json({"path": str(path)})
    else:
        typer.echo(str(path))


@config_app.command("get")
def config_get(
    key: Annotated[Optional[str], typer.Argument(help="A dotted key such as defaults.max_concurrency; none prints all.")] = None,
    json: Json = False,
) -> None:
    """Print a value of config.toml (or the whole file)."""
    config = _config()
    value = config.data if key is None else config.get(key)
    if json:
        emit_json({"key": key, "value": value} if key else value)
    elif isinstance(value, (dict, list)):
        import tomli_w

        typer.echo(tomli_w.dumps(value if isinstance(value, dict) else {key: value}).rstrip())
    else:
        typer.echo(str(value).lower() if isinstance(value, bool) else str(value))


@config_app.command("set")
def config_set(
    key: Annotated[str, typer.Argument(help="A dotted key such as defaults.max_concurrency.")],
    value: Annotated[str, typer.Argument(help="A TOML value (4, true, \"text\", [1, 2]) or plain text.")],
    json: Json = False,
) -> None:
    """Set a value in config.toml."""
    from wfctl.config import parse_config_value

    config = _config(check=False)  # a file with problems can be repaired with `config set`
    parsed = parse_config_value(value)
    config.set(key, parsed)
    if json:
        emit_json({"key": key, "value": parsed, "path": str(config.path)})
    else:
        say(f"{key} = {parsed!r} in {config.path}")
    warn_remaining(config)


@config_app.command("unset")
def config_unset(
    key: Annotated[str, typer.Argument(help="A dotted key such as defaults.max_running.")],
    json: Json = False,
) -> None:
    """Remove a value from config.toml (its built-in default applies again)."""
    config = _config(check=False)
    config.unset(key)
    if json:
        emit_json({"key": key, "removed": True, "path": str(config.path)})
    else:
        say(f"{key} removed from {config.path}")
    warn_remaining(config)


def warn_remaining(config) -> None:
    """After a change: the problems the file still has, one warning each (the change was saved)."""
    for problem in config.remaining_problems():
        say(f"warning: {problem}")


@agent_app.command("add")
def agent_add(
    name: Annotated[str, typer.Argument(help="The agent's name, as steps refer to it.")],
    run: Annotated[Optional[str], typer.Option("--run", help="A shell command; {{ task }} is the step's task.")] = None,
    python: Annotated[Optional[str], typer.Option("--python", help="package.module:function, called in-process.")] = None,
    http: Annotated[Optional[str], typer.Option("--http", help="A URL that receives the step context as a POST.")] = None,
    json: Json = False,
) -> None:
    """Add (or replace) an agent in config.toml."""
    given = {k: v for k, v in (("run", run), ("python", python), ("http", http)) if v is not None}
    if len(given) != 1:
        raise UsageError("give exactly one of --run, --python or --http.")
    config = _config(check=False)
    config.add_agent(name, given)
    if json:
        emit_json({"name": name, **given})
    else:
        say(f"agent '{name}' saved in {config.path}")
    warn_remaining(config)


@agent_app.command("list")
def agent_list(json: Json = False) -> None:
    """List the agents of config.toml."""
    agents = _config().agents
    if json:
        emit_json({name: definition for name, definition in sorted(agents.items())})
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("agent", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("definition")
    for name, definition in sorted(agents.items()):
        kind = next((k for k in ("run", "python", "http") if k in definition), "?")
        table.add_row(name, kind, shown_cell(definition.get(kind, "")))
    stdout_console().print(table)


@agent_app.command("remove")
def agent_remove(name: Annotated[str, typer.Argument(help="The agent's name.")], json: Json = False) -> None:
    """Remove an agent from config.toml."""
    config = _config(check=False)  # removing a broken agent is how a person repairs the file
    config.remove_agent(name)
    if json:
        emit_json({"removed": name})
    else:
        say(f"agent '{name}' removed")
    warn_remaining(config)


@team_app.command("add")
def team_add(
    name: Annotated[str, typer.Argument(help="The team's name, as team steps refer to it (teamId).")],
    member: Annotated[list[str], typer.Option("--member", "-m", help="An agent in the team (repeat).")],
    strategy: Annotated[str, typer.Option(help="round-robin, all or first-success.")] = "round-robin",
    json: Json = False,
) -> None:
    """Add (or replace) a team in config.toml."""
    config = _config(check=False)
    config.add_team(name, member, strategy)
    if json:
        emit_json({"name": name, "members": member, "strategy": strategy})
    else:
        say(f"team '{name}' saved in {config.path}")
    warn_remaining(config)


@team_app.command("list")
def team_list(json: Json = False) -> None:
    """List the teams of config.toml."""
    teams = _config().teams
    if json:
        emit_json({name: team for name, team in sorted(teams.items())})
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("team", "strategy", "members"):
        table.add_column(column)
    for name, team in sorted(teams.items()):
        table.add_row(name, str(team.get("strategy", "round-robin")), shown_cell(", ".join(team.get("members", []))))
    stdout_console().print(table)


@team_app.command("remove")
def team_remove(name: Annotated[str, typer.Argument(help="The team's name.")], json: Json = False) -> None:
    """Remove a team from config.toml."""
    config = _config(check=False)
    config.remove_team(name)
    if json:
        emit_json({"removed": name})
    else:
        say(f"team '{name}' removed")
    warn_remaining(config)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
    app.add_typer(agent_app, name="agent")
    app.add_typer(team_app, name="team")
