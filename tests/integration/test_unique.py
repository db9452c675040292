"""Unique jobs: ``unique_key`` (while unfinished) and ``unique_for`` (a window), on every
backend, with concurrent producers and in batches."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from tests.helpers import run_to_end, wait_for


def _count(queue: jobs.Queue, job_type: str) -> int:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        query = sa.text("SELECT COUNT(*) FROM sdj_jobs WHERE type = :t")
        return int(conn.execute(query, {"t": job_type}).scalar_one())


def test_a_key_held_by_an_unfinished_job_returns_its_id_and_writes_nothing(
    queue: jobs.Queue,
) -> None:
    enqueued: list[list[jobs.Job]] = []
    queue.hooks.on_enqueued(enqueued.append)
    first = queue.enqueue("sync-user", 7, unique_key="sync:7")
    assert queue.enqueue("sync-user", 8, unique_key="sync:7", priority=9) == first
    assert _count(queue, "sync-user") == 1
    assert [j.id for batch in enqueued for j in batch] == [first]  # no event for the dedupe
    job = queue.get_job(first)
    assert job is not None and job.unique_key == "sync:7" and job.args == b"7"
    other = queue.enqueue("sync-user", 9, unique_key="sync:9")
    assert other != first


def test_a_finished_job_gives_its_key_up(queue: jobs.Queue) -> None:
    queue.register("sync-user", lambda uid: uid)
    first = queue.enqueue("sync-user", 1, unique_key="sync:1")
    run_to_end(queue, first)
    second = queue.enqueue("sync-user", 2, unique_key="sync:1")
    assert second != first
    assert queue.enqueue("sync-user", 3, unique_key="sync:1") == second
    old = queue.get_job(first)
    assert old is not None and old.status is jobs.JobStatus.COMPLETED and old.unique_key is None


def test_unique_for_keeps_a_finished_job_holding_its_key_for_the_window(
    queue: jobs.Queue,
) -> None:
    queue.register("charge", lambda order: order)
    first = queue.enqueue("charge", 1, unique_key="charge:1", unique_for=timedelta(hours=24))
    run_to_end(queue, first)
    again = queue.enqueue("charge", 1, unique_key="charge:1", unique_for=timedelta(hours=24))
    assert again == first and _count(queue, "charge") == 1
    # A window that has passed since the job was created: the key is free again.
    later = wait_for(
        lambda: (
            (j := queue.enqueue("charge", 1, unique_key="charge:1", unique_for=0.2)) != first and j
        )
    )
    assert _count(queue, "charge") == 2 and later != first


def test_eight_threads_enqueueing_one_key_create_one_job(queue: jobs.Queue) -> None:
    start = threading.Barrier(8)
    ids: list[str] = []
    lock = threading.Lock()

    def produce() -> None:
        start.wait()
        for _ in range(10):
            job_id = queue.enqueue("sync-user", 1, unique_key="sync:race")
            with lock:
                ids.append(job_id)

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 80 and len(set(ids)) == 1
    assert _count(queue, "sync-user") == 1


def test_concurrent_producers_after_the_holder_finished_store_one_new_job(
    queue: jobs.Queue,
) -> None:
    queue.register("sync-user", lambda uid: uid)
    first = queue.enqueue("sync-user", 1, unique_key="sync:again")
    run_to_end(queue, first)
    start = threading.Barrier(8)
    ids: list[str] = []

    def produce() -> None:
        start.wait()
        ids.append(queue.enqueue("sync-user", 1, unique_key="sync:again"))

    threads = [threading.Thread(target=produce) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 8 and len(set(ids)) == 1 and ids[0] != first
    assert _count(queue, "sync-user") == 2


def test_enqueue_many_deduplicates_against_the_table_and_within_the_batch(
    queue: jobs.Queue,
) -> None:
    held = queue.enqueue("sync-user", 0, unique_key="sync:0")
    ids = queue.enqueue_many(
        [
            ("sync-user", 0, {"unique_key": "sync:0"}),
            ("sync-user", 1, {"unique_key": "sync:1"}),
            ("plain", None),
            ("sync-user", 1, {"unique_key": "sync:1"}),
        ]
    )
    assert ids[0] == held and ids[3] == ids[1] and len(set(ids)) == 3
    assert _count(queue, "sync-user") == 2 and _count(queue, "plain") == 1


def test_enqueue_many_with_unique_keys_stays_all_or_nothing(queue: jobs.Queue) -> None:
    items = [("sync-user", i, {"unique_key": f"sync:{i}"}) for i in range(5)]
    with pytest.raises(ValueError, match="priority"):
        queue.enqueue_many([*items, ("plain", None, {"priority": "high"})])
    assert _count(queue, "sync-user") == 0 and _count(queue, "plain") == 0


def test_a_unique_enqueue_in_a_rolled_back_transaction_leaves_nothing(
    queue: jobs.Queue,
) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn, conn.begin() as tx:
        job_id = queue.enqueue("sync-user", 1, unique_key="sync:tx", connection=conn)
        tx.rollback()
    assert queue.get_job(job_id) is None
    with storage.engine.begin() as conn:
        kept = queue.enqueue("sync-user", 1, unique_key="sync:tx", connection=conn)
    assert queue.get_job(kept) is not None
    assert queue.enqueue("sync-user", 1, unique_key="sync:tx") == kept


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"unique_for": 60}, "unique_for needs unique_key"),
        ({"unique_key": ""}, "unique_key must be a non-empty string"),
        ({"unique_key": 5}, "unique_key must be a non-empty string"),
        ({"unique_key": "k", "unique_for": 0}, "unique_for must be a positive"),
        ({"unique_key": "x" * 256}, "at most 255"),
    ],
)
def test_bad_unique_options_are_refused_before_anything_is_written(
    queue: jobs.Queue, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        queue.enqueue("sync-user", 1, **options)
    assert _count(queue, "sync-user") == 0
