"""Scheduler worker processes for the multi-process schedule test.

python -m tests.procs.sched_app   (database from $SDJ_DATABASE_URL)
"""

from __future__ import annotations

import durable_jobs as jobs

queue = jobs.Queue()


@queue.job()
def tick() -> None:
    """Fired by the schedule; its job rows are what the test checks."""


queue.schedule("tick", jobs.every(seconds=1))


if __name__ == "__main__":
    queue.worker({"default": 2}, scheduler=True, poll_interval=0.1, lock_timeout=5).run()
