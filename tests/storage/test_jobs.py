"""Conformance of ``SQLStorage``: enqueueing jobs and reading them back, on every backend."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs import codec
from durable_jobs.job import Checkpoint, Job, JobStatus, utcnow
from durable_jobs.storage import SQLStorage
from durable_jobs.storage.sqlite import full_sync
from tests.conftest import ADMIN_URL, BACKENDS

from .helpers import W1, W2, claim_one, count, get, make_job, raises_storage_error

# -- enqueue and read back ----------------------------------------------------------------


def test_enqueue_round_trips_every_field(storage: SQLStorage) -> None:
    run_at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    args = '{"to":"u@example.com","n":[1,2.5,null],"s":"é☃"}'.encode()
    backoff = b'{"kind":"constant","seconds":5.0}'
    before = utcnow()
    job = make_job(
        "send-email",
        id="my-id",
        args=args,
        queue="emails",
        priority=-7,
        max_retries=9,
        run_at=run_at,
        backoff=backoff,
    )
    assert storage.enqueue(job) == "my-id"
    after = utcnow()
    stored = get(storage, "my-id")
    assert stored.id == "my-id"
    assert stored.type == "send-email"
    assert stored.args == args
    assert stored.queue == "emails"
    assert stored.priority == -7
    assert stored.max_retries == 9
    assert stored.run_at == run_at
    assert stored.run_at is not None and stored.run_at.utcoffset() == timedelta(0)
    assert stored.backoff == backoff
    assert stored.status is JobStatus.PENDING
    assert stored.attempt == 0
    assert stored.last_error is None
    assert stored.result is None
    assert stored.started_at is None and stored.completed_at is None
    assert stored.locked_by is None and stored.heartbeat_at is None
    for value in (stored.created_at, stored.updated_at):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert before <= value <= after


def test_enqueue_assigns_an_id_and_defaults(storage: SQLStorage) -> None:
    before = utcnow()
    job = make_job()
    job_id = storage.enqueue(job)
    assert job_id and job.id == job_id
    uuid.UUID(job_id)
    stored = get(storage, job_id)
    assert stored.args == b"null"
    assert stored.queue == "default" and stored.priority == 0 and stored.max_retries == 3
    assert stored.backoff is None
    # No run time means due now.
    assert stored.run_at is not None and before <= stored.run_at <= utcnow()
    assert storage.get_job("no-such-job") is None


def test_naive_datetimes_are_utc(storage: SQLStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    # A local time zone far from UTC exposes any conversion that assumes local time.
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        naive = datetime(2030, 1, 2, 3, 4, 5, 678)
        ids = storage.enqueue_many([make_job(run_at=naive), make_job(run_at=naive)])
        for job_id in ids:
            assert get(storage, job_id).run_at == naive.replace(tzinfo=UTC)
        claimed = storage.claim("default", W1, 10, now=naive.replace(tzinfo=UTC))
        assert sorted(j.id for j in claimed) == sorted(ids)
        storage.fail(ids[0], "boom", naive + timedelta(seconds=1))
        assert get(storage, ids[0]).run_at == naive.replace(tzinfo=UTC) + timedelta(seconds=1)
    finally:
        monkeypatch.undo()
        time.tzset()


# -- reads --------------------------------------------------------------------------------


def test_get_due_jobs(storage: SQLStorage, past: datetime) -> None:
    due = storage.enqueue(make_job(run_at=past))
    high = storage.enqueue(make_job(run_at=past + timedelta(seconds=1), priority=3))
    other_queue = storage.enqueue(make_job(queue="other", run_at=past + timedelta(seconds=2)))
    storage.enqueue(make_job(run_at=utcnow() + timedelta(hours=1)))  # not due
    due2 = storage.enqueue(make_job(run_at=past))
    running = storage.enqueue(make_job(run_at=past, priority=9))
    claim_one(storage)
    assert claim_one(storage).id == high
    storage.fail(high, "boom", past)  # retrying, due again
    assert storage.fail(due2, "x", None) is False  # not running: unchanged
    assert get(storage, running).status is JobStatus.RUNNING

    expected = [high, due, due2, other_queue]
    assert [j.id for j in storage.get_due_jobs(10)] == expected
    assert [j.id for j in storage.get_due_jobs(2)] == expected[:2]
    assert get(storage, high).status is JobStatus.RETRYING


def test_get_jobs_by_status(storage: SQLStorage) -> None:
    ids = storage.enqueue_many([make_job(id=f"j{9 - i}") for i in range(5)])
    later = storage.enqueue(make_job(id="a-later"))
    assert [j.id for j in storage.get_jobs_by_status("pending", 10)] == [*ids, later]
    assert [j.id for j in storage.get_jobs_by_status(JobStatus.PENDING, 3)] == ids[:3]
    claimed = storage.claim("default", W1, 2)
    running = storage.get_jobs_by_status(JobStatus.RUNNING, 10)
    assert sorted(j.id for j in running) == sorted(j.id for j in claimed)
    assert all(j.status is JobStatus.RUNNING for j in running)
    assert storage.get_jobs_by_status("completed", 10) == []
    with pytest.raises(ValueError):
        storage.get_jobs_by_status("no-such-status", 10)


def test_a_batch_keeps_each_rows_own_values_and_their_order(storage: SQLStorage) -> None:
    # A batch binds the values its rows share once (SQLite): the first chunk differs in
    # ids and args only; the rest differ in a field each, and one row in all of them.
    def varied(i: int) -> Job:
        if i < 260:
            return make_job("same", args=codec.dumps(i))
        fields: dict[str, Any] = {
            "priority": i % 3,
            "queue": f"q{i % 2}",
            "max_retries": i % 4,
            "backoff": b'{"kind":"constant","seconds":1.0}' if i % 2 else None,
            "meta": {"n": i} if i % 3 else {},
            "tags": [f"t{i}"] if i % 5 else [],
            "timeout": timedelta(seconds=i) if i % 2 else None,
            "parent_id": f"p{i % 2}" if i % 7 else None,
            "run_at": datetime(2031, 1, 1, tzinfo=UTC) + timedelta(seconds=i % 2),
        }
        return make_job(f"type{i % 2}", args=codec.dumps({"i": i}), **fields)

    def fields(j: Job, run_at: datetime | None) -> tuple[Any, ...]:
        kept = (j.type, j.args, j.priority, j.queue, j.max_retries, j.backoff, j.meta, j.tags)
        return (*kept, j.timeout, j.parent_id, run_at)

    made = [varied(i) for i in range(300)]
    expected = [fields(j, j.run_at) for j in made]  # before the insert stamps run_at
    ids = storage.enqueue_many(made)
    read = [get(storage, job_id) for job_id in ids]
    assert [fields(j, j.run_at if j.run_at.year == 2031 else None) for j in read] == expected
    # Inserted in the batch's order (the order of equal jobs' claims).
    same = [j.id for j in storage.get_jobs_by_status("pending", 300) if j.type == "same"]
    assert same == ids[:260]


# -- enqueue_many: atomicity --------------------------------------------------------------


# Integrity errors (a duplicate job id), by driver: a new backend adds its driver's.
INTEGRITY_ERRORS = (
    sa.exc.IntegrityError,
    sqlite3.IntegrityError,
    psycopg.IntegrityError,
    pymysql.IntegrityError,
)


def _integrity_errors() -> tuple[type[BaseException], ...]:
    return (sqlite3.IntegrityError, psycopg.errors.UniqueViolation, pymysql.IntegrityError)


@pytest.mark.parametrize("size", [2, 5])
def test_enqueue_many_is_all_or_nothing(storage: SQLStorage, size: int) -> None:
    storage.enqueue(make_job(id="dup"))
    batch = [make_job(id=f"new-{i}") for i in range(size)]
    batch[min(2, size - 1)] = make_job(id="dup")
    with raises_storage_error(_integrity_errors()):
        storage.enqueue_many(batch)
    assert count(storage) == 1
    # A duplicate inside the batch itself.
    with raises_storage_error(_integrity_errors()):
        storage.enqueue_many([make_job(id="x"), make_job(id="y"), make_job(id="x")])
    assert count(storage) == 1
    # The storage still works afterwards.
    assert storage.enqueue_many([make_job(id="x"), make_job(id="y")]) == ["x", "y"]
    assert count(storage) == 3


def test_enqueue_many_draws_a_lazy_iterable_all_or_nothing(storage: SQLStorage) -> None:
    # More jobs than one chunk of a streamed PostgreSQL COPY.
    def jobs(n: int, fail_at: int | None = None) -> Iterator[Job]:
        for i in range(n):
            if i == fail_at:
                raise ValueError("bad item")
            yield make_job(id=f"lazy-{i}")

    with pytest.raises(ValueError, match="bad item"):
        storage.enqueue_many(jobs(2500, fail_at=2100))
    assert count(storage) == 0
    ids = storage.enqueue_many(jobs(2500))
    assert ids == [f"lazy-{i}" for i in range(2500)]
    assert count(storage) == 2500
    assert storage.enqueue_many(iter([make_job(id="alone")])) == ["alone"]
    assert get(storage, "alone").status is JobStatus.PENDING


def test_enqueue_many_failing_late_in_a_big_batch_stores_nothing(storage: SQLStorage) -> None:
    storage.enqueue(make_job(id="dup"))
    batch = [make_job(id=f"big-{i}") for i in range(2000)]
    batch[1500] = make_job(id="dup")  # fails the statement of a late chunk
    with raises_storage_error(_integrity_errors()):
        storage.enqueue_many(iter(batch))
    assert count(storage) == 1
    batch[1500] = make_job(id="big-1500")
    assert len(storage.enqueue_many(batch)) == 2000
    assert count(storage) == 2001


def test_enqueue_many_of_nothing(storage: SQLStorage) -> None:
    assert storage.enqueue_many([]) == []
    assert count(storage) == 0


# -- enqueue on the caller's connection ---------------------------------------------------


def test_enqueue_joins_the_callers_transaction(storage: SQLStorage) -> None:
    with storage.engine.begin() as conn:
        committed = storage.enqueue(make_job(), connection=conn)
        many = storage.enqueue_many([make_job(), make_job()], connection=conn)
        # Not visible to anyone else before the caller commits.
        assert storage.get_job(committed) is None
    for job_id in (committed, *many):
        assert get(storage, job_id).status is JobStatus.PENDING

    class Abort(Exception):
        pass

    with pytest.raises(Abort), storage.engine.begin() as conn:
        rolled_back = storage.enqueue(make_job(), connection=conn)
        storage.enqueue_many([make_job(id="r1"), make_job(id="r2")], connection=conn)
        raise Abort
    assert storage.get_job(rolled_back) is None
    assert storage.get_job("r1") is None
    assert count(storage) == 3
    # Plain storage calls still commit on their own after that.
    assert get(storage, storage.enqueue(make_job())).type == "t"


def test_engine_connections_are_transactional(storage: SQLStorage) -> None:
    # storage.engine behaves like any SQLAlchemy engine: uncommitted work is rolled back.
    with storage.engine.connect() as conn:
        storage.enqueue(make_job(id="uncommitted"), connection=conn)
    assert storage.get_job("uncommitted") is None
    with storage.engine.connect() as conn:
        storage.enqueue(make_job(id="committed"), connection=conn)
        conn.commit()
    assert storage.get_job("committed") is not None


def test_storage_on_an_existing_engine(db_url: str) -> None:
    engine = sa.create_engine(db_url)
    try:
        storage = SQLStorage(engine)
        assert isinstance(storage, jobs.Storage)
        storage.migrate()  # already migrated: a no-op
        with engine.begin() as conn:
            kept = storage.enqueue(make_job(), connection=conn)
        with pytest.raises(ZeroDivisionError), engine.begin() as conn:
            dropped = storage.enqueue(make_job(), connection=conn)
            1 / 0  # noqa: B018
        assert storage.get_job(dropped) is None
        assert claim_one(storage).id == kept
        assert storage.complete(kept, b"1", worker_id=W1, attempt=1)
        storage.close()  # leaves the caller's engine alone
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM sdj_jobs")).scalar_one() == 1
    finally:
        engine.dispose()


# Backend-specific in its setup only: it needs a database of another kind than the one under
# test (SQLite for any server backend, the PostgreSQL server for SQLite).
def test_enqueue_rejects_a_connection_to_another_kind_of_database(
    storage: SQLStorage, tmp_path: Path
) -> None:
    other = ADMIN_URL
    if storage.dialect.name != "sqlite":
        other = f"sqlite:///{tmp_path / 'other.db'}"
    engine = sa.create_engine(other)
    try:
        with engine.connect() as conn, pytest.raises(ValueError):
            storage.enqueue(make_job(), connection=conn)
    finally:
        engine.dispose()
    assert count(storage) == 0


# -- hostile input ------------------------------------------------------------------------


HOSTILE = [
    "'; DROP TABLE sdj_jobs; --",
    "\"); DELETE FROM sdj_jobs; --'",
    "Robert'); DROP TABLE sdj_checkpoints;--",
    "%(id)s :id ? $1 %s {0}",
    "ünïcødé ☃ 𝄞 \u200b\u202e\u0301 emoji 🧨 \U0010fffd 中文",
    "\\ \t\n\r \x01 \x7f",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_strings_round_trip_unchanged(storage: SQLStorage, text: str) -> None:
    args = codec.dumps({"k": text, text: [text]})
    job_id = storage.enqueue(make_job(text, queue=text, args=args, id=f"id-{text}"))
    job = get(storage, job_id)
    assert (job.id, job.type, job.queue, job.args) == (f"id-{text}", text, text, args)
    assert codec.loads(job.args) == {"k": text, text: [text]}

    [claimed] = storage.claim(text, text, 1, skip_types=[text + "x", "'"])
    assert claimed.id == job_id and claimed.locked_by == text
    storage.save_checkpoint(Checkpoint(job_id=job_id, call_index=0, call_type=text, error=text))
    [cp] = storage.get_checkpoints(job_id)
    assert (cp.call_type, cp.error) == (text, text)
    assert storage.fail(job_id, text, utcnow(), worker_id=text, attempt=1)
    assert get(storage, job_id).last_error == text
    assert [j.id for j in storage.claim(text, text, 1)] == [job_id]
    assert storage.complete(job_id, codec.dumps(text), worker_id=text, attempt=2)
    done = get(storage, job_id)
    assert done.status is JobStatus.COMPLETED and codec.loads(done.result) == text
    assert get(storage, job_id).type == text
    assert storage.get_jobs_by_status(JobStatus.COMPLETED, 10)[0].id == job_id
    assert count(storage) == 1 and count(storage, "sdj_checkpoints") == 0


# -- writes: group commits, durability and connections ------------------------------------


def test_concurrent_writes_each_commit_and_fail_alone(storage: SQLStorage) -> None:
    # On SQLite these share commits (a group commit); on either backend each caller
    # gets its own answer, and a failing write takes no other write down with it.
    job_id = storage.enqueue(make_job())
    [job] = storage.claim("default", W1, 1)
    existing = storage.enqueue(make_job())
    results: dict[int, Any] = {}
    gate = threading.Barrier(24)

    def write(n: int) -> None:
        gate.wait()
        try:
            if n % 6 == 5:  # an id that exists: this insert alone must fail
                results[n] = storage.enqueue(make_job(id=existing))
            elif n % 6 == 4:  # another run's fence: rejected
                cp = Checkpoint(job_id=job_id, call_index=n, call_type="s", result=b"1")
                results[n] = storage.save_checkpoint(cp, worker_id=W2, attempt=1)
            else:
                cp = Checkpoint(job_id=job_id, call_index=n, call_type="s", result=b"1")
                results[n] = storage.save_checkpoint(cp, worker_id=W1, attempt=job.attempt)
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=write, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for n in range(24):
        if n % 6 == 5:
            assert isinstance(results[n], jobs.StorageError), results[n]
            assert isinstance(results[n].__cause__, INTEGRITY_ERRORS), results[n]
        else:
            assert results[n] is (n % 6 != 4), (n, results[n])
    saved = {c.call_index for c in storage.get_checkpoints(job_id)}
    assert saved == {n for n in range(24) if n % 6 < 4}


def _sqlite_settings(storage: SQLStorage) -> tuple[int, str]:
    with storage.engine.connect() as conn:
        synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    return synchronous, journal


# Backend-specific: SQLite's synchronous pragma; runs once, on a SQLite file it names itself.
def test_sqlite_commits_wait_for_the_disk_unless_the_callers_engine_says_otherwise(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    own = SQLStorage(url)
    try:
        assert _sqlite_settings(own) == (2, "wal")  # FULL
        # Set on every connection, whatever default this SQLite was built with.
        assert sa.event.contains(own.engine, "connect", full_sync)
        relaxed_by_build = sqlite3.connect(tmp_path / "durable.db")
        relaxed_by_build.execute("PRAGMA synchronous=OFF")
        full_sync(relaxed_by_build, None)
        assert relaxed_by_build.execute("PRAGMA synchronous").fetchone() == (2,)
        relaxed_by_build.close()
    finally:
        own.close()
    engine = sa.create_engine(url)

    @sa.event.listens_for(engine, "connect")
    def relaxed(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    theirs = SQLStorage(engine)
    try:
        assert _sqlite_settings(theirs) == (1, "wal")  # the caller's choice stands
        assert not sa.event.contains(engine, "connect", full_sync)
    finally:
        theirs.close()
        engine.dispose()


# Backend-specific: SQLite only (a capped database file rolls back a whole group commit).
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "sqlite"])
def test_a_group_commit_rolled_back_by_a_full_disk_fails_every_write_it_held(
    db_url: str,
) -> None:
    # A full disk (or an I/O error) makes SQLite roll back the whole transaction, not just
    # the failing statement. The group commit used to report the writes before it as
    # committed (an id of a job that does not exist, a call() with no checkpoint) and run
    # the ones after it alone in autocommit.
    limit: dict[str, int] = {}

    def cap_the_file(dbapi_conn: Any, _record: Any) -> None:
        if limit:  # a connection of the storage: the file may not grow past the cap
            dbapi_conn.execute(f"PRAGMA max_page_count = {limit['pages']}")

    storage = SQLStorage(db_url)
    sa.event.listen(storage.engine, "connect", cap_the_file)
    try:
        job_id = storage.enqueue(make_job())
        job = claim_one(storage)
        storage._drop_idle()
        storage.engine.dispose()  # every connection from now on is capped
        path = storage.engine.url.database
        assert path is not None
        with sqlite3.connect(path) as probe:
            [pages] = probe.execute("PRAGMA page_count").fetchone()
        limit["pages"] = pages + 12  # room for some of the writes below, not all
        big = "x" * 3000  # about a page per row
        writers = 32
        ids = [str(uuid.uuid4()) for _ in range(writers)]
        results: dict[int, Any] = {}

        def write(n: int) -> None:
            try:
                if n % 2:
                    results[n] = storage.enqueue(make_job(id=ids[n], args=codec.dumps(big)))
                else:
                    result = codec.dumps(big)
                    cp = Checkpoint(job_id=job_id, call_index=n, call_type="s", result=result)
                    results[n] = storage.save_checkpoint(cp, worker_id=W1, attempt=job.attempt)
            except Exception as exc:
                results[n] = exc

        group = storage._group
        assert group is not None
        threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
        with storage._write_lock:  # the writes queue up behind one leader: one batch
            threads[0].start()
            deadline = time.monotonic() + 10
            while not (group._leading and not group._waiting):
                assert time.monotonic() < deadline
                time.sleep(0.001)
            for t in threads[1:]:
                t.start()
            while len(group._waiting) < writers - 1:
                assert time.monotonic() < deadline
                time.sleep(0.001)
        for t in threads:
            t.join(30)
        assert len(results) == writers
        failed = [n for n, r in results.items() if isinstance(r, Exception)]
        assert failed, "the database never filled up"
        for n in failed:
            assert "full" in str(results[n]), results[n]
        saved = {c.call_index for c in storage.get_checkpoints(job_id)}
        for n, r in sorted(results.items()):
            if n % 2:
                stored = storage.get_job(ids[n]) is not None
                assert stored == (r == ids[n]), (n, r, stored)
            else:
                assert (n in saved) == (r is True), (n, r, n in saved)
    finally:
        storage.close()


# Backend-specific: PostgreSQL only (pg_terminate_backend, psycopg's OperationalError).
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_a_dead_connection_discards_the_idle_ones_with_it(storage: SQLStorage) -> None:
    # After a server restart every idle connection is dead. The first statement to meet
    # one fails; the storage must then discard the others, so that a retry gets a live
    # connection instead of the next dead one.
    job_id = storage.enqueue(make_job())
    kept = [storage._checkout() for _ in range(4)]
    for raw in kept:
        storage._checkin(raw)
    assert len(storage._idle) == 4
    killer = sa.create_engine(storage.engine.url, poolclass=sa.pool.NullPool)
    with killer.connect() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    killer.dispose()
    with raises_storage_error(psycopg.OperationalError) as caught:
        storage.get_job(job_id)
    assert caught.value.transient
    assert get(storage, job_id).id == job_id


# Backend-specific: no database; it classifies the sqlite3 and psycopg errors a new driver
# would add its own to.
def test_is_transient_tells_passing_storage_errors_from_permanent_ones() -> None:
    from durable_jobs.storage import is_transient

    def sqlite_error(kind: type[sqlite3.Error], message: str, code: int) -> sqlite3.Error:
        error = kind(message)
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
        return error

    transient = [
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.InterfaceError("the connection is lost"),
        sqlite3.OperationalError("database is locked"),
        sqlite_error(sqlite3.OperationalError, "disk I/O error", 522),  # IOERR_SHORT_READ
        sqlite_error(sqlite3.OperationalError, "database or disk is full", 13),
        sa.exc.OperationalError("SELECT", {}, Exception("connection refused")),
        sa.exc.OperationalError("SELECT", {}, psycopg.OperationalError("connection refused")),
        sa.exc.TimeoutError("QueuePool limit reached"),
    ]
    permanent = [
        psycopg.errors.DataError("invalid input syntax"),
        psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum"),
        psycopg.IntegrityError("duplicate key"),
        sqlite3.IntegrityError("UNIQUE constraint failed"),
        sqlite3.DataError("string or blob too big"),
        sqlite_error(sqlite3.OperationalError, "no such table: sdj_jobs", 1),
        sa.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE")),
        ValueError("a bug"),
    ]
    assert [e for e in transient if not is_transient(e)] == []
    assert [e for e in permanent if is_transient(e)] == []
