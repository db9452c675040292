"""Workflows that wait, run by the crash tests as real worker processes.

python -m tests.procs.waiting_app QUEUES LOCK_TIMEOUT   (database from $SDJ_DATABASE_URL)

QUEUES is ``name:slots[,name:slots...]``, such as ``parents:2,kids:4``.

Every handler and step records each execution in ``waiting_runs`` (committed before it
goes on), with the run's attempt and whether the run resumes the job from a wait, so
that the tests count what really ran however the process ends. A handler that is told
to block at a moment writes its process id to a marker file and sleeps until it is
SIGKILLed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import durable_jobs as jobs
from durable_jobs.errors import Suspend

queue = jobs.Queue()
QUICK = jobs.constant(0.05)  # a run taken back is retried at once

RUNS_TABLE = (
    "CREATE TABLE IF NOT EXISTS waiting_runs (job_id VARCHAR(255) NOT NULL,"
    " label VARCHAR(255) NOT NULL, attempt INTEGER NOT NULL, resumed INTEGER NOT NULL,"
    " note TEXT, pid INTEGER NOT NULL)"
)


def record(label: str, note: str | None = None) -> jobs.Job:
    """Store this execution of ``label`` durably, outside the job's own bookkeeping."""
    job = jobs.current_job()
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO waiting_runs (job_id, label, attempt, resumed, note, pid)"
                " VALUES (:job, :label, :attempt, :resumed, :note, :pid)"
            ),
            {
                "job": job.id,
                "label": label,
                "attempt": job.attempt,
                "resumed": int(job.wait_until is not None),
                "note": note,
                "pid": os.getpid(),
            },
        )
    return job


def first_run(job: jobs.Job) -> bool:
    """Whether ``job`` runs for the first time (its first attempt, not a resume)."""
    return job.attempt == 1 and job.wait_until is None


def block(marker: str) -> None:
    """Say where the process is (its pid in ``marker``) and wait to be SIGKILLed."""
    Path(marker).write_text(str(os.getpid()))
    time.sleep(3600)
    raise AssertionError("the test did not kill this worker")


@queue.job()
def step(label: str) -> str:
    """A workflow step (a ``jobs.call``): recorded under its parent's id."""
    record(label)
    return label.upper()


@queue.job(retries=2, backoff=QUICK)
def nap(args: dict[str, Any]) -> list[str]:
    """Sleeps between two steps; with a marker, its first run blocks once the sleep's
    checkpoint is stored, before the worker stores the suspension."""
    job = record("run")
    before = jobs.call(step, "before")
    try:
        jobs.sleep(args["seconds"])
    except Suspend:
        if args.get("marker") and first_run(job):
            block(args["marker"])
        raise
    after = jobs.call(step, "after")
    if job.wait_until is not None:
        record("woke", job.wait_until.isoformat())
    return [before, after]


@queue.job(retries=2, backoff=QUICK)
def fan(args: dict[str, Any]) -> dict[str, Any]:
    """Fans out ``n`` kids (collect) between two steps; with ``block_suspend``, its first
    run blocks once the children and the fan-out's checkpoint are stored, before the
    worker stores the suspension."""
    job = record("run")
    before = jobs.call(step, "before")
    options = {"queue": args["kids_queue"], **args.get("kid_options", {})}
    kids = [jobs.sub(kid, {"i": i, **args.get("kid", {})}, **options) for i in range(args["n"])]
    try:
        results = jobs.fan_out(kids, on_failure="collect")
    except Suspend:
        if args.get("block_suspend") and first_run(job):
            block(args["marker"])
        raise
    after = jobs.call(step, "after")
    return {
        "steps": [before, after],
        "values": [r.value for r in results],
        "errors": [r.error for r in results],
    }


@queue.job(retries=1, backoff=QUICK)
def kid(args: dict[str, Any]) -> int:
    """A child; the one numbered ``block`` blocks on its first run (with ``marker``)."""
    job = record(f"kid{args['i']}")
    if args.get("block") == args["i"] and job.attempt == 1:
        block(args["marker"])
    return int(args["i"]) * 10


@queue.job(retries=2, backoff=QUICK)
def approval(args: dict[str, Any]) -> Any:
    """Waits for the signal ``go``; the run that consumed one blocks (with a marker)
    before its next step, on the job's first attempt."""
    job = record("run")
    before = jobs.call(step, "before")
    decision = jobs.wait_for_signal("go")
    record("got", repr(decision))
    if args.get("marker") and job.attempt == 1:
        block(args["marker"])
    after = jobs.call(step, f"after {decision}")
    return [before, decision, after]


def main() -> None:
    spec, lock_timeout = sys.argv[1], float(sys.argv[2])
    queues = {name: int(slots) for name, slots in (q.split(":") for q in spec.split(","))}
    queue.worker(queues, lock_timeout=lock_timeout, poll_interval=0.1).run()


if __name__ == "__main__":
    main()
