"""Job control: a unique job, a paused queue, a cancelled export and a run timeout.

Everything here is stored in the database, so it holds for every worker of every host.
Run it: python examples/job_control.py
"""

from __future__ import annotations

import time
from datetime import timedelta

import durable_jobs as jobs

queue = jobs.Queue()  # $SDJ_DATABASE_URL, else sqlite:///jobs.db


@queue.job()
def sync_user(user_id: int) -> str:
    return f"user {user_id} synced"


@queue.job(queue="emails")
def newsletter(issue: int) -> str:
    return f"issue {issue} sent"


@queue.job()
def export_rows(chunk: int) -> int:
    time.sleep(0.05)
    return chunk


@queue.job()
def export(chunks: int) -> int:
    """A long export: each chunk is a durable call, where a cancel stops it."""
    return sum(jobs.call(export_rows, n) for n in range(chunks))


@queue.job(timeout=timedelta(seconds=0.5), retries=0)
def slow_report() -> str:
    while True:  # never finishes: its timeout stops it at the next library call
        jobs.set_progress({"at": time.time()})
        time.sleep(0.05)


if __name__ == "__main__":
    # Enqueued twice with one key while the first is unfinished (before a worker could
    # run it): one job.
    first = queue.enqueue(sync_user, 7, unique_key="sync:7")
    again = queue.enqueue(sync_user, 7, unique_key="sync:7")
    with queue.worker():
        print("one job for sync:7:", first == again, "->", queue.result(first, timeout=10))

        # No worker claims from a paused queue until it is resumed.
        queue.pause_queue("emails")
        issue = queue.enqueue(newsletter, 12)
        queue.result(queue.enqueue(sync_user, 8), timeout=10)  # the worker claimed since
        print("newsletter while its queue is paused:", queue.get_job(issue).status.value)
        queue.resume_queue("emails")
        print("after resume_queue:", queue.result(issue, timeout=10))

        # A running export is cancelled: it stops at its next durable call.
        big = queue.enqueue(export, 1000)
        while len(queue.storage.get_checkpoints(big)) < 3:
            time.sleep(0.01)
        queue.cancel(big)
        try:
            queue.result(big, timeout=10)
        except jobs.JobCancelled as exc:
            print(exc)

        # A run over its timeout fails with JobTimeout.
        try:
            queue.result(queue.enqueue(slow_report), timeout=10)
        except jobs.JobFailed as exc:
            print("slow report:", exc.error)
