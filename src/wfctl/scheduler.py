"""`wfctl scheduler`: one foreground process that starts scheduled runs on time.

What is scheduled: every registered workflow whose current definition has `schedule:`
(schedules.py parses it). Each run is a normal execution, prepared and started in the
background exactly as `wfctl execute --detach` does, with `trigger: "schedule"` and the
run time it was due at (`scheduledAt`) in its document.

The state (`scheduler/state.json` in the data directory) is what makes a crash or a
`kill -9` cost nothing:

- per schedule, the `anchor`: the latest run time already dealt with (started, queued,
  skipped or missed). Nothing at or before it is ever started again, which is also why
  a wall clock that jumps backwards fires nothing twice;
- per schedule, the `intent`: a run about to start, with the execution id chosen for it,
  written *before* the execution is made. A scheduler that restarts finds it and looks
  for that execution: absent, it is made; made but never started, it is started; started,
  it is only recorded. So a run is neither lost nor started twice;
- `waiting`: runs that are due but wait for an earlier run to end (overlap: queue, and
  late runs); per workflow, `paused` and the scheduled executions still `active`.

The scheduler and `wfctl schedule pause/resume` both change the file: every change is a
read-change-write under `scheduler/state.lock`, written atomically. The running
scheduler holds `scheduler/lock` (with its pid) for its whole life, so a second one on
the same data directory is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from wfctl import faults
from wfctl.errors import Conflict, StoreError, UsageError, WfctlError
from wfctl.schedules import (
    UTC,
    Schedule,
    entries_of,
    iso,
    local_text,
    parse_moment,
    plan,
    schedules_of,
)
from wfctl.store import FileLock, Store, is_workflow_id, read_json, write_json_atomic
from wfctl.workspace import Workspace

STATE_VERSION = 1
TICK_SECONDS = 1.0  # the longest sleep: edits, pauses and clock jumps are seen within it
RESCAN_SECONDS = 10.0  # workflows are re-read at least this often (and whenever the directory changes)
RETRY_SECONDS = 5.0  # a run that could not start (disk full, ...) is tried again after this
STATE_LOCK_SECONDS = 10.0  # the bound of a wait for the state file's lock
LOCK_TRIES = 10
HISTORY = 20  # outcomes kept per schedule
MAX_QUEUED = 10  # runs waiting behind a running one (overlap: queue), beyond maxCatchup
STARTING_SECONDS = 30.0  # a run launched this recently whose runner has not taken it yet counts as running
REPEAT_LOG_SECONDS = 60.0  # the same failure is logged again at most this often

Log = Callable[[str], None]


# -- the state file -------------------------------------------------------------------------
def state_dir(store: Store) -> Path:
    return store.root / "scheduler"


def state_path(store: Store) -> Path:
    return state_dir(store) / "state.json"


def new_state() -> dict:
    return {"version": STATE_VERSION, "schedules": {}, "workflows": {}}


def load_state(store: Store) -> dict:
    """The scheduler's state; a fresh one when there is none yet."""
    path = state_path(store)
    try:
        state = read_json(path)
    except FileNotFoundError:
        return new_state()
    if not (isinstance(state, dict) and isinstance(state.get("schedules"), dict)
            and isinstance(state.get("workflows"), dict)):
        raise StoreError(f"{path} is not a scheduler state file; move it away to start afresh "
                         "(the schedules then start from now).")
    return state


@contextmanager
def state_transaction(store: Store) -> Iterator[dict]:
    """Read, change and write the state under its lock; nothing is written when the
    body raises. The scheduler and `wfctl schedule pause/resume` change it side by side."""
    from wfctl.store import ensure_dir

    ensure_dir(state_dir(store))
    lock = FileLock(state_dir(store) / "state.lock", blocking=False)
    deadline = time.monotonic() + STATE_LOCK_SECONDS
    while not lock.acquire():
        if time.monotonic() >= deadline:
            raise StoreError(f"{state_dir(store) / 'state.lock'} stayed locked for {STATE_LOCK_SECONDS:g}s; "
                             "another wfctl process is stuck changing the scheduler state.")
        time.sleep(0.01)
    try:
        state = load_state(store)
        yield state
        write_json_atomic(state_path(store), state, fault="scheduler")
    finally:
        lock.release()


def schedule_state(state: dict, key: str, workflow_id: str) -> dict:
    entry = state["schedules"].setdefault(key, {"workflowId": workflow_id})
    entry.setdefault("waiting", [])
    entry.setdefault("counts", {"started": 0, "skipped": 0, "missed": 0, "errors": 0})
    entry.setdefault("history", [])
    return entry


def workflow_state(state: dict, workflow_id: str) -> dict:
    entry = state["workflows"].setdefault(workflow_id, {})
    entry.setdefault("active", [])
    return entry


def remember(entry: dict, outcome: str, scheduled_at: str | None, **details: Any) -> None:
    """One line of a schedule's history (the newest HISTORY are kept) and its count."""
    record = {"scheduledAt": scheduled_at, "outcome": outcome, "at": iso(datetime.now(UTC)), **details}
    entry["history"] = (entry.get("history") or [])[-(HISTORY - 1):] + [record]
    counts = entry.setdefault("counts", {})
    count_key = {"started": "started", "skipped": "skipped", "missed": "missed", "error": "errors"}[outcome]
    counts[count_key] = int(counts.get(count_key, 0)) + int(details.get("count", 1))
    if outcome == "started":
        entry["lastRun"] = {"executionId": details.get("executionId"), "scheduledAt": scheduled_at}
    elif outcome == "skipped":
        entry["lastSkipped"] = record
    elif outcome == "error":
        entry["lastError"] = record


# -- the scheduler's own lock ---------------------------------------------------------------
@contextmanager
def scheduler_lock(store: Store) -> Iterator[None]:
    """Held by the running scheduler for its whole life; a second one is refused."""
    from wfctl.store import ensure_dir

    ensure_dir(state_dir(store))
    path = state_dir(store) / "lock"
    lock = FileLock(path, blocking=False)
    for _ in range(LOCK_TRIES):  # `wfctl schedules` probes the lock for an instant
        if lock.acquire():
            break
        time.sleep(0.02)
    else:
        raise Conflict(f"another scheduler (pid {_holder(path)}) is already running for the data directory "
                       f"{store.root}; stop it first, or set WFCTL_HOME to another data directory.")
    try:
        os.ftruncate(lock.fd, 0)
        os.pwrite(lock.fd, json.dumps({"pid": os.getpid(), "startedAt": time.time()}).encode(), 0)
        yield
    finally:
        lock.release()


def _holder(path: Path) -> str:
    try:
        return str(json.loads(path.read_text()).get("pid", "?"))
    except (OSError, ValueError):
        return "?"


def running_scheduler(store: Store) -> int | None:
    """The pid of the scheduler running on this data directory, or None."""
    path = state_dir(store) / "lock"
    if not path.exists():
        return None
    lock = FileLock(path, blocking=False)
    if lock.acquire():
        lock.release()
        return None
    holder = _holder(path)
    return int(holder) if holder.isdigit() else -1


# -- which workflows are scheduled ----------------------------------------------------------
@dataclass
class Found:
    """The schedules of the registered workflows, and the workflows that cannot be read."""

    schedules: list[Schedule] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # workflow id → sentence
    ids: set[str] = field(default_factory=set)  # every registered workflow id


def find_schedules(store: Store) -> Found:
    """Every schedule of every registered workflow (its current definition)."""
    found = Found()
    try:
        names = sorted(os.listdir(store.workflows_dir))
    except FileNotFoundError:
        return found
    for name in names:
        workflow_id = name[:-5]
        if not name.endswith(".json") or not is_workflow_id(workflow_id):
            continue
        found.ids.add(workflow_id)
        try:
            record = read_json(store.workflows_dir / name)
        except FileNotFoundError:
            continue
        except StoreError as err:
            found.problems[workflow_id] = f"{err.message.rstrip('.')}; if it has schedules, they are skipped"
            continue
        definition = record.get("definition") if isinstance(record, dict) else None
        if not isinstance(definition, dict) or "schedule" not in definition:
            continue
        label = definition.get("name") if isinstance(definition.get("name"), str) else workflow_id
        try:
            found.schedules.extend(schedules_of(definition, workflow_id))
        except ValueError as err:
            found.problems[workflow_id] = (f"workflow '{label}' ({workflow_id}): {err}; its schedules are skipped "
                                           "until it is fixed (wfctl create --update FILE)")
    return found


# -- the clock ------------------------------------------------------------------------------
class Clock:
    """The wall clock, possibly shifted to start at another time (`--now`, for tests)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.offset = (start - datetime.now(UTC)) if start is not None else timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


# -- the loop -------------------------------------------------------------------------------
class Scheduler:
    """Looks at every schedule about once a second and starts what is due."""

    def __init__(self, workspace: Workspace, clock: Clock, log: Log, stop: threading.Event | None = None) -> None:
        self.workspace = workspace
        self.store = workspace.store
        self.clock = clock
        self.log = log
        self.stop = stop or threading.Event()
        self._found = Found()
        self._scanned_at = -RESCAN_SECONDS
        self._scanned_mtime: int | None = None
        self._retry_at: dict[str, float] = {}  # schedule key → monotonic time of its next try
        self._said: dict[str, tuple[str, float]] = {}  # topic → (message, when) of the last log line

    # -- running -----------------------------------------------------------------------------
    def run(self, *, once: bool = False, until: datetime | None = None, stopped_by: list[str] | None = None) -> None:
        """Look at the schedules until stopped (or once, or until the clock reaches `until`)."""
        self.store.init()
        with scheduler_lock(self.store):
            load_state(self.store)  # a state file that cannot be read stops the start, not a tick
            found = self.discover()
            self.log(f"scheduler started (pid {os.getpid()}) on {self.store.root}: "
                     f"{len(found.schedules)} schedule{'s' if len(found.schedules) != 1 else ''}")
            while not self.stop.is_set():
                now = self.clock.now()
                wait = self.safe_tick(now)
                if once or (until is not None and now >= until):
                    break
                if until is not None:
                    wait = min(wait, max((until - now).total_seconds(), 0.0))
                self.stop.wait(min(max(wait, 0.01), TICK_SECONDS))
        why = f" by {stopped_by[0]}" if stopped_by else ""
        self.log(f"scheduler stopped{why}; runs already started go on")

    def safe_tick(self, now: datetime) -> float:
        """One look; a failure is reported and the next look comes as usual: the
        scheduler must outlive a full disk or a broken workflow."""
        try:
            return self.tick(now)
        except WfctlError as err:
            self.say("tick", f"{err.message.rstrip('.')}; trying again")
        except OSError as err:
            self.say("tick", f"{err.strerror or err}; trying again")
        except Exception as err:  # a bug must not stop every other schedule
            self.say("tick", f"internal error: {type(err).__name__}: {err}; trying again")
        return TICK_SECONDS

    def tick(self, now: datetime) -> float:
        """Look at every schedule once; returns the seconds until something is due."""
        found = self.discover()
        wait = TICK_SECONDS
        for schedule in found.schedules:
            if self.stop.is_set():
                break
            try:
                wait = min(wait, self.look(schedule, now))
            except (WfctlError, OSError) as err:  # this schedule waits; the others go on
                message = getattr(err, "message", None) or getattr(err, "strerror", None) or str(err)
                self.say(schedule.key, f"{self.name(schedule)}: {message.rstrip('.')}; trying again")
        return wait

    # -- discovery ---------------------------------------------------------------------------
    def discover(self) -> Found:
        """The scheduled workflows, re-read when the workflows directory changes (and every
        RESCAN_SECONDS, for a file edited in place)."""
        try:
            mtime = os.stat(self.store.workflows_dir).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        fresh = time.monotonic() - self._scanned_at < RESCAN_SECONDS
        if fresh and mtime == self._scanned_mtime:
            return self._found
        found = find_schedules(self.store)
        for workflow_id, problem in found.problems.items():
            self.say(f"problem:{workflow_id}", problem, repeat=False)
        for workflow_id in set(self._found.problems) - set(found.problems):
            self._said.pop(f"problem:{workflow_id}", None)
        if {s.key for s in found.schedules} != {s.key for s in self._found.schedules} or not self._found.ids:
            self.forget_removed(found)
        self._found, self._scanned_at, self._scanned_mtime = found, time.monotonic(), mtime
        return found

    def forget_removed(self, found: Found) -> None:
        """Drop the state of schedules that no longer exist (their workflow was deleted, or
        the entry removed or changed). Workflows that cannot be read keep theirs."""
        live = {s.key for s in found.schedules}
        state = load_state(self.store)
        gone = [key for key, entry in state["schedules"].items()
                if key not in live and entry.get("workflowId") not in found.problems]
        if not gone:
            return
        with state_transaction(self.store) as state:
            for key in gone:
                entry = state["schedules"].pop(key, None) or {}
                if entry.get("intent"):
                    self.log(f"{key}: the schedule was removed; its run of "
                             f"{entry['intent'].get('scheduledAt')} was not started")
            for workflow_id in list(state["workflows"]):
                if workflow_id not in found.ids:
                    del state["workflows"][workflow_id]

    # -- one schedule ------------------------------------------------------------------------
    def look(self, schedule: Schedule, now: datetime) -> float:
        """Start, queue or skip what is due of one schedule; seconds until its next run time."""
        state = load_state(self.store)
        entry = state["schedules"].get(schedule.key)
        if entry is None or not entry.get("anchor"):
            return self.first_sight(schedule, now)
        if entry.get("intent") and not self.finish_intent(schedule, entry["intent"]):
            return RETRY_SECONDS
        if (state["workflows"].get(schedule.workflow_id) or {}).get("paused"):
            return self.skip_while_paused(schedule, now)
        anchor = parse_moment(entry["anchor"])
        decision = plan(schedule, anchor, now)
        if decision.anchor is not None:
            self.take(schedule, decision)
        self.start_waiting(schedule)
        return self.seconds_to_next(schedule, max(now, decision.anchor or anchor), now)

    def first_sight(self, schedule: Schedule, now: datetime) -> float:
        """A schedule seen for the first time starts counting from now: its past run times
        are not missed runs."""
        with state_transaction(self.store) as state:
            entry = schedule_state(state, schedule.key, schedule.workflow_id)
            entry.setdefault("anchor", iso(now))
        upcoming = schedule.times_after(now, 1)
        when = local_text(upcoming[0], schedule.zone) if upcoming else "never"
        self.log(f"{self.name(schedule)}: scheduled, first run at {when}")
        return self.seconds_to_next(schedule, now, now)

    def seconds_to_next(self, schedule: Schedule, after: datetime, now: datetime) -> float:
        upcoming = schedule.times_after(after, 1)
        if not upcoming:
            return TICK_SECONDS
        return (upcoming[0] - now).total_seconds() + schedule.delay(upcoming[0])

    def skip_while_paused(self, schedule: Schedule, now: datetime) -> float:
        """A paused workflow's due runs are skipped, not kept for later."""
        entry = load_state(self.store)["schedules"].get(schedule.key) or {}
        _times, count = schedule.due(parse_moment(entry["anchor"]), now, 1)
        if not count and not entry.get("waiting"):
            return TICK_SECONDS
        with state_transaction(self.store) as state:
            entry = schedule_state(state, schedule.key, schedule.workflow_id)
            times, count = schedule.due(parse_moment(entry["anchor"]), now, 1)
            skipped = [item["scheduledAt"] for item in entry["waiting"]] + [iso(moment) for moment in times]
            total = count + len(entry["waiting"])
            if times:
                entry["anchor"] = iso(times[-1])
            entry["waiting"] = []
            if total:
                remember(entry, "skipped", skipped[-1], reason="paused", count=total)
        if total:
            more = f" and {total - 1} more" if total > 1 else ""
            self.log(f"{self.name(schedule)}: paused: skipped the run of {self.when(schedule, skipped[-1])}{more}")
        return TICK_SECONDS

    def take(self, schedule: Schedule, decision: Any) -> None:
        """Record a plan: the anchor moves to the newest due time, the chosen runs join
        the waiting line, the others are counted as missed."""
        with state_transaction(self.store) as state:
            entry = schedule_state(state, schedule.key, schedule.workflow_id)
            if entry.get("anchor") and parse_moment(entry["anchor"]) >= decision.anchor:
                return  # another look got here first
            entry["anchor"] = iso(decision.anchor)
            room = max(MAX_QUEUED, schedule.max_catchup) - len(entry["waiting"])
            queued = [(moment, late) for moment, late in decision.runs][: max(room, 0)]
            full = decision.runs[len(queued):]
            for moment, late in queued:
                entry["waiting"].append({"scheduledAt": iso(moment), "late": late})
            if decision.missed:
                remember(entry, "missed", iso(decision.anchor), count=decision.missed, catchup=schedule.catchup)
            for moment, _late in full:
                remember(entry, "skipped", iso(moment), reason=f"{len(entry['waiting'])} runs are already waiting")
        if decision.missed:
            self.log(f"{self.name(schedule)}: {decision.missed} missed run{'s' if decision.missed != 1 else ''} "
                     f"not started (catchup: {schedule.catchup})")
        for moment, _late in full:
            self.log(f"{self.name(schedule)}: skipped the run of {self.when(schedule, iso(moment))}: "
                     "too many runs are already waiting")

    def start_waiting(self, schedule: Schedule) -> None:
        """Start the waiting runs the overlap policy allows now, oldest first."""
        self.settle_active(schedule)
        while not self.stop.is_set():
            state = load_state(self.store)
            entry = state["schedules"].get(schedule.key) or {}
            waiting = entry.get("waiting") or []
            if not waiting or entry.get("intent"):
                return
            head = waiting[0]
            running = self.still_running(state, schedule.workflow_id)
            if running and schedule.overlap != "allow":
                if schedule.overlap == "queue" or head.get("late"):
                    return  # it waits for the running one to end
                self.skip(schedule, head, running[0])
                continue
            if not self.fire(schedule, head):
                return

    def still_running(self, state: dict, workflow_id: str) -> list[str]:
        """The scheduled executions of a workflow that are running (their runner holds
        them) or starting (launched less than STARTING_SECONDS ago, no runner yet)."""
        running = []
        for item in (state["workflows"].get(workflow_id) or {}).get("active") or []:
            execution_id = item.get("executionId") if isinstance(item, dict) else None
            if not execution_id:
                continue
            handle = self.workspace.handle(execution_id)
            if handle.runner_alive():
                running.append(execution_id)
            elif not handle.journal_path.exists() \
                    and time.time() - float(item.get("launchedAt") or 0) < STARTING_SECONDS:
                running.append(execution_id)
        return running

    def settle_active(self, schedule: Schedule) -> None:
        """Forget the scheduled executions of a workflow that have ended; one that never
        started (its background runner failed) is reported with the runner's last words."""
        state = load_state(self.store)
        active = (state["workflows"].get(schedule.workflow_id) or {}).get("active") or []
        if not active:
            return
        running = set(self.still_running(state, schedule.workflow_id))
        ended = [item for item in active if not isinstance(item, dict) or item.get("executionId") not in running]
        if not ended:
            return
        with state_transaction(self.store) as state:
            flow = workflow_state(state, schedule.workflow_id)
            flow["active"] = [item for item in flow["active"]
                              if isinstance(item, dict) and item.get("executionId") in running]
        for item in ended:
            execution_id = item.get("executionId") if isinstance(item, dict) else None
            if execution_id and not self.workspace.handle(execution_id).journal_path.exists():
                self.log(f"{schedule.workflow_name}: {execution_id} did not start: {self.runner_words(execution_id)}")

    def runner_words(self, execution_id: str) -> str:
        lines = self.workspace.handle(execution_id).runner_output().strip().splitlines()  # its end: the last line says why
        return lines[-1] if lines else "its runner left no output"

    def skip(self, schedule: Schedule, head: dict, running: str) -> None:
        with state_transaction(self.store) as state:
            entry = schedule_state(state, schedule.key, schedule.workflow_id)
            if not entry["waiting"] or entry["waiting"][0] != head:
                return
            entry["waiting"].pop(0)
            remember(entry, "skipped", head["scheduledAt"], reason=f"{running} is still running (overlap: skip)")
        self.log(f"{self.name(schedule)}: skipped the run of {self.when(schedule, head['scheduledAt'])}: "
                 f"{running} is still running (overlap: skip)")

    # -- starting a run ----------------------------------------------------------------------
    def fire(self, schedule: Schedule, head: dict) -> bool:
        """Start the run at the head of the waiting line: the intent is written first."""
        from wfctl.store import new_id

        intent = {"scheduledAt": head["scheduledAt"], "executionId": new_id("exec"), "late": bool(head.get("late"))}
        with state_transaction(self.store) as state:
            entry = schedule_state(state, schedule.key, schedule.workflow_id)
            if not entry["waiting"] or entry["waiting"][0] != head or entry.get("intent"):
                return False
            entry["waiting"].pop(0)
            entry["intent"] = intent
        faults.crash("scheduler-after-intent")
        return self.finish_intent(schedule, intent)

    def finish_intent(self, schedule: Schedule, intent: dict) -> bool:
        """Make and start the execution of an intent, unless that was done already (a
        restart after a crash). True once the intent is settled, False to try later."""
        key = schedule.key
        if time.monotonic() < self._retry_at.get(key, 0.0):
            return False
        execution_id = intent["executionId"]
        try:
            document = self.existing(execution_id)
            if document is None:
                self.prepare(schedule, intent)
                faults.crash("scheduler-after-prepare")
                self.start(schedule, intent)
            elif self.never_started(execution_id, document):
                self.start(schedule, intent)
        except StoreError as err:
            return self.not_yet(schedule, intent, err.message)
        except OSError as err:
            return self.not_yet(schedule, intent, str(err.strerror or err))
        except WfctlError as err:
            self.give_up(schedule, intent, err.message)
            return True
        self._retry_at.pop(key, None)
        with state_transaction(self.store) as state:
            entry = schedule_state(state, key, schedule.workflow_id)
            if (entry.get("intent") or {}).get("executionId") == execution_id:
                entry["intent"] = None
            remember(entry, "started", intent["scheduledAt"], executionId=execution_id)
            flow = workflow_state(state, schedule.workflow_id)
            flow["active"] = [item for item in flow["active"] if isinstance(item, dict)
                              and item.get("executionId") != execution_id]
            flow["active"].append({"executionId": execution_id, "launchedAt": time.time()})
        late = " (late: caught up)" if intent.get("late") else ""
        self.log(f"{self.name(schedule)}: started {execution_id} for {self.when(schedule, intent['scheduledAt'])}{late}")
        self._said.pop(key, None)
        return True

    def existing(self, execution_id: str) -> dict | None:
        """The document of an intent's execution, or None when it was never made. A
        directory without its snapshot is a `prepare` the scheduler died in: only this
        scheduler (it holds the lock) writes that id, so it is removed and made again."""
        handle = self.workspace.handle(execution_id)
        if not handle.path.exists():
            return None
        if not handle.snapshot_path.exists():
            shutil.rmtree(handle.path, ignore_errors=True)
            return None
        return self.workspace.get_execution(execution_id)

    def never_started(self, execution_id: str, document: dict) -> bool:
        return (not document.get("startedAt") and document.get("status") in ("pending", "interrupted")
                and not self.workspace.handle(execution_id).runner_alive())

    def prepare(self, schedule: Schedule, intent: dict) -> None:
        self.workspace.prepare(schedule.workflow_id, schedule.input, trigger="schedule",
                    scheduled_at=intent["scheduledAt"], execution_id=intent["executionId"])

    def start(self, schedule: Schedule, intent: dict) -> None:
        """Launch the prepared execution's background runner, without waiting for it to
        take the execution (a Python start-up per run would hold up every other
        schedule): until it does, the run counts as starting (`still_running`)."""
        self.workspace.start_detached(intent["executionId"], wait=0)

    def not_yet(self, schedule: Schedule, intent: dict, message: str) -> bool:
        """A failure that may pass (a full disk): say so and try again later."""
        self._retry_at[schedule.key] = time.monotonic() + RETRY_SECONDS
        self.say(schedule.key, f"{self.name(schedule)}: the run of {self.when(schedule, intent['scheduledAt'])} "
                               f"could not start: {message.rstrip('.')}; trying again in {RETRY_SECONDS:g}s")
        return False

    def give_up(self, schedule: Schedule, intent: dict, message: str) -> None:
        """A failure that will not pass by itself (the workflow, its agents or the input are
        wrong): the run is recorded as an error and the schedule goes on."""
        self._retry_at.pop(schedule.key, None)
        with state_transaction(self.store) as state:
            entry = schedule_state(state, schedule.key, schedule.workflow_id)
            entry["intent"] = None
            remember(entry, "error", intent["scheduledAt"], message=message)
        self.log(f"{self.name(schedule)}: the run of {self.when(schedule, intent['scheduledAt'])} "
                 f"was not started: {message.rstrip('.')}")

    # -- words -------------------------------------------------------------------------------
    def name(self, schedule: Schedule) -> str:
        return f"{schedule.workflow_name} ({schedule.describe()})"

    def when(self, schedule: Schedule, text: str) -> str:
        return local_text(parse_moment(text), schedule.zone)

    def say(self, topic: str, message: str, *, repeat: bool = True) -> None:
        """Log a message, but the same one about the same thing at most every
        REPEAT_LOG_SECONDS (never again with `repeat=False`): a full disk must not flood."""
        last = self._said.get(topic)
        now = time.monotonic()
        if last is not None and last[0] == message and (not repeat or now - last[1] < REPEAT_LOG_SECONDS):
            return
        self._said[topic] = (message, now)
        self.log(message)


# -- commands -------------------------------------------------------------------------------
def run_scheduler(*, now: datetime | None = None, until: datetime | None = None, once: bool = False,
                  log: Log | None = None, workspace: Workspace | None = None) -> None:
    """`wfctl scheduler`: run until SIGTERM or Ctrl-C (both end it cleanly)."""
    clock = Clock(now)
    stop = threading.Event()
    scheduler = Scheduler(workspace or Workspace(), clock, log or stderr_log(clock), stop)
    caught: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        caught.append(signal.Signals(signum).name)  # logged by the loop: no I/O in a handler
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        scheduler.run(once=once, until=until, stopped_by=caught)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stderr_log(clock: Clock) -> Log:
    import sys

    def log(message: str) -> None:
        sys.stderr.write(f"{iso(clock.now().replace(microsecond=0))} {message}\n")
        sys.stderr.flush()

    return log


def list_schedules(now: datetime | None = None, *, workspace: Workspace | None = None) -> dict:
    """`wfctl schedules --json`: every schedule, its next and last runs, paused or not."""
    from wfctl.errors import NotFound

    workspace = workspace or Workspace()
    store = workspace.store
    now = now or datetime.now(UTC)
    found = find_schedules(store)
    state = load_state(store)
    elements: list[dict] = []
    for schedule in found.schedules:
        entry = state["schedules"].get(schedule.key) or {}
        paused = bool((state["workflows"].get(schedule.workflow_id) or {}).get("paused"))
        anchor = parse_moment(entry["anchor"]) if entry.get("anchor") else None
        upcoming = [] if paused else schedule.times_after(max(now, anchor) if anchor else now, 1)
        last_run = dict(entry["lastRun"]) if entry.get("lastRun") else None
        if last_run is not None:
            try:
                last_run["status"] = workspace.get_execution(last_run["executionId"]).get("status")
            except (NotFound, StoreError):
                last_run["status"] = "removed"
        elements.append({
            "workflowId": schedule.workflow_id,
            "workflowName": schedule.workflow_name,
            "key": schedule.key,
            "schedule": schedule.to_dict(),
            "paused": paused,
            "nextRunAt": iso(upcoming[0]) if upcoming else None,
            "lastRun": last_run,
            "lastSkipped": entry.get("lastSkipped"),
            "lastError": entry.get("lastError"),
            "waiting": [item.get("scheduledAt") for item in entry.get("waiting") or []],
            "counts": entry.get("counts") or {"started": 0, "skipped": 0, "missed": 0, "errors": 0},
        })
    for workflow_id, problem in sorted(found.problems.items()):
        elements.append({"workflowId": workflow_id, "error": problem})
    pid = running_scheduler(store)
    return {
        "entities": "Schedule",
        "count": len(elements),
        "scheduler": {"running": pid is not None, "pid": pid if pid and pid > 0 else None},
        "elements": elements,
    }


def _scheduled_workflow(workspace: Workspace, reference: str) -> dict:
    """A registered workflow that has `schedule:` (by id or name)."""
    record = workspace.registry().resolve(reference)
    if not entries_of(record["definition"]):
        raise Conflict(f"workflow '{record['definition'].get('name')}' ({record['workflowId']}) has no schedule; "
                       "add a schedule: section to its file and `wfctl create --update` it.")
    return record


def pause(reference: str, *, workspace: Workspace | None = None) -> dict:
    """Pause a workflow's schedules (whether or not the scheduler is running): its due
    runs are skipped until `resume`. Runs already started go on."""
    workspace = workspace or Workspace()
    record = _scheduled_workflow(workspace, reference)
    with state_transaction(workspace.store) as state:
        flow = workflow_state(state, record["workflowId"])
        changed = not flow.get("paused")
        if changed:
            flow["paused"] = True
            flow["pausedAt"] = iso(datetime.now(UTC))
    return {"workflowId": record["workflowId"], "workflowName": record["definition"].get("name"),
            "paused": True, "changed": changed}


def resume(reference: str, now: datetime | None = None, *, workspace: Workspace | None = None) -> dict:
    """Resume a workflow's schedules from now: the run times that passed while it was
    paused are not caught up."""
    workspace = workspace or Workspace()
    record = _scheduled_workflow(workspace, reference)
    moment = now or datetime.now(UTC)
    with state_transaction(workspace.store) as state:
        flow = workflow_state(state, record["workflowId"])
        changed = bool(flow.pop("paused", None))
        flow.pop("pausedAt", None)
        if changed:
            for entry in state["schedules"].values():
                if entry.get("workflowId") == record["workflowId"]:
                    if entry.get("waiting"):
                        remember(entry, "skipped", entry["waiting"][-1]["scheduledAt"], reason="paused",
                                 count=len(entry["waiting"]))
                    # An anchor never moves back: that would start run times already dealt with.
                    if not entry.get("anchor") or parse_moment(entry["anchor"]) < moment:
                        entry["anchor"] = iso(moment)
                    entry["waiting"] = []
    return {"workflowId": record["workflowId"], "workflowName": record["definition"].get("name"),
            "paused": False, "changed": changed}


MAX_NEXT = 1000


def next_runs(reference: str, *, count: int = 5, start: datetime | None = None,
              workspace: Workspace | None = None) -> dict:
    """The next `count` run times of each schedule of a workflow (registered, or a file,
    which is only read)."""
    if not 1 <= count <= MAX_NEXT:
        raise UsageError(f"--count must be between 1 and {MAX_NEXT}, not {count}.")
    definition = (workspace or Workspace()).definition_of(reference)
    name = definition.get("name")
    if not entries_of(definition):
        raise Conflict(f"workflow '{name}' has no schedule; add a schedule: section to its file.")
    try:
        schedules = schedules_of(definition, str(name))
    except ValueError as err:
        raise UsageError(f"workflow '{name}': {err}.") from None
    start = start or datetime.now(UTC)
    shown = []
    for schedule in schedules:
        times = schedule.times_after(start, count)
        shown.append({
            "schedule": schedule.to_dict(),
            "times": [iso(moment) for moment in times],
            "localTimes": [local_text(moment, schedule.zone) for moment in times],
        })
    return {"workflowName": name, "from": iso(start), "schedules": shown}


# -- starting the scheduler at boot ---------------------------------------------------------
UNIT_NAME = "wfctl-scheduler.service"
ENABLE_COMMANDS = ["systemctl --user daemon-reload", f"systemctl --user enable --now {UNIT_NAME}"]


def has_systemd() -> bool:
    """Is there a systemd to give a user unit to? (sd_booted(3): /run/systemd/system.)"""
    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


def scheduler_command() -> list[str]:
    """How to start this wfctl's scheduler: the `wfctl` script next to this Python
    (a virtual environment's), else this Python with `-m wfctl`."""
    import sys

    script = Path(sys.executable).parent / "wfctl"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "scheduler"]
    return [sys.executable, "-m", "wfctl", "scheduler"]


def service_environment() -> dict[str, str]:
    """What the service needs of this shell's environment: the same data directory and
    config file, and a PATH on which steps find their tools."""
    wanted = ("WFCTL_HOME", "WFCTL_CONFIG", "PATH")
    environment = {name: os.environ[name] for name in wanted if os.environ.get(name)}
    for name, value in environment.items():
        if any(ord(ch) < 32 for ch in value):
            raise UsageError(f"${name} contains a control character; it cannot be written into a service file.")
    return environment


def _systemd_word(text: str) -> str:
    """One quoted word of a unit file: specifiers (%) and variables ($) stay literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def systemd_unit() -> str:
    """A systemd user unit that runs `wfctl scheduler` and restarts it if it fails."""
    command = " ".join(_systemd_word(word) for word in scheduler_command())
    environment = " ".join(_systemd_word(f"{k}={v}") for k, v in service_environment().items())
    return "\n".join([
        "# Written by `wfctl scheduler install`: starts the runs of scheduled workflows.",
        "[Unit]",
        "Description=wfctl scheduler (scheduled workflow runs)",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={command}",
        *([f"Environment={environment}"] if environment else []),
        "WorkingDirectory=%h",
        "Restart=on-failure",
        "RestartSec=5",
        "# Stopping the service stops the scheduler only: runs it started go on to their end.",
        "KillMode=process",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def unit_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user" / UNIT_NAME


def crontab_line(store: Store) -> str:
    """The crontab line that starts the scheduler at boot, its log in the data directory."""
    import shlex

    environment = " ".join(f"{k}={shlex.quote(v)}" for k, v in service_environment().items() if k != "PATH")
    command = " ".join(shlex.quote(word) for word in scheduler_command())
    log = shlex.quote(str(state_dir(store) / "scheduler.log"))
    line = f"@reboot {environment + ' ' if environment else ''}{command} >> {log} 2>&1"
    return line.replace("%", "\\%")  # cron turns a bare % into a newline


def install(*, kind: str = "auto", write: bool = False) -> dict:
    """What `wfctl scheduler install` prints or writes. Nothing is enabled here: the
    person runs the commands it names."""
    if kind not in ("auto", "systemd", "cron"):
        raise UsageError(f"--kind must be auto, systemd or cron, not '{kind}'.")
    if kind == "auto":
        kind = "systemd" if has_systemd() else "cron"
    if kind == "cron":
        if write:
            raise UsageError("--write only writes a systemd user unit, and there is no systemd here; "
                             "add the line `wfctl scheduler install` prints with `crontab -e`.")
        return {"kind": "cron", "line": crontab_line(Workspace().store), "path": None, "written": False,
                "commands": ["crontab -e"]}
    unit = systemd_unit()
    path = unit_path()
    if write:
        from wfctl.store import write_bytes_atomic

        write_bytes_atomic(path, unit.encode("utf-8"))
    return {"kind": "systemd", "unit": unit, "path": str(path), "written": write, "commands": ENABLE_COMMANDS}
