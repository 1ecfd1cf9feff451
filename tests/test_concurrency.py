"""Many `wfctl` processes on one data directory at once (reliability.md B09, C03)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lifecycle_helpers import (
    execution_dir,
    home,
    journal_events,
    lab_in,
    step_record,
    wait_for,
    wfctl,
    wfctl_json,
)


@pytest.fixture
def lab(tmp_path):
    """Scratch files shared with the steps; held steps are released at the end."""
    yield from lab_in(tmp_path)


RUNS = {"many-seq": 8, "many-par": 6, "many-data": 6}  # 20 executions of three workflows


def workflows(lab) -> dict[str, str]:
    seen = lab.q("seen")  # every step appends its execution id: proves each step ran once
    # A barrier: each run's first step announces itself, then waits until all 20 have.
    gate = f"""\
              - id: gate
                run: touch {lab.q('started-$WFCTL_EXECUTION_ID')}; i=0; while [ ! -e {lab.q('go-all')} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"""
    return {
        "many-seq": lab.workflow(f"""\
            name: many-seq
            steps:
{gate}
              - id: a
                run: echo "$WFCTL_EXECUTION_ID" >> {seen}; echo a
              - id: b
                run: echo "$WFCTL_EXECUTION_ID" >> {seen}; echo b
              - id: c
                run: echo "$WFCTL_EXECUTION_ID" >> {seen}; echo c
        """, "seq.yaml"),
        "many-par": lab.workflow(f"""\
            name: many-par
            steps:
{gate}
              - id: fan
                type: parallel
                steps:
                  - id: left
                    run: echo "$WFCTL_EXECUTION_ID" >> {seen}; echo left
                  - id: right
                    run: echo "$WFCTL_EXECUTION_ID" >> {seen}; echo right
              - id: join
                run: echo "$WFCTL_EXECUTION_ID" >> {seen}; echo joined
        """, "par.yaml"),
        "many-data": lab.workflow(f"""\
            name: many-data
            steps:
{gate}
              - id: make
                run: |
                  echo "$WFCTL_EXECUTION_ID" >> {seen}
                  echo '{{"n": 41}}'
                output: made
              - id: use
                input: made
                run: echo "$WFCTL_EXECUTION_ID" >> {seen}; printf '%s' "$WFCTL_INPUT" > "$WFCTL_OUTPUT"
                output: used
        """, "data.yaml"),
    }


STEPS_RUN = {"many-seq": 3, "many-par": 3, "many-data": 2}


def test_twenty_executions_at_once_in_one_data_directory(lab):
    files = workflows(lab)
    # Registered on the way by all of them at once (the same file 6 to 8 times).
    procs = [
        (name, lab.spawn("execute", files[name], "-q"))
        for position in range(max(RUNS.values()))
        for name in RUNS
        if position < RUNS[name]
    ]
    assert len(procs) == 20
    # All 20 are running at the same time.
    wait_for(lambda: len(list(lab.root.glob("started-exec_*"))) == 20, timeout=60, what="20 runs to start")
    running = wfctl_json("executions", "--limit", "100")
    assert running["count"] == 20
    assert {e["status"] for e in running["elements"]} == {"running"}
    lab.go("all")
    ids: dict[str, str] = {}
    for name, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out}\n{err}"
        ids[out.strip()] = name
    assert len(ids) == 20 and all(e.startswith("exec_") for e in ids)

    # Every file parses, every execution completed, every journal line parses.
    for execution_id, name in ids.items():
        snapshot = json.loads((execution_dir(execution_id) / "execution.json").read_text())
        assert snapshot["status"] == "completed", (execution_id, snapshot["status"])
        assert snapshot["workflowName"] == name
        events = journal_events(execution_id)
        assert events[0]["type"] == "execution.started"
        assert events[-1] == {**events[-1], "type": "execution.finished", "status": "completed"}
    data = [e for e, n in ids.items() if n == "many-data"][0]
    document = wfctl_json("execution", data)
    assert step_record(document, "use")["output"] == {"used": {"made": {"n": 41}}}
    assert Counter(lab.lines("seen")) == {e: STEPS_RUN[n] for e, n in ids.items()}
    assert not [p for p in home().rglob("*") if p.name.endswith(".tmp")]  # no temp file left

    listing = wfctl_json("executions", "--limit", "100")
    assert listing["count"] == 20
    assert {e["executionId"] for e in listing["elements"]} == set(ids)
    assert {e["status"] for e in listing["elements"]} == {"completed"}

    registered = wfctl_json("list")
    assert registered["count"] == 3  # one workflow per name, however many ran it at once
    assert sorted(e["name"] for e in registered["elements"]) == sorted(RUNS)
    for name, runs in RUNS.items():
        traces = wfctl_json("traces", name)
        assert traces["count"] == runs, name
        assert {t["id"] for t in traces["elements"]} == {e for e, n in ids.items() if n == name}
        assert {t["status"] for t in traces["elements"]} == {"executed"}
        assert wfctl_json("executions", "--workflow", name, "--limit", "100")["count"] == runs
    wfctl("executions")
