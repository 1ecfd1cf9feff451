"""Executors: where the attempts of steps run.

The engine hands every attempt to one `Executor`: `LocalExecutor` runs it on this
machine (agents.run_agent), `DaskExecutor` sends command and python attempts to a Dask
cluster. `open_executor` picks one from an address (`local`, `dask://HOST:PORT`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

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
