"""Job types with fleet-wide limits, run by the multi-process tests as real worker processes.

python -m tests.procs.limits_app CONCURRENCY LOCK_TIMEOUT   (database from $SDJ_DATABASE_URL)

Every handler records its run in ``test_limit_runs`` itself (a row at its start, its end
time at its end), outside the job's own bookkeeping, so that the tests can tell how many
ran at once from what the handlers saw.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import sqlalchemy as sa

import durable_jobs as jobs

queue = jobs.Queue()
RUNS_TABLE = """CREATE TABLE IF NOT EXISTS test_limit_runs (
    job_id TEXT NOT NULL, type TEXT NOT NULL, pid INTEGER NOT NULL,
    started DOUBLE PRECISION NOT NULL, ended DOUBLE PRECISION)"""
#: ``capped``'s cap, fleet-wide.
CAP = 2
#: ``rated``'s rate limit, fleet-wide.
RATE = "20/s"


def _engine() -> sa.Engine:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    return storage.engine


def started() -> float:
    """Record that this run started (now, by the wall clock every process shares)."""
    now = time.time()
    job = jobs.current_job()
    with _engine().begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO test_limit_runs (job_id, type, pid, started)"
                " VALUES (:job, :type, :pid, :now)"
            ),
            {"job": job.id, "type": job.type, "pid": os.getpid(), "now": now},
        )
    return now


def ended() -> None:
    """Record that this run ended (before its completion is stored)."""
    job = jobs.current_job()
    with _engine().begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE test_limit_runs SET ended = :now"
                " WHERE job_id = :job AND pid = :pid AND ended IS NULL"
            ),
            {"job": job.id, "pid": os.getpid(), "now": time.time()},
        )


@queue.job(concurrency=CAP)
def capped(seconds: float) -> None:
    started()
    time.sleep(seconds)
    ended()


@queue.job(rate_limit=RATE)
def rated(n: int) -> int:
    started()
    ended()
    return n


@queue.job(concurrency=1, retries=2)
def single(marker: str | None) -> str:
    """One at a time; with a marker, hangs on its first run (the SIGKILL test kills it)."""
    started()
    if marker is not None and jobs.current_job().attempt == 1:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)
    time.sleep(0.05)
    ended()
    return "done"


if __name__ == "__main__":
    concurrency, lock_timeout = int(sys.argv[1]), float(sys.argv[2])
    queue.worker({"default": concurrency}, lock_timeout=lock_timeout, poll_interval=0.1).run()
