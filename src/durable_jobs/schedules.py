"""Recurring schedules: when a scheduled job fires.

Pure time arithmetic, no storage: a schedule answers ``next_after(dt)``, the first fire time
strictly after ``dt``. ``daily``, ``weekly`` and ``cron`` follow the wall clock of their time
zone across DST changes: a wall time the clocks skip fires once, when the gap ends; a wall
time the clocks repeat fires once, at its first occurrence. A ``cron`` whose hour field
matches every hour follows elapsed time instead, as an interval would.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim

__all__ = ["Schedule", "cron", "daily", "every", "weekly"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)
_ONE_DAY = timedelta(days=1)
_ONE_WEEK = timedelta(days=7)

_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAYS = {name[:size]: i for i, name in enumerate(_DAY_NAMES) for size in (3, len(name))}


class Schedule(ABC):
    """When a recurring job fires.

    Schedules are immutable and hashable; two schedules are equal when their ``spec`` is.
    """

    @abstractmethod
    def next_after(self, dt: datetime) -> datetime:
        """The first fire time strictly after ``dt`` (naive means UTC), as an aware UTC time."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """A short stable description, such as ``"daily 09:00 Europe/Paris"``."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return type(self) is type(other) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(self.spec)


# --- every -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class _Every(Schedule):
    interval: timedelta

    def next_after(self, dt: datetime) -> datetime:
        # Counting from the epoch (not from start-up) makes every process agree on fire times.
        ticks = (_to_utc(dt) - _EPOCH) // self.interval + 1
        return _EPOCH + ticks * self.interval

    @property
    def spec(self) -> str:
        return f"every {_seconds_text(self.interval)}s"

    def __repr__(self) -> str:
        return f"every(seconds={_seconds_text(self.interval)})"


def every(
    interval: timedelta | None = None,
    *,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    seconds: float = 0,
) -> Schedule:
    """Fire at every multiple of ``interval`` counted from 1970-01-01 00:00 UTC.

    Give either a ``timedelta`` or the keyword units: ``every(timedelta(minutes=5))`` is
    ``every(minutes=5)``. A non-positive interval raises ``ValueError``.
    """
    units = {"days": days, "hours": hours, "minutes": minutes, "seconds": seconds}
    if interval is not None:
        if any(value != 0 for value in units.values()):
            raise TypeError("every(): give either an interval or keyword units, not both")
        if not isinstance(interval, timedelta):
            raise TypeError(
                f"every(): interval must be a timedelta, got {interval!r}"
                " (use every(seconds=...) for a number)"
            )
        if interval <= timedelta(0):
            raise ValueError(f"every(): interval must be positive, got {interval!r}")
        return _Every(interval)
    for name, value in units.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"every(): {name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"every(): {name} must be a finite non-negative number, got {value!r}")
    delta = timedelta(**units)
    if delta <= timedelta(0):
        raise ValueError(
            "every(): interval must be positive: give a timedelta or days=, hours=, minutes="
            f" or seconds= adding up to at least a microsecond, got {delta!r}"
        )
    return _Every(delta)


# --- daily and weekly ------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class _Daily(Schedule):
    hour: int
    minute: int
    tz: tzinfo
    tz_name: str

    def next_after(self, dt: datetime) -> datetime:
        after = _to_utc(dt)
        # Days before the wall date of `after` resolve to instants at or before it.
        day = _wall(after, self.tz).date()
        while (fire := _resolve(_at(day, self.hour, self.minute), self.tz)) <= after:
            day += _ONE_DAY
        return fire

    @property
    def spec(self) -> str:
        return f"daily {self.hour:02d}:{self.minute:02d} {self.tz_name}"

    def __repr__(self) -> str:
        return f"daily({self.hour}, {self.minute}{_tz_arg(self.tz_name)})"


def daily(hour: int, minute: int, tz: str | tzinfo | None = None) -> Schedule:
    """Fire every day at ``hour:minute`` wall-clock time in ``tz`` (an IANA name; UTC if None).

    On the day the clocks skip that time it fires once, when the gap ends (02:30 becomes
    03:00 when 02:00 jumps to 03:00); on the day they repeat it, only its first occurrence.
    """
    _check_time("daily", hour, minute)
    zone, name = _zone("daily", tz)
    return _Daily(hour, minute, zone, name)


@dataclass(frozen=True, eq=False, repr=False)
class _Weekly(Schedule):
    weekday: int  # calendar.MONDAY (0) .. calendar.SUNDAY (6)
    hour: int
    minute: int
    tz: tzinfo
    tz_name: str

    def next_after(self, dt: datetime) -> datetime:
        after = _to_utc(dt)
        day = _wall(after, self.tz).date()
        day += timedelta(days=(self.weekday - day.weekday()) % 7)
        while (fire := _resolve(_at(day, self.hour, self.minute), self.tz)) <= after:
            day += _ONE_WEEK
        return fire

    @property
    def spec(self) -> str:
        day = _DAY_NAMES[self.weekday]
        return f"weekly {day} {self.hour:02d}:{self.minute:02d} {self.tz_name}"

    def __repr__(self) -> str:
        day = _DAY_NAMES[self.weekday]
        return f"weekly({day!r}, {self.hour}, {self.minute}{_tz_arg(self.tz_name)})"


def weekly(day: str | int, hour: int, minute: int, tz: str | tzinfo | None = None) -> Schedule:
    """Fire every week on ``day`` at ``hour:minute`` wall-clock time in ``tz`` (UTC if None).

    ``day`` is a name or abbreviation in any case (``"Sunday"``, ``"sun"``) or a ``calendar``
    constant (``calendar.MONDAY`` is 0, ``calendar.SUNDAY`` is 6). DST changes are handled
    as for :func:`daily`.
    """
    weekday = _weekday(day)
    _check_time("weekly", hour, minute)
    zone, name = _zone("weekly", tz)
    return _Weekly(weekday, hour, minute, zone, name)


def _weekday(day: str | int) -> int:
    if isinstance(day, str) and day.strip().lower() in _DAYS:
        return _DAYS[day.strip().lower()]
    if isinstance(day, int) and not isinstance(day, bool) and 0 <= day <= 6:
        return day
    raise ValueError(
        f"weekly(): invalid day {day!r}: use a name such as 'sunday' or 'sun',"
        " or calendar.MONDAY (0) to calendar.SUNDAY (6)"
    )


def _check_time(helper: str, hour: int, minute: int) -> None:
    for name, value, top in (("hour", hour, 23), ("minute", minute, 59)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{helper}(): {name} must be an int, got {value!r}")
        if not 0 <= value <= top:
            raise ValueError(f"{helper}(): invalid {name} {value!r}: must be 0-{top}")


# --- cron ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class _Cron(Schedule):
    expr: str  # as given, lower-cased, whitespace collapsed
    tz: tzinfo
    tz_name: str
    numeric: str  # the validated expression in plain numbers, as handed to cronsim
    every_hour: bool

    def next_after(self, dt: datetime) -> datetime:
        after = _to_utc(dt)
        wall = _wall(after, self.tz)
        if not self.every_hour:
            fires = (_resolve(match, self.tz) for match in self._walls_after(wall))
            return next(f for f in fires if f > after)
        # Elapsed time: a skipped wall time never happens, a repeated one happens twice. The
        # first and the second readings of matching wall times each rise with the wall time,
        # so take the earliest of either kind that is after `after`.
        fire = next(f for f in self._readings_after(wall, fold=0) if f > after)
        repeated = _instant(wall, self.tz, fold=1) - _instant(wall, self.tz, fold=0)
        if repeated:
            # `after` is inside a repeated stretch: second readings of wall times up to its
            # length before `wall` are still to come.
            seconds = self._readings_after(wall - repeated, fold=1)
            fire = min(fire, next(f for f in seconds if f > after))
        return fire

    def _walls_after(self, wall: datetime) -> Iterator[datetime]:
        """Matching naive wall times after ``wall``, in order."""
        return CronSim(self.numeric, wall)

    def _readings_after(self, wall: datetime, *, fold: int) -> Iterator[datetime]:
        for match in self._walls_after(wall):
            if _exists(match, self.tz):
                yield _instant(match, self.tz, fold=fold)

    @property
    def spec(self) -> str:
        return f"cron {self.expr} {self.tz_name}"

    def __repr__(self) -> str:
        return f"cron({self.expr!r}{_tz_arg(self.tz_name)})"


def cron(expr: str, tz: str | tzinfo | None = None) -> Schedule:
    """Fire at the times matching a standard 5-field cron expression, in ``tz`` (UTC if None).

    Fields are minute, hour, day-of-month, month, day-of-week, each ``*`` or a list of
    values, ranges ``a-b`` and steps (``*/s``, ``a-b/s``, ``a/s`` meaning ``a-max/s``).
    Months and days take three-letter names in any case (``jan``, ``Mon``); day-of-week 0 and 7
    are both Sunday. The macros ``@hourly``, ``@daily``, ``@midnight``, ``@weekly``, ``@monthly``,
    ``@yearly`` and ``@annually`` are accepted. When both day fields are restricted (not
    ``*``) a day matching either fires. Seconds and years fields and non-standard syntax
    (``L``, ``W``, ``#``, ``?``) raise ``ValueError``.

    If the hour field matches every hour, fire times follow elapsed time across DST changes;
    otherwise they follow the wall clock as for :func:`daily`.
    """
    if not isinstance(expr, str):
        raise TypeError(f"cron(): expr must be a str, got {expr!r}")
    text = " ".join(expr.split())
    key = text.lower()
    if key.startswith("@") and key not in _MACROS:
        raise ValueError(
            f"cron expression {expr!r}: unknown macro {text!r}; use one of {', '.join(_MACROS)}"
        )
    fields = _MACROS.get(key, text).split()
    if len(fields) != len(_FIELDS):
        raise ValueError(
            f"cron expression {expr!r}: expected 5 fields (minute hour day-of-month month"
            f" day-of-week), got {len(fields)}; seconds and years fields are not supported"
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(expr, spec, field) for spec, field in zip(_FIELDS, fields, strict=True)
    )
    dom_text, dow_text = fields[2], fields[4]
    # With any day of the week allowed, the day of the month alone must occur in some month.
    if dow_text == "*" and min(days) > max(_MONTH_DAYS[month] for month in months):
        raise ValueError(
            f"cron expression {expr!r}: day-of-month field {dom_text!r}"
            f" never occurs in month field {fields[3]!r}"
        )
    numeric = " ".join(
        (
            _numbers(minutes, full=len(minutes) == 60),
            _numbers(hours, full=len(hours) == 24),
            # Only a bare "*" leaves a day field unrestricted ("*/2" with a weekday means
            # either); cronsim treats any leading "*" so, hence plain lists for the rest.
            _numbers(days, full=dom_text == "*"),
            _numbers(months, full=len(months) == 12),
            _numbers({day % 7 for day in weekdays}, full=dow_text == "*"),
        )
    )
    zone, name = _zone("cron", tz)
    return _Cron(key, zone, name, numeric, every_hour=len(hours) == 24)


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    names: dict[str, int]


_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_FIELDS = (
    _FieldSpec("minute", 0, 59, {}),
    _FieldSpec("hour", 0, 23, {}),
    _FieldSpec("day-of-month", 1, 31, {}),
    _FieldSpec("month", 1, 12, {name: i for i, name in enumerate(_MONTH_NAMES, 1)}),
    _FieldSpec("day-of-week", 0, 7, {name[:3]: (i + 1) % 7 for i, name in enumerate(_DAY_NAMES)}),
)
_MONTH_DAYS = {m: 31 for m in (1, 3, 5, 7, 8, 10, 12)} | {m: 30 for m in (4, 6, 9, 11)} | {2: 29}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_TOKEN = r"[0-9]+|[A-Za-z]+"
_ITEM = re.compile(
    rf"(?:(?P<star>\*)|(?P<first>{_TOKEN})(?:-(?P<last>{_TOKEN}))?)(?:/(?P<step>[0-9]+))?"
)


class _FieldError(ValueError):
    pass


def _parse_field(expr: str, spec: _FieldSpec, text: str) -> set[int]:
    values: set[int] = set()
    try:
        for item in text.split(","):
            values |= _parse_item(spec, item)
    except _FieldError as error:
        raise ValueError(
            f"cron expression {expr!r}: invalid {spec.name} field {text!r}: {error}"
        ) from None
    return values


def _parse_item(spec: _FieldSpec, item: str) -> set[int]:
    match = _ITEM.fullmatch(item)
    if match is None:
        raise _FieldError(f"{item!r} is not a value, a range or a step")
    step = 1
    if match["step"] is not None:
        step = int(match["step"])
        if not 1 <= step <= spec.high - spec.low + 1:
            raise _FieldError(f"step {step} is not in 1-{spec.high - spec.low + 1}")
    if match["star"]:
        return set(range(spec.low, spec.high + 1, step))
    first = _value(spec, match["first"])
    if match["last"] is not None:
        last = _value(spec, match["last"])
        if last < first:
            raise _FieldError(f"range {item!r} runs backwards")
    else:
        last = spec.high if match["step"] is not None else first
    return set(range(first, last + 1, step))


def _value(spec: _FieldSpec, token: str) -> int:
    if not token.isdigit():
        if token.lower() not in spec.names:
            kind = "a number or a three-letter name" if spec.names else "a number"
            raise _FieldError(f"{token!r} is not {kind}")
        return spec.names[token.lower()]
    value = int(token)
    if not spec.low <= value <= spec.high:
        raise _FieldError(f"{value} is not in {spec.low}-{spec.high}")
    return value


def _numbers(values: set[int], *, full: bool) -> str:
    return "*" if full else ",".join(map(str, sorted(values)))


# --- time zones and wall clocks --------------------------------------------------------


def _zone(helper: str, tz: str | tzinfo | None) -> tuple[tzinfo, str]:
    if tz is None:
        return UTC, "UTC"
    if isinstance(tz, str):
        try:
            zone: tzinfo = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"{helper}(): unknown time zone tz={tz!r}") from None
    elif isinstance(tz, tzinfo):
        zone = tz
    else:
        raise TypeError(f"{helper}(): tz must be an IANA zone name or a tzinfo, got {tz!r}")
    name = str(getattr(zone, "key", None) or zone)
    return (UTC, name) if name == "UTC" else (zone, name)


def _tz_arg(name: str) -> str:
    return "" if name == "UTC" else f", tz={name!r}"


def _to_utc(dt: datetime) -> datetime:
    if not isinstance(dt, datetime):
        raise TypeError(f"expected a datetime, got {dt!r}")
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _wall(instant: datetime, zone: tzinfo) -> datetime:
    """The naive local clock reading at ``instant``."""
    return instant.astimezone(zone).replace(tzinfo=None)


def _at(day: date, hour: int, minute: int) -> datetime:
    return datetime.combine(day, time(hour, minute))


def _instant(wall: datetime, zone: tzinfo, *, fold: int) -> datetime:
    """The instant of a naive wall time; ``fold=1`` picks the second reading of a repeated one."""
    return wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)


def _exists(wall: datetime, zone: tzinfo) -> bool:
    return _wall(_instant(wall, zone, fold=0), zone) == wall


def _resolve(wall: datetime, zone: tzinfo) -> datetime:
    """The instant a naive wall-clock time fires: the first instant the clock reads ``wall``
    or, if the clocks skip it, the first instant after the skipped stretch."""
    first = _instant(wall, zone, fold=0)
    if _wall(first, zone) == wall:
        return first
    # fold=0 reads a skipped time with the offset from before the gap, landing after the
    # gap; fold=1 reads it with the offset after, landing before. Bisect for the jump.
    low = (_instant(wall, zone, fold=1) - _EPOCH) // _ONE_SECOND
    high = (first - _EPOCH) // _ONE_SECOND
    while high - low > 1:
        middle = (low + high) // 2
        if _wall(_EPOCH + middle * _ONE_SECOND, zone) > wall:
            high = middle
        else:
            low = middle
    return _EPOCH + high * _ONE_SECOND


def _seconds_text(interval: timedelta) -> str:
    whole, micro = divmod(interval // timedelta(microseconds=1), 1_000_000)
    return f"{whole}.{micro:06d}".rstrip("0") if micro else str(whole)
