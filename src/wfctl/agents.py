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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

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
    return os.fdopen(fd, "ab", buffering=0)


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
