"""The dispatcher: claims due jobs into a worker's queues and hands them to its slots.

Each queue of a worker is one ``QueueState``: its slots, the jobs it holds claimed
(running, or ready in a buffer), how long its jobs run, and whether a claim may find
more. Queues of short jobs claim ahead of their free slots (see ``QueueState.capacity``),
so the next job starts the moment a slot frees and one claim serves many jobs; queues
of long jobs claim only what they can start, so they never hoard jobs other workers
could run.

Slot threads run sync handlers, one event loop runs async ones; each finished run goes
to ``outcomes``, which the completer stores.
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_mod
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from .backoff_loop import keep_trying
from .executor import Executor, RunOutcome
from .job import Job
from .storage import Claim, ClaimedJobs, TypeLimits
from .storage.limits import type_limits

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["ClaimRequest", "Dispatcher", "QueueState"]

log = logging.getLogger("durable_jobs")

# Average run time (seconds) above which a queue claims no more than it can start.
SLOW_JOB = 0.05
# How many times its concurrency a queue may hold claimed, by how long its jobs run: one
# commit completes a batch and claims the next, so the shorter the jobs, the bigger the
# batches must be for commits not to bound throughput.
_CLAIM_AHEAD = ((SLOW_JOB / 100, 16), (SLOW_JOB / 10, 4), (SLOW_JOB, 2))
# How long after a known run time to look for the job, so that the wall clock (which
# stored times follow, to the microsecond on every backend) has passed it too when the
# monotonic one has: a look a hair too early costs a transaction that wakes nothing and
# a new timer, nothing worse.
_DUE_MARGIN = 0.0003
# How soon to look again at a due wait that another worker was ending.
_RECHECK_WAITS = timedelta(milliseconds=50)


@dataclass(slots=True, eq=False)
class QueueState:
    """One queue of a worker; read and changed with the dispatcher's lock held."""

    name: str
    concurrency: int
    #: Jobs claimed and not yet finished: running, or waiting in ``ready``.
    claimed: int = 0
    running: int = 0
    ready: deque[Job] = field(default_factory=deque)
    #: A moving average of run times (seconds), which sets how far ahead to claim.
    duration: float = SLOW_JOB
    #: False once a claim came back short, until a wake-up says jobs may be due.
    maybe_work: bool = True
    #: Counts wake-ups, so a claim that began before one does not clear ``maybe_work``.
    generation: int = 0
    #: The earliest ``time.monotonic()`` at which a job this worker knows of becomes due
    #: (a retry it stored, a delayed job enqueued in this process); inf: none known.
    due_at: float = float("inf")
    #: Job types with fleet-wide limits held back by them: not claimed here before this
    #: ``time.monotonic()`` (a token's return; inf: until a run of the type ends here,
    #: or the next poll).
    held: dict[str, float] = field(default_factory=dict)
    #: Job types with fleet-wide limits of which a claim found no more due jobs here:
    #: not claimed until a wake-up.
    drained: set[str] = field(default_factory=set)
    #: Counts releases of ``held``, so a claim that began before one holds nothing back.
    releases: int = 0
    #: Claims reserved here and not yet back. The dispatcher and the completer never
    #: claim in one queue at once: with SKIP LOCKED the second would take the jobs after
    #: those the first holds, and could start them first.
    claiming: int = 0
    #: Whether a claim was passed over while another was out: looked for again after.
    passed_over: bool = False

    def limited_to_claim(
        self, limited: dict[str, TypeLimits], now: float, ending: set[str]
    ) -> tuple[TypeLimits, ...]:
        """The types of ``limited`` (by name) that a claim in this queue may look for,
        but for those in ``ending``."""
        return tuple(
            limits
            for name, limits in sorted(limited.items())
            if name not in self.drained and self.held.get(name, 0.0) <= now and name not in ending
        )

    def capacity(self) -> int:
        """How many jobs this queue may hold claimed, by how long its jobs run."""
        limit, duration = self.concurrency, self.duration
        for shorter_than, times in _CLAIM_AHEAD:
            if duration < shorter_than:
                return times * limit
        return limit

    def refill_at(self, capacity: int) -> int:
        """The room that makes a claim worth it: with a prefetch buffer, half of it."""
        return max(1, (capacity - self.concurrency) // 2)

    def take_startable(self) -> list[Job]:
        """Ready jobs that free slots can start now, counted as running."""
        ready, limit = self.ready, self.concurrency
        startable = []
        while ready and self.running < limit:
            startable.append(ready.popleft())
            self.running += 1
        return startable


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """Room reserved in a queue for a claim, and the generation of wake-ups it saw."""

    claim: Claim
    generation: int
    #: The queue's ``releases`` when the claim was reserved.
    releases: int = 0
    #: False for a job stored claimed by its enqueue (``start_enqueued``).
    reserved: bool = True

    @property
    def ahead(self) -> bool:
        """A claim beyond the free slots, whose jobs wait in the buffer."""
        return self.claim.min_retries > 0


class Dispatcher:
    """Claims jobs for a worker's queues and runs them in its slots."""

    def __init__(
        self,
        queue: Queue,
        worker_id: str,
        concurrency: dict[str, int],
        *,
        lock_timeout: float,
        poll_interval: float,
    ) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.lock_timeout = lock_timeout
        self.poll_interval = poll_interval
        self.queues = {name: QueueState(name, limit) for name, limit in concurrency.items()}
        self.slots = sum(concurrency.values())
        self.executor = Executor(queue, worker_id, lock_timeout=lock_timeout)
        self.lock = threading.Condition()
        # Keyed by run (job id, fence), not job: after a take-back this worker may claim
        # the same job again while its old run is still finishing, and both must stay
        # known. The fence, unlike the attempt, differs even after an operator's retry.
        self.active: dict[tuple[str, int], Job] = {}
        self._skip: dict[str, float] = {}
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        #: Set when stopping gives up on running jobs: they are released, and the outcome
        #: of a run that ends after is dropped (its job is another worker's again).
        self.abandoned = threading.Event()
        self.tasks: queue_mod.SimpleQueue[Job | None] = queue_mod.SimpleQueue()
        #: Finished runs (and unstarted jobs to release), for the completer to store.
        self.outcomes: queue_mod.SimpleQueue[RunOutcome | None] = queue_mod.SimpleQueue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._next_poll = 0.0
        #: The earliest ``QueueState.due_at`` (read unlocked by the dispatcher thread).
        self._next_due = float("inf")
        #: Whether the next claim round first ends the waits that are due: when a known
        #: run time comes (``wake_at``: a wait's deadline is one), at each poll, and while
        #: more are due than one round ends.
        self._check_waiting = True
        #: Whether a known run time has come since the waits were last ended: then they
        #: are ended with the claims, in one transaction, without a look first.
        self._deadline_came = False
        #: When (``time.monotonic()``) the next round resumes parents whose wake-up was
        #: lost (their children's outcomes decided their wait): every half lock timeout.
        self._next_recovery = 0.0
        self._recover = True
        #: The job types with fleet-wide limits among the queue's handlers, and how many
        #: handlers there were when they were listed.
        self._limited: tuple[int, dict[str, TypeLimits]] = (-1, {})
        #: Runs (job id, fence) of types capped fleet-wide that ended here and whose
        #: outcome the completer has not stored yet, with their type: they count
        #: against their caps until it has, so only the completer's claims (in the
        #: transaction that stores them) look for their types meanwhile.
        self._ending: dict[tuple[str, int], str] = {}
        #: The queues the completer's last reserve passed over (a claim was out there):
        #: the capped types it stores the ends of are claimed by the dispatcher instead.
        self._completer_passed: set[str] = set()

    # -- wake-ups -----------------------------------------------------------------------

    def wake(self, queues: Sequence[str] | set[str]) -> None:
        """Look for jobs in ``queues`` now rather than at the next poll."""
        touched = False
        with self.lock:
            for name in queues:
                state = self.queues.get(name)
                if state is not None:
                    state.maybe_work = True
                    state.generation += 1
                    state.drained.clear()
                    touched = True
        if touched:
            self.wakeup.set()

    def wake_all(self) -> None:
        """Look for jobs in every queue now."""
        self.wake(list(self.queues))

    def on_notify(self, queue_name: str) -> None:
        self.wake((queue_name,))

    def wake_at(self, queue: str, run_at: datetime) -> None:
        """Look for jobs in ``queue`` at ``run_at``, when a job there becomes due (or a
        job's wait there ends: the waits due then are ended first)."""
        seconds = (run_at - self.queue.clock.now()).total_seconds()
        if seconds <= 0:
            self._check_waiting = True  # what is due may be a wait that has ended
            self.wake((queue,))
            return
        at = time.monotonic() + seconds + _DUE_MARGIN
        with self.lock:
            state = self.queues.get(queue)
            if state is None or at >= state.due_at:
                return
            state.due_at = at
            sooner = at < self._next_due
            if sooner:
                self._next_due = at
        if sooner:
            self.wakeup.set()  # the dispatcher waits until then now, not the next poll

    def _wake_due(self, now: float) -> None:
        """Wake the queues whose known run time has come, after ending the waits due
        then (a known run time may be a wait's deadline)."""
        with self.lock:
            next_due = float("inf")
            for state in self.queues.values():
                if state.due_at <= now:
                    state.due_at = float("inf")
                    state.maybe_work = True
                    state.generation += 1
                    self._check_waiting = self._deadline_came = True
                else:
                    next_due = min(next_due, state.due_at)
            self._next_due = next_due

    def take_enqueued(self, job: Job) -> bool:
        """Reserve a free slot for ``job`` (see ``Worker.take_enqueued``)."""
        with self.lock:
            state = self.queues.get(job.queue)
            if (
                self.stopping.is_set()
                or state is None
                or state.running + len(state.ready) >= state.concurrency
                or state.claimed >= state.capacity()
                or (handler := self.queue.handler(job.type)) is None
                # Only a claim may start a job of a type with fleet-wide limits.
                or handler.limits is not None
            ):
                return False
            state.claimed += 1
        return True

    def give_back_enqueued(self, job: Job) -> None:
        """The enqueue ``take_enqueued`` reserved room for failed."""
        with self.lock:
            self.queues[job.queue].claimed -= 1

    def start_enqueued(self, job: Job) -> None:
        """Run ``job``, stored claimed by this worker after ``take_enqueued``."""
        self.accept(ClaimRequest(Claim(job.queue, 1), -1, reserved=False), [job])

    def skip_type(self, job_type: str, seconds: float) -> None:
        """Leave jobs of ``job_type`` out of claims for ``seconds``."""
        with self.lock:
            self._skip[job_type] = time.monotonic() + seconds

    # -- claiming -----------------------------------------------------------------------

    def run(self) -> None:
        """Claim until ``stopping`` is set (the dispatcher thread)."""
        self._next_poll = time.monotonic() + self.poll_interval
        while not self.stopping.is_set():
            self._begin_round()
            claimed = keep_trying(
                self._claim_round, warn=self._claim_failed, pause=self._after_failed_round
            )
            if claimed is False:  # None: stopping
                until = min(self._next_poll, self._next_due, self._next_recovery, self._next_held())
                self.wakeup.wait(max(0.0, until - time.monotonic()))

    def _begin_round(self) -> None:
        now = time.monotonic()
        if now >= self._next_poll:
            # Delayed and retrying jobs become due without any notification, and waits
            # stored by other processes end without one; nor do other processes' runs of
            # a type with limits.
            self.release_held(None)
            self.wake_all()
            self._check_waiting = True
            self._next_poll = now + self.poll_interval
        if now >= self._next_due:
            self._wake_due(now)
        if now >= self._next_recovery:
            self._recover = True
            self._next_recovery = now + self.lock_timeout / 2
        self.wakeup.clear()

    @staticmethod
    def _claim_failed(exc: Exception, wait: float) -> None:
        log.warning("claiming jobs failed (%s); retrying in %.2f s", exc, wait)

    def _after_failed_round(self, wait: float) -> bool:
        if self.stopping.wait(wait):
            return True
        self.wake_all()
        if self.stopping.is_set():
            return True
        self._begin_round()
        return False

    def _claim_round(self) -> bool:
        if self.outcomes.qsize() > self.slots:
            return False  # the completer is behind: let it catch up before claiming more
        if self._check_waiting:
            self._end_waits()
        if self._recover:
            self._resume_decided()
        claimed_any = False
        requests = self.reserve()
        drained: set[str] = set()
        for position, request in enumerate(requests):
            name = request.claim.queue
            if name in drained:
                # A claim for free slots came back short: nothing more is due, so a
                # claim ahead would cost a transaction for nothing (and the time of the
                # jobs that just started, on a busy machine).
                self.unreserve([request])
                continue
            try:
                jobs = self._claim(request.claim)
            except BaseException:
                self.unreserve(requests[position:])
                raise
            self.accept(request, jobs)
            if len(jobs) < request.claim.limit and not request.ahead:
                drained.add(name)
            claimed_any = claimed_any or bool(jobs)
        return claimed_any

    def _end_waits(self) -> None:
        """Turn the due waits of this worker's queues into due resumes (which the claims
        that follow take, here or anywhere), and note when the next wait ends."""
        if self._deadline_came:
            self._deadline_came = False  # a failed try goes the way of a poll's look
            self._wake_and_claim()
        woken, following = self.queue.storage.wake_waiting(list(self.queues))
        self._check_waiting = False  # after the storage call: a failed one is tried again
        if woken:
            self.wake(woken)
        if following is None:
            return
        queue, until = following
        now = self.queue.clock.now()
        if until <= now:
            if woken:
                self._check_waiting = True  # more were due than one round ends: go on
                self.wakeup.set()
                return
            # A due wait none of this round's could end (another worker is ending it)
            # is looked at again shortly, not in a busy loop.
            until = now + _RECHECK_WAITS
        self.wake_at(queue, until)

    def _wake_and_claim(self) -> None:
        """End the waits due now and claim in the same transaction: a known deadline has
        come, so its resume starts after one commit. (When the next wait ends is read
        afterwards, while the resume runs.)"""
        requests = self.reserve()
        try:
            woken, claimed = self.queue.storage.wake_and_claim(
                list(self.queues),
                [r.claim for r in requests],
                self.worker_id,
                lock_timeout=self.lock_timeout,
            )
        except BaseException:
            self.unreserve(requests)
            raise
        for request, jobs in zip(requests, claimed, strict=True):
            self.accept(request, jobs)
        # A claim for free slots made after the wake-up saw its jobs; other queues woken
        # are to be looked at again.
        looked = {r.claim.queue for r in requests if not r.ahead and r.claim.plain}
        if unclaimed := set(woken) - looked:
            self.wake(unclaimed)

    def _resume_decided(self) -> None:
        """Resume waiting parents of this worker's queues whose children decided their
        wait but whose wake-up was lost (normally the deciding outcome resumes them)."""
        woken = self.queue.storage.wake_decided(list(self.queues))
        self._recover = False  # after the storage call: a failed one is tried again
        if woken:
            self.wake(woken)

    def reserve(self, *, completing: bool = False) -> list[ClaimRequest]:
        """Claims worth making now, their room already counted as claimed.

        Counting the room before the claim returns lets the dispatcher and the completer
        (which claims along with its completions) claim at the same time without taking
        more than a queue's capacity between them. ``completing``: for the completer,
        whose claims follow the outcomes it stores, in one transaction.
        """
        requests = []
        skip = self.skip_types()
        limited = self.limited_types()
        if limited:  # never claimed as plain jobs, held back or not
            skip = sorted({*skip, *limited})
        moment = time.monotonic()
        with self.lock:
            if self.stopping.is_set():
                return []
            ending = set() if completing else set(self._ending.values())
            passed = set()
            for name, state in self.queues.items():
                if state.claiming:
                    state.passed_over = True
                    passed.add(name)
                    continue
                capacity = state.capacity()
                want = capacity - state.claimed
                # With a prefetch buffer, refill once it is half empty: claims in batches.
                if want < state.refill_at(capacity):
                    continue
                tried = state.limited_to_claim(limited, moment, ending) if limited else ()
                plain = state.maybe_work
                free = max(0, state.concurrency - state.running - len(state.ready))
                now, ahead = min(want, free), want - min(want, free)
                # A capped job claimed ahead would hold a slot of its cap while it waits
                # in the buffer, which another worker could run it in: capped types are
                # claimed for free slots only.
                tried_ahead = tuple(t for t in tried if t.concurrency is None)
                if not (plain or tried):
                    now = 0
                if not (plain or tried_ahead):
                    ahead = 0
                state.claimed += now + ahead
                state.claiming += bool(now) + bool(ahead)
                if now:
                    claim = Claim(name, now, skip, 0, tried, plain)
                    requests.append(ClaimRequest(claim, state.generation, state.releases))
                if ahead:
                    claim = Claim(name, ahead, skip, 1, tried_ahead, plain)
                    requests.append(ClaimRequest(claim, state.generation, state.releases))
            if completing:
                self._completer_passed = passed
        return requests

    def limited_types(self) -> dict[str, TypeLimits]:
        """The job types with fleet-wide limits (``concurrency``, ``rate_limit``) among
        the queue's handlers, as registered in this process, by name."""
        names = self.queue.job_types
        count, known = self._limited
        if count != len(names):  # handlers are only ever added
            known = {}
            for name in names:
                handler = self.queue.handler(name)
                limits = None if handler is None else handler.limits
                if limits is not None and (limits.concurrency or limits.rate_limit):
                    known[name] = type_limits(name, limits)
            self._limited = (len(names), known)
        return known

    def release_held(self, job_types: set[str] | None) -> None:
        """Claim jobs of ``job_types`` (None: every type) held back by their limits again:
        a run of theirs ended here, or a poll came."""
        with self.lock:
            self._release_held(job_types)

    def _release_held(self, job_types: set[str] | None) -> None:
        for state in self.queues.values():
            if job_types is None:
                state.held.clear()
            else:
                for name in job_types:
                    state.held.pop(name, None)
            # A claim already under way must not hold them back again.
            state.releases += 1

    def stored(self, outcomes: Sequence[RunOutcome]) -> None:
        """The completer stored ``outcomes`` (or gave up on them): their runs no longer
        count against their types' caps. A completion's type was looked for in the
        transaction that stored it, unless its queue had a claim out then; the others'
        types are looked for again now."""
        limited = self.limited_types()
        if not limited:
            return
        with self.lock:
            released = set()
            for o in outcomes:
                if o.job.type not in limited:
                    continue
                self._ending.pop((o.job.id, o.job.fence), None)
                if o.kind != "completed" or o.job.queue in self._completer_passed:
                    released.add(o.job.type)
            if released:
                self._release_held(released)
        if released:
            self.wakeup.set()

    def _next_held(self) -> float:
        """When the next hold of a type by a rate limit ends (inf: none). Holds that
        ended already are passed over: a queue without room for them waits for room."""
        now = time.monotonic()
        with self.lock:
            return min(
                (t for state in self.queues.values() for t in state.held.values() if t > now),
                default=float("inf"),
            )

    def unreserve(self, requests: list[ClaimRequest]) -> None:
        """Give back the room of claims that were never made."""
        with self.lock:
            for request in requests:
                state = self.queues[request.claim.queue]
                state.claimed -= request.claim.limit
                self._claim_back(state)

    def _claim_back(self, state: QueueState) -> None:
        """One of the queue's claims is back (or never made): a claim passed over
        meanwhile is looked for now."""
        state.claiming -= 1
        if not state.claiming and state.passed_over:
            state.passed_over = False
            self.wakeup.set()

    def accept(self, request: ClaimRequest, jobs: list[Job]) -> None:
        """Take in the jobs a reserved claim returned, and start those that fit."""
        want = request.claim.limit
        with self.lock:
            state = self.queues[request.claim.queue]
            state.claimed -= want - len(jobs)
            if request.reserved:
                self._claim_back(state)
            # Only a claim for free slots tells the queue is empty: one that claims ahead
            # leaves out the jobs that allow a single run.
            short = len(jobs) < want and not request.ahead
            current = state.generation == request.generation
            if isinstance(jobs, ClaimedJobs):  # other types' jobs may have run out alone
                short = jobs.plain_drained and not request.ahead
            if short and current and request.claim.plain:
                state.maybe_work = False
            if isinstance(jobs, ClaimedJobs):
                if state.releases == request.releases:
                    moment = time.monotonic()
                    for name, seconds in jobs.held.items():
                        state.held[name] = moment + seconds
                # A claim ahead leaves out the jobs that allow a single run.
                if current and not request.ahead:
                    state.drained |= jobs.drained
            for job in jobs:
                self.active[(job.id, job.fence)] = job
            if self.stopping.is_set():
                # Stop began while the claim was out: these will never start.
                state.claimed -= len(jobs)
                unstarted, startable = jobs, []
            else:
                state.ready.extend(jobs)
                unstarted, startable = [], state.take_startable()
            self.lock.notify_all()
        for job in unstarted:
            self.outcomes.put(RunOutcome(job, "release"))
        for job in startable:
            self._dispatch(job)

    def _claim(self, claim: Claim) -> list[Job]:
        return self.queue.storage.claim(
            claim.queue,
            self.worker_id,
            claim.limit,
            skip_types=claim.skip_types,
            min_retries=claim.min_retries,
            lock_timeout=self.lock_timeout,
            limited=claim.limited,
            plain=claim.plain,
        )

    def skip_types(self) -> list[str]:
        now = time.monotonic()
        with self.lock:
            for name in [n for n, until in self._skip.items() if until <= now]:
                del self._skip[name]
            return list(self._skip)

    # -- running ------------------------------------------------------------------------

    def _dispatch(self, job: Job) -> None:
        handler = self.queue.handler(job.type)
        if handler is not None and handler.is_async and self.loop is not None:
            asyncio.run_coroutine_threadsafe(self._run_async_job(job), self.loop)
        else:
            self.tasks.put(job)

    def run_slot(self) -> None:
        """Run jobs until told to stop (a slot thread)."""
        executor = self.executor
        while (job := self.tasks.get()) is not None:
            if self.stopping.is_set():
                self._finish(RunOutcome(job, "release"))
                continue
            try:
                outcome = executor.run(job)
            except BaseException as exc:  # the slot must survive anything a handler does
                outcome = executor.classify(job, None, exc, time.monotonic())
            self._finish(outcome)

    async def _run_async_job(self, job: Job) -> None:
        if self.stopping.is_set():
            self._finish(RunOutcome(job, "release"))
            return
        try:
            outcome = await self.executor.run_async(job)
        except BaseException as exc:
            outcome = self.executor.classify(job, None, exc, time.monotonic())
        self._finish(outcome)

    def _finish(self, outcome: RunOutcome) -> None:
        if self.abandoned.is_set() and outcome.kind != "release":
            # Released when stopping gave up on it: another worker's to run now.
            outcome = RunOutcome(outcome.job, "release")
        limits = self.limited_types().get(outcome.job.type)
        with self.lock:
            if limits is not None and limits.concurrency is not None:
                # Its slot is free once the completer stores its outcome (and claims the
                # type again in that transaction): not before, so not here meanwhile.
                self._ending[(outcome.job.id, outcome.job.fence)] = outcome.job.type
                self._release_held({outcome.job.type})
            state = self.queues[outcome.job.queue]
            state.running -= 1
            state.claimed -= 1
            if outcome.kind != "release":
                # A moving average: a few slow runs switch the queue off prefetching.
                seconds = outcome.duration.total_seconds()
                state.duration += (seconds - state.duration) / 8
            startable = [] if self.stopping.is_set() else state.take_startable()
            capacity = state.capacity()
            refill = capacity - state.claimed >= state.refill_at(capacity)
            self.lock.notify_all()
        for job in startable:
            self._dispatch(job)
        self.outcomes.put(outcome)
        if refill:
            self.wakeup.set()

    def running_jobs(self) -> list[tuple[str, int]]:
        """The runs this worker holds: (job id, fence), for heartbeats."""
        with self.lock:
            return [(job.id, job.fence) for job in self.active.values()]

    def forget(self, runs: Sequence[RunOutcome]) -> None:
        """Runs whose outcome was offered to storage: no longer this worker's."""
        with self.lock:
            for outcome in runs:
                self.active.pop((outcome.job.id, outcome.job.fence), None)

    # -- stopping -----------------------------------------------------------------------

    def stop_claiming(self) -> None:
        """Claim no more; running jobs go on."""
        self.stopping.set()
        self.wakeup.set()

    def release_unstarted(self) -> None:
        """Release the claimed jobs no slot started (after the dispatcher thread ended)."""
        with self.lock:
            unstarted = [job for state in self.queues.values() for job in state.ready]
            for state in self.queues.values():
                state.ready.clear()
            for job in unstarted:
                self.queues[job.queue].claimed -= 1
        for job in unstarted:
            self.outcomes.put(RunOutcome(job, "release"))

    def wait_finished(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for every claimed job to finish; how many did not.

        ``abandon()`` ends the wait early.
        """
        with self.lock:
            self.lock.wait_for(
                lambda: (
                    self.abandoned.is_set()
                    or not any(state.claimed for state in self.queues.values())
                ),
                timeout,
            )
            return sum(state.claimed for state in self.queues.values())

    def abandon(self) -> None:
        """Give up on running jobs: end ``wait_finished`` now (``release_running`` then
        gives them back). Safe to call from a signal handler in the thread that waits."""
        self.abandoned.set()
        with self.lock:  # a reentrant lock: the waiting thread does not hold it meanwhile
            self.lock.notify_all()

    def release_running(self) -> int:
        """Release, for other workers, every run this worker still holds (after
        ``abandon``): ``release`` outcomes the completer stores; async ones are cancelled.

        A run whose outcome is already on its way is stored first and its release finds
        nothing to do; one that ends after is dropped (see ``_finish``). Returns how many
        runs had not finished.
        """
        with self.lock:
            runs = list(self.active.values())
            unfinished = sum(state.claimed for state in self.queues.values())
        for job in runs:
            self.outcomes.put(RunOutcome(job, "release"))
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_cancel_tasks, loop)
        return unfinished

    def stop_slots(self, count: int) -> None:
        """Tell ``count`` slot threads to end once the jobs before are done."""
        for _ in range(count):
            self.tasks.put(None)


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
