"""Durable background jobs and checkpointed workflows on SQLite or PostgreSQL.

import durable_jobs as jobs

queue = jobs.Queue("sqlite:///jobs.db")

@queue.job()
def send_email(to: str) -> None: ...

queue.enqueue("send_email", "u@example.com")
queue.worker().run()
"""

from importlib.metadata import PackageNotFoundError, version

from .context import current_job
from .durable import call, call_async
from .errors import (
    DurableJobsError,
    NondeterminismError,
    NoRetry,
    NotInJobError,
    OutcomeRefused,
    ResultTooLarge,
    RetryAfter,
)
from .events import (
    CheckpointSaved,
    Event,
    EventStream,
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobRetrying,
    JobStarted,
)
from .job import Checkpoint, Job, JobStatus
from .queue import Queue
from .retry import Backoff, constant, exponential
from .schedules import Schedule, cron, daily, every, weekly
from .storage import SQLStorage, Storage
from .worker import Worker

try:
    __version__ = version("simple-durable-jobs")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "Backoff",
    "Checkpoint",
    "CheckpointSaved",
    "DurableJobsError",
    "Event",
    "EventStream",
    "Job",
    "JobCompleted",
    "JobEnqueued",
    "JobFailed",
    "JobRetrying",
    "JobStarted",
    "JobStatus",
    "NoRetry",
    "NondeterminismError",
    "NotInJobError",
    "OutcomeRefused",
    "Queue",
    "ResultTooLarge",
    "RetryAfter",
    "SQLStorage",
    "Schedule",
    "Storage",
    "Worker",
    "__version__",
    "call",
    "call_async",
    "constant",
    "cron",
    "current_job",
    "daily",
    "every",
    "exponential",
    "weekly",
]
