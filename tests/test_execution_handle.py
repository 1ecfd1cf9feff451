"""The execution handle (one `executions/<id>/` directory and every operation on it),
its journal reader and writer, the run slots, and Workspaces that hold their own data
directory and config. In-process, on real files in tmp_path: the test plays the runner
where it needs one (it takes the real runner lock and appends through the real writer).
"""

from __future__ import annotations

import json
import os
import threading

import pytest

from lifecycle_helpers import wait_for
from wfctl import api, faults
from wfctl.errors import Conflict, ExecutionNotFound, StoreError, WorkflowInvalid
from wfctl.execution_dir import ExecutionHandle, RunSlots
from wfctl.journal import JournalReader, JournalWriter
from wfctl.record import new_document, now_iso
from wfctl.runner import Recorder
from wfctl.store import Store, new_id

WORKFLOW = {"name": "two", "steps": [{"id": "a", "run": "echo a"}, {"id": "b", "run": "echo b"}]}


def line(event: dict) -> bytes:
    return json.dumps(event).encode() + b"\n"


AT = "2026-01-02T03:04:05.678Z"


def started(step: str) -> dict:
    return {"type": "step.started", "at": AT, "step": step, "attempt": 1}


def finished(step: str) -> dict:
    return {"type": "step.finished", "at": AT, "step": step, "status": "completed", "output": step}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "data")


@pytest.fixture
def handle(store) -> ExecutionHandle:
    """A new execution of WORKFLOW, pending, written the way `prepare` writes one."""
    execution_id = new_id("exec")
    handle = ExecutionHandle(store, execution_id)
    document = new_document(execution_id=execution_id, workflow=WORKFLOW, workflow_id="wf_0000test0000",
                            input={}, priority="normal")
    handle.create({"workflowId": "wf_0000test0000", "options": {}, "definition": WORKFLOW}, document)
    return handle


# -- the journal --------------------------------------------------------------------------------
def test_the_reader_returns_whole_lines_as_they_come_and_stops_before_a_torn_one(tmp_path):
    path = tmp_path / "events.jsonl"
    reader = JournalReader(path)
    assert reader.read() == []  # no journal yet: nothing happened
    first, second = started("a"), finished("a")
    path.write_bytes(line(first) + line(second)[:10])  # the second line is being written
    assert reader.read() == [first]
    assert reader.offset == len(line(first))  # the intact part ends before the torn line
    assert reader.read() == []
    with open(path, "ab") as journal:
        journal.write(line(second)[10:])
    assert reader.read() == [second]
    assert reader.offset == reader.position == path.stat().st_size


def test_a_corrupt_line_is_named_by_its_number_even_when_reading_starts_later(tmp_path):
    path = tmp_path / "events.jsonl"
    good = line(started("a")) + line(finished("a")) + line(started("b"))
    path.write_bytes(good + b"{not json}\n")
    offset = len(line(started("a")) + line(finished("a")))  # a snapshot covered two lines
    with pytest.raises(StoreError, match=r"events.jsonl is corrupt at line 4\."):
        JournalReader(path, offset).read()
    with pytest.raises(StoreError, match=r"corrupt at line 4\."):
        JournalReader(path).read()


def test_the_writer_cuts_a_torn_tail_off_before_it_appends(tmp_path):
    path = tmp_path / "events.jsonl"
    whole = line(started("a"))
    path.write_bytes(whole + b'{"type": "step.fin')  # a runner killed in the middle of an append
    writer = JournalWriter(path, intact=len(whole))
    writer.append(line(finished("a")))
    writer.sync()
    writer.close()
    assert path.read_bytes() == whole + line(finished("a"))
    assert writer.offset == path.stat().st_size
    assert [e["type"] for e in JournalReader(path).read()] == ["step.started", "step.finished"]


def test_an_append_that_fails_half_way_leaves_the_journal_at_its_last_whole_line(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    writer = JournalWriter(path)
    writer.append(line(started("a")))
    monkeypatch.setitem(faults._ARMED, "short-journal", 1)  # half the line, then ENOSPC
    with pytest.raises(OSError, match="No space left on device"):
        writer.append(line(finished("a")))
    assert path.read_bytes() == line(started("a"))
    assert writer.offset == len(line(started("a")))
    writer.append(line(finished("a")))  # the next append starts at a line boundary
    writer.close()
    assert len(JournalReader(path).read()) == 2


# -- the execution's record ---------------------------------------------------------------------
def test_create_writes_the_definition_and_the_snapshot_and_refuses_an_existing_execution(handle, store):
    assert handle.load_frozen_workflow()["definition"] == WORKFLOW
    assert handle.load_snapshot()["status"] == "pending"
    assert handle.logs_dir.is_dir()
    with pytest.raises(StoreError, match="already exists"):
        ExecutionHandle(store, handle.execution_id).create({}, {})


def test_create_leaves_nothing_behind_when_the_snapshot_cannot_be_written(store, monkeypatch):
    execution_id = new_id("exec")
    document = new_document(execution_id=execution_id, workflow=WORKFLOW, workflow_id="wf_0000test0000",
                            input={}, priority="normal")
    monkeypatch.setitem(faults._ARMED, "enospc-snapshot", 1)
    with pytest.raises(StoreError, match="No space left on device"):
        ExecutionHandle(store, execution_id).create({"definition": WORKFLOW}, document)
    assert store.execution_ids() == []
    assert os.listdir(store.executions_dir) == []


def test_read_state_is_the_snapshot_plus_the_journal_after_it(handle):
    with handle.runner_lock():  # the test is the runner
        state, intact = handle.read_state()
        assert (state.document["status"], intact) == ("pending", 0)
        journal = handle.open_journal(intact)
        event = {"type": "execution.started", "at": AT}
        journal.append(line(event))
        state.apply(event)
        handle.save_snapshot({**state.document, "journalOffset": journal.offset})
        journal.append(line(started("a")))
        journal.append(line(finished("a")))  # journaled after the snapshot
        journal.close()
        with open(handle.journal_path, "ab") as torn:
            torn.write(line(started("b"))[:7])  # and a line being written
        state, intact = handle.read_state()
        assert state.document["status"] == "running"  # the lock is held: its runner is alive
        assert state.document["steps"][0]["status"] == "completed"
        assert state.document["steps"][1]["status"] == "pending"
        assert intact == handle.journal_path.stat().st_size - 7
    # Nobody holds the lock now: a status that says running means the runner died.
    assert handle.read_state()[0].document["status"] == "interrupted"


def test_an_execution_that_does_not_exist_is_not_found(store):
    missing = ExecutionHandle(store, new_id("exec"))
    with pytest.raises(ExecutionNotFound):
        missing.read_state()
    with pytest.raises(ExecutionNotFound):
        missing.load_frozen_workflow()
    with pytest.raises(ExecutionNotFound):
        with missing.runner_lock():
            pass


def test_the_runner_lock_is_exclusive_and_says_who_holds_it(handle, store):
    assert not handle.runner_alive() and not handle.runs_here()
    with handle.runner_lock():
        assert handle.runner_alive() and handle.runs_here()
        assert handle.lock_holder() == str(os.getpid())
        other = ExecutionHandle(store, handle.execution_id)  # another process would be refused alike
        with pytest.raises(Conflict, match=f"already being run by process {os.getpid()}"):
            with other.runner_lock():
                pass
    assert not handle.runner_alive()
    with ExecutionHandle(store, handle.execution_id).runner_lock():
        assert handle.runner_alive()


def test_requests_are_files_of_the_execution_until_settled(handle):
    requests = handle.requests
    assert requests.cancel_request() is None and not requests.pause_requested()
    mine = requests.request_cancel("stop")
    requests.request_pause()
    assert requests.cancel_request() == mine
    assert requests.pause_requested()
    assert (handle.path / "cancel.json").is_file() and (handle.path / "pause.json").is_file()
    assert requests.withdraw_cancel(mine) and requests.cancel_request() is None
    assert requests.clear_pause() and not requests.clear_pause()


def test_remove_needs_the_runner_lock_and_takes_the_trace_with_it(handle, store):
    trace = store.trace_path("wf_0000test0000", handle.execution_id)
    store.save_trace("wf_0000test0000", {"id": handle.execution_id, "status": "executed"})
    with pytest.raises(RuntimeError, match="needs its runner lock"):
        handle.remove("wf_0000test0000")
    assert handle.path.is_dir()
    with handle.runner_lock():
        handle.remove("wf_0000test0000")
    assert not handle.path.exists() and not trace.exists()
    assert os.listdir(store.executions_dir) == []  # no trash left behind
    with pytest.raises(ExecutionNotFound):
        handle.read_state()


# -- run slots ----------------------------------------------------------------------------------
def test_a_run_slot_is_taken_by_one_run_and_a_queued_run_waits_marked_queued(store, handle):
    waiter = ExecutionHandle(store, new_id("exec"))
    waiter.path.mkdir(parents=True)
    slots = RunSlots(store, 1)
    looks: list[tuple[bool, list[str]]] = []

    def give_up() -> bool:
        looks.append((waiter.is_queued(), sorted(os.listdir(slots.queue_dir))))
        return len(looks) == 2

    with slots.hold(handle, "normal", wait=False):
        assert not handle.is_queued()
        with slots.hold(waiter, "high", wait=True, give_up=give_up):
            assert not waiter.is_queued()  # gave up waiting: goes ahead, without a slot
        with slots.hold(waiter, "low", wait=False):
            pass  # a foreground run goes ahead even when every slot is taken
    assert looks == [(True, [f"0-{waiter.execution_id}"])] * 2
    assert os.listdir(slots.queue_dir) == []


def test_the_queue_skips_dead_waiters_and_serves_live_ones_first(store, handle):
    ahead = ExecutionHandle(store, new_id("exec"))
    ahead.path.mkdir(parents=True)
    dead = new_id("exec")
    slots = RunSlots(store, 1)
    slots.queue_dir.mkdir(parents=True)
    waits: list[str] = []

    def give_up() -> bool:
        waits.append(handle.execution_id)
        return True

    (slots.queue_dir / f"0-{dead}").touch()  # a high-priority waiter whose runner died
    with slots.hold(handle, "normal", wait=True, give_up=give_up):
        assert waits == []  # it did not hold this run up: the free slot was taken at once
    assert not (slots.queue_dir / f"0-{dead}").exists()

    (slots.queue_dir / f"0-{ahead.execution_id}").touch()
    with ahead.runner_lock():  # a live high-priority waiter: it comes first
        with slots.hold(handle, "normal", wait=True, give_up=give_up):
            assert waits == [handle.execution_id]  # the slot was free, and still this run waited


def test_without_a_limit_there_are_no_slots_to_take(store, handle):
    with RunSlots(store, None).hold(handle, "normal", wait=True):
        assert not handle.is_queued()
    assert not (store.root / "slots").exists() and not (store.root / "queue").exists()


# -- Workspaces ---------------------------------------------------------------------------------
@pytest.fixture
def two_workspaces(tmp_path):
    """Two Workspaces with their own data directory and config: only the first knows
    the agent `shout`."""
    first_config = tmp_path / "first.toml"
    first_config.write_text('[agents.shout]\nrun = "echo SHOUT"\n')
    first = api.Workspace(home=tmp_path / "first", config=first_config)
    second = api.Workspace(home=tmp_path / "second", config=tmp_path / "second.toml")
    workflow = tmp_path / "shouts.yaml"
    workflow.write_text("name: shouts\nsteps:\n  - {id: say, agent: shout, output: said}\n")
    return first, second, workflow


def test_two_workspaces_in_one_process_do_not_mix(two_workspaces, tmp_path, wfctl_home):
    first, second, workflow = two_workspaces
    document = first.execute(str(workflow))
    assert document["status"] == "completed"
    assert document["steps"][0]["output"] == {"said": "SHOUT"}  # the first config's agent
    with pytest.raises(WorkflowInvalid, match="shout"):
        second.prepare(str(workflow))  # the second config has no such agent
    assert second.list()["count"] == 0 and second.list_executions()["count"] == 0
    with pytest.raises(ExecutionNotFound):
        second.get_execution(document["executionId"])
    assert first.list_executions()["elements"][0]["executionId"] == document["executionId"]
    assert first.traces("shouts")["count"] == 1
    assert not wfctl_home.exists()  # $WFCTL_HOME was never written to

    # Each keeps its own registry: the same name is a different workflow in each.
    second.create({"name": "shouts", "steps": [{"id": "say", "run": "echo quiet"}]})
    assert second.get("shouts")["workflowId"] != first.get("shouts")["workflowId"]


def test_the_default_workspace_follows_the_environment_at_each_call(two_workspaces, monkeypatch):
    first, _second, workflow = two_workspaces
    execution_id = first.prepare(str(workflow))
    with pytest.raises(ExecutionNotFound):
        api.get_execution(execution_id)  # $WFCTL_HOME is another directory
    monkeypatch.setenv("WFCTL_HOME", str(first.home))
    monkeypatch.setenv("WFCTL_CONFIG", str(first.config_path))
    assert api.get_execution(execution_id) == first.get_execution(execution_id)
    assert api.Workspace().home == first.home


def test_a_detached_run_uses_the_home_and_config_of_its_workspace(two_workspaces, wfctl_home):
    first, _second, workflow = two_workspaces
    execution_id = first.prepare(str(workflow))
    first.start_detached(execution_id)
    document = wait_for(lambda: (d := first.get_execution(execution_id))["status"] == "completed" and d,
                        what="the detached run to complete")
    assert document["steps"][0]["output"] == {"said": "SHOUT"}  # an agent only its config has
    wait_for(lambda: not first.runner_alive(execution_id), what="the detached runner to exit")
    assert first.traces("shouts")["count"] == 1
    assert not wfctl_home.exists()


def test_watch_follows_a_run_from_the_journal_until_it_ends(two_workspaces):
    first, _second, workflow = two_workspaces
    execution_id = first.prepare(str(workflow))
    handle = first.handle(execution_id)
    seen: list[str] = []
    watching = threading.Event()
    result: list[dict] = []
    with handle.runner_lock():  # the test is the runner
        state, intact = handle.read_state()
        recorder = Recorder(handle, state, intact=intact)
        recorder({"type": "execution.started", "at": now_iso()})
        watcher = threading.Thread(target=lambda: result.append(first.watch(
            execution_id, on_start=lambda _doc: watching.set(), on_event=lambda e, _s: seen.append(e["type"]),
            poll=0.01,
        )))
        watcher.start()
        assert watching.wait(20)
        recorder(started("say"))
        recorder(finished("say"))
        recorder({"type": "execution.finished", "at": now_iso(), "status": "completed"})
        recorder.close()
    watcher.join(20)
    assert not watcher.is_alive()
    assert seen == ["step.started", "step.finished", "execution.finished"]
    assert result[0]["status"] == "completed"
    assert result[0]["steps"][0]["output"] == "say"
    assert "journalOffset" not in result[0]
