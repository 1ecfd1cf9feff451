"""Property-based tests (hypothesis) over the expression parser, templates, the loader and the
validator: whatever the input, the answer is a value or wfctl's own error, never a traceback.

* `expressions.parse`: arbitrary text, token soup and grammar-built expressions either parse
  or raise `ExpressionError`; parsed ones evaluated against random JSON scopes give a value
  or `ExpressionError`.
* `parse_template(...).render_shell(...)`: random text with `{{ }}` segments gives a command
  or `ExpressionError`; for hostile values (quotes, `$`, backticks, `;`, newlines, `*`, ...)
  the command run by /bin/sh prints exactly the value, in every quoting context.
* `loader.parse_text` / `validate.validate_text`: random workflow-like documents, random
  mutations of the examples (as documents and as text), and raw bytes either load or raise
  `WorkflowInvalid`, whose every Problem has a message.

Sized to run in well under 30 s (`max_examples` below); `HYPOTHESIS_PROFILE=thorough` runs
ten times as many examples.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings, strategies as st  # noqa: E402

from conftest import EXAMPLES  # noqa: E402
from wfctl import loader  # noqa: E402
from wfctl.errors import ExpressionError, WorkflowInvalid  # noqa: E402
from wfctl.expressions import parse, parse_template  # noqa: E402
from wfctl.validate import validate_mapping, validate_text  # noqa: E402

_SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1


def examples(n: int):
    return settings(max_examples=n * _SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# -- strategies ------------------------------------------------------------------------------------
NAMES = ["a", "b", "item", "index", "input", "steps", "test-results", "x_1", "error", "task", "__x", "true", "in"]
FIELDS = ["passed", "status", "output", "0", "1st", "__class__", "a-b", "len", "x"]
TOKENS = [
    "==", "===", "!=", "!==", "<", "<=", ">", ">=", "&&", "||", "!", "and", "or", "not", "in",
    "(", ")", "[", "]", ",", ".", "{", "}", "{{", "}}", "'", '"', "\\", "-", "+", "*", "/", "$", "`", ";",
    "true", "false", "null", "0", "-1", "1.5", "1e3", "1e999", "-0", "'str'", '"q\\"x"', "'\\u00e9'", "'\\x'",
    "len", "contains", "startsWith", "endsWith", "toJSON", "fromJSON", "__import__", "lambda", "os",
    *NAMES, *FIELDS, " ", "\n", "\t", "\x00", "\u202e", "é", "🎉",
]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS + NAMES), st.text(max_size=6)), children, max_size=4),
    ),
    max_leaves=12,
)
scopes = st.dictionaries(st.sampled_from(NAMES), json_values, max_size=6)


def _literal() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["true", "false", "null", "0", "-2", "1.5", "1e3", "''", "'x'", '"a b"', "'\\n'", "[]"]),
        st.integers(-10**6, 10**6).map(str),
        st.text(max_size=8).map(lambda t: json.dumps(t)),
    )


def _reference() -> st.SearchStrategy[str]:
    segment = st.one_of(
        st.sampled_from(FIELDS).map(lambda f: "." + f),
        st.integers(-3, 3).map(lambda i: f"[{i}]"),
        st.sampled_from(FIELDS).map(lambda f: f'["{f}"]'),
    )
    return st.builds(lambda root, segs: root + "".join(segs), st.sampled_from(NAMES), st.lists(segment, max_size=3))


expressions_grammar = st.recursive(
    st.one_of(_literal(), _reference()),
    lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"{a} {op} {b}", inner,
                  st.sampled_from(["==", "===", "!=", "!==", "<", "<=", ">", ">=", "&&", "||", "and", "or",
                                   "in", "not in"]),
                  inner),
        st.builds(lambda op, a: f"{op}{a}", st.sampled_from(["!", "not ", "!!"]), inner),
        inner.map(lambda a: f"({a})"),
        st.builds(lambda items: "[" + ", ".join(items) + "]", st.lists(inner, max_size=3)),
        st.builds(lambda f, args: f"{f}({', '.join(args)})",
                  st.sampled_from(["len", "contains", "startsWith", "endsWith", "toJSON", "fromJSON", "nope"]),
                  st.lists(inner, max_size=3)),
        st.builds(lambda a, i: f"{a}[{i}]", inner, inner),
    ),
    max_leaves=10,
)
token_soup = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join) | \
    st.lists(st.sampled_from(TOKENS), max_size=30).map(" ".join)


def _is_plain_value(value: Any, depth: int = 0) -> bool:
    """What an expression may give back: JSON-like data (floats included)."""
    if depth > 200:
        return False
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list):
        return all(_is_plain_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain_value(v, depth + 1) for k, v in value.items())
    return False


# -- (a) the expression parser ---------------------------------------------------------------------
def _parse_or_error(source: str):
    try:
        return parse(source)
    except ExpressionError as err:
        assert err.message, "an ExpressionError without a message"
        return None


@examples(300)
@given(st.text(max_size=200))
def test_parse_arbitrary_text(source):
    _parse_or_error(source)


@examples(300)
@given(token_soup)
def test_parse_token_soup(source):
    _parse_or_error(source)


@examples(60)
@given(st.sampled_from(["(", "[", "!", "not ", "a.b.", "'", "len("]), st.integers(1, 5000), st.text(max_size=5))
def test_parse_long_and_deep_input(prefix, count, tail):
    """Repetition up to and beyond the limits (4096 characters, 32 levels) never recurses out."""
    _parse_or_error(prefix * count + tail)


@examples(300)
@given(st.one_of(expressions_grammar, token_soup), scopes)
def test_evaluate_gives_a_value_or_expression_error(source, scope):
    expression = _parse_or_error(source)
    if expression is None:
        return
    for ref in expression.references():
        assert isinstance(ref, tuple) and ref and isinstance(ref[0], str)
    try:
        value = expression.evaluate(scope)
    except ExpressionError as err:
        assert err.message
        return
    assert _is_plain_value(value), f"{source!r} gave {value!r}"


@examples(150)
@given(expressions_grammar)
def test_grammar_expressions_mostly_parse(source):
    """The grammar strategy is worth its name: what it builds parses, bar known refusals."""
    expression = _parse_or_error(source)
    if expression is None:
        return
    assert expression.source == source


# -- (b) templates ----------------------------------------------------------------------------------
template_texts = st.lists(
    st.one_of(
        st.text(max_size=15),
        st.sampled_from(["'", '"', "\\", "$(", ")", "`", "${", "}", "#", "\n", "<<EOF\n", "\nEOF\n", "<<'Q'\n",
                         "printf '%s' ", "echo ", ";", "|", "&&"]),
        st.one_of(expressions_grammar, token_soup, st.just("")).map(lambda e: "{{ " + e + " }}"),
        st.just("{{"), st.just("}}"),
    ),
    max_size=10,
).map("".join)


@examples(300)
@given(template_texts, scopes)
def test_render_shell_gives_a_command_or_expression_error(text, scope):
    try:
        template = parse_template(text)
    except ExpressionError as err:
        assert err.message
        return
    try:
        command, env = template.render_shell(scope)
    except ExpressionError as err:
        assert err.message
        return
    assert isinstance(command, str)
    assert list(env) == [f"WFCTL_T_{n}" for n in range(len(env))]
    for value in env.values():
        assert isinstance(value, str) and "\0" not in value
    # Static text and the literal parts are never changed: rendering without {{ }} is identity.
    if template.is_static:
        assert command == text and env == {}


HOSTILE = "'\"$`;\n*?\\ ()|&<>!#~{}[]=%^-é🎉\t" + "abc"
hostile_values = st.text(alphabet=HOSTILE, max_size=24)

# (template, how the printed text relates to the value)
SHELL_CONTEXTS = [
    ("printf '%s' {{ v }}", lambda v: v),
    ('printf \'%s\' "{{ v }}"', lambda v: v),
    ("printf '%s' '{{ v }}'", lambda v: v),
    ('printf \'%s\' "before {{ v }} after"', lambda v: f"before {v} after"),
    ("printf '%s' 'before {{ v }} after'", lambda v: f"before {v} after"),
    ("printf '%s' x{{ v }}y", lambda v: f"x{v}y"),
    ("value={{ v }}; printf '%s' \"$value\"", lambda v: v),
    ("printf '%s|%s' {{ v }} '{{ v }}'", lambda v: f"{v}|{v}"),
    ("cat <<EOF\n{{ v }}\nEOF", lambda v: v + "\n"),
    ("cat <<EOF\n[{{ v }}] $HOME-free\nEOF", lambda v: f"[{v}] $HOME-free\n".replace("$HOME", os.environ.get("HOME", ""))),
    ('printf \'%s\' "$(printf \'%s\' {{ v }})"', lambda v: v.rstrip("\n")),
    ("# a comment {{ v }}\nprintf '%s' {{ v }}", lambda v: v),
]


@examples(36)
@given(st.sampled_from(range(len(SHELL_CONTEXTS))), hostile_values)
def test_render_shell_prints_exactly_the_value(context, value):
    """Run by /bin/sh, each `{{ v }}` stands for exactly the value: it is never parsed as shell."""
    text, expected = SHELL_CONTEXTS[context]
    command, env = parse_template(text).render_shell({"v": value})
    with tempfile.TemporaryDirectory() as cwd:  # a glob that did expand would show files here
        Path(cwd, "GLOB-HIT").write_text("")
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"), **env},
            cwd=cwd, capture_output=True, timeout=20,
        )
        leftovers = sorted(os.listdir(cwd))
    assert result.returncode == 0, (command, result.stderr)
    assert result.stdout.decode("utf-8") == expected(value), (text, command, value)
    assert leftovers == ["GLOB-HIT"], f"the command created files: {leftovers}"


# -- (c) the loader and the validator ------------------------------------------------------------
def _check_validate(text: str, filename: str) -> None:
    for agents in (None, ["echo", "a"]):
        try:
            doc, lines = validate_text(text, filename, known_agents=agents, known_teams=agents)
        except WorkflowInvalid as err:
            assert err.problems, "WorkflowInvalid without problems"
            for problem in err.problems:
                assert isinstance(problem.message, str) and problem.message.strip(), problem
                assert problem.line is None or (isinstance(problem.line, int) and problem.line >= 0), problem
            assert err.message
        else:
            assert isinstance(doc, dict) and isinstance(lines, dict)


ids = st.one_of(st.sampled_from(["a", "b", "c", "a", "../x", "a/b", ".", "x" * 65, "no"]),
                st.text(max_size=8), st.integers(), st.booleans(), st.none())
state_names = st.one_of(st.sampled_from(["out", "results", "item", "test-results", "a_b", "a-b", "../x"]),
                        st.text(max_size=6), st.integers())
run_texts = st.one_of(st.sampled_from(["true", "echo {{ item }}", "echo {{ out.x }}", "echo '{{ a }}'",
                                       "echo {{", "echo {{ }}", "echo \\{{ x }}", "cat <<'E'\n{{ x }}\nE"]),
                      template_texts, st.integers())
step_extras = st.dictionaries(
    st.sampled_from(["timeout", "errorHandling", "env", "cwd", "agent", "task", "maxConcurrency", "tiemout",
                     "name", "description", "teamId", "output", "input", "then", "items"]),
    json_values, max_size=2,
)


def _steps(children):
    task = st.fixed_dictionaries({"id": ids, "run": run_texts}, optional={"output": state_names, "input": st.one_of(
        state_names, st.lists(state_names, max_size=3)), "timeout": json_scalars})
    agent_task = st.fixed_dictionaries({"id": ids, "agent": st.sampled_from(["echo", "nobody", "a", ""]),
                                        "task": st.text(max_size=10)})
    parallel = st.fixed_dictionaries({"id": ids, "type": st.just("parallel"),
                                      "steps": st.lists(children, max_size=3)},
                                     optional={"maxConcurrency": json_scalars, "output": state_names})
    conditional = st.fixed_dictionaries(
        {"id": ids, "type": st.just("conditional"), "condition": st.one_of(expressions_grammar, token_soup),
         "then": st.one_of(children, st.lists(children, max_size=2))},
        optional={"else": st.one_of(children, st.lists(children, max_size=2))})
    loop = st.fixed_dictionaries(
        {"id": ids, "type": st.just("loop"), "step": children,
         "items": st.one_of(st.lists(json_scalars, max_size=3), state_names, expressions_grammar, st.integers())},
        optional={"output": state_names, "maxConcurrency": json_scalars})
    team = st.fixed_dictionaries({"id": ids, "type": st.just("team"), "teamId": st.sampled_from(["t", "ghost"]),
                                  "task": st.text(max_size=5)})
    odd = st.one_of(json_scalars, st.fixed_dictionaries({"id": ids, "type": st.text(max_size=8)}))
    base = st.one_of(task, agent_task, parallel, conditional, loop, team, odd)
    return st.builds(lambda step, extra: {**step, **extra} if isinstance(step, dict) else step, base, step_extras)


steps_strategy = st.recursive(
    st.fixed_dictionaries({"id": ids, "run": run_texts}),
    _steps,
    max_leaves=8,
)
workflows = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=8), st.integers(), st.none()), "steps": st.lists(steps_strategy, max_size=4)},
    optional={
        "inputs": st.dictionaries(state_names.filter(lambda n: isinstance(n, str)),
                                  st.fixed_dictionaries({}, optional={"type": st.sampled_from(["string", "array", "x"]),
                                                                      "default": json_values,
                                                                      "required": json_scalars})),
        "agents": st.dictionaries(st.sampled_from(["a", "b", "../x"]),
                                  st.fixed_dictionaries({}, optional={"run": run_texts, "python": st.text(max_size=8),
                                                                      "http": st.text(max_size=8)})),
        "teams": st.dictionaries(st.sampled_from(["t", "u"]), st.fixed_dictionaries(
            {"members": st.lists(st.sampled_from(["a", "echo", "ghost"]), max_size=3)},
            optional={"strategy": st.sampled_from(["round-robin", "all", "first-success", "x"])})),
        "errorHandling": st.dictionaries(
            st.sampled_from(["strategy", "maxRetries", "backoff", "delay", "maxDelay", "fallback", "retryOn",
                             "retires"]), json_values, max_size=3),
        "timeout": json_scalars,
        "description": st.text(max_size=10),
        "extra-key": json_values,
    },
)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def _dump(doc: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, ensure_ascii=False)
    return yaml.dump(doc, Dumper=_NoAliasDumper, allow_unicode=True, sort_keys=False)


@examples(250)
@given(workflows, st.sampled_from(["yaml", "json"]))
def test_random_workflows_validate_or_raise_workflow_invalid(doc, fmt):
    try:
        text = _dump(doc, fmt)
    except (ValueError, yaml.YAMLError):  # a document the dumpers themselves cannot write
        assume(False)
    _check_validate(text, f"x.{fmt}")


@examples(150)
@given(st.one_of(workflows, json_values))
def test_validate_mapping_never_raises(doc):
    """The library API on dicts (no file, no lines): a list of problems, never an exception."""
    problems = validate_mapping(doc, known_agents=["echo"], known_teams=[])
    for problem in problems:
        assert problem.message.strip()


def _example_documents() -> list[tuple[str, Any]]:
    found = []
    for path in sorted(EXAMPLES.iterdir()):
        if path.suffix == ".json":
            found.append((path.name, json.loads(path.read_text())))
        elif path.suffix in (".yaml", ".yml"):
            found.append((path.name, yaml.safe_load(path.read_text())))
    return found


EXAMPLE_DOCS = _example_documents()
EXAMPLE_TEXTS = [(p.name, p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.iterdir())
                 if p.suffix in (".json", ".yaml", ".yml")]


def _containers(doc: Any) -> list[Any]:
    """Every dict and list in the document (iteratively)."""
    found, stack = [], [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, (dict, list)):
            found.append(item)
            stack.extend(item.values() if isinstance(item, dict) else item)
    return found


UNICODE_BITS = ["\u202e", "\u200b", "e\u0301", "🎉", "\ufeff", "\x85", "\u2028", "\x7f", "ß", "İ", "\U0010ffff"]


def _mutate(doc: Any, data) -> Any:
    """One random mutation: drop a key, change a type, duplicate a step (and its id),
    inject unicode, or put random JSON in place of a value."""
    containers = _containers(doc)
    target = data.draw(st.sampled_from(containers))
    kind = data.draw(st.sampled_from(["drop", "retype", "duplicate", "unicode", "replace", "rename"]))
    if isinstance(target, dict):
        if not target:
            target["id"] = data.draw(ids)
            return doc
        key = data.draw(st.sampled_from(sorted(target)))
        if kind == "drop":
            del target[key]
        elif kind == "retype":
            value = target[key]
            target[key] = data.draw(st.sampled_from([str(value), [value], {"v": value}, None, 0, True, -1, 1e309]))
        elif kind == "duplicate":
            target[key + "2" if data.draw(st.booleans()) else key] = target[key]
        elif kind == "unicode":
            bit = data.draw(st.sampled_from(UNICODE_BITS))
            value = target[key]
            target[key] = (value + bit) if isinstance(value, str) else bit
        elif kind == "rename":
            target[key + data.draw(st.sampled_from(UNICODE_BITS + ["s", "_", "-"]))] = target.pop(key)
        else:
            target[key] = data.draw(json_values)
    else:
        if not target:
            target.append(data.draw(json_values))
            return doc
        index = data.draw(st.integers(0, len(target) - 1))
        if kind in ("drop",):
            del target[index]
        elif kind == "duplicate":  # a copy of a step: the same id twice
            target.insert(index, json.loads(json.dumps(target[index])))
        elif kind == "unicode":
            item = target[index]
            target[index] = (item + data.draw(st.sampled_from(UNICODE_BITS))) if isinstance(item, str) else item
        else:
            target[index] = data.draw(json_values)
    return doc


@examples(250)
@given(st.sampled_from(range(len(EXAMPLE_DOCS))), st.integers(1, 4), st.sampled_from(["yaml", "json"]), st.data())
def test_mutated_examples_validate_or_raise_workflow_invalid(which, count, fmt, data):
    name, original = EXAMPLE_DOCS[which]
    doc = json.loads(json.dumps(original))
    for _ in range(count):
        doc = _mutate(doc, data)
    try:
        text = _dump(doc, fmt)
    except (ValueError, yaml.YAMLError):
        assume(False)
    _check_validate(text, f"{name}.{fmt}")


@examples(250)
@given(st.sampled_from(range(len(EXAMPLE_TEXTS))), st.data())
def test_mutated_example_text_validates_or_raises_workflow_invalid(which, data):
    """Character-level damage to the example files: insertions, deletions, repeated and
    swapped lines, unicode, tabs, unbalanced brackets."""
    name, text = EXAMPLE_TEXTS[which]
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["insert", "delete", "line-dup", "line-swap", "truncate"]))
        at = data.draw(st.integers(0, len(text)))
        if kind == "insert":
            bit = data.draw(st.one_of(st.sampled_from(["\t", "[", "{", "]", "}", ":", "- ", "&a ", "*a", "!!python/x ",
                                                       "\x00", "\"", "'", "<<: ", "---\n", "? "] + UNICODE_BITS),
                                      st.text(max_size=4)))
            text = text[:at] + bit + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 20)):]
        elif kind == "truncate":
            text = text[:at]
        else:
            lines = text.split("\n")
            i = data.draw(st.integers(0, len(lines) - 1))
            j = data.draw(st.integers(0, len(lines) - 1))
            if kind == "line-dup":
                lines.insert(i, lines[j])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    _check_validate(text, name)


@examples(300)
@given(st.binary(max_size=300) | st.sampled_from([t.encode() for _, t in EXAMPLE_TEXTS]).flatmap(
    lambda b: st.tuples(st.integers(0, len(b)), st.binary(min_size=1, max_size=8)).map(
        lambda cut: b[:cut[0]] + cut[1] + b[cut[0]:])),
    st.sampled_from(["x.yaml", "x.json", "x.txt"]))
def test_raw_bytes_load_or_raise_workflow_invalid(data, filename):
    """Bytes through the loader's own steps (decode, then parse_text) and through a file."""
    try:
        text = loader.decode(data, filename)
        doc, lines = loader.parse_text(text, filename)
    except WorkflowInvalid as err:
        assert err.problems and all(p.message.strip() for p in err.problems)
    else:
        assert isinstance(doc, dict) and isinstance(lines, dict)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        path.write_bytes(data)
        try:
            doc, _ = loader.load_document(path)
        except WorkflowInvalid as err:
            assert err.problems[0].message.strip()
        else:
            assert isinstance(doc, dict)


@examples(200)
@given(st.text(max_size=300), st.sampled_from(["yaml", "json", None]))
def test_parse_text_arbitrary_text(text, fmt):
    try:
        doc, _ = loader.parse_text(text, "x.yaml", fmt)
    except WorkflowInvalid as err:
        assert err.problems[0].message.strip()
    else:
        assert isinstance(doc, dict)


def test_valid_documents_come_back_as_plain_json():
    """Sanity for the properties above: every example validates, and yields plain JSON values."""
    for name, text in EXAMPLE_TEXTS:
        doc, lines = validate_text(text, name)
        assert json.loads(json.dumps(doc, allow_nan=False)) == doc
        assert all(isinstance(v, int) for v in lines.values())
        assert not any(isinstance(v, float) and not math.isfinite(v) for v in _containers(doc))
