"""``Queue.result`` and ``result_async``: the outcome of a job, waited for and decoded."""

from __future__ import annotations

import asyncio
import operator
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs import results
from durable_jobs.results import MAX_INTERVAL
from durable_jobs.storage import SQLStorage
from tests.conftest import BACKENDS
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]

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


def test_a_waiter_wakes_within_milliseconds_of_the_outcome(queue: jobs.Queue) -> None:
    """Woken by this queue's workers' event, not by its fallback read (which by then
    comes every ``MAX_INTERVAL``): five waits, each released once the waiter has slowed
    to that interval."""
    gates = [threading.Event() for _ in range(5)]
    completed_at: dict[str, float] = {}

    @queue.job()
    def gated(n: int) -> int:
        assert gates[n].wait(30)
        return n

    queue.on_job_complete(lambda job: completed_at.setdefault(job.id, time.monotonic()))
    lags = []
    with queue.worker(**FAST):
        for n, gate in enumerate(gates):
            job_id = queue.enqueue("gated", n)
            threading.Timer(4 * MAX_INTERVAL, gate.set).start()
            assert queue.result(job_id, timeout=30) == n
            woken = time.monotonic()
            wait_for(partial(operator.contains, completed_at, job_id))  # the hook may come later
            lags.append(woken - completed_at[job_id])
    lags.sort()
    assert lags[len(lags) // 2] < MAX_INTERVAL / 4, lags  # a poll's median lag is half of it


@pytest.mark.parametrize("ending", ["complete", "fail", "cancel"])
def test_an_outcome_stored_elsewhere_wakes_the_waiter(
    queue: jobs.Queue, db_url: str, backend: str, ending: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stored through another storage (its own connections, as another process's), with
    no event here: the storage's notice wakes the waiter, whose timer would not fire
    before the result's timeout. MySQL has no notices: its waiters re-read."""
    monkeypatch.setattr(results, "WATCHED_INTERVAL", 600.0)
    job_id = queue.enqueue("t")
    other = SQLStorage(db_url)
    try:
        [job] = other.claim("default", "w", 1)
        if backend == "mysql":
            assert queue.storage.watch_outcome(job_id, lambda: None) is None
            return

        def end() -> None:
            wait_for(lambda: job_id in queue.storage._watched_outcomes())
            if ending == "complete":
                other.complete(job_id, b"5", worker_id="w", fence=job.fence)
            elif ending == "fail":
                other.fail(job_id, "boom", None, worker_id="w", fence=job.fence)
            else:
                other.cancel(job_id)

        threading.Thread(target=end).start()
        expected: dict[str, type[Exception]] = {
            "fail": jobs.JobFailed,
            "cancel": jobs.JobCancelled,
        }
        if ending == "complete":
            assert queue.result(job_id, timeout=60) == 5
        else:
            with pytest.raises(expected[ending]):
                queue.result(job_id, timeout=60)
        assert queue.storage._watched_outcomes() == []  # the watch ends with the wait
        # ... and its listener, with the last watch.
        wait_for(lambda: not any(t.name == "sdj-outcomes" for t in threading.enumerate()))
    finally:
        other.close()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_a_waiters_mark_never_hides_a_due_job_from_a_claim(
    queue: jobs.Queue, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A waiter marks its job (PostgreSQL) with an UPDATE, which holds the row's lock a
    moment; a claim meanwhile skips the job (SKIP LOCKED), and its worker, idle, would
    wait for its next poll. The mark wakes the queue's workers instead. Made certain:
    another transaction holds the row while the worker's first claim runs, and the mark
    waits for it."""
    queue.register("t", lambda: "done")
    job_id = queue.enqueue("t")
    claimed = threading.Event()
    claim = queue.storage.claim

    def observed(*args: Any, **kwargs: Any) -> list[jobs.Job]:
        try:
            return claim(*args, **kwargs)
        finally:
            claimed.set()

    monkeypatch.setattr(queue.storage, "claim", observed)
    holder = SQLStorage(db_url)
    waited: list[float] = []
    with holder.engine.connect() as conn:
        conn.exec_driver_sql("SELECT id FROM sdj_jobs WHERE id = %s FOR UPDATE", (job_id,))

        def wait() -> None:
            assert queue.result(job_id, timeout=30) == "done"
            waited.append(time.monotonic())

        waiter = threading.Thread(target=wait)
        waiter.start()
        blocked = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        wait_for(lambda: holder._execute(blocked, {}, write=False)[0][0] > 0)
        with queue.worker(poll_interval=30.0):
            assert claimed.wait(10)
            assert not waited
            conn.rollback()  # the mark goes on, and commits
            released = time.monotonic()
            waiter.join(20)
    holder.close()
    assert waited and waited[0] - released < 10  # not the next poll, 30 s away


@pytest.mark.slow
def test_a_job_completed_by_another_process(queue: jobs.Queue, db_url: str) -> None:
    """No worker here: the outcome comes from a worker process, noticed (or on MySQL
    read within ``MAX_INTERVAL``) soon after its commit."""
    env = {**os.environ, "SDJ_DATABASE_URL": db_url}
    proc = subprocess.Popen([sys.executable, "-m", "tests.procs.explain_app"], cwd=ROOT, env=env)
    try:
        wait_for(lambda: queue.storage.live_workers(timedelta(minutes=1)), timeout=60)
        for _ in range(3):
            job_id = queue.enqueue("ping")
            assert queue.result(job_id, timeout=30) == "pong"
            returned = datetime.now(UTC)
            job = queue.get_job(job_id)
            assert job is not None and job.finished_at is not None
            assert job.finished_by is not None  # a worker of the other process
            assert returned - job.finished_at < timedelta(seconds=MAX_INTERVAL + 0.4)
    finally:
        proc.kill()
        proc.wait(10)
