"""Where output goes: data on stdout, people's messages on stderr."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def emit_json(document: Any) -> None:
    """One JSON document on stdout, never through Rich (which would eat `[...]`).

    Indented for a person at a terminal; compact for pipes and files, where Python's
    fast C encoder writes a 10,000-step execution in a few milliseconds.
    """
    if sys.stdout.isatty():
        text = json.dumps(document, indent=2, ensure_ascii=False, default=str)
    else:
        text = json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def say(text: str) -> None:
    """A message for people, on stderr; control characters from names, step output or
    errors are shown escaped, never sent to the terminal raw."""
    from wfctl.render import terminal_safe

    sys.stderr.write(terminal_safe(text) + "\n")
    sys.stderr.flush()


def shown_cell(value: object):
    """A table cell holding text from outside: never Rich markup, control characters escaped."""
    from rich.text import Text

    from wfctl.render import terminal_safe

    return Text(terminal_safe("" if value is None else value, keep_newlines=False))


def stdout_console():
    """A Rich console for human tables on stdout; plain text when not a terminal."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=max(120, _columns()), no_color=True, force_terminal=False)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _columns() -> int:
    try:
        return int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        return 0


def report_error(err: BaseException, *, json_mode: bool, internal: bool = False) -> None:
    from wfctl.errors import WorkflowInvalid

    message = getattr(err, "message", None) or str(err) or type(err).__name__
    if internal:
        message = f"internal error: {type(err).__name__}: {message} (set WFCTL_DEBUG=1 for details)"
    say(f"wfctl: error: {message}")
    if json_mode:
        document: dict[str, Any] = {"error": getattr(err, "seed_message", None) or message}
        if getattr(err, "seed_message", None):
            document["detail"] = message
        if isinstance(err, WorkflowInvalid):
            document["problems"] = [p.to_dict() for p in err.problems]
        emit_json(document)
