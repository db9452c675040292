"""The pytest plugin: its fixtures, used here as a user's tests would (entry point)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

import durable_jobs as jobs
from durable_jobs.testing import FakeClock, QueueHarness, drain


@dataclass
class Signup:
    email: str


def test_the_plugin_imports_nothing_heavy() -> None:
    code = (
        "import sys, durable_jobs_pytest;"
        "heavy = [m for m in sys.modules if m.split('.')[0] in"
        " ('durable_jobs', 'sqlalchemy', 'pydantic')];"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_sdj_queue_reads_sdj_clock(sdj_queue: jobs.Queue, sdj_clock: FakeClock) -> None:
    assert sdj_clock.now() == datetime(2026, 1, 1, tzinfo=UTC)
    sdj_queue.register("t", lambda: None)
    job_id = sdj_queue.enqueue("t", delay=timedelta(hours=1))
    job = sdj_queue.get_job(job_id)
    assert job is not None and job.run_at == datetime(2026, 1, 1, 1, tzinfo=UTC)


def test_the_harness_asserts_on_jobs_and_outcomes(sdj_harness: QueueHarness) -> None:
    queue = sdj_harness.queue
    welcomed: list[str] = []

    @queue.job()
    def welcome(signup: Signup) -> str:
        welcomed.append(signup.email)
        return f"hi {signup.email}"

    @queue.job()
    def signup(signup: Signup) -> None:
        queue.enqueue(welcome, signup, delay=timedelta(minutes=10))

    queue.enqueue(signup, Signup("ana@example.com"))
    assert sdj_harness.drain().completed == 1
    sdj_harness.assert_enqueued(welcome, Signup("ana@example.com"), count=1, status="pending")
    sdj_harness.assert_enqueued("welcome", {"email": "ana@example.com"})
    with pytest.raises(AssertionError, match="expected 1 job"):
        sdj_harness.assert_enqueued(welcome, Signup("bob@example.com"), count=1)
    assert sdj_harness.advance(minutes=10).completed == 1
    [outcome] = sdj_harness.outcomes(welcome)
    assert (outcome.status, outcome.value) == (jobs.JobStatus.COMPLETED, "hi ana@example.com")
    assert [j.type for j in sdj_harness.jobs("signup")] == ["signup"]
    with pytest.raises(AssertionError, match="found 0"):
        sdj_harness.assert_enqueued("welcome", count=1, status="failed")


@pytest.fixture
def server_url(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDJ_TEST_DATABASE_URL", postgres_url)


def test_sdj_postgres_queue_is_a_scratch_schema(
    server_url: None, sdj_postgres_queue: jobs.Queue
) -> None:
    storage = sdj_postgres_queue.storage
    assert isinstance(storage, jobs.SQLStorage) and storage.engine.dialect.name == "postgresql"
    sdj_postgres_queue.register("t", lambda: "ok")
    job_id = sdj_postgres_queue.enqueue("t")
    assert drain(sdj_postgres_queue).completed == 1
    assert sdj_postgres_queue.result(job_id, timeout=0) == "ok"
    with storage.engine.connect() as conn:
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
    assert str(schema).startswith("sdj_test_")
