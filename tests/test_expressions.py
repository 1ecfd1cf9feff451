"""Tests of the expression language, templates and shell rendering (wfctl.expressions)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess

import pytest

from wfctl.errors import ExpressionError
from wfctl.expressions import (
    MAX_NESTING,
    MAX_SOURCE_LENGTH,
    Expression,
    Template,
    parse,
    parse_template,
    truthy,
)


def ev(source: str, scope: dict | None = None):
    return parse(source).evaluate(scope or {})


def syntax_error(source: str) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        parse(source)
    return info.value


def runtime_error(source: str, scope: dict | None = None) -> ExpressionError:
    expression = parse(source)
    with pytest.raises(ExpressionError) as info:
        expression.evaluate(scope or {})
    return info.value


# --------------------------------------------------------------------------- the seed and names


def test_seed_condition_with_dashed_name():
    expression = parse("test-results.passed === true")
    assert isinstance(expression, Expression)
    assert expression.source == "test-results.passed === true"
    assert expression.evaluate({"test-results": {"passed": True}}) is True
    assert expression.evaluate({"test-results": {"passed": False}}) is False
    assert expression.evaluate({"test-results": {"passed": 1}}) is False  # strict: 1 is not true


@pytest.mark.parametrize(
    ("source", "scope", "expected"),
    [
        ("a-b", {"a-b": 1}, 1),
        ("a-b-c.d-e", {"a-b-c": {"d-e": "x"}}, "x"),
        ("a--b", {"a--b": 2}, 2),
        ("a-1", {"a-1": 3}, 3),
        ("_x", {"_x": 4}, 4),
        ("steps.1st.status", {"steps": {"1st": {"status": "ok"}}}, "ok"),
        ("a.in", {"a": {"in": 5}}, 5),  # keywords are fine as fields
        ("a.true", {"a": {"true": 6}}, 6),
        ("len", {"len": 7}, 7),  # a function name is only a function when called
    ],
)
def test_names_and_fields(source, scope, expected):
    assert ev(source, scope) == expected


def test_dash_is_not_arithmetic():
    assert ev("a-b", {"a-b": 10, "a": 3, "b": 1}) == 10
    error = syntax_error("a - b")
    assert "no arithmetic" in error.message
    assert error.position == 2
    assert syntax_error("a- == 1").position == 1  # a name does not end with '-'
    assert syntax_error("x == -a").position == 5


def test_keywords_are_not_names():
    assert syntax_error("in").position == 0
    assert syntax_error("and == 1").message == "unexpected 'and'"


# --------------------------------------------------------------------------- literals


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1", 1),
        ("-2", -2),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        ("1e3", 1000.0),
        ("2E-2", 0.02),
        ("'single'", "single"),
        ('"double"', "double"),
        (r'"a\nb\tc\"d\'e\\f"', "a\nb\tc\"d'e\\f"),
        (r"'\u00e9\u20ac'", "é€"),
        (r"'\ud83d\ude00'", "\U0001f600"),
        ('"}}"', "}}"),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[]", []),
        ("[1, 'a', [true, null]]", [1, "a", [True, None]]),
        ("x == -1", True),
        ("[-1, -2]", [-1, -2]),
    ],
)
def test_literals(source, expected):
    result = ev(source, {"x": -1})
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("source", "position", "words"),
    [
        ('"abc', 0, "unterminated string"),
        ("'abc\\'", 0, "unterminated string"),
        ('"\\q"', 1, "unknown escape"),
        ('"\\u12"', 1, "four hex digits"),
        ('"\\ud800"', 1, "surrogate"),
        ("1abc", 0, "invalid number"),
        ("1e999", 0, "out of range"),
        ("[1, 2,]", 6, "unexpected ']'"),
    ],
)
def test_bad_literals(source, position, words):
    error = syntax_error(source)
    assert words in error.message
    assert error.position == position


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 == 1", True),
        ("1 === 1", True),
        ("1 == 1.0", True),
        ("'1' == 1", False),
        ("true == 1", False),
        ("false == 0", False),
        ("true === true", True),
        ("null == false", False),
        ("null == null", True),
        ("'' == null", False),
        ("[1, 2] == [1, 2]", True),
        ("[1, true] == [1, 1]", False),
        ("[1] == [1, 1]", False),
        ("1 != 2", True),
        ("1 !== 1", False),
        ("true != 1", True),
        ("'a' !== 'a'", False),
    ],
)
def test_strict_equality(source, expected):
    assert ev(source) is expected


def test_equality_of_objects_from_scope():
    scope = {"a": {"x": [1, {"y": True}]}, "b": {"x": [1.0, {"y": True}]}, "c": {"x": [1, {"y": 1}]}}
    assert ev("a == b", scope) is True
    assert ev("a == c", scope) is False
    assert ev("a.x[1] == b.x[1]", scope) is True


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 2.5", True),
        ("2 >= 3", False),
        ("'a' < 'b'", True),
        ("'b' <= 'a'", False),
        ("'abc' > 'abb'", True),
        ("'a' >= 'a'", True),
    ],
)
def test_ordering(source, expected):
    assert ev(source) is expected


@pytest.mark.parametrize("source", ["1 < 'a'", "true < 2", "null > 0", "[1] < [2]", "'a' >= null", "a <= 1"])
def test_ordering_of_incompatible_types_is_an_error(source):
    error = runtime_error(source, {"a": {"x": 1}})
    assert "cannot compare" in error.message


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true && true", True),
        ("true && false", False),
        ("false || true", True),
        ("false || false", False),
        ("1 && 'x'", True),  # boolean results, not the operands
        ("0 || ''", False),
        ("!true", False),
        ("!0", True),
        ("!!'x'", True),
        ("true and false", False),
        ("false or true", True),
        ("not true", False),
        ("not not 1", True),
        ("true || false && false", True),  # && binds tighter than ||
        ("(true || false) && false", False),
        ("not 1 == 2", True),  # not (1 == 2)
        ("!1 == false", True),  # (!1) == false
        ("2 in [1, 2] && 'b' in 'abc'", True),
        ("3 not in [1, 2]", True),
        ("not 3 in [1, 2]", True),
    ],
)
def test_logic(source, expected):
    assert ev(source) is expected


def test_short_circuit_does_not_evaluate_the_right_side():
    assert ev("false && missing.field") is False
    assert ev("true || missing.field") is True
    assert ev("false and missing") is False
    assert ev("true or missing") is True
    assert ev("a || b || c", {"a": 0, "b": 1}) is True  # c is never read
    with pytest.raises(ExpressionError, match="'missing' is not defined"):
        ev("true && missing")
    with pytest.raises(ExpressionError, match="'missing' is not defined"):
        ev("false || missing")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("'b' in ['a', 'b']", True),
        ("'c' in ['a', 'b']", False),
        ("1 in [1.0]", True),
        ("1 in [true]", False),
        ("true in [1]", False),
        ("[1] in [[1], 2]", True),
        ("'ell' in 'hello'", True),
        ("'x' in 'hello'", False),
        ("'k' in obj", True),
        ("'z' in obj", False),
        ("1 in obj", False),
    ],
)
def test_in(source, expected):
    assert ev(source, {"obj": {"k": 1}}) is expected


@pytest.mark.parametrize("source", ["1 in 'abc'", "'a' in 5", "'a' in null", "'a' in true"])
def test_in_with_wrong_types_is_an_error(source):
    with pytest.raises(ExpressionError, match="'in'"):
        ev(source)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        (False, False),
        (0, False),
        (0.0, False),
        (float("nan"), False),
        ("", False),
        ([], False),
        ({}, False),
        (True, True),
        (1, True),
        (-1.5, True),
        ("0", True),
        ("false", True),
        ([0], True),
        ({"a": None}, True),
    ],
)
def test_truthy(value, expected):
    assert truthy(value) is expected
    assert ev("!!v", {"v": value}) is expected


# --------------------------------------------------------------------------- functions


def test_functions():
    scope = {"s": "hello", "l": [1, 2, 3], "d": {"a": 1, "b": 2}}
    assert ev("len(s)", scope) == 5
    assert ev("len(l)", scope) == 3
    assert ev("len(d)", scope) == 2
    assert ev("len('')") == 0
    assert ev("contains(l, 2)", scope) is True
    assert ev("contains(l, true)", scope) is False
    assert ev("contains(s, 'ell')", scope) is True
    assert ev("contains(d, 'a')", scope) is True
    assert ev("startsWith(s, 'he')", scope) is True
    assert ev("startsWith(s, 'lo')", scope) is False
    assert ev("endsWith(s, 'lo')", scope) is True
    assert ev("endsWith(s, 'he')", scope) is False
    assert ev("toJSON(d)", scope) == '{"a":1,"b":2}'
    assert ev("toJSON([1, 'é', null, true])") == '[1,"é",null,true]'
    assert ev("toJSON('x')") == '"x"'
    assert ev("fromJSON('{\"a\": [1, 2]}')") == {"a": [1, 2]}
    assert ev("fromJSON(t).a[1]", {"t": '{"a": [1, 2]}'}) == 2
    assert ev("fromJSON(toJSON(d)) == d", scope) is True
    assert ev("len(fromJSON('[1,2]')) == 2") is True


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("len(1)", "len() needs a string, a list or an object, not a number"),
        ("len(null)", "not null"),
        ("contains(1, 2)", "'in' needs a list, a string or an object"),
        ("startsWith(1, 'a')", "startsWith() needs two strings"),
        ("endsWith('a', null)", "endsWith() needs two strings"),
        ("fromJSON('{')", "fromJSON() got invalid JSON"),
        ("fromJSON(1)", "fromJSON() needs a string"),
        ("fromJSON(deep)", "fromJSON()"),
        ("toJSON(obj)", "toJSON() cannot encode"),
    ],
)
def test_function_runtime_errors(source, words):
    scope = {"deep": "[" * 100000 + "]" * 100000, "obj": {"x": object()}}
    error = runtime_error(source, scope)
    assert words in error.message


@pytest.mark.parametrize(
    ("source", "words", "position"),
    [
        ("len()", "len() takes 1 argument, 0 given", 0),
        ("len(a, b)", "len() takes 1 argument, 2 given", 0),
        ("x && contains(a)", "contains() takes 2 arguments, 1 given", 5),
        ("eval('1')", "unknown function 'eval'", 0),
        ("__import__(\"os\")", "unknown function '__import__'", 0),
        ("LEN(a)", "unknown function 'LEN'", 0),
        ("a.b(1)", "only the built-in functions can be called", 3),
        ("(len)(a)", "only the built-in functions can be called", 5),
    ],
)
def test_function_syntax_errors(source, words, position):
    error = syntax_error(source)
    assert words in error.message
    assert error.position == position


# --------------------------------------------------------------------------- access


def test_bracket_and_dot_access():
    scope = {
        "steps": {"my.step": {"status": "completed", "output": {"items": ["a", "b", "c"]}}},
        "item": "my.step",
        "index": 1,
    }
    assert ev('steps["my.step"].status', scope) == "completed"
    assert ev("steps['my.step'].output.items[0]", scope) == "a"
    assert ev('steps["my.step"].output.items[-1]', scope) == "c"
    assert ev("steps[item].output.items[index]", scope) == "b"
    assert ev('steps["my.step"]["output"]["items"][2]', scope) == "c"
    assert ev("(steps[item].output).items[1]", scope) == "b"
    assert ev("[10, 20][1]") == 20
    assert ev('steps["my.step"].status == "completed"', scope) is True


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("x", "'x' is not defined"),
        ("test-results.passed", "'passed' is not in test-results"),
        ("test-results.detail.count", "'count' is not in test-results.detail"),
        ('steps["build"].status', "'status' is not in steps[\"build\"]"),
        ("steps[name].output", "'output' is not in steps[\"build\"]"),
        ("list[3]", "index 3 is out of range for list (length 2)"),
        ("list[-3]", "index -3 is out of range for list (length 2)"),
        ("list['a']", "list is a list; its index must be an integer, not a string"),
        ("list[true]", "its index must be an integer, not a boolean"),
        ("list.first", "cannot read 'first' of list: it is a list"),
        ("list.0", "write [0] for an index"),
        ("test-results[0]", "test-results is an object; its keys are strings, not a number"),
        ("name.length", "cannot read 'length' of name: it is a string"),
        ("name[0]", "cannot index name: it is a string"),
        ("nothing.x", "cannot read 'x' of nothing: it is null"),
        ("n.x", "cannot read 'x' of n: it is a number"),
        ("fromJSON('{}').a", "'a' is not in fromJSON('{}')"),
        ("obj.attr", "it is a"),
    ],
)
def test_runtime_access_errors_name_the_path(source, words):
    scope = {
        "test-results": {"detail": {}},
        "steps": {"build": {}},
        "name": "build",
        "list": [1, 2],
        "nothing": None,
        "n": 3,
        "obj": object(),
    }
    error = runtime_error(source, scope)
    assert words in error.message


def test_missing_field_is_an_error_not_false():
    expression = parse("test-results.passed === true")
    with pytest.raises(ExpressionError, match="'passed' is not in test-results"):
        expression.evaluate({"test-results": {"failed": 0}})
    with pytest.raises(ExpressionError, match="'passed' is not in test-results"):
        parse("!test-results.passed").evaluate({"test-results": {}})


def test_python_attributes_are_never_reached():
    class Sneaky:
        secret = "s3cret"

    with pytest.raises(ExpressionError) as info:
        ev("x.secret", {"x": Sneaky()})
    assert "s3cret" not in info.value.message
    assert "__class__" in syntax_error("a.__class__").message
    assert ev('a["__class__"]', {"a": {"__class__": 1}}) == 1  # a real key is still reachable
    with pytest.raises(ExpressionError, match="is not in a"):
        ev('a["__class__"]', {"a": {}})
    assert "reserved" in syntax_error("__builtins__").message


def test_evaluate_works_with_any_mapping_scope():
    from collections import ChainMap

    scope = ChainMap({"a": 1}, {"b": {"c": 2}})
    assert ev("a == 1 && b.c == 2", scope) is True
    with pytest.raises(ExpressionError, match="'z' is not defined"):
        parse("z").evaluate(scope)


def test_deeply_nested_values_are_an_expression_error():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(ExpressionError):
        ev("a == b", {"a": deep, "b": deep})
    with pytest.raises(ExpressionError):
        ev("toJSON(a)", {"a": deep})


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            'steps["build"].status == "completed" && test-results.passed',
            [("steps", "build", "status"), ("test-results", "passed")],
        ),
        ("a", [("a",)]),
        ("a.b.c", [("a", "b", "c")]),
        ("a[0].b", [("a", 0, "b")]),
        ("a[-1]", [("a", -1)]),
        ("steps[item].status", [("steps",), ("item",)]),
        ("steps[item.id].out", [("steps",), ("item", "id")]),
        ("a.b[c][0]", [("a", "b"), ("c",)]),
        ("len(items) > 0 && contains(tags, 'x')", [("items",), ("tags",)]),
        ("a.b == a.b || a.b", [("a", "b")]),
        ("[x, y.z]", [("x",), ("y", "z")]),
        ("fromJSON(s).a", [("s",)]),
        ("(a.b).c", [("a", "b", "c")]),
        ("1 == 1", []),
        ("a[true].b", [("a",)]),
    ],
)
def test_references(source, expected):
    assert parse(source).references() == expected


def test_references_returns_a_copy():
    expression = parse("refs.copy")
    expression.references().append(("junk",))
    assert expression.references() == [("refs", "copy")]


# --------------------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("source", "position", "words"),
    [
        ("a.b ===", 7, "unexpected end of expression after '==='"),
        ("(", 0, "unbalanced '('"),
        (")", 0, "unbalanced ')'"),
        ("a ==", 4, "unexpected end of expression after '=='"),
        ("", 0, "empty expression"),
        ("   ", 0, "empty expression"),
        ("a b", 2, "unexpected 'b'"),
        ("a = 1", 2, "use '=='"),
        ("a & b", 2, "'&&'"),
        ("a | b", 2, "'||'"),
        ("1 + 1", 2, "no arithmetic"),
        ("a.", 2, "expected a field name after '.'"),
        ("a. b", 2, "expected a field name after '.'"),
        ("[1, 2)", 5, "does not close"),
        ("(a]", 2, "does not close"),
        ("((a)", 0, "unbalanced '('"),
        ("a[]", 2, "unexpected ']'"),
        ("1 < 2 < 3", 6, "cannot be chained"),
        ("a == b != c", 7, "cannot be chained"),
        ("a ! b", 2, "unexpected '!'"),
        ("a not b", 2, "unexpected 'not'"),
        ("true(1)", 4, "only the built-in functions can be called"),
        ("a,b", 1, "unexpected ','"),
        ("{a}", 0, "unexpected '{'"),
        ("a\x00", 1, "U+0000"),
        ("é", 0, "unexpected character 'é'"),
        ("a == ", 5, "unexpected end of expression"),
    ],
)
def test_syntax_errors_have_a_message_and_position(source, position, words):
    error = syntax_error(source)
    assert words in error.message
    assert error.position == position
    assert str(error) == error.message


@pytest.mark.parametrize(
    "source",
    [
        "1+" * 10000,
        "[" * 20000,
        "(" * 5000,
        "a" * (MAX_SOURCE_LENGTH + 1),
        "x" * 100_000,
    ],
)
def test_huge_input_is_rejected(source):
    error = syntax_error(source)
    assert "too long" in error.message


def test_input_at_the_length_limit_still_parses():
    source = "a" * MAX_SOURCE_LENGTH
    assert parse(source).references() == [(source,)]


@pytest.mark.parametrize(
    "source",
    [
        "(" * (MAX_NESTING + 1) + "a" + ")" * (MAX_NESTING + 1),
        "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1),
        "[" * 2000,
        "(" * 2000,
        "!" * (MAX_NESTING + 1) + "a",
        "!" * 4000 + "a",
        "not " * (MAX_NESTING + 1) + "a",
        "a" + "[0]" * 1 + "".join("[" for _ in range(40)),
        "len(" * (MAX_NESTING + 1) + "a" + ")" * (MAX_NESTING + 1),
        "a[" * (MAX_NESTING + 1) + "0" + "]" * (MAX_NESTING + 1),
        "!(" * 20 + "a" + ")" * 20,
    ],
)
def test_deep_nesting_is_rejected(source):
    assert "nesting too deep" in syntax_error(source).message


def test_nesting_up_to_the_limit_is_fine():
    assert ev("(" * MAX_NESTING + "1" + ")" * MAX_NESTING) == 1
    assert ev("!" * MAX_NESTING + "true") is True
    assert ev("[" * MAX_NESTING + "]" * MAX_NESTING) is not None


def test_long_flat_expressions_evaluate_without_recursion_limits():
    chain = " || ".join(["false"] * 400) + " || true"
    assert len(chain) < MAX_SOURCE_LENGTH
    assert ev(chain) is True
    fields = "a" + ".b" * 1500
    value: dict = {}
    scope = {"a": value}
    for _ in range(1499):
        value["b"] = {}
        value = value["b"]
    value["b"] = 42
    assert ev(fields, scope) == 42


def test_non_string_source_is_an_expression_error():
    with pytest.raises(ExpressionError):
        parse(None)  # type: ignore[arg-type]
    with pytest.raises(ExpressionError):
        parse(["a"])  # type: ignore[arg-type]
    with pytest.raises(ExpressionError):
        parse_template(3)  # type: ignore[arg-type]


def test_parse_is_cached():
    assert parse("cached.value == 1") is parse("cached.value == 1")
    assert parse_template("x {{ y }}") is parse_template("x {{ y }}")


# --------------------------------------------------------------------------- fuzzing

_ALPHABET = [
    "a", "b", "test-results", "steps", "x-", "_", "__", "1", "-1", "0.5", "1e3", "'s'", '"t"', "'", '"', "\\",
    ".", ".b", ".0", "[", "]", "(", ")", ",", "==", "===", "!=", "!==", "<", "<=", ">", ">=", "&&", "||", "!",
    "&", "|", "=", "-", "+", "and", "or", "not", "in", "true", "false", "null", "len", "contains",
    "startsWith", "fromJSON", "toJSON", "__import__", "eval", " ", "  ", "\n", "\x00", "é", "{{", "}}", "{", "}",
    "$", "`", ";", "#", "\\u", "\\n", "\ud800",
]  # fmt: skip


def _random_source(rng: random.Random) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 14)))


def test_fuzz_parse_and_evaluate_raise_only_expression_errors():
    rng = random.Random(20240611)
    scope = {
        "a": {"b": [1, {"c": "x"}], "0": None},
        "b": [1, "two", None, True],
        "test-results": {"passed": True},
        "steps": {"s": {"status": "completed"}},
        "_": "",
        "s": "s",
        "t": '{"k": 1}',
    }
    parsed = 0
    for _ in range(4000):
        source = _random_source(rng)
        try:
            expression = parse(source)
        except ExpressionError as error:
            assert error.message
            assert error.position is None or 0 <= error.position <= len(source)
            continue
        parsed += 1
        assert isinstance(expression.references(), list)
        try:
            expression.evaluate(scope)
        except ExpressionError as error:
            assert error.message
    assert parsed > 100  # the alphabet is good enough to produce valid expressions too


def test_fuzz_random_characters():
    rng = random.Random(7)
    chars = "ab-_.[](),!=<>&|'\"\\ 01e+\x00\n\u00e9\u202e{}"
    for _ in range(3000):
        source = "".join(rng.choice(chars) for _ in range(rng.randint(0, 30)))
        try:
            parse(source).evaluate({"a": {"b": 1}, "b": [1], "ab": "ab"})
        except ExpressionError:
            pass


def test_fuzz_templates():
    rng = random.Random(99)
    for _ in range(2000):
        text = "".join(rng.choice(["x", " ", "'", '"', "\\", "{{", "}}", "a", "b.c", "==", "$", "{"]) for _ in range(12))
        try:
            template = parse_template(text)
        except ExpressionError:
            continue
        try:
            command, env = template.render_shell({"a": "v", "b": {"c": 1}})
        except ExpressionError:
            continue
        assert set(env) == {f"WFCTL_T_{n}" for n in range(len(template.expressions))}


# --------------------------------------------------------------------------- templates


def test_template_render():
    template = parse_template("Hello {{ user.name }}, you have {{ count }} items: {{items}}{{ none }}!")
    assert isinstance(template, Template)
    scope = {"user": {"name": "Ann"}, "count": 3, "items": ["a", {"b": True}], "none": None}
    assert template.render(scope) == 'Hello Ann, you have 3 items: ["a",{"b":true}]!'
    assert not template.is_static
    assert [e.source for e in template.expressions] == ["user.name", "count", "items", "none"]
    assert template.references() == [("user", "name"), ("count",), ("items",), ("none",)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ("", ""),
        (None, ""),
        (True, "true"),
        (False, "false"),
        (3, "3"),
        (2.5, "2.5"),
        ([1, "é"], '[1,"é"]'),
        ({"k": None}, '{"k":null}'),
    ],
)
def test_template_value_rendering(value, text):
    assert parse_template("{{ v }}").render({"v": value}) == text


def test_template_static_detection():
    static = parse_template("echo hello } } {x}")
    assert static.is_static
    assert static.expressions == []
    assert static.references() == []
    assert static.render({}) == "echo hello } } {x}"
    assert static.render_shell({}) == ("echo hello } } {x}", {})
    assert parse_template("").is_static
    assert not parse_template("{{ a }}").is_static


def test_template_strings_may_contain_braces():
    template = parse_template('a {{ "}}" }} b {{ \'{{\' }} c')
    assert template.render({}) == "a }} b {{ c"


def test_template_references_are_a_union():
    template = parse_template("{{ a.b }} {{ a.b == c }} {{ steps[item].x }}")
    assert template.references() == [("a", "b"), ("c",), ("steps",), ("item",)]


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("echo {{ x", 5, "unclosed '{{'"),
        ("{{ 'a }}", 0, "unclosed '{{'"),
        ("ok }} {{", 6, "unclosed '{{'"),
        ("{{ }}", 0, "empty"),
        ("run {{ a == }}", 11, "unexpected end of expression after '=='"),
        ("x {{ eval(1) }}", 5, "unknown function 'eval'"),
    ],
)
def test_template_errors(text, position, words):
    with pytest.raises(ExpressionError) as info:
        parse_template(text)
    assert words in info.value.message
    assert info.value.position == position


def test_template_runtime_errors():
    template = parse_template("{{ test-results.passed }}")
    with pytest.raises(ExpressionError, match="'passed' is not in test-results"):
        template.render({"test-results": {}})
    with pytest.raises(ExpressionError, match="not JSON data"):
        parse_template("{{ v }}").render({"v": object()})


# --------------------------------------------------------------------------- shell rendering


def test_render_shell_quoting_contexts():
    template = parse_template("""echo {{ a }} '{{ a }}' "{{ a }}" 'x'{{ a }}"y" \\'{{ a }}""")
    command, env = template.render_shell({"a": "v"})
    assert command == (
        'echo "${WFCTL_T_0}" \'\'"${WFCTL_T_1}"\'\' "${WFCTL_T_2}" \'x\'"${WFCTL_T_3}""y" \\\'"${WFCTL_T_4}"'
    )
    assert env == {f"WFCTL_T_{n}": "v" for n in range(5)}


def test_render_shell_prefix_and_values():
    command, env = parse_template("tool --n {{ n }} --obj '{{ o }}' {{ none }}").render_shell(
        {"n": 3, "o": {"a": [1]}, "none": None}, prefix="STEP_X"
    )
    assert command == "tool --n \"${STEP_X_0}\" --obj ''\"${STEP_X_1}\"'' \"${STEP_X_2}\""
    assert env == {"STEP_X_0": "3", "STEP_X_1": '{"a":[1]}', "STEP_X_2": ""}
    with pytest.raises(ValueError):
        parse_template("{{ n }}").render_shell({"n": 1}, prefix="BAD PREFIX")


def test_render_shell_refuses_a_template_after_a_backslash():
    with pytest.raises(ExpressionError, match="backslash"):
        parse_template("echo \\{{ a }}").render_shell({"a": "v"})
    with pytest.raises(ExpressionError, match="backslash"):
        parse_template('echo "\\{{ a }}"').render_shell({"a": "v"})
    # an escaped quote does not change the quoting state
    command, _env = parse_template('echo "\\"{{ a }}"').render_shell({"a": "v"})
    assert command == 'echo "\\"${WFCTL_T_0}"'


def test_render_shell_refuses_nul_in_values():
    with pytest.raises(ExpressionError, match="NUL"):
        parse_template("echo {{ a }}").render_shell({"a": "x\x00y"})


PAYLOADS = [
    '"; touch pwned; "',
    "$(touch pwned)",
    "`touch pwned`",
    "a\ntouch pwned",
    "'; touch pwned; '",
    "$HOME",
    "* ? [a] ~ \\ $((1+1)) ${HOME} && touch pwned || touch pwned; touch pwned &",
    "  leading and trailing spaces  ",
    "",
    "-n",
    "é €\t\u202e",
]

CONTEXTS = {
    "unquoted": "printf %s {{ v }}",
    "single": "printf %s '{{ v }}'",
    "double": 'printf %s "{{ v }}"',
    "glued": "printf %s x'{{ v }}'y\"{{ v }}\"z{{ v }}",
}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("context", sorted(CONTEXTS))
def test_render_shell_injection_proof(tmp_path, payload, context):
    template = parse_template(CONTEXTS[context])
    command, env = template.render_shell({"v": payload})
    assert payload not in command or payload in ("", "-n")  # the value is never pasted into the text
    result = subprocess.run(
        ["/bin/sh", "-c", command],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    expected = f"x{payload}y{payload}z{payload}" if context == "glued" else payload
    assert result.stdout == expected
    assert not (tmp_path / "pwned").exists()


def test_render_shell_non_string_values_reach_the_command_as_json(tmp_path):
    value = {"msg": "$(touch pwned)", "n": [1, 2.5, None, True]}
    command, env = parse_template("printf %s {{ v }}").render_shell({"v": value})
    result = subprocess.run(
        ["/bin/sh", "-c", command], env={**os.environ, **env}, cwd=tmp_path, capture_output=True, text=True
    )
    assert json.loads(result.stdout) == value
    assert not (tmp_path / "pwned").exists()


# --- quoting contexts beyond plain quotes, run through a real /bin/sh -------------------
SHELL_CONTEXTS = [
    'out="$(printf %s "{{ v }}")"; printf %s "$out"',
    "out=$(printf %s {{ v }}); printf %s \"$out\"",
    "# don't be fooled by this apostrophe\nprintf %s {{ v }}",
    'printf %s "$(printf %s "$(printf %s {{ v }})")"',
    "cat <<EOF\n{{ v }}\nEOF",
    "cat <<-EOF\n\t{{ v }}\n\tEOF",
    'x=`printf %s {{ v }}`; printf %s "$x"',
    "f() { printf %s {{ v }}; }; f",
    "case x in (x) printf %s {{ v }};; esac",
]
SHELL_VALUES = ["a  b *", "it's \"quoted\"", "$(touch pwned)", "`touch pwned`", "; touch pwned; #", "$HOME"]


@pytest.mark.parametrize("command", SHELL_CONTEXTS)
@pytest.mark.parametrize("value", SHELL_VALUES)
def test_render_shell_in_nested_contexts_keeps_the_value(command, value, tmp_path):
    from wfctl.expressions import parse_template

    (tmp_path / "a-file").write_text("x")  # something a stray glob would match
    text, env = parse_template(command).render_shell({"v": value})
    result = subprocess.run(
        ["/bin/sh", "-c", text], env={**os.environ, **env}, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    expected = value + "\n" if "<<" in command else value
    assert result.stdout == expected
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "command, message",
    [
        ("cat <<'EOF'\n{{ v }}\nEOF", "quoted here-document"),
        ('echo "${X:-{{ v }}}"', "${...}"),
        ('echo "`echo {{ v }}`"', "use $(...)"),
        ("echo \\{{ v }}", "backslash"),
    ],
)
def test_render_shell_refuses_contexts_it_cannot_quote(command, message):
    from wfctl.expressions import parse_template

    with pytest.raises(ExpressionError, match=re.escape(message)):
        parse_template(command).render_shell({"v": "x"})
