"""Steering a running execution from another process: cancel, pause and resume as files.

`wfctl cancel` and `wfctl pause` write a request into the execution's directory (its
handle's `Requests`, wfctl.execution_dir); the process running it watches for requests
(every WATCH_SECONDS) and acts on them. Files work across terminals, CI steps and
reboots, need no server, and a request made while no runner is alive is still there
when one starts again. A run starting (execute, a queued run, resume, retry) applies
a cancel request it finds.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from wfctl import events
from wfctl.model import now_iso

if TYPE_CHECKING:
    from wfctl.execution_dir import Requests

WATCH_SECONDS = 0.1


class Watcher:
    """Runs beside the engine: applies cancel and pause requests as they appear.

    Pausing: no new step starts (the engine's gate blocks), running steps finish, and
    the execution is `paused` once none is running. Removing the request resumes it.
    """

    def __init__(self, control: Requests, engine: Any, emit: Callable[[dict], None]) -> None:
        self.control = control
        self.engine = engine
        self.emit = emit
        self._condition = threading.Condition()
        self._checking = threading.Lock()
        self._pausing = control.pause_requested()
        self._announced = False
        self._stop = threading.Event()
        self._started = False
        self._thread = threading.Thread(target=self._watch, name="wfctl-control", daemon=True)
        engine.set_pause_gate(self.gate)

    def start(self) -> None:
        self._started = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._condition:
            self._condition.notify_all()
        if self._started:
            self._thread.join()

    def gate(self) -> None:
        """Called before a step starts; returns once the execution is not paused."""
        self.check()  # a request made since the watcher last looked holds this step too
        with self._condition:
            while self._pausing and not self.engine.cancelled and not self._stop.is_set():
                self._condition.wait(0.5)

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_SECONDS):
            self.check()

    def check(self) -> None:
        with self._checking:
            self._check()

    def check_cancel(self) -> None:
        """Apply a cancel request, if there is one (also before the run's first event)."""
        with self._checking:
            self._check_cancel()

    def _check_cancel(self) -> None:
        request = self.control.cancel_request()
        if request is not None and not self.engine.cancelled:
            self.engine.cancel(request.get("reason"), status="cancelled")
            with self._condition:
                self._condition.notify_all()

    def _check(self) -> None:
        self._check_cancel()
        pausing = self.control.pause_requested()
        with self._condition:
            if pausing and not self._pausing:
                self._pausing = True
            elif not pausing and self._pausing:
                self._pausing = False
                if self._announced:
                    self._announced = False
                    self.emit(events.execution_status(now_iso(), "running"))
                self._condition.notify_all()
            if self._pausing and not self._announced and self.engine.active == 0 and not self.engine.cancelled:
                self._announced = True
                self.emit(events.execution_status(now_iso(), "paused"))


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)

