"""Retention on every backend: pruning finished jobs with all that is kept for them, in
batches, sparing unfinished jobs and the children their parents still wait for; and a
worker's retention policy."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest

import durable_jobs as jobs
from durable_jobs.job import Job, utcnow
from durable_jobs.storage import retention
from tests.conftest import BACKENDS
from tests.helpers import wait_for
from tests.storage.helpers import claim_one, count, sql

_KEPT_FOR_A_JOB = ("sdj_checkpoints", "sdj_signals", "sdj_attempts", "sdj_job_labels")


def _age(storage: jobs.SQLStorage, job_id: str, status: str, days: float) -> None:
    """Make ``job_id`` a job of ``status`` created and finished ``days`` ago."""
    at = storage.dialect.time_param(utcnow() - timedelta(days=days))
    sql(
        storage,
        "UPDATE sdj_jobs SET status = :s, created_at = :t, finished_at = :t WHERE id = :id",
        s=status,
        t=at,
        id=job_id,
    )


def _failed_with_everything(storage: jobs.SQLStorage, queue: jobs.Queue) -> str:
    """A failed job with an attempt, a checkpoint, a signal and labels."""
    job_id = queue.enqueue("doomed", tags=["t"], meta={"k": "v"})
    job = claim_one(storage, "w")
    sql(
        storage,
        "INSERT INTO sdj_checkpoints (id, job_id, scope, call_index, call_type, created_at)"
        " VALUES (:id, :job, '', 0, 'step', :t)",
        id=f"cp-{job_id}",
        job=job_id,
        t=storage.dialect.time_param(utcnow()),
    )
    assert storage.fail(job_id, "boom", None, worker_id="w", fence=job.fence, traceback="tb")
    queue.signal(job_id, "late", 1)  # kept for a finished job
    return job_id


def test_prune_deletes_old_finished_jobs_with_what_is_kept_for_them(
    storage: jobs.SQLStorage,
) -> None:
    queue = jobs.Queue(storage)
    doomed = _failed_with_everything(storage, queue)
    kept = [count(storage, table) for table in _KEPT_FOR_A_JOB]
    assert kept == [1, 1, 1, 2]  # a checkpoint, a signal, an attempt, a tag and a meta label
    old_done = queue.enqueue("done")
    new_done = queue.enqueue("done")
    pending = queue.enqueue("waiting-its-turn")
    _age(storage, doomed, "failed", 10)
    _age(storage, old_done, "completed", 10)
    _age(storage, new_done, "completed", 1)
    sql(
        storage,
        "UPDATE sdj_jobs SET created_at = :t WHERE id = :id",
        t=storage.dialect.time_param(utcnow() - timedelta(days=30)),
        id=pending,
    )
    assert queue.prune(older_than=timedelta(days=7)) == 1  # completed only, by default
    assert queue.get_job(old_done) is None and queue.get_job(new_done) is not None
    assert queue.get_job(doomed) is not None
    assert queue.prune(timedelta(days=7), statuses=("completed", "failed", "cancelled")) == 1
    assert queue.get_job(doomed) is None
    for table in _KEPT_FOR_A_JOB:
        assert count(storage, table) == 0, table
    assert queue.get_job(pending) is not None  # never finished: never pruned


def test_a_finished_child_is_kept_while_its_parent_waits(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    parent = queue.enqueue("parent")
    child = storage.enqueue(Job(type="child", parent_id=parent))
    _age(storage, child, "completed", 10)
    sql(storage, "UPDATE sdj_jobs SET status = 'waiting' WHERE id = :id", id=parent)
    assert queue.prune(timedelta(days=7)) == 0
    _age(storage, parent, "completed", 10)
    assert queue.prune(timedelta(days=7)) == 2


def test_prune_goes_in_batches(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    ids = queue.enqueue_many([("done", i) for i in range(11)])
    for job_id in ids:
        _age(storage, job_id, "completed", 10)
    keep = queue.enqueue("done")
    _age(storage, keep, "completed", 1)
    assert retention.prune(storage, timedelta(days=7), batch=3) == 11
    assert count(storage) == 1


def test_bad_prune_input_is_refused_and_deletes_nothing(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    job_id = queue.enqueue("done")
    _age(storage, job_id, "completed", 10)
    with pytest.raises(ValueError, match="must not be negative"):
        queue.prune(older_than=timedelta(days=-1))
    with pytest.raises(ValueError, match="cannot prune jobs in status 'pending'"):
        queue.prune(timedelta(days=1), statuses=("completed", "pending"))
    with pytest.raises(ValueError, match="cannot prune jobs in status 'done'"):
        queue.prune(timedelta(days=1), statuses="done")
    with pytest.raises(ValueError, match="retention\\['completed'\\]"):
        queue.worker(retention={"completed": timedelta(days=-7)})
    with pytest.raises(ValueError, match="cannot prune jobs in status 'running'"):
        queue.worker(retention={"running": timedelta(days=7)})
    assert count(storage) == 1


def test_a_worker_with_a_retention_policy_prunes_finished_jobs(
    storage: jobs.SQLStorage,
) -> None:
    queue = jobs.Queue(storage)
    queue.register("quick", lambda n: n)
    old = queue.enqueue("quick", 0)
    _age(storage, old, "completed", 8)
    young_failed = queue.enqueue("quick", 1)
    _age(storage, young_failed, "failed", 8)
    policy = {"completed": timedelta(days=7), "failed": timedelta(days=30)}
    with queue.worker(poll_interval=0.05, retention=policy):
        wait_for(lambda: queue.get_job(old) is None)
    assert queue.get_job(young_failed) is not None


def test_a_prune_batch_reads_jobs_created_at_once_in_the_status_index_order(
    storage: jobs.SQLStorage,
) -> None:
    # One enqueue_many gives its jobs one created_at: a batch that sorted them to go on
    # from the last one's (time, id) read them all, every batch (a million: hours).
    queue = jobs.Queue(storage)
    ids = queue.enqueue_many([("done", i) for i in range(300)])
    at = storage.dialect.time_param(utcnow() - timedelta(days=10))
    done = "UPDATE sdj_jobs SET status = 'completed', created_at = :t, finished_at = :t"
    sql(storage, done, t=at)
    cutoff = storage.dialect.time_param(utcnow() - timedelta(days=7))
    params = {"status": "completed", "cutoff": cutoff, "after_at": at, "after": 5, "limit": 10}
    name = storage.dialect.name
    explain = {"sqlite": "EXPLAIN QUERY PLAN ", "postgresql": "EXPLAIN ", "mysql": "EXPLAIN "}
    with storage._cursor(write=True, atomic=True) as cur:
        if name == "postgresql":
            cur.execute("SET LOCAL enable_seqscan = off")  # a small table, as if a big one
        if name == "mysql":
            params["after"] = ids[5]
        cur.execute(explain[name] + storage.dialect.sql["prunable"], params)
        plan = " ".join(" ".join(str(v) for v in row if v is not None) for row in cur.fetchall())
    assert "sdj_jobs_status" in plan, plan
    assert not any(step in plan for step in ("TEMP B-TREE", "Sort", "filesort")), plan
    assert retention.prune(storage, timedelta(days=7), batch=7) == 300


def test_a_prune_pauses_after_each_batch_as_long_as_it_took(storage: jobs.SQLStorage) -> None:
    class Pauses(threading.Event):
        """A stop event that records each pause asked of it, and takes none."""

        def __init__(self) -> None:
            super().__init__()
            self.asked: list[float | None] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.asked.append(timeout)
            return False

    queue = jobs.Queue(storage)
    for job_id in queue.enqueue_many([("done", i) for i in range(11)]):
        _age(storage, job_id, "completed", 10)
    pauses = Pauses()
    assert retention.prune(storage, timedelta(days=7), batch=3, stop=pauses) == 11
    assert len(pauses.asked) == 3  # between the four batches, none after the last
    floor = max(storage.dialect.writer_pause, 1e-6)  # a batch takes some time
    assert all(p is not None and p >= floor for p in pauses.asked), pauses.asked


class _Watched:
    """A driver cursor that reads the session's ``synchronous_commit`` before each
    ``watched`` statement (inside that statement's transaction)."""

    def __init__(self, cur: Any, watched: str, seen: list[str]) -> None:
        self._cur = cur
        self._watched = watched
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def execute(self, statement: str, *params: Any) -> Any:
        if statement == self._watched:
            self._cur.execute("SHOW synchronous_commit")
            self._seen.append(self._cur.fetchone()[0])
        return self._cur.execute(statement, *params)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_a_prune_alone_commits_without_waiting_for_the_disk(
    storage: jobs.SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = jobs.Queue(storage)
    for job_id in queue.enqueue_many([("done", i) for i in range(5)]):
        _age(storage, job_id, "completed", 10)
    seen: list[str] = []
    prunable = storage.dialect.sql["prunable"]
    kept = storage._kept_cursor
    monkeypatch.setattr(storage, "_kept_cursor", lambda raw: _Watched(kept(raw), prunable, seen))
    assert retention.prune(storage, timedelta(days=7), batch=2) == 5
    # Each batch's transaction (the last finds nothing left) ...
    assert seen == ["off"] * 3
    # ... and only it: the setting ends with it, on every connection the storage keeps.
    monkeypatch.undo()
    assert storage._idle
    for raw in storage._idle:
        cur = raw.cursor()
        cur.execute("SHOW synchronous_commit")
        assert cur.fetchone()[0] == "on"
        cur.close()
