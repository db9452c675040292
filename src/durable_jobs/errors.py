"""Exceptions users raise from handlers and the library raises to users."""

from __future__ import annotations

from datetime import timedelta

__all__ = [
    "DurableJobsError",
    "NoRetry",
    "NondeterminismError",
    "NotInJobError",
    "RetryAfter",
    "StaleJobError",
]


class DurableJobsError(Exception):
    """Base class of the library's own errors."""


class NoRetry(Exception):
    """Raise from a handler to fail the job now, without further retries.

    ``NoRetry("message")`` or ``raise NoRetry(err) from err`` to wrap another error.
    """

    def __init__(self, message: object = "") -> None:
        if isinstance(message, BaseException):
            text = f"{type(message).__name__}: {message}"
        else:
            text = str(message)
        super().__init__(text)
        self.message = text


class RetryAfter(Exception):
    """Raise from a handler to retry after exactly ``delay`` (a timedelta or seconds).

    Once the job's retries are spent it fails like any other error.
    """

    def __init__(self, delay: timedelta | float, message: object = "") -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0 or seconds != seconds:
            raise ValueError(f"RetryAfter delay must be >= 0 seconds, got {delay!r}")
        super().__init__(str(message))
        self.delay = timedelta(seconds=seconds)
        self.message = str(message)


class NotInJobError(DurableJobsError, RuntimeError):
    """Raised by ``current_job()`` or ``call()`` outside a running job handler."""


class NondeterminismError(DurableJobsError):
    """On replay, a durable call names a different handler than its checkpoint."""


class StaleJobError(DurableJobsError):
    """The worker lost the job's lock; its outcome was rejected."""
