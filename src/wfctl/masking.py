"""Secrets: resolved at run time from the environment or files, never written anywhere.

A workflow's `secrets:` names values (`{env: VAR}` or `{file: PATH}`); steps get them as
environment variables. Every value, and its JSON-escaped and Base64 forms, is replaced by
`***` in logs, execution records, traces, notifications and the live table.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Iterable

from wfctl.errors import UsageError

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values cannot be masked without masking ordinary text
MAX_SECRET_FILE_BYTES = 64 * 1024  # a key or a certificate chain fits; /dev/zero does not


def resolve(secrets: dict | None, *, base: Path | None = None) -> dict[str, str]:
    """NAME → value for a workflow's `secrets:` block. A missing one is a usage error."""
    values: dict[str, str] = {}
    for name, source in (secrets or {}).items():
        if not isinstance(source, dict):
            continue
        if "env" in source:
            value = os.environ.get(str(source["env"]))
            if value is None:
                raise UsageError(f"secret '{name}' comes from the environment variable {source['env']}, which is not set.")
        elif "file" in source:
            path = Path(os.path.expanduser(str(source["file"])))
            if base is not None and not path.is_absolute():
                path = base / path
            value = _read_secret_file(str(name), path)
        else:
            continue
        if len(value) < MIN_SECRET_LENGTH:
            raise UsageError(
                f"secret '{name}' is shorter than {MIN_SECRET_LENGTH} characters; wfctl could not mask it reliably."
            )
        values[str(name)] = value
    return values


def _read_secret_file(name: str, path: Path) -> str:
    """A secret file's text: a regular file (a symlink to one is fine, it is the user's
    own path), opened without blocking (a FIFO never hangs the run), read with a bound."""
    from wfctl.stepfiles import NotRegularFile, describe_error, read_regular

    try:
        data = read_regular(path, MAX_SECRET_FILE_BYTES + 1, follow=True)
    except NotRegularFile as err:
        raise UsageError(f"secret '{name}' cannot be read from {path}: {err.strerror}.") from None
    except OSError as err:
        raise UsageError(f"secret '{name}' cannot be read from {path}: {describe_error(err)}.") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise UsageError(f"secret '{name}' in {path} is larger than {MAX_SECRET_FILE_BYTES // 1024} KiB; a secret file holds one value.")
    try:
        return data.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError as err:
        raise UsageError(f"secret '{name}' cannot be read from {path}: it is not UTF-8 text ({err.reason} at byte {err.start}).") from None


class Masker:
    """Replaces secret values (and their escaped forms) by *** in text and bytes."""

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[str] = set()
        for value in values:
            forms.add(value)
            forms.add(json.dumps(value)[1:-1])  # as it appears inside a JSON string
            forms.add(json.dumps(value, ensure_ascii=False)[1:-1])
            forms.add(base64.b64encode(value.encode("utf-8")).decode("ascii").rstrip("="))
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=len, reverse=True)
        self.forms = ordered
        self._text = re.compile("|".join(re.escape(f) for f in ordered)) if ordered else None
        self._bytes = (
            re.compile(b"|".join(re.escape(f.encode("utf-8")) for f in ordered)) if ordered else None
        )
        self.longest = max((len(f.encode("utf-8")) for f in ordered), default=0)

    def __bool__(self) -> bool:
        return self._text is not None

    def text(self, value: str) -> str:
        return self._text.sub(MASK, value) if self._text is not None else value

    def data(self, value: bytes) -> bytes:
        return self._bytes.sub(MASK.encode(), value) if self._bytes is not None else value

    def stream(self) -> "StreamMasker":
        return StreamMasker(self)


class StreamMasker:
    """Masks a byte stream written in pieces: a secret split across two writes is
    still caught, because the last few bytes wait for the next piece."""

    def __init__(self, masker: Masker) -> None:
        self.masker = masker
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.masker.data(self.pending + chunk)
        keep = max(0, self.masker.longest - 1)
        if keep == 0 or len(data) <= keep:
            self.pending = data if keep else b""
            return b"" if keep else data
        self.pending = data[-keep:]
        return data[:-keep]

    def flush(self) -> bytes:
        data, self.pending = self.masker.data(self.pending), b""
        return data
