"""The torture run's job application, run as real worker processes.

python -m tests.torture.app CONCURRENCY LOCK_TIMEOUT   (database from $SDJ_DATABASE_URL)

Every handler first records its execution (job id, kind, step, attempt, whether the run
resumes the job from a wait, pid, time) in ``torture_runs``, committed before it does
anything else, so the driver can count what really ran however the process ends. Each
kind fails or succeeds as a function of the run's attempt number (``design``), so the
driver can check every stored outcome.

The kinds that wait (``WAITING``) wait once each: a durable sleep (``napper``), a
fan-out of ``FANOUT`` children in collect mode (``fanout``, its children are
``child`` jobs), and a wait for the signal ``go`` that the driver sends (``signalled``,
async), each between two checkpointed steps (call indexes 0 and 2; the wait is call 1).

The loopers (``LOOPERS``) run ``LOOP_STEPS`` checkpointed steps of ``LOOP_STEP_SECONDS``
each, so that they are often running when the driver cancels them. A loop step that is
told to stop (``jobs.should_stop()`` turns true in a sync one; an async one has its task
cancelled) records that it noticed (kind ``NOTICED``) and ends early. Every record also
keeps the job's status as the database showed it to the recording transaction
(``seen``): a record that saw ``cancelled`` began after the cancel had committed.

The capped kinds (``CAPS``) run under a fleet-wide concurrency cap: ``capped`` at most
2 at once, ``keyed`` at most 1 per key. Their handlers record their end too (``ENDED``).

Workers serve two queues: ``default``, and ``SIDE``, which the driver pauses for a while.
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
    "napper": 6,
    "fanout": 6,
    "child": 3,
    "signalled": 6,
    "looper": 6,
    "looper_async": 6,
    "capped": 6,
    "keyed": 6,
}
FLAKY_FAILURES = 2  # flaky fails its first two attempts
LATER_DELAY = 0.5  # seconds a RetryAfter asks for
STEPS = 5
WORKFLOWS = ("workflow", "workflow_async")
WAITING = ("napper", "fanout", "signalled")  # the kinds that wait, once each
LOOPERS = ("looper", "looper_async")  # long runs of steps, for the cancels to meet
LOOP_STEPS = 3
LOOP_STEP_SECONDS = 1.0
NOTICED = "noticed"  # the record of a loop step that was told to stop
# Kinds whose runs read and write checkpoints, so that a database outage can fail a run.
DURABLE = (*WORKFLOWS, *WAITING, *LOOPERS)
# How many call indexes each durable kind checkpoints when it completes.
CALLS = {
    "workflow": STEPS,
    "workflow_async": STEPS,
    "napper": 3,
    "fanout": 3,
    "signalled": 3,
    "looper": LOOP_STEPS,
    "looper_async": LOOP_STEPS,
}
# How many steps a run of the kind may have started at once (workflow_async gathers
# its first two): so many may begin after a cancel committed, before a refused
# checkpoint stops the run.
CONCURRENT_STEPS = {"workflow_async": 2}
SIDE = "side"  # the second queue the workers serve (the driver pauses it for a while)
SIDE_CONCURRENCY = 2
FANOUT = 3  # children per fan-out
SIGNAL = "go"  # the signal ``signalled`` waits for; the driver sends its n, then DECOY
DECOY = "decoy"  # sent after the real signal: never consumed
BACKOFF = jobs.constant(0.2)  # short waits between retries keep the run short
# Kinds with a fleet-wide concurrency cap (``keyed``: a cap per key of CAP_KEYS, the
# job's n modulo CAP_KEYS). Each run takes CAPPED_SECONDS; the handler records its end
# (kind ``ENDED``) too, so the driver can count how many ran at once.
CAPS = {"capped": 2, "keyed": 1}
CAP_KEYED = ("keyed",)
CAP_KEYS = 3
ENDED = "ended"  # the record of a capped handler that is about to return


def cap_key(n: int) -> str:
    """The concurrency key of the keyed job ``n``."""
    return f"k{n % CAP_KEYS}"


def capped_seconds(n: int) -> float:
    """How long a run of the capped (or keyed) job ``n`` takes."""
    return 0.2 + (n % 4) * 0.1


def nap_seconds(n: int) -> float:
    """How long the napper ``n`` sleeps."""
    return 0.3 + (n % 4) * 0.4


def child_n(parent_n: int, i: int) -> int:
    """The argument of child ``i`` of the fan-out ``parent_n`` (also its result)."""
    return parent_n * FANOUT + i


def child_refuses(n: int) -> bool:
    """Whether the child ``n`` fails for good (the last child of every third fan-out)."""
    return n % FANOUT == FANOUT - 1 and (n // FANOUT) % 3 == 0


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
    if kind == "napper" and attempt == 1 and n % 2 == 0:
        return failure, "RuntimeError: crash after the sleep"
    if kind == "child" and n % FANOUT == 0 and attempt == 1:
        return failure, "RuntimeError: flaky child"
    if kind == "child" and child_refuses(n):
        return "failed", "NoRetry: child refused"
    return "completed", ""


def final_status(kind: str, n: int) -> str:
    """How a job of ``kind`` ends."""
    if kind in ("refuse", "later_always", "exhaust"):
        return "failed"
    if kind == "child" and child_refuses(n):
        return "failed"
    return "completed"


def expected_result(kind: str, n: int, cancelled: frozenset[int] = frozenset()) -> Any:
    """The result of a job of ``kind`` that completes (for a fan-out, ``cancelled`` are
    the children cancelled on their own: each counts as a failed child)."""
    if kind in WORKFLOWS:
        return [n * 10 + i for i in range(1, STEPS + 1)]
    if kind in LOOPERS:
        return [n * 100 + i for i in range(1, LOOP_STEPS + 1)]
    if kind == "napper":
        return [n * 10 + 1, n * 10 + 3]
    if kind == "signalled":
        return [n * 10 + 1, n, n * 10 + 3]
    if kind == "fanout":
        kids = [child_n(n, i) for i in range(FANOUT)]
        return {
            "steps": [n * 10 + 1, n * 10 + 3],
            "values": [None if child_refuses(k) or k in cancelled else k for k in kids],
            "ok": [not child_refuses(k) and k not in cancelled for k in kids],
        }
    return n


def create_side_tables(conn: sa.Connection) -> None:
    """The tables the workers write (executions, completions seen by hooks).

    Keys are VARCHAR: MySQL indexes no TEXT column without a prefix length.
    """
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS torture_runs (id VARCHAR(64) PRIMARY KEY,"
        " job_id VARCHAR(255) NOT NULL, kind TEXT NOT NULL, step INTEGER,"
        " attempt INTEGER NOT NULL, pid INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL,"
        " resumed INTEGER NOT NULL, seen VARCHAR(32))"
    )
    conn.exec_driver_sql(
        "CREATE TABLE IF NOT EXISTS torture_hooks (id VARCHAR(64) PRIMARY KEY,"
        " job_id VARCHAR(255) NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL)"
    )


def _insert(queue: jobs.Queue, table: str, row: dict[str, Any], *, seen: bool = False) -> None:
    """Commit one row, retrying through database outages (the workers' own retry is
    what is under test; the records that check it must not be lost).

    A commit whose answer an outage swallowed is retried too; the row's random id makes
    the retry a no-op then, so each execution is recorded exactly once. With ``seen``,
    the row's ``seen`` column is the status of its job as the inserting statement read
    it (its own snapshot: what had committed by then).
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
    columns, values = list(row), [":" + c for c in row]
    if seen:
        # A parameter of its own: PostgreSQL deduces one type per parameter (VARCHAR for
        # the job_id column, TEXT for sdj_jobs.id) and refuses one used as both.
        row["seen_of"] = row["job_id"]
        columns.append("seen")
        values.append("(SELECT status FROM sdj_jobs WHERE id = :seen_of)")
    statement = sa.text(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(values)})" + on_conflict
    )
    deadline = time.monotonic() + _RECORD_DEADLINE
    pause = 0.05
    while True:
        try:
            with storage.engine.begin() as conn:
                conn.execute(statement, row)
            return
        except sa.exc.ProgrammingError:
            raise  # a wrong statement, not an outage: fail the run loudly, at once
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
            # A run that resumes the job from a wait keeps the wait's deadline (or the
            # moment it was woken) in wait_until; a fresh run (a new attempt) has none.
            "resumed": int(job.wait_until is not None),
        },
        seen=True,
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

    def napper(n: int) -> list[int]:
        job = record(queue, "napper")
        first = jobs.call("wf_step", [n, 1])
        jobs.sleep(nap_seconds(n))
        if job.attempt == 1 and n % 2 == 0:
            raise RuntimeError("crash after the sleep")
        return [first, jobs.call("wf_step", [n, 3])]

    def fanout(n: int) -> dict[str, Any]:
        record(queue, "fanout")
        first = jobs.call("wf_step", [n, 1])
        kids = [jobs.sub("child", child_n(n, i)) for i in range(FANOUT)]
        results = jobs.fan_out(kids, on_failure="collect")
        return {
            "steps": [first, jobs.call("wf_step", [n, 3])],
            "values": [r.value for r in results],
            "ok": [r.ok for r in results],
        }

    def child(n: int) -> int:
        job = record(queue, "child")
        _work()
        if n % FANOUT == 0 and job.attempt == 1:
            raise RuntimeError("flaky child")
        if child_refuses(n):
            raise jobs.NoRetry(f"child refused {n}")
        return n

    async def signalled(n: int) -> list[Any]:
        await asyncio.to_thread(record, queue, "signalled")
        first = await jobs.call_async("wf_step_async", [n, 1])
        payload = await jobs.wait_for_signal_async(SIGNAL)
        return [first, payload, await jobs.call_async("wf_step_async", [n, 3])]

    def looper(n: int) -> list[int]:
        record(queue, "looper")
        return [jobs.call("loop_step", [n, i]) for i in range(1, LOOP_STEPS + 1)]

    def loop_step(args: list[int]) -> int:
        n, i = args
        record(queue, "loop_step", i)
        end = time.monotonic() + LOOP_STEP_SECONDS
        while time.monotonic() < end:
            if jobs.should_stop():
                # Ended early: the checkpoint of what it returns must then be refused.
                record(queue, NOTICED, i)
                break
            time.sleep(0.05)
        return n * 100 + i

    async def looper_async(n: int) -> list[int]:
        await asyncio.to_thread(record, queue, "looper_async")
        return [await jobs.call_async("loop_step_async", [n, i]) for i in range(1, LOOP_STEPS + 1)]

    async def loop_step_async(args: list[int]) -> int:
        n, i = args
        await asyncio.to_thread(record, queue, "loop_step", i)
        try:
            await asyncio.sleep(LOOP_STEP_SECONDS)
        except asyncio.CancelledError:
            # Shielded: a second cancel must not lose the record (its thread goes on).
            await asyncio.shield(asyncio.to_thread(record, queue, NOTICED, i))
            raise
        return n * 100 + i

    def capped(n: int) -> int:
        record(queue, "capped")
        time.sleep(capped_seconds(n))
        record(queue, ENDED)
        return n

    async def keyed(n: int) -> int:
        await asyncio.to_thread(record, queue, "keyed")
        await asyncio.sleep(capped_seconds(n))
        await asyncio.to_thread(record, queue, ENDED)
        return n

    kinds = (plain, plain_async, flaky, refuse, later, later_always, exhaust, delayed, workflow)
    waits = (workflow_async, napper, fanout, child, signalled)
    for fn in (*kinds, *waits, looper, looper_async):
        queue.register(fn.__name__, fn, retries=RETRIES[fn.__name__], backoff=BACKOFF)
    queue.register(
        "capped", capped, retries=RETRIES["capped"], backoff=BACKOFF, concurrency=CAPS["capped"]
    )
    queue.register(
        "keyed",
        keyed,
        retries=RETRIES["keyed"],
        backoff=BACKOFF,
        concurrency=CAPS["keyed"],
        concurrency_key=cap_key,
    )
    for step in (wf_step, wf_step_async, loop_step, loop_step_async):
        queue.register(step.__name__, step)

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
        {"default": concurrency, SIDE: SIDE_CONCURRENCY},
        lock_timeout=lock_timeout,
        poll_interval=0.2,
        worker_id=f"torture-{os.getpid()}",
    )
    worker.run()


if __name__ == "__main__":
    main()
