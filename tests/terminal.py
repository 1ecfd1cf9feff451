"""Running `wfctl` on a real terminal (a pty) and reading what it draws.

`Terminal` starts a command with stdin, stdout and stderr on a pseudo-terminal of a
fixed size, reads everything it writes from a thread, and keeps the screen that a
terminal would show in a `Screen`: a small VT100 subset (cursor moves, erase in line
and display, carriage return, newline with scrolling), which is what Rich's live
display uses. Tests poll `Terminal.screen_text()` with `wait_for`; nothing sleeps.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import termios
import threading
from typing import Any

_CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")


class Screen:
    """The character cells of a terminal, changed by the text written to it."""

    def __init__(self, rows: int, columns: int) -> None:
        self.rows = rows
        self.columns = columns
        self.lines = [[" "] * columns for _ in range(rows)]
        self.row = 0
        self.column = 0
        self._pending = ""  # an escape sequence cut between two reads

    def feed(self, text: str) -> None:
        text = self._pending + text
        self._pending = ""
        position = 0
        while position < len(text):
            char = text[position]
            if char == "\x1b":
                match = _CSI.match(text, position) or _OSC.match(text, position)
                if match is None:
                    if len(text) - position < 64:  # incomplete: wait for the rest
                        self._pending = text[position:]
                        return
                    position += 1  # a lone ESC: ignore it
                    continue
                if match.re is _CSI:
                    self._control(match.group(1), match.group(2))
                position = match.end()
                continue
            self._put(char)
            position += 1

    def _put(self, char: str) -> None:
        if char == "\r":
            self.column = 0
        elif char == "\n":
            self._line_feed()
        elif char == "\b":
            self.column = max(0, self.column - 1)
        elif char >= " ":
            if self.column < self.columns:
                self.lines[self.row][self.column] = char
            self.column += 1

    def _line_feed(self) -> None:
        if self.row == self.rows - 1:
            self.lines.pop(0)
            self.lines.append([" "] * self.columns)
        else:
            self.row += 1

    def _control(self, params: str, final: str) -> None:
        if params.startswith("?"):
            return  # private modes (cursor visibility...): nothing to draw
        numbers = [int(p) if p else 0 for p in params.split(";")] if params else []
        count = max(1, numbers[0]) if numbers else 1
        mode = numbers[0] if numbers else 0
        if final == "A":
            self.row = max(0, self.row - count)
        elif final == "B":
            self.row = min(self.rows - 1, self.row + count)
        elif final == "C":
            self.column = min(self.columns - 1, self.column + count)
        elif final == "D":
            self.column = max(0, self.column - count)
        elif final == "G":
            self.column = min(self.columns - 1, count - 1)
        elif final in "Hf":
            row = numbers[0] if numbers else 1
            column = numbers[1] if len(numbers) > 1 else 1
            self.row = min(self.rows - 1, max(1, row) - 1)
            self.column = min(self.columns - 1, max(1, column) - 1)
        elif final == "K":
            line = self.lines[self.row]
            start, end = {0: (self.column, self.columns), 1: (0, self.column + 1)}.get(mode, (0, self.columns))
            for cell in range(start, min(end, self.columns)):
                line[cell] = " "
        elif final == "J":
            if mode == 2 or mode == 3:
                self.lines = [[" "] * self.columns for _ in range(self.rows)]
            elif mode == 0:
                self._control("0", "K")
                for row in range(self.row + 1, self.rows):
                    self.lines[row] = [" "] * self.columns
        # 'm' (colours and styles) and anything else change no character

    def text(self) -> str:
        return "\n".join("".join(line).rstrip() for line in self.lines).rstrip("\n")


class Terminal:
    """A command running on a pseudo-terminal of `rows` × `columns`."""

    def __init__(self, argv: list[str], rows: int = 40, columns: int = 120, env: dict | None = None) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        environment = dict(os.environ if env is None else env)
        environment["TERM"] = "xterm-256color"
        environment.pop("COLUMNS", None)
        environment.pop("LINES", None)
        self.screen = Screen(rows, columns)
        self.raw = bytearray()
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=environment, start_new_session=True, close_fds=True
        )
        os.close(slave)
        self._master = master
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import codecs

        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: every process holding the terminal has ended
                break
            if not data:
                break
            with self._lock:
                self.raw.extend(data)
                self.screen.feed(decoder.decode(data))
        os.close(self._master)

    def screen_text(self) -> str:
        with self._lock:
            return self.screen.text()

    def wait(self, timeout: float) -> int:
        """The command's exit code, once it and the reader are done."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def stop(self) -> None:
        """End the command if it still runs (a failed test must not leave it behind)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=10)


def row_of(screen: str, step: str) -> str | None:
    """The table row of `step` on a screen (the step column shows `<mark> <key>`)."""
    pattern = re.compile(rf"^\s*\S {re.escape(step)}\s")
    for line in screen.splitlines():
        if pattern.match(line):
            return line
    return None


def shown_seconds(text: Any) -> float | None:
    """The last duration written in `text` (`850ms`, `12.5s`, `3m07s`), in seconds."""
    found = re.findall(r"(?:(\d+)m(\d\d)s|(\d+(?:\.\d+)?)(ms|s))(?!\w)", text or "")
    if not found:
        return None
    minutes, rest, number, unit = found[-1]
    if minutes:
        return int(minutes) * 60 + int(rest)
    return float(number) / 1000 if unit == "ms" else float(number)
