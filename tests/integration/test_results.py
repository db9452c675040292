"""``Queue.result`` and ``result_async``: the outcome of a job, waited for and decoded."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest

import durable_jobs as jobs

FAST: dict[str, Any] = {"poll_interval": 0.05, "lock_timeout": 5}


@dataclass
class Invoice:
    number: int
    total: float


def register(queue: jobs.Queue) -> None:
    @queue.job()
    def invoice(number: int) -> Invoice:
        return Invoice(number, number * 1.5)

    @queue.job(retries=0)
    def broken() -> None:
        raise ValueError("boom in the handler")


def test_a_completed_job_returns_its_value_in_the_handlers_return_type(
    queue: jobs.Queue,
) -> None:
    register(queue)
    job_id = queue.enqueue("invoice", 7)
    with queue.worker(**FAST):
        assert queue.result(job_id, timeout=30) == Invoice(7, 10.5)


def test_without_the_handler_the_result_is_plain_json(queue: jobs.Queue) -> None:
    register(queue)
    job_id = queue.enqueue("invoice", 2)
    with queue.worker(**FAST):
        queue.result(job_id, timeout=30)
    elsewhere = jobs.Queue(queue.storage)  # a process that knows no handlers
    assert elsewhere.result(job_id, timeout=1) == {"number": 2, "total": 3.0}


def test_a_failed_job_raises_job_failed_with_its_stored_traceback(queue: jobs.Queue) -> None:
    register(queue)
    job_id = queue.enqueue("broken")
    with queue.worker(**FAST), pytest.raises(jobs.JobFailed) as caught:
        queue.result(job_id, timeout=30)
    failed = caught.value
    assert failed.job.id == job_id and failed.job.status is jobs.JobStatus.FAILED
    assert isinstance(failed.error, jobs.FailedRun)
    assert failed.error.message == "ValueError: boom in the handler"
    assert failed.error.traceback is not None
    assert 'raise ValueError("boom in the handler")' in failed.error.traceback
    assert "boom in the handler" in str(failed)


def test_no_outcome_within_the_timeout_raises_timeout_error(queue: jobs.Queue) -> None:
    register(queue)
    job_id = queue.enqueue("invoice", 1)  # no worker runs it
    with pytest.raises(TimeoutError, match="still pending"):
        queue.result(job_id, timeout=0.2)
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.PENDING


def test_an_unknown_id_raises_job_not_found(queue: jobs.Queue) -> None:
    with pytest.raises(jobs.JobNotFound, match="no-such-job"):
        queue.result("no-such-job", timeout=1)
    assert issubclass(jobs.JobNotFound, LookupError)


@pytest.mark.parametrize("timeout", [-1, float("nan")])
def test_a_bad_timeout_is_refused(queue: jobs.Queue, timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        queue.result("any", timeout=timeout)


def test_a_waiter_wakes_when_the_outcome_arrives(queue: jobs.Queue) -> None:
    release = threading.Event()

    @queue.job()
    def gated() -> str:
        assert release.wait(30)
        return "done"

    job_id = queue.enqueue("gated")
    answers: list[Any] = []
    with queue.worker(**FAST):
        waiter = threading.Thread(target=lambda: answers.append(queue.result(job_id, 30)))
        waiter.start()
        release.set()
        waiter.join(30)
    assert answers == ["done"]


def test_result_async_waits_without_blocking_the_loop(queue: jobs.Queue) -> None:
    register(queue)
    release = threading.Event()

    @queue.job()
    def gated() -> int:
        assert release.wait(30)
        return 42

    waited, bad = queue.enqueue("gated"), queue.enqueue("broken")

    async def main() -> tuple[Any, BaseException | None]:
        pending = asyncio.create_task(queue.result_async(waited, timeout=30))
        for _ in range(20):  # the loop keeps running while the result is awaited
            await asyncio.sleep(0.001)
        assert not pending.done()
        release.set()
        value = await pending
        try:
            await queue.result_async(bad, timeout=30)
        except jobs.JobFailed as exc:
            return value, exc
        return value, None

    with queue.worker(**FAST):
        value, error = asyncio.run(main())
    assert value == 42
    assert isinstance(error, jobs.JobFailed) and error.job.id == bad
