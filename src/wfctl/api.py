"""The library under the command line: everything `wfctl` does, callable from Python.

It matches the seed's SDK (create, list, get, execute, get_execution, cancel,
retry_step) and never prints or exits: results are plain dicts in the seed's JSON
shapes, and failures are `wfctl.errors.WfctlError` subclasses carrying an exit code.

    from wfctl import api
    workflow = api.create("examples/workflows/hello.yaml")
    execution = api.execute(workflow["workflowId"], input={"name": "Ada"})
    print(execution["status"])

Every operation is a method of a `Workspace`: one data directory and one config file
(wfctl.workspace). The functions here are those methods on a default Workspace, made
at each call from `$WFCTL_HOME` and `$WFCTL_CONFIG` (or the per-user directories), so
a program that changes them is followed. A program that wants a data directory of its
own, or two, makes Workspaces:

    from wfctl.api import Workspace
    staging = Workspace(home="/srv/wfctl/staging", config="/srv/wfctl/staging.toml")
    staging.execute("nightly")
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, TypeVar

from wfctl.workspace import (
    EXIT_FOR_STATUS,
    FINISHED,
    PRIORITIES,
    Listener,
    Workspace,
    exit_code_for,
    looks_like_path,
    prior_from,
    public_document,
    summary,
    unreadable,
)

__all__ = [
    "EXIT_FOR_STATUS",
    "FINISHED",
    "PRIORITIES",
    "Listener",
    "Workspace",
    "exit_code_for",
    "looks_like_path",
    "prior_from",
    "public_document",
    "summary",
    "unreadable",
    # the operations, on a default Workspace:
    "validate",
    "warnings",
    "create",
    "get",
    "delete",
    "list",
    "resolve_workflow",
    "definition_of",
    "execute",
    "prepare",
    "run_prepared",
    "start_detached",
    "retry_step",
    "load_execution_state",
    "load_execution",
    "get_execution",
    "list_executions",
    "logs",
    "watch",
    "cancel",
    "pause",
    "resume",
    "runner_alive",
    "prune",
    "traces",
    "trace",
]

Result = TypeVar("Result")


def _on_default_workspace(method: Callable[..., Result]) -> Callable[..., Result]:
    """`method` as a function that runs it on a Workspace made for the call (its home
    and config read from the environment then), with the method's name, text and
    signature without `self`."""

    @functools.wraps(method)
    def call(*args, **kwargs) -> Result:
        return method(Workspace(), *args, **kwargs)

    signature = inspect.signature(method)
    call.__signature__ = signature.replace(parameters=tuple(signature.parameters.values())[1:])  # type: ignore[attr-defined]
    call.__module__ = __name__
    call.__qualname__ = method.__name__
    return call


validate = _on_default_workspace(Workspace.validate)
warnings = _on_default_workspace(Workspace.warnings)
create = _on_default_workspace(Workspace.create)
get = _on_default_workspace(Workspace.get)
delete = _on_default_workspace(Workspace.delete)
list = _on_default_workspace(Workspace.list)  # noqa: A001 - the seed's SDK calls it list
resolve_workflow = _on_default_workspace(Workspace.resolve_workflow)
definition_of = _on_default_workspace(Workspace.definition_of)
execute = _on_default_workspace(Workspace.execute)
prepare = _on_default_workspace(Workspace.prepare)
run_prepared = _on_default_workspace(Workspace.run_prepared)
start_detached = _on_default_workspace(Workspace.start_detached)
retry_step = _on_default_workspace(Workspace.retry_step)
load_execution_state = _on_default_workspace(Workspace.load_execution_state)
load_execution = _on_default_workspace(Workspace.load_execution)
get_execution = _on_default_workspace(Workspace.get_execution)
list_executions = _on_default_workspace(Workspace.list_executions)
logs = _on_default_workspace(Workspace.logs)
watch = _on_default_workspace(Workspace.watch)
cancel = _on_default_workspace(Workspace.cancel)
pause = _on_default_workspace(Workspace.pause)
resume = _on_default_workspace(Workspace.resume)
runner_alive = _on_default_workspace(Workspace.runner_alive)
prune = _on_default_workspace(Workspace.prune)
traces = _on_default_workspace(Workspace.traces)
trace = _on_default_workspace(Workspace.trace)
