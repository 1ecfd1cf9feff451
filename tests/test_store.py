"""The data directory: atomic writes, permissions, ids that never become stray paths."""

from __future__ import annotations

import json
import os
import stat

import pytest

from wfctl.errors import StoreError, UsageError
from wfctl.execution_dir import ExecutionHandle
from wfctl.store import FileLock, Store, check_execution_id, new_id, write_json_atomic


def test_atomic_write_replaces_whole_file_with_private_mode(tmp_path):
    old_umask = os.umask(0)
    try:
        target = tmp_path / "data" / "doc.json"
        write_json_atomic(target, {"a": 1})
        write_json_atomic(target, {"a": 2, "b": [1, 2]})
    finally:
        os.umask(old_umask)
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert [p.name for p in target.parent.iterdir()] == ["doc.json"]  # no temp file left


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "doc.json"
    write_json_atomic(target, {"version": 1})
    # The rename fails when the target has become a non-empty directory.
    blocked = tmp_path / "blocked.json"
    blocked.mkdir()
    (blocked / "inside").write_text("x")
    with pytest.raises(StoreError, match="cannot write"):
        write_json_atomic(blocked, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.json", "doc.json"]


def test_ids_are_sortable_by_creation_and_checked():
    first = new_id("exec")
    second = new_id("exec")
    assert check_execution_id(first) == first
    assert first[:14] <= second[:14]
    for bad in ("../x", "exec_../../etc", "exec_a/b", "", "exec_\x00abcdef", "EXEC_abcdef"):
        with pytest.raises(UsageError):
            check_execution_id(bad)


def test_store_paths_refuse_traversal(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(UsageError):
        store.execution_dir("exec_..")
    with pytest.raises(UsageError):
        ExecutionHandle(store, new_id("exec")).log_path("../../escape")
    with pytest.raises(UsageError):
        store.workflow_path("wf_../x")


def test_symlinked_snapshot_is_not_followed(tmp_path):
    handle = ExecutionHandle(Store(tmp_path / "home"), new_id("exec"))
    handle.path.mkdir(parents=True)
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}')
    os.symlink(secret, handle.snapshot_path)
    with pytest.raises(StoreError):
        handle.load_snapshot()


def test_file_lock_is_exclusive(tmp_path):
    path = tmp_path / "lock"
    first = FileLock(path, blocking=False)
    assert first.acquire()
    second = FileLock(path, blocking=False)
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()
