"""Server-side filling of ``sdj_jobs`` with pending jobs, and the plan of the worker's claim.

Filling runs entirely in the database (``generate_series`` on PostgreSQL, a recursive
CTE on SQLite, two joined recursive CTEs on MySQL), so a million rows take seconds
rather than a million round trips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import durable_jobs as jobs
from durable_jobs.job import utcnow
from durable_jobs.storage.mysql import STEP as MYSQL_STEP

from .database import backend_of, connect

__all__ = ["ClaimPlan", "claim_plan", "fill_pending"]

# Rows as ``enqueue`` writes them: a unique text id, a due run time (one millisecond
# apart, all in the past), no backoff, no meta. Columns left out take their defaults.
_FILL_COLUMNS = (
    "id, type, args, queue, priority, status, attempt, max_retries, run_at, created_at, updated_at"
)

_FILL_POSTGRES = f"""
INSERT INTO sdj_jobs ({_FILL_COLUMNS})
SELECT gen_random_uuid()::text, 'noop', 'null', 'default', 0, 'pending', 0, 3, t, t, t
FROM (SELECT %(start)s::timestamptz + i * interval '1 millisecond' AS t
      FROM generate_series(1, %(rows)s) AS i) AS s
"""

# Times in the dialect's text format ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), which sorts
# and compares like the library's own.
_FILL_SQLITE = f"""
INSERT INTO sdj_jobs ({_FILL_COLUMNS})
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :rows),
    t(i, at) AS (
        SELECT i, strftime('%Y-%m-%d %H:%M:%S', :start + i / 1000, 'unixepoch')
            || printf('.%06d', (i % 1000) * 1000)
        FROM s)
SELECT lower(hex(randomblob(16))), 'noop', 'null', 'default', 0, 'pending', 0, 3, at, at, at
FROM t
"""


# Numbers 1..rows as i * 1000 + j + 1 (MySQL's and MariaDB's recursion stops at 1000
# steps by default); due times a millisecond apart.
_FILL_MYSQL = f"""
INSERT INTO sdj_jobs ({_FILL_COLUMNS})
WITH RECURSIVE d(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM d WHERE i < 999)
SELECT UUID(), 'noop', 'null', 'default', 0, 'pending', 0, 3, t, t, t
FROM (SELECT TIMESTAMP(%(start)s) + INTERVAL (a.i * 1000 + b.i + 1) * 1000 MICROSECOND AS t
      FROM d AS a CROSS JOIN d AS b
      WHERE a.i * 1000 + b.i < %(rows)s) AS s
"""
_MYSQL_FILL_MAX = 1_000_000


def fill_pending(url: str, rows: int) -> float:
    """Add ``rows`` due no-op jobs to queue ``default`` and ANALYZE; returns the seconds taken."""
    start = utcnow() - timedelta(days=1)
    began = time.perf_counter()
    with connect(url) as conn:
        backend = backend_of(url)
        if backend == "postgresql":
            conn.execute(_FILL_POSTGRES, {"start": start, "rows": rows})
            conn.execute("ANALYZE sdj_jobs")
        elif backend == "mysql":
            if rows > _MYSQL_FILL_MAX:
                raise ValueError(f"at most {_MYSQL_FILL_MAX:,} rows at once on MySQL")
            conn.execute(_FILL_MYSQL, {"start": start.replace(tzinfo=None), "rows": rows})
            conn.execute("ANALYZE TABLE sdj_jobs").fetchall()
        else:
            epoch = int(start.replace(tzinfo=UTC).timestamp())
            conn.execute(_FILL_SQLITE, {"start": epoch, "rows": rows})
            conn.execute("ANALYZE")
    return time.perf_counter() - began


@dataclass(frozen=True)
class ClaimPlan:
    """The query plan of the worker's claim statement, and the lines that scan the table."""

    backend: str
    lines: list[str]
    full_scans: list[str]

    def render(self) -> str:
        verdict = (
            "WARNING: full scan of sdj_jobs: " + "; ".join(self.full_scans)
            if self.full_scans
            else "no full scan of sdj_jobs"
        )
        body = "\n".join("    " + line for line in self.lines)
        return f"{self.backend} claim plan ({verdict}):\n{body}"


def claim_plan(url: str, limit: int = 40) -> ClaimPlan:
    """EXPLAIN the dialect's ``claim`` with the values a worker binds (a claim of ``limit``).

    PostgreSQL gives EXPLAIN's plan, SQLite EXPLAIN QUERY PLAN's, MySQL EXPLAIN's rows of
    the claim's first step (the locking SELECT; the UPDATE and read-back go by primary
    key). A line that reads every row of ``sdj_jobs`` (a Seq Scan, SQLite's SCAN without
    an index, MySQL's access type ALL or index) is listed apart.
    """
    storage = jobs.SQLStorage(url)
    params: dict[str, Any] = {
        "queue": "default",
        "worker": "bench",
        "limit": limit,
        "now": storage.dialect.time_param(datetime.now(UTC)),
        "skip": storage.dialect.list_param([]),
        "min_retries": 0,
        "lock_timeout": 30.0,
    }
    sql = storage.dialect.sql["claim"]
    storage.close()
    backend = backend_of(url)
    with connect(url) as conn:
        if backend == "postgresql":
            lines = [row[0] for row in conn.execute("EXPLAIN " + sql, params).fetchall()]
            scans = [line.strip() for line in lines if "Seq Scan on sdj_jobs" in line]
            return ClaimPlan("postgresql", lines, scans)
        if backend == "mysql":
            return _mysql_plan(conn, sql.split(MYSQL_STEP)[0], params)
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    lines = _sqlite_tree(rows)
    scans = [
        line.strip()
        for line in lines
        if line.strip().startswith("SCAN sdj_jobs") and "INDEX" not in line
    ]
    return ClaimPlan("sqlite", lines, scans)


def _mysql_plan(conn: Any, select: str, params: dict[str, Any]) -> ClaimPlan:
    """EXPLAIN's rows for the claim's locking SELECT, one line each."""
    cur = conn.execute("EXPLAIN " + select, params)
    names = [d[0] for d in cur.description]
    shown = ("id", "select_type", "table", "type", "key", "rows", "Extra")
    lines, scans = [], []
    for values in cur.fetchall():
        row = dict(zip(names, values, strict=True))
        line = " ".join(f"{k}={row[k]}" for k in shown if row.get(k) is not None)
        lines.append(line)
        if row.get("table") == "sdj_jobs" and row.get("type") in ("ALL", "index"):
            scans.append(line)
    return ClaimPlan("mysql", lines, scans)


def _sqlite_tree(rows: list[tuple[int, int, int, str]]) -> list[str]:
    """EXPLAIN QUERY PLAN rows (id, parent, -, detail) as indented lines."""
    depth: dict[int, int] = {0: -1}
    lines = []
    for node, parent, _unused, detail in rows:
        depth[node] = depth.get(parent, -1) + 1
        lines.append("  " * depth[node] + detail)
    return lines
