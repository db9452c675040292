"""Conformance of ``SQLStorage``: claiming due jobs, and the heartbeats and stale locks of
claimed ones, on every backend."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta

from durable_jobs.job import JobStatus, utcnow
from durable_jobs.storage import SQLStorage
from durable_jobs.storage.mysql import STEP

from .helpers import W1, W2, claim_one, count, get, make_job, set_heartbeat, sql

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


def test_claims_ahead_leave_out_jobs_allowed_a_single_run(storage: SQLStorage) -> None:
    once = storage.enqueue(make_job(max_retries=0, priority=5))
    twice = storage.enqueue(make_job(max_retries=1))
    assert [j.id for j in storage.claim("default", W1, 5, min_retries=1)] == [twice]
    assert [j.id for j in storage.claim("default", W1, 5)] == [once]


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
            first = True
            while True:
                batch = storage.claim("default", worker, rng.randint(1, 8))
                if first:  # every claimer claims once before any claims twice
                    barrier.wait()
                    first = False
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
        assert all(claimed)  # the claimers did run side by side
        running = storages[0].get_jobs_by_status(JobStatus.RUNNING, n_jobs + 1)
        assert len(running) == n_jobs
        owner = {job_id: f"w{i}" for i, ids in enumerate(claimed) for job_id in ids}
        assert all(j.locked_by == owner[j.id] and j.attempt == 1 for j in running)
    finally:
        for s in storages:
            s.close()


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
    assert reaped.completed_at is None and reaped.finished_at is None
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
    assert failed.completed_at is None and failed.finished_at is not None
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
    assert w1.version == ""  # not said

    # A later heartbeat updates queues, types and release, and keeps the start time.
    storage.heartbeat_worker(W1, host="host-a", pid=11, queues=["z"], types=["y"], version="2.1")
    again = {w.id: w for w in storage.live_workers(timedelta(seconds=30))}[W1]
    assert again.queues == ["z"] and again.types == ["y"] and again.version == "2.1"
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
    sql(storage, "ANALYZE TABLE sdj_jobs" if storage.dialect.name == "mysql" else "ANALYZE")


# Backend-specific in part: how to ask for a plan (EXPLAIN QUERY PLAN on SQLite, EXPLAIN
# elsewhere) and the no-sort check, which SQLite's and MySQL's plan texts show. On MySQL
# a locking read that sorts locks every row it sorts: on a big backlog the claim then
# fails with "the total number of locks exceeds the lock table size".
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
    if storage.dialect.name == "mysql":  # a claim in steps: the first picks the jobs
        statement = statement.split(STEP)[0]
    prefix = "EXPLAIN QUERY PLAN " if storage.dialect.name == "sqlite" else "EXPLAIN "
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
    if storage.dialect.name == "sqlite":
        assert "TEMP B-TREE FOR ORDER BY" not in plan, plan  # the index gives the order: no sort
    if storage.dialect.name == "mysql":
        # Each part of the claim reads the index in order; only the merge of their few
        # rows is sorted (the UNION RESULT line).
        parts = [line for line in plan.splitlines() if "UNION RESULT" not in line]
        assert parts and all("filesort" not in line for line in parts), plan
    # Explaining claimed nothing.
    assert storage.get_jobs_by_status(JobStatus.RUNNING, 1) == []
