"""The storage protocol: the seed's verbs, snake_cased, that any backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from ..job import Checkpoint, Job, JobStatus

__all__ = ["Storage"]


@runtime_checkable
class Storage(Protocol):
    """What the queue and workers need from a database.

    ``SQLStorage`` implements it for SQLite and PostgreSQL; it adds batch verbs that
    workers use for speed (claim many, complete many).
    """

    def migrate(self) -> None:
        """Create or upgrade the schema; idempotent and safe to run concurrently."""
        ...

    def enqueue(self, job: Job) -> str:
        """Store a new job, keeping ``job.id`` if set; returns the id."""
        ...

    def dequeue(self, queues: Sequence[str], worker_id: str) -> Job | None:
        """Claim the next due job of the first of ``queues`` that has one."""
        ...

    def complete(self, job_id: str) -> bool | None:
        """Mark a job completed and delete its checkpoints (False: it was not running)."""
        ...

    def fail(self, job_id: str, err_msg: str, run_at: datetime | None) -> bool | None:
        """Record a failed run: ``retrying`` until ``run_at``, or ``failed`` if it is None.

        Returns False when the job was not running.
        """
        ...

    def save_checkpoint(self, cp: Checkpoint) -> bool | None:
        """Store the outcome of a durable call."""
        ...

    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """A job's checkpoints, in call order."""
        ...

    def delete_checkpoints(self, job_id: str) -> None:
        """Remove all checkpoints of a job."""
        ...

    def get_due_jobs(self, limit: int) -> list[Job]:
        """Jobs waiting to run whose run time has come, in dequeue order."""
        ...

    def heartbeat(self, job_id: str, worker_id: str) -> None:
        """Extend the lock of a running job held by ``worker_id``."""
        ...

    def release_stale_locks(self, timeout: timedelta | float) -> int:
        """Take back running jobs whose heartbeat is older than ``timeout``; returns count."""
        ...

    def get_job(self, job_id: str) -> Job | None:
        """One job by id, or None."""
        ...

    def get_jobs_by_status(self, status: JobStatus | str, limit: int) -> list[Job]:
        """Up to ``limit`` jobs with ``status``, oldest first."""
        ...
