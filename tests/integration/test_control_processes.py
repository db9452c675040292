"""Job control across processes: a cancel reaches a handler running in another worker
process within a second, and a paused queue stops every process's claims."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from tests.helpers import wait_for
from tests.procs.control_app import EVENTS_TABLE

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def worker_process(queue: jobs.Queue, db_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process of tests/procs/control_app.py on the test database."""
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(EVENTS_TABLE)
    env = {**os.environ, "SDJ_DATABASE_URL": db_url}
    proc = subprocess.Popen([sys.executable, "-m", "tests.procs.control_app"], cwd=ROOT, env=env)
    yield proc
    proc.kill()
    proc.wait(10)


def _events(queue: jobs.Queue, what: str) -> list[tuple[str, float]]:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT job_id, at FROM test_events WHERE what = :what"), {"what": what}
        )
        return [(row[0], float(row[1])) for row in rows]


def test_a_cancel_reaches_a_handler_in_another_process_within_a_second(
    queue: jobs.Queue, worker_process: subprocess.Popen[bytes]
) -> None:
    job_id = queue.enqueue("loop")
    wait_for(lambda: _events(queue, "started"), timeout=30)
    wait_for(lambda: len(queue.storage.get_checkpoints(job_id)) >= 3)
    cancelled_at = time.time()
    assert queue.cancel(job_id) is True
    [(stopped_job, stopped_at)] = wait_for(lambda: _events(queue, "cancelled"), timeout=10)
    assert stopped_job == job_id
    assert stopped_at - cancelled_at < 1.5  # the worker looks every 0.5 s
    steps = len(queue.storage.get_checkpoints(job_id))
    job = queue.get_job(job_id)
    assert job is not None and job.status is jobs.JobStatus.CANCELLED
    assert len(queue.storage.get_checkpoints(job_id)) == steps  # no step after it


def test_a_paused_queue_stops_the_claims_of_another_process(
    queue: jobs.Queue, worker_process: subprocess.Popen[bytes]
) -> None:
    warm = queue.enqueue("ping")
    wait_for(lambda: any(j == warm for j, _ in _events(queue, "pinged")), timeout=30)
    queue.pause_queue("emails")
    held = queue.enqueue("mail", 1, queue="emails")
    later = queue.enqueue("ping")
    # The other process claimed a job stored after the paused one: it has looked.
    wait_for(lambda: any(j == later for j, _ in _events(queue, "pinged")))
    job = queue.get_job(held)
    assert job is not None and job.status is jobs.JobStatus.PENDING
    assert _events(queue, "mailed") == []
    queue.resume_queue("emails")
    wait_for(lambda: [j for j, _ in _events(queue, "mailed")] == [held])
