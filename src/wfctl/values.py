"""Values that come from steps: decoded with a depth bound, checked as JSON data, capped.

Everything a step hands back is untrusted: command output and `$WFCTL_OUTPUT` text,
HTTP bodies, a python agent's return value, a Dask worker's report. Before such a value
reaches the state and the record it must be JSON data that every reader can read back:

- text becomes JSON only when it nests at most MAX_DEPTH levels; deeper JSON stays
  text (Python's decoder recurses once per level, and every reader's stack is finite);
- a Python value must be JSON data: dicts with string keys, lists (or tuples), strings
  that are UTF-8 text, finite numbers, booleans and None, no cycles, at most MAX_DEPTH
  levels; `check` names the first part that is not, and where (`$.a[2]`);
- a result whose JSON is larger than INLINE_LIMIT is kept as the beginning of that
  JSON text with the marker command output gets (`bound`).

Standard library only, and nothing from wfctl: the Dask executor ships this file's
source to the process that calls a python agent on a worker, so that the check there
is this same code.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple

MAX_DEPTH = 128  # levels of nested lists and objects a step's result may have
INLINE_LIMIT = 256 * 1024  # bytes of a result kept inline (agents.INLINE_OUTPUT_LIMIT)
# A result an agent already cut to INLINE_LIMIT carries its marker: that much more is
# still "within the limit", so it is not cut (and marked) twice.
MARKER_ROOM = 512
MAX_VALUES = 1_000_000  # parts of a value checked before it counts as too large to check
MAX_INT_BITS = 14_000  # about 4,200 digits: Python refuses to print longer integers

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_JSON_TOKENS_BYTES = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LEAVE = object()  # stack marker: the walk leaves a container (for cycle detection)


class NotJSON(ValueError):
    """A part of a value that is not JSON data: `what` it is, `path` where (`$.a[2]`)."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path} {what}")
        self.path = path
        self.what = what


# -- decoding text ------------------------------------------------------------------------------
def nests_deeper_than(text: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Do the lists and objects of JSON text (or UTF-8 bytes) nest deeper than `limit`,
    strings aside?"""
    binary = isinstance(text, bytes)
    opening = (b"[", b"{") if binary else ("[", "{")
    if text.count(opening[0]) + text.count(opening[1]) <= limit:
        return False  # not enough brackets to get there: no need to look closer
    depth = 0
    for match in (_JSON_TOKENS_BYTES if binary else _JSON_TOKENS).finditer(text):
        token = match.group()
        if token in opening:
            depth += 1
            if depth > limit:
                return True
        elif len(token) == 1:  # a closing bracket (a string token is at least "")
            depth -= 1
    return False


def decode(text: str) -> Any:
    """Output text as a value: JSON when it is JSON data within the bounds, else the
    stripped text; empty text is None. Never raises for any text."""
    stripped = text.strip()
    if not stripped:
        return None
    if stripped[0] not in "{[\"-0123456789tfn" or nests_deeper_than(stripped):
        return stripped
    try:
        value = json.loads(stripped, parse_constant=_not_json_number, parse_float=_finite_float)
    except (ValueError, RecursionError):  # not JSON, an integer too long to convert, ...
        return stripped
    if _SURROGATE_ESCAPE.search(stripped) and not _is_utf8_text(value):
        return stripped  # "\ud800" alone decodes to no character UTF-8 can hold
    return value


def _is_utf8_text(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_json_number(name: str) -> Any:
    # NaN and Infinity are not JSON: output holding them stays text, so every record
    # wfctl writes is JSON that jq and others can read.
    raise ValueError(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 is valid JSON text but no finite number
        raise ValueError(text)
    return value


# -- checking values ------------------------------------------------------------------------------
class Measure(NamedTuple):
    """What `check` learned: an upper bound of the compact JSON size in bytes, whether
    the value holds only plain dicts, lists, str, int, float (no tuples or subclasses),
    and whether every part was checked (False past MAX_VALUES parts)."""

    size_bound: int
    plain: bool
    complete: bool


def check(value: Any, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> Measure:
    """Raise NotJSON for the first part of `value` (in JSON order) that is not JSON data.

    Iterative, so a deep value cannot exhaust the stack; it stops after `max_values`
    parts (a value that large is cut anyway, and shared parts could make it endless).
    """
    size = 0
    plain = True
    seen = 0
    inside: set[int] = set()  # ids of the containers on the path to the current part
    stack: list[tuple[Any, int, Any]] = [(value, 1, None)]  # (part, its level, its path)
    while stack:
        part, level, path = stack.pop()
        if part is _LEAVE:
            inside.discard(level)  # `level` holds the container's id here
            continue
        seen += 1
        if seen > max_values:
            return Measure(size, plain, False)
        kind = type(part)
        if kind is str:
            size += _string_size(part, path)
        elif part is None or kind is bool:
            size += 5
        elif kind is int:
            size += _int_size(part, path)
        elif kind is float:
            size += _float_size(part, path)
        elif kind is dict or kind is list:
            size += _enter(part, level, path, stack, inside, max_depth)
        elif isinstance(part, (str, int, float, dict, list, tuple)):
            plain = False  # a tuple, an IntEnum, an OrderedDict...: JSON data once converted
            if isinstance(part, str):
                size += _string_size(part, path)
            elif isinstance(part, float):
                size += _float_size(part, path)
            elif isinstance(part, int):
                size += _int_size(part, path)
            else:
                size += _enter(part, level, path, stack, inside, max_depth)
        else:
            raise NotJSON(format_path(path), f"is {_a(part)}, which is not JSON data")
    return Measure(size, plain, True)


def _enter(part: Any, level: int, path: Any, stack: list, inside: set, max_depth: int) -> int:
    """Check a container and queue its items (in JSON order); returns its own size share."""
    if level > max_depth:
        raise NotJSON(format_path(path), f"nests deeper than {max_depth} levels")
    identity = id(part)
    if identity in inside:
        raise NotJSON(format_path(path), "contains itself (a cycle)")
    inside.add(identity)
    stack.append((_LEAVE, identity, None))
    if isinstance(part, dict):
        items = list(part.items())
        size = 2 + 2 * len(items)  # braces, a colon and a comma per item
        for key, _ in items:
            if not isinstance(key, str):
                raise NotJSON(format_path(path), f"has the key {_shown(key)} ({_a(key)}); JSON keys are strings")
            size += _string_size(key, (path, key))
        for key, item in reversed(items):
            stack.append((item, level + 1, (path, key)))
        return size
    for index in range(len(part) - 1, -1, -1):
        stack.append((part[index], level + 1, (path, index)))
    return 2 + len(part)


def _string_size(text: str, path: Any) -> int:
    if text.isascii():
        return 6 * len(text) + 2  # every character could need a \u00XX escape
    try:
        return 6 * len(text.encode("utf-8")) + 2
    except UnicodeEncodeError:
        raise NotJSON(format_path(path), "is a string with a lone surrogate, which is not UTF-8 text") from None


def _int_size(number: int, path: Any) -> int:
    bits = number.bit_length()
    if bits > MAX_INT_BITS:
        raise NotJSON(format_path(path), f"is an integer of {bits} bits, too long to write as JSON")
    return bits * 31 // 100 + 2


def _float_size(number: float, path: Any) -> int:
    if not math.isfinite(number):
        name = "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
        raise NotJSON(format_path(path), f"is {name}, which is not a JSON number")
    return 24


def format_path(path: Any) -> str:
    """`$`, `$.name`, `$["odd key"]`, `$[2]`: where a part is, from the walk's linked path."""
    keys = []
    while path is not None:
        path, key = path
        keys.append(key)
    text = "$"
    for key in reversed(keys):
        if isinstance(key, int):
            text += f"[{key}]"
        elif _PLAIN_KEY.fullmatch(key):
            text += f".{key}"
        else:
            text += "[" + json.dumps(_truncated(key, 40), ensure_ascii=False) + "]"
    if len(text) > 200:
        text = text[:90] + "…" + text[-100:]
    return text.encode("utf-8", "replace").decode("utf-8")  # a key may hold a lone surrogate


def _a(part: Any) -> str:
    name = type(part).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _shown(key: Any) -> str:
    try:
        return _truncated(repr(key), 60)
    except Exception:  # a key whose repr fails is still named by its type
        return f"<{type(key).__name__}>"


def _truncated(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the inline cap ------------------------------------------------------------------------------
class Bounded(NamedTuple):
    """A result as the state and the record keep it, and, when it was cut, the whole of
    its text for the step's log (`spill`)."""

    value: Any
    spill: str | None = None


def marker(total: int) -> str:
    """The mark at the end of a cut result: the same as command output's."""
    return f"\n[output truncated: {total} bytes in all; see wfctl logs]"


def bound(value: Any, limit: int = INLINE_LIMIT, *, copy: bool = False) -> Bounded:
    """`value` checked as JSON data (NotJSON if it is not) and kept within `limit`: a
    result whose JSON is larger becomes the beginning of that JSON text plus a marker.

    `copy`: the value may be shared with code that changes it later (a python agent's
    own objects): what is kept is a copy of it as it is now, as the record keeps it."""
    if value is None or type(value) is bool:
        return Bounded(value)  # the most common results of in-process steps: no walk
    if isinstance(value, str):
        check(value)
        data = value.encode("utf-8")
        if len(data) <= limit + MARKER_ROOM:
            return Bounded(value)
        return Bounded(_head(data, limit) + marker(len(data)), spill=value)
    measure = check(value)
    if not measure.complete:
        head = _json_head(value, limit)
        return Bounded(head + f"\n[output truncated: more than {MAX_VALUES} values; only these first bytes were kept]")
    fresh = measure.plain and not (copy and isinstance(value, (dict, list)))
    if measure.size_bound <= limit:
        return Bounded(value if fresh else plain_copy(value))
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    data = text.encode("utf-8")
    if len(data) <= limit:
        return Bounded(value if fresh else json.loads(text))
    return Bounded(_head(data, limit) + marker(len(data)), spill=text)


def plain_copy(value: Any) -> Any:
    """A checked value as plain JSON types (tuples become lists): what reading it back
    from the record gives, so the state never differs from the record."""
    return json.loads(json.dumps(value, ensure_ascii=False, allow_nan=False))


def _head(data: bytes, limit: int) -> str:
    return data[:limit].decode("utf-8", "ignore")  # a character cut in two is dropped


def _json_head(value: Any, limit: int) -> str:
    """The first `limit` bytes of a value's JSON, encoding no more of it than that."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in encoder.iterencode(value):
            data = chunk.encode("utf-8")
            chunks.append(data)
            size += len(data)
            if size >= limit:
                break
    except (TypeError, ValueError, RecursionError):
        pass  # past the checked part: what came before is kept
    return _head(b"".join(chunks), limit)


# -- making anything writable ---------------------------------------------------------------------
def writable(value: Any, *, max_depth: int = 2 * MAX_DEPTH) -> Any:
    """A copy of `value` that any JSON encoder and reader accepts: the parts that are
    not JSON data become text saying what they were. For the record's own documents,
    as a last line of defence; results from steps are checked before (`bound`)."""
    root: list[Any] = [None]
    inside: set[int] = set()
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 1)]  # (part, container, slot, level)
    while stack:
        part, container, slot, level = stack.pop()
        if part is _LEAVE:
            inside.discard(container)
            continue
        container[slot] = _writable_part(part, level, max_depth, inside, stack)
    return root[0]


def _writable_part(part: Any, level: int, max_depth: int, inside: set, stack: list) -> Any:
    if part is None or isinstance(part, (bool, int)):
        return part if not isinstance(part, int) or part.bit_length() <= MAX_INT_BITS else str(part)[:64] + "…"
    if isinstance(part, float):
        if math.isfinite(part):
            return part
        return "NaN" if math.isnan(part) else ("Infinity" if part > 0 else "-Infinity")
    if isinstance(part, str):
        return part if part.isascii() else part.encode("utf-8", "replace").decode("utf-8")
    if isinstance(part, (dict, list, tuple)):
        if level > max_depth:
            return f"[nested deeper than {max_depth} levels]"
        if id(part) in inside:
            return "[a cycle]"
        inside.add(id(part))
        stack.append((_LEAVE, id(part), None, 0))
        if isinstance(part, dict):
            copy: Any = {}
            for key, item in part.items():
                name = _writable_part(key, 1, 1, set(), []) if isinstance(key, str) else _shown(key)
                copy[name] = None
                stack.append((item, copy, name, level + 1))
            return copy
        copy = [None] * len(part)
        for index, item in enumerate(part):
            stack.append((item, copy, index, level + 1))
        return copy
    return f"[{_a(part)}]"
