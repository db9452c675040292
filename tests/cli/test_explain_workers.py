"""``sdj explain ID`` and ``sdj workers``, on every backend, against real worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from tests.cli.outputs import error, ok
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_explain_a_job_in_words_and_json(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    job_id = queue.enqueue("report", delay=timedelta(hours=3))
    text = ok(sdj("explain", job_id, "--database-url", db_url))
    first, *facts = text.splitlines()
    assert first.startswith(f"job {job_id}: It is delayed until ")
    assert "  reason: delayed" in facts and "  status: pending" in facts
    data = json.loads(ok(sdj("explain", job_id, "--database-url", db_url, "--json")))
    assert data["job_id"] == job_id and data["reason"] == "delayed"
    assert data["message"].startswith("It is delayed until ")
    assert 10700 < data["facts"]["seconds"] <= 10800
    assert error(sdj("explain", "nope", "--database-url", db_url)) == "Error: no job with id 'nope'"
    line = error(sdj("explain", job_id, "not-a-target", "--database-url", db_url))
    assert line == "Error: expected MODULE:QUEUE, such as myapp.tasks:queue; got 'not-a-target'"


def test_explain_reads_caps_from_the_queue_given(
    sdj: Any, db_url: str, queue: jobs.Queue, app_module: Callable[[str], str]
) -> None:
    module = app_module(
        "import durable_jobs as jobs\n\nqueue = jobs.Queue()\n"
        "queue.register('rare', lambda: None, rate_limit='1/h')\n"
    )
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)

    @queue.job(rate_limit="1/h")
    def rare() -> None:
        pass

    first, second = queue.enqueue("rare"), queue.enqueue("rare")
    with queue.worker(poll_interval=0.05, lock_timeout=5):
        wait_for(lambda: (j := queue.get_job(first)) is not None and j.status.is_terminal)
    data = json.loads(
        ok(sdj("explain", second, f"{module}:queue", "--database-url", db_url, "--json"))
    )
    assert data["reason"] == "rate_limit" and data["facts"]["rate_limit"] == "1/h"
    # Without the queue the limits are unknown: nobody serves "default" now.
    plain = json.loads(ok(sdj("explain", second, "--database-url", db_url, "--json")))
    assert plain["reason"] == "no_worker_for_queue"


@pytest.fixture
def worker_process(queue: jobs.Queue, db_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process of tests/procs/explain_app.py, registered and live."""
    env = {**os.environ, "SDJ_DATABASE_URL": db_url}
    proc = subprocess.Popen([sys.executable, "-m", "tests.procs.explain_app"], cwd=ROOT, env=env)
    try:
        wait_for(lambda: queue.storage.live_workers(timedelta(minutes=1)), timeout=60)
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_workers_lists_each_process_with_its_running_jobs(
    sdj: Any, db_url: str, queue: jobs.Queue, worker_process: subprocess.Popen[bytes]
) -> None:
    held = queue.enqueue("hold")
    wait_for(lambda: (j := queue.get_job(held)) is not None and j.status == "running", timeout=30)
    [data] = json.loads(ok(sdj("workers", "--database-url", db_url, "--json")))
    assert data["pid"] == worker_process.pid and data["running"] == 1
    assert data["queues"] == ["default"] and data["types"] == ["hold", "ping"]
    assert data["version"] == jobs.__version__
    assert set(data) == {
        "id", "host", "pid", "queues", "types", "version", "started_at", "last_seen", "running",
    }  # fmt: skip
    text = ok(sdj("workers", "--database-url", db_url))
    assert "1 worker(s) seen in the last 1m00s" in text
    row = next(line for line in text.splitlines() if data["id"] in line)
    assert "hold, ping" in row and jobs.__version__ in row and row.rstrip().endswith("1")
    explained = json.loads(ok(sdj("explain", held, "--database-url", db_url, "--json")))
    assert explained["reason"] == "running" and explained["facts"]["worker"] == data["id"]


def test_workers_with_none_live(sdj: Any, db_url: str, queue: jobs.Queue) -> None:
    assert json.loads(ok(sdj("workers", "--database-url", db_url, "--json"))) == []
    assert "no live workers" in ok(sdj("workers", "--database-url", db_url))
