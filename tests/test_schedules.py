"""schedules.py in-process: parsing `schedule:` entries, run times (cron in time zones,
intervals), and which runs a look at a schedule starts (catch-up, clock jumps, jitter).

Time is passed in: nothing here waits or reads the clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim

from wfctl.schedules import (
    CRON_ALIASES,
    GRACE_SECONDS,
    check_cron,
    entry_problems,
    iso,
    parse_every,
    plan,
    schedule_key,
    schedules_of,
    zone_named,
)

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def one(entry: dict, workflow_id: str = "wf_test0001") -> object:
    """The Schedule of a workflow with this one entry."""
    (schedule,) = schedules_of({"name": "nightly", "schedule": entry, "steps": []}, workflow_id)
    return schedule


# -- cron: aliases, time zones, daylight saving time ----------------------------------------
@pytest.mark.parametrize("alias", sorted(CRON_ALIASES))
def test_aliases_are_the_crontab_expressions(alias):
    schedule = one({"cron": alias, "timezone": "UTC"})
    start = at("2026-01-01T00:00:00Z")
    expected = CronSim(CRON_ALIASES[alias], start)
    assert schedule.times_after(start, 4) == [next(expected) for _ in range(4)]


def test_daily_alias_and_hourly_alias_run_at_midnight_and_on_the_hour():
    assert [iso(t) for t in one({"cron": "@daily", "timezone": "UTC"}).times_after(at("2026-05-01T12:00:00Z"), 2)] \
        == ["2026-05-02T00:00:00Z", "2026-05-03T00:00:00Z"]
    assert [iso(t) for t in one({"cron": "@HOURLY", "timezone": "UTC"}).times_after(at("2026-05-01T12:00:00Z"), 2)] \
        == ["2026-05-01T13:00:00Z", "2026-05-01T14:00:00Z"]


def test_a_time_that_does_not_exist_runs_once_the_clocks_have_gone_forward():
    schedule = one({"cron": "30 2 * * *", "timezone": "Europe/Paris"})
    times = schedule.times_after(at("2026-03-27T12:00:00Z"), 3)
    assert [t.astimezone(PARIS).isoformat() for t in times] == [
        "2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_a_time_that_happens_twice_runs_once_when_the_clocks_go_back():
    schedule = one({"cron": "30 2 * * *", "timezone": "Europe/Paris"})
    times = schedule.times_after(at("2026-10-24T12:00:00Z"), 3)
    assert [t.astimezone(PARIS).isoformat() for t in times] == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00", "2026-10-27T02:30:00+01:00"]
    # 24 hours apart in local time: 25 hours of elapsed time across the change.
    assert times[1] - times[0] == timedelta(hours=25)


def test_cron_times_follow_the_zone_not_utc():
    schedule = one({"cron": "0 9 * * MON-FRI", "timezone": "America/New_York"})
    first, second = schedule.times_after(at("2026-07-03T00:00:00Z"), 2)  # a Friday
    assert iso(first) == "2026-07-03T13:00:00Z" and iso(second) == "2026-07-06T13:00:00Z"


# -- every: intervals counted from the epoch --------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("1s", 1), ("90s", 90), ("15m", 900), ("1.5h", 5400), ("2h", 7200),
                                           ("1d", 86400), ("366d", 366 * 86400)])
def test_every_durations(text, seconds):
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text, words", [("0.5s", "at least 1s"), ("0s", "at least 1s"),
                                         ("1.5s", "whole number of seconds"), ("367d", "at most 366d"),
                                         ("15 minutes", "duration such as")])
def test_every_refuses_what_cannot_be_run(text, words):
    with pytest.raises(ValueError, match=words):
        parse_every(text)


def test_every_runs_at_multiples_of_the_interval_whatever_the_start():
    schedule = one({"every": "15m"})
    assert [iso(t) for t in schedule.times_after(at("2026-05-01T10:07:13Z"), 3)] == [
        "2026-05-01T10:15:00Z", "2026-05-01T10:30:00Z", "2026-05-01T10:45:00Z"]


# -- checks beyond the shapes ------------------------------------------------------------------
def test_unknown_zones_and_zone_names_that_are_paths_are_refused():
    with pytest.raises(ValueError, match="did you mean 'Europe/Paris'"):
        zone_named("Europe/Pariss")
    for name in ("../../etc/passwd", "/etc/passwd", "Europe/../../x", "Europe/"):
        with pytest.raises(ValueError, match="IANA time zone name"):
            zone_named(name)
    assert zone_named("Europe/Paris") == PARIS


@pytest.mark.parametrize("text, words", [
    ("61 * * * *", "bad minute"),
    ("* * * *", "it has 4 fields"),
    ("0 0 * * * *", "it has 6 fields"),
    ("0 0 30 2 *", "bad day-of-month"),
    ("@dayly", "did you mean '@daily'"),
    ("@reboot", "wfctl scheduler install"),
])
def test_bad_cron_expressions_say_what_is_wrong(text, words):
    with pytest.raises(ValueError, match=words):
        check_cron(text)


def test_entry_problems_name_the_key():
    problems = dict(entry_problems({"every": "15m", "timezone": "UTC", "jitter": 90000, "maxCatchup": 5000}))
    assert set(problems) == {"timezone", "jitter", "maxCatchup"}
    assert "only applies to cron" in problems["timezone"]
    assert entry_problems({"cron": "@daily", "timezone": "Europe/Paris", "jitter": 30}) == []


def test_an_entry_edited_by_hand_in_the_data_directory_is_refused_with_its_place():
    definition = {"name": "x", "schedule": [{"every": "1m"}, {"cron": "0 3 * * *", "overlap": "never"}]}
    with pytest.raises(ValueError, match=r"schedule\[1\]: overlap must be one of skip, queue, allow"):
        schedules_of(definition, "wf_test0001")
    with pytest.raises(ValueError, match="exactly one of cron or every"):
        schedules_of({"name": "x", "schedule": {"cron": "@daily", "every": "1m"}}, "wf_test0001")


def test_keys_survive_edits_of_input_and_policies_but_not_of_the_time_rule():
    base = {"cron": "0  3 * * *", "timezone": "Europe/Paris", "input": {"a": 1}}
    edited = {**base, "input": {"a": 2}, "overlap": "queue"}
    assert schedule_key("wf_x", base, set()) == schedule_key("wf_x", edited, set()) \
        == "wf_x:cron:0 3 * * *:Europe/Paris"
    assert schedule_key("wf_x", {**base, "cron": "0 4 * * *"}, set()) != schedule_key("wf_x", base, set())
    twice = schedules_of({"name": "x", "schedule": [{"every": "1m"}, {"every": "1m", "input": {"b": 1}}]}, "wf_x")
    assert [s.key for s in twice] == ["wf_x:every:1m", "wf_x:every:1m#2"]


# -- which runs a look starts ------------------------------------------------------------------
def test_nothing_is_due_before_the_next_run_time():
    schedule = one({"every": "1m"})
    assert plan(schedule, at("2030-01-01T00:00:30Z"), at("2030-01-01T00:00:59Z")).runs == []


def test_a_run_due_now_starts_on_time():
    schedule = one({"every": "1m"})
    decision = plan(schedule, at("2030-01-01T00:00:30Z"), at("2030-01-01T00:01:00.200Z"))
    assert decision.runs == [(at("2030-01-01T00:01:00Z"), False)]
    assert decision.missed == 0 and decision.anchor == at("2030-01-01T00:01:00Z")


def test_catchup_latest_starts_the_newest_missed_run_only():
    schedule = one({"every": "1m"})
    decision = plan(schedule, at("2030-01-01T00:00:30Z"), at("2030-01-01T00:10:30Z"))
    assert decision.runs == [(at("2030-01-01T00:10:00Z"), False)]  # 30 s late: on time
    assert decision.missed == 9
    late = plan(schedule, at("2030-01-01T00:00:30Z"), at("2030-01-01T05:00:30Z"))
    assert late.runs == [(at("2030-01-01T05:00:00Z"), False)] and late.missed == 299
    later = plan(one({"every": "5m"}), at("2030-01-01T00:00:30Z"), at("2030-01-01T00:52:30Z"))
    assert later.runs == [(at("2030-01-01T00:50:00Z"), True)] and later.missed == 9


def test_catchup_all_starts_the_newest_max_catchup_runs_oldest_first():
    schedule = one({"every": "5m", "catchup": "all", "maxCatchup": 3})
    decision = plan(schedule, at("2030-01-01T00:00:30Z"), at("2030-01-01T00:52:30Z"))
    assert [iso(t) for t, _ in decision.runs] == ["2030-01-01T00:40:00Z", "2030-01-01T00:45:00Z",
                                                 "2030-01-01T00:50:00Z"]
    assert all(late for _, late in decision.runs)
    assert decision.missed == 7 and decision.anchor == at("2030-01-01T00:50:00Z")


def test_catchup_none_starts_only_a_run_that_is_not_late():
    schedule = one({"every": "5m", "catchup": "none"})
    decision = plan(schedule, at("2030-01-01T00:00:30Z"), at("2030-01-01T00:52:30Z"))
    assert decision.runs == [] and decision.missed == 10 and decision.anchor == at("2030-01-01T00:50:00Z")
    just_now = at("2030-01-01T00:50:00Z") + timedelta(seconds=GRACE_SECONDS - 1)
    on_time = plan(schedule, at("2030-01-01T00:00:30Z"), just_now)
    assert on_time.runs == [(at("2030-01-01T00:50:00Z"), False)] and on_time.missed == 9


def test_a_clock_that_went_back_makes_nothing_due_twice():
    schedule = one({"every": "1m"})
    anchor = at("2030-01-01T00:05:00Z")  # the run of 00:05 was dealt with
    assert plan(schedule, anchor, at("2030-01-01T00:02:10Z")).runs == []  # the clock went three minutes back
    assert plan(schedule, anchor, at("2030-01-01T00:05:40Z")).runs == []  # 00:05 again: not again
    assert plan(schedule, anchor, at("2030-01-01T00:06:01Z")).runs == [(at("2030-01-01T00:06:00Z"), False)]


def test_cron_catchup_counts_the_missed_runs_between_anchor_and_now():
    schedule = one({"cron": "0 * * * *", "timezone": "Europe/Paris"})
    decision = plan(schedule, at("2026-03-28T22:30:00Z"), at("2026-03-29T04:00:10Z"))
    # 23:00Z (00:00 CET) ... 04:00Z: six hours of wall time, one hour skipped by the change.
    assert decision.runs == [(at("2026-03-29T04:00:00Z"), False)]
    assert decision.missed == 5


def test_a_run_time_equal_to_now_is_due_and_one_equal_to_the_anchor_is_not():
    schedule = one({"cron": "*/5 * * * *", "timezone": "UTC"})
    times, count = schedule.due(at("2030-01-01T00:05:00Z"), at("2030-01-01T00:15:00Z"), 10)
    assert [iso(t) for t in times] == ["2030-01-01T00:10:00Z", "2030-01-01T00:15:00Z"] and count == 2


def test_jitter_delays_a_run_by_a_stable_amount_below_the_bound():
    schedule = one({"every": "1h", "jitter": 600})
    moment = at("2030-01-01T01:00:00Z")
    delay = schedule.delay(moment)
    assert 0 <= delay < 600
    assert delay == one({"every": "1h", "jitter": 600}).delay(moment)  # the same after a restart
    delays = {round(schedule.delay(moment + timedelta(hours=h)), 3) for h in range(20)}
    assert len(delays) > 10  # spread, not one fixed offset
    assert plan(schedule, at("2030-01-01T00:30:00Z"), moment + timedelta(seconds=delay - 1)).runs == []
    ready = plan(schedule, at("2030-01-01T00:30:00Z"), moment + timedelta(seconds=delay + 1))
    assert ready.runs == [(moment, False)]


def test_looking_back_from_inside_the_repeated_hour_finds_no_future_time():
    schedule = one({"cron": "*/30 * * * *", "timezone": "Europe/Paris"})
    # 00:59:59.5Z is 02:59:59 CEST, just before the clocks go back to 02:00 CET.
    until = at("2026-10-25T00:59:59.500Z")
    times, _count = schedule.due(at("2026-10-24T23:00:00Z"), until, 10)
    assert [iso(t) for t in times] == ["2026-10-24T23:30:00Z", "2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z"]


def test_an_empty_schedule_list_is_refused_in_words_about_schedules():
    from wfctl.validate import validate_mapping

    problems = validate_mapping({"name": "x", "schedule": [], "steps": [{"id": "a", "run": "true"}]})
    assert [(p.path, p.message) for p in problems] == [
        ("schedule", "schedule must be a non-empty list of schedule entries, not an empty list")]


def test_a_long_jitter_on_a_short_interval_stays_cheap():
    schedule = one({"every": "1s", "jitter": 86400})
    decision = plan(schedule, at("2030-01-01T00:00:00Z"), at("2030-01-02T00:00:00Z"))
    assert decision.anchor is not None and len(decision.runs) == 1
