"""From an attempt's outcome to what the state and the record keep: one bound for every agent kind.

Command output is cut to agents.INLINE_OUTPUT_LIMIT while it streams; every other
result (python, http, echo, a Dask worker's) is whole when its attempt ends. `settle`
is where each outcome passes before it becomes an event: its result must be JSON data
(values.check), and a result whose JSON is larger than the limit is kept as the
beginning of that JSON text with command output's marker. The state gets the same
value as the record, so what `resume` and `retry` restore from the record is what the
next steps saw in the first place.
"""

from __future__ import annotations

from wfctl.agents import AttemptContext, Outcome, _log_attempt, describe, failure
from wfctl.values import NotJSON, bound, writable

# Kinds whose whole output is already in the step's log (streamed there as it came).
LOGGED_KINDS = ("command", "http")


def settle(outcome: Outcome, ctx: AttemptContext, agent: dict) -> Outcome:
    """`outcome` with a result fit for the state and the record, or a failure saying
    why the result is not JSON data (and where in it)."""
    if not outcome.ok:
        if outcome.error is not None:
            outcome.error = writable(outcome.error)
        return outcome
    if outcome.settled:
        return outcome
    kind = describe(agent)
    try:
        bounded = bound(outcome.output)
    except NotJSON as problem:
        message = f"the result of the {kind} agent is not JSON data: {problem}."
        _log_quietly(ctx, kind, message)
        settled = failure("failed", message, outcome.exit_code)
        settled.worker = outcome.worker
        return settled
    if bounded.spill is not None and kind not in LOGGED_KINDS:
        _log_quietly(ctx, f"{kind} result (JSON)", bounded.spill)
    outcome.output = bounded.value
    outcome.settled = True
    return outcome


def _log_quietly(ctx: AttemptContext, what: str, text: str) -> None:
    """A section of the step's log; the record says the same, so a log that cannot be
    written does not change the outcome."""
    try:
        _log_attempt(ctx, what, text)
    except OSError:
        pass
