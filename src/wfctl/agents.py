"""Agents: the leaf workers that run one attempt of a task step.

Kinds (design.md §1): command (`run:` string or argv list), python (`module:function`),
http (`http: URL`), and the built-in echo. Each returns an `Outcome` value; a failure
is a value, never an exception that crosses into the engine.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wfctl import faults, processes
from wfctl.httpwatch import Watchdog
from wfctl.processes import KILL_GRACE_SECONDS, Tail, stdin_pipe, supervise
from wfctl.stepfiles import NotRegularFile, describe_error, open_regular, remove, write_all

# Output kept inline in the execution record; the full text stays in the log file.
INLINE_OUTPUT_LIMIT = 256 * 1024


@dataclass
class Outcome:
    """The result of one attempt."""

    ok: bool
    output: Any = None
    exit_code: int | None = None
    error: dict | None = None  # {"kind": failed|timeout|error|cancelled, "message": ...}
    worker: str | None = None


@dataclass
class AttemptContext:
    """Everything one attempt of a step needs, built by the engine."""

    step_key: str
    step_id: str
    task: str | None
    inputs: dict
    execution_id: str
    workflow_id: str
    attempt: int
    scope: Any  # a mapping for templates: state names, input, item, index, steps
    log_dir: Path  # the step's log is <log_dir>/<step_key>.log (made only when used)
    item: Any = None
    index: int | None = None
    in_loop: bool = False
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    nice: int = 0  # added to the step processes' nice value (low-priority runs)
    masker: Any = None  # a masking.Masker when the workflow has secrets
    secrets: Any = None  # NAME → value, handed to python agents as context["secrets"]
    agent_name: str | None = None  # how the step names its agent, for messages
    cancelled: Callable[[], bool] = lambda: False
    on_process: Callable[[subprocess.Popen | None], None] = lambda proc: None
    # Called with one sentence when a file wfctl writes for the step (its log, a value
    # passed through a file) cannot be written: the run stops, as when the journal fails.
    storage_failed: Callable[[str], None] = lambda message: None

    def context_document(self) -> dict:
        document = {
            "task": self.task,
            "input": self.inputs,
            "step": self.step_id,
            "stepKey": self.step_key,
            "executionId": self.execution_id,
            "workflowId": self.workflow_id,
            "attempt": self.attempt,
        }
        if self.in_loop:
            document["item"] = self.item
            document["index"] = self.index
        return document

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.step_key}.log"

    @property
    def output_path(self) -> Path:
        return self.log_dir / f"{self.step_key}.out"

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}:{self.step_key}"


def failure(kind: str, message: str, exit_code: int | None = None) -> Outcome:
    return Outcome(ok=False, exit_code=exit_code, error={"kind": kind, "message": message, "exitCode": exit_code})


def parse_result(text: str) -> Any:
    """Output text becomes JSON when it is JSON, else the stripped text; empty is null."""
    stripped = text.strip()
    if not stripped:
        return None
    if stripped[0] in "{[\"-0123456789tfn":
        try:
            return json.loads(stripped, parse_constant=_no_constant)
        except ValueError:
            pass
    return stripped


def _no_constant(name: str):
    # NaN and Infinity are not JSON: output holding them stays text, so every record
    # wfctl writes is JSON that jq and others can read.
    raise ValueError(name)


def describe(agent: dict) -> str:
    if "run" in agent:
        return "command"
    if "python" in agent:
        return "python"
    if "http" in agent:
        return "http"
    return "echo"


def run_agent(agent: dict, ctx: AttemptContext) -> Outcome:
    """Run one attempt with the agent `agent` (a definition dict; {} is echo)."""
    if "run" in agent:
        return run_command(agent, ctx)
    if "python" in agent:
        return run_python(agent["python"], ctx)
    if "http" in agent:
        return run_http(agent, ctx)
    return Outcome(ok=True, output={"task": ctx.task, "input": ctx.inputs})


# -- command agents -------------------------------------------------------------------------
# A value wfctl passes in the environment (WFCTL_INPUT, WFCTL_ITEM, a template value) that is
# larger than this goes through a file instead: the kernel refuses to start a process with
# one variable over 128 KiB (E2BIG), or with more than ARG_MAX of arguments and environment.
ENV_VALUE_LIMIT = 32 * 1024
ARG_STRING_LIMIT = 128 * 1024  # the kernel's MAX_ARG_STRLEN: one argument or NAME=value
OUTPUT_FILE_MARKER = f"\n[output truncated: more than {INLINE_OUTPUT_LIMIT} bytes were written to $WFCTL_OUTPUT]"


class StepStorageError(OSError):
    """A file wfctl writes for a step (its log, a value passed through a file) could not be
    written: the disk, not the step, failed, so the run stops as when the journal fails."""

    def __init__(self, what: str, path: Path, err: OSError) -> None:
        super().__init__(err.errno, err.strerror)
        self.message = f"cannot write {what} {path}: {describe_error(err)}"


class StepLog:
    """A step's log, opened for appending: 0600, never through a symlink, never a FIFO or a
    device a step put in its place; every write whole or a StepStorageError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            try:
                self.fd = open_regular(path, flags)
            except FileNotFoundError:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.fd = open_regular(path, flags)
        except NotRegularFile:
            raise
        except OSError as err:
            raise StepStorageError("the step's log", path, err) from None

    def write(self, data: bytes) -> None:
        try:
            faults.io_error("enospc-log")
            write_all(self.fd, data)
        except OSError as err:
            raise StepStorageError("the step's log", self.path, err) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "StepLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_log(path: Path) -> StepLog:
    return StepLog(path)


def plain_text(value: Any) -> str:
    """A value as a step sees it in its environment: strings as they are, else compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def build_command(agent: dict, ctx: AttemptContext) -> tuple[list[str], dict[str, str]]:
    """argv and extra environment; templates never paste values into shell text."""
    from wfctl.expressions import parse_template

    run = agent["run"]
    if isinstance(run, list):
        argv = [parse_template(part).render(ctx.scope) for part in run]
        return argv, {}
    template = parse_template(run)
    if template.is_static:
        return ["/bin/sh", "-c", run], {}
    command, values = template.render_shell(ctx.scope)
    return ["/bin/sh", "-c", command], values


def command_environment(agent: dict, ctx: AttemptContext, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in (agent.get("env") or {}).items():
        env[str(key)] = plain_text(value)
    env.update(ctx.env)
    env.update(extra)
    env.update(
        {
            "WFCTL_TASK": ctx.task or "",
            "WFCTL_STEP": ctx.step_id,
            "WFCTL_STEP_KEY": ctx.step_key,
            "WFCTL_EXECUTION_ID": ctx.execution_id,
            "WFCTL_WORKFLOW_ID": ctx.workflow_id,
            "WFCTL_INPUT": json.dumps(ctx.inputs, separators=(",", ":"), ensure_ascii=False),
            "WFCTL_OUTPUT": str(ctx.output_path),
            "WFCTL_ATTEMPT": str(ctx.attempt),
            "WFCTL_IDEMPOTENCY_KEY": ctx.idempotency_key,
        }
    )
    if ctx.in_loop:
        env["WFCTL_ITEM"] = plain_text(ctx.item)
        env["WFCTL_INDEX"] = str(ctx.index)
    return env


def run_command(agent: dict, ctx: AttemptContext) -> Outcome:
    """One attempt of a command step. Its scratch files ($WFCTL_OUTPUT, values passed
    through files) are removed whatever the outcome: they can hold what secrets gave."""
    scratch = Scratch(ctx)
    try:
        return _run_command(agent, ctx, scratch)
    except StepStorageError as err:
        ctx.storage_failed(err.message)
        return failure("error", err.message + ".")
    finally:
        scratch.remove()


def _run_command(agent: dict, ctx: AttemptContext, scratch: "Scratch") -> Outcome:
    from wfctl.errors import ExpressionError

    try:
        argv, extra = build_command(agent, ctx)
    except ExpressionError as err:
        return failure("error", f"cannot render the command: {err.message}")
    env = command_environment(agent, ctx, extra)
    cwd = ctx.cwd or agent.get("cwd")
    problem = _working_directory_problem(cwd)
    if problem:
        return failure("error", problem)
    # nice(1) sets the value and then execs the command: it holds from the first
    # instruction, for everything the step starts (setpriority after spawn would race).
    prefix = ["nice", "-n", str(ctx.nice)] if ctx.nice else []
    shown = _argv_text(prefix + argv)
    if ctx.cancelled():
        return failure("cancelled", "cancelled before it started.")
    scratch.remove()  # an earlier attempt's $WFCTL_OUTPUT
    try:
        argv = prefix + fit_for_exec(argv, env, list(extra), scratch)
    except ValueError as err:
        return failure("error", str(err))
    return _run_logged(ctx, argv, env, cwd, shown)


def _run_logged(ctx: AttemptContext, argv: list[str], env: dict[str, str], cwd: str | None, shown: str) -> Outcome:
    """Start the command and supervise it, its output going to the step's log."""
    context = json.dumps(ctx.context_document(), ensure_ascii=False, default=str).encode("utf-8")
    try:
        log = StepLog(ctx.log_path)
    except NotRegularFile as err:
        return failure("error", f"the step's log {ctx.log_path} is {err.kind}, not a regular file; wfctl does not write to it.")
    with log:
        header = f"=== attempt {ctx.attempt} · {shown}\n"
        log.write(ctx.masker.text(header).encode("utf-8", "replace") if ctx.masker else header.encode("utf-8", "replace"))
        started = _start(argv, env, cwd, context)
        if isinstance(started, Outcome):
            return started
        proc, stdin = started
        capture = _Capture(log, ctx.masker)
        ctx.on_process(proc)
        deadline = time.monotonic() + ctx.timeout if ctx.timeout else None
        try:
            ended_by = supervise(
                proc,
                {proc.stdout.fileno(): capture.reader("out"), proc.stderr.fileno(): capture.reader("err")},
                stdin=stdin,
                deadline=deadline,
                cancelled=ctx.cancelled,
            )
        finally:
            ctx.on_process(None)
            stdin.close()
            proc.stdout.close()
            proc.stderr.close()
        capture.close()
        log.write(f"=== exit {proc.returncode}\n".encode())
    return _command_outcome(ctx, ended_by, proc.returncode, capture)


def _start(argv: list[str], env: dict[str, str], cwd: str | None, context: bytes):
    """The step's process, in its own process group, with the context on stdin; or the
    failed Outcome when it cannot start."""
    try:
        stdin = stdin_pipe(context)
    except OSError as err:
        return failure("error", f"cannot start {argv[0]!r}: {err.strerror or err}.")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdin.read_fd,
            # Both pipes pass through wfctl: to the log (masked when there are secrets),
            # and a tail of each kept for the error line of a failed step.
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group: we can stop the whole tree
            close_fds=True,
        )
    except OSError as err:
        stdin.close()
        if cwd and err.filename == cwd:  # the chdir into cwd failed, not the command
            return failure("error", f"the working directory {os.path.abspath(cwd)} cannot be entered: {describe_error(err)}.")
        return failure("error", f"cannot start {argv[0]!r}: {err.strerror or err}.")
    stdin.close_child_end()
    return proc, stdin


def _command_outcome(ctx: AttemptContext, ended_by: str, code: int | None, capture: "_Capture") -> Outcome:
    if ended_by == "timeout":
        return failure("timeout", f"timed out after {_seconds(ctx.timeout)}.", code)
    if ended_by == "cancelled":
        return failure("cancelled", "cancelled while running.", code)
    if code is None:  # SIGKILLed and still not reaped: stuck in the kernel
        return failure("failed", "did not end after SIGKILL.")
    if code != 0:
        last = capture.error_line()
        message = f"exited with code {code}" if code > 0 else f"killed by signal {-code}"
        return failure("failed", message + (f": {last}" if last else "."), code)
    try:
        result_text = _read_output_file(ctx.output_path, ctx.masker)
    except NotRegularFile as err:
        return failure("error", f"$WFCTL_OUTPUT ({ctx.output_path}) is {err.kind}, not a regular file; wfctl reads results only from regular files.", code)
    except OSError as err:
        return failure("error", f"cannot read $WFCTL_OUTPUT ({ctx.output_path}): {describe_error(err)}.", code)
    output = parse_result(result_text if result_text is not None else capture.text())
    return Outcome(ok=True, output=output, exit_code=code)


def _working_directory_problem(cwd: str | None) -> str | None:
    """Why a step cannot run in `cwd` (a sentence naming it), or None."""
    if not cwd:
        return None
    where = os.path.abspath(cwd)
    try:
        found = os.stat(cwd)
    except FileNotFoundError:
        return f"the working directory {where} does not exist."
    except OSError as err:
        return f"the working directory {where} cannot be used: {describe_error(err)}."
    if not stat.S_ISDIR(found.st_mode):
        return f"the working directory {where} is not a directory."
    return None


class Prefix:
    """The first INLINE_OUTPUT_LIMIT bytes of a stream (masked before they get here, so
    a secret is never cut in half), and how many bytes the stream had."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = INLINE_OUTPUT_LIMIT - self.size
        if room > 0 and data:
            self.parts.append(data[:room])
            self.size += min(room, len(data))

    @property
    def cut(self) -> bool:
        return self.total > INLINE_OUTPUT_LIMIT

    def text(self) -> str:
        return b"".join(self.parts).decode("utf-8", "replace")


class _Capture:
    """A step's output as it arrives: everything goes to the log (masked when there are
    secrets); the first INLINE_OUTPUT_LIMIT bytes of stdout are kept for the result, and
    the last few KiB of stdout and stderr for the error line of a failure."""

    def __init__(self, log: StepLog, masker) -> None:
        self.log = log
        self.kept = Prefix()
        self.tails = {"out": Tail(), "err": Tail()}
        self.masks = {"out": masker.stream(), "err": masker.stream()} if masker else None

    def reader(self, stream: str) -> Callable[[bytes], None]:
        return lambda data: self.add(stream, data)

    def add(self, stream: str, data: bytes) -> None:
        if self.masks is not None:
            data = self.masks[stream].feed(data)
        if data:
            self._take(stream, data)

    def _take(self, stream: str, data: bytes) -> None:
        self.log.write(data)
        self.tails[stream].add(data)
        if stream == "out":
            self.kept.add(data)

    def close(self) -> None:
        if self.masks is not None:
            for stream, masker in self.masks.items():
                rest = masker.flush()
                if rest:
                    self._take(stream, rest)

    def text(self) -> str:
        text = self.kept.text()
        if self.kept.cut:
            # The whole output is in the log; the record keeps a marked beginning.
            text += f"\n[output truncated: {self.kept.total} bytes in all; see wfctl logs]"
        return text

    def error_line(self) -> str:
        """What a failed command said last: stderr's last non-empty line, else stdout's."""
        return self.tails["err"].last_line() or self.tails["out"].last_line()


class Scratch:
    """An attempt's scratch files next to its log: $WFCTL_OUTPUT and the values passed
    through files (0600). `remove` deletes them all, whatever the step made of them."""

    def __init__(self, ctx: AttemptContext) -> None:
        self.ctx = ctx
        self.paths: list[Path] = [ctx.output_path]

    def write(self, name: str, value: str) -> Path:
        path = self.ctx.log_dir / f"{self.ctx.step_key}.{name.lower()}"
        self.paths.append(path)
        remove(path)
        try:
            faults.io_error("enospc-scratch")
            self.ctx.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                write_all(fd, value.encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
        except OSError as err:
            raise StepStorageError(f"the file holding {name} for the step", path, err) from None
        return path

    def remove(self) -> None:
        for path in self.paths:
            remove(path)


def fit_for_exec(argv: list[str], env: dict[str, str], template_names: list[str], scratch: Scratch) -> list[str]:
    """Make the command startable whatever the size of the data wfctl gives it.

    WFCTL_INPUT and WFCTL_ITEM over ENV_VALUE_LIMIT are replaced by WFCTL_INPUT_FILE and
    WFCTL_ITEM_FILE; a template value over it is read by the shell from a file; more go
    to files, largest first, while arguments and environment exceed the system's limit.
    What still cannot fit (a huge `env:` value or argument) is a ValueError sentence.
    """
    movable = [name for name in ("WFCTL_INPUT", "WFCTL_ITEM") if name in env] + template_names
    moved = [name for name in movable if _size(env[name]) > ENV_VALUE_LIMIT]
    rest = sorted((name for name in movable if name not in moved), key=lambda name: -_size(env[name]))
    budget = _exec_budget()
    while rest and _exec_size(argv, env, moved) > budget:
        moved.append(rest.pop(0))
    shell_reads = []
    for name in moved:
        env[f"{name}_FILE"] = str(scratch.write(name, env.pop(name)))
        if name in template_names:
            # Read into a shell variable of the same name (not exported: the commands the
            # step starts must not inherit it); the command text refers to it unchanged.
            shell_reads.append(f'{name}=$(cat "${name}_FILE"; echo .); {name}=${{{name}%.}}; ')
    if shell_reads:
        argv = [*argv[:2], "".join(shell_reads) + argv[2], *argv[3:]]
    _check_exec_size(argv, env, budget)
    return argv


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _exec_budget() -> int:
    try:
        limit = os.sysconf("SC_ARG_MAX")
    except (ValueError, OSError):
        limit = 2 * 1024 * 1024
    return max(limit, 256 * 1024) * 3 // 4  # room for what the step's own commands add


def _exec_size(argv: list[str], env: dict[str, str], leaving: list[str] = ()) -> int:
    """Bytes the kernel counts to start the command: the strings and their pointers."""
    size = sum(_size(part) + 1 + 8 for part in argv)
    size += sum(_size(key) + _size(value) + 2 + 8 for key, value in env.items() if key not in leaving)
    return size


def _check_exec_size(argv: list[str], env: dict[str, str], budget: int) -> None:
    """What no process can be given, as a sentence: a NUL, a string over the kernel's
    limit for one argument or variable, a total over the system's limit."""
    for number, part in enumerate(argv):
        if "\0" in part:
            raise ValueError(f"argument {number} of the command contains a NUL character, which no process can be given.")
    for key, value in env.items():
        if "\0" in value or "\0" in key:
            raise ValueError(f"the environment variable {key!r} contains a NUL character, which no process can be given.")
    for number, part in enumerate(argv):
        if _size(part) >= ARG_STRING_LIMIT:
            raise ValueError(
                f"argument {number} of the command is {_kib(_size(part))}, more than a process can be given in one "
                f"argument ({_kib(ARG_STRING_LIMIT)}): pass large values with `input:` (the step reads them from "
                "$WFCTL_INPUT or $WFCTL_INPUT_FILE)."
            )
    for key, value in env.items():
        if _size(key) + _size(value) + 1 >= ARG_STRING_LIMIT:
            raise ValueError(
                f"the environment variable {key} is {_kib(_size(value))}, more than a process can be given in one "
                f"variable ({_kib(ARG_STRING_LIMIT)}): pass large values with `input:` (the step reads them from "
                "$WFCTL_INPUT or $WFCTL_INPUT_FILE)."
            )
    total = _exec_size(argv, env)
    if total > budget:
        largest = max(env, key=lambda key: _size(env[key]))
        raise ValueError(
            f"the command's arguments and environment come to {_kib(total)}, more than the system allows "
            f"({_kib(budget)}); the largest is the environment variable {largest} ({_kib(_size(env[largest]))})."
        )


def _kib(size: int) -> str:
    return f"{size / 1024:.0f} KiB"


def terminate_group(proc: subprocess.Popen, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the step's process group, then SIGKILL what is left after a grace period."""
    processes.terminate_group(proc, grace)


def _argv_text(argv: list[str]) -> str:
    if argv[:2] == ["/bin/sh", "-c"]:
        return argv[2]
    import shlex

    return shlex.join(argv)


def _seconds(value: float | None) -> str:
    return f"{value:g}s" if value is not None else "?"


def _last_line(text: str) -> str:
    for line in reversed(text.strip().splitlines()):
        if line.strip():
            return line.strip()[:200]
    return ""


def _read_output_file(path: Path, masker: Any = None) -> str | None:
    """The text a step wrote to $WFCTL_OUTPUT (None when it wrote none), masked and then
    cut to INLINE_OUTPUT_LIMIT with a marker. Only a regular file is read (a FIFO, a
    device or a symlink is NotRegularFile), non-blocking and with a bound."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    try:
        kept = Prefix()
        stream = masker.stream() if masker else None
        while not kept.cut:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            kept.add(stream.feed(chunk) if stream else chunk)
        if stream is not None and not kept.cut:
            kept.add(stream.flush())
    finally:
        os.close(fd)
    return kept.text() + (OUTPUT_FILE_MARKER if kept.cut else "")


# -- python agents --------------------------------------------------------------------------
_CALLABLES: dict[str, Callable] = {}


def resolve_python(target: str) -> Callable:
    """`package.module:function` → the function (imported once, then cached)."""
    found = _CALLABLES.get(target)
    if found is not None:
        return found
    import importlib

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"python agent '{target}' must look like package.module:function")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    function = module
    for part in attribute.split("."):
        function = getattr(function, part)
    if not callable(function):
        raise ValueError(f"python agent '{target}' is not callable")
    _CALLABLES[target] = function
    return function


def run_python(target: str, ctx: AttemptContext) -> Outcome:
    try:
        function = resolve_python(target)
    except Exception as err:  # an agent's import can fail in any way; it is reported, not raised
        who = f"'{ctx.agent_name}' ({target})" if ctx.agent_name and ctx.agent_name != target else f"'{target}'"
        return failure("error", f"cannot load python agent {who}: {type(err).__name__}: {err}")
    if ctx.timeout is None:
        return _call_python(target, function, ctx)
    # A thread cannot be killed: on a timeout the attempt fails and the call is abandoned.
    import threading

    box: list[Outcome] = []
    worker = threading.Thread(target=lambda: box.append(_call_python(target, function, ctx)), daemon=True)
    worker.start()
    worker.join(ctx.timeout)
    if not box:
        return failure("timeout", f"timed out after {_seconds(ctx.timeout)}.")
    return box[0]


def _call_python(target: str, function: Callable, ctx: AttemptContext) -> Outcome:
    context = ctx.context_document()
    if ctx.secrets:
        context["secrets"] = dict(ctx.secrets)
    try:
        output = function(context)
        if ctx.attempt > 1:
            # A step that needed retries shows every attempt in its log; a first-time
            # success of an in-process call writes no file (that would dominate its cost).
            _log_attempt(ctx, f"python {target}", "completed")
        return Outcome(ok=True, output=output)
    except Exception as err:  # the agent's own failure is this attempt's failure
        message = f"{type(err).__name__}: {err}"
        _log_attempt(ctx, f"python {target}", message)
        return failure("failed", message)


def _log_attempt(ctx: AttemptContext, what: str, text: str) -> None:
    entry = f"=== attempt {ctx.attempt} · {what}\n{text}\n"
    if ctx.masker:
        entry = ctx.masker.text(entry)
    try:
        with StepLog(ctx.log_path) as log:
            log.write(entry.encode("utf-8", "replace"))
    except StepStorageError as err:
        ctx.storage_failed(err.message)  # the disk failed: the run stops
    except NotRegularFile:
        pass  # something a step put at the log's path is not written to; the record has the attempt


# -- http agents ----------------------------------------------------------------------------
HTTP_TIMEOUT = 300.0  # seconds for one attempt of an http agent whose step has no timeout


def run_http(agent: dict, ctx: AttemptContext) -> Outcome:
    """POST the context to the agent's URL. One deadline covers the whole attempt (connect,
    headers, body): a server that trickles bytes cannot stretch it, as urllib's timeout
    (per socket read) alone would let it. The body streams to the step's log; the record
    keeps its first INLINE_OUTPUT_LIMIT bytes with a marker, as for command output."""
    limit = float(ctx.timeout) if ctx.timeout else HTTP_TIMEOUT
    watchdog = Watchdog(time.monotonic() + limit, ctx.cancelled)
    try:
        return _post(agent, ctx, watchdog, limit)
    except StepStorageError as err:
        ctx.storage_failed(err.message)
        return failure("error", err.message + ".")
    finally:
        watchdog.stop()


def _post(agent: dict, ctx: AttemptContext, watchdog: Watchdog, limit: float) -> Outcome:
    import http.client
    import urllib.error
    import urllib.request

    url = agent["http"]
    body = json.dumps(ctx.context_document(), ensure_ascii=False, default=str).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": "wfctl"}
    headers.update({str(k): str(v) for k, v in (agent.get("headers") or {}).items()})
    opener = watchdog.opener()
    try:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        response = opener.open(request, timeout=limit)
    except urllib.error.HTTPError as err:
        response = err  # an error status: its body goes to the log too
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        if watchdog.fired:
            _log_attempt(ctx, f"POST {url}", f"no complete answer from {url}: {watchdog.fired}")
            return _http_stopped(watchdog, url, limit)
        _log_attempt(ctx, f"POST {url}", f"cannot reach {url}: {reason}")
        if isinstance(reason, TimeoutError) or isinstance(err, TimeoutError):
            return failure("timeout", f"no answer from {url} within {_seconds(limit)}.")
        return failure("error", f"cannot reach {url}: {reason}")
    with response:
        status = getattr(response, "status", None) or getattr(response, "code", None)
        try:
            kept = _stream_body(response, ctx, f"POST {url} → {status}")
        except NotRegularFile as err:
            return failure("error", f"the step's log {ctx.log_path} is {err.kind}, not a regular file; wfctl does not write to it.")
        except StepStorageError:
            raise
        except (http.client.HTTPException, OSError, ValueError) as err:
            if watchdog.fired:
                return _http_stopped(watchdog, url, limit)
            return failure("error", f"the answer from {url} broke off: {getattr(err, 'strerror', None) or err or type(err).__name__}.")
    if watchdog.fired:  # the socket was shut down: what arrived is not the whole body
        return _http_stopped(watchdog, url, limit)
    if isinstance(response, urllib.error.HTTPError):
        return failure("failed", f"HTTP {status} from {url}", status)
    text = kept.text()
    if kept.cut:
        text += f"\n[output truncated: {kept.total} bytes in all; see wfctl logs]"
    return Outcome(ok=True, output=parse_result(text), exit_code=None)


def _http_stopped(watchdog: Watchdog, url: str, limit: float) -> Outcome:
    if watchdog.fired == "cancelled":
        return failure("cancelled", "cancelled while running.")
    return failure("timeout", f"no complete answer from {url} within {_seconds(limit)}.")


def _stream_body(response: Any, ctx: AttemptContext, title: str) -> Prefix:
    """The response body to the step's log (masked) as it arrives; its beginning kept."""
    kept = Prefix()
    mask = ctx.masker.stream() if ctx.masker else None
    read = getattr(response, "read1", None) or response.read
    with StepLog(ctx.log_path) as log:
        header = f"=== attempt {ctx.attempt} · {title}\n"
        log.write((ctx.masker.text(header) if ctx.masker else header).encode("utf-8", "replace"))
        while True:
            chunk = read(65536)
            if not chunk:
                break
            if mask is not None:
                chunk = mask.feed(chunk)
            if chunk:
                log.write(chunk)
                kept.add(chunk)
        rest = mask.flush() if mask is not None else b""
        if rest:
            log.write(rest)
            kept.add(rest)
        log.write(b"\n")
    return kept
