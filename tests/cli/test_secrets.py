"""Database passwords never appear in what the CLI and the library print."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import durable_jobs as jobs
from tests.cli.conftest import sdj_command
from tests.cli.test_errors import assert_one_line_error
from tests.helpers import wait_for

SECRET = "s3cret-pw"
BAD_PORT = f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/postgres"


@pytest.mark.parametrize("command", [["stats"], ["migrate"], ["jobs", "list"], ["enqueue", "t"]])
def test_a_url_with_a_bad_port_is_one_masked_line(sdj: Any, command: list[str]) -> None:
    line = assert_one_line_error(sdj(*command, "--database-url", BAD_PORT), "invalid database URL")
    assert SECRET not in line and "postgres:***@" in line


def test_the_worker_command_refuses_a_bad_url_in_one_masked_line(sdj: Any, app_module: Any) -> None:
    name = app_module("import durable_jobs as jobs\nqueue = jobs.Queue()\n")
    result = sdj("worker", f"{name}:queue", "--database-url", BAD_PORT)
    line = assert_one_line_error(result, "invalid database URL")
    assert SECRET not in line


def test_storage_errors_mask_the_password() -> None:
    with pytest.raises(ValueError) as raised:
        jobs.SQLStorage(BAD_PORT)
    assert SECRET not in str(raised.value) and "***" in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_unreachable_database_error_masks_the_password(sdj: Any) -> None:
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:1/nowhere"
    line = assert_one_line_error(sdj("stats", "--database-url", url), "cannot reach the database")
    assert SECRET not in line


@pytest.mark.slow
def test_the_worker_log_masks_an_unused_database_url(tmp_path: Path, postgres_url: str) -> None:
    # The module builds its Queue on its own SQLite file, so the worker warns that the
    # --database-url it was given is not used, naming that URL.
    db = tmp_path / "own.db"
    (tmp_path / "tasks.py").write_text(
        f"import durable_jobs as jobs\nqueue = jobs.Queue('sqlite:///{db}')\n"
    )
    url = jobs.SQLStorage(postgres_url).engine.url.set(password=SECRET)
    given = url.render_as_string(hide_password=False)
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*sdj_command(), "worker", "tasks:queue", "--database-url", given],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(lambda: "is not used by it" in log.read_text(), timeout=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert SECRET not in output and ":***@" in output
