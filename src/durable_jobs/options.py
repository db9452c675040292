"""Checking what users pass: job options, names, and worker settings. Pure.

Each check returns the value normalised, or raises ``ValueError`` saying what is wrong
and what is accepted. The queue, durable calls and workers all check through here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from .retry import Backoff

__all__ = [
    "DEFAULT_CONCURRENCY",
    "check_job_name",
    "check_options",
    "check_queue_name",
    "non_negative_seconds",
    "not_a_schedule",
    "parse_queues",
    "positive_seconds",
]

DEFAULT_CONCURRENCY = 10


def _check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if abs(value) > 2**31 - 1:
        raise ValueError(f"{name} is out of range: {value!r}")
    return value


def _check_delay(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        delay = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"delay must be a finite number of seconds, got {value!r}")
        if value < 0:  # before conversion: a tiny negative number rounds to timedelta(0)
            raise ValueError(f"delay must not be negative, got {value!r}")
        try:
            delay = timedelta(seconds=value)
        except OverflowError:
            raise ValueError(f"delay is out of range: {value!r}") from None
    else:
        raise ValueError(f"delay must be a timedelta or seconds, got {value!r}")
    if delay < timedelta(0):
        raise ValueError(f"delay must not be negative, got {value!r}")
    return delay


def _check_at(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise ValueError(f"at must be a datetime, got {value!r}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _check_storable(what: str, value: str) -> str:
    # No database stores a lone surrogate in text; say so rather than fail in the driver.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode (no lone surrogates): {value!r}") from None
    return value


def check_queue_name(value: Any) -> str:
    """A queue name: non-empty, at most 200 characters, storable text."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ValueError(f"queue must be a non-empty name of at most 200 characters, got {value!r}")
    if "\x00" in value:
        raise ValueError("queue name must not contain NUL characters")
    return _check_storable("queue name", value)


def _check_backoff(value: Any) -> Backoff:
    if not (callable(getattr(value, "delay", None)) and callable(getattr(value, "to_json", None))):
        raise ValueError(
            f"backoff must be a policy such as jobs.exponential() or jobs.constant(5), "
            f"got {value!r}"
        )
    return value  # type: ignore[no-any-return]


def check_job_name(value: Any) -> str:
    """A job type: non-empty, at most 200 characters, storable text."""
    if not isinstance(value, str) or not value or len(value) > 200 or "\x00" in value:
        raise ValueError(
            f"job type must be a non-empty name of at most 200 characters, got {value!r}"
        )
    return _check_storable("job type", value)


def not_a_schedule(name: str, value: Any) -> str:
    """Why ``value`` is refused as the schedule of ``name``, with what to write instead."""
    hint = ""
    if isinstance(value, str):
        hint = f"; for a cron expression write jobs.cron({value!r})"
    elif isinstance(value, timedelta) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    ):
        hint = "; for an interval write jobs.every(...), e.g. jobs.every(minutes=5)"
    return (
        f"schedule({name!r}): expected a schedule made by jobs.every(), jobs.daily(),"
        f" jobs.weekly() or jobs.cron() (or a jobs.Schedule subclass), got {value!r}{hint}"
    )


def check_options(
    options: Mapping[str, Any], allowed: frozenset[str], where: str
) -> dict[str, Any]:
    """Validate job options, returning them normalised; raises ``ValueError`` on bad input."""
    if not options:
        return {}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) for {where}: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key == "priority":
            checked[key] = _check_int("priority", value)
        elif key == "retries":
            checked[key] = _check_int("retries", value, minimum=0)
        elif key == "delay":
            checked[key] = _check_delay(value)
        elif key == "at":
            checked[key] = _check_at(value)
        elif key == "queue":
            checked[key] = check_queue_name(value)
        elif key == "backoff":
            checked[key] = _check_backoff(value)
        else:
            checked[key] = value
    if "delay" in checked and "at" in checked:
        raise ValueError("give either delay or at, not both")
    return checked


def positive_seconds(name: str, value: timedelta | float) -> float:
    """A duration given as seconds or a timedelta, which must be positive, in seconds."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(
            f"{name} must be a positive number of seconds or a timedelta, got {value!r}"
        )
    return float(seconds)


def non_negative_seconds(name: str, value: timedelta | float) -> float:
    """A duration given as seconds or a timedelta, which may be zero, in seconds."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds < float("inf")
    ):
        raise ValueError(f"{name} must be a number of seconds >= 0 or a timedelta, got {value!r}")
    return float(seconds)


def parse_queues(
    queues: Mapping[str, int] | Sequence[str] | None, named: Iterable[str] = ()
) -> dict[str, int]:
    """A worker's queues as name -> concurrency (a list of names gets the default).

    None means ``"default"`` and every queue in ``named`` (those its handlers name),
    each with the default concurrency.
    """
    if queues is None:
        return dict.fromkeys(["default", *named], DEFAULT_CONCURRENCY)
    if isinstance(queues, str):
        raise ValueError(
            f"queues must be a list of names or a name -> concurrency dict, got {queues!r}"
        )
    pairs = (
        queues.items()
        if isinstance(queues, Mapping)
        else ((q, DEFAULT_CONCURRENCY) for q in queues)
    )
    parsed: dict[str, int] = {}
    for name, concurrency in pairs:
        if not isinstance(name, str) or not name:
            raise ValueError(f"queue names must be non-empty strings, got {name!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(
                f"concurrency of queue {name!r} must be an int >= 1, got {concurrency!r}"
            )
        parsed[name] = concurrency
    if not parsed:
        raise ValueError("a worker needs at least one queue")
    return parsed
