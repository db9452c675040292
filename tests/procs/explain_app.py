"""A worker process for the explain and worker-registry tests: one slot on "default".

python -m tests.procs.explain_app   (database from $SDJ_DATABASE_URL)

``hold`` runs until the job is cancelled, so a test can keep the one slot taken (and
the worker live, heartbeating) for as long as it needs.
"""

from __future__ import annotations

import time

import durable_jobs as jobs

queue = jobs.Queue()


@queue.job()
def hold() -> None:
    while not jobs.should_stop():
        time.sleep(0.02)


@queue.job()
def ping() -> str:
    return "pong"


if __name__ == "__main__":
    queue.worker(queues={"default": 1}, poll_interval=0.05, lock_timeout=5).run()
