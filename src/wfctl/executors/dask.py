"""The Dask executor: command and python steps run as tasks on a `distributed` cluster.

`wfctl execute WF --executor dask://HOST:PORT` (or `executor = "dask://..."` in
config.toml) keeps the engine, the journal, the store and the live table on this
machine and sends every attempt of a command or python step to the cluster as one
Dask task. echo and http agents still run here (they cost nothing, or talk to a URL
this machine can reach).

What travels with an attempt is plain data, built here so templates render here: the
argv, the step's own environment (agent `env`, step `env`, the WFCTL_* variables,
secrets; layered over the *worker's* environment, not this machine's), the context
document for stdin, the working directory and the timeout. The worker runs the
command in its own process group and sends back the exit code, stdout, the stderr
text and the `$WFCTL_OUTPUT` file; the log lands in the step's log file here.

Working directory policy: a step runs in the same absolute directory as it would
locally (its `cwd` resolved against the directory `wfctl` was started in). Workers
must see the files steps use, as with any cluster: a step whose `cwd` does not exist
on the worker fails (kind error); a step without `cwd` whose directory does not exist
there runs in the worker's own directory, and its log says so.

Control across the cluster, per attempt, through the scheduler's task metadata (which
the scheduler drops with the task, so nothing is left behind):
- cancel: the client sets `[key, "cancel"]`; the worker polls it and terminates the
  step's process group (SIGTERM, SIGKILL after a grace), then reports back.
- timeout: enforced on the worker, from when the step starts there.
- a runner that dies: the scheduler releases its tasks; the worker sees its task
  cancelled and terminates the step's process group (no orphan keeps running).
- a worker that dies mid-step: the scheduler would run the task again elsewhere; the
  worker records itself in `[key, "worker"]` first, so that second run sees it and
  reports an infrastructure failure (kind `failed`, `infrastructure: true`) instead of
  running the step twice unseen. The engine runs such an attempt again as a new one (on
  a live worker), `defaults.infrastructure_retries` times, apart from the step's own
  retry policy, which only sees the failure once that bound is spent.

A python agent runs in a child process on the worker, which checks its result with
wfctl's own values.py (shipped ahead of the child's script): the same rules and the
same messages as in-process, and only the bounded JSON text of the result travels back.

The code that runs on workers (the "worker side" below) uses only the standard
library and `distributed`, and this module is pickled by value: workers need
`distributed` (a version compatible with this machine's) and the tools and python
modules the steps use, not wfctl itself.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from wfctl import procgroup  # standard library only; shipped to workers by value

TICK = 0.2  # how often the worker checks the step, the client its future
CANCEL_POLL = 0.5  # how often the worker asks the scheduler whether the attempt is cancelled
KILL_GRACE = 2.0  # SIGTERM, then SIGKILL after this long
REAP_WAIT = 5.0  # after SIGKILL, how long the step's exit is waited for at most
REPORT_WAIT = 6.0  # after a cancel, how long the client waits for the worker's report
CONNECT_TIMEOUT = 5.0
REPORT_LIMIT = 32 * 1024 * 1024  # bytes of stdout and of stderr a worker sends back for the log
OUTPUT_FILE_LIMIT = 256 * 1024 + 1  # $WFCTL_OUTPUT is cut there, as locally (INLINE_OUTPUT_LIMIT)
DEFAULT_PORT = 8786  # the Dask scheduler's default port


# -- connecting (this machine) ----------------------------------------------------------------
def parse_address(address: str) -> tuple[str, int]:
    """`dask://HOST:PORT` or `tcp://HOST:PORT` (PORT defaults to 8786) → (host, port)."""
    from wfctl.errors import UsageError

    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.rstrip("/")
    if rest.startswith("["):  # [IPv6]:PORT
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if not host or "/" in host or (port_text and not port_text.isdigit()) or (port_text and not 0 < int(port_text) < 65536):
        raise UsageError(f"executor '{address}' is not a scheduler address: use dask://HOST:PORT.")
    return host, int(port_text) if port_text else DEFAULT_PORT


def connect(address: str) -> "DaskExecutor":
    """A client of the scheduler at `address`; UsageError (one sentence) when unreachable."""
    import socket

    from wfctl.errors import UsageError

    host, port = parse_address(address)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        import cloudpickle
        import distributed
    except ImportError:
        raise UsageError(
            "the dask executor needs the distributed package: pip install 'wfctl[dask]'."
        ) from None
    # A plain TCP connect first: a refused or unknown address fails at once, not after
    # the Dask client's connection retries.
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as err:
        raise UsageError(f"cannot reach the Dask scheduler at {shown}: {_reason(err)}.") from None
    ship_by_value(cloudpickle)
    try:
        client = distributed.Client(f"tcp://{shown}", timeout=CONNECT_TIMEOUT, set_as_default=False)
    except Exception as err:  # OSError, TimeoutError, a comm error: all mean the same here
        raise UsageError(f"cannot reach the Dask scheduler at {shown}: {_reason(err)}.") from None
    return DaskExecutor(client, f"tcp://{shown}")


def ship_by_value(cloudpickle: Any) -> None:
    """Workers get the code of the worker side with each task: they need distributed,
    not wfctl (with an old cloudpickle that cannot do this, workers need wfctl too)."""
    register = getattr(cloudpickle, "register_pickle_by_value", None)
    if register is not None:
        register(sys.modules[__name__])
        register(procgroup)  # the worker side stops process groups with it


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split()).rstrip(".")


class DaskExecutor:
    """An Executor (executors/__init__.py): `run(agent, ctx) -> Outcome`, safe to call
    from many engine threads at once."""

    runs_in_process = False  # python agents run on the workers

    def __init__(self, client: Any, address: str) -> None:
        self.client = client
        self.address = address
        self.token = uuid.uuid4().hex[:8]
        self._numbers = itertools.count(1)

    def close(self) -> None:
        try:
            self.client.close(timeout=CONNECT_TIMEOUT)
        except Exception:  # a scheduler that went away: nothing left to close
            pass

    def run(self, agent: dict, ctx: Any) -> Any:
        from wfctl.agents import describe, run_agent

        kind = describe(agent)
        if kind not in ("command", "python"):
            return run_agent(agent, ctx)  # echo and http run on this machine
        payload = self._payload(agent, kind, ctx)
        if not isinstance(payload, dict):
            return payload  # a template that cannot render: an Outcome already
        key = f"wfctl-{ctx.execution_id}-{ctx.step_key}-{ctx.attempt}-{self.token}{next(self._numbers)}"
        try:
            ctx.output_path.unlink()
        except FileNotFoundError:
            pass
        try:
            future = self.client.submit(remote_attempt, payload, key=key, pure=False, retries=0)
        except Exception as err:  # the client lost the scheduler
            return _infrastructure(None, f"cannot submit the step to the Dask scheduler at {self.address}: {_reason(err)}.")
        try:
            report = self._wait(future, key, ctx)
        finally:
            try:
                future.release()
            except Exception:
                pass
        if not isinstance(report, dict):
            # The cluster failed (or the worker never reported): the log says so too.
            _write_log(ctx, payload, report.worker, None, b"", b"", report.error["message"])
            return report
        return _outcome(report, payload, ctx)

    # -- building what travels -----------------------------------------------------------
    def _payload(self, agent: dict, kind: str, ctx: Any) -> Any:
        from wfctl.agents import _argv_text, build_command, command_environment, failure
        from wfctl.errors import ExpressionError

        if kind == "command":
            try:
                argv, extra = build_command(agent, ctx)
            except ExpressionError as err:
                return failure("error", f"cannot render the command: {err.message}")
            label = _argv_text(argv).rstrip("\n")
        else:
            argv, extra = [], {}
            label = f"python {agent['python']}"
        env = command_environment(agent, ctx, extra)
        explicit = {str(k) for k in (agent.get("env") or {})} | set(ctx.env) | set(extra)
        # Only the step's own environment travels: the worker's PATH, HOME, ... stay.
        own = {
            k: v
            for k, v in env.items()
            if k in explicit
            or os.environ.get(k) != v
            or (k.startswith("WFCTL_") and k not in LOCAL_ONLY_VARIABLES)
        }
        document = ctx.context_document()
        secrets = getattr(ctx, "secrets", None)
        if kind == "python" and secrets:
            document["secrets"] = dict(secrets)  # as a local python agent gets them
        context = json.dumps(document, ensure_ascii=False, default=str).encode("utf-8")
        return {
            "kind": kind,
            "argv": argv,
            "python": agent.get("python"),
            "script": child_script() if kind == "python" else None,
            "label": label,
            "env": own,
            "stdin": context,
            "cwd": ctx.cwd or agent.get("cwd"),
            "base": os.getcwd(),
            "timeout": float(ctx.timeout) if ctx.timeout else None,
            "nice": int(ctx.nice or 0),
            # $WFCTL_OUTPUT comes back this much longer than the cap: it is masked here
            # before it is cut, so a secret across the cut is still masked whole.
            "mask_margin": int(getattr(getattr(ctx, "masker", None), "longest", 0) or 0),
        }

    # -- waiting for the worker ----------------------------------------------------------
    def _wait(self, future: Any, key: str, ctx: Any) -> Any:
        from wfctl.agents import failure

        done = threading.Event()
        future.add_done_callback(lambda _future: done.set())
        give_up = None
        while not done.wait(TICK):
            if give_up is None and ctx.cancelled():
                try:
                    started = self.client.get_metadata([key, "worker"], default=None)
                    if started:
                        self.client.set_metadata([key, "cancel"], True)
                except Exception:
                    started = "?"
                if not started:
                    # Still queued on the cluster: dropping it is enough (a worker that
                    # picks it up right now sees it dropped and stops the step).
                    future.cancel()
                    return failure("cancelled", "cancelled before it started on the cluster.")
                give_up = time.monotonic() + REPORT_WAIT
            elif give_up is not None and time.monotonic() >= give_up:
                # Not started yet, or the worker is not answering: dropping the task makes
                # the worker (when it runs it) terminate the step's process group.
                future.cancel()
                return failure("cancelled", "cancelled while running (the worker did not report back).")
        status = future.status
        if status == "finished":
            try:
                return future.result(timeout=30)
            except Exception as err:  # the worker holding the report died before it came back
                return _infrastructure(None, f"the report of the step was lost on the cluster: {_reason(err)} (infrastructure error).")
        if status == "error":
            try:
                error = future.exception(timeout=30)
            except Exception as err:
                error = err
            return _task_error(error)
        # cancelled or lost: the scheduler dropped the task (it restarted, or this client
        # lost its connection to it).
        return _infrastructure(None, f"the Dask scheduler at {self.address} dropped the step (infrastructure error).")


# Variables of this machine's environment that describe this machine's wfctl, not a step.
LOCAL_ONLY_VARIABLES = frozenset({"WFCTL_HOME", "WFCTL_CONFIG", "WFCTL_DEBUG"})


def _infrastructure(worker: str | None, message: str) -> Any:
    """A failure of the cluster, not of the step: kind `failed`, so the policy retries it."""
    from wfctl.agents import failure

    outcome = failure("failed", message)
    outcome.error["infrastructure"] = True
    if worker:
        outcome.error["worker"] = worker
        outcome.worker = worker
    return outcome


def _task_error(error: BaseException | None) -> Any:
    from wfctl.agents import failure

    name = type(error).__name__
    if name == "KilledWorker":
        last = getattr(error, "last_worker", None)
        worker = getattr(last, "address", None) or (str(last) if last else None)
        return _infrastructure(worker, f"worker {worker or '?'} died while running the step (infrastructure error).")
    if name in ("CommClosedError", "FutureCancelledError", "CancelledError", "TimeoutError", "OSError"):
        return _infrastructure(None, f"the cluster failed while running the step: {name}: {_reason(error)} (infrastructure error).")
    return failure("error", f"the step could not run on the cluster: {name}: {_reason(error) if error else '?'}")


def _outcome(report: dict, payload: dict, ctx: Any) -> Any:
    """The worker's report → the attempt's Outcome; its log goes to the step's log file."""
    from wfctl.agents import Outcome, _last_line, _seconds, failure, parse_result

    worker = report.get("worker")
    if report.get("lost"):
        dead = report["lost"]
        outcome = _infrastructure(dead, f"worker {dead} died while running the step (infrastructure error).")
        _write_log(ctx, payload, dead, None, b"", b"", outcome.error["message"])
        return outcome
    if report.get("error"):
        problem = report["error"]
        _write_log(ctx, payload, worker, report.get("note"), b"", b"", problem["message"])
        outcome = failure(problem["kind"], problem["message"])
        outcome.worker = worker
        return outcome
    code = report.get("exit_code")
    ended_by = report.get("ended_by", "exit")
    stdout: bytes = report.get("stdout") or b""
    log: bytes = report.get("log") or b""
    masker = getattr(ctx, "masker", None)
    text = _inline(masker.data(stdout) if masker else stdout, report.get("stdout_size", len(stdout)))
    log_text = log.decode("utf-8", "replace")
    result = _python_report(report.get("python_json"))
    if payload["kind"] == "python":
        outcome = _python_outcome(payload, ctx, code, ended_by, result, log_text)
        if not outcome.ok or log or ctx.attempt > 1:
            # As locally: a first-time success that printed nothing writes no log file.
            last = "completed" if outcome.ok else outcome.error["message"]
            _write_log(ctx, payload, worker, report.get("note"), log, b"", last)
        outcome.worker = worker
        return outcome
    _write_log(ctx, payload, worker, report.get("note"), log, stdout, f"=== exit {code}")
    if ended_by == "timeout":
        outcome = failure("timeout", f"timed out after {_seconds(payload['timeout'])}.", code)
    elif ended_by in ("cancelled", "abandoned"):
        outcome = failure("cancelled", "cancelled while running.", code)
    elif code != 0:
        # As locally: the last line of stderr (the worker's log) says why, else stdout's.
        last = _last_meaningful(log_text) or _last_line(stdout[-4096:].decode("utf-8", "replace"))
        message = f"exited with code {code}" if code is not None and code > 0 else f"killed by signal {-(code or 0)}"
        outcome = failure("failed", message + (f": {last}" if last else "."), code)
    else:
        output_file = report.get("output_file")
        if isinstance(output_file, str):  # the worker could not read it (a FIFO, a device)
            outcome = failure("error", output_file, code)
            outcome.worker = worker
            return outcome
        chosen = _output_file_text(output_file, masker) if output_file is not None else text
        outcome = Outcome(ok=True, output=parse_result(chosen), exit_code=code)
    outcome.worker = worker
    return outcome


def _python_outcome(payload: dict, ctx: Any, code: Any, ended_by: str, result: Any, log_text: str) -> Any:
    from wfctl.agents import Outcome, _seconds, failure

    if ended_by == "timeout":
        return failure("timeout", f"timed out after {_seconds(payload['timeout'])}.")
    if ended_by in ("cancelled", "abandoned"):
        return failure("cancelled", "cancelled while running.")
    if isinstance(result, dict):
        if result.get("stage") == "done":
            return Outcome(ok=True, output=result.get("output"))
        if result.get("stage") == "load":
            return failure("error", result.get("message") or "cannot load the python agent.")
        return failure("failed", result.get("message") or "the python agent failed.")
    last = _last_meaningful(log_text)
    message = f"exited with code {code}" if code is not None and code >= 0 else f"killed by signal {-(code or 0)}"
    return failure("failed", f"python {payload['python']} {message}" + (f": {last}" if last else "."))


def _python_report(data: bytes | None) -> dict | None:
    """The child's report ({stage, output | message}), decoded with the bounds of any
    untrusted text; None when it wrote none, or nothing wfctl can read."""
    from wfctl.values import MAX_DEPTH, nests_deeper_than

    if not data or len(data) > REPORT_LIMIT:
        return None
    text = data.decode("utf-8", "replace")
    if nests_deeper_than(text, MAX_DEPTH + 1):  # the report wraps the result: one level more
        return None
    try:
        document = json.loads(text, parse_constant=_refuse)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _refuse(name: str) -> Any:
    raise ValueError(name)


def _inline(stdout: bytes, total: int) -> str:
    """stdout as kept in the record: its beginning, marked when cut (as run_command does)."""
    from wfctl.agents import INLINE_OUTPUT_LIMIT

    text = stdout[:INLINE_OUTPUT_LIMIT].decode("utf-8", "replace")
    if total > INLINE_OUTPUT_LIMIT:
        text += f"\n[output truncated: {total} bytes in all; see wfctl logs]"
    return text


def _output_file_text(data: bytes, masker: Any = None) -> str:
    """The beginning of $WFCTL_OUTPUT as the worker sent it: masked, then cut (a stream
    masker keeps back what could be the start of a secret the worker's copy cut off)."""
    from wfctl.agents import INLINE_OUTPUT_LIMIT, OUTPUT_FILE_MARKER

    if masker:
        stream = masker.stream()
        whole = len(data) <= INLINE_OUTPUT_LIMIT
        data = stream.feed(data) + (stream.flush() if whole else b"")
    if len(data) > INLINE_OUTPUT_LIMIT:
        return data[:INLINE_OUTPUT_LIMIT].decode("utf-8", "replace") + OUTPUT_FILE_MARKER
    return data.decode("utf-8", "replace")


def _last_meaningful(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip() and not line.startswith("==="):
            return line.strip()[:200]
    return ""


def _write_log(ctx: Any, payload: dict, worker: str | None, note: str | None, log: bytes, stdout: bytes, last: str) -> None:
    from wfctl.agents import StepStorageError, _open_log
    from wfctl.stepfiles import NotRegularFile

    where = f"on worker {worker}" if worker else "on the cluster (no worker reported)"
    parts = [f"=== attempt {ctx.attempt} · {payload['label']}\n=== {where}\n".encode("utf-8", "replace")]
    if note:
        parts.append(f"=== {note}\n".encode("utf-8", "replace"))
    if log:
        parts.append(log if log.endswith(b"\n") else log + b"\n")
    if stdout:
        parts.append(b"--- stdout ---\n" + stdout + (b"" if stdout.endswith(b"\n") else b"\n"))
    parts.append(last.encode("utf-8", "replace") + b"\n")
    data = b"".join(parts)
    masker = getattr(ctx, "masker", None)
    if masker:
        data = masker.data(data)  # secrets never reach the log file
    try:
        with _open_log(ctx.log_path) as handle:
            handle.write(data)
    except StepStorageError as err:
        getattr(ctx, "storage_failed", lambda message: None)(err.message)  # the disk failed: the run stops
    except NotRegularFile:
        pass  # something a step put at the log's path is not written to


# -- worker side: standard library and distributed only ------------------------------------
# Everything below runs on a worker (this module is pickled by value), so it must not
# use wfctl: a worker may not have it installed.

PYTHON_CHILD = r"""
import importlib, json, os, sys, traceback
target, result_path, base = sys.argv[1], sys.argv[2], sys.argv[3]
for folder in (base, os.getcwd()):
    if folder and os.path.isdir(folder) and folder not in sys.path:
        sys.path.insert(0, folder)
def report(document):
    with open(result_path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(document, ensure_ascii=False, allow_nan=False))
def failure_text(err):
    # As the local python agent says it (agents.exception_text).
    if isinstance(err, SystemExit):
        return "SystemExit: the agent called sys.exit(%s)" % ("" if err.code is None else repr(err.code)[:200])
    if isinstance(err, KeyboardInterrupt):
        return "KeyboardInterrupt: raised by the agent"
    try:
        text = str(err)
    except Exception:
        text = "<its message cannot be shown>"
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > 2000:
        text = text[:2000] + "... (the whole message is in wfctl logs)"
    return "%s: %s" % (type(err).__name__, text)
try:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ValueError("python agent '%s' must look like package.module:function" % target)
    function = importlib.import_module(module_name)
    for part in attribute.split("."):
        function = getattr(function, part)
    if not callable(function):
        raise ValueError("python agent '%s' is not callable" % target)
except BaseException as err:
    report({"stage": "load", "message": "cannot load python agent '%s': %s" % (target, failure_text(err))})
    sys.exit(3)
context = json.loads(sys.stdin.buffer.read() or b"null")
try:
    value = function(context)
except BaseException as err:  # sys.exit() included: the attempt fails, as locally
    traceback.print_exc()
    report({"stage": "call", "message": failure_text(err)})
    sys.exit(1)
try:
    bounded = bound(value)  # values.py, shipped ahead of this script
except NotJSON as problem:
    report({"stage": "result", "message": "python agent '%s' returned a value that is not JSON data: %s." % (target, problem)})
    sys.exit(1)
if bounded.spill is not None:
    sys.stdout.write("--- result (JSON) ---\n" + bounded.spill + "\n")
report({"stage": "done", "output": bounded.value})
"""


def child_script() -> str:
    """What the process that calls a python agent on a worker runs: wfctl's own check of
    results (values.py, standard library only) followed by PYTHON_CHILD."""
    global _CHILD_SCRIPT
    if _CHILD_SCRIPT is None:
        from pathlib import Path

        from wfctl import values

        _CHILD_SCRIPT = Path(values.__file__).read_text(encoding="utf-8") + "\n" + PYTHON_CHILD
    return _CHILD_SCRIPT


_CHILD_SCRIPT: str | None = None


def remote_attempt(payload: dict) -> dict:
    """Run one attempt on this worker; returns a plain report (never raises for the step)."""
    import shutil
    import tempfile

    from distributed import get_client, get_worker

    worker = get_worker()
    key = worker.get_current_task()
    client = get_client()
    address = worker.address
    report: dict[str, Any] = {"worker": address}
    # A task that already started on a worker that then died is not run again silently.
    try:
        earlier = client.get_metadata([key, "worker"], default=None)
        if earlier:
            report["lost"] = earlier
            return report
        client.set_metadata([key, "worker"], address)
    except Exception:  # the scheduler's metadata is a safeguard, not a condition to run
        pass
    base = payload["base"]
    cwd = payload.get("cwd")
    if cwd:
        folder = os.path.join(base, cwd)
        if not os.path.isdir(folder):
            report["error"] = {"kind": "error", "message": f"the working directory {folder} does not exist on worker {address}."}
            return report
    elif os.path.isdir(base):
        folder = base
    else:
        folder = None
        report["note"] = f"{base} does not exist on this worker: ran in {os.getcwd()}"
    scratch = tempfile.mkdtemp(prefix="wfctl-")
    try:
        return _run_here(payload, report, worker, key, client, folder, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_here(payload: dict, report: dict, worker: Any, key: Any, client: Any, folder: str | None, scratch: str) -> dict:
    output_path = os.path.join(scratch, "output")
    result_path = os.path.join(scratch, "result.json")
    env = dict(os.environ)
    env.update(payload["env"])
    env["WFCTL_OUTPUT"] = output_path
    python = payload["kind"] == "python"
    if python:
        argv = [sys.executable, "-c", payload["script"], payload["python"], result_path, payload["base"]]
    else:
        argv = list(payload["argv"])
    if payload.get("nice"):
        argv = ["nice", "-n", str(payload["nice"]), *argv]
    log_path = os.path.join(scratch, "log")
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=log if python else subprocess.PIPE,
                stderr=log,
                env=env,
                cwd=folder,
                start_new_session=True,  # its own process group: the whole tree can be stopped
                close_fds=True,
            )
        except OSError as err:
            report["error"] = {"kind": "error", "message": f"cannot start {argv[0]!r} on worker {report['worker']}: {err.strerror or err}."}
            return report
    chunks: list[bytes] = []
    seen = [0]
    feeder = threading.Thread(target=_feed, args=(proc, payload.get("stdin") or b""), daemon=True)
    feeder.start()
    reader = None
    if proc.stdout is not None:
        reader = threading.Thread(target=_read, args=(proc.stdout.fileno(), chunks, seen), daemon=True)
        reader.start()
    # A blocking wait in its own thread hears the exit at once (Popen.wait(timeout) polls).
    exited = threading.Event()
    waiter = threading.Thread(target=lambda: (proc.wait(), exited.set()), daemon=True)
    waiter.start()
    report["ended_by"] = _supervise(exited, payload.get("timeout"), worker, key, client)
    if report["ended_by"] == "exit":
        procgroup.kill_group(proc)  # leftovers in the step's group do not outlive it
    else:
        procgroup.terminate_group(proc, KILL_GRACE, exited=exited.wait, reap=REAP_WAIT)
    waiter.join(REAP_WAIT)  # a step stuck in the kernel after SIGKILL is not waited for forever
    if reader is not None:
        reader.join(KILL_GRACE)
    feeder.join(KILL_GRACE)
    report["exit_code"] = proc.returncode
    report["stdout_size"] = seen[0]
    report["stdout"] = _bounded(b"".join(chunks), seen[0])
    with open(log_path, "rb") as handle:
        report["log"] = _bounded(handle.read(REPORT_LIMIT + 1), os.path.getsize(log_path))
    report["output_file"] = _read_output_file(output_path, OUTPUT_FILE_LIMIT + 1 + int(payload.get("mask_margin") or 0))
    if python:
        # The text as the child wrote it: decoded (with bounds) on the client, not here.
        try:
            with open(result_path, "rb") as handle:
                report["python_json"] = handle.read(REPORT_LIMIT + 1)
        except OSError:
            report["python_json"] = None
    return report


def _read_output_file(path: str, limit: int) -> Any:
    """$WFCTL_OUTPUT's first `limit` bytes; None when the step wrote none; a sentence when
    it is not a regular file (a FIFO there must not block the worker: O_NONBLOCK, fstat)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"$WFCTL_OUTPUT ({path}) cannot be read: {err.strerror or err}; wfctl reads results only from regular files."
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"$WFCTL_OUTPUT ({path}) is not a regular file; wfctl reads results only from regular files."
        os.set_blocking(fd, True)
        chunks, left = [], limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _bounded(data: bytes, total: int) -> bytes:
    """At most REPORT_LIMIT bytes of a stream travel back, marked when cut."""
    if total <= REPORT_LIMIT:
        return data
    return data[:REPORT_LIMIT] + f"\n[{total - REPORT_LIMIT} more bytes were not sent back by the worker]\n".encode()


def _feed(proc: subprocess.Popen, data: bytes) -> None:
    try:
        if data:
            proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _read(fd: int, chunks: list, seen: list) -> None:
    """Collect stdout (up to REPORT_LIMIT + 1 bytes; the rest is only counted)."""
    kept = 0
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            seen[0] += len(data)
            if kept <= REPORT_LIMIT:
                chunks.append(data)
                kept += len(data)
    except OSError:
        pass


def _supervise(exited: threading.Event, timeout: float | None, worker: Any, key: Any, client: Any) -> str:
    """Wait for the step: "exit", or why it must be stopped (timeout, cancelled, abandoned)."""
    started = time.monotonic()
    deadline = started + timeout if timeout else None
    next_poll = started + CANCEL_POLL
    while True:
        wait = TICK if deadline is None else max(0.0, min(TICK, deadline - time.monotonic()))
        if exited.wait(wait):
            return "exit"
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "timeout"
        if _abandoned(worker, key):
            return "abandoned"  # the client released the task (it was cancelled, or it died)
        if now >= next_poll:
            next_poll = now + CANCEL_POLL
            try:
                if client.get_metadata([key, "cancel"], default=False):
                    return "cancelled"
            except Exception:
                pass


def _abandoned(worker: Any, key: Any) -> bool:
    try:
        task = worker.state.tasks.get(key)
    except Exception:  # another layout of the worker's state: cannot tell, keep going
        return False
    return task is None or task.state in ("cancelled", "released", "forgotten")
