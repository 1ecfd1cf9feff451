"""The journal of one execution (`events.jsonl`): one writer, the runner; one reader, for everyone.

The journal is the record: one JSON event per line, appended as things happen. A
runner killed in the middle of an append leaves a torn last line (no newline yet):
the reader stops before it, and the next writer cuts it off before adding anything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from wfctl import faults
from wfctl.errors import StoreError
from wfctl.record import ExecutionState, apply_events, read_journal
from wfctl.store import open_append, read_bytes_nofollow, write_all

Listener = Callable[[dict, ExecutionState], None]
SYNC_INTERVAL = 0.2  # group commit: at most this long between journal fsyncs


class JournalReader:
    """Reads a journal incrementally: each `read()` returns the whole lines written
    since the last one. `offset` is where the intact part read so far ends (a torn
    tail is not part of it); `position` is how far the file has been read."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.position = offset
        self._pending = b""  # the start of a line whose newline has not been written yet
        # The number of the line that starts at `offset`; counted only when a corrupt
        # line must be named (counting means reading the journal from its start).
        self._line: int | None = 1 if offset == 0 else None

    def read(self) -> list[dict]:
        """The events of the whole lines added since the last read (none at all when
        the journal does not exist yet). A line that does not parse is a StoreError
        naming the journal and the line."""
        try:
            chunk = read_bytes_nofollow(self.path, offset=self.position)
        except FileNotFoundError:
            return []
        self.position += len(chunk)
        complete, newline, self._pending = (self._pending + chunk).rpartition(b"\n")
        if not newline:
            return []
        data = complete + newline
        events, _length = self._parse(data)
        if self._line is not None:
            self._line += data.count(b"\n")
        self.offset += len(data)
        return events

    def apply(self, state: ExecutionState, on_event: Listener | None = None) -> list[dict]:
        """Read the whole lines added since the last read and apply them to `state` (telling
        `on_event` of each); an event that cannot be applied is a StoreError naming its line."""
        line_before, offset_before = self._line, self.offset
        events = self.read()

        def line_of(index: int) -> int:
            first = line_before if line_before is not None else self._line_at(offset_before)
            return first + index

        apply_events(state, events, source=str(self.path), line_of=line_of, on_event=on_event)
        return events

    def _parse(self, data: bytes) -> tuple[list[dict], int]:
        try:
            return read_journal(data, source=str(self.path), first_line=self._line or 1)
        except StoreError:
            if self._line is not None:
                raise
            self._line = self._line_at(self.offset)
            return read_journal(data, source=str(self.path), first_line=self._line)  # raises, with the line

    def _line_at(self, offset: int) -> int:
        """The 1-based number of the line that starts at byte `offset`."""
        return read_bytes_nofollow(self.path, limit=offset).count(b"\n") + 1


class JournalWriter:
    """Appends whole lines to a journal, or fails and leaves it at its last whole line.

    Every line is in the operating system before `append` returns (unbuffered);
    `commit` fsyncs at most every SYNC_INTERVAL seconds (group commit), `sync` now.
    """

    def __init__(self, path: Path, *, intact: int | None = None) -> None:
        self.path = path
        if intact is not None and path.exists() and path.stat().st_size > intact:
            # A torn last line (a runner killed mid-append) goes before anything is added.
            os.truncate(path, intact)
        self._file = open_append(path)
        self.offset = self._file.seek(0, os.SEEK_END)  # where the next line starts
        self._last_sync = time.monotonic()

    def append(self, line: bytes) -> None:
        """Write one whole line (ending in a newline); OSError when it cannot be written,
        after cutting off whatever part of it reached the file."""
        faults.io_error("enospc-journal")
        if faults.reached("mid-append"):
            self._file.write(line[: len(line) // 2])
            os._exit(137)
        try:
            write_all(self._file.fileno(), line, fault="short-journal")
        except OSError:
            self._cut_back()
            raise
        self.offset += len(line)

    def _cut_back(self) -> None:
        """A failed append may have left part of its line on disk: the journal must end
        at its last whole line, where the next append (or a resume) starts."""
        try:
            os.ftruncate(self._file.fileno(), self.offset)
        except OSError:
            pass  # the append's own error is reported; a resume cuts a torn tail off too

    def commit(self) -> None:
        """fsync when the last one is SYNC_INTERVAL seconds old (a disk flush per event
        would bound a run by the disk's flush rate)."""
        now = time.monotonic()
        if now - self._last_sync >= SYNC_INTERVAL:
            self.sync()
            self._last_sync = now

    def sync(self) -> None:
        """fsync now. An error is not retried by the caller: after one, what reached
        the disk is unknown."""
        faults.io_error("eio-fsync")
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
