"""Files that a step (or a user) can have replaced by something else, read and written safely.

A step knows its log directory (`dirname $WFCTL_OUTPUT`): it can put a FIFO, a device,
a directory or a symlink where wfctl will read its output or open the next log. Opening a
FIFO blocks, reading a device never ends. So these files are opened non-blocking (and
without following a symlink where wfctl chose the path), checked with fstat to be
regular files, and read with a bound; writes are whole or an error (a short write is not
a write).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class NotRegularFile(OSError):
    """The path holds a FIFO, a directory, a device, a socket or a symlink."""

    def __init__(self, path: Path | str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"it is {kind}, not a regular file", str(path))
        self.kind = kind


KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def kind_of(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: Path | str, flags: int = os.O_RDONLY, mode: int = 0o600, *, follow: bool = False) -> int:
    """A descriptor of the regular file at `path`, or NotRegularFile / OSError.

    Checked before opening (nothing is opened that is not a regular file: opening a device
    can have effects) and after, on the descriptor (the path can change in between).
    O_NONBLOCK: even a FIFO swapped in at the last moment cannot block the open.
    """
    try:
        found = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        if not flags & os.O_CREAT:
            raise
    else:
        if not stat.S_ISREG(found.st_mode):
            raise NotRegularFile(path, kind_of(found.st_mode))
    extra = os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags | extra, mode)
    except OSError as err:
        if err.errno == errno.ELOOP and not follow:
            raise NotRegularFile(path, "a symbolic link") from None
        if err.errno == errno.ENXIO:  # a FIFO without a reader, or a socket
            raise NotRegularFile(path, "a FIFO or a socket") from None
        raise
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise NotRegularFile(path, kind_of(opened.st_mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: Path | str, limit: int, *, follow: bool = False) -> bytes:
    """At most `limit` bytes from the start of the regular file at `path`."""
    fd = open_regular(path, os.O_RDONLY, follow=follow)
    try:
        return read_upto(fd, limit)
    finally:
        os.close(fd)


def read_upto(fd: int, limit: int) -> bytes:
    chunks = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_tail(path: Path | str, size: int) -> bytes:
    """The last `size` bytes of the regular file at `path` (never through a symlink)."""
    fd = open_regular(path, os.O_RDONLY)
    try:
        length = os.fstat(fd).st_size
        os.lseek(fd, max(0, length - size), os.SEEK_SET)
        return read_upto(fd, size)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte or raise: a short write (a nearly full disk) is continued, and a
    write that makes no progress is ENOSPC, never counted as done."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def remove(path: Path | str) -> None:
    """Remove a scratch file of a step, whatever the step made of it (a file, a FIFO, a
    symlink, which is removed and not followed, or a directory tree)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    except IsADirectoryError:
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    except OSError as err:
        if err.errno in (errno.EISDIR, errno.EPERM):  # unlink of a directory on some systems
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def describe_error(err: OSError) -> str:
    """The reason of an OSError as the end of a sentence (no trailing period)."""
    return str(err.strerror or err).rstrip(".")
