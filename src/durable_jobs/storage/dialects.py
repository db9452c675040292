"""Everything that differs between SQLite and PostgreSQL, side by side under the same names.

Both dialects take the same named parameters (``:name`` for SQLite, ``%(name)s`` for
psycopg), so ``SQLStorage`` builds one parameter dict and runs either text.
``tests/unit/test_dialects.py`` checks that both define every statement.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

JOB_COLUMNS = (
    "id, type, args, queue, priority, status, attempt, max_retries, last_error, run_at, "
    "started_at, completed_at, created_at, updated_at, result, backoff, locked_by, heartbeat_at, "
    "meta, fence, lock_expires_at"
)
INSERT_COLUMNS = (
    "id, type, args, queue, priority, status, attempt, max_retries, run_at, created_at, "
    "updated_at, backoff, meta"
)
INSERT_WIDTH = len(INSERT_COLUMNS.split(","))
CHECKPOINT_COLUMNS = "id, job_id, call_index, call_type, result, error, created_at, scope"
SCHEDULE_COLUMNS = "name, spec, queue, last_fire_at, next_fire_at, updated_at"
WORKER_COLUMNS = "id, host, pid, queues, types, started_at, heartbeat_at"

# Statement names every dialect defines (checked by a unit test).
STATEMENTS = (
    "insert_job",
    "insert_claimed_job",
    "claim",
    "complete",
    "complete_many",
    "fail",
    "release",
    "settled",
    "heartbeat_job",
    "heartbeat_worker_jobs",
    "upsert_worker",
    "delete_worker",
    "live_workers",
    "prune_workers",
    "expired_locks",
    "stale_locks",
    "reap",
    "get_job",
    "jobs_by_status",
    "due_jobs",
    "save_checkpoint",
    "get_checkpoints",
    "delete_checkpoints",
    "schema_versions",
    "record_version",
    "queue_depths",
    "insert_unique_job",
    "upsert_schedule",
    "list_schedules",
)


def _utc(value: datetime) -> datetime:
    # Naive datetimes are UTC, as everywhere in the library (astimezone would take local time).
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Dialect:
    """Base of the per-database pieces; subclasses fill in the SQL texts."""

    name: ClassVar[str]
    migrations: ClassVar[tuple[tuple[str, ...], ...]]
    sql: ClassVar[dict[str, str]]

    def time_param(self, value: datetime | None) -> Any:
        """A datetime as the driver should bind it (aware UTC; naive means UTC)."""
        return None if value is None else _utc(value)

    def missing_table(self, error: BaseException) -> bool:
        """Whether the driver's ``error`` says a statement's table does not exist."""
        return False

    def time_value(self, value: Any) -> datetime | None:
        """A timestamp read from the database as an aware UTC datetime."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value if value.tzinfo is UTC else value.astimezone(UTC)

    def list_param(self, values: Sequence[str]) -> Any:
        """A list of strings as a single bound parameter."""
        return list(values)


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

# SQLite has no server: every process using the file shares the host's clock, which is
# the database's clock. Times in the fixed-width text of ``time_param`` (milliseconds).
_SQLITE_CLOCK = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"
_SQLITE_EXPIRY = (
    "(strftime('%Y-%m-%d %H:%M:%f', 'now', printf('%+.6f seconds', :lock_timeout)) || '000')"
)
_SQLITE_LEGACY_EXPIRY = (
    "(strftime('%Y-%m-%d %H:%M:%f', heartbeat_at, printf('%+.6f seconds', :lock_timeout)) || '000')"
)


class SQLiteDialect(Dialect):
    """SQLite: writes serialise on the database lock, so claims run in IMMEDIATE transactions.

    Timestamps are stored as fixed-width ISO text in UTC, which sorts chronologically
    and stays readable in the ``sqlite3`` shell.
    """

    name = "sqlite"
    migrations = (
        _SQLITE_MIGRATION_1,
        _SQLITE_MIGRATION_2,
        _SQLITE_MIGRATION_3,
        _SQLITE_MIGRATION_4,
    )

    def time_param(self, value: datetime | None) -> Any:
        if value is None:
            return None
        return _utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")

    def time_value(self, value: Any) -> datetime | None:
        if value is None:
            return None
        return datetime.fromisoformat(value).replace(tzinfo=UTC)

    def list_param(self, values: Sequence[str]) -> Any:
        return json.dumps(list(values))

    def missing_table(self, error: BaseException) -> bool:
        # SQLite gives this no error code of its own, only the message.
        return isinstance(error, sqlite3.OperationalError) and "no such table" in str(error)

    @staticmethod
    @functools.cache
    def insert_rows(count: int) -> str:
        """An INSERT of ``count`` rows bound positionally: one statement for many rows
        steps once, where ``executemany`` steps and resets once per row."""
        row = f"({', '.join(['?'] * INSERT_WIDTH)})"
        return f"INSERT INTO sdj_jobs ({INSERT_COLUMNS}) VALUES {', '.join([row] * count)}"

    sql: ClassVar[dict[str, str]] = {
        "insert_job": f"INSERT INTO sdj_jobs ({INSERT_COLUMNS}) VALUES (:id, :type, :args,"
        " :queue, :priority, :status, 0, :max_retries, :run_at, :now, :now, :backoff, :meta)",
        # A job enqueued in a process whose worker has a free slot starts out claimed.
        "insert_claimed_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}, locked_by,
                heartbeat_at, started_at, fence, lock_expires_at)
            VALUES (:id, :type, :args, :queue, :priority, 'running', 1, :max_retries, :run_at,
                :now, :now, :backoff, :meta, :worker, :now, :now, 1, {_SQLITE_EXPIRY})""",
        # SQLite has no SKIP LOCKED; the IMMEDIATE transaction around this makes the
        # select-and-update atomic, and rowid breaks ties in enqueue order.
        # Claims return the enqueue-order key last, to restore dequeue order in Python.
        "claim": f"""UPDATE sdj_jobs SET status = 'running', attempt = attempt + 1,
            fence = fence + 1, lock_expires_at = {_SQLITE_EXPIRY},
            locked_by = :worker, heartbeat_at = :now, started_at = :now, updated_at = :now
            WHERE id IN (
                SELECT id FROM sdj_jobs
                WHERE queue = :queue AND status IN ('pending', 'retrying') AND run_at <= :now
                  AND type NOT IN (SELECT value FROM json_each(:skip))
                  AND max_retries >= :min_retries
                ORDER BY priority DESC, run_at, rowid
                LIMIT :limit)
            RETURNING {JOB_COLUMNS}, rowid""",
        "complete": """UPDATE sdj_jobs SET status = 'completed', result = :result,
            completed_at = :now, updated_at = :now, heartbeat_at = NULL, lock_expires_at = NULL
            WHERE id = :id AND status = 'running'
              AND (:worker IS NULL OR (locked_by = :worker AND fence = :fence))
            RETURNING id""",
        # SQLite runs "complete" once per job inside one transaction instead.
        "complete_many": "",
        "fail": """UPDATE sdj_jobs SET status = :status, last_error = :error,
            run_at = COALESCE(:run_at, run_at), completed_at = :completed_at,
            updated_at = :now, heartbeat_at = NULL, lock_expires_at = NULL
            WHERE id = :id AND status = 'running'
              AND (:worker IS NULL OR (locked_by = :worker AND fence = :fence))
            RETURNING id""",
        "release": """UPDATE sdj_jobs SET
            status = CASE WHEN attempt <= 1 THEN 'pending' ELSE 'retrying' END,
            attempt = attempt - 1, locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL,
            updated_at = :now
            WHERE id = :id AND status = 'running' AND locked_by = :worker AND fence = :fence""",
        # Outcomes leave locked_by naming the run's owner (reap and release clear it), so a
        # worker whose outcome write lost its reply can tell whether it was committed.
        "settled": """SELECT id, fence, status FROM sdj_jobs
            WHERE locked_by = :worker AND status <> 'running'
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
            VALUES (:id, :host, :pid, :queues, :types, :now, :now)
            ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                queues = excluded.queues, types = excluded.types""",
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
        "reap": """UPDATE sdj_jobs SET status = :status, completed_at = :completed_at,
            last_error = 'WorkerLost: worker ' || COALESCE(locked_by, '?') || :error,
            run_at = COALESCE(:run_at, run_at), updated_at = :now,
            locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL
            WHERE id = :id AND status = 'running' AND fence = :fence""",
        "get_job": f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id = :id",
        "jobs_by_status": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE status = :status
            ORDER BY created_at, rowid LIMIT :limit""",
        "due_jobs": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= :now
            ORDER BY priority DESC, run_at, rowid LIMIT :limit""",
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
        "queue_depths": """SELECT queue, COUNT(*), MIN(run_at) FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= :now GROUP BY queue""",
        # The WHERE names the partial unique index as the conflict target.
        "insert_unique_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}, unique_key)
            VALUES (:id, :type, :args, :queue, :priority, :status, 0, :max_retries, :run_at,
                :now, :now, :backoff, :meta, :unique_key)
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
            RETURNING id""",
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
    }
    create_version_table = """CREATE TABLE IF NOT EXISTS sdj_schema_version (
        version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"""


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

# Lock expiry runs on the server's clock, never on the workers' and reapers' own clocks,
# which need not agree. clock_timestamp(): the moment the row is written, not the start
# of its transaction, so a lock never starts out shorter than its timeout.
_POSTGRES_EXPIRY = "(clock_timestamp() + %(lock_timeout)s::float8 * interval '1 second')"
_POSTGRES_LEGACY_EXPIRY = "(heartbeat_at + %(lock_timeout)s::float8 * interval '1 second')"

# Any constant works as long as every process uses the same one.
MIGRATION_LOCK_KEY = 0x5D1_0B5


class PostgresDialect(Dialect):
    """PostgreSQL: ``FOR UPDATE SKIP LOCKED`` claims, ``pg_notify`` wake-ups, advisory locks."""

    name = "postgresql"
    migrations = (
        _POSTGRES_MIGRATION_1,
        _POSTGRES_MIGRATION_2,
        _POSTGRES_MIGRATION_3,
        _POSTGRES_MIGRATION_4,
    )

    def missing_table(self, error: BaseException) -> bool:
        return getattr(error, "sqlstate", None) == "42P01"  # undefined_table

    sql: ClassVar[dict[str, str]] = {
        # A due job wakes listening workers: notifying from RETURNING costs no extra
        # round trip (nor the plan of a CTE around the INSERT), and PostgreSQL delivers
        # the notification only when the insert commits.
        "insert_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}) VALUES (%(id)s, %(type)s,
                %(args)s, %(queue)s, %(priority)s, %(status)s, 0, %(max_retries)s, %(run_at)s,
                %(now)s, %(now)s, %(backoff)s, %(meta)s)
            RETURNING CASE WHEN run_at <= %(now)s THEN pg_notify('sdj_jobs', queue)::text END""",
        "insert_claimed_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}, locked_by,
                heartbeat_at, started_at, fence, lock_expires_at)
            VALUES (%(id)s, %(type)s, %(args)s, %(queue)s, %(priority)s, 'running', 1,
                %(max_retries)s, %(run_at)s, %(now)s, %(now)s, %(backoff)s, %(meta)s,
                %(worker)s, %(now)s, %(now)s, 1, {_POSTGRES_EXPIRY})""",
        "claim": f"""WITH next AS (
                SELECT id FROM sdj_jobs
                WHERE queue = %(queue)s AND status IN ('pending', 'retrying')
                  AND run_at <= %(now)s AND NOT (type = ANY(%(skip)s))
                  AND max_retries >= %(min_retries)s
                ORDER BY priority DESC, run_at, seq
                LIMIT %(limit)s
                FOR UPDATE SKIP LOCKED)
            UPDATE sdj_jobs AS j SET status = 'running', attempt = j.attempt + 1,
                fence = j.fence + 1, lock_expires_at = {_POSTGRES_EXPIRY},
                locked_by = %(worker)s, heartbeat_at = %(now)s, started_at = %(now)s,
                updated_at = %(now)s
            FROM next WHERE j.id = next.id
            RETURNING {", ".join("j." + c for c in JOB_COLUMNS.split(", "))}, j.seq""",
        "complete": """WITH done AS (
                UPDATE sdj_jobs SET status = 'completed', result = %(result)s,
                    completed_at = %(now)s, updated_at = %(now)s, heartbeat_at = NULL,
                    lock_expires_at = NULL
                WHERE id = %(id)s AND status = 'running'
                  AND (%(worker)s::text IS NULL
                       OR (locked_by = %(worker)s AND fence = %(fence)s::int))
                RETURNING id),
            gone AS (DELETE FROM sdj_checkpoints c USING done WHERE c.job_id = done.id)
            SELECT id FROM done""",
        # One statement completes a whole batch and drops the batch's checkpoints.
        "complete_many": """WITH v AS (
                SELECT * FROM unnest(%(ids)s::text[], %(fences)s::int[], %(results)s::text[])
                    AS v(id, fence, result)),
            done AS (
                UPDATE sdj_jobs AS j SET status = 'completed', result = v.result,
                    completed_at = %(now)s, updated_at = %(now)s, heartbeat_at = NULL,
                    lock_expires_at = NULL
                FROM v WHERE j.id = v.id AND j.status = 'running'
                  AND j.locked_by = %(worker)s AND j.fence = v.fence
                RETURNING j.id),
            gone AS (DELETE FROM sdj_checkpoints c USING done WHERE c.job_id = done.id)
            SELECT id FROM done""",
        "fail": """UPDATE sdj_jobs SET status = %(status)s, last_error = %(error)s,
            run_at = COALESCE(%(run_at)s, run_at), completed_at = %(completed_at)s,
            updated_at = %(now)s, heartbeat_at = NULL, lock_expires_at = NULL
            WHERE id = %(id)s AND status = 'running'
              AND (%(worker)s::text IS NULL
                   OR (locked_by = %(worker)s AND fence = %(fence)s::int))
            RETURNING id""",
        "release": """UPDATE sdj_jobs SET
            status = CASE WHEN attempt <= 1 THEN 'pending' ELSE 'retrying' END,
            attempt = attempt - 1, locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL,
            updated_at = %(now)s
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s
              AND fence = %(fence)s""",
        "settled": """SELECT id, fence, status FROM sdj_jobs
            WHERE id = ANY(%(ids)s::text[]) AND locked_by = %(worker)s AND status <> 'running'""",
        "heartbeat_job": f"""UPDATE sdj_jobs SET heartbeat_at = %(now)s,
                lock_expires_at = {_POSTGRES_EXPIRY}
            WHERE id = %(id)s AND status = 'running' AND locked_by = %(worker)s""",
        "heartbeat_worker_jobs": f"""UPDATE sdj_jobs SET heartbeat_at = %(now)s,
                lock_expires_at = {_POSTGRES_EXPIRY}
            WHERE status = 'running' AND locked_by = %(worker)s
              AND (%(jobs)s::text[] IS NULL OR id = ANY(%(jobs)s::text[]))""",
        "upsert_worker": f"""INSERT INTO sdj_workers ({WORKER_COLUMNS})
            VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(types)s, %(now)s, %(now)s)
            ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                queues = excluded.queues, types = excluded.types""",
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
        "reap": """UPDATE sdj_jobs SET status = %(status)s, completed_at = %(completed_at)s,
            last_error = 'WorkerLost: worker ' || COALESCE(locked_by, '?') || %(error)s::text,
            run_at = COALESCE(%(run_at)s, run_at), updated_at = %(now)s,
            locked_by = NULL, heartbeat_at = NULL, lock_expires_at = NULL
            WHERE id = %(id)s AND status = 'running' AND fence = %(fence)s::int""",
        "get_job": f"SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE id = %(id)s",
        "jobs_by_status": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs WHERE status = %(status)s
            ORDER BY created_at, seq LIMIT %(limit)s""",
        "due_jobs": f"""SELECT {JOB_COLUMNS} FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s
            ORDER BY priority DESC, run_at, seq LIMIT %(limit)s""",
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
        "queue_depths": """SELECT queue, COUNT(*), MIN(run_at) FROM sdj_jobs
            WHERE status IN ('pending', 'retrying') AND run_at <= %(now)s GROUP BY queue""",
        # Notifies like insert_job, and only when the row was inserted: a conflict
        # returns no row.
        "insert_unique_job": f"""INSERT INTO sdj_jobs ({INSERT_COLUMNS}, unique_key)
            VALUES (%(id)s, %(type)s, %(args)s, %(queue)s, %(priority)s, %(status)s, 0,
                %(max_retries)s, %(run_at)s, %(now)s, %(now)s, %(backoff)s, %(meta)s,
                %(unique_key)s)
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
            RETURNING id,
                CASE WHEN run_at <= %(now)s THEN pg_notify('sdj_jobs', queue)::text END""",
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
    }
    create_version_table = """CREATE TABLE IF NOT EXISTS sdj_schema_version (
        version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"""
    # Binary: the server parses nothing, and psycopg formats the rows in C.
    copy_jobs = f"COPY sdj_jobs ({INSERT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
    copy_types = (
        *("text",) * 4,
        "int4",
        "text",
        "int4",
        "int4",
        *("timestamptz",) * 3,
        "text",
        "text",
    )
    notify = "SELECT pg_notify('sdj_jobs', q) FROM unnest(%(queues)s::text[]) AS q"
    lock_migrations = "SELECT pg_advisory_xact_lock(%(key)s)"


def dialect_for(name: str) -> Dialect:
    """The dialect for a SQLAlchemy dialect name."""
    if name == "sqlite":
        return SQLiteDialect()
    if name == "postgresql":
        return PostgresDialect()
    raise ValueError(
        f"unsupported database {name!r}: simple-durable-jobs runs on sqlite and postgresql"
    )
