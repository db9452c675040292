"""The worker in a user's first hour: failures are logged with their traceback (and it is
stored), the default worker serves every queue its handlers name, delays are honoured
promptly however long the poll interval, and stopping has a timeout and a second signal.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
FAST: dict[str, Any] = {"poll_interval": 0.05, "lock_timeout": 5}


def stored(queue: jobs.Queue, job_id: str) -> jobs.Job:
    job = queue.get_job(job_id)
    assert job is not None
    return job


def has_status(queue: jobs.Queue, job_id: str, *statuses: jobs.JobStatus) -> bool:
    return stored(queue, job_id).status in statuses


# -- 1. failures are visible --------------------------------------------------------------


def records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in list(caplog.records)
        if r.name == "durable_jobs" and r.levelno == level and text in r.getMessage()
    ]


def test_retry_logs_a_warning_and_a_permanent_failure_an_error_with_traceback(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    def parse_config(raw: str) -> int:
        return int(raw)

    @queue.job(retries=1, backoff=jobs.constant(0.01))
    def load(raw: str) -> int:
        try:
            return parse_config(raw)
        except ValueError as exc:
            error = RuntimeError(f"bad config {raw!r}")
            error.add_note("hint: the config must be a number")
            raise error from exc

    caplog.set_level(logging.INFO, logger="durable_jobs")
    job_id = queue.enqueue(load, "x1")
    with queue.worker(**FAST):
        wait_for(lambda: records(caplog, logging.ERROR, job_id))
    [retry] = records(caplog, logging.WARNING, job_id)
    message = retry.getMessage()
    assert "failed on attempt 1 of 2" in message
    assert "RuntimeError: bad config 'x1'" in message and "retrying at" in message
    [failure] = records(caplog, logging.ERROR, job_id)
    assert "failed permanently on attempt 2 of 2" in failure.getMessage()
    assert failure.exc_info is not None
    logged = logging.Formatter().formatException(failure.exc_info)
    for text in ("Traceback (most recent call last)", "in parse_config", "hint: the config"):
        assert text in logged
    assert "direct cause" in logged and "ValueError: invalid literal" in logged

    job = stored(queue, job_id)
    assert job.status == jobs.JobStatus.FAILED
    assert job.last_error == "RuntimeError: bad config 'x1'"
    assert job.traceback is not None
    tb = job.traceback
    assert tb.startswith("Traceback (most recent call last)")
    assert "in parse_config" in tb and "ValueError: invalid literal" in tb
    assert "The above exception was the direct cause" in tb
    assert "hint: the config must be a number" in tb
    assert tb.rstrip().endswith("hint: the config must be a number")
    # It starts at the handler: the library frames that called it are left out.
    assert "executor.py" not in tb and "in load" in tb


def test_a_huge_traceback_keeps_its_end(queue: jobs.Queue) -> None:
    @queue.job(retries=0)
    def chained(n: int) -> None:
        error: BaseException | None = None
        for i in range(n):  # a long chain of causes, each with a frame
            try:
                raise KeyError(f"link {i}") from error
            except KeyError as exc:
                error = exc
        raise ValueError("the bottom") from error

    job_id = queue.enqueue(chained, 400)
    with queue.worker(**FAST):
        wait_for(lambda: has_status(queue, job_id, jobs.JobStatus.FAILED))
    tb = stored(queue, job_id).traceback
    assert tb is not None and len(tb) < 17 * 1024
    assert "earlier characters cut" in tb.splitlines()[0]
    assert tb.rstrip().endswith("ValueError: the bottom")


# -- 2. the default worker serves every queue its handlers name ---------------------------


def test_default_worker_serves_default_and_every_handler_queue(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    done: list[str] = []
    queue.register("plain", lambda: done.append("plain"))
    queue.register("mail", lambda: done.append("mail"), queue="emails")
    worker = queue.worker(**FAST)
    # Registered after the worker was made, before it starts: served too.
    queue.register("report", lambda: done.append("report"), queue="reports")
    ids = [queue.enqueue("plain"), queue.enqueue("mail"), queue.enqueue("report")]
    caplog.set_level(logging.WARNING, logger="durable_jobs")
    with worker:
        assert worker.concurrency == {"default": 10, "emails": 10, "reports": 10}
        wait_for(lambda: all(has_status(queue, i, jobs.JobStatus.COMPLETED) for i in ids))
    assert sorted(done) == ["mail", "plain", "report"]
    assert "wait for another worker" not in caplog.text


def test_explicit_queues_warn_once_about_handler_queues_left_unserved(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    queue.register("plain", lambda: None)
    queue.register("mail", lambda: None, queue="emails")
    queue.register("bulk_mail", lambda: None, queue="emails")
    caplog.set_level(logging.WARNING, logger="durable_jobs")
    with queue.worker(["default"], **FAST) as worker:
        assert worker.concurrency == {"default": 10}
    warnings = [r for r in caplog.records if "wait for another worker" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "mail, bulk_mail in queue 'emails'" in message and "plain" not in message


# -- 5. delays are honoured promptly -------------------------------------------------------


def test_a_short_backoff_retries_promptly_despite_a_long_poll_interval(
    queue: jobs.Queue,
) -> None:
    runs: list[tuple[str, float]] = []

    @queue.job(backoff=jobs.constant(0.1))
    def flaky() -> str:
        if not runs:
            runs.append(("failed", time.monotonic()))
            raise RuntimeError("first run fails")
        runs.append(("started", time.monotonic()))
        return "ok"

    job_id = queue.enqueue(flaky)
    began = time.monotonic()
    with queue.worker({"default": 1}, poll_interval=5, lock_timeout=5):
        wait_for(lambda: has_status(queue, job_id, jobs.JobStatus.COMPLETED), timeout=10)
        total = time.monotonic() - began
    job = stored(queue, job_id)
    assert job.attempt == 2
    (_, failed_at), (_, started_again) = runs
    assert 0.1 <= started_again - failed_at < 0.5
    assert total < 2


def test_a_delayed_job_starts_promptly_despite_a_long_poll_interval(queue: jobs.Queue) -> None:
    started: list[datetime] = []
    queue.register("later", lambda: started.append(datetime.now(UTC)))
    with queue.worker({"default": 1}, poll_interval=5, lock_timeout=5) as worker:
        # Idle: its first claim found nothing, so only a wake-up or a poll looks again.
        wait_for(lambda: not worker._dispatcher.queues["default"].maybe_work)
        job_id = queue.enqueue("later", delay=0.2)
        wait_for(lambda: started, timeout=10)
    run_at = stored(queue, job_id).run_at
    assert run_at is not None
    assert run_at <= started[0] < run_at + timedelta(seconds=0.5)


# -- 8. shutdown ---------------------------------------------------------------------------


def test_shutdown_timeout_is_checked() -> None:
    queue = jobs.Queue("sqlite://")
    for bad in (-1, -0.5, "30", None, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="shutdown_timeout"):
            jobs.Worker(queue, shutdown_timeout=bad)  # type: ignore[arg-type]
    assert jobs.Worker(queue, shutdown_timeout=0).shutdown_timeout == 0
    assert jobs.Worker(queue, shutdown_timeout=timedelta(minutes=1)).shutdown_timeout == 60
    assert jobs.Worker(queue).shutdown_timeout == 30


def test_stop_releases_a_job_still_running_at_the_timeout(
    queue: jobs.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    running, release, returned = threading.Event(), threading.Event(), threading.Event()

    @queue.job()
    def stuck() -> str:
        running.set()
        release.wait(30)
        returned.set()
        return "late"

    job_id = queue.enqueue(stuck)
    worker = jobs.Worker(queue, {"default": 1}, shutdown_timeout=0.2, **FAST)
    worker.start()
    try:
        assert running.wait(15)
        caplog.set_level(logging.WARNING, logger="durable_jobs")
        began = time.monotonic()
        worker.stop()
        assert time.monotonic() - began < 5
    finally:
        release.set()
    job = stored(queue, job_id)
    assert job.status == jobs.JobStatus.PENDING and job.attempt == 0  # not counted
    assert "1 job(s) still running after the shutdown timeout of 0.2 s: released" in caplog.text
    # The abandoned run ends later: its outcome is dropped, the job stays released.
    assert returned.wait(15)
    assert not worker.running
    job = stored(queue, job_id)
    assert job.status == jobs.JobStatus.PENDING and job.result is None


class Proc:
    """A tests/procs/shutdown_app.py process, its stderr in a file."""

    def __init__(self, db_url: str, tmp_path: Path, shutdown_timeout: float) -> None:
        self.log = tmp_path / "worker.log"
        env = {**os.environ, "SDJ_DATABASE_URL": db_url}
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.procs.shutdown_app", str(shutdown_timeout)],
                cwd=ROOT,
                env=env,
                stderr=err,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def said(self, text: str) -> bool:
        return text in self.output()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
        p.proc.wait(10)


def start_blocked(
    queue: jobs.Queue, db_url: str, tmp_path: Path, procs: list[Proc], timeout: float
) -> tuple[Proc, str]:
    marker = tmp_path / "running"
    job_id = queue.enqueue("block", str(marker))
    proc = Proc(db_url, tmp_path, timeout)
    procs.append(proc)
    wait_for(marker.exists, timeout=30)
    assert has_status(queue, job_id, jobs.JobStatus.RUNNING)
    return proc, job_id


@pytest.mark.slow
def test_a_second_sigint_stops_at_once_and_releases_the_running_job(
    queue: jobs.Queue, db_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    proc, job_id = start_blocked(queue, db_url, tmp_path, procs, 30)
    # run() set up logging itself (the app did not): readable lines on stderr.
    assert wait_for(lambda: proc.said(" INFO durable_jobs: worker "))
    proc.proc.send_signal(signal.SIGINT)
    wait_for(lambda: proc.said("received SIGINT; draining"))
    assert proc.proc.poll() is None  # draining: the job may finish for up to 30 s
    assert has_status(queue, job_id, jobs.JobStatus.RUNNING)

    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(15) == -signal.SIGINT  # KeyboardInterrupt, as Ctrl-C does
    output = proc.output()
    assert "received SIGINT again; stopping at once" in output
    assert "stopping at once: released 1 running job(s) for other workers" in output
    assert "KeyboardInterrupt" in output
    job = stored(queue, job_id)
    assert job.status == jobs.JobStatus.PENDING and job.attempt == 0  # not counted
    assert job.locked_by is None


@pytest.mark.slow
def test_shutdown_timeout_releases_a_stuck_job_after_one_sigterm(
    queue: jobs.Queue, db_url: str, tmp_path: Path, procs: list[Proc]
) -> None:
    proc, job_id = start_blocked(queue, db_url, tmp_path, procs, 0.5)
    began = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(15) == 0
    assert time.monotonic() - began < 5
    output = proc.output()
    assert "received SIGTERM; draining" in output
    assert "still running after the shutdown timeout of 0.5 s: released them" in output
    job = stored(queue, job_id)
    assert job.status == jobs.JobStatus.PENDING and job.attempt == 0
