"""Failed jobs as dead letters on every backend: their attempt history, retrying one,
retrying them in bulk by filter."""

from __future__ import annotations

from datetime import timedelta

import pytest

import durable_jobs as jobs
from durable_jobs.job import utcnow
from durable_jobs.storage import dead_letters
from tests.helpers import wait_for
from tests.storage.helpers import claim_one, sql

FAST = {"poll_interval": 0.05, "lock_timeout": 5}


def _job(queue: jobs.Queue, job_id: str) -> jobs.Job:
    job = queue.get_job(job_id)
    assert job is not None
    return job


def _failed(queue: jobs.Queue, job_id: str) -> bool:
    return _job(queue, job_id).status is jobs.JobStatus.FAILED


def test_a_failed_job_keeps_each_attempt(queue: jobs.Queue) -> None:
    @queue.job(retries=1, backoff=jobs.constant(0.01))
    def flaky(n: int) -> None:
        raise RuntimeError(f"boom {n}")

    job_id = queue.enqueue("flaky", 7)
    with queue.worker(**FAST) as worker:
        wait_for(lambda: _failed(queue, job_id))
    job = _job(queue, job_id)
    assert job.last_error is not None and "boom 7" in job.last_error
    assert job.traceback is not None and "RuntimeError: boom 7" in job.traceback
    attempts = queue.storage.admin().attempts(job_id)
    assert [a.attempt for a in attempts] == [1, 2]
    for attempt in attempts:
        assert attempt.worker == worker.id
        assert attempt.error is not None and "boom 7" in attempt.error
        assert attempt.traceback is not None and "RuntimeError: boom 7" in attempt.traceback
        assert attempt.started_at is not None and attempt.started_at <= attempt.finished_at


def test_a_completed_run_adds_no_attempt(queue: jobs.Queue) -> None:
    queue.register("fine", lambda n: n)
    job_id = queue.enqueue("fine", 1)
    with queue.worker(**FAST):
        assert queue.result(job_id, timeout=10) == 1
    assert queue.storage.admin().attempts(job_id) == []


def test_a_run_taken_back_from_a_lost_worker_is_an_attempt(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    job_id = queue.enqueue("lost")
    claim_one(storage, "gone-worker")
    past = storage.dialect.time_param(utcnow() - timedelta(minutes=5))
    sql(storage, "UPDATE sdj_jobs SET lock_expires_at = :t WHERE id = :id", t=past, id=job_id)
    assert storage.release_expired_locks() == 1
    [attempt] = storage.admin().attempts(job_id)
    assert attempt.worker == "gone-worker" and attempt.attempt == 1
    assert attempt.error is not None and attempt.error.startswith("WorkerLost: worker gone-worker")


def test_retry_puts_a_failed_or_cancelled_job_back_with_a_fresh_budget(
    queue: jobs.Queue,
) -> None:
    healed: list[bool] = []

    @queue.job(retries=0)
    def fragile(n: int) -> int:
        if not healed:
            raise ValueError("not yet")
        return n

    failed = queue.enqueue("fragile", 1)
    with queue.worker(**FAST):
        wait_for(lambda: _failed(queue, failed))
        cancelled = queue.enqueue("fragile", 2, delay=timedelta(hours=1))
        assert queue.cancel(cancelled)
        healed.append(True)
        assert queue.retry(failed) is True
        # Polled, not queue.result: the first run's failure event may still be on its way.
        wait_for(lambda: _job(queue, failed).status is jobs.JobStatus.COMPLETED)
    # With the worker stopped: a retried job is due at once, and a worker would take it.
    assert queue.retry(cancelled) is True
    assert _job(queue, cancelled).status is jobs.JobStatus.PENDING
    assert _job(queue, failed).attempt == 1  # the fresh budget's first run
    assert len(queue.storage.admin().attempts(failed)) == 1  # the history stays
    assert queue.retry(failed) is False  # completed: nothing to retry
    with pytest.raises(jobs.JobNotFound):
        queue.retry("no-such-job")


def test_retry_failed_takes_the_failed_jobs_by_filter(queue: jobs.Queue) -> None:
    @queue.job(retries=0)
    def broken(n: int) -> None:
        raise RuntimeError("broken")

    @queue.job(retries=0)
    def other(n: int) -> None:
        raise RuntimeError("other")

    ids = queue.enqueue_many([("broken", i) for i in range(5)] + [("other", 9)])
    with queue.worker(**FAST):
        wait_for(lambda: all(_failed(queue, i) for i in ids))
    sql(
        queue.storage,
        "UPDATE sdj_jobs SET finished_at = :t WHERE id = :id",
        t=queue.storage.dialect.time_param(utcnow() - timedelta(days=2)),
        id=ids[0],
    )
    assert queue.retry_failed(type="broken", since=timedelta(days=1)) == 4
    statuses = [_job(queue, i).status for i in ids]
    assert statuses == [jobs.JobStatus.FAILED] + [jobs.JobStatus.PENDING] * 4 + [
        jobs.JobStatus.FAILED
    ]
    assert queue.retry_failed(queue="elsewhere") == 0
    assert queue.retry_failed() == 2


def test_retry_failed_goes_in_batches(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    ids = queue.enqueue_many([("gone", i) for i in range(7)])
    now = storage.dialect.time_param(utcnow())
    sql(storage, "UPDATE sdj_jobs SET status = 'failed', finished_at = :t", t=now)
    count, queues = dead_letters.retry_failed(storage, batch=2)
    assert (count, queues) == (7, {"default"})
    assert all(_job(queue, i).status is jobs.JobStatus.PENDING for i in ids)
    assert all(_job(queue, i).attempt == 0 for i in ids)


def test_bad_retry_input_is_refused(queue: jobs.Queue) -> None:
    with pytest.raises(ValueError, match="negative"):
        queue.retry_failed(since=timedelta(days=-1))
    with pytest.raises(TypeError, match="datetime or a timedelta"):
        queue.retry_failed(since="yesterday")  # type: ignore[arg-type]
