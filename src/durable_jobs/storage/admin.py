"""Read and admin queries for operators' tools (the dashboard and ``sdj``): listings,
counts, actions.

Each dialect's statements sit side by side under the same names in its module's
``admin_sql`` (a unit test checks both define the same names and parameters). ``Admin`` wraps an
``SQLStorage`` and runs them through its cursor. The dashboard and the command line
share these methods, so a retry or a delete means the same thing in both.

Listings page by keyset, never by OFFSET: a page is "the next ``limit`` jobs older (or
newer) than this (created_at, enqueue order) position", and each page is one short
range scan of the ``sdj_jobs_status (status, created_at)`` index per status, merged in
Python. That stays as fast on page 10,000 as on page 1.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from ..job import Job, JobStatus
from . import dead_letters, retention, search
from .records import ScheduleState
from .sql import _JOB as _JOB_FIELDS
from .sql import SQLStorage

__all__ = [
    "STATEMENTS",
    "Admin",
    "Children",
    "Cursor",
    "JobPage",
    "Minute",
    "QueueStats",
    "failure_rate",
]

STATEMENTS = (
    "jobs_page",
    "older_than",
    "newer_than",
    "by_queue",
    "by_type",
    "counts",
    "throughput",
    "oldest_due",
    "running_jobs",
    "jobs_by_id",
    "children_counts",
    "children",
    "retry",
    "delete_job",
    "delete_checkpoints",
    "created_after",
    "created_before",
    "labelled_page",
    "labelled_status",
    "labelled_queue",
    "labelled_type",
    "labelled_older",
    "labelled_newer",
    "labelled_after",
    "labelled_before",
    "labelled_also",
    "failed_batch",
    "failed_since",
    "retry_failed",
)

# Each dialect defines these statements in its ``admin_sql`` (``sqlite.py``,
# ``postgres.py``), in this order. ``jobs_page`` takes fragments from the same dict in
# ``{filters}`` and a fixed ``ASC``/``DESC`` in ``{order}``; every value stays a bound
# parameter. Its ``position`` column (rowid, seq) is the enqueue order within one
# created_at, so every row has a unique, stable position.

_JOB = (*_JOB_FIELDS, "position")
_COUNT = ("queue", "status", "jobs")
_MINUTE = ("minute", "status", "jobs")
_CREATED_AT, _POSITION = _JOB.index("created_at"), _JOB.index("position")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A listing's filters on the jobs' own columns: (fragment, the parameter that asks for it).
_FILTERS = (
    ("by_queue", "queue"),
    ("by_type", "type"),
    ("created_after", "created_after"),
    ("created_before", "created_before"),
)
# The same filters in a search by labels, and its status filter.
_LABELLED_FILTERS = (
    ("labelled_status", "status"),
    ("labelled_queue", "queue"),
    ("labelled_type", "type"),
    ("labelled_after", "created_after"),
    ("labelled_before", "created_before"),
)


def failure_rate(completed: int, failed: int) -> float | None:
    """Failed / finished, or None when nothing finished."""
    total = completed + failed
    return failed / total if total else None


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A position in the newest-first job listing: a job's created_at and enqueue order."""

    created_at: datetime
    tie: int

    def token(self) -> str:
        """The cursor as a URL-safe string: microseconds since the epoch, then the tie."""
        micros = (self.created_at - _EPOCH) // timedelta(microseconds=1)
        return f"{micros}.{self.tie}"

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """The cursor ``token()`` made; raises ``ValueError`` for anything else."""
        micros, _, tie = token.partition(".")
        position = int(tie)
        if not 0 <= position < 2**63:  # a BIGINT, as seq is
            raise ValueError(f"cursor position out of range: {token!r}")
        try:
            return cls(_EPOCH + timedelta(microseconds=int(micros)), position)
        except OverflowError:
            raise ValueError(f"cursor time out of range: {token!r}") from None


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a listing, newest first, with the cursors of the pages around it."""

    jobs: list[Job]
    older: Cursor | None  # pass as ``before`` for the next (older) page, if there is one
    newer: Cursor | None  # pass as ``after`` for the previous (newer) page, if there is one

    @property
    def next(self) -> Cursor | None:
        """The cursor of the following (older) page, for ``Queue.list_jobs(after=...)``;
        None on the last page."""
        return self.older


@dataclass(frozen=True, slots=True)
class Children:
    """A job's children: how many there are in each status, and the first ones made."""

    by_status: dict[JobStatus, int]
    first: list[Job]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def finished(self) -> int:
        return sum(n for status, n in self.by_status.items() if status in _FINISHED)


_FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED})


@dataclass(frozen=True, slots=True)
class Minute:
    """How many jobs finished in one minute, and how many of them failed."""

    start: datetime
    completed: int
    failed: int

    @property
    def failure_rate(self) -> float | None:
        """Failed / finished, or None when nothing finished."""
        return failure_rate(self.completed, self.failed)


@dataclass(slots=True)
class QueueStats:
    """How many jobs of one queue are in each status, and how late its oldest due job is."""

    queue: str
    counts: dict[JobStatus, int] = field(default_factory=dict)
    oldest_due: timedelta | None = None  # None when no job of the queue is due


class Admin:
    """The queries an operator's tool runs against an ``SQLStorage``."""

    def __init__(self, storage: SQLStorage) -> None:
        self.storage = storage
        self._sql = storage.dialect.admin_sql
        self._has_schedules = False

    def has_schema(self) -> bool:
        """Whether the database holds the job tables. Only looks: never creates them."""
        return self._has_table("sdj_jobs")

    def _has_table(self, name: str) -> bool:
        return sa.inspect(self.storage.engine).has_table(name)

    def _rows(
        self, name: str, params: dict[str, Any], fields: tuple[str, ...]
    ) -> list[tuple[Any, ...]]:
        """The rows of a statement, each as the values of the columns named ``fields``."""
        sql = self._sql[name]
        with self.storage._cursor() as cur:
            cur.execute(sql, params)
            rows = cur.fetchall()
            return self.storage._named(cur, sql, fields, rows) if rows else []

    # -- listings -----------------------------------------------------------------------

    def jobs_page(
        self,
        *,
        status: JobStatus | None = None,
        queue: str | None = None,
        job_type: str | None = None,
        tag: str | None = None,
        meta: Mapping[str, Any] | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        before: Cursor | None = None,
        after: Cursor | None = None,
        limit: int = 50,
    ) -> JobPage:
        """Up to ``limit`` jobs matching the filters, newest first.

        ``tag`` and each ``meta`` entry must all be on a job; ``created_after`` (inclusive)
        and ``created_before`` (exclusive) bound its creation time. ``before`` gives the
        page of jobs older than that cursor, ``after`` the page of jobs newer than it
        (still shown newest first); neither gives the newest page.
        """
        if before is not None and after is not None:
            raise ValueError("give before or after, not both")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        wanted = search.labels(tag, meta)
        t = self.storage.dialect.time_param
        params: dict[str, Any] = {"limit": limit + 1}  # one more: is there a next page?
        fields = {"queue": queue, "type": job_type}
        fields |= {"created_after": t(created_after), "created_before": t(created_before)}
        params |= {name: value for name, value in fields.items() if value is not None}
        cursor = before or after
        if cursor is not None:
            params.update(created_at=t(cursor.created_at), tie=cursor.tie)
        direction = "older" if before is not None else "newer" if after is not None else None
        order = "ASC" if after is not None else "DESC"
        if wanted:
            runs = [self._labelled_run(wanted, status, params, direction, order)]
        else:
            runs = self._status_runs(status, params, direction, order)
        newest_first = after is None
        merged = heapq.merge(*runs, key=lambda item: item[0], reverse=newest_first)
        page = list(itertools.islice(merged, limit + 1))
        more = len(page) > limit
        del page[limit:]
        if not newest_first:
            page.reverse()
        jobs = [self.storage._job(row) for _, row in page]
        if not page:
            return JobPage(jobs, older=after, newer=before)
        first, last = page[0][0], page[-1][0]
        if newest_first:
            return JobPage(jobs, older=last if more else None, newer=first if before else None)
        return JobPage(jobs, older=last, newer=first if more else None)

    def _status_runs(
        self,
        status: JobStatus | None,
        params: dict[str, Any],
        direction: str | None,
        order: str,
    ) -> list[list[tuple[Cursor, Any]]]:
        """The page's candidates by the status index: one run per status, in order."""
        sql = self._sql
        filters = "".join(sql[fragment] for fragment, param in _FILTERS if param in params)
        if direction is not None:
            filters += sql[f"{direction}_than"]
        text = sql["jobs_page"].format(filters=filters, order=order)
        # One index range scan per status: the index leads with status, so a listing of
        # all statuses is a merge of a few short scans rather than a sort of every row.
        statuses = [status] if status is not None else list(JobStatus)
        runs: list[list[tuple[Cursor, Any]]] = []
        with self.storage._cursor() as cur:
            for each in statuses:
                runs.append(self._run_rows(cur, text, {**params, "status": each.value}))
        return runs

    def _labelled_run(
        self,
        wanted: list[search.Label],
        status: JobStatus | None,
        params: dict[str, Any],
        direction: str | None,
        order: str,
    ) -> list[tuple[Cursor, Any]]:
        """The page's candidates by the labels' index, from the first label wanted."""
        sql = self._sql
        params = dict(params)
        if status is not None:
            params["status"] = status.value
        filters = "".join(sql[fragment] for fragment, param in _LABELLED_FILTERS if param in params)
        if direction is not None:
            filters += sql[f"labelled_{direction}"]
        (kind, label, value), *others = wanted
        params.update(kind=kind, label=label, value=value)
        for n, (kind, label, value) in enumerate(others, start=1):
            filters += sql["labelled_also"].replace("also_", f"also{n}_")
            params.update({f"also{n}_kind": kind, f"also{n}_label": label})
            params[f"also{n}_value"] = value
        text = sql["labelled_page"].format(filters=filters, order=order)
        with self.storage._cursor() as cur:
            return self._run_rows(cur, text, params)

    def _run_rows(self, cur: Any, text: str, params: dict[str, Any]) -> list[tuple[Cursor, Any]]:
        cur.execute(text, params)
        rows = cur.fetchall()
        if rows:
            rows = self.storage._named(cur, text, _JOB, rows)
        return [(self._position(row), row) for row in rows]

    def _position(self, row: Sequence[Any]) -> Cursor:
        created_at = self.storage.dialect.time_value(row[_CREATED_AT])
        assert created_at is not None
        return Cursor(created_at, row[_POSITION])

    def running_jobs(self, limit: int = 1000) -> list[Job]:
        """Jobs running now, longest-running first."""
        rows = self._rows("running_jobs", {"limit": limit}, _JOB_FIELDS)
        return [self.storage._job(row) for row in rows]

    def get_jobs(self, job_ids: Sequence[str]) -> list[Job]:
        """The jobs among ``job_ids`` that exist, in no particular order, in one query."""
        params = {"ids": self.storage.dialect.list_param(job_ids)}
        rows = self._rows("jobs_by_id", params, _JOB_FIELDS)
        return [self.storage._job(row) for row in rows]

    def children(self, parent_id: str, limit: int = 20) -> Children:
        """The children of ``parent_id`` counted by status (live, not as of its last
        suspension), and the first ``limit`` of them in the order they were made."""
        params = {"parent": parent_id}
        counts = self._rows("children_counts", params, ("status", "jobs"))
        rows = self._rows("children", {**params, "limit": limit}, _JOB_FIELDS)
        by_status = {JobStatus(status): int(n) for status, n in counts}
        return Children(by_status, [self.storage._job(row) for row in rows])

    # -- overview -----------------------------------------------------------------------

    def counts(self) -> list[tuple[str, JobStatus, int]]:
        """(queue, status, count) for every queue and status that has jobs."""
        rows = self._rows("counts", {}, _COUNT)
        return sorted((queue, JobStatus(status), count) for queue, status, count in rows)

    def throughput(self, minutes: int = 60, *, now: datetime | None = None) -> list[Minute]:
        """Jobs finished per minute over the last ``minutes`` whole minutes and this one."""
        now = now or self.storage._now()
        end = now.replace(second=0, microsecond=0)
        start = end - timedelta(minutes=minutes - 1)
        params = {"since": self.storage.dialect.time_param(start)}
        done: dict[datetime, dict[str, int]] = {}
        for minute, status, count in self._rows("throughput", params, _MINUTE):
            done.setdefault(self._minute(minute), {})[status] = count
        series = []
        for i in range(minutes):
            at = start + timedelta(minutes=i)
            counts = done.get(at, {})
            series.append(Minute(at, counts.get("completed", 0), counts.get("failed", 0)))
        return series

    def _minute(self, value: Any) -> datetime:
        # The statement's minute is a time as the dialect stores them, to the minute.
        minute = self.storage.dialect.time_value(value)
        assert minute is not None
        return minute

    def queue_stats(self) -> list[QueueStats]:
        """Per queue, by name: job counts by status and how long its oldest due job waited."""
        stats: dict[str, QueueStats] = {}
        for queue, status, count in self.counts():
            stats.setdefault(queue, QueueStats(queue)).counts[status] = count
        depths = self.storage.queue_depths()
        now = self.storage._now()  # after the query, so no wait comes out negative
        for depth in depths:
            if depth.oldest_run_at is not None:
                stats.setdefault(depth.queue, QueueStats(depth.queue)).oldest_due = (
                    now - depth.oldest_run_at
                )
        return [stats[name] for name in sorted(stats)]

    def oldest_due(self, *, now: datetime | None = None) -> Job | None:
        """The job that has waited longest past its run time, if any is due."""
        params = {"now": self.storage.dialect.time_param(now or self.storage._now())}
        rows = self._rows("oldest_due", params, _JOB_FIELDS)
        return self.storage._job(rows[0]) if rows else None

    def schedules(self) -> list[ScheduleState] | None:
        """The stored schedule states, or None when the schema has no schedules table."""
        if not self._has_schedules:
            # Checked until found: a database migrated later gains the table.
            if not self._has_table("sdj_schedules"):
                return None
            self._has_schedules = True
        return self.storage.list_schedules()

    # -- actions ------------------------------------------------------------------------

    def retry(self, job_id: str) -> Job | None:
        """Give a failed, cancelled or retrying job a fresh start now; returns it as stored.

        It becomes ``pending`` with ``attempt`` 0 (its full retry budget again; its next
        run shows attempt 1). Its ``fence`` is kept, so a run of the job that lost its
        lock before still has its writes rejected. Its checkpoints are kept, so a
        workflow resumes after its last completed step; ``last_error`` stays until the
        next run, and its attempt history stays. Workers of other processes are told.
        None when there is no such job or it is in none of those statuses (nothing
        changes then).
        """
        now = self.storage.dialect.time_param(self.storage._now())
        sql = self._sql["retry"]
        with self.storage._cursor(write=True, atomic=True) as cur:
            cur.execute(sql, {"id": job_id, "now": now})
            rows = cur.fetchall()
            if not rows:
                return None
            [row] = self.storage._named(cur, sql, _JOB_FIELDS, rows)
            job = self.storage._job(row)
            self.storage.dialect.notify_queues(cur, [job.queue])
        return job

    def retry_failed(
        self,
        *,
        job_type: str | None = None,
        queue: str | None = None,
        since: datetime | None = None,
    ) -> tuple[int, set[str]]:
        """Retry every failed job of ``job_type`` and ``queue`` that failed at or after
        ``since``, a batch per transaction; returns how many, and their queues."""
        return dead_letters.retry_failed(self.storage, job_type=job_type, queue=queue, since=since)

    def attempts(self, job_id: str) -> list[dead_letters.Attempt]:
        """The failed attempts of a job, oldest first."""
        return dead_letters.attempts(self.storage, job_id)

    def prune(
        self,
        older_than: timedelta,
        statuses: Iterable[JobStatus | str] | str = ("completed",),
        *,
        stop: threading.Event | None = None,
    ) -> int:
        """Delete jobs of ``statuses`` (finished ones only) that finished more than
        ``older_than`` ago, with all that is kept for them, in small batches; returns
        how many jobs. ``stop``, once set, ends the work after the batch under way."""
        return retention.prune(self.storage, older_than, statuses, stop=stop)

    def delete(self, job_id: str, *, force: bool = False) -> Job | None:
        """Delete a job with its checkpoints; returns the job as it was.

        A running job is refused (None) unless ``force``: its worker would go on running
        it. None too when there is no such job.
        """
        sql = self._sql["delete_job"]
        with self.storage._cursor(write=True, atomic=True) as cur:
            cur.execute(sql, {"id": job_id, "force": force})
            rows = cur.fetchall()
            if not rows:
                return None
            [job] = self.storage._named(cur, sql, _JOB_FIELDS, rows)
            cur.execute(self._sql["delete_checkpoints"], {"id": job_id})
            ids = {"ids": self.storage.dialect.list_param([job_id])}
            for kept in ("prune_signals", "prune_attempts", "prune_labels"):
                cur.execute(self.storage.dialect.sql[kept], ids)
        return self.storage._job(job)
