"""``sdj demo`` as a real process: on its own SQLite file, and on PostgreSQL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import sdj_command

pytestmark = pytest.mark.slow


def run_demo(*args: str) -> str:
    done = subprocess.run(
        [*sdj_command(), "demo", *args], capture_output=True, text=True, timeout=90
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output and "✗" not in output
    assert "render-invoice" in output and "checks" in output
    return output


def test_demo_on_its_own_sqlite_database(tmp_path: Path) -> None:
    run_demo("--dir", str(tmp_path))
    assert (tmp_path / "demo.db").exists() and (tmp_path / "worker-3.log").exists()


def test_demo_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    output = run_demo("--dir", str(tmp_path), "--database-url", postgres_url)
    assert "postgresql" in output
    assert not (tmp_path / "demo.db").exists()
