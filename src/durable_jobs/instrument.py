"""The instrumentation seam: objects that wrap enqueues, job runs and durable steps.

Metrics and tracing plug in here, and so can users. An instrument is any object with
some of these methods, each returning a context manager::

    enqueue(jobs)               around storing new jobs (may add entries to ``job.meta``)
    job_run(job)                around a run of a job's handler
    step_run(job, name, index)  around one execution of a durable call's step

A context manager is entered and exited in the same thread (or asyncio task) around
the wrapped code, and sees its exception on exit. Instruments observe, never decide:
one that raises is logged and skipped, and none can swallow an error.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

__all__ = ["Instruments", "wrapped"]

log = logging.getLogger("durable_jobs")

Wrapper = Callable[..., AbstractContextManager[Any]]


class Instruments:
    """The instruments of a queue, kept as one tuple of wrappers per seam.

    The tuples are replaced, never mutated, so the hot path reads them without a lock,
    and an empty tuple is the whole cost of a seam nobody instruments.
    """

    def __init__(self) -> None:
        self.enqueue: tuple[Wrapper, ...] = ()
        self.job_run: tuple[Wrapper, ...] = ()
        self.step_run: tuple[Wrapper, ...] = ()
        self._lock = threading.Lock()

    def add(self, instrument: object) -> None:
        """Register the methods ``instrument`` has; raises ``TypeError`` if it has none."""
        seams = {
            seam: method
            for seam in ("enqueue", "job_run", "step_run")
            if (method := getattr(instrument, seam, None)) is not None
        }
        if not seams:
            raise TypeError(
                f"{instrument!r} is not an instrument: it has none of enqueue, job_run, step_run"
            )
        for seam, method in seams.items():
            if not callable(method):
                raise TypeError(f"{type(instrument).__name__}.{seam} is not callable")
        with self._lock:
            for seam, method in seams.items():
                setattr(self, seam, (*getattr(self, seam), method))


@contextlib.contextmanager
def wrapped(wrappers: tuple[Wrapper, ...], *args: Any) -> Iterator[None]:
    """Run the body inside each wrapper's context manager, first wrapper outermost."""
    with contextlib.ExitStack() as stack:
        for wrapper in wrappers:
            try:
                stack.enter_context(_Guarded(wrapper(*args), wrapper))
            except Exception:
                log.exception("instrument %s failed on enter", _name(wrapper))
        yield


class _Guarded:
    """A context manager whose errors are logged and whose exit never suppresses one."""

    __slots__ = ("_cm", "_wrapper")

    def __init__(self, cm: AbstractContextManager[Any], wrapper: Wrapper) -> None:
        self._cm = cm
        self._wrapper = wrapper

    def __enter__(self) -> None:
        self._cm.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._cm.__exit__(exc_type, exc, tb)
        except Exception as error:
            if error is not exc:  # a context manager may re-raise the body's own error
                log.exception("instrument %s failed on exit", _name(self._wrapper))


def _name(wrapper: Wrapper) -> str:
    return getattr(wrapper, "__qualname__", None) or repr(wrapper)
