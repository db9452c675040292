"""Hooks and the event stream: how a queue reports what its workers do.

Pure machinery, no storage: the executor fires hooks and publishes events after an
outcome is committed. Both run on the workers' hot path, so each is a near no-op
when nobody listens, and neither lets a slow or broken listener hold up a job.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from durable_jobs.job import Checkpoint, Job, utcnow

__all__ = [
    "CheckpointSaved",
    "ErrorHook",
    "Event",
    "EventBus",
    "EventStream",
    "Hooks",
    "JobCancelled",
    "JobCompleted",
    "JobEnqueued",
    "JobFailed",
    "JobHook",
    "JobPaused",
    "JobResumed",
    "JobRetrying",
    "JobStarted",
    "JobWaiting",
]

logger = logging.getLogger("durable_jobs")

#: ``fn(job)``, plain or ``async def``.
JobHook = Callable[[Job], object]
#: ``fn(job, error)``, plain or ``async def``.
ErrorHook = Callable[[Job, BaseException], object]

_JobHookT = TypeVar("_JobHookT", bound=JobHook)
_ErrorHookT = TypeVar("_ErrorHookT", bound=ErrorHook)


# --- Events -------------------------------------------------------------------------------


# Not slotted: ``JobFailed`` is also an exception, whose layout a slotted base would clash with.
@dataclass(frozen=True)
class Event:
    """Something that happened to ``job``, at ``at`` (UTC)."""

    job: Job
    # Keyword-only so subclasses can add positional fields and ``match`` ignores it.
    at: datetime = field(default_factory=utcnow, kw_only=True)


@dataclass(frozen=True, slots=True)
class JobEnqueued(Event):
    """The job was stored and awaits a worker."""


@dataclass(frozen=True, slots=True)
class JobStarted(Event):
    """A worker began a run of the job."""


@dataclass(frozen=True, slots=True)
class JobResumed(JobStarted):
    """A worker began a run that resumes the job from a wait (a ``JobStarted`` too).

    The run replays the job's checkpoints; it is not a new attempt.
    """


@dataclass(frozen=True, slots=True)
class JobWaiting(Event):
    """The job suspended itself (``jobs.sleep``...): it waits, holding no worker slot,
    for ``waiting_for`` (``"sleep"``, ``"signal:<name>"``) until ``until`` (None: no
    deadline)."""

    until: datetime | None
    waiting_for: str


@dataclass(frozen=True, slots=True)
class JobCompleted(Event):
    """The job's handler returned; ``duration`` is that run's wall time."""

    duration: timedelta


@dataclass(frozen=True)
class JobFailed(Event, Exception):
    """The job failed permanently with ``error``.

    Also the exception ``Queue.result`` raises for a failed job: ``error`` is then a
    ``FailedRun`` holding what the failed run stored (its error and traceback).
    """

    error: BaseException

    def __str__(self) -> str:
        return f"job {self.job.id} ({self.job.type}) failed: {self.error}"


@dataclass(frozen=True)
class JobCancelled(Event, Exception):
    """The job was cancelled (``queue.cancel``, or a ``fail_fast`` fan-out that failed):
    it never runs again; a run in progress is told to stop.

    Also the exception ``Queue.result`` raises for a cancelled job.
    """

    def __str__(self) -> str:
        return f"job {self.job.id} ({self.job.type}) was cancelled"


@dataclass(frozen=True, slots=True)
class JobPaused(Event):
    """``queue.pause`` held the job: no worker claims it until ``queue.resume``."""


@dataclass(frozen=True, slots=True)
class JobRetrying(Event):
    """Run number ``attempt`` failed with ``error``; the job runs again at ``next_run_at``."""

    attempt: int
    error: BaseException
    next_run_at: datetime


@dataclass(frozen=True, slots=True)
class CheckpointSaved(Event):
    """A durable call inside the job saved ``checkpoint``."""

    checkpoint: Checkpoint


# --- Hooks --------------------------------------------------------------------------------


class Hooks:
    """Callbacks run by workers around each job; several per kind, in registration order.

    A hook that raises is logged and never propagates. ``async def`` hooks run to
    completion on a private event-loop thread (started on first use, stopped by
    :meth:`close`), each bounded by ``async_timeout`` seconds so a stuck hook cannot
    hold a worker forever. ``fire_*`` block the caller while hooks run: call them from
    worker threads, not from inside a running event loop.
    """

    def __init__(self, async_timeout: float = 30.0) -> None:
        if not async_timeout > 0:
            raise ValueError(f"async_timeout must be positive, got {async_timeout!r}")
        self._async_timeout = async_timeout
        # Tuples replaced on registration: firing threads iterate them without a lock.
        self._start: tuple[JobHook, ...] = ()
        self._complete: tuple[JobHook, ...] = ()
        self._fail: tuple[ErrorHook, ...] = ()
        self._retry: tuple[ErrorHook, ...] = ()
        self._enqueued: tuple[Callable[[Sequence[Job]], None], ...] = ()
        self._cancel: tuple[JobHook, ...] = ()
        self._lock = threading.Lock()
        self._runner: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None

    def on_job_start(self, fn: _JobHookT) -> _JobHookT:
        """Register ``fn(job)``, run when a worker starts a job. Usable as a decorator."""
        with self._lock:
            self._start = (*self._start, fn)
        return fn

    def on_job_complete(self, fn: _JobHookT) -> _JobHookT:
        """Register ``fn(job)``, run when a job completes. Usable as a decorator."""
        with self._lock:
            self._complete = (*self._complete, fn)
        return fn

    def on_job_fail(self, fn: _ErrorHookT) -> _ErrorHookT:
        """Register ``fn(job, error)``, run when a job fails permanently."""
        with self._lock:
            self._fail = (*self._fail, fn)
        return fn

    def on_retry(self, fn: _ErrorHookT) -> _ErrorHookT:
        """Register ``fn(job, error)``, run when a failed job will be retried."""
        with self._lock:
            self._retry = (*self._retry, fn)
        return fn

    def on_cancel(self, fn: _JobHookT) -> _JobHookT:
        """Register ``fn(job)``, run in the process that cancels a job, once for it and
        once for each of its descendants cancelled with it. Usable as a decorator."""
        with self._lock:
            self._cancel = (*self._cancel, fn)
        return fn

    def on_enqueued(self, fn: Callable[[Sequence[Job]], None]) -> None:
        """Register ``fn(jobs)``, run in the enqueuing thread once new jobs are committed
        (for counting them: it must be quick and must not block)."""
        with self._lock:
            self._enqueued = (*self._enqueued, fn)

    @property
    def has_enqueued(self) -> bool:
        """Whether any enqueued hook is registered."""
        return bool(self._enqueued)

    def fire_enqueued(self, jobs: Sequence[Job]) -> None:
        """Run the enqueued hooks for committed ``jobs``; one that raises is logged."""
        for fn in self._enqueued:
            try:
                fn(jobs)
            except Exception:
                logger.exception("enqueued hook %s failed", getattr(fn, "__qualname__", fn))

    def fire_start(self, job: Job) -> None:
        """Run the start hooks for ``job``."""
        if self._start:
            self._run("start", self._start, job)

    def fire_complete(self, job: Job) -> None:
        """Run the completion hooks for ``job``."""
        if self._complete:
            self._run("complete", self._complete, job)

    def fire_fail(self, job: Job, error: BaseException) -> None:
        """Run the permanent-failure hooks for ``job``."""
        if self._fail:
            self._run("fail", self._fail, job, error)

    def fire_retry(self, job: Job, error: BaseException) -> None:
        """Run the retry hooks for ``job``."""
        if self._retry:
            self._run("retry", self._retry, job, error)

    def fire_cancel(self, job: Job) -> None:
        """Run the cancel hooks for ``job``."""
        if self._cancel:
            self._run("cancel", self._cancel, job)

    def close(self) -> None:
        """Stop the async-hook thread, if started. Idempotent; a later async hook restarts it."""
        with self._lock:
            runner, self._runner = self._runner, None
        if runner is None:
            return
        loop, thread = runner
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self._async_timeout)
        # A hook blocking the loop keeps it running; closing it then would raise.
        # The thread is a daemon, so leaving it cannot keep the process alive.
        if not thread.is_alive():
            loop.close()

    def _run(
        self, kind: str, hooks: tuple[Callable[..., object], ...], job: Job, *args: Any
    ) -> None:
        for hook in hooks:
            try:
                result = hook(job, *args)
                if inspect.isawaitable(result):
                    self._await(kind, hook, job, result)
            except Exception:
                logger.exception(
                    "%s hook %s failed for job %s",
                    kind,
                    _name(hook),
                    job.id,
                    extra={"job_id": job.id},
                )

    def _await(
        self, kind: str, hook: Callable[..., object], job: Job, awaitable: Awaitable[object]
    ) -> None:
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self._loop())
        done, _ = concurrent.futures.wait((future,), timeout=self._async_timeout)
        if done:
            future.result()  # re-raises the hook's own error for _run to log
            return
        future.cancel()
        logger.error(
            "%s hook %s timed out after %ss for job %s",
            kind,
            _name(hook),
            self._async_timeout,
            job.id,
            extra={"job_id": job.id},
        )

    def _loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._runner is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="durable_jobs-hooks", daemon=True
                )
                thread.start()
                self._runner = (loop, thread)
            return self._runner[0]


async def _as_coroutine(awaitable: Awaitable[object]) -> object:
    # run_coroutine_threadsafe takes only coroutines; hooks may return any awaitable.
    return await awaitable


def _name(hook: Callable[..., object]) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


# --- Event stream -------------------------------------------------------------------------


class EventBus:
    """Fans published events out to every current subscription, without ever blocking."""

    def __init__(self) -> None:
        # Replaced, never mutated: publish() reads it without taking the lock.
        self._streams: tuple[EventStream, ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, maxsize: int = 1000) -> EventStream:
        """A new subscription receiving every event published from now on."""
        stream = EventStream(maxsize, on_close=self._unsubscribe)
        with self._lock:
            self._streams = (*self._streams, stream)
        return stream

    @property
    def has_subscribers(self) -> bool:
        """Whether anyone listens: lets the hot path skip building events nobody reads."""
        return bool(self._streams)

    def publish(self, event: Event) -> None:
        """Offer ``event`` to each subscription; a full one drops its oldest event.

        Subscribers get a snapshot of the job as it was when the event happened: the
        worker goes on updating its own ``Job``, and a ``JobStarted`` read after the job
        completed must still show it running.
        """
        streams = self._streams
        if not streams:
            return
        snapshot = replace(event, job=copy.copy(event.job))
        for stream in streams:
            stream._offer(snapshot)

    def close(self) -> None:
        """Close every current subscription, ending their iteration (at queue shutdown)."""
        for stream in self._streams:
            stream.close()

    def _unsubscribe(self, stream: EventStream) -> None:
        with self._lock:
            self._streams = tuple(s for s in self._streams if s is not stream)


class EventStream:
    """One subscription: a bounded buffer of events, read by one or more consumers.

    When the buffer is full the OLDEST event is dropped, so a consumer that falls
    behind resumes at the present; :attr:`dropped` counts the events it missed.
    Iterate with ``for`` (blocks) or ``async for`` (yields the event loop); both end
    once :meth:`close` is called from anywhere. Closing discards buffered events.
    """

    def __init__(
        self, maxsize: int = 1000, *, on_close: Callable[[EventStream], None] | None = None
    ) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        self._buffer: deque[Event] = deque(maxlen=maxsize)
        self._dropped = 0
        self._closed = False
        self._nudged = False
        self._on_close = on_close
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        # Async consumers parked until the next offer or close; each woken once.
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def dropped(self) -> int:
        """How many events this subscription missed because its buffer was full."""
        return self._dropped

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def __len__(self) -> int:
        with self._lock:
            return len(self._buffer)

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds (forever if None).

        None on timeout or once the stream is closed.
        """
        with self._ready:
            self._ready.wait_for(self._has_event_or_closed, timeout)
            self._nudged = False
            return self._buffer.popleft() if self._buffer else None

    def close(self) -> None:
        """Stop receiving, discard the buffer and end every iteration. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._buffer.clear()
            self._ready.notify_all()
            waiters, self._waiters = self._waiters, []
        _wake(waiters)
        if self._on_close is not None:
            self._on_close(self)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Event:
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        event = await self._get_async()
        if event is None:
            raise StopAsyncIteration
        return event

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _has_event_or_closed(self) -> bool:
        return bool(self._buffer) or self._closed or self._nudged

    def _nudge(self) -> None:
        """End the current (or next) wait for an event early, with None, as a timeout
        would: ``Queue.result`` is told so of outcomes its queue's events do not carry."""
        with self._lock:
            self._nudged = True
            self._ready.notify_all()
            waiters, self._waiters = self._waiters, []
        _wake(waiters)

    def _offer(self, event: Event) -> None:
        with self._lock:
            if self._closed:
                return
            if len(self._buffer) == self._buffer.maxlen:
                self._dropped += 1  # the bounded deque evicts the oldest on append
            self._buffer.append(event)
            self._ready.notify()
            waiters, self._waiters = self._waiters, []
        _wake(waiters)

    async def _get_async(self) -> Event | None:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._buffer:
                    self._nudged = False
                    return self._buffer.popleft()
                if self._closed or self._nudged:
                    self._nudged = False
                    return None
                waiter = (loop, loop.create_future())
                self._waiters.append(waiter)
            try:
                await waiter[1]
            finally:
                self._forget(waiter)

    def _forget(self, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]) -> None:
        # A cancelled consumer must not stay registered on a loop that may be gone.
        with self._lock:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, future in waiters:
        # RuntimeError: the consumer's loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
