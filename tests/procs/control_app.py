"""A worker process for the job-control tests (cancel and paused queues across processes).

python -m tests.procs.control_app   (database from $SDJ_DATABASE_URL)

Each handler records what it does in ``test_events`` (job id, what, when), durably.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

import durable_jobs as jobs

queue = jobs.Queue()
EVENTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS test_events (job_id VARCHAR(64) NOT NULL, what TEXT NOT NULL,"
    " at DOUBLE PRECISION NOT NULL)"
)


def record(what: str) -> None:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO test_events (job_id, what, at) VALUES (:job, :what, :at)"),
            {"job": jobs.current_job().id, "what": what, "at": time.time()},
        )


@queue.job()
def tick(i: int) -> int:
    return i


@queue.job()
def loop() -> None:
    """Calls a step in a loop until cancelled."""
    record("started")
    try:
        for i in range(1_000_000):
            jobs.call(tick, i)
            time.sleep(0.01)
    except jobs.Cancelled:
        record("cancelled")
        raise


@queue.job(queue="emails")
def mail(n: int) -> int:
    record("mailed")
    return n


@queue.job()
def ping() -> str:
    record("pinged")
    return "pong"


if __name__ == "__main__":
    queue.worker({"default": 2, "emails": 2}, lock_timeout=5, poll_interval=0.2).run()
