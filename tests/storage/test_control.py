"""Job control in the storage: cancel of a subtree, pause and resume of jobs and queues,
on every backend."""

from __future__ import annotations

from durable_jobs.job import Job, JobStatus, utcnow
from durable_jobs.storage import SQLStorage

from .helpers import W1, claim_one, get, make_job


def _child(storage: SQLStorage, parent: str, **fields: object) -> str:
    return storage.enqueue(make_job(parent_id=parent, **fields))


def test_cancel_takes_the_unfinished_subtree_and_fences_the_running_run(
    storage: SQLStorage,
) -> None:
    root = storage.enqueue(make_job())
    running = claim_one(storage)
    assert running.id == root
    kid = _child(storage, root)
    done = _child(storage, root)
    grandchild = _child(storage, done)
    claim_one(storage)  # kid
    claimed_done = claim_one(storage)
    assert claimed_done.id == done
    assert storage.complete(done, None, worker_id=W1, fence=claimed_done.fence)
    cancelled = storage.cancel(root)
    assert cancelled is not None
    assert {job.id: job.status for job in cancelled} == {
        root: JobStatus.RUNNING,
        kid: JobStatus.RUNNING,
        grandchild: JobStatus.PENDING,  # below a finished child: still taken
    }
    for job_id in (root, kid, grandchild):
        job = get(storage, job_id)
        assert job.status is JobStatus.CANCELLED and job.last_error == "cancelled"
        assert job.locked_by is None and job.finished_at is not None
    assert get(storage, root).finished_by == W1
    assert get(storage, done).status is JobStatus.COMPLETED
    # The cancelled run's outcome changes nothing.
    assert not storage.complete(root, b"1", worker_id=W1, fence=running.fence)
    assert get(storage, root).status is JobStatus.CANCELLED
    assert storage.cancelled_among([root, kid, done, "nope"]) == {root, kid}
    assert storage.cancel(root) == []
    assert storage.cancel("nope") is None


def test_pause_holds_a_pending_job_and_resume_gives_its_status_back(
    storage: SQLStorage,
) -> None:
    job_id = storage.enqueue(make_job())
    assert storage.pause(job_id)
    assert not storage.pause(job_id)
    held = get(storage, job_id)
    assert (held.status, held.paused_from) == (JobStatus.PAUSED, "pending")
    assert storage.claim("default", W1, 10) == []
    assert storage.resume(job_id)
    back = get(storage, job_id)
    assert (back.status, back.paused_from) == (JobStatus.PENDING, None)
    assert not storage.resume(job_id)
    assert claim_one(storage).id == job_id


def test_a_paused_running_job_is_held_at_its_retry_and_after_a_take_back(
    storage: SQLStorage,
) -> None:
    job_id = storage.enqueue(make_job())
    run = claim_one(storage)
    assert storage.pause(job_id)
    assert get(storage, job_id).status is JobStatus.RUNNING
    assert storage.fail(job_id, "boom", utcnow(), worker_id=W1, fence=run.fence)
    held = get(storage, job_id)
    assert (held.status, held.paused_from) == (JobStatus.PAUSED, "retrying")
    assert storage.resume(job_id)
    assert get(storage, job_id).status is JobStatus.RETRYING
    # Paused while running, its worker then lost: taken back as paused.
    again = claim_one(storage)
    assert storage.pause(job_id)
    storage.release(W1, [(job_id, again.fence)])
    assert get(storage, job_id).status is JobStatus.PAUSED


def test_a_paused_queue_is_left_out_of_claims_and_claimed_inserts(storage: SQLStorage) -> None:
    storage.enqueue(make_job())
    storage.pause_queue("default")
    storage.pause_queue("default")  # twice: still one row
    assert list(storage.paused_queues()) == ["default"]
    assert storage.claim("default", W1, 10) == []
    fresh = Job(type="t")
    assert not storage.enqueue_claimed(fresh, W1)
    assert get(storage, fresh.id).status is JobStatus.PENDING
    storage.resume_queue("default")
    assert storage.paused_queues() == {}
    assert len(storage.claim("default", W1, 10)) == 2
