"""Slow hooks: the backlog of stored outcomes waiting for them is bounded, and what is
queued runs before ``stop()`` returns, within its timeout."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import durable_jobs as jobs
from tests.helpers import wait_for

FAST = {"poll_interval": 0.05, "lock_timeout": 5}
# The worker's bound (64 outcomes whose hooks have not run), the batch accepted over it,
# and the one stored while waiting for room: a batch is at most every job a worker with
# 10 slots can hold claimed (16 times its concurrency for quick jobs).
MOST_UNREPORTED = 64 + 2 * 160


def completed(queue: jobs.Queue) -> int:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        count = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM sdj_jobs WHERE status = 'completed'"
        ).scalar()
    return int(count or 0)


def settled_count(read: object) -> int:
    """``read()`` once it has stopped changing for a second (or reached its end)."""
    assert callable(read)
    last, since = read(), time.monotonic()
    while time.monotonic() - since < 1.0:
        time.sleep(0.05)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return int(last)


def test_a_stuck_hook_holds_back_the_worker_instead_of_piling_up_outcomes(
    queue: jobs.Queue,
) -> None:
    total = 1000
    release = threading.Event()
    fired: list[str] = []
    queue.register("t", lambda: "x" * 1000)

    @queue.on_job_complete
    def stuck(job: jobs.Job) -> None:
        release.wait(60)
        fired.append(job.id)

    queue.enqueue_many([("t", None)] * total)
    with queue.worker({"default": 10}, **FAST):
        try:
            wait_for(lambda: completed(queue) > 0)
            stalled_at = settled_count(lambda: completed(queue))
        finally:
            release.set()
        assert stalled_at <= MOST_UNREPORTED, stalled_at
        wait_for(lambda: len(fired) == total, timeout=60)
    assert completed(queue) == total


def test_hooks_not_run_by_the_stop_timeout_are_counted_in_a_warning(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    release = threading.Event()
    queue.register("t", lambda: None)
    queue.on_job_complete(lambda job: release.wait(60))
    queue.enqueue_many([("t", None)] * 50)
    worker = queue.worker({"default": 10}, **FAST)
    worker.start()
    try:
        wait_for(lambda: completed(queue) == 50)
        with caplog.at_level(logging.WARNING, logger="durable_jobs"):
            worker.stop(timeout=0.2)
    finally:
        release.set()
    warned = [r.getMessage() for r in caplog.records if "before the hooks" in r.getMessage()]
    assert len(warned) == 1 and "of 50 stored outcome(s)" in warned[0], warned


def test_hooks_of_stored_outcomes_run_before_stop_returns(queue: jobs.Queue) -> None:
    total = 200
    fired: list[str] = []
    queue.register("t", lambda: None)

    @queue.on_job_complete
    def slow(job: jobs.Job) -> None:
        time.sleep(0.005)
        fired.append(job.id)

    ids = queue.enqueue_many([("t", None)] * total)
    worker = queue.worker({"default": 10}, **FAST)
    worker.start()
    wait_for(lambda: completed(queue) >= total // 2)
    worker.stop(timeout=30)
    done = completed(queue)
    assert len(fired) == done and set(fired) <= set(ids)
