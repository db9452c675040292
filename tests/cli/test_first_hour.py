"""What a new user meets first on the command line, through the real ``sdj`` process:
one ``Error:`` line for every expected failure (``--debug`` shows the traceback), help
that shows what it says, and Ctrl-C and a second signal that stop a worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import durable_jobs
from tests.cli.conftest import sdj_command
from tests.helpers import wait_for

ENV = {**os.environ, "COLUMNS": "200"}
ENV.pop("SDJ_DATABASE_URL", None)
ENV.pop("SDJ_DEBUG", None)


def sdj(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*sdj_command(), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def one_error_line(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_a_corrupt_sqlite_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "jobs.db").write_bytes(b"\x00\x01garbage" * 600)
    line = one_error_line(sdj("jobs", "list", cwd=tmp_path), "is not a usable SQLite database")
    assert "jobs.db" in line and "move this file away" in line


def test_debug_shows_the_traceback_of_the_same_failure(tmp_path: Path) -> None:
    (tmp_path / "jobs.db").write_bytes(b"\x00\x01garbage" * 600)
    done = sdj("--debug", "jobs", "list", cwd=tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "durable_jobs.errors.NotADatabase" in done.stderr
    assert "sqlite3.DatabaseError: file is not a database" in done.stderr  # the cause


@pytest.mark.parametrize("value", ["NaN", "Infinity", "[1, -Infinity]", "1e999", "{bad"])
def test_arguments_that_are_not_json_are_one_line(tmp_path: Path, value: str) -> None:
    one_error_line(sdj("enqueue", "t", "--args", value, cwd=tmp_path), "--args is not valid JSON")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:notaport/test", "invalid database URL"),
        ("postgresql://postgres@127.0.0.1:1/test", "cannot reach the database"),
        ("mysql://root@127.0.0.1:1/test", "cannot reach the database"),
    ],
)
def test_a_bad_or_refused_port_is_one_line(tmp_path: Path, url: str, expected: str) -> None:
    one_error_line(sdj("jobs", "list", "--database-url", url, cwd=tmp_path), expected)


def test_a_missing_directory_says_so_and_migrate_says_what_to_check(tmp_path: Path) -> None:
    url = "sqlite:///nowhere/jobs.db"
    one_error_line(sdj("stats", "--database-url", url, cwd=tmp_path), "directory", "nowhere")
    line = one_error_line(sdj("migrate", "--database-url", url, cwd=tmp_path), "cannot open")
    assert "directory exists" in line
    assert not (tmp_path / "nowhere").exists()


def test_an_unknown_status_is_one_plain_usage_error(tmp_path: Path) -> None:
    done = sdj("jobs", "list", "--status", "bogus", cwd=tmp_path)
    assert done.returncode == 2  # Click's usage errors
    assert "'bogus' is not one of pending, running" in done.stderr
    assert "Value error" not in done.stderr and "Traceback" not in done.stderr


def test_help_shows_defaults_extras_and_plain_flags(tmp_path: Path) -> None:
    enqueue = sdj("enqueue", "--help", cwd=tmp_path).stdout
    assert "[default: default]" in enqueue and "[default: 0]" in enqueue
    assert "[default: 3]" in enqueue
    assert "<bool>" not in enqueue
    worker = sdj("worker", "--help", cwd=tmp_path).stdout
    assert "durable-jobs[metrics]" in worker  # not eaten as markup
    assert "--shutdown-timeout" in worker
    assert "--debug" in sdj("--help", cwd=tmp_path).stdout


def test_the_package_namespace_shows_only_its_api() -> None:
    assert "PackageNotFoundError" not in dir(durable_jobs)
    assert "version" not in dir(durable_jobs)


def test_sdj_uses_the_database_the_quick_start_writes(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"
    done = subprocess.run(
        [sys.executable, str(example)], cwd=tmp_path, env=ENV, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    listed = sdj("jobs", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "completed" in listed.stdout


SLOW_APP = """
import pathlib, time
import durable_jobs as jobs

queue = jobs.Queue("sqlite:///jobs.db")

@queue.job(retries=0)
def slow() -> None:
    pathlib.Path("started").touch()
    time.sleep(60)
"""


def _worker_with_a_running_job(tmp_path: Path, *options: str) -> subprocess.Popen[bytes]:
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    enqueued = sdj("enqueue", "slow", cwd=tmp_path)
    assert enqueued.returncode == 0, enqueued.stderr
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [*sdj_command(), "worker", "slowapp:queue", *options],
            cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_for(lambda: (tmp_path / "started").exists(), timeout=30)
    return proc


def _said(tmp_path: Path, text: str) -> bool:
    return text in (tmp_path / "worker.log").read_text()


def _status(tmp_path: Path) -> str:
    listed = sdj("jobs", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [job] = json.loads(listed.stdout)
    return str(job["status"])


def test_shutdown_timeout_releases_the_running_job_and_exits(tmp_path: Path) -> None:
    proc = _worker_with_a_running_job(tmp_path, "--shutdown-timeout", "0.5")
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert time.monotonic() - start < 10
    assert _said(tmp_path, "after the shutdown timeout of 0.5 s: released them")
    assert not _said(tmp_path, "Traceback")
    assert _status(tmp_path) == "pending"  # released for another worker, not failed


def test_a_second_ctrl_c_stops_the_sdj_worker_at_once(tmp_path: Path) -> None:
    proc = _worker_with_a_running_job(tmp_path)  # default shutdown timeout: 30 s
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: _said(tmp_path, "received SIGINT; draining"), timeout=10)
    assert proc.poll() is None  # draining: the job may run for 30 s more
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 130  # as shells report a command stopped by Ctrl-C
    assert time.monotonic() - start < 10
    assert _said(tmp_path, "stopping at once: released 1 running job(s)")
    assert _said(tmp_path, "Interrupted.") and not _said(tmp_path, "Traceback")
    assert _status(tmp_path) == "pending"
