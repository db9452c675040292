"""MySQL 8 and MariaDB 10.6+: the dialect, its statements, connections and migration lock.

``FOR UPDATE SKIP LOCKED`` claims, a named lock (``GET_LOCK``) around migrations, no
notifications (a cheap poll of the newest job number wakes workers in other processes).
The driver is PyMySQL, an optional extra (``simple-durable-jobs[mysql]``): it is
imported only when a storage opens a MySQL or MariaDB database.

Neither database has ``UPDATE … RETURNING`` (MariaDB has it for INSERT and DELETE
only, MySQL not at all). A statement that must report what it wrote is written as
steps separated by ``STEP`` (``;`` on a line of its own): the write, then a ``SELECT``
of what it wrote, guarded by ``ROW_COUNT() > 0`` (the rows the write matched: the
connections use ``CLIENT.FOUND_ROWS``). This backend's cursor runs the steps in turn,
and its rows are those of the last step with a result set. Connections run in READ
COMMITTED (no gap locks between claimers); tables are InnoDB in ``utf8mb4_bin``, so
names compare exactly as on the other databases; times are ``DATETIME(6)`` in UTC.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
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
    utc,
)
from .notify import ListenerThread, Notify

if TYPE_CHECKING:
    from ..job import Job
    from .protocol import Listener
    from .sql import SQLStorage

__all__ = ["STEP", "MySQLDialect", "MySQLWatcher"]

log = logging.getLogger("durable_jobs")

MISSING_DRIVER = "MySQL/MariaDB support needs PyMySQL: pip install 'simple-durable-jobs[mysql]'"

#: Separates the steps of a statement that this backend's cursor runs in turn.
STEP = "\n;\n"

# -- statements -----------------------------------------------------------------------

# Exact, case-sensitive comparisons of ids, queues and types, as on the other databases.
_TABLE = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

_MYSQL_MIGRATION_1 = (
    f"""CREATE TABLE sdj_jobs (
        id VARCHAR(255) NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL AUTO_INCREMENT UNIQUE,
        type VARCHAR(255) NOT NULL,
        args LONGTEXT NOT NULL,
        queue VARCHAR(255) NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        status VARCHAR(255) NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_retries INTEGER NOT NULL,
        last_error LONGTEXT,
        run_at DATETIME(6) NOT NULL,
        started_at DATETIME(6),
        completed_at DATETIME(6),
        created_at DATETIME(6) NOT NULL,
        updated_at DATETIME(6) NOT NULL,
        result LONGTEXT,
        backoff LONGTEXT,
        locked_by VARCHAR(255),
        heartbeat_at DATETIME(6)
    ) {_TABLE}""",
    # No partial indexes: the claim's index holds every job, led by queue and status.
    """CREATE INDEX sdj_jobs_dequeue
        ON sdj_jobs (queue, status, priority DESC, run_at, seq)""",
    "CREATE INDEX sdj_jobs_running ON sdj_jobs (locked_by, status)",
    "CREATE INDEX sdj_jobs_status ON sdj_jobs (status, created_at)",
    f"""CREATE TABLE sdj_checkpoints (
        id VARCHAR(255) NOT NULL PRIMARY KEY,
        job_id VARCHAR(255) NOT NULL,
        scope VARCHAR(255) NOT NULL DEFAULT '',
        call_index INTEGER NOT NULL,
        call_type VARCHAR(255) NOT NULL,
        result LONGTEXT,
        error LONGTEXT,
        created_at DATETIME(6) NOT NULL,
        UNIQUE KEY sdj_checkpoints_position (job_id, scope, call_index)
    ) {_TABLE}""",
    f"""CREATE TABLE sdj_workers (
        id VARCHAR(255) NOT NULL PRIMARY KEY,
        host VARCHAR(255) NOT NULL,
        pid INTEGER NOT NULL,
        queues LONGTEXT NOT NULL,
        types LONGTEXT NOT NULL,
        started_at DATETIME(6) NOT NULL,
        heartbeat_at DATETIME(6) NOT NULL
    ) {_TABLE}""",
)

_MYSQL_MIGRATION_2 = (
    "ALTER TABLE sdj_jobs ADD COLUMN unique_key VARCHAR(255)",
    # NULLs never collide in a unique index: jobs without a key are not indexed apart.
    "CREATE UNIQUE INDEX sdj_jobs_unique_key ON sdj_jobs (unique_key)",
    f"""CREATE TABLE sdj_schedules (
        name VARCHAR(255) NOT NULL PRIMARY KEY,
        spec LONGTEXT NOT NULL,
        queue VARCHAR(255) NOT NULL,
        last_fire_at DATETIME(6),
        next_fire_at DATETIME(6),
        updated_at DATETIME(6) NOT NULL
    ) {_TABLE}""",
)

_MYSQL_MIGRATION_3 = ("ALTER TABLE sdj_jobs ADD COLUMN meta LONGTEXT",)

_MYSQL_MIGRATION_4 = (
    "ALTER TABLE sdj_jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE sdj_jobs ADD COLUMN lock_expires_at DATETIME(6)",
)

# Each field means one thing: completed_at only for completed jobs, finished_at for
# any end, finished_by names the worker that stored the latest outcome (locked_by only
# the running owner), and a failure keeps its traceback.
_MYSQL_MIGRATION_5 = (
    "ALTER TABLE sdj_jobs ADD COLUMN finished_at DATETIME(6)",
    "ALTER TABLE sdj_jobs ADD COLUMN finished_by VARCHAR(255)",
    "ALTER TABLE sdj_jobs ADD COLUMN traceback LONGTEXT",
    "UPDATE sdj_jobs SET finished_at = completed_at WHERE status IN ('completed', 'failed')",
    "UPDATE sdj_jobs SET completed_at = NULL WHERE status = 'failed'",
    """UPDATE sdj_jobs SET finished_by = locked_by, locked_by = NULL
        WHERE status <> 'running' AND locked_by IS NOT NULL""",
)

# Workflows that wait: a job's parent, its progress, and what a waiting job waits for
# and until when. No partial indexes: the waiting index is led by status, so the look
# for the next due wait reads waiting jobs only, by deadline.
_MYSQL_MIGRATION_6 = (
    "ALTER TABLE sdj_jobs ADD COLUMN parent_id VARCHAR(255)",
    "ALTER TABLE sdj_jobs ADD COLUMN progress LONGTEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN wait_until DATETIME(6)",
    "ALTER TABLE sdj_jobs ADD COLUMN waiting_for LONGTEXT",
    "CREATE INDEX sdj_jobs_waiting ON sdj_jobs (status, wait_until, queue)",
    "CREATE INDEX sdj_jobs_parent ON sdj_jobs (parent_id)",
    # Signals not yet consumed, FIFO per (job, name) by seq. A consumed signal is
    # deleted: its checkpoint keeps it.
    f"""CREATE TABLE sdj_signals (
        seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        job_id VARCHAR(255) NOT NULL,
        name VARCHAR(255) NOT NULL,
        payload LONGTEXT,
        created_at DATETIME(6) NOT NULL
    ) {_TABLE}""",
    "CREATE INDEX sdj_signals_pending ON sdj_signals (job_id, name, seq)",
)

# Fan-out (children): see sqlite.py's migration 7.
_MYSQL_MIGRATION_7 = (
    "ALTER TABLE sdj_jobs ADD COLUMN parent_group VARCHAR(255)",
    "ALTER TABLE sdj_jobs ADD COLUMN wait_group VARCHAR(255)",
    "ALTER TABLE sdj_jobs ADD COLUMN children_left INTEGER",
    "ALTER TABLE sdj_jobs ADD COLUMN children_need INTEGER",
    "ALTER TABLE sdj_jobs ADD COLUMN children_spare INTEGER",
)

# Wake counters per queue: see sqlite.py's migration 8.
_MYSQL_MIGRATION_8 = (
    f"""CREATE TABLE sdj_wakes (
        queue VARCHAR(255) NOT NULL PRIMARY KEY,
        seq BIGINT NOT NULL
    ) {_TABLE}""",
)

# Job control: see sqlite.py's migration 9.
_MYSQL_MIGRATION_9 = (
    "ALTER TABLE sdj_jobs ADD COLUMN tags LONGTEXT",
    "ALTER TABLE sdj_jobs ADD COLUMN timeout_seconds DOUBLE",
    "ALTER TABLE sdj_jobs ADD COLUMN concurrency_key VARCHAR(255)",
    "ALTER TABLE sdj_jobs ADD COLUMN rate_key VARCHAR(255)",
    "ALTER TABLE sdj_jobs ADD COLUMN paused_from VARCHAR(32)",
    f"""CREATE TABLE sdj_queue_pauses (
        queue VARCHAR(255) NOT NULL PRIMARY KEY,
        paused_at DATETIME(6) NOT NULL
    ) {_TABLE}""",
)

# Concurrency caps and rate limits: see sqlite.py's migration 10. No partial indexes: the
# running index holds every job, led by type and status.
_MYSQL_MIGRATION_10 = (
    f"""CREATE TABLE sdj_limits (
        type VARCHAR(255) NOT NULL,
        limit_key VARCHAR(255) NOT NULL DEFAULT '',
        tokens DOUBLE,
        refilled_at DATETIME(6) NOT NULL,
        PRIMARY KEY (type, limit_key)
    ) {_TABLE}""",
    "CREATE INDEX sdj_jobs_type_running ON sdj_jobs (type, status, concurrency_key)",
)

# The release of the library each worker runs: see sqlite.py's migration 11.
_MYSQL_MIGRATION_11 = (
    "ALTER TABLE sdj_workers ADD COLUMN version VARCHAR(64) NOT NULL DEFAULT ''",
)

# Operations: see sqlite.py's migration 12. Each trigger's body tests its column first,
# so jobs without tags or meta insert nothing more. Meta keys holding a quote or a
# backslash are not labelled (a JSON path cannot name them plainly).
_MYSQL_META_VALUE = """JSON_EXTRACT({job}.meta, CONCAT('$."', k.k, '"'))"""
_MYSQL_TAGS = """SELECT DISTINCT 't', LEFT(t.tag, 200), '', {job}.created_at, {job}.seq, {job}.id
    FROM {source}JSON_TABLE({job}.tags, '$[*]' COLUMNS (tag VARCHAR(1000) PATH '$')) AS t
    WHERE t.tag IS NOT NULL"""
_MYSQL_META = f"""SELECT 'm', LEFT(k.k, 200), LEFT(JSON_UNQUOTE({_MYSQL_META_VALUE}), 200),
        {{job}}.created_at, {{job}}.seq, {{job}}.id
    FROM {{source}}JSON_TABLE(JSON_KEYS({{job}}.meta), '$[*]'
        COLUMNS (k VARCHAR(1000) PATH '$')) AS k
    WHERE LOCATE('"', k.k) = 0 AND LOCATE('\\\\', k.k) = 0
      AND JSON_TYPE({_MYSQL_META_VALUE}) IN ('STRING', 'INTEGER', 'BOOLEAN')"""
_MYSQL_LABEL = "INSERT IGNORE INTO sdj_job_labels (kind, label, value, created, job_seq, job_id)"


def _mysql_label_trigger(column: str, select: str) -> str:
    """The trigger that labels new jobs from their ``column`` (tags or meta)."""
    return f"""CREATE TRIGGER IF NOT EXISTS sdj_jobs_{column} AFTER INSERT ON sdj_jobs
    FOR EACH ROW BEGIN
        IF NEW.{column} IS NOT NULL THEN
            {_MYSQL_LABEL} {select.format(job="NEW", source="")};
        END IF;
    END"""


_MYSQL_MIGRATION_12 = (
    f"""CREATE TABLE sdj_job_labels (
        kind CHAR(1) NOT NULL,
        label VARCHAR(200) NOT NULL,
        value VARCHAR(200) NOT NULL,
        created DATETIME(6) NOT NULL,
        job_seq BIGINT NOT NULL,
        job_id VARCHAR(255) NOT NULL,
        PRIMARY KEY (kind, label, value, created, job_seq)
    ) {_TABLE}""",
    "CREATE INDEX sdj_job_labels_job ON sdj_job_labels (job_id)",
    _mysql_label_trigger("tags", _MYSQL_TAGS),
    _mysql_label_trigger("meta", _MYSQL_META),
    f"""{_MYSQL_LABEL} {_MYSQL_TAGS.format(job="j", source="sdj_jobs AS j, ")}
        UNION ALL {_MYSQL_META.format(job="j", source="sdj_jobs AS j, ")}""",
    f"""CREATE TABLE sdj_attempts (
        seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        job_id VARCHAR(255) NOT NULL,
        attempt INTEGER NOT NULL,
        worker VARCHAR(255),
        error LONGTEXT,
        traceback LONGTEXT,
        started_at DATETIME(6),
        finished_at DATETIME(6) NOT NULL
    ) {_TABLE}""",
    "CREATE INDEX sdj_attempts_job ON sdj_attempts (job_id, seq)",
)

# Nothing here: see sqlite.py's migration 13.
_MYSQL_MIGRATION_13: tuple[str, ...] = ()
# Nothing here: see postgres.py's migration 14.
_MYSQL_MIGRATION_14: tuple[str, ...] = ()

# DDL commits by itself in MySQL, so a migration step interrupted half-way is run again
# by the next migrator: these errors ("table/column/index exists") then mean the part
# done before, and are passed over (only while migrating).
_ALREADY_DONE = frozenset({1050, 1060, 1061})  # table, column, key name exists

# Lock expiry runs on the server's clock (UTC_TIMESTAMP(6): the statement's start).
_MYSQL_EXPIRY = "(UTC_TIMESTAMP(6) + INTERVAL ROUND(%(lock_timeout)s * 1000000) MICROSECOND)"
_MYSQL_LEGACY_EXPIRY = "(heartbeat_at + INTERVAL ROUND(%(lock_timeout)s * 1000000) MICROSECOND)"


def _in_list(param: str) -> str:
    """The strings of a JSON list parameter, as a subquery for ``IN``."""
    return (
        f"SELECT v FROM JSON_TABLE(%({param})s, '$[*]' COLUMNS (v VARCHAR(255) PATH '$'))"
        f" AS {param}_list"
    )


_MYSQL_FINISHED = "('completed', 'failed', 'cancelled')"


def _join_ids(column: str) -> str:
    """A join of the ids in the JSON list ``%(ids)s`` on ``column``, for a multi-table
    DELETE or UPDATE: MariaDB runs ``IN (subquery)`` there as a scan of the table."""
    return (
        "JOIN JSON_TABLE(%(ids)s, '$[*]' COLUMNS (v VARCHAR(255) COLLATE utf8mb4_bin"
        f" PATH '$')) AS ids ON {column} = ids.v"
    )


_MYSQL_OPS = {
    "record_attempt": """INSERT INTO sdj_attempts
            (job_id, attempt, worker, error, traceback, started_at, finished_at)
        SELECT id, attempt, locked_by, %(error)s, %(summary)s, started_at, %(now)s
        FROM sdj_jobs WHERE id = %(id)s AND status = 'running'
          AND (%(worker)s IS NULL OR (locked_by = %(worker)s AND fence = %(fence)s))""",
    "record_lost_attempt": """INSERT INTO sdj_attempts
            (job_id, attempt, worker, error, traceback, started_at, finished_at)
        SELECT id, attempt, locked_by,
            CONCAT('WorkerLost: worker ', COALESCE(locked_by, '?'), %(error)s),
            NULL, started_at, %(now)s FROM sdj_jobs
        WHERE id = %(id)s AND status = 'running' AND fence = %(fence)s""",
    "attempts": """SELECT attempt, worker, error, traceback, started_at, finished_at
        FROM sdj_attempts WHERE job_id = %(job_id)s ORDER BY seq""",
    # Ordered as the status index is (InnoDB's holds the primary key, the id).
    "prunable": f"""SELECT id, created_at, id AS position FROM sdj_jobs AS j
        WHERE status = %(status)s AND created_at < %(cutoff)s AND finished_at < %(cutoff)s
          AND created_at >= %(after_at)s AND (created_at > %(after_at)s OR id > %(after)s)
          AND (parent_id IS NULL OR NOT EXISTS (SELECT 1 FROM sdj_jobs AS p
              WHERE p.id = j.parent_id AND p.status NOT IN {_MYSQL_FINISHED}))
        ORDER BY created_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
    "prune_checkpoints": f"DELETE t FROM sdj_checkpoints AS t {_join_ids('t.job_id')}",
    "prune_signals": f"DELETE t FROM sdj_signals AS t {_join_ids('t.job_id')}",
    "prune_attempts": f"DELETE t FROM sdj_attempts AS t {_join_ids('t.job_id')}",
    "prune_labels": f"DELETE t FROM sdj_job_labels AS t {_join_ids('t.job_id')}",
    "prune_jobs": f"""DELETE t FROM sdj_jobs AS t {_join_ids("t.id")}
        WHERE t.status IN {_MYSQL_FINISHED}""",
}

_MYSQL_SEARCH = {
    **PYFORMAT_SEARCH,
    "retry_failed": f"""UPDATE sdj_jobs AS t {_join_ids("t.id")}
        SET t.status = 'pending', t.attempt = 0, t.run_at = %(now)s, t.wait_until = NULL,
            t.completed_at = NULL, t.finished_at = NULL, t.finished_by = NULL,
            t.updated_at = %(now)s
        WHERE t.status = 'failed'""",
}


def _claim_part(status: str) -> str:
    """The claimable jobs of one status, in dequeue order, read along the dequeue index."""
    return f"""(SELECT id, priority, run_at, seq FROM sdj_jobs FORCE INDEX (sdj_jobs_dequeue)
            WHERE queue = %(queue)s AND status = '{status}'
              AND run_at <= %(now)s AND type NOT IN ({_in_list("skip")})
              AND max_retries >= %(min_retries)s
              AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = %(queue)s)
            ORDER BY priority DESC, run_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""


# Whether the stored schedule may move (the row only moves forward, as on the other
# databases): read before
# spec and next_fire_at are assigned.
_SCHEDULE_MOVES = (
    "(spec <> VALUES(spec) OR next_fire_at IS NULL OR VALUES(next_fire_at) >= next_fire_at)"
)

# The claim's ids, bound one parameter each, in the steps after the first.
_IDS = "{ids}"


def _due_part(status: str, which: str) -> str:
    """The due jobs of one status, in dequeue order along the dequeue index, locked as the
    claim's first step locks them: of one limited type but for keys at their limit
    (``which="limited"``), of that type (``"type"``), or of the types not skipped."""
    columns = "status"
    if which == "limited":
        columns = (
            "COALESCE(concurrency_key, '') AS concurrency_key, COALESCE(rate_key, '') AS rate_key"
        )
        which = f"""type = %(type)s
              AND COALESCE(concurrency_key, '') NOT IN ({_in_list("full_keys")})
              AND COALESCE(rate_key, '') NOT IN ({_in_list("empty_keys")})
              AND id NOT IN ({_in_list("picked")})"""
    elif which == "type":
        which = "type = %(type)s"
    else:
        which = f"type NOT IN ({_in_list('skip')})"
    return f"""(SELECT id, priority, run_at, seq AS dequeue_order, {columns}
            FROM sdj_jobs FORCE INDEX (sdj_jobs_dequeue)
            WHERE queue = %(queue)s AND status = '{status}' AND run_at <= %(now)s
              AND {which} AND max_retries >= %(min_retries)s
              AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = %(queue)s)
            ORDER BY priority DESC, run_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"""


def _due(which: str) -> str:
    parts = " UNION ALL ".join(_due_part(s, which) for s in ("pending", "retrying"))
    return f"{parts} ORDER BY priority DESC, run_at, dequeue_order LIMIT %(limit)s"


# What every claim sets on the jobs it takes: a new run with a new fence and a lock;
# a job woken from a wait (wait_until set) resumes, so the same attempt goes on.
_MYSQL_CLAIMED = f"""status = 'running',
    attempt = CASE WHEN wait_until IS NULL THEN attempt + 1 ELSE attempt END,
    fence = fence + 1, lock_expires_at = {_MYSQL_EXPIRY},
    locked_by = %(worker)s, heartbeat_at = %(now)s, started_at = %(now)s, updated_at = %(now)s"""

# The statements of concurrency caps and rate limits (``limits.py``), in
# ``limits.STATEMENTS`` order. A claim locks its type's row first: claimers of one type
# take turns, so counting its running jobs and spending its tokens cannot over-admit.
# Candidates are read with the claim's own filter (keep them in step with ``claim``),
# and locked (SKIP LOCKED) until the claim commits; ``claim_ids`` binds their ids one
# parameter each, as the claim's later steps do.
_MYSQL_LIMITS = {
    "lock_limit": """SELECT tokens, refilled_at, UTC_TIMESTAMP(6) AS now FROM sdj_limits
        WHERE type = %(type)s AND limit_key = '' FOR UPDATE""",
    "add_limit": """INSERT INTO sdj_limits (type, limit_key, tokens, refilled_at)
        VALUES (%(type)s, '', NULL, UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE type = type""",
    "running": """SELECT concurrency_key AS limit_key, COUNT(*) AS running
        FROM sdj_jobs WHERE type = %(type)s AND status = 'running' GROUP BY concurrency_key""",
    "limited_due": _due("limited"),
    "plain_due": _due("plain"),
    "claim_ids": f"""UPDATE sdj_jobs SET {_MYSQL_CLAIMED}
        WHERE id IN ({_IDS}) AND status IN ('pending', 'retrying'){STEP}
        SELECT {JOB_COLUMNS}, seq AS dequeue_order FROM sdj_jobs
        WHERE id IN ({_IDS}) AND status = 'running' AND locked_by = %(worker)s""",
    # In the claim's three steps (``claim_rows``).
    "claim_type": f"""{_due("type")}{STEP}
        UPDATE sdj_jobs SET {_MYSQL_CLAIMED}
        WHERE id IN ({_IDS}){STEP}SELECT {JOB_COLUMNS}, seq AS dequeue_order
        FROM sdj_jobs WHERE id IN ({_IDS})""",
    "buckets": f"""SELECT limit_key, tokens, refilled_at FROM sdj_limits
        WHERE type = %(type)s AND limit_key IN ({_in_list("keys")})""",
    "save_bucket": """INSERT INTO sdj_limits (type, limit_key, tokens, refilled_at)
        VALUES (%(type)s, %(limit_key)s, %(tokens)s, %(refilled_at)s)
        ON DUPLICATE KEY UPDATE tokens = VALUES(tokens), refilled_at = VALUES(refilled_at)""",
    "prune_buckets": """DELETE FROM sdj_limits
        WHERE type = %(type)s AND limit_key <> '' AND refilled_at < %(before)s""",
}

# The reads of ``queue.explain`` and ``sdj workers`` (``explain.py``), in
# ``explain.STATEMENTS`` order. Plain reads: they lock nothing a claim takes.
_MYSQL_EXPLAIN = {
    # A waiting parent's children not finished yet, counted down by their outcomes.
    "children_left": "SELECT children_left FROM sdj_jobs WHERE id = %(id)s",
    # Due jobs before one in its queue's dequeue order (served by the dequeue index).
    "jobs_ahead": """SELECT COUNT(*) AS ahead FROM sdj_jobs AS a
        JOIN sdj_jobs AS j ON j.id = %(id)s AND a.queue = j.queue
        WHERE a.status IN ('pending', 'retrying') AND a.run_at <= %(now)s
          AND (a.priority > j.priority OR (a.priority = j.priority
            AND (a.run_at < j.run_at OR (a.run_at = j.run_at AND a.seq < j.seq))))""",
    "bucket": """SELECT tokens, refilled_at, UTC_TIMESTAMP(6) AS now FROM sdj_limits
        WHERE type = %(type)s AND limit_key = %(key)s""",
    # Served by the running index.
    "running_by_worker": """SELECT locked_by AS worker, COUNT(*) AS running FROM sdj_jobs
        WHERE status = 'running' GROUP BY locked_by""",
}


# Error numbers that a later attempt may not meet: lost, refused or gone connections
# (2002, 2003, 2006, 2013, 2055), too many connections (1040), a server shutting down
# (1053, 1077, 1927: a killed connection), lock wait timeouts (1205) and deadlocks
# (1213), a full disk (1021, 1114: table full).
# Refused, unknown host, gone or lost connections, too many connections, access denied
# (to the server or the database), no such database.
_UNAVAILABLE_CODES = frozenset({1040, 1044, 1045, 1049, 2002, 2003, 2005, 2006, 2013})
_TRANSIENT_CODES = frozenset(
    {1021, 1040, 1053, 1077, 1114, 1205, 1213, 1927, 2002, 2003, 2006, 2013, 2055}
)


class MySQLDialect(Dialect):
    """MySQL 8 and MariaDB 10.6+: ``FOR UPDATE SKIP LOCKED`` claims in three steps,
    fenced writes told apart by the rows they matched, polling for wake-ups."""

    name = "mysql"
    driver_module = "pymysql"
    title = "MySQL"
    migrations = (
        _MYSQL_MIGRATION_1,
        _MYSQL_MIGRATION_2,
        _MYSQL_MIGRATION_3,
        _MYSQL_MIGRATION_4,
        _MYSQL_MIGRATION_5,
        _MYSQL_MIGRATION_6,
        _MYSQL_MIGRATION_7,
        _MYSQL_MIGRATION_8,
        _MYSQL_MIGRATION_9,
        _MYSQL_MIGRATION_10,
        _MYSQL_MIGRATION_11,
        _MYSQL_MIGRATION_12,
        _MYSQL_MIGRATION_13,
        _MYSQL_MIGRATION_14,
    )
    insert_chunk = 1000

    @staticmethod
    def transient(error: BaseException) -> bool | None:
        import pymysql  # type: ignore[import-untyped]

        if not isinstance(error, pymysql.MySQLError):
            return None
        # "(0, '')" and "Connection closed" are PyMySQL's own word for a dead connection.
        return _code(error) in _TRANSIENT_CODES or isinstance(error, pymysql.InterfaceError)

    sql: ClassVar[dict[str, str]] = {
        "insert_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}) VALUES (%(id)s, %(type)s,
                %(args)s, %(queue)s, %(priority)s, %(status)s, 0, %(max_retries)s, %(run_at)s,
                %(now)s, %(now)s, %(backoff)s, %(meta)s, %(parent_id)s, %(parent_group)s,
                %(unique_key)s, %(tags)s, %(timeout_seconds)s, %(concurrency_key)s,
                %(rate_key)s)""",
        # Unless its queue is paused: no row then, and the job is stored unclaimed.
        "insert_claimed_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}, locked_by,
                heartbeat_at, started_at, fence, lock_expires_at)
            SELECT %(id)s, %(type)s, %(args)s, %(queue)s, %(priority)s, 'running', 1,
                %(max_retries)s, %(run_at)s, %(now)s, %(now)s, %(backoff)s, %(meta)s,
                %(parent_id)s, %(parent_group)s,
                %(unique_key)s, %(tags)s, %(timeout_seconds)s, %(concurrency_key)s, %(rate_key)s,
                %(worker)s, %(now)s, %(now)s, 1,
                {_MYSQL_EXPIRY} FROM DUAL
            WHERE NOT EXISTS (SELECT 1 FROM sdj_queue_pauses WHERE queue = %(queue)s)
            {STEP}SELECT id FROM sdj_jobs WHERE id = %(id)s AND locked_by = %(worker)s""",
        # Three steps in the claim's transaction (``claim_rows``): lock the next due ids,
        # skipping rows other claimers hold; take them; read them back.
        # One ordered index scan per claimable status (an IN over both would sort, and
        # a locking read that sorts locks every row it sorts: a big backlog then
        # exhausts InnoDB's lock table). Each part locks at most LIMIT rows; the few
        # that lose the merge stay locked only until the claim commits.
        "claim": f"""{_claim_part("pending")} UNION ALL {_claim_part("retrying")}
            ORDER BY priority DESC, run_at, seq LIMIT %(limit)s{STEP}
            UPDATE sdj_jobs SET {_MYSQL_CLAIMED}
            WHERE id IN ({_IDS}){STEP}SELECT {JOB_COLUMNS}, seq AS dequeue_order
            FROM sdj_jobs WHERE id IN ({_IDS})""",
        # Whether it took: the rows matched (``complete`` then drops the checkpoints).
        # Assignments run left to right, each seeing the ones before: finished_by
        # copies locked_by before it is cleared.
        "complete": """UPDATE sdj_jobs SET status = 'completed', result = %(result)s,
                completed_at = %(now)s, finished_at = %(now)s, updated_at = %(now)s,
                heartbeat_at = NULL, lock_expires_at = NULL, finished_by = locked_by,
                locked_by = NULL, last_error = NULL, traceback = NULL, wait_until = NULL,
            paused_from = NULL
            WHERE id = %(id)s AND status = 'running'
              AND (%(worker)s IS NULL OR (locked_by = %(worker)s AND fence = %(fence)s))""",
        "fail": f"""UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NOT NULL AND %(status)s = 'retrying'
                THEN 'paused'
                ELSE %(status)s END,
            paused_from = CASE WHEN paused_from IS NOT NULL AND %(status)s = 'retrying'
                THEN 'retrying' END, last_error = %(error)s,
            traceback = %(traceback)s, run_at = COALESCE(%(run_at)s, run_at),
            finished_at = %(finished_at)s, updated_at = %(now)s, heartbeat_at = NULL,
            lock_expires_at = NULL, finished_by = locked_by, locked_by = NULL,
            wait_until = NULL
            WHERE id = %(id)s AND status = 'running'
              AND (%(worker)s IS NULL OR (locked_by = %(worker)s AND fence = %(fence)s))
            {STEP}SELECT %(id)s AS id FROM DUAL WHERE ROW_COUNT() > 0""",
        # run_at is assigned before wait_until (assignments run left to right here).
        "suspend": f"""UPDATE sdj_jobs SET status = 'waiting',
            run_at = COALESCE(%(until)s, run_at), wait_until = %(until)s,
            waiting_for = %(waiting_for)s, updated_at = %(now)s, heartbeat_at = NULL,
            lock_expires_at = NULL, finished_by = locked_by, locked_by = NULL, wait_group = NULL
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
              AND fence = %(fence)s
            {STEP}SELECT %(id)s AS id FROM DUAL WHERE ROW_COUNT() > 0""",
        # status and attempt read wait_until, which this statement leaves as it is.
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
        "settled": f"""SELECT id, fence, status FROM sdj_jobs
            WHERE id IN ({_in_list("ids")}) AND finished_by = %(worker)s
              AND status <> 'running'""",
        "heartbeat_job": f"""UPDATE sdj_jobs SET heartbeat_at = %(now)s,
                lock_expires_at = {_MYSQL_EXPIRY}
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s""",
        "heartbeat_worker_jobs": f"""UPDATE sdj_jobs SET heartbeat_at = %(now)s,
                lock_expires_at = {_MYSQL_EXPIRY}
            WHERE status = 'running' AND locked_by = %(worker)s
              AND (%(jobs)s IS NULL OR id IN ({_in_list("jobs")}))""",
        # VALUES(): MariaDB has no row alias for the inserted row.
        "upsert_worker": f"""INSERT INTO sdj_workers ({WORKER_COLUMNS})
            VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(types)s, %(now)s, %(now)s,
                %(version)s)
            ON DUPLICATE KEY UPDATE heartbeat_at = VALUES(heartbeat_at),
                queues = VALUES(queues), types = VALUES(types), version = VALUES(version)""",
        "delete_worker": "DELETE FROM sdj_workers WHERE id = %(id)s",
        "live_workers": f"SELECT {WORKER_COLUMNS} FROM sdj_workers"
        " WHERE heartbeat_at >= %(cutoff)s",
        "prune_workers": "DELETE FROM sdj_workers WHERE heartbeat_at < %(cutoff)s",
        "expired_locks": f"""SELECT id, fence, attempt, max_retries, backoff, type
            FROM sdj_jobs WHERE status = 'running'
              AND COALESCE(lock_expires_at, {_MYSQL_LEGACY_EXPIRY}) < UTC_TIMESTAMP(6)
            LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
        "stale_locks": """SELECT id, fence, attempt, max_retries, backoff, type
            FROM sdj_jobs WHERE status = 'running' AND heartbeat_at < %(cutoff)s
            LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
        "reap": """UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NOT NULL AND %(status)s = 'retrying'
                THEN 'paused'
                ELSE %(status)s END,
            paused_from = CASE WHEN paused_from IS NOT NULL AND %(status)s = 'retrying'
                THEN 'retrying' END, finished_at = %(finished_at)s,
            finished_by = NULL, traceback = NULL,
            last_error = CONCAT('WorkerLost: worker ', COALESCE(locked_by, '?'), %(error)s),
            run_at = COALESCE(%(run_at)s, run_at), updated_at = %(now)s, wait_until = NULL,
            locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL
            WHERE id = %(id)s AND status = 'running' AND fence = %(fence)s""",
        "get_job": f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id = %(id)s",
        "jobs_by_status": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE status = %(status)s
            ORDER BY created_at, seq LIMIT %(limit)s""",
        "due_jobs": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s
            ORDER BY priority DESC, run_at, seq LIMIT %(limit)s""",
        "next_wake": f"""SELECT queue, wait_until FROM sdj_jobs
            WHERE status = 'waiting' AND wait_until IS NOT NULL
              AND queue IN ({_in_list("queues")})
            ORDER BY wait_until LIMIT 1""",
        # The due waits ended, in the claim's three steps (``claim_rows``): lock them
        # (SKIP LOCKED: a wait another worker is ending is left to it), make each a due
        # resume (held, if it was paused meanwhile), read them back. run_at reads
        # wait_until before it is assigned (left to right).
        "due_waiting": f"""SELECT id FROM sdj_jobs
            WHERE status = 'waiting' AND wait_until <= %(now)s
              AND queue IN ({_in_list("queues")})
            ORDER BY wait_until LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED{STEP}
            UPDATE sdj_jobs SET
                status = CASE WHEN paused_from IS NULL THEN 'pending' ELSE 'paused' END,
                paused_from = CASE WHEN paused_from IS NULL THEN NULL ELSE 'pending' END,
                run_at = COALESCE(wait_until, %(now)s),
                wait_until = COALESCE(wait_until, %(now)s), waiting_for = NULL,
                updated_at = %(now)s
            WHERE id IN ({_IDS}) AND status = 'waiting'{STEP}
            SELECT id, queue FROM sdj_jobs WHERE id IN ({_IDS})""",
        "set_progress": f"""UPDATE sdj_jobs SET progress = %(progress)s, updated_at = %(now)s
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
              AND fence = %(fence)s
            {STEP}SELECT %(id)s AS id FROM DUAL WHERE ROW_COUNT() > 0""",
        # Signals serialise on their job's row: a signal and a suspension that waits for
        # it (an UPDATE of the row, then a look for signals) never miss each other.
        "lock_job": "SELECT id FROM sdj_jobs WHERE id = %(id)s FOR UPDATE",
        # The job's row locked, then the signal stored (only for a job that exists); the
        # rows are the lock's: what the wake-up needs of the job.
        "insert_signal": f"""SELECT id, queue, type, status, waiting_for FROM sdj_jobs
            WHERE id = %(job_id)s FOR UPDATE
            {STEP}INSERT INTO sdj_signals (job_id, name, payload, created_at)
            SELECT id, %(name)s, %(payload)s, %(now)s FROM sdj_jobs WHERE id = %(job_id)s""",
        # run_at, then wait_until: both the moment of the signal.
        "wake_signalled": f"""UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NULL THEN 'pending' ELSE 'paused' END,
            paused_from = CASE WHEN paused_from IS NULL THEN NULL ELSE 'pending' END,
            run_at = %(now)s,
            wait_until = %(now)s, waiting_for = NULL, updated_at = %(now)s
            WHERE id = %(id)s AND status = 'waiting' AND waiting_for = %(waiting_for)s
            {STEP}SELECT queue FROM sdj_jobs WHERE id = %(id)s AND ROW_COUNT() > 0""",
        # wake_signalled and the claim of the woken run in one: the resume goes on with
        # the same attempt. Not while the job or its queue is paused.
        "claim_signalled": f"""UPDATE sdj_jobs SET status = 'running', fence = fence + 1,
                lock_expires_at = {_MYSQL_EXPIRY}, locked_by = %(worker)s,
                heartbeat_at = %(now)s, started_at = %(now)s, updated_at = %(now)s,
                run_at = %(now)s, wait_until = %(now)s, waiting_for = NULL
            WHERE id = %(id)s AND status = 'waiting' AND waiting_for = %(waiting_for)s
              AND paused_from IS NULL
              AND NOT EXISTS (SELECT 1 FROM sdj_queue_pauses AS p WHERE p.queue = sdj_jobs.queue)
            {STEP}SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id = %(id)s AND ROW_COUNT() > 0""",
        "lock_run": """SELECT id FROM sdj_jobs
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
              AND fence = %(fence)s
            FOR UPDATE""",
        "pending_signals": """SELECT seq, payload FROM sdj_signals
            WHERE job_id = %(job_id)s AND name = %(name)s ORDER BY seq LIMIT %(limit)s""",
        "delete_signals": """DELETE FROM sdj_signals
            WHERE job_id = %(job_id)s AND name = %(name)s AND seq <= %(seq)s""",
        # A self-join (no UPDATE ... RETURNING, no subquery on the updated table); the
        # parent's row stays locked until the outcome's transaction ends.
        "settle_child": f"""UPDATE sdj_jobs AS p JOIN sdj_jobs AS c
                ON p.id = c.parent_id AND p.wait_group = c.parent_group
            SET p.children_left = p.children_left - 1,
                p.children_need = p.children_need - %(ok)s,
                p.children_spare = p.children_spare - (1 - %(ok)s)
            WHERE c.id = %(id)s
            {STEP}SELECT p.id, p.queue, p.status, p.wait_group, p.children_left,
                p.children_need, p.children_spare
            FROM sdj_jobs AS p JOIN sdj_jobs AS c ON p.id = c.parent_id
            WHERE c.id = %(id)s AND ROW_COUNT() > 0""",
        # Completed children of one parent (``ids``, all children of ``parent``), counted
        # down together: once per batch. Found by their ids alone (see PostgreSQL's).
        "settle_children": f"""UPDATE sdj_jobs AS p JOIN (SELECT parent_group, COUNT(*) AS n
                FROM sdj_jobs WHERE id IN ({_in_list("ids")})
                GROUP BY parent_group) AS s ON p.wait_group = s.parent_group
            SET p.children_left = p.children_left - s.n,
                p.children_need = p.children_need - s.n
            WHERE p.id = %(parent)s
            {STEP}SELECT id, queue, status, wait_group, children_left, children_need,
                children_spare
            FROM sdj_jobs WHERE id = %(parent)s AND ROW_COUNT() > 0""",
        # run_at, then wait_until: both now.
        "wake_parent": f"""UPDATE sdj_jobs SET
            status = CASE WHEN paused_from IS NULL THEN 'pending' ELSE 'paused' END,
            paused_from = CASE WHEN paused_from IS NULL THEN NULL ELSE 'pending' END,
            run_at = %(now)s,
                wait_until = %(now)s, waiting_for = NULL, wait_group = NULL, updated_at = %(now)s
            WHERE id = %(id)s AND status = 'waiting' AND wait_group = %(group)s
            {STEP}SELECT queue FROM sdj_jobs WHERE id = %(id)s AND ROW_COUNT() > 0""",
        "cancellable_children": """SELECT id FROM sdj_jobs
            WHERE parent_id = %(parent)s AND parent_group = %(group)s
              AND status NOT IN ('completed', 'failed', 'cancelled')
            FOR UPDATE SKIP LOCKED""",
        # Cancelled jobs, with their subtrees: see SQLStorage.cancel. The run of a running
        # one is fenced out (its outcome matches no running row) and told to stop.
        "cancellable": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE id IN ({_in_list("ids")})
              AND status NOT IN ('completed', 'failed', 'cancelled')
            FOR UPDATE""",
        "cancel_jobs": f"""UPDATE sdj_jobs SET status = 'cancelled', last_error = %(error)s,
                traceback = NULL, finished_at = %(now)s, finished_by = locked_by,
                locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL,
                updated_at = %(now)s, wait_until = NULL, waiting_for = NULL, wait_group = NULL,
                paused_from = NULL
            WHERE id IN ({_in_list("ids")})
              AND status NOT IN ('completed', 'failed', 'cancelled')""",
        "children_of": f"""SELECT id FROM sdj_jobs WHERE parent_id IN ({_in_list("ids")})""",
        "cancelled_among": f"""SELECT id FROM sdj_jobs
            WHERE id IN ({_in_list("ids")}) AND status = 'cancelled'""",
        # A pause of a job that is not running holds it at once ('paused', the status to
        # give back kept); of a running or waiting one, once it would run again (the
        # statements that make a job due give 'paused' instead while paused_from is set).
        "pause_job": f"""UPDATE sdj_jobs SET paused_from = status,
                status = CASE WHEN status IN ('pending', 'retrying') THEN 'paused' ELSE status END,
                updated_at = %(now)s
            WHERE id = %(id)s AND paused_from IS NULL
              AND status IN ('pending', 'retrying', 'running', 'waiting')
            {STEP}SELECT %(id)s AS id FROM DUAL WHERE ROW_COUNT() > 0""",
        "resume_job": f"""UPDATE sdj_jobs SET
                status = CASE WHEN status = 'paused' THEN paused_from ELSE status END,
                paused_from = NULL, updated_at = %(now)s
            WHERE id = %(id)s AND paused_from IS NOT NULL
            {STEP}SELECT queue, status FROM sdj_jobs WHERE id = %(id)s AND ROW_COUNT() > 0""",
        "pause_queue": """INSERT IGNORE INTO sdj_queue_pauses (queue, paused_at)
            VALUES (%(queue)s, %(now)s)""",
        "resume_queue": "DELETE FROM sdj_queue_pauses WHERE queue = %(queue)s",
        "paused_queues": "SELECT queue, paused_at FROM sdj_queue_pauses ORDER BY queue",
        "start_children_wait": """UPDATE sdj_jobs SET wait_group = %(group)s,
                children_left = %(left)s, children_need = %(need)s, children_spare = %(spare)s,
                waiting_for = %(waiting_for)s
            WHERE id = %(id)s""",
        "regroup_children": f"""UPDATE sdj_jobs SET parent_group = %(group)s
            WHERE parent_id = %(parent)s AND id IN ({_in_list("ids")})""",
        "count_children": """SELECT
                COALESCE(SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), 0) AS ok,
                COALESCE(SUM(CASE WHEN status IN ('failed', 'cancelled') THEN 1 ELSE 0 END), 0)
                    AS failed
            FROM sdj_jobs WHERE parent_id = %(parent)s AND parent_group = %(group)s""",
        "children_outcomes": f"""SELECT id, type, status, result, last_error, finished_at, parent_id
            FROM sdj_jobs WHERE id IN ({_in_list("ids")})""",
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
        "decided_parents": f"""SELECT id, queue, wait_group, children_spare FROM sdj_jobs
            WHERE status = 'waiting' AND wait_group IS NOT NULL
              AND queue IN ({_in_list("queues")})
              AND (children_left <= 0 OR children_need <= 0 OR children_spare < 0)
            LIMIT %(limit)s FOR UPDATE SKIP LOCKED""",
        # The run is checked under a shared lock (a take-back racing this write is waited
        # for and its committed row re-checked). A conflict keeps the stored row (the
        # no-op update still counts as matched); the second step reads back whichever
        # checkpoint holds the position, and nothing when the fence refused the write.
        "save_checkpoint": f"""INSERT INTO sdj_checkpoints ({CHECKPOINT_COLUMNS})
            SELECT %(id)s, %(job_id)s, %(call_index)s, %(call_type)s, %(result)s, %(error)s,
                %(now)s, %(scope)s FROM DUAL
            WHERE %(worker)s IS NULL OR EXISTS (
                SELECT 1 FROM sdj_jobs WHERE id = %(job_id)s AND status = 'running'
                  AND locked_by = %(worker)s AND fence = %(fence)s LOCK IN SHARE MODE)
            ON DUPLICATE KEY UPDATE call_type = sdj_checkpoints.call_type
            {STEP}SELECT id FROM sdj_checkpoints
            WHERE job_id = %(job_id)s AND scope = %(scope)s AND call_index = %(call_index)s
              AND ROW_COUNT() > 0""",
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
        # A conflict inserts nothing (the no-op update counts as matched, so the
        # read-back, by this job's id and key, tells whether this row was stored).
        "insert_unique_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS})
            VALUES (%(id)s, %(type)s, %(args)s, %(queue)s, %(priority)s, %(status)s, 0,
                %(max_retries)s, %(run_at)s, %(now)s, %(now)s, %(backoff)s, %(meta)s,
                %(parent_id)s, %(parent_group)s,
                %(unique_key)s, %(tags)s, %(timeout_seconds)s, %(concurrency_key)s, %(rate_key)s)
            ON DUPLICATE KEY UPDATE id = id
            {STEP}SELECT id FROM sdj_jobs WHERE id = %(id)s AND unique_key = %(unique_key)s""",
        # The job holding a unique key, locked: a producer that finds it finished gives
        # its key up (release_unique) before storing the new job.
        "unique_holder": """SELECT id, status, created_at FROM sdj_jobs
            WHERE unique_key = %(key)s FOR UPDATE""",
        "release_unique": """UPDATE sdj_jobs SET unique_key = NULL
            WHERE id = %(id)s AND unique_key = %(key)s""",
        # No WHERE on an upsert: each column keeps its value unless the row may move
        # (assignments run left to right and see the ones before, so next_fire_at and
        # spec, which the condition reads, come last; spec changes only when it differs).
        "upsert_schedule": f"""INSERT INTO sdj_schedules ({SCHEDULE_COLUMNS})
            VALUES (%(name)s, %(spec)s, %(queue)s, %(last_fire_at)s, %(next_fire_at)s, %(now)s)
            ON DUPLICATE KEY UPDATE
                last_fire_at = IF({_SCHEDULE_MOVES},
                    IF(spec = VALUES(spec), COALESCE(VALUES(last_fire_at), last_fire_at),
                       VALUES(last_fire_at)),
                    last_fire_at),
                queue = IF({_SCHEDULE_MOVES}, VALUES(queue), queue),
                updated_at = IF({_SCHEDULE_MOVES}, VALUES(updated_at), updated_at),
                next_fire_at = IF({_SCHEDULE_MOVES}, VALUES(next_fire_at), next_fire_at),
                spec = VALUES(spec)""",
        "list_schedules": f"SELECT {SCHEDULE_COLUMNS} FROM sdj_schedules ORDER BY name",
        **_MYSQL_OPS,
    }
    create_version_table = f"""CREATE TABLE IF NOT EXISTS sdj_schema_version (
        version INTEGER NOT NULL PRIMARY KEY, applied_at DATETIME(6) NOT NULL) {_TABLE}"""

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
        # %% is a literal % (the driver formats every statement with its parameters).
        "throughput": """SELECT CAST(DATE_FORMAT(finished_at, '%%Y-%%m-%%d %%H:%%i:00')
                AS DATETIME) AS minute, status, COUNT(*) AS jobs FROM sdj_jobs
            WHERE finished_at >= %(since)s AND status IN ('completed', 'failed')
            GROUP BY 1, 2""",
        "oldest_due": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s
            ORDER BY run_at, seq LIMIT 1""",
        "running_jobs": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE status = 'running'
            ORDER BY started_at LIMIT %(limit)s""",
        "jobs_by_id": f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id IN ({_in_list('ids')})",
        # The parent's index (sdj_jobs_parent) serves both.
        "children_counts": """SELECT status, COUNT(*) AS jobs FROM sdj_jobs
            WHERE parent_id = %(parent)s GROUP BY status""",
        "children": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE parent_id = %(parent)s
            ORDER BY created_at, seq LIMIT %(limit)s""",
        "retry": f"""UPDATE sdj_jobs SET status = 'pending', attempt = 0, run_at = %(now)s,
                wait_until = NULL, completed_at = NULL, finished_at = NULL, finished_by = NULL,
                updated_at = %(now)s
            WHERE id = %(id)s AND status IN ('failed', 'retrying', 'cancelled')
            {STEP}SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id = %(id)s AND ROW_COUNT() > 0""",
        # The rows are the first step's: the job as it was, locked until deleted.
        "delete_job": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE id = %(id)s AND (%(force)s OR status <> 'running') FOR UPDATE
            {STEP}DELETE FROM sdj_jobs
            WHERE id = %(id)s AND (%(force)s OR status <> 'running')""",
        "delete_checkpoints": "DELETE FROM sdj_checkpoints WHERE job_id = %(id)s",
        **_MYSQL_SEARCH,
    }
    limits_sql: ClassVar[dict[str, str]] = _MYSQL_LIMITS
    explain_sql: ClassVar[dict[str, str]] = _MYSQL_EXPLAIN

    # -- engines and connections --------------------------------------------------------

    @classmethod
    def engine_url(cls, url: sa.URL) -> sa.URL:
        if importlib.util.find_spec("pymysql") is None:
            raise MissingDriver(MISSING_DRIVER)
        # PyMySQL is this library's MySQL driver whatever the URL names.
        return url.set(drivername=f"{url.get_backend_name()}+pymysql")

    @classmethod
    def create_engine(cls, url: sa.URL) -> sa.Engine:
        from pymysql.constants import CLIENT  # type: ignore[import-untyped]

        # The engine keeps SQLAlchemy's usual transactions; the storage's own statements
        # run in autocommit. READ COMMITTED: a claim's locking read takes no gap locks.
        return sa.create_engine(
            url,
            pool_size=10,
            max_overflow=40,
            isolation_level="READ COMMITTED",
            connect_args={"charset": "utf8mb4", "client_flag": CLIENT.FOUND_ROWS},
        )

    def cursor(self, raw: Any) -> Any:
        return raw.cursor(_cursor_class())

    def enter_autocommit(self, conn: Any) -> Any:
        # PyMySQL switches autocommit with a method.
        was = conn.get_autocommit()
        conn.autocommit(True)
        return was

    def restore_autocommit(self, conn: Any, was: Any) -> None:
        conn.autocommit(was)

    def begin(
        self, raw: Any, cur: Any, *, write: bool, atomic: bool
    ) -> contextlib.AbstractContextManager[Any] | None:
        # A claim or a completion runs several statements even when not ``atomic``.
        if not (write or atomic):
            return None
        return _Transaction(raw, cur)

    def lock_migrations(self, cur: Any) -> None:
        # A named lock, per database; DDL commits by itself, so it is held until the
        # migration's transaction ends (``_Transaction``), not until a commit.
        cur.execute(_LOCK_MIGRATIONS, {})
        [(got,)] = cur.fetchall()
        if got != 1:
            raise TimeoutError("another process has been migrating this database for 60 s")
        cur.sdj_migrating = True

    def missing_table(self, error: BaseException) -> bool:
        return _code(error) == 1146  # ER_NO_SUCH_TABLE

    def unavailable(self, error: BaseException) -> bool:
        return _code(error) in _UNAVAILABLE_CODES

    # -- writes -------------------------------------------------------------------------

    def insert_in(
        self, storage: SQLStorage, cur: Any, chunks: Iterable[list[Job]], now: datetime
    ) -> list[str]:
        # PyMySQL sends an executemany of one INSERT as multi-row INSERTs.
        ids: list[str] = []
        for chunk in chunks:
            rows = storage._stamp(chunk, now)
            cur.executemany(self.sql["insert_job"], [storage._insert_params(r) for r in rows])
            ids.extend(job.id for job in chunk)
        return ids

    def complete_in(self, cur: Any, params: dict[str, Any]) -> bool:
        cur.execute(self.sql["complete"], params)
        if cur.rowcount < 1:  # rows matched: the fence refused it
            return False
        cur.execute(self.sql["delete_checkpoints"], {"job_id": params["id"]})
        return True

    def claim_rows(
        self, cur: Any, params: dict[str, Any], statement: str | None = None
    ) -> list[Any]:
        select, take, read = (statement or self.sql["claim"]).split(STEP)
        cur.execute(select, params)
        ids = [row[0] for row in cur.fetchall()]
        if not ids:
            return []
        marks = ", ".join(f"%(id_{i})s" for i in range(len(ids)))
        bound = {**params, **{f"id_{i}": id_ for i, id_ in enumerate(ids)}}
        cur.execute(take.replace(_IDS, marks), bound)
        cur.execute(read.replace(_IDS, marks), bound)
        rows: list[Any] = list(cur.fetchall())
        return rows

    # -- wake-ups -----------------------------------------------------------------------

    def listener(self, engine: sa.Engine) -> Listener | None:
        return MySQLWatcher(engine)

    def notify_queues(self, cur: Any, queues: Sequence[str]) -> None:
        # Committed with the wake-up it announces: the watchers read these counters.
        for queue in sorted(set(queues)):
            cur.execute(_WAKE, {"queue": queue})

    # -- values -------------------------------------------------------------------------

    def time_param(self, value: datetime | None) -> Any:
        # DATETIME holds no zone: naive UTC.
        return None if value is None else utc(value).replace(tzinfo=None)

    def time_value(self, value: Any) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return utc(value)

    def list_param(self, values: Sequence[str]) -> Any:
        return json.dumps(list(values))


# -- machinery of MySQL's own, beside the hooks that use it ---------------------------

# A named lock is server-wide: one per database (a lock name is at most 64 characters).
_MIGRATION_LOCK = "CONCAT('sdj_migrate:', LEFT(MD5(COALESCE(DATABASE(), '')), 32))"
_LOCK_MIGRATIONS = f"SELECT GET_LOCK({_MIGRATION_LOCK}, 60)"
_UNLOCK_MIGRATIONS = f"SELECT RELEASE_LOCK({_MIGRATION_LOCK})"


def _code(error: BaseException) -> int | None:
    """The MySQL error number of a PyMySQL error."""
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class _Transaction:
    """A transaction on a connection in autocommit: BEGIN, and at its end the migration
    lock (if taken) released once the migration is committed."""

    def __init__(self, raw: Any, cur: Any) -> None:
        self._raw, self._cur = raw, cur

    def __enter__(self) -> Any:
        self._raw.driver_connection.begin()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        cur = self._cur
        if not getattr(cur, "sdj_migrating", False):
            return
        cur.sdj_migrating = False
        if exc is None:
            self._raw.commit()  # the versions recorded, before another migrator looks
        try:
            cur.execute(_UNLOCK_MIGRATIONS, {})
            cur.fetchall()
        except Exception:  # a broken connection: the server releases its locks
            log.debug("releasing the migration lock failed", exc_info=True)


@functools.cache
def _cursor_class() -> type[Any]:
    """PyMySQL's cursor with what this backend needs (made on first use: PyMySQL is
    imported only by a storage on MySQL)."""
    import pymysql

    class Cursor(pymysql.cursors.Cursor):  # type: ignore[misc]
        """Runs a statement of several steps (``STEP``) in turn; its rows are those of
        the last step with a result set. While migrating, a step that finds its work
        done (table, column or index exists) is passed over."""

        sdj_migrating = False

        def execute(self, query: str, args: Any = None) -> int:
            if STEP not in query:
                return self._step(query, args)
            kept: tuple[Any, Any] | None = None
            count = 0
            cur: Any = self  # PyMySQL's attributes are untyped
            for step in query.split(STEP):
                count = self._step(step, args)
                if cur.description is not None:
                    kept = (cur._rows, cur.description)
            if kept is not None and cur.description is None:
                cur._rows, cur.description = kept
                cur.rownumber = 0
            return count

        def _step(self, query: str, args: Any) -> int:
            if not self.sdj_migrating:
                return int(super().execute(query, args))
            try:
                return int(super().execute(query, args))
            except pymysql.MySQLError as exc:
                if _code(exc) not in _ALREADY_DONE:
                    raise
                log.info("migration: %s (done before)", exc.args[1])
                return 0

    return Cursor


# -- wake-ups -------------------------------------------------------------------------

_TOP = """SELECT (SELECT COALESCE(MAX(seq), 0) FROM sdj_jobs),
    (SELECT COALESCE(MAX(seq), 0) FROM sdj_signals)"""
# One probe of each seq index when nothing is new: the queues of new jobs (kind 0) and
# of signalled jobs (kind 1: a signal may have made its job due), and the wake counters
# (kind 2: one row per queue, for jobs woken from a wait).
_NEW_JOBS = """SELECT queue, MAX(seq) AS top, 0 AS kind FROM sdj_jobs
    WHERE seq > %(after)s GROUP BY queue
    UNION ALL SELECT j.queue, MAX(s.seq), 1 FROM sdj_signals AS s
    JOIN sdj_jobs AS j ON j.id = s.job_id WHERE s.seq > %(signalled)s GROUP BY j.queue
    UNION ALL SELECT queue, seq, 2 FROM sdj_wakes"""
_WAKES = "SELECT queue, seq FROM sdj_wakes"
_WAKE = """INSERT INTO sdj_wakes (queue, seq) VALUES (%(queue)s, 1)
    ON DUPLICATE KEY UPDATE seq = seq + 1"""


class MySQLWatcher(ListenerThread):
    """Notices jobs inserted by other processes, within ``interval`` seconds.

    MySQL has no notifications: a cheap query (one probe of the ``seq`` index) asks for
    jobs numbered after the last one seen, and wakes workers for their queues (and
    likewise for signals, which may have made their job due, and for the wake counters of
    jobs woken from a wait). A job whose insert commits
    after a later-numbered one's was seen is left to the workers' polling.
    """

    def __init__(self, engine: sa.Engine, interval: float = 0.05) -> None:
        super().__init__(engine)
        self._interval = interval

    def _listen(
        self, conn: Any, on_notify: Notify, on_reconnect: Callable[[], None], stop: threading.Event
    ) -> None:
        conn.autocommit(True)  # each probe sees the latest commits
        cur = conn.cursor()
        cur.execute(_TOP, {})
        [(last, signalled)] = cur.fetchall()
        cur.execute(_WAKES, {})
        wakes = dict(cur.fetchall())
        on_reconnect()
        while not stop.wait(self._interval):
            cur.execute(_NEW_JOBS, {"after": last, "signalled": signalled})
            rows = cur.fetchall()
            for queue, top, kind in rows:
                if kind == 2:
                    if wakes.get(queue) == top:
                        continue
                    wakes[queue] = top
                elif kind:
                    signalled = max(signalled, top)
                else:
                    last = max(last, top)
                on_notify(queue)
