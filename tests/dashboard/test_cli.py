"""``sdj dashboard`` serves the dashboard alone, read-only, until it is stopped."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

import durable_jobs as jobs
from durable_jobs.cli import app
from tests.helpers import wait_for


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


def test_sdj_dashboard_serves_until_interrupted(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    queue = jobs.Queue(url)
    job_id = queue.enqueue("report", {"month": "2030-01"})
    port = _free_port()
    command = [sys.executable, "-m", "durable_jobs.cli", "dashboard", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--database-url", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        page = wait_for(lambda: _get(f"http://127.0.0.1:{port}/jobs"), timeout=20)
        assert page.status_code == 200
        assert job_id in page.text and "read-only" in page.text
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=10)
    assert process.returncode == 0, output
    assert f"on http://127.0.0.1:{port}/ (read-only" in output


def test_sdj_dashboard_reports_a_database_without_tables(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = CliRunner().invoke(app, ["dashboard", "--database-url", f"sqlite:///{missing}"])
    assert result.exit_code != 0 and "does not exist" in result.output
    assert not missing.exists()
