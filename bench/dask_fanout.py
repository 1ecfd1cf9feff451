"""Bench: a parallel fan-out of short steps, local executor vs a 4-worker Dask cluster.

    python bench/dask_fanout.py                      # 200 steps of `sleep 0.2`, maxConcurrency 4
    python bench/dask_fanout.py --steps 8 --sleep 0  # a smoke run

Both runs go through the installed `wfctl` script (in a subprocess, with a temporary
WFCTL_HOME). The Dask run uses a `distributed.LocalCluster` of 4 single-threaded
worker processes on 127.0.0.1. With concurrency c, the ideal run time is
steps × sleep / c; the overhead per step is what each step costs beyond its sleep,
(run − ideal) × c / steps. "run" is the execution's own duration (startedAt →
completedAt); "wall" adds the CLI's start-up and, for Dask, connecting to the scheduler.
Needs `pip install -e '.[dask]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path


def workflow(steps: int, sleep: float, concurrency: int) -> str:
    lines = [
        "name: dask-fanout",
        "steps:",
        "  - id: fan-out",
        "    type: parallel",
        f"    maxConcurrency: {concurrency}",
        "    steps:",
    ]
    for number in range(steps):
        lines += [f"      - id: s{number}", f"        run: sleep {sleep:g}"]
    return "\n".join(lines) + "\n"


def wfctl(*args: str, env: dict) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "wfctl"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)


def run_once(path: Path, executor: str, env: dict) -> dict:
    started = time.monotonic()
    result = wfctl("execute", str(path), "--executor", executor, "--json", env=env)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"wfctl execute --executor {executor} exited {result.returncode}:\n{result.stderr}")
    document = json.loads(result.stdout)
    run = (_when(document["completedAt"]) - _when(document["startedAt"])).total_seconds()
    workers = {
        attempt.get("worker")
        for record in document["steps"][0].get("steps", [])
        for attempt in record.get("attempts", [])
    }
    return {"wall": wall, "run": run, "workers": len(workers - {None})}


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def measure(steps: int = 200, sleep: float = 0.2, concurrency: int = 4, workers: int = 4) -> list[dict]:
    """Run the fan-out with the local executor and on a `workers`-process LocalCluster.

    One row per executor: executor, wall, run, ideal, overhead_per_step_ms, workers
    (how many distinct workers ran steps). Importable by a bench suite.
    """
    from distributed import Client, LocalCluster

    results = []
    with tempfile.TemporaryDirectory(prefix="wfctl-bench-") as scratch:
        root = Path(scratch)
        env = dict(os.environ, WFCTL_HOME=str(root / "home"), WFCTL_CONFIG=str(root / "config.toml"), NO_COLOR="1")
        path = root / "fanout.yaml"
        path.write_text(workflow(steps, sleep, concurrency))
        results.append({"executor": "local", **run_once(path, "local", env)})
        with LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", worker_dashboard_address=None,
        ) as cluster:
            with Client(cluster.scheduler_address, set_as_default=False) as client:
                client.wait_for_workers(workers, timeout=60)
            port = cluster.scheduler_address.rsplit(":", 1)[1]
            label = f"dask ({workers} workers)"
            results.append({"executor": label, **run_once(path, f"dask://127.0.0.1:{port}", env)})
    ideal = steps * sleep / concurrency
    for result in results:
        result["ideal"] = ideal
        result["overhead_per_step_ms"] = (result["run"] - ideal) * concurrency / steps * 1000
    return results


def render(results: list[dict], steps: int, sleep: float, concurrency: int) -> str:
    ideal = steps * sleep / concurrency
    lines = [
        f"{steps} steps of sleep {sleep:g}s, maxConcurrency {concurrency}: ideal {ideal:.2f}s",
        f"{'executor':<20} {'wall s':>8} {'run s':>8} {'vs ideal':>9} {'overhead/step':>14} {'workers used':>13}",
    ]
    for result in results:
        ratio = f"{result['run'] / ideal:.2f}x" if ideal > 0 else "-"
        lines.append(
            f"{result['executor']:<20} {result['wall']:>8.2f} {result['run']:>8.2f} {ratio:>9} "
            f"{result['overhead_per_step_ms']:>11.1f} ms {result['workers'] or '-':>13}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=4, help="maxConcurrency of the parallel step")
    parser.add_argument("--workers", type=int, default=4, help="Dask worker processes (one thread each)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    options = parser.parse_args(argv)
    results = measure(options.steps, options.sleep, options.concurrency, options.workers)
    if options.json:
        print(json.dumps({"steps": options.steps, "sleep": options.sleep, "concurrency": options.concurrency,
                          "workers": options.workers, "results": results}, indent=2))
    else:
        print(render(results, options.steps, options.sleep, options.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
