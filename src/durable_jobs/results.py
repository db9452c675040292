"""Waiting for a job's outcome: what ``Queue.result`` and ``Queue.result_async`` do.

A waiter reads the job, and between reads sleeps until this queue's workers report an
outcome (their event stream) or a short fallback interval passes, for outcomes stored
by other processes. The interval starts at a few milliseconds and grows to
``MAX_INTERVAL``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from .codec import loads
from .errors import FailedRun, JobNotFound
from .events import EventStream, JobFailed
from .job import Job, JobStatus

__all__ = ["MAX_INTERVAL", "check_timeout", "outcome", "wait_async", "wait_sync"]

#: The longest pause between two reads of a job whose outcome another process stores.
MAX_INTERVAL = 0.1
_FIRST_INTERVAL = 0.005


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` in seconds (None waits for ever); ``ValueError`` if negative or NaN."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout!r}")
    return float(timeout)


def outcome(job: Job, decode: Callable[[bytes], Any] | None) -> tuple[bool, Any]:
    """``(True, value)`` for a completed job (its result decoded with ``decode``, plain
    JSON without); ``(False, None)`` while unfinished; raises ``JobFailed`` for a failed
    job."""
    if job.status is JobStatus.COMPLETED:
        if job.result is None:
            return True, None
        return True, (decode or loads)(job.result)
    if job.status is JobStatus.FAILED:
        raise JobFailed(job, FailedRun(job.last_error or "failed", job.traceback))
    return False, None


def _read(get_job: Callable[[str], Job | None], job_id: str) -> Job:
    job = get_job(job_id)
    if job is None:
        raise JobNotFound(f"no job with id {job_id!r}")
    return job


def _timed_out(job_id: str, timeout: float | None, job: Job) -> TimeoutError:
    return TimeoutError(f"job {job_id} is still {job.status.value} after {timeout} s")


def wait_sync(
    get_job: Callable[[str], Job | None],
    stream: EventStream,
    job_id: str,
    timeout: float | None,
    decode: Callable[[bytes], Any] | None,
) -> Any:
    """Block until ``job_id`` has an outcome; see ``Queue.result``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    interval = _FIRST_INTERVAL
    while True:
        job = _read(get_job, job_id)
        done, value = outcome(job, decode)
        if done:
            return value
        pause = interval
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _timed_out(job_id, timeout, job)
            pause = min(pause, left)
        _await_event(stream, job_id, pause)
        interval = min(interval * 2, MAX_INTERVAL)


def _await_event(stream: EventStream, job_id: str, pause: float) -> None:
    """Sleep up to ``pause`` s, less if this queue's workers report ``job_id``'s outcome."""
    end = time.monotonic() + pause
    while (left := end - time.monotonic()) > 0:
        event = stream.get(timeout=left)
        if event is None or event.job.id == job_id:
            return


async def wait_async(
    get_job: Callable[[str], Job | None],
    stream: EventStream,
    job_id: str,
    timeout: float | None,
    decode: Callable[[bytes], Any] | None,
) -> Any:
    """``wait_sync`` without blocking the event loop (reads run in a thread)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    interval = _FIRST_INTERVAL
    while True:
        job = await asyncio.to_thread(_read, get_job, job_id)
        done, value = outcome(job, decode)
        if done:
            return value
        pause = interval
        if deadline is not None:
            left = deadline - loop.time()
            if left <= 0:
                raise _timed_out(job_id, timeout, job)
            pause = min(pause, left)
        await _await_event_async(stream, job_id, pause)
        interval = min(interval * 2, MAX_INTERVAL)


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
