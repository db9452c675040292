"""Workers under storage failures: they log, back off, reconnect, and lose no job.

The torture run (tests/torture) shows the same under real crashes and restarts; these
tests pin each behaviour down deterministically.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs import codec
from durable_jobs.job import utcnow
from tests.conftest import BACKENDS
from tests.helpers import wait_for

FAST: dict[str, Any] = {"lock_timeout": 1, "poll_interval": 0.05}


class Failing:
    """Wraps a storage method so that its next ``failures`` calls raise ``error``."""

    def __init__(self, method: Callable[..., Any], failures: int, error: Exception) -> None:
        self.method = method
        self.failures = failures
        self.error = error
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.failures
        if failing:
            raise self.error
        return self.method(*args, **kwargs)


class Flaky(Failing):
    """Wraps a storage method so that its next ``failures`` calls lose the connection."""

    def __init__(self, method: Callable[..., Any], failures: int) -> None:
        error = sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))
        super().__init__(method, failures, error)


def status(queue: jobs.Queue, job_id: str) -> jobs.JobStatus:
    job = queue.get_job(job_id)
    assert job is not None
    return job.status


def test_a_job_claimed_behind_the_workers_back_is_taken_back_and_run(
    queue: jobs.Queue,
) -> None:
    # When the connection dies after a claim commits but before its reply arrives, the
    # job is locked by a live worker that never heard of it. The worker's heartbeats
    # used to extend every job locked in its name, keeping such a job running for as
    # long as the worker lived; now they extend only the jobs it holds.
    ran = threading.Event()
    queue.register("t", lambda: ran.set())
    job_id = queue.enqueue("t")
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    # The lost claim: the job is locked for the worker as its own claim would lock it.
    [orphan] = storage.claim("default", "worker-1", 1, lock_timeout=FAST["lock_timeout"])
    assert orphan.id == job_id
    with queue.worker(worker_id="worker-1", **FAST):
        assert ran.wait(15), "the job locked behind the worker's back was never run"
        wait_for(lambda: status(queue, job_id) == jobs.JobStatus.COMPLETED)
    job = queue.get_job(job_id)
    assert job is not None and job.attempt == 2
    # The second run (attempt 2) completed: the taken-back run's error is not kept.
    assert job.last_error is None and job.traceback is None


def test_heartbeats_extend_only_the_jobs_a_worker_names(storage: jobs.SQLStorage) -> None:
    queue = jobs.Queue(storage)
    past = {"at": utcnow() - timedelta(minutes=5)}
    held, lost = queue.enqueue_many([("t", 1, past), ("t", 2, past)])
    stale = utcnow() - timedelta(seconds=60)
    storage.claim("default", "w", 2, now=stale)
    storage.heartbeat_worker("w", host="h", pid=1, queues=["default"], types=[], jobs=[held])
    assert storage.release_stale_locks(30) == 1
    assert status(queue, held) == jobs.JobStatus.RUNNING
    assert status(queue, lost) == jobs.JobStatus.RETRYING
    storage.heartbeat_worker("w", host="h", pid=1, queues=["default"], types=[], jobs=[])
    assert storage.release_stale_locks(0.000001) == 1  # an empty list extends nothing


def test_a_worker_that_cannot_reach_its_database_fails_to_start_cleanly() -> None:
    # Nothing listens on port 1. run() used to hide the connection error behind an
    # AssertionError from stopping a worker whose threads never started.
    queue = jobs.Queue("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    worker = queue.worker()
    with pytest.raises(Exception) as raised:
        worker.run()
    assert not isinstance(raised.value, AssertionError)
    assert "127.0.0.1" in str(raised.value) or "connect" in str(raised.value).lower()
    assert not worker.running
    worker.stop(timeout=0)  # a no-op, at once


def test_a_worker_on_a_given_storage_that_cannot_reach_it_fails_to_start() -> None:
    # A queue made from a storage object does not migrate, so nothing else connects
    # before the worker's threads would start logging the same error forever.
    storage = jobs.SQLStorage("postgresql://nobody@127.0.0.1:1/nothing?connect_timeout=2")
    worker = jobs.Queue(storage).worker()
    before = set(threading.enumerate())
    with pytest.raises(Exception) as raised:
        worker.start()
    assert "127.0.0.1" in str(raised.value) or "connect" in str(raised.value).lower()
    assert not worker.running
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("sdj-")]
    storage.close()


def test_a_worker_on_a_database_never_migrated_fails_to_start(tmp_path: Path) -> None:
    storage = jobs.SQLStorage(f"sqlite:///{tmp_path / 'empty.db'}")
    worker = jobs.Queue(storage).worker()
    with pytest.raises(RuntimeError, match=r"schema version 0 of \d+: run storage.migrate\(\)"):
        worker.start()
    assert not worker.running
    worker.stop(timeout=0)  # a no-op, at once
    storage.migrate()
    with jobs.Queue(storage).worker() as migrated:
        assert migrated.running
    storage.close()


def test_claims_and_outcomes_survive_storage_errors(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[int] = []
    queue.register("t", lambda n: runs.append(n))
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    claim = Flaky(storage.claim, 3)
    complete = Flaky(storage.complete_and_claim, 3)
    storage.claim = claim  # type: ignore[method-assign]
    storage.complete_and_claim = complete  # type: ignore[method-assign]
    ids = queue.enqueue_many([("t", n) for n in range(5)])
    with queue.worker(**FAST):
        wait_for(lambda: all(status(queue, i) == jobs.JobStatus.COMPLETED for i in ids))
    assert sorted(runs) == list(range(5))  # a failed store never causes a second run
    assert claim.calls > 3 and complete.calls > 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("claiming jobs failed" in m for m in messages)
    assert any("storing an outcome failed" in m for m in messages)


class LostReply:
    """Wraps a storage method so that its first ``times`` calls commit, then raise as if
    the connection died before the reply arrived."""

    def __init__(self, method: Callable[..., Any], times: int) -> None:
        self.method = method
        self.times = times
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.method(*args, **kwargs)
        with self.lock:
            self.times -= 1
            lost = self.times >= 0
        if lost:
            raise sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return result


def test_an_outcome_committed_behind_a_lost_reply_still_counts(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    # The retry of such a write is fenced out like a stale worker's outcome. The worker
    # must see that the row holds its own outcome: the job is done, and its hooks fire.
    queue.register("ok", lambda: None)

    def broken() -> None:
        raise jobs.NoRetry("bad input")

    queue.register("broken", broken)
    queue.register("later", lambda: (_ for _ in ()).throw(jobs.RetryAfter(3600, "later")))
    completed: list[str] = []
    failed: list[str] = []
    retrying: list[str] = []
    queue.on_job_complete(lambda job: completed.append(job.id))
    queue.on_job_fail(lambda job, err: failed.append(job.id))
    queue.on_retry(lambda job, err: retrying.append(job.id))
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    storage.complete_and_claim = LostReply(storage.complete_and_claim, 1)  # type: ignore[method-assign]
    storage.fail = LostReply(storage.fail, 2)  # type: ignore[method-assign]
    ok, bad, later = (queue.enqueue(name) for name in ("ok", "broken", "later"))
    with queue.worker(**FAST):
        wait_for(lambda: ok in completed and bad in failed and later in retrying)
    assert completed == [ok] and failed == [bad] and retrying == [later]
    assert status(queue, ok) == jobs.JobStatus.COMPLETED
    assert status(queue, bad) == jobs.JobStatus.FAILED
    assert status(queue, later) == jobs.JobStatus.RETRYING
    assert not [r for r in caplog.records if "lost its lock" in r.getMessage()]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_the_listener_reconnects_after_its_connection_is_killed(queue: jobs.Queue) -> None:
    done = threading.Event()
    queue.register("ping", lambda: done.set())
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)

    def listener_pids() -> list[int]:
        with storage.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND query LIKE 'LISTEN%%'"
            )
            return [row[0] for row in rows]

    # A poll interval this long means only a notification can wake the worker in time.
    with queue.worker(poll_interval=60, lock_timeout=5) as worker:
        [pid] = wait_for(listener_pids)
        with storage.engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        wait_for(lambda: (p := listener_pids()) and p != [pid])
        # idle again after the wake-up
        wait_for(lambda: not worker._dispatcher.queues["default"].maybe_work)
        queue.enqueue("ping")
        assert done.wait(10), "the worker was not woken after its listener reconnected"


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_a_checkpoint_racing_the_take_back_of_its_job_is_rejected(
    storage: jobs.SQLStorage,
) -> None:
    # The fenced checkpoint insert checks the job row in a subquery. Under READ COMMITTED
    # that check used to read the row as it was when the statement began, so a write
    # racing the reaper's update of the job passed the fence after the lock was lost.
    queue = jobs.Queue(storage)
    job_id = queue.enqueue("t")
    [job] = storage.claim("default", "zombie", 1)
    with storage.engine.connect() as reaper:
        # The reaper takes the job back (and holds its row) but has not committed yet.
        reaper.exec_driver_sql(
            "UPDATE sdj_jobs SET status = 'retrying', locked_by = NULL WHERE id = %(id)s",
            {"id": job_id},
        )
        saved: list[bool] = []
        cp = jobs.Checkpoint(job_id=job_id, call_index=0, call_type="step", result=b"1")
        writer = threading.Thread(
            target=lambda: saved.append(
                storage.save_checkpoint(cp, worker_id="zombie", attempt=job.attempt)
            )
        )
        writer.start()

        def waiting_on_a_lock() -> bool:
            with storage.engine.connect() as conn:
                return bool(
                    conn.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE NOT granted").scalar()
                )

        try:
            wait_for(lambda: saved or waiting_on_a_lock(), timeout=10)
        finally:
            reaper.commit()
        writer.join(10)
    assert saved == [False]
    assert storage.get_checkpoints(job_id) == []


def driver_outage(backend: str) -> Exception:
    """The error the database driver raises when its connection breaks or is busy."""
    if backend == "sqlite":
        return sqlite3.OperationalError("database is locked")
    return psycopg.OperationalError("server closed the connection unexpectedly")


@pytest.mark.parametrize("method", ["save_checkpoint", "get_checkpoints"])
@pytest.mark.parametrize("failures", [1, 2])
def test_a_brief_storage_error_on_a_checkpoint_costs_no_attempt(
    queue: jobs.Queue, backend: str, method: str, failures: int
) -> None:
    # docs/guarantees.md: an outage shorter than lock_timeout costs a pause and nothing
    # else. A checkpoint read or write that met one used to fail the run, and a job
    # allowed a single run failed for good.
    queue.register("double", lambda n: n * 2)

    def flow() -> int:
        return int(jobs.call("double", 1) + jobs.call("double", 2))

    queue.register("flow", flow, retries=0)
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    flaky = Failing(getattr(storage, method), failures, driver_outage(backend))
    setattr(storage, method, flaky)
    job_id = queue.enqueue("flow")
    with queue.worker(lock_timeout=5, poll_interval=0.05):
        wait_for(lambda: status(queue, job_id) in (jobs.JobStatus.COMPLETED, jobs.JobStatus.FAILED))
    job = queue.get_job(job_id)
    assert job is not None
    assert job.status == jobs.JobStatus.COMPLETED, job.last_error
    assert job.attempt == 1 and codec.loads(job.result) == 6
    assert flaky.calls > failures


def test_a_permanent_storage_error_on_a_checkpoint_is_not_retried(queue: jobs.Queue) -> None:
    queue.register("double", lambda n: n * 2)
    queue.register("flow", lambda: jobs.call("double", 1), retries=0)
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    refusal = Failing(storage.save_checkpoint, 1000, ValueError("refused"))
    storage.save_checkpoint = refusal  # type: ignore[method-assign]
    job_id = queue.enqueue("flow")
    with queue.worker(**FAST):
        wait_for(lambda: status(queue, job_id) == jobs.JobStatus.FAILED)
    job = queue.get_job(job_id)
    assert job is not None and job.last_error == "ValueError: refused"
    assert refusal.calls == 1


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b == "postgresql"])
def test_a_checkpoint_written_after_the_servers_connections_were_killed(
    queue: jobs.Queue,
) -> None:
    # Every connection of the storage dies (a failover, say) while a step runs: its
    # checkpoint write meets a dead connection, discards the idle ones with it, and is
    # retried in place on a new one.
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)

    def kill_connections() -> None:
        with storage.engine.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    queue.register("kill", kill_connections)
    queue.register("double", lambda n: n * 2)

    def flow() -> int:
        jobs.call("kill")
        return int(jobs.call("double", 3))

    queue.register("flow", flow, retries=0)
    job_id = queue.enqueue("flow")
    finished = threading.Event()
    queue.on_job_complete(lambda job: finished.set())
    queue.on_job_fail(lambda job, err: finished.set())
    # Nothing else of the worker uses the database while the step runs (no poll, no
    # heartbeat yet), so the checkpoint write is the first to meet a dead connection.
    with queue.worker(lock_timeout=30, poll_interval=60):
        assert finished.wait(15)
    job = queue.get_job(job_id)
    assert job is not None
    assert job.status == jobs.JobStatus.COMPLETED, job.last_error
    assert job.attempt == 1 and codec.loads(job.result) == 6


def refusal(backend: str) -> Exception:
    """An error the database gives for a value it will never store (not transient)."""
    if backend == "sqlite":
        return sqlite3.IntegrityError("CHECK constraint failed: result")
    return psycopg.errors.DataError("value too long for the column")


def test_a_result_over_the_payload_limit_fails_its_job_and_the_worker_goes_on(
    storage: jobs.SQLStorage,
) -> None:
    queue = jobs.Queue(storage, max_payload=1000)
    queue.register("big", lambda: "x" * 5000, retries=3)
    queue.register("small", lambda n: n)
    failed: list[tuple[str, BaseException]] = []
    queue.on_job_fail(lambda job, err: failed.append((job.id, err)))
    big = queue.enqueue("big")
    small = queue.enqueue_many([("small", n) for n in range(5)])
    with queue.worker(**FAST):
        wait_for(lambda: all(status(queue, i) == jobs.JobStatus.COMPLETED for i in small))
        wait_for(lambda: status(queue, big) == jobs.JobStatus.FAILED)
    job = queue.get_job(big)
    assert job is not None and job.attempt == 1 and job.result is None
    assert job.last_error == (
        "ResultTooLarge: result of 'big' encodes to 5,002 bytes, over the queue's limit of "
        "1,000 (Queue(max_payload=...) changes it)"
    )
    assert [(i, type(e)) for i, e in failed] == [(big, jobs.ResultTooLarge)]


def test_an_outcome_the_database_refuses_fails_its_job_alone(
    queue: jobs.Queue, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # One outcome that the database refuses for good used to be retried forever: the
    # outcomes batched with it and after it were never stored, and heartbeats kept their
    # jobs locked, so no other worker could rescue them either.
    queue.register("ok", lambda n: n)
    queue.register("refused", lambda: "a value the database refuses")

    def unstorable() -> None:
        raise jobs.NoRetry("an error the database refuses")

    queue.register("unstorable", unstorable)
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    bad_result = queue.enqueue("refused")
    bad_error = queue.enqueue("unstorable")
    complete_and_claim, fail = storage.complete_and_claim, storage.fail

    def refusing_completions(worker_id: str, outcomes: Any, *args: Any, **kwargs: Any) -> Any:
        if any(o.job_id == bad_result for o in outcomes):
            raise refusal(backend)
        return complete_and_claim(worker_id, outcomes, *args, **kwargs)

    def refusing_errors(job_id: str, err_msg: str, *args: Any, **kwargs: Any) -> Any:
        if "the database refuses" in err_msg:
            raise refusal(backend)
        return fail(job_id, err_msg, *args, **kwargs)

    storage.complete_and_claim = refusing_completions  # type: ignore[method-assign]
    storage.fail = refusing_errors  # type: ignore[method-assign]
    failed: list[tuple[str, BaseException]] = []
    queue.on_job_fail(lambda job, err: failed.append((job.id, err)))
    good = queue.enqueue_many([("ok", n) for n in range(5)])
    worker = queue.worker(**FAST)
    with worker:
        wait_for(lambda: all(status(queue, i) == jobs.JobStatus.COMPLETED for i in good))
        wait_for(lambda: status(queue, bad_result) == jobs.JobStatus.FAILED)
        wait_for(lambda: status(queue, bad_error) == jobs.JobStatus.FAILED)
        later = queue.enqueue("ok", 99)  # the worker goes on
        wait_for(lambda: status(queue, later) == jobs.JobStatus.COMPLETED)
    assert not worker.running
    for job_id, what in ((bad_result, "result"), (bad_error, "error")):
        job = queue.get_job(job_id)
        assert job is not None and job.attempt == 1
        assert job.last_error == (
            f"OutcomeRefused: the database refused to store the {what} of this run: "
            f"{type(refusal(backend)).__name__}: {refusal(backend)}"
        )
    assert sorted((i, type(e)) for i, e in failed) == sorted(
        [(bad_result, jobs.OutcomeRefused), (bad_error, jobs.OutcomeRefused)]
    )
    assert not [r for r in caplog.records if "storing an outcome failed" in r.getMessage()]
