"""``queue.explain``: every reason code, each with its real condition set up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.job import utcnow
from tests.helpers import run_to_end, wait_for

ROOT = Path(__file__).resolve().parents[2]
Reason = jobs.ExplainReason
FAST: dict[str, Any] = {"poll_interval": 0.05, "lock_timeout": 5}


def explained(queue: jobs.Queue, job_id: str, reason: jobs.ExplainReason) -> jobs.Explanation:
    """The job's explanation once it gives ``reason`` (conditions settle in the background)."""
    found = wait_for(lambda: (e := queue.explain(job_id)).reason is reason and e, timeout=30)
    assert isinstance(found, jobs.Explanation)
    return found


def status_of(queue: jobs.Queue, job_id: str) -> jobs.JobStatus | None:
    job = queue.get_job(job_id)
    return None if job is None else job.status


# -- without workers ----------------------------------------------------------------------


def test_an_unknown_id_is_not_found(queue: jobs.Queue) -> None:
    found = queue.explain("no-such-job")
    assert found.reason is Reason.NOT_FOUND and found.job_id == "no-such-job"
    assert "no-such-job" in found.message
    assert found.to_dict()["reason"] == "not_found"


def test_finished_jobs_say_how_and_when(queue: jobs.Queue) -> None:
    @queue.job()
    def fine() -> int:
        return 1

    @queue.job(retries=0)
    def broken() -> None:
        raise ValueError("no luck")

    done = run_to_end(queue, queue.enqueue("fine"))
    failed = run_to_end(queue, queue.enqueue("broken"))
    cancelled = queue.enqueue("fine", delay=3600)
    assert queue.cancel(cancelled)

    ok = queue.explain(done.id)
    assert ok.reason is Reason.FINISHED and ok.facts["status"] == "completed"
    assert ok.facts["finished_at"] == done.finished_at and "completed at" in ok.message
    bad = queue.explain(failed.id)
    assert bad.facts["status"] == "failed" and "ValueError: no luck" in bad.message
    assert bad.facts["error"] == "ValueError: no luck"
    gone = queue.explain(cancelled)
    assert gone.reason is Reason.FINISHED and gone.facts["status"] == "cancelled"
    assert "was cancelled" in gone.message


def test_a_paused_job(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("anything")
    assert queue.pause(job_id)
    found = queue.explain(job_id)
    assert found.reason is Reason.JOB_PAUSED
    assert found.facts["resumes_to"] == "pending" and "resumed" in found.message
    queue.resume(job_id)
    assert queue.explain(job_id).reason is not Reason.JOB_PAUSED


def test_a_paused_queue(queue: jobs.Queue) -> None:
    queue.pause_queue("emails")
    job_id = queue.enqueue("send", queue="emails")
    try:
        found = queue.explain(job_id)
        paused_at = queue.paused_queues()["emails"]
    finally:
        queue.resume_queue("emails")
    assert found.reason is Reason.QUEUE_PAUSED
    assert found.facts["queue"] == "emails"
    assert found.facts["paused_at"] == paused_at
    assert "'emails' is paused" in found.message


def test_a_delayed_job_and_a_retry_waiting_for_its_time(queue: jobs.Queue) -> None:
    later = queue.enqueue("anything", delay=timedelta(hours=2))
    found = queue.explain(later)
    assert found.reason is Reason.DELAYED
    job = queue.get_job(later)
    assert job is not None and found.facts["run_at"] == job.run_at
    assert 7000 < found.facts["seconds"] <= 7200 and "2 h from now" in found.message

    @queue.job(retries=1, backoff=jobs.constant(3600))
    def flaky() -> None:
        raise RuntimeError("try again")

    retried = queue.enqueue("flaky")
    with queue.worker(**FAST):
        wait_for(lambda: status_of(queue, retried) is jobs.JobStatus.RETRYING)
    again = queue.explain(retried)
    assert again.reason is Reason.DELAYED and again.facts["status"] == "retrying"
    assert "RuntimeError: try again" in again.message


def test_no_live_worker_serves_the_queue(queue: jobs.Queue) -> None:
    job_id = queue.enqueue("anything", queue="nobody-serves-this")
    found = queue.explain(job_id)
    assert found.reason is Reason.NO_WORKER_FOR_QUEUE
    assert found.facts["queue"] == "nobody-serves-this"


# -- waiting ---------------------------------------------------------------------------


def test_waiting_on_a_sleep_a_signal_and_children(queue: jobs.Queue) -> None:
    @queue.job()
    def napper() -> None:
        jobs.sleep(timedelta(hours=1))

    @queue.job()
    def approver() -> None:
        jobs.wait_for_signal("approval")

    @queue.job()
    def child(n: int) -> int:
        if n == 2:
            jobs.wait_for_signal("never")
        return n

    @queue.job()
    def parent() -> None:
        jobs.fan_out([jobs.sub("child", 1), jobs.sub("child", 2), jobs.sub("child", 3)])

    nap, approve, fan = queue.enqueue("napper"), queue.enqueue("approver"), queue.enqueue("parent")
    with queue.worker(**FAST):
        sleeping = explained(queue, nap, Reason.WAITING)
        signalled = explained(queue, approve, Reason.WAITING)
        # Two of the three children finish; the other waits for ever.
        children = wait_for(
            lambda: (e := queue.explain(fan)).facts.get("children_finished") == 2 and e
        )
    assert sleeping.facts["waiting_for"] == "sleep"
    until = sleeping.facts["until"]
    assert timedelta(minutes=59) < until - utcnow() <= timedelta(hours=1)
    assert "sleeps until" in sleeping.message
    assert signalled.facts["waiting_for"] == "signal"
    assert signalled.facts["signal"] == "approval" and "'approval'" in signalled.message
    assert isinstance(children, jobs.Explanation)
    assert children.reason is Reason.WAITING and children.facts["children_total"] == 3
    assert "2 of 3 finished" in children.message


# -- limits (the handlers are registered in this process) ---------------------------------


def test_a_concurrency_cap_at_its_limit(queue: jobs.Queue) -> None:
    release = threading.Event()

    @queue.job(concurrency=1)
    def solo(n: int) -> int:
        assert release.wait(30)
        return n

    first = queue.enqueue("solo", 1)
    with queue.worker(**FAST):
        wait_for(lambda: status_of(queue, first) is jobs.JobStatus.RUNNING)
        second = queue.enqueue("solo", 2)
        try:
            held = queue.explain(second)
            running = queue.explain(first)
        finally:
            release.set()
        wait_for(lambda: status_of(queue, second) is jobs.JobStatus.COMPLETED)
    assert held.reason is Reason.CONCURRENCY_CAP
    assert held.facts["running"] == 1 and held.facts["cap"] == 1 and held.facts["type"] == "solo"
    assert "1 of 1 running" in held.message
    assert running.reason is Reason.RUNNING


def test_a_keyed_cap_holds_only_its_key(queue: jobs.Queue) -> None:
    release = threading.Event()

    @queue.job(concurrency=1, concurrency_key=lambda account: account)
    def sync(account: str) -> str:
        assert release.wait(30)
        return account

    first = queue.enqueue("sync", "acme")
    with queue.worker(**FAST):
        wait_for(lambda: status_of(queue, first) is jobs.JobStatus.RUNNING)
        same = queue.enqueue("sync", "acme")
        try:
            held = queue.explain(same)
        finally:
            release.set()
    assert held.reason is Reason.CONCURRENCY_CAP and held.facts["key"] == "acme"
    assert "for key 'acme': 1 of 1 running" in held.message


def test_the_order_running_beats_paused_and_paused_beats_waiting(queue: jobs.Queue) -> None:
    release = threading.Event()

    @queue.job()
    def busy() -> None:
        assert release.wait(30)

    @queue.job()
    def napper() -> None:
        jobs.sleep(timedelta(hours=1))

    running, nap = queue.enqueue("busy"), queue.enqueue("napper")
    with queue.worker(**FAST):
        wait_for(lambda: status_of(queue, running) is jobs.JobStatus.RUNNING)
        wait_for(lambda: status_of(queue, nap) is jobs.JobStatus.WAITING)
        queue.pause_queue("default")  # stops claims, not the run under way
        assert queue.pause(running)  # held once it would run again
        try:
            found = queue.explain(running)
        finally:
            release.set()
        queue.resume_queue("default")
    assert found.reason is Reason.RUNNING and found.facts["pause_requested"] is True
    assert queue.pause(nap)
    paused = queue.explain(nap)
    assert paused.reason is Reason.JOB_PAUSED and paused.facts["waiting_for"] == "sleep"
    assert "held once it wakes" in paused.message


def test_a_spent_rate_limit(queue: jobs.Queue) -> None:
    @queue.job(rate_limit="1/h")
    def rare(n: int) -> int:
        return n

    first = queue.enqueue("rare", 1)
    second = queue.enqueue("rare", 2)
    with queue.worker(**FAST):
        wait_for(lambda: status_of(queue, first) is jobs.JobStatus.COMPLETED)
        found = queue.explain(second)
    assert status_of(queue, second) is jobs.JobStatus.PENDING
    assert found.reason is Reason.RATE_LIMIT
    assert found.facts["rate_limit"] == "1/h" and found.facts["tokens"] < 1
    assert 3500 < found.facts["next_token_in"] <= 3600


# -- live and dead worker processes ------------------------------------------------------


@pytest.fixture
def busy_worker(queue: jobs.Queue, db_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process with one slot on "default", taken by a ``hold`` job (given as
    ``.job_id``) that runs until cancelled."""
    env = {**os.environ, "SDJ_DATABASE_URL": db_url}
    proc = subprocess.Popen([sys.executable, "-m", "tests.procs.explain_app"], cwd=ROOT, env=env)
    try:
        held = queue.enqueue("hold")
        wait_for(lambda: status_of(queue, held) is jobs.JobStatus.RUNNING, timeout=60)
        proc.job_id = held  # type: ignore[attr-defined]
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_with_a_busy_live_worker(queue: jobs.Queue, busy_worker: subprocess.Popen[bytes]) -> None:
    held: str = busy_worker.job_id  # type: ignore[attr-defined]
    running = queue.explain(held)
    assert running.reason is Reason.RUNNING and running.facts["worker_live"] is True
    [worker] = queue.storage.live_workers(timedelta(minutes=1))
    assert running.facts["worker"] == worker.id and worker.pid == busy_worker.pid
    assert 0 <= running.facts["heartbeat_age"] < 30
    assert f"running on worker {worker.id}, last heartbeat" in running.message

    ahead = [queue.enqueue("ping") for _ in range(3)]
    target = queue.enqueue("ping")
    mystery = queue.enqueue("mystery")  # no worker has its handler
    elsewhere = queue.enqueue("ping", queue="other")
    line = queue.explain(target)
    assert line.reason is Reason.NEXT_IN_LINE and line.facts["ahead"] == 3
    assert line.facts["serving_workers"] == [worker.id]
    assert "behind 3 due job(s)" in line.message
    assert queue.explain(ahead[0]).facts["ahead"] == 0
    unknown = queue.explain(mystery)
    assert unknown.reason is Reason.NO_WORKER_FOR_TYPE
    assert unknown.facts["serving_workers"] == [worker.id] and "'mystery'" in unknown.message
    assert queue.explain(elsewhere).reason is Reason.NO_WORKER_FOR_QUEUE


def age_worker(storage: jobs.SQLStorage, worker_id: str, by: timedelta) -> None:
    """Set the worker's last heartbeat ``by`` in the past, as if that much time passed."""
    old = storage.dialect.time_param(utcnow() - by)
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE sdj_workers SET heartbeat_at = :old WHERE id = :id"),
            {"old": old, "id": worker_id},
        )


@pytest.mark.slow
def test_a_running_job_whose_worker_died(
    queue: jobs.Queue, busy_worker: subprocess.Popen[bytes]
) -> None:
    held: str = busy_worker.job_id  # type: ignore[attr-defined]
    [worker] = queue.storage.live_workers(timedelta(minutes=1))
    busy_worker.send_signal(signal.SIGKILL)
    busy_worker.wait(10)
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    age_worker(storage, worker.id, timedelta(minutes=2))
    found = queue.explain(held)
    assert found.reason is Reason.RUNNING
    assert found.facts["worker"] == worker.id and found.facts["worker_live"] is False
    assert "that worker is gone" in found.message and "taken back" in found.message
    job = queue.get_job(held)
    assert job is not None and found.facts["lock_expires_at"] == job.lock_expires_at


@pytest.mark.slow
def test_a_dead_workers_entry_is_pruned_by_a_live_workers_reaper(
    queue: jobs.Queue, busy_worker: subprocess.Popen[bytes]
) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    [dead] = storage.live_workers(timedelta(minutes=1))
    busy_worker.send_signal(signal.SIGKILL)
    busy_worker.wait(10)
    age_worker(storage, dead.id, timedelta(seconds=30))
    assert [w.id for w in storage.live_workers(timedelta(days=1))] == [dead.id]  # kept so far
    # A reaper prunes entries silent for 10 lock timeouts: 10 s for this worker's.
    with queue.worker(["other"], poll_interval=0.05, lock_timeout=1) as live:
        wait_for(lambda: [w.id for w in storage.live_workers(timedelta(days=1))] == [live.id])
