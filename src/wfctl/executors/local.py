"""The local executor: every attempt runs on this machine (agents.run_agent)."""

from __future__ import annotations

from wfctl.agents import AttemptContext, Outcome, run_agent


class LocalExecutor:
    runs_in_process = True

    def run(self, agent: dict, ctx: AttemptContext) -> Outcome:
        return run_agent(agent, ctx)

    def close(self) -> None:
        pass
