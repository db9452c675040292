"""The data the library stores: jobs, their statuses and durable-call checkpoints. No I/O."""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "Checkpoint",
    "Job",
    "JobStatus",
    "children_wait",
    "new_ids",
    "signal_wait",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def new_ids(count: int) -> list[str]:
    """``count`` fresh ids: UUIDs in the version 7 layout (time first, 74 random bits).

    Ids that grow with time land at the end of the primary key's index, so inserts
    touch its last pages only instead of random ones all over a big table.
    """
    t = f"{time.time_ns() // 1_000_000:012x}"
    head = f"{t[:8]}-{t[8:]}-7"
    b = os.urandom(10 * count).hex()
    return [
        f"{head}{b[i : i + 3]}-{_VARIANT[b[i + 3]]}{b[i + 4 : i + 7]}-{b[i + 7 : i + 19]}"
        for i in range(0, 20 * count, 20)
    ]


def children_wait(finished: int, total: int) -> str:
    """``Job.waiting_for`` of a job waiting for its children, ``finished`` of ``total``
    of them finished when it suspended."""
    return f"children:{finished}/{total}"


def signal_wait(name: str) -> str:
    """``Job.waiting_for`` of a job waiting for the signal ``name``."""
    return f"signal:{name}"


class JobStatus(enum.StrEnum):
    """Where a job is in its life (a ``str`` subclass: compares equal to its value)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"
    #: Suspended by a durable wait (``jobs.sleep``, ``jobs.wait_for_signal``): holds no
    #: worker slot; a worker resumes it, replaying its checkpoints, once what it waits
    #: for has come.
    WAITING = "waiting"
    #: Held by ``queue.pause(job_id)``: not claimed until ``queue.resume(job_id)``.
    PAUSED = "paused"
    #: Stopped by ``queue.cancel`` (or by its fan-out failing): never runs again.
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for statuses a job never leaves on its own (finished jobs)."""
        return self in _FINISHED


_FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass
class Job:
    """One unit of work. ``args`` and ``result`` hold JSON bytes."""

    id: str = field(default="", kw_only=True)
    type: str
    args: bytes = b"null"
    queue: str = "default"
    priority: int = 0
    status: JobStatus = JobStatus.PENDING
    attempt: int = 0
    max_retries: int = 3
    last_error: str | None = None
    run_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    result: bytes | None = None
    #: JSON of the backoff policy given at enqueue, if any (registration default otherwise).
    backoff: bytes | None = None
    #: The worker holding the job's lock while it runs (None otherwise).
    locked_by: str | None = None
    heartbeat_at: datetime | None = None
    #: JSON-able data that travels with the job: the producer's (``meta=`` at enqueue)
    #: and instruments' (such as trace context).
    meta: dict[str, Any] = field(default_factory=dict)
    #: The fencing token of the job's latest claim: one more with every claim, never
    #: going back (an operator's retry resets ``attempt``, not this). A run's writes
    #: count only while the job is still running under its owner and this token.
    fence: int = 0
    #: While running: when the lock expires unless heartbeated, on the database's clock
    #: (the claim or last heartbeat plus the owning worker's ``lock_timeout``).
    lock_expires_at: datetime | None = None
    #: When the job ended, completed or failed (``completed_at`` is set for completed
    #: jobs only).
    finished_at: datetime | None = None
    #: The worker that stored the latest run's outcome (None for a run taken back).
    finished_by: str | None = None
    #: The traceback of the latest failed run, while the job is retrying or failed.
    traceback: str | None = None
    #: The job that enqueued this one as its child, if any.
    parent_id: str | None = None
    #: The last value the handler gave ``jobs.set_progress`` (decoded JSON), else None.
    progress: Any = None
    #: While ``waiting``: when the wait ends (None: no deadline). While the run that
    #: resumes from a wait is due or running: that wait's deadline (the claim of a
    #: resumed job is not a new attempt). None otherwise.
    wait_until: datetime | None = None
    #: While ``waiting``: what the job waits for (``"sleep"``, ``"signal:<name>"``,
    #: ``"children:<finished>/<total>"``).
    waiting_for: str | None = None
    #: For a child: the path of its parent's call (``spawn``, ``fan_out``, ``wait_for``)
    #: whose wait its outcome counts in.
    parent_group: str | None = None
    #: The key that deduplicates this job (``unique_key=`` at enqueue), while it holds it.
    unique_key: str | None = None
    #: With ``unique_key``: how long after its creation a finished job still holds its
    #: key (``unique_for=`` at enqueue). Used by the enqueue only; not stored.
    unique_for: timedelta | None = field(default=None, repr=False, compare=False)
    #: Labels given at enqueue (``tags=``), for finding jobs.
    tags: list[str] = field(default_factory=list)
    #: How long one run may take (``timeout=`` at enqueue or registration), else None.
    timeout: timedelta | None = None
    #: The key the type's fleet-wide concurrency cap counts this job under, if any.
    concurrency_key: str | None = None
    #: The key the type's fleet-wide rate limit counts this job under, if any.
    rate_key: str | None = None
    #: While a pause of the job is asked for: the status ``resume`` gives back (a
    #: ``paused`` job), or the status it has now (a running or waiting job, paused once
    #: it would run again). None otherwise.
    paused_from: str | None = None


@dataclass
class Checkpoint:
    """The saved outcome of one durable call inside a job.

    ``scope`` is empty for the job's own calls; a call made inside a step is keyed by
    the enclosing step's path (``"2"``, ``"2.0"``...), so nested steps keep their own
    numbering and never shift the calls that follow them.
    """

    id: str = ""
    job_id: str = ""
    call_index: int = 0
    call_type: str = ""
    result: bytes | None = None
    error: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    scope: str = ""
