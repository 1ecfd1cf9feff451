"""Executors (src/wfctl/executors/): the protocol the engine uses, and what the Dask
executor ships to its workers.

The Dask worker side must run where wfctl is not installed: its code travels by value
(cloudpickle), process-group handling (procgroup.py) included. This is checked in a
fresh interpreter in which `import wfctl` fails.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cloudpickle

from wfctl.agents import AttemptContext
from wfctl.executors import open_executor
from wfctl.executors.local import LocalExecutor

WORKER = textwrap.dedent("""\
    import subprocess, sys, threading
    sys.modules["wfctl"] = None  # any import of wfctl now fails, as on a worker without it
    import cloudpickle
    remote_attempt = cloudpickle.loads(sys.stdin.buffer.read())
    procgroup = remote_attempt.__globals__["_run_here"].__globals__["procgroup"]
    # A step with a grandchild, stopped the way a worker stops a cancelled step.
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 30 & sleep 30"], start_new_session=True)
    exited = threading.Event()
    threading.Thread(target=lambda: (proc.wait(), exited.set()), daemon=True).start()
    procgroup.terminate_group(proc, 0.5, exited=exited.wait)
    print(proc.returncode)
""")


def test_the_dask_worker_side_needs_no_wfctl(tmp_path):
    from wfctl import procgroup
    from wfctl.executors import dask

    dask.ship_by_value(cloudpickle)
    try:
        data = cloudpickle.dumps(dask.remote_attempt)
    finally:
        for module in (dask, procgroup):  # leave cloudpickle as it was for the other tests
            try:
                cloudpickle.unregister_pickle_by_value(module)
            except ValueError:  # it was not registered
                pass
    result = subprocess.run([sys.executable, "-c", WORKER], input=data, capture_output=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "-15"  # ended by SIGTERM from terminate_group


def test_local_is_the_default_executor_and_runs_here(tmp_path):
    executor = open_executor("local")
    assert isinstance(executor, LocalExecutor) and executor.runs_in_process
    assert isinstance(open_executor(None), LocalExecutor)
    ctx = AttemptContext(step_key="s", step_id="s", task="hello", inputs={"a": 1}, execution_id="exec_1",
                         workflow_id="wf_1", attempt=1, scope={}, log_dir=tmp_path)
    outcome = executor.run({}, ctx)  # {} is echo
    assert outcome.ok and outcome.output == {"task": "hello", "input": {"a": 1}}
    executor.close()
