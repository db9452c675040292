"""Fire-time arithmetic of every/daily/weekly/cron, checked against brute-force oracles.

The oracles scan minute by minute and know nothing of cronsim or of the module's parser: the
strategies build each cron expression together with the value sets it means.
"""

from __future__ import annotations

import calendar
import itertools
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError, dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from durable_jobs.schedules import Schedule, cron, daily, every, weekly

# Derandomized and without a database so every run checks the same examples.
CHECK = settings(derandomize=True, database=None, deadline=None, max_examples=200)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)
PARIS = "Europe/Paris"
NEW_YORK = "America/New_York"
# Paris and New York change at different local hours; Santiago changes at midnight;
# Lord Howe moves its clocks by 30 minutes.
DST_ZONES = (PARIS, NEW_YORK, "America/Santiago", "Australia/Lord_Howe")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def fires(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    out = []
    for _ in range(count):
        start = schedule.next_after(start)
        out.append(start)
    return out


# --- oracles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fields:
    """What a cron expression means, worked out by the strategy that wrote it."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 is Sunday
    either_day: bool  # both day fields restricted: a day matching either one fires

    def day_matches(self, day: date) -> bool:
        dom = day.day in self.days
        dow = day.isoweekday() % 7 in self.weekdays
        return day.month in self.months and ((dom or dow) if self.either_day else (dom and dow))

    def matches(self, wall: datetime) -> bool:
        return (
            self.day_matches(wall.date())
            and wall.hour in self.hours
            and wall.minute in self.minutes
        )


def wall_of(instant: datetime, zone: tzinfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def first_instant_reading(wall: datetime, zone: tzinfo) -> datetime:
    """The first instant whose clock reads ``wall`` or later, by a minute scan."""
    offsets = [(wall + k * DAY).replace(tzinfo=zone).utcoffset() for k in (-1, 0, 1)]
    instant = wall.replace(tzinfo=UTC) - max(o for o in offsets if o is not None)
    while wall_of(instant, zone) < wall:
        instant += MINUTE
    return instant


def next_by_clock(fields: Fields, zone: tzinfo, after: datetime) -> datetime:
    """Wall-clock semantics: each matching wall time fires at the first instant reading it."""
    # Start early enough that no repeated hour can hide a fire time from the scan.
    wall = wall_of(after, zone).replace(second=0, microsecond=0) - timedelta(hours=3)
    while wall < wall_of(after, zone) + timedelta(days=3660):
        if not fields.day_matches(wall.date()):
            wall = datetime.combine(wall.date() + DAY, time())
        elif wall.hour not in fields.hours:
            wall = wall.replace(minute=0) + timedelta(hours=1)
        elif wall.minute not in fields.minutes:
            wall += MINUTE
        elif (instant := first_instant_reading(wall, zone)) > after:
            return instant
        else:
            wall += MINUTE
    raise AssertionError("no fire time within ten years")


def next_by_elapsed_time(fields: Fields, zone: tzinfo, after: datetime) -> datetime:
    """Elapsed-time semantics: each real minute whose local reading matches fires."""
    instant = after.replace(second=0, microsecond=0) + MINUTE
    while instant < after + timedelta(days=3660):
        local = wall_of(instant, zone)
        if fields.matches(local):
            return instant
        if fields.day_matches(local.date()):
            instant += MINUTE
        else:
            midnight = datetime.combine(local.date() + DAY, time())
            instant = max(instant + MINUTE, first_instant_reading(midnight, zone))
    raise AssertionError("no fire time within ten years")


def oracle(fields: Fields, zone: tzinfo, after: datetime) -> datetime:
    if len(fields.hours) == 24:
        return next_by_elapsed_time(fields, zone, after)
    return next_by_clock(fields, zone, after)


@cache
def transitions(name: str) -> tuple[datetime, ...]:
    """The instants the zone's UTC offset changed in 2024-2026, found by bisection."""
    zone = ZoneInfo(name)
    found = []
    day = utc(2024, 1, 1)
    while day.year < 2027:
        if day.astimezone(zone).utcoffset() != (day + DAY).astimezone(zone).utcoffset():
            low, high = 0, 86_400
            while high - low > 1:
                middle = (low + high) // 2
                probe = day + timedelta(seconds=middle)
                if probe.astimezone(zone).utcoffset() == day.astimezone(zone).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(day + timedelta(seconds=high))
        day += DAY
    return tuple(found)


# --- strategies ------------------------------------------------------------------------

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
MONTH_NAMES = dict(enumerate(MONTHS, 1))
DAY_NAMES = dict(enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat")))
LONGEST_MONTH = {m: calendar.monthrange(2024, m)[1] for m in range(1, 13)}


@st.composite
def cron_items(draw: st.DrawFn, low: int, high: int, names: dict[int, str]) -> tuple[str, set[int]]:
    def token(value: int) -> str:
        if value in names and draw(st.booleans()):
            name = names[value]
            return draw(st.sampled_from([name, name.upper(), name.capitalize()]))
        return str(value)

    kind = draw(st.sampled_from(["value", "range", "range-step", "star-step", "value-step"]))
    step = draw(st.integers(1, high - low + 1))
    first = draw(st.integers(low, high))
    last = draw(st.integers(first, high))
    if kind == "value":
        return token(first), {first}
    if kind == "star-step":
        return f"*/{step}", set(range(low, high + 1, step))
    if kind == "value-step":
        return f"{token(first)}/{step}", set(range(first, high + 1, step))
    if kind == "range":
        return f"{token(first)}-{token(last)}", set(range(first, last + 1))
    return f"{token(first)}-{token(last)}/{step}", set(range(first, last + 1, step))


@st.composite
def cron_fields(
    draw: st.DrawFn, low: int, high: int, names: dict[int, str] | None = None, stars: int = 1
) -> tuple[str, set[int]]:
    """A field and its values; ``*`` in ``stars`` of four draws."""
    if draw(st.integers(0, 3)) < stars:
        return "*", set(range(low, high + 1))
    items = draw(st.lists(cron_items(low, high, names or {}), min_size=1, max_size=3))
    return ",".join(text for text, _ in items), set().union(*(values for _, values in items))


@st.composite
def cron_exprs(draw: st.DrawFn, day_stars: int = 1) -> tuple[str, Fields]:
    minute = draw(cron_fields(0, 59))
    hour = draw(cron_fields(0, 23))
    dom = draw(cron_fields(1, 31, stars=day_stars))
    month = draw(cron_fields(1, 12, MONTH_NAMES, stars=day_stars))
    dow = draw(cron_fields(0, 7, DAY_NAMES, stars=day_stars))
    # Only day-of-month restricts the day, so it has to occur in one of the months.
    assume(dow[0] != "*" or min(dom[1]) <= max(LONGEST_MONTH[m] for m in month[1]))
    fields = Fields(
        minutes=frozenset(minute[1]),
        hours=frozenset(hour[1]),
        days=frozenset(dom[1]),
        months=frozenset(month[1]),
        weekdays=frozenset(day % 7 for day in dow[1]),
        either_day=dom[0] != "*" and dow[0] != "*",
    )
    return " ".join(f[0] for f in (minute, hour, dom, month, dow)), fields


instants = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@st.composite
def near_transitions(draw: st.DrawFn) -> tuple[str, datetime]:
    """A DST zone and an instant within two days of one of its offset changes."""
    name = draw(st.sampled_from(DST_ZONES))
    change = draw(st.sampled_from(transitions(name)))
    seconds = draw(st.integers(-2 * 86_400, 2 * 86_400))
    micro = draw(st.sampled_from([0, 0, 1, 999_999]))
    return name, change + timedelta(seconds=seconds, microseconds=micro)


zoned_instants = st.one_of(
    near_transitions(),
    st.tuples(st.sampled_from(("UTC", *DST_ZONES)), instants),
)


# --- cron against the oracles ----------------------------------------------------------


@CHECK
@given(cron_exprs(), instants)
def test_cron_in_utc_matches_a_minute_by_minute_scan(
    expr: tuple[str, Fields], after: datetime
) -> None:
    text, fields = expr
    assert cron(text).next_after(after) == next_by_elapsed_time(fields, UTC, after)


@CHECK
@given(cron_exprs(day_stars=3), zoned_instants)
def test_cron_in_dst_zones_matches_the_oracle(
    expr: tuple[str, Fields], zoned: tuple[str, datetime]
) -> None:
    text, fields = expr
    name, after = zoned
    assert cron(text, tz=name).next_after(after) == oracle(fields, ZoneInfo(name), after)


@CHECK
@given(cron_exprs(day_stars=3), zoned_instants)
def test_consecutive_cron_fire_times_skip_nothing(
    expr: tuple[str, Fields], zoned: tuple[str, datetime]
) -> None:
    text, fields = expr
    name, after = zoned
    schedule = cron(text, tz=name)
    first = schedule.next_after(after)
    second = schedule.next_after(first)
    assert after < first < second
    assert second == oracle(fields, ZoneInfo(name), first)


# --- daily and weekly against the oracle -----------------------------------------------


def one_time(hour: int, minute: int, weekdays: frozenset[int] = frozenset(range(7))) -> Fields:
    every_day = frozenset(range(1, 32))
    return Fields(
        frozenset({minute}), frozenset({hour}), every_day, frozenset(range(1, 13)), weekdays, False
    )


@CHECK
@given(st.integers(0, 23), st.integers(0, 59), zoned_instants)
def test_daily_matches_the_oracle(hour: int, minute: int, zoned: tuple[str, datetime]) -> None:
    name, after = zoned
    got = daily(hour, minute, tz=name).next_after(after)
    assert got == oracle(one_time(hour, minute), ZoneInfo(name), after)
    assert got == cron(f"{minute} {hour} * * *", tz=name).next_after(after)


@CHECK
@given(st.integers(0, 6), st.integers(0, 23), st.integers(0, 59), zoned_instants)
def test_weekly_matches_the_oracle(
    day: int, hour: int, minute: int, zoned: tuple[str, datetime]
) -> None:
    name, after = zoned
    got = weekly(day, hour, minute, tz=name).next_after(after)
    sunday_first = (day + 1) % 7  # calendar.MONDAY is 0, cron's Monday is 1
    assert got == oracle(one_time(hour, minute, frozenset({sunday_first})), ZoneInfo(name), after)
    assert got == cron(f"{minute} {hour} * * {sunday_first}", tz=name).next_after(after)


def test_daily_fires_at_the_given_utc_time() -> None:
    assert fires(daily(9, 0), utc(2024, 1, 1, 9), 2) == [utc(2024, 1, 2, 9), utc(2024, 1, 3, 9)]
    just_before = datetime(2024, 1, 1, 8, 59, 59, 999_999, tzinfo=UTC)
    assert daily(9, 0).next_after(just_before) == utc(2024, 1, 1, 9)


def test_weekly_fires_on_the_given_day() -> None:
    monday = utc(2024, 1, 1)
    assert weekly("sunday", 2, 0).next_after(monday) == utc(2024, 1, 7, 2)
    assert weekly("monday", 2, 0).next_after(monday) == utc(2024, 1, 1, 2)
    assert weekly("monday", 0, 0).next_after(monday) == utc(2024, 1, 8)


@pytest.mark.parametrize("day", ["sunday", "Sunday", "SUN", "sun", " sun ", calendar.SUNDAY, 6])
def test_weekly_day_spellings(day: str | int) -> None:
    assert weekly(day, 2, 0) == weekly("sunday", 2, 0)


# --- every -----------------------------------------------------------------------------

intervals = st.one_of(
    st.timedeltas(min_value=timedelta(microseconds=1), max_value=timedelta(days=400)),
    st.integers(1, 10**7).map(lambda s: timedelta(seconds=s)),
)


@CHECK
@given(intervals, instants, st.booleans())
def test_every_fires_at_the_next_multiple_of_the_interval(
    interval: timedelta, after: datetime, naive: bool
) -> None:
    got = every(interval).next_after(after.replace(tzinfo=None) if naive else after)
    assert got.tzinfo is UTC
    assert after < got <= after + interval  # nothing between `after` and `got` is skipped
    assert (got - EPOCH) % interval == timedelta(0)


def test_every_counts_from_the_epoch() -> None:
    # 2024-01-01 is 473352 hours after the epoch, 5 past a multiple of 7.
    assert every(hours=7).next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 2)
    assert every(hours=1).next_after(datetime(1969, 12, 31, 23, 30)) == EPOCH
    assert fires(every(minutes=5), utc(2024, 1, 1, 10, 3), 2) == [
        utc(2024, 1, 1, 10, 5),
        utc(2024, 1, 1, 10, 10),
    ]


def test_every_keyword_units_equal_a_timedelta() -> None:
    assert every(minutes=5) == every(timedelta(seconds=300)) == every(seconds=300)
    assert every(days=1, hours=1.5) == every(timedelta(hours=25, minutes=30))
    assert every(minutes=5).spec == "every 300s"
    assert every(seconds=0.25).spec == "every 0.25s"
    assert repr(every(minutes=5)) == "every(seconds=300)"


# --- DST -------------------------------------------------------------------------------

WALL_CLOCK: dict[str, Callable[[int, int, str], Schedule]] = {
    "daily": lambda hour, minute, tz: daily(hour, minute, tz=tz),
    "cron": lambda hour, minute, tz: cron(f"{minute} {hour} * * *", tz=tz),
}


@pytest.mark.parametrize("make", WALL_CLOCK.values(), ids=WALL_CLOCK.keys())
@pytest.mark.parametrize(
    ("tz", "start", "expected"),
    [
        # 2024-03-31 Paris: 02:00 CET jumps to 03:00 CEST (01:00 UTC).
        (PARIS, utc(2024, 3, 30), [(3, 30, 1, 30), (3, 31, 1, 0), (4, 1, 0, 30)]),
        # 2024-03-10 New York: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
        (NEW_YORK, utc(2024, 3, 9), [(3, 9, 7, 30), (3, 10, 7, 0), (3, 11, 6, 30)]),
    ],
    ids=[PARIS, NEW_YORK],
)
def test_a_skipped_time_fires_once_when_the_gap_ends(
    make: Callable[[int, int, str], Schedule],
    tz: str,
    start: datetime,
    expected: list[tuple[int, int, int, int]],
) -> None:
    assert fires(make(2, 30, tz), start, 3) == [utc(2024, *when) for when in expected]


@pytest.mark.parametrize("make", WALL_CLOCK.values(), ids=WALL_CLOCK.keys())
@pytest.mark.parametrize(
    ("tz", "hour", "start", "expected"),
    [
        # 2024-10-27 Paris: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:30 happens twice.
        (PARIS, 2, utc(2024, 10, 26), [(10, 26, 0, 30), (10, 27, 0, 30), (10, 28, 1, 30)]),
        # 2024-11-03 New York: 02:00 EDT falls back to 01:00 EST (06:00 UTC); 01:30 twice.
        (NEW_YORK, 1, utc(2024, 11, 2), [(11, 2, 5, 30), (11, 3, 5, 30), (11, 4, 6, 30)]),
    ],
    ids=[PARIS, NEW_YORK],
)
def test_a_repeated_time_fires_once_at_its_first_occurrence(
    make: Callable[[int, int, str], Schedule],
    tz: str,
    hour: int,
    start: datetime,
    expected: list[tuple[int, int, int, int]],
) -> None:
    schedule = make(hour, 30, tz)
    times = [utc(2024, *when) for when in expected]
    assert fires(schedule, start, 3) == times
    # Asked from inside the second pass of the repeated hour, it waits for the next day.
    second_pass = times[1] + timedelta(minutes=45)
    assert schedule.next_after(second_pass) == times[2]


def test_weekly_follows_the_same_dst_rules() -> None:
    sunday_0230 = weekly("sunday", 2, 30, tz=PARIS)
    assert fires(sunday_0230, utc(2024, 3, 30), 2) == [utc(2024, 3, 31, 1), utc(2024, 4, 7, 0, 30)]
    assert fires(sunday_0230, utc(2024, 10, 26), 2) == [
        utc(2024, 10, 27, 0, 30),
        utc(2024, 11, 3, 1, 30),
    ]


def test_several_skipped_times_fire_once() -> None:
    # 02:00, 02:15, 02:30, 02:45 and 03:00 all resolve to 03:00 CEST on 2024-03-31.
    schedule = cron("0,15,30,45 2 * * *", tz=PARIS)
    assert fires(schedule, utc(2024, 3, 31), 2) == [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0)]
    assert fires(cron("0 2,3 * * *", tz=PARIS), utc(2024, 3, 31), 2) == [
        utc(2024, 3, 31, 1),
        utc(2024, 4, 1, 0),
    ]


def test_a_30_minute_gap_ends_at_the_half_hour() -> None:
    # 2024-10-06 Lord Howe: 02:00 +10:30 jumps to 02:30 +11 (15:30 UTC the day before).
    assert daily(2, 15, tz="Australia/Lord_Howe").next_after(utc(2024, 10, 5)) == utc(
        2024, 10, 5, 15, 30
    )


def test_an_every_hour_cron_follows_elapsed_time() -> None:
    hourly = cron("30 * * * *", tz=NEW_YORK)
    # Spring: 02:30 does not exist, so 01:30 EST is followed by 03:30 EDT an hour later.
    assert fires(hourly, utc(2024, 3, 10, 6), 2) == [
        utc(2024, 3, 10, 6, 30),
        utc(2024, 3, 10, 7, 30),
    ]
    # Autumn: 01:30 EDT and 01:30 EST both fire, an hour apart.
    assert fires(hourly, utc(2024, 11, 3, 5), 3) == [
        utc(2024, 11, 3, 5, 30),
        utc(2024, 11, 3, 6, 30),
        utc(2024, 11, 3, 7, 30),
    ]
    for spelled in ("30 0-23 * * *", "30 */1 * * *"):
        assert fires(cron(spelled, tz=NEW_YORK), utc(2024, 11, 3, 5), 3) == fires(
            hourly, utc(2024, 11, 3, 5), 3
        )
    quarter = cron("*/15 * * * *", tz=PARIS)
    for start in (utc(2024, 3, 31, 0, 50), utc(2024, 10, 27, 0, 50)):
        times = fires(quarter, start, 8)
        assert {b - a for a, b in itertools.pairwise(times)} == {timedelta(minutes=15)}


@pytest.mark.parametrize("schedule", [daily(9, 0, tz=PARIS), cron("0 9 * * *", tz=PARIS)])
def test_paris_nine_oclock_is_eight_utc_in_winter_and_seven_in_summer(schedule: Schedule) -> None:
    assert schedule.next_after(utc(2024, 1, 15)) == utc(2024, 1, 15, 8)
    assert schedule.next_after(utc(2024, 7, 15)) == utc(2024, 7, 15, 7)


# --- cron syntax -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("macro", "expr"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_macros(macro: str, expr: str) -> None:
    start = utc(2024, 5, 17, 13, 29)
    assert fires(cron(macro), start, 3) == fires(cron(expr), start, 3)


def test_either_day_field_matches_when_both_are_restricted() -> None:
    # The 13th or a Friday: 2024-09-13 is both, 2024-10-13 is a Sunday.
    got = [t.date() for t in fires(cron("0 0 13 * fri"), utc(2024, 9, 1), 7)]
    assert got == [date(2024, 9, d) for d in (6, 13, 20, 27)] + [
        date(2024, 10, d) for d in (4, 11, 13)
    ]
    # A stepped day-of-month is restricted too (Vixie cron's "*/..." quirk is not copied).
    got = [t.date() for t in fires(cron("0 0 */10 * mon"), utc(2024, 9, 1), 4)]
    assert got == [date(2024, 9, d) for d in (2, 9, 11, 16)]


def test_only_one_day_field_restricted_means_both_must_match() -> None:
    got = [t.date() for t in fires(cron("0 0 * * mon"), utc(2024, 9, 1), 2)]
    assert got == [date(2024, 9, 2), date(2024, 9, 9)]
    assert cron("0 0 29 2 *").next_after(utc(2024, 3, 1)) == utc(2028, 2, 29)


def test_sunday_is_0_or_7() -> None:
    assert cron("0 0 * * 7").next_after(utc(2024, 1, 1)) == utc(2024, 1, 7)
    assert cron("0 0 * * 7").next_after(utc(2024, 1, 1)) == cron("0 0 * * 0").next_after(
        utc(2024, 1, 1)
    )


# --- time zones, identity, inputs ------------------------------------------------------

ALL_KINDS = [
    every(minutes=7),
    daily(9, 0),
    daily(9, 0, tz=PARIS),
    weekly("sun", 2, 0, tz=NEW_YORK),
    cron("*/5 * * * *"),
    cron("0 9 * * mon-fri", tz=PARIS),
]


@pytest.mark.parametrize("schedule", ALL_KINDS, ids=repr)
def test_naive_input_is_utc_and_output_is_aware_utc(schedule: Schedule) -> None:
    naive = datetime(2024, 6, 1, 12, 34, 56)
    got = schedule.next_after(naive)
    assert got == schedule.next_after(naive.replace(tzinfo=UTC))
    assert got.tzinfo is UTC
    in_paris = naive.replace(tzinfo=UTC).astimezone(ZoneInfo(PARIS))
    assert schedule.next_after(in_paris) == got
    assert schedule.next_after(got) > got


def test_time_zone_spellings_are_equal() -> None:
    assert daily(9, 0, tz=PARIS) == daily(9, 0, tz=ZoneInfo(PARIS))
    assert daily(9, 0) == daily(9, 0, tz="UTC") == daily(9, 0, tz=timezone.utc)  # noqa: UP017
    fixed = daily(9, 0, tz=timezone(timedelta(hours=2)))
    assert fixed.next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 7)


def test_specs() -> None:
    assert every(timedelta(minutes=5)).spec == "every 300s"
    assert daily(9, 0).spec == "daily 09:00 UTC"
    assert weekly("Sunday", 2, 0, tz=PARIS).spec == "weekly sunday 02:00 Europe/Paris"
    assert cron("0 * * * *").spec == "cron 0 * * * * UTC"
    assert cron(" 0  9 * * MON-FRI ", tz=PARIS).spec == "cron 0 9 * * mon-fri Europe/Paris"


def test_reprs() -> None:
    assert repr(daily(9, 0)) == "daily(9, 0)"
    assert (
        repr(weekly(calendar.SUNDAY, 2, 0, tz=PARIS)) == "weekly('sunday', 2, 0, tz='Europe/Paris')"
    )
    assert repr(cron("0 9 * * 1-5", tz=PARIS)) == "cron('0 9 * * 1-5', tz='Europe/Paris')"


def test_schedules_are_immutable_hashable_values() -> None:
    assert len({*ALL_KINDS, *ALL_KINDS}) == len(ALL_KINDS)
    assert daily(9, 0) != daily(9, 1)
    assert daily(0, 0) != cron("0 0 * * *")  # same times, different kinds
    assert daily(9, 0) != "daily 09:00 UTC"
    with pytest.raises(FrozenInstanceError):
        daily(9, 0).hour = 10  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        Schedule()  # type: ignore[abstract]


# --- errors ----------------------------------------------------------------------------


def error(call: Callable[[], object], kind: type[Exception] = ValueError) -> str:
    with pytest.raises(kind) as caught:
        call()
    return str(caught.value)


def test_every_errors() -> None:
    assert "interval must be positive, got datetime.timedelta(0)" in error(
        lambda: every(timedelta(0))
    )
    assert "interval must be positive" in error(lambda: every(timedelta(seconds=-1)))
    assert "interval must be positive: give a timedelta or days=" in error(lambda: every())
    assert "interval must be positive" in error(lambda: every(minutes=0))
    assert "minutes must be a finite non-negative number, got -5" in error(
        lambda: every(minutes=-5)
    )
    assert "seconds must be a finite non-negative number, got nan" in error(
        lambda: every(seconds=float("nan"))
    )
    assert "interval must be positive" in error(lambda: every(seconds=1e-9))
    assert "not both" in error(lambda: every(timedelta(1), minutes=1), TypeError)
    assert "every(seconds=...)" in error(lambda: every(5), TypeError)  # type: ignore[arg-type]
    assert "minutes must be a number" in error(lambda: every(minutes="5"), TypeError)  # type: ignore[arg-type]


@pytest.mark.parametrize("make", [daily, lambda h, m, tz=None: weekly("mon", h, m, tz)])
def test_daily_and_weekly_time_errors(make: Callable[..., Schedule]) -> None:
    assert "invalid hour 24: must be 0-23" in error(lambda: make(24, 0))
    assert "invalid hour -1: must be 0-23" in error(lambda: make(-1, 0))
    assert "invalid minute 60: must be 0-59" in error(lambda: make(9, 60))
    assert "hour must be an int, got '9'" in error(lambda: make("9", 0), TypeError)
    assert "minute must be an int, got 1.5" in error(lambda: make(9, 1.5), TypeError)
    assert "unknown time zone tz='Mars/Olympus'" in error(lambda: make(9, 0, "Mars/Olympus"))
    assert "unknown time zone tz='Europe'" in error(lambda: make(9, 0, "Europe"))
    assert "tz must be an IANA zone name" in error(lambda: make(9, 0, 2), TypeError)


@pytest.mark.parametrize("day", ["funday", "su", "", 7, -1, True, None])
def test_weekly_day_errors(day: object) -> None:
    assert f"weekly(): invalid day {day!r}" in error(lambda: weekly(day, 2, 0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "invalid minute field '61': 61 is not in 0-59"),
        ("* 24 * * *", "invalid hour field '24': 24 is not in 0-23"),
        ("* * 0 * *", "invalid day-of-month field '0': 0 is not in 1-31"),
        ("* * 32 * *", "invalid day-of-month field '32': 32 is not in 1-31"),
        ("* * * 13 *", "invalid month field '13': 13 is not in 1-12"),
        ("* * * foo *", "invalid month field 'foo': 'foo' is not a number or a three-letter name"),
        ("* * * * 8", "invalid day-of-week field '8': 8 is not in 0-7"),
        ("* * * * Funday", "invalid day-of-week field 'Funday': 'Funday' is not a number or a"),
        ("* * * * monday", "invalid day-of-week field 'monday'"),
        ("mon * * * *", "invalid minute field 'mon': 'mon' is not a number"),
        ("* jan * * *", "invalid hour field 'jan'"),
        ("5-3 * * * *", "invalid minute field '5-3': range '5-3' runs backwards"),
        ("* * * * fri-sun", "invalid day-of-week field 'fri-sun': range 'fri-sun' runs backwards"),
        ("*/0 * * * *", "invalid minute field '*/0': step 0 is not in 1-60"),
        ("* */25 * * *", "invalid hour field '*/25': step 25 is not in 1-24"),
        ("1,,2 * * * *", "invalid minute field '1,,2': '' is not a value, a range or a step"),
        ("*/x * * * *", "invalid minute field '*/x'"),
        ("-5 * * * *", "invalid minute field '-5'"),
        ("0 0 L * *", "invalid day-of-month field 'L'"),
        ("0 0 15W * *", "invalid day-of-month field '15W'"),
        ("0 0 ? * 1", "invalid day-of-month field '?'"),
        ("0 0 * * 5L", "invalid day-of-week field '5L'"),
        ("0 0 * * 1#2", "invalid day-of-week field '1#2'"),
        ("R * * * *", "invalid minute field 'R'"),
        ("H * * * *", "invalid minute field 'H'"),
        ("0 0 30 2 *", "day-of-month field '30' never occurs in month field '2'"),
        ("0 0 31 4,jun *", "day-of-month field '31' never occurs in month field '4,jun'"),
        ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
        ("* * * *", "expected 5 fields"),
        ("0 * * * * *", "got 6; seconds and years fields are not supported"),
        ("0 0 * * * * 2030", "got 7"),
        ("@reboot", "unknown macro '@reboot'; use one of @yearly,"),
    ],
)
def test_cron_errors(expr: str, message: str) -> None:
    text = error(lambda: cron(expr))
    assert text.startswith(f"cron expression {expr!r}: ")
    assert message in text


def test_cron_other_errors() -> None:
    assert "expr must be a str" in error(lambda: cron(5), TypeError)  # type: ignore[arg-type]
    assert "cron(): unknown time zone tz='Nowhere'" in error(lambda: cron("* * * * *", "Nowhere"))
    # Day-of-month 31 in February is fine when a weekday may match instead.
    assert cron("0 0 31 2 mon").next_after(utc(2024, 2, 1)) == utc(2024, 2, 5)


@pytest.mark.parametrize("schedule", ALL_KINDS, ids=repr)
def test_next_after_rejects_a_non_datetime(schedule: Schedule) -> None:
    day = date(2024, 1, 1)
    assert "expected a datetime" in error(lambda: schedule.next_after(day), TypeError)  # type: ignore[arg-type]


def _walls(schedule: Schedule, start: datetime, count: int, zone: str) -> Iterator[str]:
    for instant in fires(schedule, start, count):
        yield instant.astimezone(ZoneInfo(zone)).strftime("%a %H:%M")


def test_weekday_cron_in_paris() -> None:
    weekdays = cron("0 9 * * 1-5", tz=PARIS)
    got = list(_walls(weekdays, utc(2024, 3, 29), 3, PARIS))  # a Friday, then the DST weekend
    assert got == ["Fri 09:00", "Mon 09:00", "Tue 09:00"]
