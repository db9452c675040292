"""A parent woken by a child that another process completed resumes at once, not at the
next poll: NOTIFY on PostgreSQL, the wake counters on SQLite and MySQL."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

import durable_jobs as jobs
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Another process: a worker of the children's queue only, until the child completed.
CHILD_WORKER = """
import sys, time
import durable_jobs as j
q = j.Queue(j.SQLStorage(sys.argv[1]))
q.register("kid", lambda: "from the other process", queue="kids")
with q.worker({"kids": 1}, poll_interval=0.05):
    deadline = time.monotonic() + 60
    while q.get_job(sys.argv[2]).status is not j.JobStatus.COMPLETED:
        assert time.monotonic() < deadline, "the child did not complete"
        time.sleep(0.01)
"""


def test_a_parent_woken_in_another_process_resumes_without_a_poll(queue: jobs.Queue) -> None:
    resumed = threading.Event()
    queue.register("kid", lambda: None, queue="kids")  # known here; run by the other process

    @queue.job()
    def parent() -> str:
        [result] = jobs.fan_out([jobs.sub("kid")])
        resumed.set()
        return str(result.value)

    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    url = storage.engine.url.render_as_string(hide_password=False)
    parent_id = queue.enqueue(parent)
    # Polls and maintenance both a minute apart: only a wake-up resumes the parent soon.
    with queue.worker({"default": 1}, poll_interval=60, lock_timeout=120) as worker:
        wait_for(lambda: queue.get_job(parent_id).status is jobs.JobStatus.WAITING)
        wait_for(lambda: not worker._dispatcher.queues["default"].maybe_work)
        [child] = storage.admin().children(parent_id).first
        subprocess.run([sys.executable, "-c", CHILD_WORKER, url, child.id], check=True, timeout=90)
        assert resumed.wait(10), "the parent waited for a poll after its child completed"
        assert queue.result(parent_id, timeout=10) == "from the other process"
