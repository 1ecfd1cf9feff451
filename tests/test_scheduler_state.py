"""scheduler.py in-process: the state file and its lock, finding scheduled workflows,
and the scheduler's looks driven by a clock the test sets (no waiting)."""

from __future__ import annotations

import json
import threading
from datetime import datetime

import pytest

from wfctl import api, scheduler
from wfctl.errors import StoreError
from wfctl.scheduler import (
    Clock,
    Scheduler,
    find_schedules,
    load_state,
    state_path,
    state_transaction,
)
from wfctl.store import FileLock, Store
from wfctl.workspace import Workspace


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def store(wfctl_home) -> Store:
    store = Workspace().store
    store.init()
    return store


def create(workflow_file, name: str, schedule: str) -> dict:
    path = workflow_file(f"name: {name}\nschedule: {schedule}\nsteps:\n  - {{id: a, run: 'true'}}\n", f"{name}.yaml")
    return api.create(path)


def test_a_pause_made_while_the_scheduler_changes_the_state_is_kept(store, workflow_file):
    create(workflow_file, "ticker", "{every: 1m}")
    paused: list[dict] = []
    pauser = threading.Thread(target=lambda: paused.append(scheduler.pause("ticker")))
    with state_transaction(store) as state:  # the scheduler, in the middle of a change
        state["schedules"]["k"] = {"workflowId": "wf_x", "anchor": "2030-01-01T00:00:00Z"}
        pauser.start()
        pauser.join(0.3)
        assert pauser.is_alive()  # the pause waits for the lock instead of overwriting
    pauser.join(10)
    assert paused and paused[0]["paused"] is True
    state = load_state(store)
    assert state["schedules"]["k"]["anchor"] == "2030-01-01T00:00:00Z"  # neither change is lost
    assert state["workflows"][paused[0]["workflowId"]]["paused"] is True


def test_the_wait_for_the_state_lock_has_a_deadline(store, monkeypatch):
    monkeypatch.setattr(scheduler, "STATE_LOCK_SECONDS", 0.2)
    (store.root / "scheduler").mkdir()
    holder = FileLock(store.root / "scheduler" / "state.lock")
    holder.acquire()
    try:
        with pytest.raises(StoreError, match="stayed locked for 0.2s"):
            with state_transaction(store):
                pass  # pragma: no cover - never reached
    finally:
        holder.release()


def test_nothing_is_written_when_a_change_fails(store):
    with state_transaction(store) as state:
        state["workflows"]["wf_a"] = {"paused": True}
    before = state_path(store).read_bytes()
    with pytest.raises(RuntimeError):
        with state_transaction(store) as state:
            state["workflows"]["wf_a"]["paused"] = False
            raise RuntimeError("half-way")
    assert state_path(store).read_bytes() == before


def test_a_state_file_that_is_not_ours_stops_with_one_sentence(store, wfctl):
    (store.root / "scheduler").mkdir()
    state_path(store).write_text(json.dumps([1, 2]))
    with pytest.raises(StoreError, match="is not a scheduler state file; move it away"):
        load_state(store)
    result = wfctl("scheduler", "--once", code=1)
    assert "is not a scheduler state file" in result.stderr and "Traceback" not in result.stderr
    state_path(store).write_text("{torn")
    assert "is not valid JSON" in wfctl("schedules", code=1).stderr


def test_find_schedules_reads_every_registered_workflow(store, workflow_file):
    first = create(workflow_file, "one", "[{every: 1m}, {cron: '@daily', timezone: UTC}]")
    create(workflow_file, "other", "{every: 1h}")
    found = find_schedules(store)
    assert [s.key for s in found.schedules if s.workflow_id == first["workflowId"]] == [
        f"{first['workflowId']}:every:1m", f"{first['workflowId']}:cron:@daily:UTC"]
    assert found.problems == {} and len(found.ids) == 2


def test_a_new_schedule_counts_from_when_it_is_first_seen(store, workflow_file):
    created = create(workflow_file, "fresh", "{every: 1m}")
    lines: list[str] = []
    looker = Scheduler(Workspace(home=store.root), Clock(at("2030-01-01T00:10:30Z")), lines.append)
    looker.tick(at("2030-01-01T00:10:30Z"))
    (entry,) = load_state(store)["schedules"].values()
    assert entry["workflowId"] == created["workflowId"] and entry["anchor"] == "2030-01-01T00:10:30Z"
    assert lines == ["fresh (every 1m): scheduled, first run at 2030-01-01T00:11:00Z"]
    assert api.list_executions()["count"] == 0  # the ten earlier minutes are not missed runs


def test_a_look_that_is_not_due_writes_nothing(store, workflow_file):
    create(workflow_file, "idle", "{every: 1h}")
    looker = Scheduler(Workspace(home=store.root), Clock(), lambda line: None)
    looker.tick(at("2030-01-01T00:10:00Z"))
    written = state_path(store).stat().st_mtime_ns, state_path(store).read_bytes()
    wait = looker.tick(at("2030-01-01T00:20:00Z"))
    assert (state_path(store).stat().st_mtime_ns, state_path(store).read_bytes()) == written
    assert wait == scheduler.TICK_SECONDS  # the next run is 40 minutes away: look again in a second
