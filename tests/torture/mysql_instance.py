"""A private MariaDB (or MySQL) server for the torture run, which crashes it on purpose.

The shared server at 127.0.0.1:3306 serves other test runs, so the torture test never
touches it: it makes a fresh data directory (``mariadb-install-db``) in a temporary
directory, starts ``mariadbd`` on a free port and its own socket, restarts it (or kills
it and starts it again, to recover from its redo log) when the chaos driver says so, and
stops it and deletes everything at the end, on failure too. Anything that goes wrong
raises ``MySQLInstanceError`` with the server's own output, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql

from .orphans import orphaned, own

__all__ = ["DATABASE", "MySQLInstance", "MySQLInstanceError", "mysql_instance"]

DATABASE = "torture"
_SERVERS = ("/usr/sbin/mariadbd", "/usr/sbin/mysqld")
_INSTALLERS = ("/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db")
_PREFIX = "sdj-torture-mysql-"


class MySQLInstanceError(RuntimeError):
    """The private server could not be created, started, restarted or stopped."""


def _binary(candidates: tuple[str, ...]) -> str:
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    raise MySQLInstanceError(f"no MariaDB/MySQL binary among {', '.join(candidates)}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MySQLInstance:
    """One server: ``start()``, ``restart()``, ``stop()``; ``url`` for clients.

    The server runs as a child of this process (``--user=root``: the torture run is
    root, as it is for its tmpfs and its PostgreSQL cluster), in a session of its own so
    that a Ctrl-C meant for the driver reaches it only through ``remove()``.
    """

    def __init__(self) -> None:
        self.server = _binary(_SERVERS)
        self.installer = _binary(_INSTALLERS)
        self.root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        own(self.root)
        self.data = self.root / "data"
        self.socket = self.root / "mysqld.sock"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"

    def _install(self) -> None:
        command = [
            self.installer, "--no-defaults", f"--datadir={self.data}", "--user=root",
            "--auth-root-authentication-method=normal", "--skip-test-db",
        ]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MySQLInstanceError(f"{' '.join(command)} failed: {exc}") from exc
        if done.returncode != 0:
            raise MySQLInstanceError(
                f"{' '.join(command)} exited {done.returncode}\n{done.stdout}{done.stderr}"
            )

    def _connect(self, database: str | None = None) -> Any:
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", database=database, connect_timeout=2
        )

    def start(self, timeout: float = 60) -> None:
        """Make the data directory (once) and start the server; returns when it accepts
        clients (and, the first time, has the run's database)."""
        first = not self.data.exists()
        if first:
            self._install()
        command = [
            self.server, "--no-defaults", f"--datadir={self.data}", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.socket}", "--user=root",
            f"--pid-file={self.root / 'mysqld.pid'}", f"--log-error={self.log}",
            "--skip-name-resolve", "--skip-log-bin", "--max-connections=500",
            "--innodb-buffer-pool-size=64M", "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_bin",
        ]  # fmt: skip
        with (self.root / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise MySQLInstanceError(
                    f"{self.server} exited {code} while starting\n"
                    f"--- server log ---\n{self._log_tail()}"
                )
            try:
                conn = self._connect()
            except pymysql.err.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise MySQLInstanceError(
                        f"the server did not accept connections within {timeout} s: {exc}\n"
                        f"--- server log ---\n{self._log_tail()}"
                    ) from exc
                time.sleep(0.05)
                continue
            with conn:
                if first:
                    with conn.cursor() as cur:
                        cur.execute(
                            f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                        )
            return

    def _signal_and_wait(self, sig: signal.Signals, timeout: float = 60) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
                raise MySQLInstanceError(
                    f"the server did not stop within {timeout} s of {sig.name}\n"
                    f"--- server log ---\n{self._log_tail()}"
                ) from None
        self.proc = None

    def restart(self, mode: str = "fast") -> None:
        """Restart the server: every client connection is cut, as in a real failover.

        ``immediate`` SIGKILLs it (a crash: the restart recovers from the redo log);
        ``fast`` shuts it down cleanly (SIGTERM) first.
        """
        if mode not in ("fast", "immediate"):
            raise ValueError(f"unknown restart mode {mode!r}")
        self._signal_and_wait(signal.SIGKILL if mode == "immediate" else signal.SIGTERM)
        self.start()

    def stop(self) -> None:
        """Stop the server (killed: its data is about to be deleted)."""
        self._signal_and_wait(signal.SIGKILL)

    def remove(self) -> None:
        """Stop the server if it runs and delete its data directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _remove_orphans() -> None:
    """Kill the servers of killed runs and delete their data (see orphans.py)."""
    for root in orphaned(_PREFIX):
        try:
            pid = int((root / "mysqld.pid").read_text())
            # The pid is the server's only if it still runs on this data (pids are reused).
            if str(root) in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # the server had stopped
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mysql_instance() -> Iterator[MySQLInstance]:
    """A started private server, stopped and deleted when the block ends, however it ends."""
    _remove_orphans()
    instance = MySQLInstance()
    try:
        instance.start()
        yield instance
    finally:
        instance.remove()
