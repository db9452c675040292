"""Workers and locks: fences after an operator's retry, each worker's own lock timeout,
and the backoff of a job taken back from a dead worker (both backends)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from functools import partial

import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.job import Job
from durable_jobs.storage.admin import Admin
from durable_jobs.testing import FakeClock, drain
from tests.helpers import wait_for


def get(queue: jobs.Queue, job_id: str) -> jobs.Job:
    job = queue.get_job(job_id)
    assert job is not None
    return job


def sql_storage(queue: jobs.Queue) -> jobs.SQLStorage:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    return storage


def expiry(queue: jobs.Queue, job_id: str) -> datetime:
    expires = get(queue, job_id).lock_expires_at
    assert expires is not None
    return expires


def extended(queue: jobs.Queue, job_id: str, since: datetime) -> bool:
    return expiry(queue, job_id) > since


def test_a_stale_run_is_fenced_out_after_an_operator_retry(queue: jobs.Queue) -> None:
    # A run stalls past its lock, is taken back and fails (no retries left); an operator
    # retries the job and the same worker runs it again while the old run still finishes.
    entered = [threading.Event(), threading.Event()]
    proceed = [threading.Event(), threading.Event()]
    runs: list[int] = []
    lock = threading.Lock()

    @queue.job(retries=0)
    def slow() -> str:
        with lock:
            run = len(runs)
            runs.append(run)
        entered[run].set()
        proceed[run].wait(30)
        return f"run-{run}"

    completed: list[bytes | None] = []
    queue.on_job_complete(lambda job: completed.append(job.result))
    job_id = queue.enqueue(slow)
    storage = sql_storage(queue)
    with queue.worker(poll_interval=0.05, lock_timeout=1) as worker:
        assert entered[0].wait(10)
        with storage.engine.begin() as conn:  # what the reaper does when retries are spent
            conn.execute(
                sa.text(
                    "UPDATE sdj_jobs SET status = 'failed', locked_by = NULL,"
                    " heartbeat_at = NULL, lock_expires_at = NULL WHERE id = :id"
                ),
                {"id": job_id},
            )
        assert Admin(storage).retry(job_id) is not None
        worker.wake_all()
        assert entered[1].wait(10), "the worker did not claim the retried job"
        assert get(queue, job_id).attempt == 1  # the retried job's first run
        proceed[0].set()  # the stale run ends: its outcome must be rejected
        wait_for(lambda: len(worker._dispatcher.active) == 1)
        # The new run keeps its lock: it outlives several lock timeouts.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            storage.release_expired_locks()
            job = get(queue, job_id)
            assert job.status == jobs.JobStatus.RUNNING and job.result is None, job
            time.sleep(0.1)
        proceed[1].set()
        wait_for(lambda: get(queue, job_id).status == jobs.JobStatus.COMPLETED)
    job = get(queue, job_id)
    assert job.result == b'"run-1"' and job.attempt == 1 and job.fence == 2
    wait_for(lambda: completed)
    assert completed == [b'"run-1"']


def test_a_worker_locks_jobs_for_its_own_lock_timeout(queue: jobs.Queue) -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    @queue.job()
    def hold() -> None:
        started.release()
        release.wait(30)

    claimed = queue.enqueue(hold)  # claimed by the worker's claim
    try:
        with queue.worker({"default": 2}, poll_interval=0.05, lock_timeout=1.5):
            assert started.acquire(timeout=10)
            direct = queue.enqueue(hold)  # stored already claimed by the worker
            assert started.acquire(timeout=10)
            for job_id in (claimed, direct):
                first = expiry(queue, job_id)
                assert first - datetime.now(UTC) <= timedelta(seconds=1.5)
                # Heartbeats extend the lock by the worker's timeout too, not a default.
                wait_for(partial(extended, queue, job_id, first))
                assert expiry(queue, job_id) - datetime.now(UTC) <= timedelta(seconds=1.5)
            release.set()
    finally:
        release.set()


def test_a_job_taken_back_from_a_dead_worker_waits_its_backoff(
    storage: jobs.SQLStorage,
) -> None:
    clock = FakeClock()
    queue = jobs.Queue(storage, clock=clock)
    ran = threading.Event()
    queue.register("t", lambda: ran.set(), backoff=jobs.constant(120))
    # Enqueued by a producer that does not know the handler (no policy stored), and
    # claimed by a worker that died at once: it never heartbeats.
    job_id = storage.enqueue(Job(type="t"))
    [lost] = storage.claim("default", "dead-worker", 1, lock_timeout=0.1)
    assert lost.id == job_id
    clock.advance(seconds=0.2)
    drain(queue)  # as a worker's reaper, and nothing to run
    job = get(queue, job_id)
    assert job.status == jobs.JobStatus.RETRYING
    assert job.last_error is not None and "dead-worker" in job.last_error
    # It waits its handler's backoff instead of running again at once.
    assert job.run_at == clock.now() + timedelta(seconds=120)
    assert job.attempt == 1 and not ran.is_set()
    clock.advance(seconds=120)
    assert drain(queue).completed == 1 and ran.is_set()
