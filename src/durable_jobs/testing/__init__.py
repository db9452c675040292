"""Testing helpers: a fake clock, ``drain`` and assertions on a queue's jobs.

```python
clock = FakeClock(datetime(2026, 3, 28, 12, tzinfo=UTC))
queue = jobs.Queue("sqlite:///test.db", clock=clock)
queue.enqueue("remind", user, delay=timedelta(days=1))
assert drain(queue).completed == 0
clock.advance(days=1)
assert drain(queue).completed == 1
```

The pytest plugin (``durable_jobs_pytest``, installed with the package) offers the
``sdj_clock``, ``sdj_queue``, ``sdj_postgres_queue`` and ``sdj_harness`` fixtures.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ..job import Job, JobStatus
from ..queue import Queue
from .asserts import ANY, JobOutcome, assert_enqueued, jobs_of, outcomes
from .clock import FakeClock
from .drain import DrainResult, drain

__all__ = [
    "ANY",
    "DrainResult",
    "FakeClock",
    "JobOutcome",
    "QueueHarness",
    "assert_enqueued",
    "drain",
    "jobs_of",
    "outcomes",
]


class QueueHarness:
    """A queue and its fake clock with the helpers bound to them (fixture ``sdj_harness``)."""

    def __init__(self, queue: Queue, clock: FakeClock) -> None:
        self.queue = queue
        self.clock = clock

    def drain(self, *, max_runs: int = 10_000) -> DrainResult:
        """``drain(queue)``."""
        return drain(self.queue, max_runs=max_runs)

    def advance(self, delta: timedelta | float | None = None, /, **kwargs: float) -> DrainResult:
        """Move the clock (as ``FakeClock.advance``), then ``drain``."""
        self.clock.advance(delta, **kwargs)
        return self.drain()

    def assert_enqueued(
        self,
        job_type: str | Callable[..., Any],
        args: Any = ANY,
        *,
        count: int | None = None,
        status: JobStatus | str | None = None,
    ) -> list[Job]:
        """``assert_enqueued(queue, ...)``."""
        return assert_enqueued(self.queue, job_type, args, count=count, status=status)

    def jobs(
        self, job_type: str | Callable[..., Any], *, status: JobStatus | str | None = None
    ) -> list[Job]:
        """``jobs_of(queue, ...)``."""
        return jobs_of(self.queue, job_type, status=status)

    def outcomes(self, job_type: str | Callable[..., Any]) -> list[JobOutcome]:
        """``outcomes(queue, ...)``."""
        return outcomes(self.queue, job_type)
