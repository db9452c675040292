"""Locks on both backends: the fence only grows, each lock expires on the database's clock
after its own worker's lock timeout, and a job taken back waits its backoff."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.job import Checkpoint, Job, JobStatus
from durable_jobs.maintenance import Heartbeat, Reaper
from durable_jobs.storage import Outcome, SQLStorage
from durable_jobs.storage.admin import Admin
from tests.helpers import undo_migration_6, wait_for
from tests.storage.helpers import count

W1, W2 = "worker-1", "worker-2"
PAST = datetime.now(UTC) - timedelta(hours=1)  # a due run time, whatever `now` a claim says


def real_now() -> datetime:
    # The host's clock, which is the database's on SQLite and, in these tests, the
    # PostgreSQL server's too (it runs on the same machine).
    return datetime.now(UTC)


def sql(storage: SQLStorage, text: str, **params: Any) -> None:
    with storage.engine.begin() as conn:
        conn.execute(sa.text(text), params)


def get(storage: SQLStorage, job_id: str) -> Job:
    job = storage.get_job(job_id)
    assert job is not None
    return job


def claim_one(storage: SQLStorage, worker: str = W1, **kwargs: Any) -> Job:
    [job] = storage.claim("default", worker, 1, **kwargs)
    return job


def expire(storage: SQLStorage, job_id: str) -> None:
    """Make a running job's lock expired, as if its worker died long ago."""
    past = storage.dialect.time_param(real_now() - timedelta(minutes=5))
    sql(storage, "UPDATE sdj_jobs SET lock_expires_at = :t WHERE id = :id", t=past, id=job_id)


def skew_clock(monkeypatch: pytest.MonkeyPatch, storage: SQLStorage, seconds: float) -> None:
    """This process's clock, as ``storage`` reads it, runs ``seconds`` ahead (or behind).

    Not ``use_clock``: the database's clock, which a fake clock replaces, must stay."""
    monkeypatch.setattr(storage, "_now", lambda: real_now() + timedelta(seconds=seconds))


def beat(storage: SQLStorage, worker: str, job_ids: list[str], lock_timeout: float) -> None:
    held = [(job_id, 0) for job_id in job_ids]
    Heartbeat(storage, worker, ["default"], lambda: ["t"], lambda: held, lock_timeout).run_once()


# -- 3. the fencing token only grows ------------------------------------------------------


def test_an_operator_retry_gives_the_next_run_a_new_fence(storage: SQLStorage) -> None:
    job_id = storage.enqueue(Job(type="t", max_retries=0))
    stale = claim_one(storage)
    assert (stale.attempt, stale.fence) == (1, 1)
    # The run is taken back (its worker stalled), which spends the job's only run...
    expire(storage, job_id)
    assert storage.release_expired_locks() == 1
    assert get(storage, job_id).status is JobStatus.FAILED
    # ... an operator retries it, and the same worker claims it again.
    retried = Admin(storage).retry(job_id)
    assert retried is not None and retried.attempt == 0 and retried.fence == 1
    new = claim_one(storage)
    assert new.attempt == 1  # what users see: the first run of the fresh start
    assert new.fence == 2 and new.locked_by == stale.locked_by == W1

    # Every write of the stale run is rejected; the new run's lock is untouched.
    checkpoint = Checkpoint(job_id=job_id, call_index=0, call_type="step")
    assert storage.save_checkpoint(checkpoint, worker_id=W1, fence=stale.fence) is False
    assert storage.complete(job_id, b'"stale"', worker_id=W1, fence=stale.fence) is False
    assert storage.complete_many(W1, [Outcome(job_id, stale.fence, b'"stale"')]) == set()
    assert storage.fail(job_id, "E: stale", None, worker_id=W1, fence=stale.fence) is False
    storage.release(W1, [(job_id, stale.fence)])
    job = get(storage, job_id)
    assert job.status is JobStatus.RUNNING and job.fence == new.fence and job.result is None
    assert storage.get_checkpoints(job_id) == []
    # The new run keeps its lock (heartbeats extend it) and its outcome counts.
    beat(storage, W1, [job_id], 30)
    assert storage.release_expired_locks() == 0
    assert storage.save_checkpoint(checkpoint, worker_id=W1, fence=new.fence) is True
    assert storage.complete_many(W1, [Outcome(job_id, new.fence, b'"new"')]) == {job_id}
    done = get(storage, job_id)
    assert done.status is JobStatus.COMPLETED and done.result == b'"new"'
    assert (done.attempt, done.fence) == (1, 2)
    # A stale run asking whether its lost-reply write went through is told no.
    assert storage.settled(W1, [(job_id, stale.fence)]) == {}
    assert storage.settled(W1, [(job_id, new.fence)]) == {job_id: JobStatus.COMPLETED}


def test_the_fence_grows_with_every_claim_and_never_goes_back(storage: SQLStorage) -> None:
    job_id = storage.enqueue(Job(type="t", max_retries=5))
    fences = [claim_one(storage).fence]
    storage.release(W1, [(job_id, fences[-1])])  # given back unstarted: attempt goes back
    assert get(storage, job_id).attempt == 0
    fences.append(claim_one(storage).fence)
    assert storage.fail(job_id, "E: x", real_now(), worker_id=W1, fence=fences[-1])
    fences.append(claim_one(storage, now=real_now() + timedelta(seconds=1)).fence)
    assert fences == [1, 2, 3]
    assert get(storage, job_id).attempt == 2
    # A retried release of an earlier run cannot give back the current one.
    storage.release(W1, [(job_id, 2)])
    assert get(storage, job_id).status is JobStatus.RUNNING
    # A job enqueued straight into a worker's free slot starts at fence 1 too.
    claimed = Job(type="t")
    storage.enqueue_claimed(claimed, W2, lock_timeout=30)
    assert claimed.fence == get(storage, claimed.id).fence == 1


# -- 4. lock expiry on the database's clock, each lock its own timeout --------------------


def test_a_reaper_whose_clock_runs_ahead_takes_back_no_live_job(
    storage: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = storage.enqueue(Job(type="t", run_at=PAST))
    # Claimed by a worker with the default lock timeout, whose last heartbeat (every
    # lock_timeout / 5) was 5 s ago.
    claim_one(storage, now=real_now() - timedelta(seconds=5), lock_timeout=30)
    # The reaping host's clock is 27 s ahead: by it, that heartbeat is 32 s old.
    skew_clock(monkeypatch, storage, 27)
    assert Reaper(storage, timedelta(seconds=30)).run_once() == 0
    job = get(storage, job_id)
    assert job.status is JobStatus.RUNNING and job.last_error is None


def test_heartbeats_set_the_expiry_on_the_database_clock(
    storage: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = storage.enqueue(Job(type="t"))
    claim_one(storage, lock_timeout=30)
    skew_clock(monkeypatch, storage, -25)  # the heartbeating worker's clock is behind
    beat(storage, W1, [job_id], 30)
    expires = get(storage, job_id).lock_expires_at
    assert expires is not None
    assert timedelta(seconds=28) < expires - real_now() <= timedelta(seconds=30)
    skew_clock(monkeypatch, storage, 25)  # a reaper whose clock is ahead
    assert storage.release_expired_locks() == 0
    assert get(storage, job_id).status is JobStatus.RUNNING


def test_a_heartbeat_that_loses_a_deadlock_is_run_again_at_once(
    storage: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = storage.enqueue(Job(type="t"))
    claim_one(storage, lock_timeout=30)
    expires_before = get(storage, job_id).lock_expires_at
    real_beat = storage.heartbeat_worker
    calls: list[str] = []

    def deadlocked_once(*args: Any, **kwargs: Any) -> None:
        calls.append("beat")
        if len(calls) == 1:  # what a driver's deadlock (MySQL 1213) becomes
            raise jobs.StorageError("Deadlock found when trying to get lock", transient=True)
        real_beat(*args, **kwargs)

    monkeypatch.setattr(storage, "heartbeat_worker", deadlocked_once)
    beat(storage, W1, [job_id], 30)
    assert calls == ["beat", "beat"]
    expires = get(storage, job_id).lock_expires_at
    assert expires is not None and expires_before is not None and expires > expires_before


def test_a_heartbeat_that_fails_for_good_is_not_retried(
    storage: SQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def refused(*args: Any, **kwargs: Any) -> None:
        calls.append("beat")
        raise jobs.StorageError("value too long for column", transient=False)

    monkeypatch.setattr(storage, "heartbeat_worker", refused)
    with pytest.raises(jobs.StorageError, match="too long"):
        beat(storage, W1, [], 30)
    assert calls == ["beat"]


def test_a_reaper_applies_each_lock_its_own_timeout(storage: SQLStorage) -> None:
    long_id, short_id = storage.enqueue_many(
        [Job(type="t", run_at=PAST), Job(type="t", run_at=PAST, priority=-1)]
    )
    # W2 holds a job with a 60 s lock; its last heartbeat was 10 s ago.
    claim_one(storage, W2, now=real_now() - timedelta(seconds=10), lock_timeout=60)
    claimed = claim_one(storage, W1, lock_timeout=0.05)
    assert claimed.id == short_id
    expires = get(storage, long_id).lock_expires_at
    assert expires is not None and expires - real_now() > timedelta(seconds=55)
    # A reaper with a 5 s lock timeout takes back the short lock once it expired, never
    # the long one that has not.
    reaper = Reaper(storage, timedelta(seconds=5))
    wait_for(lambda: reaper.run_once() == 1, timeout=10)
    assert get(storage, short_id).status is JobStatus.RETRYING
    assert reaper.run_once() == 0
    job = get(storage, long_id)
    assert job.status is JobStatus.RUNNING and job.locked_by == W2


def test_a_lock_with_no_expiry_expires_the_default_time_after_its_heartbeat(
    storage: SQLStorage,
) -> None:
    # A lock taken by an older release records no expiry.
    old, recent = storage.enqueue_many([Job(type="t"), Job(type="t", priority=-1)])
    storage.claim("default", W1, 2)
    t = storage.dialect.time_param
    for job_id, age in ((old, 31), (recent, 10)):
        sql(
            storage,
            "UPDATE sdj_jobs SET lock_expires_at = NULL, heartbeat_at = :t WHERE id = :id",
            t=t(real_now() - timedelta(seconds=age)),
            id=job_id,
        )
    assert storage.release_expired_locks() == 1
    assert get(storage, old).status is JobStatus.RETRYING
    assert get(storage, recent).status is JobStatus.RUNNING


def test_outcomes_and_take_backs_clear_the_lock_expiry(storage: SQLStorage) -> None:
    done, failed, released, reaped = storage.enqueue_many(
        [Job(type="t", priority=-i) for i in range(4)]
    )
    runs = {job.id: job for job in storage.claim("default", W1, 4)}
    assert all(job.lock_expires_at is not None for job in runs.values())
    assert storage.complete(done, None, worker_id=W1, fence=runs[done].fence)
    assert storage.fail(failed, "E: x", None, worker_id=W1, fence=runs[failed].fence)
    storage.release(W1, [(released, runs[released].fence)])
    expire(storage, reaped)
    assert storage.release_expired_locks() == 1
    for job_id in (done, failed, released, reaped):
        assert get(storage, job_id).lock_expires_at is None


# -- 10. a job taken back waits its backoff -----------------------------------------------


def _taken_back(
    storage: SQLStorage, job: Job, take_back: Callable[[], int] | None = None
) -> tuple[Job, datetime, datetime]:
    job_id = storage.enqueue(job)
    claim_one(storage)
    expire(storage, job_id)
    before = real_now()
    assert (take_back or storage.release_expired_locks)() == 1
    return get(storage, job_id), before, real_now()


def test_a_job_taken_back_waits_its_own_backoff(storage: SQLStorage) -> None:
    job = Job(type="t", max_retries=3, backoff=jobs.constant(60).to_json())
    reaped, before, after = _taken_back(storage, job)
    assert reaped.status is JobStatus.RETRYING and reaped.attempt == 1
    assert reaped.last_error is not None and reaped.last_error.startswith("WorkerLost")
    assert reaped.run_at is not None
    assert before + timedelta(seconds=60) <= reaped.run_at <= after + timedelta(seconds=60)
    # It is not claimed before then, and is once due.
    assert storage.claim("default", W2, 1) == []
    again = claim_one(storage, W2, now=reaped.run_at)
    assert again.id == reaped.id and again.attempt == 2


def test_a_job_taken_back_waits_the_default_backoff(storage: SQLStorage) -> None:
    reaped, before, after = _taken_back(storage, Job(type="t"))
    assert reaped.run_at is not None  # exponential: 1 s after the first run, +-10 %
    assert before + timedelta(seconds=0.9) <= reaped.run_at <= after + timedelta(seconds=1.1)


def test_a_reaper_waits_the_backoff_its_handler_gives(storage: SQLStorage) -> None:
    defaults = {"t": jobs.constant(120)}
    reaper = Reaper(storage, timedelta(seconds=30), defaults.get)
    reaped, before, after = _taken_back(storage, Job(type="t"), reaper.run_once)
    assert reaped.run_at is not None
    assert before + timedelta(seconds=120) <= reaped.run_at <= after + timedelta(seconds=120)
    # A policy given at enqueue wins over the handler's.
    stored = Job(type="t", backoff=jobs.constant(60).to_json())
    reaped, before, after = _taken_back(storage, stored, reaper.run_once)
    assert reaped.run_at is not None
    assert before + timedelta(seconds=60) <= reaped.run_at <= after + timedelta(seconds=60)


def test_release_stale_locks_waits_the_backoff_too(storage: SQLStorage) -> None:
    job_id = storage.enqueue(Job(type="t", run_at=PAST, backoff=jobs.constant(60).to_json()))
    claim_one(storage, now=real_now() - timedelta(seconds=60))
    assert storage.release_stale_locks(30) == 1
    reaped = get(storage, job_id)
    assert reaped.status is JobStatus.RETRYING
    assert reaped.run_at is not None and reaped.run_at >= real_now() + timedelta(seconds=59)


def test_a_job_taken_back_with_its_retries_spent_fails_at_once(storage: SQLStorage) -> None:
    job = Job(type="t", max_retries=0, backoff=jobs.constant(60).to_json())
    reaped, before, after = _taken_back(storage, job)
    assert reaped.status is JobStatus.FAILED
    assert reaped.completed_at is None
    assert reaped.finished_at is not None and before <= reaped.finished_at <= after


def test_migration_4_upgrades_a_database_with_running_jobs(storage: SQLStorage) -> None:
    t = storage.dialect.time_param
    with storage.engine.begin() as conn:
        undo_migration_6(conn)
        for column in ("fence", "lock_expires_at", *_MIGRATION_5_COLUMNS):
            conn.exec_driver_sql(f"ALTER TABLE sdj_jobs DROP COLUMN {column}")
        conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 4")
        # Runs locked by an older release: one alive, one whose worker died.
        for job_id, age in (("alive", 5), ("dead", 40)):
            conn.execute(
                sa.text(
                    "INSERT INTO sdj_jobs (id, type, args, queue, priority, status, attempt,"
                    " max_retries, run_at, created_at, updated_at, locked_by, heartbeat_at)"
                    " VALUES (:id, 't', 'null', 'default', 0, 'running', 1, 3, :now, :now,"
                    " :now, 'old-worker', :beat)"
                ),
                {
                    "id": job_id,
                    "now": t(real_now()),
                    "beat": t(real_now() - timedelta(seconds=age)),
                },
            )
    assert storage.schema_version() == 3
    storage.migrate()
    assert storage.schema_version() == len(storage.dialect.migrations)
    alive = get(storage, "alive")
    assert (alive.fence, alive.lock_expires_at, alive.attempt) == (0, None, 1)
    assert storage.release_expired_locks() == 1
    assert get(storage, "alive").status is JobStatus.RUNNING
    assert get(storage, "dead").status is JobStatus.RETRYING


_MIGRATION_5_COLUMNS = ("finished_at", "finished_by", "traceback")


def test_migration_5_gives_each_outcome_field_one_meaning(storage: SQLStorage) -> None:
    t = storage.dialect.time_param
    ended = real_now() - timedelta(minutes=5)
    with storage.engine.begin() as conn:
        undo_migration_6(conn)
        for column in _MIGRATION_5_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE sdj_jobs DROP COLUMN {column}")
        conn.exec_driver_sql("DELETE FROM sdj_schema_version WHERE version >= 5")
        # Rows as release 4 left them: outcomes kept their worker in locked_by, and a
        # failed job had completed_at.
        for job_id, status, worker in (
            ("done", "completed", "w-done"),
            ("dead", "failed", "w-failed"),
            ("again", "retrying", "w-retry"),
            ("busy", "running", "w-busy"),
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO sdj_jobs (id, type, args, queue, priority, status, attempt,"
                    " max_retries, run_at, created_at, updated_at, locked_by, completed_at)"
                    " VALUES (:id, 't', 'null', 'default', 0, :status, 1, 3, :now, :now,"
                    " :now, :worker, :ended)"
                ),
                {
                    "id": job_id,
                    "status": status,
                    "worker": worker,
                    "now": t(real_now()),
                    "ended": t(ended) if status in ("completed", "failed") else None,
                },
            )
    storage.migrate()
    assert storage.schema_version() == len(storage.dialect.migrations)
    done, dead, again, busy = (get(storage, i) for i in ("done", "dead", "again", "busy"))
    assert (done.completed_at, done.finished_at) == (ended, ended)
    assert (dead.completed_at, dead.finished_at) == (None, ended)
    assert (again.completed_at, again.finished_at) == (None, None)
    for job, worker in ((done, "w-done"), (dead, "w-failed"), (again, "w-retry")):
        assert (job.locked_by, job.finished_by) == (None, worker)
    assert (busy.locked_by, busy.finished_by) == ("w-busy", None)


def test_a_sqlite_heartbeat_that_waited_for_the_write_lock_extends_from_when_it_ran(
    tmp_path: Path,
) -> None:
    # SQLite has one writer: a long transaction elsewhere makes heartbeats wait. The
    # expiry must count from when the heartbeat got the lock, not from when it was sent.
    storage = SQLStorage(f"sqlite:///{tmp_path / 'jobs.db'}")
    storage.migrate()
    job_id = storage.enqueue(Job(type="t"))
    claim_one(storage, lock_timeout=3)
    path = storage.engine.url.database
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # a user's long unit of work holds the write lock
    done = threading.Event()
    beating = threading.Thread(target=lambda: (beat(storage, W1, [job_id], 3), done.set()))
    beating.start()
    wait_for(lambda: beating.is_alive())
    assert not done.wait(1.0)  # the heartbeat is queued behind the lock
    released = real_now()
    blocker.execute("COMMIT")
    blocker.close()
    assert done.wait(10)
    beating.join()
    expires = get(storage, job_id).lock_expires_at
    # SQLite's clock reads whole milliseconds: the heartbeat may run within the one
    # the lock was released in.
    released = released.replace(microsecond=released.microsecond // 1000 * 1000)
    assert expires is not None and expires >= released + timedelta(seconds=3)
    storage.close()


def test_a_prune_in_another_process_never_keeps_writers_out_for_long(tmp_path: Path) -> None:
    # SQLite has one write lock, and its own busy handler sleeps ever longer (up to
    # 100 ms a try) while another process holds it: a prune committing batch after
    # batch kept a worker's writes out for seconds. Writes here must get their turn.
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    storage = SQLStorage(url)
    storage.migrate()
    old = storage.dialect.time_param(datetime.now(UTC) - timedelta(days=30))
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO sdj_jobs (id, type, args, queue, priority, status, attempt,"
            " max_retries, run_at, created_at, updated_at, finished_at)"
            " WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 50000)"
            " SELECT printf('%012d', i), 't', 'null', 'default', 0, 'completed', 1, 3,"
            " ?, ?, ?, ? FROM s",
            (old, old, old, old),
        )
    command = [sys.executable, "-m", "durable_jobs.cli", "prune", "--older-than", "7d"]
    pruning = subprocess.Popen(
        [*command, "--database-url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    waits: list[float] = []
    try:
        while pruning.poll() is None:
            began = time.monotonic()
            storage.enqueue(Job(type="t"))
            waits.append(time.monotonic() - began)
            time.sleep(0.005)  # a worker's stream of writes, not one write after another
    finally:
        _out, err = pruning.communicate(timeout=120)
    assert pruning.returncode == 0, err.decode()
    assert count(storage) == len(waits)  # the prune took the old jobs, and only those
    assert len(waits) >= 20, "the prune ended before the writes could overlap it"
    assert max(waits) < 0.5, f"a write waited {max(waits):.3f} s for the prune's lock"
    storage.close()


def test_waiting_for_the_sqlite_lock_never_spins(monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite may refuse the lock without waiting its 1 ms; the tries that follow must
    # still come a poll apart, not as fast as the loop goes, until the busy timeout.
    from durable_jobs.storage import sqlite as sqlite_dialect

    def busy() -> sqlite3.OperationalError:
        exc = sqlite3.OperationalError("database is locked")
        exc.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
        return exc

    class Refusing:
        """A cursor whose every statement finds the lock taken, at once."""

        connection = sqlite3.connect(":memory:")
        tries = 0

        def execute(self, sql: str, params: Any) -> None:
            self.tries += 1
            raise busy()

    monkeypatch.setattr(sqlite_dialect, "BUSY_TIMEOUT_MS", 50)
    cur = Refusing()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite_dialect._wait_for_lock(cur, "BEGIN IMMEDIATE", (), busy())
    assert 10 <= cur.tries <= 60  # about one a millisecond over 50 ms
