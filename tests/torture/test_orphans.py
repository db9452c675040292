"""A torture run that is SIGKILLed leaves its private servers running; the next run
stops them and deletes their data (orphans.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.torture import mysql_instance, pg_instance

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# A run that starts its server, says where, and hangs until it is killed.
_RUN = """
import sys
from tests.torture.{module} import {factory}
with {factory}() as server:
    print(server.root, server.port, flush=True)
    sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _server_pid(root: Path, name: str) -> int:
    return int((root / name).read_text().split()[0])


@pytest.mark.parametrize(
    ("module", "factory", "pid_file", "cleanup"),
    [
        ("pg_instance", "postgres_instance", "data/postmaster.pid", pg_instance._remove_orphans),
        ("mysql_instance", "mysql_instance", "mysqld.pid", mysql_instance._remove_orphans),
    ],
    ids=["postgresql", "mysql"],
)
def test_the_next_run_removes_the_servers_of_a_killed_run(
    module: str, factory: str, pid_file: str, cleanup: Callable[[], None]
) -> None:
    run = subprocess.Popen(
        [sys.executable, "-c", _RUN.format(module=module, factory=factory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert run.stdout is not None
        root = Path(run.stdout.readline().split()[0])
        server = wait_for(lambda: (root / pid_file).exists() and _server_pid(root, pid_file))
        assert _alive(server)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(30)
    # (A torture run in another test process may clean it up first: that is fine too.)
    cleanup()
    wait_for(lambda: not _alive(server), timeout=60)
    assert not root.exists()
