"""Showing a run while it happens: a live Rich table on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from wfctl.render import event_line, execution_table, terminal_safe

REFRESH_SECONDS = 0.1


class PlainProgress:
    """One plain line per step event on stderr: for CI logs and pipes, no escape codes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, document: dict) -> None:
        scheduled = f" · scheduled for {document['scheduledAt']}" if document.get("scheduledAt") else ""
        sys.stderr.write(f"{document['executionId']} started · {terminal_safe(document.get('workflowName'))}{scheduled}\n")
        sys.stderr.flush()

    def __call__(self, event: dict, state: Any) -> None:
        line = event_line(event)
        if line is not None:
            with self._lock:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()


class LiveTable:
    """The live table of steps on stderr, redrawn every REFRESH_SECONDS from the
    execution document as it is now.

    Redrawing on a clock, not on events, is what keeps the screen true: an event that
    arrives between two redraws shows at the next one, and while a long step runs
    (no events at all) its time and the footer's keep ticking. Events that end the
    execution are drawn at once.
    """

    # Rows kept off the table's budget: the header, the blank line, the bar, the footer
    # (which may wrap once).
    CHROME_ROWS = 6

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.document: dict | None = None
        self._last: Any = None  # the last table drawn, shown again if a redraw fails
        self.live = Live(
            console=self.console,
            auto_refresh=True,
            refresh_per_second=1 / REFRESH_SECONDS,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
            get_renderable=self._renderable,
        )

    def __enter__(self) -> "LiveTable":
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()  # draws the final state once more

    def start(self, document: dict) -> None:
        self.document = document
        self.live.refresh()

    def __call__(self, event: dict, state: Any) -> None:
        self.document = state.document
        if event["type"].startswith("execution."):
            self.live.refresh()

    def _renderable(self) -> Any:
        """The table of the document as it is now (called by Rich's refresh thread)."""
        from rich.text import Text

        if self.document is None:
            return Text("")
        try:
            rows = max(1, self.console.height - self.CHROME_ROWS)
            self._last = execution_table(self.document, time.time(), max_rows=rows)
        except RuntimeError:
            # The engine changed the document while it was read (a dict that grew):
            # the next redraw, a tenth of a second later, reads it again.
            pass
        return self._last if self._last is not None else Text("")


class Silent:
    def __enter__(self) -> "Silent":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, document: dict) -> None:
        pass

    def __call__(self, event: dict, state: Any) -> None:
        pass


def progress_display(*, quiet: bool, json_mode: bool):
    if quiet or json_mode:
        return Silent()
    if sys.stderr.isatty():
        return LiveTable()
    return PlainProgress()
