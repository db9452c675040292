"""Run one job: resolve its handler, decode, call, and classify what happened.

The executor never writes to storage: it returns an ``Outcome`` that the worker's
completer stores, so storage writes can be batched and retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback as traceback_mod
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import codec, context
from .context import RunControl
from .errors import (
    JobTimeout,
    NondeterminismError,
    NoRetry,
    ResultTooLarge,
    RetryAfter,
    StaleJobError,
    Suspend,
)
from .events import JobResumed, JobStarted
from .handler import Handler
from .instrument import wrapped
from .job import Job
from .retry import DEFAULT_BACKOFF, Backoff, backoff_from_json, delayed

if TYPE_CHECKING:
    from .queue import Queue
    from .storage import ChildrenWait

__all__ = ["Executor", "RunOutcome", "format_traceback"]


def _finish(
    steps: Generator[Callable[[], Any], Any, RunOutcome],
    error: BaseException | None,
    value: Any,
) -> RunOutcome:
    """Hand the handler's value or error back to ``Executor._steps`` for its outcome."""
    try:
        if error is not None:
            steps.throw(error)
        else:
            steps.send(value)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise RuntimeError("a run yields its handler call once")  # pragma: no cover


log = logging.getLogger("durable_jobs")


@dataclass(slots=True)
class RunOutcome:
    """What one run of a job came to.

    ``kind`` is ``"completed"``, ``"retry"`` (wait until ``run_at``), ``"failed"``
    (permanently), ``"waiting"`` (suspended by a waiting function until ``run_at``, None
    for no deadline, for ``waiting_for``), ``"cancelled"`` (the job was cancelled while
    it ran: nothing to store) or ``"unknown"`` (no handler for the job type in this
    worker).
    ``traceback`` is the error's formatted traceback (``format_traceback``), stored
    with the job; it is filled in from ``error`` when not given.
    """

    job: Job
    kind: str
    result: bytes | None = None
    error: BaseException | None = None
    run_at: datetime | None = None
    duration: timedelta = timedelta(0)
    traceback: str | None = None
    waiting_for: str | None = None
    #: The signal a ``"waiting"`` run waits for, if any.
    signal: str | None = None
    #: The children a ``"waiting"`` run waits for, if any.
    children: ChildrenWait | None = None

    def __post_init__(self) -> None:
        if self.error is not None and self.traceback is None:
            self.traceback = format_traceback(self.error)

    @property
    def error_text(self) -> str:
        """The error as stored in ``Job.last_error``: type and message."""
        return describe(self.error) if self.error is not None else ""


def describe(error: BaseException) -> str:
    """``"Type: message"`` for ``last_error``; a ``NoRetry`` shows its own message."""
    if isinstance(error, NoRetry | RetryAfter):
        return f"{type(error).__name__}: {error.message}"
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


# Tracebacks are kept with their job: the last this many characters of one (the end
# names the error and the frame that raised it; a deep recursion is cut at the start).
MAX_TRACEBACK = 16 * 1024


def format_traceback(error: BaseException) -> str:
    """``error``'s traceback as Python prints it, with its notes and chained causes,
    without the executor's own frames, cut to its last ``MAX_TRACEBACK`` characters.
    """
    tb = error.__traceback__
    # The frames that called the handler (the run, the lambda binding its argument) are
    # the library's: the traceback starts at the handler.
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    try:
        text = "".join(traceback_mod.format_exception(type(error), error, tb))
    except Exception as exc:  # an error whose __str__ or notes raise, say
        text = f"{type(error).__name__} (its traceback cannot be formatted: {_safe_str(exc)})\n"
    if len(text) > MAX_TRACEBACK:
        cut = len(text) - MAX_TRACEBACK
        text = f"[{cut:,} earlier characters cut]\n{text[-MAX_TRACEBACK:]}"
    return text


def _backoff_for(job: Job, handler: Handler | None) -> Backoff:
    if job.backoff is not None:
        try:
            return backoff_from_json(job.backoff)
        except (ValueError, TypeError):
            log.warning("job %s has an unreadable backoff policy; using the default", job.id)
    if handler is not None and "backoff" in handler.defaults:
        policy: Backoff = handler.defaults["backoff"]
        return policy
    return DEFAULT_BACKOFF


class Executor:
    """Runs jobs of one worker; sync handlers in the calling thread, async ones awaited."""

    def __init__(self, queue: Queue, worker_id: str, *, lock_timeout: float = 30.0) -> None:
        self.queue = queue
        self.worker_id = worker_id
        self.lock_timeout = lock_timeout
        #: The runs in progress, by (job id, fence), and how each is told to stop.
        self.controls: dict[tuple[str, int], RunControl] = {}

    def prepare(self, job: Job) -> tuple[Handler, Callable[[], Any]] | RunOutcome:
        """The handler and a zero-argument call of it, or the outcome when it cannot run."""
        handler = self.queue.handler(job.type)
        if handler is None:
            return RunOutcome(job, "unknown")
        if not handler.takes_arg:
            return handler, handler.fn
        try:
            arg = handler.decode_args(job.args)
        except Exception as exc:
            # Retrying cannot make them fit: fail now, saying why in one line (the
            # decoder's full report is the cause, in the stored traceback).
            error = NoRetry(
                f"cannot decode arguments of {job.type!r} into parameter {handler.param!r}"
                f" of its handler: {codec.describe_decode_error(exc)}"
            )
            error.__cause__ = exc
            return RunOutcome(job, "failed", error=error)
        return handler, lambda: handler.fn(arg)

    def run(self, job: Job) -> RunOutcome:
        """Run a job with a sync handler to its outcome."""
        steps = self._steps(job)
        try:
            call = next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            value = call()
        except BaseException as exc:
            return _finish(steps, exc, None)
        return _finish(steps, None, value)

    async def run_async(self, job: Job) -> RunOutcome:
        """Run a job with an async handler to its outcome."""
        steps = self._steps(job)
        try:
            call = next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        control = self.controls.get((job.id, job.fence))
        task = asyncio.current_task()
        if control is not None and task is not None:
            control.attach(task)
        try:
            value = await call()
        except BaseException as exc:
            return _finish(steps, exc, None)
        return _finish(steps, None, value)

    def _steps(self, job: Job) -> Generator[Callable[[], Any], Any, RunOutcome]:
        """The one implementation of a run: yields the handler call, receives its value.

        ``run`` and ``run_async`` only differ in how they call what is yielded, so the
        context, hooks, instruments and classification stay in one place.
        """
        prepared = self.prepare(job)
        if isinstance(prepared, RunOutcome):
            return prepared
        handler, call = prepared
        # The enqueue's timeout, else the registration's (a producer without the handler
        # stores none).
        timeout = job.timeout or handler.defaults.get("timeout")
        control = RunControl(None if timeout is None else timeout.total_seconds())
        run = (job.id, job.fence)
        self.controls[run] = control
        token = self._begin(job, control)
        started = time.monotonic()
        wrappers = self.queue.instruments.job_run
        try:
            with wrapped(wrappers, job) if wrappers else contextlib.nullcontext():
                value = yield call
        except Suspend as suspend:
            if (stopped := self._stopped(job, handler, control, started)) is not None:
                return stopped
            # Not an error: the job waits, its slot free; a resume is not a retry.
            duration = timedelta(seconds=time.monotonic() - started)
            return RunOutcome(
                job,
                "waiting",
                run_at=suspend.until,
                duration=duration,
                waiting_for=suspend.waiting_for,
                signal=suspend.signal,
                children=suspend.children,
            )
        except BaseException as exc:
            if (stopped := self._stopped(job, handler, control, started)) is not None:
                return stopped
            return self.classify(job, handler, exc, started)
        finally:
            context.leave(token)
            self.controls.pop(run, None)
        if (stopped := self._stopped(job, handler, control, started)) is not None:
            return stopped
        return self._success(job, handler, value, started)

    def _stopped(
        self, job: Job, handler: Handler, control: RunControl, started: float
    ) -> RunOutcome | None:
        """The outcome of a run told to stop, whatever the handler did after: nothing to
        store for a cancelled job, a ``JobTimeout`` failure for a run out of time."""
        control.overdue()
        if control.reason == "cancelled":
            duration = timedelta(seconds=time.monotonic() - started)
            return RunOutcome(job, "cancelled", duration=duration)
        if control.reason == "timeout":
            error = JobTimeout(
                f"the run of {job.type!r} exceeded its timeout of {control.timeout:g} s"
            )
            return self.classify(job, handler, error, started)
        return None

    def stop_runs(self, job_ids: set[str] | None, reason: str) -> None:
        """Tell the runs of ``job_ids`` (every run, when None) to stop for ``reason``."""
        for (job_id, _fence), control in list(self.controls.items()):
            if job_ids is None or job_id in job_ids:
                control.stop(reason)

    def police(self) -> list[str]:
        """Stop the runs past their deadline; the job ids of the runs in progress."""
        running = []
        for (job_id, _fence), control in list(self.controls.items()):
            control.overdue()
            running.append(job_id)
        return running

    def _begin(self, job: Job, control: RunControl) -> Any:
        ctx = context.JobContext(job, self.queue, self.worker_id, self.lock_timeout)
        ctx.control = control
        token = context.enter(ctx)
        self.queue.hooks.fire_start(job)
        if self.queue.bus.has_subscribers:
            # A claimed job that kept its wait's deadline resumes from that wait.
            resumed = job.wait_until is not None
            self.queue.bus.publish(JobResumed(job) if resumed else JobStarted(job))
        return token

    def _success(self, job: Job, handler: Handler, value: Any, started: float) -> RunOutcome:
        duration = timedelta(seconds=time.monotonic() - started)
        try:
            result = None if value is None else codec.dumps(value)
        except TypeError as exc:
            # Retrying cannot make the same return value serialisable.
            error = NoRetry(f"result of {job.type!r} cannot be stored: {exc}")
            return RunOutcome(job, "failed", error=error, duration=duration)
        limit = self.queue.max_payload
        if result is not None and limit is not None and len(result) > limit:
            # Results are capped like arguments: stored in the job's row and read back
            # with it, a huge one would bloat the table (or be refused by the database).
            error = ResultTooLarge(
                f"result of {job.type!r} encodes to {len(result):,} bytes, over the queue's "
                f"limit of {limit:,} (Queue(max_payload=...) changes it)"
            )
            return RunOutcome(job, "failed", error=error, duration=duration)
        return RunOutcome(job, "completed", result=result, duration=duration)

    def classify(
        self, job: Job, handler: Handler | None, error: BaseException, started: float
    ) -> RunOutcome:
        """Turn a handler's exception into a retry or a permanent failure.

        Never raises (the worker's slots call it from their last-resort handlers): if
        deciding fails, say a custom backoff policy raises, the job fails permanently
        with an error that says why.
        """
        duration = timedelta(seconds=time.monotonic() - started)
        try:
            # A replay that diverges from its checkpoints would diverge again on every retry.
            permanent = isinstance(error, NoRetry | NondeterminismError)
            if permanent or job.attempt > job.max_retries:
                return RunOutcome(job, "failed", error=error, duration=duration)
            if isinstance(error, StaleJobError):
                # The run lost its lock, so the fence rejects this outcome; the run that
                # took the job over decides. No backoff to compute: just a retry.
                delay = timedelta(0)
            elif isinstance(error, RetryAfter):
                delay = error.delay
            else:
                delay = _backoff_for(job, handler).delay(job.attempt)
            run_at = delayed(self.queue.clock.now(), delay)  # clamped: a huge delay cannot overflow
            return RunOutcome(job, "retry", error=error, run_at=run_at, duration=duration)
        except Exception as exc:
            log.exception("job %s (%s): cannot classify its outcome", job.id, job.type)
            failure = NoRetry(
                f"{type(exc).__name__} while deciding whether to retry after"
                f" {type(error).__name__}: {_safe_str(exc)}; failed permanently"
            )
            failure.__cause__ = error
            return RunOutcome(job, "failed", error=failure, duration=duration)


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return "<unprintable>"
