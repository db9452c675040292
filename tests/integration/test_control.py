"""Job control on every backend: cancel (with children, of running handlers), pause and
resume of jobs and queues, run timeouts and ``should_stop``."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest

import durable_jobs as jobs
from tests.helpers import wait_for

FAST = {"poll_interval": 0.05, "lock_timeout": 5}


def _status(queue: jobs.Queue, job_id: str) -> jobs.JobStatus:
    job = queue.get_job(job_id)
    assert job is not None
    return job.status


def _reaches(queue: jobs.Queue, job_id: str, status: jobs.JobStatus) -> None:
    wait_for(lambda: _status(queue, job_id) is status)


# -- cancel --------------------------------------------------------------------------------


def test_cancel_a_pending_job(queue: jobs.Queue, events: list[jobs.Event]) -> None:
    ran: list[int] = []
    hooked: list[str] = []
    queue.register("work", ran.append)
    queue.on_cancel(lambda job: hooked.append(job.id))
    job_id = queue.enqueue("work", 1)
    assert queue.cancel(job_id) is True
    assert queue.cancel(job_id) is False  # finished already
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.CANCELLED
    assert job.finished_at is not None and job.status.is_terminal
    with pytest.raises(jobs.JobCancelled, match="was cancelled"):
        queue.result(job_id, timeout=5)
    marker = queue.enqueue("work", 2)
    with queue.worker(**FAST):
        assert queue.result(marker, timeout=10) is None
    assert ran == [2]
    assert hooked == [job_id]
    wait_for(lambda: any(isinstance(e, jobs.JobCancelled) for e in events))
    with pytest.raises(jobs.JobNotFound):
        queue.cancel("no-such-job")


def test_cancel_stops_a_sync_handler_at_its_next_call(queue: jobs.Queue) -> None:
    steps: list[int] = []
    stopped: list[BaseException] = []

    @queue.job()
    def step(i: int) -> int:
        steps.append(i)
        return i

    @queue.job()
    def loop() -> str:
        try:
            for i in range(100_000):
                jobs.call(step, i)
                time.sleep(0.005)
        except jobs.Cancelled as exc:
            stopped.append(exc)
            raise
        return "finished"

    job_id = queue.enqueue(loop)
    with queue.worker(**FAST):
        wait_for(lambda: len(steps) >= 3)
        assert queue.cancel(job_id) is True
        wait_for(lambda: stopped)
        taken = len(steps)
        with pytest.raises(jobs.JobCancelled):
            queue.result(job_id, timeout=5)
    assert len(steps) == taken  # no step after the cancel
    assert "cancelled" in str(stopped[0])
    assert _status(queue, job_id) is jobs.JobStatus.CANCELLED


def test_cancel_cancels_the_task_of_an_async_handler(queue: jobs.Queue) -> None:
    started = threading.Event()
    cancelled = threading.Event()

    @queue.job()
    async def nap() -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "woke"

    job_id = queue.enqueue(nap)
    with queue.worker(**FAST):
        assert started.wait(10)
        begin = time.monotonic()
        queue.cancel(job_id)
        assert cancelled.wait(5)
        assert time.monotonic() - begin < 1
    assert _status(queue, job_id) is jobs.JobStatus.CANCELLED


def test_should_stop_turns_true_when_the_job_is_cancelled(queue: jobs.Queue) -> None:
    seen: list[bool] = []

    @queue.job()
    def poll() -> None:
        seen.append(jobs.should_stop())
        while not jobs.should_stop():
            time.sleep(0.01)
        seen.append(True)

    job_id = queue.enqueue(poll)
    with queue.worker(**FAST):
        wait_for(lambda: seen)
        queue.cancel(job_id)
        wait_for(lambda: len(seen) == 2)
    assert seen == [False, True]
    with pytest.raises(jobs.NotInJobError):
        jobs.should_stop()


def test_a_returned_value_after_a_cancel_changes_nothing(queue: jobs.Queue) -> None:
    release = threading.Event()
    started = threading.Event()

    @queue.job()
    def stubborn() -> str:
        started.set()
        release.wait(10)  # never calls the library: learns of nothing
        return "done anyway"

    job_id = queue.enqueue(stubborn)
    with queue.worker(**FAST) as worker:
        assert started.wait(10)
        queue.cancel(job_id)
        release.set()
        wait_for(lambda: not worker._dispatcher.active)
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.CANCELLED and job.result is None


def test_cancel_takes_the_unfinished_subtree_in_one_go(queue: jobs.Queue) -> None:
    @queue.job(queue="leaves")
    def leaf(n: int) -> int:
        return n

    @queue.job(queue="kids")
    def kid(n: int) -> None:
        jobs.fan_out([jobs.sub(leaf, n * 10 + i) for i in range(2)])

    @queue.job()
    def root() -> None:
        jobs.fan_out([jobs.sub(kid, n) for n in range(3)])

    root_id = queue.enqueue(root)
    with queue.worker({"default": 1, "kids": 3}, **FAST):
        wait_for(lambda: len(queue.storage.get_jobs_by_status("waiting", 100)) == 4)
    admin = queue.storage.admin()
    kids = admin.children(root_id).first
    leaves = [leaf for k in kids for leaf in admin.children(k.id).first]
    assert len(kids) == 3 and len(leaves) == 6
    assert queue.cancel(root_id) is True
    for job in [*kids, *leaves]:
        assert _status(queue, job.id) is jobs.JobStatus.CANCELLED
    with queue.worker(**FAST):  # nothing left to run: the leaves never run
        marker = queue.enqueue("leaf", 99, queue="leaves")
        assert queue.result(marker, timeout=10) == 99
    assert all(_status(queue, job.id) is jobs.JobStatus.CANCELLED for job in leaves)


def test_a_cancelled_child_counts_as_failed_in_its_parents_wait(queue: jobs.Queue) -> None:
    @queue.job(queue="kids")
    def kid(n: int) -> int:
        return n

    @queue.job()
    def parent() -> list[tuple[bool, str | None]]:
        results = jobs.fan_out([jobs.sub(kid, n) for n in range(3)], on_failure="collect")
        return [(r.ok, r.error) for r in results]

    parent_id = queue.enqueue(parent)
    with queue.worker({"default": 1}, **FAST):
        _reaches(queue, parent_id, jobs.JobStatus.WAITING)
    first, *_ = queue.storage.admin().children(parent_id).first
    assert queue.cancel(first.id) is True
    assert _status(queue, parent_id) is jobs.JobStatus.WAITING  # the parent itself is not
    with queue.worker(**FAST):
        outcome = queue.result(parent_id, timeout=20)
    assert outcome == [[False, "cancelled"], [True, None], [True, None]]


def test_cancel_of_a_sleeping_job_ends_it(queue: jobs.Queue) -> None:
    @queue.job()
    def nap() -> None:
        jobs.sleep(0.3)
        raise AssertionError("never resumed")

    job_id = queue.enqueue(nap)
    with queue.worker(**FAST):
        _reaches(queue, job_id, jobs.JobStatus.WAITING)
        queue.cancel(job_id)
        marker = queue.enqueue("nap")  # one more sleeper, to see the first one's deadline pass
        _reaches(queue, marker, jobs.JobStatus.WAITING)
        wait_for(lambda: _status(queue, marker) is not jobs.JobStatus.WAITING)
    assert _status(queue, job_id) is jobs.JobStatus.CANCELLED


# -- pause ---------------------------------------------------------------------------------


def test_a_paused_job_is_not_claimed_until_resumed(
    queue: jobs.Queue, events: list[jobs.Event]
) -> None:
    queue.register("work", lambda n: n)
    held = queue.enqueue("work", 1)
    assert queue.pause(held) is True
    assert queue.pause(held) is False  # paused already
    job = queue.get_job(held)
    assert job is not None and job.status is jobs.JobStatus.PAUSED and job.paused_from == "pending"
    with queue.worker(**FAST):
        after = queue.enqueue("work", 2)
        assert queue.result(after, timeout=10) == 2  # claimed after the paused one
        assert _status(queue, held) is jobs.JobStatus.PAUSED
        assert queue.resume(held) is True
        assert queue.result(held, timeout=10) == 1
    assert queue.resume(held) is False
    assert any(isinstance(e, jobs.JobPaused) and e.job.id == held for e in events)
    with pytest.raises(jobs.JobNotFound):
        queue.pause("no-such-job")
    with pytest.raises(jobs.JobNotFound):
        queue.resume("no-such-job")


def test_a_running_job_paused_finishes_its_run_and_is_held_before_its_retry(
    queue: jobs.Queue,
) -> None:
    started = threading.Event()
    release = threading.Event()
    runs: list[int] = []

    @queue.job(retries=2, backoff=jobs.constant(0))
    def flaky() -> str:
        runs.append(jobs.current_job().attempt)
        if len(runs) == 1:
            started.set()
            release.wait(10)
            raise ValueError("first run fails")
        return "second run"

    job_id = queue.enqueue(flaky)
    with queue.worker(**FAST):
        assert started.wait(10)
        assert queue.pause(job_id) is True
        assert _status(queue, job_id) is jobs.JobStatus.RUNNING  # its run goes on
        release.set()
        _reaches(queue, job_id, jobs.JobStatus.PAUSED)
        job = queue.get_job(job_id)
        assert job is not None and job.paused_from == "retrying" and runs == [1]
        assert queue.resume(job_id) is True
        assert queue.result(job_id, timeout=10) == "second run"
    assert runs == [1, 2]


def test_a_waiting_job_paused_is_held_when_its_wait_ends(queue: jobs.Queue) -> None:
    resumed: list[bool] = []

    @queue.job()
    def nap() -> str:
        jobs.sleep(0.2)
        resumed.append(True)
        return "rested"

    job_id = queue.enqueue(nap)
    with queue.worker(**FAST):
        _reaches(queue, job_id, jobs.JobStatus.WAITING)
        assert queue.pause(job_id) is True
        _reaches(queue, job_id, jobs.JobStatus.PAUSED)  # the wait ended: held
        assert resumed == []
        queue.resume(job_id)
        assert queue.result(job_id, timeout=10) == "rested"
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 1  # a resume, not a retry


def test_a_paused_queue_is_not_claimed_from_until_resumed(queue: jobs.Queue) -> None:
    queue.register("mail", lambda n: n, queue="emails")
    queue.register("ping", lambda: "pong")
    queue.pause_queue("emails")
    assert set(queue.paused_queues()) == {"emails"}
    with queue.worker(**FAST):
        # A free slot in this process: not even the claimed insert starts it.
        held = queue.enqueue("mail", 1)
        # Claimed after the paused one was stored: the worker has looked since.
        assert queue.result(queue.enqueue("ping"), timeout=10) == "pong"
        assert _status(queue, held) is jobs.JobStatus.PENDING
        queue.resume_queue("emails")
        assert queue.result(held, timeout=10) == 1
    assert queue.paused_queues() == {}
    with pytest.raises(ValueError, match="queue"):
        queue.pause_queue("")


# -- timeouts ------------------------------------------------------------------------------


def test_a_run_over_its_timeout_fails_with_job_timeout_and_is_retried(queue: jobs.Queue) -> None:
    runs: list[int] = []

    @queue.job(timeout=0.3, retries=1, backoff=jobs.constant(0))
    def slow() -> None:
        runs.append(1)
        while True:
            jobs.set_progress(len(runs))
            time.sleep(0.01)

    job_id = queue.enqueue(slow)
    with queue.worker(**FAST), pytest.raises(jobs.JobFailed) as failed:
        queue.result(job_id, timeout=20)
    assert runs == [1, 1]  # retried per its policy
    assert "JobTimeout" in str(failed.value.error) and "timeout of 0.3 s" in str(failed.value)


def test_an_async_run_over_its_timeout_is_cancelled(queue: jobs.Queue) -> None:
    @queue.job(retries=0)
    async def nap() -> str:
        await asyncio.sleep(60)
        return "woke"

    job_id = queue.enqueue(nap, timeout=timedelta(seconds=0.2))
    begin = time.monotonic()
    with queue.worker(**FAST), pytest.raises(jobs.JobFailed, match="JobTimeout"):
        queue.result(job_id, timeout=20)
    assert time.monotonic() - begin < 5
    job = queue.get_job(job_id)
    assert job is not None and job.timeout is not None and job.timeout.total_seconds() == 0.2


def test_a_run_that_returns_after_its_timeout_fails(queue: jobs.Queue) -> None:
    @queue.job(timeout=0.1, retries=0)
    def oblivious() -> str:
        time.sleep(0.3)  # never calls the library
        return "late"

    job_id = queue.enqueue(oblivious)
    with queue.worker(**FAST), pytest.raises(jobs.JobFailed, match="JobTimeout"):
        queue.result(job_id, timeout=20)


def test_an_enqueue_timeout_overrides_the_registered_one(queue: jobs.Queue) -> None:
    queue.register("quick", lambda: None, timeout=30)
    job_id = queue.enqueue("quick", timeout=5)
    job = queue.get_job(job_id)
    assert job is not None and job.timeout is not None and job.timeout.total_seconds() == 5
    with pytest.raises(ValueError, match="timeout"):
        queue.enqueue("quick", timeout=0)


def test_should_stop_turns_true_when_the_worker_stops(queue: jobs.Queue) -> None:
    looping = threading.Event()

    @queue.job()
    def patient() -> str:
        looping.set()
        while not jobs.should_stop():
            time.sleep(0.01)
        return "stopped politely"

    job_id = queue.enqueue(patient)
    worker = queue.worker(**FAST)
    worker.start()
    assert looping.wait(10)
    worker.stop(timeout=10)  # returns once the handler has seen should_stop() and ended
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.COMPLETED


def test_the_registered_timeout_holds_for_jobs_stored_without_one(queue: jobs.Queue) -> None:
    @queue.job(timeout=0.1, retries=0)
    def slowpoke() -> int:
        time.sleep(0.3)
        return 1

    # As stored by a producer that does not know the handler: no timeout in the row.
    job_id = queue.storage.enqueue(jobs.Job(type="slowpoke"))
    job = queue.get_job(job_id)
    assert job is not None and job.timeout is None
    with queue.worker(**FAST), pytest.raises(jobs.JobFailed, match="JobTimeout"):
        queue.result(job_id, timeout=20)
