"""Issue 11, the command and http agents: what a step does with its processes, pipes,
files and bytes cannot hang wfctl, stretch a deadline, leak a secret or crash the runner.

- 2: a step that redirects or closes its stdout/stderr still has its timeout and cancel
  (the wait ends on the process's exit, not on the end of its pipes);
- 3: a FIFO, symlink or directory where wfctl reads a step's result or writes its log;
- 4: an http server that trickles bytes (one deadline per attempt), or answers 20 MB;
- 14: $WFCTL_OUTPUT is removed whatever the outcome; output is masked before it is cut;
- 18: values too large for a process's environment reach the step through files;
- 21: a failed command's error is the last line of its stderr;
- 26: a missing working directory is named.
(11, the disk filling while a step prints, is in test_faults.py.)

Everything runs through the installed `wfctl` in real processes; nothing sleeps to wait.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from lifecycle_helpers import (
    execution_dir, home, journal, lab_in, pid_alive, step_record, wait_for, wfctl, wfctl_json,
)
from servers import trickle_server

INLINE_LIMIT = 256 * 1024


@pytest.fixture
def lab(tmp_path):
    yield from lab_in(tmp_path)


def timed(*args, timeout: float = 60, code: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    result = wfctl(*args, code=code, timeout=timeout)
    return result, time.monotonic() - began


def only_execution() -> str:
    ids = [p.name for p in (home() / "executions").iterdir() if p.name.startswith("exec_")]
    assert len(ids) == 1, ids
    return ids[0]


def files_containing(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def scratch_files(execution_id: str) -> list[str]:
    """Files in the logs directory other than logs: $WFCTL_OUTPUT and values passed as files."""
    logs = execution_dir(execution_id) / "logs"
    return sorted(p.name for p in logs.iterdir() if not p.name.endswith(".log")) if logs.exists() else []


# -- 2: a step's pipes are not its lifetime ------------------------------------------------------
REDIRECTS = {
    "stdout-to-a-file": 'exec >"{root}/build.log"',
    "both-to-a-file": 'exec >"{root}/build.log" 2>&1',
    "both-closed": "exec >&- 2>&-",
}


@pytest.mark.parametrize("redirect", list(REDIRECTS), ids=list(REDIRECTS))
def test_a_step_that_redirects_its_output_still_times_out(lab, redirect):
    path = lab.workflow(f"""\
        name: redirector
        steps:
          - id: build
            timeout: 2
            run: |
              {lab.record("build")}
              {REDIRECTS[redirect].format(root=lab.root)}
              sleep 20
    """)
    result, elapsed = timed("execute", path, "--json", timeout=60)
    assert result.returncode == 1, result
    document = json.loads(result.stdout)
    assert document["status"] == "failed"
    error = step_record(document, "build")["error"]
    assert error["kind"] == "timeout" and error["message"] == "timed out after 2s.", error
    assert elapsed < 12, f"the step ran {elapsed:.1f}s with timeout 2"  # 2 s + 2 s grace + start-up
    pid = lab.pid("build")
    wait_for(lambda: not pid_alive(pid), timeout=10, what=f"the step's process {pid} to be gone")


def test_a_step_that_closed_its_pipes_is_cancelled_at_once(lab):
    path = lab.workflow(f"""\
        name: closer
        steps:
          - id: quiet
            run: |
              {lab.record("quiet")}
              exec >&- 2>&-
              {lab.started("quiet")}
              sleep 40
          - id: after
            run: touch {lab.q("after-ran")}
    """)
    runner = lab.spawn("execute", path, "--json")
    lab.wait_started("quiet")
    execution_id = lab.execution_id("quiet")
    began = time.monotonic()
    wfctl("cancel", execution_id, "--reason", "stop it", timeout=60)
    runner.wait(timeout=20)
    assert time.monotonic() - began < 15
    assert runner.returncode == 4, runner.stderr.read()
    document = json.loads(runner.stdout.read())
    assert document["status"] == "cancelled"
    assert step_record(document, "quiet")["status"] == "cancelled"
    assert not lab.path("after-ran").exists()
    pid = lab.pid("quiet")
    wait_for(lambda: not pid_alive(pid), timeout=10, what=f"the step's process {pid} to be gone")


def test_a_step_that_ends_while_a_grandchild_holds_its_pipes_completes_at_its_exit(lab):
    # Both pipes held by a daemon-like grandchild; the step itself ends at once.
    path = lab.workflow(f"""\
        name: holder
        steps:
          - id: start-daemon
            run: |
              sleep 60 &
              echo $! > {lab.q("pid-daemon")}
              echo started
    """)
    result, elapsed = timed("execute", path, "--json", timeout=60, code=0)
    assert step_record(json.loads(result.stdout), "start-daemon")["output"] == "started"
    assert elapsed < 10
    pid = lab.pid("daemon")
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the grandchild to be killed with the step's group")


def test_a_notification_command_that_leaves_a_child_holding_its_pipes_is_done_at_its_exit(lab):
    path = lab.workflow(f"""\
        name: notified
        notifications:
          command: 'cat > {lab.q("event.json")}; sleep 60 & echo $! > {lab.q("pid-notifier")}'
          on: [completed]
        steps:
          - id: one
            run: echo ok
    """)
    result, elapsed = timed("execute", path, "--json", timeout=60, code=0)
    document = json.loads(result.stdout)
    [sent] = [n for n in document.get("notifications", []) if n.get("transport") == "command"] or [None]
    assert sent is not None and sent["ok"] is True, document.get("notifications")
    assert elapsed < 8, f"wfctl waited {elapsed:.1f}s for the notifier's pipes"
    assert json.loads(lab.path("event.json").read_text())["event"] == "completed"


# -- 3: only regular files are read or written --------------------------------------------------
OUTPUT_TRAPS = {
    "fifo": ('mkfifo "$WFCTL_OUTPUT"', "a FIFO"),
    "symlink": ('ln -s /etc/hostname "$WFCTL_OUTPUT"', "a symbolic link"),
    "directory": ('mkdir "$WFCTL_OUTPUT"; echo secret > "$WFCTL_OUTPUT/x"', "a directory"),
}


@pytest.mark.parametrize("trap", list(OUTPUT_TRAPS), ids=list(OUTPUT_TRAPS))
def test_wfctl_output_that_is_not_a_regular_file_fails_the_step_without_blocking(lab, trap):
    command, kind = OUTPUT_TRAPS[trap]
    path = lab.workflow(f"""\
        name: output-trap
        steps:
          - id: trap
            run: '{command}; echo from-stdout'
    """)
    result, elapsed = timed("execute", path, "--json", timeout=30)
    assert result.returncode == 1, result
    assert elapsed < 10
    document = json.loads(result.stdout)
    error = step_record(document, "trap")["error"]
    assert error["kind"] == "error", error
    assert "$WFCTL_OUTPUT" in error["message"] and kind in error["message"], error
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert scratch_files(document["executionId"]) == []  # whatever the step made there is gone


def test_a_fifo_at_the_next_steps_log_fails_that_step_and_blocks_nothing(lab):
    path = lab.workflow("""\
        name: log-trap
        steps:
          - id: a
            run: mkfifo "$(dirname "$WFCTL_OUTPUT")/b.log"
          - id: b
            run: echo b-ran
    """)
    result, elapsed = timed("execute", path, "--json", timeout=30)
    assert result.returncode == 1, result
    assert elapsed < 10
    document = json.loads(result.stdout)
    error = step_record(document, "b")["error"]
    assert error["kind"] == "error" and "b.log" in error["message"] and "a FIFO" in error["message"], error
    # Reading the logs does not block on it either: one sentence, exit 1.
    logs = wfctl("logs", document["executionId"], "b", timeout=20, code=1)
    lines = logs.stderr.strip().splitlines()
    assert len(lines) == 1 and "b.log" in lines[0] and "not a regular file" in lines[0], logs.stderr


# -- 4: the http agent: one deadline per attempt, a bounded body ---------------------------------
@pytest.mark.parametrize("headers_too", [False, True], ids=["trickled-body", "trickled-headers"])
def test_an_http_agent_whose_server_trickles_bytes_times_out_on_time(lab, headers_too):
    with trickle_server(b"x" * 600, headers_too=headers_too, pause=0.2) as web:
        path = lab.workflow(f"""\
            name: trickle
            agents:
              slow: {{http: "{web.url}/answer"}}
            steps:
              - id: ask
                agent: slow
                task: anything
                timeout: 2
        """)
        result, elapsed = timed("execute", path, "--json", timeout=60)
    assert result.returncode == 1, result
    document = json.loads(result.stdout)
    error = step_record(document, "ask")["error"]
    assert error["kind"] == "timeout", error
    assert "2s" in error["message"], error
    assert elapsed < 10, f"the attempt took {elapsed:.1f}s with timeout 2 (the server trickles for 120 s)"


def test_an_http_agent_is_cancelled_while_its_server_trickles(lab):
    with trickle_server(b"x" * 600, pause=0.2) as web:
        path = lab.workflow(f"""\
            name: trickle-cancel
            agents:
              slow: {{http: "{web.url}/answer"}}
            steps:
              - id: ask
                agent: slow
                task: anything
        """)
        runner = lab.spawn("execute", path, "--json")
        web.wait_for(1, timeout=20)
        execution_id = wait_for(lambda: [p.name for p in (home() / "executions").glob("exec_*")], what="the execution")[0]
        wfctl("cancel", execution_id, timeout=60)
        runner.wait(timeout=20)
    assert runner.returncode == 4, runner.stderr.read()
    assert step_record(json.loads(runner.stdout.read()), "ask")["status"] == "cancelled"


RSS_HELPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"  # KiB on Linux
    "sys.exit(code)\n"
)


def test_a_twenty_megabyte_http_answer_is_streamed_to_the_log_and_capped_in_the_record(lab):
    import sys

    from servers import http_server

    body = b"0123456789abcdef" * (20 * 1024 * 1024 // 16)
    with http_server(body=body) as web:
        path = lab.workflow(f"""\
            name: big-answer
            agents:
              api: {{http: "{web.url}/big"}}
            steps:
              - id: ask
                agent: api
                task: anything
        """)
        measured = subprocess.run([sys.executable, "-c", RSS_HELPER, "wfctl", "execute", str(path), "-q"],
                                  capture_output=True, text=True, timeout=120)
    assert measured.returncode == 0, measured
    peak_mib = int(measured.stdout.split()[-1]) / 1024
    execution_id = only_execution()
    document = wfctl_json("execution", execution_id)
    output = step_record(document, "ask")["output"]
    assert isinstance(output, str)
    assert output.endswith(f"\n[output truncated: {len(body)} bytes in all; see wfctl logs]")
    assert output.startswith("0123456789abcdef") and len(output) < INLINE_LIMIT + 100
    # Journal and snapshot hold the capped copy, not 20 MB; the log holds every byte.
    assert journal(execution_id).stat().st_size < 2 * INLINE_LIMIT + 64 * 1024
    assert (execution_dir(execution_id) / "execution.json").stat().st_size < 2 * INLINE_LIMIT + 64 * 1024
    log = (execution_dir(execution_id) / "logs" / "ask.log").read_bytes()
    assert body in log
    print(f"\n20 MB http answer: wfctl peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 100, f"wfctl held the answer in memory: {peak_mib:.0f} MiB peak"


# -- 14: secrets never reach the data directory ---------------------------------------------------
SECRET = "hunter2-boundary-token"


@pytest.mark.parametrize("ending", ["fails", "times-out"])
def test_a_step_that_wrote_its_output_file_and_did_not_complete_leaves_no_trace_of_it(lab, monkeypatch, ending):
    monkeypatch.setenv("OUT_TOKEN", SECRET)
    tail = "exit 1" if ending == "fails" else "sleep 30"
    path = lab.workflow(f"""\
        name: leaky
        secrets:
          TOKEN: {{env: OUT_TOKEN}}
        steps:
          - id: leak
            timeout: 1
            run: 'printf "%s" "$TOKEN" > "$WFCTL_OUTPUT"; {tail}'
    """)
    result = wfctl("execute", path, "--json", code=1, timeout=60)
    document = json.loads(result.stdout)
    assert step_record(document, "leak")["status"] == "failed"
    assert scratch_files(document["executionId"]) == []
    assert files_containing(home(), SECRET.encode()) == []


@pytest.mark.parametrize("channel", ["output-file", "stdout"])
def test_a_secret_across_the_output_cap_is_masked_whole(lab, monkeypatch, channel):
    monkeypatch.setenv("CUT_TOKEN", SECRET)
    # All of the secret but its last character falls inside the first 256 KiB, and more
    # follows, so that the output is cut even once the secret is masked.
    filler = INLINE_LIMIT - len(SECRET) + 1
    target = '> "$WFCTL_OUTPUT"' if channel == "output-file" else ""
    path = lab.workflow(f"""\
        name: boundary
        secrets:
          TOKEN: {{env: CUT_TOKEN}}
        steps:
          - id: big
            run: '{{ head -c {filler} /dev/zero | tr "\\\\0" a; printf "%s" "$TOKEN"; head -c 1000 /dev/zero | tr "\\\\0" b; }} {target}'
    """)
    document = wfctl_json("execute", path)
    output = step_record(document, "big")["output"]
    assert output.startswith("aaaa") and "[output truncated" in output[-200:], output[-200:]
    assert output[filler:filler + 4] == "***b", output[filler - 5:filler + 10]
    assert files_containing(home(), SECRET[:-1].encode()) == []
    assert files_containing(home(), SECRET[: len(SECRET) // 2].encode()) == []


# -- 18: large values reach a step through files --------------------------------------------------
def test_an_input_over_128_kib_reaches_the_step_through_a_file(lab, tmp_path):
    big = {"blob": "x" * (200 * 1024)}
    (tmp_path / "big.json").write_text(json.dumps(big))
    path = lab.workflow("""\
        name: big-input
        steps:
          - id: size
            input: blob
            run: |
              test -z "${WFCTL_INPUT+set}" || { echo "WFCTL_INPUT is set" >&2; exit 9; }
              cp "$WFCTL_INPUT_FILE" "$LAB_COPY"
              stat -c %a "$WFCTL_INPUT_FILE"
    """)
    os.environ["LAB_COPY"] = str(lab.path("input-copy.json"))
    try:
        document = wfctl_json("execute", path, "--input", f"@{tmp_path / 'big.json'}")
    finally:
        del os.environ["LAB_COPY"]
    assert document["status"] == "completed", document.get("error")
    assert step_record(document, "size")["output"] == 600  # the file is private (0600)
    assert json.loads(lab.path("input-copy.json").read_text()) == big
    assert scratch_files(document["executionId"]) == []  # removed after the attempt


def test_large_template_values_and_loop_items_reach_the_step(lab):
    path = lab.workflow("""\
        name: big-values
        steps:
          - id: make
            run: python3 -c 'import json; print(json.dumps(["a" * 140000, "b" * 1000]))'
            output: blobs
          - id: first
            input: blobs
            run: printf '%s' "{{ blobs[0] }}" | wc -c
          - id: each
            type: loop
            items: blobs
            step:
              id: measure
              run: |
                if [ -n "${WFCTL_ITEM+set}" ]; then echo "env $(printf %s "$WFCTL_ITEM" | wc -c)"
                else echo "file $(wc -c < "$WFCTL_ITEM_FILE")"; fi
    """)
    document = wfctl_json("execute", path)
    assert document["status"] == "completed", document.get("error")
    assert step_record(document, "first")["output"] == 140000
    # The large item came through a file, the small one in the environment as before.
    assert step_record(document, "each")["output"] == ["file 140000", "env 1000"]
    assert scratch_files(document["executionId"]) == []


def test_an_env_value_too_large_for_any_process_is_one_clear_sentence(lab):
    path = lab.workflow("""\
        name: big-env
        steps:
          - id: make
            run: python3 -c 'print("z" * 200000)'
            output: blob
          - id: use
            input: blob
            env:
              DATA: "{{ blob }}"
            run: echo never
    """)
    document = wfctl_json("execute", path, code=1)
    error = step_record(document, "use")["error"]
    assert error["kind"] == "error", error
    assert "DATA" in error["message"] and "KiB" in error["message"] and "input" in error["message"], error
    assert "Argument list too long" not in error["message"]


# -- 21: a failed command's error line comes from stderr ---------------------------------------
def test_a_failed_commands_error_is_the_last_line_of_its_stderr_everywhere(lab):
    path = lab.workflow(f"""\
        name: deploy
        notifications:
          command: 'cat > {lab.q("event.json")}'
          on: [failed]
        steps:
          - id: deploy
            run: |
              echo "progress 1"
              echo "disk quota exceeded" >&2
              echo "" >&2
              echo "cleanup done"
              exit 3
    """)
    result = wfctl("execute", path, code=1, timeout=60)
    expected = "exited with code 3: disk quota exceeded"
    assert expected in result.stderr, result.stderr  # the live view
    execution_id = only_execution()
    document = wfctl_json("execution", execution_id)
    assert step_record(document, "deploy")["error"]["message"] == expected
    assert document["error"]["message"] == expected
    assert json.loads(lab.path("event.json").read_text())["error"]["message"] == expected
    # Every byte of both streams is still in the log.
    log = wfctl("logs", execution_id, "deploy").stdout
    for line in ("progress 1", "disk quota exceeded", "cleanup done"):
        assert line in log


def test_without_stderr_the_error_is_the_last_line_of_stdout(lab):
    path = lab.workflow("""\
        name: quiet-failure
        steps:
          - id: check
            run: 'echo "checking"; echo "3 tests failed"; exit 1'
    """)
    document = wfctl_json("execute", path, code=1)
    assert step_record(document, "check")["error"]["message"] == "exited with code 1: 3 tests failed"


# -- 26: a working directory that is not there is named ---------------------------------------
def test_a_missing_or_wrong_working_directory_is_named(lab, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    path = lab.workflow(f"""\
        name: cwds
        errorHandling: {{strategy: continue}}
        agents:
          builder: {{run: "echo built", cwd: "{tmp_path}/agent-dir-missing"}}
        steps:
          - id: step-missing
            cwd: {tmp_path}/step-dir-missing
            run: echo ran
          - id: step-file
            cwd: {tmp_path}/a-file
            run: echo ran
          - id: agent-missing
            agent: builder
            task: build
    """)
    document = wfctl_json("execute", path)
    expected = {
        "step-missing": f"the working directory {tmp_path}/step-dir-missing does not exist.",
        "step-file": f"the working directory {tmp_path}/a-file is not a directory.",
        "agent-missing": f"the working directory {tmp_path}/agent-dir-missing does not exist.",
    }
    for key, message in expected.items():
        error = step_record(document, key)["error"]
        assert error == {"kind": "error", "message": message, "exitCode": None}, (key, error)


# -- the library layer: waits, files, sizes -------------------------------------------------------
def _shell(command: str) -> subprocess.Popen:
    return subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def _supervised(command: str, **kwargs) -> tuple[str, bytes, float, subprocess.Popen]:
    from wfctl.processes import supervise

    proc = _shell(command)
    seen: list[bytes] = []
    began = time.monotonic()
    try:
        ended_by = supervise(proc, {proc.stdout.fileno(): seen.append, proc.stderr.fileno(): seen.append}, **kwargs)
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return ended_by, b"".join(seen), time.monotonic() - began, proc


def test_supervise_keeps_the_deadline_of_a_process_that_closed_its_pipes():
    ended_by, _, elapsed, proc = _supervised("exec >&- 2>&-; sleep 30", deadline=time.monotonic() + 0.5)
    assert ended_by == "timeout"
    assert elapsed < 5
    assert proc.returncode is not None  # terminated and reaped, not left behind


def test_supervise_stops_a_process_that_closed_its_pipes_on_cancel():
    ended_by, _, elapsed, proc = _supervised("exec >&- 2>&-; sleep 30", cancelled=lambda: True)
    assert ended_by == "cancelled" and elapsed < 5 and proc.returncode is not None


def test_supervise_ends_at_the_exit_of_a_process_whose_grandchild_holds_its_pipes(lab):
    ended_by, output, elapsed, proc = _supervised(f"sleep 30 & echo $! > {lab.q('pid-grandchild')}; echo done")
    assert ended_by == "exit" and proc.returncode == 0
    assert output == b"done\n"
    assert elapsed < 5
    pid = lab.pid("grandchild")
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the grandchild to be killed with the group")


def test_run_with_deadline_ends_a_helper_that_never_exits():
    from wfctl.processes import run_with_deadline

    began = time.monotonic()
    finished = run_with_deadline(["/bin/sh", "-c", "exec >&- 2>&-; sleep 30"], b"{}", timeout=0.5)
    assert finished.ended_by == "timeout" and time.monotonic() - began < 5


def test_run_with_deadline_keeps_only_the_tail_of_stderr():
    from wfctl.processes import TAIL_BYTES, run_with_deadline

    finished = run_with_deadline(
        ["/bin/sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'the last words' >&2; exit 4"],
        b"", timeout=30,
    )
    assert finished.code == 4
    assert len(finished.stderr.data) <= TAIL_BYTES
    assert finished.stderr.last_line() == "the last words"


def test_only_regular_files_are_opened_and_never_with_a_block(tmp_path):
    from wfctl.stepfiles import NotRegularFile, read_regular

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("content")
    os.symlink(tmp_path / "file", tmp_path / "link")
    for name, kind in (("fifo", "a FIFO"), ("link", "a symbolic link")):
        with pytest.raises(NotRegularFile) as raised:
            read_regular(tmp_path / name, 100)
        assert raised.value.kind == kind
    with pytest.raises(NotRegularFile):
        read_regular(tmp_path, 100)
    assert read_regular(tmp_path / "link", 100, follow=True) == b"content"  # a user's own path
    assert read_regular(tmp_path / "file", 3) == b"con"  # bounded


def _context(tmp_path: Path, **kwargs):
    from wfctl.agents import AttemptContext

    return AttemptContext(step_key="s", step_id="s", task=None, inputs={}, execution_id="exec_1",
                          workflow_id="wf_1", attempt=1, scope={}, log_dir=tmp_path / "logs", **kwargs)


def test_fit_for_exec_moves_large_values_to_files_and_names_what_cannot_fit(tmp_path):
    from wfctl.agents import ENV_VALUE_LIMIT, Scratch, fit_for_exec

    ctx = _context(tmp_path)
    scratch = Scratch(ctx)
    big = "i" * (ENV_VALUE_LIMIT + 1)
    env = {"WFCTL_INPUT": big, "WFCTL_T_0": "t" * (ENV_VALUE_LIMIT + 1), "SMALL": "s"}
    argv = fit_for_exec(["/bin/sh", "-c", 'printf %s "$WFCTL_T_0"'], env, ["WFCTL_T_0"], scratch)
    assert "WFCTL_INPUT" not in env and Path(env["WFCTL_INPUT_FILE"]).read_text() == big
    assert oct(os.stat(env["WFCTL_INPUT_FILE"]).st_mode & 0o777) == "0o600"
    assert "WFCTL_T_0" not in env and env["SMALL"] == "s"
    # The shell reads the template value back unchanged, trailing newlines included.
    printed = subprocess.run(argv, env=env, capture_output=True, timeout=30).stdout
    assert printed == b"t" * (ENV_VALUE_LIMIT + 1)
    scratch.remove()
    assert list((tmp_path / "logs").iterdir()) == []
    with pytest.raises(ValueError, match="environment variable HUGE is 200 KiB"):
        fit_for_exec(["/bin/true"], {"HUGE": "h" * 200 * 1024}, [], Scratch(ctx))
    with pytest.raises(ValueError, match="argument 1 of the command is 200 KiB"):
        fit_for_exec(["/bin/echo", "a" * 200 * 1024], {}, [], Scratch(ctx))


def test_an_output_file_is_masked_before_it_is_cut(tmp_path):
    from wfctl.agents import INLINE_OUTPUT_LIMIT, _read_output_file
    from wfctl.masking import Masker

    secret = "a-secret-value-here"
    path = tmp_path / "out"
    # Many secrets first (each masked shorter), then one across the cut.
    head = (secret + "-") * 1000
    filler = "f" * (INLINE_OUTPUT_LIMIT - len(head) - 5)
    path.write_text(head + filler + secret + "tail" * 10000)
    text = _read_output_file(path, Masker([secret]))
    assert secret[:5] not in text.replace("***", "")
    assert text.endswith("bytes were written to $WFCTL_OUTPUT]")


def test_a_nul_in_a_value_passed_to_a_step_is_one_clear_sentence(lab):
    path = lab.workflow("""\
        name: nul-item
        steps:
          - id: make
            run: printf '["ok", "bad\\\\u0000value"]'
            output: words
          - id: each
            type: loop
            items: words
            step:
              id: say
              run: 'printf "%s" "$WFCTL_ITEM"'
    """)
    result = wfctl("execute", path, "--json", code=1, timeout=60)
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    document = json.loads(result.stdout)
    [first, second] = step_record(document, "each")["steps"]
    assert first["status"] == "completed"
    assert second["error"]["kind"] == "error" and "WFCTL_ITEM" in second["error"]["message"], second["error"]
    assert "NUL" in second["error"]["message"]


def test_a_webhook_that_trickles_its_answer_does_not_hold_the_end_of_the_run(lab):
    with trickle_server(b"x" * 600, headers_too=True, pause=0.2) as web:
        path = lab.workflow(f"""\
            name: slow-hook
            notifications:
              webhook: "{web.url}/hook"
              on: [completed]
            steps:
              - id: one
                run: echo ok
        """)
        result, elapsed = timed("execute", path, "--json", timeout=60, code=0)
    [sent] = json.loads(result.stdout)["notifications"]
    assert sent["ok"] is False and "did not answer within 10s" in sent["error"], sent
    assert elapsed < 25, f"the run ended {elapsed:.1f}s after it started (notifications time out after 10 s)"
