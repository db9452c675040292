"""Fixtures of the CLI tests: run ``sdj`` in-process (CliRunner) or as a real process."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from durable_jobs.cli import app

# Wide enough that Rich never wraps a job id inside a table.
ENV = {"COLUMNS": "200", "SDJ_DATABASE_URL": None}


def sdj_command() -> list[str]:
    """How to start the installed ``sdj`` script as a process."""
    script = Path(sys.executable).with_name("sdj")
    return [str(script)] if script.exists() else [sys.executable, "-m", "durable_jobs.cli"]


@pytest.fixture
def sdj() -> Callable[..., object]:
    """``sdj(*args)`` runs the command in-process and returns Click's ``Result``."""
    runner = CliRunner()

    def run(*args: str, env: dict[str, str | None] | None = None) -> object:
        return runner.invoke(app, list(args), env={**ENV, **(env or {})})

    return run


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Writes a module into a fresh current directory; returns its importable name."""
    monkeypatch.chdir(tmp_path)

    def write(source: str) -> str:
        name = f"sdj_app_{uuid.uuid4().hex[:8]}"  # unique: sys.modules caches by name
        (tmp_path / f"{name}.py").write_text(source)
        return name

    return write
