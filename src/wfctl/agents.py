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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wfctl import faults, processes
from wfctl.httpwatch import Watchdog
from wfctl.processes import KILL_GRACE_SECONDS, Tail, stdin_pipe, supervise
from wfctl.stepfiles import NotRegularFile, describe_error, open_regular, remove, write_all
from wfctl.values import NotJSON, bound

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
    settled: bool = False  # the output was already checked and capped (values.bound)


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
        from wfctl.store import step_file

        return step_file(self.log_dir, self.step_key, ".log")

    @property
    def output_path(self) -> Path:
        from wfctl.store import step_file

        return step_file(self.log_dir, self.step_key, ".out")

    @property
    def idempotency_key(self) -> str:
        return f"{self.execution_id}:{self.step_key}"


def failure(kind: str, message: str, exit_code: int | None = None) -> Outcome:
    return Outcome(ok=False, exit_code=exit_code, error={"kind": kind, "message": message, "exitCode": exit_code})


def parse_result(text: str) -> Any:
    """Output text becomes JSON when it is JSON, else the stripped text; empty is null.

    Untrusted text is decoded with bounds (values.decode): JSON nested deeper than
    values.MAX_DEPTH, NaN, Infinity and numbers out of range stay text.
    """
    from wfctl.values import decode

    return decode(text)


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
# An in-process agent's exit, prints and result are its step's business: SystemExit and
# KeyboardInterrupt fail the attempt, what it writes to sys.stdout/sys.stderr goes to the
# step's log (masked), and its result must be JSON data. wfctl's own streams (a --json
# document, the live table, a detached runner's runner.log) never see any of it.
_CALLABLES: dict[str, Callable] = {}
ERROR_TEXT_LIMIT = 2000  # characters of an exception's text kept in the record (the log has it all)


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
    """Call the agent in this process, its output routed to the step's log.

    With a timeout the call runs in a thread of its own: a thread cannot be killed, so
    on a timeout the attempt fails and the call is abandoned (what it writes after
    that is dropped).
    """
    output = _AgentOutput(ctx, f"python {target}")
    if ctx.timeout is None:
        return _call_python(target, ctx, output)
    box: list[Outcome] = []
    worker = threading.Thread(target=lambda: box.append(_call_python(target, ctx, output)), daemon=True)
    worker.start()
    worker.join(ctx.timeout)
    if not box:
        return output.end(failure("timeout", f"timed out after {_seconds(ctx.timeout)}."))
    return box[0]


def _call_python(target: str, ctx: AttemptContext, output: _AgentOutput) -> Outcome:
    previous = route_output(output)
    try:
        try:
            function = resolve_python(target)  # an import prints and fails like a call
        except BaseException as err:  # an agent's import can fail in any way; it is reported, not raised
            if _interrupted_by_user(err, ctx):
                raise
            output.traceback(err)
            return output.end(failure("error", f"cannot load python agent {_python_name(ctx, target)}: {exception_text(err)}"))
        context = ctx.context_document()
        if ctx.secrets:
            context["secrets"] = dict(ctx.secrets)
        try:
            result = function(context)
        except BaseException as err:  # the agent's own failure, sys.exit() included, is this attempt's
            if _interrupted_by_user(err, ctx):
                raise
            output.traceback(err)
            return output.end(failure("failed", exception_text(err)))
    finally:
        _ROUTE.output = previous
    if result is not None:  # None is JSON data: the commonest result goes without a check
        try:
            bounded = bound(result, copy=True)  # the agent may change its objects later
        except NotJSON as problem:
            message = f"python agent {_python_name(ctx, target)} returned a value that is not JSON data: {problem}."
            return output.end(failure("failed", message))
        if bounded.spill is not None:
            output.spill(bounded.spill)
        result = bounded.value
    # A step that needed retries shows every attempt in its log; a first-time success
    # of an in-process call that printed nothing writes no file (that would dominate its cost).
    return output.end(Outcome(ok=True, output=result, settled=True), quiet=ctx.attempt == 1)


def _python_name(ctx: AttemptContext, target: str) -> str:
    if ctx.agent_name and ctx.agent_name != target:
        return f"'{ctx.agent_name}' ({target})"
    return f"'{target}'"


def _interrupted_by_user(err: BaseException, ctx: AttemptContext) -> bool:
    """A second Ctrl-C (the first one cancels the run) raises KeyboardInterrupt wherever
    the main thread is, an agent's call included: that one is the user's, not the agent's."""
    return isinstance(err, KeyboardInterrupt) and ctx.cancelled()


def exception_text(err: BaseException) -> str:
    """One line for the record: what the agent raised (or that it called sys.exit)."""
    if isinstance(err, SystemExit):
        code = err.code
        return f"SystemExit: the agent called sys.exit({'' if code is None else _safe_repr(code)})"
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt: raised by the agent"
    try:
        text = str(err)
    except Exception:  # an exception whose __str__ fails is still named
        text = "<its message cannot be shown>"
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[:ERROR_TEXT_LIMIT] + "… (the whole message is in wfctl logs)"
    return f"{type(err).__name__}: {text}"


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:200]
    except Exception:
        return f"<{type(value).__name__}>"


class _AgentOutput:
    """One attempt's section of the step's log, for an in-process agent: what the agent
    prints (masked, secrets split across writes included), then the attempt's last line.
    The log file is opened at the first write: a quiet success writes nothing."""

    __slots__ = ("_at_line_start", "_closed", "_lock", "_log", "_mask", "_text", "ctx", "what")

    def __init__(self, ctx: AttemptContext, what: str) -> None:
        # Made for every in-process call: only what a quiet call needs is set up here.
        self.ctx = ctx
        self.what = what
        self._text: _TextSink | None = None
        self._log: Any = None  # the log file, with _mask and _at_line_start once opened
        self._closed = False
        # Two threads share this only when a timeout runs the call in a thread of its own.
        self._lock = threading.Lock() if ctx.timeout is not None else _UNSHARED

    @property
    def text(self) -> _TextSink:
        """The agent's sys.stdout and sys.stderr (made at the first write: most agents print nothing)."""
        if self._text is None:
            self._text = _TextSink(self)
        return self._text

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return  # an abandoned call (timed out) writing on: its attempt is over
            self._open()
            if self._mask is not None:
                data = self._mask.feed(data)
            self._put(data)

    def traceback(self, err: BaseException) -> None:
        """The agent's traceback, for the log (the record keeps one line)."""
        import traceback

        try:
            below_us = err.__traceback__.tb_next if err.__traceback__ is not None else None  # from the agent's frame on
            text = "".join(traceback.format_exception(type(err), err, below_us, limit=-30))
        except Exception:  # formatting someone else's exception must not fail the run
            return
        self.write(text.encode("utf-8", "replace"))

    def spill(self, text: str) -> None:
        """The whole of a result the record keeps only the beginning of."""
        self.write(b"--- result (JSON) ---\n" + text.encode("utf-8", "replace") + b"\n")

    def end(self, outcome: Outcome, *, quiet: bool = False) -> Outcome:
        """Close the section with the outcome's line. `quiet`: no section at all when
        the agent wrote nothing. A log that cannot be written fails the attempt."""
        if quiet and self._log is None:  # nothing written, nothing to write: the common case
            self._closed = True
            return outcome
        last = "completed" if outcome.ok else str((outcome.error or {}).get("message"))
        problem = None
        with self._lock:
            if self._closed:
                return outcome
            self._closed = True
            try:
                self._open()
                if self._mask is not None:
                    self._put(self._mask.flush())
                line = last if self._at_line_start else "\n" + last
                self._put(self._masked(line + "\n"))
            except OSError as err:
                problem = f"cannot write the step's log {self.ctx.log_path}: {err.strerror or err}."
            finally:
                if self._log is not None:
                    self._log.close()
        if problem is not None:
            return failure("error", problem)
        return outcome

    def _open(self) -> None:
        if self._log is None:
            self._mask = self.ctx.masker.stream() if self.ctx.masker else None
            self._at_line_start = True
            self._log = _open_log(self.ctx.log_path)
            self._put(self._masked(f"=== attempt {self.ctx.attempt} · {self.what}\n"))

    def _put(self, data: bytes) -> None:
        if data:
            self._log.write(data)
            self._at_line_start = data.endswith(b"\n")

    def _masked(self, text: str) -> bytes:
        if self.ctx.masker:
            text = self.ctx.masker.text(text)
        return text.encode("utf-8", "replace")


class _Unshared:
    """The lock of an _AgentOutput that one thread alone uses: nothing to wait for."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_UNSHARED = _Unshared()


class _TextSink:
    """sys.stdout / sys.stderr as an in-process agent sees them: text to its log."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, output: _AgentOutput) -> None:
        self._output = output
        self.buffer = _BinarySink(output)

    def write(self, text: str) -> int:
        self._output.write(str(text).encode("utf-8", "replace"))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        import io

        raise io.UnsupportedOperation("an in-process agent's output goes to its step's log, not to a file descriptor")


class _BinarySink:
    """sys.stdout.buffer as an in-process agent sees it: bytes to its log."""

    def __init__(self, output: _AgentOutput) -> None:
        self._output = output

    def write(self, data: bytes) -> int:
        self._output.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class _RoutedStream:
    """Stands in for sys.stdout / sys.stderr while in-process agents run.

    A write made by a thread that is running an agent goes to that agent's log; any
    other thread's write goes on to the stream that was there before. Routing by thread
    is needed because contextlib.redirect_stdout swaps the stream for the whole process,
    and parallel steps run python agents in threads at the same time as wfctl writes.
    """

    def __init__(self, real: Any) -> None:
        self._real = real

    def _target(self) -> Any:
        output = getattr(_ROUTE, "output", None)
        return output.text if output is not None else self._real

    def write(self, text: str) -> int:
        target = self._target()
        return target.write(text) if target is not None else len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        target = self._target()
        if target is not None:
            target.flush()

    @property
    def buffer(self) -> Any:
        return self._target().buffer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target(), name)


_ROUTE = threading.local()  # .output: the _AgentOutput this thread's prints go to
_ROUTING_LOCK = threading.Lock()


def route_output(output: _AgentOutput | None) -> _AgentOutput | None:
    """From now on this thread's writes to sys.stdout/sys.stderr go to `output` (None:
    to the real streams again). Returns what was routed before, to put back.

    The routing streams stay in place once installed (putting the real ones back after
    every call would cost more than most in-process steps); they pass every other
    thread's writes through untouched.
    """
    if type(sys.stdout) is not _RoutedStream or type(sys.stderr) is not _RoutedStream:
        with _ROUTING_LOCK:
            for name in ("stdout", "stderr"):
                if type(getattr(sys, name)) is not _RoutedStream:  # also when someone replaced ours
                    setattr(sys, name, _RoutedStream(getattr(sys, name)))
    previous = getattr(_ROUTE, "output", None)
    _ROUTE.output = output
    return previous


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
