"""The records storage takes and returns besides jobs and checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Claim", "Outcome", "QueueDepth", "ScheduleState", "WorkerInfo"]


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as recorded in the database."""

    id: str
    host: str
    pid: int
    queues: list[str]
    types: list[str]
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim to make: up to ``limit`` due jobs of ``queue``.

    ``min_retries`` leaves out jobs with fewer retries: a worker claiming ahead of its
    free slots sets it to 1, since a claimed run counts as an attempt even if the
    worker dies before starting it, and a job allowed a single run must not lose it so.
    """

    queue: str
    limit: int
    skip_types: Sequence[str] = ()
    min_retries: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """A successful run to store: the job's id, the run (its ``Job.fence``) and its JSON
    result."""

    job_id: str
    fence: int
    result: bytes | None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule as the schedulers last recorded it (``spec`` as in ``Schedule.spec``)."""

    name: str
    spec: str
    queue: str
    last_fire_at: datetime | None
    next_fire_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How many jobs of a queue are due to run, and since when the oldest has waited."""

    queue: str
    due: int
    oldest_run_at: datetime | None
