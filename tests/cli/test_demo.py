"""``sdj demo`` as a real process: on its own SQLite file, and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from durable_jobs.cli.demo import _where
from durable_jobs.storage import SQLStorage
from tests.cli.conftest import sdj_command

DEREGISTERED = "stopped workers deregistered"


def run_demo(*args: str) -> str:
    # Wide enough that rich does not wrap the paths the assertions look for.
    env = {**os.environ, "COLUMNS": "240"}
    done = subprocess.run(
        [*sdj_command(), "demo", *args], capture_output=True, text=True, timeout=90, env=env
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "✗" not in output
    assert "render-invoice" in output and "checks" in output
    assert DEREGISTERED in output
    return output


@pytest.mark.slow
def test_demo_on_its_own_sqlite_database(tmp_path: Path) -> None:
    output = run_demo("--dir", str(tmp_path))
    assert (tmp_path / "demo.db").exists() and (tmp_path / "worker-3.log").exists()
    assert f"kept in {tmp_path}" in output
    # Every worker is gone from the registry: the stopped ones removed their rows and
    # the demo removed the one it killed, so nothing counts them as live afterwards.
    storage = SQLStorage(f"sqlite:///{tmp_path / 'demo.db'}")
    try:
        assert storage.live_workers(timedelta(days=3650)) == []
    finally:
        storage.close()


@pytest.mark.slow
def test_demo_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    output = run_demo("--dir", str(tmp_path), "--database-url", postgres_url)
    assert "postgresql" in output
    assert not (tmp_path / "demo.db").exists()


def test_the_header_names_a_folder_only_when_it_is_kept(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    temporary = _where(url, tmp_path, None, None)
    assert str(tmp_path) not in temporary and "removed afterwards" in temporary
    kept = _where(url, tmp_path, None, tmp_path)
    assert f"kept in {tmp_path}" in kept
    pg = "postgresql://sdj:secret@db.example/jobs"
    on_postgres = _where(pg, tmp_path, pg, None)
    assert "db.example" in on_postgres and "secret" not in on_postgres
    assert str(tmp_path) not in on_postgres
