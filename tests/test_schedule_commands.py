"""`schedule:` in workflow files and the schedule commands, through the installed `wfctl`:
validation (exit 2, one sentence with file, path and line), `schedule next`, `schedules`,
`schedule pause/resume`, `scheduler install`, and the trigger of manual executions."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import tree_snapshot
from cronsim import CronSim

HEADER = """\
name: nightly
inputs:
  who: {type: string, required: true}
"""
STEPS = """\
steps:
  - id: greet
    run: echo "hello {{ input.who }}"
"""


@pytest.mark.parametrize("schedule, line, path, words", [
    ('schedule: {cron: "61 3 * * *", input: {who: a}}', 4, "schedule.cron",
     "invalid cron expression '61 3 * * *': bad minute"),
    ('schedule:\n  - every: 1m\n    input: {who: a}\n  - cron: "@daily"\n    timezone: Mars/Olympus\n'
     '    input: {who: a}', 8, "schedule[1].timezone", "unknown time zone 'Mars/Olympus'"),
    ("schedule: {every: 0.5s, input: {who: a}}", 4, "schedule.every", "every must be at least 1s, not '0.5s'"),
    ("schedule: {every: 10m, input: {who: 3}}", 4, "schedule.input.who", "input 'who' must be a string, not the number 3"),
    ("schedule:\n  every: 10m", 4, "schedule.input.who",
     "input 'who' is required, but the schedule's input does not give it"),
    ("schedule: {every: 10m, input: {who: a, whom: b}}", 4, "schedule.input.whom",
     "input 'whom' is not declared in the workflow's inputs; did you mean 'who'?"),
    ("schedule: {every: 10m, cron: '@daily', input: {who: a}}", 4, "schedule",
     "schedule entry needs exactly one of cron or every; it has both cron and every"),
])
def test_bad_schedules_are_refused_at_validate_and_create(wfctl, wfctl_json, workflow_file, wfctl_home,
                                                          schedule, line, path, words):
    file = workflow_file(HEADER + schedule + "\n" + STEPS)
    result = wfctl("validate", file, code=2)
    assert f"{file}:{line}: {path}: {words}" in result.stderr
    assert "Traceback" not in result.stderr
    problems = wfctl_json("validate", file, code=2)["problems"]
    assert [(p["path"], p["line"]) for p in problems] == [(path, line)]
    before = tree_snapshot(wfctl_home)
    assert words in wfctl("create", file, code=2).stderr
    assert tree_snapshot(wfctl_home) == before  # nothing registered


def test_a_valid_schedule_validates_and_registers(wfctl, wfctl_json, workflow_file):
    file = workflow_file(HEADER + 'schedule:\n  - {cron: "0 3 * * *", timezone: Europe/Paris, input: {who: a},'
                         ' overlap: queue, catchup: all, maxCatchup: 3, jitter: 30}\n  - {every: 15m, '
                         'input: {who: b}}\n' + STEPS)
    assert wfctl_json("validate", file)["valid"] is True
    created = wfctl_json("create", file)
    assert created["schedule"][0]["cron"] == "0 3 * * *"


def test_schedule_next_crosses_daylight_saving_time_as_cronsim_does(wfctl, wfctl_json, workflow_file):
    file = workflow_file('name: paris\nschedule: {cron: "30 2 * * *", timezone: Europe/Paris}\n' + STEPS
                         .replace("{{ input.who }}", "paris"))
    wfctl("create", file)
    paris = ZoneInfo("Europe/Paris")
    for start in ("2026-03-27T12:00:00Z", "2026-10-24T12:00:00Z"):
        shown = wfctl_json("schedule", "next", "paris", "--count", "4", "--from", start)
        (entry,) = shown["schedules"]
        begin = datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(paris)
        library = CronSim("30 2 * * *", begin)
        expected = [next(library).timestamp() for _ in range(4)]  # instants: a repeated hour compares unequal
        assert [datetime.fromisoformat(t).timestamp() for t in entry["localTimes"]] == expected
        assert [datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in entry["times"]] == expected
        assert [datetime.fromisoformat(t).utcoffset() for t in entry["localTimes"]] == [
            datetime.fromtimestamp(e, paris).utcoffset() for e in expected]
    spring = wfctl("schedule", "next", file, "-n", "3", "--from", "2026-03-27T12:00:00Z").stdout.split()
    assert spring == ["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_schedule_next_of_a_file_does_not_register_it(wfctl, workflow_file, wfctl_home):
    file = workflow_file('name: filed\nschedule: {cron: "@hourly", timezone: UTC}\n' + STEPS.replace("{{ input.who }}", "x"))
    lines = wfctl("schedule", "next", file, "--from", "2030-01-01T00:10:00Z", "--count", "2").stdout.split()
    assert lines == ["2030-01-01T01:00:00Z", "2030-01-01T02:00:00Z"]
    assert not (wfctl_home / "workflows").exists() or not list((wfctl_home / "workflows").glob("wf_*.json"))


def test_schedule_commands_refuse_what_does_not_fit(wfctl, workflow_file):
    plain = workflow_file("name: plain\n" + STEPS.replace("{{ input.who }}", "x"))
    wfctl("create", plain)
    for args in (("schedule", "pause", "plain"), ("schedule", "resume", "plain"), ("schedule", "next", "plain")):
        assert "has no schedule" in wfctl(*args, code=6).stderr
    assert "no workflow" in wfctl("schedule", "pause", "nope", code=3).stderr
    scheduled = workflow_file("name: s\nschedule: {every: 1m}\n" + STEPS.replace("{{ input.who }}", "x"), "s.yaml")
    wfctl("create", scheduled)
    assert "--count must be between 1 and 1000" in wfctl("schedule", "next", "s", "--count", "0", code=2).stderr
    assert "--from must be an ISO 8601 time" in wfctl("schedule", "next", "s", "--from", "soon", code=2).stderr


def test_pause_and_resume_are_kept_whether_or_not_a_scheduler_runs(wfctl, wfctl_json, workflow_file):
    file = workflow_file("name: ticker\nschedule: [{every: 1m}, {every: 1h}]\n" + STEPS.replace("{{ input.who }}", "x"))
    workflow_id = wfctl_json("create", file)["workflowId"]
    listing = wfctl_json("schedules")
    assert listing["entities"] == "Schedule" and listing["count"] == 2
    assert listing["scheduler"] == {"running": False, "pid": None}
    assert [e["paused"] for e in listing["elements"]] == [False, False]
    assert all(e["nextRunAt"] and e["lastRun"] is None for e in listing["elements"])
    assert wfctl_json("schedule", "pause", "ticker") == {
        "workflowId": workflow_id, "workflowName": "ticker", "paused": True, "changed": True}
    assert wfctl_json("schedule", "pause", workflow_id)["changed"] is False
    paused = wfctl_json("schedules")["elements"]
    assert [e["paused"] for e in paused] == [True, True] and [e["nextRunAt"] for e in paused] == [None, None]
    assert "paused" in wfctl("schedules").stdout
    assert wfctl_json("schedule", "resume", "ticker")["changed"] is True
    assert [e["paused"] for e in wfctl_json("schedules")["elements"]] == [False, False]


def test_executions_started_by_hand_say_so(wfctl_json, workflow_file):
    file = workflow_file("name: byhand\n" + STEPS.replace("{{ input.who }}", "x"))
    document = wfctl_json("execute", file)
    assert document["trigger"] == "manual" and "scheduledAt" not in document
    (element,) = wfctl_json("executions")["elements"]
    assert element["trigger"] == "manual" and "scheduledAt" not in element
    trace = wfctl_json("trace", "byhand", document["executionId"])
    assert trace["trigger"] == "manual" and "scheduled_at" not in trace


# -- scheduler install ----------------------------------------------------------------------
@pytest.fixture
def fake_systemctl(tmp_path, monkeypatch):
    """A `systemctl` on PATH that records any call: install must not enable anything."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    tool = bin_dir / "systemctl"
    tool.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'systemctl-calls'}\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{os.environ['PATH']}{os.pathsep}{bin_dir}")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "systemctl-calls"


def test_install_writes_a_systemd_user_unit_and_enables_nothing(wfctl, wfctl_json, tmp_path, fake_systemctl,
                                                                wfctl_home):
    printed = wfctl("scheduler", "install", "--kind", "systemd")
    unit_path = tmp_path / "xdg" / "systemd" / "user" / "wfctl-scheduler.service"
    assert not unit_path.exists()
    assert "[Service]" in printed.stdout and "KillMode=process" in printed.stdout
    written = wfctl("scheduler", "install", "--kind", "systemd", "--write")
    unit = unit_path.read_text()
    assert unit == printed.stdout
    assert "systemctl --user daemon-reload" in written.stderr
    assert "systemctl --user enable --now wfctl-scheduler.service" in written.stderr
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    command = [word.strip('"') for word in exec_start[len("ExecStart="):].split()]
    assert Path(command[0]).name in ("wfctl", "python", "python3") and command[-1] == "scheduler"
    assert f'"WFCTL_HOME={wfctl_home}"' in unit
    assert not fake_systemctl.exists()  # nothing was enabled behind the user's back
    document = wfctl_json("scheduler", "install", "--kind", "systemd")
    assert document["kind"] == "systemd" and document["written"] is False
    assert document["commands"] == ["systemctl --user daemon-reload",
                                    "systemctl --user enable --now wfctl-scheduler.service"]


def test_install_without_systemd_prints_the_crontab_line(wfctl, wfctl_json, wfctl_home, fake_systemctl):
    line = wfctl("scheduler", "install", "--kind", "cron").stdout.strip()
    assert line.startswith("@reboot ") and " scheduler >> " in line and line.endswith(" 2>&1")
    assert f"WFCTL_HOME={wfctl_home}" in line and "crontab -e" in wfctl("scheduler", "install", "--kind", "cron").stderr
    refused = wfctl("scheduler", "install", "--kind", "cron", "--write", code=2)
    assert "no systemd here" in refused.stderr
    assert json.loads(wfctl("scheduler", "install", "--kind", "cron", "--json").stdout)["kind"] == "cron"
    assert not fake_systemctl.exists()
