"""The Dask executor on a real `distributed.LocalCluster` (two worker processes).

Every run goes through the installed `wfctl` script with `--executor dask://...`. The
workers are processes of this machine, so steps and test share files through
tmp_path: steps write their pid ($$), their worker's pid ($PPID: the worker process
starts the step's shell) and what they saw, and the test polls those files with
bounds. Nothing waits by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import distributed  # in the test extra (pip install -e '.[test]')
import pytest

from conftest import EXAMPLES, tree_snapshot
from helpers import walk

WAIT = 30.0  # bound of every wait here, in seconds


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes (two threads each) on 127.0.0.1; torn down after the module."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", worker_dashboard_address=None,  # any free port: no clash
    )
    client = distributed.Client(cluster.scheduler_address, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=WAIT)
        port = cluster.scheduler_address.rsplit(":", 1)[1]
        yield SimpleNamespace(address=f"dask://127.0.0.1:{port}", client=client, cluster=cluster)
    finally:
        client.close()
        cluster.close()


def worker_pids(cluster) -> dict[str, int]:
    """Address → pid of each live worker process."""
    return cluster.client.run(os.getpid)


def wait_for(predicate, timeout: float = WAIT, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what or predicate}")
        time.sleep(0.05)


def read_when_written(path: Path, lines: int = 1) -> list[str]:
    """The lines of a file a step writes, once it has at least `lines` complete ones."""

    def ready():
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        found = [line for line in text.splitlines() if line.strip()] if text.endswith("\n") else []
        return found if len(found) >= lines else None

    return wait_for(ready, what=f"{path.name} to be written")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_leftover(pid: int) -> None:
    """Clean up a step process a test left behind (only a shell or sleep of ours)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"sleep" in command or b"sh" in command:
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def record_of(document: dict, key: str) -> dict:
    for record in walk(document["steps"]):
        if record["id"] == key:
            return record
    raise AssertionError(f"no step {key}")


def attempt_worker(attempt: dict) -> str | None:
    """The worker of an attempt: recorded on it, or (for a failed attempt that was
    retried) in its error."""
    return attempt.get("worker") or (attempt.get("error") or {}).get("worker")


def spawn(*args) -> subprocess.Popen:
    """A foreground `wfctl` run, started in the background of the test."""
    return subprocess.Popen(
        ["wfctl", *map(str, args)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(proc: subprocess.Popen, timeout: float = WAIT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"wfctl did not finish within {timeout:g}s\n{out}\n{err}")
    return proc.returncode, out, err


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def q(path: Path) -> str:
    return '"' + str(path) + '"'


SEED_INPUT = {"productName": "CloudSync Pro", "targetMarket": "SMB businesses", "budget": 100000}


# -- runs that complete -----------------------------------------------------------------------
def test_the_seed_example_runs_on_the_cluster(cluster, wfctl, wfctl_json):
    document = wfctl_json(
        "execute", EXAMPLES / "saas-launch.json", "--input", json.dumps(SEED_INPUT), "--executor", cluster.address
    )
    assert document["status"] == "completed"
    workers = set(worker_pids(cluster))
    tasks = [record for record in walk(document["steps"]) if record.get("attempts")]
    assert {record["id"] for record in tasks} == {
        "market-research", "product-strategy", "backend-dev", "frontend-dev", "testing", "deploy"}
    for record in tasks:
        assert [attempt["status"] for attempt in record["attempts"]] == ["completed"]
        assert record["attempts"][0]["worker"] in workers, record
    # The outputs are those of a local run: templates rendered here, commands ran there.
    assert record_of(document, "market-research")["output"]["research-data"]["product"] == "CloudSync Pro"
    deploy = record_of(document, "deploy")["output"]["deployment-url"]
    assert deploy["url"] == "https://cloudsync-pro.example.com"
    assert record_of(document, "backend-dev")["output"]["backend-code"]["build"] == document["executionId"]

    # The trace's stages carry the workers too, and the step's log names its worker.
    trace = wfctl_json("trace", document["workflowId"], document["executionId"])
    stages = {stage["node_name"]: stage for stage in trace["response"]["stages"]}
    assert stages["deploy"]["attempts"][0]["worker"] == record_of(document, "deploy")["attempts"][0]["worker"]
    assert all(stages[record["id"]]["attempts"][0]["worker"] in workers for record in tasks)
    log = wfctl("logs", document["executionId"], "deploy").stdout
    assert f"on worker {stages['deploy']['attempts'][0]['worker']}" in log
    assert "cloudsync-pro.example.com" in log


def test_a_200_item_loop_fans_out_over_both_workers(cluster, wfctl, wfctl_json, workflow_file):
    wfctl("config", "set", "executor", cluster.address)  # config.toml's executor, no flag
    path = workflow_file("""\
        name: fan-out
        steps:
          - id: each
            type: loop
            items: 200
            maxConcurrency: 8
            step:
              id: square
              run: echo $((WFCTL_INDEX * WFCTL_INDEX))
            output: squares
    """)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed"
    loop = record_of(document, "each")
    assert loop["output"] == {"squares": [i * i for i in range(200)]}
    iterations = loop["steps"]
    assert len(iterations) == 200
    used = {iteration["attempts"][0]["worker"] for iteration in iterations}
    assert used == set(worker_pids(cluster)), used  # both workers, and only workers


def test_what_travels_with_a_step(cluster, wfctl_json, workflow_file, tmp_path):
    """Environment, stdin context, working directory, $WFCTL_OUTPUT, and python agents
    imported on the worker from the run's directory."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "helpers.py").write_text(textwrap.dedent("""\
        import os

        def describe(context):
            print("on the worker")  # captured into the step's log
            return {"parent": os.getppid(), "input": context["input"], "cwd": os.getcwd()}
    """))
    (work / "sub").mkdir()
    path = workflow_file("""\
        name: travels
        agents:
          helper: {python: "helpers:describe"}
        steps:
          - id: shell
            env: {GREETING: hello}
            cwd: sub
            run: |
              printf '%s|%s|%s|%s|%s' "$GREETING" "$(pwd)" "$WFCTL_STEP_KEY" "${WFCTL_HOME:-none}" "$(cat)" > "$WFCTL_OUTPUT"
            output: seen
          - id: py
            agent: helper
            input: seen
            output: described
    """)
    document = wfctl_json("execute", path, "--executor", cluster.address, cwd=work)
    assert document["status"] == "completed"
    greeting, cwd, key, home, context = record_of(document, "shell")["output"]["seen"].split("|", 4)
    assert (greeting, cwd, key) == ("hello", str(work / "sub"), "shell")
    assert home == "none"  # this machine's wfctl settings stay here
    assert json.loads(context)["executionId"] == document["executionId"]  # the context on stdin
    described = record_of(document, "py")["output"]["described"]
    assert described["parent"] in worker_pids(cluster).values()  # started by a worker process
    assert described["cwd"] == str(work)
    assert described["input"] == {"seen": record_of(document, "shell")["output"]["seen"]}
    assert record_of(document, "py")["attempts"][0]["worker"] in worker_pids(cluster)


def test_secrets_reach_the_worker_and_are_masked_in_what_comes_back(
    cluster, wfctl, wfctl_json, workflow_file, tmp_path, wfctl_home, monkeypatch
):
    secret = "cluster-s3cr3t-value"
    monkeypatch.setenv("BENCH_TOKEN", secret)
    (tmp_path / "sechelpers.py").write_text(textwrap.dedent("""\
        def show(context):
            print("got", context["secrets"]["TOKEN"])
            return {"length": len(context["secrets"]["TOKEN"])}
    """))
    path = workflow_file("""\
        name: secretive
        secrets:
          TOKEN: {env: BENCH_TOKEN}
        agents:
          reveal: {python: "sechelpers:show"}
        steps:
          - id: shell
            run: echo "token=$TOKEN"; echo "stderr $TOKEN" >&2
          - id: py
            agent: reveal
    """)
    document = wfctl_json("execute", path, "--executor", cluster.address, cwd=tmp_path)
    assert document["status"] == "completed"
    assert record_of(document, "shell")["output"] == "token=***"
    assert record_of(document, "py")["output"] == {"length": len(secret)}
    logs = wfctl("logs", document["executionId"]).stdout
    assert "token=***" in logs and "stderr ***" in logs and "got ***" in logs
    assert secret not in logs
    assert not any(secret.encode() in data for data in tree_snapshot(wfctl_home).values())


# -- stopping steps on the cluster -------------------------------------------------------------
def test_cancel_kills_the_step_process_group_on_the_worker(cluster, wfctl, wfctl_json, workflow_file, tmp_path):
    path = workflow_file(f"""\
        name: long
        steps:
          - id: long
            run: |
              sleep 60 & echo $! > {q(tmp_path / 'child')}
              echo "$WFCTL_EXECUTION_ID $$ $PPID" > {q(tmp_path / 'started')}
              wait
    """)
    runner = spawn("execute", path, "--executor", cluster.address, "-q")
    execution_id, shell, worker = read_when_written(tmp_path / "started")[0].split()
    shell, worker, child = int(shell), int(worker), int(read_when_written(tmp_path / "child")[0])
    try:
        pids = worker_pids(cluster)
        assert worker in pids.values()  # the step really runs in a worker process
        assert alive(shell) and alive(child)
        wfctl("cancel", execution_id)
        wait_for(lambda: not alive(shell) and not alive(child), timeout=15, what="the step's processes to end")
        code, _out, err = finish(runner)
        assert code == 4, err
    finally:
        kill_leftover(shell)
        kill_leftover(child)
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "cancelled"
    attempt = record_of(document, "long")["attempts"][0]
    assert attempt["status"] == "failed" and attempt["error"]["kind"] == "cancelled"
    address = {pid: address for address, pid in pids.items()}[worker]
    assert attempt["worker"] == address  # the worker that ran it, as recorded


def test_cancel_with_steps_still_queued_on_the_cluster(cluster, wfctl, wfctl_json, workflow_file, tmp_path):
    """Six steps at once on four worker threads: four run, two wait in Dask's queue.
    A cancel stops the four (their process groups die) and drops the two at once."""
    starts = tmp_path / "starts"
    path = workflow_file(f"""\
        name: crowded
        steps:
          - id: crowd
            type: loop
            items: 6
            maxConcurrency: 6
            step:
              id: hold
              run: |
                echo "$WFCTL_EXECUTION_ID $WFCTL_INDEX $$" >> {q(starts)}
                sleep 60 & wait
    """)
    runner = spawn("execute", path, "--executor", cluster.address, "-q")
    lines = [line.split() for line in read_when_written(starts, lines=4)]
    execution_id = lines[0][0]
    assert len(lines) == 4  # four worker threads in all: two steps wait in the queue
    try:
        wfctl("cancel", execution_id)
        code, _out, err = finish(runner)
        assert code == 4, err
        lines = [line.split() for line in starts.read_text().splitlines()]
        shells = [int(line[2]) for line in lines]
        # Stopped on the workers (each step's whole group), not only forgotten.
        wait_for(lambda: not any(alive(pid) for pid in shells), timeout=15, what="the running steps to end")
    finally:
        for line in starts.read_text().splitlines():
            kill_leftover(int(line.split()[2]))
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "cancelled"
    iterations = {record["id"]: record for record in record_of(document, "crowd")["steps"]}
    ran = {int(line[1]) for line in lines}
    assert len(ran) < 6
    for index in range(6):
        message = iterations[f"hold[{index}]"]["attempts"][-1]["error"]["message"]
        if index in ran:
            assert message == "cancelled while running.", (index, message)
        else:
            # Dropped from the queue at once: no wait for a report that cannot come.
            assert message == "cancelled before it started on the cluster.", (index, message)


def test_pause_and_resume_on_the_cluster(cluster, wfctl, wfctl_json, workflow_file, tmp_path):
    """Pausing lets the steps running on workers finish and starts nothing new;
    resume carries on, on the cluster."""
    starts, go = tmp_path / "starts", tmp_path / "go"
    path = workflow_file(f"""\
        name: pausable
        steps:
          - id: each
            type: loop
            items: 6
            maxConcurrency: 2
            step:
              id: part
              run: |
                echo "$WFCTL_EXECUTION_ID $WFCTL_INDEX" >> {q(starts)}
                i=0; while [ ! -e {q(go)} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
                echo "part $WFCTL_INDEX"
    """)
    runner = spawn("execute", path, "--executor", cluster.address, "-q")
    execution_id = read_when_written(starts, lines=2)[0].split()[0]
    pauser = spawn("pause", execution_id)
    wait_for(lambda: (Path(os.environ["WFCTL_HOME"]) / "executions" / execution_id / "pause.json").exists(),
             what="the pause request")
    go.touch()  # the two running steps finish; nothing new starts
    code, _out, err = finish(pauser)
    assert code == 0, err
    assert wfctl_json("execution", execution_id)["status"] == "paused"
    assert len(starts.read_text().splitlines()) == 2
    wfctl("resume", execution_id)
    code, _out, err = finish(runner)
    assert code == 0, err
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    iterations = record_of(document, "each")["steps"]
    assert {record["id"]: record["output"] for record in iterations} == {f"part[{i}]": f"part {i}" for i in range(6)}
    assert record_of(document, "each")["output"] == [f"part {i}" for i in range(6)]
    assert all(record["attempts"][0]["worker"] in worker_pids(cluster) for record in iterations)


def test_a_step_timeout_is_enforced_on_the_worker(cluster, wfctl, wfctl_json, workflow_file, tmp_path):
    path = workflow_file(f"""\
        name: slow
        steps:
          - id: slow
            timeout: 1
            run: |
              sleep 30 & echo $! > {q(tmp_path / 'child')}
              echo $$ > {q(tmp_path / 'shell')}
              wait
    """)
    started = time.monotonic()
    result = wfctl("execute", path, "--executor", cluster.address, "--json", code=1)
    assert time.monotonic() - started < 20
    document = json.loads(result.stdout)
    record = record_of(document, "slow")
    assert record["status"] == "failed"
    assert record["error"]["kind"] == "timeout"
    assert record["error"]["message"] == "timed out after 1s."
    assert record["attempts"][0]["worker"] in worker_pids(cluster)
    shell = int(read_when_written(tmp_path / "shell")[0])
    child = int(read_when_written(tmp_path / "child")[0])
    # The whole group was terminated on the worker, not just the future forgotten.
    wait_for(lambda: not alive(shell) and not alive(child), timeout=10, what="the timed-out step's processes to end")


def test_a_worker_killed_mid_step_is_an_infrastructure_failure_retried_elsewhere(
    cluster, wfctl, wfctl_json, workflow_file, tmp_path
):
    attempts = tmp_path / "attempts"
    path = workflow_file(f"""\
        name: fragile
        steps:
          - id: fragile
            errorHandling: {{strategy: retry, maxRetries: 2, delay: 0.2, backoff: fixed}}
            run: |
              if [ "$WFCTL_ATTEMPT" = 1 ]; then sleep 60 & echo $! > {q(tmp_path / 'child')}; fi
              echo "$WFCTL_ATTEMPT $$ $PPID $WFCTL_EXECUTION_ID" >> {q(attempts)}
              if [ "$WFCTL_ATTEMPT" = 1 ]; then wait; fi
              echo "done on attempt $WFCTL_ATTEMPT"
    """)
    runner = spawn("execute", path, "--executor", cluster.address, "-q")
    shell = child = None
    try:
        number, shell, worker, execution_id = read_when_written(attempts)[0].split()
        shell, child = int(shell), int(read_when_written(tmp_path / "child")[0])
        assert number == "1"
        by_pid = {pid: address for address, pid in worker_pids(cluster).items()}
        dead = by_pid[int(worker)]
        os.kill(int(worker), signal.SIGKILL)  # the worker process dies mid-step
        code, _out, err = finish(runner, timeout=45)
        assert code == 0, err
    finally:
        for pid in (shell, child):
            if pid:
                kill_leftover(pid)  # a SIGKILLed worker cannot clean up behind it
    document = wfctl_json("execution", execution_id)
    record = record_of(document, "fragile")
    assert record["status"] == "completed"
    assert record["output"] == "done on attempt 2"
    first, second = record["attempts"]
    assert first["status"] == "failed"
    assert first["error"]["kind"] == "failed" and first["error"]["infrastructure"] is True
    assert f"worker {dead} died" in first["error"]["message"]
    assert attempt_worker(first) == dead
    assert second["status"] == "completed"
    assert second["worker"] != dead and second["worker"] in worker_pids(cluster)
    log = wfctl("logs", execution_id, "fragile").stdout
    assert f"worker {dead} died while running the step" in log and "done on attempt 2" in log
    lines = [line.split() for line in attempts.read_text().splitlines()]
    assert [line[0] for line in lines] == ["1", "2"]  # run once per attempt: not again by Dask
    cluster.client.wait_for_workers(2, timeout=WAIT)  # the nanny brings the worker back


def kill_the_worker_of_attempt(cluster, attempts: Path, number: int) -> tuple[str, list[int]]:
    """Wait for attempt `number` of a step to start on a worker, then SIGKILL that worker
    process mid-step. Returns the dead worker's address and the step's pids to clean up."""
    line = read_when_written(attempts, number)[number - 1].split()
    assert line[0] == str(number), line
    shell, worker = int(line[1]), int(line[2])
    by_pid = {pid: address for address, pid in worker_pids(cluster).items()}
    dead = by_pid[worker]
    os.kill(worker, signal.SIGKILL)
    return dead, [shell]


LOST_ONCE = """\
    name: fragile
    steps:
      - id: fragile
        run: |
          echo "$WFCTL_ATTEMPT $$ $PPID $WFCTL_EXECUTION_ID" >> {attempts}
          if [ "$WFCTL_ATTEMPT" -le {hang_until} ]; then sleep 60; fi
          echo "done on attempt $WFCTL_ATTEMPT"
"""


def test_a_killed_worker_is_run_again_by_default_without_a_retry_policy(cluster, wfctl, wfctl_json, workflow_file, tmp_path):
    attempts = tmp_path / "attempts"
    path = workflow_file(LOST_ONCE.format(attempts=q(attempts), hang_until=1))
    runner = spawn("execute", path, "--executor", cluster.address, "-q")
    leftovers: list[int] = []
    try:
        dead, leftovers = kill_the_worker_of_attempt(cluster, attempts, 1)
        code, _out, err = finish(runner, timeout=45)
        assert code == 0, err  # no errorHandling: infrastructure failures are retried anyway
    finally:
        for pid in leftovers:
            kill_leftover(pid)
    execution_id = attempts.read_text().split()[3]
    record = record_of(wfctl_json("execution", execution_id), "fragile")
    assert record["status"] == "completed" and record["output"] == "done on attempt 2"
    first, second = record["attempts"]
    assert first["status"] == "failed" and first["error"]["infrastructure"] is True
    assert first["retryIn"] == 0 and attempt_worker(first) == dead
    assert second["status"] == "completed" and second["worker"] != dead
    assert [line.split()[0] for line in attempts.read_text().splitlines()] == ["1", "2"]
    cluster.client.wait_for_workers(2, timeout=WAIT)  # the nanny brings the worker back


def test_infrastructure_retries_are_bounded_and_then_the_step_fails_as_before(
    cluster, wfctl, wfctl_json, workflow_file, tmp_path
):
    config = Path(os.environ["WFCTL_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[defaults]\ninfrastructure_retries = 1\n")
    attempts = tmp_path / "attempts"
    path = workflow_file(LOST_ONCE.format(attempts=q(attempts), hang_until=2))
    runner = spawn("execute", path, "--executor", cluster.address, "-q")
    leftovers: list[int] = []
    try:
        first_dead, pids = kill_the_worker_of_attempt(cluster, attempts, 1)
        leftovers += pids
        second_dead, pids = kill_the_worker_of_attempt(cluster, attempts, 2)
        leftovers += pids
        code, _out, err = finish(runner, timeout=60)
    finally:
        for pid in leftovers:
            kill_leftover(pid)
    assert code == 1, err
    execution_id = attempts.read_text().split()[3]
    document = wfctl_json("execution", execution_id)
    record = record_of(document, "fragile")
    assert record["status"] == "failed" and record["error"]["infrastructure"] is True
    assert f"worker {second_dead} died" in record["error"]["message"]
    assert [attempt_worker(attempt) for attempt in record["attempts"]] == [first_dead, second_dead]
    assert [line.split()[0] for line in attempts.read_text().splitlines()] == ["1", "2"]
    cluster.client.wait_for_workers(2, timeout=WAIT)


PY_ON_CLUSTER = """\
    import sys

    def leave(context):
        print("leaving now")
        sys.exit(3)

    def nan(context):
        return {"a": [1, float("nan")]}

    def pair_key(context):
        return {"ok": {(1, 2): "pair"}}

    def deep(context):
        value = 1
        for _ in range(980):
            value = [value]
        return value

    def big(context):
        return {"rows": ["r" * 100] * 5000}
"""


@pytest.mark.parametrize(
    "function, message",
    [
        ("leave", "SystemExit: the agent called sys.exit(3)"),
        ("nan", "returned a value that is not JSON data: $.a[1] is NaN, which is not a JSON number."),
        ("pair_key", "returned a value that is not JSON data: $.ok has the key (1, 2) (a tuple); JSON keys are strings."),
        ("deep", "returned a value that is not JSON data: $"),
    ],
)
def test_a_python_agent_on_the_cluster_fails_as_it_would_locally(cluster, wfctl, wfctl_json, workflow_file, tmp_path, function, message):
    (tmp_path / "wfctl_test_remote.py").write_text(textwrap.dedent(PY_ON_CLUSTER))
    path = workflow_file(f"""\
        name: remote-{function.replace('_', '-')}
        agents:
          py: {{python: "wfctl_test_remote:{function}"}}
        steps:
          - id: call
            agent: py
            task: t
    """)
    result = wfctl("execute", path, "--executor", cluster.address, "--json", code=1, cwd=tmp_path)
    record = record_of(json.loads(result.stdout), "call")
    assert record["status"] == "failed" and message in record["error"]["message"], record["error"]
    assert "leaving now" not in result.stdout + result.stderr
    if function == "leave":
        assert "leaving now" in wfctl("logs", json.loads(result.stdout)["executionId"], "call").stdout


def test_a_large_python_result_on_the_cluster_is_capped_with_the_whole_in_the_log(cluster, wfctl, wfctl_json, workflow_file, tmp_path):
    (tmp_path / "wfctl_test_remote.py").write_text(textwrap.dedent(PY_ON_CLUSTER))
    path = workflow_file("""\
        name: remote-big
        agents:
          py: {python: "wfctl_test_remote:big"}
        steps:
          - id: call
            agent: py
            task: t
    """)
    document = wfctl_json("execute", path, "--executor", cluster.address, cwd=tmp_path)
    full = json.dumps({"rows": ["r" * 100] * 5000}, separators=(",", ":"))
    assert record_of(document, "call")["output"] == full[: 256 * 1024] + f"\n[output truncated: {len(full)} bytes in all; see wfctl logs]"
    assert full in wfctl("logs", document["executionId"], "call").stdout


def test_resume_after_the_local_runner_is_killed(cluster, wfctl, wfctl_json, workflow_file, tmp_path):
    starts = tmp_path / "starts"
    path = workflow_file(f"""\
        name: crashable
        steps:
          - id: one
            run: echo "$WFCTL_EXECUTION_ID" > {q(tmp_path / 'exec')}; echo first
            output: first
          - id: two
            input: first
            run: |
              echo "$WFCTL_ATTEMPT $$" >> {q(starts)}
              if [ "$WFCTL_ATTEMPT" = 1 ]; then sleep 60 & wait; fi
              echo "second after $WFCTL_INPUT"
            output: second
          - id: three
            input: second
            run: echo "$WFCTL_INPUT"
    """)
    runner = spawn("execute", path, "--executor", cluster.address, "-q")
    number, shell = read_when_written(starts)[0].split()
    execution_id = read_when_written(tmp_path / "exec")[0]
    try:
        os.kill(runner.pid, signal.SIGKILL)
        runner.communicate(timeout=WAIT)
        # The scheduler drops the dead client's task; the worker stops the step with it.
        wait_for(lambda: not alive(int(shell)), timeout=15, what="the orphaned step to be stopped by its worker")
    finally:
        kill_leftover(int(shell))
    assert wfctl_json("execution", execution_id)["status"] == "interrupted"

    wfctl("resume", execution_id, "-q")  # the executor is the one the execution was started with
    document = wfctl_json("execution", execution_id)
    assert document["status"] == "completed"
    two = record_of(document, "two")
    assert [attempt["status"] for attempt in two["attempts"]] == ["interrupted", "completed"]
    assert two["attempts"][1]["worker"] in worker_pids(cluster)
    assert record_of(document, "three")["output"] == {"second": 'second after {"first":"first"}'}
    assert [line.split()[0] for line in starts.read_text().splitlines()] == ["1", "2"]
    assert len(record_of(document, "one")["attempts"]) == 1  # completed steps are not run again


# -- a scheduler that is not there --------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_scheduler_is_one_sentence_exit_2_and_nothing_written(wfctl, workflow_file, wfctl_home, tmp_path):
    marker = tmp_path / "ran"
    path = workflow_file(f"""\
        name: never
        steps:
          - id: only
            run: touch {q(marker)}
    """)
    port = free_port()
    before = tree_snapshot(wfctl_home)
    result = wfctl("execute", path, "--executor", f"dask://127.0.0.1:{port}", code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot reach the Dask scheduler at 127.0.0.1:{port}" in lines[0]
    assert lines[0].endswith(".")
    assert tree_snapshot(wfctl_home) == before
    assert not marker.exists()

    result = wfctl("execute", path, "--executor", "dask://127.0.0.1:notaport", code=2)
    assert "dask://HOST:PORT" in result.stderr
    assert tree_snapshot(wfctl_home) == before
