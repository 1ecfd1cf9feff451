"""The small, safe expression language of conditions, `items` and `{{ ... }}` templates.

A hand-written tokenizer and recursive-descent parser turn the source into a tree,
and the tree is compiled once into nested closures, so `Expression.evaluate` does no
parsing. Nothing here ever hands user text to `eval`, `exec`, `compile` or `ast`, and
values are plain JSON data: fields are dictionary keys, never Python attributes.

The language (design.md §1 "Expressions"):

* Names: ``[A-Za-z_][A-Za-z0-9_-]*`` that does not end with ``-``, so ``test-results``
  is one name and there is no arithmetic at all. A field after ``.`` uses the same
  characters and may also start with a digit (``steps.1st.status``). Names and fields
  starting with ``__`` are reserved (``a["__x"]`` still reaches such a key). The
  keywords ``true false null and or not in`` cannot be root names.
* Access: ``.field`` and ``[index]``: a string key on an object, an integer index on a
  list (negative counts from the end). Reading a field that is not there is an
  error, never a silent ``null``/``false``.
* Literals: ``'…'`` / ``"…"`` strings with the escapes ``\\n \\t \\r \\b \\f \\0 \\/ \\" \\'
  \\\\ \\uXXXX``; numbers (``3``, ``-2``, ``1.5``, ``1e3``; a ``-`` belongs to a number
  only directly before a digit where a value is expected); ``true false null``;
  lists ``[a, b]``.
* Operators, loosest first: ``|| or``; ``&& and``; ``not``; one comparison
  (``== === != !== < <= > >= in``, ``not in``; comparisons do not chain); ``!``;
  ``.field``/``[index]``/calls. So ``!a == b`` is ``(!a) == b`` as in JavaScript and
  ``not a == b`` is ``not (a == b)`` as in Python.
* Equality: ``==`` and ``===`` are the same strict equality with no type coercion:
  ``1 == 1.0`` is true, ``"1" == 1`` is false and ``true == 1`` is false (unlike
  Python). Lists and objects compare element by element. ``!=`` and ``!==`` are its
  negation.
* Ordering ``< <= > >=`` compares two numbers (not booleans) or two strings, anything
  else is an error.
* ``in``: an element of a list (strict equality), a substring of a string, a key of an
  object.
* ``&&``/``||``/``!`` use `truthy` (JavaScript-like) and always give a boolean; the
  right side is evaluated only when the left side does not decide.
* Functions: ``len(x)``, ``contains(a, b)`` (``b in a``), ``startsWith(s, p)``,
  ``endsWith(s, p)``, ``toJSON(x)``, ``fromJSON(s)``. Nothing else can be called.
* Limits: at most 4096 characters and 32 levels of nesting.

Templates: ``{{ expr }}`` inside text. `Template.render` inserts strings as they are,
``null`` as nothing and anything else as compact JSON. `Template.render_shell` never
puts a value into the shell text: each ``{{ }}`` becomes a reference to an
environment variable holding the value, quoted for the shell context it appears in.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from wfctl.errors import ExpressionError

__all__ = [
    "Expression",
    "Template",
    "parse",
    "parse_template",
    "truthy",
    "FUNCTIONS",
    "MAX_SOURCE_LENGTH",
    "MAX_NESTING",
]

MAX_SOURCE_LENGTH = 4096
MAX_NESTING = 32

# name -> number of arguments
FUNCTIONS: dict[str, int] = {
    "len": 1,
    "contains": 2,
    "startsWith": 2,
    "endsWith": 2,
    "toJSON": 1,
    "fromJSON": 1,
}

_KEYWORDS = frozenset({"true", "false", "null", "and", "or", "not", "in"})

_NAME_RE = re.compile(r"[A-Za-z_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?", re.ASCII)
_FIELD_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?", re.ASCII)
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?", re.ASCII)
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_PLAIN_FIELD_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?\Z", re.ASCII)

_OPERATORS_3 = ("===", "!==")
_OPERATORS_2 = ("==", "!=", "<=", ">=", "&&", "||")
_OPERATORS_1 = ("<", ">", "!")
_COMPARISONS = frozenset({"==", "===", "!=", "!==", "<", "<=", ">", ">="})
_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "0": "\0",
    "/": "/",
    '"': '"',
    "'": "'",
    "\\": "\\",
}
_CLOSERS = {"(": ")", "[": "]"}


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- values


def truthy(value: Any) -> bool:
    """JavaScript-like truth: null, false, 0, NaN, "", [] and {} are false; the rest true."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    t = type(value)
    if t is str or t is list or t is dict:
        return len(value) > 0
    if t is int:
        return value != 0
    if t is float:
        return value != 0 and value == value
    if isinstance(value, (int, float)):
        return value != 0 and value == value
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value) > 0
    return True


_NULL, _BOOL, _NUM, _STR, _LIST, _DICT, _OTHER = range(7)


def _kind(value: Any) -> int:
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, (int, float)):
        return _NUM
    if isinstance(value, str):
        return _STR
    if isinstance(value, Mapping):
        return _DICT
    if isinstance(value, (list, tuple)):
        return _LIST
    return _OTHER


def _typename(value: Any) -> str:
    k = _kind(value)
    return (
        "null",
        "a boolean",
        "a number",
        "a string",
        "a list",
        "an object",
        f"a {type(value).__name__}",
    )[k]


_SCALAR_TYPES = frozenset({str, int, float, bool, type(None)})


def _strict_equal(a: Any, b: Any) -> bool:
    ta = type(a)
    if ta is type(b) and ta in _SCALAR_TYPES:
        return a == b
    ka, kb = _kind(a), _kind(b)
    if ka != kb:
        return False
    if ka == _STR:
        return str.__eq__(a, b)
    if ka == _LIST:
        return len(a) == len(b) and all(_strict_equal(x, y) for x, y in zip(a, b))
    if ka == _DICT:
        if len(a) != len(b):
            return False
        for key, value in a.items():
            if key not in b or not _strict_equal(value, b[key]):
                return False
        return True
    if ka == _OTHER:
        return a is b or (type(a) is type(b) and a == b)
    return a == b  # null, booleans, numbers (1 == 1.0)


def _to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _to_text(value: Any) -> str:
    """How a value appears in a rendered template."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)
    try:
        return _to_json(value)
    except (TypeError, ValueError, RecursionError):
        raise ExpressionError(f"{_typename(value)} cannot be rendered as text: it is not JSON data") from None


# --------------------------------------------------------------------------- tokens


class _Token:
    __slots__ = ("kind", "text", "value", "pos", "end")

    # kind: "num" "str" "name" "kw" "op" "(" ")" "[" "]" "," "field" "eof"
    def __init__(self, kind: str, text: str, value: Any, pos: int, end: int) -> None:
        self.kind = kind
        self.text = text
        self.value = value
        self.pos = pos
        self.end = end


def _expects_value(prev: _Token | None) -> bool:
    if prev is None:
        return True
    if prev.kind in ("op", "(", "[", ","):
        return True
    return prev.kind == "kw" and prev.text in ("and", "or", "not", "in")


def _read_string(source: str, start: int) -> tuple[str, int]:
    quote = source[start]
    i = start + 1
    n = len(source)
    out: list[str] = []
    while True:
        j = i
        while j < n and source[j] != quote and source[j] != "\\":
            j += 1
        out.append(source[i:j])
        if j >= n:
            raise ExpressionError(f"unterminated string starting with {quote}", start)
        if source[j] == quote:
            return "".join(out), j + 1
        # a backslash escape
        if j + 1 >= n:
            raise ExpressionError(f"unterminated string starting with {quote}", start)
        esc = source[j + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i = j + 2
            continue
        if esc == "u":
            code = _read_hex4(source, j)
            i = j + 6
            if 0xD800 <= code <= 0xDBFF:
                if source[i : i + 2] == "\\u":
                    low = _read_hex4(source, i)
                    if 0xDC00 <= low <= 0xDFFF:
                        out.append(chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)))
                        i += 6
                        continue
                raise ExpressionError("invalid \\u escape: a lone surrogate", j)
            if 0xDC00 <= code <= 0xDFFF:
                raise ExpressionError("invalid \\u escape: a lone surrogate", j)
            out.append(chr(code))
            continue
        raise ExpressionError(f"unknown escape '\\{_short(esc, 2)}' in a string", j)


def _read_hex4(source: str, backslash: int) -> int:
    digits = source[backslash + 2 : backslash + 6]
    if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ExpressionError("invalid \\u escape: it needs four hex digits", backslash)
    return int(digits, 16)


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    stack: list[tuple[str, int]] = []
    n = len(source)
    i = 0
    prev: _Token | None = None
    while True:
        while i < n and source[i] in " \t\r\n":
            i += 1
        if i >= n:
            break
        c = source[i]
        start = i
        if c == "-" and i + 1 < n and source[i + 1] in "0123456789" and _expects_value(prev):
            tok = _read_number(source, i)
        elif c in "0123456789":
            tok = _read_number(source, i)
        elif c == '"' or c == "'":
            value, i = _read_string(source, i)
            tok = _Token("str", source[start:i], value, start, i)
        elif c in _WORD_CHARS:  # a letter or "_" (digits were handled above)
            m = _NAME_RE.match(source, i)
            assert m is not None
            word = m.group()
            kind = "kw" if word in _KEYWORDS else "name"
            tok = _Token(kind, word, word, start, m.end())
        elif c == ".":
            m = _FIELD_RE.match(source, i + 1)
            if m is None:
                raise ExpressionError("expected a field name after '.'", i + 1)
            field = m.group()
            if field.startswith("__"):
                raise ExpressionError(
                    f"field '{_short(field)}' is not allowed: names starting with '__' are reserved "
                    f"(write [\"{_short(field)}\"] for a key that really starts with '__')",
                    start,
                )
            tok = _Token("field", "." + field, field, start, m.end())
        elif c in "([":
            stack.append((c, i))
            if len(stack) > MAX_NESTING:
                raise ExpressionError(f"nesting too deep (more than {MAX_NESTING} levels)", i)
            tok = _Token(c, c, None, i, i + 1)
        elif c in ")]":
            if not stack:
                raise ExpressionError(f"unbalanced '{c}'", i)
            opener, where = stack.pop()
            if _CLOSERS[opener] != c:
                raise ExpressionError(
                    f"'{c}' does not close the '{opener}' at position {where}; expected '{_CLOSERS[opener]}'", i
                )
            tok = _Token(c, c, None, i, i + 1)
        elif c == ",":
            tok = _Token(",", ",", None, i, i + 1)
        else:
            tok = None
            for group in (_OPERATORS_3, _OPERATORS_2, _OPERATORS_1):
                for op in group:
                    if source.startswith(op, i):
                        tok = _Token("op", op, op, i, i + len(op))
                        break
                if tok is not None:
                    break
            if tok is None:
                raise ExpressionError(_unexpected_character(source, i), i)
        tokens.append(tok)
        prev = tok
        i = tok.end
    if stack:
        opener, where = stack[-1]
        raise ExpressionError(f"unbalanced '{opener}'", where)
    tokens.append(_Token("eof", "", None, n, n))
    return tokens


def _read_number(source: str, i: int) -> _Token:
    m = _NUMBER_RE.match(source, i)
    assert m is not None
    end = m.end()
    text = m.group()
    if end < len(source) and source[end] in _WORD_CHARS:
        j = end
        while j < len(source) and source[j] in _WORD_CHARS:
            j += 1
        raise ExpressionError(f"invalid number '{_short(source[i:j])}'", i)
    try:
        if "." in text or "e" in text or "E" in text:
            value: int | float = float(text)
            if not math.isfinite(value):
                raise ExpressionError(f"number '{_short(text)}' is out of range", i)
        else:
            value = int(text)
    except ValueError:
        raise ExpressionError(f"number '{_short(text)}' is out of range", i) from None
    return _Token("num", text, value, i, end)


def _unexpected_character(source: str, i: int) -> str:
    c = source[i]
    if c == "=":
        return "unexpected '='; use '==' to compare"
    if c in "&|":
        return f"unexpected '{c}'; did you mean '{c}{c}'?"
    if c == "-":
        return "unexpected '-': there is no arithmetic ('-' may only appear inside a name or before a number)"
    if c in "+*/%":
        return f"unexpected '{c}': there is no arithmetic"
    if c == "{" or c == "}":
        return f"unexpected '{c}'"
    if c.isprintable() and not c.isspace():
        return f"unexpected character '{c}'"
    return f"unexpected character U+{ord(c):04X}"


def _show_token(tok: _Token) -> str:
    if tok.kind == "str":
        return f"string {_short(tok.text)}"
    return f"'{_short(tok.text)}'"


# --------------------------------------------------------------------------- tree


class _Node:
    __slots__ = ("pos",)


class _Const(_Node):
    __slots__ = ("value",)

    def __init__(self, value: Any, pos: int) -> None:
        self.value = value
        self.pos = pos


class _Name(_Node):
    __slots__ = ("name",)

    def __init__(self, name: str, pos: int) -> None:
        self.name = name
        self.pos = pos


class _Segment:
    __slots__ = ("is_field", "key", "node", "pos")

    def __init__(self, is_field: bool, key: Any, node: _Node | None, pos: int) -> None:
        self.is_field = is_field
        self.key = key  # the constant key, when node is None
        self.node = node  # the index expression, when dynamic
        self.pos = pos


class _Chain(_Node):
    __slots__ = ("base", "label", "segments")

    def __init__(self, base: _Node, label: str, segments: list[_Segment], pos: int) -> None:
        self.base = base
        self.label = label  # how the base is named in error messages
        self.segments = segments
        self.pos = pos


class _Not(_Node):
    __slots__ = ("operand",)

    def __init__(self, operand: _Node, pos: int) -> None:
        self.operand = operand
        self.pos = pos


class _Logic(_Node):
    __slots__ = ("op", "operands")

    def __init__(self, op: str, operands: list[_Node], pos: int) -> None:
        self.op = op  # "and" | "or"
        self.operands = operands
        self.pos = pos


class _Compare(_Node):
    __slots__ = ("op", "left", "right")

    def __init__(self, op: str, left: _Node, right: _Node, pos: int) -> None:
        self.op = op  # one of _COMPARISONS, "in", "not in"
        self.left = left
        self.right = right
        self.pos = pos


class _List(_Node):
    __slots__ = ("items",)

    def __init__(self, items: list[_Node], pos: int) -> None:
        self.items = items
        self.pos = pos


class _Call(_Node):
    __slots__ = ("name", "args")

    def __init__(self, name: str, args: list[_Node], pos: int) -> None:
        self.name = name
        self.args = args
        self.pos = pos


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, source: str, tokens: list[_Token]) -> None:
        self.source = source
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def advance(self) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def is_op(self, *texts: str) -> bool:
        tok = self.tokens[self.i]
        return (tok.kind == "op" or tok.kind == "kw") and tok.text in texts

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ExpressionError(f"nesting too deep (more than {MAX_NESTING} levels)", pos)

    def leave(self) -> None:
        self.depth -= 1

    def unexpected(self, tok: _Token) -> ExpressionError:
        if tok.kind == "eof":
            index = self.tokens.index(tok) if tok in self.tokens else len(self.tokens) - 1
            if index == 0:
                return ExpressionError("empty expression", 0)
            prev = self.tokens[index - 1]
            return ExpressionError(f"unexpected end of expression after '{_short(prev.text)}'", tok.pos)
        return ExpressionError(f"unexpected {_show_token(tok)}", tok.pos)

    def expect(self, kind: str, what: str) -> _Token:
        tok = self.peek()
        if tok.kind != kind:
            if tok.kind == "eof":
                raise self.unexpected(tok)
            raise ExpressionError(f"expected {what} but found {_show_token(tok)}", tok.pos)
        return self.advance()

    def parse(self) -> _Node:
        node = self.parse_or()
        tok = self.peek()
        if tok.kind != "eof":
            raise ExpressionError(f"unexpected {_show_token(tok)}", tok.pos)
        return node

    def parse_or(self) -> _Node:
        first = self.parse_and()
        if not self.is_op("||", "or"):
            return first
        operands = [first]
        while self.is_op("||", "or"):
            self.advance()
            operands.append(self.parse_and())
        return _Logic("or", operands, first.pos)

    def parse_and(self) -> _Node:
        first = self.parse_not()
        if not self.is_op("&&", "and"):
            return first
        operands = [first]
        while self.is_op("&&", "and"):
            self.advance()
            operands.append(self.parse_not())
        return _Logic("and", operands, first.pos)

    def parse_not(self) -> _Node:
        if self.is_op("not"):
            tok = self.advance()
            self.enter(tok.pos)
            operand = self.parse_not()
            self.leave()
            return _Not(operand, tok.pos)
        return self.parse_comparison()

    def comparison_op(self) -> str | None:
        tok = self.peek()
        if tok.kind == "op" and tok.text in _COMPARISONS:
            return tok.text
        if tok.kind == "kw":
            if tok.text == "in":
                return "in"
            if tok.text == "not":
                after = self.tokens[self.i + 1]
                if after.kind == "kw" and after.text == "in":
                    return "not in"
        return None

    def parse_comparison(self) -> _Node:
        left = self.parse_unary()
        op = self.comparison_op()
        if op is None:
            return left
        tok = self.advance()
        if op == "not in":
            self.advance()
        right = self.parse_unary()
        again = self.comparison_op()
        if again is not None:
            raise ExpressionError(
                f"comparisons cannot be chained: '{op}' followed by '{again}'; combine them with '&&'",
                self.peek().pos,
            )
        return _Compare(op, left, right, tok.pos)

    def parse_unary(self) -> _Node:
        if self.is_op("!"):
            tok = self.advance()
            self.enter(tok.pos)
            operand = self.parse_unary()
            self.leave()
            return _Not(operand, tok.pos)
        return self.parse_postfix()

    def parse_postfix(self) -> _Node:
        start = self.peek().pos
        base = self.parse_primary()
        segments: list[_Segment] = []
        while True:
            tok = self.peek()
            if tok.kind == "field":
                self.advance()
                segments.append(_Segment(True, tok.value, None, tok.pos))
            elif tok.kind == "[":
                self.advance()
                self.enter(tok.pos)
                index = self.parse_or()
                self.expect("]", "']'")
                self.leave()
                if isinstance(index, _Const):
                    segments.append(_Segment(False, index.value, None, tok.pos))
                else:
                    segments.append(_Segment(False, None, index, tok.pos))
            elif tok.kind == "(":
                raise ExpressionError(
                    "unexpected '(': only the built-in functions can be called (" + ", ".join(FUNCTIONS) + ")",
                    tok.pos,
                )
            else:
                break
        if not segments:
            return base
        if isinstance(base, _Chain):  # (a.b).c is a.b.c
            return _Chain(base.base, base.label, base.segments + segments, base.pos)
        if isinstance(base, _Name):
            label = base.name
        else:
            label = _short(self.source[start : self.tokens[self.i - 1].end].strip() or "value", 40)
        return _Chain(base, label, segments, start)

    def parse_primary(self) -> _Node:
        tok = self.advance()
        kind = tok.kind
        if kind == "num" or kind == "str":
            return _Const(tok.value, tok.pos)
        if kind == "kw":
            if tok.text == "true":
                return _Const(True, tok.pos)
            if tok.text == "false":
                return _Const(False, tok.pos)
            if tok.text == "null":
                return _Const(None, tok.pos)
            raise ExpressionError(f"unexpected '{tok.text}'", tok.pos)
        if kind == "name":
            if self.peek().kind == "(":
                return self.parse_call(tok)
            if tok.text.startswith("__"):
                raise ExpressionError(
                    f"'{_short(tok.text)}' is not allowed: names starting with '__' are reserved", tok.pos
                )
            return _Name(tok.text, tok.pos)
        if kind == "(":
            self.enter(tok.pos)
            node = self.parse_or()
            self.expect(")", "')'")
            self.leave()
            return node
        if kind == "[":
            self.enter(tok.pos)
            items: list[_Node] = []
            if self.peek().kind != "]":
                items.append(self.parse_or())
                while self.peek().kind == ",":
                    self.advance()
                    items.append(self.parse_or())
            self.expect("]", "',' or ']'")
            self.leave()
            return _List(items, tok.pos)
        if kind == "eof":
            raise self.unexpected(tok)
        raise ExpressionError(f"unexpected {_show_token(tok)}", tok.pos)

    def parse_call(self, name_tok: _Token) -> _Node:
        name = name_tok.text
        if name not in FUNCTIONS:
            raise ExpressionError(
                f"unknown function '{_short(name)}' (the functions are {', '.join(FUNCTIONS)})", name_tok.pos
            )
        open_tok = self.advance()
        self.enter(open_tok.pos)
        args: list[_Node] = []
        if self.peek().kind != ")":
            args.append(self.parse_or())
            while self.peek().kind == ",":
                self.advance()
                args.append(self.parse_or())
        self.expect(")", "',' or ')'")
        self.leave()
        wanted = FUNCTIONS[name]
        if len(args) != wanted:
            plural = "argument" if wanted == 1 else "arguments"
            raise ExpressionError(f"{name}() takes {wanted} {plural}, {len(args)} given", name_tok.pos)
        return _Call(name, args, name_tok.pos)


# --------------------------------------------------------------------------- compiler

_Fn = Callable[[Mapping[str, Any]], Any]


def _compile(node: _Node) -> _Fn:
    if isinstance(node, _Const):
        value = node.value
        return lambda scope: value
    if isinstance(node, _Name):
        return _compile_name(node)
    if isinstance(node, _Chain):
        return _compile_chain(node)
    if isinstance(node, _Not):
        operand = _compile(node.operand)
        return lambda scope: not truthy(operand(scope))
    if isinstance(node, _Logic):
        return _compile_logic(node)
    if isinstance(node, _Compare):
        return _compile_compare(node)
    if isinstance(node, _List):
        items = [_compile(item) for item in node.items]
        return lambda scope: [item(scope) for item in items]
    if isinstance(node, _Call):
        return _compile_call(node)
    raise AssertionError(f"unknown node {node!r}")  # pragma: no cover


def _compile_name(node: _Name) -> _Fn:
    name, pos = node.name, node.pos

    def run(scope: Mapping[str, Any]) -> Any:
        try:
            return scope[name]
        except KeyError:
            raise ExpressionError(f"'{name}' is not defined", pos) from None

    return run


def _show_key(key: Any) -> str:
    if isinstance(key, str):
        return json.dumps(str.__str__(key), ensure_ascii=False)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float)):
        return repr(key)
    return f"<{_typename(key)}>"


def _compile_chain(node: _Chain) -> _Fn:
    base = _compile(node.base)
    label = node.label
    plan = [
        (seg.is_field, seg.key, None if seg.node is None else _compile(seg.node), seg.pos) for seg in node.segments
    ]

    def path_to(count: int, scope: Mapping[str, Any]) -> str:
        text = label
        for is_field, key, key_fn, _pos in plan[:count]:
            if key_fn is not None:
                key = key_fn(scope)
            text += f".{key}" if is_field else f"[{_show_key(key)}]"
        return text

    def step(value: Any, key: Any, is_field: bool, index: int, pos: int, scope: Mapping[str, Any]) -> Any:
        kind = _kind(value)
        if kind == _DICT:
            if isinstance(key, str):
                try:
                    return value[key]
                except KeyError:
                    shown = key if is_field else _show_key(key)[1:-1]
                    raise ExpressionError(f"'{shown}' is not in {path_to(index, scope)}", pos) from None
            raise ExpressionError(
                f"{path_to(index, scope)} is an object; its keys are strings, not {_typename(key)}", pos
            )
        if kind == _LIST:
            if is_field:
                hint = f" (write [{key}] for an index)" if key.isdigit() else ""
                raise ExpressionError(f"cannot read '{key}' of {path_to(index, scope)}: it is a list{hint}", pos)
            if isinstance(key, int) and not isinstance(key, bool):
                if -len(value) <= key < len(value):
                    return value[key]
                raise ExpressionError(
                    f"index {key} is out of range for {path_to(index, scope)} (length {len(value)})", pos
                )
            raise ExpressionError(
                f"{path_to(index, scope)} is a list; its index must be an integer, not {_typename(key)}", pos
            )
        if is_field:
            raise ExpressionError(f"cannot read '{key}' of {path_to(index, scope)}: it is {_typename(value)}", pos)
        raise ExpressionError(f"cannot index {path_to(index, scope)}: it is {_typename(value)}", pos)

    if all(key_fn is None for _f, _k, key_fn, _p in plan):
        static = [(is_field, key, pos) for is_field, key, _fn, pos in plan]

        def run_static(scope: Mapping[str, Any]) -> Any:
            value = base(scope)
            index = 0
            for is_field, key, pos in static:
                if type(value) is dict and type(key) is str:
                    found = value.get(key, step)  # `step` doubles as a "missing" marker
                    if found is not step:
                        value = found
                        index += 1
                        continue
                value = step(value, key, is_field, index, pos, scope)
                index += 1
            return value

        return run_static

    def run(scope: Mapping[str, Any]) -> Any:
        value = base(scope)
        index = 0
        for is_field, key, key_fn, pos in plan:
            if key_fn is not None:
                key = key_fn(scope)
            value = step(value, key, is_field, index, pos, scope)
            index += 1
        return value

    return run


def _compile_logic(node: _Logic) -> _Fn:
    operands = [_compile(operand) for operand in node.operands]
    if node.op == "and":

        def run_and(scope: Mapping[str, Any]) -> bool:
            for operand in operands:
                if not truthy(operand(scope)):
                    return False
            return True

        return run_and

    def run_or(scope: Mapping[str, Any]) -> bool:
        for operand in operands:
            if truthy(operand(scope)):
                return True
        return False

    return run_or


_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _compile_compare(node: _Compare) -> _Fn:
    left, right, op, pos = _compile(node.left), _compile(node.right), node.op, node.pos
    if op in ("==", "==="):
        return lambda scope: _strict_equal(left(scope), right(scope))
    if op in ("!=", "!=="):
        return lambda scope: not _strict_equal(left(scope), right(scope))
    if op == "in":
        return lambda scope: _contains(right(scope), left(scope), pos)
    if op == "not in":
        return lambda scope: not _contains(right(scope), left(scope), pos)
    compare = _ORDER[op]

    def run(scope: Mapping[str, Any]) -> bool:
        a = left(scope)
        b = right(scope)
        ka, kb = _kind(a), _kind(b)
        if (ka == _NUM and kb == _NUM) or (ka == _STR and kb == _STR):
            return compare(a, b)
        raise ExpressionError(f"cannot compare {_typename(a)} with {_typename(b)} using '{op}'", pos)

    return run


def _contains(haystack: Any, needle: Any, pos: int | None) -> bool:
    kind = _kind(haystack)
    if kind == _LIST:
        if type(needle) is str:
            return any(type(x) is str and x == needle for x in haystack) or any(
                type(x) is not str and _strict_equal(x, needle) for x in haystack
            )
        return any(_strict_equal(x, needle) for x in haystack)
    if kind == _STR:
        if not isinstance(needle, str):
            raise ExpressionError(f"'in' on a string needs a string on the left, not {_typename(needle)}", pos)
        return needle in haystack
    if kind == _DICT:
        return isinstance(needle, str) and needle in haystack
    raise ExpressionError(f"'in' needs a list, a string or an object on the right, not {_typename(haystack)}", pos)


def _fn_len(value: Any, pos: int) -> int:
    if _kind(value) in (_STR, _LIST, _DICT):
        return len(value)
    raise ExpressionError(f"len() needs a string, a list or an object, not {_typename(value)}", pos)


def _fn_affix(name: str) -> Callable[[Any, Any, int], bool]:
    def run(text: Any, affix: Any, pos: int) -> bool:
        if not isinstance(text, str) or not isinstance(affix, str):
            raise ExpressionError(
                f"{name}() needs two strings, not {_typename(text)} and {_typename(affix)}", pos
            )
        return text.startswith(affix) if name == "startsWith" else text.endswith(affix)

    return run


def _fn_to_json(value: Any, pos: int) -> str:
    try:
        return _to_json(value)
    except (TypeError, ValueError, RecursionError):
        raise ExpressionError(f"toJSON() cannot encode {_typename(value)}: it is not JSON data", pos) from None


def _fn_from_json(text: Any, pos: int) -> Any:
    if not isinstance(text, str):
        raise ExpressionError(f"fromJSON() needs a string, not {_typename(text)}", pos)
    from wfctl.values import MAX_DEPTH, nests_deeper_than

    if nests_deeper_than(text):  # the text is a step's output: untrusted, decoded with bounds
        raise ExpressionError(f"fromJSON() got JSON nested deeper than {MAX_DEPTH} levels", pos)
    try:
        return json.loads(text, parse_constant=_no_json_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ExpressionError(f"fromJSON() got invalid JSON: {exc.msg} at character {exc.pos}", pos) from None
    except (ValueError, RecursionError):
        raise ExpressionError("fromJSON() got JSON it cannot read (nested too deeply or out of range)", pos) from None


def _no_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _compile_call(node: _Call) -> _Fn:
    args = [_compile(arg) for arg in node.args]
    pos = node.pos
    name = node.name
    if name == "len":
        (a,) = args
        return lambda scope: _fn_len(a(scope), pos)
    if name == "contains":
        a, b = args
        return lambda scope: _contains(a(scope), b(scope), pos)
    if name in ("startsWith", "endsWith"):
        a, b = args
        affix = _fn_affix(name)
        return lambda scope: affix(a(scope), b(scope), pos)
    if name == "toJSON":
        (a,) = args
        return lambda scope: _fn_to_json(a(scope), pos)
    if name == "fromJSON":
        (a,) = args
        return lambda scope: _fn_from_json(a(scope), pos)
    raise AssertionError(f"unknown function {name}")  # pragma: no cover


def _collect_references(node: _Node, out: list[tuple[Any, ...]]) -> None:
    if isinstance(node, _Name):
        out.append((node.name,))
    elif isinstance(node, _Chain):
        if isinstance(node.base, _Name):
            path: list[Any] = [node.base.name]
            inner: list[tuple[Any, ...]] = []
            static = True
            for seg in node.segments:
                if seg.node is not None:
                    static = False
                    _collect_references(seg.node, inner)
                elif static and (isinstance(seg.key, str) or type(seg.key) is int):
                    path.append(seg.key)
                else:
                    static = False
            out.append(tuple(path))
            out.extend(inner)
        else:
            _collect_references(node.base, out)
            for seg in node.segments:
                if seg.node is not None:
                    _collect_references(seg.node, out)
    elif isinstance(node, _Not):
        _collect_references(node.operand, out)
    elif isinstance(node, _Logic):
        for operand in node.operands:
            _collect_references(operand, out)
    elif isinstance(node, _Compare):
        _collect_references(node.left, out)
        _collect_references(node.right, out)
    elif isinstance(node, _List):
        for item in node.items:
            _collect_references(item, out)
    elif isinstance(node, _Call):
        for arg in node.args:
            _collect_references(arg, out)


# --------------------------------------------------------------------------- public API


class Expression:
    """A parsed expression; immutable and safe to share (parse() caches them)."""

    __slots__ = ("source", "_run", "_references")

    def __init__(self, source: str, run: _Fn, references: tuple[tuple[Any, ...], ...]) -> None:
        self.source = source
        self._run = run
        self._references = references

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """The value of the expression in `scope`; any failure is an ExpressionError."""
        try:
            return self._run(scope)
        except RecursionError:
            raise ExpressionError(f"a value used by '{_short(self.source, 60)}' is nested too deeply") from None

    def references(self) -> list[tuple[Any, ...]]:
        """The name paths the expression reads, in order of first use, without duplicates.

        Each path is the root name followed by the constant `.field` (str), `["key"]`
        (str) and `[0]` (int) segments after it, up to the first computed index.
        Function names are not references.
        """
        return list(self._references)

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def parse(source: str) -> Expression:
    """Parse an expression (cached). Raises ExpressionError for any bad input."""
    if not isinstance(source, str):
        raise ExpressionError(f"an expression must be a string, not {_typename(source)}", None)
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(
            f"expression too long ({len(source)} characters; the limit is {MAX_SOURCE_LENGTH})", MAX_SOURCE_LENGTH
        )
    return _parse_cached(source)


@functools.lru_cache(maxsize=4096)
def _parse_cached(source: str) -> Expression:
    try:
        tokens = _tokenize(source)
        tree = _Parser(source, tokens).parse()
        run = _compile(tree)
        found: list[tuple[Any, ...]] = []
        _collect_references(tree, found)
    except RecursionError:  # cannot happen within the limits; kept as a last guard
        raise ExpressionError(f"nesting too deep (more than {MAX_NESTING} levels)", None) from None
    unique = tuple(dict.fromkeys(found))
    return Expression(source, run, unique)


# --------------------------------------------------------------------------- templates

_UNQUOTED, _SINGLE, _DOUBLE, _ESCAPED = "unquoted", "single", "double", "escaped"
_HEREDOC, _COMMENT = "heredoc", "comment"
# Contexts where a value cannot be placed safely; a template there is an error.
_REFUSED = {
    _ESCAPED: "a '{{ }}' in a shell command cannot follow a backslash; remove the backslash",
    "quoted-heredoc": "a '{{ }}' inside a quoted here-document ('EOF') would never be expanded; "
    "leave the delimiter unquoted",
    "brace": "a '{{ }}' cannot stand inside ${...}; assign it to a variable first",
    "backtick-in-double": "a '{{ }}' cannot stand inside `...` within \"...\"; use $(...) instead",
}
_SHELL_REFERENCE = {
    _UNQUOTED: '"${{{0}}}"',
    _DOUBLE: "${{{0}}}",
    _SINGLE: "'\"${{{0}}}\"'",
    _HEREDOC: "${{{0}}}",  # an unquoted here-document expands $VAR without splitting it
    _COMMENT: "${{{0}}}",  # never run
}
_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z", re.ASCII)
_WORD_BREAK = " \t\n;&|()<>"


class _ShellScanner:
    """Tracks the POSIX sh quoting context across the literal text of a command.

    It knows '...', "...", backslashes, $(...) (which starts a fresh context, even
    inside "..."), `...`, ${...}, # comments and here-documents, so that the reference
    replacing a `{{ }}` is quoted for exactly where it stands. A context it cannot
    serve safely (after a backslash, in a quoted here-document, inside ${...}) is
    reported as such and the template is refused.
    """

    def __init__(self) -> None:
        # Each frame: [kind, depth]; depth counts "(" inside $( ) so ")" matches.
        self.stack: list[list] = [["top", 0]]
        self.escaped = False
        self.at_word_start = True
        self.pending: list[tuple[str, bool, bool]] = []  # heredocs: (delimiter, quoted, strip tabs)
        self.heredoc: tuple[str, bool, bool] | None = None
        self.line = ""
        self._lookahead = ""

    def context(self) -> str:
        if self.escaped:
            return _ESCAPED
        if self.heredoc is not None:
            return "quoted-heredoc" if self.heredoc[1] else _HEREDOC
        kind = self.stack[-1][0]
        if kind in ("top", "cmd"):
            return _UNQUOTED
        if kind == "backtick":
            return "backtick-in-double" if any(f[0] == "double" for f in self.stack[:-1]) else _UNQUOTED
        return {"single": _SINGLE, "double": _DOUBLE, "comment": _COMMENT, "brace": "brace"}[kind]

    def feed(self, text: str) -> None:
        text = self._lookahead + text
        self._lookahead = ""
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if self.heredoc is not None:
                if c == "\n":
                    delimiter, _quoted, strip = self.heredoc
                    line = self.line.lstrip("\t") if strip else self.line
                    if line == delimiter:
                        self.heredoc = self.pending.pop(0) if self.pending else None
                    self.line = ""
                else:
                    self.line += c
                i += 1
                continue
            kind = self.stack[-1][0]
            if self.escaped:
                self.escaped = False
                self.at_word_start = False
                i += 1
                continue
            if kind == "single":
                if c == "'":
                    self.stack.pop()
                i += 1
                continue
            if kind == "comment":
                if c == "\n":
                    self.stack.pop()
                    self._newline()
                i += 1
                continue
            if c == "\\":
                self.escaped = True
                i += 1
                continue
            if c == "$" and i + 1 < n and text[i + 1] == "(":
                self.stack.append(["cmd", 0])
                self.at_word_start = True
                i += 2
                continue
            if c == "$" and i + 1 < n and text[i + 1] == "{":
                self.stack.append(["brace", 0])
                i += 2
                continue
            if c == "$" and i + 1 == n:
                self._lookahead = "$"  # decide with the next piece of text
                return
            if c == "`":
                if kind == "backtick":
                    self.stack.pop()
                else:
                    self.stack.append(["backtick", 0])
                i += 1
                continue
            if kind == "double":
                if c == '"':
                    self.stack.pop()
                i += 1
                continue
            if kind == "brace":
                if c == "}":
                    self.stack.pop()
                i += 1
                continue
            # unquoted: top, cmd or backtick
            if c == "'":
                self.stack.append(["single", 0])
                self.at_word_start = False
            elif c == '"':
                self.stack.append(["double", 0])
                self.at_word_start = False
            elif c == "#" and self.at_word_start:
                self.stack.append(["comment", 0])
            elif c == "(" and kind == "cmd":
                self.stack[-1][1] += 1
                self.at_word_start = True
            elif c == ")" and kind == "cmd":
                if self.stack[-1][1] == 0:
                    self.stack.pop()
                else:
                    self.stack[-1][1] -= 1
                self.at_word_start = True
            elif c == "<" and text.startswith("<<", i) and not text.startswith("<<<", i):
                consumed = self._heredoc_operator(text, i)
                if consumed:
                    i += consumed
                    continue
                self.at_word_start = True
            elif c == "\n":
                self._newline()
            else:
                self.at_word_start = c in _WORD_BREAK
            i += 1

    def _newline(self) -> None:
        self.at_word_start = True
        if self.pending and len(self.stack) == 1:
            self.heredoc = self.pending.pop(0)
            self.line = ""

    def _heredoc_operator(self, text: str, i: int) -> int:
        """Read `<<[-] WORD`; returns the characters consumed (0 if not a heredoc)."""
        j = i + 2
        strip = j < len(text) and text[j] == "-"
        if strip:
            j += 1
        while j < len(text) and text[j] in " \t":
            j += 1
        match = re.match(r"""(?:'([^']*)'|"([^"]*)"|\\?([A-Za-z0-9_.\-]+))""", text[j:])
        if not match:
            return 0
        delimiter = next(g for g in match.groups() if g is not None)
        quoted = match.group(3) is None or text[j] == "\\"
        self.pending.append((delimiter, quoted, strip))
        self.at_word_start = False
        return j - i + match.end()


def _template_end(text: str, start: int) -> int:
    """Index of the '}}' closing the expression that starts at `start`, or -1."""
    i, n = start, len(text)
    while i < n:
        c = text[i]
        if c == '"' or c == "'":
            i += 1
            while i < n and text[i] != c:
                i += 2 if text[i] == "\\" else 1
            if i >= n:
                return -1
        elif c == "}" and text.startswith("}}", i):
            return i
        i += 1
    return -1


class Template:
    """Text with `{{ expr }}` segments; immutable and shared (parse_template() caches them)."""

    __slots__ = ("source", "_parts", "_expressions", "_shell_states")

    def __init__(self, source: str, parts: list[str | tuple[Expression, int]]) -> None:
        self.source = source
        self._parts = tuple(parts)
        self._expressions = tuple(p[0] for p in parts if isinstance(p, tuple))
        states: list[str] = []
        scanner = _ShellScanner()
        for part in self._parts:
            if isinstance(part, str):
                scanner.feed(part)
            else:
                states.append(scanner.context())
                scanner.at_word_start = False
        self._shell_states = tuple(states)

    @property
    def is_static(self) -> bool:
        """True when the text has no `{{ }}` at all."""
        return not self._expressions

    @property
    def expressions(self) -> list[Expression]:
        return list(self._expressions)

    def references(self) -> list[tuple[Any, ...]]:
        """The union of its expressions' references, in order of first use."""
        found: dict[tuple[Any, ...], None] = {}
        for expression in self._expressions:
            for ref in expression.references():
                found[ref] = None
        return list(found)

    def render(self, scope: Mapping[str, Any]) -> str:
        """The text with each `{{ }}` replaced by its value (strings as is, null as "", else JSON)."""
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(_render_value(part[0], scope))
        return "".join(out)

    def render_shell(self, scope: Mapping[str, Any], prefix: str = "WFCTL_T") -> tuple[str, dict[str, str]]:
        """Shell text that reads each value from an environment variable, and those variables.

        The n-th `{{ }}` becomes `{prefix}_{n}`: written `"${P_n}"` where the text is
        unquoted, `${P_n}` inside "…" and `'"${P_n}"'` inside '…', so the shell prints
        the value exactly and never parses it. Values are rendered as in `render`.
        """
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            raise ValueError(f"invalid environment variable prefix {prefix!r}")
        out: list[str] = []
        env: dict[str, str] = {}
        n = 0
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            expression, offset = part
            state = self._shell_states[n]
            if state in _REFUSED:
                raise ExpressionError(_REFUSED[state], offset)
            value = _render_value(expression, scope)
            if "\0" in value:
                raise ExpressionError(
                    f"the value of '{_short(expression.source, 60)}' contains a NUL character, "
                    "which cannot be passed to a shell command",
                    offset,
                )
            name = f"{prefix}_{n}"
            env[name] = value
            out.append(_SHELL_REFERENCE[state].format(name))
            n += 1
        return "".join(out), env

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def _render_value(expression: Expression, scope: Mapping[str, Any]) -> str:
    value = expression.evaluate(scope)
    try:
        return _to_text(value)
    except ExpressionError as exc:
        raise ExpressionError(f"the value of '{_short(expression.source, 60)}' is {exc.message}") from None
    except RecursionError:
        raise ExpressionError(f"the value of '{_short(expression.source, 60)}' is nested too deeply") from None


def parse_template(text: str) -> Template:
    """Parse text with `{{ expr }}` segments (cached). Positions in errors index `text`."""
    if not isinstance(text, str):
        raise ExpressionError(f"a template must be a string, not {_typename(text)}", None)
    return _parse_template_cached(text)


@functools.lru_cache(maxsize=4096)
def _parse_template_cached(text: str) -> Template:
    parts: list[str | tuple[Expression, int]] = []
    i = 0
    while True:
        open_at = text.find("{{", i)
        if open_at < 0:
            if i < len(text):
                parts.append(text[i:])
            break
        if open_at > i:
            parts.append(text[i:open_at])
        inner_start = open_at + 2
        close_at = _template_end(text, inner_start)
        if close_at < 0:
            raise ExpressionError(f"unclosed '{{{{' at position {open_at}", open_at)
        inner = text[inner_start:close_at]
        stripped = inner.strip(" \t\r\n")
        offset = inner_start + (len(inner) - len(inner.lstrip(" \t\r\n")))
        if not stripped:
            raise ExpressionError(f"empty '{{{{ }}}}' at position {open_at}", open_at)
        try:
            expression = parse(stripped)
        except ExpressionError as exc:
            position = None if exc.position is None else exc.position + offset
            raise ExpressionError(exc.message, position) from None
        parts.append((expression, offset))
        i = close_at + 2
    return Template(text, parts)
