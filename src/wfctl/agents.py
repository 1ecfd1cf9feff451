"""Agents: the leaf workers that run one attempt of a task step.

Kinds (design.md §1): command (`run:` string or argv list), python (`module:function`),
http (`http: URL`), and the built-in echo. Each returns an `Outcome` value; a failure
is a value, never an exception that crosses into the engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wfctl.values import NotJSON, bound

# Output kept inline in the execution record; the full text stays in the log file.
INLINE_OUTPUT_LIMIT = 256 * 1024
PIPE_PRELOAD = 32 * 1024  # a context up to this size is written to stdin before the start
KILL_GRACE_SECONDS = 2.0


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
    from wfctl.errors import ExpressionError

    try:
        argv, extra = build_command(agent, ctx)
    except ExpressionError as err:
        return failure("error", f"cannot render the command: {err.message}")
    env = command_environment(agent, ctx, extra)
    if ctx.nice:
        # nice(1) sets the value and then execs the command: it holds from the first
        # instruction, for everything the step starts (setpriority after spawn would race).
        argv = ["nice", "-n", str(ctx.nice), *argv]
    if ctx.cancelled():
        return failure("cancelled", "cancelled before it started.")
    context = json.dumps(ctx.context_document(), ensure_ascii=False, default=str).encode("utf-8")
    cwd = ctx.cwd or agent.get("cwd")
    try:
        ctx.output_path.unlink()
    except FileNotFoundError:
        pass
    try:
        log = _open_log(ctx.log_path)
    except OSError as err:
        return failure("error", f"cannot open the step's log {ctx.log_path}: {err.strerror or err}.")
    try:
        header = f"=== attempt {ctx.attempt} · {_argv_text(argv)}\n"
        log.write(ctx.masker.text(header).encode("utf-8", "replace") if ctx.masker else header.encode("utf-8", "replace"))
        try:
            stdin_read, stdin_write = os.pipe()
        except OSError as err:
            return failure("error", f"cannot start {argv[0]!r}: {err.strerror or err}.")
        # Most contexts fit in the pipe: written before the command starts, so the wait
        # below watches the command's output only. What does not fit is fed as it reads.
        os.set_blocking(stdin_write, False)
        try:
            context = context[os.write(stdin_write, context[:PIPE_PRELOAD]):]
        except BlockingIOError:
            pass
        if not context:
            os.close(stdin_write)
            stdin_write = -1
        try:
            proc = subprocess.Popen(
                argv,
                stdin=stdin_read,
                stdout=subprocess.PIPE,
                # With secrets, stderr passes through us to be masked; else straight to the log.
                stderr=subprocess.PIPE if ctx.masker else log,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own process group: we can stop the whole tree
                close_fds=True,
            )
        except OSError as err:
            os.close(stdin_read)
            if stdin_write >= 0:
                os.close(stdin_write)
            return failure("error", f"cannot start {argv[0]!r}: {err.strerror or err}.")
        os.close(stdin_read)
        ctx.on_process(proc)
        capture = _Capture(log, ctx.masker)
        try:
            ended_by = _communicate(proc, stdin_write, context, ctx, capture)
        finally:
            ctx.on_process(None)
            capture.close()
        code = proc.returncode
        log.write(f"=== exit {code}\n".encode())
    finally:
        log.close()
    text = capture.text()
    if ended_by == "timeout":
        return failure("timeout", f"timed out after {_seconds(ctx.timeout)}.", code)
    if ended_by == "cancelled":
        return failure("cancelled", "cancelled while running.", code)
    if code != 0:
        last = _last_line(text) or _last_log_line(ctx.log_path)
        message = f"exited with code {code}" if code > 0 else f"killed by signal {-code}"
        return failure("failed", message + (f": {last}" if last else "."), code)
    result_text = _read_output_file(ctx.output_path)
    output = parse_result(result_text if result_text is not None else text)
    return Outcome(ok=True, output=output, exit_code=code)


class _Capture:
    """A step's output as it arrives: everything goes to the log (masked when there
    are secrets); the first INLINE_OUTPUT_LIMIT bytes of stdout are kept for the result."""

    def __init__(self, log, masker) -> None:
        self.log = log
        self.kept: list[bytes] = []
        self.kept_size = 0
        self.total = 0
        self.masks = {"out": masker.stream(), "err": masker.stream()} if masker else None

    def add(self, stream: str, data: bytes) -> None:
        if self.masks is not None:
            data = self.masks[stream].feed(data)
        if data:
            self.log.write(data)
        if stream == "out":
            self._keep(data)

    def _keep(self, data: bytes) -> None:
        self.total += len(data)
        room = INLINE_OUTPUT_LIMIT - self.kept_size
        if room > 0 and data:
            self.kept.append(data[:room])
            self.kept_size += min(room, len(data))

    def close(self) -> None:
        if self.masks is not None:
            for stream, masker in self.masks.items():
                rest = masker.flush()
                if rest:
                    self.log.write(rest)
                    if stream == "out":
                        self._keep(rest)

    def text(self) -> str:
        text = b"".join(self.kept).decode("utf-8", "replace")
        if self.total > INLINE_OUTPUT_LIMIT:
            # The whole output is in the log; the record keeps a marked beginning.
            text += f"\n[output truncated: {self.total} bytes in all; see wfctl logs]"
        return text


def _communicate(proc: subprocess.Popen, stdin_fd: int, context: bytes, ctx: AttemptContext, capture: _Capture) -> str:
    """Feed a large context, read stdout (and stderr when masking), watch timeout and cancel.

    Returns how the command ended: exit, timeout or cancelled.
    """
    import select

    deadline = time.monotonic() + ctx.timeout if ctx.timeout else None
    ended_by = "exit"
    streams = {proc.stdout.fileno(): "out"}
    if proc.stderr is not None:
        streams[proc.stderr.fileno()] = "err"
    # poll(2) on one or two descriptors: no epoll object to make and close per step.
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    pending = memoryview(context)
    if stdin_fd >= 0:
        os.set_blocking(stdin_fd, False)
        poller.register(stdin_fd, select.POLLOUT)
    open_streams = len(streams)
    try:
        while open_streams:
            wait = 0.2
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - time.monotonic()))
            for fd, _mask in poller.poll(wait * 1000):
                if fd in streams:
                    data = os.read(fd, 65536)
                    if data:
                        capture.add(streams[fd], data)
                    else:
                        poller.unregister(fd)
                        open_streams -= 1
                else:
                    try:
                        written = os.write(stdin_fd, pending)
                        pending = pending[written:]
                    except (BrokenPipeError, BlockingIOError) as err:
                        if isinstance(err, BrokenPipeError):
                            pending = pending[:0]
                    if not pending:
                        poller.unregister(stdin_fd)
                        os.close(stdin_fd)
                        stdin_fd = -1
            if ctx.cancelled():
                ended_by = "cancelled"
                break
            if deadline is not None and time.monotonic() >= deadline:
                ended_by = "timeout"
                break
            if open_streams and proc.poll() is not None:
                # The command ended but something it started still holds its output
                # open: take what is already buffered, then stop waiting for it.
                for fd, stream in streams.items():
                    for data in _drain(fd):
                        capture.add(stream, data)
                break
    finally:
        if stdin_fd >= 0:
            os.close(stdin_fd)
    if ended_by != "exit":
        terminate_group(proc)
    else:
        proc.wait()
        _kill_leftovers(proc)
    proc.stdout.close()
    if proc.stderr is not None:
        proc.stderr.close()
    return ended_by


def _drain(fd: int) -> list[bytes]:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return chunks


def terminate_group(proc: subprocess.Popen, grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the step's process group, then SIGKILL what is left after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _kill_leftovers(proc)
    proc.wait()


def _kill_leftovers(proc: subprocess.Popen) -> None:
    # Grandchildren left running in the step's group must not outlive the step.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _open_log(path: Path):
    """The step's log, opened for appending (0600, never through a symlink)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        from wfctl.store import open_append

        return open_append(path)  # creates the directory first
    from wfctl.store import AppendFile

    return AppendFile(fd, "ab")  # every write complete or an error: a short write is not a write


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


def _last_log_line(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 4096))
            tail = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        if line.strip() and not line.startswith("==="):
            return line.strip()[:200]
    return ""


def _read_output_file(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            data = handle.read(INLINE_OUTPUT_LIMIT + 1)
    except (FileNotFoundError, IsADirectoryError):
        return None
    try:
        os.unlink(path)
    except OSError:
        pass
    if len(data) > INLINE_OUTPUT_LIMIT:
        return data[:INLINE_OUTPUT_LIMIT].decode("utf-8", "replace") + (
            f"\n[output truncated: more than {INLINE_OUTPUT_LIMIT} bytes were written to $WFCTL_OUTPUT]"
        )
    return data.decode("utf-8", "replace")


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
    with _open_log(ctx.log_path) as log:
        log.write(entry.encode("utf-8", "replace"))


# -- http agents ----------------------------------------------------------------------------
def run_http(agent: dict, ctx: AttemptContext) -> Outcome:
    import urllib.error
    import urllib.request

    body = json.dumps(ctx.context_document(), ensure_ascii=False, default=str).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": "wfctl"}
    headers.update({str(k): str(v) for k, v in (agent.get("headers") or {}).items()})
    request = urllib.request.Request(agent["http"], data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=ctx.timeout or 300) as response:
            text = response.read().decode("utf-8", "replace")
            status = response.status
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:500]
        _log_http(ctx, agent["http"], err.code, detail)
        return failure("failed", f"HTTP {err.code} from {agent['http']}", err.code)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        _log_attempt(ctx, f"POST {agent['http']}", f"cannot reach {agent['http']}: {reason}")
        if isinstance(reason, TimeoutError) or isinstance(err, TimeoutError):
            return failure("timeout", f"no answer from {agent['http']} within {_seconds(ctx.timeout or 300)}.")
        return failure("error", f"cannot reach {agent['http']}: {reason}")
    _log_http(ctx, agent["http"], status, text)
    return Outcome(ok=True, output=parse_result(text), exit_code=None)


def _log_http(ctx: AttemptContext, url: str, status: int, text: str) -> None:
    _log_attempt(ctx, f"POST {url} → {status}", text)
