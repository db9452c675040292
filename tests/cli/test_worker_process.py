"""``sdj worker`` as a real process: runs a module's jobs, drains on SIGTERM, exits 0."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import durable_jobs as jobs
from tests.cli.conftest import sdj_command
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

MODULE = """
import gc
import os
import time

import durable_jobs as jobs

queue = jobs.Queue()  # the database comes from --database-url through $SDJ_DATABASE_URL


@queue.job()
def add(numbers: list[int]) -> dict[str, int]:
    time.sleep(0.05)
    return {"sum": sum(numbers), "pid": os.getpid(), "frozen": gc.get_freeze_count()}
"""


Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start(*args)`` runs ``sdj worker tasks:queue *args`` in ``tmp_path``."""
    (tmp_path / "tasks.py").write_text(MODULE)
    procs: list[subprocess.Popen[str]] = []

    def run(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*sdj_command(), "worker", "tasks:queue", *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def completed_results(queue: jobs.Queue, ids: list[str]) -> list[dict[str, int]] | None:
    found = [queue.get_job(job_id) for job_id in ids]
    if not all(job and job.status is jobs.JobStatus.COMPLETED for job in found):
        return None
    return [json.loads(job.result or b"null") for job in found if job]


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    return output


def test_worker_runs_jobs_and_exits_0_on_sigterm(
    start: Start, db_url: str, queue: jobs.Queue
) -> None:
    ids = [queue.enqueue("add", [n, n]) for n in range(5)]
    proc = start("--database-url", db_url, "--queues", "default=3", "--lock-timeout", "5")
    results = wait_for(lambda: completed_results(queue, ids), timeout=30)
    assert [r["sum"] for r in results] == [0, 2, 4, 6, 8]
    assert {r["pid"] for r in results} == {proc.pid}
    # Its start-up heap is kept out of full collections (thousands of objects: the
    # library, SQLAlchemy, the application).
    assert min(r["frozen"] for r in results) > 10_000
    output = stop(proc)
    assert "sdj worker tasks:queue" in output and "queues {'default': 3}" in output
    assert "lock timeout 5s" in output and "job types add" in output


def test_worker_processes(start: Start, db_url: str, queue: jobs.Queue) -> None:
    ids = [queue.enqueue("add", [n]) for n in range(20)]
    proc = start("--database-url", db_url, "--processes", "2", "--queues", "default=2")
    results = wait_for(lambda: completed_results(queue, ids), timeout=30)
    assert proc.pid not in {r["pid"] for r in results}  # children ran them
    # One child can drain all 20 jobs before the other is up: stop only once both are
    # live (a worker is listed after it logs its start and sets its signal handlers).
    storage = queue.storage
    assert isinstance(storage, jobs.SQLStorage)
    wait_for(lambda: len(storage.live_workers(timedelta(minutes=1))) == 2, timeout=30)
    output = stop(proc)
    assert "starting 2 worker processes" in output
    assert output.count("sdj worker tasks:queue (pid") == 2
    assert output.count("stopped") >= 2


def _free_ports(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count <= 65535 and all(_is_free(first + i) for i in range(count)):
            return first
    raise AssertionError("no consecutive free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _completed_here(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return None  # not listening yet
    for line in text.splitlines():
        if line.startswith("sdj_jobs_completed_total{") and 'job_type="add"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_worker_processes_each_serve_metrics_on_their_own_port(
    start: Start, db_url: str, queue: jobs.Queue
) -> None:
    port = _free_ports(2)
    ids = [queue.enqueue("add", [n]) for n in range(20)]
    proc = start(
        "--database-url", db_url, "--processes", "2", "--metrics-port", str(port),
    )  # fmt: skip
    wait_for(lambda: completed_results(queue, ids), timeout=30)
    # Each process counts the jobs it ran; together they ran all 20.
    counts = wait_for(
        lambda: (
            None
            if None in (found := [_completed_here(port), _completed_here(port + 1)])
            or sum(c or 0 for c in found) != 20
            else found
        ),
        timeout=30,
    )
    assert len(counts) == 2
    stop(proc)


def test_a_metrics_port_in_use_stops_before_any_process_starts(start: Start, db_url: str) -> None:
    port = _free_ports(2)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", port + 1))
        taken.listen()
        proc = start("--database-url", db_url, "--processes", "2", "--metrics-port", str(port))
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, output
    assert f"Error: cannot serve metrics on port {port + 1}" in output
    assert "starting 2 worker processes" not in output
