"""PostgreSQL: the dialect, its statements, connections, COPY, batch completion and
LISTEN/NOTIFY wake-ups.

``FOR UPDATE SKIP LOCKED`` claims, ``pg_notify`` wake-ups, advisory locks. The driver is
psycopg 3, an optional extra (``simple-durable-jobs[postgres]``): it is imported only
when a storage opens a PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa

from .dialects import (
    CHECKPOINT_COLUMNS,
    INSERT_COLUMNS,
    JOB_COLUMNS,
    PYFORMAT_SEARCH,
    SCHEDULE_COLUMNS,
    WORKER_COLUMNS,
    Dialect,
    MissingDriver,
)
from .notify import CHANNEL, ListenerThread, Notify
from .outcomes import OUTCOME_CHANNEL

if TYPE_CHECKING:
    from ..job import Job
    from .protocol import Listener
    from .records import Outcome
    from .sql import SQLStorage

__all__ = ["PostgresDialect", "PostgresListener", "autovacuum_warning"]

MISSING_DRIVER = "PostgreSQL support needs psycopg: pip install 'simple-durable-jobs[postgres]'"

# -- statements -----------------------------------------------------------------------

_POSTGRES_MIGRATION_1 = (
    """CREATE TABLE sdj_jobs (
        id TEXT PRIMARY KEY,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        type TEXT NOT NULL,
        args TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL,
        last_error TEXT,
        run_at TIMESTAMPTZ NOT NULL,
        started_at TIMESTAMPTZ,
        completed_at TIMESTAMPTZ,
        created_at TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL,
        result TEXT,
        backoff TEXT,
        locked_by TEXT,
        heartbeat_at TIMESTAMPTZ
    )""",
    """CREATE INDEX sdj_jobs_dequeue ON sdj_jobs (queue, priority DESC, run_at, seq)
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
        created_at TIMESTAMPTZ NOT NULL,
        UNIQUE (job_id, scope, call_index)
    )""",
    """CREATE TABLE sdj_workers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        queues TEXT NOT NULL,
        types TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL
    )""",
)

_POSTGRES_MIGRATION_2 = (
    "ALTER TABLE sdj_jobs ADD COLUMN unique_key TEXT",
    """CREATE UNIQUE INDEX sdj_jobs_unique_key ON sdj_jobs (unique_key)
        WHERE unique_key IS NOT NULL""",
    """CREATE TABLE sdj_schedules (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        queue TEXT NOT NULL,
        last_fire_at TIMESTAMPTZ,
        next_fire_at TIMESTAMPTZ,
        updated_at TIMESTAMPTZ NOT NULL
    )""",
)

_POSTGRES_MIGRATION_3 = ("ALTER TABLE sdj_jobs ADD COLUMN meta TEXT",)

_POSTGRES_MIGRATION_4 = (
    "ALTER TABLE sdj_jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE sdj_jobs ADD COLUMN lock_expires_at TIMESTAMPTZ",
)

# Each field means one thing: completed_at only for completed jobs, finished_at for
# any end, finished_by names the worker that stored the latest outcome (locked_by only
# the running owner), and a failure keeps its traceback.
_POSTGRES_MIGRATION_5 = (
    "ALTER TABLE sdj_jobs ADD COLUMN finished_at TIMESTAMPTZ",
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
_POSTGRES_MIGRATION_6 = (
    "ALTER TABLE sdj_jobs ADD COLUMN parent_id TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN progress TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN wait_until TIMESTAMPTZ",
    "ALTER TABLE sdj_jobs ADD COLUMN waiting_for TEXT",
    "CREATE INDEX sdj_jobs_waiting ON sdj_jobs (wait_until, queue) WHERE status = 'waiting'",
    "CREATE INDEX sdj_jobs_parent ON sdj_jobs (parent_id) WHERE parent_id IS NOT NULL",
    # Signals not yet consumed, FIFO per (job, name) by seq. A consumed signal is
    # deleted: its checkpoint keeps it.
    """CREATE TABLE sdj_signals (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload TEXT,
        created_at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX sdj_signals_pending ON sdj_signals (job_id, name, seq)",
)

# Fan-out (children): see sqlite.py's migration 7.
_POSTGRES_MIGRATION_7 = (
    "ALTER TABLE sdj_jobs ADD COLUMN parent_group TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN wait_group TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN children_left INTEGER",
    "ALTER TABLE sdj_jobs ADD COLUMN children_need INTEGER",
    "ALTER TABLE sdj_jobs ADD COLUMN children_spare INTEGER",
)

# Wake counters per queue: see sqlite.py's migration 8. NOTIFY announces wake-ups here,
# so the table stays empty; it is made for one schema on every backend.
_POSTGRES_MIGRATION_8 = (
    """CREATE TABLE sdj_wakes (
        queue TEXT PRIMARY KEY,
        seq BIGINT NOT NULL
    )""",
)

# Job control: see sqlite.py's migration 9.
_POSTGRES_MIGRATION_9 = (
    "ALTER TABLE sdj_jobs ADD COLUMN tags TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN timeout_seconds DOUBLE PRECISION",
    "ALTER TABLE sdj_jobs ADD COLUMN concurrency_key TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN rate_key TEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN paused_from TEXT",
    """CREATE TABLE sdj_queue_pauses (
        queue TEXT PRIMARY KEY,
        paused_at TIMESTAMPTZ NOT NULL
    )""",
)

# Concurrency caps and rate limits: see sqlite.py's migration 10.
_POSTGRES_MIGRATION_10 = (
    """CREATE TABLE sdj_limits (
        type TEXT NOT NULL,
        limit_key TEXT NOT NULL DEFAULT '',
        tokens DOUBLE PRECISION,
        refilled_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (type, limit_key)
    )""",
    """CREATE INDEX sdj_jobs_type_running ON sdj_jobs (type, concurrency_key)
        WHERE status = 'running'""",
)

# The release of the library each worker runs: see sqlite.py's migration 11.
_POSTGRES_MIGRATION_11 = ("ALTER TABLE sdj_workers ADD COLUMN version TEXT NOT NULL DEFAULT ''",)

# Operations: see sqlite.py's migration 12. The trigger's WHEN is checked without
# calling the function, so jobs without tags and meta cost nothing more.
_POSTGRES_LABELS = """SELECT DISTINCT 't', left(t.tag, 200), '', {job}.created_at, {job}.seq,
        {job}.id FROM {source}jsonb_array_elements_text({job}.tags::jsonb) AS t (tag)
    WHERE {job}.tags IS NOT NULL
    UNION ALL
    SELECT 'm', left(m.key, 200), left(m.value #>> '{{}}', 200), {job}.created_at, {job}.seq,
        {job}.id FROM {source}jsonb_each({job}.meta::jsonb) AS m
    WHERE {job}.meta IS NOT NULL AND (jsonb_typeof(m.value) IN ('string', 'boolean')
        OR (jsonb_typeof(m.value) = 'number' AND m.value::text ~ '^-?[0-9]+$'))"""
_POSTGRES_MIGRATION_12 = (
    """CREATE TABLE sdj_job_labels (
        kind TEXT NOT NULL,
        label TEXT NOT NULL,
        value TEXT NOT NULL,
        created TIMESTAMPTZ NOT NULL,
        job_seq BIGINT NOT NULL,
        job_id TEXT NOT NULL,
        PRIMARY KEY (kind, label, value, created, job_seq)
    )""",
    "CREATE INDEX sdj_job_labels_job ON sdj_job_labels (job_id)",
    f"""CREATE FUNCTION sdj_label_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO sdj_job_labels (kind, label, value, created, job_seq, job_id)
        {_POSTGRES_LABELS.format(job="NEW", source="")}
        ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER sdj_jobs_labels AFTER INSERT ON sdj_jobs FOR EACH ROW
        WHEN (NEW.tags IS NOT NULL OR NEW.meta IS NOT NULL) EXECUTE FUNCTION sdj_label_job()""",
    f"""INSERT INTO sdj_job_labels (kind, label, value, created, job_seq, job_id)
        {_POSTGRES_LABELS.format(job="j", source="sdj_jobs AS j, ")} ON CONFLICT DO NOTHING""",
    """CREATE TABLE sdj_attempts (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        worker TEXT,
        error TEXT,
        traceback TEXT,
        started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX sdj_attempts_job ON sdj_attempts (job_id, seq)",
)

# Outcomes awaited by ``Queue.result`` in any process (storage/outcomes.py): a waiter
# marks its job, and the job's end notifies the job's id. Only marked rows run the
# trigger's function, so the other jobs' ends cost no more than before.
_POSTGRES_MIGRATION_13 = (
    "ALTER TABLE sdj_jobs ADD COLUMN outcome_wanted BOOLEAN",
    f"""CREATE FUNCTION sdj_notify_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{OUTCOME_CHANNEL}', NEW.id);
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER sdj_jobs_outcome AFTER UPDATE ON sdj_jobs FOR EACH ROW
        WHEN (NEW.outcome_wanted AND NEW.status IN ('completed', 'failed', 'cancelled'))
        EXECUTE FUNCTION sdj_notify_outcome()""",
)

# The status index ends with the enqueue order: jobs enqueued in one batch share their
# created_at, and a page of list_jobs or a prune's batch among a million of them then
# starts where the last one stopped instead of sorting them all. (SQLite's indexes end
# with the rowid, InnoDB's with the primary key: theirs already do.)
_POSTGRES_MIGRATION_14 = (
    "DROP INDEX sdj_jobs_status",
    "CREATE INDEX sdj_jobs_status ON sdj_jobs (status, created_at, seq)",
)

_POSTGRES_FINISHED = "('completed', 'failed', 'cancelled')"
_POSTGRES_OPS = {
    "record_attempt": """INSERT INTO sdj_attempts
            (job_id, attempt, worker, error, traceback, started_at, finished_at)
        SELECT id, attempt, locked_by, %(error)s, %(summary)s, started_at, %(now)s
        FROM sdj_jobs WHERE id = %(id)s AND status = 'running'
          AND (%(worker)s::text IS NULL
               OR (locked_by = %(worker)s AND fence = %(fence)s::int))""",
    "record_lost_attempt": """INSERT INTO sdj_attempts
            (job_id, attempt, worker, error, traceback, started_at, finished_at)
        SELECT id, attempt, locked_by,
            'WorkerLost: worker ' || COALESCE(locked_by, '?') || %(error)s::text,
            NULL, started_at, %(now)s FROM sdj_jobs
        WHERE id = %(id)s AND status = 'running' AND fence = %(fence)s""",
    "attempts": """SELECT attempt, worker, error, traceback, started_at, finished_at
        FROM sdj_attempts WHERE job_id = %(job_id)s ORDER BY seq""",
    # Locked, skipping rows others hold: a job being retried meanwhile is left alone.
    # Ordered as the status index is (see SQLite's).
    "prunable": f"""SELECT id, created_at, seq AS position FROM sdj_jobs AS j
        WHERE status = %(status)s AND created_at < %(cutoff)s AND finished_at < %(cutoff)s
          AND created_at >= %(after_at)s AND (created_at > %(after_at)s OR seq > %(after)s)
          AND (parent_id IS NULL OR NOT EXISTS (SELECT 1 FROM sdj_jobs AS p
              WHERE p.id = j.parent_id AND p.status NOT IN {_POSTGRES_FINISHED}))
        ORDER BY created_at, seq LIMIT %(limit)s FOR UPDATE OF j SKIP LOCKED""",
    "prune_checkpoints": "DELETE FROM sdj_checkpoints WHERE job_id = ANY(%(ids)s::text[])",
    "prune_signals": "DELETE FROM sdj_signals WHERE job_id = ANY(%(ids)s::text[])",
    "prune_attempts": "DELETE FROM sdj_attempts WHERE job_id = ANY(%(ids)s::text[])",
    "prune_labels": "DELETE FROM sdj_job_labels WHERE job_id = ANY(%(ids)s::text[])",
    "prune_jobs": f"""DELETE FROM sdj_jobs WHERE id = ANY(%(ids)s::text[])
        AND status IN {_POSTGRES_FINISHED}""",
}

_POSTGRES_SEARCH = {
    **PYFORMAT_SEARCH,
    "retry_failed": """UPDATE sdj_jobs SET status = 'pending', attempt = 0, run_at = %(now)s,
            wait_until = NULL, completed_at = NULL, finished_at = NULL, finished_by = NULL,
            updated_at = %(now)s
        WHERE id = ANY(%(ids)s::text[]) AND status = 'failed'""",
}

# Lock expiry runs on the server's clock, never on the workers' and reapers' own clocks,
# which need not agree. clock_timestamp(): the moment the row is written, not the start
# of its transaction, so a lock never starts out shorter than its timeout.
_POSTGRES_EXPIRY = "(clock_timestamp() + %(lock_timeout)s::float8 * interval '1 second')"
_POSTGRES_LEGACY_EXPIRY = "(heartbeat_at + %(lock_timeout)s::float8 * interval '1 second')"

# What every claim sets on the jobs it takes: a new run with a new fence and a lock;
# a job woken from a wait (wait_until set) resumes, so the same attempt goes on.
_POSTGRES_CLAIMED = f"""status = 'running',
    attempt = CASE WHEN j.wait_until IS NULL THEN j.attempt + 1 ELSE j.attempt END,
    fence = j.fence + 1, lock_expires_at = {_POSTGRES_EXPIRY},
    locked_by = %(worker)s, heartbeat_at = %(now)s, started_at = %(now)s, updated_at = %(now)s"""

# The statements of concurrency caps and rate limits (``limits.py``), in
# ``limits.STATEMENTS`` order. A claim locks its type's row first: claimers of one type
# take turns, so counting its running jobs and spending its tokens cannot over-admit.
# Candidates are read with the claim's own filter (keep them in step with ``claim``),
# and locked (SKIP LOCKED) until the claim commits.
_POSTGRES_LIMITS = {
    "lock_limit": """SELECT tokens, refilled_at, clock_timestamp() AS now FROM sdj_limits
        WHERE type = %(type)s AND limit_key = '' FOR UPDATE""",
    "add_limit": """INSERT INTO sdj_limits (type, limit_key, tokens, refilled_at)
        VALUES (%(type)s, '', NULL, clock_timestamp())
        ON CONFLICT (type, limit_key) DO NOTHING""",
    "running": """SELECT concurrency_key AS limit_key, COUNT(*) AS running
        FROM sdj_jobs WHERE type = %(type)s AND status = 'running' GROUP BY concurrency_key""",
    "limited_due": """SELECT id, priority, run_at, seq AS dequeue_order,
            COALESCE(concurrency_key, '') AS concurrency_key, COALESCE(rate_key, '') AS rate_key
        FROM sdj_jobs
        WHERE queue = %(queue)s AND status IN ('pending', 'retrying') AND run_at <= %(now)s
          AND type = %(type)s AND max_retries >= %(min_retries)s
          AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = %(queue)s)
          AND NOT (COALESCE(concurrency_key, '') = ANY(%(full_keys)s::text[]))
          AND NOT (COALESCE(rate_key, '') = ANY(%(empty_keys)s::text[]))
          AND NOT (id = ANY(%(picked)s::text[]))
        ORDER BY priority DESC, run_at, seq LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED""",
    "plain_due": """SELECT id, priority, run_at, seq AS dequeue_order FROM sdj_jobs
        WHERE queue = %(queue)s AND status IN ('pending', 'retrying')
          AND run_at <= %(now)s AND NOT (type = ANY(%(skip)s))
          AND max_retries >= %(min_retries)s
          AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = %(queue)s)
        ORDER BY priority DESC, run_at, seq LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED""",
    "claim_ids": f"""UPDATE sdj_jobs AS j SET {_POSTGRES_CLAIMED}
        WHERE j.id = ANY(%(ids)s::text[]) AND j.status IN ('pending', 'retrying')
        RETURNING {", ".join("j." + c for c in JOB_COLUMNS.split(", "))},
            j.seq AS dequeue_order""",
    "claim_type": f"""WITH next AS (
            SELECT id FROM sdj_jobs
            WHERE queue = %(queue)s AND status IN ('pending', 'retrying') AND run_at <= %(now)s
              AND type = %(type)s AND max_retries >= %(min_retries)s
              AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = %(queue)s)
            ORDER BY priority DESC, run_at, seq
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED)
        UPDATE sdj_jobs AS j SET {_POSTGRES_CLAIMED}
        FROM next WHERE j.id = next.id
        RETURNING {", ".join("j." + c for c in JOB_COLUMNS.split(", "))},
            j.seq AS dequeue_order""",
    "buckets": """SELECT limit_key, tokens, refilled_at FROM sdj_limits
        WHERE type = %(type)s AND limit_key = ANY(%(keys)s::text[])""",
    "save_bucket": """INSERT INTO sdj_limits (type, limit_key, tokens, refilled_at)
        VALUES (%(type)s, %(limit_key)s, %(tokens)s, %(refilled_at)s)
        ON CONFLICT (type, limit_key) DO UPDATE SET tokens = excluded.tokens,
            refilled_at = excluded.refilled_at""",
    "prune_buckets": """DELETE FROM sdj_limits
        WHERE type = %(type)s AND limit_key <> '' AND refilled_at < %(before)s""",
}

# The reads of ``queue.explain`` and ``sdj workers`` (``explain.py``), in
# ``explain.STATEMENTS`` order. Plain reads: they lock nothing a claim takes.
_POSTGRES_EXPLAIN = {
    # A waiting parent's children not finished yet, counted down by their outcomes.
    "children_left": "SELECT children_left FROM sdj_jobs WHERE id = %(id)s",
    # Due jobs before one in its queue's dequeue order (served by the dequeue index).
    "jobs_ahead": """SELECT COUNT(*) AS ahead FROM sdj_jobs AS a
        JOIN sdj_jobs AS j ON j.id = %(id)s AND a.queue = j.queue
        WHERE a.status IN ('pending', 'retrying') AND a.run_at <= %(now)s
          AND (a.priority > j.priority OR (a.priority = j.priority
            AND (a.run_at < j.run_at OR (a.run_at = j.run_at AND a.seq < j.seq))))""",
    "bucket": """SELECT tokens, refilled_at, clock_timestamp() AS now FROM sdj_limits
        WHERE type = %(type)s AND limit_key = %(key)s""",
    # Served by the running index.
    "running_by_worker": """SELECT locked_by AS worker, COUNT(*) AS running FROM sdj_jobs
        WHERE status = 'running' GROUP BY locked_by""",
}

# Any constant works as long as every process uses the same one.
MIGRATION_LOCK_KEY = 0x5D1_0B5


# SQLSTATE classes psycopg reports as OperationalError that no retry cures: 54, program
# limit exceeded (a row or value too big, too many columns).
_PERMANENT_CLASSES = ("54",)
# Connection exceptions, bad credentials, no such database, a server starting up or
# shutting down.
_UNAVAILABLE_CLASSES = ("08", "28", "3D", "57P")


# Whether autovacuum runs on the server, and the jobs table's own setting (None if unset).
_AUTOVACUUM = """SELECT current_setting('autovacuum'),
        (SELECT option_value FROM pg_options_to_table(c.reloptions)
         WHERE option_name = 'autovacuum_enabled')
    FROM pg_class c WHERE c.oid = to_regclass('sdj_jobs')"""
_OFF = ("off", "false", "no", "0", "f", "n")


def autovacuum_warning(server: str, table: str | None) -> str | None:
    """The operator's warning when autovacuum skips the jobs table, given the server's
    ``autovacuum`` setting and the table's ``autovacuum_enabled`` option (None if unset).

    Every claim moves a job out of the claim index's range and leaves an entry behind
    that only VACUUM removes; claims walk past all of them, so without vacuum they slow
    down with every job run.
    """
    if server.lower() in _OFF:
        where = "on this PostgreSQL server"
    elif table is not None and table.lower() in _OFF:
        where = "for table sdj_jobs"
    else:
        return None
    return (
        f"autovacuum is off {where}: every job claimed leaves an index entry behind that "
        "only VACUUM removes, and claims slow down as they pile up; turn autovacuum on or "
        "VACUUM sdj_jobs regularly (see PostgreSQL upkeep in the operations docs)"
    )


class PostgresDialect(Dialect):
    """PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims, ``pg_notify`` wake-ups, advisory locks."""

    name = "postgresql"
    driver_module = "psycopg"
    title = "PostgreSQL"
    # A prune's batches need not wait for the disk: a crash can only undo their last
    # deletions (the finished jobs come back, and the next prune deletes them), and any
    # later commit that depends on one flushes it with its own log. Its commits then do
    # not queue for the log's flushes beside the workers'.
    lazy_commit = "SET LOCAL synchronous_commit = off"
    migrations = (
        _POSTGRES_MIGRATION_1,
        _POSTGRES_MIGRATION_2,
        _POSTGRES_MIGRATION_3,
        _POSTGRES_MIGRATION_4,
        _POSTGRES_MIGRATION_5,
        _POSTGRES_MIGRATION_6,
        _POSTGRES_MIGRATION_7,
        _POSTGRES_MIGRATION_8,
        _POSTGRES_MIGRATION_9,
        _POSTGRES_MIGRATION_10,
        _POSTGRES_MIGRATION_11,
        _POSTGRES_MIGRATION_12,
        _POSTGRES_MIGRATION_13,
        _POSTGRES_MIGRATION_14,
    )
    autocommit = ("autocommit", True)
    # Enough jobs to amortise the work per chunk, few enough that the server starts
    # storing early.
    insert_chunk = 1000
    # Bulk inserts: binary COPY (the server parses nothing, psycopg formats rows in C).
    copy_jobs = f"COPY sdj_jobs ({INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
    copy_types = (
        *("text",) * 4,
        "int4",
        "text",
        "int4",
        "int4",
        *("timestamptz",) * 3,
        *("text",) * 6,
        "float8",
        *("text",) * 2,
    )

    @staticmethod
    def transient(error: BaseException) -> bool | None:
        # Connection failures, server shutdowns, deadlocks, serialisation failures,
        # lock timeouts and a full disk are psycopg's OperationalError; of those, a
        # program limit (a value too big) is not cured by a retry.
        import psycopg

        if not isinstance(error, psycopg.Error):
            return None
        if isinstance(error, psycopg.OperationalError):
            return not (error.sqlstate or "").startswith(_PERMANENT_CLASSES)
        if isinstance(error, psycopg.InterfaceError):
            return "connection" in str(error).lower()  # "the connection is lost/closed"
        return False

    sql: ClassVar[dict[str, str]] = {
        # A due job wakes listening workers: notifying from RETURNING costs no extra
        # round trip (nor the plan of a CTE around the INSERT), and PostgreSQL delivers
        # the notification only when the insert commits.
        "insert_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}) VALUES (%(id)s, %(type)s,
                %(args)s, %(queue)s, %(priority)s, %(status)s, 0, %(max_retries)s, %(run_at)s,
                %(now)s, %(now)s, %(backoff)s, %(meta)s, %(parent_id)s, %(parent_group)s,
                %(unique_key)s, %(tags)s, %(timeout_seconds)s, %(concurrency_key)s, %(rate_key)s)
            RETURNING CASE WHEN run_at <= %(now)s THEN pg_notify('sdj_jobs', queue)::text END""",
        # Unless its queue is paused: no row then, and the job is stored unclaimed.
        "insert_claimed_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}, locked_by,
                heartbeat_at, started_at, fence, lock_expires_at)
            SELECT %(id)s, %(type)s, %(args)s, %(queue)s, %(priority)s, 'running', 1,
                %(max_retries)s, %(run_at)s::timestamptz, %(now)s::timestamptz,
                %(now)s::timestamptz, %(backoff)s, %(meta)s, %(parent_id)s, %(parent_group)s,
                %(unique_key)s, %(tags)s, %(timeout_seconds)s::float8, %(concurrency_key)s,
                %(rate_key)s, %(worker)s, %(now)s::timestamptz, %(now)s::timestamptz, 1,
                {_POSTGRES_EXPIRY}
            WHERE NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = %(queue)s)
            RETURNING id""",
        "claim": f"""WITH next AS (
                SELECT id FROM sdj_jobs
                WHERE queue = %(queue)s AND status IN ('pending', 'retrying')
                  AND run_at <= %(now)s AND NOT (type = ANY(%(skip)s))
                  AND max_retries >= %(min_retries)s
                  AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = %(queue)s)
                ORDER BY priority DESC, run_at, seq
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED)
            UPDATE sdj_jobs AS j SET {_POSTGRES_CLAIMED}
            FROM next WHERE j.id = next.id
            RETURNING {", ".join("j." + c for c in JOB_COLUMNS.split(", "))},
                j.seq AS dequeue_order""",
        "complete": """WITH done AS (
                UPDATE sdj_jobs SET status = 'completed', result = %(result)s,
                    completed_at = %(now)s, finished_at = %(now)s, updated_at = %(now)s,
                    heartbeat_at = NULL, lock_expires_at = NULL, finished_by = locked_by,
                    locked_by = NULL, last_error = NULL, traceback = NULL, wait_until = NULL,
            paused_from = NULL
                WHERE id = %(id)s AND status = 'running'
                  AND (%(worker)s::text IS NULL
                       OR (locked_by = %(worker)s AND fence = %(fence)s::int))
                RETURNING id),
            gone AS (DELETE FROM sdj_checkpoints c USING done WHERE c.job_id = done.id)
            SELECT id FROM done""",
        "fail": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NOT NULL AND %(status)s::text = 'retrying'
                THEN 'paused'
                ELSE %(status)s END,
            paused_from = CASE WHEN paused_from IS NOT NULL AND %(status)s::text = 'retrying'
                THEN 'retrying' END, last_error = %(error)s,
            traceback = %(traceback)s, run_at = COALESCE(%(run_at)s, run_at),
            finished_at = %(finished_at)s, updated_at = %(now)s, heartbeat_at = NULL,
            lock_expires_at = NULL, finished_by = locked_by, locked_by = NULL,
            wait_until = NULL
            WHERE id = %(id)s AND status = 'running'
              AND (%(worker)s::text IS NULL
                   OR (locked_by = %(worker)s AND fence = %(fence)s::int))
            RETURNING id""",
        "suspend": """UPDATE sdj_jobs SET status = 'waiting', wait_until = %(until)s,
            waiting_for = %(waiting_for)s, run_at = COALESCE(%(until)s, run_at),
            updated_at = %(now)s, heartbeat_at = NULL, lock_expires_at = NULL,
            finished_by = locked_by, locked_by = NULL, wait_group = NULL
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
              AND fence = %(fence)s::int
            RETURNING id""",
        "release": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NOT NULL THEN 'paused'
                WHEN wait_until IS NOT NULL OR attempt <= 1 THEN 'pending' ELSE 'retrying' END,
            paused_from = CASE WHEN paused_from IS NULL THEN NULL
                WHEN wait_until IS NOT NULL OR attempt <= 1 THEN 'pending' ELSE 'retrying' END,
            attempt = CASE WHEN wait_until IS NULL THEN attempt - 1 ELSE attempt END,
            locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL,
            updated_at = %(now)s
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
              AND fence = %(fence)s""",
        "settled": """SELECT id, fence, status FROM sdj_jobs
            WHERE id = ANY(%(ids)s::text[]) AND finished_by = %(worker)s
              AND status <> 'running'""",
        "heartbeat_job": f"""UPDATE sdj_jobs SET heartbeat_at = %(now)s,
                lock_expires_at = {_POSTGRES_EXPIRY}
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s""",
        "heartbeat_worker_jobs": f"""UPDATE sdj_jobs SET heartbeat_at = %(now)s,
                lock_expires_at = {_POSTGRES_EXPIRY}
            WHERE status = 'running' AND locked_by = %(worker)s
              AND (%(jobs)s::text[] IS NULL OR id = ANY(%(jobs)s::text[]))""",
        "upsert_worker": f"""INSERT INTO sdj_workers ({WORKER_COLUMNS})
            VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(types)s, %(now)s, %(now)s,
                %(version)s)
            ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                queues = excluded.queues, types = excluded.types, version = excluded.version""",
        "delete_worker": "DELETE FROM sdj_workers WHERE id = %(id)s",
        "live_workers": f"SELECT {WORKER_COLUMNS} FROM sdj_workers"
        " WHERE heartbeat_at >= %(cutoff)s",
        "prune_workers": "DELETE FROM sdj_workers WHERE heartbeat_at < %(cutoff)s",
        # Lock expiry by the server's clock. SKIP LOCKED: a run whose outcome or heartbeat
        # is being written is left to the next round; the rows selected stay locked until
        # the take-back commits.
        "expired_locks": f"""SELECT id, fence, attempt, max_retries, backoff, type
            FROM sdj_jobs WHERE status = 'running'
              AND COALESCE(lock_expires_at, {_POSTGRES_LEGACY_EXPIRY}) < now()
            LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
        "stale_locks": """SELECT id, fence, attempt, max_retries, backoff, type
            FROM sdj_jobs WHERE status = 'running' AND heartbeat_at < %(cutoff)s
            LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
        "reap": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NOT NULL AND %(status)s::text = 'retrying'
                THEN 'paused'
                ELSE %(status)s END,
            paused_from = CASE WHEN paused_from IS NOT NULL AND %(status)s::text = 'retrying'
                THEN 'retrying' END, finished_at = %(finished_at)s,
            finished_by = NULL, traceback = NULL,
            last_error = 'WorkerLost: worker ' || COALESCE(locked_by, '?') || %(error)s::text,
            run_at = COALESCE(%(run_at)s, run_at), updated_at = %(now)s, wait_until = NULL,
            locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL
            WHERE id = %(id)s AND status = 'running' AND fence = %(fence)s::int""",
        "get_job": f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id = %(id)s",
        "jobs_by_status": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE status = %(status)s
            ORDER BY created_at, seq LIMIT %(limit)s""",
        "due_jobs": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s
            ORDER BY priority DESC, run_at, seq LIMIT %(limit)s""",
        "next_wake": """SELECT queue, wait_until FROM sdj_jobs
            WHERE status = 'waiting' AND wait_until IS NOT NULL
              AND queue = ANY(%(queues)s::text[])
            ORDER BY wait_until LIMIT 1""",
        # The due waits ended, in one statement: each job becomes a due resume (held,
        # if it was paused meanwhile). SKIP LOCKED: a wait another worker is ending is
        # left to it.
        "due_waiting": """UPDATE sdj_jobs AS j SET
                status = CASE WHEN j.paused_from IS NULL THEN 'pending' ELSE 'paused' END,
                paused_from = CASE WHEN j.paused_from IS NULL THEN NULL ELSE 'pending' END,
                run_at = COALESCE(j.wait_until, %(now)s),
                wait_until = COALESCE(j.wait_until, %(now)s), waiting_for = NULL,
                updated_at = %(now)s
            FROM (SELECT id FROM sdj_jobs
                WHERE status = 'waiting' AND wait_until <= %(now)s
                  AND queue = ANY(%(queues)s::text[])
                ORDER BY wait_until LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED) AS due
            WHERE j.id = due.id
            RETURNING j.id, j.queue""",
        "set_progress": """UPDATE sdj_jobs SET progress = %(progress)s, updated_at = %(now)s
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
              AND fence = %(fence)s::int
            RETURNING id""",
        # Signals serialise on their job's row: a signal and a suspension that waits for
        # it (an UPDATE of the row, then a look for signals) never miss each other.
        "lock_job": "SELECT id FROM sdj_jobs WHERE id = %(id)s FOR NO KEY UPDATE",
        # The job's row locked and the signal stored, in one round trip; returns what
        # the wake-up needs of the job (no row: no such job, and nothing stored).
        "insert_signal": """WITH j AS (SELECT id, queue, type, status, waiting_for
                FROM sdj_jobs WHERE id = %(job_id)s FOR NO KEY UPDATE),
            s AS (INSERT INTO sdj_signals (job_id, name, payload, created_at)
                SELECT id, %(name)s, %(payload)s, %(now)s FROM j)
            SELECT id, queue, type, status, waiting_for FROM j""",
        "wake_signalled": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NULL THEN 'pending' ELSE 'paused' END,
            paused_from = CASE WHEN paused_from IS NULL THEN NULL ELSE 'pending' END,
            run_at = %(now)s,
            wait_until = %(now)s, waiting_for = NULL, updated_at = %(now)s
            WHERE id = %(id)s AND status = 'waiting' AND waiting_for = %(waiting_for)s
            RETURNING queue""",
        # wake_signalled and the claim of the woken run in one: the resume goes on with
        # the same attempt. Not while the job or its queue is paused.
        "claim_signalled": f"""UPDATE sdj_jobs AS j SET status = 'running', fence = j.fence + 1,
                lock_expires_at = {_POSTGRES_EXPIRY}, locked_by = %(worker)s,
                heartbeat_at = %(now)s, started_at = %(now)s, updated_at = %(now)s,
                run_at = %(now)s, wait_until = %(now)s, waiting_for = NULL
            WHERE j.id = %(id)s AND j.status = 'waiting' AND j.waiting_for = %(waiting_for)s
              AND j.paused_from IS NULL
              AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = j.queue)
            RETURNING {", ".join("j." + c for c in JOB_COLUMNS.split(", "))}""",
        "lock_run": """SELECT id FROM sdj_jobs
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
              AND fence = %(fence)s::int
            FOR NO KEY UPDATE""",
        "pending_signals": """SELECT seq, payload FROM sdj_signals
            WHERE job_id = %(job_id)s AND name = %(name)s ORDER BY seq LIMIT %(limit)s""",
        "delete_signals": """DELETE FROM sdj_signals
            WHERE job_id = %(job_id)s AND name = %(name)s AND seq <= %(seq)s""",
        # The parent's row is locked by the update: a suspension counting its children
        # and a child's outcome counting down serialise on it.
        "settle_child": """UPDATE sdj_jobs AS p SET children_left = p.children_left - 1,
                children_need = p.children_need - %(ok)s::int,
                children_spare = p.children_spare - (1 - %(ok)s::int)
            FROM sdj_jobs AS c
            WHERE c.id = %(id)s AND p.id = c.parent_id AND p.wait_group = c.parent_group
            RETURNING p.id, p.queue, p.status, p.wait_group, p.children_left, p.children_need,
                p.children_spare""",
        # Completed children of one parent (``ids``, all children of ``parent``), counted
        # down together: one update of the parent's row per batch, not per child. The
        # children are looked up by id, one by one (LIMIT keeps the lateral subquery a
        # nested loop): a filter on parent_id would lead the planner through every
        # sibling in the parent's index, and a join on the ids to a scan of the table.
        "settle_children": """UPDATE sdj_jobs AS p SET children_left = p.children_left - s.n,
                children_need = p.children_need - s.n
            FROM (SELECT c.parent_group, COUNT(*) AS n
                FROM unnest(%(ids)s::text[]) AS v(id) CROSS JOIN LATERAL (
                    SELECT parent_group FROM sdj_jobs WHERE id = v.id LIMIT 1) AS c
                GROUP BY c.parent_group) AS s
            WHERE p.id = %(parent)s AND p.wait_group = s.parent_group
            RETURNING p.id, p.queue, p.status, p.wait_group, p.children_left, p.children_need,
                p.children_spare""",
        "wake_parent": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NULL THEN 'pending' ELSE 'paused' END,
            paused_from = CASE WHEN paused_from IS NULL THEN NULL ELSE 'pending' END,
            run_at = %(now)s,
                wait_until = %(now)s, waiting_for = NULL, wait_group = NULL, updated_at = %(now)s
            WHERE id = %(id)s AND status = 'waiting' AND wait_group = %(group)s
            RETURNING queue""",
        # SKIP LOCKED: a child being claimed (or its outcome stored) right now runs on.
        "cancellable_children": """SELECT id FROM sdj_jobs
            WHERE parent_id = %(parent)s AND parent_group = %(group)s
              AND status NOT IN ('completed', 'failed', 'cancelled')
            FOR UPDATE SKIP LOCKED""",
        # Cancelled jobs, with their subtrees: see SQLStorage.cancel. The run of a running
        # one is fenced out (its outcome matches no running row) and told to stop.
        "cancellable": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE id = ANY(%(ids)s::text[])
              AND status NOT IN ('completed', 'failed', 'cancelled')
            FOR UPDATE""",
        "cancel_jobs": """UPDATE sdj_jobs SET status = 'cancelled', last_error = %(error)s,
                traceback = NULL, finished_at = %(now)s, finished_by = locked_by,
                locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL,
                updated_at = %(now)s, wait_until = NULL, waiting_for = NULL, wait_group = NULL,
                paused_from = NULL
            WHERE id = ANY(%(ids)s::text[])
              AND status NOT IN ('completed', 'failed', 'cancelled')""",
        "children_of": """SELECT id FROM sdj_jobs WHERE parent_id = ANY(%(ids)s::text[])""",
        "cancelled_among": """SELECT id FROM sdj_jobs
            WHERE id = ANY(%(ids)s::text[]) AND status = 'cancelled'""",
        # A pause of a job that is not running holds it at once ('paused', the status to
        # give back kept); of a running or waiting one, once it would run again (the
        # statements that make a job due give 'paused' instead while paused_from is set).
        "pause_job": """UPDATE sdj_jobs SET paused_from = status,
                status = CASE WHEN status IN ('pending', 'retrying') THEN 'paused' ELSE status END,
                updated_at = %(now)s
            WHERE id = %(id)s AND paused_from IS NULL
              AND status IN ('pending', 'retrying', 'running', 'waiting')
            RETURNING id""",
        "resume_job": """UPDATE sdj_jobs SET
                status = CASE WHEN status = 'paused' THEN paused_from ELSE status END,
                paused_from = NULL, updated_at = %(now)s
            WHERE id = %(id)s AND paused_from IS NOT NULL
            RETURNING queue, status""",
        "pause_queue": """INSERT INTO sdj_queue_pauses (queue, paused_at)
            VALUES (%(queue)s, %(now)s)
            ON CONFLICT (queue) DO NOTHING""",
        "resume_queue": "DELETE FROM sdj_queue_pauses WHERE queue = %(queue)s",
        "paused_queues": "SELECT queue, paused_at FROM sdj_queue_pauses ORDER BY queue",
        "start_children_wait": """UPDATE sdj_jobs SET wait_group = %(group)s,
                children_left = %(left)s, children_need = %(need)s, children_spare = %(spare)s,
                waiting_for = %(waiting_for)s
            WHERE id = %(id)s""",
        "regroup_children": """UPDATE sdj_jobs SET parent_group = %(group)s
            WHERE parent_id = %(parent)s AND id = ANY(%(ids)s::text[])""",
        "count_children": """SELECT
                COALESCE(SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), 0) AS ok,
                COALESCE(SUM(CASE WHEN status IN ('failed', 'cancelled') THEN 1 ELSE 0 END), 0)
                    AS failed
            FROM sdj_jobs WHERE parent_id = %(parent)s AND parent_group = %(group)s""",
        "children_outcomes": """SELECT id, type, status, result, last_error, finished_at, parent_id
            FROM sdj_jobs WHERE id = ANY(%(ids)s::text[])""",
        # The children of a wait group, but those completed with no result: these only
        # count, in the row without an id (see SQLStorage.group_outcomes).
        "group_outcomes": """SELECT id, type, status, result, last_error, finished_at,
                parent_id, 1 AS n
            FROM sdj_jobs WHERE parent_id = %(parent)s AND parent_group = %(group)s
              AND (status <> 'completed' OR result IS NOT NULL)
            UNION ALL
            SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, COUNT(*) FROM sdj_jobs
            WHERE parent_id = %(parent)s AND parent_group = %(group)s
              AND status = 'completed' AND result IS NULL""",
        "decided_parents": """SELECT id, queue, wait_group, children_spare FROM sdj_jobs
            WHERE status = 'waiting' AND wait_group IS NOT NULL
              AND queue = ANY(%(queues)s::text[])
              AND (children_left <= 0 OR children_need <= 0 OR children_spare < 0)
            LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
        # FOR SHARE: a take-back of the job racing this write is waited for and its
        # committed row re-checked; a plain read would pass the fence on the old row.
        "save_checkpoint": f"""INSERT INTO sdj_checkpoints ({CHECKPOINT_COLUMNS})
            SELECT %(id)s, %(job_id)s, %(call_index)s, %(call_type)s, %(result)s, %(error)s,
                %(now)s, %(scope)s
            WHERE %(worker)s::text IS NULL OR EXISTS (
                SELECT 1 FROM sdj_jobs WHERE id = %(job_id)s AND status = 'running'
                  AND locked_by = %(worker)s AND fence = %(fence)s::int FOR SHARE)
            ON CONFLICT (job_id, scope, call_index)
                DO UPDATE SET call_type = sdj_checkpoints.call_type
            RETURNING id""",
        "get_checkpoints": f"""SELECT {CHECKPOINT_COLUMNS} FROM sdj_checkpoints
            WHERE job_id = %(job_id)s ORDER BY scope, call_index""",
        "delete_checkpoints": "DELETE FROM sdj_checkpoints WHERE job_id = %(job_id)s",
        "schema_versions": "SELECT version FROM sdj_schema_version",
        "record_version": "INSERT INTO sdj_schema_version (version, applied_at)"
        " VALUES (%(version)s, %(now)s)",
        "queue_depths": """SELECT queue, COUNT(*) AS due, MIN(run_at) AS oldest_run_at FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s GROUP BY queue""",
        # Served by the index of waiting jobs (sdj_jobs_waiting), not a scan of the table.
        "waiting_counts": """SELECT queue, COUNT(*) AS waiting FROM sdj_jobs
            WHERE status = 'waiting' GROUP BY queue""",
        # Notifies like insert_job, and only when the row was inserted: a conflict
        # returns no row.
        "insert_unique_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS})
            VALUES (%(id)s, %(type)s, %(args)s, %(queue)s, %(priority)s, %(status)s, 0,
                %(max_retries)s, %(run_at)s, %(now)s, %(now)s, %(backoff)s, %(meta)s,
                %(parent_id)s, %(parent_group)s,
                %(unique_key)s, %(tags)s, %(timeout_seconds)s, %(concurrency_key)s, %(rate_key)s)
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
            RETURNING id,
                CASE WHEN run_at <= %(now)s THEN pg_notify('sdj_jobs', queue)::text END""",
        # The job holding a unique key, locked: a producer that finds it finished gives
        # its key up (release_unique) before storing the new job.
        "unique_holder": """SELECT id, status, created_at FROM sdj_jobs
            WHERE unique_key = %(key)s FOR UPDATE""",
        "release_unique": """UPDATE sdj_jobs SET unique_key = NULL
            WHERE id = %(id)s AND unique_key = %(key)s""",
        "upsert_schedule": f"""INSERT INTO sdj_schedules ({SCHEDULE_COLUMNS})
            VALUES (%(name)s, %(spec)s, %(queue)s, %(last_fire_at)s, %(next_fire_at)s, %(now)s)
            ON CONFLICT (name) DO UPDATE SET
                last_fire_at = CASE WHEN sdj_schedules.spec = excluded.spec
                    THEN COALESCE(excluded.last_fire_at, sdj_schedules.last_fire_at)
                    ELSE excluded.last_fire_at END,
                spec = excluded.spec, queue = excluded.queue,
                next_fire_at = excluded.next_fire_at, updated_at = excluded.updated_at
            WHERE sdj_schedules.spec <> excluded.spec OR sdj_schedules.next_fire_at IS NULL
                OR excluded.next_fire_at >= sdj_schedules.next_fire_at""",
        "list_schedules": f"SELECT {SCHEDULE_COLUMNS} FROM sdj_schedules ORDER BY name",
        **_POSTGRES_OPS,
    }
    create_version_table = """CREATE TABLE IF NOT EXISTS sdj_schema_version (
        version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"""

    admin_sql: ClassVar[dict[str, str]] = {
        "jobs_page": f"""SELECT {JOB_COLUMNS}, seq AS position FROM sdj_jobs
            WHERE status = %(status)s{{filters}}
            ORDER BY created_at {{order}}, seq {{order}} LIMIT %(limit)s""",
        "older_than": " AND created_at <= %(created_at)s"
        " AND (created_at < %(created_at)s OR seq < %(tie)s)",
        "newer_than": " AND created_at >= %(created_at)s"
        " AND (created_at > %(created_at)s OR seq > %(tie)s)",
        "by_queue": " AND queue = %(queue)s",
        "by_type": " AND type = %(type)s",
        "counts": "SELECT queue, status, COUNT(*) AS jobs FROM sdj_jobs GROUP BY queue, status",
        "throughput": """SELECT date_trunc('minute', finished_at) AS minute, status,
                COUNT(*) AS jobs FROM sdj_jobs
            WHERE finished_at >= %(since)s AND status IN ('completed', 'failed')
            GROUP BY 1, 2""",
        "oldest_due": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s
            ORDER BY run_at, seq LIMIT 1""",
        "running_jobs": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE status = 'running'
            ORDER BY started_at LIMIT %(limit)s""",
        "jobs_by_id": f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id = ANY(%(ids)s::text[])",
        # The parent's index (sdj_jobs_parent) serves both.
        "children_counts": """SELECT status, COUNT(*) AS jobs FROM sdj_jobs
            WHERE parent_id = %(parent)s GROUP BY status""",
        "children": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE parent_id = %(parent)s
            ORDER BY created_at, seq LIMIT %(limit)s""",
        # Wakes listening workers at once rather than at their next poll.
        "retry": f"""WITH r AS (
                UPDATE sdj_jobs SET status = 'pending', attempt = 0, run_at = %(now)s,
                    wait_until = NULL, completed_at = NULL, finished_at = NULL, finished_by = NULL,
                    updated_at = %(now)s
                WHERE id = %(id)s AND status IN ('failed', 'retrying', 'cancelled')
                RETURNING {JOB_COLUMNS})
            SELECT {JOB_COLUMNS}, pg_notify('sdj_jobs', queue)::text FROM r""",
        "delete_job": f"""DELETE FROM sdj_jobs
            WHERE id = %(id)s AND (%(force)s::boolean OR status <> 'running')
            RETURNING {JOB_COLUMNS}""",
        "delete_checkpoints": "DELETE FROM sdj_checkpoints WHERE job_id = %(id)s",
        **_POSTGRES_SEARCH,
    }
    limits_sql: ClassVar[dict[str, str]] = _POSTGRES_LIMITS
    explain_sql: ClassVar[dict[str, str]] = _POSTGRES_EXPLAIN

    # -- engines and connections --------------------------------------------------------

    @classmethod
    def engine_url(cls, url: sa.URL) -> sa.URL:
        if importlib.util.find_spec("psycopg") is None:
            raise MissingDriver(MISSING_DRIVER)
        # psycopg 3 is this library's PostgreSQL driver whatever the URL names.
        return url.set(drivername="postgresql+psycopg")

    @classmethod
    def create_engine(cls, url: sa.URL) -> sa.Engine:
        # The engine keeps SQLAlchemy's usual transactions (see SQLiteDialect); the
        # storage's own statements run in autocommit. Times are read back in UTC.
        return sa.create_engine(
            url,
            pool_size=10,
            max_overflow=40,
            connect_args={"options": "-c TimeZone=UTC"},
        )

    @staticmethod
    def has_rows(cur: Any) -> bool:
        # psycopg's ``description`` builds column objects: its row number answers alone.
        return cur.rownumber is not None

    def begin(
        self, raw: Any, cur: Any, *, write: bool, atomic: bool
    ) -> contextlib.AbstractContextManager[Any] | None:
        # A lone statement commits by itself in autocommit.
        return raw.driver_connection.transaction() if atomic else None

    def lock_migrations(self, cur: Any) -> None:
        # Released when the transaction ends.
        cur.execute(_LOCK_MIGRATIONS, {"key": MIGRATION_LOCK_KEY})

    def missing_table(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) == "42P01"  # undefined_table

    def unavailable(self, error: BaseException) -> bool:
        import psycopg

        if not isinstance(error, psycopg.OperationalError):
            return False
        # No SQLSTATE: the connection attempt failed (refused, unknown host, timed out).
        sqlstate = error.sqlstate
        return sqlstate is None or sqlstate.startswith(_UNAVAILABLE_CLASSES)

    # -- writes -------------------------------------------------------------------------

    def insert_in(
        self, storage: SQLStorage, cur: Any, chunks: Iterable[list[Job]], now: datetime
    ) -> list[str]:
        # COPY: the server stores one chunk while the next is built. COPY fires no
        # RETURNING, so the queues that got due jobs are notified after it, in the same
        # transaction.
        ids: list[str] = []
        due: set[str] = set()
        with cur.copy(self.copy_jobs) as copy:
            copy.set_types(self.copy_types)
            for chunk in chunks:
                for row in storage._stamp(chunk, now):
                    copy.write_row(row)
                    if row[_RUN_AT] <= now:
                        due.add(row[_QUEUE])
                ids.extend(job.id for job in chunk)
        if due:
            cur.execute(_NOTIFY, {"queues": sorted(due)})
        return ids

    def complete_in(self, cur: Any, params: dict[str, Any]) -> bool:
        # One statement completes the run and drops its checkpoints.
        cur.execute(self.sql["complete"], params)
        return bool(cur.fetchall())

    def complete_many(
        self, cur: Any, worker_id: str, outcomes: Sequence[Outcome], now: Any
    ) -> set[str]:
        params = {
            "ids": [o.job_id for o in outcomes],
            "fences": [o.fence for o in outcomes],
            "results": [None if o.result is None else o.result.decode() for o in outcomes],
            "worker": worker_id,
            "now": now,
        }
        cur.execute(_COMPLETE_MANY, params)
        return {row[0] for row in cur.fetchall()}

    # -- upkeep -------------------------------------------------------------------------

    def upkeep_warning(self, cur: Any) -> str | None:
        cur.execute(_AUTOVACUUM)
        row = cur.fetchone()
        return autovacuum_warning(row[0], row[1]) if row else None

    # -- wake-ups -----------------------------------------------------------------------

    def listener(self, engine: sa.Engine) -> Listener | None:
        return PostgresListener(engine)

    # The mark locks the row a moment: a claim then skips the job (SKIP LOCKED) and its
    # worker, told nothing more is due, would wait for its next poll. A job that could be
    # claimed wakes its queue's workers when the mark commits.
    want_outcome = f"""WITH marked AS (
            UPDATE sdj_jobs SET outcome_wanted = TRUE WHERE id = %(id)s RETURNING queue, status)
        SELECT pg_notify('{CHANNEL}', queue) FROM marked
        WHERE status IN ('pending', 'retrying')"""

    def outcome_listener(
        self, engine: sa.Engine, watched: Callable[[], list[str]]
    ) -> ListenerThread | None:
        return PostgresListener(engine, OUTCOME_CHANNEL)

    def notify_queues(self, cur: Any, queues: Sequence[str]) -> None:
        if queues:
            cur.execute(_NOTIFY, {"queues": sorted(queues)})


# -- machinery of PostgreSQL's own, beside the hooks that use it ----------------------

# One statement completes a whole batch and drops the batch's checkpoints.
_COMPLETE_MANY = """WITH v AS (
        SELECT * FROM unnest(%(ids)s::text[], %(fences)s::int[], %(results)s::text[])
            AS v(id, fence, result)),
    done AS (
        UPDATE sdj_jobs AS j SET status = 'completed', result = v.result,
            completed_at = %(now)s, finished_at = %(now)s, updated_at = %(now)s,
            heartbeat_at = NULL, lock_expires_at = NULL, finished_by = j.locked_by,
            locked_by = NULL, last_error = NULL, traceback = NULL, wait_until = NULL,
            paused_from = NULL
        FROM v WHERE j.id = v.id AND j.status = 'running'
          AND j.locked_by = %(worker)s AND j.fence = v.fence
        RETURNING j.id),
    gone AS (DELETE FROM sdj_checkpoints c USING done WHERE c.job_id = done.id)
    SELECT id FROM done"""

# Where run_at and queue sit in a row built by ``SQLStorage._stamp`` (INSERT_COLUMNS).
_INSERT_NAMES = INSERT_COLUMNS.split(", ")
_RUN_AT, _QUEUE = _INSERT_NAMES.index("run_at"), _INSERT_NAMES.index("queue")
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', q) FROM unnest(%(queues)s::text[]) AS q"
_LOCK_MIGRATIONS = "SELECT pg_advisory_xact_lock(%(key)s)"


class PostgresListener(ListenerThread):
    """Listens on ``channel``: the jobs channel, which inserts notify with their queue's
    name, or the outcomes channel, which a watched job's end notifies with its id."""

    def __init__(self, engine: sa.Engine, channel: str = CHANNEL) -> None:
        super().__init__(engine)
        self._channel = channel

    def _listen(
        self, conn: Any, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        conn.autocommit = True
        conn.execute(f"LISTEN {self._channel}")
        on_reconnect()
        while not stop.is_set():
            # The timeout bounds how long a stopping worker waits for this thread.
            for note in conn.notifies(timeout=0.05):
                on_notify(note.payload)
