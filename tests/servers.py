"""Real local servers for tests: an HTTP recorder and a minimal SMTP server.

Both listen on 127.0.0.1 on a free port, run in a daemon thread, record what they receive
in a thread-safe list, and let a test block until N items arrived (never sleep):

    from servers import http_server, smtp_server

    with http_server(status=200) as web:
        post_something(web.url + "/hook")
        [request] = web.wait_for(1)
        assert request.method == "POST" and request.json["event"] == "failed"
        web.status = 500                      # later requests are answered 500

    with smtp_server() as mail:
        smtplib.SMTP("127.0.0.1", mail.port).sendmail("a@x", ["b@x"], "Subject: hi\\r\\n\\r\\nbody")
        [message] = mail.wait_for(1)
        assert message.recipients == ["b@x"] and message.message["Subject"] == "hi"

`wait_for(count, timeout=10)` returns every item received so far once there are at least
`count`, and fails the test (AssertionError) when they do not arrive in time.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import json
import socketserver
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, Iterator, TypeVar

__all__ = [
    "HTTPRecorder", "Mail", "Recorded", "Request", "SMTPRecorder", "Trickler", "http_server", "smtp_server",
    "trickle_server",
]

T = TypeVar("T")


class Recorded(Generic[T]):
    """A thread-safe list that a test can wait on."""

    what = "items"

    def __init__(self) -> None:
        self._items: list[T] = []
        self._changed = threading.Condition()

    def _add(self, item: T) -> None:
        with self._changed:
            self._items.append(item)
            self._changed.notify_all()

    @property
    def items(self) -> list[T]:
        """A copy of what was received so far."""
        with self._changed:
            return list(self._items)

    def wait_for(self, count: int, timeout: float = 10) -> list[T]:
        """Block until at least `count` items arrived; return them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._items) >= count, timeout=timeout):
                raise AssertionError(
                    f"expected {count} {self.what} within {timeout}s, got {len(self._items)}: {self._items!r}"
                )
            return list(self._items)


# -- HTTP ------------------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    path: str                 # with the query string, as sent
    headers: dict[str, str]   # header names lower-cased
    body: bytes
    json: Any = None          # the parsed body when it is JSON, else None


class HTTPRecorder(Recorded[Request]):
    """What `http_server()` yields. Set `status`/`body` to change later answers."""

    what = "requests"

    def __init__(self, server: ThreadingHTTPServer, status: int, body: Any) -> None:
        super().__init__()
        self.server = server
        self.port: int = server.server_address[1]
        self.url: str = f"http://127.0.0.1:{self.port}"
        self.status = status
        self.body = body      # bytes/str sent as is, anything else as JSON

    @property
    def requests(self) -> list[Request]:
        return self.items


@contextmanager
def http_server(status: int = 200, body: Any = b"ok") -> Iterator[HTTPRecorder]:
    """A ThreadingHTTPServer on 127.0.0.1:0 recording every request, answering `status`."""
    recorder: HTTPRecorder

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            headers = {name.lower(): value for name, value in self.headers.items()}
            recorder._add(Request(self.command, self.path, headers, raw, parsed))
            reply = recorder.body
            if isinstance(reply, str):
                data, kind = reply.encode("utf-8"), "text/plain; charset=utf-8"
            elif isinstance(reply, bytes):
                data, kind = reply, "text/plain; charset=utf-8"
            else:
                data, kind = json.dumps(reply).encode("utf-8"), "application/json"
            self.send_response(recorder.status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    recorder = HTTPRecorder(server, status, body)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-http", daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- a slow HTTP server ----------------------------------------------------------------------
class Trickler(Recorded[bytes]):
    """What `trickle_server()` yields: the request heads received (one item per request)."""

    what = "requests"

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()  # set to end every answer being trickled


@contextmanager
def trickle_server(body: bytes = b"x" * 600, *, headers_too: bool = False, pause: float = 0.2,
                   piece: int = 1) -> Iterator[Trickler]:
    """An HTTP server on 127.0.0.1:0 that answers 200 with `body` (Content-Length set), but
    `piece` bytes at a time with `pause` seconds between pieces: each socket read of the
    client gets data in time, so only a deadline over the whole request can end it. With
    `headers_too` the status line and headers come that way as well. The pacing ends when
    the client goes away or the context exits."""
    recorder: Trickler

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = self.rfile.readline(65536)
                if not line:
                    return
                head += line
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            self.rfile.read(length)
            recorder._add(head)
            top = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                   + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            try:
                if headers_too:
                    self._trickle(top)
                else:
                    self.wfile.write(top)
                self._trickle(body)
            except OSError:  # the client gave up: that is what the tests want
                return

        def _trickle(self, data: bytes) -> None:
            for start in range(0, len(data), piece):
                if recorder.stop.wait(pause):
                    return
                self.wfile.write(data[start:start + piece])
                self.wfile.flush()

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    recorder = Trickler(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-trickle", daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        recorder.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -- SMTP ------------------------------------------------------------------------------------
@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes                           # the message as received (dot-unstuffed, CRLF)
    message: email.message.EmailMessage   # data parsed with email.policy.default (LF)
    user: str | None = None               # who logged in (AUTH PLAIN), if anyone
    text: str = field(default="", repr=False)   # the body of a single-part text message

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))


class SMTPRecorder(Recorded[Mail]):
    """What `smtp_server()` yields."""

    what = "messages"

    def __init__(self, server: socketserver.ThreadingTCPServer) -> None:
        super().__init__()
        self.server = server
        self.host = "127.0.0.1"
        self.port: int = server.server_address[1]
        self.url = f"smtp://127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[Mail]:
        return self.items


def _address(argument: str) -> str:
    """`FROM:<a@x> SIZE=12` -> `a@x`."""
    _, _, rest = argument.partition(":")
    rest = rest.strip()
    if rest.startswith("<"):
        return rest[1 : rest.find(">")] if ">" in rest else rest[1:]
    return rest.split()[0] if rest else ""


@contextmanager
def smtp_server(*, auth: tuple[str, str] | None = None, reject: tuple[str, ...] = ()) -> Iterator[SMTPRecorder]:
    """A minimal SMTP server on 127.0.0.1:0 recording every message.

    Speaks what smtplib needs: greeting, EHLO/HELO, MAIL FROM, RCPT TO, DATA, RSET, NOOP,
    QUIT. With `auth=(user, password)` it advertises and requires AUTH PLAIN. Recipients in
    `reject` are refused with 550.
    """
    recorder: SMTPRecorder
    rejected = {r.lower() for r in reject}

    class Handler(socketserver.StreamRequestHandler):
        timeout = 30

        def reply(self, line: str) -> None:
            self.wfile.write(line.encode("utf-8") + b"\r\n")
            self.wfile.flush()

        def handle(self) -> None:
            sender: str | None = None
            recipients: list[str] = []
            user: str | None = None
            self.reply("220 127.0.0.1 wfctl test SMTP ready")
            while True:
                raw = self.rfile.readline(65536)
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                verb, _, argument = line.partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    if auth:
                        self.reply("250-127.0.0.1 hello")
                        self.reply("250 AUTH PLAIN")
                    else:
                        self.reply("250 127.0.0.1 hello")
                elif verb == "HELO":
                    self.reply("250 127.0.0.1 hello")
                elif verb == "AUTH" and auth:
                    mechanism, _, initial = argument.partition(" ")
                    if mechanism.upper() != "PLAIN":
                        self.reply("504 only AUTH PLAIN")
                        continue
                    if not initial:
                        self.reply("334 ")
                        initial = self.rfile.readline(65536).decode("ascii", "replace").strip()
                    try:
                        _, name, password = base64.b64decode(initial).decode("utf-8").split("\0")
                    except ValueError:
                        self.reply("501 malformed AUTH PLAIN")
                        continue
                    if (name, password) == auth:
                        user = name
                        self.reply("235 authenticated")
                    else:
                        self.reply("535 bad user name or password")
                elif verb == "MAIL":
                    if auth and user is None:
                        self.reply("530 authentication required")
                        continue
                    sender, recipients = _address(argument), []
                    self.reply("250 sender ok")
                elif verb == "RCPT":
                    if sender is None:
                        self.reply("503 MAIL first")
                        continue
                    address = _address(argument)
                    if address.lower() in rejected:
                        self.reply(f"550 no such user {address}")
                        continue
                    recipients.append(address)
                    self.reply("250 recipient ok")
                elif verb == "DATA":
                    if sender is None or not recipients:
                        self.reply("503 need MAIL and RCPT first")
                        continue
                    self.reply("354 end with <CRLF>.<CRLF>")
                    lines = []
                    while True:
                        chunk = self.rfile.readline(1 << 20)
                        if not chunk or chunk in (b".\r\n", b".\n"):
                            break
                        lines.append(chunk[1:] if chunk.startswith(b".") else chunk)
                    data = b"".join(lines)
                    # parsed with \n line ends, so get_content() reads as Python text
                    message = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
                    text = ""
                    if not message.is_multipart():
                        try:
                            text = message.get_content()
                        except (KeyError, LookupError, ValueError):
                            text = ""
                    recorder._add(Mail(sender, list(recipients), data, message, user, text))
                    sender, recipients = None, []
                    self.reply("250 queued")
                elif verb == "RSET":
                    sender, recipients = None, []
                    self.reply("250 reset")
                elif verb == "NOOP":
                    self.reply("250 ok")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply(f"502 {verb} not implemented")

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    recorder = SMTPRecorder(server)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="test-smtp", daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
