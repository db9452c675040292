"""Conformance of ``SQLStorage``: storing outcomes (complete, fail, release, settled), each
fenced by its run, on every backend."""

from __future__ import annotations

from datetime import datetime, timedelta

from durable_jobs.job import Checkpoint, JobStatus, utcnow
from durable_jobs.storage import Claim, Outcome, SQLStorage
from durable_jobs.storage import sql as sql_storage

from .helpers import W1, W2, claim_one, get, make_job

# -- complete -----------------------------------------------------------------------------


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
    assert done.finished_at == done.completed_at
    assert done.locked_by is None and done.finished_by == W1  # who stored the outcome
    assert done.heartbeat_at is None
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


def test_a_completed_run_clears_what_an_earlier_failed_run_left(storage: SQLStorage) -> None:
    # One completes alone, one in a batch (PostgreSQL has a statement of its own for it).
    ids = storage.enqueue_many([make_job(), make_job()])
    for job in storage.claim("default", W1, 2):
        trace = f"Traceback (most recent call last):\n  ...\nValueError: {job.id}"
        assert not storage.fail(job.id, "ValueError: boom", past(), worker_id=W2, fence=job.fence)
        assert get(storage, job.id).last_error is None  # fenced out: nothing stored
        assert storage.fail(
            job.id, "ValueError: boom", past(), worker_id=W1, fence=job.fence, traceback=trace
        )
        retrying = get(storage, job.id)
        assert (retrying.last_error, retrying.traceback) == ("ValueError: boom", trace)
    first, second = storage.claim("default", W2, 2)
    assert storage.complete(first.id, b"1", worker_id=W2, fence=first.fence)
    assert storage.complete_many(W2, [Outcome(second.id, second.fence, b"2")]) == {second.id}
    for job_id in ids:
        done = get(storage, job_id)
        assert done.status is JobStatus.COMPLETED and done.attempt == 2
        assert done.last_error is None and done.traceback is None
        assert done.locked_by is None and done.finished_by == W2
        assert done.finished_at is not None and done.finished_at == done.completed_at


def test_a_permanent_failure_keeps_its_traceback(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    job = claim_one(storage)
    trace = "Traceback (most recent call last):\n  File \"app.py\", line 3\nKeyError: 'x'"
    assert storage.fail(
        job_id, "KeyError: 'x'", None, worker_id=W1, fence=job.fence, traceback=trace
    )
    failed = get(storage, job_id)
    assert (failed.status, failed.traceback, failed.completed_at) == (JobStatus.FAILED, trace, None)


def past() -> datetime:
    return utcnow() - timedelta(seconds=1)


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


# -- fail ---------------------------------------------------------------------------------


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
    assert job.completed_at is None and job.finished_at is None
    assert job.locked_by is None and job.finished_by == W1 and job.heartbeat_at is None
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
    assert job.completed_at is None  # it did not complete
    assert job.finished_at is not None and before <= job.finished_at <= utcnow()
    assert job.locked_by is None and job.finished_by == W1
    assert storage.claim("default", W1, 10, now=utcnow() + timedelta(days=365)) == []
    assert storage.fail(job_id, "again", None) is False
    assert storage.fail("no-such-job", "x", None) is False


def test_unfenced_fail(storage: SQLStorage) -> None:
    job_id = storage.enqueue(make_job())
    assert storage.fail(job_id, "not running", None) is False
    claim_one(storage)
    assert storage.fail(job_id, "boom", None) is True
    assert get(storage, job_id).status is JobStatus.FAILED


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


# -- release and settled ------------------------------------------------------------------


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
