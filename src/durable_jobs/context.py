"""The running job, found through a context variable so no module needs the worker's."""

from __future__ import annotations

import asyncio
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import Cancelled, NotInJobError, StaleJobError
from .job import Job

if TYPE_CHECKING:
    from .queue import Queue

__all__ = [
    "JobContext",
    "RunControl",
    "active_context",
    "current_context",
    "current_job",
    "fenced_out",
    "now",
    "should_stop",
]

# Why a run is told to stop, strongest first: a cancel outranks a timeout, which
# outranks the worker stopping (which only turns should_stop() true).
_RANKS = {"cancelled": 3, "timeout": 2, "stopping": 1}


class RunControl:
    """How a running job is told to stop: cancelled, out of time, or its worker stopping.

    ``stop`` may be called from any thread. A sync handler meets the stop at its next
    library call (``check``); an async handler's task is cancelled.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        #: When the run must end (``time.monotonic()``), if it has a timeout.
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.reason: str | None = None
        self._task: tuple[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = None
        self._lock = threading.Lock()

    def attach(self, task: asyncio.Task[Any]) -> None:
        """The task running an async handler: cancelled on a stop that ends the run."""
        with self._lock:
            self._task = (task.get_loop(), task)
            reason = self.reason
        if reason in ("cancelled", "timeout"):
            task.cancel()

    def stop(self, reason: str) -> None:
        """Tell the run to stop for ``reason`` (``"cancelled"``, ``"timeout"`` or
        ``"stopping"``); a weaker reason than one given before changes nothing."""
        with self._lock:
            if self.reason is not None and _RANKS[self.reason] >= _RANKS[reason]:
                return
            self.reason = reason
            task = self._task
        if task is not None and reason in ("cancelled", "timeout"):
            loop, running = task
            loop.call_soon_threadsafe(running.cancel)

    def overdue(self) -> bool:
        """Whether the run has passed its deadline (it is then told to stop)."""
        if self.deadline is None or time.monotonic() < self.deadline:
            return False
        self.stop("timeout")
        return True

    def check(self) -> None:
        """Raise ``Cancelled`` if the run was cancelled or is out of time."""
        self.overdue()
        if self.reason == "cancelled":
            raise Cancelled("the job was cancelled")
        if self.reason == "timeout":
            raise Cancelled(f"the run exceeded its timeout of {self.timeout:g} s")


@dataclass
class JobContext:
    """What a handler's code can reach while its job runs."""

    job: Job
    queue: Queue
    worker_id: str
    #: The worker's lock timeout: how long storage errors may be waited out in place.
    lock_timeout: float = 30.0
    #: Per-run state of durable calls (owned by ``durable.py``).
    durable: dict[str, Any] = field(default_factory=dict)
    #: How the run is told to stop.
    control: RunControl = field(default_factory=RunControl)


_current: ContextVar[JobContext | None] = ContextVar("durable_jobs_current", default=None)


def current_context() -> JobContext:
    """The context of the running job; raises ``NotInJobError`` outside a handler."""
    ctx = _current.get()
    if ctx is None:
        raise NotInJobError("not inside a job handler")
    return ctx


def active_context() -> JobContext:
    """``current_context()`` for library calls that a stopped run must not get past:
    raises ``Cancelled`` once the job is cancelled or its run out of time."""
    ctx = current_context()
    ctx.control.check()
    return ctx


def fenced_out(ctx: JobContext, message: str) -> BaseException:
    """The error for a write of the run that the database refused: ``Cancelled`` when the
    job was cancelled meanwhile (the run is then told to stop), else ``StaleJobError``
    with ``message`` (the run lost its lock)."""
    job_id = ctx.job.id
    if ctx.control.reason != "cancelled":
        try:
            cancelled = job_id in ctx.queue.storage.cancelled_among([job_id])
        except Exception:  # the refusal stands whatever this look finds
            cancelled = False
        if cancelled:
            ctx.control.stop("cancelled")
    if ctx.control.reason == "cancelled":
        return Cancelled("the job was cancelled")
    return StaleJobError(message)


def should_stop() -> bool:
    """Inside a handler: whether its run should end soon (the job was cancelled, the run
    is out of time, or the worker is stopping). ``NotInJobError`` outside a job."""
    control = current_context().control
    control.overdue()
    return control.reason is not None


def current_job() -> Job:
    """The running ``Job``; raises ``NotInJobError`` outside a handler."""
    return current_context().job


def now() -> datetime:
    """The time on the running job's queue clock; ``NotInJobError`` outside a job."""
    return current_context().queue.clock.now()


def enter(ctx: JobContext) -> Any:
    """Make ``ctx`` current; returns a token for ``leave``."""
    return _current.set(ctx)


def leave(token: Any) -> None:
    """Restore the context that was current before ``enter``."""
    _current.reset(token)
