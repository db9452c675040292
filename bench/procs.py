"""Worker processes for the benchmarks, and waiting on the database with timeouts.

Each worker is a real ``sdj worker bench.app:queue`` process, as users run it. They are
stopped (SIGTERM, then SIGKILL) however the benchmark ends, and die with the bench
process if it is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import durable_jobs as jobs

from .database import connect

__all__ = ["Outstanding", "WorkerProcesses", "outstanding", "rss_mb", "wait_until"]

# The directory holding the ``bench`` package: the workers import ``bench.app`` from it.
ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Poll ``condition`` every ``interval`` seconds; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def rss_mb(pid: int) -> float:
    """Resident set size of process ``pid`` in MB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class Outstanding:
    """Counts jobs not yet finished (pending, retrying or running) on one open connection.

    One cheap COUNT, served by the status index, per call.
    """

    _SQL = "SELECT COUNT(*) FROM sdj_jobs WHERE status IN ('pending', 'retrying', 'running')"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __call__(self) -> int:
        # fetchall: a half-read SQLite statement would hold its read snapshot open.
        count: int = self.conn.execute(self._SQL).fetchall()[0][0]
        return count

    def wait_for_zero(self, timeout: float) -> None:
        """Return once every job has finished, polling every 10 ms."""
        wait_until(lambda: self() == 0, timeout, "the queue to drain")


def _die_with_parent() -> None:
    # Linux: SIGTERM the worker if the bench process dies without cleaning up.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class WorkerProcesses:
    """``count`` worker processes on ``url``, up (listed in ``sdj_workers``) on entry.

    ``with WorkerProcesses(url, 2) as workers: ...`` waits until both registered, and
    stops them on exit. Their logs go to a temporary file, shown if one fails to start.
    """

    def __init__(self, url: str, count: int = 1, concurrency: int = 10) -> None:
        self.url = url
        self.count = count
        self.concurrency = concurrency
        self.processes: list[subprocess.Popen[bytes]] = []
        self._log: IO[bytes] | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def __enter__(self) -> WorkerProcesses:
        try:
            self._start()
            self._wait_up(timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start(self) -> None:
        # Closed in stop(), which every way out of the workers' life goes through.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        env = {**os.environ, "SDJ_DATABASE_URL": self.url}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "durable_jobs.cli", "worker", "bench.app:queue"]
        argv += ["--queues", f"default={self.concurrency}"]
        for _ in range(self.count):
            self.processes.append(
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=self._log,
                    preexec_fn=_die_with_parent,
                )
            )

    def _wait_up(self, timeout: float) -> None:
        storage = jobs.SQLStorage(self.url)
        try:

            def up() -> bool:
                self._check_alive()
                live = {w.pid for w in storage.live_workers(timedelta(minutes=5))}
                return live.issuperset(self.pids)

            wait_until(up, timeout, f"{self.count} worker process(es) to register", 0.02)
        finally:
            storage.close()

    def _check_alive(self) -> None:
        dead = [p for p in self.processes if p.poll() is not None]
        if dead:
            raise RuntimeError(
                f"worker process {dead[0].pid} exited with {dead[0].returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the workers logged."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM every worker (they drain and exit), SIGKILL those still up at ``timeout``."""
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.processes:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()
        if self._log is not None:
            self._log.close()
            self._log = None


@contextlib.contextmanager
def outstanding(url: str) -> Iterator[Outstanding]:
    """An ``Outstanding`` counter on a connection of its own."""
    with connect(url) as conn:
        yield Outstanding(conn)
