"""`wfctl scheduler` end to end: real processes, real detached runs, real signals.

Time is never waited out with sleeps: the scheduler runs in real time only for the
tests about firing on time (an `every: 1s` schedule), and the others move its clock
with the hidden `--now` (where it starts) and `--once` (one look, then exit). Each test
waits (bounded) for the runs it started to end, so none outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from lifecycle_helpers import WAIT, holds_for, home, lab_in, wait_for, wfctl, wfctl_json

QUICK = """\
name: {name}
schedule: {schedule}
steps:
  - id: work
    run: {run}
"""


@pytest.fixture
def lab(tmp_path):
    yield from lab_in(tmp_path)


class Scheduler:
    """A `wfctl scheduler` in the background, its stderr in a file the test can read."""

    def __init__(self, tmp_path: Path, *args: str, name: str = "scheduler") -> None:
        self.log_path = tmp_path / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(["wfctl", "scheduler", *args], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self._log)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = WAIT) -> None:
        wait_for(lambda: text in self.log() or self.process.poll() is not None, timeout=timeout, what=text)
        assert text in self.log(), self.log()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=WAIT)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=WAIT)
        self._log.close()


@pytest.fixture
def schedulers(tmp_path):
    """Start schedulers; whatever is left is stopped and every run waited for at the end."""
    started: list[Scheduler] = []

    def start(*args: str) -> Scheduler:
        scheduler = Scheduler(tmp_path, *args, name=f"scheduler-{len(started)}")
        started.append(scheduler)
        return scheduler

    yield start
    for scheduler in started:
        if scheduler.process.poll() is None:
            scheduler.kill()
    settle()


def register(tmp_path: Path, name: str, schedule: str, run: str = "true") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(QUICK.format(name=name, schedule=schedule, run=json.dumps(run)))
    return wfctl_json("create", path)["workflowId"]


def runs_of(name: str) -> list[dict]:
    """The executions of a workflow, oldest first."""
    return list(reversed(wfctl_json("executions", "--workflow", name, "--limit", "1000")["elements"]))


def settle(timeout: float = WAIT) -> None:
    """Wait until no execution is pending or running."""
    def quiet() -> bool:
        elements = wfctl_json("executions", "--limit", "1000")["elements"]
        return all(e["status"] not in ("pending", "running", "paused") for e in elements)

    wait_for(quiet, timeout=timeout, interval=0.2, what="every scheduled run to end")


def state() -> dict:
    return json.loads((home() / "scheduler" / "state.json").read_text())


def once(now: str, *, code: int = 0) -> subprocess.CompletedProcess:
    return wfctl("scheduler", "--now", now, "--once", code=code)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- on time --------------------------------------------------------------------------------
def test_every_second_fires_about_once_a_second_and_sigterm_ends_it(tmp_path, schedulers):
    register(tmp_path, "ticker", "{every: 1s, overlap: allow}")
    scheduler = schedulers()
    scheduler.wait_log("scheduler started")
    wait_for(lambda: len(runs_of("ticker")) >= 4, what="four runs")
    assert scheduler.stop(signal.SIGTERM) == 0
    assert "scheduler stopped by SIGTERM" in scheduler.log()
    settle()
    runs = runs_of("ticker")
    times = [moment(run["scheduledAt"]) for run in runs]
    assert all(run["trigger"] == "schedule" and run["status"] == "completed" for run in runs)
    assert all(t.microsecond == 0 for t in times) and times == sorted(set(times))  # whole seconds, once each
    for run, due in zip(runs, times):  # each started about on time
        assert timedelta(0) <= moment(run["startedAt"]) - due < timedelta(seconds=10)
    # Every second from the first run to the last was started or, if the machine was too
    # busy to look in time, counted as missed: none is lost without a word.
    (counts,) = [entry["counts"] for entry in state()["schedules"].values()]
    span = int((times[-1] - times[0]).total_seconds()) + 1
    assert counts["started"] == len(runs) and counts["started"] + counts["missed"] >= span


def test_ctrl_c_ends_the_scheduler_cleanly_and_its_runs_go_on(tmp_path, schedulers, lab):
    register(tmp_path, "held", "{every: 1s}", run=lab.hold("run"))
    scheduler = schedulers()
    lab.wait_started("run")
    assert scheduler.stop(signal.SIGINT) == 0
    assert "stopped by SIGINT; runs already started go on" in scheduler.log()
    (run,) = runs_of("held")
    assert run["status"] == "running"  # its runner is its own process
    lab.go("run")
    wait_for(lambda: runs_of("held")[0]["status"] == "completed", what="the run to end")


def test_overlap_skip_never_runs_two_at_once(tmp_path, schedulers, lab):
    spans = lab.path("spans")
    step = f"echo start $(date +%s.%N) >> {spans}; sleep 2.5; echo end $(date +%s.%N) >> {spans}"
    register(tmp_path, "slow", "{every: 1s}", run=step)
    scheduler = schedulers()
    wait_for(lambda: len([r for r in runs_of("slow") if r["status"] == "completed"]) >= 2, timeout=30,
             what="two runs to complete")
    assert scheduler.stop() == 0
    settle()
    events = [line.split() for line in spans.read_text().splitlines()]
    running = 0
    for kind, _at in sorted(events, key=lambda event: float(event[1])):
        running += 1 if kind == "start" else -1
        assert running in (0, 1), events  # never two at once
    (entry,) = state()["schedules"].values()
    assert entry["counts"]["skipped"] >= 1
    assert entry["lastSkipped"]["reason"].endswith("is still running (overlap: skip)")
    assert "is still running (overlap: skip)" in scheduler.log()
    listed = wfctl_json("schedules")["elements"][0]
    assert listed["counts"]["skipped"] >= 1 and listed["lastSkipped"]["scheduledAt"]


# -- catch-up after the scheduler was stopped ------------------------------------------------
@pytest.mark.parametrize("catchup, expected, missed", [
    ("none", [], 10),
    ("latest", ["2030-01-01T00:50:00Z"], 9),
    ("all", ["2030-01-01T00:40:00Z", "2030-01-01T00:45:00Z", "2030-01-01T00:50:00Z"], 7),
])
def test_catchup_after_a_stop_follows_the_policy(tmp_path, schedulers, catchup, expected, missed):
    register(tmp_path, "catchy", f"{{every: 5m, catchup: {catchup}, maxCatchup: 3, overlap: allow}}")
    first = once("2030-01-01T00:00:30Z")
    assert "first run at 2030-01-01T00:05:00Z" in first.stderr
    assert runs_of("catchy") == []
    # The scheduler was stopped for 52 minutes: ten run times went by.
    second = once("2030-01-01T00:52:30Z")
    settle()
    runs = runs_of("catchy")
    assert sorted(run["scheduledAt"] for run in runs) == expected
    assert all(run["status"] == "completed" for run in runs)
    assert f"{missed} missed runs not started (catchup: {catchup})" in second.stderr
    (entry,) = state()["schedules"].values()
    assert entry["counts"]["missed"] == missed and entry["anchor"] == "2030-01-01T00:50:00Z"
    assert once("2030-01-01T00:53:00Z").returncode == 0  # a later look starts nothing again
    assert len(runs_of("catchy")) == len(expected)


def test_catchup_all_runs_the_missed_runs_one_after_another(tmp_path, schedulers):
    register(tmp_path, "serial", "{every: 5m, catchup: all, maxCatchup: 3}", run="sleep 0.3")
    once("2030-01-01T00:00:30Z")
    scheduler = schedulers("--now", "2030-01-01T00:52:30Z")
    wait_for(lambda: len([r for r in runs_of("serial") if r["status"] == "completed"]) == 3, timeout=30,
             what="three catch-up runs")
    assert scheduler.stop() == 0
    runs = sorted(runs_of("serial"), key=lambda run: run["scheduledAt"])
    assert [run["scheduledAt"][11:16] for run in runs] == ["00:40", "00:45", "00:50"]
    for earlier, later in zip(runs, runs[1:]):
        assert moment(earlier["completedAt"]) <= moment(later["startedAt"])  # one after another


# -- crashes and restarts --------------------------------------------------------------------
def test_kill_9_and_restart_fires_nothing_twice(tmp_path, schedulers):
    register(tmp_path, "ticker", "{every: 1s, overlap: allow}")
    first = schedulers()
    wait_for(lambda: len(runs_of("ticker")) >= 2, what="two runs")
    first.kill()
    before = len(runs_of("ticker"))
    second = schedulers()
    wait_for(lambda: len(runs_of("ticker")) >= before + 2, what="two more runs after the restart")
    assert second.stop() == 0
    settle()
    runs = runs_of("ticker")
    times = [run["scheduledAt"] for run in runs]
    assert len(times) == len(set(times)), times
    assert all(run["status"] == "completed" for run in runs)
    (entry,) = state()["schedules"].values()
    assert entry.get("intent") is None and entry["counts"]["started"] == len(runs)


@pytest.mark.parametrize("point", ["scheduler-after-intent", "scheduler-after-prepare"])
def test_a_run_recorded_before_a_crash_starts_once_after_the_restart(tmp_path, schedulers, monkeypatch, point):
    register(tmp_path, "crashy", "{every: 1m}")
    once("2030-01-01T00:00:30Z")
    monkeypatch.setenv("WFCTL_FAULT", point)
    once("2030-01-01T00:01:05Z", code=137)  # dies the way kill -9 would, at that point
    monkeypatch.delenv("WFCTL_FAULT")
    (entry,) = state()["schedules"].values()
    intent = entry["intent"]
    assert intent["scheduledAt"] == "2030-01-01T00:01:00Z"
    made = runs_of("crashy")
    if point == "scheduler-after-intent":
        assert made == []
    else:  # prepared, never started
        assert [run["executionId"] for run in made] == [intent["executionId"]] and not made[0]["startedAt"]
    restart = once("2030-01-01T00:01:10Z")
    settle()
    (run,) = runs_of("crashy")
    assert run["executionId"] == intent["executionId"] and run["scheduledAt"] == "2030-01-01T00:01:00Z"
    assert run["status"] == "completed"
    assert f"started {intent['executionId']} for 2030-01-01T00:01:00Z" in restart.stderr
    assert state()["schedules"][next(iter(state()["schedules"]))]["intent"] is None


def test_a_clock_that_goes_back_fires_nothing_twice(tmp_path, schedulers):
    register(tmp_path, "clocky", "{every: 1m, overlap: allow}")
    once("2030-01-01T00:00:30Z")
    once("2030-01-01T00:01:10Z")  # 00:01 is due
    once("2030-01-01T00:00:40Z")  # the clock went back half a minute
    once("2030-01-01T00:01:20Z")  # 00:01 again, in the repeated time
    once("2030-01-01T00:02:05Z")  # 00:02 is due
    settle()
    assert sorted(run["scheduledAt"] for run in runs_of("clocky")) == ["2030-01-01T00:01:00Z",
                                                                      "2030-01-01T00:02:00Z"]


def test_a_second_scheduler_on_the_same_data_directory_is_refused(tmp_path, schedulers):
    register(tmp_path, "ticker", "{every: 1h}")
    first = schedulers()
    first.wait_log("scheduler started")
    refused = wfctl("scheduler", "--once", code=6)
    assert f"another scheduler (pid {first.process.pid}) is already running" in refused.stderr
    assert wfctl_json("schedules")["scheduler"] == {"running": True, "pid": first.process.pid}
    assert first.stop() == 0


# -- what goes wrong around it ---------------------------------------------------------------
def test_a_workflow_that_became_invalid_is_reported_and_the_others_go_on(tmp_path, schedulers):
    good = register(tmp_path, "good", "{every: 1m, overlap: allow}")
    broken = register(tmp_path, "broken", "{every: 1m}")
    unreadable = register(tmp_path, "unreadable", "{every: 1m}")
    records = home() / "workflows"
    record = json.loads((records / f"{broken}.json").read_text())
    record["definition"]["schedule"] = {"cron": "61 * * * *"}  # edited by hand, never validated
    (records / f"{broken}.json").write_text(json.dumps(record))
    (records / f"{unreadable}.json").write_text("{not json")
    once("2030-01-01T00:00:30Z")
    result = once("2030-01-01T00:01:10Z")
    settle()
    assert [run["scheduledAt"] for run in runs_of("good")] == ["2030-01-01T00:01:00Z"]
    assert f"workflow 'broken' ({broken}): schedule: cron: invalid cron expression" in result.stderr
    assert f"{unreadable}.json is not valid JSON" in result.stderr
    listed = {element["workflowId"]: element for element in wfctl_json("schedules")["elements"]}
    assert "bad minute" in listed[broken]["error"] and "not valid JSON" in listed[unreadable]["error"]
    assert listed[good]["lastRun"]["status"] == "completed"
    assert "error" in wfctl("schedules").stdout


def test_a_run_that_cannot_start_is_recorded_and_the_schedule_goes_on(tmp_path, schedulers):
    register(tmp_path, "agented", "{every: 1m}")
    path = tmp_path / "agented.yaml"
    path.write_text(path.read_text().replace("run: \"true\"", "agent: helper") + "agents: {}\n")
    wfctl("agent", "add", "helper", "--run", "true")
    wfctl("create", path, "--update")
    once("2030-01-01T00:00:30Z")
    wfctl("agent", "remove", "helper")
    result = once("2030-01-01T00:01:10Z")
    assert "the run of 2030-01-01T00:01:00Z was not started" in result.stderr and "unknown agent 'helper'" in result.stderr
    (entry,) = state()["schedules"].values()
    assert entry["intent"] is None and entry["lastError"]["scheduledAt"] == "2030-01-01T00:01:00Z"
    assert runs_of("agented") == []
    wfctl("agent", "add", "helper", "--run", "true")
    once("2030-01-01T00:02:10Z")
    settle()
    assert [run["scheduledAt"] for run in runs_of("agented")] == ["2030-01-01T00:02:00Z"]


def test_a_full_disk_is_reported_and_retried(tmp_path, schedulers, monkeypatch):
    register(tmp_path, "diskful", "{every: 1m}")
    once("2030-01-01T00:00:30Z")
    monkeypatch.setenv("WFCTL_FAULT", "enospc-scheduler")  # the next write of the state fails
    scheduler = schedulers("--now", "2030-01-01T00:01:10Z")
    wait_for(lambda: runs_of("diskful"), what="the run, once the disk had room again")
    assert scheduler.stop() == 0
    assert "No space left on device" in scheduler.log()
    settle()
    assert [run["scheduledAt"] for run in runs_of("diskful")] == ["2030-01-01T00:01:00Z"]
    assert not list((home() / "scheduler").glob(".state.json.*"))  # no temp file left behind


def test_paused_runs_are_skipped_and_not_caught_up_after_resume(tmp_path, schedulers):
    register(tmp_path, "pausy", "{every: 1m, catchup: all, overlap: allow}")
    once("2030-01-01T00:00:30Z")
    wfctl("schedule", "pause", "pausy")
    paused = once("2030-01-01T00:03:10Z")
    assert "paused: skipped the run of 2030-01-01T00:03:00Z and 2 more" in paused.stderr
    wfctl("schedule", "resume", "pausy")
    once("2030-01-01T00:05:10Z")  # 00:04 and 00:05 were due; the paused minutes are not caught up
    settle()
    assert sorted(run["scheduledAt"] for run in runs_of("pausy")) == ["2030-01-01T00:04:00Z",
                                                                      "2030-01-01T00:05:00Z"]
    (entry,) = state()["schedules"].values()
    assert entry["counts"]["skipped"] == 3 and entry["lastSkipped"]["reason"] == "paused"


# -- what a scheduled run looks like ---------------------------------------------------------
def test_scheduled_runs_say_when_they_were_due_everywhere(tmp_path, schedulers, lab):
    register(tmp_path, "shown", "{every: 1m}", run=lab.hold("step"))
    once("2030-01-01T00:00:30Z")
    once("2030-01-01T00:01:10Z")
    lab.wait_started("step")
    (run,) = runs_of("shown")
    execution_id = run["executionId"]
    assert run["trigger"] == "schedule" and run["scheduledAt"] == "2030-01-01T00:01:00Z"
    watcher = subprocess.Popen(["wfctl", "watch", execution_id], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holds_for(lambda: watcher.poll() is None, 0.3)
    lab.go("step")
    _out, err = watcher.communicate(timeout=WAIT)
    assert watcher.returncode == 0 and "scheduled for 2030-01-01T00:01:00Z" in err
    document = wfctl_json("execution", execution_id)
    assert document["trigger"] == "schedule" and document["scheduledAt"] == "2030-01-01T00:01:00Z"
    assert "started by the scheduler for 2030-01-01T00:01:00Z" in wfctl("execution", execution_id).stdout
    assert "schedule" in wfctl("executions").stdout.split()
    (element,) = wfctl_json("traces", "shown")["elements"]
    assert element["trigger"] == "schedule" and element["scheduled_at"] == "2030-01-01T00:01:00Z"
    trace = wfctl_json("trace", "shown", execution_id)
    assert trace["trigger"] == "schedule" and trace["scheduled_at"] == "2030-01-01T00:01:00Z"
    listed = wfctl_json("schedules")["elements"][0]
    assert listed["lastRun"] == {"executionId": execution_id, "scheduledAt": "2030-01-01T00:01:00Z",
                                 "status": "completed"}
    assert os.path.exists(home() / "scheduler" / "state.json")


def test_overlap_queue_starts_the_due_runs_when_the_running_one_ends(tmp_path, schedulers, lab):
    # The first run holds until the test lets it go; later runs find the go file and end at once.
    register(tmp_path, "queued", "{every: 1s, overlap: queue}", run=lab.hold("first"))
    scheduler = schedulers()
    lab.wait_started("first")
    wait_for(lambda: len(wfctl_json("schedules")["elements"][0]["waiting"]) >= 2, what="two runs to wait")
    assert len(runs_of("queued")) == 1  # they wait: none started beside the running one
    lab.go("first")
    wait_for(lambda: len([r for r in runs_of("queued") if r["status"] == "completed"]) >= 3, what="the queue")
    assert scheduler.stop() == 0
    settle()
    runs = sorted(runs_of("queued"), key=lambda run: run["scheduledAt"])
    for earlier, later in zip(runs, runs[1:]):
        assert moment(earlier["completedAt"]) <= moment(later["startedAt"])  # one after another
    assert moment(runs[1]["startedAt"]) - moment(runs[1]["scheduledAt"]) >= timedelta(seconds=1)  # it waited
    (entry,) = state()["schedules"].values()
    assert entry["counts"]["skipped"] == 0
