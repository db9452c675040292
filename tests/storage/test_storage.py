"""Conformance of ``SQLStorage``: every test runs on SQLite (a file) and on PostgreSQL."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs import codec
from durable_jobs.errors import CheckpointConflict
from durable_jobs.job import Checkpoint, Job, JobStatus, utcnow
from durable_jobs.storage import Claim, Outcome, SQLStorage
from durable_jobs.storage import sql as sql_storage
from tests.conftest import ADMIN_URL, BACKENDS
from tests.helpers import fresh_database

W1, W2 = "worker-1", "worker-2"
INTEGRITY_ERRORS = (sa.exc.IntegrityError, sqlite3.IntegrityError, psycopg.IntegrityError)


def make_job(type_: str = "t", **fields: Any) -> Job:
    return Job(type=type_, **fields)


def sql(storage: SQLStorage, text: str, **params: Any) -> list[Any]:
    """Run one statement in its own committed transaction; rows if it returns any."""
    with storage.engine.begin() as conn:
        result = conn.execute(sa.text(text), params)
        return list(result.fetchall()) if result.returns_rows else []


def count(storage: SQLStorage, table: str = "sdj_jobs") -> int:
    return int(sql(storage, f"SELECT count(*) FROM {table}")[0][0])


def get(storage: SQLStorage, job_id: str) -> Job:
    job = storage.get_job(job_id)
    assert job is not None, f"job {job_id} is missing"
    return job


def claim_one(storage: SQLStorage, worker: str = W1, **kwargs: Any) -> Job:
    claimed = storage.claim("default", worker, 1, **kwargs)
    assert len(claimed) == 1, claimed
    return claimed[0]


def set_heartbeat(storage: SQLStorage, job_id: str, when: datetime) -> None:
    sql(
        storage,
        "UPDATE sdj_jobs SET heartbeat_at = :t WHERE id = :id",
        t=storage.dialect.time_param(when),
        id=job_id,
    )


@pytest.fixture
def past() -> datetime:
    """A moment safely before any job enqueued by the test (a due run time)."""
    return utcnow() - timedelta(hours=1)


# -- schema -------------------------------------------------------------------------------


def test_migrate_is_idempotent(storage: SQLStorage) -> None:
    latest = len(storage.dialect.migrations)
    storage.migrate()
    storage.migrate()
    assert storage.schema_version() == latest
    rows = sql(storage, "SELECT version FROM sdj_schema_version ORDER BY version")
    assert [r[0] for r in rows] == list(range(1, latest + 1))
    # Migrating again leaves data alone.
    job_id = storage.enqueue(make_job())
    storage.migrate()
    assert get(storage, job_id).status == JobStatus.PENDING


@pytest.fixture
def fresh_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database that nobody has migrated."""
    with fresh_database(backend, tmp_path) as url:
        yield url


_MIGRATE_IN_PROCESS = """
import sys
import durable_jobs as jobs
storage = jobs.SQLStorage(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
storage.migrate()
storage.close()
"""


def test_migrate_concurrently_from_threads_and_processes(fresh_url: str) -> None:
    n_threads, n_procs = 4, 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_IN_PROCESS, fresh_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n_procs)
    ]
    storages = [SQLStorage(fresh_url) for _ in range(n_threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads + 1)

    def migrate(storage: SQLStorage) -> None:
        barrier.wait()
        try:
            storage.migrate()
        except BaseException as exc:
            errors.append(exc)

    try:
        for p in procs:  # every process has imported the library and waits for the signal
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        threads = [threading.Thread(target=migrate, args=(s,)) for s in storages]
        for t in threads:
            t.start()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        barrier.wait()
        for t in threads:
            t.join(60)
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert errors == []
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    storage = storages[0]
    latest = len(storage.dialect.migrations)
    rows = sql(storage, "SELECT version, count(*) FROM sdj_schema_version GROUP BY version")
    assert sorted((r[0], r[1]) for r in rows) == [(v, 1) for v in range(1, latest + 1)]
    assert storage.schema_version() == latest
    job_id = storage.enqueue(make_job())  # the schema works
    assert get(storage, job_id).type == "t"
    for s in storages:
        s.close()


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


# -- claiming -----------------------------------------------------------------------------


def test_claim_order_priority_then_run_at_then_enqueue_order(
    storage: SQLStorage, past: datetime
) -> None:
    s = timedelta(seconds=1)
    storage.enqueue(make_job(id="a", priority=0, run_at=past + 2 * s))
    storage.enqueue(make_job(id="b", priority=5, run_at=past + 3 * s))
    storage.enqueue(make_job(id="c", priority=5, run_at=past + s))
    # Ids sort against enqueue order, so ordering by id would show.
    batch = [f"z{i}" for i in range(9, 4, -1)]
    storage.enqueue_many([make_job(id=i, priority=0, run_at=past + s) for i in batch])
    storage.enqueue(make_job(id="i", priority=-1, run_at=past))
    storage.enqueue(make_job(id="y0", priority=0, run_at=past + s))
    expected = ["c", "b", *batch, "y0", "a", "i"]

    assert [j.id for j in storage.get_due_jobs(100)] == expected
    first = storage.claim("default", W1, 3)
    assert [j.id for j in first] == expected[:3]
    rest = storage.claim("default", W1, 100)
    assert [j.id for j in rest] == expected[3:]
    assert storage.claim("default", W1, 100) == []


def test_claim_one_at_a_time_follows_the_same_order(storage: SQLStorage, past: datetime) -> None:
    ids = storage.enqueue_many([make_job(id=f"j{9 - i}", run_at=past) for i in range(6)])
    storage.enqueue(make_job(id="urgent", priority=1))
    order = [claim_one(storage).id for _ in range(7)]
    assert order == ["urgent", *ids]


def test_claim_respects_limit_and_sets_running_state(storage: SQLStorage, past: datetime) -> None:
    storage.enqueue_many([make_job(run_at=past) for _ in range(5)])
    now = utcnow()
    claimed = storage.claim("default", W1, 2, now=now)
    assert len(claimed) == 2
    for job in claimed:
        assert job.status is JobStatus.RUNNING
        assert job.attempt == 1
        assert job.locked_by == W1
        assert job.started_at == now and job.heartbeat_at == now
        stored = get(storage, job.id)
        assert stored.status is JobStatus.RUNNING and stored.attempt == 1
        assert stored.locked_by == W1
        assert stored.started_at == now and stored.heartbeat_at == now
    assert len(storage.get_jobs_by_status("pending", 10)) == 3
    assert storage.claim("default", W1, 0) == []


def test_delayed_job_is_claimed_only_when_due(storage: SQLStorage) -> None:
    now = utcnow()
    due_at = now + timedelta(hours=1)
    job_id = storage.enqueue(make_job(run_at=due_at))
    assert storage.claim("default", W1, 10) == []
    assert storage.claim("default", W1, 10, now=due_at - timedelta(microseconds=1)) == []
    assert storage.get_due_jobs(10) == []
    assert storage.dequeue(["default"], W1) is None
    [job] = storage.claim("default", W1, 10, now=due_at)
    assert job.id == job_id and job.started_at == due_at


def test_named_queues_are_isolated(storage: SQLStorage, past: datetime) -> None:
    a = storage.enqueue(make_job(queue="a", run_at=past))
    b = storage.enqueue(make_job(queue="b", run_at=past, priority=100))
    assert [j.id for j in storage.claim("a", W1, 10)] == [a]
    assert storage.claim("a", W1, 10) == []
    assert storage.claim("c", W1, 10) == []
    assert get(storage, b).status is JobStatus.PENDING
    assert [j.id for j in storage.claim("b", W1, 10)] == [b]


def test_dequeue_takes_the_first_queue_that_has_a_job(storage: SQLStorage, past: datetime) -> None:
    low = storage.enqueue(make_job(queue="low", run_at=past, priority=100))
    high = storage.enqueue(make_job(queue="high", run_at=past))
    first = storage.dequeue(["empty", "high", "low"], W1)
    assert first is not None and first.id == high and first.locked_by == W1
    second = storage.dequeue(["empty", "high", "low"], W1)
    assert second is not None and second.id == low
    assert storage.dequeue(["empty", "high", "low"], W1) is None


def test_claim_skips_types(storage: SQLStorage, past: datetime) -> None:
    x = storage.enqueue(make_job("x", run_at=past, priority=10))
    y = storage.enqueue(make_job("y", run_at=past))
    assert storage.claim("default", W1, 10, skip_types=["x", "z"]) != []
    assert get(storage, y).status is JobStatus.RUNNING
    assert get(storage, x).status is JobStatus.PENDING
    assert storage.claim("default", W1, 10, skip_types=["x"]) == []
    assert [j.id for j in storage.claim("default", W2, 10, skip_types=["y"])] == [x]


def test_concurrent_claimers_never_share_a_job(db_url: str) -> None:
    # Enough jobs that the claimers overlap: on SQLite a claimer that finds the write
    # lock taken sleeps in SQLite's busy handler (1, 2, 5, 10 ms ...) while the holder
    # claims on, and a claim takes a fraction of a millisecond.
    n_jobs, n_threads = 3000, 8
    storages = [SQLStorage(db_url) for _ in range(n_threads)]
    storages[0].enqueue_many([make_job() for _ in range(n_jobs)])
    claimed: list[list[str]] = [[] for _ in range(n_threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def claimer(index: int) -> None:
        rng = random.Random(index)
        storage = storages[index]
        worker = f"w{index}"
        try:
            barrier.wait()
            while True:
                batch = storage.claim("default", worker, rng.randint(1, 8))
                if not batch:
                    return
                assert all(j.locked_by == worker and j.attempt == 1 for j in batch)
                claimed[index].extend(j.id for j in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        every = [job_id for ids in claimed for job_id in ids]
        assert len(every) == len(set(every)) == n_jobs
        assert sum(1 for ids in claimed if ids) > 1  # the claimers did run side by side
        running = storages[0].get_jobs_by_status(JobStatus.RUNNING, n_jobs + 1)
        assert len(running) == n_jobs
        owner = {job_id: f"w{i}" for i, ids in enumerate(claimed) for job_id in ids}
        assert all(j.locked_by == owner[j.id] and j.attempt == 1 for j in running)
    finally:
        for s in storages:
            s.close()


# -- outcomes -----------------------------------------------------------------------------


def test_complete_is_fenced_by_worker_and_attempt(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    job = claim_one(storage)
    storage.save_checkpoint(Checkpoint(job_id=job_id, call_index=0, call_type="step"))
    before = get(storage, job_id)

    assert storage.complete(job_id, b"1", worker_id=W2, attempt=1) is False
    assert storage.complete(job_id, b"1", worker_id=W1, attempt=2) is False
    assert storage.complete(job_id, b"1", worker_id=W1, attempt=0) is False
    assert get(storage, job_id) == before
    assert len(storage.get_checkpoints(job_id)) == 1

    assert storage.complete(job_id, b'{"ok":true}', worker_id=W1, attempt=job.attempt) is True
    done = get(storage, job_id)
    assert done.status is JobStatus.COMPLETED
    assert done.result == b'{"ok":true}'
    assert done.completed_at is not None and done.completed_at >= before.updated_at
    assert done.locked_by == W1 and done.heartbeat_at is None  # who stored the outcome
    assert done.attempt == 1
    assert storage.get_checkpoints(job_id) == []
    # A second completion is rejected and changes nothing.
    assert storage.complete(job_id, b"2", worker_id=W1, attempt=1) is False
    assert storage.complete(job_id, b"2") is False
    assert get(storage, job_id) == done


def test_complete_rejects_a_stale_attempt(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    claim_one(storage)
    assert storage.fail(job_id, "boom", utcnow() - timedelta(seconds=1), worker_id=W1, attempt=1)
    second = claim_one(storage)
    assert second.attempt == 2 and second.locked_by == W1
    assert storage.complete(job_id, b"1", worker_id=W1, attempt=1) is False
    assert get(storage, job_id).status is JobStatus.RUNNING
    assert storage.complete(job_id, b"1", worker_id=W1, attempt=2) is True


def test_unfenced_complete(storage: SQLStorage) -> None:
    pending = storage.enqueue(make_job(priority=-1))
    running = storage.enqueue(make_job())
    claim_one(storage)
    assert storage.complete(pending) is False
    assert get(storage, pending).status is JobStatus.PENDING
    assert storage.complete(running) is True
    done = get(storage, running)
    assert done.status is JobStatus.COMPLETED and done.result is None
    assert storage.complete("no-such-job") is False


def test_complete_many_accepts_only_fenced_valid_runs(storage: SQLStorage) -> None:
    ids = storage.enqueue_many([make_job() for _ in range(4)])
    mine = storage.claim("default", W1, 3)
    theirs = claim_one(storage, W2)
    for job_id in ids:
        storage.save_checkpoint(Checkpoint(job_id=job_id, call_index=0, call_type="s"))
    a, b, c = mine
    outcomes = [
        Outcome(a.id, a.attempt, b'"a"'),
        Outcome(b.id, b.attempt + 1, b'"b"'),  # stale attempt
        Outcome(c.id, c.attempt, None),
        Outcome(theirs.id, theirs.attempt, b'"d"'),  # another worker's run
        Outcome("no-such-job", 1, b'"e"'),
    ]
    assert storage.complete_many(W1, outcomes) == {a.id, c.id}
    assert storage.complete_many(W1, []) == set()
    assert get(storage, a.id).status is JobStatus.COMPLETED
    assert get(storage, a.id).result == b'"a"'
    assert get(storage, c.id).status is JobStatus.COMPLETED
    assert get(storage, c.id).result is None
    for job_id in (a.id, c.id):
        assert storage.get_checkpoints(job_id) == []
    for job_id in (b.id, theirs.id):
        assert get(storage, job_id).status is JobStatus.RUNNING
        assert get(storage, job_id).result is None
        assert len(storage.get_checkpoints(job_id)) == 1
    # Completing again is rejected.
    assert storage.complete_many(W1, outcomes[:1]) == set()


def test_complete_and_claim_is_one_transaction_of_both(storage: SQLStorage) -> None:
    first = storage.enqueue_many([make_job() for _ in range(2)])
    later = storage.enqueue_many([make_job(queue="other") for _ in range(3)])
    a, b = storage.claim("default", W1, 2)
    outcomes = [Outcome(a.id, a.attempt, b'"a"'), Outcome(b.id, b.attempt + 1, None)]
    accepted, claimed = storage.complete_and_claim(
        W1, outcomes, [Claim("other", 2), Claim("default", 5)]
    )
    assert accepted == {a.id}  # b's attempt is stale: fenced out
    assert [job.id for job in claimed[0]] == later[:2] and claimed[1] == []
    assert all(job.locked_by == W1 and job.attempt == 1 for job in claimed[0])
    assert get(storage, a.id).status is JobStatus.COMPLETED
    assert get(storage, b.id).status is JobStatus.RUNNING
    assert set(first) == {a.id, b.id}
    # Nothing to complete: still claims.
    accepted, claimed = storage.complete_and_claim(W1, [], [Claim("other", 5)])
    assert accepted == set() and [job.id for job in claimed[0]] == later[2:]


def test_claims_ahead_leave_out_jobs_allowed_a_single_run(storage: SQLStorage) -> None:
    once = storage.enqueue(make_job(max_retries=0, priority=5))
    twice = storage.enqueue(make_job(max_retries=1))
    assert [j.id for j in storage.claim("default", W1, 5, min_retries=1)] == [twice]
    assert [j.id for j in storage.claim("default", W1, 5)] == [once]


def test_fail_with_run_at_waits_as_retrying(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    claim_one(storage)
    retry_at = utcnow() + timedelta(minutes=5)
    assert storage.fail(job_id, "ValueError: boom", retry_at, worker_id=W2, attempt=1) is False
    assert storage.fail(job_id, "ValueError: boom", retry_at, worker_id=W1, attempt=2) is False
    assert get(storage, job_id).status is JobStatus.RUNNING
    assert get(storage, job_id).last_error is None

    assert storage.fail(job_id, "ValueError: boom", retry_at, worker_id=W1, attempt=1) is True
    job = get(storage, job_id)
    assert job.status is JobStatus.RETRYING
    assert job.run_at == retry_at
    assert job.last_error == "ValueError: boom"
    assert job.completed_at is None
    assert job.locked_by == W1 and job.heartbeat_at is None
    assert job.attempt == 1
    # Not running any more: a second outcome is rejected.
    assert storage.fail(job_id, "again", None) is False
    assert storage.complete(job_id) is False
    # It comes back when due, as the next attempt.
    assert storage.claim("default", W1, 10) == []
    [again] = storage.claim("default", W1, 10, now=retry_at)
    assert again.id == job_id and again.attempt == 2 and again.status is JobStatus.RUNNING


def test_fail_without_run_at_fails_permanently(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    claim_one(storage)
    before = utcnow()
    assert storage.fail(job_id, "NoRetry: bad input", None, worker_id=W1, attempt=1) is True
    job = get(storage, job_id)
    assert job.status is JobStatus.FAILED
    assert job.last_error == "NoRetry: bad input"
    assert job.completed_at is not None and before <= job.completed_at <= utcnow()
    assert job.locked_by == W1
    assert storage.claim("default", W1, 10, now=utcnow() + timedelta(days=365)) == []
    assert storage.fail(job_id, "again", None) is False
    assert storage.fail("no-such-job", "x", None) is False


def test_unfenced_fail(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    assert storage.fail(job_id, "not running", None) is False
    claim_one(storage)
    assert storage.fail(job_id, "boom", None) is True
    assert get(storage, job_id).status is JobStatus.FAILED


def test_release_gives_back_a_run_without_counting_it(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    claim_one(storage)
    storage.release(W1, [(job_id, 1)])
    job = get(storage, job_id)
    assert job.status is JobStatus.PENDING and job.attempt == 0
    assert job.locked_by is None and job.heartbeat_at is None

    second = claim_one(storage)
    assert second.attempt == 1 and second.fence == 2  # the released run's fence is spent
    storage.fail(job_id, "boom", utcnow() - timedelta(seconds=1), worker_id=W1, fence=2)
    third = claim_one(storage)
    assert third.attempt == 2 and third.fence == 3
    storage.release(W1, [(job_id, 3)])
    job = get(storage, job_id)
    assert job.status is JobStatus.RETRYING and job.attempt == 1 and job.fence == 3
    assert job.last_error == "boom"
    assert claim_one(storage).attempt == 2


def test_release_only_touches_the_owners_run(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    other = storage.enqueue(make_job())
    claim_one(storage, W1)
    claim_one(storage, W2)
    storage.release(W2, [(job_id, 1)])  # not W2's job
    storage.release(W1, [(job_id, 2)])  # not this run
    storage.release(W1, [])
    job = get(storage, job_id)
    assert job.status is JobStatus.RUNNING and job.attempt == 1 and job.locked_by == W1
    storage.release(W1, [(job_id, 1), (other, 1)])
    assert get(storage, job_id).status is JobStatus.PENDING
    assert get(storage, other).status is JobStatus.RUNNING


def test_settled_names_the_runs_whose_outcome_a_worker_stored(
    storage: SQLStorage, past: datetime
) -> None:
    done, waiting, given_up, running, reaped, given_back = storage.enqueue_many(
        [make_job(run_at=past, max_retries=3) for _ in range(6)]
    )
    stale = utcnow() - timedelta(seconds=60)
    storage.claim("default", W1, 6, now=stale)
    assert storage.complete(done, None, worker_id=W1, attempt=1)
    assert storage.fail(waiting, "E: x", utcnow() + timedelta(hours=1), worker_id=W1, attempt=1)
    assert storage.fail(given_up, "NoRetry: x", None, worker_id=W1, attempt=1)
    storage.heartbeat_worker(
        W1, host="h", pid=1, queues=["default"], types=["t"], jobs=[running, given_back]
    )
    assert storage.release_stale_locks(30) == 1  # takes back `reaped`
    storage.release(W1, [(given_back, 1)])
    runs = [(job_id, 1) for job_id in (done, waiting, given_up, running, reaped, given_back)]

    assert storage.settled(W1, runs) == {
        done: JobStatus.COMPLETED,
        waiting: JobStatus.RETRYING,
        given_up: JobStatus.FAILED,
    }
    assert storage.settled(W2, runs) == {}
    assert storage.settled(W1, [(done, 2)]) == {}  # another run of the same job
    assert storage.settled(W1, []) == {}


# -- heartbeats, stale locks and workers --------------------------------------------------


def test_heartbeat_keeps_a_job_from_being_reaped(storage: SQLStorage, past: datetime) -> None:
    kept = storage.enqueue(make_job(priority=1, run_at=past))
    lost = storage.enqueue(make_job(run_at=past))
    stale = utcnow() - timedelta(seconds=60)
    storage.claim("default", W1, 2, now=stale)
    storage.heartbeat(kept, W1)
    storage.heartbeat(lost, W2)  # not W2's job: no effect
    assert get(storage, kept).heartbeat_at > stale  # type: ignore[operator]
    assert get(storage, lost).heartbeat_at == stale

    assert storage.release_stale_locks(30) == 1
    assert get(storage, kept).status is JobStatus.RUNNING
    reaped = get(storage, lost)
    assert reaped.status is JobStatus.RETRYING
    assert reaped.attempt == 1  # the lost run counts
    assert reaped.locked_by is None and reaped.heartbeat_at is None
    assert reaped.completed_at is None
    assert reaped.last_error is not None and W1 in reaped.last_error
    assert "WorkerLost" in reaped.last_error
    assert reaped.run_at is not None and reaped.run_at > utcnow()  # it waits its backoff
    # Nothing else is stale now.
    assert storage.release_stale_locks(timedelta(seconds=30)) == 0
    assert claim_one(storage, now=reaped.run_at).attempt == 2


def test_heartbeat_worker_extends_all_its_jobs(storage: SQLStorage, past: datetime) -> None:
    ids = storage.enqueue_many([make_job(run_at=past) for _ in range(3)])
    stale = utcnow() - timedelta(seconds=60)
    storage.claim("default", W1, 2, now=stale)
    [theirs] = storage.claim("default", W2, 1, now=stale)
    storage.heartbeat_worker(W1, host="h", pid=1, queues=["default"], types=["t"])
    assert storage.release_stale_locks(30) == 1
    assert get(storage, theirs.id).status is JobStatus.RETRYING
    assert W2 in (get(storage, theirs.id).last_error or "")
    for job_id in ids:
        if job_id != theirs.id:
            assert get(storage, job_id).status is JobStatus.RUNNING


def test_stale_lock_fails_a_job_whose_retries_are_spent(
    storage: SQLStorage, past: datetime
) -> None:
    last_try = storage.enqueue(make_job(max_retries=0, run_at=past))
    retried = storage.enqueue(make_job(max_retries=1, run_at=past))
    pending = storage.enqueue(make_job(run_at=past - timedelta(days=1), priority=-1))
    stale = utcnow() - timedelta(seconds=60)
    storage.claim("default", W1, 2, now=stale)
    # The second run of `retried` is lost too.
    assert storage.release_stale_locks(30) == 2
    failed = get(storage, last_try)
    assert failed.status is JobStatus.FAILED
    assert failed.completed_at is not None
    assert failed.last_error is not None and W1 in failed.last_error
    assert get(storage, retried).status is JobStatus.RETRYING
    assert claim_one(storage, W2, now=get(storage, retried).run_at).id == retried
    set_heartbeat(storage, retried, stale)
    assert storage.release_stale_locks(30) == 1
    assert get(storage, retried).status is JobStatus.FAILED
    assert get(storage, retried).attempt == 2
    assert get(storage, pending).status is JobStatus.PENDING


def test_release_stale_locks_ignores_fresh_and_finished_jobs(storage: SQLStorage) -> None:
    ids = storage.enqueue_many([make_job() for _ in range(3)])
    storage.claim("default", W1, 3)
    storage.complete(ids[0])
    storage.fail(ids[1], "x", None)
    assert storage.release_stale_locks(30) == 0
    # A lock older than the timeout is taken back, and only once.
    set_heartbeat(storage, ids[2], utcnow() - timedelta(seconds=31))
    assert storage.release_stale_locks(30) == 1
    assert storage.release_stale_locks(30) == 0
    statuses = [get(storage, i).status for i in ids]
    assert statuses == [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.RETRYING]


def test_workers_are_recorded_listed_and_pruned(storage: SQLStorage) -> None:
    before = utcnow()
    storage.heartbeat_worker(W1, host="host-a", pid=11, queues=["default", "b"], types=["x", "a"])
    storage.heartbeat_worker(W2, host="host-b", pid=22, queues=["c"], types=[])
    live = {w.id: w for w in storage.live_workers(timedelta(seconds=30))}
    assert set(live) == {W1, W2}
    w1 = live[W1]
    assert (w1.host, w1.pid, w1.queues, w1.types) == ("host-a", 11, ["default", "b"], ["a", "x"])
    assert before <= w1.started_at <= w1.heartbeat_at <= utcnow()
    assert w1.started_at.utcoffset() == timedelta(0)

    # A later heartbeat updates queues and types and keeps the start time.
    storage.heartbeat_worker(W1, host="host-a", pid=11, queues=["z"], types=["y"])
    again = {w.id: w for w in storage.live_workers(timedelta(seconds=30))}[W1]
    assert again.queues == ["z"] and again.types == ["y"]
    assert again.started_at == w1.started_at and again.heartbeat_at >= w1.heartbeat_at

    old = utcnow() - timedelta(minutes=10)
    sql(
        storage,
        "UPDATE sdj_workers SET heartbeat_at = :t WHERE id = :id",
        t=storage.dialect.time_param(old),
        id=W2,
    )
    assert [w.id for w in storage.live_workers(timedelta(minutes=5))] == [W1]
    assert {w.id for w in storage.live_workers(timedelta(minutes=20))} == {W1, W2}
    storage.prune_workers(timedelta(minutes=5))
    assert [w.id for w in storage.live_workers(timedelta(hours=1))] == [W1]
    storage.remove_worker(W1)
    storage.remove_worker("no-such-worker")
    assert storage.live_workers(timedelta(hours=1)) == []
    assert count(storage, "sdj_workers") == 0


# -- checkpoints --------------------------------------------------------------------------


def test_checkpoints_save_get_delete(storage: SQLStorage) -> None:
    created = datetime(2030, 1, 1, 12, 0, 0, 5, tzinfo=UTC)
    for index in (10, 0, 2):
        storage.save_checkpoint(
            Checkpoint(
                job_id="j1",
                call_index=index,
                call_type=f"step-{index}",
                result=f'{{"i":{index}}}'.encode(),
                created_at=created,
            )
        )
    storage.save_checkpoint(Checkpoint(job_id="j1", scope="2", call_index=0, call_type="inner"))
    storage.save_checkpoint(
        Checkpoint(job_id="j1", call_index=3, call_type="charge", error="NoRetry: declined")
    )
    storage.save_checkpoint(Checkpoint(job_id="j2", call_index=0, call_type="other"))

    cps = storage.get_checkpoints("j1")
    assert [(c.scope, c.call_index) for c in cps] == [("", 0), ("", 2), ("", 3), ("", 10), ("2", 0)]
    by_key = {(c.scope, c.call_index): c for c in cps}
    first = by_key[("", 0)]
    assert first.call_type == "step-0" and first.result == b'{"i":0}' and first.error is None
    assert first.created_at == created and first.job_id == "j1"
    assert first.id  # assigned
    assert len({c.id for c in cps}) == len(cps)
    failed = by_key[("", 3)]
    assert failed.error == "NoRetry: declined" and failed.result is None
    assert by_key[("2", 0)].call_type == "inner"

    # Saving another checkpoint at the same position raises and keeps the first.
    with pytest.raises(CheckpointConflict, match="durable call 3"):
        storage.save_checkpoint(
            Checkpoint(job_id="j1", call_index=3, call_type="charge", result=b"1")
        )
    kept = next(c for c in storage.get_checkpoints("j1") if c.call_index == 3)
    assert kept == failed
    assert len(storage.get_checkpoints("j1")) == 5

    storage.delete_checkpoints("j1")
    assert storage.get_checkpoints("j1") == []
    assert [c.call_type for c in storage.get_checkpoints("j2")] == ["other"]
    assert storage.get_checkpoints("no-such-job") == []


def test_checkpoint_keeps_a_given_id(storage: SQLStorage) -> None:
    cp = Checkpoint(id="cp-1", job_id="j", call_index=0, call_type="s", result=b"null")
    storage.save_checkpoint(cp)
    [stored] = storage.get_checkpoints("j")
    assert stored == cp


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


# -- atomicity and transactions -----------------------------------------------------------


def _integrity_errors() -> tuple[type[BaseException], ...]:
    return (sqlite3.IntegrityError, psycopg.errors.UniqueViolation)


@pytest.mark.parametrize("size", [2, 5])
def test_enqueue_many_is_all_or_nothing(storage: SQLStorage, size: int) -> None:
    storage.enqueue(make_job(id="dup"))
    batch = [make_job(id=f"new-{i}") for i in range(size)]
    batch[min(2, size - 1)] = make_job(id="dup")
    with pytest.raises(_integrity_errors()):
        storage.enqueue_many(batch)
    assert count(storage) == 1
    # A duplicate inside the batch itself.
    with pytest.raises(_integrity_errors()):
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
    with pytest.raises(_integrity_errors()):
        storage.enqueue_many(iter(batch))
    assert count(storage) == 1
    batch[1500] = make_job(id="big-1500")
    assert len(storage.enqueue_many(batch)) == 2000
    assert count(storage) == 2001


def test_enqueue_many_of_nothing(storage: SQLStorage) -> None:
    assert storage.enqueue_many([]) == []
    assert count(storage) == 0


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


def test_error_text_that_no_database_can_store_is_escaped(storage: SQLStorage) -> None:
    # Exception messages may hold NUL characters and lone surrogates, which PostgreSQL and
    # UTF-8 cannot store; the outcome must still be recorded, readably.
    job_id = storage.enqueue(make_job())
    claim_one(storage)
    message = "bad\x00byte and \udc80 surrogate"
    assert storage.fail(job_id, message, None, worker_id=W1, attempt=1) is True
    error = get(storage, job_id).last_error
    assert error is not None
    assert error.startswith("bad") and "byte and" in error and "surrogate" in error
    assert "\x00" not in error
    error.encode("utf-8")  # valid text
    storage.save_checkpoint(Checkpoint(job_id=job_id, call_index=0, call_type="s", error=message))
    [cp] = storage.get_checkpoints(job_id)
    assert cp.error is not None and "surrogate" in cp.error and "\x00" not in cp.error


# -- query plans --------------------------------------------------------------------------


def _fill_for_planning(storage: SQLStorage) -> None:
    now = utcnow()
    batch = [
        make_job(
            f"type-{i % 7}",
            queue=f"q{i % 4}",
            priority=i % 3,
            run_at=now - timedelta(seconds=i),
        )
        for i in range(2000)
    ]
    storage.enqueue_many(batch)
    # Most rows of a real jobs table are finished jobs.
    sql(storage, "UPDATE sdj_jobs SET status = 'completed' WHERE priority = 0")
    sql(storage, "ANALYZE")


def test_claim_uses_the_dequeue_index(storage: SQLStorage) -> None:
    _fill_for_planning(storage)
    params = {
        "queue": "q1",
        "worker": W1,
        "limit": 10,
        "now": storage.dialect.time_param(utcnow()),
        "skip": storage.dialect.list_param(["type-3"]),
        "min_retries": 1,
        "lock_timeout": 30.0,
    }
    statement = storage.dialect.sql["claim"]
    prefix = "EXPLAIN QUERY PLAN " if storage.is_sqlite else "EXPLAIN "
    raw = storage.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(prefix + statement, params)
        plan = "\n".join(" ".join(str(v) for v in row) for row in cur.fetchall())
        cur.close()
        raw.rollback()
    finally:
        raw.close()
    assert "sdj_jobs_dequeue" in plan, plan
    if storage.is_sqlite:
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan  # the index gives the order: no sort
    # Explaining claimed nothing.
    assert storage.get_jobs_by_status(JobStatus.RUNNING, 1) == []


def test_save_checkpoint_is_fenced_when_given_the_run(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())

    def cp(index: int) -> Checkpoint:
        return Checkpoint(job_id=job_id, call_index=index, call_type="s", result=b"1")

    assert storage.save_checkpoint(cp(0), worker_id=W1, attempt=1) is False  # not running
    claim_one(storage)
    assert storage.save_checkpoint(cp(0), worker_id=W2, attempt=1) is False
    assert storage.save_checkpoint(cp(0), worker_id=W1, attempt=2) is False
    assert storage.get_checkpoints(job_id) == []
    assert storage.save_checkpoint(cp(0), worker_id=W1, attempt=1) is True
    assert storage.save_checkpoint(cp(1)) is True  # unfenced
    assert [c.call_index for c in storage.get_checkpoints(job_id)] == [0, 1]


def test_a_checkpoint_position_is_never_overwritten(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    job = claim_one(storage)
    first = Checkpoint(job_id=job_id, call_index=0, call_type="a", result=b'"first"')
    assert storage.save_checkpoint(first, worker_id=W1, attempt=job.attempt) is True
    # The same checkpoint again (a write retried after its reply was lost) is saved.
    assert storage.save_checkpoint(first, worker_id=W1, attempt=job.attempt) is True

    def other() -> Checkpoint:
        return Checkpoint(job_id=job_id, call_index=0, call_type="b", result=b'"second"')

    with pytest.raises(CheckpointConflict, match="already has a checkpoint"):
        storage.save_checkpoint(other(), worker_id=W1, attempt=job.attempt)
    with pytest.raises(CheckpointConflict):
        storage.save_checkpoint(other())  # unfenced
    # A run that lost the lock hears that, not that the position is taken.
    assert storage.save_checkpoint(other(), worker_id=W2, attempt=job.attempt) is False
    assert storage.get_checkpoints(job_id) == [first]
    nested = Checkpoint(job_id=job_id, scope="0", call_index=0, call_type="b")
    assert storage.save_checkpoint(nested, worker_id=W1, attempt=job.attempt) is True


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
            assert isinstance(results[n], INTEGRITY_ERRORS), results[n]
        else:
            assert results[n] is (n % 6 != 4), (n, results[n])
    saved = {c.call_index for c in storage.get_checkpoints(job_id)}
    assert saved == {n for n in range(24) if n % 6 < 4}


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


def test_enqueue_rejects_a_connection_to_another_kind_of_database(
    storage: SQLStorage, tmp_path: Path
) -> None:
    other = ADMIN_URL
    if not storage.is_sqlite:
        other = f"sqlite:///{tmp_path / 'other.db'}"
    engine = sa.create_engine(other)
    try:
        with engine.connect() as conn, pytest.raises(ValueError):
            storage.enqueue(make_job(), connection=conn)
    finally:
        engine.dispose()
    assert count(storage) == 0


def test_schema_version_of_an_empty_database_reads_only(tmp_path: Path) -> None:
    empty = SQLStorage(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        assert empty.schema_version() == 0
        assert sa.inspect(empty.engine).get_table_names() == []
    finally:
        empty.close()


def _sqlite_settings(storage: SQLStorage) -> tuple[int, str]:
    with storage.engine.connect() as conn:
        synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    return synchronous, journal


def test_sqlite_commits_wait_for_the_disk_unless_the_callers_engine_says_otherwise(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    own = SQLStorage(url)
    try:
        assert _sqlite_settings(own) == (2, "wal")  # FULL
        # Set on every connection, whatever default this SQLite was built with.
        assert sa.event.contains(own.engine, "connect", sql_storage._sqlite_full_sync)
        relaxed_by_build = sqlite3.connect(tmp_path / "durable.db")
        relaxed_by_build.execute("PRAGMA synchronous=OFF")
        sql_storage._sqlite_full_sync(relaxed_by_build, None)
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
        assert not sa.event.contains(engine, "connect", sql_storage._sqlite_full_sync)
    finally:
        theirs.close()
        engine.dispose()


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
    with pytest.raises(psycopg.OperationalError):
        storage.get_job(job_id)
    assert get(storage, job_id).id == job_id


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


def test_an_error_text_over_the_cap_is_stored_truncated_with_a_marker(
    storage: SQLStorage,
) -> None:
    job_id = storage.enqueue(make_job())
    job = claim_one(storage)
    cap = sql_storage.MAX_ERROR_TEXT
    text = "E" * (cap + 12345)
    assert storage.fail(job_id, text, None, worker_id=W1, attempt=job.attempt)
    stored = get(storage, job_id).last_error
    assert stored == "E" * cap + "... [truncated: 12,345 more characters]"
