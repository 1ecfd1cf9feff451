"""Error-handling policy: which failures are retried, and how long to wait before each retry.

`backoff_delay` is a pure function so it can be tested without waiting; the engine
does the waiting, interruptibly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_MAX_RETRIES = 3
DEFAULT_DELAY = 1.0
DEFAULT_MAX_DELAY = 60.0


@dataclass(frozen=True)
class Policy:
    strategy: str = "fail"  # retry | fallback | fail | continue
    max_retries: int = 0  # retries after the first attempt
    backoff: str = "exponential"  # exponential | linear | fixed
    delay: float = DEFAULT_DELAY
    max_delay: float = DEFAULT_MAX_DELAY
    jitter: bool = False
    retry_on: tuple[str, ...] = ("failed", "timeout")
    max_duration: float | None = None
    escalate: bool = False
    escalate_to: str | None = None
    notify_on_error: bool = False
    fallback: dict | None = None

    @property
    def attempts(self) -> int:
        return 1 + self.max_retries

    def retries(self, kind: str, exit_code: int | None) -> bool:
        """Is a failure of this kind (failed, timeout, error) one this policy retries?"""
        if kind not in ("failed", "timeout"):
            return False  # errors (agent missing, bad template) are never retried
        for rule in self.retry_on:
            if rule == kind:
                return True
            if rule.startswith("exit:") and kind == "failed" and exit_code is not None:
                if rule[5:].lstrip("-").isdigit() and int(rule[5:]) == exit_code:
                    return True
        return False


# Fields that only make sense for retries: a policy that sets any of them (and no
# strategy) asks for retries, so it gets `strategy: retry` rather than being ignored.
RETRY_FIELDS = ("maxRetries", "backoff", "delay", "maxDelay", "jitter", "retryOn", "maxDuration")


def policy_for(workflow_policy: dict | None, step_policy: dict | None, inherited: dict | None = None) -> Policy:
    """The step's policy: its own errorHandling over the retry fields handed down by
    the steps it is inside (see retry_fields_inside) over the workflow's, field by field."""
    merged = dict(workflow_policy or {})
    merged.update(inherited or {})
    merged.update(step_policy or {})
    max_retries = _max_retries(merged, step_policy or {})
    strategy = merged.get("strategy") or ("retry" if max_retries > 0 else "fail")
    retry_on = merged.get("retryOn")
    return Policy(
        strategy=strategy,
        max_retries=max_retries,
        backoff=merged.get("backoff", "exponential"),
        delay=float(merged.get("delay", DEFAULT_DELAY)),
        max_delay=float(merged.get("maxDelay", DEFAULT_MAX_DELAY)),
        jitter=bool(merged.get("jitter", False)),
        retry_on=tuple(retry_on) if retry_on else ("failed", "timeout"),
        max_duration=float(merged["maxDuration"]) if merged.get("maxDuration") else None,
        escalate=bool(merged.get("escalateOnFailure", False)),
        escalate_to=merged.get("escalateTo"),
        notify_on_error=bool(merged.get("notifyOnError", False)),
        fallback=merged.get("fallback") if isinstance(merged.get("fallback"), dict) else None,
    )


def _max_retries(merged: dict, step_policy: dict) -> int:
    """How many retries follow a failed first attempt.

    `maxRetries` says it whatever the strategy (the strategy says what happens after
    the last attempt). Without it: `retry` means DEFAULT_MAX_RETRIES, and so does a
    policy with no strategy that sets another retry field (backoff, delay, retryOn...).
    A step's own `strategy: fail` (without its own maxRetries) turns off the retries
    it would inherit from the workflow.
    """
    if step_policy.get("strategy") == "fail" and "maxRetries" not in step_policy:
        return 0
    if "maxRetries" in merged:
        return int(merged["maxRetries"])
    strategy = merged.get("strategy")
    if strategy == "retry" or (strategy is None and any(field in merged for field in RETRY_FIELDS)):
        return DEFAULT_MAX_RETRIES
    return 0


def retry_fields_inside(inherited: dict | None, own: dict | None) -> dict | None:
    """What a parallel, conditional or loop step hands down to the steps inside it.

    Such a step is never run again itself: its retry fields (and `strategy: retry`)
    are the default of the steps inside it, over what it inherited. The rest of its
    policy (fallback, continue, escalation) is about the group as a whole. Returns
    `inherited` itself when the step adds nothing.
    """
    own = own or {}
    fields = {name: own[name] for name in RETRY_FIELDS if name in own}
    if own.get("strategy") == "retry":
        fields["strategy"] = "retry"
    if not fields:
        return inherited
    return {**(inherited or {}), **fields}


def backoff_delay(policy: Policy, retry: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number `retry` (1 for the first retry).

    exponential: delay·2^(retry-1); linear: delay·retry; fixed: delay. Capped at
    max_delay; with jitter, a uniformly random share of that ("full jitter").
    """
    if retry < 1:
        return 0.0
    if policy.backoff == "fixed":
        wait = policy.delay
    elif policy.backoff == "linear":
        wait = policy.delay * retry
    else:
        wait = policy.delay * (2 ** min(retry - 1, 62))
    wait = min(wait, policy.max_delay)
    if policy.jitter:
        wait = (rng or random).uniform(0, wait)
    return wait
