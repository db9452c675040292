"""The running job, found through a context variable so no module needs the worker's."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import NotInJobError
from .job import Job

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["JobContext", "current_context", "current_job"]


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


_current: ContextVar[JobContext | None] = ContextVar("durable_jobs_current", default=None)


def current_context() -> JobContext:
    """The context of the running job; raises ``NotInJobError`` outside a handler."""
    ctx = _current.get()
    if ctx is None:
        raise NotInJobError("not inside a job handler")
    return ctx


def current_job() -> Job:
    """The running ``Job``; raises ``NotInJobError`` outside a handler."""
    return current_context().job


def enter(ctx: JobContext) -> Any:
    """Make ``ctx`` current; returns a token for ``leave``."""
    return _current.set(ctx)


def leave(token: Any) -> None:
    """Restore the context that was current before ``enter``."""
    _current.reset(token)
