"""Waiting for a job's outcome: what ``Queue.result`` and ``Queue.result_async`` do.

A waiter reads the job, and between reads sleeps until this queue's workers report an
outcome (their event stream) or the storage notices that the job may have finished in
any process (``SQLStorage.watch_outcome``: PostgreSQL notifications, the SQLite file's
change counter). A fallback interval bounds each sleep: ``WATCHED_INTERVAL`` where the
storage notices outcomes (for a job deleted meanwhile), else one that starts at a few
milliseconds and grows to ``MAX_INTERVAL`` (MySQL).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .codec import loads
from .errors import FailedRun, JobNotFound
from .events import EventStream, JobCancelled, JobFailed
from .job import Job, JobStatus

__all__ = [
    "MAX_INTERVAL",
    "WATCHED_INTERVAL",
    "Watch",
    "check_timeout",
    "outcome",
    "wait_async",
    "wait_sync",
]

#: The longest pause between two reads of a job whose outcome another process stores,
#: on a backend that cannot tell when it does.
MAX_INTERVAL = 0.1
#: The pause between two reads of a job whose outcomes the storage tells of.
WATCHED_INTERVAL = 1.0
_FIRST_INTERVAL = 0.005

#: ``SQLStorage.watch_outcome``: ``watch(job_id, callback)`` -> an unwatch function, or
#: None where the storage cannot tell of outcomes.
Watch = Callable[[str, Callable[[], None]], Callable[[], None] | None]


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` in seconds (None waits for ever); ``ValueError`` if negative or NaN."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    return float(timeout)


Decoder = Callable[[Job], Callable[[bytes], Any] | None]


def outcome(job: Job, decoder: Decoder) -> tuple[bool, Any]:
    """``(True, value)`` for a completed job (its result decoded with ``decoder(job)``,
    plain JSON when that is None); ``(False, None)`` while unfinished; raises
    ``JobFailed`` for a failed job and ``JobCancelled`` for a cancelled one."""
    if job.status is JobStatus.COMPLETED:
        if job.result is None:
            return True, None
        return True, (decoder(job) or loads)(job.result)
    if job.status is JobStatus.FAILED:
        raise JobFailed(job, FailedRun(job.last_error or "failed", job.traceback))
    if job.status is JobStatus.CANCELLED:
        raise JobCancelled(job)
    return False, None


class _Wait:
    """One waiter's reads and pauses, shared by the sync and async loops: each read
    either ends the wait (a value, ``JobFailed``, ``JobCancelled``, ``JobNotFound``,
    ``TimeoutError``) or
    says how long to pause before the next."""

    def __init__(
        self, job_id: str, timeout: float | None, decoder: Decoder, *, watched: bool
    ) -> None:
        self.job_id, self.timeout, self.decoder = job_id, timeout, decoder
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.watched = watched
        self.interval = WATCHED_INTERVAL if watched else _FIRST_INTERVAL

    def check(self, job: Job | None) -> tuple[bool, Any]:
        """``(True, value)`` once ``job`` has an outcome, else ``(False, pause)``."""
        if job is None:
            raise JobNotFound(f"no job with id {self.job_id!r}")
        done, value = outcome(job, self.decoder)
        if done:
            return True, value
        pause = self.interval
        if not self.watched:
            self.interval = min(self.interval * 2, MAX_INTERVAL)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"job {self.job_id} is still {job.status.value} after {self.timeout} s"
                )
            pause = min(pause, left)
        return False, pause


def wait_sync(
    get_job: Callable[[str], Job | None],
    watch: Watch,
    stream: EventStream,
    job_id: str,
    timeout: float | None,
    decoder: Decoder,
) -> Any:
    """Block until ``job_id`` has an outcome; see ``Queue.result``."""
    unwatch = watch(job_id, stream._nudge)
    try:
        wait = _Wait(job_id, timeout, decoder, watched=unwatch is not None)
        while True:
            done, value = wait.check(get_job(job_id))
            if done:
                return value
            _await_event(stream, job_id, value)
    finally:
        if unwatch is not None:
            unwatch()


def _await_event(stream: EventStream, job_id: str, pause: float) -> None:
    """Sleep up to ``pause`` s, less if this queue's workers report ``job_id``'s outcome."""
    end = time.monotonic() + pause
    while (left := end - time.monotonic()) > 0:
        event = stream.get(timeout=left)
        if event is None or event.job.id == job_id:
            return


async def wait_async(
    get_job: Callable[[str], Job | None],
    watch: Watch,
    stream: EventStream,
    job_id: str,
    timeout: float | None,
    decoder: Decoder,
) -> Any:
    """``wait_sync`` without blocking the event loop (reads run in a thread)."""
    unwatch = await asyncio.to_thread(watch, job_id, stream._nudge)
    try:
        wait = _Wait(job_id, timeout, decoder, watched=unwatch is not None)
        while True:
            done, value = wait.check(await asyncio.to_thread(get_job, job_id))
            if done:
                return value
            await _await_event_async(stream, job_id, value)
    finally:
        if unwatch is not None:
            unwatch()


async def _await_event_async(stream: EventStream, job_id: str, pause: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + pause
    while (left := end - loop.time()) > 0:
        try:
            event = await asyncio.wait_for(anext(stream), timeout=left)
        except (TimeoutError, StopAsyncIteration):
            return
        if event.job.id == job_id:
            return
