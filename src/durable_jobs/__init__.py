"""Durable background jobs and checkpointed workflows on SQLite or PostgreSQL.

import durable_jobs as jobs

queue = jobs.Queue("sqlite:///jobs.db")

@queue.job()
def send_email(to: str) -> None: ...

queue.enqueue("send_email", "u@example.com")
queue.worker().run()
"""

from .children import (
    Result,
    Sub,
    fan_out,
    fan_out_async,
    spawn,
    spawn_async,
    sub,
    wait_for,
    wait_for_async,
)
from .context import current_job, should_stop
from .durable import call, call_async
from .errors import (
    Cancelled,
    ChildFailed,
    DatabaseUnavailable,
    DurableJobsError,
    FailedRun,
    JobNotFound,
    JobTimeout,
    NondeterminismError,
    NoRetry,
    NotADatabase,
    NotInJobError,
    OutcomeRefused,
    ResultTooLarge,
    RetryAfter,
    SchemaNotReady,
    SignalTimeout,
    StorageError,
)
from .events import (
    CheckpointSaved,
    Event,
    EventStream,
    JobCancelled,
    JobCompleted,
    JobEnqueued,
    JobFailed,
    JobPaused,
    JobResumed,
    JobRetrying,
    JobStarted,
    JobWaiting,
)
from .explain import ExplainReason, Explanation
from .job import Checkpoint, Job, JobStatus
from .queue import Queue
from .release import __version__
from .retry import Backoff, constant, exponential
from .schedules import Schedule, cron, daily, every, weekly
from .storage import SQLStorage, Storage
from .storage.admin import Cursor, JobPage
from .storage.dead_letters import Attempt
from .waiting import (
    drain_signals,
    drain_signals_async,
    peek_signal,
    peek_signal_async,
    set_progress,
    set_progress_async,
    sleep,
    sleep_async,
    sleep_until,
    sleep_until_async,
    wait_for_signal,
    wait_for_signal_async,
)
from .worker import Worker

__all__ = [
    "Attempt",
    "Backoff",
    "Cancelled",
    "Checkpoint",
    "CheckpointSaved",
    "ChildFailed",
    "Cursor",
    "DatabaseUnavailable",
    "DurableJobsError",
    "Event",
    "EventStream",
    "ExplainReason",
    "Explanation",
    "FailedRun",
    "Job",
    "JobCancelled",
    "JobCompleted",
    "JobEnqueued",
    "JobFailed",
    "JobNotFound",
    "JobPage",
    "JobPaused",
    "JobResumed",
    "JobRetrying",
    "JobStarted",
    "JobStatus",
    "JobTimeout",
    "JobWaiting",
    "NoRetry",
    "NondeterminismError",
    "NotADatabase",
    "NotInJobError",
    "OutcomeRefused",
    "Queue",
    "Result",
    "ResultTooLarge",
    "RetryAfter",
    "SQLStorage",
    "Schedule",
    "SchemaNotReady",
    "SignalTimeout",
    "Storage",
    "StorageError",
    "Sub",
    "Worker",
    "__version__",
    "call",
    "call_async",
    "constant",
    "cron",
    "current_job",
    "daily",
    "drain_signals",
    "drain_signals_async",
    "every",
    "exponential",
    "fan_out",
    "fan_out_async",
    "peek_signal",
    "peek_signal_async",
    "set_progress",
    "set_progress_async",
    "should_stop",
    "sleep",
    "sleep_async",
    "sleep_until",
    "sleep_until_async",
    "spawn",
    "spawn_async",
    "sub",
    "wait_for",
    "wait_for_async",
    "wait_for_signal",
    "wait_for_signal_async",
    "weekly",
]
