"""Load, end to end through the installed `wfctl` (reliability.md §4 (c), rows C01, C02, C03, C07).

Sizes are bounded so that the whole file stays around a minute on two cores; the slow tests
are marked `load` (`pytest -m "not load"` leaves them out). Timings are asserted only with
generous bounds: the figures themselves are printed (`pytest -s tests/test_load.py`) for the
README's table and the benchmark, they are not what these tests are about.
"""

from __future__ import annotations

import collections
import json
import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.load

_EXEC_ID = re.compile(r"exec_([0-9a-z]{9})([0-9a-f]{8})")


def cli(*args, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["wfctl", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def shown(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"


def timed(*args, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = cli(*args, **kwargs)
    return result, time.monotonic() - start


def figure(label: str, value: float, unit: str = "s") -> None:
    print(f"\n[load figure] {label}: {value:.2f} {unit}")


def walk(steps):
    for step in steps:
        yield step
        yield from walk(step.get("steps") or [])


# -- C01: 1,000 parallel steps under `ulimit -n 256` --------------------------------------------------
def _parallel_workflow(path: Path, count: int, max_concurrency: int | None, command: str) -> None:
    parallel: dict = {"id": "all", "type": "parallel",
                      "steps": [{"id": f"s{i}", "run": command} for i in range(count)]}
    if max_concurrency is not None:
        parallel["maxConcurrency"] = max_concurrency
    path.write_text(json.dumps({"name": path.stem, "steps": [parallel]}))


def _run_with_fd_limit(path: Path, limit: int = 256) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run(
        ["/bin/sh", "-c", f'ulimit -n {limit} && exec wfctl execute "$1" --quiet --json', "sh", str(path)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    return result, time.monotonic() - start


@pytest.mark.parametrize(
    "max_concurrency, command",
    [(None, "true"), (1000, "sleep 0.2")],
    # With `true` the children end so fast that maxConcurrency 1000 only sometimes has
    # enough of them open at once to run out; `sleep 0.2` makes them overlap every time.
    ids=["true-default-concurrency", "sleep-maxConcurrency-1000"],
)
def test_C01_thousand_parallel_steps_with_256_file_descriptors(max_concurrency, command, tmp_path):
    """All 1,000 children complete and are recorded, with no EMFILE, even when the workflow
    asks for all of them at once: the engine must bound what it starts by what it can open."""
    path = tmp_path / f"parallel-{max_concurrency or 'default'}.json"
    _parallel_workflow(path, 1000, max_concurrency, command)
    result, elapsed = _run_with_fd_limit(path)
    figure(f"C01 1000 parallel `{command}` (maxConcurrency {max_concurrency or 'default'}) under ulimit -n 256",
           elapsed)
    assert "Traceback" not in result.stderr, shown(result)
    assert "Too many open files" not in result.stderr + result.stdout, shown(result)
    document = json.loads(result.stdout)
    children = document["steps"][0]["steps"]
    statuses = collections.Counter(child["status"] for child in children)
    assert statuses == {"completed": 1000}, f"{statuses}; error: {document.get('error')}"
    assert result.returncode == 0, shown(result)
    assert document["status"] == "completed"
    assert document["progress"]["completed"] == document["progress"]["total"]
    # The record on disk says the same.
    stored = json.loads(cli("execution", document["executionId"], "--json").stdout)
    assert collections.Counter(s["status"] for s in walk(stored["steps"])) == {"completed": 1001}


# -- C02: a loop over 10,000 items with an in-process body -------------------------------------------
BODY_MODULE = """\
import os

def run(context):
    # One write per call with O_APPEND: lines from concurrent iterations never mix.
    fd = os.open(os.path.join(os.path.dirname(__file__), "indexes.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{context['index']}\\n".encode())
    finally:
        os.close(fd)
    return context["index"]
"""

LOOP_WORKFLOW = """\
name: big-loop
agents:
  body: {python: "loadbody:run"}
steps:
  - id: each
    type: loop
    items: ITEMS
    maxConcurrency: CONCURRENCY
    step: {id: body, agent: body, task: count}
    output: results
"""
ITEMS = 10_000
CONCURRENCY = 4


def _loop_setup(tmp_path: Path) -> Path:
    (tmp_path / "loadbody.py").write_text(BODY_MODULE)
    path = tmp_path / "loop.yaml"
    path.write_text(LOOP_WORKFLOW.replace("ITEMS", str(ITEMS)).replace("CONCURRENCY", str(CONCURRENCY)))
    return path


def _indexes(tmp_path: Path) -> collections.Counter:
    text = (tmp_path / "indexes.log").read_text()
    return collections.Counter(int(line) for line in text.split())


def test_C02_loop_over_ten_thousand_items(tmp_path):
    path = _loop_setup(tmp_path)
    start = time.monotonic()
    result = cli("execute", path, "--quiet", "--json", cwd=tmp_path, timeout=300)
    figure("C02 loop of 10,000 in-process iterations (execute)", time.monotonic() - start)
    assert result.returncode == 0, shown(result)
    execution_id = json.loads(result.stdout)["executionId"]
    counts = _indexes(tmp_path)
    assert set(counts) == set(range(ITEMS)) and set(counts.values()) == {1}

    status, elapsed = timed("execution", execution_id, "--json", cwd=tmp_path)
    figure("C02 `wfctl execution --json` of the 10,000-iteration execution", elapsed)
    assert status.returncode == 0, shown(status)
    document = json.loads(status.stdout)
    assert document["status"] == "completed"
    loop = document["steps"][0]
    assert loop["output"] == {"results": list(range(ITEMS))}
    assert len(loop["steps"]) == ITEMS
    assert elapsed < 10, f"`wfctl execution --json` took {elapsed:.1f} s"
    human, elapsed = timed("execution", execution_id, cwd=tmp_path)
    figure("C02 `wfctl execution` (table) of the 10,000-iteration execution", elapsed)
    assert human.returncode == 0 and elapsed < 20


def _finished_iterations(journal: Path) -> int:
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return 0
    return len(re.findall(rb'"type":"step\.finished","at":"[^"]*","step":"body\[', data))


def test_C02_kill_halfway_then_resume_runs_each_item_once(tmp_path, wfctl_home):
    """SIGKILL the runner after ~5,000 iterations; `wfctl resume` finishes the rest and runs no
    finished iteration again (only the ones in flight at the kill may run twice)."""
    path = _loop_setup(tmp_path)
    runner = subprocess.Popen(["wfctl", "execute", str(path), "--quiet"], cwd=tmp_path, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        journal = None
        while time.monotonic() < deadline:
            if journal is None:
                found = list((wfctl_home / "executions").glob("exec_*/events.jsonl"))
                journal = found[0] if found else None
            if journal is not None and _finished_iterations(journal) >= ITEMS // 2:
                break
            assert runner.poll() is None, "the run ended before it could be killed: " + runner.stderr.read().decode()
            time.sleep(0.01)
        else:
            pytest.fail("the loop never reached half way")
        runner.send_signal(signal.SIGKILL)
    finally:
        runner.kill()
        runner.wait(timeout=30)
        runner.stdout.close()
        runner.stderr.close()
    execution_id = journal.parent.name
    killed_at = _finished_iterations(journal)
    before = _indexes(tmp_path)
    figure("C02 iterations journaled as finished when killed", killed_at, "items")
    assert 0 < len(before) < ITEMS

    status = json.loads(cli("execution", execution_id, "--json").stdout)
    assert status["status"] == "interrupted"

    start = time.monotonic()
    resumed = cli("resume", execution_id, "--quiet", "--json", cwd=tmp_path, timeout=300)
    figure("C02 resume of the remaining iterations", time.monotonic() - start)
    assert resumed.returncode == 0, shown(resumed)
    document = json.loads(resumed.stdout)
    assert document["status"] == "completed"
    assert document["steps"][0]["output"] == {"results": list(range(ITEMS))}

    counts = _indexes(tmp_path)
    assert set(counts) == set(range(ITEMS)), f"missing: {sorted(set(range(ITEMS)) - set(counts))[:20]}"
    twice = sorted(index for index, n in counts.items() if n > 1)
    figure("C02 iterations run twice (in flight at the kill)", len(twice), "items")
    assert all(counts[i] == 2 for i in twice), {i: counts[i] for i in twice}
    assert len(twice) <= CONCURRENCY, f"{len(twice)} iterations ran again: {twice[:20]}"
    # Only iterations that had not finished before the kill may have run again.
    assert len(before) - killed_at <= CONCURRENCY


# -- C03: 100 executions started at once in one data directory -------------------------------------
# 100 was asked for; 100 × `wfctl execute` (each a Python start, ~0.25 s of CPU) took 64 s
# on the shared 2-core machine, so the test starts 50 at once; WFCTL_LOAD_CONCURRENT=100 runs the full size.
CONCURRENT = int(os.environ.get("WFCTL_LOAD_CONCURRENT", "50"))


def test_C03_hundred_concurrent_executions(tmp_path, wfctl_home):
    path = tmp_path / "one-step.yaml"
    path.write_text("name: one-step\nsteps:\n  - {id: only, run: 'echo \"{\\\"n\\\": 1}\"', output: out}\n")
    start = time.monotonic()
    runners = [
        subprocess.Popen(["wfctl", "execute", str(path), "--quiet", "--json"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        for _ in range(CONCURRENT)
    ]
    outputs = []
    try:
        for runner in runners:
            out, err = runner.communicate(timeout=300)
            outputs.append((runner.returncode, out.decode(), err.decode()))
    finally:
        for runner in runners:
            if runner.poll() is None:
                runner.kill()
                runner.wait()
    figure(f"C03 {CONCURRENT} concurrent `wfctl execute` (wall time for all)", time.monotonic() - start)
    problems = [(code, err) for code, _, err in outputs if code != 0]
    assert not problems, problems[:3]
    ids = {json.loads(out)["executionId"] for _, out, _ in outputs}
    assert len(ids) == CONCURRENT

    # Every record on disk parses, and says completed.
    for execution_id in ids:
        folder = wfctl_home / "executions" / execution_id
        snapshot = json.loads((folder / "execution.json").read_text())
        assert snapshot["executionId"] == execution_id
        events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
        assert events[-1]["type"] == "execution.finished" and events[-1]["status"] == "completed"
        trace = json.loads((wfctl_home / "traces" / snapshot["workflowId"] / f"{execution_id}.json").read_text())
        assert trace["status"] == "executed"
    assert not list(wfctl_home.rglob("*.tmp")), "temp files left behind"

    listing = json.loads(cli("executions", "--limit", CONCURRENT, "--json").stdout)
    assert listing["count"] == CONCURRENT
    assert {e["executionId"] for e in listing["elements"]} == ids
    assert {e["status"] for e in listing["elements"]} == {"completed"}
    workflows = json.loads(cli("list", "--json").stdout)
    assert workflows["count"] == 1, "one workflow file, executed 100 times at once, is one workflow"
    assert workflows["elements"][0]["active"] is True
    human = cli("list")
    assert human.returncode == 0 and "one-step" in human.stdout
    traces = json.loads(cli("traces", "one-step", "--size", "100", "--json").stdout)
    assert traces["count"] == CONCURRENT


# -- C07: 10,000 past executions -------------------------------------------------------------------
PAST = 10_000


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out or "0"


def _clone_executions(home: Path, execution_id: str, workflow_id: str, count: int) -> list[str]:
    """Copies of one finished execution (and its trace) under older ids of the same form.

    Files that hold the execution id get their own copy with the new id; the others are
    hard links (one system call each), which readers cannot tell from copies."""
    match = _EXEC_ID.fullmatch(execution_id)
    assert match, f"{execution_id} does not look like store.new_id('exec')"
    millis = int(match.group(1), 36)
    source = home / "executions" / execution_id
    files = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file() and p.name != "lock"}
    trace = (home / "traces" / workflow_id / f"{execution_id}.json").read_bytes()
    old = execution_id.encode()
    made = []
    for k in range(count):
        new = f"exec_{_base36(millis - 1000 * (k + 1)):0>9}{secrets.token_hex(4)}"
        target = home / "executions" / new
        target.mkdir(mode=0o700)
        (target / "logs").mkdir(mode=0o700)
        encoded = new.encode()
        for relative, data in files.items():
            if old in data:
                (target / relative).write_bytes(data.replace(old, encoded))
            else:  # the journal, the frozen definition and the logs do not name the execution
                os.link(source / relative, target / relative)
        (home / "traces" / workflow_id / f"{new}.json").write_bytes(trace.replace(old, encoded))
        made.append(new)
    return made


def test_C07_ten_thousand_past_executions(tmp_path, wfctl_home):
    path = tmp_path / "history.yaml"
    path.write_text("name: history\nsteps:\n  - {id: only, run: 'echo done'}\n")
    first = json.loads(cli("execute", path, "--quiet", "--json").stdout)
    start = time.monotonic()
    clones = _clone_executions(wfctl_home, first["executionId"], first["workflowId"], PAST - 1)
    figure(f"C07 writing {PAST - 1} copies of an execution", time.monotonic() - start)

    result, elapsed = timed("executions", "--limit", 20, "--json")
    figure(f"C07 `wfctl executions --limit 20 --json` with {PAST} executions", elapsed)
    assert result.returncode == 0, shown(result)
    document = json.loads(result.stdout)
    assert document["count"] == PAST
    assert [e["executionId"] for e in document["elements"]] == [first["executionId"], *clones[:19]]
    assert all(e["status"] == "completed" for e in document["elements"])
    assert elapsed < 10

    result, elapsed = timed("list", "--json")
    figure(f"C07 `wfctl list --json` with {PAST} executions", elapsed)
    assert result.returncode == 0 and json.loads(result.stdout)["count"] == 1
    assert elapsed < 10

    result, elapsed = timed("execution", clones[-1], "--json")
    figure("C07 `wfctl execution --json` of the oldest of them", elapsed)
    assert result.returncode == 0 and json.loads(result.stdout)["executionId"] == clones[-1]
    assert elapsed < 10

    # Paths that read every execution or trace: measured, with a generous bound.
    result, elapsed = timed("executions", "--status", "completed", "--limit", 20, "--json", timeout=300)
    figure(f"C07 `wfctl executions --status completed --limit 20` with {PAST} executions", elapsed)
    assert result.returncode == 0 and json.loads(result.stdout)["count"] == PAST
    assert elapsed < 60

    result, elapsed = timed("traces", "history", "--size", 20, "--json", timeout=300)
    figure(f"C07 `wfctl traces history --size 20` with {PAST} traces", elapsed)
    assert result.returncode == 0 and json.loads(result.stdout)["count"] == PAST
    assert elapsed < 60

    result, elapsed = timed("prune", "--older-than", "1d", "--dry-run", "--json", timeout=300)
    figure(f"C07 `wfctl prune --older-than 1d --dry-run` over {PAST} executions", elapsed)
    assert result.returncode == 0 and json.loads(result.stdout)["count"] == 0
    assert elapsed < 60
