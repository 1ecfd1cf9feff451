"""Pure builders of what people see: the live step table, lists, and event lines.

Nothing here does I/O; the CLI prints what these return.
"""

from __future__ import annotations

import re
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


def attempts_label(record: dict) -> str:
    attempts = record.get("attempts") or []
    return str(len(attempts)) if len(attempts) > 1 else ""


def execution_table(document: dict, elapsed: float | None = None):
    """The live table of one execution: a row per step, then an overall progress bar."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, expand=False, show_edge=False)
    table.add_column("step", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("agent", no_wrap=True)
    table.add_column("try", justify="right")
    table.add_column("time", justify="right")
    for depth, record in step_rows(document.get("steps", [])):
        status = record.get("status", "pending")
        mark = STATUS_MARK.get(status, " ")
        name = Text("  " * depth + f"{mark} {record['id']}")
        extra = loop_progress(record)
        if extra:
            name.append(f"  {extra}", style="dim")
        table.add_row(
            name,
            Text(status, style=STATUS_STYLE.get(status, "")),
            Text(str(record.get("agent") or record.get("member") or "")),
            attempts_label(record),
            format_duration(record.get("duration")),
        )
    progress = document.get("progress") or {}
    total = progress.get("total") or 0
    completed = progress.get("completed") or 0
    status = document.get("status", "")
    footer = Text()
    footer.append(f"{terminal_safe(document.get('workflowName') or '')} ", style="bold")
    footer.append(f"{status} ", style=STATUS_STYLE.get(status, ""))
    footer.append(f"{completed}/{total} steps")
    if elapsed is not None:
        footer.append(f" · {format_duration(elapsed)}")
    if document.get("estimatedCompletion") and status == "running":
        footer.append(f" · eta {document['estimatedCompletion']}", style="dim")
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
        error = event.get("error")
        if error and status != "completed":
            line += f": {terminal_safe(error.get('message'), keep_newlines=False)}"
        return line
    if kind == "attempt.failed":
        error = event.get("error") or {}
        message = terminal_safe(error.get("message") or "", keep_newlines=False).rstrip(".")
        return f"{at} {event['step']} attempt {event['attempt']} failed: {message}; retrying in {event.get('retryIn')}s"
    if kind == "execution.finished":
        line = f"{at} execution {event['status']}"
        if event.get("error"):
            line += f" at {event['error'].get('step')}: {terminal_safe(event['error'].get('message'), keep_newlines=False)}"
        if event.get("reason"):
            line += f" ({terminal_safe(event['reason'], keep_newlines=False)})"
        return line
    return None


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
        text += f" · {error.get('step')}: {terminal_safe(error.get('message'), keep_newlines=False)}"
    elif status in ("cancelled", "timed_out", "interrupted") and document.get("cancelReason"):
        text += f" · {terminal_safe(document['cancelReason'], keep_newlines=False)}"
    return text
