"""What stays of past runs, and who may remove it (issue 11, items 8, 12, 13, 26):
`prune` keeps what `resume` could continue and never races a `resume`; a deleted
workflow's executions and traces stay reachable; a trace is found by its id or its
uuid, and any other text is "Trace not found for this workflow." (exit 3); a read-only
data directory can be read, and a list never hides what it counts.

Everything goes through the installed `wfctl`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from lifecycle_helpers import (
    WAIT,
    execution_dir,
    home,
    journal_events,
    kill_group,
    lab_in,
    pid_alive,
    status_of,
    wait_for,
    wfctl,
    wfctl_json,
)

TRACE_NOT_FOUND = "Trace not found for this workflow."


@pytest.fixture
def lab(tmp_path):
    """Scratch files shared with the steps; held steps are released at the end."""
    yield from lab_in(tmp_path)


def interrupted(lab, name: str, first: str = "echo first") -> str:
    """An execution whose runner was killed (SIGKILL) while its second step ran; `first`
    is the first step's command. Its orphaned step is killed too."""
    path = lab.workflow(f"""\
        name: {name}
        steps:
          - id: first
            run: {first}
          - id: second
            run: {lab.record(name)}; {lab.count(name)}; {lab.hold(name + '-$WFCTL_ATTEMPT')}
          - id: third
            run: {lab.count(name + '-third')}
    """, f"{name}.yaml")
    runner = lab.spawn("execute", path, "-q")
    lab.wait_started(f"{name}-1")
    execution_id = lab.execution_id(name)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(timeout=10)
    step = lab.pid(name)
    kill_group(step)
    wait_for(lambda: not pid_alive(step), timeout=10, what="the orphaned step to end")
    assert status_of(execution_id) == "interrupted"
    return execution_id


def age(execution_id: str, seconds: float) -> None:
    """Make every file of an execution look `seconds` old (its last event that long ago)."""
    then = time.time() - seconds
    for path in [execution_dir(execution_id), *execution_dir(execution_id).rglob("*")]:
        os.utime(path, (then, then), follow_symlinks=False)


# -- prune ------------------------------------------------------------------------------------
def test_prune_keeps_interrupted_executions_and_ages_them_from_their_last_event(lab):
    # A run that started 6 s ago and lost its runner a moment ago: older than 4 s by its
    # start, but its last event is recent, and `resume` could continue it.
    execution_id = interrupted(lab, "long-run", first="sleep 6")
    started = json.loads((execution_dir(execution_id) / "execution.json").read_text())["startedAt"]
    assert started is not None
    assert wfctl_json("prune", "--older-than", "4s")["removed"] == []
    assert wfctl_json("prune", "--older-than", "4s", "--include-interrupted")["removed"] == []
    assert wfctl_json("prune", "--older-than", "4s", "--status", "interrupted")["removed"] == []
    assert status_of(execution_id) == "interrupted"

    # Two days without an event: still kept by default, removed when asked for.
    age(execution_id, 2 * 86400)
    assert wfctl_json("prune", "--older-than", "1d")["removed"] == []
    assert status_of(execution_id) == "interrupted"
    dry = wfctl_json("prune", "--older-than", "1d", "--include-interrupted", "--dry-run")
    assert [r["executionId"] for r in dry["removed"]] == [execution_id]
    assert execution_dir(execution_id).exists()
    result = wfctl_json("prune", "--older-than", "1d", "--include-interrupted")
    assert result["removed"] == [{"executionId": execution_id, "workflowId": dry["removed"][0]["workflowId"],
                                  "status": "interrupted"}]
    wfctl("execution", execution_id, code=3)


def test_prune_holds_the_runner_lock_so_a_resume_cannot_start_in_between(lab, monkeypatch):
    execution_id = interrupted(lab, "pruned")
    monkeypatch.setenv("WFCTL_FAULT_DIR", str(lab.root))
    pruner = subprocess.Popen(
        ["wfctl", "prune", "--older-than", "0s", "--include-interrupted", "--json"],
        env={**os.environ, "WFCTL_FAULT": "stall-prune"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lab.processes.append(pruner)
    # prune has decided to remove the execution and stands still before removing it.
    wait_for(lab.path("stall-prune.reached").exists, what="prune to decide")
    resumed = wfctl("resume", execution_id, "-q", code=6)
    assert str(pruner.pid) in resumed.stderr  # the process that holds it: prune
    lab.path("stall-prune.go").touch()
    out, err = pruner.communicate(timeout=WAIT)
    assert pruner.returncode == 0, err
    assert [r["executionId"] for r in json.loads(out)["removed"]] == [execution_id]
    assert lab.lines("count-pruned") == ["1"]  # the resume started nothing
    assert not lab.path("count-pruned-third").exists()
    wfctl("execution", execution_id, code=3)
    assert not list((home() / "executions").glob(".trash-*"))


# -- a deleted workflow's history --------------------------------------------------------------
def test_a_deleted_workflows_executions_and_traces_stay_reachable_by_id_and_name(lab):
    path = lab.workflow("""\
        name: short-lived
        steps:
          - id: only
            run: echo hi
    """)
    runs = [wfctl_json("execute", path)["executionId"] for _ in range(2)]
    workflow_id = wfctl_json("execution", runs[0])["workflowId"]
    wfctl("delete", "short-lived")
    wfctl("show", workflow_id, code=3)
    assert wfctl_json("list")["count"] == 0

    for ref in (workflow_id, "short-lived"):
        listing = wfctl_json("traces", ref)
        assert sorted(e["id"] for e in listing["elements"]) == sorted(runs), ref
        assert wfctl_json("trace", ref, runs[0])["id"] == runs[0]
        executions = wfctl_json("executions", "--workflow", ref)
        assert sorted(e["executionId"] for e in executions["elements"]) == sorted(runs), ref
        assert executions["count"] == 2

    # The name is taken again: it now means the new workflow; the old one stays by id.
    path.write_text(path.read_text().replace("echo hi", "echo again"))
    newer = wfctl_json("execute", path)
    assert newer["workflowId"] != workflow_id
    assert [e["id"] for e in wfctl_json("traces", "short-lived")["elements"]] == [newer["executionId"]]
    assert [e["executionId"] for e in wfctl_json("executions", "--workflow", "short-lived")["elements"]] == [
        newer["executionId"]
    ]
    assert wfctl_json("traces", workflow_id)["count"] == 2
    wfctl("trace", "short-lived", runs[0], code=3)  # that trace belongs to the old one
    assert wfctl_json("trace", workflow_id, runs[0])["status"] == "executed"
    wfctl("traces", "never-existed", code=3)
    wfctl("traces", "wf_0000000000000000", code=3)


# -- traces by id or uuid; anything else is not found --------------------------------------------
def test_a_trace_is_found_by_its_uuid_and_anything_else_is_not_found(lab):
    path = lab.workflow("""\
        name: traced
        steps:
          - id: only
            run: echo hi
    """)
    execution_id = wfctl_json("execute", path)["executionId"]
    element = wfctl_json("traces", "traced")["elements"][0]
    assert element["id"] == execution_id
    uuid = element["uuid"]
    for ref in (uuid, uuid.upper()):
        found = wfctl_json("trace", "traced", ref)
        assert found["id"] == execution_id and found["uuid"] == uuid
    assert "trace " + execution_id in wfctl("trace", "traced", uuid).stdout

    unknown = ["exec_000000000missing", "00000000-0000-4000-8000-000000000000", "not-a-trace", "../../etc/passwd",
               "exec_../x", "x" * 300, "tab\there"]
    for ref in unknown:
        result = wfctl("trace", "traced", ref, code=3)
        assert f"wfctl: error: {TRACE_NOT_FOUND}" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "\t" not in result.stderr
        document = wfctl_json("trace", "traced", ref, code=3)
        assert document["error"] == TRACE_NOT_FOUND


# -- a read-only data directory; a list never hides what it counts -------------------------------
def run_read_only(*args: str) -> subprocess.CompletedProcess:
    """Run `wfctl ARGS` with the data directory really read-only: a read-only bind mount
    in a private mount namespace when we are root (root ignores file modes), else
    `chmod -R a-w`. A write probe inside proves that writes fail, or the call fails."""
    data = str(home())
    probe = f'if touch "{data}/.write-probe" 2>/dev/null; then echo "the data directory is writable" >&2; exit 97; fi'
    if os.geteuid() == 0:
        assert shutil.which("unshare"), "a read-only test as root needs unshare(1) for a read-only bind mount"
        script = (f'mount --bind "{data}" "{data}" && mount -o remount,bind,ro "{data}" && {probe} && '
                  'exec wfctl "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    subprocess.run(["chmod", "-R", "a-w", data], check=True)
    try:
        return subprocess.run(["sh", "-c", f'{probe} && exec wfctl "$@"', "sh", *args],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["chmod", "-R", "u+w", data], check=True)


def test_a_read_only_data_directory_reads_an_execution_whose_runner_died(lab):
    done = wfctl_json("execute", lab.workflow("name: fine\nsteps:\n  - {id: only, run: echo ok}\n", "fine.yaml"))
    dead = interrupted(lab, "died")
    listing = run_read_only("executions", "--json")
    assert listing.returncode == 0, listing.stderr
    document = json.loads(listing.stdout)
    assert document["count"] == 2
    assert {e["executionId"]: e["status"] for e in document["elements"]} == {
        dead: "interrupted", done["executionId"]: "completed"}
    shown = run_read_only("execution", dead, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "interrupted"
    assert run_read_only("logs", dead, "second").returncode == 0
    traces = run_read_only("traces", "fine", "--json")
    assert traces.returncode == 0 and json.loads(traces.stdout)["count"] == 1, traces.stderr
    assert not (home() / ".write-probe").exists()


def test_an_unreadable_execution_is_listed_with_its_error_not_hidden(lab):
    path = lab.workflow("name: listed\nsteps:\n  - {id: only, run: echo ok}\n")
    good, bad = (wfctl_json("execute", path)["executionId"] for _ in range(2))
    snapshot = execution_dir(bad) / "execution.json"
    snapshot.write_text("{ this is not json")
    document = wfctl_json("executions")
    assert document["count"] == 2 and len(document["elements"]) == 2
    elements = {e["executionId"]: e for e in document["elements"]}
    assert elements[good]["status"] == "completed"
    assert elements[bad]["status"] == "unreadable"
    assert str(snapshot) in elements[bad]["error"]
    human = wfctl("executions")
    assert bad in human.stdout and "unreadable" in human.stdout
    assert f"{bad} cannot be read" in human.stderr
    assert wfctl_json("executions", "--status", "unreadable")["count"] == 1
    assert journal_events(good)[-1]["status"] == "completed"
