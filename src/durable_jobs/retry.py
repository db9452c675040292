"""Backoff policies: how long a failed job waits before its next run. Pure."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

__all__ = ["MAX_DELAY", "Backoff", "backoff_from_json", "constant", "delayed", "exponential"]

#: The longest wait before a retry: policies and ``RetryAfter`` beyond it raise
#: ``ValueError`` when they are made, and computed retry times are clamped to it.
MAX_DELAY = timedelta(days=365)


class Backoff(Protocol):
    """A policy mapping the failed run's number (1 after the first run) to a wait."""

    def delay(self, attempt: int) -> timedelta:
        """The wait before the run after ``attempt``."""
        ...

    def to_json(self) -> bytes:
        """A JSON form stored with jobs, read back by ``backoff_from_json``."""
        ...


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"backoff {name} must be a number, got {value!r}")
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"backoff {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _at_most_max_delay(name: str, value: float) -> None:
    if value > MAX_DELAY.total_seconds():
        raise ValueError(
            f"backoff {name} must be at most {MAX_DELAY.total_seconds():.0f} seconds"
            f" ({MAX_DELAY.days} days), got {value!r}"
        )


def delayed(now: datetime, delay: timedelta) -> datetime:
    """``now + delay`` with ``delay`` clamped to 0..``MAX_DELAY``; never overflows."""
    delay = min(max(delay, timedelta(0)), MAX_DELAY)
    try:
        return now + delay
    except OverflowError:  # within a year of 9999-12-31
        return datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Exponential:
    """``base * factor ** (attempt - 1)`` seconds, spread by ``jitter``, never over ``max``.

    ``jitter=0.1`` moves each wait by up to 10 % either way; ``max`` bounds the result, so
    once the growth reaches it the waits spread below ``max``.
    """

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("base", "factor", "max", "jitter"):
            _non_negative(name, getattr(self, name))
        _at_most_max_delay("max", self.max)  # the longest wait: base beyond it is cut to it
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor!r}")
        if self.jitter > 1:
            raise ValueError(f"backoff jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, attempt: int) -> timedelta:
        # Cap the exponent first: factor ** attempt overflows a float long before it matters.
        exponent = min(max(attempt - 1, 0), 1000)
        try:
            seconds = min(self.max, self.base * self.factor**exponent)
        except OverflowError:
            seconds = self.max
        if self.jitter:
            # Jitter spreads retries of jobs that failed together, so they do not retry together.
            seconds = min(self.max, seconds * (1 + random.uniform(-self.jitter, self.jitter)))
        return timedelta(seconds=max(seconds, 0.0))

    def to_json(self) -> bytes:
        fields = {"base": self.base, "factor": self.factor, "max": self.max, "jitter": self.jitter}
        return json.dumps({"kind": "exponential", **fields}).encode()


@dataclass(frozen=True, slots=True)
class Constant:
    """The same wait after every failed run."""

    seconds: float

    def __post_init__(self) -> None:
        _non_negative("seconds", self.seconds)
        _at_most_max_delay("seconds", self.seconds)

    def delay(self, attempt: int) -> timedelta:
        return timedelta(seconds=self.seconds)

    def to_json(self) -> bytes:
        return json.dumps({"kind": "constant", "seconds": self.seconds}).encode()


def exponential(
    base: float = 1,
    factor: float = 2,
    max: float = 300,
    jitter: float = 0.1,
) -> Exponential:
    """Exponential backoff (the default policy); ``max`` is at most a year."""
    return Exponential(base, factor, max, jitter)


def constant(seconds: float | timedelta) -> Constant:
    """Wait the same time (seconds or a timedelta, at most a year) after every failure."""
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    return Constant(seconds)


DEFAULT_BACKOFF = Exponential()


def policy_for(stored: bytes | None, default: Backoff | None = None) -> Backoff:
    """The policy a job's retries wait by: the one stored with it (given at enqueue),
    else ``default`` (its handler's), else ``DEFAULT_BACKOFF``. An unreadable stored
    policy counts as none."""
    if stored is not None:
        try:
            return backoff_from_json(stored)
        except (ValueError, TypeError):
            pass
    return DEFAULT_BACKOFF if default is None else default


def backoff_from_json(data: bytes) -> Backoff:
    """Rebuild a policy stored with a job; unknown or malformed forms raise ``ValueError``."""
    spec: Any = json.loads(data)  # invalid JSON raises JSONDecodeError, a ValueError
    if not isinstance(spec, dict):
        raise ValueError(f"a backoff policy is a JSON object, got {spec!r}")
    kind = spec.pop("kind", None)
    policies: dict[str, type[Exponential | Constant]] = {
        "exponential": Exponential,
        "constant": Constant,
    }
    policy = policies.get(kind) if isinstance(kind, str) else None
    if policy is None:
        raise ValueError(f"unknown backoff policy {kind!r}")
    try:
        return policy(**spec)
    except TypeError as exc:  # missing or unexpected fields
        raise ValueError(f"malformed {kind} backoff policy {spec!r}: {exc}") from exc
