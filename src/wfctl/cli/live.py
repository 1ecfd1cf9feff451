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
        sys.stderr.write(f"{document['executionId']} started · {terminal_safe(document.get('workflowName'))}\n")
        sys.stderr.flush()

    def __call__(self, event: dict, state: Any) -> None:
        line = event_line(event)
        if line is not None:
            with self._lock:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()


class LiveTable:
    """The live table of steps on stderr, redrawn at most every REFRESH_SECONDS."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.live = Live(console=self.console, auto_refresh=False, transient=False, redirect_stdout=False, redirect_stderr=False)
        self.document: dict | None = None
        self.started = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def __enter__(self) -> "LiveTable":
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._draw(force=True)
        self.live.stop()

    def start(self, document: dict) -> None:
        self.document = document
        self._draw(force=True)

    def __call__(self, event: dict, state: Any) -> None:
        self.document = state.document
        self._draw(force=event["type"].startswith("execution."))

    def _draw(self, *, force: bool) -> None:
        now = time.monotonic()
        if self.document is None or (not force and now - self._last < REFRESH_SECONDS):
            return
        with self._lock:
            self._last = now
            self.live.update(execution_table(self.document, now - self.started), refresh=True)


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
