"""``drain``: run everything due, in the calling thread, as a worker would.

It is the worker's machinery without its threads: the executor runs each job, the
storage calls the completer makes store its outcome, and the reporter fires the same
hooks and events; the scheduler, the reaper and the wake-ups of waiting jobs take their
turn before each claim. Time only moves when the queue's clock does, so with a
``FakeClock`` a test decides what is due.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..executor import Executor, RunOutcome, format_traceback
from ..job import Job, JobStatus
from ..queue import Queue
from ..reporter import Reporter
from ..retry import Backoff
from ..scheduler import Scheduler
from ..storage import Outcome, TypeLimits
from ..storage.limits import type_limits

__all__ = ["DrainResult", "drain"]

#: The lock timeout of drain's runs: a test that moves the clock while a handler runs
#: would otherwise have the run taken back under it.
LOCK_TIMEOUT = timedelta(days=365 * 100).total_seconds()

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# One scheduler per queue for the queue's life: like a worker's, it remembers the fire
# times it handled, and the first drain of a queue with schedules starts it.
_schedulers: weakref.WeakKeyDictionary[Queue, Scheduler] = weakref.WeakKeyDictionary()


@dataclass
class DrainResult:
    """What one ``drain`` did: runs by outcome, and the jobs it left waiting."""

    completed: int = 0
    failed: int = 0
    #: Runs that failed and wait for their retry.
    retried: int = 0
    #: Runs that suspended (a durable sleep, a signal wait, a fan-out).
    suspended: int = 0
    #: Runs whose job was cancelled while they ran.
    cancelled: int = 0
    #: Jobs waiting when ``drain`` returned (for a deadline, a signal or children).
    waiting: int = 0
    #: Jobs the queue's schedules enqueued.
    scheduled: int = 0

    @property
    def runs(self) -> int:
        """Every run ``drain`` made."""
        return self.completed + self.failed + self.retried + self.suspended + self.cancelled


def drain(queue: Queue, *, max_runs: int = 10_000) -> DrainResult:
    """Run every job due at the queue clock's now, and all they make due, in this thread.

    Before each claim, due schedules fire, expired locks are taken back and waits whose
    deadline came (or whose children decided them) end. Returns once nothing is due;
    never sleeps. Hooks and ``queue.events()`` see what a worker's would. Raises
    ``RuntimeError`` after ``max_runs`` runs (jobs that keep making work due now).
    """
    return _Drain(queue).run(max_runs)


class _Drain:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self.storage = queue.storage
        self.worker_id = f"drain-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.executor = Executor(queue, self.worker_id, lock_timeout=LOCK_TIMEOUT)
        self.reporter = Reporter(queue, self.worker_id)
        self.result = DrainResult()
        self._runner: asyncio.Runner | None = None

    def run(self, max_runs: int) -> DrainResult:
        try:
            while self._step():
                if self.result.runs >= max_runs:
                    raise RuntimeError(
                        f"drain() made {max_runs} runs and jobs are still due: do the jobs"
                        " keep enqueueing work due at once?"
                    )
        finally:
            if self._runner is not None:
                self._runner.close()
        self.result.waiting = sum(self.storage.waiting_counts().values())
        return self.result

    def _step(self) -> bool:
        """Make due what the clock says is, then run one job; False when none is due."""
        now = self.queue.clock.now()
        if self.queue.schedules:
            scheduler = _schedulers.get(self.queue)
            if scheduler is None:
                scheduler = _schedulers[self.queue] = Scheduler(self.queue, grace=timedelta.max)
            self.result.scheduled += scheduler.run_once(now)
        self.storage.release_expired_locks(backoff=self._backoff)
        waiting = list(self.storage.waiting_counts())
        if waiting:
            while self.storage.wake_waiting(waiting, now=now)[0]:
                pass
            self.storage.wake_decided(waiting)
        job = self._claim()
        if job is None:
            return False
        self._run(job)
        return True

    def _claim(self) -> Job | None:
        """The next due job, claimed: queues whose oldest due job is oldest first."""
        limited = self._limited()
        skip = sorted(limited)  # claimed within their limits only, as by workers
        depths = self.storage.queue_depths()
        for depth in sorted(depths, key=lambda d: (d.oldest_run_at or _EPOCH, d.queue)):
            claimed = self.storage.claim(
                depth.queue,
                self.worker_id,
                1,
                skip_types=skip,
                lock_timeout=LOCK_TIMEOUT,
                limited=tuple(limited.values()),
            )
            if claimed:
                return claimed[0]
        return None

    def _limited(self) -> dict[str, TypeLimits]:
        limited = {}
        for name in self.queue.job_types:
            handler = self.queue.handler(name)
            limits = None if handler is None else handler.limits
            if limits is not None and (limits.concurrency or limits.rate_limit):
                limited[name] = type_limits(name, limits)
        return limited

    def _backoff(self, job_type: str) -> Backoff | None:
        handler = self.queue.handler(job_type)
        policy: Backoff | None = None if handler is None else handler.defaults.get("backoff")
        return policy

    def _run(self, job: Job) -> None:
        outcome = self._execute(job)
        accepted = self._store(outcome)
        if not accepted and self._cancelled(job):
            outcome.kind = "cancelled"  # its outcome is void, as the completer finds
        self._count(outcome, accepted)
        self.reporter.report(outcome, accepted)

    def _execute(self, job: Job) -> RunOutcome:
        handler = self.queue.handler(job.type)
        try:
            if handler is not None and handler.is_async:
                return self._execute_async(job)
            return self.executor.run(job)
        except Exception as exc:  # the library's own failure: the job fails, drain goes on
            return self.executor.classify(job, None, exc, time.monotonic())

    def _execute_async(self, job: Job) -> RunOutcome:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if self._runner is None:
                self._runner = asyncio.Runner()
            return self._runner.run(self.executor.run_async(job))
        # Called from async code (an async test): the handler gets a loop of its own.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, self.executor.run_async(job)).result()

    def _store(self, o: RunOutcome) -> bool:
        """Store ``o`` with the completer's storage calls; whether it was accepted."""
        job, storage = o.job, self.storage
        if o.kind == "completed":
            done = Outcome(job.id, job.fence, o.result, job.parent_id)
            return job.id in storage.complete_many(self.worker_id, [done])
        if o.kind == "unknown":
            o.kind, o.run_at = "failed", None
            o.error = LookupError(f"no handler registered for job type {job.type!r}")
            o.traceback = format_traceback(o.error)
        if o.kind in ("retry", "failed"):
            return storage.fail(
                job.id,
                o.error_text,
                o.run_at,
                worker_id=self.worker_id,
                fence=job.fence,
                traceback=o.traceback,
                child=job.parent_id is not None,
            )
        if o.kind == "waiting":
            return storage.suspend(
                job.id,
                worker_id=self.worker_id,
                fence=job.fence,
                until=o.run_at,
                waiting_for=o.waiting_for or "",
                signal=o.signal,
                children=o.children,
            )
        return False  # cancelled while it ran: nothing to store

    def _cancelled(self, job: Job) -> bool:
        stored = self.storage.get_job(job.id)
        return stored is not None and stored.status is JobStatus.CANCELLED

    def _count(self, o: RunOutcome, accepted: bool) -> None:
        r = self.result
        if o.kind == "cancelled":
            r.cancelled += 1
        elif not accepted:
            return
        elif o.kind == "completed":
            r.completed += 1
        elif o.kind == "failed":
            r.failed += 1
        elif o.kind == "retry":
            r.retried += 1
        elif o.kind == "waiting":
            r.suspended += 1
