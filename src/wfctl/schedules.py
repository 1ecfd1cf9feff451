"""Schedules of workflow files: parsing `schedule:` entries, their run times, and catch-up.

Pure functions of their arguments: nothing here reads the clock, the data directory or
the environment except `local_zone` (the machine's time zone, the default of cron
entries). The scheduler (scheduler.py) passes `now` in, so that tests can drive time.

Cron expressions are parsed and stepped by cronsim, which handles daylight saving time
the way Debian's cron does: a time that does not exist on the day the clocks go forward
runs when they have (02:30 → 03:00), and a time that happens twice when they go back
runs once. cronsim has no `@daily`-style aliases; crontab(5) defines each one as a
fixed five-field expression, so they are translated into those before cronsim sees them.

`every` entries count whole seconds from the Unix epoch: `every: 15m` is due at :00,
:15, :30 and :45 of each hour, whatever the time zone, and the same times are due
after a restart, without any state.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Iterator

from wfctl import spec

UTC = timezone.utc
# crontab(5): "@yearly ... Run once a year, '0 0 1 1 *'", and so on.
CRON_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
CRON_HELP = (
    "a cron expression has 5 fields (minute hour day-of-month month day-of-week) "
    "or is one of @yearly, @monthly, @weekly, @daily, @hourly"
)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_EVERY_SECONDS = 366 * 86400
MAX_JITTER = 86400.0
MAX_CATCHUP = 1000
DEFAULT_MAX_CATCHUP = 10
DEFAULT_OVERLAP = "skip"
DEFAULT_CATCHUP = "latest"
# A run less than this late is on time: `catchup: none` still starts it (a scheduler
# that was busy or just started is not "down").
GRACE_SECONDS = 60.0
# Counting missed cron times stops here (each step of cronsim costs a few microseconds).
COUNT_CAP = 10_000


# -- parsing --------------------------------------------------------------------------------
def cron_fields(text: str) -> str:
    """The five-field form of a cron expression or alias; ValueError says what is wrong."""
    stripped = " ".join(text.split())
    if stripped.startswith("@"):
        lowered = stripped.lower()
        if lowered == "@reboot":
            raise ValueError("@reboot is not a time; `wfctl scheduler install` starts the scheduler at boot")
        if lowered not in CRON_ALIASES:
            from wfctl.spec import did_you_mean

            hint = did_you_mean(lowered, list(CRON_ALIASES))
            aside = f" ({hint[2:]})" if hint else ""
            raise ValueError(f"unknown cron alias {stripped!r}{aside}; the aliases are {', '.join(CRON_ALIASES)}")
        return CRON_ALIASES[lowered]
    count = len(stripped.split())
    if count != 5:
        raise ValueError(f"invalid cron expression {stripped!r}: it has {count} field{'s' if count != 1 else ''}; "
                         f"{CRON_HELP}")
    return stripped


def check_cron(text: str, zone: tzinfo = UTC) -> str:
    """The five-field expression, once cronsim has parsed it and found a next time."""
    from cronsim import CronSim, CronSimError

    fields = cron_fields(text)
    try:
        iterator = CronSim(fields, datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as err:
        reason = str(err).lower() or "it does not parse"
        raise ValueError(f"invalid cron expression {fields!r}: {reason}; {CRON_HELP}") from None
    try:
        next(iterator)
    except StopIteration:
        raise ValueError(f"the cron expression {fields!r} never matches a date") from None
    return fields


def parse_every(text: str) -> int:
    """Seconds of an `every` duration (30s, 15m, 2h, 1d, 1.5h); ValueError below 1 s."""
    match = re.fullmatch(spec.EVERY_PATTERN, text.strip())
    if match is None:
        raise ValueError(f"every {spec.EVERY_HELP}, not {text!r}")
    seconds = float(text.strip()[:-1]) * UNIT_SECONDS[text.strip()[-1]]
    if seconds < 1:
        raise ValueError(f"every must be at least 1s, not {text!r}")
    if seconds > MAX_EVERY_SECONDS:
        raise ValueError(f"every must be at most 366d, not {text!r}")
    if seconds != math.floor(seconds):
        raise ValueError(f"every must be a whole number of seconds, not {text!r} ({seconds:g}s)")
    return int(seconds)


def zone_named(name: str) -> tzinfo:
    """The zoneinfo time zone of an IANA name; ValueError for one that does not exist.

    The name is checked against a pattern before zoneinfo turns it into a path."""
    import zoneinfo

    if not isinstance(name, str) or not re.fullmatch(spec.TIMEZONE_PATTERN, name) or len(name) > 64:
        raise ValueError(f"timezone {spec.TIMEZONE_HELP}, not {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}{_zone_suggestion(name)}") from None


def _zone_suggestion(name: str) -> str:
    import zoneinfo

    from wfctl.spec import did_you_mean

    try:
        names = zoneinfo.available_timezones()
    except OSError:
        return ""
    return did_you_mean(name, sorted(names)) or "; zone names look like Europe/Paris, America/New_York or UTC"


def local_zone() -> tuple[str, tzinfo]:
    """The machine's time zone and its name: $TZ, else /etc/localtime, else UTC."""
    import zoneinfo

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        link = os.readlink("/etc/localtime")
        candidates.append(link.split("zoneinfo/", 1)[1] if "zoneinfo/" in link else "")
    except OSError:
        pass
    for name in candidates:
        if name:
            try:
                return name, zone_named(name)
            except ValueError:
                continue
    try:
        with open("/etc/localtime", "rb") as handle:
            return "localtime", zoneinfo.ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ValueError):
        return "UTC", UTC


def entry_problems(entry: dict) -> list[tuple[str, str]]:
    """What is wrong with one `schedule:` entry beyond the shapes spec.py checks:
    (key, sentence) pairs. Values of the wrong type are left to the shape checks."""
    problems: list[tuple[str, str]] = []
    zone: tzinfo = UTC
    name = entry.get("timezone")
    if isinstance(name, str) and re.fullmatch(spec.TIMEZONE_PATTERN, name):
        try:
            zone = zone_named(name)
        except ValueError as err:
            problems.append(("timezone", str(err)))
    if isinstance(entry.get("cron"), str):
        try:
            check_cron(entry["cron"], zone)
        except ValueError as err:
            problems.append(("cron", str(err)))
    if isinstance(entry.get("every"), str) and re.fullmatch(spec.EVERY_PATTERN, entry["every"]):
        try:
            parse_every(entry["every"])
        except ValueError as err:
            problems.append(("every", str(err)))
        if "timezone" in entry:
            problems.append(("timezone", "timezone only applies to cron; an every schedule counts elapsed time"))
    jitter = entry.get("jitter")
    if spec.is_number(jitter) and math.isfinite(jitter) and jitter > MAX_JITTER:
        problems.append(("jitter", f"jitter must be at most {MAX_JITTER:g} seconds, not {jitter:g}"))
    most = entry.get("maxCatchup")
    if isinstance(most, int) and not isinstance(most, bool) and most > MAX_CATCHUP:
        problems.append(("maxCatchup", f"maxCatchup must be at most {MAX_CATCHUP}, not {most}"))
    return problems


def input_problems(definition: dict, given: dict) -> list[tuple[str, str]]:
    """(input name, sentence) for a schedule's input that the workflow's `inputs` refuse."""
    from wfctl.errors import WorkflowInvalid
    from wfctl.validate import check_execution_input

    try:
        check_execution_input(definition, given, file="schedule")
    except WorkflowInvalid as err:
        # The sentences are written for --input; here the value comes from the schedule.
        return [(p.path.partition(".")[2], p.message.replace("--input", "the schedule's input"))
                for p in err.problems]
    return []


def entries_of(definition: dict) -> list[dict]:
    """The `schedule:` entries of a definition, as a list (one entry or a list of them)."""
    value = definition.get("schedule") if isinstance(definition, dict) else None
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list):
        return [entry for entry in value if isinstance(entry, dict)]
    return []


# -- one schedule ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """One `schedule:` entry of one workflow, parsed and checked."""

    workflow_id: str
    workflow_name: str
    index: int
    key: str  # stable across edits of other entries; see `schedule_key`
    cron: str | None  # five fields (aliases translated)
    every: int | None  # seconds
    zone_name: str
    zone: tzinfo
    input: dict = field(default_factory=dict)
    overlap: str = DEFAULT_OVERLAP
    catchup: str = DEFAULT_CATCHUP
    max_catchup: int = DEFAULT_MAX_CATCHUP
    jitter: float = 0.0
    entry: dict = field(default_factory=dict)  # as written in the file

    def describe(self) -> str:
        """"cron 0 3 * * * (Europe/Paris)" or "every 15m": how people see it."""
        if self.cron is not None:
            return f"cron {self.entry.get('cron', self.cron)} ({self.zone_name})"
        return f"every {self.entry.get('every')}"

    # -- times -------------------------------------------------------------------------------
    def times_after(self, after: datetime, count: int) -> list[datetime]:
        """The next `count` run times strictly after `after` (in UTC)."""
        return [moment for moment, _ in zip(self._forward(after), range(count))]

    def due(self, after: datetime | None, until: datetime, limit: int) -> tuple[list[datetime], int]:
        """The run times in (after, until]: the latest `limit` of them (oldest first) and
        how many there are (at most COUNT_CAP are counted for cron)."""
        if after is not None and until <= after:
            return [], 0
        if self.every is not None:
            return self._every_due(after, until, limit)
        latest: list[datetime] = []
        for moment in self._backward(until):
            if after is not None and moment <= after:
                break
            latest.append(moment)
            if len(latest) >= limit:
                break
        latest.reverse()
        if after is None or len(latest) < limit:
            return latest, len(latest)
        count = 0
        for moment in self._forward(after):
            if moment > until or count >= COUNT_CAP:
                break
            count += 1
        return latest, max(count, len(latest))

    def delay(self, at: datetime) -> float:
        """The jitter of the run due at `at`: derived from the schedule and the time, so a
        restarted scheduler waits the same delay for the same run."""
        if not self.jitter:
            return 0.0
        digest = hashlib.sha256(f"{self.key}|{iso(at)}".encode()).digest()
        return self.jitter * int.from_bytes(digest[:8], "big") / 2**64

    def _every_due(self, after: datetime | None, until: datetime, limit: int) -> tuple[list[datetime], int]:
        step = self.every or 1
        last = math.floor(until.timestamp()) // step
        first = (math.floor(after.timestamp()) // step + 1) if after is not None else last
        if last < first:
            return [], 0
        count = last - first + 1
        start = max(first, last - limit + 1)
        return [datetime.fromtimestamp(k * step, UTC) for k in range(start, last + 1)], count

    def _forward(self, after: datetime) -> Iterator[datetime]:
        if self.every is not None:
            k = math.floor(after.timestamp()) // self.every + 1
            while True:
                yield datetime.fromtimestamp(k * self.every, UTC)
                k += 1
        from cronsim import CronSim

        # Times leave here in UTC: Python compares and subtracts two times of one zone
        # by their wall clocks, which is wrong across a daylight saving change.
        for moment in CronSim(self.cron or "", after.astimezone(self.zone)):
            yield moment.astimezone(UTC)

    def _backward(self, until: datetime) -> Iterator[datetime]:
        """Cron times at or before `until`, newest first."""
        from cronsim import CronSim

        # cronsim steps back one second before it looks: start a second after `until`
        # (whole seconds) so that a time equal to `until` is found.
        # (in UTC: a second added to a wall clock can skip an hour when clocks go back).
        start = (until.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)).astimezone(self.zone)
        for moment in CronSim(self.cron or "", start, reverse=True):
            if moment.astimezone(UTC) <= until:
                yield moment.astimezone(UTC)

    def to_dict(self) -> dict[str, Any]:
        """The entry with its defaults filled in, for `wfctl schedules --json`."""
        shown: dict[str, Any] = {}
        if self.cron is not None:
            shown["cron"] = self.entry.get("cron", self.cron)
            shown["timezone"] = self.zone_name
        else:
            shown["every"] = self.entry.get("every")
        shown.update(input=self.input, overlap=self.overlap, catchup=self.catchup,
                     maxCatchup=self.max_catchup, jitter=self.jitter)
        return shown


def schedule_key(workflow_id: str, entry: dict, taken: set[str]) -> str:
    """The scheduler state's name for an entry: the workflow and the entry's time rule.

    Editing the input or the policies keeps the key (and so the last run time); a new
    cron expression, interval or time zone is a new schedule.
    """
    if isinstance(entry.get("cron"), str):
        base = f"{workflow_id}:cron:{' '.join(entry['cron'].split())}:{entry.get('timezone') or 'local'}"
    else:
        base = f"{workflow_id}:every:{entry.get('every')}"
    key, number = base, 1
    while key in taken:
        number += 1
        key = f"{base}#{number}"
    return key


def schedules_of(definition: dict, workflow_id: str) -> list[Schedule]:
    """Every schedule of a workflow definition. Raises ValueError naming the first bad
    entry: a registered definition was checked when it was created, but its file in the
    data directory may have been edited since."""
    value = definition.get("schedule")
    if value is None:
        return []
    if not isinstance(value, (dict, list)):
        raise ValueError("schedule must be a schedule entry or a list of them")
    entries = [value] if isinstance(value, dict) else value
    result: list[Schedule] = []
    taken: set[str] = set()
    for index, entry in enumerate(entries):
        where = "schedule" if isinstance(value, dict) else f"schedule[{index}]"
        try:
            schedule = _parse_entry(entry, workflow_id, str(definition.get("name") or workflow_id), index, taken)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        taken.add(schedule.key)
        result.append(schedule)
    return result


def _parse_entry(entry: Any, workflow_id: str, name: str, index: int, taken: set[str]) -> Schedule:
    if not isinstance(entry, dict):
        raise ValueError("a schedule entry must be a mapping with cron or every")
    # The shapes first (the tables `wfctl validate` uses), then what they cannot say.
    block = spec.SCHEDULE_ENTRY
    for key, value in entry.items():
        rule = block.by_name.get(key) if isinstance(key, str) else None
        if rule is None:
            raise ValueError(f"unknown key {key!r} in a schedule entry")
        clause = rule.shape.problem(value)
        if clause is not None:
            raise ValueError(f"{key} {clause}")
    if ("cron" in entry) == ("every" in entry):
        raise ValueError("a schedule entry needs exactly one of cron or every")
    for key, message in entry_problems(entry):
        raise ValueError(f"{key}: {message}")
    if "cron" in entry:
        if "timezone" in entry:
            zone_name, zone = entry["timezone"], zone_named(entry["timezone"])
        else:
            zone_name, zone = local_zone()
        cron, every = check_cron(entry["cron"], zone), None
    else:
        zone_name, zone = "UTC", UTC
        cron, every = None, parse_every(entry["every"])
    return Schedule(
        workflow_id=workflow_id,
        workflow_name=name,
        index=index,
        key=schedule_key(workflow_id, entry, taken),
        cron=cron,
        every=every,
        zone_name=zone_name,
        zone=zone,
        input=dict(entry.get("input") or {}),
        overlap=entry.get("overlap", DEFAULT_OVERLAP),
        catchup=entry.get("catchup", DEFAULT_CATCHUP),
        max_catchup=int(entry.get("maxCatchup", DEFAULT_MAX_CATCHUP)),
        jitter=float(entry.get("jitter", 0.0)),
        entry=dict(entry),
    )


# -- catch-up -------------------------------------------------------------------------------
@dataclass
class Plan:
    """What one look at a schedule decided: the runs to start (oldest first, each with
    whether it is late), how many due runs are dropped as missed, and the new anchor
    (the latest run time dealt with; None when nothing was due)."""

    runs: list[tuple[datetime, bool]] = field(default_factory=list)
    missed: int = 0
    anchor: datetime | None = None


def plan(schedule: Schedule, anchor: datetime | None, now: datetime) -> Plan:
    """Which runs of `schedule` to start at `now`, given that every run time up to
    `anchor` has been dealt with already.

    A run time T is due once `now` has passed T plus its jitter. When several are due
    (the scheduler was stopped, or the clock jumped forwards) the catch-up policy picks:
    `latest` the newest one, `all` the newest `maxCatchup` ones, `none` only one that is
    less than GRACE_SECONDS late. A clock that jumped backwards makes nothing due until
    it passes `anchor` again, so no run time is ever started twice.
    """
    # Enough times to find the newest ready one: those within the jitter may not be yet.
    not_yet_bound = min(int(schedule.jitter // (schedule.every or 60)) + 2, 1000) if schedule.jitter else 0
    limit = max(schedule.max_catchup, 1) + not_yet_bound
    candidates, count = schedule.due(anchor, now, limit)
    ready_index = None
    for position in range(len(candidates) - 1, -1, -1):
        moment = candidates[position]
        if (now - moment).total_seconds() >= schedule.delay(moment):
            ready_index = position
            break
    if ready_index is None:
        return Plan()
    newest = candidates[ready_index]
    not_ready = len(candidates) - 1 - ready_index
    due_count = count - not_ready  # the due times up to and including `newest`
    eligible = candidates[: ready_index + 1]

    def late(moment: datetime) -> bool:
        return (now - moment).total_seconds() - schedule.delay(moment) > GRACE_SECONDS

    if schedule.catchup == "all":
        chosen = eligible[-schedule.max_catchup:]
    elif schedule.catchup == "none":
        chosen = [newest] if not late(newest) else []
    else:
        chosen = [newest]
    return Plan(runs=[(moment, late(moment)) for moment in chosen], missed=due_count - len(chosen), anchor=newest)


# -- times as text --------------------------------------------------------------------------
def iso(moment: datetime) -> str:
    """A moment in UTC as the data directory writes it: 2026-03-29T01:00:00Z."""
    text = moment.astimezone(UTC).isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_moment(text: str) -> datetime:
    """An ISO 8601 time; one without an offset is taken as UTC. ValueError when it is not one."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def local_text(moment: datetime, zone: tzinfo) -> str:
    """A moment in a schedule's zone with its offset: 2026-03-29T03:00:00+02:00."""
    return moment.astimezone(zone).isoformat(timespec="seconds").replace("+00:00", "Z")
