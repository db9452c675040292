"""SQLite: the dialect, its statements, connection set-up, group commit and file watcher.

Writes serialise on the database lock, so writers take it up front (``BEGIN
IMMEDIATE``) and this process's writers queue on a lock of their own. Timestamps are
stored as fixed-width ISO text in UTC, which sorts chronologically and stays readable in
the ``sqlite3`` shell.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool

from .dialects import (
    CHECKPOINT_COLUMNS,
    INSERT_COLUMNS,
    INSERT_WIDTH,
    JOB_COLUMNS,
    SCHEDULE_COLUMNS,
    WORKER_COLUMNS,
    Dialect,
    GroupCommit,
    utc,
)
from .notify import ListenerThread, Notify

if TYPE_CHECKING:
    from ..job import Job
    from .protocol import Listener
    from .sql import SQLStorage

__all__ = ["SQLiteDialect", "SQLiteWatcher", "full_sync"]

BUSY_TIMEOUT_MS = 30_000

# -- connections ----------------------------------------------------------------------


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # The busy timeout makes writers from other processes wait for the lock instead
        # of failing; WAL lets readers run beside the single writer.
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _use_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


#: How long (ms) one try at the write lock waits inside SQLite on the storage's own
#: connections, before ``_wait_for_lock`` tries again.
LOCK_POLL_MS = 1
#: How long a storage's write that takes many transactions in a row (a prune) pauses
#: between them: longer than a waiting writer's poll, so that it gets its turn.
WRITER_PAUSE = 0.002


def _wait_for_lock(cur: Any, sql: str, params: Any, exc: BaseException) -> None:
    """Run ``sql`` again every millisecond while another process holds the write lock
    (``exc``, the first try's error, said so), up to the busy timeout.

    SQLite's own busy handler sleeps ever longer between tries (up to 100 ms each), so
    a process writing transaction after transaction (a prune) kept a waiting worker out
    for seconds; a writer that tries every millisecond gets the lock at the other's
    next pause. Only a statement outside a transaction is tried again: one that failed
    there has changed nothing. A try that SQLite refused without waiting is followed by
    the rest of a poll's sleep, so that the loop never spins.
    """
    poll = LOCK_POLL_MS / 1000
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    tried = 0.0  # the last try began long enough ago: no sleep before the first
    while True:
        busy = _primary_code(exc) == sqlite3.SQLITE_BUSY
        if not busy or cur.connection.in_transaction or time.monotonic() > deadline:
            raise exc
        if (rest := tried + poll - time.monotonic()) > 0:
            time.sleep(rest)
        tried = time.monotonic()
        try:
            cur.execute(sql, params)
            return
        except sqlite3.OperationalError as again:
            exc = again


def full_sync(dbapi_conn: Any, _record: Any) -> None:
    """Make every commit reach the disk before it returns (``synchronous=FULL``)."""
    # Whatever default this SQLite was built with: a committed job survives a power cut.
    # An engine a user passes in keeps the user's choice (see docs/guarantees.md,
    # "Durability settings").
    dbapi_conn.execute("PRAGMA synchronous=FULL")


def _use_wal(cur: Any) -> None:
    # Switching a database to WAL (once: the mode is stored in the file) needs a lock that
    # SQLite will not wait for while another connection holds one, as when several
    # processes open a fresh database at once: it fails at once with "database is locked".
    # Retry within the busy timeout, as a waiting writer would.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.001
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _chunk_size() -> int:
    # One statement stores a chunk; its parameters must stay under SQLite's limit on
    # bound variables (999 by default before 3.32).
    limit = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return min(250, limit // INSERT_WIDTH)


# -- statements -----------------------------------------------------------------------

_SQLITE_MIGRATION_1 = (
    """CREATE TABLE sdj_jobs (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        args TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL,
        last_error TEXT,
        run_at TEXT NOT NULL,
        started_at TEXT,
        completed_at TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        result TEXT,
        backoff TEXT,
        locked_by TEXT,
        heartbeat_at TEXT
    )""",
    # Serves the claim: the due jobs of one queue in dequeue order, and nothing else.
    """CREATE INDEX sdj_jobs_dequeue ON sdj_jobs (queue, priority DESC, run_at)
        WHERE status IN ('pending', 'retrying')""",
    "CREATE INDEX sdj_jobs_running ON sdj_jobs (locked_by) WHERE status = 'running'",
    "CREATE INDEX sdj_jobs_status ON sdj_jobs (status, created_at)",
    """CREATE TABLE sdj_checkpoints (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL,
        scope TEXT NOT NULL DEFAULT '',
        call_index INTEGER NOT NULL,
        call_type TEXT NOT NULL,
        result TEXT,
        error TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (job_id, scope, call_index)
    )""",
    """CREATE TABLE sdj_workers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        queues TEXT NOT NULL,
        types TEXT NOT NULL,
        started_at TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL
    )""",
)


_SQLITE_MIGRATION_2 = (
    # Deduplicates enqueues such as a schedule's fire times; most jobs have no key.
    "ALTER TABLE sdj_jobs ADD COLUMN unique_key TEXT",
    """CREATE UNIQUE INDEX sdj_jobs_unique_key ON sdj_jobs (unique_key)
        WHERE unique_key IS NOT NULL""",
    """CREATE TABLE sdj_schedules (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        queue TEXT NOT NULL,
        last_fire_at TEXT,
        next_fire_at TEXT,
        updated_at TEXT NOT NULL
    )""",
)

# Data that travels with a job for instruments, such as a trace context (JSON).
_SQLITE_MIGRATION_3 = ("ALTER TABLE sdj_jobs ADD COLUMN meta TEXT",)

# The fencing token (one more per claim, never reset) and each lock's own expiry, on the
# database's clock. A running job without an expiry was claimed by an older release:
# the reapers give it the default lock timeout from its last heartbeat.
_SQLITE_MIGRATION_4 = (
    "ALTER TABLE sdj_jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE sdj_jobs ADD COLUMN lock_expires_at TEXT",
)

# Each field means one thing: completed_at only for completed jobs, finished_at for
# any end, finished_by names the worker that stored the latest outcome (locked_by only
# the running owner), and a failure keeps its traceback.
_SQLITE_MIGRATION_5 = (
    "ALTER TABLE sdj_jobs ADD COLUMN finished_at TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN finished_by TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN traceback TEXT",
    "UPDATE sdj_jobs SET finished_at = completed_at WHERE status IN ('completed', 'failed')",
    "UPDATE sdj_jobs SET completed_at = NULL WHERE status = 'failed'",
    """UPDATE sdj_jobs SET finished_by = locked_by, locked_by = NULL
        WHERE status <> 'running' AND locked_by IS NOT NULL""",
)

# Workflows that wait: a job's parent, its progress, and what a waiting job waits for
# and until when. The waiting index serves the workers' look for the next due wait (and
# holds waiting jobs only); the parent index, the listing of a job's children.
_SQLITE_MIGRATION_6 = (
    "ALTER TABLE sdj_jobs ADD COLUMN parent_id TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN progress TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN wait_until TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN waiting_for TEXT",
    "CREATE INDEX sdj_jobs_waiting ON sdj_jobs (wait_until, queue) WHERE status = 'waiting'",
    "CREATE INDEX sdj_jobs_parent ON sdj_jobs (parent_id) WHERE parent_id IS NOT NULL",
    # Signals not yet consumed, FIFO per (job, name) by seq (AUTOINCREMENT: never reused,
    # so watchers see every new one). A consumed signal is deleted: its checkpoint keeps it.
    """CREATE TABLE sdj_signals (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload TEXT,
        created_at TEXT NOT NULL
    )""",
    "CREATE INDEX sdj_signals_pending ON sdj_signals (job_id, name, seq)",
)

# Fan-out (children): a child's parent_group names its parent's wait it counts in; a
# parent's wait_group names the wait it counts, with what is still left of it: children
# not finished, successes still needed, failures still tolerated. A child's outcome
# counts down its parent's row in the transaction that stores it (the parent's wait is
# decided when any reaches its end), so only rows with a parent pay.
_SQLITE_MIGRATION_7 = (
    "ALTER TABLE sdj_jobs ADD COLUMN parent_group TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN wait_group TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN children_left INTEGER",
    "ALTER TABLE sdj_jobs ADD COLUMN children_need INTEGER",
    "ALTER TABLE sdj_jobs ADD COLUMN children_spare INTEGER",
)

# Wake-ups of jobs due without an insert (a parent its children's outcome resumed):
# one row per queue whose counter each such transaction bumps, so that other processes'
# watchers see which queues to look at. The table never grows past the queues.
_SQLITE_MIGRATION_8 = (
    """CREATE TABLE sdj_wakes (
        queue TEXT PRIMARY KEY,
        seq INTEGER NOT NULL
    ) WITHOUT ROWID""",
)

# Job control: a job's tags, run timeout and the keys its concurrency cap and rate limit
# count it under; ``paused_from``, set while a pause of the job is asked for, is the
# status a resume gives back. Paused queues are rows, read by the claim itself.
_SQLITE_MIGRATION_9 = (
    "ALTER TABLE sdj_jobs ADD COLUMN tags TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN timeout_seconds REAL",
    "ALTER TABLE sdj_jobs ADD COLUMN concurrency_key TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN rate_key TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN paused_from TEXT",
    """CREATE TABLE sdj_queue_pauses (
        queue TEXT PRIMARY KEY,
        paused_at TEXT NOT NULL
    ) WITHOUT ROWID""",
)

# Concurrency caps and rate limits (``limits.py``): a row per limited job type (limit_key
# '') that its claims lock, holding the type's token bucket, and a row per rate key in
# use; the running index counts a type's running jobs (per concurrency key) for its cap.
_SQLITE_MIGRATION_10 = (
    """CREATE TABLE sdj_limits (
        type TEXT NOT NULL,
        limit_key TEXT NOT NULL DEFAULT '',
        tokens REAL,
        refilled_at TEXT NOT NULL,
        PRIMARY KEY (type, limit_key)
    ) WITHOUT ROWID""",
    """CREATE INDEX sdj_jobs_type_running ON sdj_jobs (type, concurrency_key)
        WHERE status = 'running'""",
)

# The release of the library each worker runs, for operators' views of a mixed fleet
# during a rolling upgrade ('' for workers of older releases).
_SQLITE_MIGRATION_11 = ("ALTER TABLE sdj_workers ADD COLUMN version TEXT NOT NULL DEFAULT ''",)

# Operations (``storage/search.py``, ``storage/retention.py``): a job's tags and scalar
# meta values as rows of a side table led by (kind, label, value, creation order), so a
# search by tag or meta reads one index range newest first; and each failed attempt of a
# job as a row of its history. Triggers write the labels in the enqueue's own statement
# (every way of enqueueing, one transaction); their WHEN spares jobs without tags or meta.
# Labels keep 200 characters (searches compare the same prefix).
_SQLITE_TAGS = """SELECT DISTINCT 't', substr(t.value, 1, 200), '', {job}.created_at,
        {job}.rowid, {job}.id FROM {source}json_each({job}.tags) AS t
    WHERE t.type = 'text'"""
_SQLITE_META = """SELECT 'm', substr(m.key, 1, 200), substr(CASE m.type WHEN 'text' THEN m.value
            WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE CAST(m.value AS TEXT) END,
            1, 200), {job}.created_at, {job}.rowid, {job}.id
        FROM {source}json_each({job}.meta) AS m
    WHERE m.type IN ('text', 'integer', 'true', 'false')"""
_SQLITE_LABEL = (
    "INSERT OR IGNORE INTO sdj_job_labels (kind, label, value, created, job_seq, job_id)"
)
_SQLITE_MIGRATION_12 = (
    """CREATE TABLE sdj_job_labels (
        kind TEXT NOT NULL,
        label TEXT NOT NULL,
        value TEXT NOT NULL,
        created TEXT NOT NULL,
        job_seq INTEGER NOT NULL,
        job_id TEXT NOT NULL,
        PRIMARY KEY (kind, label, value, created, job_seq)
    ) WITHOUT ROWID""",
    "CREATE INDEX sdj_job_labels_job ON sdj_job_labels (job_id)",
    f"""CREATE TRIGGER sdj_jobs_tags AFTER INSERT ON sdj_jobs WHEN NEW.tags IS NOT NULL BEGIN
        {_SQLITE_LABEL} {_SQLITE_TAGS.format(job="NEW", source="")};
    END""",
    f"""CREATE TRIGGER sdj_jobs_meta AFTER INSERT ON sdj_jobs WHEN NEW.meta IS NOT NULL BEGIN
        {_SQLITE_LABEL} {_SQLITE_META.format(job="NEW", source="")};
    END""",
    f"""{_SQLITE_LABEL} {_SQLITE_TAGS.format(job="j", source="sdj_jobs AS j, ")}
        UNION ALL {_SQLITE_META.format(job="j", source="sdj_jobs AS j, ")}""",
    """CREATE TABLE sdj_attempts (
        seq INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT,
        error TEXT,
        traceback TEXT,
        started_at TEXT,
        finished_at TEXT NOT NULL
    )""",
    "CREATE INDEX sdj_attempts_job ON sdj_attempts (job_id, seq)",
)

# Nothing here: PostgreSQL's migration 13 marks the jobs awaited by ``Queue.result``
# for its outcome trigger; this backend's waiters need no mark (SQLite watches the
# file; MySQL re-reads). The version keeps the backends' schema versions in step.
_SQLITE_MIGRATION_13: tuple[str, ...] = ()
# Nothing here: see postgres.py's migration 14.
_SQLITE_MIGRATION_14: tuple[str, ...] = ()

# Operations' statements (``search.py``, ``retention.py``), at the end of ``sql``.
_SQLITE_FINISHED = "('completed', 'failed', 'cancelled')"
_SQLITE_OPS = {
    # The failed run's row in its job's history, fenced like the fail it comes before.
    "record_attempt": """INSERT INTO sdj_attempts
            (job_id, attempt, worker, error, traceback, started_at, finished_at)
        SELECT id, attempt, locked_by, :error, :summary, started_at, :now FROM sdj_jobs
        WHERE id = :id AND status = 'running'
          AND (:worker IS NULL OR (locked_by = :worker AND fence = :fence))""",
    # A run taken back from a lost worker, before its reap (the same words as the reap's).
    "record_lost_attempt": """INSERT INTO sdj_attempts
            (job_id, attempt, worker, error, traceback, started_at, finished_at)
        SELECT id, attempt, locked_by, 'WorkerLost: worker ' || COALESCE(locked_by, '?') || :error,
            NULL, started_at, :now FROM sdj_jobs
        WHERE id = :id AND status = 'running' AND fence = :fence""",
    "attempts": """SELECT attempt, worker, error, traceback, started_at, finished_at
        FROM sdj_attempts WHERE job_id = :job_id ORDER BY seq""",
    # Finished jobs of one status past the cutoff, oldest first from a (created_at, id)
    # position, along the status index (finished_at >= created_at, so the created_at
    # range holds them all). A child whose parent has not finished stays: the parent
    # may still read its outcome.
    # Ordered as the status index is (jobs of one batch share created_at): each batch
    # goes on from where the last one stopped, however many share a time.
    "prunable": f"""SELECT id, created_at, rowid AS position FROM sdj_jobs AS j
        WHERE status = :status AND created_at < :cutoff AND finished_at < :cutoff
          AND created_at >= :after_at AND (created_at > :after_at OR rowid > :after)
          AND (parent_id IS NULL OR NOT EXISTS (SELECT 1 FROM sdj_jobs AS p
              WHERE p.id = j.parent_id AND p.status NOT IN {_SQLITE_FINISHED}))
        ORDER BY created_at, rowid LIMIT :limit""",
    "prune_checkpoints": """DELETE FROM sdj_checkpoints
        WHERE job_id IN (SELECT value FROM json_each(:ids))""",
    "prune_signals": "DELETE FROM sdj_signals WHERE job_id IN (SELECT value FROM json_each(:ids))",
    "prune_attempts": """DELETE FROM sdj_attempts
        WHERE job_id IN (SELECT value FROM json_each(:ids))""",
    "prune_labels": """DELETE FROM sdj_job_labels
        WHERE job_id IN (SELECT value FROM json_each(:ids))""",
    "prune_jobs": f"""DELETE FROM sdj_jobs WHERE id IN (SELECT value FROM json_each(:ids))
        AND status IN {_SQLITE_FINISHED}""",
}

# Searches and bulk retries (``search.py``), at the end of ``admin_sql``. A search by
# labels reads the labels' index newest first from the first label (the others and the
# job's own fields filter); ``labelled_also`` is written once per further label, its
# ``also_`` names numbered.
_SQLITE_SEARCH = {
    "created_after": " AND created_at >= :created_after",
    "created_before": " AND created_at < :created_before",
    "labelled_page": f"""SELECT {JOB_COLUMNS}, l.job_seq AS position
        FROM sdj_job_labels AS l JOIN sdj_jobs AS j ON j.id = l.job_id
        WHERE l.kind = :kind AND l.label = :label AND l.value = :value{{filters}}
        ORDER BY l.created {{order}}, l.job_seq {{order}} LIMIT :limit""",
    "labelled_status": " AND j.status = :status",
    "labelled_queue": " AND j.queue = :queue",
    "labelled_type": " AND j.type = :type",
    "labelled_older": " AND l.created <= :created_at"
    " AND (l.created < :created_at OR l.job_seq < :tie)",
    "labelled_newer": " AND l.created >= :created_at"
    " AND (l.created > :created_at OR l.job_seq > :tie)",
    "labelled_after": " AND l.created >= :created_after",
    "labelled_before": " AND l.created < :created_before",
    "labelled_also": """ AND EXISTS (SELECT 1 FROM sdj_job_labels AS also_l
        WHERE also_l.job_id = l.job_id AND also_l.kind = :also_kind
          AND also_l.label = :also_label AND also_l.value = :also_value)""",
    # Failed jobs to retry, oldest first from a (created_at, id) position, that failed
    # by :until (the start of the bulk retry: jobs failing again meanwhile are not taken).
    "failed_batch": """SELECT id, created_at, queue FROM sdj_jobs
        WHERE status = 'failed' AND created_at >= :after_at
          AND (created_at > :after_at OR id > :after_id) AND finished_at <= :until{filters}
        ORDER BY created_at, id LIMIT :limit""",
    "failed_since": " AND finished_at >= :since",
    "retry_failed": """UPDATE sdj_jobs SET status = 'pending', attempt = 0, run_at = :now,
            wait_until = NULL, completed_at = NULL, finished_at = NULL, finished_by = NULL,
            updated_at = :now
        WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'failed'""",
}

# SQLite has no server: every process using the file shares the host's clock, which is
# the database's clock. Times in the fixed-width text of ``time_param`` (milliseconds).
_SQLITE_CLOCK = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"
_SQLITE_EXPIRY = (
    "(strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.6f seconds', :lock_timeout)) || '000')"
)
_SQLITE_LEGACY_EXPIRY = (
    "(strftime('%Y-%m-%d %H:%M:%f', heartbeat_at, printf('%+.6f seconds', :lock_timeout)) || '000')"
)

# What every claim sets on the jobs it takes: a new run with a new fence and a lock;
# a job woken from a wait (wait_until set) resumes, so the same attempt goes on.
_SQLITE_CLAIMED = f"""status = 'running',
    attempt = CASE WHEN wait_until IS NULL THEN attempt + 1 ELSE attempt END,
    fence = fence + 1, lock_expires_at = {_SQLITE_EXPIRY},
    locked_by = :worker, heartbeat_at = :now, started_at = :now, updated_at = :now"""

# The statements of concurrency caps and rate limits (``limits.py``), in ``limits.STATEMENTS``
# order. The IMMEDIATE transaction of a claim holds the write lock: no row locks here.
# Candidates are read with the claim's own filter (keep them in step with ``claim``).
_SQLITE_LIMITS = {
    "lock_limit": f"""SELECT tokens, refilled_at, {_SQLITE_CLOCK} AS now FROM sdj_limits
        WHERE type = :type AND limit_key = ''""",
    "add_limit": f"""INSERT INTO sdj_limits (type, limit_key, tokens, refilled_at)
        VALUES (:type, '', NULL, {_SQLITE_CLOCK}) ON CONFLICT (type, limit_key) DO NOTHING""",
    # Served by the running index (sdj_jobs_type_running).
    "running": """SELECT concurrency_key AS limit_key, COUNT(*) AS running
        FROM sdj_jobs WHERE type = :type AND status = 'running' GROUP BY concurrency_key""",
    # A limited type's due jobs in dequeue order, but for keys at their limit and jobs
    # already picked (JSON lists; a NULL key is '').
    "limited_due": """SELECT id, priority, run_at, rowid AS dequeue_order,
            COALESCE(concurrency_key, '') AS concurrency_key, COALESCE(rate_key, '') AS rate_key
        FROM sdj_jobs
        WHERE queue = :queue AND status IN ('pending', 'retrying') AND run_at <= :now
          AND type = :type AND max_retries >= :min_retries
          AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = :queue)
          AND COALESCE(concurrency_key, '') NOT IN (SELECT value FROM json_each(:full_keys))
          AND COALESCE(rate_key, '') NOT IN (SELECT value FROM json_each(:empty_keys))
          AND id NOT IN (SELECT value FROM json_each(:picked))
        ORDER BY priority DESC, run_at, rowid LIMIT :limit""",
    # The plain claim's candidates, to merge with the limited ones in dequeue order.
    "plain_due": """SELECT id, priority, run_at, rowid AS dequeue_order FROM sdj_jobs
        WHERE queue = :queue AND status IN ('pending', 'retrying') AND run_at <= :now
          AND type NOT IN (SELECT value FROM json_each(:skip))
          AND max_retries >= :min_retries
          AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = :queue)
        ORDER BY priority DESC, run_at, rowid LIMIT :limit""",
    # The claim's update, of the jobs chosen (:ids, a JSON list), found by their ids
    # (the unary + keeps the planner off the status index).
    "claim_ids": f"""UPDATE sdj_jobs SET {_SQLITE_CLAIMED}
        WHERE id IN (SELECT value FROM json_each(:ids)) AND +status IN ('pending', 'retrying')
        RETURNING {JOB_COLUMNS}, rowid AS dequeue_order""",
    # A type's due jobs claimed by one statement, as ``claim`` claims (the claim of a
    # type without keys alone, up to the room its limits leave).
    "claim_type": f"""UPDATE sdj_jobs SET {_SQLITE_CLAIMED}
        WHERE id IN (
            SELECT id FROM sdj_jobs
            WHERE queue = :queue AND status IN ('pending', 'retrying') AND run_at <= :now
              AND type = :type AND max_retries >= :min_retries
              AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = :queue)
            ORDER BY priority DESC, run_at, rowid
            LIMIT :limit)
        RETURNING {JOB_COLUMNS}, rowid AS dequeue_order""",
    "buckets": """SELECT limit_key, tokens, refilled_at FROM sdj_limits
        WHERE type = :type AND limit_key IN (SELECT value FROM json_each(:keys))""",
    "save_bucket": """INSERT INTO sdj_limits (type, limit_key, tokens, refilled_at)
        VALUES (:type, :limit_key, :tokens, :refilled_at)
        ON CONFLICT (type, limit_key) DO UPDATE SET tokens = excluded.tokens,
            refilled_at = excluded.refilled_at""",
    # A rate key's bucket untouched for a whole window is full: as good as no row.
    "prune_buckets": """DELETE FROM sdj_limits
        WHERE type = :type AND limit_key <> '' AND refilled_at < :before""",
}

# The reads of ``queue.explain`` and ``sdj workers`` (``explain.py``), in
# ``explain.STATEMENTS`` order. Plain reads: they lock nothing a claim takes.
_SQLITE_EXPLAIN = {
    # A waiting parent's children not finished yet, counted down by their outcomes.
    "children_left": "SELECT children_left FROM sdj_jobs WHERE id = :id",
    # Due jobs before one in its queue's dequeue order (served by the dequeue index).
    "jobs_ahead": """SELECT COUNT(*) AS ahead FROM sdj_jobs AS a
        JOIN sdj_jobs AS j ON j.id = :id AND a.queue = j.queue
        WHERE a.status IN ('pending', 'retrying') AND a.run_at <= :now
          AND (a.priority > j.priority OR (a.priority = j.priority
            AND (a.run_at < j.run_at OR (a.run_at = j.run_at AND a.rowid < j.rowid))))""",
    "bucket": f"""SELECT tokens, refilled_at, {_SQLITE_CLOCK} AS now FROM sdj_limits
        WHERE type = :type AND limit_key = :key""",
    # Served by the running index.
    "running_by_worker": """SELECT locked_by AS worker, COUNT(*) AS running FROM sdj_jobs
        WHERE status = 'running' GROUP BY locked_by""",
}


# Result codes (the low byte of an extended code) that a later attempt may not meet:
# busy and locked (another writer), an I/O error, a full disk, a file that could not be
# opened, a WAL protocol race.
_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_TRANSIENT_TEXT = ("locked", "busy", "disk i/o", "disk is full", "unable to open")
# A file that cannot be opened, read or written (permissions, a read-only file system).
_UNAVAILABLE_CODES = frozenset(
    {sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH}
)


def _primary_code(error: BaseException) -> int | None:
    code = getattr(error, "sqlite_errorcode", None) if isinstance(error, sqlite3.Error) else None
    return None if code is None else code & 0xFF


class SQLiteDialect(Dialect):
    """SQLite: one writer at a time, so claims run in IMMEDIATE transactions; no
    notifications, so other processes' inserts are noticed by watching the file."""

    name = "sqlite"
    driver_module = "sqlite3"
    title = "SQLite"
    unavailable_verb = "open"
    unavailable_hint = (
        "Check that the file's directory exists and that this process may read and write"
        " both (a missing file is created, a missing directory is not)."
    )
    not_a_database_hint = (
        "Point the URL at a SQLite database file (a new name creates one), or move this file away."
    )
    migrations = (
        _SQLITE_MIGRATION_1,
        _SQLITE_MIGRATION_2,
        _SQLITE_MIGRATION_3,
        _SQLITE_MIGRATION_4,
        _SQLITE_MIGRATION_5,
        _SQLITE_MIGRATION_6,
        _SQLITE_MIGRATION_7,
        _SQLITE_MIGRATION_8,
        _SQLITE_MIGRATION_9,
        _SQLITE_MIGRATION_10,
        _SQLITE_MIGRATION_11,
        _SQLITE_MIGRATION_12,
        _SQLITE_MIGRATION_13,
        _SQLITE_MIGRATION_14,
    )
    autocommit = ("isolation_level", None)
    one_writer = True
    writer_pause = WRITER_PAUSE
    busy_errors = (sqlite3.OperationalError,)
    wait_for_lock = staticmethod(_wait_for_lock)
    insert_chunk = _chunk_size()

    @classmethod
    def database_file(cls, url: sa.URL) -> str | None:
        return None if url.database in (None, "", ":memory:") else url.database

    @staticmethod
    def transient(error: BaseException) -> bool | None:
        if not isinstance(error, sqlite3.Error):
            return None
        if not isinstance(error, sqlite3.OperationalError):
            return False
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None:
            return code & 0xFF in _TRANSIENT_CODES
        text = str(error).lower()
        return any(part in text for part in _TRANSIENT_TEXT)

    sql: ClassVar[dict[str, str]] = {
        "insert_job": f"INSERT INTO sdj_jobs ({INSERT_COLUMNS}) VALUES (:id, :type, :args,"
        " :queue, :priority, :status, 0, :max_retries, :run_at, :now, :now, :backoff, :meta,"
        " :parent_id, :parent_group, :unique_key, :tags, :timeout_seconds, :concurrency_key,"
        " :rate_key)",
        # A job enqueued in a process whose worker has a free slot starts out claimed.
        # Unless its queue is paused: no row then, and the job is stored unclaimed.
        "insert_claimed_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}, locked_by,
                heartbeat_at, started_at, fence, lock_expires_at)
            SELECT :id, :type, :args, :queue, :priority, 'running', 1, :max_retries, :run_at,
                :now, :now, :backoff, :meta, :parent_id, :parent_group, :unique_key, :tags,
                :timeout_seconds, :concurrency_key, :rate_key, :worker, :now, :now, 1,
                {_SQLITE_EXPIRY}
            WHERE NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = :queue)
            RETURNING id""",
        # SQLite has no SKIP LOCKED; the IMMEDIATE transaction around this makes the
        # select-and-update atomic, and rowid breaks ties in enqueue order.
        # Claims return the enqueue-order key last, to restore dequeue order in Python.
        # A job woken from a wait (wait_until set) resumes: the same attempt goes on.
        "claim": f"""UPDATE sdj_jobs SET {_SQLITE_CLAIMED}
            WHERE id IN (
                SELECT id FROM sdj_jobs
                WHERE queue = :queue AND status IN ('pending', 'retrying') AND run_at <= :now
                  AND type NOT IN (SELECT value FROM json_each(:skip))
                  AND max_retries >= :min_retries
                  AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = :queue)
                ORDER BY priority DESC, run_at, rowid
                LIMIT :limit)
            RETURNING {JOB_COLUMNS}, rowid AS dequeue_order""",
        "complete": """UPDATE sdj_jobs SET status = 'completed', result = :result,
            completed_at = :now, finished_at = :now, updated_at = :now, heartbeat_at = NULL,
            lock_expires_at = NULL, finished_by = locked_by, locked_by = NULL,
            last_error = NULL, traceback = NULL, wait_until = NULL
            WHERE id = :id AND status = 'running'
              AND (:worker IS NULL OR (locked_by = :worker AND fence = :fence))
            RETURNING id""",
        # A retry's claim is a new attempt: the resume marker (wait_until) goes.
        "fail": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NOT NULL AND :status = 'retrying'
                THEN 'paused'
                ELSE :status END,
            paused_from = CASE WHEN paused_from IS NOT NULL AND :status = 'retrying'
                THEN 'retrying' END, last_error = :error,
            traceback = :traceback, run_at = COALESCE(:run_at, run_at),
            finished_at = :finished_at, updated_at = :now, heartbeat_at = NULL,
            lock_expires_at = NULL, finished_by = locked_by, locked_by = NULL,
            wait_until = NULL
            WHERE id = :id AND status = 'running'
              AND (:worker IS NULL OR (locked_by = :worker AND fence = :fence))
            RETURNING id""",
        # The attempt stays; the lock goes, and the slot with it. run_at: the deadline,
        # for listings (the claim finds the job once woken, never while waiting).
        "suspend": """UPDATE sdj_jobs SET status = 'waiting', wait_until = :until,
            waiting_for = :waiting_for, run_at = COALESCE(:until, run_at), updated_at = :now,
            heartbeat_at = NULL, lock_expires_at = NULL, finished_by = locked_by,
            locked_by = NULL, wait_group = NULL
            WHERE id = :id AND status = 'running' AND locked_by = :worker AND fence = :fence
            RETURNING id""",
        # A resumed run given back unstarted is a due resume again (its claim took no
        # attempt, so none is given back).
        "release": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NOT NULL THEN 'paused'
                WHEN wait_until IS NOT NULL OR attempt <= 1 THEN 'pending' ELSE 'retrying' END,
            paused_from = CASE WHEN paused_from IS NULL THEN NULL
                WHEN wait_until IS NOT NULL OR attempt <= 1 THEN 'pending' ELSE 'retrying' END,
            attempt = CASE WHEN wait_until IS NULL THEN attempt - 1 ELSE attempt END,
            locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL, updated_at = :now
            WHERE id = :id AND status = 'running' AND locked_by = :worker AND fence = :fence""",
        # Outcomes move the run's owner to finished_by (reap and release clear it), so a
        # worker whose outcome write lost its reply can tell whether it was committed.
        "settled": """SELECT id, fence, status FROM sdj_jobs
            WHERE finished_by = :worker AND status <> 'running'
              AND id IN (SELECT value FROM json_each(:ids))""",
        "heartbeat_job": f"""UPDATE sdj_jobs SET heartbeat_at = :now,
                lock_expires_at = {_SQLITE_EXPIRY}
            WHERE id = :id AND status = 'running' AND locked_by = :worker""",
        # Only the jobs the worker knows it holds (:jobs, a JSON list; NULL for all): a job
        # whose claim committed but whose reply was lost must go stale and be taken back.
        "heartbeat_worker_jobs": f"""UPDATE sdj_jobs SET heartbeat_at = :now,
                lock_expires_at = {_SQLITE_EXPIRY}
            WHERE status = 'running' AND locked_by = :worker
              AND (:jobs IS NULL OR id IN (SELECT value FROM json_each(:jobs)))""",
        "upsert_worker": f"""INSERT INTO sdj_workers ({WORKER_COLUMNS})
            VALUES (:id, :host, :pid, :queues, :types, :now, :now, :version)
            ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                queues = excluded.queues, types = excluded.types, version = excluded.version""",
        "delete_worker": "DELETE FROM sdj_workers WHERE id = :id",
        "live_workers": f"SELECT {WORKER_COLUMNS} FROM sdj_workers WHERE heartbeat_at >= :cutoff",
        "prune_workers": "DELETE FROM sdj_workers WHERE heartbeat_at < :cutoff",
        # Take-backs select the runs to take back, then update each (fenced) with the
        # retry time its backoff gives, computed in Python: the IMMEDIATE transaction
        # around them holds the write lock throughout.
        "expired_locks": f"""SELECT id, fence, attempt, max_retries, backoff, type
            FROM sdj_jobs WHERE status = 'running'
              AND COALESCE(lock_expires_at, {_SQLITE_LEGACY_EXPIRY}) < {_SQLITE_CLOCK}
            LIMIT :limit""",
        "stale_locks": """SELECT id, fence, attempt, max_retries, backoff, type
            FROM sdj_jobs WHERE status = 'running' AND heartbeat_at < :cutoff
            LIMIT :limit""",
        "reap": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NOT NULL AND :status = 'retrying'
                THEN 'paused'
                ELSE :status END,
            paused_from = CASE WHEN paused_from IS NOT NULL AND :status = 'retrying'
                THEN 'retrying' END, finished_at = :finished_at,
            finished_by = NULL, traceback = NULL,
            last_error = 'WorkerLost: worker ' || COALESCE(locked_by, '?') || :error,
            run_at = COALESCE(:run_at, run_at), updated_at = :now, wait_until = NULL,
            locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL
            WHERE id = :id AND status = 'running' AND fence = :fence""",
        "get_job": f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id = :id",
        "jobs_by_status": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE status = :status
            ORDER BY created_at, rowid LIMIT :limit""",
        "due_jobs": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= :now
            ORDER BY priority DESC, run_at, rowid LIMIT :limit""",
        # Waits end by the waiting index (waiting jobs only, by deadline): the next
        # deadline of the worker's queues, then the due ones, woken into due resumes.
        "next_wake": """SELECT queue, wait_until FROM sdj_jobs
            WHERE status = 'waiting' AND wait_until IS NOT NULL
              AND queue IN (SELECT value FROM json_each(:queues))
            ORDER BY wait_until LIMIT 1""",
        # The due waits ended, in one statement: each job becomes a due resume (held,
        # if it was paused meanwhile). wait_until stays set: it tells the claim that this
        # run resumes (no new attempt).
        "due_waiting": """UPDATE sdj_jobs SET
                status = CASE WHEN paused_from IS NULL THEN 'pending' ELSE 'paused' END,
                paused_from = CASE WHEN paused_from IS NULL THEN NULL ELSE 'pending' END,
                run_at = COALESCE(wait_until, :now),
                wait_until = COALESCE(wait_until, :now), waiting_for = NULL, updated_at = :now
            WHERE id IN (SELECT id FROM sdj_jobs
                WHERE status = 'waiting' AND wait_until <= :now
                  AND queue IN (SELECT value FROM json_each(:queues))
                ORDER BY wait_until LIMIT :limit)
            RETURNING id, queue""",
        # Fenced like outcomes: only the running run may report its progress.
        "set_progress": """UPDATE sdj_jobs SET progress = :progress, updated_at = :now
            WHERE id = :id AND status = 'running' AND locked_by = :worker AND fence = :fence
            RETURNING id""",
        # Signals serialise on their job's row (here, on the IMMEDIATE transaction around
        # them): a signal and a suspension that waits for it never miss each other.
        "lock_job": "SELECT id FROM sdj_jobs WHERE id = :id",
        # Stored only for a job that exists; returns what the wake-up needs of the job.
        "insert_signal": """INSERT INTO sdj_signals (job_id, name, payload, created_at)
            SELECT id, :name, :payload, :now FROM sdj_jobs WHERE id = :job_id
            RETURNING job_id AS id,
                (SELECT queue FROM sdj_jobs WHERE id = job_id) AS queue,
                (SELECT type FROM sdj_jobs WHERE id = job_id) AS type,
                (SELECT status FROM sdj_jobs WHERE id = job_id) AS status,
                (SELECT waiting_for FROM sdj_jobs WHERE id = job_id) AS waiting_for""",
        # A job waiting for this signal resumes now (wait_until: the resume marker).
        "wake_signalled": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NULL THEN 'pending' ELSE 'paused' END,
            paused_from = CASE WHEN paused_from IS NULL THEN NULL ELSE 'pending' END,
            run_at = :now,
            wait_until = :now, waiting_for = NULL, updated_at = :now
            WHERE id = :id AND status = 'waiting' AND waiting_for = :waiting_for
            RETURNING queue""",
        # wake_signalled and the claim of the woken run in one: the resume goes on with
        # the same attempt. Not while the job or its queue is paused.
        "claim_signalled": f"""UPDATE sdj_jobs SET status = 'running', fence = fence + 1,
                lock_expires_at = {_SQLITE_EXPIRY}, locked_by = :worker, heartbeat_at = :now,
                started_at = :now, updated_at = :now, run_at = :now, wait_until = :now,
                waiting_for = NULL
            WHERE id = :id AND status = 'waiting' AND waiting_for = :waiting_for
              AND paused_from IS NULL
              AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses AS p WHERE p.queue = sdj_jobs.queue)
            RETURNING {JOB_COLUMNS}""",
        # The running run, locked for an observation of its signals (fenced).
        "lock_run": """SELECT id FROM sdj_jobs
            WHERE id = :id AND status = 'running' AND locked_by = :worker AND fence = :fence""",
        "pending_signals": """SELECT seq, payload FROM sdj_signals
            WHERE job_id = :job_id AND name = :name ORDER BY seq LIMIT :limit""",
        "delete_signals": """DELETE FROM sdj_signals
            WHERE job_id = :job_id AND name = :name AND seq <= :seq""",
        # A child's outcome counts down its parent's wait (the one it counts in, if the
        # parent still counts it), in the outcome's transaction. :ok is 1 or 0.
        "settle_child": """UPDATE sdj_jobs SET children_left = children_left - 1,
                children_need = children_need - :ok, children_spare = children_spare - (1 - :ok)
            WHERE id = (SELECT parent_id FROM sdj_jobs WHERE id = :id)
              AND wait_group = (SELECT parent_group FROM sdj_jobs WHERE id = :id)
            RETURNING id, queue, status, wait_group, children_left, children_need,
                children_spare""",
        # Completed children of one parent (``ids``, all children of ``parent``), counted
        # down together: once per batch. Found by their ids alone (see PostgreSQL's).
        "settle_children": """UPDATE sdj_jobs SET children_left = children_left - s.n,
                children_need = children_need - s.n
            FROM (SELECT c.parent_group, COUNT(*) AS n FROM json_each(:ids) AS j
                JOIN sdj_jobs AS c ON c.id = j.value GROUP BY c.parent_group) AS s
            WHERE sdj_jobs.id = :parent AND sdj_jobs.wait_group = s.parent_group
            RETURNING id, queue, status, wait_group, children_left, children_need,
                children_spare""",
        # A decided wait resumes its parent now (wait_until: the resume marker), once:
        # the wait is no longer counted.
        "wake_parent": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NULL THEN 'pending' ELSE 'paused' END,
            paused_from = CASE WHEN paused_from IS NULL THEN NULL ELSE 'pending' END,
            run_at = :now,
                wait_until = :now, waiting_for = NULL, wait_group = NULL, updated_at = :now
            WHERE id = :id AND status = 'waiting' AND wait_group = :group
            RETURNING queue""",
        "cancellable_children": """SELECT id FROM sdj_jobs
            WHERE parent_id = :parent AND parent_group = :group
              AND status NOT IN ('completed', 'failed', 'cancelled')""",
        # Cancelled jobs, with their subtrees: see SQLStorage.cancel. The run of a running
        # one is fenced out (its outcome matches no running row) and told to stop.
        "cancellable": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE id IN (SELECT value FROM json_each(:ids))
              AND status NOT IN ('completed', 'failed', 'cancelled')""",
        "cancel_jobs": """UPDATE sdj_jobs SET status = 'cancelled', last_error = :error,
                traceback = NULL, finished_at = :now, finished_by = locked_by,
                locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL,
                updated_at = :now, wait_until = NULL, waiting_for = NULL, wait_group = NULL,
                paused_from = NULL
            WHERE id IN (SELECT value FROM json_each(:ids))
              AND status NOT IN ('completed', 'failed', 'cancelled')""",
        "children_of": """SELECT id FROM sdj_jobs
            WHERE parent_id IN (SELECT value FROM json_each(:ids))""",
        "cancelled_among": """SELECT id FROM sdj_jobs
            WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'cancelled'""",
        # A pause of a job that is not running holds it at once ('paused', the status to
        # give back kept); of a running or waiting one, once it would run again (the
        # statements that make a job due give 'paused' instead while paused_from is set).
        "pause_job": """UPDATE sdj_jobs SET paused_from = status,
                status = CASE WHEN status IN ('pending', 'retrying') THEN 'paused' ELSE status END,
                updated_at = :now
            WHERE id = :id AND paused_from IS NULL
              AND status IN ('pending', 'retrying', 'running', 'waiting')
            RETURNING id""",
        "resume_job": """UPDATE sdj_jobs SET
                status = CASE WHEN status = 'paused' THEN paused_from ELSE status END,
                paused_from = NULL, updated_at = :now
            WHERE id = :id AND paused_from IS NOT NULL
            RETURNING queue, status""",
        "pause_queue": """INSERT INTO sdj_queue_pauses (queue, paused_at) VALUES (:queue, :now)
            ON CONFLICT (queue) DO NOTHING""",
        "resume_queue": "DELETE FROM sdj_queue_pauses WHERE queue = :queue",
        "paused_queues": "SELECT queue, paused_at FROM sdj_queue_pauses ORDER BY queue",
        "start_children_wait": """UPDATE sdj_jobs SET wait_group = :group,
                children_left = :left, children_need = :need, children_spare = :spare,
                waiting_for = :waiting_for
            WHERE id = :id""",
        # wait_for: the children waited for count in this wait from now on.
        "regroup_children": """UPDATE sdj_jobs SET parent_group = :group
            WHERE parent_id = :parent AND id IN (SELECT value FROM json_each(:ids))""",
        "count_children": """SELECT
                COALESCE(SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), 0) AS ok,
                COALESCE(SUM(CASE WHEN status IN ('failed', 'cancelled') THEN 1 ELSE 0 END), 0)
                    AS failed
            FROM sdj_jobs WHERE parent_id = :parent AND parent_group = :group""",
        "children_outcomes": """SELECT id, type, status, result, last_error, finished_at, parent_id
            FROM sdj_jobs WHERE id IN (SELECT value FROM json_each(:ids))""",
        # The children of a wait group, but those completed with no result: these only
        # count, in the row without an id (see SQLStorage.group_outcomes).
        "group_outcomes": """SELECT id, type, status, result, last_error, finished_at,
                parent_id, 1 AS n
            FROM sdj_jobs WHERE parent_id = :parent AND parent_group = :group
              AND (status <> 'completed' OR result IS NOT NULL)
            UNION ALL
            SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, COUNT(*) FROM sdj_jobs
            WHERE parent_id = :parent AND parent_group = :group
              AND status = 'completed' AND result IS NULL""",
        # Parents whose wait was decided but who still wait (a wake-up lost): workers
        # resume them.
        "decided_parents": """SELECT id, queue, wait_group, children_spare FROM sdj_jobs
            WHERE status = 'waiting' AND wait_group IS NOT NULL
              AND queue IN (SELECT value FROM json_each(:queues))
              AND (children_left <= 0 OR children_need <= 0 OR children_spare < 0)
            LIMIT :limit""",
        # Fenced like completions: only the run holding the job's lock may add steps.
        "save_checkpoint": f"""INSERT INTO sdj_checkpoints ({CHECKPOINT_COLUMNS})
            SELECT :id, :job_id, :call_index, :call_type, :result, :error, :now, :scope
            WHERE :worker IS NULL OR EXISTS (
                SELECT 1 FROM sdj_jobs WHERE id = :job_id AND status = 'running'
                  AND locked_by = :worker AND fence = :fence)
            ON CONFLICT (job_id, scope, call_index)
                DO UPDATE SET call_type = sdj_checkpoints.call_type
            RETURNING id""",
        "get_checkpoints": f"""SELECT {CHECKPOINT_COLUMNS} FROM sdj_checkpoints
            WHERE job_id = :job_id ORDER BY scope, call_index""",
        "delete_checkpoints": "DELETE FROM sdj_checkpoints WHERE job_id = :job_id",
        "schema_versions": "SELECT version FROM sdj_schema_version",
        "record_version": "INSERT INTO sdj_schema_version (version, applied_at)"
        " VALUES (:version, :now)",
        # For metrics: served by the dequeue index, which holds only waiting jobs.
        "queue_depths": """SELECT queue, COUNT(*) AS due, MIN(run_at) AS oldest_run_at FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= :now GROUP BY queue""",
        # Served by the index of waiting jobs (sdj_jobs_waiting), not a scan of the table.
        "waiting_counts": """SELECT queue, COUNT(*) AS waiting FROM sdj_jobs
            WHERE status = 'waiting' GROUP BY queue""",
        # The WHERE names the partial unique index as the conflict target.
        "insert_unique_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS})
            VALUES (:id, :type, :args, :queue, :priority, :status, 0, :max_retries, :run_at,
                :now, :now, :backoff, :meta, :parent_id, :parent_group, :unique_key, :tags,
                :timeout_seconds, :concurrency_key, :rate_key)
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
            RETURNING id""",
        # The job holding a unique key (the write transaction keeps it as read): a
        # producer that finds it finished gives its key up before storing the new job.
        "unique_holder": """SELECT id, status, created_at FROM sdj_jobs
            WHERE unique_key = :key""",
        "release_unique": """UPDATE sdj_jobs SET unique_key = NULL
            WHERE id = :id AND unique_key = :key""",
        # The row only moves forward, so a slow scheduler cannot set it back; a changed
        # spec starts the schedule afresh.
        "upsert_schedule": f"""INSERT INTO sdj_schedules ({SCHEDULE_COLUMNS})
            VALUES (:name, :spec, :queue, :last_fire_at, :next_fire_at, :now)
            ON CONFLICT (name) DO UPDATE SET
                last_fire_at = CASE WHEN sdj_schedules.spec = excluded.spec
                    THEN COALESCE(excluded.last_fire_at, sdj_schedules.last_fire_at)
                    ELSE excluded.last_fire_at END,
                spec = excluded.spec, queue = excluded.queue,
                next_fire_at = excluded.next_fire_at, updated_at = excluded.updated_at
            WHERE sdj_schedules.spec <> excluded.spec OR sdj_schedules.next_fire_at IS NULL
                OR excluded.next_fire_at >= sdj_schedules.next_fire_at""",
        "list_schedules": f"SELECT {SCHEDULE_COLUMNS} FROM sdj_schedules ORDER BY name",
        **_SQLITE_OPS,
    }
    create_version_table = """CREATE TABLE IF NOT EXISTS sdj_schema_version (
        version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"""

    admin_sql: ClassVar[dict[str, str]] = {
        "jobs_page": f"""SELECT {JOB_COLUMNS}, rowid AS position FROM sdj_jobs
            WHERE status = :status{{filters}}
            ORDER BY created_at {{order}}, rowid {{order}} LIMIT :limit""",
        # The plain range comes first so the index scan starts at the cursor.
        "older_than": " AND created_at <= :created_at"
        " AND (created_at < :created_at OR rowid < :tie)",
        "newer_than": " AND created_at >= :created_at"
        " AND (created_at > :created_at OR rowid > :tie)",
        "by_queue": " AND queue = :queue",
        "by_type": " AND type = :type",
        "counts": "SELECT queue, status, COUNT(*) AS jobs FROM sdj_jobs GROUP BY queue, status",
        # Times are fixed-width text, so the first 16 characters name the minute.
        "throughput": """SELECT substr(finished_at, 1, 16) AS minute, status, COUNT(*) AS jobs
            FROM sdj_jobs
            WHERE finished_at >= :since AND status IN ('completed', 'failed')
            GROUP BY 1, 2""",
        "oldest_due": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= :now
            ORDER BY run_at, rowid LIMIT 1""",
        "running_jobs": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE status = 'running'
            ORDER BY started_at LIMIT :limit""",
        # :ids is a JSON array (one parameter however many ids).
        "jobs_by_id": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE id IN (SELECT value FROM json_each(:ids))""",
        # The parent's index (sdj_jobs_parent) serves both.
        "children_counts": """SELECT status, COUNT(*) AS jobs FROM sdj_jobs
            WHERE parent_id = :parent GROUP BY status""",
        "children": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE parent_id = :parent
            ORDER BY created_at, rowid LIMIT :limit""",
        # A fresh start: full retry budget; checkpoints stay, so a workflow resumes. The
        # fence stays: the next claim takes a new one, so a stale run's writes stay rejected.
        "retry": f"""UPDATE sdj_jobs SET status = 'pending', attempt = 0, run_at = :now,
                wait_until = NULL, completed_at = NULL, finished_at = NULL, finished_by = NULL,
                updated_at = :now
            WHERE id = :id AND status IN ('failed', 'retrying', 'cancelled')
            RETURNING {JOB_COLUMNS}""",
        # A running job only with :force: its worker would go on running it.
        "delete_job": f"""DELETE FROM sdj_jobs WHERE id = :id AND (:force OR status <> 'running')
            RETURNING {JOB_COLUMNS}""",
        "delete_checkpoints": "DELETE FROM sdj_checkpoints WHERE job_id = :id",
        **_SQLITE_SEARCH,
    }
    limits_sql: ClassVar[dict[str, str]] = _SQLITE_LIMITS
    explain_sql: ClassVar[dict[str, str]] = _SQLITE_EXPLAIN

    # -- engines and connections --------------------------------------------------------

    @classmethod
    def in_memory(cls, url: sa.URL) -> bool:
        return url.database in (None, "", ":memory:")

    @classmethod
    def create_engine(cls, url: sa.URL) -> sa.Engine:
        if cls.in_memory(url):
            # One shared connection: every thread must see the same in-memory database.
            return sa.create_engine(
                url,
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
                isolation_level="AUTOCOMMIT",
            )
        # The engine keeps SQLAlchemy's usual transactions, so a user's
        # ``engine.begin()`` around ``enqueue(..., connection=conn)`` really commits or
        # rolls back together; the storage's own statements run in autocommit.
        return sa.create_engine(
            url,
            pool_size=8,
            max_overflow=32,
            connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        )

    def configure(self, engine: sa.Engine, *, owned: bool) -> None:
        sa.event.listen(engine, "connect", _on_connect)
        if owned:
            sa.event.listen(engine, "connect", full_sync)

    def enter_autocommit(self, conn: Any) -> Any:
        # While the storage keeps the connection: short waits inside SQLite, and tries
        # again from Python (see _wait_for_lock).
        timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout={LOCK_POLL_MS}")
        return super().enter_autocommit(conn), timeout

    def restore_autocommit(self, conn: Any, was: Any) -> None:
        isolation, timeout = was
        conn.execute(f"PRAGMA busy_timeout={int(timeout)}")
        super().restore_autocommit(conn, isolation)

    def begin(
        self, raw: Any, cur: Any, *, write: bool, atomic: bool
    ) -> contextlib.AbstractContextManager[Any] | None:
        if write:
            # Taking the write lock up front avoids the deadlock of two deferred
            # transactions that both read and then try to write.
            try:
                cur.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                _wait_for_lock(cur, "BEGIN IMMEDIATE", (), exc)
        return None

    def group_commit(self, storage: SQLStorage) -> GroupCommit | None:
        return _GroupCommit(storage)

    def missing_table(self, error: BaseException) -> bool:
        # SQLite gives this no error code of its own, only the message.
        return isinstance(error, sqlite3.OperationalError) and "no such table" in str(error)

    def unavailable(self, error: BaseException) -> bool:
        return _primary_code(error) in _UNAVAILABLE_CODES

    def not_a_database(self, error: BaseException) -> bool:
        return _primary_code(error) in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)

    # The migration lock is the write lock: migrations run in an IMMEDIATE transaction.

    # -- writes -------------------------------------------------------------------------

    @staticmethod
    @functools.cache
    def insert_rows(count: int, varying: tuple[int, ...]) -> str:
        """An INSERT of ``count`` rows bound positionally, where only the columns at the
        positions ``varying`` differ from row to row; each other column is bound once.
        One statement for many rows steps once, where ``executemany`` steps and resets
        once per row; and binding every value of a batch's rows (mostly the same type,
        queue, times and parent) costs SQLite twice the insert itself."""
        picks = iter(range(1, len(varying) + 1))
        values = [f"column{next(picks)}" if k in varying else "?" for k in range(INSERT_WIDTH)]
        row = f"({', '.join(['?'] * len(varying))})"
        return (
            f"INSERT INTO sdj_jobs ({INSERT_COLUMNS}) SELECT {', '.join(values)}"
            f" FROM (VALUES {', '.join([row] * count)})"
        )

    def insert_in(
        self, storage: SQLStorage, cur: Any, chunks: Iterable[list[Job]], now: datetime
    ) -> list[str]:
        ids: list[str] = []
        for chunk in chunks:
            rows = storage._stamp(chunk, now)
            columns = list(zip(*rows, strict=True))
            # The id (column 0) is every row's own, even in a chunk of one row.
            varying = (0, *(k for k in range(1, INSERT_WIDTH) if _varies(columns[k])))
            params = [c[0] for k, c in enumerate(columns) if k not in varying]
            each_row = zip(*(columns[k] for k in varying), strict=True)
            params.extend(itertools.chain.from_iterable(each_row))
            cur.execute(self.insert_rows(len(rows), varying), params)
            ids.extend(job.id for job in chunk)
        return ids

    def complete_in(self, cur: Any, params: dict[str, Any]) -> bool:
        # No statement both updates and deletes: two, in the caller's transaction.
        cur.execute(self.sql["complete"], params)
        if not cur.fetchall():
            return False
        cur.execute(self.sql["delete_checkpoints"], {"job_id": params["id"]})
        return True

    # -- wake-ups -----------------------------------------------------------------------

    def listener(self, engine: sa.Engine) -> Listener | None:
        if self.in_memory(engine.url):
            return None  # one process: in-process wake-ups reach every worker
        return SQLiteWatcher(engine)

    def outcome_listener(
        self, engine: sa.Engine, watched: Callable[[], list[str]]
    ) -> ListenerThread | None:
        if self.in_memory(engine.url):
            return None  # one process: the queue's own events tell of every outcome
        return SQLiteOutcomeWatcher(engine, watched)

    def notify_queues(self, cur: Any, queues: Sequence[str]) -> None:
        # Committed with the wake-up it announces: the watchers read these counters.
        cur.executemany(_WAKE, [{"queue": queue} for queue in sorted(set(queues))])

    # -- values -------------------------------------------------------------------------

    # Both run for every time of every row written or read: the offset is cut or added
    # as text because ``datetime.replace(tzinfo=...)`` costs several times as much.
    def time_param(self, value: datetime | None) -> Any:
        if value is None:
            return None
        return utc(value).isoformat(" ", "microseconds")[:-6]  # less "+00:00"

    def time_value(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.fromisoformat(value + "+00:00")

    def list_param(self, values: Sequence[str]) -> Any:
        return json.dumps(list(values))


def _varies(column: tuple[Any, ...]) -> bool:
    return column.count(column[0]) != len(column)


# -- group commit ---------------------------------------------------------------------


@dataclass
class _Write:
    """One statement waiting for a group commit, and how it went."""

    sql: str
    params: dict[str, Any]
    rows: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class _GroupCommit(GroupCommit):
    """Single-statement SQLite writes from many threads, committed together.

    SQLite has one writer at a time and each commit waits for the disk. When threads
    write at once (the steps of concurrent workflows), the first to arrive commits every
    write waiting at that moment in one transaction while the others wait; each caller
    still returns only once its own write is committed, or raises its own error.
    """

    def __init__(self, storage: SQLStorage) -> None:
        self._storage = storage
        self._cond = threading.Condition()
        self._waiting: list[_Write] = []
        self._leading = False

    def run(self, sql: str, params: dict[str, Any]) -> list[Any]:
        write = _Write(sql, params)
        with self._cond:
            self._waiting.append(write)
            while self._leading and not write.done:
                self._cond.wait()
            batch: list[_Write] = []
            if not write.done:
                self._leading = True
                batch, self._waiting = self._waiting, []
        if batch:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if write.error is not None:
            raise write.error
        return write.rows

    def _commit(self, batch: list[_Write]) -> None:
        if len(batch) == 1:  # alone: a statement that commits by itself
            write = batch[0]
            try:
                write.rows = self._storage._execute(write.sql, write.params, write=True)
            except Exception as exc:
                write.error = exc
            finally:
                write.done = True
            return
        try:
            with self._storage._cursor(write=True) as cur:
                for write in batch:
                    try:
                        cur.execute(write.sql, write.params)
                        write.rows = cur.fetchall() if cur.description is not None else []
                    except sqlite3.DatabaseError as exc:
                        write.error = exc
                        # Most errors (a constraint) undo this statement only. A full disk
                        # or an I/O error makes SQLite roll back the whole transaction:
                        # the writes before this one are gone too, and the rest must not
                        # run one by one in autocommit. All of them fail.
                        if not getattr(cur.connection, "in_transaction", True):
                            raise
        except BaseException as exc:  # nothing of the batch was committed
            for write in batch:
                write.error = write.error or exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for write in batch:
                write.done = True


# -- wake-ups -------------------------------------------------------------------------


# The queues of jobs signalled since signal number ?, and the highest number.
_SIGNALLED = """SELECT max(s.seq), json_group_array(DISTINCT j.queue)
    FROM sdj_signals AS s JOIN sdj_jobs AS j ON j.id = s.job_id WHERE s.seq > ?"""


_WAKE = """INSERT INTO sdj_wakes (queue, seq) VALUES (:queue, 1)
    ON CONFLICT (queue) DO UPDATE SET seq = seq + 1"""


class SQLiteOutcomeWatcher(ListenerThread):
    """Notices watched jobs finished by any process, within milliseconds: on each change
    of the file's ``PRAGMA data_version`` (see ``SQLiteWatcher``), one read of the
    watched jobs that have finished."""

    def __init__(
        self, engine: sa.Engine, watched: Callable[[], list[str]], interval: float = 0.002
    ) -> None:
        super().__init__(engine)
        self._watched = watched
        self._interval = interval

    def _listen(
        self, conn: Any, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        commits = _commits(conn, self._interval, stop)
        on_reconnect()
        for _ in commits:
            ids = json.dumps(self._watched())
            for (job_id,) in conn.execute(_FINISHED_AMONG, (ids,)).fetchall():
                on_notify(job_id)


def _commits(conn: Any, interval: float, stop: threading.Event) -> Iterator[None]:
    """Yields each time other connections have committed to the file since the call (or
    the last yield), looking every ``interval`` s until ``stop`` is set. ``PRAGMA
    data_version`` reads only shared memory, so it can be polled often."""
    version = conn.execute("PRAGMA data_version").fetchone()[0]

    def changes() -> Iterator[None]:
        nonlocal version
        while not stop.wait(interval):
            now = conn.execute("PRAGMA data_version").fetchone()[0]
            if now != version:
                version = now
                yield None

    return changes()


_FINISHED_AMONG = f"""SELECT id FROM sdj_jobs
    WHERE id IN (SELECT value FROM json_each(?)) AND status IN {_SQLITE_FINISHED}"""


class SQLiteWatcher(ListenerThread):
    """Notices jobs inserted by other processes into a SQLite file, within milliseconds.

    SQLite has no notifications. ``PRAGMA data_version`` changes when another connection
    commits, and reading it touches only shared memory, so it can be polled often; when
    it changes, the highest job rowid tells whether jobs were inserted (rather than
    updated by heartbeats and completions), and only then are workers woken; likewise
    the highest signal number, for the queues of signalled jobs (a signal may have made
    its job due), and the wake counters, for queues of jobs woken from a wait.
    """

    def __init__(self, engine: sa.Engine, interval: float = 0.002) -> None:
        super().__init__(engine)
        self._interval = interval

    def _listen(
        self, conn: Any, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        commits = _commits(conn, self._interval, stop)
        last = conn.execute("SELECT coalesce(max(rowid), 0) FROM sdj_jobs").fetchone()[0]
        signalled = conn.execute("SELECT coalesce(max(seq), 0) FROM sdj_signals").fetchone()[0]
        wakes = dict(conn.execute("SELECT queue, seq FROM sdj_wakes").fetchall())
        on_reconnect()
        for _ in commits:
            # One statement, so rows inserted meanwhile are neither lost nor counted twice.
            top, queues = conn.execute(
                "SELECT max(rowid), json_group_array(DISTINCT queue) FROM sdj_jobs WHERE rowid > ?",
                (last,),
            ).fetchone()
            if top is not None:
                last = top
                for queue in json.loads(queues):
                    on_notify(queue)
            top, queues = conn.execute(_SIGNALLED, (signalled,)).fetchone()
            if top is not None:
                signalled = top
                for queue in json.loads(queues):
                    on_notify(queue)
            for queue, seq in conn.execute("SELECT queue, seq FROM sdj_wakes").fetchall():
                if wakes.get(queue) != seq:
                    wakes[queue] = seq
                    on_notify(queue)
