"""``Worker``: claims jobs, runs them in slots, stores outcomes, and stops gracefully.

Threads of one worker:

- the dispatcher claims as many due jobs as a queue has free slots, in one statement;
- slot threads run sync handlers; one event-loop thread runs async handlers;
- the completer stores outcomes in batches (one statement for many completions) and
  then fires hooks and events, so they only ever report what is committed;
- the maintenance thread heartbeats running jobs and takes back stale ones;
- on PostgreSQL a listener turns ``NOTIFY`` into immediate wake-ups.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue as queue_mod
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from .backlog import Backlog
from .errors import OutcomeRefused
from .events import JobCompleted, JobFailed, JobRetrying
from .executor import Executor, RunOutcome, describe
from .job import Job, JobStatus, utcnow
from .maintenance import Heartbeat, Reaper
from .retry import Backoff
from .scheduler import Scheduler
from .storage import Claim, Outcome, SQLStorage, is_transient
from .storage.notify import PostgresListener, SQLiteWatcher

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["Worker"]

log = logging.getLogger("durable_jobs")

DEFAULT_CONCURRENCY = 10
_MAX_BATCH = 500
# Average run time (seconds) above which a queue claims no more than it can start.
_SLOW_JOB = 0.05
# How many times its concurrency a queue may hold claimed, by how long its jobs run: one
# commit completes a batch and claims the next, so the shorter the jobs, the bigger the
# batches must be for commits not to bound throughput.
_CLAIM_AHEAD = ((_SLOW_JOB / 100, 16), (_SLOW_JOB / 10, 4), (_SLOW_JOB, 2))
_MAX_BACKOFF = 5.0
# Stored outcomes whose hooks have not run yet, at most (by count and by result bytes):
# beyond that the completer waits for slow hooks instead of holding ever more results.
_REPORT_BACKLOG = 64
_REPORT_BACKLOG_BYTES = 16 * 1024 * 1024
# The status an outcome of each kind leaves its job in (for retried, fenced-out writes).
_SETTLED_AS = {
    "completed": JobStatus.COMPLETED,
    "retry": JobStatus.RETRYING,
    "failed": JobStatus.FAILED,
}


def _seconds(name: str, value: timedelta | float) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(
            f"{name} must be a positive number of seconds or a timedelta, got {value!r}"
        )
    return float(seconds)


def _parse_queues(queues: Mapping[str, int] | Sequence[str] | None) -> dict[str, int]:
    if queues is None:
        return {"default": DEFAULT_CONCURRENCY}
    if isinstance(queues, str):
        raise ValueError(
            f"queues must be a list of names or a name -> concurrency dict, got {queues!r}"
        )
    pairs = (
        queues.items()
        if isinstance(queues, Mapping)
        else ((q, DEFAULT_CONCURRENCY) for q in queues)
    )
    parsed: dict[str, int] = {}
    for name, concurrency in pairs:
        if not isinstance(name, str) or not name:
            raise ValueError(f"queue names must be non-empty strings, got {name!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(
                f"concurrency of queue {name!r} must be an int >= 1, got {concurrency!r}"
            )
        parsed[name] = concurrency
    if not parsed:
        raise ValueError("a worker needs at least one queue")
    return parsed


@dataclass(frozen=True, slots=True)
class _ClaimRequest:
    """Room reserved in a queue for a claim, and the generation of wake-ups it saw."""

    claim: Claim
    generation: int

    @property
    def ahead(self) -> bool:
        """A claim beyond the free slots, whose jobs wait in the buffer."""
        return self.claim.min_retries > 0


class Worker:
    """Runs the jobs of some queues with a concurrency limit per queue.

    Made by ``Queue.worker()``. ``run()`` blocks (SIGINT/SIGTERM stop it gracefully),
    ``start()`` runs in the background, ``stop()`` drains, and ``with`` does both.
    """

    def __init__(
        self,
        queue: Queue,
        queues: Mapping[str, int] | Sequence[str] | None = None,
        *,
        scheduler: bool = False,
        lock_timeout: timedelta | float = 30,
        poll_interval: timedelta | float = 1.0,
        worker_id: str | None = None,
    ) -> None:
        self.queue = queue
        self.concurrency = _parse_queues(queues)
        self.scheduler = scheduler
        self.lock_timeout = _seconds("lock_timeout", lock_timeout)
        self.poll_interval = _seconds("poll_interval", poll_interval)
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._slots = sum(self.concurrency.values())
        self._executor = Executor(queue, self.id, lock_timeout=self.lock_timeout)
        self._lock = threading.Condition()
        # Per queue: jobs claimed and not yet finished (running or waiting in _ready),
        # and how many of them run. Queues of short jobs claim ahead of their free slots
        # (see _capacity), so the next job starts the moment a slot frees and one claim
        # serves many jobs; queues of long jobs claim only what they can start, so they
        # never hoard jobs other workers could run.
        self._claimed = dict.fromkeys(self.concurrency, 0)
        self._duration = dict.fromkeys(self.concurrency, _SLOW_JOB)
        self._running = dict.fromkeys(self.concurrency, 0)
        self._ready: dict[str, deque[Job]] = {name: deque() for name in self.concurrency}
        # Keyed by run (job id, fence), not job: after a take-back this worker may claim
        # the same job again while its old run is still finishing, and both must stay
        # known. The fence, unlike the attempt, differs even after an operator's retry.
        self._active: dict[tuple[str, int], Job] = {}
        self._maybe_work = dict.fromkeys(self.concurrency, True)
        self._generation = dict.fromkeys(self.concurrency, 0)
        self._skip: dict[str, float] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()
        self._service_stop = threading.Event()
        self._state = "new"
        self._state_lock = threading.Lock()
        self._stop_callbacks: list[Callable[[], None]] = []
        self._tasks: queue_mod.SimpleQueue[Job | None] = queue_mod.SimpleQueue()
        self._outcomes: queue_mod.SimpleQueue[RunOutcome | None] = queue_mod.SimpleQueue()
        # Stored outcomes waiting for their hooks, events and log lines: (outcome, whether
        # the database accepted it).
        self._reports: Backlog[tuple[RunOutcome, bool]] = Backlog(
            _REPORT_BACKLOG, _REPORT_BACKLOG_BYTES
        )
        self._threads: list[threading.Thread] = []
        self._services: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._completer: threading.Thread | None = None
        self._reporter: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None
        self._give_up_at = float("inf")

    def __repr__(self) -> str:
        return f"<Worker {self.id} queues={self.concurrency} {self._state}>"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start working in background threads and return at once."""
        with self._state_lock:
            if self._state != "new":
                raise RuntimeError(f"worker already {self._state}; make a new one to start again")
            # Before the state changes: a schedule without a handler fails start() cleanly.
            self._scheduler = Scheduler(self.queue) if self.scheduler else None
            self._state = "running"
        try:
            storage = self.queue.storage  # migrates a URL-made queue before threads race to
            if isinstance(storage, SQLStorage):
                storage.require_schema()  # a clear error now, not failures logged forever
        except BaseException:
            # Nothing runs yet (the database may be down): the worker is stopped, so the
            # caller sees this error and a stop() (as in run()) returns at once.
            with self._state_lock:
                self._state = "stopped"
            self._stopped.set()
            raise
        self._heartbeat = Heartbeat(
            self.queue.storage,
            self.id,
            list(self.concurrency),
            lambda: self.queue.job_types,
            self._running_jobs,
            self.lock_timeout,
        )
        self._reaper = Reaper(
            self.queue.storage, timedelta(seconds=self.lock_timeout), self._default_backoff
        )
        self._run_service("heartbeat", self._heartbeat.run_once)  # listed as live before claiming
        for handler_name in self.queue.job_types:
            handler = self.queue.handler(handler_name)
            if handler is not None and handler.is_async:
                self._start_loop()
                break
        for n in range(self._slots):
            self._spawn(f"slot-{n}", self._slot_loop, self._threads)
        self._completer = self._spawn("completer", self._completer_loop, [])
        self._reporter = self._spawn("reporter", self._reporter_loop, [])
        self._spawn("maintenance", self._maintenance_loop, self._services)
        self._start_listener()
        self.queue.attach(self)
        self._dispatcher = self._spawn("dispatcher", self._dispatch_loop, [])
        log.info(
            "worker %s started: queues %s, lock timeout %gs",
            self.id,
            self.concurrency,
            self.lock_timeout,
            extra={"worker_id": self.id},
        )

    def stop(self, timeout: float = 30) -> None:
        """Stop claiming, let running jobs finish (up to ``timeout`` s), release the rest.

        Thread-safe and idempotent.
        """
        with self._state_lock:
            state = self._state
            if state == "new":
                self._state = "stopped"
                self._stopped.set()
            elif state == "running":
                self._state = "stopping"
        self._request_stop()
        if state != "running":
            self._stopped.wait(timeout if state == "stopping" else 0)
            return
        self._drain(timeout)

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._give_up_at = deadline
        self._reports.wake()  # a completer waiting for slow hooks now waits until then
        self._stopping.set()
        self._wake.set()
        assert self._dispatcher is not None and self._completer is not None
        assert self._reporter is not None
        self._dispatcher.join()
        with self._lock:
            unstarted = [job for ready in self._ready.values() for job in ready]
            for ready in self._ready.values():
                ready.clear()
            for job in unstarted:
                self._claimed[job.queue] -= 1
        for job in unstarted:
            self._outcomes.put(RunOutcome(job, "release"))
        with self._lock:
            self._lock.wait_for(
                lambda: not any(self._claimed.values()), max(0.0, deadline - time.monotonic())
            )
            unfinished = sum(self._claimed.values())
        for _ in self._threads:
            self._tasks.put(None)
        self._outcomes.put(None)
        self._completer.join(max(0.0, deadline - time.monotonic()) + 1)
        self._reporter.join(max(0.0, deadline - time.monotonic()))
        if self._reporter.is_alive():
            log.warning(
                "worker %s stopped before the hooks and events of %d stored outcome(s) ran; "
                "they run in the background while the process lives",
                self.id,
                self._reports.pending,
            )
        if unfinished:
            log.warning(
                "worker %s stopped with %d job(s) still running; they will be retried after "
                "the lock timeout",
                self.id,
                unfinished,
            )
        self._service_stop.set()
        for thread in self._services:
            thread.join(5)
        self._stop_loop()
        self._run_service("unregister", lambda: self._remove_worker())
        self.queue.detach(self)
        with self._state_lock:
            self._state = "stopped"
        self._stopped.set()
        log.info("worker %s stopped", self.id, extra={"worker_id": self.id})

    def _remove_worker(self) -> None:
        storage = self.queue.storage
        if isinstance(storage, SQLStorage):
            storage.remove_worker(self.id)

    def _request_stop(self) -> None:
        self._stop_requested.set()
        for callback in list(self._stop_callbacks):
            callback()

    def run(self) -> None:
        """Work until ``stop()``, SIGINT or SIGTERM, then drain and return."""
        restore = self._install_signal_handlers()
        try:
            self.start()
            while not self._stop_requested.wait(0.5):
                pass
        finally:
            self.stop()
            for signum, previous in restore.items():
                signal.signal(signum, previous)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, _frame: FrameType | None) -> None:
            log.info("worker %s received %s; draining", self.id, signal.Signals(signum).name)
            self._request_stop()

        return {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    async def run_async(self) -> None:
        """``run()`` for asyncio programs; cancelling the task drains gracefully too."""
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()

        def resolve() -> None:
            if not stopped.done():
                stopped.set_result(None)

        def notify() -> None:
            loop.call_soon_threadsafe(resolve)

        self._stop_callbacks.append(notify)
        await asyncio.to_thread(self.start)
        try:
            await stopped
        finally:
            await asyncio.to_thread(self.stop)

    def __enter__(self) -> Worker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._state in ("running", "stopping")

    # -- wake-ups -----------------------------------------------------------------------

    def wake(self, queues: Sequence[str] | set[str]) -> None:
        """Look for jobs in ``queues`` now rather than at the next poll."""
        touched = False
        with self._lock:
            for name in queues:
                if name in self._maybe_work:
                    self._maybe_work[name] = True
                    self._generation[name] += 1
                    touched = True
        if touched:
            self._wake.set()

    def take_enqueued(self, job: Job) -> bool:
        """Reserve a free slot for ``job``, about to be enqueued in this process, so that it
        is stored already claimed by this worker (``start_enqueued``): no claim, no wait.
        """
        name = job.queue
        with self._lock:
            if (
                self._state != "running"
                or self._stopping.is_set()
                or name not in self.concurrency
                or self._running[name] + len(self._ready[name]) >= self.concurrency[name]
                or self._claimed[name] >= self._capacity(name)
                or self.queue.handler(job.type) is None
            ):
                return False
            self._claimed[name] += 1
        return True

    def give_back_enqueued(self, job: Job) -> None:
        """The enqueue ``take_enqueued`` reserved room for failed."""
        with self._lock:
            self._claimed[job.queue] -= 1

    def start_enqueued(self, job: Job) -> None:
        """Run ``job``, stored claimed by this worker after ``take_enqueued``."""
        self._accept(_ClaimRequest(Claim(job.queue, 1), -1), [job])

    def wake_all(self) -> None:
        """Look for jobs in every queue now."""
        self.wake(list(self.concurrency))

    def _on_notify(self, queue_name: str) -> None:
        self.wake((queue_name,))

    def _start_listener(self) -> None:
        storage = self.queue.storage
        if not isinstance(storage, SQLStorage) or storage.is_memory:
            return  # one process: in-process wake-ups reach every worker
        watcher = (
            SQLiteWatcher(storage.engine) if storage.is_sqlite else PostgresListener(storage.engine)
        )
        self._spawn(
            "listener",
            lambda: watcher.run(self._on_notify, self.wake_all, self._service_stop),
            self._services,
        )

    # -- dispatching --------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        next_poll = time.monotonic() + self.poll_interval
        failures = 0
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_poll:
                # Delayed and retrying jobs become due without any notification.
                self.wake_all()
                next_poll = now + self.poll_interval
            self._wake.clear()
            try:
                claimed = self._claim_round()
                failures = 0
            except Exception as exc:
                failures += 1
                wait = min(_MAX_BACKOFF, 0.05 * 2**failures)
                log.warning("claiming jobs failed (%s); retrying in %.2f s", exc, wait)
                self._stopping.wait(wait)
                self.wake_all()
                continue
            if not claimed:
                self._wake.wait(max(0.0, next_poll - time.monotonic()))

    def _claim_round(self) -> bool:
        if self._outcomes.qsize() > self._slots:
            return False  # the completer is behind: let it catch up before claiming more
        claimed_any = False
        requests = self._reserve()
        drained: set[str] = set()
        for position, request in enumerate(requests):
            name = request.claim.queue
            if name in drained:
                # A claim for free slots came back short: nothing more is due, so a
                # claim ahead would cost a transaction for nothing (and the time of the
                # jobs that just started, on a busy machine).
                self._unreserve([request])
                continue
            try:
                jobs = self._claim(request.claim)
            except BaseException:
                self._unreserve(requests[position:])
                raise
            self._accept(request, jobs)
            if len(jobs) < request.claim.limit and not request.ahead:
                drained.add(name)
            claimed_any = claimed_any or bool(jobs)
        return claimed_any

    def _unreserve(self, requests: list[_ClaimRequest]) -> None:
        """Give back the room of claims that were never made."""
        with self._lock:
            for request in requests:
                self._claimed[request.claim.queue] -= request.claim.limit

    def _reserve(self) -> list[_ClaimRequest]:
        """Claims worth making now, their room already counted as claimed.

        Counting the room before the claim returns lets the dispatcher and the completer
        (which claims along with its completions) claim at the same time without taking
        more than a queue's capacity between them.
        """
        requests = []
        skip = self._skip_types()
        with self._lock:
            if self._stopping.is_set():
                return []
            for name, limit in self.concurrency.items():
                capacity = self._capacity(name)
                want = capacity - self._claimed[name]
                # With a prefetch buffer, refill once it is half empty: claims in batches.
                if want < max(1, (capacity - limit) // 2) or not self._maybe_work[name]:
                    continue
                self._claimed[name] += want
                generation = self._generation[name]
                free = max(0, limit - self._running[name] - len(self._ready[name]))
                now, ahead = min(want, free), want - min(want, free)
                if now:
                    requests.append(_ClaimRequest(Claim(name, now, skip), generation))
                if ahead:
                    claim = Claim(name, ahead, skip, min_retries=1)
                    requests.append(_ClaimRequest(claim, generation))
        return requests

    def _accept(self, request: _ClaimRequest, jobs: list[Job]) -> None:
        """Take in the jobs a reserved claim returned, and start those that fit."""
        name, want = request.claim.queue, request.claim.limit
        with self._lock:
            self._claimed[name] -= want - len(jobs)
            # Only a claim for free slots tells the queue is empty: one that claims ahead
            # leaves out the jobs that allow a single run.
            short = len(jobs) < want and not request.ahead
            if short and self._generation[name] == request.generation:
                self._maybe_work[name] = False
            for job in jobs:
                self._active[(job.id, job.fence)] = job
            if self._stopping.is_set():
                # Stop began while the claim was out: these will never start.
                self._claimed[name] -= len(jobs)
                unstarted, startable = jobs, []
            else:
                self._ready[name].extend(jobs)
                unstarted, startable = [], self._take_startable(name)
            self._lock.notify_all()
        for job in unstarted:
            self._outcomes.put(RunOutcome(job, "release"))
        for job in startable:
            self._dispatch(job)

    def _capacity(self, name: str) -> int:
        """How many jobs queue ``name`` may hold claimed, by how long its jobs run."""
        limit, duration = self.concurrency[name], self._duration[name]
        for shorter_than, times in _CLAIM_AHEAD:
            if duration < shorter_than:
                return times * limit
        return limit

    def _take_startable(self, name: str) -> list[Job]:
        """Claimed jobs of queue ``name`` that free slots can start now (lock held)."""
        ready, limit = self._ready[name], self.concurrency[name]
        startable = []
        while ready and self._running[name] < limit:
            startable.append(ready.popleft())
            self._running[name] += 1
        return startable

    def _claim(self, claim: Claim) -> list[Job]:
        storage = self.queue.storage
        if isinstance(storage, SQLStorage):
            return storage.claim(
                claim.queue,
                self.id,
                claim.limit,
                skip_types=claim.skip_types,
                min_retries=claim.min_retries,
                lock_timeout=self.lock_timeout,
            )
        if claim.min_retries:
            return []  # the plain protocol's dequeue cannot leave out single-run jobs
        jobs = []
        for _ in range(claim.limit):
            job = storage.dequeue([claim.queue], self.id)
            if job is None:
                break
            jobs.append(job)
        return jobs

    def _skip_types(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            for name in [n for n, until in self._skip.items() if until <= now]:
                del self._skip[name]
            return list(self._skip)

    def _dispatch(self, job: Job) -> None:
        handler = self.queue.handler(job.type)
        if handler is not None and handler.is_async and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._run_async_job(job), self._loop)
        else:
            self._tasks.put(job)

    def _slot_loop(self) -> None:
        while (job := self._tasks.get()) is not None:
            if self._stopping.is_set():
                self._finish(RunOutcome(job, "release"))
                continue
            try:
                outcome = self._executor.run(job)
            except BaseException as exc:  # the slot must survive anything a handler does
                outcome = self._executor.classify(job, None, exc, time.monotonic())
            self._finish(outcome)

    async def _run_async_job(self, job: Job) -> None:
        if self._stopping.is_set():
            self._finish(RunOutcome(job, "release"))
            return
        try:
            outcome = await self._executor.run_async(job)
        except BaseException as exc:
            outcome = self._executor.classify(job, None, exc, time.monotonic())
        self._finish(outcome)

    def _finish(self, outcome: RunOutcome) -> None:
        name = outcome.job.queue
        with self._lock:
            self._running[name] -= 1
            self._claimed[name] -= 1
            if outcome.kind != "release":
                # A moving average: a few slow runs switch the queue off prefetching.
                seconds = outcome.duration.total_seconds()
                self._duration[name] += (seconds - self._duration[name]) / 8
            startable = [] if self._stopping.is_set() else self._take_startable(name)
            capacity = self._capacity(name)
            limit = self.concurrency[name]
            refill = capacity - self._claimed[name] >= max(1, (capacity - limit) // 2)
            self._lock.notify_all()
        for job in startable:
            self._dispatch(job)
        self._outcomes.put(outcome)
        if refill:
            self._wake.set()

    def _default_backoff(self, job_type: str) -> Backoff | None:
        """The backoff policy the handler of ``job_type`` registered with, if any."""
        handler = self.queue.handler(job_type)
        policy: Backoff | None = None if handler is None else handler.defaults.get("backoff")
        return policy

    def _running_jobs(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(job.id, job.fence) for job in self._active.values()]

    # -- async handlers -----------------------------------------------------------------

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._spawn("async", loop.run_forever, [])

    def _stop_loop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        self._loop = None

    # -- storing outcomes ---------------------------------------------------------------

    def _completer_loop(self) -> None:
        done = False
        while not done:
            batch = [self._outcomes.get()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(self._outcomes.get_nowait())
                except queue_mod.Empty:
                    break
            done = None in batch
            self._store([o for o in batch if o is not None])
            self._wake.set()
        self._reports.close()

    def _reporter_loop(self) -> None:
        # Hooks, events and log lines of stored outcomes, in order, off the completer's
        # thread: that one stores the next batch meanwhile (its commits bound throughput).
        while (batch := self._reports.get()) is not None:
            for outcome, accepted in batch:
                if accepted:
                    self._report(outcome)
                elif outcome.kind in ("completed", "retry", "failed"):
                    log.warning(
                        "outcome of job %s rejected: the worker lost its lock",
                        outcome.job.id,
                        extra={"job_id": outcome.job.id, "worker_id": self.id},
                    )
                self._reports.done()

    def _store(self, batch: list[RunOutcome]) -> None:
        storage = self.queue.storage
        accepted: set[str] = set()
        completions = [o for o in batch if o.kind == "completed"]
        if completions and isinstance(storage, SQLStorage):
            accepted |= self._complete_and_claim(storage, completions)
        for o in batch:
            if o.kind == "completed" and not isinstance(storage, SQLStorage):
                try:
                    self._retrying(partial(storage.complete, o.job.id))
                    accepted.add(o.job.id)
                except Exception as exc:  # refused for good: the job fails instead
                    self._refused(o, exc)
            if o.kind == "unknown":
                self._permanent_ok(
                    "resolving an unknown job type", partial(self._resolve_unknown, o)
                )
            if o.kind in ("retry", "failed") and self._store_failure(o):
                accepted.add(o.job.id)
        releases = [(o.job.id, o.job.fence) for o in batch if o.kind == "release"]
        if releases and isinstance(storage, SQLStorage):
            self._permanent_ok(
                "releasing unstarted jobs", lambda: storage.release(self.id, releases)
            )
        rejected = [o for o in batch if o.kind in _SETTLED_AS and o.job.id not in accepted]
        if rejected and isinstance(storage, SQLStorage):
            accepted |= self._committed_anyway(storage, rejected)
        with self._lock:
            for outcome in batch:
                self._active.pop((outcome.job.id, outcome.job.fence), None)
        reports = [(o, o.job.id in accepted) for o in batch]
        size = sum(len(o.result or b"") for o in batch)
        self._reports.put(reports, size, lambda: self._give_up_at)

    def _committed_anyway(self, storage: SQLStorage, rejected: list[RunOutcome]) -> set[str]:
        """Outcomes whose write was retried after its reply was lost but had committed.

        The retry is then fenced out like a stale worker's; the row still names this run
        as the one that settled it, so the outcome counts (and its hooks fire).
        """
        runs = [(o.job.id, o.job.fence) for o in rejected]
        found = self._permanent_ok(
            "reading stored outcomes", lambda: storage.settled(self.id, runs)
        )
        found = found or {}
        return {o.job.id for o in rejected if found.get(o.job.id) == _SETTLED_AS[o.kind]}

    def _complete_and_claim(self, storage: SQLStorage, completions: list[RunOutcome]) -> set[str]:
        """Store completions, claiming the next jobs in the same transaction."""
        outcomes = [Outcome(o.job.id, o.job.fence, o.result) for o in completions]
        requests = self._reserve()
        claims = [r.claim for r in requests]
        try:
            stored = self._retrying(
                lambda: storage.complete_and_claim(
                    self.id, outcomes, claims, lock_timeout=self.lock_timeout
                )
            )
        except Exception as exc:
            # Refused for good, the whole transaction: find the outcome(s) to blame.
            self._unreserve(requests)
            log.warning(
                "storing %d completions failed (%s); storing them one by one", len(outcomes), exc
            )
            return self._complete_each(storage, completions)
        if stored is None:  # given up at the stop deadline
            self._unreserve(requests)
            return set()
        accepted, claimed = stored
        for request, jobs in zip(requests, claimed, strict=True):
            self._accept(request, jobs)
        return accepted  # type: ignore[no-any-return]

    def _complete_each(self, storage: SQLStorage, completions: list[RunOutcome]) -> set[str]:
        """Store completions one at a time; one the database refuses fails its job."""
        accepted: set[str] = set()
        for o in completions:
            outcome = [Outcome(o.job.id, o.job.fence, o.result)]
            write = partial(
                storage.complete_and_claim, self.id, outcome, [], lock_timeout=self.lock_timeout
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
        what = "result" if o.kind == "completed" else "error"
        log.error(
            "the database refused the %s of job %s: %s",
            what,
            o.job.id,
            exc,
            extra={"job_id": o.job.id, "worker_id": self.id},
        )
        o.error = OutcomeRefused(
            f"the database refused to store the {what} of this run: {describe(exc)}"
        )
        if o.kind == "completed":
            o.kind, o.result, o.run_at = "failed", None, None

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
            extra={"job_id": o.job.id, "worker_id": self.id},
        )
        return False

    def _permanent_ok(self, what: str, write: Callable[[], Any]) -> Any:
        """``_retrying`` for writes whose permanent failure is only logged (None)."""
        try:
            return self._retrying(write)
        except Exception as exc:
            log.error("%s failed: %s", what, exc, extra={"worker_id": self.id})
            return None

    def _retrying(self, write: Callable[[], Any]) -> Any:
        """Run a storage write until it succeeds; a lost outcome would mean a second run.

        Only transient errors (``is_transient``: a lost connection, a busy database) are
        retried: any other is raised, since the same write would fail forever and hold up
        every outcome behind it.
        """
        failures = 0
        while True:
            try:
                return write()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                if time.monotonic() >= self._give_up_at:
                    log.error("could not store an outcome before the stop timeout: %s", exc)
                    return None
                wait = min(_MAX_BACKOFF, 0.05 * 2**failures)
                log.warning("storing an outcome failed (%s); retrying in %.2f s", exc, wait)
                time.sleep(wait)

    def _fail(self, o: RunOutcome) -> bool:
        storage = self.queue.storage
        if isinstance(storage, SQLStorage):
            return storage.fail(
                o.job.id, o.error_text, o.run_at, worker_id=self.id, fence=o.job.fence
            )
        storage.fail(o.job.id, o.error_text, o.run_at)
        return True

    def _resolve_unknown(self, o: RunOutcome) -> None:
        """A job type this worker has no handler for: leave it to a worker that has one."""
        storage = self.queue.storage
        job = o.job
        if isinstance(storage, SQLStorage):
            others = storage.live_workers(timedelta(seconds=self.lock_timeout))
            if any(
                w.id != self.id and job.type in w.types and job.queue in w.queues for w in others
            ):
                # Skipped first: a claim made once the job is back must not take it again.
                with self._lock:
                    self._skip[job.type] = time.monotonic() + self.lock_timeout
                storage.release(self.id, [(job.id, job.fence)])
                o.kind = "release"
                return
        o.kind = "failed"
        o.error = LookupError(
            f"no handler registered for job type {job.type!r} in any live worker of queue "
            f"{job.queue!r}"
        )
        o.run_at = None

    def _report(self, o: RunOutcome) -> None:
        job = o.job
        hooks, bus = self.queue.hooks, self.queue.bus
        extra = {
            "job_id": job.id,
            "job_type": job.type,
            "queue": job.queue,
            "attempt": job.attempt,
            "worker_id": self.id,
        }
        now = utcnow()
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
        assert o.error is not None
        job.last_error = o.error_text
        if o.kind == "retry":
            assert o.run_at is not None
            job.status, job.run_at = JobStatus.RETRYING, o.run_at
            log.info(
                "job %s (%s) failed on attempt %d, retrying at %s: %s",
                job.id,
                job.type,
                job.attempt,
                o.run_at.isoformat(),
                job.last_error,
                extra=extra,
            )
            hooks.fire_retry(job, o.error)
            if bus.has_subscribers:
                bus.publish(JobRetrying(job, job.attempt, o.error, o.run_at))
        else:
            job.status, job.completed_at = JobStatus.FAILED, now
            log.info(
                "job %s (%s) failed permanently: %s", job.id, job.type, job.last_error, extra=extra
            )
            hooks.fire_fail(job, o.error)
            if bus.has_subscribers:
                bus.publish(JobFailed(job, o.error))

    # -- maintenance --------------------------------------------------------------------

    def _maintenance_loop(self) -> None:
        beat_every = self.lock_timeout / 5
        reap_every = self.lock_timeout / 2
        next_beat = time.monotonic() + beat_every
        next_reap = time.monotonic()
        next_fire = time.monotonic() if self._scheduler is not None else float("inf")
        while not self._service_stop.wait(
            max(0.0, min(next_beat, next_reap, next_fire) - time.monotonic())
        ):
            now = time.monotonic()
            if now >= next_beat:
                self._run_service("heartbeat", self._heartbeat.run_once)
                next_beat = now + beat_every
            if now >= next_reap:
                if self._run_service("reaper", self._reaper.run_once):
                    self.wake_all()
                next_reap = now + reap_every
            if self._scheduler is not None and now >= next_fire:
                if self._run_service("scheduler", self._scheduler.run_once):
                    self.wake_all()
                next_fire = time.monotonic() + self._scheduler.seconds_until_due()

    def _run_service(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:
            log.warning(
                "worker %s: %s failed: %s", self.id, name, exc, extra={"worker_id": self.id}
            )
            return None

    def _spawn(
        self, name: str, target: Callable[[], Any], group: list[threading.Thread]
    ) -> threading.Thread:
        # Daemon threads: a handler that never returns must not keep the process alive
        # after stop() has given up on it.
        thread = threading.Thread(target=target, name=f"sdj-{name}", daemon=True)
        thread.start()
        group.append(thread)
        return thread
