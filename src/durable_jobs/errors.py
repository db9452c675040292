"""Exceptions users raise from handlers and the library raises to users."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .retry import MAX_DELAY

if TYPE_CHECKING:
    from .storage.records import ChildrenWait

__all__ = [
    "Cancelled",
    "CheckpointConflict",
    "ChildFailed",
    "DatabaseUnavailable",
    "DurableJobsError",
    "FailedRun",
    "JobNotFound",
    "JobTimeout",
    "NoRetry",
    "NondeterminismError",
    "NotADatabase",
    "NotInJobError",
    "OutcomeRefused",
    "ResultTooLarge",
    "RetryAfter",
    "SchemaNotReady",
    "SignalTimeout",
    "StaleJobError",
    "StorageError",
    "Suspend",
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

    Once the job's retries are spent it fails like any other error. A delay must be
    between 0 and ``MAX_DELAY`` (365 days): anything else raises ``ValueError``.
    """

    def __init__(self, delay: timedelta | float, message: object = "") -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0 or seconds != seconds:
            raise ValueError(f"RetryAfter delay must be >= 0 seconds, got {delay!r}")
        if seconds > MAX_DELAY.total_seconds():
            raise ValueError(
                f"RetryAfter delay must be at most {MAX_DELAY.days} days"
                f" ({MAX_DELAY.total_seconds():.0f} s), got {delay!r}"
            )
        super().__init__(str(message))
        self.delay = timedelta(seconds=seconds)
        self.message = str(message)


class NotInJobError(DurableJobsError, RuntimeError):
    """Raised by ``current_job()`` or ``call()`` outside a running job handler."""


class NondeterminismError(DurableJobsError):
    """On replay, a durable call names a different handler than its checkpoint."""


class StaleJobError(DurableJobsError):
    """The worker lost the job's lock; its outcome was rejected."""


class Suspend(BaseException):
    """Internal: a waiting function (``jobs.sleep``...) suspends the running job.

    Raised from inside the handler (also from a step run by ``call()``), it unwinds the
    handler; the worker then stores the job ``waiting`` until ``until`` (None: no
    deadline), with ``waiting_for`` saying what for. A ``BaseException``, so that
    ``except Exception`` in user code (and ``call()``'s retries in place) lets it pass.
    """

    def __init__(
        self,
        until: datetime | None,
        waiting_for: str,
        *,
        signal: str | None = None,
        children: ChildrenWait | None = None,
    ) -> None:
        super().__init__(until, waiting_for)
        self.until = until
        self.waiting_for = waiting_for
        #: The signal the job waits for, if any: its suspension looks for one again.
        self.signal = signal
        #: The children the job waits for, if any: its suspension counts them again.
        self.children = children

    def __str__(self) -> str:
        at = "" if self.until is None else f" until {self.until.isoformat()}"
        return f"suspended: {self.waiting_for}{at}"


class Cancelled(BaseException):
    """Raised inside a running handler to stop it: its job was cancelled, or its run
    exceeded its ``timeout``.

    A sync handler gets it at its next ``call``, ``sleep``, ``spawn``, ``fan_out``,
    signal function or ``set_progress``; an async handler has its task cancelled
    instead. A ``BaseException`` (like ``asyncio.CancelledError``), so that ``except
    Exception`` in user code lets it pass. Whatever the run does after, a cancelled job
    stays cancelled, and a timed-out run fails with ``JobTimeout``.
    """


class JobTimeout(TimeoutError):
    """A run took longer than its job's ``timeout``: the run fails with this error,
    and the job is retried per its policy."""


class SignalTimeout(NoRetry, TimeoutError):
    """``wait_for_signal(name, timeout=...)`` found no signal by its deadline.

    Checkpointed like the signal it did not get: a replay raises it again. A ``NoRetry``:
    uncaught, it fails the job without retries (a retry would time out the same way).
    """


class ChildFailed(NoRetry):
    """A fan-out (``fail_fast``, or a ``threshold`` that can no longer be reached) or a
    ``wait_for`` failed because a child failed: ``job_id`` and ``index`` (its place in the
    list waited for) name the child, ``error`` is its stored error. A ``NoRetry``: a retry
    would replay the same outcome.
    """

    def __init__(self, message: str, *, job_id: str, index: int, error: str | None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.index = index
        self.error = error


class CheckpointConflict(NondeterminismError):
    """A checkpoint was saved at a position (job, scope, call index) that has one already.

    The first checkpoint is kept: two calls of one run never share an index, so this
    means two runs (or writers outside the library) numbered their calls differently.
    """


class ResultTooLarge(NoRetry):
    """A handler returned a result that encodes to more bytes than its queue's
    ``max_payload``: the job fails without retries (the same run would return it again)."""


class OutcomeRefused(DurableJobsError):
    """The database refused to store a run's outcome (a value its column cannot take):
    the job is failed with this error instead, so the worker's other outcomes go on."""


class StorageError(DurableJobsError):
    """The database failed a storage call. The message names the database (password
    masked) and says what to do; ``database`` is that name and ``__cause__`` the
    driver's own error. ``transient``: the same call may succeed if retried."""

    def __init__(self, message: str, *, database: str = "", transient: bool = False) -> None:
        super().__init__(message)
        self.database = database
        self.transient = transient


class DatabaseUnavailable(StorageError):
    """The database cannot be reached or opened: a server down or refusing, a wrong
    host, user, password or database name, a SQLite file whose directory is missing."""


class NotADatabase(StorageError):
    """The file or server at the URL is not a database this library can use (a SQLite
    URL pointing at a file of another kind, or a corrupt one)."""


class SchemaNotReady(StorageError, RuntimeError):
    """The database has not been migrated (or only to an older version):
    run ``storage.migrate()`` or ``sdj migrate``."""


class JobNotFound(DurableJobsError, LookupError):
    """No job has the given id (never enqueued, or deleted by retention)."""


class FailedRun(DurableJobsError):
    """The error a failed job stored, as another process sees it: ``message`` is its
    ``last_error`` (the exception's type and message) and ``traceback`` the traceback
    its worker recorded, if any."""

    def __init__(self, message: str, traceback: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.traceback = traceback
