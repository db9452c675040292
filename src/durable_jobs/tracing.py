"""OpenTelemetry tracing for a queue: ``pip install 'simple-durable-jobs[tracing]'``.

::

    from durable_jobs.tracing import OpenTelemetryTracing

    OpenTelemetryTracing(queue)   # in the processes that enqueue and in the workers

Each run of a job is a span, and each execution of a durable call a child span of it.
The trace context current at enqueue (an HTTP request's span, say) is stored with the
job (``Job.meta["trace"]``, W3C ``traceparent`` through the configured propagators), so
the runs of the jobs a request caused are children of that request's span.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "durable_jobs.tracing needs opentelemetry-api: pip install 'simple-durable-jobs[tracing]'"
    ) from exc

from . import __version__
from .job import Job

if TYPE_CHECKING:
    from .queue import Queue

__all__ = ["OpenTelemetryTracing"]

#: The ``Job.meta`` key holding the propagated trace context.
META_KEY = "trace"


class OpenTelemetryTracing:
    """Traces ``queue``'s job runs and durable calls; registers itself on the queue.

    ``tracer_provider`` defaults to the global one set with
    ``opentelemetry.trace.set_tracer_provider``.
    """

    def __init__(self, queue: Queue, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer("durable_jobs", __version__, tracer_provider)
        queue.instrument(self)

    @contextlib.contextmanager
    def enqueue(self, jobs: Sequence[Job]) -> Iterator[None]:
        """Store the current trace context with each job, if there is one."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if carrier:
            for job in jobs:
                job.meta = {**(job.meta or {}), META_KEY: dict(carrier)}
        yield

    def job_run(self, job: Job) -> AbstractContextManager[trace.Span]:
        """A consumer span for this run, child of the span current at enqueue."""
        carrier = (job.meta or {}).get(META_KEY) or {}
        # An empty base context: without a stored parent the run starts a new trace
        # rather than joining whatever happens to be current in the worker.
        parent = propagate.extract(carrier, context=Context())
        return self.tracer.start_as_current_span(
            f"run {job.type}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "durable_jobs",
                "messaging.operation.type": "process",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.id,
                "durable_jobs.job.type": job.type,
                "durable_jobs.job.attempt": job.attempt,
            },
        )

    def step_run(self, job: Job, name: str, index: int) -> AbstractContextManager[trace.Span]:
        """A span for one execution of a durable call, child of the current (job) span."""
        return self.tracer.start_as_current_span(
            f"call {name}",
            attributes={
                "durable_jobs.job.id": job.id,
                "durable_jobs.step.name": name,
                "durable_jobs.step.index": index,
            },
        )
