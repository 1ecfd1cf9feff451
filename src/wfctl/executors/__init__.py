"""Executors: where the attempts of steps run.

The engine hands every attempt to one `Executor`: `LocalExecutor` runs it on this
machine (agents.run_agent), `DaskExecutor` sends command and python attempts to a Dask
cluster. `open_executor` picks one from an address (`local`, `dask://HOST:PORT`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    from wfctl.agents import AttemptContext, Outcome


class Executor(Protocol):
    # True when python agents are called in this very process: the engine then folds
    # the start of an attempt that succeeds at once into its end (one journal event).
    runs_in_process: bool

    def run(self, agent: dict, ctx: "AttemptContext") -> "Outcome":
        """Run one attempt with `agent` (a definition dict; {} is echo). Never raises
        for the step's own failure: that is an Outcome."""
        ...

    def close(self) -> None:
        """Release what the executor holds (a cluster connection)."""
        ...


class CallableExecutor:
    """An executor given as a plain callable `(agent, ctx) -> Outcome` (the hook's first
    form, still accepted by Settings): it runs the attempts, nothing to close."""

    runs_in_process = False

    def __init__(self, call: Callable[[dict, "AttemptContext"], "Outcome"]) -> None:
        self.call = call

    def run(self, agent: dict, ctx: "AttemptContext") -> "Outcome":
        return self.call(agent, ctx)

    def close(self) -> None:
        pass


def as_executor(value: Executor | Callable | None) -> Executor:
    """An Executor from what a caller gave: None is this machine, a plain callable is
    wrapped, an Executor is itself."""
    if value is None:
        from wfctl.executors.local import LocalExecutor

        return LocalExecutor()
    if hasattr(value, "run") and hasattr(value, "close"):
        return value  # type: ignore[return-value]
    return CallableExecutor(value)


def open_executor(address: str | None) -> Executor:
    """The executor for an address: `local` (or nothing) is this machine.

    An executor that cannot be reached raises UsageError (exit 2) before anything runs.
    """
    if not address or address == "local":
        from wfctl.executors.local import LocalExecutor

        return LocalExecutor()
    if address.startswith(("dask://", "tcp://")):
        from wfctl.executors.dask import connect

        return connect(address)
    from wfctl.errors import UsageError

    raise UsageError(f"unknown executor '{address}': use local or dask://HOST:PORT.")
