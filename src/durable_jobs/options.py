"""Checking what users pass: job options, names, and worker settings. Pure.

Each check returns the value normalised, or raises ``ValueError`` saying what is wrong
and what is accepted. The queue, durable calls and workers all check through here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .retry import Backoff

__all__ = [
    "DEFAULT_CONCURRENCY",
    "LIMIT_OPTIONS",
    "Limits",
    "RateLimit",
    "check_job_name",
    "check_options",
    "check_queue_name",
    "check_rate_limit",
    "limit_key",
    "non_negative_seconds",
    "not_a_schedule",
    "parse_queues",
    "positive_seconds",
]

DEFAULT_CONCURRENCY = 10
#: Registration options that shape a job type fleet-wide rather than default a job's.
LIMIT_OPTIONS = frozenset({"concurrency", "concurrency_key", "rate_limit", "rate_key"})
_KEY_MAX = 255  # unique, concurrency and rate keys: an indexed column on every backend
_TAG_MAX = 100
_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|m|h)\s*")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class RateLimit:
    """At most ``count`` runs started per ``per`` seconds (``"N/s"``, ``"N/m"``, ``"N/h"``)."""

    count: int
    per: float
    text: str


@dataclass(frozen=True)
class Limits:
    """A job type's fleet-wide caps, from its registration: at most ``concurrency`` jobs
    running at once (per ``concurrency_key`` of the arguments, when given) and at most
    ``rate_limit`` runs started (per ``rate_key``, when given)."""

    concurrency: int | None = None
    concurrency_key: Callable[[Any], Any] | None = None
    rate_limit: RateLimit | None = None
    rate_key: Callable[[Any], Any] | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Limits | None:
        """The limits among checked registration ``options``; None if there are none."""
        if not LIMIT_OPTIONS & set(options):
            return None
        return cls(
            options.get("concurrency"),
            options.get("concurrency_key"),
            options.get("rate_limit"),
            options.get("rate_key"),
        )


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
        elif key in _CHECKS:
            checked[key] = _CHECKS[key](value)
        else:
            checked[key] = value
    if "delay" in checked and "at" in checked:
        raise ValueError("give either delay or at, not both")
    for needs, given in (("unique_key", "unique_for"), ("concurrency", "concurrency_key")):
        if given in checked and needs not in checked:
            raise ValueError(f"{given} needs {needs}")
    if "rate_key" in checked and "rate_limit" not in checked:
        raise ValueError("rate_key needs rate_limit")
    return checked


def _check_key(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > _KEY_MAX or "\x00" in value:
        raise ValueError(
            f"{name} must be a non-empty string of at most {_KEY_MAX} characters, got {value!r}"
        )
    return _check_storable(name, value)


def _check_duration(name: str, value: Any) -> timedelta:
    return timedelta(seconds=positive_seconds(name, value))


def _check_tags(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ValueError(f"tags must be a list of strings, got {value!r}")
    tags: list[str] = []
    for tag in value:
        if not isinstance(tag, str) or not tag or len(tag) > _TAG_MAX or "\x00" in tag:
            raise ValueError(
                f"each tag must be a non-empty string of at most {_TAG_MAX} characters, got {tag!r}"
            )
        if tag not in tags:
            tags.append(_check_storable("tag", tag))
    return tags


def _check_meta(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"meta must be a dict with string keys, got {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must hold JSON values only: {exc}") from None
    return dict(value)


def _check_concurrency(value: Any) -> int:
    return _check_int("concurrency", value, minimum=1)


def _check_callable(name: str) -> Callable[[Any], Callable[[Any], Any]]:
    def check(value: Any) -> Callable[[Any], Any]:
        if not callable(value):
            raise ValueError(
                f"{name} must be a function of the job's arguments (such as"
                f" lambda order: order.customer_id), got {value!r}"
            )
        return value  # type: ignore[no-any-return]

    return check


def check_rate_limit(value: Any) -> RateLimit:
    """``"N/s"``, ``"N/m"`` or ``"N/h"`` with N >= 1, as a ``RateLimit``."""
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if match is None or int(match[1]) < 1:
        raise ValueError(
            f'rate_limit must be "N/s", "N/m" or "N/h" with N >= 1 (such as "100/m"), got {value!r}'
        )
    return RateLimit(int(match[1]), _PER[match[2]], f"{int(match[1])}/{match[2]}")


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "unique_key": lambda v: _check_key("unique_key", v),
    "unique_for": lambda v: _check_duration("unique_for", v),
    "timeout": lambda v: _check_duration("timeout", v),
    "tags": _check_tags,
    "meta": _check_meta,
    "concurrency": _check_concurrency,
    "concurrency_key": _check_callable("concurrency_key"),
    "rate_limit": check_rate_limit,
    "rate_key": _check_callable("rate_key"),
}


def limit_key(name: str, fn: Callable[[Any], Any], args: Any, job_type: str) -> str:
    """The key ``fn`` gives a job's ``args`` (``concurrency_key``, ``rate_key``), as text."""
    try:
        key = fn(args)
    except Exception as exc:
        raise ValueError(
            f"{name} of job type {job_type!r} failed on its arguments: {exc!r}"
        ) from exc
    return _check_key(name, key if isinstance(key, str) else str(key))


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
