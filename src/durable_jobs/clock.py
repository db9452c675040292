"""The clock a queue and its storage read the time from (``Queue(clock=...)``).

Everything time-dependent reads it: delays, retry backoff, lock expiry, schedules,
durable sleeps and signal timeouts. Tests pass a fake one (``durable_jobs.testing``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from .job import utcnow

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Tells the time: ``now()`` returns an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The host's clock; with it, the database's own clock sets lock expiries."""

    # The function itself, not a method calling it: reading the time costs nothing more.
    now = staticmethod(utcnow)

    def __repr__(self) -> str:
        return "SystemClock()"


#: The clock of queues and storages given none.
SYSTEM_CLOCK = SystemClock()
