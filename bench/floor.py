"""The floors of the benchmark: what the work costs with no engine around it.

    python floor.py KIND N OUT.json

KIND is one of:
  shell       subprocess.run("true", shell=True), N times in a row
  exec        subprocess.run(["true"]), N times in a row
  shell-2t    N × subprocess.run("true", shell=True) on a pool of 2 threads
  exec-2t     N × subprocess.run(["true"]) on a pool of 2 threads
  noop-call   N calls of a Python function that does nothing

Writes {"seconds": <time of the N operations alone>, "n": N} to OUT.json.
Stdlib only.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def _noop(ctx=None):
    return None


def main() -> None:
    kind, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if kind in ("shell", "shell-2t"):
        def one(_=None):
            subprocess.run("true", shell=True, check=True)
    elif kind in ("exec", "exec-2t"):
        def one(_=None):
            subprocess.run(["true"], check=True)
    elif kind != "noop-call":
        raise SystemExit(f"unknown floor kind {kind!r}")

    start = time.perf_counter()
    if kind == "noop-call":
        call = _noop
        for _ in range(n):
            call(None)
    elif kind.endswith("-2t"):
        with ThreadPoolExecutor(max_workers=2) as pool:
            for _ in pool.map(one, range(n)):
                pass
    else:
        for _ in range(n):
            one()
    seconds = time.perf_counter() - start
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"seconds": seconds, "n": n}, handle)


if __name__ == "__main__":
    main()
