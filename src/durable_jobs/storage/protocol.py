"""The storage protocols.

``Storage`` is the public one: the seed's verbs, snake_cased, that any backend
implements. ``JobStore`` is internal: everything the worker, the queue, durable calls,
schedulers and the operator tools use of a storage (what ``SQLStorage`` provides on
every database), so that they depend on it rather than on ``SQLStorage`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..job import Checkpoint, Job, JobStatus

if TYPE_CHECKING:
    import threading
    from typing import TypeAlias

    import sqlalchemy as sa
    from sqlalchemy.engine.interfaces import DBAPIConnection

    from ..retry import Backoff
    from .admin import Admin
    from .explain import ExplainReads
    from .records import (
        ChildOutcome,
        ChildrenWait,
        Claim,
        GroupOutcomes,
        Outcome,
        QueueDepth,
        ScheduleState,
        TypeLimits,
        WorkerInfo,
    )

    # What an enqueue may join: a SQLAlchemy connection's transaction, or whatever a
    # connection of the storage's driver that someone else manages (Django) has open.
    CallerConnection: TypeAlias = sa.Connection | DBAPIConnection

__all__ = ["JobStore", "Listener", "Reserve", "Storage"]

#: Reserves a free slot of a worker of this process for a job, of the queue and type
#: given, that is about to be claimed for it: that worker's id and lock timeout, or
#: None when no worker has one.
Reserve = Callable[[str, str], tuple[str, float] | None]


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


class Listener(Protocol):
    """Reports queues that got new jobs, from other processes, until stopped."""

    def run(
        self,
        on_notify: Callable[[str], None],
        on_reconnect: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        """Call ``on_notify(queue)`` for new jobs until ``stop`` is set, and
        ``on_reconnect()`` whenever it (re)connects, since jobs may have been missed."""
        ...


@runtime_checkable
class JobStore(Protocol):
    """Everything code outside ``storage/`` uses of a storage (internal).

    ``SQLStorage`` satisfies it on every database it supports; the worker, queue,
    durable calls, schedulers, the CLI and the dashboard are typed against it.
    """

    @property
    def url(self) -> str:
        """The database URL with the password hidden."""
        ...

    @property
    def engine(self) -> sa.Engine:
        """The SQLAlchemy engine (for users' transactions and connection checks)."""
        ...

    def listener(self) -> Listener | None:
        """The wake-up listener, or None when in-process wake-ups reach every worker."""
        ...

    def watch_outcome(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` when job ``job_id`` may have finished in any process, until
        the returned function is called; None where the backend cannot tell."""
        ...

    @property
    def database_errors(self) -> tuple[type[BaseException], ...]:
        """The exception classes a statement of this storage raises when the database
        fails (as opposed to the caller's own errors)."""
        ...

    def admin(self) -> Admin:
        """The operator's queries (listings, counts, retries) on this storage."""
        ...

    def explain_reads(self) -> ExplainReads:
        """The reads behind ``queue.explain`` and the worker registry's views."""
        ...

    def close(self) -> None: ...

    # -- schema
    def migrate(self) -> None: ...
    def require_schema(self) -> None: ...
    def schema_error(self, error: BaseException) -> RuntimeError | None: ...
    def schema_version(self) -> int: ...
    def upkeep_warning(self) -> str | None: ...

    # -- enqueue
    def enqueue(self, job: Job, *, connection: CallerConnection | None = None) -> str: ...
    def enqueue_many(
        self, jobs: Iterable[Job], *, connection: CallerConnection | None = None
    ) -> list[str]: ...
    def enqueue_claimed(
        self, job: Job, worker_id: str, *, lock_timeout: timedelta | float = ...
    ) -> bool: ...
    def enqueue_unique(self, job: Job, unique_key: str) -> bool: ...

    # -- claims and outcomes
    def claim(
        self,
        queue: str,
        worker_id: str,
        limit: int,
        *,
        skip_types: Sequence[str] = (),
        min_retries: int = 0,
        now: datetime | None = None,
        lock_timeout: timedelta | float = ...,
        limited: Sequence[TypeLimits] = (),
        plain: bool = True,
    ) -> list[Job]: ...
    def dequeue(self, queues: Sequence[str], worker_id: str) -> Job | None: ...
    def complete_and_claim(
        self,
        worker_id: str,
        outcomes: Sequence[Outcome],
        claims: Sequence[Claim],
        *,
        lock_timeout: timedelta | float = ...,
    ) -> tuple[set[str], list[list[Job]]]: ...
    def complete(
        self,
        job_id: str,
        result: bytes | None = None,
        *,
        worker_id: str | None = None,
        fence: int | None = None,
        attempt: int | None = None,
    ) -> bool: ...
    def complete_many(self, worker_id: str, outcomes: Sequence[Outcome]) -> set[str]: ...
    def fail(
        self,
        job_id: str,
        err_msg: str,
        run_at: datetime | None,
        *,
        worker_id: str | None = None,
        fence: int | None = None,
        attempt: int | None = None,
        traceback: str | None = None,
        child: bool | None = None,
    ) -> bool: ...
    def suspend(
        self,
        job_id: str,
        *,
        worker_id: str,
        fence: int,
        until: datetime | None,
        waiting_for: str,
        signal: str | None = None,
        children: ChildrenWait | None = None,
    ) -> bool: ...
    def signal(self, job_id: str, name: str, payload: bytes | None) -> tuple[bool, str | None]: ...
    def signal_claiming(
        self,
        job_id: str,
        name: str,
        payload: bytes | None,
        reserve: Reserve | None,
    ) -> tuple[bool, str | None, Job | None]: ...
    def observe_signals(
        self,
        job_id: str,
        name: str,
        *,
        worker_id: str,
        fence: int,
        limit: int,
        consume: bool,
        record: Callable[[list[bytes | None]], Checkpoint | None],
    ) -> list[bytes | None] | None: ...
    def wake_waiting(
        self, queues: Sequence[str], *, limit: int = ..., now: datetime | None = None
    ) -> tuple[list[str], tuple[str, datetime] | None]: ...
    def wake_and_claim(
        self,
        queues: Sequence[str],
        claims: Sequence[Claim],
        worker_id: str,
        *,
        lock_timeout: timedelta | float = ...,
        limit: int = ...,
    ) -> tuple[list[str], list[list[Job]]]: ...
    def set_progress(
        self, job_id: str, progress: bytes | None, *, worker_id: str, fence: int
    ) -> bool: ...

    # -- children
    def spawn(
        self,
        parent_id: str,
        children: Iterable[Job],
        checkpoint: Checkpoint,
        *,
        worker_id: str,
        fence: int,
        wait: ChildrenWait | None = None,
    ) -> bool: ...
    def children_outcomes(self, ids: Sequence[str]) -> dict[str, ChildOutcome]: ...
    def group_outcomes(self, parent_id: str, group: str) -> GroupOutcomes: ...
    def cancel_children(self, parent_id: str, group: str) -> int: ...
    def wake_decided(self, queues: Sequence[str], *, limit: int = ...) -> list[str]: ...

    # -- job control
    def cancel(self, job_id: str) -> list[Job] | None: ...
    def cancelled_among(self, job_ids: Sequence[str]) -> set[str]: ...
    def pause(self, job_id: str) -> bool: ...
    def resume(self, job_id: str) -> bool: ...
    def pause_queue(self, queue: str) -> None: ...
    def resume_queue(self, queue: str) -> None: ...
    def paused_queues(self) -> dict[str, datetime]: ...
    def add_wake_listener(self, listener: Callable[[Sequence[str]], None]) -> None: ...
    def release(self, worker_id: str, jobs: Sequence[tuple[str, int]]) -> None: ...
    def settled(self, worker_id: str, runs: Sequence[tuple[str, int]]) -> dict[str, JobStatus]: ...

    # -- locks and workers
    def heartbeat(
        self, job_id: str, worker_id: str, *, lock_timeout: timedelta | float = ...
    ) -> None: ...
    def heartbeat_worker(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        queues: Sequence[str],
        types: Sequence[str],
        jobs: Sequence[str] | None = None,
        lock_timeout: timedelta | float = ...,
        version: str = ...,
    ) -> None: ...
    def remove_worker(self, worker_id: str) -> None: ...
    def live_workers(self, max_age: timedelta) -> list[WorkerInfo]: ...
    def prune_workers(self, max_age: timedelta) -> None: ...
    def release_expired_locks(
        self, *, backoff: Callable[[str], Backoff | None] | None = None
    ) -> int: ...
    def release_stale_locks(
        self,
        timeout: timedelta | float,
        *,
        backoff: Callable[[str], Backoff | None] | None = None,
    ) -> int: ...

    # -- reads
    def get_job(self, job_id: str) -> Job | None: ...
    def get_jobs_by_status(self, status: JobStatus | str, limit: int) -> list[Job]: ...
    def get_due_jobs(self, limit: int) -> list[Job]: ...
    def queue_depths(self) -> list[QueueDepth]: ...
    def waiting_counts(self) -> dict[str, int]: ...

    # -- schedules
    def upsert_schedule(
        self,
        name: str,
        spec: str,
        queue: str,
        last_fire_at: datetime | None,
        next_fire_at: datetime | None,
    ) -> None: ...
    def list_schedules(self) -> list[ScheduleState]: ...

    # -- checkpoints
    def save_checkpoint(
        self,
        cp: Checkpoint,
        *,
        worker_id: str | None = None,
        fence: int | None = None,
        attempt: int | None = None,
    ) -> bool: ...
    def get_checkpoints(self, job_id: str) -> list[Checkpoint]: ...
    def delete_checkpoints(self, job_id: str) -> None: ...
