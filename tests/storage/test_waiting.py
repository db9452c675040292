"""Conformance of ``SQLStorage``: suspended jobs (``waiting``), the end of their waits, and
progress, on every backend.

A suspension is an outcome fenced by its run; a waiting job is never claimed; once its
deadline has come a worker wakes it into a due resume, whose claim is not a new attempt
(the resume marker is ``wait_until``, kept until the run ends in a retry or failure).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from durable_jobs.errors import CheckpointConflict
from durable_jobs.job import Checkpoint, Job, JobStatus, utcnow
from durable_jobs.storage import Claim, SQLStorage
from durable_jobs.storage.mysql import STEP
from durable_jobs.storage.protocol import Reserve
from tests.helpers import undo_migration_6, wait_for

from .helpers import W1, W2, claim_one, get, make_job, sql


def _suspended(
    storage: SQLStorage, until_in: float = -1.0, queue: str = "default", **fields: object
) -> tuple[str, Job]:
    """A job claimed by W1 and suspended until ``until_in`` seconds from now."""
    job_id = storage.enqueue(make_job(queue=queue, **fields))  # type: ignore[arg-type]
    [job] = storage.claim(queue, W1, 1)
    until = utcnow() + timedelta(seconds=until_in)
    assert storage.suspend(job_id, worker_id=W1, fence=job.fence, until=until, waiting_for="sleep")
    return job_id, job


# -- suspend ------------------------------------------------------------------------------


def test_a_suspension_is_fenced_and_keeps_the_attempt(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job(max_retries=0))
    job = claim_one(storage)
    until = utcnow() + timedelta(minutes=5)
    before = get(storage, job_id)
    for worker, fence in ((W2, job.fence), (W1, job.fence + 1)):
        assert not storage.suspend(
            job_id, worker_id=worker, fence=fence, until=until, waiting_for="sleep"
        )
    assert get(storage, job_id) == before

    assert storage.suspend(job_id, worker_id=W1, fence=job.fence, until=until, waiting_for="sleep")
    waiting = get(storage, job_id)
    assert waiting.status is JobStatus.WAITING
    assert (waiting.wait_until, waiting.waiting_for, waiting.run_at) == (until, "sleep", until)
    assert (waiting.attempt, waiting.fence) == (1, job.fence)
    assert waiting.locked_by is None and waiting.heartbeat_at is None
    assert waiting.lock_expires_at is None and waiting.finished_at is None
    assert waiting.finished_by == W1  # who stored the outcome
    # A retried write whose reply was lost is recognised as this worker's.
    assert storage.settled(W1, [(job_id, job.fence)]) == {job_id: JobStatus.WAITING}
    assert not storage.suspend(
        job_id, worker_id=W1, fence=job.fence, until=until, waiting_for="sleep"
    )
    # Not running: no heartbeat keeps it, no reaper takes it back.
    assert storage.release_expired_locks() == 0
    assert storage.release_stale_locks(0) == 0
    assert get(storage, job_id) == waiting


def test_a_waiting_job_is_not_due_until_its_wait_is_ended(storage: SQLStorage) -> None:
    job_id, _ = _suspended(storage, until_in=-60)  # its deadline long past
    assert storage.claim("default", W2, 10) == []
    assert storage.get_due_jobs(10) == []
    assert storage.queue_depths() == []
    assert [j.id for j in storage.get_jobs_by_status(JobStatus.WAITING, 10)] == [job_id]


# -- ending waits -------------------------------------------------------------------------


def test_ending_a_due_wait_makes_a_due_resume_whose_claim_is_no_new_attempt(
    storage: SQLStorage,
) -> None:
    job_id, first = _suspended(storage, until_in=-0.5)
    until = get(storage, job_id).wait_until
    assert until is not None
    assert storage.wake_waiting(["default"]) == (["default"], None)
    woken = get(storage, job_id)
    assert woken.status is JobStatus.PENDING
    assert (woken.run_at, woken.wait_until, woken.waiting_for) == (until, until, None)
    assert woken.attempt == 1
    resumed = claim_one(storage, W2)
    assert resumed.id == job_id and resumed.attempt == 1 and resumed.fence == first.fence + 1
    assert resumed.wait_until == until  # tells the run it resumes (and keeps the deadline)
    assert storage.complete(job_id, b"1", worker_id=W2, fence=resumed.fence)
    done = get(storage, job_id)
    assert (done.status, done.attempt, done.wait_until) == (JobStatus.COMPLETED, 1, None)


def test_wake_waiting_ends_due_waits_of_the_queues_given_only(storage: SQLStorage) -> None:
    due_a, _ = _suspended(storage, until_in=-2, queue="a")
    due_b, _ = _suspended(storage, until_in=-1, queue="b")
    later_a, _ = _suspended(storage, until_in=60, queue="a")
    later_c, _ = _suspended(storage, until_in=30, queue="c")
    next_a = ("a", get(storage, later_a).wait_until)
    next_c = ("c", get(storage, later_c).wait_until)
    # Nothing due in c: only a look, and the next deadline (with its queue).
    assert storage.wake_waiting(["c"]) == ([], next_c)
    assert storage.wake_waiting(["a", "c"]) == (["a"], next_c)
    assert get(storage, due_a).status is JobStatus.PENDING
    assert get(storage, due_b).status is JobStatus.WAITING
    assert storage.wake_waiting(["a"]) == ([], next_a)
    assert storage.wake_waiting(["b"]) == (["b"], None)
    assert storage.wake_waiting(["d"]) == ([], None)
    for job_id in (later_a, later_c):
        assert get(storage, job_id).status is JobStatus.WAITING


def test_wake_waiting_ends_waits_in_batches_oldest_deadline_first(storage: SQLStorage) -> None:
    ids = [_suspended(storage, until_in=-10 + i)[0] for i in range(5)]
    now = utcnow()
    assert storage.wake_waiting(["default"], limit=2, now=now) == (["default"], ("default", now))
    statuses = [get(storage, job_id).status for job_id in ids]
    assert statuses == [JobStatus.PENDING] * 2 + [JobStatus.WAITING] * 3
    assert storage.wake_waiting(["default"], limit=10) == (["default"], None)
    # The claim takes resumes in deadline order (their run_at).
    assert [j.id for j in storage.claim("default", W2, 10)] == ids


def test_wake_and_claim_claims_the_resumes_it_makes_in_the_same_transaction(
    storage: SQLStorage,
) -> None:
    due, first = _suspended(storage, until_in=-1, queue="a")
    later, _ = _suspended(storage, until_in=60, queue="a")
    held, _ = _suspended(storage, until_in=-1, queue="held")
    storage.pause_queue("held")
    claims = [Claim("a", 5), Claim("held", 5)]
    woken, claimed = storage.wake_and_claim(["a", "held"], claims, W2, lock_timeout=30)
    assert woken == ["a", "held"]
    [[resumed], nothing] = claimed
    assert nothing == []  # a paused queue's resume waits, due, for the queue's resume
    assert (resumed.id, resumed.locked_by) == (due, W2)
    assert (resumed.attempt, resumed.fence) == (1, first.fence + 1)  # no new attempt
    assert resumed.wait_until is not None
    assert get(storage, held).status is JobStatus.PENDING
    assert get(storage, later).status is JobStatus.WAITING
    # Nothing due: nothing woken, and the claims find what else is due.
    other = storage.enqueue(make_job(queue="a"))
    woken, [[plain]] = storage.wake_and_claim(["a"], [Claim("a", 5)], W2)
    assert (woken, plain.id) == ([], other)


def test_a_wait_without_deadline_is_not_ended_by_time(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    job = claim_one(storage)
    assert storage.suspend(job_id, worker_id=W1, fence=job.fence, until=None, waiting_for="x")
    waiting = get(storage, job_id)
    assert waiting.wait_until is None and waiting.run_at == job.run_at
    assert storage.wake_waiting(["default"]) == ([], None)
    assert get(storage, job_id).status is JobStatus.WAITING


def test_a_resumed_run_given_back_unstarted_stays_a_due_resume(storage: SQLStorage) -> None:
    job_id, _ = _suspended(storage)
    storage.wake_waiting(["default"])
    resumed = claim_one(storage, W2)
    storage.release(W2, [(job_id, resumed.fence)])
    released = get(storage, job_id)
    assert (released.status, released.attempt) == (JobStatus.PENDING, 1)
    assert released.wait_until is not None and released.locked_by is None
    again = claim_one(storage, W1)
    assert again.attempt == 1 and again.wait_until == released.wait_until


def test_a_resumed_run_that_fails_makes_the_retry_a_new_attempt(storage: SQLStorage) -> None:
    job_id, _ = _suspended(storage)
    storage.wake_waiting(["default"])
    resumed = claim_one(storage, W2)
    retry_at = utcnow() - timedelta(seconds=1)
    assert storage.fail(job_id, "boom", retry_at, worker_id=W2, fence=resumed.fence)
    failed = get(storage, job_id)
    assert (failed.status, failed.attempt, failed.wait_until) == (JobStatus.RETRYING, 1, None)
    assert claim_one(storage).attempt == 2


def test_a_resumed_run_taken_back_counts_as_an_attempt(storage: SQLStorage) -> None:
    job_id, _ = _suspended(storage)
    storage.wake_waiting(["default"])
    claim_one(storage, W2, lock_timeout=0.01)
    time.sleep(0.05)  # past the lock's expiry (on the database's clock)
    assert storage.release_expired_locks() == 1
    reaped = get(storage, job_id)
    assert (reaped.status, reaped.attempt, reaped.wait_until) == (JobStatus.RETRYING, 1, None)
    sql(storage, "UPDATE sdj_jobs SET run_at = :t", t=storage.dialect.time_param(utcnow()))
    assert claim_one(storage).attempt == 2


def test_the_look_for_due_waits_is_served_by_the_waiting_index(storage: SQLStorage) -> None:
    now = utcnow()
    jobs = [make_job(queue=f"q{i % 3}", run_at=now) for i in range(2000)]
    ids = storage.enqueue_many(jobs)
    sql(storage, "UPDATE sdj_jobs SET status = 'completed'")
    waiting = ids[:50]
    for i, job_id in enumerate(waiting):
        sql(
            storage,
            "UPDATE sdj_jobs SET status = 'waiting', wait_until = :t WHERE id = :id",
            t=storage.dialect.time_param(now + timedelta(seconds=i - 25)),
            id=job_id,
        )
    sql(storage, "ANALYZE TABLE sdj_jobs" if storage.dialect.name == "mysql" else "ANALYZE")
    params = {
        "queues": storage.dialect.list_param(["q1", "q2"]),
        "now": storage.dialect.time_param(now),
        "limit": 100,
    }
    prefix = "EXPLAIN QUERY PLAN " if storage.dialect.name == "sqlite" else "EXPLAIN "
    raw = storage.engine.raw_connection()
    try:
        cur = raw.cursor()
        for name in ("next_wake", "due_waiting"):
            statement = storage.dialect.sql[name]
            cur.execute(prefix + statement.split(STEP)[0], params)
            plan = "\n".join(" ".join(str(v) for v in row) for row in cur.fetchall())
            assert "sdj_jobs_waiting" in plan, (name, plan)
            if storage.dialect.name == "sqlite":
                assert "TEMP B-TREE FOR ORDER BY" not in plan, plan
        cur.close()
        raw.rollback()
    finally:
        raw.close()


# -- progress -----------------------------------------------------------------------------


def test_progress_is_fenced_to_the_running_run(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    assert get(storage, job_id).progress is None
    job = claim_one(storage)
    assert not storage.set_progress(job_id, b'{"done": 1}', worker_id=W2, fence=job.fence)
    assert not storage.set_progress(job_id, b'{"done": 1}', worker_id=W1, fence=job.fence + 1)
    assert get(storage, job_id).progress is None
    assert storage.set_progress(job_id, b'{"done": 1, "of": [2]}', worker_id=W1, fence=job.fence)
    assert get(storage, job_id).progress == {"done": 1, "of": [2]}
    assert storage.set_progress(job_id, b'"half"', worker_id=W1, fence=job.fence)
    assert get(storage, job_id).progress == "half"
    # It stays after the run, readable with the job (a claim returns it too).
    assert storage.fail(job_id, "boom", utcnow(), worker_id=W1, fence=job.fence)
    assert not storage.set_progress(job_id, b"3", worker_id=W1, fence=job.fence)
    assert claim_one(storage).progress == "half"
    again = get(storage, job_id)
    assert storage.set_progress(job_id, None, worker_id=W1, fence=again.fence)
    assert get(storage, job_id).progress is None


# -- migration ----------------------------------------------------------------------------


def test_migration_6_upgrades_a_version_5_database(storage: SQLStorage) -> None:
    t = storage.dialect.time_param
    with storage.engine.begin() as conn:
        undo_migration_6(conn)
        conn.execute(
            sa.text(
                "INSERT INTO sdj_jobs (id, type, args, queue, priority, status, attempt,"
                " max_retries, run_at, created_at, updated_at) VALUES"
                " ('v5', 't', 'null', 'default', 0, 'pending', 0, 3, :now, :now, :now)"
            ),
            {"now": t(utcnow())},
        )
    assert storage.schema_version() == 5
    storage.migrate()
    assert storage.schema_version() == len(storage.dialect.migrations)
    old = get(storage, "v5")
    assert (old.parent_id, old.progress, old.wait_until, old.waiting_for) == (None,) * 4
    claimed = claim_one(storage)
    assert claimed.id == "v5" and claimed.attempt == 1
    until = utcnow() - timedelta(seconds=1)
    assert storage.suspend("v5", worker_id=W1, fence=claimed.fence, until=until, waiting_for="s")
    assert storage.wake_waiting(["default"]) == (["default"], None)
    assert claim_one(storage).attempt == 1


# -- signals ------------------------------------------------------------------------------


def _signal_checkpoint(job: Job, index: int = 0) -> Callable[[list[bytes | None]], Checkpoint]:
    def record(payloads: list[bytes | None]) -> Checkpoint:
        body = b"[" + b",".join(p or b"null" for p in payloads) + b"]"
        return Checkpoint(job_id=job.id, call_index=index, call_type="jobs.signals", result=body)

    return record


def _pending(storage: SQLStorage, job_id: str) -> list[tuple[str, str | None]]:
    rows = sql(
        storage, "SELECT name, payload FROM sdj_signals WHERE job_id = :id ORDER BY seq", id=job_id
    )
    return [(name, payload) for name, payload in rows]


def test_signals_are_kept_until_consumed_oldest_first(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    assert storage.signal("no-such-job", "go", b"1") == (False, None)
    for payload in (b'"a"', b'"b"', None):
        assert storage.signal(job_id, "go", payload) == (True, None)  # not waiting: kept
    assert storage.signal(job_id, "other", b"0") == (True, None)
    job = claim_one(storage)
    peek = storage.observe_signals(
        job_id, "go", worker_id=W1, fence=job.fence, limit=1, consume=False,
        record=lambda payloads: None,
    )  # fmt: skip
    assert peek == [b'"a"'] and len(_pending(storage, job_id)) == 4
    # Fenced: a stale run reads and takes nothing.
    stale = storage.observe_signals(
        job_id, "go", worker_id=W2, fence=job.fence, limit=10, consume=True,
        record=_signal_checkpoint(job),
    )  # fmt: skip
    assert stale is None and len(_pending(storage, job_id)) == 4
    taken = storage.observe_signals(
        job_id, "go", worker_id=W1, fence=job.fence, limit=2, consume=True,
        record=_signal_checkpoint(job),
    )  # fmt: skip
    assert taken == [b'"a"', b'"b"']
    assert _pending(storage, job_id) == [("go", None), ("other", "0")]
    # Taken with its checkpoint, in one transaction.
    [cp] = storage.get_checkpoints(job_id)
    assert (cp.call_index, cp.call_type, cp.result) == (0, "jobs.signals", b'["a","b"]')
    # A second observation at a position that has a checkpoint takes nothing.
    with pytest.raises(CheckpointConflict):
        storage.observe_signals(
            job_id, "go", worker_id=W1, fence=job.fence, limit=10, consume=True,
            record=_signal_checkpoint(job),
        )  # fmt: skip
    assert _pending(storage, job_id) == [("go", None), ("other", "0")]


def test_a_signal_wakes_a_job_waiting_for_it_and_no_other(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job(queue="q"))
    [job] = storage.claim("q", W1, 1)
    until = utcnow() + timedelta(hours=1)
    assert storage.suspend(
        job_id, worker_id=W1, fence=job.fence, until=until, waiting_for="signal:go", signal="go"
    )
    assert get(storage, job_id).status is JobStatus.WAITING  # nothing pending: it waits
    assert storage.signal(job_id, "other", None) == (True, None)
    assert get(storage, job_id).status is JobStatus.WAITING
    before = utcnow()
    assert storage.signal(job_id, "go", b"42") == (True, "q")
    woken = get(storage, job_id)
    assert woken.status is JobStatus.PENDING and woken.waiting_for is None
    assert woken.run_at is not None and before <= woken.run_at <= utcnow()
    assert woken.wait_until == woken.run_at  # the resume marker
    resumed = storage.claim("q", W2, 1)[0]
    assert resumed.attempt == 1
    assert storage.signal(job_id, "go", b"43") == (True, None)  # running: kept
    assert _pending(storage, job_id) == [("other", None), ("go", "42"), ("go", "43")]


def _waiting_for_go(storage: SQLStorage, queue: str = "q") -> tuple[str, Job]:
    """A job claimed by W1 and suspended until it gets the signal ``go``."""
    job_id = storage.enqueue(make_job(queue=queue))
    [job] = storage.claim(queue, W1, 1)
    assert storage.suspend(
        job_id, worker_id=W1, fence=job.fence, until=None, waiting_for="signal:go", signal="go"
    )
    return job_id, job


def _reserve_for(worker: str, asked: list[tuple[str, str]]) -> Reserve:
    def reserve(queue: str, job_type: str) -> tuple[str, float]:
        asked.append((queue, job_type))
        return worker, 30.0

    return reserve


def test_a_signal_that_wakes_a_job_claims_its_resume_for_the_worker_reserved(
    storage: SQLStorage,
) -> None:
    job_id, job = _waiting_for_go(storage)
    asked: list[tuple[str, str]] = []
    reserve = _reserve_for(W2, asked)
    assert storage.signal_claiming("no-such-job", "go", None, reserve) == (False, None, None)
    assert storage.signal_claiming(job_id, "other", None, reserve) == (True, None, None)
    assert asked == []  # a signal that wakes nothing asks for no slot
    found, woken, run = storage.signal_claiming(job_id, "go", b"1", reserve)
    assert (found, woken, asked) == (True, "q", [("q", "t")])
    assert run is not None and run.id == job_id
    assert (run.status, run.locked_by) == (JobStatus.RUNNING, W2)
    assert (run.attempt, run.fence) == (1, job.fence + 1)  # a resume, not a new attempt
    assert run.wait_until is not None and run.waiting_for is None  # the resume marker
    assert run.lock_expires_at is not None and run.started_at is not None
    stored = get(storage, job_id)
    assert (stored.status, stored.locked_by, stored.fence) == (run.status, W2, run.fence)
    assert storage.claim("q", W1, 1) == []  # claimed once
    assert _pending(storage, job_id) == [("other", None), ("go", "1")]  # for the run to take


def test_a_signal_claims_no_resume_while_the_job_or_its_queue_is_paused(
    storage: SQLStorage,
) -> None:
    reserve = _reserve_for(W2, [])
    job_id, _ = _waiting_for_go(storage, "held")
    storage.pause_queue("held")
    assert storage.signal_claiming(job_id, "go", None, reserve) == (True, "held", None)
    assert get(storage, job_id).status is JobStatus.PENDING  # a due resume, unclaimed
    assert storage.claim("held", W1, 1) == []
    storage.resume_queue("held")
    [resumed] = storage.claim("held", W1, 1)
    assert resumed.attempt == 1

    paused_id, _ = _waiting_for_go(storage)
    assert storage.pause(paused_id)
    assert storage.signal_claiming(paused_id, "go", None, reserve) == (True, "q", None)
    assert get(storage, paused_id).status is JobStatus.PAUSED


def test_a_signal_without_a_slot_reserved_leaves_a_due_resume(storage: SQLStorage) -> None:
    job_id, _ = _waiting_for_go(storage)
    assert storage.signal_claiming(job_id, "go", None, lambda queue, job_type: None) == (
        True,
        "q",
        None,
    )
    assert get(storage, job_id).status is JobStatus.PENDING
    [resumed] = storage.claim("q", W1, 1)
    assert resumed.attempt == 1


def test_a_signal_sent_before_the_suspension_commits_is_not_missed(storage: SQLStorage) -> None:
    # The run looked for the signal and found none; the signal came before the run's
    # suspension was stored: the suspension sees it and makes the job due at once.
    job_id = storage.enqueue(make_job())
    job = claim_one(storage)
    looked = storage.observe_signals(
        job_id, "go", worker_id=W1, fence=job.fence, limit=1, consume=True,
        record=lambda payloads: None,
    )  # fmt: skip
    assert looked == []
    assert storage.signal(job_id, "go", b"1") == (True, None)  # running: not woken
    heard: list[str] = []
    storage.add_wake_listener(heard.extend)  # this process's workers: woken at once
    assert storage.suspend(
        job_id, worker_id=W1, fence=job.fence, until=None, waiting_for="signal:go", signal="go"
    )
    due = get(storage, job_id)
    assert due.status is JobStatus.PENDING and due.wait_until is not None
    assert heard == [due.queue]
    assert claim_one(storage).attempt == 1


def test_signals_and_suspensions_racing_never_miss_each_other(storage: SQLStorage) -> None:
    # Each round: the run has looked (none) and suspends while the signal is sent, at
    # the same moment. Whichever commits first, the job must end up due, never waiting.
    for _ in range(20):
        job_id = storage.enqueue(make_job())
        job = claim_one(storage)
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def suspend(
            job_id: str = job_id,
            job: Job = job,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait()
                storage.suspend(
                    job_id, worker_id=W1, fence=job.fence, until=None,
                    waiting_for="signal:go", signal="go",
                )  # fmt: skip
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=suspend)
        thread.start()
        barrier.wait()
        assert storage.signal(job_id, "go", b"1")[0]
        thread.join(30)
        assert errors == []
        assert get(storage, job_id).status is JobStatus.PENDING, job_id
        claim_one(storage)  # out of the way of the next round


def test_other_processes_hear_of_a_signal_that_woke_a_job(storage: SQLStorage) -> None:
    # PostgreSQL notifies; SQLite's file watch and MySQL's poll see the new signal.
    job_id = storage.enqueue(make_job(queue="signalled"))
    [job] = storage.claim("signalled", W1, 1)
    assert storage.suspend(
        job_id, worker_id=W1, fence=job.fence, until=None, waiting_for="signal:go", signal="go"
    )
    elsewhere = SQLStorage(storage.engine.url.render_as_string(hide_password=False))
    listener = elsewhere.listener()
    assert listener is not None
    heard: list[str] = []
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=listener.run, args=(heard.append, ready.set, stop))
    thread.start()
    try:
        assert ready.wait(10)
        assert storage.signal(job_id, "go", b"1") == (True, "signalled")
        wait_for(lambda: "signalled" in heard, timeout=5)
    finally:
        stop.set()
        thread.join(10)
        elsewhere.close()
