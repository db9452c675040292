"""``FakeClock``: a clock that only moves when a test moves it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from ..storage.dialects import utc

__all__ = ["FakeClock"]


class FakeClock:
    """A ``Clock`` for tests: ``now()`` stays put until ``advance`` or ``set``.

    ``FakeClock(datetime(2026, 3, 28, 12, tzinfo=UTC))`` (a naive start is UTC; the
    default start is 2026-01-01 00:00 UTC). Pass it as ``Queue(url, clock=clock)``.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = utc(start) if start is not None else datetime(2026, 1, 1, tzinfo=UTC)
        # Handlers may read it from worker threads while the test moves it.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FakeClock({self.now().isoformat()})"

    def now(self) -> datetime:
        """The fake current time (aware UTC)."""
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float | None = None, /, **kwargs: float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds) or by ``timedelta(**kwargs)``
        (``advance(days=7)``); returns the new time. Moving back raises ``ValueError``
        (use ``set``)."""
        if (delta is None) == (not kwargs):
            raise TypeError("give advance() a timedelta, seconds or timedelta keywords")
        step = timedelta(**kwargs) if delta is None else _as_timedelta(delta)
        if step < timedelta(0):
            raise ValueError(f"advance() moves forward only, got {step!r}")
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> None:
        """Jump to ``when`` (naive means UTC), forward or back."""
        with self._lock:
            self._now = utc(when)


def _as_timedelta(value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"advance() takes a timedelta or seconds, got {value!r}")
    return timedelta(seconds=value)
