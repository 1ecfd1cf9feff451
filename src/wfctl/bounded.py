"""Running thunks at most N at a time: the one implementation behind parallel steps,
loops, a team's `all` strategy and graph scheduling.

A `Source` hands out work: `next(failed)` returns the next job to start now, `WAIT`
when nothing can start until a running job ends, or None when nothing more will ever
start. Once a job has failed, `next` is asked with `failed=True` and a source returns
only what may start after a failure (a static list: nothing; a graph: the steps whose
`depends` accept the failure); the running jobs finish. `finished(token, result)` is
called, under the runner's lock, as each job ends.

With a limit of 1 the jobs run inline in the calling thread: a plain chain costs no
thread at all.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Protocol

WAIT = object()  # nothing can start now; a job that is running may change that

Job = tuple[Any, Callable[[], Any]]  # (token, thunk); the thunk returns a result with `.ok`


class _Crashed:
    ok = False


_CRASHED = _Crashed()


class Source(Protocol):
    size: int  # how many jobs there are at most (no more threads than that)

    def next(self, failed: bool) -> Job | object | None:
        ...

    def finished(self, token: Any, result: Any) -> None:
        ...


class ListSource:
    """`count` jobs in order, `run(position)` each; after a failure nothing new starts.
    A job's thunk is made when it is taken: a loop over a million items holds no list
    of a million closures before its first item runs."""

    def __init__(self, count: int, run: Callable[[int], Any]) -> None:
        self.size = count
        self.results: list[Any] = [None] * count
        self._run = run
        self._position = 0

    def next(self, failed: bool) -> Job | None:
        if failed or self._position >= self.size:
            return None
        position = self._position
        self._position += 1
        return position, lambda: self._run(position)

    def finished(self, token: Any, result: Any) -> None:
        self.results[token] = result


def run_bounded(
    source: Source,
    limit: int,
    *,
    stopped: Callable[[], bool],
    on_failure: Callable[[Any], None] | None = None,
    on_crash: Callable[[BaseException], Any] | None = None,
) -> None:
    """Run the source's jobs, at most `limit` at once, until it has none left that can
    start (or `stopped()`: a cancel). `on_failure(result)` is called as each job fails;
    `on_crash(error)` turns a job that raised into its result (threads only: inline, a
    bug propagates as it would anywhere else)."""
    if limit <= 1 or source.size <= 1:
        _run_inline(source, stopped, on_failure)
    else:
        _run_threads(source, min(limit, source.size), stopped, on_failure, on_crash)


def _run_inline(source: Source, stopped: Callable[[], bool], on_failure: Callable[[Any], None] | None) -> None:
    failed = False
    while not stopped():
        job = source.next(failed)
        if job is None or job is WAIT:  # nothing runs that could unblock a WAIT
            return
        token, thunk = job
        result = thunk()
        source.finished(token, result)
        if not result.ok:
            failed = True
            if on_failure is not None:
                on_failure(result)


def _run_threads(
    source: Source,
    workers: int,
    stopped: Callable[[], bool],
    on_failure: Callable[[Any], None] | None,
    on_crash: Callable[[BaseException], Any] | None,
) -> None:
    condition = threading.Condition()
    state = {"running": 0, "failed": False, "done": False}

    def take() -> Job | None:
        """The next job for this worker, or None when the worker should end."""
        with condition:
            while True:
                if state["done"] or stopped():
                    return None
                job = source.next(state["failed"])
                if job is None or (job is WAIT and state["running"] == 0):
                    state["done"] = True
                    condition.notify_all()
                    return None
                if job is WAIT:
                    condition.wait()
                    continue
                state["running"] += 1
                return job

    def worker() -> None:
        while True:
            job = take()
            if job is None:
                return
            token, thunk = job
            try:
                result = thunk()
            except Exception as err:  # a bug must fail one job, not leave the run hanging
                result = on_crash(err) if on_crash is not None else _CRASHED
            with condition:
                state["running"] -= 1
                source.finished(token, result)
                if not result.ok:
                    state["failed"] = True
                    if on_failure is not None:
                        on_failure(result)
                condition.notify_all()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
