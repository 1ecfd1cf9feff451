"""Helpers for the lifecycle, crash-recovery and concurrency tests.

Everything goes through the installed `wfctl` script in real processes. Nothing waits
by sleeping: `wait_for` polls a condition with a bound, and steps coordinate with the
test through files in a scratch directory (`Lab`): a held step creates
`started-<name>` and then waits (bounded) for `go-<name>`, which the test creates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator

WAIT = 20.0  # the bound of every wait in these tests, in seconds
HOLD_TICKS = 400  # a held step gives up after HOLD_TICKS × 0.05 s (20 s) without its go file


def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, interval: float = 0.05, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what or predicate}")
        time.sleep(interval)


def holds_for(predicate: Callable[[], Any], seconds: float = 1.0, interval: float = 0.1) -> bool:
    """Check that `predicate` stays true for `seconds` (a few looks, for "nothing happens")."""
    deadline = time.monotonic() + seconds
    while True:
        if not predicate():
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(interval)


# -- running wfctl --------------------------------------------------------------------------
def wfctl(*args: Any, code: int | None = 0, timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the installed `wfctl` (environment from conftest: WFCTL_HOME, PATH, NO_COLOR)."""
    argv = ["wfctl", *map(str, args)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout,
        input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
    )
    if code is not None:
        assert result.returncode == code, (
            f"{' '.join(argv)} exited {result.returncode}, expected {code}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
    return result


def wfctl_json(*args: Any, code: int | None = 0, **kwargs: Any) -> Any:
    result = wfctl(*args, "--json", code=code, **kwargs)
    return json.loads(result.stdout)


def spawn(*args: Any, stdout: Any = subprocess.PIPE, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    """Start `wfctl` in the background (a foreground run from wfctl's point of view)."""
    return subprocess.Popen(
        ["wfctl", *map(str, args)], stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True
    )


def status_of(execution_id: str) -> str:
    return wfctl_json("execution", execution_id)["status"]


def wait_status(execution_id: str, *statuses: str, timeout: float = WAIT) -> dict:
    """Poll `wfctl execution EXEC --json` until its status is one of `statuses`."""
    seen: list[str] = []

    def reached() -> dict | None:
        document = wfctl_json("execution", execution_id)
        seen.append(document["status"])
        return document if document["status"] in statuses else None

    try:
        return wait_for(reached, timeout=timeout, interval=0.1, what=f"{execution_id} to be {' or '.join(statuses)}")
    except AssertionError as err:
        raise AssertionError(f"{err}; last status {seen[-1:]}") from None


# -- the data directory ---------------------------------------------------------------------
def home() -> Path:
    return Path(os.environ["WFCTL_HOME"])


def execution_dir(execution_id: str) -> Path:
    return home() / "executions" / execution_id


def journal(execution_id: str) -> Path:
    return execution_dir(execution_id) / "events.jsonl"


def journal_events(execution_id: str) -> list[dict]:
    """Every line of the journal, parsed: a torn or corrupt line fails the test."""
    data = journal(execution_id).read_bytes()
    assert data.endswith(b"\n"), f"the journal of {execution_id} ends with a torn line: {data[-80:]!r}"
    events = []
    for number, line in enumerate(data.split(b"\n")[:-1], start=1):
        try:
            events.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {number} of the journal of {execution_id} does not parse: {line[:200]!r}") from None
    return events


def lock_pid(execution_id: str) -> int:
    return int(json.loads((execution_dir(execution_id) / "lock").read_text())["pid"])


def step_record(document: dict, key: str) -> dict:
    def walk(steps):
        for record in steps:
            yield record
            yield from walk(record.get("steps") or [])

    for record in walk(document["steps"]):
        if record["id"] == key:
            return record
    raise AssertionError(f"no step {key} in {document['executionId']}")


# -- processes ------------------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (orphans may wait to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def ours(pid: int) -> bool:
    """Is `pid` a live process of this test (it has this test's WFCTL_HOME)? Guards every
    kill against a pid that was reused by an unrelated process."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and ("WFCTL_HOME=" + os.environ["WFCTL_HOME"]).encode() in environ


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (a step's), if it is this test's."""
    if not ours(pid):
        return
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def nice_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of the whole line


# -- steps that talk to the test through files ---------------------------------------------
class Lab:
    """A scratch directory shared by a test and the steps of its workflows."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []

    def path(self, name: str) -> Path:
        return self.root / name

    # shell snippets for `run:` ------------------------------------------------------------
    def q(self, name: str) -> str:
        """The quoted path of a lab file, for shell text."""
        return '"' + str(self.root / name) + '"'

    def count(self, name: str) -> str:
        """Append one line to counter file `count-<name>` (how often a step ran)."""
        return f"echo \"$WFCTL_ATTEMPT\" >> {self.q('count-' + name)}"

    def log(self, log: str = "starts.log") -> str:
        """Append the step key to a shared step-start log."""
        return f"echo \"$WFCTL_STEP_KEY\" >> {self.q(log)}"

    def started(self, name: str) -> str:
        return f"touch {self.q('started-' + name)}"

    def hold(self, name: str) -> str:
        """Announce `started-<name>`, then wait (bounded) for `go-<name>`."""
        go = self.q("go-" + name)
        return (
            f"{self.started(name)}; "
            f"i=0; while [ ! -e {go} ] && [ $i -lt {HOLD_TICKS} ]; do sleep 0.05; i=$((i+1)); done"
        )

    def record(self, name: str) -> str:
        """Write this step's pid, execution id, attempt and idempotency key to files."""
        return (
            f"echo $$ > {self.q('pid-' + name)}; "
            f"echo \"$WFCTL_EXECUTION_ID\" > {self.q('exec-' + name)}; "
            f"echo \"$WFCTL_ATTEMPT\" >> {self.q('attempts-' + name)}; "
            f"echo \"$WFCTL_IDEMPOTENCY_KEY\" >> {self.q('keys-' + name)}"
        )

    # the test's side ----------------------------------------------------------------------
    def workflow(self, text: str, name: str = "workflow.yaml") -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return path

    def go(self, name: str) -> None:
        self.path("go-" + name).touch()

    def wait_started(self, name: str, timeout: float = WAIT) -> None:
        wait_for(self.path("started-" + name).exists, timeout=timeout, what=f"step {name} to start")

    def lines(self, name: str) -> list[str]:
        try:
            return self.path(name).read_text().split()
        except FileNotFoundError:
            return []

    def pid(self, name: str) -> int:
        return int(wait_for(lambda: self.path("pid-" + name).exists() and self.path("pid-" + name).read_text().strip(),
                            what=f"the pid file of {name}"))

    def execution_id(self, name: str) -> str:
        """The execution id a step wrote (for runs started in the foreground)."""
        return wait_for(lambda: self.path("exec-" + name).exists() and self.path("exec-" + name).read_text().strip(),
                        what=f"the execution id written by {name}")

    def spawn(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        proc = spawn(*args, **kwargs)
        self.processes.append(proc)
        return proc

    def cleanup(self) -> None:
        """Release every held step and stop every process this test left behind."""
        for name in list(self.root.glob("started-*")):
            self.go(name.name[len("started-"):])
        for path in [*self.root.glob("pid-*"), *self.root.glob("gpid-*")]:
            for word in path.read_text().split():
                if word.isdigit():
                    kill_group(int(word))
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def lab_in(tmp_path: Path) -> Iterator[Lab]:
    """A `Lab` in this test's tmp dir, cleaned up (held steps released) at the end: the
    body of each test module's `lab` fixture."""
    lab = Lab(tmp_path / "lab")
    try:
        yield lab
    finally:
        lab.cleanup()


def detach(workflow: Any, *args: Any) -> str:
    """`wfctl execute WF --detach`: the execution id it printed."""
    result = wfctl("execute", workflow, "--detach", *args)
    execution_id = result.stdout.strip()
    assert execution_id.startswith("exec_"), result.stdout
    return execution_id
