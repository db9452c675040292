"""Retention: deleting finished jobs with everything kept for them, a small batch at a time.

A batch is one short transaction: it picks up to ``PRUNE_BATCH`` finished jobs of one
status that finished before the cutoff (locked, skipping rows others hold, on PostgreSQL
and MySQL; under the write lock on SQLite), then deletes their checkpoints, signals,
attempt history, labels and the jobs themselves. Batches walk the status index from a
(created_at, position) point, the position ordering the jobs created at once as the
index does, so each job is looked at once. A finished child whose parent has not
finished is kept: the parent may still read its outcome. Where the database allows it
(``Dialect.lazy_commit``), a batch commits without waiting for the disk: losing the last
deletions to a crash loses no work.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..job import JobStatus

if TYPE_CHECKING:
    from .sql import SQLStorage

__all__ = ["FINISHED", "PRUNE_BATCH", "check_older_than", "check_statuses", "prune"]

#: Jobs deleted per transaction: small enough that no batch holds its locks for long.
PRUNE_BATCH = 200
#: The statuses a job may be pruned in.
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
# What each batch deletes for its jobs, dependents first.
_DELETES = ("prune_checkpoints", "prune_signals", "prune_attempts", "prune_labels", "prune_jobs")
_START = datetime(1970, 1, 1, tzinfo=UTC)


def check_older_than(value: timedelta) -> timedelta:
    """``value`` if it is a timedelta of zero or more; raises ``ValueError`` otherwise."""
    if not isinstance(value, timedelta):
        raise ValueError(f"older_than must be a timedelta, got {value!r}")
    if value < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {value}")
    return value


def check_statuses(statuses: Iterable[JobStatus | str] | str) -> tuple[JobStatus, ...]:
    """The finished statuses named (``"completed"``, ``"failed"``, ``"cancelled"``);
    raises ``ValueError`` for any other (only finished jobs may be pruned)."""
    if isinstance(statuses, str | JobStatus):
        statuses = [statuses]
    found: list[JobStatus] = []
    for status in statuses:
        try:
            each = JobStatus(status)
        except ValueError:
            each = None
        if each not in FINISHED:
            names = ", ".join(s.value for s in FINISHED)
            raise ValueError(f"cannot prune jobs in status {status!r}: choose among {names}")
        assert each is not None
        if each not in found:
            found.append(each)
    if not found:
        raise ValueError("name at least one status to prune")
    return tuple(found)


def prune(
    storage: SQLStorage,
    older_than: timedelta,
    statuses: Iterable[JobStatus | str] | str = ("completed",),
    *,
    batch: int = PRUNE_BATCH,
    stop: threading.Event | None = None,
) -> int:
    """Delete the jobs of ``statuses`` that finished more than ``older_than`` ago, with
    their checkpoints, signals, attempt history and labels; returns how many jobs.

    ``stop``, once set, ends the work after the batch under way.
    """
    wanted = check_statuses(statuses)
    cutoff = storage.dialect.time_param(storage._now() - check_older_than(older_than))
    deleted = 0
    pause = stop if stop is not None else threading.Event()
    for status in wanted:
        # Before every job: the position (the tie-break among jobs created at once) is
        # not looked at then.
        after: tuple[Any, Any] = (storage.dialect.time_param(_START), None)
        while not pause.is_set():
            began = time.monotonic()
            count, last = _prune_batch(storage, status, cutoff, after, batch)
            deleted += count
            if last is None:
                break
            after = last
            # As long again as the batch took: a prune never takes more than half of
            # the database's writing (SQLite's one write lock, the pages a server
            # writes back) from the workers.
            took = time.monotonic() - began
            pause.wait(max(took, storage.dialect.writer_pause))
    return deleted


def _prune_batch(
    storage: SQLStorage, status: JobStatus, cutoff: Any, after: tuple[Any, Any], limit: int
) -> tuple[int, tuple[Any, Any] | None]:
    """One batch in one transaction: how many jobs it deleted, and the position to go on
    from (None once no job is left past ``after``)."""
    sql = storage.dialect.sql
    params = {
        "status": status.value,
        "cutoff": cutoff,
        "after_at": after[0],
        "after": after[1],
        "limit": limit,
    }
    with storage._cursor(write=True, atomic=True) as cur:
        if storage.dialect.lazy_commit:
            cur.execute(storage.dialect.lazy_commit)
        cur.execute(sql["prunable"], params)
        rows = cur.fetchall()
        if not rows:
            return 0, None
        rows = storage._named(cur, sql["prunable"], ("id", "created_at", "position"), rows)
        ids = {"ids": storage.dialect.list_param([row[0] for row in rows])}
        for name in _DELETES:
            cur.execute(sql[name], ids)
        count = int(cur.rowcount)
    last = rows[-1]
    return count, ((last[1], last[2]) if len(rows) == limit else None)
