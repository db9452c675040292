"""``SQLStorage``: the storage protocol on SQLite and PostgreSQL through SQLAlchemy engines.

SQLAlchemy provides engines, pooling, URLs and users' connections; the statements
themselves are plain SQL per dialect, run on the driver's cursor. This module is
dialect-neutral: each database's statements and everything else that differs (connection
set-up, transactions, bulk inserts, grouped completion, the migration lock, wake-ups)
live in its own module (``sqlite.py``, ``postgres.py``) as hooks of a ``Dialect``
(``dialects.py``), which ``SQLStorage`` calls instead of asking which database it is on.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import CheckpointConflict, SchemaNotReady, StorageError
from ..job import Checkpoint, Job, JobStatus, children_wait, new_ids, signal_wait
from ..retry import DEFAULT_BACKOFF, Backoff, delayed, policy_for
from . import limits
from .clocked import ClockedCursor, Rewriter
from .dialects import Dialect, dialect_for, dialect_for_url, utc
from .failures import storage_error
from .outcomes import OutcomeNotices
from .protocol import JobStore, Listener, Reserve
from .records import (
    ChildOutcome,
    ChildrenWait,
    Claim,
    GroupOutcomes,
    Outcome,
    QueueDepth,
    ScheduleState,
    TypeLimits,
    WorkerInfo,
    decided,
)

if TYPE_CHECKING:
    from .admin import Admin
    from .explain import ExplainReads
    from .protocol import CallerConnection

__all__ = [
    "WAKE_BATCH",
    "Claim",
    "Outcome",
    "QueueDepth",
    "SQLStorage",
    "ScheduleState",
    "WorkerInfo",
    "storable_text",
    "utc",
]

log = logging.getLogger("durable_jobs")

# The named parameters of the insert_job statements, in INSERT_COLUMNS order.
_INSERT_PARAMS = (
    "id", "type", "args", "queue", "priority", "status", "attempt", "max_retries", "run_at",
    "now", "updated_at", "backoff", "meta", "parent_id", "parent_group", "unique_key", "tags",
    "timeout_seconds", "concurrency_key", "rate_key",
)  # fmt: skip
_IDLE_CONNECTIONS = 16  # at most, kept out of the engine's pool for the storage's use
#: The lock timeout (seconds) of callers that give none, as a worker's default.
DEFAULT_LOCK_TIMEOUT = 30.0
_REAP_BATCH = 500  # runs taken back per transaction
#: Waits ended per transaction (a worker looks again at once while more are due).
WAKE_BATCH = 100

# Rows are read by column name: each statement's columns are looked up in the cursor's
# description once (per statement text), and its rows then go through an itemgetter
# that puts the named columns in the order the reader unpacks them.
_JOB = (
    "id", "type", "args", "queue", "priority", "status", "attempt", "max_retries",
    "last_error", "run_at", "started_at", "completed_at", "created_at", "updated_at",
    "result", "backoff", "locked_by", "heartbeat_at", "meta", "fence", "lock_expires_at",
    "finished_at", "finished_by", "traceback", "parent_id", "progress", "wait_until",
    "waiting_for", "parent_group", "unique_key", "tags", "timeout_seconds", "concurrency_key",
    "rate_key", "paused_from",
)  # fmt: skip
_CLAIMED = (*_JOB, "dequeue_order")
_CHECKPOINT = (
    "id", "job_id", "call_index", "call_type", "result", "error", "created_at", "scope",
)  # fmt: skip
_SCHEDULE = ("name", "spec", "queue", "last_fire_at", "next_fire_at", "updated_at")
_WORKER = ("id", "host", "pid", "queues", "types", "started_at", "heartbeat_at", "version")
_DEPTH = ("queue", "due", "oldest_run_at")
_WAITING = ("queue", "waiting")
_SETTLED = ("id", "fence", "status")
_DUE_WAIT = ("id", "queue")
_LOCKED = ("id", "queue", "type", "status", "waiting_for")
_NEXT_WAKE = ("queue", "wait_until")
_TAKE_BACK = ("id", "fence", "attempt", "max_retries", "backoff", "type")
_SETTLED_PARENT = (
    "id", "queue", "status", "wait_group", "children_left", "children_need", "children_spare",
)  # fmt: skip
_DECIDED = ("id", "queue", "wait_group", "children_spare")
_CHILD_OUTCOME = ("id", "type", "status", "result", "last_error", "finished_at", "parent_id")
_GROUP_OUTCOME = (*_CHILD_OUTCOME, "n")
# A status by its stored value: a lookup, where ``JobStatus(value)`` costs a call each.
_STATUSES = {status.value: status for status in JobStatus}
_STATUS_VALUES = {status: status.value for status in JobStatus}  # ``.value`` costs a call
_COUNTED = ("ok", "failed")
_CLAIMABLE = frozenset({"pending", "retrying"})
# Statuses of unfinished jobs, which hold their unique key.
_UNFINISHED = frozenset({"pending", "retrying", "running", "waiting", "paused"})
_UNIQUE_TRIES = 5  # rounds of insert, look and give-up under concurrent producers
#: The error of a child cancelled because its fan-out failed (``fail_fast``).
CANCELLED = "cancelled: a sibling failed"
# Where the claim's sort keys sit in a claimed row read as _CLAIMED.
_PRIORITY, _RUN_AT, _ORDER = (_CLAIMED.index(c) for c in ("priority", "run_at", "dequeue_order"))


def _chunks(items: Iterable[Job], size: int) -> Iterator[list[Job]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class SQLStorage:
    """Job storage on SQLite or PostgreSQL (the ``Dialect`` of each in its own module).

    ``SQLStorage("sqlite:///jobs.db")``, ``SQLStorage("postgresql://user@host/db")`` or
    ``SQLStorage(engine)`` with an existing SQLAlchemy ``Engine``. Call ``migrate()``
    once (it is idempotent and safe to run from many processes at once).
    """

    def __init__(self, url_or_engine: str | sa.URL | sa.Engine) -> None:
        if isinstance(url_or_engine, sa.Engine):
            self.engine = url_or_engine
            self._owns_engine = False
            self.dialect: Dialect = dialect_for(self.engine.dialect.name)
        else:
            cls, url = dialect_for_url(url_or_engine)
            self.engine = cls.create_engine(url)
            self._owns_engine = True
            self.dialect = cls()
        d = self.dialect
        self._sql = d.sql
        d.configure(self.engine, owned=self._owns_engine)
        #: Whether the database is one only this process sees (in-memory SQLite).
        self.is_memory = d.in_memory(self.engine.url)
        # A database with one writer at a time: threads of this process queue on a lock
        # rather than spinning in the database's busy handler. An in-memory database is
        # one shared connection, so every use is serialised.
        self._write_lock = threading.RLock()
        write_lock = self._write_lock if (d.one_writer or self.is_memory) else None
        self._locks = (self._write_lock if self.is_memory else None, write_lock)
        self._has_rows = d.has_rows
        self._group = d.group_commit(self)
        self._getters: dict[str, Callable[[Sequence[Any]], tuple[Any, ...]]] = {}
        self._driver_errors = (sa.exc.SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error)
        self._migrated = False
        self._idle: list[Any] = []
        self._idle_pid = os.getpid()
        pool_size = getattr(self.engine.pool, "size", lambda: 1)()
        # A caller's engine keeps at least half its pool for the caller.
        self._idle_max = min(_IDLE_CONNECTIONS, pool_size if self._owns_engine else pool_size // 2)
        self._wake_listeners: list[Callable[[Sequence[str]], None]] = []
        self._outcomes: OutcomeNotices | None = None  # made by the first watch
        self._outcomes_lock = threading.Lock()
        self._outcomes_checked = False
        #: The clock every time this storage writes or compares comes from.
        self.clock: Clock = SYSTEM_CLOCK
        self._now: Callable[[], datetime] = SYSTEM_CLOCK.now
        # Set with a clock of its own: statements then read it, not the database's.
        self._rewrite: Rewriter | None = None
        # Where a connection keeps this storage's cursor: rewriting ones apart, since
        # pooled connections outlive a change of clock (and may serve other storages).
        self._cursor_key = "sdj_cursor"

    def use_clock(self, clock: Clock) -> None:
        """Read the time from ``clock`` from now on. Any clock but ``SYSTEM_CLOCK`` (a
        test's ``durable_jobs.testing.FakeClock``) also replaces the database's clock in
        every statement, so that the database never reads its own.

        Meant to be set before the storage is shared with other threads.
        """
        self.clock = clock
        self._now = clock.now
        system = clock is SYSTEM_CLOCK
        self._rewrite = None if system else Rewriter(self.engine.dialect.name)
        self._cursor_key = "sdj_cursor" if system else f"sdj_clocked_cursor_{id(self)}"

    def _clocked(self, cur: Any) -> Any:
        """``cur``, rewritten to read this storage's clock when it has its own."""
        if self._rewrite is None:
            return cur
        return ClockedCursor(cur, self._rewrite, lambda: self.dialect.time_param(self._now()))

    def __repr__(self) -> str:
        return f"SQLStorage({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def url(self) -> str:
        """The database URL with the password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def upkeep_warning(self) -> str | None:
        """A sentence for the operator when the database is set up in a way that slows
        the queue down over time (PostgreSQL without autovacuum); None otherwise."""
        with self._cursor() as cur:
            return self.dialect.upkeep_warning(cur)

    def listener(self) -> Listener | None:
        """The wake-up listener for this storage's database: an object whose
        ``run(on_notify, on_reconnect, stop_event)`` reports queues that got new jobs
        until ``stop_event`` is set. None for an in-memory SQLite database (one process:
        in-process wake-ups reach every worker)."""
        return self.dialect.listener(self.engine)

    def watch_outcome(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback`` (from another thread) whenever job ``job_id`` may have
        finished, in any process, until the returned function is called; None where
        the backend cannot tell (MySQL, in-memory SQLite): then only re-reading does.
        Returns once outcomes committed from then on will be noticed."""
        notices = self._outcome_notices()
        if notices is None:
            return None
        unwatch = notices.watch(job_id, callback)
        if self.dialect.want_outcome is not None:
            try:
                self._execute(self.dialect.want_outcome, {"id": job_id}, write=True)
            except BaseException:
                unwatch()
                raise
        return unwatch

    def _outcome_notices(self) -> OutcomeNotices | None:
        with self._outcomes_lock:
            if not self._outcomes_checked:
                self._outcomes_checked = True
                listener = self.dialect.outcome_listener(self.engine, self._watched_outcomes)
                if listener is not None:
                    self._outcomes = OutcomeNotices(listener)
            return self._outcomes

    def _watched_outcomes(self) -> list[str]:
        return [] if self._outcomes is None else self._outcomes.watched()

    @property
    def database_errors(self) -> tuple[type[BaseException], ...]:
        """What a failing database raises: the library's ``StorageError`` (and, from
        code that uses the engine directly, SQLAlchemy's errors and the driver's)."""
        return (StorageError, *self._driver_errors)

    def _storage_error(self, error: BaseException) -> StorageError:
        """The library's error for the driver's ``error`` (raised from it)."""
        return storage_error(error, self.dialect, self.url, lambda: self.schema_error(error))

    def add_wake_listener(self, listener: Callable[[Sequence[str]], None]) -> None:
        """Call ``listener(queues)`` in this process whenever a write of this storage has
        made jobs of ``queues`` due at once without inserting them (a parent resumed by
        its children's outcomes), once that write is committed."""
        self._wake_listeners.append(listener)

    def _announce_woken(self, queues: Sequence[str]) -> None:
        if not queues:
            return
        woken = sorted(set(queues))
        for listener in list(self._wake_listeners):
            try:
                listener(woken)
            except Exception:  # a listener's failure must not fail a committed write
                log.exception("a wake-up listener failed")

    def admin(self) -> Admin:
        """The operator's queries (listings, counts, retries) on this storage."""
        from .admin import Admin  # admin builds on this module

        return Admin(self)

    def explain_reads(self) -> ExplainReads:
        """The reads behind ``queue.explain`` and the worker registry's views."""
        from .explain import ExplainReads  # explain builds on this module

        return ExplainReads(self)

    def close(self) -> None:
        """Close pooled connections (only those of an engine this storage created)."""
        if self._outcomes is not None:
            self._outcomes.close()
        self._drop_idle()
        if self._owns_engine:
            self.engine.dispose()

    # -- connections --------------------------------------------------------------------

    @contextlib.contextmanager
    def _cursor(self, *, write: bool = False, atomic: bool = False) -> Iterator[Any]:
        """A driver cursor inside a transaction, committed on exit (for single statements
        see ``_execute``).

        ``write`` marks statements that take SQLite's write lock; ``atomic`` groups several
        statements into one transaction (single statements are atomic by themselves).
        """
        lock = self._locks[write]
        if lock is not None:
            lock.acquire()
        try:
            raw = self._checkout()
            try:
                with self._transaction(raw, write=write, atomic=atomic) as cur:
                    yield cur
            finally:
                self._checkin(raw)
        except self._driver_errors as exc:
            raise self._storage_error(exc) from exc
        finally:
            if lock is not None:
                lock.release()

    def _kept_cursor(self, raw: Any) -> Any:
        # One cursor per connection, kept: making one costs as much as a small statement.
        cur = raw.info.get(self._cursor_key)
        if cur is None:
            cur = raw.info[self._cursor_key] = self._clocked(self.dialect.cursor(raw))
        return cur

    def _failed(self, raw: Any, cur: Any, exc: BaseException) -> None:
        """Forget a connection's cursor after an error, and roll back (or discard) it."""
        raw.info.pop(self._cursor_key, None)
        with contextlib.suppress(Exception):
            cur.close()
        self._abort(raw, exc)

    # The storage keeps a few connections checked out of the engine's pool, in driver
    # autocommit: most statements stand alone and then cost one round trip, not three
    # (groups open their own transactions), and a statement skips the pool's checkout,
    # reset and checkin, which cost about as much as a small statement itself.

    def _checkout(self) -> Any:
        if self._idle_pid != os.getpid():  # a forked child must not share its parent's
            self._idle, self._idle_pid = [], os.getpid()
        while True:
            try:
                kept = self._idle.pop()
            except IndexError:
                break
            if kept.is_valid:
                return kept
            kept.close()  # invalidated: its pool record reconnects when next used
        raw = self.engine.raw_connection()
        try:
            raw.info["sdj_autocommit_was"] = self.dialect.enter_autocommit(raw.driver_connection)
        except BaseException:
            raw.invalidate()
            raise
        return raw

    def _checkin(self, raw: Any) -> None:
        if raw.is_valid and len(self._idle) < self._idle_max:
            self._idle.append(raw)
            return
        self._release(raw)

    def _release(self, raw: Any) -> None:
        """Hand a connection back to the engine's pool with its settings as they were."""
        if raw.is_valid:
            try:
                was = raw.info["sdj_autocommit_was"]
                self.dialect.restore_autocommit(raw.driver_connection, was)
            except Exception:  # a broken connection: never hand it out again
                raw.invalidate()
        raw.close()

    def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for raw in idle:
            with contextlib.suppress(Exception):
                self._release(raw)

    @contextlib.contextmanager
    def _transaction(self, raw: Any, *, write: bool, atomic: bool) -> Iterator[Any]:
        cur = self._kept_cursor(raw)
        try:
            began = self.dialect.begin(raw, cur, write=write, atomic=atomic)
            if began is None:
                yield cur
            else:
                with began:
                    yield cur
            # Commits what an engine without autocommit began implicitly; else a no-op.
            raw.commit()
        except BaseException as exc:
            self._failed(raw, cur, exc)
            raise

    def _abort(self, raw: Any, exc: BaseException) -> None:
        try:
            raw.rollback()
        except Exception:
            dead = True  # a connection that cannot even roll back is gone
        else:
            dbapi_error = self.engine.dialect.loaded_dbapi.Error
            dead = isinstance(exc, dbapi_error) and self.engine.dialect.is_disconnect(
                exc, raw.dbapi_connection, None
            )
        if dead:
            raw.invalidate()
            # The server went away for the idle connections too (a restart, a failover);
            # _checkout passes over them. (The list itself is left to other threads.)
            for stale in self._idle[:]:
                with contextlib.suppress(Exception):
                    if stale.is_valid:
                        stale.invalidate()

    def _run_grouped(self, name: str, params: dict[str, Any]) -> list[Any]:
        """A single-statement write, committed with others waiting at the same moment
        when the dialect groups commits (SQLite; PostgreSQL's own commits already share
        disk flushes)."""
        if self._group is None:
            return self._run(name, params)
        try:
            return self._group.run(self._sql[name], params)
        except self._driver_errors as exc:
            raise self._storage_error(exc) from exc

    def _run(self, name: str, params: dict[str, Any], *, write: bool = True) -> list[Any]:
        return self._execute(self._sql[name], params, write=write)

    def _read(
        self, name: str, params: dict[str, Any], fields: tuple[str, ...]
    ) -> list[tuple[Any, ...]]:
        """The rows of a reading statement, each as the values of ``fields`` (columns
        named in the statement), in that order."""
        return self._execute(self._sql[name], params, write=False, fields=fields)

    def _execute(
        self,
        sql: str,
        params: dict[str, Any],
        *,
        write: bool,
        fields: tuple[str, ...] | None = None,
    ) -> list[Any]:
        """One statement, which commits by itself on a connection in driver autocommit;
        its rows, or with ``fields`` each row's values of those columns (``_named``).

        On SQLite a lone writing statement takes the write lock before it reads, so it
        needs no ``BEGIN IMMEDIATE``; and no context managers, which cost as much as a
        small statement.
        """
        lock = self._locks[write]
        if lock is not None:
            lock.acquire()
        try:
            raw = self._checkout()
            try:
                cur = self._kept_cursor(raw)
                try:
                    try:
                        cur.execute(sql, params)
                    except self.dialect.busy_errors as exc:
                        self.dialect.wait_for_lock(cur, sql, params, exc)
                    if not self._has_rows(cur):
                        return []
                    rows = cur.fetchall()
                    return rows if fields is None else self._named(cur, sql, fields, rows)
                except BaseException as exc:
                    self._failed(raw, cur, exc)
                    raise
            finally:
                self._checkin(raw)
        except self._driver_errors as exc:
            raise self._storage_error(exc) from exc
        finally:
            if lock is not None:
                lock.release()

    def _named(
        self, cur: Any, sql: str, fields: tuple[str, ...], rows: list[Any]
    ) -> list[tuple[Any, ...]]:
        """``rows``, just fetched from ``cur`` by ``sql``, as the values of ``fields``.

        The columns' positions are looked up by name in the cursor's description the
        first time a statement returns rows, and kept (a statement text is always read
        as the same ``fields``): reading by name then costs one itemgetter call per row.
        """
        get = self._getters.get(sql)
        if get is None:
            position = {column[0]: i for i, column in enumerate(cur.description)}
            get = self._getters[sql] = itemgetter(*(position[f] for f in fields))
        return list(map(get, rows))

    # -- schema -------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema. Idempotent; concurrent callers apply each step once."""
        d = self.dialect
        with self._cursor(write=True, atomic=True) as cur:
            d.lock_migrations(cur)  # serialises concurrent migrators
            cur.execute(d.create_version_table)
            cur.execute(d.sql["schema_versions"])
            applied = {row[0] for row in cur.fetchall()}
            now = d.time_param(self._now())
            for version, statements in enumerate(d.migrations, start=1):
                if version in applied:
                    continue
                for statement in statements:
                    cur.execute(statement)
                cur.execute(d.sql["record_version"], {"version": version, "now": now})
        self._migrated = True

    def require_schema(self) -> None:
        """Raise ``SchemaNotReady`` unless the database's schema is up to date (another
        ``StorageError`` if it cannot be reached): workers check before they start."""
        if self._migrated:
            return
        version, latest = self.schema_version(), len(self.dialect.migrations)
        if version < latest:
            raise SchemaNotReady(
                f"the database {self.url} is at schema version {version} of {latest}: run "
                "storage.migrate() (or `sdj migrate`) first",
                database=self.url,
            )
        self._migrated = True

    def schema_error(self, error: BaseException) -> SchemaNotReady | None:
        """A clearer error than the driver's ``error`` when it says a table is missing
        because the database was never migrated (None otherwise)."""
        driver = error.orig if isinstance(error, sa.exc.DBAPIError) and error.orig else error
        if not self.dialect.missing_table(driver):
            return None
        try:
            self.require_schema()
        except SchemaNotReady as missing:
            return missing
        except Exception:
            return None  # cannot tell: the driver's error stands
        return None

    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database); reads only."""
        try:
            if not sa.inspect(self.engine).has_table("sdj_schema_version"):
                return 0
        except self._driver_errors as exc:
            raise self._storage_error(exc) from exc
        with self._cursor() as cur:
            cur.execute(self._sql["schema_versions"])
            return max((row[0] for row in cur.fetchall()), default=0)

    # -- rows ---------------------------------------------------------------------------

    def _job(self, values: Sequence[Any]) -> Job:
        """A job from a row read as ``_JOB`` (or ``_CLAIMED``: extra columns follow)."""
        (
            id_, type_, args, queue, priority, status, attempt, max_retries, last_error,
            run_at, started_at, completed_at, created_at, updated_at, result, backoff,
            locked_by, heartbeat_at, meta, fence, lock_expires_at, finished_at, finished_by,
            traceback, parent_id, progress, wait_until, waiting_for, parent_group, unique_key,
            tags, timeout_seconds, concurrency_key, rate_key, paused_from, *_,
        ) = values  # fmt: skip
        t = self.dialect.time_value
        created = t(created_at)
        updated = t(updated_at)
        assert created is not None and updated is not None
        return Job(
            id=id_,
            type=type_,
            args=args.encode(),
            queue=queue,
            priority=priority,
            status=JobStatus(status),
            attempt=attempt,
            max_retries=max_retries,
            last_error=last_error,
            run_at=t(run_at),
            started_at=t(started_at),
            completed_at=t(completed_at),
            created_at=created,
            updated_at=updated,
            result=None if result is None else result.encode(),
            backoff=None if backoff is None else backoff.encode(),
            locked_by=locked_by,
            heartbeat_at=t(heartbeat_at),
            meta={} if meta is None else json.loads(meta),
            fence=fence,
            lock_expires_at=t(lock_expires_at),
            finished_at=t(finished_at),
            finished_by=finished_by,
            traceback=traceback,
            parent_id=parent_id,
            progress=None if progress is None else json.loads(progress),
            wait_until=t(wait_until),
            waiting_for=waiting_for,
            parent_group=parent_group,
            unique_key=unique_key,
            tags=[] if tags is None else json.loads(tags),
            timeout=None if timeout_seconds is None else timedelta(seconds=timeout_seconds),
            concurrency_key=concurrency_key,
            rate_key=rate_key,
            paused_from=paused_from,
        )

    def _checkpoint(self, values: Sequence[Any]) -> Checkpoint:
        """A checkpoint from a row read as ``_CHECKPOINT``."""
        id_, job_id, call_index, call_type, result, error, created_at, scope = values
        created = self.dialect.time_value(created_at)
        assert created is not None
        return Checkpoint(
            id=id_,
            job_id=job_id,
            call_index=call_index,
            call_type=call_type,
            result=None if result is None else result.encode(),
            error=error,
            created_at=created,
            scope=scope,
        )

    def _insert_row(self, job: Job, now: Any) -> tuple[Any, ...]:
        """A job's values in ``INSERT_COLUMNS`` order; ``now`` is already a parameter."""
        return (
            job.id,
            job.type,
            job.args.decode(),
            job.queue,
            job.priority,
            _STATUS_VALUES[job.status],
            0,
            job.max_retries,
            now if job.run_at is None else self.dialect.time_param(job.run_at),
            now,
            now,
            None if job.backoff is None else job.backoff.decode(),
            json.dumps(job.meta) if job.meta else None,
            job.parent_id,
            job.parent_group,
            job.unique_key,
            json.dumps(job.tags) if job.tags else None,
            None if job.timeout is None else job.timeout.total_seconds(),
            job.concurrency_key,
            job.rate_key,
        )

    def _insert_params(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """Named parameters of the ``insert_job`` statements for one row."""
        return dict(zip(_INSERT_PARAMS, row, strict=True))

    # -- enqueue ------------------------------------------------------------------------

    def enqueue(self, job: Job, *, connection: CallerConnection | None = None) -> str:
        """Store a new job (in ``connection``'s transaction when given); returns its id,
        or for a job with a ``unique_key`` held by another job, that job's id (and
        stores nothing).

        ``connection`` is a SQLAlchemy ``Connection``, or a connection of this storage's
        driver (psycopg, sqlite3, PyMySQL) to its database that someone else manages
        (Django's): the statements run on a cursor of it, in whatever transaction it has
        open, and are neither committed nor rolled back here."""
        if connection is not None:
            return self.enqueue_many([job], connection=connection)[0]
        if job.unique_key is not None:
            # The usual case, a key no job holds, takes one statement like any enqueue;
            # a key held already is looked into in a transaction.
            [row] = self._stamp([job], self._now())
            if self._run_grouped("insert_unique_job", self._insert_params(row)):
                return job.id
            return self._enqueue_deduplicated([job], None)[0]
        [row] = self._stamp([job], self._now())
        self._run_grouped("insert_job", self._insert_params(row))
        return job.id

    def enqueue_many(
        self, jobs: Iterable[Job], *, connection: CallerConnection | None = None
    ) -> list[str]:
        """Store jobs all-or-nothing in one transaction; returns their ids in order.

        ``jobs`` may be a lazy iterable, drawn a chunk at a time inside the transaction:
        on PostgreSQL the server stores one chunk while the next is built. An error
        raised while drawing it stores nothing. Jobs with a ``unique_key`` come in a
        sequence (a list): they are deduplicated, and a duplicate's place in the
        returned ids holds the id of the job that holds its key.
        """
        if isinstance(jobs, Sequence) and any(job.unique_key is not None for job in jobs):
            return self._enqueue_deduplicated(list(jobs), connection)
        now = self._now()
        chunks = _chunks(jobs, self.dialect.insert_chunk)
        first = next(chunks, [])
        if connection is not None:
            stored = [*first, *itertools.chain.from_iterable(chunks)]
            if stored:
                rows = self._stamp(stored, now)
                self._enqueue_in(connection, [self._insert_params(row) for row in rows])
            return [job.id for job in stored]
        if len(first) <= 1:  # a chunk holds more: nothing follows
            return [self.enqueue(job) for job in first]
        return self.dialect.insert_many(self, itertools.chain([first], chunks), now)

    def _enqueue_deduplicated(
        self, jobs: list[Job], connection: CallerConnection | None
    ) -> list[str]:
        """``enqueue_many`` of jobs some of which have a ``unique_key``, all-or-nothing in
        one transaction: a job whose key another job holds (stored before, or earlier in
        ``jobs``) is not stored, and its place in the returned ids holds that job's id.

        A job holds its key while unfinished, and with ``unique_for`` also while it was
        created less than that long ago. A finished job past its window gives the key up
        to the next job that asks for it; the database's unique index on the key decides
        between concurrent producers.
        """
        now = self._now()
        rows = self._stamp(jobs, now)
        if connection is not None:
            return self._store_deduplicated(jobs, rows, now, connection)
        # Concurrent producers of one key may deadlock on its index entry (InnoDB): the
        # transaction that loses is rolled back whole, and is run again.
        tries = 1
        while True:
            try:
                return self._store_deduplicated(jobs, rows, now, None)
            except StorageError as exc:
                if not exc.transient or tries == _UNIQUE_TRIES:
                    raise
                tries += 1

    def _store_deduplicated(
        self,
        jobs: list[Job],
        rows: list[tuple[Any, ...]],
        now: datetime,
        connection: CallerConnection | None,
    ) -> list[str]:
        held: dict[str, str] = {}
        ids: list[str] = []
        with self._job_cursor(connection) as cur:
            for job, row in zip(jobs, rows, strict=True):
                params = self._insert_params(row)
                key = job.unique_key
                if key is None:
                    cur.execute(self._sql["insert_job"], params)
                    ids.append(job.id)
                elif key in held:
                    ids.append(held[key])
                else:
                    held[key] = self._insert_unique(cur, job, params, now)
                    ids.append(held[key])
        return ids

    @contextlib.contextmanager
    def _job_cursor(self, connection: CallerConnection | None) -> Iterator[Any]:
        """A cursor in a transaction of ours, or in ``connection``'s (the caller's)."""
        if connection is None:
            with self._cursor(write=True, atomic=True) as cur:
                yield cur
            return
        if not isinstance(connection, sa.Connection):
            cur = self.dialect.cursor(connection)
            try:
                yield self._clocked(cur)
            finally:
                cur.close()
            return
        if connection.engine.dialect.name != self.engine.dialect.name:
            raise ValueError("connection belongs to a different kind of database than storage")
        yield self._clocked(self.dialect.cursor(connection.connection))

    def _insert_unique(self, cur: Any, job: Job, params: dict[str, Any], now: datetime) -> str:
        """Store ``job`` unless another job holds its key; the id of the job that holds it."""
        key = job.unique_key
        for _ in range(_UNIQUE_TRIES):
            cur.execute(self._sql["insert_unique_job"], params)
            if self._has_rows(cur) and cur.fetchall():
                return job.id
            cur.execute(self._sql["unique_holder"], {"key": key})
            found = cur.fetchall() if self._has_rows(cur) else []
            if not found:
                continue  # given up meanwhile: ask again
            holder, status, created_at = found[0]
            created = self.dialect.time_value(created_at)
            window = job.unique_for
            if status in _UNFINISHED or (window and created and created > now - window):
                return str(holder)
            cur.execute(self._sql["release_unique"], {"id": holder, "key": key})
        raise StorageError(f"unique key {key!r}: no job could be stored nor found holding it")

    def enqueue_claimed(
        self,
        job: Job,
        worker_id: str,
        *,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT,
    ) -> bool:
        """Store a new, due job already claimed by ``worker_id``, its first run starting
        now: a worker in the enqueuing process with a free slot runs it without a claim.
        Its lock expires after ``lock_timeout`` (the worker's) unless heartbeated.

        Returns False when the job's queue is paused: the job is then stored unclaimed,
        for the claims once the queue is resumed.
        """
        now = self._now()
        [row] = self._stamp([job], now)
        params = {
            **self._insert_params(row),
            "worker": worker_id,
            "lock_timeout": _seconds(lock_timeout),
        }
        if not self._run_grouped("insert_claimed_job", params):
            self._run_grouped("insert_job", self._insert_params(row))
            return False
        job.status, job.attempt, job.locked_by = JobStatus.RUNNING, 1, worker_id
        job.fence = 1
        job.started_at = job.heartbeat_at = now
        return True

    def enqueue_unique(self, job: Job, unique_key: str) -> bool:
        """Store ``job`` unless a job with ``unique_key`` exists; True if it was stored.

        The database's unique index decides, so of any number of racing callers one stores.
        """
        [row] = self._stamp([job], self._now())
        params = {**self._insert_params(row), "unique_key": unique_key}
        return bool(self._run("insert_unique_job", params))

    def _stamp(self, jobs: Sequence[Job], now: datetime) -> list[tuple[Any, ...]]:
        """Give new jobs their ids and times; returns their rows for the insert."""
        ids = iter(new_ids(sum(1 for job in jobs if not job.id)))
        at = self.dialect.time_param(now)
        rows = []
        for job in jobs:
            if not job.id:
                job.id = next(ids)
            rows.append(self._insert_row(job, at))
            job.run_at = job.run_at or now
            job.created_at = job.updated_at = now
        return rows

    def _enqueue_in(self, connection: CallerConnection, params: list[dict[str, Any]]) -> None:
        # The caller's transaction decides when (and whether) the jobs become visible.
        if not isinstance(connection, sa.Connection):
            with self._job_cursor(connection) as cur:
                cur.executemany(self._sql["insert_job"], params)
            return
        if connection.engine.dialect.name != self.engine.dialect.name:
            raise ValueError("connection belongs to a different kind of database than storage")
        connection.exec_driver_sql(self._sql["insert_job"], params)

    # -- claiming -----------------------------------------------------------------------

    def claim(
        self,
        queue: str,
        worker_id: str,
        limit: int,
        *,
        skip_types: Sequence[str] = (),
        min_retries: int = 0,
        now: datetime | None = None,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT,
        limited: Sequence[TypeLimits] = (),
        plain: bool = True,
    ) -> list[Job]:
        """Claim up to ``limit`` due jobs of ``queue`` for ``worker_id`` in one statement.

        Jobs come back in dequeue order: priority (higher first), run time, enqueue order.
        Job types in ``skip_types``, and jobs allowed fewer than ``min_retries`` retries,
        are left for others. Each claim is a new run with a new ``fence``; its lock
        expires ``lock_timeout`` (the worker's) after the claim on the database's clock,
        unless heartbeated. ``now`` decides which jobs are due (tests pass it).

        ``limited``: job types claimed within their fleet-wide limits, in one transaction
        (see ``limits.py``; ``plain=False`` claims only those); the jobs then come as
        ``ClaimedJobs``, saying which of those types are held back.
        """
        claim = Claim(queue, limit, skip_types, min_retries, limited, plain)
        with self._cursor(write=True, atomic=bool(limited)) as cur:
            return self._claim_in(cur, claim, worker_id, now or self._now(), _seconds(lock_timeout))

    def _claim_in(
        self, cur: Any, claim: Claim, worker_id: str, now: datetime, lock_timeout: float
    ) -> list[Job]:
        if claim.limited:
            return limits.claim_in(self, cur, claim, worker_id, now, lock_timeout)
        params = {
            "queue": claim.queue,
            "worker": worker_id,
            "limit": claim.limit,
            "now": self.dialect.time_param(now),
            "skip": self.dialect.list_param(claim.skip_types),
            "min_retries": claim.min_retries,
            "lock_timeout": lock_timeout,
        }
        rows = self.dialect.claim_rows(cur, params)
        if not rows:
            return []
        claimed = self._named(cur, self._sql["claim"], _CLAIMED, rows)
        # RETURNING gives no order guarantee; restore the dequeue order (priority, run
        # time, then the enqueue-order key the statement returns).
        claimed.sort(key=lambda r: (-r[_PRIORITY], r[_RUN_AT], r[_ORDER]))
        return [self._job(row) for row in claimed]

    def complete_and_claim(
        self,
        worker_id: str,
        outcomes: Sequence[Outcome],
        claims: Sequence[Claim],
        *,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT,
    ) -> tuple[set[str], list[list[Job]]]:
        """``complete_many`` and the ``claims`` (jobs per claim, in order) in one
        transaction: a worker that finishes jobs and takes new ones pays one commit (the
        cost that bounds throughput) instead of two.
        """
        now = self._now()
        seconds = _seconds(lock_timeout)
        woken: list[str] = []
        with self._cursor(write=True, atomic=True) as cur:
            accepted = self._complete_in(cur, worker_id, outcomes, now)
            claimed = [self._claim_in(cur, claim, worker_id, now, seconds) for claim in claims]
            # Last: the parents' rows stay locked for the shortest time.
            self._settle_completed(cur, outcomes, accepted, now, woken)
        self._announce_woken(woken)
        return accepted, claimed

    def dequeue(self, queues: Sequence[str], worker_id: str) -> Job | None:
        """Claim the next due job of the first of ``queues`` that has one."""
        for queue in queues:
            jobs = self.claim(queue, worker_id, 1)
            if jobs:
                return jobs[0]
        return None

    # -- outcomes -----------------------------------------------------------------------

    def complete(
        self,
        job_id: str,
        result: bytes | None = None,
        *,
        worker_id: str | None = None,
        fence: int | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Mark a running job completed and delete its checkpoints.

        With ``worker_id`` and ``fence`` (the run's ``Job.fence``) the completion is
        fenced: it is rejected (False) unless that worker still holds that run's lock.
        ``attempt`` is the former name of ``fence``. A child's completion counts down
        its parent's wait in the same transaction (see ``spawn``).
        """
        now = self.dialect.time_param(self._now())
        params = {
            "id": job_id,
            "result": None if result is None else result.decode(),
            "worker": worker_id,
            "fence": _fence(fence, attempt),
            "now": now,
        }
        woken: list[str] = []
        with self._cursor(write=True, atomic=True) as cur:
            done = self.dialect.complete_in(cur, params)
            if done:
                self._settle(cur, [(job_id, True)], now, woken)
        self._announce_woken(woken)
        return done

    def complete_many(self, worker_id: str, outcomes: Sequence[Outcome]) -> set[str]:
        """Complete many runs of ``worker_id`` in one transaction; returns the ids accepted."""
        if not outcomes:
            return set()
        woken: list[str] = []
        now = self._now()
        with self._cursor(write=True, atomic=True) as cur:
            accepted = self._complete_in(cur, worker_id, outcomes, now)
            self._settle_completed(cur, outcomes, accepted, now, woken)
        self._announce_woken(woken)
        return accepted

    def _complete_in(
        self, cur: Any, worker_id: str, outcomes: Sequence[Outcome], at: datetime
    ) -> set[str]:
        if not outcomes:
            return set()
        return self.dialect.complete_many(cur, worker_id, outcomes, self.dialect.time_param(at))

    def _settle_completed(
        self,
        cur: Any,
        outcomes: Sequence[Outcome],
        accepted: set[str],
        at: datetime,
        woken: list[str],
    ) -> None:
        """Count the children among ``outcomes`` just completed (and only they) down
        their parents' waits, in the transaction on ``cur``, one statement per parent;
        the queues of parents this resumed are added to ``woken``."""
        by_parent: dict[str, set[str]] = {}  # each child once: the count joins its ids
        for o in outcomes:
            if o.parent_id is not None and o.job_id in accepted:
                by_parent.setdefault(o.parent_id, set()).add(o.job_id)
        if not by_parent:
            return
        now = self.dialect.time_param(at)
        sql = self._sql["settle_children"]
        resumed: list[str] = []
        # In parent order: two batches lock the parents they share in the same order.
        for parent_id in sorted(by_parent):
            ids = self.dialect.list_param(sorted(by_parent[parent_id]))
            cur.execute(sql, {"parent": parent_id, "ids": ids})
            rows = cur.fetchall()
            if not rows:
                continue
            [(parent, _q, status, group, left, need, spare)] = self._named(
                cur, sql, _SETTLED_PARENT, rows
            )
            # Successes never spend a wait's spare failures: only the decision is left.
            if status == JobStatus.WAITING.value and decided(left, need, spare):
                self._wake_parent(cur, parent, group, now, resumed)
        if resumed:
            self.dialect.notify_queues(cur, resumed)
            woken.extend(resumed)

    def fail(
        self,
        job_id: str,
        err_msg: str,
        run_at: datetime | None,
        *,
        worker_id: str | None = None,
        fence: int | None = None,
        attempt: int | None = None,
        traceback: str | None = None,
        child: bool | None = None,
    ) -> bool:
        """Record a failed run: ``retrying`` until ``run_at``, or ``failed`` when it is None.

        Fenced like ``complete`` when ``worker_id`` and ``fence`` are given (``attempt``:
        the former name of ``fence``). ``traceback`` is kept with the job. A child's
        permanent failure counts down its parent's wait in the same transaction;
        ``child=False`` (the caller knows the job has no parent) spares the look.
        """
        now = self._now()
        t = self.dialect.time_param
        params = {
            "id": job_id,
            "status": (JobStatus.FAILED if run_at is None else JobStatus.RETRYING).value,
            "error": storable_text(err_msg),
            "traceback": None if traceback is None else storable_text(traceback),
            "run_at": t(run_at),
            "finished_at": t(now) if run_at is None else None,
            "now": t(now),
            "worker": worker_id,
            "fence": _fence(fence, attempt),
        }
        params["summary"] = traceback_summary(params["traceback"])
        # The attempt's row in the job's history commits with the failure. A child's
        # permanent failure counts down its parent's wait with it.
        settle = run_at is None and child is not False
        woken: list[str] = []
        with self._cursor(write=True, atomic=True) as cur:
            cur.execute(self._sql["record_attempt"], params)
            cur.execute(self._sql["fail"], params)
            failed = bool(cur.fetchall())
            if failed and settle:
                self._settle(cur, [(job_id, False)], params["now"], woken)
        self._announce_woken(woken)
        return failed

    def suspend(
        self,
        job_id: str,
        *,
        worker_id: str,
        fence: int,
        until: datetime | None,
        waiting_for: str,
        signal: str | None = None,
        children: ChildrenWait | None = None,
    ) -> bool:
        """Store a run's suspension: the job waits (``waiting``) until ``until`` (None:
        until something else wakes it), for ``waiting_for``; its lock is released and its
        attempt kept, since the run that resumes it is not a new attempt.

        ``signal``: the job waits for that signal (``waiting_for`` is then
        ``signal_wait(signal)``). A signal sent since the run last looked for one is
        not missed: the suspension updates the job's row, on which senders serialise,
        and then looks again; if one is there, the job is a due resume at once.

        ``children``: the job waits for its children (see ``ChildrenWait``). The
        suspension locks the job's row, on which the children's outcomes count down its
        wait, then counts the children finished so far: if that decides the wait, the
        job is a due resume at once (and with too many failures, its unfinished children
        of the wait are cancelled); otherwise the outcome that decides it resumes it.

        Fenced like ``fail``: rejected (False) unless ``worker_id`` still holds that
        run's lock.
        """
        t = self.dialect.time_param
        now = t(self._now())
        params = {
            "id": job_id,
            "until": t(until),
            "waiting_for": storable_text(waiting_for),
            "now": now,
            "worker": worker_id,
            "fence": fence,
        }
        if children is not None:
            return self._suspend_for_children(params, children)
        if signal is None:
            return bool(self._run("suspend", params))
        woken: list[str] = []
        with self._cursor(write=True, atomic=True) as cur:
            cur.execute(self._sql["suspend"], params)
            suspended = bool(cur.fetchall())
            if suspended:
                look = {"job_id": job_id, "name": signal, "limit": 1}
                cur.execute(self._sql["pending_signals"], look)
                if cur.fetchall():
                    wake = {"id": job_id, "waiting_for": waiting_for, "now": now}
                    cur.execute(self._sql["wake_signalled"], wake)
                    woken = [row[0] for row in cur.fetchall()]
                    self.dialect.notify_queues(cur, woken)
        self._announce_woken(woken)
        return suspended

    def _suspend_for_children(self, params: dict[str, Any], wait: ChildrenWait) -> bool:
        job_id, now = params["id"], params["now"]
        woken: list[str] = []
        with self._cursor(write=True, atomic=True) as cur:
            cur.execute(self._sql["suspend"], params)
            suspended = bool(cur.fetchall())
            if suspended:
                group = {"parent": job_id, "group": wait.group}
                if wait.ids is not None:
                    ids = self.dialect.list_param(list(wait.ids))
                    cur.execute(self._sql["regroup_children"], {**group, "ids": ids})
                sql = self._sql["count_children"]
                cur.execute(sql, group)
                [(ok, failed)] = self._named(cur, sql, _COUNTED, cur.fetchall())
                left, need, spare = wait.counters(int(ok), int(failed))
                start = {
                    "id": job_id,
                    "group": wait.group,
                    "left": left,
                    "need": need,
                    "spare": spare,
                    "waiting_for": children_wait(int(ok) + int(failed), wait.total),
                }
                cur.execute(self._sql["start_children_wait"], start)
                if decided(left, need, spare):
                    if spare < 0:
                        self._cancel_in(cur, job_id, wait.group, now)
                    self._wake_parent(cur, job_id, wait.group, now, woken)
                    self.dialect.notify_queues(cur, woken)
        self._announce_woken(woken)
        return suspended

    # -- children -----------------------------------------------------------------------

    def spawn(
        self,
        parent_id: str,
        children: Iterable[Job],
        checkpoint: Checkpoint,
        *,
        worker_id: str,
        fence: int,
        wait: ChildrenWait | None = None,
    ) -> bool:
        """Store ``children`` of the running job ``parent_id`` (their ``parent_id`` and
        ``parent_group`` set) with ``checkpoint``, the step that made them, in one
        transaction fenced by the parent's run: a replay finds the checkpoint and stores
        nothing twice. The children go in by the batch path (``enqueue_many``'s), drawn
        a chunk at a time; an error raised while drawing them stores nothing.

        ``wait`` (a fan-out): the parent counts these children from now on, so that
        their outcomes decide its wait even before it suspends. Returns False (nothing
        stored) when the run no longer holds the parent's lock.
        """
        now = self._now()
        with self._cursor(write=True, atomic=True) as cur:
            run = {"id": parent_id, "worker": worker_id, "fence": fence}
            cur.execute(self._sql["lock_run"], run)
            if not cur.fetchall():
                return False
            cur.execute(
                self._sql["save_checkpoint"], self._checkpoint_params(checkpoint, worker_id, fence)
            )
            if not _saved(checkpoint, cur.fetchall()):  # pragma: no cover - the run is locked
                raise StorageError(f"job {parent_id}: the checkpoint of a spawn was refused")
            chunks = _chunks(children, self.dialect.insert_chunk)
            first = next(chunks, None)
            if first is not None:
                self.dialect.insert_in(self, cur, itertools.chain([first], chunks), now)
            if wait is not None:
                left, need, spare = wait.counters(0, 0)
                start = {
                    "id": parent_id,
                    "group": wait.group,
                    "left": left,
                    "need": need,
                    "spare": spare,
                    "waiting_for": None,
                }
                cur.execute(self._sql["start_children_wait"], start)
        return True

    def children_outcomes(self, ids: Sequence[str]) -> dict[str, ChildOutcome]:
        """The outcomes of the jobs ``ids`` that exist, by id."""
        if not ids:
            return {}
        return self._read_outcomes("children_outcomes", {"ids": self.dialect.list_param(list(ids))})

    def group_outcomes(self, parent_id: str, group: str) -> GroupOutcomes:
        """The outcomes of the children of ``parent_id`` counted in its wait ``group``
        (a fan-out's): read through the parent's index, where a fan-out's thousands of
        ids would each be looked up. Those that completed with no result are counted."""
        rows = self._read("group_outcomes", {"parent": parent_id, "group": group}, _GROUP_OUTCOME)
        # One statement (one snapshot): the children's rows, and a row without an id
        # that counts the rest.
        plain = sum(int(row[-1]) for row in rows if row[0] is None)
        found = self._child_outcomes(row[:-1] for row in rows if row[0] is not None)
        return GroupOutcomes(found, plain)

    def _read_outcomes(self, name: str, params: dict[str, Any]) -> dict[str, ChildOutcome]:
        return self._child_outcomes(self._read(name, params, _CHILD_OUTCOME))

    def _child_outcomes(self, rows: Iterable[tuple[Any, ...]]) -> dict[str, ChildOutcome]:
        t = self.dialect.time_value
        return {
            id_: ChildOutcome(
                id_,
                type_,
                _STATUSES[status],
                None if result is None else result.encode(),
                error,
                # Only a failure's time is ever used (to name a fan-out's first failure).
                None if status == "completed" else t(finished),
                parent,
            )
            for id_, type_, status, result, error, finished, parent in rows
        }

    def cancel_children(self, parent_id: str, group: str) -> int:
        """Fail the unfinished children (pending, retrying or waiting; not running) of
        ``parent_id``'s wait ``group`` with the error ``CANCELLED``; returns how many."""
        now = self.dialect.time_param(self._now())
        with self._cursor(write=True, atomic=True) as cur:
            return self._cancel_in(cur, parent_id, group, now)

    def wake_decided(self, queues: Sequence[str], *, limit: int = WAKE_BATCH) -> list[str]:
        """Resume waiting parents of ``queues`` whose wait their children's outcomes
        have decided: a wake-up that was lost (the outcome that decided it normally
        resumes the parent in its own transaction). Returns the queues of the parents
        resumed. Each is resumed once: the resume ends the wait it counted.
        """
        names = self.dialect.list_param(list(queues))
        resumed: list[str] = []
        while True:  # a batch of parents per transaction
            now = self.dialect.time_param(self._now())
            woken: list[str] = []
            with self._cursor(write=True, atomic=True) as cur:
                sql = self._sql["decided_parents"]
                cur.execute(sql, {"queues": names, "limit": limit})
                rows = cur.fetchall()
                if rows:
                    for parent, _queue, group, spare in self._named(cur, sql, _DECIDED, rows):
                        if spare < 0:
                            self._cancel_in(cur, parent, group, now)
                        self._wake_parent(cur, parent, group, now, woken)
                    self.dialect.notify_queues(cur, woken)
            self._announce_woken(woken)
            resumed.extend(woken)
            if len(rows) < limit:
                break
        if resumed:
            log.warning("resumed %d parent job(s) whose wake-up was lost", len(resumed))
        return sorted(set(resumed))

    def _settle(
        self, cur: Any, children: Sequence[tuple[str, bool]], now: Any, woken: list[str]
    ) -> None:
        """Count the outcomes of ``children`` (id, succeeded) down their parents' waits,
        in the transaction on ``cur`` that stores them; a parent waiting on a wait this
        decides resumes now (its queue added to ``woken``), and the first failure too
        many cancels the wait's unfinished children. Only children pay: a job without a
        parent (or one whose wait is over) matches no parent row."""
        sql = self._sql["settle_child"]
        resumed: list[str] = []
        for child_id, ok in children:
            cur.execute(sql, {"id": child_id, "ok": 1 if ok else 0})
            rows = cur.fetchall()
            if not rows:
                continue
            [(parent, _q, status, group, left, need, spare)] = self._named(
                cur, sql, _SETTLED_PARENT, rows
            )
            if spare == -1 and not ok:  # this failure decided it: once
                self._cancel_in(cur, parent, group, now)
            if status == JobStatus.WAITING.value and decided(left, need, spare):
                self._wake_parent(cur, parent, group, now, resumed)
        if resumed:
            self.dialect.notify_queues(cur, resumed)
            woken.extend(resumed)

    def _wake_parent(self, cur: Any, parent: str, group: str, now: Any, woken: list[str]) -> None:
        cur.execute(self._sql["wake_parent"], {"id": parent, "group": group, "now": now})
        woken.extend(row[0] for row in cur.fetchall())

    def _cancel_in(self, cur: Any, parent: str, group: str, now: Any) -> int:
        cur.execute(self._sql["cancellable_children"], {"parent": parent, "group": group})
        ids = [row[0] for row in cur.fetchall()]
        return len(self._cancel_tree(cur, ids, now, CANCELLED)) if ids else 0

    def _cancel_tree(self, cur: Any, roots: Sequence[str], now: Any, error: str) -> list[Job]:
        """Cancel the unfinished jobs among ``roots`` and among all their descendants,
        level by level, in the transaction on ``cur``; the jobs cancelled, as they were.

        Each level's rows are locked and cancelled before their children are looked
        for: a running job spawning meanwhile is fenced out, or its children are found.
        """
        cancelled: list[Job] = []
        seen: set[str] = set()
        level = list(dict.fromkeys(roots))
        sql = self._sql["cancellable"]
        while level:
            seen.update(level)
            ids = {"ids": self.dialect.list_param(level)}
            cur.execute(sql, ids)
            rows = cur.fetchall() if self._has_rows(cur) else []
            found = [self._job(row) for row in self._named(cur, sql, _JOB, rows)] if rows else []
            if found:
                taken = self.dialect.list_param([job.id for job in found])
                cur.execute(self._sql["cancel_jobs"], {"ids": taken, "error": error, "now": now})
                cancelled.extend(found)
            cur.execute(self._sql["children_of"], ids)
            level = [row[0] for row in cur.fetchall() if row[0] not in seen]
        return cancelled

    # -- job control --------------------------------------------------------------------

    def cancel(self, job_id: str) -> list[Job] | None:
        """Cancel ``job_id`` with all its unfinished descendants, in one transaction.

        Returns the jobs cancelled as they were just before (``[]`` when the job had
        finished already), or None when there is no such job. A cancelled child whose
        parent is not cancelled with it counts as a failed child of the parent's wait.
        A running job's run is fenced out from then on: its outcome changes nothing.
        """
        tries = 1
        while True:
            try:
                return self._cancel(job_id)
            except StorageError as exc:  # two cancels of one tree may deadlock: again
                if not exc.transient or tries == _UNIQUE_TRIES:
                    raise
                tries += 1

    def _cancel(self, job_id: str) -> list[Job] | None:
        now = self.dialect.time_param(self._now())
        woken: list[str] = []
        with self._cursor(write=True, atomic=True) as cur:
            cur.execute(self._sql["lock_job"], {"id": job_id})
            if not cur.fetchall():
                return None
            cancelled = self._cancel_tree(cur, [job_id], now, "cancelled")
            ids = {job.id for job in cancelled}
            orphans = sorted(
                (job.parent_id, job.id)
                for job in cancelled
                if job.parent_id is not None and job.parent_id not in ids
            )
            if orphans:
                self._settle(cur, [(child, False) for _parent, child in orphans], now, woken)
        self._announce_woken(woken)
        return cancelled

    def cancelled_among(self, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` are cancelled (a worker asks for its running jobs)."""
        if not job_ids:
            return set()
        params = {"ids": self.dialect.list_param(list(job_ids))}
        return {row[0] for row in self._run("cancelled_among", params, write=False)}

    def pause(self, job_id: str) -> bool:
        """Ask for a pause of ``job_id``: held at once unless running or waiting, else
        held once it would run again. False when it is not pausable (finished, paused
        already, or no such job)."""
        params = {"id": job_id, "now": self.dialect.time_param(self._now())}
        return bool(self._run("pause_job", params))

    def resume(self, job_id: str) -> bool:
        """Withdraw a pause of ``job_id``: a held job gets its status back (and is
        claimable at once if due). False when no pause of it was asked for."""
        params = {"id": job_id, "now": self.dialect.time_param(self._now())}
        with self._cursor(write=True, atomic=True) as cur:
            cur.execute(self._sql["resume_job"], params)
            rows = cur.fetchall() if self._has_rows(cur) else []
            due = [queue for queue, status in rows if status in _CLAIMABLE]
            if due:
                self.dialect.notify_queues(cur, due)
        self._announce_woken(due)
        return bool(rows)

    def pause_queue(self, queue: str) -> None:
        """Stop every worker from claiming jobs of ``queue`` (stored: it lasts)."""
        self._run("pause_queue", {"queue": queue, "now": self.dialect.time_param(self._now())})

    def resume_queue(self, queue: str) -> None:
        """Let workers claim from ``queue`` again, and wake those waiting for work."""
        with self._cursor(write=True, atomic=True) as cur:
            cur.execute(self._sql["resume_queue"], {"queue": queue})
            self.dialect.notify_queues(cur, [queue])
        self._announce_woken([queue])

    def paused_queues(self) -> dict[str, datetime]:
        """The paused queues, with when each was paused."""
        t = self.dialect.time_value
        rows = self._read("paused_queues", {}, ("queue", "paused_at"))
        return {queue: at for queue, paused in rows if (at := t(paused)) is not None}

    # -- signals ------------------------------------------------------------------------

    def signal(self, job_id: str, name: str, payload: bytes | None) -> tuple[bool, str | None]:
        """Store a signal for job ``job_id``, kept until the job consumes it (FIFO per
        job and name). Returns whether the job exists, and its queue when the signal woke
        it (it was waiting for ``name``): it is then a due resume.

        Serialised on the job's row with the suspensions that wait for it (see
        ``suspend``), so that neither side misses the other.
        """
        found, queue, _run = self.signal_claiming(job_id, name, payload, None)
        return found, queue

    def signal_claiming(
        self,
        job_id: str,
        name: str,
        payload: bytes | None,
        reserve: Reserve | None,
    ) -> tuple[bool, str | None, Job | None]:
        """``signal``, and when it wakes the job, its resumed run claimed in the same
        transaction for the worker ``reserve(queue, type)`` names with its lock timeout
        (None: none is free, and the job is a due resume as ``signal`` leaves it).

        Returns whether the job exists, its queue when the signal woke it, and the run
        claimed, if any: none while the job or its queue is paused (the worker's
        reservation is then to be given back).
        """
        now = self.dialect.time_param(self._now())
        waiting_for = signal_wait(name)
        text = None if payload is None else payload.decode()
        stored = {"job_id": job_id, "name": name, "payload": text, "now": now}
        with self._cursor(write=True, atomic=True) as cur:
            sql = self._sql["insert_signal"]
            cur.execute(sql, stored)
            rows = cur.fetchall()
            if not rows:
                return False, None, None
            [(_id, queue, type_, status, waits_for)] = self._named(cur, sql, _LOCKED, rows)
            wake = {"id": job_id, "waiting_for": waiting_for, "now": now}
            taker = None
            waiting = status == JobStatus.WAITING.value and waits_for == waiting_for
            if reserve is not None and waiting:
                taker = reserve(queue, type_)
            if taker is not None:
                worker, lock_timeout = taker
                claim = {**wake, "worker": worker, "lock_timeout": lock_timeout}
                sql = self._sql["claim_signalled"]
                cur.execute(sql, claim)
                claimed = cur.fetchall()
                if claimed:
                    [run] = self._named(cur, sql, _JOB, claimed)
                    return True, queue, self._job(run)
            cur.execute(self._sql["wake_signalled"], wake)
            woken = [row[0] for row in cur.fetchall()]
            self.dialect.notify_queues(cur, woken)
        return True, (woken[0] if woken else None), None

    def observe_signals(
        self,
        job_id: str,
        name: str,
        *,
        worker_id: str,
        fence: int,
        limit: int,
        consume: bool,
        record: Callable[[list[bytes | None]], Checkpoint | None],
    ) -> list[bytes | None] | None:
        """Read (and with ``consume``, take) up to ``limit`` of the job's pending signals
        called ``name``, oldest first, and save ``record(payloads)`` (a checkpoint, or
        None for none) in the same transaction: a signal is never consumed without the
        checkpoint that remembers it, nor twice. Returns the payloads, or None when the
        run no longer holds the job's lock (nothing is read or written then).
        """
        with self._cursor(write=True, atomic=True) as cur:
            run = {"id": job_id, "worker": worker_id, "fence": fence}
            cur.execute(self._sql["lock_run"], run)
            if not cur.fetchall():
                return None
            look = {"job_id": job_id, "name": name, "limit": limit}
            cur.execute(self._sql["pending_signals"], look)
            rows = cur.fetchall()
            payloads = [None if p is None else str(p).encode() for _seq, p in rows]
            if consume and rows:
                taken = {"job_id": job_id, "name": name, "seq": rows[-1][0]}
                cur.execute(self._sql["delete_signals"], taken)
            cp = record(payloads)
            if cp is not None:
                cur.execute(
                    self._sql["save_checkpoint"], self._checkpoint_params(cp, worker_id, fence)
                )
                if not _saved(cp, cur.fetchall()):  # pragma: no cover - the run is locked
                    raise StorageError(f"job {job_id}: the checkpoint of a signal was refused")
        return payloads

    def wake_waiting(
        self,
        queues: Sequence[str],
        *,
        limit: int = WAKE_BATCH,
        now: datetime | None = None,
    ) -> tuple[list[str], tuple[str, datetime] | None]:
        """End the waits of ``queues``' waiting jobs whose deadline has come (up to
        ``limit``): each becomes a due resume, which the next claim runs without counting
        a new attempt. Returns the queues of the jobs woken, and the queue and deadline of
        the next wait to end among those still waiting in ``queues`` (``now`` when more
        are due at once), if any.

        The waiting index serves both looks; nothing is written when nothing is due.
        """
        now = now or self._now()
        names = self.dialect.list_param(list(queues))
        following = self._next_wake(names)
        if following is None or following[1] > now:
            return [], following
        woken, woke, _claimed = self._wake_in(names, now, limit, [], "", 0.0)
        if woke >= limit:
            return woken, (following[0], now)  # more are due: look again at once
        return woken, self._next_wake(names)

    def wake_and_claim(
        self,
        queues: Sequence[str],
        claims: Sequence[Claim],
        worker_id: str,
        *,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT,
        limit: int = WAKE_BATCH,
    ) -> tuple[list[str], list[list[Job]]]:
        """End the due waits of ``queues`` as ``wake_waiting`` does, then make the
        ``claims`` for ``worker_id`` in the same transaction (jobs per claim, in order):
        a worker whose timer says a wait has ended starts its resume after one commit,
        not two, and without a look first. Returns the queues of the jobs woken (not when
        the next wait ends: ``wake_waiting`` tells) and the jobs claimed.
        """
        names = self.dialect.list_param(list(queues))
        now = self._now()
        woken, _woke, claimed = self._wake_in(
            names, now, limit, claims, worker_id, _seconds(lock_timeout)
        )
        return woken, claimed

    def _wake_in(
        self,
        names: Any,
        now: datetime,
        limit: int,
        claims: Sequence[Claim],
        worker_id: str,
        lock_timeout: float,
    ) -> tuple[list[str], int, list[list[Job]]]:
        """Wake up to ``limit`` due waits of the queues ``names``, then make ``claims``,
        in one transaction: the queues woken, how many jobs, and the jobs claimed."""
        at = self.dialect.time_param(now)
        with self._cursor(write=True, atomic=True) as cur:
            sql = self._sql["due_waiting"]
            params = {"queues": names, "now": at, "limit": limit}
            rows = self.dialect.claim_rows(cur, params, sql)
            woken: list[str] = []
            if rows:
                rows = self._named(cur, sql, _DUE_WAIT, rows)
                woken = sorted({queue for _job_id, queue in rows})
            claimed = [self._claim_in(cur, claim, worker_id, now, lock_timeout) for claim in claims]
            if rows:
                # Other processes hear only of the resumes these claims did not take.
                taken = {job.id for jobs in claimed for job in jobs}
                left = {queue for job_id, queue in rows if job_id not in taken}
                self.dialect.notify_queues(cur, sorted(left))
        return woken, len(rows), claimed

    def _next_wake(self, queues: Any) -> tuple[str, datetime] | None:
        rows = self._read("next_wake", {"queues": queues}, _NEXT_WAKE)
        if not rows:
            return None
        queue, until = rows[0]
        at = self.dialect.time_value(until)
        assert at is not None
        return queue, at

    def set_progress(
        self, job_id: str, progress: bytes | None, *, worker_id: str, fence: int
    ) -> bool:
        """Store a running job's progress (JSON; None clears it), fenced like outcomes:
        rejected (False) unless ``worker_id`` still holds the run ``fence``."""
        params = {
            "id": job_id,
            "progress": None if progress is None else progress.decode(),
            "now": self.dialect.time_param(self._now()),
            "worker": worker_id,
            "fence": fence,
        }
        return bool(self._run_grouped("set_progress", params))

    def release(self, worker_id: str, jobs: Sequence[tuple[str, int]]) -> None:
        """Give back claimed runs that never started, without counting them as attempts
        (a resumed run goes back to being a due resume).

        ``jobs`` are ``(job id, fence)`` pairs; the fence stays as it is (the next claim
        takes a new one), so a retried release can never give back a later run.
        """
        now = self.dialect.time_param(self._now())
        params = [
            {"id": job_id, "fence": fence, "worker": worker_id, "now": now}
            for job_id, fence in jobs
        ]
        if params:
            with self._cursor(write=True, atomic=True) as cur:
                cur.executemany(self._sql["release"], params)

    def settled(self, worker_id: str, runs: Sequence[tuple[str, int]]) -> dict[str, JobStatus]:
        """The status each of ``worker_id``'s ``(job id, fence)`` runs was left in by an
        outcome that worker stored; runs with no stored outcome of theirs are absent.

        A worker asks after a write whose reply was lost: the commit may have happened.
        """
        if not runs:
            return {}
        wanted = dict(runs)
        params = {"ids": self.dialect.list_param(list(wanted)), "worker": worker_id}
        rows = self._read("settled", params, _SETTLED)
        return {id_: JobStatus(status) for id_, fence, status in rows if wanted.get(id_) == fence}

    # -- locks and workers --------------------------------------------------------------

    def heartbeat(
        self,
        job_id: str,
        worker_id: str,
        *,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        """Extend the lock of one running job held by ``worker_id`` to ``lock_timeout``
        from now, on the database's clock."""
        params = {
            "id": job_id,
            "worker": worker_id,
            "now": self.dialect.time_param(self._now()),
            "lock_timeout": _seconds(lock_timeout),
        }
        self._run("heartbeat_job", params)

    def heartbeat_worker(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        queues: Sequence[str],
        types: Sequence[str],
        jobs: Sequence[str] | None = None,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT,
        version: str = "",
    ) -> None:
        """Record a worker as alive and extend the locks of its jobs, in one go.

        ``jobs`` are the ids the worker knows it holds (all its jobs when None). A worker
        passes them so that a job claimed for it by a claim whose reply never arrived
        (the connection died after the commit) goes stale and is taken back. Each lock
        then expires ``lock_timeout`` (the worker's) from now, on the database's clock.
        """
        now = self.dialect.time_param(self._now())
        held = None if jobs is None else self.dialect.list_param(jobs)
        beat = {
            "worker": worker_id,
            "now": now,
            "jobs": held,
            "lock_timeout": _seconds(lock_timeout),
        }
        with self._cursor(write=True, atomic=True) as cur:
            cur.execute(self._sql["heartbeat_worker_jobs"], beat)
            cur.execute(
                self._sql["upsert_worker"],
                {
                    "id": worker_id,
                    "host": host,
                    "pid": pid,
                    "queues": json.dumps(list(queues)),
                    "types": json.dumps(sorted(types)),
                    "now": now,
                    "version": version,
                },
            )

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped."""
        self._run("delete_worker", {"id": worker_id})

    def live_workers(self, max_age: timedelta) -> list[WorkerInfo]:
        """Workers whose last heartbeat is within ``max_age``."""
        cutoff = self.dialect.time_param(self._now() - max_age)
        t = self.dialect.time_value
        workers = []
        for id_, host, pid, queues, types, started_at, heartbeat_at, version in self._read(
            "live_workers", {"cutoff": cutoff}, _WORKER
        ):
            started, beat = t(started_at), t(heartbeat_at)
            assert started is not None and beat is not None
            workers.append(
                WorkerInfo(
                    id_, host, pid, json.loads(queues), json.loads(types), started, beat, version
                )
            )
        return workers

    def prune_workers(self, max_age: timedelta) -> None:
        """Forget workers whose last heartbeat is older than ``max_age``."""
        self._run("prune_workers", {"cutoff": self.dialect.time_param(self._now() - max_age)})

    def release_expired_locks(
        self, *, backoff: Callable[[str], Backoff | None] | None = None
    ) -> int:
        """Take back running jobs whose lock expired; returns how many (what workers'
        reapers do).

        Each lock carries its own expiry, set at its claim and every heartbeat from the
        owning worker's lock timeout, on the database's clock (PostgreSQL's; on SQLite
        the host's, which every process using the file shares): neither the caller's
        clock nor its lock timeout matters. A lock taken by an older release, which
        records no expiry, expires ``DEFAULT_LOCK_TIMEOUT`` after its last heartbeat.

        Each job taken back becomes ``retrying`` (the lost run counts as an attempt) and
        waits its backoff like a failed run, or ``failed`` when its retries are spent.
        The backoff is the policy stored with the job, else ``backoff(job type)`` (its
        handler's default, from a caller that knows handlers), else the default policy.
        """
        return self._take_back(
            "expired_locks",
            {"lock_timeout": DEFAULT_LOCK_TIMEOUT},
            " sent no heartbeat before its lock expired; the run was taken back",
            backoff,
        )

    def release_stale_locks(
        self,
        timeout: timedelta | float,
        *,
        backoff: Callable[[str], Backoff | None] | None = None,
    ) -> int:
        """Take back running jobs whose heartbeat is older than ``timeout``, measured on
        this host's clock, whatever their own lock timeout; returns how many.

        Taken-back jobs are handled as by ``release_expired_locks``, which workers use.
        """
        seconds = _seconds(timeout)
        cutoff = self.dialect.time_param(self._now() - timedelta(seconds=seconds))
        return self._take_back(
            "stale_locks",
            {"cutoff": cutoff},
            f" sent no heartbeat for {seconds:g} s; the run was taken back",
            backoff,
        )

    def _take_back(
        self,
        select: str,
        params: dict[str, Any],
        error: str,
        backoff: Callable[[str], Backoff | None] | None,
    ) -> int:
        """Take back the runs ``select`` finds, a batch per transaction.

        The runs are selected (locked on PostgreSQL, under the write lock on SQLite),
        then each is updated, fenced by its run, with the retry time its own backoff
        gives: computed here, since policies are Python.
        """
        taken = 0
        while True:
            woken: list[str] = []
            with self._cursor(write=True, atomic=True) as cur:
                sql = self._sql[select]
                cur.execute(sql, {**params, "limit": _REAP_BATCH})
                rows = cur.fetchall()
                if rows:
                    rows = self._named(cur, sql, _TAKE_BACK, rows)
                    now = self._now()
                    updates = [self._taken_back(row, now, error, backoff) for row in rows]
                    cur.executemany(self._sql["record_lost_attempt"], updates)
                    cur.executemany(self._sql["reap"], updates)
                    # Runs that failed for good (the rows are locked: every reap took).
                    lost = [(u["id"], False) for u in updates if u["finished_at"] is not None]
                    if lost:
                        self._settle(cur, lost, self.dialect.time_param(now), woken)
            self._announce_woken(woken)
            taken += len(rows)
            if len(rows) < _REAP_BATCH:
                return taken

    def _taken_back(
        self,
        row: Sequence[Any],
        now: datetime,
        error: str,
        backoff: Callable[[str], Backoff | None] | None,
    ) -> dict[str, Any]:
        """The ``reap`` parameters for one run taken back (a row of the select, read as
        ``_TAKE_BACK``)."""
        job_id, fence, attempt, max_retries, stored, job_type = row
        t = self.dialect.time_param
        params = {
            "id": job_id,
            "fence": fence,
            "now": t(now),
            "error": error,  # the statement prefixes "WorkerLost: worker <id>"
            "status": JobStatus.RETRYING.value,
            "finished_at": None,
            "run_at": None,
        }
        if attempt > max_retries:
            params.update(status=JobStatus.FAILED.value, finished_at=t(now))
            return params
        try:
            default = None if backoff is None else backoff(job_type)
            policy = policy_for(None if stored is None else stored.encode(), default)
            delay = policy.delay(attempt)
        except Exception as exc:  # a handler's own policy: never stop the reaper
            log.warning("job %s: backoff policy failed (%s); using the default", job_id, exc)
            delay = DEFAULT_BACKOFF.delay(attempt)
        params["run_at"] = t(delayed(now, delay))
        return params

    # -- reads --------------------------------------------------------------------------

    def get_job(self, job_id: str) -> Job | None:
        """One job by id, or None."""
        rows = self._read("get_job", {"id": job_id}, _JOB)
        return self._job(rows[0]) if rows else None

    def get_jobs_by_status(self, status: JobStatus | str, limit: int) -> list[Job]:
        """Up to ``limit`` jobs with ``status``, oldest first."""
        params = {"status": JobStatus(status).value, "limit": limit}
        return [self._job(row) for row in self._read("jobs_by_status", params, _JOB)]

    def get_due_jobs(self, limit: int) -> list[Job]:
        """Jobs waiting to run whose run time has come, in dequeue order."""
        params = {"now": self.dialect.time_param(self._now()), "limit": limit}
        return [self._job(row) for row in self._read("due_jobs", params, _JOB)]

    def queue_depths(self) -> list[QueueDepth]:
        """Per queue with due jobs: how many are due now and the oldest one's run time."""
        t = self.dialect.time_value
        params = {"now": self.dialect.time_param(self._now())}
        rows = self._read("queue_depths", params, _DEPTH)
        return [QueueDepth(queue, due, t(oldest)) for queue, due, oldest in rows]

    def waiting_counts(self) -> dict[str, int]:
        """Per queue with waiting jobs: how many wait (for a deadline, children or a signal)."""
        return {queue: int(n) for queue, n in self._read("waiting_counts", {}, _WAITING)}

    # -- schedules ----------------------------------------------------------------------

    def upsert_schedule(
        self,
        name: str,
        spec: str,
        queue: str,
        last_fire_at: datetime | None,
        next_fire_at: datetime | None,
    ) -> None:
        """Record a schedule's fire times for listings and for schedulers that start later.

        The row only moves forward: an earlier ``next_fire_at`` is ignored, and a None
        ``last_fire_at`` keeps the recorded one. A different ``spec`` replaces the row.
        """
        t = self.dialect.time_param
        params = {
            "name": name,
            "spec": spec,
            "queue": queue,
            "last_fire_at": t(last_fire_at),
            "next_fire_at": t(next_fire_at),
            "now": t(self._now()),
        }
        self._run("upsert_schedule", params)

    def list_schedules(self) -> list[ScheduleState]:
        """Every schedule a scheduler has recorded, by name."""
        t = self.dialect.time_value
        states = []
        for name, spec, queue, last, following, updated_at in self._read(
            "list_schedules", {}, _SCHEDULE
        ):
            updated = t(updated_at)
            assert updated is not None
            states.append(ScheduleState(name, spec, queue, t(last), t(following), updated))
        return states

    # -- checkpoints --------------------------------------------------------------------

    def save_checkpoint(
        self,
        cp: Checkpoint,
        *,
        worker_id: str | None = None,
        fence: int | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Store the outcome of a durable call.

        With ``worker_id`` and ``fence`` (the run's ``Job.fence``; ``attempt`` is its
        former name) the write is fenced: it is rejected (False) unless that run still
        holds the job's lock. A checkpoint is never replaced: when
        its position (job, scope, call index) holds another one, that one is kept and
        ``CheckpointConflict`` is raised. Saving the same checkpoint (same id) again, as
        a retry after a lost reply does, returns True.
        """
        params = self._checkpoint_params(cp, worker_id, _fence(fence, attempt))
        return _saved(cp, self._run_grouped("save_checkpoint", params))

    def _checkpoint_params(
        self, cp: Checkpoint, worker_id: str | None, fence: int | None
    ) -> dict[str, Any]:
        if not cp.id:
            [cp.id] = new_ids(1)
        return {
            "id": cp.id,
            "job_id": cp.job_id,
            "call_index": cp.call_index,
            "call_type": cp.call_type,
            "result": None if cp.result is None else cp.result.decode(),
            "error": storable_text(cp.error),
            "now": self.dialect.time_param(cp.created_at),
            "scope": cp.scope,
            "worker": worker_id,
            "fence": fence,
        }

    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """A job's checkpoints, in call order."""
        rows = self._read("get_checkpoints", {"job_id": job_id}, _CHECKPOINT)
        return [self._checkpoint(row) for row in rows]

    def delete_checkpoints(self, job_id: str) -> None:
        """Remove all checkpoints of a job."""
        self._run("delete_checkpoints", {"job_id": job_id})


def _saved(cp: Checkpoint, rows: Sequence[Any]) -> bool:
    """Whether ``save_checkpoint`` (which returned ``rows``) stored ``cp``.

    On a conflict the statement's no-op update keeps the stored row and returns its id
    (``CheckpointConflict``); a fenced-out write returns no row (False).
    """
    if not rows:
        return False
    if rows[0][0] != cp.id:
        where = f"{cp.scope}.{cp.call_index}" if cp.scope else str(cp.call_index)
        raise CheckpointConflict(
            f"job {cp.job_id} already has a checkpoint for durable call {where}; it was"
            f" kept and this one ({cp.call_type!r}) was not saved"
        )
    return True


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _fence(fence: int | None, attempt: int | None) -> int | None:
    """The fencing token of a write: ``fence``, or ``attempt``, its former name."""
    return fence if fence is not None else attempt


# Error messages (``last_error``, a failed step's checkpoint) are capped as arguments and
# results are: an exception's text can be any size, and it is read back with its row.
MAX_ERROR_TEXT = 64 * 1024  # characters


_SUMMARY_LINES = 12  # of a traceback, kept with each failed attempt


def traceback_summary(text: str | None) -> str | None:
    """The end of a traceback, kept with each failed attempt: its last frames and the
    error (the job keeps its latest traceback whole)."""
    if text is None:
        return None
    lines = text.rstrip("\n").splitlines()
    return "\n".join(lines[-_SUMMARY_LINES:])


def storable_text(text: str | None) -> str | None:
    """``text`` as any database can store it: NUL and lone surrogates backslash-escaped,
    and cut to ``MAX_ERROR_TEXT`` characters with a marker saying how much was cut.

    Error messages come from arbitrary exceptions; PostgreSQL rejects NUL in text and
    no UTF-8 database takes lone surrogates, and an outcome must never fail to store.
    """
    if text is None:
        return None
    if len(text) > MAX_ERROR_TEXT:
        cut = len(text) - MAX_ERROR_TEXT
        text = f"{text[:MAX_ERROR_TEXT]}... [truncated: {cut:,} more characters]"
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


if TYPE_CHECKING:  # mypy checks that SQLStorage provides all that JobStore lists
    _: type[JobStore] = SQLStorage
