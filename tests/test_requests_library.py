"""The library under the lifecycle commands, driven in-process (issue 11, items 1, 10,
13): when a cancel request is consumed or withdrawn, a journal append that fails half
way, and the read-only liveness probe. The pieces are the real ones (store, journal
recorder, runner lock); the test plays the runner where a real one cannot be stopped at
the moment that matters.
"""

from __future__ import annotations

import json

import pytest

from lifecycle_helpers import spawn, wait_for
from wfctl import api, faults
from wfctl.execution_dir import Requests
from wfctl.record import now_iso, read_journal
from wfctl.runner import Recorder
from wfctl.store import FileLock, lock_is_held


@pytest.fixture
def prepared(tmp_path) -> str:
    """A prepared (pending) execution of a two-step workflow."""
    path = tmp_path / "two.yaml"
    path.write_text("name: two\nsteps:\n  - {id: a, run: echo a}\n  - {id: b, run: echo b}\n")
    return api.prepare(str(path))


def test_a_cancel_that_comes_as_the_run_ends_otherwise_is_withdrawn_and_says_so(prepared):
    handle = api.Workspace().handle(prepared)
    with handle.runner_lock():  # the test is the runner, finishing its last step
        state, intact = api.load_execution_state(prepared)
        recorder = Recorder(handle, state, intact=intact)
        recorder({"type": "execution.started", "at": now_iso()})
        canceller = spawn("cancel", prepared, "--reason", "too late")
        request = handle.path / "cancel.json"
        wait_for(request.exists, what="the cancel request")
        # The run ends (completed) without having looked at the request.
        recorder({"type": "execution.finished", "at": now_iso(), "status": "completed"})
        recorder.close()
    _, err = canceller.communicate(timeout=30)
    assert canceller.returncode == 6, err
    assert "completed before the cancel could take effect" in err
    assert not request.exists()  # withdrawn: no later run of this execution inherits it
    assert api.get_execution(prepared)["status"] == "completed"


def test_a_cancel_request_the_record_shows_applied_is_dropped_and_a_newer_one_is_kept(tmp_path):
    control = Requests(tmp_path)
    request = control.request_cancel("stop")
    cancelled = {"status": "cancelled", "cancelReason": "stop", "completedAt": now_iso()}
    control.drop_applied_cancel(cancelled)
    assert control.cancel_request() is None  # applied and recorded: not a request for a new run

    newer = control.request_cancel("stop")
    control.drop_applied_cancel({**cancelled, "completedAt": "2000-01-01T00:00:00.000Z"})
    assert control.cancel_request() == newer  # made after that cancel was recorded: kept
    control.drop_applied_cancel({"status": "failed", "completedAt": now_iso()})
    assert control.cancel_request() == newer
    assert not control.withdraw_cancel(request)  # someone else's request is not withdrawn
    assert control.withdraw_cancel(newer) and control.cancel_request() is None


def test_a_journal_append_that_fails_half_way_leaves_the_journal_at_its_last_whole_line(prepared, monkeypatch):
    handle = api.Workspace().handle(prepared)
    journal = handle.journal_path
    state, intact = api.load_execution_state(prepared)
    recorder = Recorder(handle, state, intact=intact)
    recorder({"type": "execution.started", "at": now_iso()})
    whole = journal.read_bytes()
    monkeypatch.setitem(faults._ARMED, "short-journal", 1)  # the next append: half a line, then ENOSPC
    recorder({"type": "step.started", "at": now_iso(), "step": "a", "attempt": 1})
    assert recorder.broken is not None and "No space left on device" in recorder.broken
    assert journal.read_bytes() == whole  # the half line was cut off again
    recorder.close()

    # The next runner (resume) appends after the last whole line: every line parses.
    state, intact = api.load_execution_state(prepared)
    assert intact == len(whole)
    again = Recorder(handle, state, intact=intact)
    again({"type": "step.started", "at": now_iso(), "step": "a", "attempt": 1})
    again.close()
    events, length = read_journal(journal.read_bytes())
    assert [e["type"] for e in events] == ["execution.started", "step.started"]
    assert length == journal.stat().st_size
    snapshot = json.loads((handle.path / "execution.json").read_text())
    assert snapshot["journalOffset"] == journal.stat().st_size


def test_the_liveness_probe_reads_only_and_never_creates_the_lock(prepared):
    handle = api.Workspace().handle(prepared)
    lock_path = handle.path / "lock"
    assert not lock_path.exists()
    assert handle.runner_alive() is False
    assert not lock_path.exists()  # a missing lock file means no runner; the probe made none

    holder = FileLock(lock_path, blocking=False)
    assert holder.acquire()
    try:
        lock_path.chmod(0o400)  # readable only: the probe opens it read-only
        assert lock_is_held(lock_path) is True
        assert api.get_execution(prepared)["status"] == "pending"  # a live runner: not interrupted
    finally:
        holder.release()
    assert lock_is_held(lock_path) is False
    assert api.get_execution(prepared)["status"] == "interrupted"
