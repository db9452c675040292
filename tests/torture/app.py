"""The torture run's job application, run as real worker processes.

python -m tests.torture.app CONCURRENCY LOCK_TIMEOUT   (database from $SDJ_DATABASE_URL)

Every handler first records its execution (job id, kind, step, attempt, pid, time) in
``torture_runs``, committed before it does anything else, so the driver can count what
really ran however the process ends. Each kind fails or succeeds as a function of the
run's attempt number (``design``), so the driver can check every stored outcome.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
import uuid
from typing import Any

import sqlalchemy as sa

import durable_jobs as jobs

# How long a recording insert keeps retrying through a database outage. Far longer
# than any outage the driver causes: a lost record would make the checks unsound.
_RECORD_DEADLINE = 120.0

RETRIES = {
    "plain": 6,
    "plain_async": 6,
    "flaky": 6,
    "refuse": 3,
    "later": 4,
    "later_always": 1,
    "exhaust": 2,
    "delayed": 6,
    "workflow": 10,
    "workflow_async": 10,
}
FLAKY_FAILURES = 2  # flaky fails its first two attempts
LATER_DELAY = 0.5  # seconds a RetryAfter asks for
STEPS = 5
WORKFLOWS = ("workflow", "workflow_async")
BACKOFF = jobs.constant(0.2)  # short waits between retries keep the run short


def design(kind: str, attempt: int, n: int) -> tuple[str, str]:
    """The outcome a run of ``kind`` at ``attempt`` stores: (status, error prefix)."""
    last = attempt > RETRIES[kind]
    failure = "failed" if last else "retrying"
    if kind == "flaky" and attempt <= FLAKY_FAILURES:
        return failure, "RuntimeError: flaky"
    if kind == "refuse":
        return "failed", "NoRetry: refused"
    if kind == "later" and attempt == 1:
        return failure, "RetryAfter: come back later"
    if kind == "later_always":
        return failure, "RetryAfter: come back later"
    if kind == "exhaust":
        return failure, "RuntimeError: always fails"
    if kind in WORKFLOWS and attempt == 1 and n % 2 == 0:
        return failure, "RuntimeError: crash after step 3"
    return "completed", ""


def expected_result(kind: str, n: int) -> Any:
    """The result of a job of ``kind`` that completes."""
    if kind in WORKFLOWS:
        return [n * 10 + i for i in range(1, STEPS + 1)]
    return n


def create_side_tables(conn: sa.Connection) -> None:
    """The tables the workers write (executions, completions seen by hooks).

    Keys are VARCHAR: MySQL indexes no TEXT column without a prefix length.
    """
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS torture_runs (id VARCHAR(64) PRIMARY KEY,"
        " job_id VARCHAR(255) NOT NULL, kind TEXT NOT NULL, step INTEGER,"
        " attempt INTEGER NOT NULL, pid INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL)"
    )
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS torture_hooks (id VARCHAR(64) PRIMARY KEY,"
        " job_id VARCHAR(255) NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL)"
    )


def _insert(queue: jobs.Queue, table: str, row: dict[str, Any]) -> None:
    """Commit one row, retrying through database outages (the workers' own retry is
    what is under test; the records that check it must not be lost).

    A commit whose answer an outage swallowed is retried too; the row's random id makes
    the retry a no-op then, so each execution is recorded exactly once.
    """
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    row = {"id": uuid.uuid4().hex, **row}
    # MySQL has no ON CONFLICT: its no-op update leaves the stored row as it was.
    on_conflict = (
        " ON DUPLICATE KEY UPDATE id = id"
        if storage.dialect.name == "mysql"
        else " ON CONFLICT (id) DO NOTHING"
    )
    statement = sa.text(
        f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(':' + c for c in row)})"
        + on_conflict
    )
    deadline = time.monotonic() + _RECORD_DEADLINE
    pause = 0.05
    while True:
        try:
            with storage.engine.begin() as conn:
                conn.execute(statement, row)
            return
        except sa.exc.DBAPIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def record(queue: jobs.Queue, kind: str, step: int | None = None) -> jobs.Job:
    job = jobs.current_job()
    _insert(
        queue,
        "torture_runs",
        {
            "job_id": job.id,
            "kind": kind,
            "step": step,
            "attempt": job.attempt,
            "pid": os.getpid(),
            "at": time.time(),
        },
    )
    return job


def _work() -> None:
    # Long enough that kills often land inside a handler.
    time.sleep(random.uniform(0.0, 0.03))


def register(queue: jobs.Queue) -> None:
    """Register the torture handlers (the driver registers them too, for their defaults)."""

    def plain(n: int) -> int:
        record(queue, "plain")
        _work()
        return n

    async def plain_async(n: int) -> int:
        await asyncio.to_thread(record, queue, "plain_async")
        await asyncio.sleep(random.uniform(0.0, 0.03))
        return n

    def flaky(n: int) -> int:
        job = record(queue, "flaky")
        _work()
        if job.attempt <= FLAKY_FAILURES:
            raise RuntimeError("flaky")
        return n

    def refuse(n: int) -> int:
        record(queue, "refuse")
        raise jobs.NoRetry(f"refused {n}")

    def later(n: int) -> int:
        job = record(queue, "later")
        if job.attempt == 1:
            raise jobs.RetryAfter(LATER_DELAY, "come back later")
        return n

    def later_always(n: int) -> int:
        record(queue, "later_always")
        raise jobs.RetryAfter(0.1, "come back later")

    def exhaust(n: int) -> int:
        record(queue, "exhaust")
        raise RuntimeError("always fails")

    def delayed(n: int) -> int:
        record(queue, "delayed")
        return n

    def workflow(n: int) -> list[int]:
        job = record(queue, "workflow")
        results = []
        for i in range(1, STEPS + 1):
            results.append(jobs.call("wf_step", [n, i]))
            if i == 3 and job.attempt == 1 and n % 2 == 0:
                raise RuntimeError("crash after step 3")
        return results

    def wf_step(args: list[int]) -> int:
        n, i = args
        record(queue, "wf_step", i)
        _work()
        return n * 10 + i

    async def workflow_async(n: int) -> list[int]:
        job = await asyncio.to_thread(record, queue, "workflow_async")
        # Steps 1 and 2 run concurrently and step 1 finishes last: their checkpoints must
        # keep the order the calls were made in, or a replay swaps their results.
        first = await asyncio.gather(
            jobs.call_async("wf_step_async", [n, 1]), jobs.call_async("wf_step_async", [n, 2])
        )
        results = list(first)
        for i in range(3, STEPS + 1):
            results.append(await jobs.call_async("wf_step_async", [n, i]))
            if i == 3 and job.attempt == 1 and n % 2 == 0:
                raise RuntimeError("crash after step 3")
        return results

    async def wf_step_async(args: list[int]) -> int:
        n, i = args
        await asyncio.to_thread(record, queue, "wf_step", i)
        await asyncio.sleep(random.uniform(0.0, 0.03) + (0.03 if i == 1 else 0.0))
        return n * 10 + i

    kinds = (plain, plain_async, flaky, refuse, later, later_always, exhaust, delayed, workflow)
    for fn in (*kinds, workflow_async):
        queue.register(fn.__name__, fn, retries=RETRIES[fn.__name__], backoff=BACKOFF)
    queue.register("wf_step", wf_step)
    queue.register("wf_step_async", wf_step_async)

    @queue.on_job_complete
    def completed(job: jobs.Job) -> None:
        _insert(
            queue, "torture_hooks", {"job_id": job.id, "attempt": job.attempt, "pid": os.getpid()}
        )


def main() -> None:
    concurrency, lock_timeout = int(sys.argv[1]), float(sys.argv[2])
    # Warnings (storage errors survived, outcomes rejected) go to the log the driver reads.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(threadName)s %(message)s")
    queue = jobs.Queue()
    register(queue)
    # A worker fails to start while its database is down (run() raises); a replacement
    # started during a restart waits for the database, as a supervisor would retry it.
    deadline = time.monotonic() + _RECORD_DEADLINE
    while True:
        try:
            queue.storage  # noqa: B018 - connects and migrates
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    worker = queue.worker(
        {"default": concurrency},
        lock_timeout=lock_timeout,
        poll_interval=0.2,
        worker_id=f"torture-{os.getpid()}",
    )
    worker.run()


if __name__ == "__main__":
    main()
