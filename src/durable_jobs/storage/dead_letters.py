"""Failed jobs as a dead-letter list: their attempt history, and retrying them in bulk.

Each failed run adds a row to ``sdj_attempts`` in the transaction that records the
failure (a completed run adds none: the job's row is its record). A bulk retry walks the
failed jobs oldest first from a (created_at, id) position, a batch per short
transaction, and takes only jobs that had failed when it started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sql import SQLStorage

__all__ = ["RETRY_BATCH", "Attempt", "attempts", "retry_failed"]

#: Failed jobs put back per transaction.
RETRY_BATCH = 500
_ATTEMPT = ("attempt", "worker", "error", "traceback", "started_at", "finished_at")
_BATCH = ("id", "created_at", "queue")
_START = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One failed run of a job: its number, the worker, the error and where it arose."""

    attempt: int
    worker: str | None
    error: str | None
    traceback: str | None  # the last lines of the traceback
    started_at: datetime | None
    finished_at: datetime


def attempts(storage: SQLStorage, job_id: str) -> list[Attempt]:
    """The failed attempts of ``job_id``, oldest first (empty for an unknown job)."""
    rows = storage._read("attempts", {"job_id": job_id}, _ATTEMPT)
    value = storage.dialect.time_value
    found = []
    for attempt, worker, error, traceback, started_at, finished_at in rows:
        finished = value(finished_at)
        assert finished is not None
        found.append(Attempt(attempt, worker, error, traceback, value(started_at), finished))
    return found


def retry_failed(
    storage: SQLStorage,
    *,
    job_type: str | None = None,
    queue: str | None = None,
    since: datetime | None = None,
    batch: int = RETRY_BATCH,
) -> tuple[int, set[str]]:
    """Put back as ``pending`` (attempt 0: a fresh retry budget) the failed jobs of
    ``job_type`` and ``queue`` that failed at or after ``since``; returns how many, and
    their queues."""
    sql, t = storage.dialect.admin_sql, storage.dialect.time_param
    params: dict[str, Any] = {"until": t(storage._now()), "limit": batch}
    filters = ""
    for fragment, name, value in (
        ("by_type", "type", job_type),
        ("by_queue", "queue", queue),
        ("failed_since", "since", t(since)),
    ):
        if value is not None:
            filters += sql[fragment]
            params[name] = value
    select = sql["failed_batch"].format(filters=filters)
    after: tuple[Any, str] = (t(_START), "")
    retried, queues = 0, set[str]()
    while True:
        with storage._cursor() as cur:
            cur.execute(select, {**params, "after_at": after[0], "after_id": after[1]})
            rows = cur.fetchall()
            rows = storage._named(cur, select, _BATCH, rows) if rows else []
        if not rows:
            return retried, queues
        count, woken = _retry_batch(storage, rows)
        retried += count
        queues |= woken
        if len(rows) < batch:
            return retried, queues
        after = (rows[-1][1], rows[-1][0])


def _retry_batch(storage: SQLStorage, rows: list[Any]) -> tuple[int, set[str]]:
    """Put back the jobs of ``rows`` still failed, telling workers of their queues."""
    queues = {row[2] for row in rows}
    ids = storage.dialect.list_param([row[0] for row in rows])
    now = storage.dialect.time_param(storage._now())
    with storage._cursor(write=True, atomic=True) as cur:
        cur.execute(storage.dialect.admin_sql["retry_failed"], {"ids": ids, "now": now})
        count = int(cur.rowcount)
        if count:
            storage.dialect.notify_queues(cur, sorted(queues))
    return count, queues if count else set()
