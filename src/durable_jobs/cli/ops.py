"""Storage operations the CLI needs that ``SQLStorage`` does not offer yet.

Each takes an ``SQLStorage`` and runs plain parameterised SQL through its cursor, the way
``storage/sql.py`` does. They belong in storage (with their texts in ``dialects.py``);
they live here until they move. Statements are written once with ``:name`` parameters
and rewritten for psycopg's ``%(name)s``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..job import Job, JobStatus, utcnow
from ..storage import SQLStorage
from ..storage.dialects import JOB_COLUMNS, PostgresDialect
from .errors import CLIError

__all__ = [
    "QueueStats",
    "delete_job",
    "get_job",
    "get_jobs",
    "has_schema",
    "list_jobs",
    "queue_stats",
    "retry_job",
    "schedule_rows",
]

# Jobs a person may retry: those that failed, or wait for their next attempt.
RETRYABLE = (JobStatus.FAILED, JobStatus.RETRYING)
_WAITING = "('pending', 'retrying')"
_PARAM = re.compile(r"(?<![:\w]):(\w+)")


def _sql(storage: SQLStorage, text: str) -> str:
    if isinstance(storage.dialect, PostgresDialect):
        return _PARAM.sub(r"%(\1)s", text)
    return text


def _query(storage: SQLStorage, text: str, params: dict[str, Any]) -> list[Any]:
    with storage._cursor() as cur:
        cur.execute(_sql(storage, text), params)
        return list(cur.fetchall())


def _enqueue_order(storage: SQLStorage) -> str:
    # The column that breaks created_at ties in enqueue order.
    return "seq" if isinstance(storage.dialect, PostgresDialect) else "rowid"


def has_schema(storage: SQLStorage) -> bool:
    """Whether the database holds the job tables."""
    return sa.inspect(storage.engine).has_table("sdj_jobs")


def get_job(storage: SQLStorage, job_id: str) -> Job:
    """The job with ``job_id``; raises ``CLIError`` when there is none."""
    job = storage.get_job(job_id)
    if job is None:
        raise CLIError(f"no job with id {job_id!r}")
    return job


def get_jobs(storage: SQLStorage, job_ids: Sequence[str]) -> list[Job]:
    """The jobs among ``job_ids`` that exist, in no particular order, in one query."""
    if isinstance(storage.dialect, PostgresDialect):
        where = "id = ANY(:ids)"
    else:
        where = "id IN (SELECT value FROM json_each(:ids))"
    text = f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE {where}"
    params = {"ids": storage.dialect.list_param(job_ids)}
    return [storage._job(row) for row in _query(storage, text, params)]


def list_jobs(
    storage: SQLStorage,
    *,
    status: JobStatus | None = None,
    queue: str | None = None,
    job_type: str | None = None,
    limit: int = 50,
) -> list[Job]:
    """Up to ``limit`` jobs matching every filter given, newest first."""
    filters = {"status": None if status is None else status.value, "queue": queue, "type": job_type}
    given = {column: value for column, value in filters.items() if value is not None}
    where = " AND ".join(f"{column} = :{column}" for column in given) or "1 = 1"
    text = (
        f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE {where} "
        f"ORDER BY created_at DESC, {_enqueue_order(storage)} DESC LIMIT :limit"
    )
    return [storage._job(row) for row in _query(storage, text, {**given, "limit": limit})]


@dataclass
class QueueStats:
    """How many jobs of one queue are in each status, and how late its oldest due job is."""

    queue: str
    counts: dict[JobStatus, int] = field(default_factory=dict)
    oldest_due: timedelta | None = None


def queue_stats(storage: SQLStorage, now: datetime | None = None) -> list[QueueStats]:
    """Per-queue counts by status and the age of the oldest job due to run, by queue name."""
    now = now or utcnow()
    stats: dict[str, QueueStats] = {}
    counts = "SELECT queue, status, COUNT(*) FROM sdj_jobs GROUP BY queue, status"
    for queue, status, count in _query(storage, counts, {}):
        stats.setdefault(queue, QueueStats(queue)).counts[JobStatus(status)] = count
    due = (
        f"SELECT queue, MIN(run_at) FROM sdj_jobs WHERE status IN {_WAITING} "
        "AND run_at <= :now GROUP BY queue"
    )
    for queue, oldest in _query(storage, due, {"now": storage.dialect.time_param(now)}):
        since = storage.dialect.time_value(oldest)
        if since is not None:
            stats.setdefault(queue, QueueStats(queue)).oldest_due = now - since
    return [stats[name] for name in sorted(stats)]


def retry_job(storage: SQLStorage, job_id: str) -> Job:
    """Give a failed or retrying job a fresh start now; returns it as stored.

    The job becomes ``pending`` with ``attempt`` reset to 0, so it gets its full retry
    budget again. ``last_error`` stays until the next run, and checkpoints are kept, so
    a workflow resumes after its last completed step.
    """
    now = storage.dialect.time_param(utcnow())
    text = (
        "UPDATE sdj_jobs SET status = 'pending', attempt = 0, run_at = :now, "
        "completed_at = NULL, updated_at = :now "
        f"WHERE id = :id AND status IN ('failed', 'retrying') RETURNING {JOB_COLUMNS}"
    )
    with storage._cursor(write=True, atomic=True) as cur:
        cur.execute(_sql(storage, text), {"id": job_id, "now": now})
        rows = cur.fetchall()
        if rows and isinstance(storage.dialect, PostgresDialect):
            # Wakes listening workers now rather than at their next poll.
            cur.execute("SELECT pg_notify('sdj_jobs', %(queue)s)", {"queue": rows[0][3]})
    if not rows:
        job = get_job(storage, job_id)
        raise CLIError(
            f"job {job_id} is {job.status.value}; only failed or retrying jobs can be retried"
        )
    return storage._job(rows[0])


def delete_job(storage: SQLStorage, job_id: str, *, force: bool = False) -> Job:
    """Delete a job and its checkpoints; returns the deleted job.

    A running job is refused unless ``force``: its worker would go on running it.
    """
    guard = "" if force else " AND status <> 'running'"
    with storage._cursor(write=True, atomic=True) as cur:
        cur.execute(
            _sql(storage, f"DELETE FROM sdj_jobs WHERE id = :id{guard} RETURNING {JOB_COLUMNS}"),
            {"id": job_id},
        )
        rows = cur.fetchall()
        if rows:
            cur.execute(
                _sql(storage, "DELETE FROM sdj_checkpoints WHERE job_id = :id"), {"id": job_id}
            )
    if not rows:
        get_job(storage, job_id)  # raises for an unknown id
        raise CLIError(f"job {job_id} is running; pass --force to delete it anyway")
    return storage._job(rows[0])


def schedule_rows(storage: SQLStorage) -> list[dict[str, Any]] | None:
    """The rows of the schedules table as dicts, or None when there is no such table.

    Read generically, column by column, so the command keeps working as that table
    (owned by the scheduler) evolves.
    """
    if not sa.inspect(storage.engine).has_table("sdj_schedules"):
        return None
    with storage._cursor() as cur:
        cur.execute("SELECT * FROM sdj_schedules ORDER BY 1")
        columns: Sequence[str] = [d[0] for d in cur.description]
        return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]
