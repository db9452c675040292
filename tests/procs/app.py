"""A job application run by the multi-process tests as real worker processes.

python -m tests.procs.app CONCURRENCY LOCK_TIMEOUT   (database from $SDJ_DATABASE_URL)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import sqlalchemy as sa

import durable_jobs as jobs

queue = jobs.Queue()
RUNS_TABLE = "CREATE TABLE IF NOT EXISTS test_runs (job_id TEXT NOT NULL, pid INTEGER NOT NULL)"


def record_run(label: str | None = None) -> None:
    """Store this execution durably, outside the job's own bookkeeping."""
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO test_runs (job_id, pid) VALUES (:job, :pid)"),
            {"job": label or jobs.current_job().id, "pid": os.getpid()},
        )


@queue.job()
def record(n: int) -> int:
    record_run()
    return n


@queue.job()
def hang(marker: str) -> str:
    """Hangs on its first run (for the SIGKILL tests), succeeds on the next."""
    record_run()
    if jobs.current_job().attempt == 1:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(3600)
    return "recovered"


@queue.job()
def slow(marker: str) -> str:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(1.0)
    return "slept"


@queue.job()
def step(n: int) -> int:
    """A workflow step; step 3 hangs on the job's first run (the SIGKILL test kills it)."""
    record_run(f"step{n}")
    if n == 3 and jobs.current_job().attempt == 1:
        Path(os.environ["SDJ_TEST_MARKER"]).write_text(str(os.getpid()))
        time.sleep(3600)
    return n * 10


@queue.job(retries=3)
def five_steps() -> list[int]:
    return [jobs.call("step", n) for n in range(1, 6)]


if __name__ == "__main__":
    concurrency, lock_timeout = int(sys.argv[1]), float(sys.argv[2])
    queue.worker({"default": concurrency}, lock_timeout=lock_timeout, poll_interval=0.1).run()
