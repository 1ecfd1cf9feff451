"""One deadline for a whole HTTP exchange, however the server paces its bytes.

urllib's `timeout` bounds each socket operation: a server that sends one byte every few
seconds keeps a request alive for ever. A `Watchdog` watches every socket an opener
connects and shuts them down when its deadline passes (or `cancelled()` says so): the
blocked read returns at once, and `fired` tells the caller why the answer ended.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable

TICK = 0.2  # how often a cancel is looked for


class Watchdog:
    """Shuts the attempt's sockets down when its deadline passes or the run is cancelled:
    a blocked read then returns at once, however the server paces its bytes."""

    def __init__(self, deadline: float, cancelled: Callable[[], bool] = lambda: False) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.fired: str | None = None  # "timeout" or "cancelled"
        self._sockets: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="wfctl-http-deadline", daemon=True)
        self._thread.start()

    def connection_factory(self, http_class: Any) -> Callable[..., Any]:
        """`http_class`, with each socket it connects registered here as soon as it is
        connected (urllib drops the connection's own reference once the headers are in)."""

        def make(*args: Any, **kwargs: Any) -> Any:
            connection = http_class(*args, **kwargs)
            connect = connection.connect

            def watched_connect() -> None:
                connect()
                self._add(connection.sock)

            connection.connect = watched_connect
            return connection

        return make

    def _add(self, sock: Any) -> None:
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shut(sock)

    def _watch(self) -> None:
        while not self._stop.wait(min(TICK, max(0.0, self.deadline - time.monotonic()))):
            if time.monotonic() >= self.deadline:
                self._fire("timeout")
                return
            if self.cancelled():
                self._fire("cancelled")
                return

    def _fire(self, why: str) -> None:
        with self._lock:
            self.fired = why
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def stop(self) -> None:
        self._stop.set()

    def opener(self) -> Any:
        """A urllib opener (proxies and redirects as usual) whose connections are watched."""
        import urllib.request

        http_handler, https_handler = _watched_handler_classes()
        return urllib.request.build_opener(http_handler(self), https_handler(self))

    def __enter__(self) -> "Watchdog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _shut(sock: Any) -> None:
    import socket

    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@functools.cache
def _watched_handler_classes() -> tuple[type, type]:
    """urllib's handlers, with every connection they open watched by the attempt's watchdog."""
    import urllib.request

    class WatchedHTTPHandler(urllib.request.HTTPHandler):
        def __init__(self, watchdog: Watchdog) -> None:
            super().__init__()
            self.watchdog = watchdog

        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(self.watchdog.connection_factory(http_class), req, **kwargs)

    class WatchedHTTPSHandler(urllib.request.HTTPSHandler):
        def __init__(self, watchdog: Watchdog) -> None:
            super().__init__()
            self.watchdog = watchdog

        def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
            return super().do_open(self.watchdog.connection_factory(http_class), req, **kwargs)

    return WatchedHTTPHandler, WatchedHTTPSHandler
