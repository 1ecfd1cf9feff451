"""Waiting for the processes wfctl starts: always with a deadline, never on their pipes.

A process's pipes are not its lifetime. A step can close or redirect its stdout and
stderr and run on (`exec >build.log; sleep 20`), or end while a grandchild still holds
them. So the wait here ends on the process's *exit* (a pidfd in the same poll(2) as its
pipes: no thread, no extra tick), on the deadline, or on a cancel, whichever comes
first; the pipes are only read along the way. After SIGKILL a process is reaped with a
bound too: one stuck in the kernel is given up on, never waited for forever.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

# Stopping a process group is procgroup's (one helper, shipped to Dask workers too).
from wfctl.procgroup import KILL_GRACE_SECONDS, REAP_SECONDS, kill_group, signal_group, terminate_group, wait_exit

__all__ = ["KILL_GRACE_SECONDS", "REAP_SECONDS", "Tail", "kill_group", "run_with_deadline", "signal_group",
           "stdin_pipe", "supervise", "terminate_group", "wait_exit"]

TICK = 0.2  # how often a cancel is looked for while nothing happens
EXIT_TICK = 0.02  # without a pidfd and with every pipe closed: how often the exit is looked for
READ_SIZE = 65536
TAIL_BYTES = 4096  # of stderr (and stdout) kept for a failed step's error line
PIPE_PRELOAD = 32 * 1024  # stdin data up to this size is written before the process starts

Reader = Callable[[bytes], None]


class Tail:
    """The last `size` bytes of a stream: enough for its last line, whatever its length."""

    def __init__(self, size: int = TAIL_BYTES) -> None:
        self.size = size
        self.data = b""

    def add(self, chunk: bytes) -> None:
        self.data = (self.data + chunk)[-self.size:]

    def last_line(self, width: int = 200) -> str:
        """The last non-empty line, stripped and cut to `width` characters ("" if none)."""
        for line in reversed(self.data.decode("utf-8", "replace").splitlines()):
            if line.strip():
                return line.strip()[:width]
        return ""


@dataclass
class Stdin:
    """What a process gets on stdin: the read end for Popen, and what is left to feed."""

    read_fd: int
    write_fd: int  # -1 when everything was written before the start
    pending: bytes

    def close_child_end(self) -> None:
        """After the start: the child has its own copy of the read end."""
        os.close(self.read_fd)
        self.read_fd = -1

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.read_fd = self.write_fd = -1


def stdin_pipe(data: bytes) -> Stdin:
    """A pipe preloaded with `data`: most fits before the start, so the wait watches the
    output only; the rest is fed as the process reads it."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        data = data[os.write(write_fd, data[:PIPE_PRELOAD]):]
    except BlockingIOError:
        pass
    if not data:
        os.close(write_fd)
        write_fd = -1
    return Stdin(read_fd, write_fd, data)


def supervise(
    proc: subprocess.Popen,
    readers: dict[int, Reader],
    *,
    stdin: Stdin | None = None,
    deadline: float | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> str:
    """Read the process's pipes into `readers` until it exits, the deadline (monotonic)
    passes or `cancelled()` says so. Returns "exit", "timeout" or "cancelled".

    On "exit" what the process left in its pipes is read and anything left in its
    process group is killed; otherwise the group is terminated (SIGTERM, then SIGKILL).
    An exception (e.g. a reader that cannot write the log) terminates the group too.
    """
    watch = _Watch(proc, readers, stdin)
    try:
        ended_by = watch.run(deadline, cancelled)
    except BaseException:
        terminate_group(proc)
        raise
    finally:
        watch.close()
    if ended_by == "exit":
        kill_group(proc)  # grandchildren left running in the step's group do not outlive it
    else:
        terminate_group(proc)
    return ended_by


class _Watch:
    """One poll(2) set: the process's pipes, its stdin while data is pending, its pidfd."""

    def __init__(self, proc: subprocess.Popen, readers: dict[int, Reader], stdin: Stdin | None) -> None:
        self.proc = proc
        self.readers = dict(readers)
        self.open = set(readers)
        self.poller = select.poll()
        for fd in readers:
            self.poller.register(fd, select.POLLIN)
        self.stdin_fd = -1
        self.pending = memoryview(b"")
        if stdin is not None and stdin.write_fd >= 0:
            self.stdin_fd, stdin.write_fd = stdin.write_fd, -1
            self.pending = memoryview(stdin.pending)
            os.set_blocking(self.stdin_fd, False)
            self.poller.register(self.stdin_fd, select.POLLOUT)
        self.pidfd = _pidfd(proc.pid)
        if self.pidfd is not None:
            self.poller.register(self.pidfd, select.POLLIN)

    def run(self, deadline: float | None, cancelled: Callable[[], bool]) -> str:
        while True:
            wait = TICK if (self.pidfd is not None or self.open) else EXIT_TICK
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            events = self.poller.poll(wait * 1000)
            exit_signalled = False
            for fd, _mask in events:
                if fd == self.pidfd:
                    exit_signalled = True
                elif fd in self.open:
                    self._read(fd)
                elif fd == self.stdin_fd:
                    self._feed()
            if (exit_signalled or self.pidfd is None) and self.proc.poll() is not None:
                self._drain()
                return "exit"
            if cancelled():
                return "cancelled"
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        if data:
            self.readers[fd](data)
        else:
            self.poller.unregister(fd)
            self.open.discard(fd)

    def _drain(self) -> None:
        """What the ended process wrote is in its pipes: take it, without waiting for an
        end of file that a grandchild holding the pipes may never give."""
        for fd in sorted(self.open):
            os.set_blocking(fd, False)
            while True:
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    break
                if not data:
                    break
                self.readers[fd](data)

    def _feed(self) -> None:
        try:
            written = os.write(self.stdin_fd, self.pending)
            self.pending = self.pending[written:]
        except BlockingIOError:
            return
        except OSError:  # the process closed its stdin (EPIPE): the rest is not wanted
            self.pending = self.pending[:0]
        if not self.pending:
            self.poller.unregister(self.stdin_fd)
            os.close(self.stdin_fd)
            self.stdin_fd = -1

    def close(self) -> None:
        for fd in (self.stdin_fd, self.pidfd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.stdin_fd, self.pidfd = -1, None


def _pidfd(pid: int) -> int | None:
    """A descriptor that polls readable when `pid` exits (Linux 5.3+); None elsewhere."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


@dataclass
class Finished:
    """How a process run by `run_with_deadline` ended."""

    ended_by: str  # exit, timeout, cancelled
    code: int | None
    stderr: Tail


def run_with_deadline(
    argv: list[str], data: bytes, *, timeout: float, env: dict[str, str] | None = None, cwd: str | None = None
) -> Finished:
    """Run a helper command (a notification hook) in its own process group: `data` on
    stdin, stdout discarded, the tail of stderr kept; ended within `timeout` seconds
    (plus the kill grace) whatever it does with its pipes. OSError if it cannot start."""
    stdin = stdin_pipe(data)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdin.read_fd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: a timeout stops the whole tree
            close_fds=True,
        )
    except OSError:
        stdin.close()
        raise
    stdin.close_child_end()
    stderr = Tail()
    try:
        ended_by = supervise(
            proc,
            {proc.stdout.fileno(): lambda chunk: None, proc.stderr.fileno(): stderr.add},
            stdin=stdin,
            deadline=time.monotonic() + timeout,
        )
    finally:
        stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    return Finished(ended_by, proc.returncode, stderr)
