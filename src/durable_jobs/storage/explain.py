"""The reads behind ``queue.explain`` and ``sdj workers``: a waiting parent's children
left, the due jobs ahead of a job, a type's running jobs and tokens, each worker's
running jobs.

Each dialect defines the statements in its ``explain_sql``, in ``STATEMENTS`` order. All
are plain reads served by existing indexes (the dequeue, running and type-running
indexes, and primary keys): they never lock what a claim takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .limits import _Bucket, _refill, _until_token
from .records import TypeLimits

if TYPE_CHECKING:
    from .sql import SQLStorage

__all__ = ["STATEMENTS", "ExplainReads", "Tokens"]

STATEMENTS = ("children_left", "jobs_ahead", "bucket", "running_by_worker")


@dataclass(frozen=True, slots=True)
class Tokens:
    """A rate limit's token bucket as of now: the tokens in it (one per run started),
    and the seconds until it holds a whole one again (0 while it does)."""

    left: float
    next_in: float


class ExplainReads:
    """The explain and worker-registry reads on an ``SQLStorage``."""

    def __init__(self, storage: SQLStorage) -> None:
        self.storage = storage
        self._sql = storage.dialect.explain_sql

    def _rows(
        self, name: str, params: dict[str, Any], fields: tuple[str, ...]
    ) -> list[tuple[Any, ...]]:
        return self.storage._execute(self._sql[name], params, write=False, fields=fields)

    def _value(self, name: str, params: dict[str, Any]) -> Any:
        """The one column of a statement's first row (None without rows)."""
        rows = self.storage._execute(self._sql[name], params, write=False)
        return rows[0][0] if rows else None

    def children_left(self, job_id: str) -> int | None:
        """How many children a waiting parent's current wait still counts (None: none)."""
        left = self._value("children_left", {"id": job_id})
        return None if left is None else int(left)

    def jobs_ahead(self, job_id: str, now: datetime) -> int:
        """Due jobs of ``job_id``'s queue before it in dequeue order at ``now``."""
        params = {"id": job_id, "now": self.storage.dialect.time_param(now)}
        return int(self._value("jobs_ahead", params) or 0)

    def running_of_type(self, job_type: str) -> dict[str, int]:
        """Running jobs of ``job_type`` by concurrency key ('' for none)."""
        sql = self.storage.dialect.limits_sql["running"]
        rows = self.storage._execute(
            sql, {"type": job_type}, write=False, fields=("limit_key", "running")
        )
        counts: dict[str, int] = {}
        for key, running in rows:
            counts[key or ""] = counts.get(key or "", 0) + int(running)
        return counts

    def tokens(self, limits: TypeLimits, key: str) -> Tokens:
        """The bucket of ``limits``' rate under ``key`` ('' for the whole type), refilled
        to the database's now (a bucket never written is full)."""
        assert limits.rate is not None
        d = self.storage.dialect
        rows = self._rows(
            "bucket", {"type": limits.job_type, "key": key}, ("tokens", "refilled_at", "now")
        )
        if not rows or rows[0][0] is None:
            return Tokens(float(limits.rate), 0.0)
        tokens, refilled_at, now = rows[0]
        read_now = d.time_value(now)
        assert read_now is not None
        bucket = _Bucket(_refill(limits, float(tokens), d.time_value(refilled_at), read_now))
        return Tokens(bucket.tokens, 0.0 if bucket.tokens >= 1 else _until_token(limits, bucket))

    def running_by_worker(self) -> dict[str, int]:
        """Running jobs per worker id."""
        rows = self._rows("running_by_worker", {}, ("worker", "running"))
        return {worker: int(n) for worker, n in rows if worker is not None}
