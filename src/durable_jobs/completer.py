"""The completer: stores a worker's outcomes in batches, then hands them to the reporter.

One statement stores many completions and claims the next jobs in the same
transaction. Transient storage errors are retried (a lost outcome would mean a second
run); an outcome the database refuses for good fails its job with the refusal instead;
a write whose reply was lost but that committed is recognised as this run's.
"""

from __future__ import annotations

import logging
import queue as queue_mod
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from .backoff_loop import keep_trying
from .errors import OutcomeRefused
from .executor import RunOutcome, describe, format_traceback
from .job import JobStatus
from .storage import Outcome, is_transient

if TYPE_CHECKING:
    from .dispatcher import Dispatcher
    from .queue import Queue
    from .reporter import Backlog

__all__ = ["Completer"]

log = logging.getLogger("durable_jobs")

T = TypeVar("T")

_MAX_BATCH = 500
# The status an outcome of each kind leaves its job in (for retried, fenced-out writes).
_SETTLED_AS = {
    "completed": JobStatus.COMPLETED,
    "retry": JobStatus.RETRYING,
    "failed": JobStatus.FAILED,
    "waiting": JobStatus.WAITING,
}


class Completer:
    """Stores the outcomes the dispatcher's slots produce, claiming along the way."""

    def __init__(
        self,
        queue: Queue,
        dispatcher: Dispatcher,
        reports: Backlog[tuple[RunOutcome, bool]],
        worker_id: str,
        lock_timeout: float,
    ) -> None:
        self.queue = queue
        self.dispatcher = dispatcher
        self.reports = reports
        self.worker_id = worker_id
        self.lock_timeout = lock_timeout
        #: A ``time.monotonic()`` deadline: writes still failing then are given up.
        self.give_up_at = float("inf")

    def run(self) -> None:
        """Store outcomes until the end marker (the completer thread)."""
        outcomes = self.dispatcher.outcomes
        done = False
        while not done:
            batch = [outcomes.get()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(outcomes.get_nowait())
                except queue_mod.Empty:
                    break
            done = None in batch
            self._store([o for o in batch if o is not None])
            self.dispatcher.wakeup.set()
        self.reports.close()

    def close(self) -> None:
        """End ``run`` once the outcomes before are stored."""
        self.dispatcher.outcomes.put(None)

    def give_up(self, deadline: float) -> None:
        """Give up writes (and waits for slow hooks) that last past ``deadline``."""
        self.give_up_at = deadline
        self.reports.wake()  # a completer waiting for slow hooks now waits until then

    def _store(self, batch: list[RunOutcome]) -> None:
        storage = self.queue.storage
        accepted: set[str] = set()
        completions = [o for o in batch if o.kind == "completed"]
        if completions:
            accepted |= self._complete_and_claim(completions)
        for o in batch:
            if o.kind == "unknown":
                self._permanent_ok(
                    "resolving an unknown job type", partial(self._resolve_unknown, o)
                )
            if o.kind in ("retry", "failed") and self._store_failure(o):
                accepted.add(o.job.id)
                if o.kind == "retry" and o.run_at is not None:
                    # Its worker knows when it is due: woken then, not at the next poll.
                    self.dispatcher.wake_at(o.job.queue, o.run_at)
            if o.kind == "waiting" and self._store_suspension(o):
                accepted.add(o.job.id)
                if o.run_at is not None:
                    # Its worker (and this process's others) end the wait at its
                    # deadline, not at a poll after it.
                    self.dispatcher.wake_at(o.job.queue, o.run_at)
                    self.queue.wake_workers_at(o.job.queue, o.run_at)
        releases = [(o.job.id, o.job.fence) for o in batch if o.kind == "release"]
        if releases:
            self._permanent_ok(
                "releasing unstarted jobs", lambda: storage.release(self.worker_id, releases)
            )
        rejected = [o for o in batch if o.kind in _SETTLED_AS and o.job.id not in accepted]
        if rejected:
            accepted |= self._committed_anyway(rejected)
        self.dispatcher.forget(batch)
        self.dispatcher.stored(batch)
        # Accepted is by job: of two runs of one job in a batch (a thawed worker's stale
        # run and its own later claim of the job), only the newest can have been stored.
        newest = {o.job.id: o.job.fence for o in sorted(batch, key=lambda o: o.job.fence)}
        reports = [(o, o.job.id in accepted and o.job.fence == newest[o.job.id]) for o in batch]
        size = sum(len(o.result or b"") for o in batch)
        self.reports.put(reports, size, lambda: self.give_up_at)

    def _committed_anyway(self, rejected: list[RunOutcome]) -> set[str]:
        """Outcomes whose write was retried after its reply was lost but had committed.

        The retry is then fenced out like a stale worker's; the row still names this run
        as the one that settled it, so the outcome counts (and its hooks fire).
        """
        storage = self.queue.storage
        runs = [(o.job.id, o.job.fence) for o in rejected]
        found = self._permanent_ok(
            "reading stored outcomes", lambda: storage.settled(self.worker_id, runs)
        )
        found = found or {}
        for o in rejected:
            if found.get(o.job.id) is JobStatus.CANCELLED:
                o.kind = "cancelled"  # cancelled while it ran: its outcome is void
        return {o.job.id for o in rejected if found.get(o.job.id) == _SETTLED_AS.get(o.kind)}

    def _complete_and_claim(self, completions: list[RunOutcome]) -> set[str]:
        """Store completions, claiming the next jobs in the same transaction."""
        storage = self.queue.storage
        dispatcher = self.dispatcher
        outcomes = [Outcome(o.job.id, o.job.fence, o.result, o.job.parent_id) for o in completions]
        # The types capped fleet-wide whose runs just ended here are claimed in the
        # transaction that stores those runs' ends: there, their slots are free.
        requests = dispatcher.reserve(completing=True)
        claims = [r.claim for r in requests]
        try:
            stored = self._retrying(
                lambda: storage.complete_and_claim(
                    self.worker_id, outcomes, claims, lock_timeout=self.lock_timeout
                )
            )
        except Exception as exc:
            # Refused for good, the whole transaction: find the outcome(s) to blame.
            dispatcher.unreserve(requests)
            log.warning(
                "storing %d completions failed (%s); storing them one by one", len(outcomes), exc
            )
            return self._complete_each(completions)
        if stored is None:  # given up at the stop deadline
            dispatcher.unreserve(requests)
            return set()
        accepted, claimed = stored
        for request, jobs in zip(requests, claimed, strict=True):
            dispatcher.accept(request, jobs)
        return accepted

    def _complete_each(self, completions: list[RunOutcome]) -> set[str]:
        """Store completions one at a time; one the database refuses fails its job."""
        storage = self.queue.storage
        accepted: set[str] = set()
        for o in completions:
            outcome = [Outcome(o.job.id, o.job.fence, o.result, o.job.parent_id)]
            write = partial(
                storage.complete_and_claim,
                self.worker_id,
                outcome,
                [],
                lock_timeout=self.lock_timeout,
            )
            try:
                stored = self._retrying(write)
            except Exception as exc:
                self._refused(o, exc)
                continue
            if stored is not None:
                accepted |= stored[0]
        return accepted

    def _refused(self, o: RunOutcome, exc: Exception) -> None:
        """The database refused ``o``'s outcome for good (a value a column cannot take):
        the run fails permanently with the refusal instead, so the worker goes on."""
        what = {"completed": "result", "waiting": "suspension"}.get(o.kind, "error")
        log.error(
            "the database refused the %s of job %s: %s",
            what,
            o.job.id,
            exc,
            extra={"job_id": o.job.id, "worker_id": self.worker_id},
        )
        o.error = OutcomeRefused(
            f"the database refused to store the {what} of this run: {describe(exc)}"
        )
        o.traceback = None  # what was refused may have been the traceback itself
        if o.kind in ("completed", "waiting"):
            o.kind, o.result, o.run_at = "failed", None, None

    def _store_suspension(self, o: RunOutcome) -> bool:
        """Store a suspension; one the database refuses fails the job with the refusal."""
        try:
            return bool(self._retrying(partial(self._suspend, o)))
        except Exception as exc:
            self._refused(o, exc)
        return self._store_failure(o)

    def _suspend(self, o: RunOutcome) -> bool:
        return self.queue.storage.suspend(
            o.job.id,
            worker_id=self.worker_id,
            fence=o.job.fence,
            until=o.run_at,
            waiting_for=o.waiting_for or "",
            signal=o.signal,
            children=o.children,
        )

    def _store_failure(self, o: RunOutcome) -> bool:
        """Store a retry or failure; one the database refuses is stored with the refusal."""
        try:
            return bool(self._retrying(partial(self._fail, o)))
        except Exception as exc:
            if isinstance(o.error, OutcomeRefused):
                refusal: Exception = exc
            else:
                self._refused(o, exc)
                try:
                    return bool(self._retrying(partial(self._fail, o)))
                except Exception as again:
                    refusal = again
        log.error(
            "could not store the outcome of job %s (%s); it will be taken back after the "
            "lock timeout",
            o.job.id,
            refusal,
            extra={"job_id": o.job.id, "worker_id": self.worker_id},
        )
        return False

    def _permanent_ok(self, what: str, write: Callable[[], T]) -> T | None:
        """``_retrying`` for writes whose permanent failure is only logged (None)."""
        try:
            return self._retrying(write)
        except Exception as exc:
            log.error("%s failed: %s", what, exc, extra={"worker_id": self.worker_id})
            return None

    def _retrying(self, write: Callable[[], T]) -> T | None:
        """Run a storage write until it succeeds; a lost outcome would mean a second run.

        Only transient errors (``is_transient``: a lost connection, a busy database) are
        retried: any other is raised, since the same write would fail forever and hold up
        every outcome behind it. None: given up at the stop deadline.
        """
        return keep_trying(
            write,
            retry_if=is_transient,
            give_up=self._past_deadline,
            warn=_write_failed,
            pause=time.sleep,
        )

    def _past_deadline(self, exc: Exception) -> bool:
        if time.monotonic() >= self.give_up_at:
            log.error("could not store an outcome before the stop timeout: %s", exc)
            return True
        return False

    def _fail(self, o: RunOutcome) -> bool:
        return self.queue.storage.fail(
            o.job.id,
            o.error_text,
            o.run_at,
            worker_id=self.worker_id,
            fence=o.job.fence,
            traceback=o.traceback,
            child=o.job.parent_id is not None,
        )

    def _resolve_unknown(self, o: RunOutcome) -> None:
        """A job type this worker has no handler for: leave it to a worker that has one."""
        storage = self.queue.storage
        job = o.job
        others = storage.live_workers(timedelta(seconds=self.lock_timeout))
        if any(
            w.id != self.worker_id and job.type in w.types and job.queue in w.queues for w in others
        ):
            # Skipped first: a claim made once the job is back must not take it again.
            self.dispatcher.skip_type(job.type, self.lock_timeout)
            storage.release(self.worker_id, [(job.id, job.fence)])
            o.kind = "release"
            return
        o.kind = "failed"
        o.error = LookupError(
            f"no handler registered for job type {job.type!r} in any live worker of queue "
            f"{job.queue!r}"
        )
        o.traceback = format_traceback(o.error)
        o.run_at = None


def _write_failed(exc: Exception, wait: float) -> None:
    log.warning("storing an outcome failed (%s); retrying in %.2f s", exc, wait)
