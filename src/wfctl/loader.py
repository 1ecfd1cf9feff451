"""Reading a workflow file safely: bytes → text → a plain document plus a line map.

Nothing here executes or constructs anything but plain values. YAML is read event by event
(never `yaml.load`): the document is built by this module, so aliases, anchors, merge keys,
non-standard tags, duplicate keys and deep nesting are refused *before* anything traverses
them, and every node's line is recorded. JSON goes through `json.loads` with a duplicate-key
hook; its lines come from reading the same text as YAML (JSON is nearly YAML), when that works.

The line map uses document paths: `""` for the root, `name`, `steps[2]`, `steps[2].then.agent`,
`agents.mira.run`. A key that is not a plain word is written `["a.b"]`.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from wfctl.errors import Problem, WorkflowInvalid

MAX_FILE_BYTES = 1024 * 1024  # 1 MiB
MAX_DEPTH = 64  # nested lists/mappings

_BOM = b"\xef\xbb\xbf"
_TAG_PREFIX = "tag:yaml.org,2002:"
_STR_TAG = _TAG_PREFIX + "str"
_SCALAR_TAGS = {_TAG_PREFIX + t for t in ("str", "int", "float", "bool", "null")}
_MAP_TAG = _TAG_PREFIX + "map"
_SEQ_TAG = _TAG_PREFIX + "seq"
# What YAML accepts as text (YAML 1.1 "printable"); anything else is named with its position.
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$-]+\Z")


# -- document paths ------------------------------------------------------------------------------
def child_path(parent: str, key: str | int) -> str:
    """The path of `key` (a mapping key or a list index) under `parent`."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    if _PLAIN_KEY.match(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{json.dumps(key, ensure_ascii=False)}]"


# -- public API ----------------------------------------------------------------------------------
def load_document(path: str | os.PathLike) -> tuple[dict, dict[str, int]]:
    """Read and parse a workflow file.

    Returns the document (a dict of plain JSON values) and its line map. Raises
    `WorkflowInvalid` with one `Problem` for anything that stops reading or parsing.
    """
    file = os.fspath(path)
    data = read_bytes(file)
    text = decode(data, file)
    return parse_text(text, file, detect_format(file, text))


def detect_format(filename: str, text: str) -> str:
    """"json" for .json, "yaml" for .yaml/.yml; otherwise JSON when the text starts with '{'."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    return "json" if text.lstrip().startswith("{") else "yaml"


def read_bytes(file: str, *, kind: str = "workflow file") -> bytes:
    """The file's bytes, after checking it is a readable regular file of at most 1 MiB.

    A FIFO is never opened for reading: it is refused from `stat` alone, and the file is
    opened non-blocking and checked again with `fstat` in case it was swapped meanwhile.
    `kind` names what the file is for in messages (config.toml and `--input @FILE` are read
    the same way: a device such as /dev/zero would otherwise be read for ever).
    """
    try:
        info = os.stat(file)
    except (FileNotFoundError, NotADirectoryError):
        _fail(file, "the file does not exist")
    except PermissionError:
        _fail(file, "the file cannot be read: permission denied")
    except OSError as err:
        _fail(file, f"the file cannot be read: {err.strerror or err}")
    except ValueError:  # embedded NUL in the path
        _fail(file, "the file name contains a NUL character")
    _check_kind(file, info, kind)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(file, flags)
    except PermissionError:
        _fail(file, "the file cannot be read: permission denied")
    except OSError as err:
        _fail(file, f"the file cannot be read: {err.strerror or err}")
    try:
        _check_kind(file, os.fstat(fd), kind)
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(65536, MAX_FILE_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as err:
        _fail(file, f"the file cannot be read: {err.strerror or err}")
    finally:
        os.close(fd)
    if total > MAX_FILE_BYTES:
        _fail(file, f"the file is larger than {MAX_FILE_BYTES} bytes; {kind}s are limited to 1 MiB")
    return b"".join(chunks)


def decode(data: bytes, file: str) -> str:
    """UTF-8 text without a BOM; invalid bytes and NUL characters are refused with their place."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        _fail(file, "the file is UTF-16 encoded; save it as UTF-8", line=1)
    skipped = 0
    if data.startswith(_BOM):
        data = data[len(_BOM):]
        skipped = len(_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        start = err.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        _fail(
            file,
            f"the file is not valid UTF-8: byte 0x{data[start]:02x} at line {line}, column {column} "
            f"(byte offset {start + skipped}) cannot be decoded; save the file as UTF-8",
            line=line,
        )
    nul = text.find("\x00")
    if nul >= 0:
        line, column = _position(text, nul)
        _fail(file, f"the file contains a NUL character at line {line}, column {column}; "
                    "workflow files must be text", line=line)
    return text


def parse_text(text: str, filename: str, fmt: str | None = None) -> tuple[dict, dict[str, int]]:
    """Parse workflow text as "yaml" or "json" (None: decide from the name and the text)."""
    if fmt is None:
        fmt = detect_format(filename, text)
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        line, column = _position(text, text.index("\x00"))
        _fail(filename, f"the file contains a NUL character at line {line}, column {column}; "
                        "workflow files must be text", line=line)
    if fmt == "json":
        doc, lines = _parse_json(text, filename)
    elif fmt == "yaml":
        doc, lines = _parse_yaml(text, filename)
    else:
        raise ValueError(f"unknown workflow format {fmt!r}")
    if doc is _NO_DOC:
        _fail(filename, "the file is empty; a workflow needs a name and steps")
    if not isinstance(doc, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(doc), "a number")
        _fail(filename, f"the top level must be a mapping with name and steps, not {kind}", line=lines.get(""))
    return doc, lines


# -- YAML ----------------------------------------------------------------------------------------
def _yaml_loader_class():
    import yaml

    return getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


class _Frame:
    __slots__ = ("container", "path", "key", "key_line", "seen")

    def __init__(self, container: Any, path: str) -> None:
        self.container = container
        self.path = path
        self.key: str | None = None  # a mapping's key waiting for its value
        self.key_line = 0
        self.seen: dict[str, int] = {}  # a mapping's keys → line


_NO_DOC = object()


def _parse_yaml(text: str, filename: str) -> tuple[Any, dict[str, int]]:
    import yaml

    bad = _NON_PRINTABLE.search(text)
    if bad:
        line, column = _position(text, bad.start())
        _fail(filename, f"the file contains the control character U+{ord(bad.group()):04X} at line {line}, "
                        f"column {column}; YAML files may only contain printable characters", line=line)
    try:
        return _build_yaml(text, filename)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = err.problem or err.context or "cannot be parsed"
        if "nesting depth" in problem:
            # Newer PyYAML stops deep nesting itself, before our own depth check sees it.
            line = mark.line + 1 if mark is not None else None
            _fail(filename, f"nesting is too deep{f' at line {line}' if line else ''}; workflow files may nest "
                            f"at most {MAX_DEPTH} levels", line=line)
        if mark is None:
            _fail(filename, f"invalid YAML: {problem}")
        line, column = mark.line + 1, mark.column + 1
        hint = ""
        lines_of_text = text.splitlines()
        if 0 <= mark.line < len(lines_of_text):
            row = lines_of_text[mark.line]
            if "\t" in row[: mark.column + 1] or row[mark.column: mark.column + 1] == "\t":
                hint = "; YAML does not allow tabs for indentation, indent with spaces"
        context = ""
        if err.context and err.context_mark is not None and err.problem and err.context_mark.line != mark.line:
            context = f" ({err.context} that starts at line {err.context_mark.line + 1})"
        _fail(filename, f"invalid YAML at line {line}, column {column}: {problem}{context}{hint}", line=line)
    except yaml.YAMLError as err:  # ReaderError and friends carry no mark
        _fail(filename, f"invalid YAML: {err}")
    except RecursionError:
        _fail(filename, f"nesting is too deep; workflow files may nest at most {MAX_DEPTH} levels")


def _build_yaml(text: str, filename: str) -> tuple[Any, dict[str, int]]:
    """Build plain values from YAML events with an explicit stack (no recursion, no aliases)."""
    from yaml.events import (
        AliasEvent, DocumentStartEvent, MappingEndEvent, MappingStartEvent, ScalarEvent,
        SequenceEndEvent, SequenceStartEvent,
    )

    loader = _yaml_loader_class()(text)
    lines: dict[str, int] = {}
    stack: list[_Frame] = []
    root: Any = _NO_DOC
    documents = 0

    def fail(message: str, line: int, path: str = "") -> None:
        _fail(filename, message, path=path, line=line)

    def place(value: Any, line: int) -> str:
        """Attach a value to the open container (or make it the root); return its path."""
        nonlocal root
        if not stack:
            root = value
            lines[""] = line
            return ""
        top = stack[-1]
        if isinstance(top.container, list):
            path = child_path(top.path, len(top.container))
            top.container.append(value)
            lines[path] = line
            return path
        path = child_path(top.path, top.key)  # type: ignore[arg-type]
        top.container[top.key] = value
        lines[path] = top.key_line
        top.key = None
        return path

    try:
        while loader.check_event():
            event = loader.get_event()
            line = event.start_mark.line + 1 if event.start_mark is not None else 0
            if isinstance(event, DocumentStartEvent):
                documents += 1
                if documents > 1:
                    fail(f"a second YAML document starts at line {line}; a workflow file holds one document",
                         line)
                continue
            if isinstance(event, AliasEvent):
                fail(f"YAML aliases are not allowed ('*{event.anchor}' at line {line}); "
                     "write the value out where it is used", line, _pending_path(stack))
            anchor = getattr(event, "anchor", None)
            if anchor is not None:
                fail(f"YAML aliases are not allowed, so the anchor '&{anchor}' at line {line} is refused; "
                     "write the value out where it is used", line, _pending_path(stack))
            if isinstance(event, ScalarEvent):
                top = stack[-1] if stack else None
                if top is not None and isinstance(top.container, dict) and top.key is None:
                    _take_key(top, event, line, fail)
                    continue
                value = _scalar_value(loader, event, line, fail, _pending_path(stack))
                place(value, line)
            elif isinstance(event, (MappingStartEvent, SequenceStartEvent)):
                is_map = isinstance(event, MappingStartEvent)
                top = stack[-1] if stack else None
                if top is not None and isinstance(top.container, dict) and top.key is None:
                    fail(f"a {'mapping' if is_map else 'list'} cannot be a mapping key (line {line}); "
                         "keys must be plain strings", line, top.path)
                if event.tag not in (None, "!", _MAP_TAG if is_map else _SEQ_TAG):
                    fail(_tag_message(event.tag, line), line, _pending_path(stack))
                if len(stack) >= MAX_DEPTH:
                    fail(f"nesting is too deep at line {line}; workflow files may nest at most "
                         f"{MAX_DEPTH} levels", line)
                container: Any = {} if is_map else []
                path = place(container, line)
                stack.append(_Frame(container, path))
            elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
                stack.pop()
    finally:
        loader.dispose()
    return root, lines


def _pending_path(stack: list[_Frame]) -> str:
    """The path of the value about to be placed (best effort, for messages)."""
    if not stack:
        return ""
    top = stack[-1]
    if isinstance(top.container, list):
        return child_path(top.path, len(top.container))
    if top.key is not None:
        return child_path(top.path, top.key)
    return top.path


def _take_key(top: _Frame, event: Any, line: int, fail) -> None:
    """A mapping key: always its text (so `on:` stays "on"); duplicates and `<<` are refused."""
    if event.tag not in (None, "!", _STR_TAG):
        fail(f"mapping keys must be plain strings; the key {event.value!r} at line {line} has the tag "
             f"{_short_tag(event.tag)}", line, top.path)
    key = event.value
    if key == "<<" and not event.style and event.tag is None:  # plain (C parser: '', Python: None)
        fail(f"YAML merge keys ('<<') are not supported (line {line}); write the keys out", line, top.path)
    first = top.seen.get(key)
    if first is not None:
        fail(f"duplicate key {key!r} at line {line}; it is already defined at line {first}",
             line, child_path(top.path, key))
    top.seen[key] = line
    top.key = key
    top.key_line = line


def _scalar_value(loader: Any, event: Any, line: int, fail, path: str) -> Any:
    """A scalar resolved by the standard safe resolver (`no` → False, `3` → 3, `~` → None)."""
    import yaml

    tag = event.tag
    if tag == "!":  # the non-specific tag: a string
        return event.value
    if tag is None:
        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
    elif tag not in _SCALAR_TAGS:
        fail(_tag_message(tag, line), line, path)
    if tag == _STR_TAG or tag not in _SCALAR_TAGS:
        # str, and implicit types wfctl keeps as text: timestamps (JSON has no dates), '=' and '<<'.
        return event.value
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    try:
        value = loader.yaml_constructors[tag](loader, node)
    except (yaml.YAMLError, ValueError, TypeError) as err:
        fail(f"cannot read {event.value!r} as {_short_tag(tag)} at line {line}: "
             f"{getattr(err, 'problem', None) or err}", line, path)
    return value


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG_PREFIX):] if tag.startswith(_TAG_PREFIX) else tag


def _tag_message(tag: str, line: int) -> str:
    return (f"the YAML tag {_short_tag(tag)!r} at line {line} is not allowed; workflow files hold only "
            "plain strings, numbers, booleans, null, lists and mappings")


# -- JSON ----------------------------------------------------------------------------------------
class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _BadConstant(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _pairs(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _constant(name: str) -> Any:
    raise _BadConstant(name)


_JSON_TO_YAML = {0x09: " ", 0x0D: " ", 0x85: " ", 0x2028: " ", 0x2029: " "}
# A string (closed, or running to the end of the text, so that a match never fails and the
# scan stays linear: `"\"\"\"...` without a closing quote made the plain pattern quadratic,
# hours for a 1 MiB file) or a bracket.
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.|\\\Z)*(?:"|\Z)|[\[\]{}]', re.S)


def json_too_deep(text: str, limit: int) -> int | None:
    """The offset of the first bracket nested deeper than `limit` in JSON text, else None:
    found in one linear pass, before json.loads (or anything else) can recurse into it."""
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return match.start()
        elif token in "]}":
            depth -= 1
    return None


def _check_json_depth(text: str, filename: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before json.loads can recurse into it."""
    offset = json_too_deep(text, MAX_DEPTH)
    if offset is not None:
        line, column = _position(text, offset)
        _fail(filename, f"nesting is too deep at line {line}, column {column}; workflow files may nest "
                        f"at most {MAX_DEPTH} levels", line=line)


def _parse_json(text: str, filename: str) -> tuple[Any, dict[str, int]]:
    if not text.strip(" \t\r\n"):
        return _NO_DOC, {}
    _check_json_depth(text, filename)
    try:
        doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except _DuplicateKey as dup:
        _json_lines(text, filename, strict=True)  # raises with both lines when YAML can read it
        _fail(filename, f"duplicate key {dup.key!r} in a JSON object; each key may appear once")
    except _BadConstant as bad:
        found = re.search(rf"(?<![\w\"]){re.escape(bad.name)}(?![\w\"])", text)
        line = _position(text, found.start())[0] if found else None
        _fail(filename, f"{bad.name} is not a valid JSON number; numbers must be finite", line=line)
    except json.JSONDecodeError as err:
        message = err.msg
        if message == "Extra data":
            message = "unexpected text after the end of the JSON document"
        _fail(filename, f"invalid JSON at line {err.lineno}, column {err.colno}: {message}", line=err.lineno)
    except RecursionError:
        _fail(filename, f"nesting is too deep; workflow files may nest at most {MAX_DEPTH} levels")
    except ValueError as err:  # e.g. an integer with more digits than Python converts
        _fail(filename, f"invalid JSON: {err}")
    return doc, _json_lines(text, filename, strict=False)


def _json_lines(text: str, filename: str, *, strict: bool) -> dict[str, int]:
    """Lines of a JSON document, by reading it as YAML; {} when YAML cannot read it.

    Characters YAML treats differently (tabs and CR, which JSON allows as whitespace; U+0085,
    U+2028, U+2029, which YAML counts as line breaks; characters YAML does not accept at
    all, which JSON allows raw inside strings) become spaces first: outside strings that is
    the same JSON, inside strings only the values change, and only the lines are kept.
    With `strict`, a duplicate-key problem found this way is raised (it names both lines).
    """
    try:
        _, lines = _build_yaml(_NON_PRINTABLE.sub(" ", text).translate(_JSON_TO_YAML), filename)
    except WorkflowInvalid as err:
        if strict and err.problems and err.problems[0].message.startswith("duplicate key"):
            raise
        return {}
    except Exception:  # any YAML error, RecursionError: lines are a convenience
        return {}
    return lines


# -- helpers -------------------------------------------------------------------------------------
def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def _check_kind(file: str, info: os.stat_result, kind: str = "workflow file") -> None:
    mode = info.st_mode
    if stat.S_ISDIR(mode):
        _fail(file, f"this is a directory, not a {kind}")
    if not stat.S_ISREG(mode):
        what = (
            "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file"
        )
        _fail(file, f"this is {what}, not a regular file; {kind}s must be regular files")
    if info.st_size > MAX_FILE_BYTES:
        _fail(file, f"the file is {info.st_size} bytes; {kind}s are limited to 1 MiB")


def _fail(file: str, message: str, *, path: str = "", line: int | None = None):
    raise WorkflowInvalid([Problem(file, path, message, line)])

