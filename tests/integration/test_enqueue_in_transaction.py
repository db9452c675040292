"""``enqueue(..., connection=conn)``: events, metrics and wake-ups follow the caller's commit.

The job exists only if the caller's transaction commits, so nothing may report it before
that, and nothing at all for a rollback (to the start or to a savepoint).
"""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

import durable_jobs as jobs
from durable_jobs.metrics import PrometheusMetrics
from tests.helpers import wait_for


def enqueued_ids(stream: jobs.EventStream) -> list[str]:
    """The ids of the JobEnqueued events buffered in ``stream`` so far (not waiting)."""
    ids = []
    while len(stream) and (event := stream.get(timeout=0)) is not None:
        if isinstance(event, jobs.JobEnqueued):
            ids.append(event.job.id)
    return ids


def engine(queue: jobs.Queue) -> object:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    return storage.engine


def counted(metrics: PrometheusMetrics) -> float:
    total = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "sdj_jobs_enqueued_total":
                total += s.value
    return total


def test_events_and_metrics_wait_for_the_commit_and_skip_a_rollback(queue: jobs.Queue) -> None:
    metrics = PrometheusMetrics(queue, registry=CollectorRegistry())
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with queue.events() as stream:
        with storage.engine.begin() as conn:
            kept = queue.enqueue("t", 1, connection=conn)
            kept_many = queue.enqueue_many([("t", 2), ("t", 3)], connection=conn)
            assert enqueued_ids(stream) == [] and counted(metrics) == 0  # not committed yet
        assert enqueued_ids(stream) == [kept, *kept_many]
        assert counted(metrics) == 3

        with pytest.raises(RuntimeError), storage.engine.begin() as conn:
            dropped = queue.enqueue("t", 4, connection=conn)
            raise RuntimeError("abort")
        assert queue.get_job(dropped) is None

        with storage.engine.connect() as conn:  # closed without a commit: the pool rolls back
            queue.enqueue("t", 5, connection=conn)

        with storage.engine.connect() as conn:  # 2.0 style: explicit commit and rollback
            committed = queue.enqueue("t", 6, connection=conn)
            conn.commit()
            queue.enqueue("t", 7, connection=conn)
            conn.rollback()
        assert enqueued_ids(stream) == [committed]
        assert counted(metrics) == 4


def test_a_rollback_to_a_savepoint_forgets_what_was_enqueued_after_it(queue: jobs.Queue) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with queue.events() as stream:
        with storage.engine.begin() as conn:
            before = queue.enqueue("t", 1, connection=conn)
            savepoint = conn.begin_nested()
            undone = queue.enqueue("t", 2, connection=conn)
            savepoint.rollback()
            with conn.begin_nested():  # released: its job stays
                inner = queue.enqueue("t", 3, connection=conn)
        assert queue.get_job(undone) is None
        assert enqueued_ids(stream) == [before, inner]


def test_a_worker_in_the_process_wakes_for_the_committed_job(queue: jobs.Queue) -> None:
    # Woken before the commit, the worker found nothing and waited for its next poll.
    done = threading.Event()
    queue.register("t", lambda: done.set())
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with queue.worker(poll_interval=3600, lock_timeout=5):
        with storage.engine.begin() as conn:
            job_id = queue.enqueue("t", connection=conn)
        assert done.wait(10)
    wait_for(lambda: (j := queue.get_job(job_id)) and j.status is jobs.JobStatus.COMPLETED)
