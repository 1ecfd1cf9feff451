"""Pure builders of what people see: the live step table, lists, and event lines.

Nothing here does I/O; the CLI prints what these return.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any, Iterable

STATUS_STYLE = {
    "pending": "dim",
    "running": "bold cyan",
    "completed": "green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "yellow",
    "paused": "yellow",
    "interrupted": "yellow",
    "timed_out": "bold red",
}
STATUS_MARK = {
    "pending": "·",
    "running": "▶",
    "completed": "✓",
    "failed": "✗",
    "skipped": "–",
    "cancelled": "■",
}


# Characters that would act on a terminal instead of being shown (escape sequences, carriage
# returns, NUL, C1 controls) or reorder what is shown (bidi overrides).
_UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: Any, *, keep_newlines: bool = True) -> str:
    """Text from outside (names, descriptions, step output, error messages), fit for a
    terminal: every control character is shown as its escape (`\\x1b`), never sent raw."""
    text = str(text)
    if not keep_newlines:
        text = text.replace("\n", "\\n")
    if not _UNSHOWABLE.search(text):
        return text
    return _UNSHOWABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def format_duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def step_rows(steps: Iterable[dict], depth: int = 0, limit: int = 60) -> list[tuple[int, dict]]:
    """(depth, record) for the rows of the step table, nested steps after their parent.

    Long loops show their running and failed iterations, not all ten thousand.
    """
    rows: list[tuple[int, dict]] = []
    for record in steps:
        rows.append((depth, record))
        children = record.get("steps")
        if not children:
            continue
        if len(children) > limit:
            shown = [c for c in children if c.get("status") in ("running", "failed")][:limit]
            rows.extend((depth + 1, child) for child in shown)
        else:
            rows.extend(step_rows(children, depth + 1, limit))
    return rows


def loop_progress(record: dict) -> str:
    if "total" not in record:
        return ""
    done = sum(1 for c in record.get("steps", []) if c.get("status") in ("completed", "skipped"))
    return f"{done}/{record['total']}"


def waiting_for(record: dict, records: dict[str, dict]) -> list[str]:
    """The steps a pending step with dependencies still waits for (those not ended yet)."""
    from wfctl.depends import DependsError, parse_depends
    from wfctl.model import STEP_ENDED, suffix_of

    written = record.get("dependsOn")
    if record.get("status") != "pending" or written is None:
        return []
    try:
        ids = parse_depends(written).ids()
    except DependsError:
        return []
    suffix = suffix_of(record["id"])
    return [step for step in ids if (records.get(step + suffix) or {}).get("status") not in STEP_ENDED]


def attempts_label(record: dict) -> str:
    attempts = record.get("attempts") or []
    return str(len(attempts)) if len(attempts) > 1 else ""


LIVE_STATUSES = ("pending", "running", "paused")  # an execution whose clocks still run


def seconds_between(start: Any, end: Any) -> float | None:
    """Seconds from one ISO 8601 time to another (`end` may be epoch seconds)."""
    if not isinstance(start, str):
        return None
    try:
        began = datetime.fromisoformat(start).timestamp()  # Python 3.11 reads the "Z" itself
        ended = end if isinstance(end, (int, float)) else datetime.fromisoformat(str(end)).timestamp()
    except ValueError:
        return None
    return max(0.0, ended - began)


def step_time(record: dict, document_live: bool, now: float) -> Any:
    """A step's duration once it ended; while it runs, how long it has been running."""
    if record.get("duration") is not None or record.get("status") != "running" or not document_live:
        return record.get("duration")
    return seconds_between(record.get("startedAt"), now)


def execution_elapsed(document: dict, now: float) -> float | None:
    """How long the execution has run: to its end, or to `now` while it runs."""
    if document.get("status") in LIVE_STATUSES:
        return seconds_between(document.get("startedAt"), now)
    return seconds_between(document.get("startedAt"), document.get("completedAt"))


def visible_rows(rows: list[tuple[int, dict]], limit: int | None) -> tuple[list[tuple[int, dict]], int, int]:
    """At most `limit` rows, keeping the running (else the latest ended) step in view:
    (rows, hidden above, hidden below)."""
    if limit is None or len(rows) <= limit:
        return rows, 0, 0
    limit = max(limit, 1)
    focus = 0
    for position, (_depth, record) in enumerate(rows):
        if record.get("status") == "running":
            focus = position
            break
        if record.get("status") != "pending":
            focus = position
    start = min(max(0, focus - limit // 2), len(rows) - limit)
    return rows[start : start + limit], start, len(rows) - start - limit


def execution_table(document: dict, now: float | None = None, max_rows: int | None = None):
    """The table of one execution: a row per step, then an overall progress bar and a
    footer. While it runs, running steps and the footer show the time so far (at `now`,
    epoch seconds); `max_rows` bounds the rows shown (a live view fits its terminal)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    now = time.time() if now is None else now
    live = document.get("status") in LIVE_STATUSES
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False)
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("agent", no_wrap=True)
    table.add_column("try", justify="right")
    table.add_column("time", justify="right")
    every_row = step_rows(document.get("steps", []))
    # A pending step with depends says what it waits for: its siblings' records by key.
    records = {r["id"]: r for _, r in every_row} if any("dependsOn" in r for _, r in every_row) else {}
    rows, above, below = visible_rows(every_row, max_rows)
    if above:
        table.add_row(Text(f"… {above} more above", style="dim"), "", "", "", "")
    for depth, record in rows:
        status = record.get("status", "pending")
        mark = STATUS_MARK.get(status, " ")
        name = Text("  " * depth + f"{mark} {record['id']}")
        extra = loop_progress(record)
        if extra:
            name.append(f"  {extra}", style="dim")
        waits = waiting_for(record, records) if records else []
        if waits:
            name.append(f"  waits for {', '.join(waits)}", style="dim")
        table.add_row(
            name,
            Text(status, style=STATUS_STYLE.get(status, "")),
            Text(str(record.get("agent") or record.get("member") or "")),
            attempts_label(record),
            format_duration(step_time(record, live, now)),
        )
    if below:
        table.add_row(Text(f"… {below} more below", style="dim"), "", "", "", "")
    progress = document.get("progress") or {}
    total = progress.get("total") or 0
    completed = progress.get("completed") or 0
    status = document.get("status", "")
    footer = Text()
    footer.append(f"{terminal_safe(document.get('workflowName') or '')} ", style="bold")
    footer.append(f"{status} ", style=STATUS_STYLE.get(status, ""))
    footer.append(f"{completed}/{total} steps")
    elapsed = execution_elapsed(document, now)
    if elapsed is not None:
        footer.append(f" · {format_duration(elapsed)}")
    if document.get("scheduledAt"):
        footer.append(f" · scheduled for {document['scheduledAt']}", style="dim")
    if document.get("estimatedCompletion") and status == "running":
        footer.append(f" · eta {document['estimatedCompletion']}", style="dim")
    running = document.get("currentSteps") or []
    if running and live:
        shown = ", ".join(running[-3:]) + (f" (+{len(running) - 3} more)" if len(running) > 3 else "")
        footer.append(f" · running {shown}", style="dim")
    bar = ProgressBar(total=max(total, 1), completed=completed, width=40)
    return Group(table, Text(""), bar, footer)


def event_line(event: dict) -> str | None:
    """One plain line per step event, for logs and CI (no terminal, no escape codes)."""
    kind = event["type"]
    at = event.get("at", "")[11:19]
    if kind == "step.started":
        if "attempt" not in event:
            return f"{at} {event['step']} started"
        retry = f" (attempt {event['attempt']})" if event["attempt"] > 1 else ""
        return f"{at} {event['step']} started · {event.get('agent')}{retry}"
    if kind == "step.finished":
        status = event["status"]
        line = f"{at} {event['step']} {status}"
        if status != "skipped":
            line += f" in {format_duration(event.get('duration'))}"
        elif event.get("skipReason"):
            line += f": {event['skipReason']}"
        error = event.get("error")
        if error and status != "completed":
            line += f": {terminal_safe(error.get('message'), keep_newlines=False)}"
        if event.get("retryStopped"):
            line += f" (not retried: {terminal_safe(event['retryStopped'], keep_newlines=False)})"
        return line
    if kind == "attempt.failed":
        error = event.get("error") or {}
        message = terminal_safe(error.get("message") or "", keep_newlines=False).rstrip(".")
        return f"{at} {event['step']} attempt {event['attempt']} failed: {message}; retrying in {event.get('retryIn')}s"
    if kind == "execution.finished":
        line = f"{at} execution {event['status']}"
        error = event.get("error")
        if error:
            line += error_text(error, " at ")
        reason = event.get("reason")
        if reason and not (error and str(error.get("message") or "").startswith(reason)):
            line += f" ({terminal_safe(reason, keep_newlines=False)})"
        return line
    return None


def error_text(error: dict, before_step: str) -> str:
    """`<before_step>STEP: MESSAGE`, or `: MESSAGE` for an error of no one step (a
    timeout before any step started)."""
    step = error.get("step")
    message = terminal_safe(error.get("message"), keep_newlines=False)
    return (f"{before_step}{step}" if step else "") + f": {message}"


def summary_text(document: dict) -> str:
    """The closing line of `execute` for people."""
    status = document.get("status")
    progress = document.get("progress") or {}
    text = (
        f"{document.get('executionId')} {status} · "
        f"{progress.get('completed', 0)}/{progress.get('total', 0)} steps"
    )
    error = document.get("error")
    if status in ("failed", "timed_out") and error:
        where = f"{error['step']}: " if error.get("step") else ""
        text += f" · {where}{terminal_safe(error.get('message'), keep_newlines=False)}"
    elif status in ("cancelled", "interrupted") and document.get("cancelReason"):
        text += f" · {terminal_safe(document['cancelReason'], keep_newlines=False)}"
    return text
