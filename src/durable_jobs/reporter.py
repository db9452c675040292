"""The reporter: hooks, events and log lines of a worker's stored outcomes.

Outcomes are reported after they are stored, on another thread, so that hooks never
delay the next commit. Slow hooks must not let committed outcomes pile up without
limit, though: the hand-off from the completer is a bounded ``Backlog``; once it is full
the completer waits for room, which holds back storing and claiming until the hooks
catch up (a slow hook slows its worker, as the docs say, instead of filling its memory).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from .events import JobCompleted, JobFailed, JobRetrying, JobWaiting
from .executor import RunOutcome
from .job import JobStatus

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["Backlog", "Reporter"]

log = logging.getLogger("durable_jobs")

T = TypeVar("T")

# Stored outcomes whose hooks have not run yet, at most (by count and by result bytes):
# beyond that the completer waits for slow hooks instead of holding ever more results.
_REPORT_BACKLOG = 64
_REPORT_BACKLOG_BYTES = 16 * 1024 * 1024


class Backlog(Generic[T]):
    """A FIFO of batches bounded by unhandled items and by size; ``close`` ends it.

    A batch is accepted while the backlog is under both bounds, so it may exceed them by
    one batch: the completer never has to split what one commit stored.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._batches: deque[tuple[Sequence[T], int] | None] = deque()
        self._items = 0
        self._bytes = 0
        self._cond = threading.Condition()

    @property
    def pending(self) -> int:
        """Items put and not yet handled."""
        with self._cond:
            return self._items

    def put(self, batch: Sequence[T], size: int, give_up_at: Callable[[], float]) -> None:
        """Add ``batch`` of ``size`` bytes, waiting for room until ``give_up_at()`` (a
        ``time.monotonic()`` value, read again after ``wake``; after it, add at once)."""
        with self._cond:
            while self._full():
                left = give_up_at() - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 1.0))
            self._batches.append((batch, size))
            self._items += len(batch)
            self._bytes += size
            self._cond.notify_all()

    def close(self) -> None:
        """Mark the end: ``get`` returns None once the batches before it are taken."""
        with self._cond:
            self._batches.append(None)
            self._cond.notify_all()

    def get(self) -> Sequence[T] | None:
        """The oldest batch, waiting for one; None at the end. Its items count as
        pending until ``done`` says they are handled."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._batches))
            entry = self._batches.popleft()
            if entry is None:
                return None
            batch, size = entry
            self._bytes -= size  # the consumer holds the batch anyway
            self._cond.notify_all()
            return batch

    def done(self, count: int = 1) -> None:
        """``count`` items taken with ``get`` are handled."""
        with self._cond:
            self._items -= count
            self._cond.notify_all()

    def wake(self) -> None:
        """Make a waiting ``put`` look at its deadline again (it was moved earlier)."""
        with self._cond:
            self._cond.notify_all()

    def _full(self) -> bool:
        return self._items >= self._max_items or self._bytes >= self._max_bytes


class Reporter:
    """Reports stored outcomes, in order, off the completer's thread (which stores the
    next batch meanwhile: its commits bound throughput)."""

    def __init__(self, queue: Queue, worker_id: str) -> None:
        self.queue = queue
        self.worker_id = worker_id
        #: Stored outcomes waiting for their hooks, events and log lines: (outcome,
        #: whether the database accepted it).
        self.backlog: Backlog[tuple[RunOutcome, bool]] = Backlog(
            _REPORT_BACKLOG, _REPORT_BACKLOG_BYTES
        )

    def run(self) -> None:
        """Report until the backlog is closed (the reporter thread)."""
        while (batch := self.backlog.get()) is not None:
            for outcome, accepted in batch:
                self.report(outcome, accepted)
                self.backlog.done()

    def report(self, outcome: RunOutcome, accepted: bool) -> None:
        """Hooks, events and log lines of one stored outcome (``accepted``: the database
        took it), in the calling thread."""
        if accepted:
            self._report(outcome)
        elif outcome.kind == "cancelled":
            log.info(
                "job %s (%s) was cancelled while it ran: its run's outcome is void",
                outcome.job.id,
                outcome.job.type,
                extra={"job_id": outcome.job.id, "worker_id": self.worker_id},
            )
        elif outcome.kind in ("completed", "retry", "failed", "waiting"):
            log.warning(
                "outcome of job %s rejected: the worker lost its lock",
                outcome.job.id,
                extra={"job_id": outcome.job.id, "worker_id": self.worker_id},
            )

    def _report(self, o: RunOutcome) -> None:
        job = o.job
        hooks, bus = self.queue.hooks, self.queue.bus
        extra = {
            "job_id": job.id,
            "job_type": job.type,
            "queue": job.queue,
            "attempt": job.attempt,
            "worker_id": self.worker_id,
        }
        now = self.queue.clock.now()
        job.updated_at = now
        if o.kind == "completed":
            job.status, job.result, job.completed_at = JobStatus.COMPLETED, o.result, now
            seconds = o.duration.total_seconds()
            log.info(
                "job %s (%s) completed in %.3f s",
                job.id,
                job.type,
                seconds,
                extra={**extra, "duration": seconds},
            )
            hooks.fire_complete(job)
            if bus.has_subscribers:
                bus.publish(JobCompleted(job, o.duration))
            return
        if o.kind == "waiting":
            what = o.waiting_for or "?"
            job.status, job.wait_until, job.waiting_for = JobStatus.WAITING, o.run_at, what
            job.locked_by = job.heartbeat_at = job.lock_expires_at = None
            if o.run_at is not None:
                job.run_at = o.run_at
            until = (
                "" if o.run_at is None else f" until {o.run_at.isoformat(timespec='milliseconds')}"
            )
            log.info("job %s (%s) waiting: %s%s", job.id, job.type, what, until, extra=extra)
            if bus.has_subscribers:
                bus.publish(JobWaiting(job, o.run_at, what))
            return
        assert o.error is not None
        job.last_error = o.error_text
        if o.kind == "retry":
            assert o.run_at is not None
            job.status, job.run_at = JobStatus.RETRYING, o.run_at
            job.traceback = o.traceback
            log.warning(
                "job %s (%s) failed on attempt %d of %d: %s; retrying at %s",
                job.id,
                job.type,
                job.attempt,
                job.max_retries + 1,
                job.last_error,
                o.run_at.isoformat(timespec="milliseconds"),
                extra=extra,
            )
            hooks.fire_retry(job, o.error)
            if bus.has_subscribers:
                bus.publish(JobRetrying(job, job.attempt, o.error, o.run_at))
        else:
            job.status, job.completed_at = JobStatus.FAILED, now
            job.traceback = o.traceback
            # With the exception itself: handlers print its traceback (notes and causes
            # too), and error trackers get the real thing.
            log.error(
                "job %s (%s) failed permanently on attempt %d of %d: %s",
                job.id,
                job.type,
                job.attempt,
                job.max_retries + 1,
                job.last_error,
                exc_info=o.error,
                extra=extra,
            )
            hooks.fire_fail(job, o.error)
            if bus.has_subscribers:
                bus.publish(JobFailed(job, o.error))
