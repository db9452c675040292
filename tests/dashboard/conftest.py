"""Fixtures of the dashboard tests: a database holding jobs that a real worker ran.

Every fixture builds on ``queue``, so each test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import pytest

import durable_jobs as jobs
from durable_jobs.dashboard import create_app
from tests.helpers import wait_for

from .helpers import FAST, SCRIPT_ARGS, Made, TestClient, register


@pytest.fixture
def made(queue: jobs.Queue) -> Made:
    """Completed, failed and workflow jobs run by a real worker, plus waiting ones."""
    register(queue)
    ids = [
        queue.enqueue("greet", SCRIPT_ARGS),
        queue.enqueue("greet", {"name": "Ada"}),
        queue.enqueue("explode"),
        queue.enqueue("order"),
    ]
    later = queue.enqueue("greet", {"name": "later"}, delay=3600)
    with queue.worker(**FAST):
        wait_for(lambda: all(_finished(queue, job_id) for job_id in ids))
    due = queue.enqueue("greet", {"name": "due"}, queue="idle")
    return Made(*ids, due=due, later=later)


def _finished(queue: jobs.Queue, job_id: str) -> bool:
    job = queue.get_job(job_id)
    return job is not None and job.status.is_terminal


@pytest.fixture
def client(queue: jobs.Queue) -> TestClient:
    """A test client of a dashboard that lets everyone act."""
    return TestClient(create_app(queue, auth=lambda request: True))


@pytest.fixture
def readonly(queue: jobs.Queue) -> TestClient:
    """A test client of a read-only dashboard (no auth callable)."""
    return TestClient(create_app(queue))
