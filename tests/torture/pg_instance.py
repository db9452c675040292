"""A private PostgreSQL server for the torture run, which restarts it on purpose.

The shared server at 127.0.0.1:5432 serves other test runs, so the torture test never
touches it: it makes a fresh cluster in a temporary directory owned by the ``postgres``
OS user, starts it on a free port, restarts it when the chaos driver says so, and stops
and deletes it at the end, on failure too. Anything that goes wrong raises
``PostgresInstanceError`` with the server's own output, never a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .orphans import orphaned, own

__all__ = ["PostgresInstance", "PostgresInstanceError", "postgres_instance"]

OS_USER = "postgres"
_PREFIX = "sdj-torture-pg-"


class PostgresInstanceError(RuntimeError):
    """The private server could not be created, started, restarted or stopped."""


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    for directory in reversed(found):  # the newest installed major version
        if os.access(os.path.join(directory, "pg_ctl"), os.X_OK):
            return Path(directory)
    raise PostgresInstanceError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresInstance:
    """One cluster: ``start()``, ``restart()``, ``stop()``; ``url`` for clients."""

    def __init__(self) -> None:
        self.bin = _binaries()
        try:
            self.user = pwd.getpwnam(OS_USER)
        except KeyError:
            raise PostgresInstanceError(
                f"there is no {OS_USER!r} OS user to run the server"
            ) from None
        self.root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        own(self.root)
        os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> None:
        """Run a server binary as the ``postgres`` user; raise with its output on failure."""
        command = ["runuser", "-u", OS_USER, "--", str(self.bin / args[0]), *args[1:]]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresInstanceError(f"{' '.join(command)} failed: {exc}") from exc
        if done.returncode != 0:
            raise PostgresInstanceError(
                f"{' '.join(command)} exited {done.returncode}\n{done.stdout}{done.stderr}"
                f"\n--- server log ---\n{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
            "-t", "60", action, *extra,
        )  # fmt: skip

    def start(self) -> None:
        """Make the cluster (once) and start the server; returns when it accepts clients."""
        if not self.data.exists():
            self.sockets.mkdir()
            os.chown(self.sockets, self.user.pw_uid, self.user.pw_gid)
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", OS_USER, "--no-sync")
        self._pg_ctl("start")
        self.running = True

    def restart(self, mode: str = "fast") -> None:
        """Restart the server: every client connection is cut, as in a real failover."""
        self._pg_ctl("restart", "-m", mode)

    def stop(self) -> None:
        """Stop the server (immediately: its data is about to be deleted)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
            self.running = False

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _remove_orphans() -> None:
    """Stop and delete the clusters of killed runs (see orphans.py)."""
    for root in orphaned(_PREFIX):
        command = ["runuser", "-u", OS_USER, "--", str(_binaries() / "pg_ctl")]
        command += ["-D", str(root / "data"), "-m", "immediate", "-w", "stop"]
        subprocess.run(command, capture_output=True, timeout=60)  # fails if it had stopped
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_instance() -> Iterator[PostgresInstance]:
    """A started private server, stopped and deleted when the block ends, however it ends."""
    _remove_orphans()
    instance = PostgresInstance()
    try:
        instance.start()
        yield instance
    finally:
        instance.remove()
