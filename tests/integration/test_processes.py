"""Real worker processes: exactly-once draining, SIGKILL recovery and SIGTERM draining."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

import durable_jobs as jobs
from tests.helpers import wait_for
from tests.procs.app import RUNS_TABLE

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


class Workers:
    """Starts worker processes of tests/procs/app.py and kills what is left at the end."""

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, concurrency: int = 10, lock_timeout: float = 5, marker: Path | None = None
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "SDJ_DATABASE_URL": self.db_url}
        if marker is not None:
            env["SDJ_TEST_MARKER"] = str(marker)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.procs.app", str(concurrency), str(lock_timeout)],
            cwd=ROOT,
            env=env,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def workers(db_url: str) -> Iterator[Workers]:
    w = Workers(db_url)
    yield w
    w.close()


@pytest.fixture
def runs_queue(queue: jobs.Queue) -> jobs.Queue:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.begin() as conn:
        conn.exec_driver_sql(RUNS_TABLE)
        conn.exec_driver_sql("DELETE FROM test_runs")
    return queue


def runs(queue: jobs.Queue) -> list[tuple[str, int]]:
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    with storage.engine.connect() as conn:
        return [(r[0], r[1]) for r in conn.execute(sa.text("SELECT job_id, pid FROM test_runs"))]


def count(queue: jobs.Queue, status: str) -> int:
    return len(queue.storage.get_jobs_by_status(status, 100_000))


def kill_mid_job(workers: Workers, marker: Path) -> None:
    """Start a worker (1 s lock timeout) and SIGKILL it once its job has written ``marker``."""
    worker = workers.start(lock_timeout=1, marker=marker)
    wait_for(marker.exists, timeout=30)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)


def wait_for_status(queue: jobs.Queue, job_id: str, status: str) -> jobs.Job:
    """The job once it has ``status``; fails after 30 s."""

    def reached() -> jobs.Job | None:
        job = queue.get_job(job_id)
        return job if job is not None and job.status == status else None

    return wait_for(reached, timeout=30)


def test_three_processes_drain_each_job_exactly_once(
    runs_queue: jobs.Queue, workers: Workers
) -> None:
    ids = runs_queue.enqueue_many([("record", n) for n in range(1000)])
    procs = [workers.start(concurrency=5) for _ in range(3)]
    wait_for(lambda: count(runs_queue, "completed") == 1000, timeout=90, interval=0.1)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(30) for proc in procs] == [0, 0, 0]
    executed = runs(runs_queue)
    assert sorted(job_id for job_id, _ in executed) == sorted(ids)  # each exactly once
    assert len({pid for _, pid in executed}) >= 2, "the work was not shared between processes"
    for job_id in ids[:20]:
        job = runs_queue.get_job(job_id)
        assert job is not None and job.attempt == 1 and job.result is not None


def test_job_of_a_sigkilled_worker_is_taken_back_and_finished(
    runs_queue: jobs.Queue, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "running"
    job_id = runs_queue.enqueue("hang", str(marker), retries=2)
    kill_mid_job(workers, marker)
    job = runs_queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.RUNNING
    workers.start(lock_timeout=1)
    job = wait_for_status(runs_queue, job_id, "completed")
    assert job.attempt == 2 and job.result == b'"recovered"'
    # The second run (attempt 2) completed: the taken-back run's error is not kept.
    assert job.last_error is None and job.traceback is None
    assert len(runs(runs_queue)) == 2


def test_a_job_that_always_kills_its_worker_ends_failed(
    runs_queue: jobs.Queue, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "running"
    job_id = runs_queue.enqueue("hang", str(marker), retries=0)
    kill_mid_job(workers, marker)
    workers.start(lock_timeout=1)
    job = wait_for_status(runs_queue, job_id, "failed")
    assert job.attempt == 1
    assert len(runs(runs_queue)) == 1


def test_sigterm_drains_the_running_job_and_exits_zero(
    runs_queue: jobs.Queue, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "running"
    job_id = runs_queue.enqueue("slow", str(marker))
    proc = workers.start()
    wait_for(marker.exists, timeout=30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    job = runs_queue.get_job(job_id)
    assert job is not None and job.status == jobs.JobStatus.COMPLETED
    assert job.result == b'"slept"'


def test_workflow_resumes_from_its_checkpoints_after_sigkill(
    runs_queue: jobs.Queue, workers: Workers, tmp_path: Path
) -> None:
    marker = tmp_path / "in-step-3"
    job_id = runs_queue.enqueue("five_steps")
    kill_mid_job(workers, marker)  # in the middle of step 3
    workers.start(lock_timeout=1, marker=marker)
    job = wait_for_status(runs_queue, job_id, "completed")
    assert job.attempt == 2 and job.result == b"[10,20,30,40,50]"
    steps = Counter(label for label, _ in runs(runs_queue))
    assert steps == {"step1": 1, "step2": 1, "step3": 2, "step4": 1, "step5": 1}
    assert runs_queue.storage.get_checkpoints(job_id) == []


def test_enqueue_from_another_process_wakes_an_idle_worker(queue: jobs.Queue) -> None:
    done = threading.Event()
    queue.register("ping", lambda: done.set())
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    url = storage.engine.url.render_as_string(hide_password=False)
    producer = "import sys, durable_jobs as j; j.Queue(j.SQLStorage(sys.argv[1])).enqueue('ping')"
    with queue.worker(poll_interval=60, lock_timeout=5) as worker:
        # idle: only a wake-up helps
        wait_for(lambda: not worker._dispatcher.queues["default"].maybe_work)
        subprocess.run([sys.executable, "-c", producer, url], check=True, timeout=60)
        assert done.wait(10), "a job enqueued by another process did not wake the worker"
