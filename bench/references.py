"""Reference ceilings: what the database does for bare SQL from one Python thread.

They are measured in the same run, on a fresh database of the same backend, so that a
workload's ratio to its ceiling means the same on any machine.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import durable_jobs as jobs
from durable_jobs.job import new_ids
from durable_jobs.storage.dialects import INSERT_COLUMNS, INSERT_WIDTH
from durable_jobs.storage.postgres import PostgresDialect
from durable_jobs.storage.sqlite import SQLiteDialect

from .database import backend_of, connect
from .fill import fill_pending

__all__ = ["InsertLoop", "bulk_insert_seconds", "claim_complete_rate", "idle_commit_ms"]


class InsertLoop:
    """A bare one-row INSERT-and-commit loop writing the row an enqueue writes.

    The table (``bench_ref``) has the jobs table's shape: its columns and indexes, so
    the ceiling costs what storing a job must cost, and nothing the library adds
    (building the job, the pool, the wake-up notification). Autocommit: each INSERT is
    its own transaction, in one round trip, as the library's single enqueues are.
    """

    def __init__(self, conn: Any, backend: str) -> None:
        self.conn = conn
        self.backend = backend
        self.sql = _insert_row_sql(backend)
        for statement in _copy_of_jobs_table(conn, backend):
            conn.execute(statement)

    def run(self, n: int) -> float:
        """Insert ``n`` rows, one transaction each; returns the seconds taken."""
        cur = self.conn.cursor()
        now: Any = datetime.now(UTC)
        if self.backend == "sqlite":
            now = now.isoformat()
        elif self.backend == "mysql":
            now = now.replace(tzinfo=None)  # DATETIME(6) holds naive UTC
        # The columns after parent_group (unique key, tags, limits...) are NULL, as the
        # library writes them for a plain job.
        rest = (None,) * (INSERT_WIDTH - 11)
        start = time.perf_counter()
        for _ in range(n):
            row = (str(uuid.uuid4()), "noop", "null", "default", 0, "pending", 0, 0)
            cur.execute(self.sql, (*row, now, now, now, *rest))
        elapsed = time.perf_counter() - start
        cur.close()
        return elapsed


def idle_commit_ms(url: str, backend: str, samples: int, gap: float) -> float:
    """Median ms of one job-row INSERT-and-commit after ``gap`` seconds of idleness.

    The floor of an idle enqueue-to-start latency: an enqueue commits once, and a job
    that another process claims needs a second commit. An idle machine answers a commit
    more slowly than a busy loop does (cold caches, sleeping cores).
    """
    with connect(url) as conn:
        loop = InsertLoop(conn, backend)
        loop.run(5)
        times = []
        for _ in range(samples):
            time.sleep(gap)
            times.append(loop.run(1) * 1000)
    return statistics.median(times)


def _insert_row_sql(backend: str) -> str:
    """A one-row INSERT of ``INSERT_COLUMNS`` into ``bench_ref``, positional parameters."""
    param = "?" if backend == "sqlite" else "%s"
    marks = ", ".join([param] * len(INSERT_COLUMNS.split(",")))
    return f"INSERT INTO bench_ref ({INSERT_COLUMNS}) VALUES ({marks})"


def bulk_insert_seconds(conn: Any, backend: str, n: int) -> float:
    """Seconds to store ``n`` prepared job rows in one transaction the backend's fastest
    way: binary COPY on PostgreSQL, multi-row INSERTs on SQLite and MySQL (PyMySQL's
    ``executemany``, which packs the rows into INSERTs of up to 1 MB each) — the
    ceiling of ``enqueue_many``.
    """
    for statement in _copy_of_jobs_table(conn, backend):
        conn.execute(statement)
    now: Any = datetime.now(UTC)
    if backend == "sqlite":
        now = now.replace(tzinfo=None).isoformat(" ")
    elif backend == "mysql":
        now = now.replace(tzinfo=None)
    fixed = ("default", 0, "pending", 0, 0, now, now, now, *(None,) * (INSERT_WIDTH - 11))
    # Time-ordered ids as the library's, which append to the primary key's index.
    rows = [(job_id, "noop", f'{{"i":{i}}}', *fixed) for i, job_id in enumerate(new_ids(n))]
    start = time.perf_counter()
    if backend == "postgresql":
        copy_sql = f"COPY bench_ref ({INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
        with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
            copy.set_types(PostgresDialect.copy_types)
            for row in rows:
                copy.write_row(row)
    elif backend == "mysql":
        conn.begin()
        cur = conn.cursor()
        cur.executemany(_insert_row_sql(backend), rows)
        cur.close()
        conn.commit()
    else:
        per = 250  # rows per statement, as the library's batches
        varying = (0, 2)  # the id and the args: bound per row, the rest once, as it does
        conn.execute("BEGIN IMMEDIATE")
        for i in range(0, n, per):
            chunk = rows[i : i + per]
            sql = SQLiteDialect.insert_rows(len(chunk), varying).replace("sdj_jobs", "bench_ref")
            shared = [value for k, value in enumerate(chunk[0]) if k not in varying]
            conn.execute(sql, shared + [row[k] for row in chunk for k in varying])
        conn.execute("COMMIT")
    return time.perf_counter() - start


def _copy_of_jobs_table(conn: Any, backend: str) -> list[str]:
    """DDL for ``bench_ref``: ``sdj_jobs``'s columns and indexes under other names."""
    if backend == "postgresql":
        return ["CREATE TABLE IF NOT EXISTS bench_ref (LIKE sdj_jobs INCLUDING ALL)"]
    if backend == "mysql":
        return ["CREATE TABLE IF NOT EXISTS bench_ref LIKE sdj_jobs"]
    rows = conn.execute(
        "SELECT sql FROM sqlite_master WHERE tbl_name = 'sdj_jobs' AND sql IS NOT NULL"
        " AND type IN ('table', 'index')"  # as PostgreSQL's LIKE: no triggers
        " ORDER BY type DESC"  # the table before its indexes
    ).fetchall()
    return [
        re.sub(r"^CREATE (UNIQUE )?(TABLE|INDEX) ", r"CREATE \1\2 IF NOT EXISTS ", row[0]).replace(
            "sdj_jobs", "bench_ref"
        )
        for row in rows
    ]


# The backend's natural single-row claim, on the same partial index as the worker's.
_CLAIM = {
    "postgresql": """UPDATE sdj_jobs SET status = 'running', attempt = attempt + 1,
            locked_by = %(worker)s, heartbeat_at = %(now)s, started_at = %(now)s,
            updated_at = %(now)s
        WHERE id = (
            SELECT id FROM sdj_jobs
            WHERE queue = 'default' AND status IN ('pending', 'retrying') AND run_at <= %(now)s
            ORDER BY priority DESC, run_at, seq
            LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING id, type, args, attempt""",
    "sqlite": """UPDATE sdj_jobs SET status = 'running', attempt = attempt + 1,
            locked_by = :worker, heartbeat_at = :now, started_at = :now, updated_at = :now
        WHERE id = (
            SELECT id FROM sdj_jobs
            WHERE queue = 'default' AND status IN ('pending', 'retrying') AND run_at <= :now
            ORDER BY priority DESC, run_at, rowid
            LIMIT 1)
        RETURNING id, type, args, attempt""",
    # No UPDATE ... RETURNING: the locking read returns the row, which no one else can
    # change until the transaction ends, so the UPDATE needs no read-back.
    "mysql": """SELECT id, type, args, attempt FROM sdj_jobs
        WHERE queue = 'default' AND status IN ('pending', 'retrying') AND run_at <= %(now)s
        ORDER BY priority DESC, run_at, seq
        LIMIT 1 FOR UPDATE SKIP LOCKED""",
}
_TAKE_MYSQL = """UPDATE sdj_jobs SET status = 'running', attempt = attempt + 1,
        locked_by = %(worker)s, heartbeat_at = %(now)s, started_at = %(now)s,
        updated_at = %(now)s
    WHERE id = %(id)s"""
_COMPLETE = {
    "postgresql": """UPDATE sdj_jobs SET status = 'completed', result = NULL,
            completed_at = %(now)s, updated_at = %(now)s, locked_by = NULL, heartbeat_at = NULL
        WHERE id = %(id)s AND status = 'running'""",
    "sqlite": """UPDATE sdj_jobs SET status = 'completed', result = NULL,
            completed_at = :now, updated_at = :now, locked_by = NULL, heartbeat_at = NULL
        WHERE id = :id AND status = 'running'""",
    "mysql": """UPDATE sdj_jobs SET status = 'completed', result = NULL,
            completed_at = %(now)s, updated_at = %(now)s, locked_by = NULL, heartbeat_at = NULL
        WHERE id = %(id)s AND status = 'running'""",
}

_WARM_UP = 20


def claim_complete_rate(url: str, n: int) -> float:
    """Jobs/s of a bare claim-one, commit, complete-it, commit loop over ``n`` pending jobs.

    ``url`` is a fresh migrated database (the real ``sdj_jobs`` table and indexes),
    filled server-side first. SQLite claims in a ``BEGIN IMMEDIATE`` transaction, as
    the library does; PostgreSQL's claim is one autocommitted statement; MySQL's is a
    transaction of a ``SELECT ... FOR UPDATE SKIP LOCKED`` and an ``UPDATE`` of that id.
    The completion is one autocommitted UPDATE everywhere.
    """
    backend = backend_of(url)
    fill_pending(url, n + _WARM_UP)
    storage = jobs.SQLStorage(url)
    time_param = storage.dialect.time_param
    storage.close()
    claim, complete = _CLAIM[backend], _COMPLETE[backend]
    with connect(url) as conn:
        cur = conn.cursor()

        def one() -> None:
            now = time_param(datetime.now(UTC))
            if backend == "sqlite":
                cur.execute("BEGIN IMMEDIATE")
            elif backend == "mysql":
                conn.begin()
            cur.execute(claim, {"worker": "bench", "now": now})
            row = cur.fetchall()[0]
            if backend == "sqlite":
                cur.execute("COMMIT")
            elif backend == "mysql":
                cur.execute(_TAKE_MYSQL, {"worker": "bench", "now": now, "id": row[0]})
                conn.commit()
            cur.execute(complete, {"id": row[0], "now": now})

        for _ in range(_WARM_UP):
            one()
        start = time.perf_counter()
        for _ in range(n):
            one()
        elapsed = time.perf_counter() - start
        cur.close()
    return n / elapsed
