"""The seam between ``SQLStorage`` and a database: the ``Dialect`` base every backend fills in.

``SQLStorage`` (``sql.py``) is dialect-neutral: it builds parameter dicts, runs named
statements on driver cursors and turns rows into records. Everything that differs
between databases sits in one module per backend, as a ``Dialect`` subclass:

- ``sqlite.py``: ``SQLiteDialect``; ``postgres.py``: ``PostgresDialect``; ``mysql.py``:
  ``MySQLDialect`` (MySQL 8 and MariaDB 10.6+);
- each holds its named statements (``sql``, in ``STATEMENTS`` order, and ``admin_sql``
  in ``admin.STATEMENTS`` order) so that a reader sees each database's version of the
  same query side by side; all take the same named parameters (``:name`` for SQLite,
  ``%(name)s`` for psycopg and PyMySQL) and name their result columns alike, since rows are read by
  column name; ``tests/unit/test_dialects.py`` checks the names and parameters;
- and the hooks below: engine creation and connection set-up, transactions, bulk
  insert, grouped completion, the migration lock, the wake-up listener and error
  classification.

A new backend is one more module with a ``Dialect`` subclass and
one more line in ``_BACKENDS``; ``SQLStorage`` does not change.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa

from .urls import masked

if TYPE_CHECKING:
    from ..job import Job
    from .notify import ListenerThread
    from .protocol import Listener
    from .records import Outcome
    from .sql import SQLStorage

__all__ = [
    "CHECKPOINT_COLUMNS",
    "INSERT_COLUMNS",
    "JOB_COLUMNS",
    "STATEMENTS",
    "Dialect",
    "GroupCommit",
    "MissingDriver",
    "database_file",
    "dialect_for",
    "dialect_for_url",
]

JOB_COLUMNS = (
    "id, type, args, queue, priority, status, attempt, max_retries, last_error, run_at, "
    "started_at, completed_at, created_at, updated_at, result, backoff, locked_by, heartbeat_at, "
    "meta, fence, lock_expires_at, finished_at, finished_by, traceback, parent_id, progress, "
    "wait_until, waiting_for, parent_group, unique_key, tags, timeout_seconds, concurrency_key, "
    "rate_key, paused_from"
)
INSERT_COLUMNS = (
    "id, type, args, queue, priority, status, attempt, max_retries, run_at, created_at, "
    "updated_at, backoff, meta, parent_id, parent_group, unique_key, tags, timeout_seconds, "
    "concurrency_key, rate_key"
)
INSERT_WIDTH = len(INSERT_COLUMNS.split(","))
CHECKPOINT_COLUMNS = "id, job_id, call_index, call_type, result, error, created_at, scope"
SCHEDULE_COLUMNS = "name, spec, queue, last_fire_at, next_fire_at, updated_at"
WORKER_COLUMNS = "id, host, pid, queues, types, started_at, heartbeat_at, version"

# Statement names every dialect defines, in the order each backend module lists them
# (checked by a unit test). Statements that return rows name their columns the same way
# in every dialect: ``SQLStorage`` reads rows by column name.
STATEMENTS = (
    "insert_job",
    "insert_claimed_job",
    "claim",
    "complete",
    "fail",
    "suspend",
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
    "next_wake",
    "due_waiting",
    "set_progress",
    "lock_job",
    "insert_signal",
    "wake_signalled",
    "claim_signalled",
    "lock_run",
    "pending_signals",
    "delete_signals",
    "settle_child",
    "settle_children",
    "wake_parent",
    "cancellable_children",
    "cancellable",
    "cancel_jobs",
    "children_of",
    "cancelled_among",
    "pause_job",
    "resume_job",
    "pause_queue",
    "resume_queue",
    "paused_queues",
    "start_children_wait",
    "regroup_children",
    "count_children",
    "children_outcomes",
    "group_outcomes",
    "decided_parents",
    "save_checkpoint",
    "get_checkpoints",
    "delete_checkpoints",
    "schema_versions",
    "record_version",
    "queue_depths",
    "waiting_counts",
    "insert_unique_job",
    "unique_holder",
    "release_unique",
    "upsert_schedule",
    "list_schedules",
    "record_attempt",
    "record_lost_attempt",
    "attempts",
    "prunable",
    "prune_checkpoints",
    "prune_signals",
    "prune_attempts",
    "prune_labels",
    "prune_jobs",
)


class MissingDriver(ImportError):
    """A database URL needs a driver that is not installed (an optional extra)."""


# The statements of ``search.py`` that PostgreSQL and MySQL write alike (their drivers
# both take ``%(name)s`` parameters); each adds its own ``retry_failed``.
PYFORMAT_SEARCH = {
    "created_after": " AND created_at >= %(created_after)s",
    "created_before": " AND created_at < %(created_before)s",
    "labelled_page": f"""SELECT {JOB_COLUMNS}, l.job_seq AS position
        FROM sdj_job_labels AS l JOIN sdj_jobs AS j ON j.id = l.job_id
        WHERE l.kind = %(kind)s AND l.label = %(label)s AND l.value = %(value)s{{filters}}
        ORDER BY l.created {{order}}, l.job_seq {{order}} LIMIT %(limit)s""",
    "labelled_status": " AND j.status = %(status)s",
    "labelled_queue": " AND j.queue = %(queue)s",
    "labelled_type": " AND j.type = %(type)s",
    "labelled_older": " AND l.created <= %(created_at)s"
    " AND (l.created < %(created_at)s OR l.job_seq < %(tie)s)",
    "labelled_newer": " AND l.created >= %(created_at)s"
    " AND (l.created > %(created_at)s OR l.job_seq > %(tie)s)",
    "labelled_after": " AND l.created >= %(created_after)s",
    "labelled_before": " AND l.created < %(created_before)s",
    "labelled_also": """ AND EXISTS (SELECT 1 FROM sdj_job_labels AS also_l
        WHERE also_l.job_id = l.job_id AND also_l.kind = %(also_kind)s
          AND also_l.label = %(also_label)s AND also_l.value = %(also_value)s)""",
    "failed_batch": """SELECT id, created_at, queue FROM sdj_jobs
        WHERE status = 'failed' AND created_at >= %(after_at)s
          AND (created_at > %(after_at)s OR id > %(after_id)s)
          AND finished_at <= %(until)s{filters}
        ORDER BY created_at, id LIMIT %(limit)s""",
    "failed_since": " AND finished_at >= %(since)s",
}


def utc(value: datetime) -> datetime:
    """``value`` as aware UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is not None:
        return value.astimezone(UTC)
    # Built anew: a fifth of the cost of ``value.replace(tzinfo=UTC)``, on a hot path
    # (every time MySQL returns).
    v = value
    return datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, UTC)


class GroupCommit:
    """Runs single-statement writes, possibly committing several together (see
    ``SQLiteDialect``); ``run`` returns the statement's rows once it is committed."""

    def run(self, sql: str, params: dict[str, Any]) -> list[Any]:
        raise NotImplementedError


class Dialect:
    """One database's statements and the hooks ``SQLStorage`` calls instead of branching.

    An instance serves one storage. Class attributes describe the database; methods
    taking ``storage`` run on its connections (``storage._cursor`` for a transaction,
    ``storage._run``/``storage._execute`` for a statement that commits by itself).

    Returning rows: ``claim``, ``complete``, ``fail``, ``suspend``, ``set_progress``,
    ``settle_child``, ``settle_children``, ``wake_parent``, ``claim_signalled``,
    ``save_checkpoint`` and ``insert_unique_job`` use ``UPDATE``/``INSERT … RETURNING``.
    A backend without ``UPDATE … RETURNING`` (MariaDB 10.11 has RETURNING for INSERT and
    DELETE only) plugs in by overriding ``claim_rows`` (select ``FOR UPDATE SKIP LOCKED``
    the ids, update them, select the rows back, all in the claim's transaction),
    ``complete`` and ``complete_many`` (a plain fenced UPDATE: ``cursor.rowcount`` says
    whether it took), and by giving ``fail``, ``suspend``, ``set_progress``,
    ``save_checkpoint`` and ``insert_unique_job`` statements that read back what they
    wrote (``mysql.py`` does it in steps its cursor runs in turn).
    Without ``LISTEN``, ``listener`` returns a poller (or None: the worker's polling and
    in-process wake-ups then do).
    """

    #: The SQLAlchemy dialect name (``engine.dialect.name``).
    name: ClassVar[str]
    #: Schema steps: migration N is ``migrations[N - 1]``, each a tuple of statements.
    migrations: ClassVar[tuple[tuple[str, ...], ...]]
    #: The named statements, in ``STATEMENTS`` order.
    sql: ClassVar[dict[str, str]]
    #: The operator tools' statements, in ``admin.STATEMENTS`` order.
    admin_sql: ClassVar[dict[str, str]]
    #: The statements of concurrency caps and rate limits, in ``limits.STATEMENTS`` order.
    limits_sql: ClassVar[dict[str, str]]
    #: The reads of ``queue.explain`` and the worker registry, in ``explain.STATEMENTS`` order.
    explain_sql: ClassVar[dict[str, str]]
    create_version_table: ClassVar[str]
    #: The driver connection's attribute and value that put it in autocommit (for
    #: drivers that switch it with a method, override ``enter_autocommit`` instead).
    autocommit: ClassVar[tuple[str, Any]]
    #: Whether the database takes one writer at a time: this process's writers then
    #: queue on a lock of the storage rather than on the database's.
    one_writer: ClassVar[bool] = False
    #: Seconds a write of many transactions in a row (a prune) pauses between them, so
    #: that writers waiting for the database's only write lock get their turn.
    writer_pause: ClassVar[float] = 0.0
    #: The statement that lets the transaction under way commit without waiting for its
    #: log to reach the disk (None: the database cannot): a crash may undo it.
    lazy_commit: ClassVar[str | None] = None
    #: Errors a lone statement may fail with while another process holds a lock it
    #: needs: ``wait_for_lock`` then decides (none by default).
    busy_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Jobs of a batch built before they are sent.
    insert_chunk: ClassVar[int] = 1000
    #: The driver's module: its errors can only have been raised once it is imported.
    driver_module: ClassVar[str]
    #: The database's name for people.
    title: ClassVar[str]
    #: What a failed connection could not do: "cannot {verb} the database ...".
    unavailable_verb: ClassVar[str] = "reach"
    #: What to check when the database cannot be opened or reached.
    unavailable_hint: ClassVar[str] = (
        "Check that the server is running and that the URL's host, port, user, password"
        " and database name are right."
    )
    not_a_database_hint: ClassVar[str] = ""

    # -- engines and connections --------------------------------------------------------

    @classmethod
    def database_file(cls, url: sa.URL) -> str | None:
        """The file the database of ``url`` lives in, for a backend that keeps one (None
        for a server's database)."""
        return None

    @classmethod
    def engine_url(cls, url: sa.URL) -> sa.URL:
        """The URL the engine is made with (the driver it names); raises
        ``MissingDriver`` when that driver is not installed."""
        return url

    @classmethod
    def in_memory(cls, url: sa.URL) -> bool:
        """Whether ``url`` names a database only this process can see."""
        return False

    @classmethod
    def create_engine(cls, url: sa.URL) -> sa.Engine:
        """An engine for a storage that owns it."""
        return sa.create_engine(url)

    def configure(self, engine: sa.Engine, *, owned: bool) -> None:
        """Set up ``engine``'s connections (``owned``: the storage created the engine,
        so settings that are the user's choice on a user's engine may be made)."""

    def cursor(self, raw: Any) -> Any:
        """A new cursor on ``raw``, a pooled connection."""
        return raw.cursor()

    @staticmethod
    def wait_for_lock(cur: Any, sql: str, params: Any, exc: BaseException) -> None:
        """Run ``sql`` on ``cur`` again until the lock that made it fail with ``exc``
        (one of ``busy_errors``) is free; raises ``exc`` when that is not why it failed."""
        raise exc

    def enter_autocommit(self, conn: Any) -> Any:
        """Put the driver connection ``conn`` in autocommit; returns its setting before."""
        attr, on = self.autocommit
        was = getattr(conn, attr)
        setattr(conn, attr, on)
        return was

    def restore_autocommit(self, conn: Any, was: Any) -> None:
        """Give ``conn`` back the setting ``enter_autocommit`` returned."""
        setattr(conn, self.autocommit[0], was)

    @staticmethod
    def has_rows(cur: Any) -> bool:
        """Whether the last statement on ``cur`` returned a result set."""
        return cur.description is not None

    def begin(
        self, raw: Any, cur: Any, *, write: bool, atomic: bool
    ) -> contextlib.AbstractContextManager[Any] | None:
        """Open a transaction on ``raw`` (a pooled connection in driver autocommit) for
        statements on ``cur``: ``write`` marks writers, ``atomic`` several statements.
        Returns a context manager around the statements, or None when the transaction
        (if any) is begun already and ends with ``raw.commit()``."""
        return None

    def group_commit(self, storage: SQLStorage) -> GroupCommit | None:
        """What runs ``storage``'s grouped single-statement writes; None: run each alone."""
        return None

    @staticmethod
    def transient(error: BaseException) -> bool | None:
        """Whether the driver's ``error`` may go away if its statement is retried (a
        lost connection, a lock wait, a full disk); None if ``error`` is not one of
        this driver's errors."""
        return None

    # -- schema -------------------------------------------------------------------------

    def lock_migrations(self, cur: Any) -> None:
        """Serialise concurrent migrators for the rest of the transaction on ``cur``."""

    def missing_table(self, error: BaseException) -> bool:
        """Whether the driver's ``error`` says a statement's table does not exist."""
        return False

    def unavailable(self, error: BaseException) -> bool:
        """Whether the driver's ``error`` says the database cannot be reached or opened
        (refused, unknown host, wrong credentials or database name, no such file)."""
        return False

    def not_a_database(self, error: BaseException) -> bool:
        """Whether the driver's ``error`` says the URL names something that is not a
        database of this kind (or a corrupt one)."""
        return False

    # -- writes -------------------------------------------------------------------------

    def insert_many(
        self, storage: SQLStorage, chunks: Iterable[list[Job]], now: datetime
    ) -> list[str]:
        """Store batches of new jobs all-or-nothing in one transaction (each chunk
        stamped with ``storage._stamp``); returns their ids in order."""
        with storage._cursor(write=True, atomic=True) as cur:
            return self.insert_in(storage, cur, chunks, now)

    def insert_in(
        self, storage: SQLStorage, cur: Any, chunks: Iterable[list[Job]], now: datetime
    ) -> list[str]:
        """``insert_many`` within the transaction on ``cur`` (a parent's spawn stores
        its children and its checkpoint together)."""
        raise NotImplementedError

    def complete_in(self, cur: Any, params: dict[str, Any]) -> bool:
        """Complete one run (fenced) and drop its checkpoints, within the transaction on
        ``cur``; whether it was completed."""
        raise NotImplementedError

    def complete_many(
        self, cur: Any, worker_id: str, outcomes: Sequence[Outcome], now: Any
    ) -> set[str]:
        """Complete ``worker_id``'s runs (fenced) and drop their checkpoints, within the
        transaction on ``cur``; returns the ids accepted. ``now`` is a bound time.

        By default each run in turn (``complete_in``), inside the one transaction."""
        accepted = set()
        for o in outcomes:
            params = {
                "id": o.job_id,
                "result": None if o.result is None else o.result.decode(),
                "worker": worker_id,
                "fence": o.fence,
                "now": now,
            }
            if self.complete_in(cur, params):
                accepted.add(o.job_id)
        return accepted

    def claim_rows(
        self, cur: Any, params: dict[str, Any], statement: str | None = None
    ) -> list[Any]:
        """Claim jobs as the ``claim`` statement (or ``statement``, one written like it)
        does, within the transaction on ``cur``; returns the claimed rows (the job's
        columns and ``dequeue_order``). ``due_waiting`` is written like it: it takes
        the due waits as a claim takes due jobs."""
        cur.execute(statement or self.sql["claim"], params)
        rows: list[Any] = cur.fetchall()
        return rows

    # -- upkeep -------------------------------------------------------------------------

    def upkeep_warning(self, cur: Any) -> str | None:
        """A sentence for the operator when the database is set up in a way that slows
        the queue down over time (None when it is not)."""
        return None

    # -- wake-ups -----------------------------------------------------------------------

    def listener(self, engine: sa.Engine) -> Listener | None:
        """What reports new jobs from other processes; None when nothing needs to."""
        return None

    #: Marks a job (``%(id)s`` or ``:id``) as awaited by ``Queue.result``, so that its
    #: outcome is announced (PostgreSQL's trigger); None where no mark is needed.
    want_outcome: ClassVar[str | None] = None

    def outcome_listener(
        self, engine: sa.Engine, watched: Callable[[], list[str]]
    ) -> ListenerThread | None:
        """What tells ``Queue.result`` waiters (the jobs ``watched()`` gives) that their
        jobs may have finished (see ``outcomes.py``); None: they re-read on a timer."""
        return None

    def notify_queues(self, cur: Any, queues: Sequence[str]) -> None:
        """Tell other processes' workers, once the transaction on ``cur`` commits, that
        ``queues`` have jobs due now that no insert announced (jobs woken from a wait).
        Without notifications (the default) their polls find them."""

    # -- values -------------------------------------------------------------------------

    def time_param(self, value: datetime | None) -> Any:
        """A datetime as the driver should bind it (aware UTC; naive means UTC)."""
        return None if value is None else utc(value)

    def time_value(self, value: Any) -> datetime | None:
        """A timestamp read from the database as an aware UTC datetime."""
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value if value.tzinfo is UTC else value.astimezone(UTC)

    def list_param(self, values: Sequence[str]) -> Any:
        """A list of strings as a single bound parameter."""
        return list(values)


def _sqlite() -> type[Dialect]:
    from .sqlite import SQLiteDialect

    return SQLiteDialect


def _postgres() -> type[Dialect]:
    from .postgres import PostgresDialect

    return PostgresDialect


def _mysql() -> type[Dialect]:
    from .mysql import MySQLDialect

    return MySQLDialect


# SQLAlchemy backend name -> its dialect class. Each backend's module is imported when
# first used, so a driver is imported only by a storage on its database.
_BACKENDS: dict[str, Callable[[], type[Dialect]]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
    "mysql": _mysql,
    "mariadb": _mysql,
}
_URL_FORMS = (
    "sqlite:///path.db, sqlite:// (in memory), postgresql://user@host/db or mysql://user@host/db"
)


def _dialect_class(backend: str) -> type[Dialect] | None:
    load = _BACKENDS.get(backend)
    return None if load is None else load()


def imported_drivers() -> list[type[Dialect]]:
    """The dialects whose driver this process has imported (only they can have raised)."""
    found: list[type[Dialect]] = []
    for load in dict.fromkeys(_BACKENDS.values()):
        cls = load()
        if cls.driver_module in sys.modules:
            found.append(cls)
    return found


def dialect_for(name: str) -> Dialect:
    """The dialect for a SQLAlchemy dialect name."""
    cls = _dialect_class(name)
    if cls is None:
        raise ValueError(
            f"unsupported database {name!r}: simple-durable-jobs runs on sqlite, postgresql"
            " and mysql (or mariadb)"
        )
    return cls()


def database_file(url: str | sa.URL) -> str | None:
    """The file holding the database ``url`` names (a SQLite path, as given); None for a
    server's database, an in-memory one, or a URL that does not parse (whoever opens it
    reports that)."""
    try:
        parsed = sa.make_url(url)
    except Exception:  # ArgumentError, or ValueError for a port that is not a number
        return None
    cls = _dialect_class(parsed.get_backend_name())
    return None if cls is None else cls.database_file(parsed)


def dialect_for_url(url: str | sa.URL) -> tuple[type[Dialect], sa.URL]:
    """The dialect for a database URL, and the URL its engine is made with."""
    try:
        parsed = sa.make_url(url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError with a terse message
        # Both the URL and SQLAlchemy's message may hold the password.
        raise ValueError(masked(f"invalid database URL {str(url)!r}: {exc}")) from None
    cls = _dialect_class(parsed.get_backend_name())
    if cls is None:
        raise ValueError(
            f"unsupported database URL {parsed.render_as_string()!r}: use {_URL_FORMS}"
        )
    return cls, cls.engine_url(parsed)
