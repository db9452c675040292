"""``SQLStorage``: the storage protocol on SQLite and PostgreSQL through SQLAlchemy engines.

SQLAlchemy provides engines, pooling, URLs and users' connections; the statements
themselves are plain SQL per dialect (``dialects.py``), run on the driver's cursor.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from ..errors import CheckpointConflict
from ..job import Checkpoint, Job, JobStatus, new_ids, utcnow
from ..retry import DEFAULT_BACKOFF, Backoff, delayed, policy_for
from .dialects import (
    INSERT_WIDTH,
    MIGRATION_LOCK_KEY,
    Dialect,
    PostgresDialect,
    SQLiteDialect,
    dialect_for,
)
from .urls import masked

__all__ = ["Claim", "Outcome", "SQLStorage", "ScheduleState", "WorkerInfo"]

log = logging.getLogger("durable_jobs")

_SQLITE_BUSY_TIMEOUT_MS = 30_000
# The named parameters of the insert_job statements, in INSERT_COLUMNS order.
_INSERT_PARAMS = (
    "id", "type", "args", "queue", "priority", "status", "attempt", "max_retries", "run_at",
    "now", "updated_at", "backoff", "meta",
)  # fmt: skip
_IDLE_CONNECTIONS = 16  # at most, kept out of the engine's pool for the storage's use
#: The lock timeout (seconds) of callers that give none, as a worker's default.
DEFAULT_LOCK_TIMEOUT = 30.0
_REAP_BATCH = 500  # runs taken back per transaction


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as recorded in the database."""

    id: str
    host: str
    pid: int
    queues: list[str]
    types: list[str]
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim to make: up to ``limit`` due jobs of ``queue``.

    ``min_retries`` leaves out jobs with fewer retries: a worker claiming ahead of its
    free slots sets it to 1, since a claimed run counts as an attempt even if the
    worker dies before starting it, and a job allowed a single run must not lose it so.
    """

    queue: str
    limit: int
    skip_types: Sequence[str] = ()
    min_retries: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """A successful run to store: the job's id, the run (its ``Job.fence``) and its JSON
    result."""

    job_id: str
    fence: int
    result: bytes | None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """A schedule as the schedulers last recorded it (``spec`` as in ``Schedule.spec``)."""

    name: str
    spec: str
    queue: str
    last_fire_at: datetime | None
    next_fire_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """How many jobs of a queue are due to run, and since when the oldest has waited."""

    queue: str
    due: int
    oldest_run_at: datetime | None


def _normalise_url(url: str | sa.URL) -> sa.URL:
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError with a terse message
        # Both the URL and SQLAlchemy's message may hold the password.
        raise ValueError(masked(f"invalid database URL {str(url)!r}: {exc}")) from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        # psycopg 3 is this library's PostgreSQL driver whatever the URL names.
        return parsed.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return parsed
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string()!r}: "
        "use sqlite:///path.db, sqlite:// (in memory) or postgresql://user@host/db"
    )


def _is_memory_sqlite(url: sa.URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _create_engine(url: sa.URL) -> sa.Engine:
    if _is_memory_sqlite(url):
        # One shared connection: every thread must see the same in-memory database.
        return sa.create_engine(
            url,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            isolation_level="AUTOCOMMIT",
        )
    # The engine keeps SQLAlchemy's usual transactions, so a user's ``engine.begin()``
    # around ``enqueue(..., connection=conn)`` really commits or rolls back together;
    # the storage's own statements run in autocommit (see ``SQLStorage._autocommit``).
    if url.get_backend_name() == "sqlite":
        return sa.create_engine(
            url,
            pool_size=8,
            max_overflow=32,
            connect_args={"check_same_thread": False, "timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
    return sa.create_engine(
        url,
        pool_size=10,
        max_overflow=40,
        connect_args={"options": "-c TimeZone=UTC"},
    )


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # The busy timeout makes writers from other processes wait for the lock instead
        # of failing; WAL lets readers run beside the single writer.
        cur.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _sqlite_full_sync(dbapi_conn: Any, _record: Any) -> None:
    # Every commit reaches the disk before it returns, whatever default this SQLite was
    # built with: a committed job survives a power cut. An engine a user passes in keeps
    # the user's choice (see docs/guarantees.md, "Durability settings").
    dbapi_conn.execute("PRAGMA synchronous=FULL")


def _use_wal(cur: Any) -> None:
    # Switching a database to WAL (once: the mode is stored in the file) needs a lock that
    # SQLite will not wait for while another connection holds one, as when several
    # processes open a fresh database at once: it fails at once with "database is locked".
    # Retry within the busy timeout, as a waiting writer would.
    deadline = time.monotonic() + _SQLITE_BUSY_TIMEOUT_MS / 1000
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


@dataclass
class _Write:
    """One statement waiting for a group commit, and how it went."""

    sql: str
    params: dict[str, Any]
    rows: list[Any] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class _GroupCommit:
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
                        write.rows = cur.fetchall() if self._storage._has_rows(cur) else []
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


# Jobs of a batch built before they are sent: enough to amortise the work per chunk,
# few enough that PostgreSQL starts storing early. SQLite stores a chunk with one
# statement, whose parameters must stay under its limit on bound variables.
_COPY_CHUNK = 1000
_INSERT_CHUNK = 250


def _sqlite_chunk() -> int:
    # SQLite before 3.32 binds at most 999 variables per statement by default.
    limit = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
    return min(_INSERT_CHUNK, limit // INSERT_WIDTH)


def _chunks(items: Iterable[Job], size: int) -> Iterator[list[Job]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class SQLStorage:
    """Job storage on SQLite or PostgreSQL.

    ``SQLStorage("sqlite:///jobs.db")``, ``SQLStorage("postgresql://user@host/db")`` or
    ``SQLStorage(engine)`` with an existing SQLAlchemy ``Engine``. Call ``migrate()``
    once (it is idempotent and safe to run from many processes at once).
    """

    def __init__(self, url_or_engine: str | sa.URL | sa.Engine) -> None:
        if isinstance(url_or_engine, sa.Engine):
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            self.engine = _create_engine(_normalise_url(url_or_engine))
            self._owns_engine = True
        self.dialect: Dialect = dialect_for(self.engine.dialect.name)
        self._sql = self.dialect.sql
        self.is_sqlite = isinstance(self.dialect, SQLiteDialect)
        self.is_memory = self.is_sqlite and _is_memory_sqlite(self.engine.url)
        if self.is_sqlite:
            sa.event.listen(self.engine, "connect", _sqlite_on_connect)
            if self._owns_engine:
                sa.event.listen(self.engine, "connect", _sqlite_full_sync)
        # SQLite allows one writer at a time: threads of this process queue on a lock
        # rather than spinning in SQLite's busy handler. An in-memory database is one
        # shared connection, so every use is serialised.
        self._write_lock = threading.RLock()
        self._group = _GroupCommit(self) if self.is_sqlite else None
        self._chunk = _sqlite_chunk() if self.is_sqlite else _COPY_CHUNK
        self._migrated = False
        self._idle: list[Any] = []
        self._idle_pid = os.getpid()
        pool_size = getattr(self.engine.pool, "size", lambda: 1)()
        # A caller's engine keeps at least half its pool for the caller.
        self._idle_max = min(_IDLE_CONNECTIONS, pool_size if self._owns_engine else pool_size // 2)
        self._autocommit = ("isolation_level", None) if self.is_sqlite else ("autocommit", True)

    def __repr__(self) -> str:
        return f"SQLStorage({self.engine.url.render_as_string(hide_password=True)!r})"

    @property
    def url(self) -> str:
        """The database URL with the password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close pooled connections (only those of an engine this storage created)."""
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
        lock = self._lock_for(write)
        if lock is not None:
            lock.acquire()
        try:
            raw = self._checkout()
            try:
                with self._transaction(raw, write=write, atomic=atomic) as cur:
                    yield cur
            finally:
                self._checkin(raw)
        finally:
            if lock is not None:
                lock.release()

    def _lock_for(self, write: bool) -> threading.RLock | None:
        """The in-process lock a statement must hold: SQLite allows one writer at a time,
        and an in-memory database is one connection, so every use of it is serialised."""
        return self._write_lock if (self.is_memory or (self.is_sqlite and write)) else None

    @staticmethod
    def _kept_cursor(raw: Any) -> Any:
        # One cursor per connection, kept: making one costs as much as a small statement.
        cur = raw.info.get("sdj_cursor")
        if cur is None:
            cur = raw.info["sdj_cursor"] = raw.cursor()
        return cur

    def _failed(self, raw: Any, cur: Any, exc: BaseException) -> None:
        """Forget a connection's cursor after an error, and roll back (or discard) it."""
        raw.info.pop("sdj_cursor", None)
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
        attr, on = self._autocommit
        try:
            raw.info["sdj_autocommit_was"] = getattr(raw.driver_connection, attr)
            setattr(raw.driver_connection, attr, on)
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
                setattr(raw.driver_connection, self._autocommit[0], raw.info["sdj_autocommit_was"])
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
            if self.is_sqlite and write:
                # Taking the write lock up front avoids the deadlock of two deferred
                # transactions that both read and then try to write.
                cur.execute("BEGIN IMMEDIATE")
                yield cur
            elif atomic and not self.is_sqlite:
                with raw.driver_connection.transaction():
                    yield cur
            else:
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
        (SQLite; PostgreSQL's own commits already share disk flushes)."""
        if self._group is None:
            return self._run(name, params)
        return self._group.run(self._sql[name], params)

    def _run(self, name: str, params: dict[str, Any], *, write: bool = True) -> list[Any]:
        return self._execute(self._sql[name], params, write=write)

    def _execute(self, sql: str, params: dict[str, Any], *, write: bool) -> list[Any]:
        """One statement, which commits by itself on a connection in driver autocommit.

        On SQLite a lone writing statement takes the write lock before it reads, so it
        needs no ``BEGIN IMMEDIATE``; and no context managers, which cost as much as a
        small statement.
        """
        lock = self._lock_for(write)
        if lock is not None:
            lock.acquire()
        try:
            raw = self._checkout()
            try:
                cur = self._kept_cursor(raw)
                try:
                    cur.execute(sql, params)
                    return cur.fetchall() if self._has_rows(cur) else []
                except BaseException as exc:
                    self._failed(raw, cur, exc)
                    raise
            finally:
                self._checkin(raw)
        finally:
            if lock is not None:
                lock.release()

    def _has_rows(self, cur: Any) -> bool:
        """Whether the last statement returned a result set (psycopg's ``description``
        builds column objects: its row number answers alone)."""
        if self.is_sqlite:
            return cur.description is not None
        return cur.rownumber is not None

    # -- schema -------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema. Idempotent; concurrent callers apply each step once."""
        d = self.dialect
        with self._cursor(write=True, atomic=True) as cur:
            if isinstance(d, PostgresDialect):
                # Serialises concurrent migrators; released when the transaction ends.
                cur.execute(d.lock_migrations, {"key": MIGRATION_LOCK_KEY})
            cur.execute(d.create_version_table)  # type: ignore[attr-defined]
            cur.execute(d.sql["schema_versions"])
            applied = {row[0] for row in cur.fetchall()}
            now = d.time_param(utcnow())
            for version, statements in enumerate(d.migrations, start=1):
                if version in applied:
                    continue
                for statement in statements:
                    cur.execute(statement)
                cur.execute(d.sql["record_version"], {"version": version, "now": now})
        self._migrated = True

    def require_schema(self) -> None:
        """Raise ``RuntimeError`` unless the database's schema is up to date (and the
        driver's error if it cannot be reached): workers check before they start, and
        enqueues when a write fails."""
        if self._migrated:
            return
        version, latest = self.schema_version(), len(self.dialect.migrations)
        if version < latest:
            raise RuntimeError(
                f"the database is at schema version {version} of {latest}: run "
                "storage.migrate() (or `sdj migrate`) first"
            )
        self._migrated = True

    def schema_error(self, error: BaseException) -> RuntimeError | None:
        """A clearer error than the driver's ``error`` when it says a table is missing
        because the database was never migrated (None otherwise)."""
        if not self.dialect.missing_table(error):
            return None
        try:
            self.require_schema()
        except RuntimeError as missing:
            return missing
        except Exception:
            return None  # cannot tell: the driver's error stands
        return None

    def schema_version(self) -> int:
        """The highest migration applied (0 for an empty database); reads only."""
        if not sa.inspect(self.engine).has_table("sdj_schema_version"):
            return 0
        with self._cursor() as cur:
            cur.execute(self._sql["schema_versions"])
            return max((row[0] for row in cur.fetchall()), default=0)

    # -- rows ---------------------------------------------------------------------------

    def _job(self, row: Sequence[Any]) -> Job:
        t = self.dialect.time_value
        created_at = t(row[12])
        updated_at = t(row[13])
        assert created_at is not None and updated_at is not None
        return Job(
            id=row[0],
            type=row[1],
            args=row[2].encode(),
            queue=row[3],
            priority=row[4],
            status=JobStatus(row[5]),
            attempt=row[6],
            max_retries=row[7],
            last_error=row[8],
            run_at=t(row[9]),
            started_at=t(row[10]),
            completed_at=t(row[11]),
            created_at=created_at,
            updated_at=updated_at,
            result=None if row[14] is None else row[14].encode(),
            backoff=None if row[15] is None else row[15].encode(),
            locked_by=row[16],
            heartbeat_at=t(row[17]),
            meta=None if row[18] is None else json.loads(row[18]),
            fence=row[19],
            lock_expires_at=t(row[20]),
        )

    def _checkpoint(self, row: Sequence[Any]) -> Checkpoint:
        created_at = self.dialect.time_value(row[6])
        assert created_at is not None
        return Checkpoint(
            id=row[0],
            job_id=row[1],
            call_index=row[2],
            call_type=row[3],
            result=None if row[4] is None else row[4].encode(),
            error=row[5],
            created_at=created_at,
            scope=row[7],
        )

    def _insert_row(self, job: Job, now: Any) -> tuple[Any, ...]:
        """A job's values in ``INSERT_COLUMNS`` order; ``now`` is already a parameter."""
        return (
            job.id,
            job.type,
            job.args.decode(),
            job.queue,
            job.priority,
            job.status.value,
            0,
            job.max_retries,
            now if job.run_at is None else self.dialect.time_param(job.run_at),
            now,
            now,
            None if job.backoff is None else job.backoff.decode(),
            None if job.meta is None else json.dumps(job.meta),
        )

    def _insert_params(self, row: tuple[Any, ...]) -> dict[str, Any]:
        """Named parameters of the ``insert_job`` statements for one row."""
        return dict(zip(_INSERT_PARAMS, row, strict=True))

    # -- enqueue ------------------------------------------------------------------------

    def enqueue(self, job: Job, *, connection: sa.Connection | None = None) -> str:
        """Store a new job (in ``connection``'s transaction when given); returns its id."""
        if connection is not None:
            return self.enqueue_many([job], connection=connection)[0]
        [row] = self._stamp([job], utcnow())
        self._run_grouped("insert_job", self._insert_params(row))
        return job.id

    def enqueue_many(
        self, jobs: Iterable[Job], *, connection: sa.Connection | None = None
    ) -> list[str]:
        """Store jobs all-or-nothing in one transaction; returns their ids in order.

        ``jobs`` may be a lazy iterable, drawn a chunk at a time inside the transaction:
        on PostgreSQL the server stores one chunk while the next is built. An error
        raised while drawing it stores nothing.
        """
        now = utcnow()
        chunks = _chunks(jobs, self._chunk)
        first = next(chunks, [])
        if connection is not None:
            stored = [*first, *itertools.chain.from_iterable(chunks)]
            if stored:
                rows = self._stamp(stored, now)
                self._enqueue_in(connection, [self._insert_params(row) for row in rows])
            return [job.id for job in stored]
        if len(first) <= 1:  # a chunk holds more: nothing follows
            return [self.enqueue(job) for job in first]
        chunks = itertools.chain([first], chunks)
        if isinstance(self.dialect, PostgresDialect):
            return self._copy_jobs(chunks, now)
        return self._insert_chunks(chunks, now)

    def enqueue_claimed(
        self,
        job: Job,
        worker_id: str,
        *,
        lock_timeout: timedelta | float = DEFAULT_LOCK_TIMEOUT,
    ) -> str:
        """Store a new, due job already claimed by ``worker_id``, its first run starting
        now: a worker in the enqueuing process with a free slot runs it without a claim.
        Its lock expires after ``lock_timeout`` (the worker's) unless heartbeated.
        """
        now = utcnow()
        [row] = self._stamp([job], now)
        params = {
            **self._insert_params(row),
            "worker": worker_id,
            "lock_timeout": _seconds(lock_timeout),
        }
        self._run_grouped("insert_claimed_job", params)
        job.status, job.attempt, job.locked_by = JobStatus.RUNNING, 1, worker_id
        job.fence = 1
        job.started_at = job.heartbeat_at = now
        return job.id

    def enqueue_unique(self, job: Job, unique_key: str) -> bool:
        """Store ``job`` unless a job with ``unique_key`` exists; True if it was stored.

        The database's unique index decides, so of any number of racing callers one stores.
        """
        [row] = self._stamp([job], utcnow())
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

    def _enqueue_in(self, connection: sa.Connection, params: list[dict[str, Any]]) -> None:
        # The caller's transaction decides when (and whether) the jobs become visible.
        if connection.engine.dialect.name != self.engine.dialect.name:
            raise ValueError("connection belongs to a different kind of database than storage")
        connection.exec_driver_sql(self._sql["insert_job"], params)

    def _insert_chunks(self, chunks: Iterable[list[Job]], now: datetime) -> list[str]:
        d = self.dialect
        assert isinstance(d, SQLiteDialect)
        ids: list[str] = []
        with self._cursor(write=True) as cur:
            for chunk in chunks:
                rows = self._stamp(chunk, now)
                cur.execute(d.insert_rows(len(rows)), [value for row in rows for value in row])
                ids.extend(job.id for job in chunk)
        return ids

    def _copy_jobs(self, chunks: Iterable[list[Job]], now: datetime) -> list[str]:
        d = self.dialect
        assert isinstance(d, PostgresDialect)
        ids: list[str] = []
        due: set[str] = set()
        with self._cursor(write=True, atomic=True) as cur:
            with cur.copy(d.copy_jobs) as copy:
                copy.set_types(d.copy_types)
                for chunk in chunks:
                    for row in self._stamp(chunk, now):
                        copy.write_row(row)
                        if row[8] <= now:  # run_at
                            due.add(row[3])  # queue
                    ids.extend(job.id for job in chunk)
            if due:
                cur.execute(d.notify, {"queues": sorted(due)})
        return ids

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
    ) -> list[Job]:
        """Claim up to ``limit`` due jobs of ``queue`` for ``worker_id`` in one statement.

        Jobs come back in dequeue order: priority (higher first), run time, enqueue order.
        Job types in ``skip_types``, and jobs allowed fewer than ``min_retries`` retries,
        are left for others. Each claim is a new run with a new ``fence``; its lock
        expires ``lock_timeout`` (the worker's) after the claim on the database's clock,
        unless heartbeated. ``now`` decides which jobs are due (tests pass it).
        """
        claim = Claim(queue, limit, skip_types, min_retries)
        with self._cursor(write=True) as cur:
            return self._claim_in(cur, claim, worker_id, now or utcnow(), _seconds(lock_timeout))

    def _claim_in(
        self, cur: Any, claim: Claim, worker_id: str, now: datetime, lock_timeout: float
    ) -> list[Job]:
        params = {
            "queue": claim.queue,
            "worker": worker_id,
            "limit": claim.limit,
            "now": self.dialect.time_param(now),
            "skip": self.dialect.list_param(claim.skip_types),
            "min_retries": claim.min_retries,
            "lock_timeout": lock_timeout,
        }
        cur.execute(self._sql["claim"], params)
        rows = cur.fetchall()
        # RETURNING gives no order guarantee; restore the dequeue order (priority, run
        # time, then the enqueue-order key the statement returns after the job's columns).
        rows.sort(key=lambda r: (-r[4], r[9], r[-1]))
        return [self._job(row) for row in rows]

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
        now = utcnow()
        seconds = _seconds(lock_timeout)
        with self._cursor(write=True, atomic=True) as cur:
            accepted = self._complete_in(cur, worker_id, outcomes, now)
            claimed = [self._claim_in(cur, claim, worker_id, now, seconds) for claim in claims]
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
        ``attempt`` is the former name of ``fence``.
        """
        params = {
            "id": job_id,
            "result": None if result is None else result.decode(),
            "worker": worker_id,
            "fence": _fence(fence, attempt),
            "now": self.dialect.time_param(utcnow()),
        }
        if isinstance(self.dialect, PostgresDialect):
            return bool(self._run("complete", params))
        with self._cursor(write=True) as cur:
            return self._sqlite_complete(cur, params)

    def _sqlite_complete(self, cur: Any, params: dict[str, Any]) -> bool:
        cur.execute(self._sql["complete"], params)
        if not cur.fetchall():
            return False
        cur.execute(self._sql["delete_checkpoints"], {"job_id": params["id"]})
        return True

    def complete_many(self, worker_id: str, outcomes: Sequence[Outcome]) -> set[str]:
        """Complete many runs of ``worker_id`` in one transaction; returns the ids accepted."""
        if not outcomes:
            return set()
        with self._cursor(write=True) as cur:
            return self._complete_in(cur, worker_id, outcomes, utcnow())

    def _complete_in(
        self, cur: Any, worker_id: str, outcomes: Sequence[Outcome], at: datetime
    ) -> set[str]:
        if not outcomes:
            return set()
        now = self.dialect.time_param(at)
        if isinstance(self.dialect, PostgresDialect):
            params = {
                "ids": [o.job_id for o in outcomes],
                "fences": [o.fence for o in outcomes],
                "results": [None if o.result is None else o.result.decode() for o in outcomes],
                "worker": worker_id,
                "now": now,
            }
            cur.execute(self._sql["complete_many"], params)
            return {row[0] for row in cur.fetchall()}
        accepted = set()
        for o in outcomes:
            params = {
                "id": o.job_id,
                "result": None if o.result is None else o.result.decode(),
                "worker": worker_id,
                "fence": o.fence,
                "now": now,
            }
            if self._sqlite_complete(cur, params):
                accepted.add(o.job_id)
        return accepted

    def fail(
        self,
        job_id: str,
        err_msg: str,
        run_at: datetime | None,
        *,
        worker_id: str | None = None,
        fence: int | None = None,
        attempt: int | None = None,
    ) -> bool:
        """Record a failed run: ``retrying`` until ``run_at``, or ``failed`` when it is None.

        Fenced like ``complete`` when ``worker_id`` and ``fence`` are given (``attempt``:
        the former name of ``fence``).
        """
        now = utcnow()
        t = self.dialect.time_param
        params = {
            "id": job_id,
            "status": (JobStatus.FAILED if run_at is None else JobStatus.RETRYING).value,
            "error": storable_text(err_msg),
            "run_at": t(run_at),
            "completed_at": t(now) if run_at is None else None,
            "now": t(now),
            "worker": worker_id,
            "fence": _fence(fence, attempt),
        }
        return bool(self._run("fail", params))

    def release(self, worker_id: str, jobs: Sequence[tuple[str, int]]) -> None:
        """Give back claimed runs that never started, without counting them as attempts.

        ``jobs`` are ``(job id, fence)`` pairs; the fence stays as it is (the next claim
        takes a new one), so a retried release can never give back a later run.
        """
        now = self.dialect.time_param(utcnow())
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
        rows = self._run("settled", params, write=False)
        return {row[0]: JobStatus(row[2]) for row in rows if wanted.get(row[0]) == row[1]}

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
            "now": self.dialect.time_param(utcnow()),
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
    ) -> None:
        """Record a worker as alive and extend the locks of its jobs, in one go.

        ``jobs`` are the ids the worker knows it holds (all its jobs when None). A worker
        passes them so that a job claimed for it by a claim whose reply never arrived
        (the connection died after the commit) goes stale and is taken back. Each lock
        then expires ``lock_timeout`` (the worker's) from now, on the database's clock.
        """
        now = self.dialect.time_param(utcnow())
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
                },
            )

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped."""
        self._run("delete_worker", {"id": worker_id})

    def live_workers(self, max_age: timedelta) -> list[WorkerInfo]:
        """Workers whose last heartbeat is within ``max_age``."""
        cutoff = self.dialect.time_param(utcnow() - max_age)
        t = self.dialect.time_value
        workers = []
        for row in self._run("live_workers", {"cutoff": cutoff}, write=False):
            started, beat = t(row[5]), t(row[6])
            assert started is not None and beat is not None
            workers.append(
                WorkerInfo(
                    row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]), started, beat
                )
            )
        return workers

    def prune_workers(self, max_age: timedelta) -> None:
        """Forget workers whose last heartbeat is older than ``max_age``."""
        self._run("prune_workers", {"cutoff": self.dialect.time_param(utcnow() - max_age)})

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
        cutoff = self.dialect.time_param(utcnow() - timedelta(seconds=seconds))
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
            with self._cursor(write=True, atomic=True) as cur:
                cur.execute(self._sql[select], {**params, "limit": _REAP_BATCH})
                rows = cur.fetchall()
                if rows:
                    now = utcnow()
                    updates = [self._taken_back(row, now, error, backoff) for row in rows]
                    cur.executemany(self._sql["reap"], updates)
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
        """The ``reap`` parameters for one run taken back (a row of the select)."""
        job_id, fence, attempt, max_retries, stored, job_type = row
        t = self.dialect.time_param
        params = {
            "id": job_id,
            "fence": fence,
            "now": t(now),
            "error": error,  # the statement prefixes "WorkerLost: worker <id>"
            "status": JobStatus.RETRYING.value,
            "completed_at": None,
            "run_at": None,
        }
        if attempt > max_retries:
            params.update(status=JobStatus.FAILED.value, completed_at=t(now))
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
        rows = self._run("get_job", {"id": job_id}, write=False)
        return self._job(rows[0]) if rows else None

    def get_jobs_by_status(self, status: JobStatus | str, limit: int) -> list[Job]:
        """Up to ``limit`` jobs with ``status``, oldest first."""
        params = {"status": JobStatus(status).value, "limit": limit}
        return [self._job(row) for row in self._run("jobs_by_status", params, write=False)]

    def get_due_jobs(self, limit: int) -> list[Job]:
        """Jobs waiting to run whose run time has come, in dequeue order."""
        params = {"now": self.dialect.time_param(utcnow()), "limit": limit}
        return [self._job(row) for row in self._run("due_jobs", params, write=False)]

    def queue_depths(self) -> list[QueueDepth]:
        """Per queue with due jobs: how many are due now and the oldest one's run time."""
        t = self.dialect.time_value
        params = {"now": self.dialect.time_param(utcnow())}
        rows = self._run("queue_depths", params, write=False)
        return [QueueDepth(row[0], row[1], t(row[2])) for row in rows]

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
            "now": t(utcnow()),
        }
        self._run("upsert_schedule", params)

    def list_schedules(self) -> list[ScheduleState]:
        """Every schedule a scheduler has recorded, by name."""
        t = self.dialect.time_value
        states = []
        for row in self._run("list_schedules", {}, write=False):
            updated_at = t(row[5])
            assert updated_at is not None
            states.append(ScheduleState(row[0], row[1], row[2], t(row[3]), t(row[4]), updated_at))
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
        if not cp.id:
            [cp.id] = new_ids(1)
        params = {
            "id": cp.id,
            "job_id": cp.job_id,
            "call_index": cp.call_index,
            "call_type": cp.call_type,
            "result": None if cp.result is None else cp.result.decode(),
            "error": storable_text(cp.error),
            "now": self.dialect.time_param(cp.created_at),
            "scope": cp.scope,
            "worker": worker_id,
            "fence": _fence(fence, attempt),
        }
        # On a conflict the statement's no-op update keeps the stored row and returns its
        # id; a fenced-out write returns no row (DO NOTHING could not tell them apart).
        rows = self._run_grouped("save_checkpoint", params)
        if not rows:
            return False
        if rows[0][0] != cp.id:
            where = f"{cp.scope}.{cp.call_index}" if cp.scope else str(cp.call_index)
            raise CheckpointConflict(
                f"job {cp.job_id} already has a checkpoint for durable call {where}; it was"
                f" kept and this one ({cp.call_type!r}) was not saved"
            )
        return True

    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """A job's checkpoints, in call order."""
        rows = self._run("get_checkpoints", {"job_id": job_id}, write=False)
        return [self._checkpoint(row) for row in rows]

    def delete_checkpoints(self, job_id: str) -> None:
        """Remove all checkpoints of a job."""
        self._run("delete_checkpoints", {"job_id": job_id})


def _seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _fence(fence: int | None, attempt: int | None) -> int | None:
    """The fencing token of a write: ``fence``, or ``attempt``, its former name."""
    return fence if fence is not None else attempt


# Error messages (``last_error``, a failed step's checkpoint) are capped as arguments and
# results are: an exception's text can be any size, and it is read back with its row.
MAX_ERROR_TEXT = 64 * 1024  # characters


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


def utc(value: datetime) -> datetime:
    """``value`` as aware UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
